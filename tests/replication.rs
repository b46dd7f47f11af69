//! Replication between a master and a backup store, in process: over real
//! TCP on loopback and over the in-memory network with injected faults.

mod conformance;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conformance::records::*;
use conformance::Fixture;
use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::codec;
use persist::sync::protocol::{Message, RefuseReason};
use persist::sync::testing::memory::{Direction, MemoryNetwork, Verdict};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::worker::backup::{start_backup, BackupHandle};
use persist::sync::worker::master::{start_master, MasterHandle};
use persist::sync::worker::{LinkStatus, SyncConfig, SyncError};
use persist::{PersistentRecord, RecordEvent, Store};

const SECRET: &[u8] = b"correct horse battery staple";

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn cfg(node: &str, secret: &[u8]) -> SyncConfig {
    logs();
    let mut c = SyncConfig::new(
        AuthConfig::new("plant-7", node, Secret::new(secret.to_vec()).unwrap()).unwrap(),
    );
    c.reconnect_initial = Duration::from_millis(20);
    c.reconnect_max = Duration::from_millis(200);
    c.retention_interval = Duration::from_millis(50);
    c.snapshot_chunk_rows = 16;
    c
}

fn store(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<SmsSettings>().unwrap();
    s.register::<Broker>().unwrap();
    s.register::<Folder>().unwrap();
    s
}

async fn master_on_tcp(m: &Store, c: SyncConfig) -> (MasterHandle, String) {
    let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
    let addr = acceptor.local_socket_addr().to_string();
    (start_master(m.clone(), acceptor, c).unwrap(), addr)
}

fn backup_on_tcp(b: &Store, addr: &str, c: SyncConfig) -> BackupHandle {
    start_backup(b.clone(), TcpDialer::new(addr.to_string(), None), c).unwrap()
}

/// Waits until the backup holds the master's position and digest.
async fn converge(m: &Store, b: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (b.position(), b.digest()) != (m.position(), m.digest()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: master {} backup {}",
            m.position(),
            b.position()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_identical(m: &Store, b: &Store) {
    assert_eq!(b.list::<Profile>().unwrap(), m.list::<Profile>().unwrap());
    assert_eq!(
        b.list::<SmsSettings>().unwrap(),
        m.list::<SmsSettings>().unwrap()
    );
    assert_eq!(b.list::<Broker>().unwrap(), m.list::<Broker>().unwrap());
    assert_eq!(b.list::<Folder>().unwrap(), m.list::<Folder>().unwrap());
    assert_eq!((b.position(), b.digest()), (m.position(), m.digest()));
    assert!(b.verify().unwrap().is_consistent());
    assert!(m.verify().unwrap().is_consistent());
}

async fn wait_status(
    f: impl Fn() -> LinkStatus,
    what: &str,
    ok: impl Fn(&LinkStatus) -> bool,
) -> LinkStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = f();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: status stayed {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Inserts, a multi-record transaction, an update and a cascading delete.
fn write_mix(m: &Store, tag: &str) {
    let p = m.insert(&profile(&format!("{tag}-p"))).unwrap();
    m.write(|tx| {
        tx.insert(&sms(p))?;
        let q = tx.insert(&profile(&format!("{tag}-q")))?;
        tx.insert(&Broker {
            id: 0,
            profile_id: q,
            name: tag.into(),
            parent: None,
        })?;
        tx.insert_many(
            &(0..50)
                .map(|i| Folder {
                    id: 0,
                    parent: None,
                    name: format!("{tag}{i}"),
                })
                .collect::<Vec<_>>(),
        )?;
        Ok(())
    })
    .unwrap();
    let mut st = m.get::<SmsSettings>(p).unwrap().unwrap();
    st.port += 1;
    m.update(&st).unwrap();
    m.delete::<Profile>(p).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_replication_over_tcp_with_live_events() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let mut events = b.subscribe::<Profile>().unwrap();
    let (master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    for i in 0..20 {
        write_mix(&m, &format!("w{i}"));
    }
    converge(&m, &b).await;
    assert_identical(&m, &b);
    let first = events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(first, RecordEvent::Added(ref p) if p.name == "w0-p"),
        "{first:?}"
    );
    let s = wait_status(
        || master.status(),
        "master sees the backup in sync",
        |s| s.connected && s.peer_acked == m.position(),
    )
    .await;
    assert_eq!(s.peer.as_deref(), Some("backup"));
    assert!(backup.status().connected);
    assert_eq!(
        backup.status().resyncs,
        0,
        "a fresh backup replays the log, no snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_backup_resumes_incrementally() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let (_master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    write_mix(&m, "a");
    converge(&m, &b).await;
    backup.shutdown().await;
    drop(b);
    write_mix(&m, "b");
    let b = store(&fb);
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    converge(&m, &b).await;
    assert_identical(&m, &b);
    assert_eq!(backup.status().resyncs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_backup_past_retention_gets_a_snapshot() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    write_mix(&m, "early");
    let mut c = cfg("master", SECRET);
    c.retention.max_entries = 2;
    let (master, addr) = master_on_tcp(&m, c).await;
    for i in 0..10 {
        m.insert(&profile(&format!("later{i}"))).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while m.head().unwrap().first_retained < m.position() - 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never trimmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    converge(&m, &b).await;
    assert_identical(&m, &b);
    wait_status(
        || backup.status(),
        "the resync is counted",
        |s| s.resyncs >= 1,
    )
    .await;
    assert_eq!(backup.status().resyncs, 1);
    wait_status(
        || master.status(),
        "master counts the resync",
        |s| s.resyncs == 1,
    )
    .await;
    write_mix(&m, "after");
    converge(&m, &b).await;
    assert_identical(&m, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_backup_is_detected_and_repaired() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let (_master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    write_mix(&m, "x");
    converge(&m, &b).await;
    backup.shutdown().await;
    // Someone edits the backup's database behind the library's back.
    fb.raw("UPDATE folder SET name = 'tampered' WHERE id = 3");
    assert!(!b.verify().unwrap().is_consistent());
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    // The recorded range digests say where: that range is repaired, no snapshot.
    let s = wait_status(
        || backup.status(),
        "backup repaired",
        |s| s.scrub.repairs == 1,
    )
    .await;
    assert_eq!((s.resyncs, s.scrub.rows_shipped), (0, 1));
    converge(&m, &b).await;
    assert_identical(&m, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_requested_resync() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let (master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    write_mix(&m, "x");
    converge(&m, &b).await;
    master.request_resync();
    wait_status(
        || backup.status(),
        "backup resynced on the master's request",
        |s| s.resyncs == 1,
    )
    .await;
    backup.request_resync();
    wait_status(
        || backup.status(),
        "backup resynced on its own request",
        |s| s.resyncs == 2,
    )
    .await;
    write_mix(&m, "y");
    converge(&m, &b).await;
    assert_identical(&m, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_learns_nothing() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    write_mix(&m, "secret data");
    let (master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", b"not the secret at all"));
    let s = wait_status(
        || backup.status(),
        "backup reports the failure",
        |s| s.last_error.is_some(),
    )
    .await;
    assert!(
        s.last_error.unwrap().contains("authentication"),
        "{:?}",
        backup.status()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.position(), 0, "nothing flowed");
    assert!(b.list::<Profile>().unwrap().is_empty());
    assert!(!master.status().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_mismatch_is_refused_on_both_sides() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let m = store(&fm);
    let b = fb.open();
    b.register::<Profile>().unwrap(); // fewer tables: another schema
    let (master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    let s = wait_status(
        || backup.status(),
        "backup sees the refusal",
        |s| s.refused.is_some(),
    )
    .await;
    assert!(
        matches!(s.refused, Some(RefuseReason::SchemaMismatch { .. })),
        "{s:?}"
    );
    let s = wait_status(
        || master.status(),
        "master shows the refusal",
        |s| s.refused.is_some(),
    )
    .await;
    assert!(
        matches!(s.refused, Some(RefuseReason::SchemaMismatch { .. })),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commit_waits_for_the_backup() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let (master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    wait_status(|| backup.status(), "connected", |s| s.connected).await;
    let master = Arc::new(master);
    let (mm, bb) = (master.clone(), b.clone());
    tokio::task::spawn_blocking(move || {
        for i in 0..50 {
            let id = mm
                .write_replicated(Duration::from_secs(5), |tx| {
                    tx.insert(&profile(&format!("sync{i}")))
                })
                .unwrap();
            // Returned: the backup has it, now.
            assert!(
                bb.get::<Profile>(id).unwrap().is_some(),
                "write {i} acknowledged before the backup had it"
            );
        }
    })
    .await
    .unwrap();
    backup.shutdown().await;
    let mm = master.clone();
    let err = tokio::task::spawn_blocking(move || {
        mm.write_replicated(Duration::from_millis(300), |tx| {
            tx.insert(&profile("unconfirmed"))
        })
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, SyncError::Timeout { .. }), "{err}");
    assert!(
        m.query::<Profile>()
            .filter(Profile::columns().name.eq("unconfirmed"))
            .first()
            .unwrap()
            .is_some(),
        "committed locally"
    );
}

/// Memory network: a pair whose link can be faulted.
async fn memory_pair(net: &MemoryNetwork, m: &Store, b: &Store) -> (MasterHandle, BackupHandle) {
    let master = start_master(m.clone(), net.acceptor("master"), cfg("master", SECRET)).unwrap();
    let backup = start_backup(b.clone(), net.dialer("master"), cfg("backup", SECRET)).unwrap();
    (master, backup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_links_resume_without_gaps_or_duplicates() {
    let net = MemoryNetwork::with_seed(7);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let (_master, backup) = memory_pair(&net, &m, &b).await;
    for round in 0..5 {
        write_mix(&m, &format!("r{round}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        net.cut_all();
        write_mix(&m, &format!("r{round}b"));
    }
    converge(&m, &b).await;
    assert_identical(&m, &b);
    assert_eq!(backup.status().resyncs, 0, "cuts resume incrementally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_delayed_frames_are_harmless() {
    let net = MemoryNetwork::with_seed(11);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let (_master, _backup) = memory_pair(&net, &m, &b).await;
    wait_status(|| _backup.status(), "connected", |s| s.connected).await;
    for link in net.links() {
        link.duplicate_rate(0.3);
        link.delay(Duration::from_millis(2));
    }
    for i in 0..10 {
        write_mix(&m, &format!("d{i}"));
    }
    converge(&m, &b).await;
    assert_identical(&m, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_during_a_full_resync_keeps_old_data_and_recovers() {
    let net = MemoryNetwork::with_seed(3);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    // The backup has a history of its own: it needs a full resync.
    b.insert(&profile("backup's own")).unwrap();
    for i in 0..5 {
        write_mix(&m, &format!("big{i}"));
    }
    // On the first link, cut the connection at the third snapshot chunk, and
    // check the backup still shows its old data at that moment.
    let chunks = Arc::new(AtomicUsize::new(0));
    let cuts = Arc::new(AtomicUsize::new(0));
    let (c, k) = (chunks.clone(), cuts.clone());
    net.on_link(move |link| {
        let (c, k, handle) = (c.clone(), k.clone(), link.clone());
        link.on_frame(move |dir, frame| {
            if dir != Direction::ToDialer || k.load(Ordering::SeqCst) > 0 {
                return Verdict::Pass;
            }
            if let Ok(Message::SnapshotRows { .. }) = codec::decode(frame, &Default::default()) {
                if c.fetch_add(1, Ordering::SeqCst) == 2 {
                    k.store(1, Ordering::SeqCst);
                    let h = handle.clone();
                    std::thread::spawn(move || h.cut());
                    return Verdict::Drop;
                }
            }
            Verdict::Pass
        });
    });
    let (_master, backup) = memory_pair(&net, &m, &b).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cuts.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot never reached its third chunk"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    converge(&m, &b).await;
    assert_identical(&m, &b);
    assert!(b
        .query::<Profile>()
        .filter(Profile::columns().name.eq("backup's own"))
        .first()
        .unwrap()
        .is_none());
    // The count follows the restore's commit: wait for it, then require exactly one.
    wait_status(
        || backup.status(),
        "the resync is counted",
        |s| s.resyncs >= 1,
    )
    .await;
    assert_eq!(
        backup.status().resyncs,
        1,
        "one interrupted transfer, one complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partition_is_detected_by_heartbeats() {
    let net = MemoryNetwork::with_seed(5);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    let mut c = cfg("master", SECRET);
    c.heartbeat_interval = Duration::from_millis(20);
    c.peer_timeout = Duration::from_millis(200);
    let master = start_master(m.clone(), net.acceptor("master"), c.clone()).unwrap();
    let backup = start_backup(
        b.clone(),
        net.dialer("master"),
        SyncConfig {
            auth: cfg("backup", SECRET).auth,
            ..c
        },
    )
    .unwrap();
    write_mix(&m, "before");
    converge(&m, &b).await;
    // Frames vanish, no connection reset: only silence tells.
    for link in net.links() {
        link.partition(true);
    }
    write_mix(&m, "during");
    wait_status(
        || backup.status(),
        "backup notices the dead link",
        |s| !s.connected,
    )
    .await;
    wait_status(
        || master.status(),
        "master notices the dead link",
        |s| !s.connected,
    )
    .await;
    // New links are healthy: the backup redials and catches up.
    converge(&m, &b).await;
    assert_identical(&m, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_operation_stops_sync_visibly_until_the_module_is_installed() {
    use conformance::cases::Rollover;
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (store(&fm), store(&fb));
    m.register_operation::<Rollover>();
    let (_master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    m.insert(&profile("before")).unwrap();
    converge(&m, &b).await;
    m.run_operation(&Rollover::new("v2-")).unwrap();
    m.insert(&profile("after")).unwrap();
    // The backup stops at the entry, says why, and does not paper over it with a resync.
    let s = wait_status(
        || backup.status(),
        "the unknown operation is reported",
        |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("rollover"))
        },
    )
    .await;
    assert!(s.last_error.unwrap().contains("install the module"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = backup.status();
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("rollover")),
        "the error stays visible: {s:?}"
    );
    assert_eq!(s.resyncs, 0, "no resync hides it");
    assert_eq!(
        b.position(),
        1,
        "stopped right before the operation's entry"
    );
    // Installing the module on the backup lets sync go on from there.
    b.register_operation::<Rollover>();
    converge(&m, &b).await;
    assert_identical(&m, &b);
    wait_status(
        || backup.status(),
        "the error clears",
        |s| s.last_error.is_none(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intruder_does_not_disconnect_the_real_backup_in_the_status() {
    let (fm, fb, fx) = (Fixture::sqlite(), Fixture::sqlite(), Fixture::sqlite());
    let (m, b, x) = (store(&fm), store(&fb), store(&fx));
    let (master, addr) = master_on_tcp(&m, cfg("master", SECRET)).await;
    let _backup = backup_on_tcp(&b, &addr, cfg("backup", SECRET));
    wait_status(|| master.status(), "backup connected", |s| s.connected).await;
    // Someone with the wrong secret keeps dialing the master.
    let intruder = backup_on_tcp(&x, &addr, cfg("intruder", b"not the secret at all"));
    wait_status(
        || intruder.status(),
        "intruder refused",
        |s| s.last_error.is_some(),
    )
    .await;
    // Counted, not shown as the link's error: the link is the real backup's.
    wait_status(
        || master.status(),
        "the attempt is counted",
        |s| s.unauthenticated_failures > 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = master.status();
    assert!(
        s.connected && s.peer.as_deref() == Some("backup"),
        "the real backup is still shown connected: {s:?}"
    );
    assert_eq!(
        s.last_error, None,
        "an intruder set the link's error: {s:?}"
    );
    // And it still replicates.
    write_mix(&m, "after the intruder");
    converge(&m, &b).await;
}
