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
