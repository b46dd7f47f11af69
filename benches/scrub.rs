//! Scrub and ranged repair benchmark, on bundled SQLite in one process:
//!
//! 1. What the scrubber costs: a full pass over a 100k-row store read in the
//!    default steps (2,000 rows), timed step by step, as a share of one core
//!    at the default pace (a pass every 10 s), next to `Store::verify` (one
//!    plain read of every row with the digest recomputed) in the same run.
//! 2. A corrupted row on a 1M-row backup: the pass that finds it, the reads
//!    of both nodes, the rows shipped (against the table) and the repair.
//!
//! `cargo bench --bench scrub` (`PERSIST_BENCH_SCRUB_ROWS` for the first
//! part, default 100000; `PERSIST_BENCH_REPAIR_ROWS` for the second,
//! default 1000000). Figures, not assertions.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use persist::store::plan_repair;
use persist::sync::engine::ScrubConfig;
use persist::{PersistentRecord, Store};

#[derive(PersistentRecord, Debug, Clone)]
struct BenchRow {
    #[persist(identity)]
    id: i64,
    name: String,
    value: i32,
    active: bool,
    note: Option<String>,
}

fn row(i: usize) -> BenchRow {
    BenchRow {
        id: 0,
        name: format!("device-{i:08}-gateway-a"),
        value: i as i32,
        active: i % 3 != 0,
        note: (i % 2 == 0).then(|| "some note text about this row".to_string()),
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn store(dir: &std::path::Path, name: &str) -> Store {
    let s = Store::open_sqlite(dir.join(name)).unwrap();
    s.register::<BenchRow>().unwrap();
    s
}

fn load(s: &Store, n: usize) {
    let chunk = 10_000;
    for start in (0..n).step_by(chunk) {
        let rows: Vec<BenchRow> = (start..(start + chunk).min(n)).map(row).collect();
        s.write(|tx| tx.insert_many(&rows).map(|_| ())).unwrap();
    }
}

/// A full scrub pass in `step_rows` steps: (report, the time spent in steps, steps).
fn pass(s: &Store, step_rows: usize) -> (persist::store::ScrubReport, Duration, usize) {
    let mut work = Duration::ZERO;
    let mut steps = 0;
    let t = Instant::now();
    let mut scrub = s.scrub().unwrap();
    work += t.elapsed();
    loop {
        let t = Instant::now();
        let done = scrub.step(step_rows).unwrap();
        work += t.elapsed();
        steps += 1;
        if done {
            break;
        }
    }
    let t = Instant::now();
    let report = scrub.finish();
    work += t.elapsed();
    (report, work, steps)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let cfg = ScrubConfig::default();
    let dir = tempfile::tempdir().unwrap();
    println!("persist scrub benchmark: bundled SQLite, WAL, one process, 3 rounds, median");
    println!(
        "machine: {} cores; scrub defaults: {} rows per step, {:?} between steps, a pass every {:?}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cfg.step_rows,
        cfg.step_interval,
        cfg.period
    );

    // 1. The cost of scrubbing.
    let n = env("PERSIST_BENCH_SCRUB_ROWS", 100_000);
    let s = store(dir.path(), "cost.db");
    load(&s, n);
    let mut works = Vec::new();
    let mut verifies = Vec::new();
    let mut steps = 0;
    for _ in 0..3 {
        let (report, work, k) = pass(&s, cfg.step_rows);
        assert_eq!(report.rows as usize, n);
        assert!(report.differing.is_empty(), "a false alarm: {report:?}");
        works.push(work);
        steps = k;
        let t = Instant::now();
        assert!(s.verify().unwrap().is_consistent());
        verifies.push(t.elapsed());
    }
    let (work, verify) = (median(works), median(verifies));
    let paced = cfg.step_interval * steps as u32 + work;
    let every = cfg.period.max(paced);
    println!();
    println!("{n} rows, one pass in {steps} steps:");
    println!(
        "  work per pass        {:>8.1} ms   (Store::verify, one read of every row: {:.1} ms; ratio {:.2})",
        work.as_secs_f64() * 1e3,
        verify.as_secs_f64() * 1e3,
        work.as_secs_f64() / verify.as_secs_f64()
    );
    println!(
        "  paced pass           {:>8.2} s    (read whole every {:.1} s)",
        paced.as_secs_f64(),
        every.as_secs_f64()
    );
    println!(
        "  share of one core    {:>8.2} %    (target < 5 %)",
        100.0 * work.as_secs_f64() / every.as_secs_f64()
    );

    // 2. A corrupted row on a 1M-row backup.
    let n = env("PERSIST_BENCH_REPAIR_ROWS", 1_000_000);
    let m = store(dir.path(), "master.db");
    let b = store(dir.path(), "backup.db");
    let t = Instant::now();
    load(&m, n);
    let mut snap = m.snapshot().unwrap();
    let header = snap.header().clone();
    let mut restore = b.begin_restore(&header).unwrap();
    while let Some((table, rows)) = snap.next_chunk(8192).unwrap() {
        restore.push(table, &rows).unwrap();
    }
    restore.finish().unwrap();
    drop(snap);
    println!();
    println!(
        "{n} rows on both nodes (loaded and restored in {:.1} s); one row changed with SQL on the backup:",
        t.elapsed().as_secs_f64()
    );
    // The bulk load's WAL is checkpointed first, so the figures below are
    // the repair's, not a checkpoint's.
    for name in ["master.db", "backup.db"] {
        let path = dir.path().join(name);
        let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let mut raw =
        SqliteConnection::establish(dir.path().join("backup.db").to_str().unwrap()).unwrap();
    raw.batch_execute(&format!(
        "UPDATE bench_row SET value = -1 WHERE id = {}",
        n / 2
    ))
    .unwrap();
    drop(raw);
    let (found, work, steps) = pass(&b, cfg.step_rows);
    let paced = cfg.step_interval * steps as u32 + work;
    println!(
        "  found by one pass    {:>8.2} s of work; paced at the defaults {:.1} s ({} ranges differ)",
        work.as_secs_f64(),
        paced.as_secs_f64(),
        found.differing_buckets()
    );
    let t = Instant::now();
    let local = b.range_rows(&found.differing).unwrap();
    let read_backup = t.elapsed();
    let t = Instant::now();
    let theirs = m.range_rows(&found.differing).unwrap();
    let read_master = t.elapsed();
    let hashes: Vec<(String, Vec<u128>)> = local
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.rows.iter().map(|(h, _)| *h).collect()))
        .collect();
    let sent_hashes: usize = hashes.iter().map(|(_, h)| h.len()).sum();
    let t = Instant::now();
    let set = plan_repair(&theirs, &hashes).unwrap();
    let plan = t.elapsed();
    // The same-run baseline: a write transaction that reads one row by key
    // and commits nothing (the log does not move).
    let t = Instant::now();
    b.write(|tx| tx.get::<BenchRow>(1i64).map(|_| ())).unwrap();
    let write_one = t.elapsed();
    let t = Instant::now();
    let outcome = b.repair(&local, &set).unwrap();
    let apply = t.elapsed();
    assert!(b.verify().unwrap().is_consistent());
    println!(
        "  backup reads ranges  {:>8.1} ms ({} rows in them; {} hashes sent, {} KiB)",
        read_backup.as_secs_f64() * 1e3,
        local.row_count(),
        sent_hashes,
        sent_hashes * 16 / 1024
    );
    println!(
        "  master reads ranges  {:>8.1} ms, plans in {:.2} ms",
        read_master.as_secs_f64() * 1e3,
        plan.as_secs_f64() * 1e3
    );
    println!(
        "  rows shipped         {:>8}    of {} ({:.5} % of the rows; target < 1 %), {} dropped",
        set.rows.len(),
        n,
        100.0 * set.rows.len() as f64 / n as f64,
        set.remove.len()
    );
    println!(
        "  repair applied       {:>8.2} ms ({} updated, {} inserted, {} deleted; an empty write transaction on the same store: {:.2} ms); the backup verifies",
        apply.as_secs_f64() * 1e3,
        outcome.updated,
        outcome.inserted,
        outcome.deleted,
        write_one.as_secs_f64() * 1e3
    );
}
