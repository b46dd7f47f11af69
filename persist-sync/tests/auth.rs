//! Authentication over the memory transport, real TCP and TLS.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cfg, Pki, SECRET};
use persist_sync::auth::{authenticate, AuthConfig, AuthError, ConfigError, Peer, Secret};
use persist_sync::codec::{decode, encode, CodecError, Limits};
use persist_sync::protocol::{LinkRole, Message, RefuseReason, PROTOCOL_VERSION};
use persist_sync::testing::memory::{Direction, MemoryNetwork, Verdict};
use persist_sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist_sync::transport::tls::{TlsClient, TlsServer};
use persist_sync::transport::{Acceptor, Dialer, FrameSink, FrameSource, Link};

const T: Duration = Duration::from_secs(5);

type Halves<L> = (<L as Link>::Sink, <L as Link>::Source);

/// Runs both sides of the handshake concurrently.
async fn handshake<D: Link, A: Link>(
    d: D,
    a: A,
    d_cfg: &AuthConfig,
    a_cfg: &AuthConfig,
) -> (
    Result<(Peer, Halves<D>), AuthError>,
    Result<(Peer, Halves<A>), AuthError>,
) {
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    let (dr, ar) = tokio::join!(
        authenticate(&mut d_tx, &mut d_rx, LinkRole::Dialer, d_cfg, T),
        authenticate(&mut a_tx, &mut a_rx, LinkRole::Acceptor, a_cfg, T),
    );
    (dr.map(|p| (p, (d_tx, d_rx))), ar.map(|p| (p, (a_tx, a_rx))))
}

async fn memory_link() -> (
    persist_sync::testing::memory::MemoryLink,
    persist_sync::testing::memory::MemoryLink,
) {
    let net = MemoryNetwork::new();
    let mut acceptor = net.acceptor("master");
    let dialer = net.dialer("master");
    let (d, a) = tokio::join!(dialer.dial(), acceptor.accept());
    (d.unwrap(), a.unwrap())
}

async fn tcp_link() -> (
    persist_sync::transport::tcp::TcpLink,
    persist_sync::transport::tcp::TcpLink,
) {
    let mut acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
    let dialer = TcpDialer::new(acceptor.local_addr(), None);
    let (d, a) = tokio::join!(dialer.dial(), acceptor.accept());
    (d.unwrap(), a.unwrap())
}

/// Both authenticated, then frames flow both ways with the raised limit.
async fn assert_good<D: Link, A: Link>(d: D, a: A) {
    let backup = cfg("plant-7", "gw-b", SECRET);
    let master = cfg("plant-7", "gw-a", SECRET);
    let (dr, ar) = handshake(d, a, &backup, &master).await;
    let (d_peer, (mut d_tx, mut d_rx)) = dr.unwrap();
    let (a_peer, (mut a_tx, mut a_rx)) = ar.unwrap();
    assert_eq!(
        d_peer,
        Peer {
            node_id: "gw-a".into(),
            cluster: "plant-7".into()
        }
    );
    assert_eq!(a_peer.node_id, "gw-b");
    d_rx.set_max_frame(Limits::default().max_frame);
    a_rx.set_max_frame(Limits::default().max_frame);
    let big = Message::SnapshotRows {
        table: 0,
        rows: vec![vec![7; 100_000]],
    };
    a_tx.send(encode(&big)).await.unwrap();
    let got = d_rx.recv().await.unwrap().unwrap();
    assert_eq!(decode(&got, &Limits::default()).unwrap(), big);
    d_tx.send(encode(&Message::Ack { position: 1 }))
        .await
        .unwrap();
    assert_eq!(
        decode(&a_rx.recv().await.unwrap().unwrap(), &Limits::default()).unwrap(),
        Message::Ack { position: 1 }
    );
}

#[tokio::test]
async fn good_secret_memory() {
    let (d, a) = memory_link().await;
    assert_good(d, a).await;
}

#[tokio::test]
async fn good_secret_tcp() {
    let (d, a) = tcp_link().await;
    assert_good(d, a).await;
}

async fn assert_wrong_secret<D: Link, A: Link>(d: D, a: A) {
    let backup = cfg("plant-7", "gw-b", b"not the right secret at all");
    let master = cfg("plant-7", "gw-a", SECRET);
    let (dr, ar) = handshake(d, a, &backup, &master).await;
    assert!(matches!(ar, Err(AuthError::BadProof)), "{:?}", ar.err());
    assert!(
        matches!(dr, Err(AuthError::PeerRejectedUs)),
        "{:?}",
        dr.err()
    );
}

#[tokio::test]
async fn wrong_secret_memory_acceptor_sends_nothing_after_hello() {
    let (d, a) = memory_link().await;
    let from_acceptor = Arc::new(Mutex::new(Vec::new()));
    let log = from_acceptor.clone();
    d.faults().on_frame(move |dir, frame| {
        if dir == Direction::ToDialer {
            log.lock().unwrap().push(frame.to_vec());
        }
        Verdict::Pass
    });
    assert_wrong_secret(d, a).await;
    let frames = from_acceptor.lock().unwrap().clone();
    assert_eq!(frames.len(), 1, "the acceptor sent more than its hello");
    assert!(matches!(
        decode(&frames[0], &Limits::handshake()),
        Ok(Message::Hello {
            role: LinkRole::Acceptor,
            ..
        })
    ));
}

#[tokio::test]
async fn wrong_secret_tcp() {
    let (d, a) = tcp_link().await;
    assert_wrong_secret(d, a).await;
}

#[test]
fn missing_or_short_secret_is_refused_at_config_time() {
    assert_eq!(
        Secret::new(Vec::new()).unwrap_err(),
        ConfigError::SecretTooShort { len: 0, min: 16 }
    );
    let err = Secret::new(b"short".to_vec()).unwrap_err();
    assert!(err.to_string().contains("at least 16 bytes"), "{err}");
    let secret = Secret::new(SECRET.to_vec()).unwrap();
    assert!(matches!(
        AuthConfig::new("", "gw", secret.clone()),
        Err(ConfigError::BadName {
            what: "cluster name",
            ..
        })
    ));
    assert!(AuthConfig::new("c", "n".repeat(300), secret).is_err());
}

#[tokio::test]
async fn cluster_mismatch_is_refused_on_both_sides() {
    for tcp in [false, true] {
        let backup = cfg("plant-8", "gw-b", SECRET);
        let master = cfg("plant-7", "gw-a", SECRET);
        let (dr, ar) = if tcp {
            let (d, a) = tcp_link().await;
            let (dr, ar) = handshake(d, a, &backup, &master).await;
            (dr.map(|r| r.0), ar.map(|r| r.0))
        } else {
            let (d, a) = memory_link().await;
            let (dr, ar) = handshake(d, a, &backup, &master).await;
            (dr.map(|r| r.0), ar.map(|r| r.0))
        };
        assert!(
            matches!(dr, Err(AuthError::Refused(RefuseReason::ClusterName))),
            "{dr:?}"
        );
        assert!(
            matches!(ar, Err(AuthError::Refused(RefuseReason::ClusterName))),
            "{ar:?}"
        );
    }
}

fn hello(protocol: u16, role: LinkRole, nonce: [u8; 32]) -> Vec<u8> {
    encode(&Message::Hello {
        protocol,
        cluster: "plant-7".into(),
        node_id: "old".into(),
        role,
        nonce,
    })
}

/// Version 6 ships entry bodies packed: a version 5 peer, which would take
/// a packed body for a malformed one, is refused in its hello, with a
/// reason an operator can read.
#[tokio::test]
async fn a_peer_from_before_packed_bodies_is_refused_with_both_versions() {
    assert_eq!(PROTOCOL_VERSION, 6);
    let master = cfg("plant-7", "gw-a", SECRET);
    let (d, a) = memory_link().await;
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    d_tx.send(hello(5, LinkRole::Dialer, [1; 32]))
        .await
        .unwrap();
    let ar = authenticate(&mut a_tx, &mut a_rx, LinkRole::Acceptor, &master, T).await;
    let expected = RefuseReason::ProtocolVersion { ours: 6, theirs: 5 };
    assert!(
        matches!(&ar, Err(AuthError::Refused(r)) if *r == expected),
        "{ar:?}"
    );
    let reply = decode(&d_rx.recv().await.unwrap().unwrap(), &Limits::handshake()).unwrap();
    assert_eq!(
        reply,
        Message::Refused {
            reason: expected.clone()
        }
    );
    assert_eq!(
        expected.to_string(),
        "protocol version 5 refused by a node speaking version 6: \
         run releases of the same protocol on both nodes"
    );
}

#[tokio::test]
async fn protocol_mismatch_is_refused_on_both_sides() {
    let master = cfg("plant-7", "gw-a", SECRET);
    let backup = cfg("plant-7", "gw-b", SECRET);
    let expected = RefuseReason::ProtocolVersion {
        ours: PROTOCOL_VERSION,
        theirs: 99,
    };

    // A future dialer meets our acceptor: refused, and told why.
    let (d, a) = memory_link().await;
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    d_tx.send(hello(99, LinkRole::Dialer, [1; 32]))
        .await
        .unwrap();
    let ar = authenticate(&mut a_tx, &mut a_rx, LinkRole::Acceptor, &master, T).await;
    assert!(
        matches!(&ar, Err(AuthError::Refused(r)) if *r == expected),
        "{ar:?}"
    );
    let reply = decode(&d_rx.recv().await.unwrap().unwrap(), &Limits::handshake()).unwrap();
    assert_eq!(
        reply,
        Message::Refused {
            reason: expected.clone()
        }
    );
    assert_eq!(d_rx.recv().await.unwrap(), None, "the acceptor closes");

    // Our dialer meets an acceptor that refuses it.
    let (d, a) = memory_link().await;
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    let fake = tokio::spawn(async move {
        a_rx.recv().await.unwrap().unwrap();
        let reason = RefuseReason::ProtocolVersion {
            ours: 99,
            theirs: PROTOCOL_VERSION,
        };
        a_tx.send(encode(&Message::Refused { reason }))
            .await
            .unwrap();
    });
    let dr = authenticate(&mut d_tx, &mut d_rx, LinkRole::Dialer, &backup, T).await;
    assert!(
        matches!(
            dr,
            Err(AuthError::Refused(RefuseReason::ProtocolVersion { ours: 99, theirs }))
                if theirs == PROTOCOL_VERSION
        ),
        "{dr:?}"
    );
    fake.await.unwrap();

    // Our dialer meets an acceptor that answers with another version.
    let (d, a) = memory_link().await;
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    let fake = tokio::spawn(async move {
        a_rx.recv().await.unwrap().unwrap();
        a_tx.send(hello(99, LinkRole::Acceptor, [2; 32]))
            .await
            .unwrap();
        (a_tx, a_rx)
    });
    let dr = authenticate(&mut d_tx, &mut d_rx, LinkRole::Dialer, &backup, T).await;
    assert!(
        matches!(&dr, Err(AuthError::Refused(r)) if *r == expected),
        "{dr:?}"
    );
    drop(fake.await.unwrap());
}

#[tokio::test]
async fn a_peer_echoing_our_nonce_is_refused() {
    let backup = cfg("plant-7", "gw-b", SECRET);
    let (d, a) = memory_link().await;
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    let reflector = tokio::spawn(async move {
        let frame = a_rx.recv().await.unwrap().unwrap();
        let Ok(Message::Hello { nonce, .. }) = decode(&frame, &Limits::handshake()) else {
            panic!("expected a hello");
        };
        a_tx.send(hello(PROTOCOL_VERSION, LinkRole::Acceptor, nonce))
            .await
            .unwrap();
        (a_tx, a_rx)
    });
    let dr = authenticate(&mut d_tx, &mut d_rx, LinkRole::Dialer, &backup, T).await;
    assert!(
        matches!(&dr, Err(AuthError::Protocol(m)) if m.contains("nonce")),
        "{dr:?}"
    );
    drop(reflector.await.unwrap());
}

#[tokio::test]
async fn oversized_pre_auth_frame_is_rejected() {
    let master = cfg("plant-7", "gw-a", SECRET);
    for tcp in [false, true] {
        let result = if tcp {
            let (d, a) = tcp_link().await;
            oversized(d, a, &master).await
        } else {
            let (d, a) = memory_link().await;
            oversized(d, a, &master).await
        };
        match result {
            Err(AuthError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
            other => panic!("expected an oversized frame error, got {other:?}"),
        }
    }
}

async fn oversized<D: Link, A: Link>(d: D, a: A, master: &AuthConfig) -> Result<Peer, AuthError> {
    let (mut d_tx, _d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    // A source that allowed big frames is put back to the handshake limit.
    a_rx.set_max_frame(1 << 20);
    let mut frame = hello(PROTOCOL_VERSION, LinkRole::Dialer, [1; 32]);
    frame.resize(5000, 0);
    d_tx.send(frame).await.unwrap();
    authenticate(&mut a_tx, &mut a_rx, LinkRole::Acceptor, master, T).await
}

#[tokio::test]
async fn garbage_instead_of_hello_is_a_codec_error() {
    let master = cfg("plant-7", "gw-a", SECRET);
    for (garbage, expect_version) in [
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), true),
        (vec![1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], false),
        (vec![1, 0, 1, 0], false),
    ] {
        let (d, a) = tcp_link().await;
        let (mut d_tx, _d_rx) = d.split();
        let (mut a_tx, mut a_rx) = a.split();
        d_tx.send(garbage.clone()).await.unwrap();
        let ar = authenticate(&mut a_tx, &mut a_rx, LinkRole::Acceptor, &master, T).await;
        match ar {
            Err(AuthError::Codec(CodecError::UnsupportedVersion { .. })) => assert!(expect_version),
            Err(AuthError::Codec(_)) => assert!(!expect_version),
            other => panic!("{garbage:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_message_other_than_hello_is_a_protocol_error() {
    let master = cfg("plant-7", "gw-a", SECRET);
    let (d, a) = memory_link().await;
    let (mut d_tx, _d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    d_tx.send(encode(&Message::Proof { mac: [0; 32] }))
        .await
        .unwrap();
    let ar = authenticate(&mut a_tx, &mut a_rx, LinkRole::Acceptor, &master, T).await;
    assert!(matches!(ar, Err(AuthError::Protocol(_))), "{ar:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out() {
    let master = cfg("plant-7", "gw-a", SECRET);
    let (d, a) = memory_link().await;
    let (mut a_tx, mut a_rx) = a.split();
    let ar = authenticate(
        &mut a_tx,
        &mut a_rx,
        LinkRole::Acceptor,
        &master,
        Duration::from_secs(3),
    )
    .await;
    assert!(matches!(ar, Err(AuthError::Timeout(_))), "{ar:?}");
    drop(d);
}

#[tokio::test]
async fn a_partitioned_link_times_out_instead_of_hanging() {
    let (d, a) = memory_link().await;
    d.faults().partition(true);
    let backup = cfg("plant-7", "gw-b", SECRET);
    let master = cfg("plant-7", "gw-a", SECRET);
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    let short = Duration::from_millis(200);
    let (dr, ar) = tokio::join!(
        authenticate(&mut d_tx, &mut d_rx, LinkRole::Dialer, &backup, short),
        authenticate(&mut a_tx, &mut a_rx, LinkRole::Acceptor, &master, short),
    );
    assert!(matches!(dr, Err(AuthError::Timeout(_))), "{dr:?}");
    assert!(matches!(ar, Err(AuthError::Timeout(_))), "{ar:?}");
}

// --- TLS ---

fn tls_server(pki: &Pki, require_client_cert: bool) -> TlsServer {
    let ca = pki.path("ca.pem");
    TlsServer::from_pem_files(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        require_client_cert.then_some(ca.as_path()),
    )
    .unwrap()
}

#[tokio::test]
async fn mutual_tls_link_authenticates_and_carries_frames() {
    let pki = Pki::generate();
    let mut acceptor = TcpAcceptor::bind("127.0.0.1:0", Some(tls_server(&pki, true)))
        .await
        .unwrap();
    let client = TlsClient::from_pem_files(
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    )
    .unwrap();
    // The certificate names 127.0.0.1: no server name override needed.
    let dialer = TcpDialer::new(acceptor.local_addr(), Some(client));
    let (d, a) = tokio::join!(dialer.dial(), acceptor.accept());
    let (d, a) = (d.unwrap(), a.unwrap());
    assert!(d.is_tls() && a.is_tls());
    assert_good(d, a).await;
}

#[tokio::test]
async fn tls_server_name_override() {
    let pki = Pki::generate();
    let mut acceptor = TcpAcceptor::bind("127.0.0.1:0", Some(tls_server(&pki, false)))
        .await
        .unwrap();
    let client = TlsClient::from_pem_files(&pki.path("ca.pem"), None)
        .unwrap()
        .with_server_name("localhost")
        .unwrap();
    let dialer = TcpDialer::new(acceptor.local_addr(), Some(client));
    let (d, a) = tokio::join!(dialer.dial(), acceptor.accept());
    assert_good(d.unwrap(), a.unwrap()).await;
}

#[tokio::test]
async fn client_without_cert_is_refused_when_required() {
    let pki = Pki::generate();
    let mut acceptor = TcpAcceptor::bind("127.0.0.1:0", Some(tls_server(&pki, true)))
        .await
        .unwrap();
    let client = TlsClient::from_pem_files(&pki.path("ca.pem"), None).unwrap();
    let dialer = TcpDialer::new(acceptor.local_addr(), Some(client));
    let (d, a) = tokio::join!(dialer.dial(), acceptor.accept());
    assert!(
        a.is_err(),
        "the server accepted a client without certificate"
    );
    // With TLS 1.3 the client learns of the refusal on its first read.
    if let Ok(d) = d {
        let (mut tx, mut rx) = d.split();
        let _ = tx.send(vec![1]).await;
        assert!(!matches!(
            tokio::time::timeout(T, rx.recv()).await.unwrap(),
            Ok(Some(_))
        ));
    }
}

#[tokio::test]
async fn client_not_trusting_the_server_ca_fails() {
    let pki = Pki::generate();
    let mut acceptor = TcpAcceptor::bind("127.0.0.1:0", Some(tls_server(&pki, false)))
        .await
        .unwrap();
    let client = TlsClient::from_pem_files(&pki.path("other-ca.pem"), None).unwrap();
    let dialer = TcpDialer::new(acceptor.local_addr(), Some(client));
    let (d, a) = tokio::join!(dialer.dial(), acceptor.accept());
    let err = d.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(a.is_err());
}

#[test]
fn tls_file_errors_name_the_file() {
    let pki = Pki::generate();
    let missing = pki.path("nope.pem");
    let err = TlsClient::from_pem_files(&missing, None).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    // A key file where a certificate is expected.
    let err = TlsServer::from_pem_files(&pki.path("server.key"), &pki.path("server.key"), None)
        .unwrap_err();
    assert!(
        err.to_string().contains("server.key") && err.to_string().contains("no PEM certificate"),
        "{err}"
    );
    // A certificate where a key is expected.
    let err = TlsServer::from_pem_files(&pki.path("server.pem"), &pki.path("server.pem"), None)
        .unwrap_err();
    assert!(err.to_string().contains("no PEM private key"), "{err}");
    // A key that does not match the certificate.
    let err = TlsServer::from_pem_files(&pki.path("server.pem"), &pki.path("client.key"), None)
        .unwrap_err();
    assert!(
        err.to_string().contains("server.pem") && err.to_string().contains("client.key"),
        "{err}"
    );
}
