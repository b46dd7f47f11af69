//! Range digests, the scrubber and ranged repair: at the store level (two
//! stores fed the same log) and between a running master and backup.

mod conformance;

use conformance::Fixture;
use persist::store::{plan_repair, RangeMismatch, RangeRows};
use persist::{PersistentRecord, RecordEvent, Store};

#[derive(PersistentRecord, Debug, Clone, PartialEq)]
struct Account {
    #[persist(identity)]
    id: i64,
    owner: String,
    balance: i64,
}

fn account(i: usize) -> Account {
    Account {
        id: 0,
        owner: format!("owner-{i}"),
        balance: i as i64 * 10,
    }
}

fn load(m: &Store, n: usize) {
    let rows: Vec<Account> = (0..n).map(account).collect();
    m.write(|tx| tx.insert_many(&rows).map(|_| ())).unwrap();
}

fn open(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<Account>().unwrap();
    s
}

/// Copies every entry the master has and the backup lacks.
fn follow(m: &Store, b: &Store) {
    let entries = m.read_log(b.position() + 1, usize::MAX).unwrap();
    b.apply_batch(&entries).unwrap();
    assert_eq!((b.position(), b.digest()), (m.position(), m.digest()));
}

fn scrub(s: &Store) -> persist::store::ScrubReport {
    let mut scrub = s.scrub().unwrap();
    while !scrub.step(1000).unwrap() {}
    scrub.finish()
}

/// The backup's side of the exchange: its rows of the differing buckets,
/// and the hashes it sends.
fn hashes(local: &RangeRows) -> Vec<(String, Vec<u128>)> {
    local
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.rows.iter().map(|(h, _)| *h).collect()))
        .collect()
}

fn each_backend(f: impl Fn(Fixture, Fixture)) {
    f(Fixture::sqlite(), Fixture::sqlite());
    if std::env::var_os("PERSIST_PG_URL").is_some() {
        f(Fixture::postgres(), Fixture::postgres());
    }
}

#[test]
fn buckets_follow_writes_applies_and_restores() {
    each_backend(|fm, fb| {
        let (m, b) = (open(&fm), open(&fb));
        load(&m, 3000);
        m.write(|tx| {
            let mut a = tx.get::<Account>(7i64)?.unwrap();
            a.balance = -1;
            tx.update(&a)?;
            tx.delete::<Account>(8i64)
        })
        .unwrap();
        assert_eq!(m.range_digests().total(), m.digest());
        follow(&m, &b);
        assert_eq!(b.range_digests(), m.range_digests());
        let r = scrub(&m);
        assert!(r.trusted);
        assert_eq!((r.rows, r.differing.len()), (2999, 0));
        // Reopened: the buckets come back from the rows.
        drop(m);
        let m = open(&fm);
        assert_eq!(m.range_digests(), b.range_digests());
        // A restore rebuilds them.
        let fc = fm.sibling();
        let c = open(&fc);
        let mut snap = m.snapshot().unwrap();
        let header = snap.header().clone();
        let mut chunks = Vec::new();
        while let Some(c) = snap.next_chunk(500).unwrap() {
            chunks.push(Ok(c));
        }
        c.restore(&header, chunks).unwrap();
        assert_eq!(c.range_digests(), m.range_digests());
        assert!(scrub(&c).differing.is_empty());
    });
}

#[test]
fn a_row_changed_behind_the_backups_back_is_found_and_repaired_alone() {
    each_backend(|fm, fb| {
        let (m, b) = (open(&fm), open(&fb));
        load(&m, 5000);
        follow(&m, &b);
        let mut events = b.subscribe::<Account>().unwrap();
        fb.raw("UPDATE account SET balance = 999999 WHERE id = 42");
        fb.raw("DELETE FROM account WHERE id = 43");
        let found = scrub(&b);
        assert!(found.trusted);
        let buckets = found.differing_buckets();
        assert!((1..=4).contains(&buckets), "{found:?}");
        // The master writes on meanwhile, and the backup follows.
        m.insert(&account(9999)).unwrap();
        let local = b.range_rows(&found.differing).unwrap();
        let theirs = m.range_rows(&found.differing).unwrap();
        let set = plan_repair(&theirs, &hashes(&local)).unwrap();
        assert_eq!(set.rows.len(), 2, "only the two damaged rows travel");
        assert_eq!(set.remove.len(), 1, "and the tampered image is dropped");
        follow(&m, &b);
        let done = b.repair(&local, &set).unwrap();
        assert_eq!((done.inserted, done.updated, done.deleted), (1, 1, 0));
        assert!(b.verify().unwrap().is_consistent());
        assert!(scrub(&b).differing.is_empty());
        assert_eq!(b.list::<Account>().unwrap(), m.list::<Account>().unwrap());
        let mut seen = Vec::new();
        while let Ok(Some(e)) = events.try_recv() {
            seen.push(e);
        }
        // The applied insert, then the repair's update and insert.
        let changes: usize = seen
            .iter()
            .map(|e| match e {
                RecordEvent::Added(_) | RecordEvent::Updated { .. } => 1,
                _ => 0,
            })
            .sum();
        assert_eq!(changes, 3, "{seen:?}");
        // A repair read at another position does not fit and changes nothing.
        let set_again = plan_repair(&theirs, &hashes(&local)).unwrap();
        assert!(b.repair(&local, &set_again).is_err());
        assert!(b.verify().unwrap().is_consistent());
    });
}

#[test]
fn a_master_at_odds_with_its_own_digest_ships_nothing() {
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (open(&fm), open(&fb));
    load(&m, 2000);
    follow(&m, &b);
    fm.raw("UPDATE account SET balance = 5 WHERE id = 100");
    let found = scrub(&m);
    assert_eq!(found.differing_buckets(), 2);
    let theirs = m.range_rows(&found.differing).unwrap();
    let local = b.range_rows(&found.differing).unwrap();
    let refused = plan_repair(&theirs, &hashes(&local)).unwrap_err();
    assert_eq!(refused, found.differing);
    let _: Vec<RangeMismatch> = refused;
}

pub(crate) mod pair_tests {
    use super::*;
    use std::time::{Duration, Instant};

    use persist::sync::auth::{AuthConfig, Secret};
    use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
    use persist::sync::worker::backup::{start_backup, BackupHandle};
    use persist::sync::worker::master::{start_master, MasterHandle};
    use persist::sync::worker::{LinkStatus, SyncConfig};

    pub fn cfg(node: &str, period: Duration) -> SyncConfig {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut c = SyncConfig::new(
            AuthConfig::new(
                "plant-7",
                node,
                Secret::new(b"correct horse battery staple".to_vec()).unwrap(),
            )
            .unwrap(),
        );
        c.reconnect_initial = Duration::from_millis(20);
        c.reconnect_max = Duration::from_millis(200);
        c.scrub.period = period;
        c
    }

    pub async fn pair(m: &Store, b: &Store, period: Duration) -> (MasterHandle, BackupHandle) {
        let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
        let addr = acceptor.local_socket_addr().to_string();
        let master = start_master(m.clone(), acceptor, cfg("master", period)).unwrap();
        let backup =
            start_backup(b.clone(), TcpDialer::new(addr, None), cfg("backup", period)).unwrap();
        (master, backup)
    }

    async fn wait(
        f: impl Fn() -> LinkStatus,
        what: &str,
        within: Duration,
        ok: impl Fn(&LinkStatus) -> bool,
    ) -> LinkStatus {
        let deadline = Instant::now() + within;
        loop {
            let s = f();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: status stayed {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn converge(m: &Store, b: &Store) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while (b.position(), b.digest()) != (m.position(), m.digest()) {
            assert!(Instant::now() < deadline, "no convergence");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A balance changed with SQL on the running backup while the master
    /// keeps writing other rows: found by the backup's scrub and repaired by
    /// shipping that row alone, within a scrub period; no snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_corrupted_on_a_running_backup_is_repaired_within_the_scrub_period() {
        let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
        let (m, b) = (open(&fm), open(&fb));
        load(&m, 20_000);
        let period = Duration::from_millis(1000);
        let (master, backup) = pair(&m, &b, period).await;
        converge(&m, &b).await;
        let mut events = b.subscribe::<Account>().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    m.insert(&account(100_000 + i)).unwrap();
                    i += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        fb.raw("UPDATE account SET balance = 123456789 WHERE id = 4242");
        let corrupted = Instant::now();
        let s = wait(
            || backup.status(),
            "the backup repairs the row",
            period * 3,
            |s| s.scrub.repairs >= 1,
        )
        .await;
        let took = corrupted.elapsed();
        assert_eq!(s.scrub.rows_shipped, 1, "one row travels: {s:?}");
        assert_eq!(s.scrub.rows_repaired, 1);
        assert_eq!(s.resyncs, 0, "no snapshot");
        let fixed = b.get::<Account>(4242i64).unwrap().unwrap();
        assert_eq!(fixed.balance, 42410);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        converge(&m, &b).await;
        assert!(b.verify().unwrap().is_consistent());
        assert_eq!(b.list::<Account>().unwrap(), m.list::<Account>().unwrap());
        let ms = master.status();
        assert_eq!((ms.scrub.repairs, ms.scrub.rows_shipped), (1, 1), "{ms:?}");
        assert_eq!(ms.scrub.master_diverged, None);
        // Listeners saw the repaired row change back.
        let mut repaired = false;
        while let Ok(Some(e)) = events.try_recv() {
            if let RecordEvent::Updated { old, new } = e {
                repaired |= old.balance == 123456789 && new.balance == 42410;
            }
        }
        assert!(repaired, "no event for the repaired row");
        eprintln!("corrupted row repaired after {took:?} (scrub period {period:?})");
        backup.shutdown().await;
        master.shutdown().await;
    }

    /// A row changed behind the master's back is reported on both nodes and
    /// never shipped; the backup keeps its (right) row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_corrupted_on_the_master_is_reported_and_not_shipped() {
        let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
        let (m, b) = (open(&fm), open(&fb));
        load(&m, 5_000);
        let period = Duration::from_millis(300);
        let (master, backup) = pair(&m, &b, period).await;
        converge(&m, &b).await;
        fm.raw("UPDATE account SET balance = -5 WHERE id = 77");
        let ms = wait(
            || master.status(),
            "the master reports its own rows",
            Duration::from_secs(10),
            |s| s.scrub.master_diverged.is_some(),
        )
        .await;
        assert!(ms.scrub.alarms >= 1);
        assert!(ms.scrub.master_diverged.unwrap().contains("not shipped"));
        // The backup's rows match its digest: nothing to repair, nothing shipped.
        tokio::time::sleep(period * 3).await;
        let bs = backup.status();
        assert_eq!((bs.scrub.alarms, bs.scrub.rows_shipped), (0, 0), "{bs:?}");
        assert_eq!(b.get::<Account>(77i64).unwrap().unwrap().balance, 760);
        // Now the backup is damaged in the same range: the master refuses.
        fb.raw("UPDATE account SET balance = -6 WHERE id = 77");
        let bs = wait(
            || backup.status(),
            "the backup hears the refusal",
            Duration::from_secs(10),
            |s| s.scrub.master_diverged.is_some(),
        )
        .await;
        assert_eq!((bs.scrub.rows_shipped, bs.scrub.repairs), (0, 0), "{bs:?}");
        assert_eq!(master.status().scrub.rows_shipped, 0);
        assert_eq!(b.get::<Account>(77i64).unwrap().unwrap().balance, -6);
        backup.shutdown().await;
        master.shutdown().await;
    }
}

/// No false alarms: a pair under a write load of inserts, updates and
/// deletes (single rows and 200-row transactions), both nodes scrubbing
/// every 200 ms, for 15 s (`PERSIST_SCRUB_LOAD_SECONDS`, e.g. 600 for ten
/// minutes): no pass finds a range at odds with its digest, nothing is
/// repaired, and the two nodes end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_alarm_under_a_write_load() {
    use pair_tests::*;
    use std::time::{Duration, Instant};
    let seconds: u64 = std::env::var("PERSIST_SCRUB_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = (open(&fm), open(&fb));
    load(&m, 10_000);
    let period = Duration::from_millis(200);
    let (master, backup) = pair(&m, &b, period).await;
    converge(&m, &b).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i: u64 = 0;
            let mut commits = 0u64;
            // The table stays about its size: each batch replaces the last.
            let mut last_batch: Vec<i64> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = (i * 7919 % 10_000 + 1) as i64;
                let r = m.write(|tx| match i % 4 {
                    0 => {
                        for old in last_batch.drain(..) {
                            tx.delete::<Account>(old)?;
                        }
                        let rows: Vec<Account> =
                            (0..200).map(|k| account(k + i as usize)).collect();
                        last_batch = tx.insert_many(&rows)?;
                        Ok(())
                    }
                    1 => match tx.get::<Account>(id)? {
                        Some(mut a) => {
                            a.balance += 1;
                            tx.update(&a)
                        }
                        None => Ok(()),
                    },
                    2 => match tx.get::<Account>(id)? {
                        Some(_) => tx.delete::<Account>(id),
                        None => tx.insert(&account(i as usize)).map(|_| ()),
                    },
                    _ => match tx.get::<Account>(id)? {
                        Some(mut a) => {
                            a.owner.push('+');
                            tx.update(&a)
                        }
                        None => Ok(()),
                    },
                });
                r.unwrap();
                commits += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            commits
        })
    };
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let (ms, bs) = (master.status(), backup.status());
        assert_eq!(ms.scrub.alarms, 0, "master: {:?}", ms.scrub);
        assert_eq!(bs.scrub.alarms, 0, "backup: {:?}", bs.scrub);
        assert_eq!(ms.scrub.master_diverged, None);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let commits = writer.join().unwrap();
    converge(&m, &b).await;
    let (ms, bs) = (master.status(), backup.status());
    assert_eq!((ms.scrub.alarms, bs.scrub.alarms), (0, 0));
    assert_eq!((bs.scrub.repairs, bs.scrub.repair_failures), (0, 0));
    assert_eq!(bs.resyncs, 0);
    assert!(
        ms.scrub.passes >= seconds && bs.scrub.passes >= seconds,
        "too few passes: master {:?}, backup {:?}",
        ms.scrub,
        bs.scrub
    );
    assert!(b.verify().unwrap().is_consistent());
    assert_eq!(b.list::<Account>().unwrap(), m.list::<Account>().unwrap());
    eprintln!(
        "{seconds} s, {commits} commits: master {} passes, backup {} passes, no alarm",
        ms.scrub.passes, bs.scrub.passes
    );
    backup.shutdown().await;
    master.shutdown().await;
}
