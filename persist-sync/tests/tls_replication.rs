//! Replication end to end over TCP with mutual TLS: the shared-secret
//! authentication runs inside the encrypted link.

mod common;

use std::time::Duration;

use persist::{PersistentRecord, Store};
use persist_sync::auth::{AuthConfig, Secret};
use persist_sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist_sync::transport::tls::{TlsClient, TlsServer};
use persist_sync::worker::backup::start_backup;
use persist_sync::worker::master::start_master;
use persist_sync::worker::SyncConfig;

#[derive(PersistentRecord, Debug, Clone, PartialEq)]
struct Setting {
    #[persist(key)]
    name: String,
    value: String,
}

fn cfg(node: &str) -> SyncConfig {
    SyncConfig::new(
        AuthConfig::new(
            "tls-pair",
            node,
            Secret::new(b"sixteen+ bytes of secret".to_vec()).unwrap(),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_over_mutual_tls() {
    let pki = common::Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let (m, b) = (
        Store::open_sqlite(dir.path().join("m.db")).unwrap(),
        Store::open_sqlite(dir.path().join("b.db")).unwrap(),
    );
    m.register::<Setting>().unwrap();
    b.register::<Setting>().unwrap();
    let server = TlsServer::from_pem_files(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let client = TlsClient::from_pem_files(
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    )
    .unwrap()
    .with_server_name("localhost")
    .unwrap();
    let acceptor = TcpAcceptor::bind("127.0.0.1:0", Some(server))
        .await
        .unwrap();
    let addr = acceptor.local_socket_addr().to_string();
    let _master = start_master(m.clone(), acceptor, cfg("master")).unwrap();
    let backup =
        start_backup(b.clone(), TcpDialer::new(addr, Some(client)), cfg("backup")).unwrap();
    for i in 0..20 {
        m.insert(&Setting {
            name: format!("k{i}"),
            value: format!("v{i}"),
        })
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.digest() != m.digest() || b.position() != m.position() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence over TLS: {:?}",
            backup.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.list::<Setting>().unwrap(), m.list::<Setting>().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_does_not_block_other_clients() {
    use persist_sync::transport::{Acceptor, Dialer};
    let pki = common::Pki::generate();
    let server = TlsServer::from_pem_files(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let mut acceptor = TcpAcceptor::bind("127.0.0.1:0", Some(server))
        .await
        .unwrap();
    let addr = acceptor.local_socket_addr();
    // A client that opens TCP and never says a word.
    let _staller = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accepted = tokio::spawn(async move { acceptor.accept().await.map(|_| ()) });
    let client = TlsClient::from_pem_files(
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    )
    .unwrap()
    .with_server_name("localhost")
    .unwrap();
    let dialer = TcpDialer::new(addr.to_string(), Some(client));
    let link = tokio::time::timeout(Duration::from_secs(3), dialer.dial()).await;
    assert!(
        matches!(link, Ok(Ok(_))),
        "the real client waited behind the stalled one"
    );
    let got = tokio::time::timeout(Duration::from_secs(3), accepted).await;
    assert!(
        matches!(got, Ok(Ok(Ok(())))),
        "the acceptor handed out the real client's link"
    );
}

/// 100 clients that open TCP and never say a word, more than the TLS
/// handshakes the acceptor runs at once: the real client still gets its
/// link, because the oldest silent handshakes are closed to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_tls_clients_does_not_keep_the_real_client_out() {
    use persist_sync::transport::{Acceptor, Dialer};
    let pki = common::Pki::generate();
    let server = TlsServer::from_pem_files(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let mut acceptor = TcpAcceptor::bind("127.0.0.1:0", Some(server))
        .await
        .unwrap();
    let addr = acceptor.local_socket_addr();
    let (links_tx, mut links) = tokio::sync::mpsc::unbounded_channel();
    let accepting = tokio::spawn(async move {
        loop {
            if let Ok(link) = acceptor.accept().await {
                let _ = links_tx.send(link);
            }
        }
    });
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The acceptor has taken them all once all but the handshakes it runs
    // at once are closed.
    let closed = |silent: &[tokio::net::TcpStream]| silent.iter().filter(|s| is_closed(s)).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while closed(&silent) < 68 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 100 silent clients closed",
            closed(&silent)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = TlsClient::from_pem_files(
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    )
    .unwrap()
    .with_server_name("localhost")
    .unwrap();
    let dialer = TcpDialer::new(addr.to_string(), Some(client));
    let link = tokio::time::timeout(Duration::from_secs(5), dialer.dial()).await;
    assert!(
        matches!(link, Ok(Ok(_))),
        "the real client was kept out by 100 silent ones: {:?}",
        link.map(|r| r.map(|_| ()))
    );
    let got = tokio::time::timeout(Duration::from_secs(5), links.recv()).await;
    assert!(
        matches!(got, Ok(Some(_))),
        "the acceptor handed out the real client's link"
    );
    accepting.abort();
}

/// Whether the other end closed `s` (end of stream or reset).
fn is_closed(s: &tokio::net::TcpStream) -> bool {
    match s.try_read(&mut [0u8; 64]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}
