//! Regression tests, in process (memory network, in-process stores), for
//! defects an operator found by trying the pair. Each test fails on the code
//! that has the defect and passes once it is fixed as its doc comment says.
//!
//! Every scenario runs on a thread of its own with its own runtime, and the
//! test fails if it does not finish within a bound: a defect that deadlocks
//! the runtime fails the test instead of hanging it.

mod conformance;
mod pair;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance::records::*;
use conformance::Fixture;
use pair::{settings, sync};
use persist::backend::sqlite::SqliteOptions;
use persist::store::BackendConfig;
use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::codec;
use persist::sync::protocol::Message;
use persist::sync::redundancy::{
    start_backup_node, start_master_node, ActivityLevel, NodeBuilder, NodeHandle, NodeRole,
};
use persist::sync::testing::memory::{Direction, MemoryNetwork, Verdict};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::{Store, StoreConfig};

/// The pair's timers (see `pair::settings`).
const FAILOVER: Duration = Duration::from_millis(400);
const HEARTBEAT: Duration = Duration::from_millis(40);
const ALLOWANCE: Duration = Duration::from_millis(800);

/// Runs `scenario` on a thread of its own with a two-worker runtime; fails
/// if it panics, or if it does not finish within `limit` (then the thread is
/// left behind: its runtime is deadlocked or a wait has no deadline).
fn bounded(
    what: &str,
    limit: Duration,
    scenario: impl FnOnce(&tokio::runtime::Runtime) + Send + 'static,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(what.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let r = catch_unwind(AssertUnwindSafe(|| scenario(&rt)));
            // Never wait for workers: one may be blocked for good.
            rt.shutdown_background();
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => {
            panic!("{what}: the scenario did not finish within {limit:?} (deadlocked runtime?)")
        }
    }
}

/// Polls `f` every 5 ms until it returns `Some`, at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn until_activity(what: &str, node: &NodeHandle, level: ActivityLevel) {
    let start = Instant::now();
    while node.state().activity != level {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: state stayed {:?}",
            node.state()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn store(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<SmsSettings>().unwrap();
    s
}

fn master(net: &MemoryNetwork, s: Store) -> NodeHandle {
    start_master_node(
        s,
        settings(NodeRole::Master, "gw-a"),
        net.acceptor("gw-a"),
        sync("gw-a"),
    )
    .unwrap()
}

fn backup(net: &MemoryNetwork, s: Store) -> NodeHandle {
    start_backup_node(
        s,
        settings(NodeRole::Backup, "gw-b"),
        net.dialer("gw-a"),
        sync("gw-b"),
    )
    .unwrap()
}

/// Watches a pair for `window`: the backup must never be active, the master
/// always. Returns the first violation.
fn pair_stays_put(m: &NodeHandle, b: &NodeHandle, window: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < window {
        let (sm, sb) = (m.state(), b.state());
        if sb.activity == ActivityLevel::Active {
            return Err(format!(
                "{:?} in: the backup is Active next to a live master: backup {sb:?}, master {sm:?}",
                start.elapsed()
            ));
        }
        if sm.activity != ActivityLevel::Active {
            return Err(format!(
                "{:?} in: the master stepped down: master {sm:?}, backup {sb:?}",
                start.elapsed()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. A link that freezes (no close) in the middle of a full resync.

/// The pair runs; an operator asks for a full resync; the master's link
/// freezes mid-snapshot (frames vanish, nothing closes: SIGSTOP, or a cable
/// pulled without a reset). The backup becomes Active within failover
/// timeout + one heartbeat (+ a margin), and its state answers at once all
/// along.
#[test]
fn backup_takes_over_when_the_master_link_freezes_during_a_full_resync() {
    bounded(
        "freeze during a full resync",
        Duration::from_secs(60),
        |rt| {
            let _rt = rt.enter();
            let net = MemoryNetwork::with_seed(101);
            let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
            let (ms, bs) = (store(&fm), store(&fb));
            for batch in 0..4 {
                ms.write(|tx| {
                    tx.insert_many(
                        &(0..10_000)
                            .map(|i| profile(&format!("row {batch}-{i}")))
                            .collect::<Vec<_>>(),
                    )?;
                    Ok(())
                })
                .unwrap();
            }
            // Once armed, after 4 snapshot frames every frame of every link
            // vanishes: the master is frozen.
            let armed = Arc::new(AtomicUsize::new(0));
            let frames = Arc::new(AtomicUsize::new(0));
            let frozen: Arc<Mutex<Option<Instant>>> = Arc::default();
            let (a, f, z) = (armed.clone(), frames.clone(), frozen.clone());
            net.on_link(move |link| {
                let (a, f, z) = (a.clone(), f.clone(), z.clone());
                link.on_frame(move |dir, frame| {
                    let mut z = z.lock().unwrap();
                    if z.is_some() {
                        return Verdict::Drop;
                    }
                    if dir == Direction::ToDialer && a.load(Ordering::SeqCst) == 1 {
                        if let Ok(Message::SnapshotRows { .. }) =
                            codec::decode(frame, &Default::default())
                        {
                            if f.fetch_add(1, Ordering::SeqCst) == 4 {
                                *z = Some(Instant::now());
                                return Verdict::Drop;
                            }
                        }
                    }
                    Verdict::Pass
                });
            });
            let mut sa = sync("gw-a");
            sa.snapshot_chunk_rows = 200; // 40 000 rows: 200 frames
                                          // A frozen master closes nothing: its side of the link must not time
                                          // out and close within the test (its peer timeout follows its
                                          // failover timeout, which a master does not otherwise use).
            let mut msettings = settings(NodeRole::Master, "gw-a");
            msettings.failover_timeout = Duration::from_secs(60);
            let m = start_master_node(ms, msettings, net.acceptor("gw-a"), sa).unwrap();
            let b = backup(&net, bs);
            until_activity("master active", &m, ActivityLevel::Active);
            until_activity("backup cold", &b, ActivityLevel::Cold);
            wait_synced(&m, &b);
            armed.store(1, Ordering::SeqCst);
            m.master().unwrap().request_resync();
            let frozen_at = wait_for(
                "the snapshot reached its fifth frame",
                Duration::from_secs(20),
                || *frozen.lock().unwrap(),
            );
            let limit = FAILOVER + HEARTBEAT + Duration::from_millis(600);
            loop {
                let asked = Instant::now();
                let s = b.state();
                let took = asked.elapsed();
                assert!(
                    took < Duration::from_millis(100),
                    "node.state() took {took:?} on the backup"
                );
                if s.activity == ActivityLevel::Active {
                    println!(
                        "backup Active {:?} after the link froze mid-snapshot: {s:?} {:?}",
                        frozen_at.elapsed(),
                        b.backup().unwrap().status()
                    );
                    break;
                }
                if frozen_at.elapsed() >= limit {
                    let status = b.backup().unwrap().status();
                    // Late, or never? Look a while longer before failing.
                    while frozen_at.elapsed() < Duration::from_secs(5)
                        && b.state().activity != ActivityLevel::Active
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    panic!(
                        "backup still {:?} (epoch {}) {limit:?} after the master's link froze \
                     mid-snapshot; {:?} after: {:?}; backup link status at the limit: {status:?}",
                        s.activity,
                        s.epoch,
                        frozen_at.elapsed(),
                        b.state().activity,
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            drop((m, b));
        },
    );
}

// ---------------------------------------------------------------------------
// 2. A peer configured with our own node id; a master probing itself.

/// Master and backup both configured as `gw-a`: the handshake refuses a peer
/// with our own id, both report it, at most one node is Active, and the
/// epoch stays put.
#[test]
fn a_peer_with_our_own_node_id_is_refused_and_the_epoch_stays_put() {
    bounded("same node id", Duration::from_secs(30), |rt| {
        let _rt = rt.enter();
        let net = MemoryNetwork::with_seed(102);
        let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
        let m = master(&net, store(&fm));
        let b = start_backup_node(
            store(&fb),
            settings(NodeRole::Backup, "gw-a"),
            net.dialer("gw-a"),
            sync("gw-a"),
        )
        .unwrap();
        // Let both decide (startup allowance, a failover timeout), then watch.
        std::thread::sleep(ALLOWANCE + FAILOVER + Duration::from_millis(300));
        let (e_m, e_b) = (m.state().epoch, b.state().epoch);
        let start = Instant::now();
        let mut both_active = 0;
        let mut samples = 0;
        while start.elapsed() < Duration::from_millis(1500) {
            samples += 1;
            if m.state().activity == ActivityLevel::Active
                && b.state().activity == ActivityLevel::Active
            {
                both_active += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (sm, sb) = (m.state(), b.state());
        assert!(
            sm.epoch == e_m && sb.epoch == e_b,
            "the epoch climbed in 1.5 s: master {e_m} -> {}, backup {e_b} -> {}",
            sm.epoch,
            sb.epoch
        );
        assert_eq!(
            both_active, 0,
            "both nodes Active in {both_active} of {samples} samples: master {sm:?}, backup {sb:?}"
        );
        for (who, s) in [("master", &sm), ("backup", &sb)] {
            assert!(
                s.last_error.as_deref().is_some_and(|e| e.contains("gw-a")),
                "the {who} does not report the peer with its own id: {s:?}"
            );
        }
    });
}

/// A master whose probe address is its own link address reports that its
/// peer address points at itself, not that "node gw-a is also configured as
/// master" about itself.
#[test]
fn a_master_probing_its_own_address_reports_that_the_peer_address_is_itself() {
    bounded("self probe", Duration::from_secs(30), |rt| {
        let _rt = rt.enter();
        let net = MemoryNetwork::with_seed(103);
        let fm = Fixture::sqlite();
        let m = NodeBuilder::new(store(&fm), settings(NodeRole::Master, "gw-a"), sync("gw-a"))
            .start_master_probing(
                net.acceptor("gw-a"),
                net.dialer("gw-a"),
                Duration::from_millis(50),
            )
            .unwrap();
        let err = wait_for(
            "the master reports its probe",
            Duration::from_secs(5),
            || m.state().last_error,
        );
        assert!(
            !err.contains("node gw-a is also configured as master"),
            "the master took itself for a second master: {err}"
        );
        assert!(
            err.contains("itself"),
            "the master does not say its peer address points at itself: {err}"
        );
    });
}

// ---------------------------------------------------------------------------
// 4. A backup whose store fails, next to a live, reachable master.

fn sqlite_config(path: &std::path::Path, tweak: impl FnOnce(&mut SqliteOptions)) -> StoreConfig {
    let mut o = SqliteOptions::new(path);
    tweak(&mut o);
    StoreConfig {
        backend: BackendConfig::Sqlite(o),
        ..StoreConfig::sqlite(path)
    }
}

fn wait_synced(m: &NodeHandle, b: &NodeHandle) {
    wait_for("the backup caught up", Duration::from_secs(15), || {
        (b.store().position() == m.store().position() && b.store().digest() == m.store().digest())
            .then_some(())
    });
}

/// The backup's database is locked by another connection for longer than
/// its busy timeout: it never becomes Active while the master is alive and
/// reachable, and the master never steps down.
#[test]
fn backup_with_a_locked_database_never_takes_over_from_a_live_master() {
    bounded("locked backup store", Duration::from_secs(40), |rt| {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let _rt = rt.enter();
        let net = MemoryNetwork::with_seed(104);
        let fm = Fixture::sqlite();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.db");
        let bs = Store::open(sqlite_config(&path, |o| {
            o.busy_timeout = Duration::from_millis(1000)
        }))
        .unwrap();
        bs.register::<SmsSettings>().unwrap();
        let m = master(&net, store(&fm));
        let b = backup(&net, bs);
        until_activity("master active", &m, ActivityLevel::Active);
        until_activity("backup cold", &b, ActivityLevel::Cold);
        m.store().insert(&profile("before the lock")).unwrap();
        wait_synced(&m, &b);
        // Another process holds the write lock for 3 busy timeouts.
        let mut other = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        other.batch_execute("BEGIN EXCLUSIVE").unwrap();
        m.store()
            .insert(&profile("while the backup is locked"))
            .unwrap();
        let r = pair_stays_put(&m, &b, Duration::from_secs(3));
        other.batch_execute("ROLLBACK").unwrap();
        if let Err(e) = r {
            panic!("backup database locked for 3 s (busy timeout 1 s): {e}");
        }
    });
}

/// The backup's disk is full (its database capped with `max_pages`): it
/// never becomes Active while the master is alive and reachable, and the
/// master never steps down. The backup dials with the library's default
/// backoff (as the gateway program does: its TOML cannot change it).
#[test]
fn backup_with_a_full_disk_never_takes_over_from_a_live_master() {
    bounded("full backup disk", Duration::from_secs(40), |rt| {
        let _rt = rt.enter();
        let net = MemoryNetwork::with_seed(105);
        let fm = Fixture::sqlite();
        let dir = tempfile::tempdir().unwrap();
        let bs = Store::open(sqlite_config(&dir.path().join("backup.db"), |o| {
            o.max_pages = Some(96)
        }))
        .unwrap();
        bs.register::<SmsSettings>().unwrap();
        let m = master(&net, store(&fm));
        let mut cfg = sync("gw-b");
        let defaults = persist::sync::worker::SyncConfig::new(cfg.auth.clone());
        cfg.reconnect_initial = defaults.reconnect_initial;
        cfg.reconnect_max = defaults.reconnect_max;
        let b = start_backup_node(
            bs,
            settings(NodeRole::Backup, "gw-b"),
            net.dialer("gw-a"),
            cfg,
        )
        .unwrap();
        until_activity("master active", &m, ActivityLevel::Active);
        until_activity("backup cold", &b, ActivityLevel::Cold);
        m.store().insert(&profile("small")).unwrap();
        wait_synced(&m, &b);
        // More than the backup's disk holds.
        for i in 0..300 {
            let mut p = profile(&format!("big {i}"));
            p.note = Some("x".repeat(2000));
            m.store().insert(&p).unwrap();
        }
        wait_for(
            "the backup's disk filled up",
            Duration::from_secs(15),
            || {
                b.backup()
                    .unwrap()
                    .status()
                    .last_error
                    .filter(|e| e.to_lowercase().contains("full"))
            },
        );
        if let Err(e) = pair_stays_put(&m, &b, Duration::from_secs(4)) {
            panic!(
                "backup disk full: {e}; backup link status {:?}",
                b.backup().unwrap().status()
            );
        }
    });
}

// ---------------------------------------------------------------------------
// 5. A backup with the wrong secret.

/// A backup with a wrong secret next to a live master that answers its
/// hello: the refusal counts as hearing the master, the backup stays standby
/// after its startup allowance.
#[test]
fn backup_with_a_wrong_secret_stays_standby_next_to_a_live_master() {
    bounded("wrong secret", Duration::from_secs(30), |rt| {
        let _rt = rt.enter();
        let net = MemoryNetwork::with_seed(106);
        let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
        let m = master(&net, store(&fm));
        let mut cfg = sync("gw-b");
        cfg.auth = AuthConfig::new(
            "plant-7",
            "gw-b",
            Secret::new(b"not the pair's secret at all".to_vec()).unwrap(),
        )
        .unwrap();
        let b = start_backup_node(
            store(&fb),
            settings(NodeRole::Backup, "gw-b"),
            net.dialer("gw-a"),
            cfg,
        )
        .unwrap();
        let start = Instant::now();
        let window = ALLOWANCE + 3 * FAILOVER + Duration::from_millis(300);
        while start.elapsed() < window {
            let s = b.state();
            assert_ne!(
                s.activity,
                ActivityLevel::Active,
                "{:?} after start the backup with a wrong secret is Active next to a live \
                 master (allowance {ALLOWANCE:?}): {s:?}; master {:?}",
                start.elapsed(),
                m.state()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(m.state().activity, ActivityLevel::Active);
    });
}

// ---------------------------------------------------------------------------
// 10. Link status of a master restarted next to a backup at its head.

/// The master restarts while its backup is already at the master's head:
/// once the backup is connected, the master's link status shows it acked
/// the head (no pending updates, a last sync time), without waiting for the
/// next write.
#[test]
fn restarted_master_shows_a_backup_at_its_head_as_in_sync() {
    bounded("restart at head", Duration::from_secs(40), |rt| {
        let _rt = rt.enter();
        let net = MemoryNetwork::with_seed(110);
        let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
        let m = master(&net, store(&fm));
        let b = backup(&net, store(&fb));
        until_activity("master active", &m, ActivityLevel::Active);
        until_activity("backup cold", &b, ActivityLevel::Cold);
        for i in 0..5 {
            m.store().insert(&profile(&format!("p{i}"))).unwrap();
        }
        wait_for(
            "the master sees the backup in sync",
            Duration::from_secs(10),
            || (m.master().unwrap().status().peer_acked == m.store().position()).then_some(()),
        );
        let head = m.store().position();
        drop(m);
        std::thread::sleep(Duration::from_millis(100));
        let m = master(&net, store(&fm));
        assert_eq!(m.store().position(), head);
        wait_for("the backup reconnected", Duration::from_secs(10), || {
            m.master().unwrap().status().connected.then_some(())
        });
        let connected = Instant::now();
        loop {
            let (st, s) = (m.master().unwrap().status(), m.state());
            if st.peer_acked == head && s.pending_updates == 0 && s.last_sync.is_some() {
                break;
            }
            assert!(
                connected.elapsed() < Duration::from_secs(2),
                "{:?} after the backup (at the head, {head}) reconnected to the restarted master: \
                 peer_acked {}, pending_updates {}, last_sync {:?}",
                connected.elapsed(),
                st.peer_acked,
                s.pending_updates,
                s.last_sync
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(b);
    });
}

// ---------------------------------------------------------------------------
// 11. NodeHandle::shutdown and the master's tasks.

/// `NodeHandle::shutdown` awaits the master's tasks: when it returns, the
/// master's link port is free again. (On a current-thread runtime, so what
/// ran before `shutdown` returned is deterministic.)
#[test]
fn node_shutdown_releases_the_master_link_port_before_it_returns() {
    bounded("shutdown", Duration::from_secs(30), |_| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fm = Fixture::sqlite();
        rt.block_on(async {
            let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
            let addr = acceptor.local_socket_addr();
            let m = start_master_node(
                store(&fm),
                settings(NodeRole::Master, "gw-a"),
                acceptor,
                sync("gw-a"),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            tokio::time::timeout(Duration::from_secs(5), m.shutdown())
                .await
                .expect("shutdown returns");
            if let Err(e) = std::net::TcpListener::bind(addr) {
                panic!(
                    "right after NodeHandle::shutdown returned, the master still holds its \
                     link port {addr} ({e}): its tasks were not awaited"
                );
            }
        });
    });
}

// ---------------------------------------------------------------------------
// 13. What a subscriber of node.watch() sees.

/// A module following `node.watch()` sees the master step down after a
/// failover: it never sees Active at one epoch and then Active at a higher
/// one with nothing between (after a silent cut and its end, the old code
/// publishes Active@1 then Active@3: the master adopted the backup's
/// handback claim without ever publishing its step-down).
#[test]
fn a_watch_subscriber_sees_the_master_step_down_between_two_active_epochs() {
    bounded("watch steps", Duration::from_secs(90), |rt| {
        let _rt = rt.enter();
        let net = MemoryNetwork::with_seed(113);
        let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
        let m = master(&net, store(&fm));
        let b = backup(&net, store(&fb));
        until_activity("master active", &m, ActivityLevel::Active);
        until_activity("backup cold", &b, ActivityLevel::Cold);
        // Module code: follows the watch, does nothing else.
        let seen: Arc<Mutex<Vec<(ActivityLevel, u64, u64)>>> = Arc::default();
        let mut w = m.watch();
        let s2 = seen.clone();
        rt.spawn(async move {
            loop {
                let s = w.borrow_and_update().clone();
                {
                    let mut seen = s2.lock().unwrap();
                    if seen.last().map(|l| (l.0, l.1)) != Some((s.activity, s.epoch)) {
                        seen.push((s.activity, s.epoch, s.transitions));
                    }
                }
                if w.changed().await.is_err() {
                    return;
                }
            }
        });
        for round in 0..5 {
            std::thread::sleep(Duration::from_millis(300));
            let before = m.state().epoch;
            let from = seen.lock().unwrap().len().saturating_sub(1);
            net.partition(true);
            until_activity("backup takes over", &b, ActivityLevel::Active);
            let takeover = b.state().epoch;
            net.partition(false);
            wait_for(
                "the master is active again",
                Duration::from_secs(15),
                || {
                    let s = m.state();
                    (s.activity == ActivityLevel::Active && s.epoch > takeover).then_some(())
                },
            );
            std::thread::sleep(Duration::from_millis(200));
            let seen = seen.lock().unwrap()[from..].to_vec();
            let first_later = seen
                .iter()
                .position(|&(a, e, _)| a == ActivityLevel::Active && e > before);
            // It saw the step down, or it can tell it missed steps: the
            // transition count jumped by more than one.
            let stepped_down = first_later.is_some_and(|i| {
                seen[..i]
                    .iter()
                    .any(|&(a, e, _)| a != ActivityLevel::Active || e == takeover)
                    || (i > 0 && seen[i].2 > seen[i - 1].2 + 1)
            });
            assert!(
                stepped_down,
                "round {round}: the subscriber saw {seen:?}: Active at epoch {before}, then Active \
                 at a later epoch with nothing between (the backup took over at epoch {takeover}); \
                 it cannot tell the master stepped down"
            );
        }
        drop((m, b));
    });
}

// ---------------------------------------------------------------------------
// 14. A hello that is waiting when the master accepts the link.

/// A backup whose connection sat in the master's accept backlog, its hello
/// already sent, is authenticated as soon as the master accepts it (the old
/// driver handed the link's first frame to the node before the link itself,
/// so the hello was dropped and both ends waited out the handshake timeout:
/// 4.9 s of both nodes Active in the process test of item 7). On a
/// current-thread runtime the old order is deterministic: the link's reader
/// runs before the node task sees the accepted link.
#[test]
fn a_hello_waiting_in_the_accept_backlog_is_heard() {
    bounded("waiting hello", Duration::from_secs(60), |_| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
        rt.block_on(async {
            // Longer than the test waits: only hearing the hello connects.
            let patient = |node: &str| {
                let mut c = sync(node);
                c.handshake_timeout = Duration::from_secs(30);
                c
            };
            let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
            let addr = acceptor.local_socket_addr().to_string();
            let b = start_backup_node(
                store(&fb),
                settings(NodeRole::Backup, "gw-b"),
                TcpDialer::new(addr, None),
                patient("gw-b"),
            )
            .unwrap();
            // The backup's connection completes in the backlog and its hello
            // is sent before anyone accepts it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let m = start_master_node(
                store(&fm),
                settings(NodeRole::Master, "gw-a"),
                acceptor,
                patient("gw-a"),
            )
            .unwrap();
            let start = Instant::now();
            while !(b.state().peer_connected && m.state().peer_connected) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{:?} after the master started, the backup whose hello was waiting is \
                     still not connected: backup {:?}, master {:?}",
                    start.elapsed(),
                    b.state(),
                    m.state()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            b.shutdown().await;
            m.shutdown().await;
        });
    });
}

// ---------------------------------------------------------------------------
// 15. A fresh backup catching up large entries over TCP.

/// A tag of a device, as the sample module declares it: a gateway has many
/// thousands, written 10,000 at a time.
#[derive(persist::PersistentRecord, Debug, Clone, PartialEq)]
pub struct BulkTag {
    /// Its identity.
    #[persist(identity)]
    pub id: i64,
    /// The device that exposes it.
    pub device_id: i64,
    /// Where the device holds it (about 60 bytes of text).
    pub address: String,
    /// What a raw value is multiplied by.
    #[persist(default = 1.0)]
    pub scale: f64,
}

/// What a watcher saw of one node while the backup caught up.
#[derive(Debug, Default)]
struct Seen {
    errors: Vec<(Duration, String)>,
    disconnects: Vec<Duration>,
    states: Vec<(Duration, ActivityLevel, u64, Option<String>)>,
}

/// Records every change of `node`'s link status and redundancy state.
fn watch_node(rt: &tokio::runtime::Runtime, node: &NodeHandle, start: Instant) -> Arc<Mutex<Seen>> {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut status = match (node.master(), node.backup()) {
        (Some(m), _) => m.watch_status(),
        (_, Some(b)) => b.watch_status(),
        _ => unreachable!("a node is a master or a backup"),
    };
    let mut state = node.watch();
    let s = seen.clone();
    rt.spawn(async move {
        let (mut error, mut connected) = (None::<String>, false);
        loop {
            let st = status.borrow_and_update().clone();
            {
                let mut seen = s.lock().unwrap();
                if st.last_error.is_some() && st.last_error != error {
                    seen.errors
                        .push((start.elapsed(), st.last_error.clone().unwrap_or_default()));
                }
                if connected && !st.connected {
                    seen.disconnects.push(start.elapsed());
                }
            }
            error = st.last_error;
            connected = st.connected;
            if status.changed().await.is_err() {
                return;
            }
        }
    });
    let s = seen.clone();
    rt.spawn(async move {
        loop {
            let st = state.borrow_and_update().clone();
            {
                let mut seen = s.lock().unwrap();
                let now = (st.activity, st.epoch, st.active_node.clone());
                if seen.states.last().map(|l| (l.1, l.2, l.3.clone())) != Some(now.clone()) {
                    seen.states.push((start.elapsed(), now.0, now.1, now.2));
                }
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    });
    seen
}

/// SplitMix64: a fixed, well-spread 64-bit value per input.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A master whose log holds 20 entries of 10,000 rows (about 0.6 MB each as shipped)
/// and a fresh backup, over loopback TCP, with the gateway's timers (60 ms
/// heartbeat, 600 ms failover timeout): while the backup replays the log,
/// neither end reports a dead link or a disconnect, the backup never becomes
/// Active and the epoch stays 1. (On the old code heartbeats waited behind
/// megabytes of entries: both ends found their peer "silent for 600ms", the
/// link flapped and the backup took over next to a live master.)
#[test]
fn a_fresh_backup_catching_up_large_entries_over_tcp_never_loses_the_master() {
    bounded(
        "catch-up of large entries",
        Duration::from_secs(300),
        |rt| {
            let _rt = rt.enter();
            let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
            let (ms, bs) = (fm.open(), fb.open());
            ms.register::<BulkTag>().unwrap();
            bs.register::<BulkTag>().unwrap();
            const ENTRIES: u64 = 20;
            const ROWS: usize = 10_000;
            for entry in 0..ENTRIES {
                let tags: Vec<BulkTag> = (0..ROWS)
                    .map(|i| BulkTag {
                        id: 0,
                        device_id: 1 + (i % 7) as i64,
                        // A serial number LZ4 cannot shrink keeps the bodies
                        // large as shipped (they travel packed).
                        address: format!(
                            "40{entry:02}{i:05} pump-1 sn {:016x}{:016x}{:016x}",
                            mix(entry * ROWS as u64 + i as u64),
                            mix(!(entry * ROWS as u64 + i as u64)),
                            mix((entry * ROWS as u64 + i as u64) << 20)
                        ),
                        scale: 1.0,
                    })
                    .collect();
                ms.write(|tx| tx.insert_many(&tags).map(|_| ())).unwrap();
            }
            let head = ms.position();
            let sizes: Vec<usize> = ms
                .read_log(1, ENTRIES as usize + 1)
                .unwrap()
                .iter()
                .map(|e| e.body.len())
                .collect();
            let timers = |role, node| {
                let mut s = settings(role, node);
                s.failover_timeout = Duration::from_millis(600);
                s.heartbeat_interval = Duration::from_millis(60);
                s.startup_allowance = Duration::from_millis(1500);
                s
            };
            let acceptor = rt.block_on(TcpAcceptor::bind("127.0.0.1:0", None)).unwrap();
            let addr = acceptor.local_socket_addr().to_string();
            let m = start_master_node(ms, timers(NodeRole::Master, "gw-a"), acceptor, sync("gw-a"))
                .unwrap();
            until_activity("master active", &m, ActivityLevel::Active);
            let start = Instant::now();
            let seen_m = watch_node(rt, &m, start);
            let b = start_backup_node(
                bs,
                timers(NodeRole::Backup, "gw-b"),
                TcpDialer::new(addr, None),
                sync("gw-b"),
            )
            .unwrap();
            let seen_b = watch_node(rt, &b, start);
            let limit = Duration::from_secs(240);
            while b.store().position() < head && start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(10));
            }
            let caught_up = start.elapsed();
            // A while longer at the head: the last acknowledgements, heartbeats.
            std::thread::sleep(Duration::from_millis(1500));
            let (sm, sb) = (m.state(), b.state());
            let (seen_m, seen_b) = (
                std::mem::take(&mut *seen_m.lock().unwrap()),
                std::mem::take(&mut *seen_b.lock().unwrap()),
            );
            println!(
                "{ENTRIES} entries of {ROWS} rows, bodies {:.2}-{:.2} MB ({:.1} MB in all); \
             backup at {} of {head} after {caught_up:?}\n\
             master: errors {:?}, disconnects {:?}, states {:?}\n\
             backup: errors {:?}, disconnects {:?}, states {:?}",
                *sizes.iter().min().unwrap() as f64 / 1e6,
                *sizes.iter().max().unwrap() as f64 / 1e6,
                sizes.iter().sum::<usize>() as f64 / 1e6,
                b.store().position(),
                seen_m.errors,
                seen_m.disconnects,
                seen_m.states,
                seen_b.errors,
                seen_b.disconnects,
                seen_b.states,
            );
            let mut problems = Vec::new();
            if *sizes.iter().min().unwrap() < 500_000 {
                problems.push(format!(
                    "the entries no longer test large frames: {sizes:?} bytes as shipped"
                ));
            }
            if b.store().position() < head {
                problems.push(format!(
                    "the backup is at {} of {head} after {limit:?}",
                    b.store().position()
                ));
            }
            if !seen_m.errors.is_empty() || !seen_m.disconnects.is_empty() {
                problems.push(format!(
                    "the master lost the backup: {:?}, disconnected at {:?}",
                    seen_m.errors, seen_m.disconnects
                ));
            }
            if !seen_b.errors.is_empty() || !seen_b.disconnects.is_empty() {
                problems.push(format!(
                    "the backup lost the master: {:?}, disconnected at {:?}",
                    seen_b.errors, seen_b.disconnects
                ));
            }
            if seen_b.states.iter().any(|s| s.1 == ActivityLevel::Active) {
                problems.push(format!(
                    "the backup became Active next to a live master: {:?}",
                    seen_b.states
                ));
            }
            if sm.epoch != 1 || sb.epoch != 1 || seen_m.states.iter().any(|s| s.2 != 1) {
                problems.push(format!(
                    "the epoch moved: master {:?}, backup {:?}",
                    seen_m.states, seen_b.states
                ));
            }
            if sm.activity != ActivityLevel::Active {
                problems.push(format!("the master is {:?} at the end", sm.activity));
            }
            assert!(problems.is_empty(), "{}", problems.join("\n"));
            drop((m, b));
        },
    );
}
