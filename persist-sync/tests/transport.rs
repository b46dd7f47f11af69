//! Transport tests: one conformance suite every transport passes (in the
//! spirit of openraft's `testing/log/suite.rs`), then the memory network's
//! faults one by one.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persist_sync::testing::memory::{Direction, MemoryNetwork, Verdict};
use persist_sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist_sync::transport::{Acceptor, Dialer, FrameSink, FrameSource, Link};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(5);

async fn connect<D: Dialer, A: Acceptor>(dialer: &D, acceptor: &mut A) -> (D::Link, A::Link) {
    let (d, a) = tokio::join!(dialer.dial(), acceptor.accept());
    (d.unwrap(), a.unwrap())
}

/// What every transport must do.
async fn conformance<D: Dialer, A: Acceptor>(dialer: D, mut acceptor: A) {
    // Frames arrive whole and in order, both ways, including empty ones.
    let (d, a) = connect(&dialer, &mut acceptor).await;
    assert!(!d.peer().is_empty() && !a.peer().is_empty());
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    let frames: Vec<Vec<u8>> = vec![vec![], vec![1], vec![7; 4096], (0..=255).collect()];
    for f in &frames {
        d_tx.send(f.clone()).await.unwrap();
    }
    for f in &frames {
        assert_eq!(a_rx.recv().await.unwrap().as_ref(), Some(f));
    }
    a_tx.send(vec![42; 10]).await.unwrap();
    assert_eq!(d_rx.recv().await.unwrap(), Some(vec![42; 10]));

    // The halves work from separate tasks concurrently.
    let writer = tokio::spawn(async move {
        for i in 0..200u32 {
            d_tx.send(i.to_be_bytes().to_vec()).await.unwrap();
        }
        d_tx
    });
    for i in 0..200u32 {
        assert_eq!(a_rx.recv().await.unwrap(), Some(i.to_be_bytes().to_vec()));
    }
    let mut d_tx = writer.await.unwrap();

    // Oversized frames are an error on the receiving side; raising the limit
    // lets them through.
    d_tx.send(vec![0; 4097]).await.unwrap();
    let err = timeout(T, a_rx.recv()).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

    let (d, a) = connect(&dialer, &mut acceptor).await;
    let (mut d_tx, _d_rx) = d.split();
    let (_a_tx, mut a_rx) = a.split();
    a_rx.set_max_frame(1 << 20);
    d_tx.send(vec![3; 1 << 20]).await.unwrap();
    assert_eq!(a_rx.recv().await.unwrap().map(|f| f.len()), Some(1 << 20));

    // A clean close is seen as None after the frames sent before it.
    d_tx.send(vec![1, 2]).await.unwrap();
    d_tx.close().await.unwrap();
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![1, 2]));
    assert_eq!(timeout(T, a_rx.recv()).await.unwrap().unwrap(), None);

    // Dropping a whole end closes the link for the other.
    let (d, a) = connect(&dialer, &mut acceptor).await;
    drop(a);
    let (mut d_tx, mut d_rx) = d.split();
    assert!(!matches!(
        timeout(T, d_rx.recv()).await.unwrap(),
        Ok(Some(_))
    ));
    // Sends fail eventually (TCP may accept a few into its buffer first).
    let mut failed = false;
    for _ in 0..100 {
        if d_tx.send(vec![0; 1024]).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(failed, "sending on a link closed by the peer never failed");
}

#[tokio::test]
async fn memory_transport_conforms() {
    let net = MemoryNetwork::new();
    let acceptor = net.acceptor("master");
    conformance(net.dialer("master"), acceptor).await;
}

#[tokio::test]
async fn tcp_transport_conforms() {
    let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
    let dialer = TcpDialer::new(acceptor.local_addr(), None);
    conformance(dialer, acceptor).await;
}

#[tokio::test]
async fn tcp_dial_to_nothing_fails() {
    let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
    let addr = acceptor.local_addr();
    drop(acceptor);
    assert!(TcpDialer::new(addr, None).dial().await.is_err());
}

async fn memory_pair(
    net: &MemoryNetwork,
) -> (
    persist_sync::testing::memory::MemoryLink,
    persist_sync::testing::memory::MemoryLink,
) {
    let mut acceptor = net.acceptor("master");
    let (d, a) = connect(&net.dialer("master"), &mut acceptor).await;
    // Links outlive their acceptor.
    (d, a)
}

#[tokio::test]
async fn cut_fails_both_ends_now() {
    let net = MemoryNetwork::new();
    let (d, a) = memory_pair(&net).await;
    let faults = d.faults();
    let (mut d_tx, mut d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    // A receiver blocked in recv wakes up with an error.
    let blocked = tokio::spawn(async move { a_rx.recv().await });
    tokio::task::yield_now().await;
    faults.cut();
    let err = timeout(T, blocked).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        d_tx.send(vec![1]).await.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert!(a_tx.send(vec![1]).await.is_err());
    assert!(d_rx.recv().await.is_err());
    assert!(net.links().is_empty(), "a cut link is not listed as open");
}

#[tokio::test]
async fn cut_loses_frames_in_flight() {
    let net = MemoryNetwork::new();
    let (d, a) = memory_pair(&net).await;
    let faults = d.faults();
    faults.delay(Duration::from_secs(60));
    let (mut d_tx, _d_rx) = d.split();
    let (_a_tx, mut a_rx) = a.split();
    d_tx.send(vec![1]).await.unwrap();
    faults.cut();
    assert!(timeout(T, a_rx.recv()).await.unwrap().is_err());
}

#[tokio::test]
async fn partition_drops_silently_and_heals() {
    let net = MemoryNetwork::new();
    let (d, a) = memory_pair(&net).await;
    let faults = d.faults();
    let (mut d_tx, _d_rx) = d.split();
    let (_a_tx, mut a_rx) = a.split();
    faults.partition(true);
    for i in 0..5u8 {
        d_tx.send(vec![i]).await.unwrap(); // the sender notices nothing
    }
    // The receiver sees nothing either: no error, no close.
    assert!(timeout(Duration::from_millis(100), a_rx.recv())
        .await
        .is_err());
    faults.partition(false);
    d_tx.send(vec![9]).await.unwrap();
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![9]));
    let stats = faults.stats(Direction::ToAcceptor);
    assert_eq!((stats.sent, stats.dropped, stats.delivered), (6, 5, 1));
}

#[tokio::test]
async fn network_partition_blocks_dialing_and_traffic() {
    let net = MemoryNetwork::new();
    let (d, a) = memory_pair(&net).await;
    let _acceptor = net.acceptor("master");
    let (mut d_tx, _d_rx) = d.split();
    let (_a_tx, mut a_rx) = a.split();
    net.partition(true);
    let err = net.dialer("master").dial().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    d_tx.send(vec![1]).await.unwrap();
    assert!(timeout(Duration::from_millis(100), a_rx.recv())
        .await
        .is_err());
    net.partition(false);
    assert!(net.dialer("master").dial().await.is_ok());
    d_tx.send(vec![2]).await.unwrap();
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![2]));
}

#[tokio::test]
async fn dialing_a_missing_or_dropped_acceptor_is_refused() {
    let net = MemoryNetwork::new();
    let err = net.dialer("nobody").dial().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    let acceptor = net.acceptor("master");
    drop(acceptor);
    let err = net.dialer("master").dial().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

/// Which of 1000 frames arrive at a 30% drop rate, for a given seed.
async fn survivors(seed: u64) -> Vec<u16> {
    let net = MemoryNetwork::with_seed(seed);
    let (d, a) = memory_pair(&net).await;
    d.faults().drop_rate(0.3);
    let (mut d_tx, _d_rx) = d.split();
    let (_a_tx, mut a_rx) = a.split();
    tokio::spawn(async move {
        for i in 0..1000u16 {
            d_tx.send(i.to_be_bytes().to_vec()).await.unwrap();
        }
        // Dropping the sink closes the link after the last frame.
    });
    let mut got = Vec::new();
    while let Some(f) = a_rx.recv().await.unwrap() {
        got.push(u16::from_be_bytes([f[0], f[1]]));
    }
    got
}

#[tokio::test]
async fn drop_rate_is_deterministic_per_seed() {
    let a = survivors(7).await;
    let b = survivors(7).await;
    let c = survivors(8).await;
    assert_eq!(a, b, "same seed, same drops");
    assert_ne!(a, c, "another seed, other drops");
    assert!((600..800).contains(&a.len()), "{} of 1000 arrived", a.len());
    assert!(a.windows(2).all(|w| w[0] < w[1]), "order is kept");
}

#[tokio::test]
async fn duplicate_rate_duplicates() {
    let net = MemoryNetwork::new();
    let (d, a) = memory_pair(&net).await;
    let faults = d.faults();
    faults.duplicate_rate(1.0);
    let (mut d_tx, _d_rx) = d.split();
    let (_a_tx, mut a_rx) = a.split();
    d_tx.send(vec![5]).await.unwrap();
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![5]));
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![5]));
    assert_eq!(faults.stats(Direction::ToAcceptor).duplicated, 1);
}

#[tokio::test(start_paused = true)]
async fn delay_delays_in_order() {
    let net = MemoryNetwork::new();
    let (d, a) = memory_pair(&net).await;
    d.faults().delay(Duration::from_millis(500));
    let (mut d_tx, _d_rx) = d.split();
    let (_a_tx, mut a_rx) = a.split();
    let start = tokio::time::Instant::now();
    d_tx.send(vec![1]).await.unwrap();
    d_tx.send(vec![2]).await.unwrap();
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![1]));
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![2]));
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "delays overlap"
    );
}

#[tokio::test]
async fn hook_sees_every_frame_with_its_direction() {
    let net = MemoryNetwork::new();
    let (d, a) = memory_pair(&net).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    d.faults().on_frame(move |dir, frame| {
        log.lock().unwrap().push((dir, frame.to_vec()));
        match frame.first() {
            Some(0) => Verdict::Drop,
            Some(2) => Verdict::Duplicate,
            _ => Verdict::Pass,
        }
    });
    let (mut d_tx, _d_rx) = d.split();
    let (mut a_tx, mut a_rx) = a.split();
    for b in [0u8, 1, 2] {
        d_tx.send(vec![b]).await.unwrap();
    }
    a_tx.send(vec![9]).await.unwrap();
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![1]));
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![2]));
    assert_eq!(a_rx.recv().await.unwrap(), Some(vec![2]));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&(Direction::ToDialer, vec![9])));
    assert_eq!(
        seen.iter()
            .filter(|(d, _)| *d == Direction::ToAcceptor)
            .count(),
        3
    );
}

#[tokio::test]
async fn cut_all_and_links() {
    let net = MemoryNetwork::new();
    let mut acceptor = net.acceptor("master");
    let dialer = net.dialer("master");
    let (d1, _a1) = connect(&dialer, &mut acceptor).await;
    let (d2, _a2) = connect(&dialer, &mut acceptor).await;
    let ids: Vec<u64> = net.links().iter().map(|l| l.link_id()).collect();
    assert_eq!(ids, vec![0, 1]);
    net.cut_all();
    let (_t1, mut r1) = d1.split();
    let (_t2, mut r2) = d2.split();
    assert!(r1.recv().await.is_err());
    assert!(r2.recv().await.is_err());
}
