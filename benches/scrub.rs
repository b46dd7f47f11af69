//! Scrub and ranged repair benchmark, on bundled SQLite in one process:
//!
//! 1. What the scrubber costs: a full pass over a 100k-row store read in the
//!    default steps (2,000 rows), timed step by step, as a share of one core
//!    at the default pace (a pass every half period: 5 s), next to
//!    `Store::verify` (one plain read of every row with the digest
//!    recomputed) in the same run.
//! 2. A corrupted row on a 1M-row backup: the pass that finds it, the reads
//!    of both nodes, the rows shipped (against the table) and the repair.
//! 3. The same on a running pair (master and backup sync workers over
//!    loopback TCP in this process, the default scrub settings): the
//!    process's CPU while both nodes only scrub, then a row changed with SQL
//!    on the backup, timed until the backup has repaired it, against the
//!    scrub period and what the backup reports it can promise
//!    (`ScrubStatus::finds_within`).
//!
//! `cargo bench --bench scrub` (`PERSIST_BENCH_SCRUB_ROWS` for the first
//! part, default 100000; `PERSIST_BENCH_REPAIR_ROWS` for the second and
//! third, default 1000000; `PERSIST_BENCH_SCRUB_PARTS`, default `123`).
//! Figures, not assertions.

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
        "machine: {} cores; scrub defaults: {} rows per step, a change found within {:?} (a pass every {:?}), at most {} % of one core",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cfg.step_rows,
        cfg.period,
        cfg.period / 2,
        cfg.max_core_percent,
    );
    let parts = std::env::var("PERSIST_BENCH_SCRUB_PARTS").unwrap_or_else(|_| "123".into());
    if parts.contains('1') {
        cost(&cfg);
    }
    let n = env("PERSIST_BENCH_REPAIR_ROWS", 1_000_000);
    if parts.contains('2') {
        one_process(&cfg, dir.path(), n);
    }
    if parts.contains('3') {
        running_pair(&cfg, dir.path(), n);
    }
}

/// The pace a pass of `work` gets with these settings: spread over 90 % of
/// half a period, or slower if the core share caps it.
fn paced(cfg: &ScrubConfig, work: Duration) -> Duration {
    (cfg.period / 2 * 9 / 10).max(work * 100 / cfg.max_core_percent)
}

/// 1. The cost of scrubbing.
fn cost(cfg: &ScrubConfig) {
    let dir = tempfile::tempdir().unwrap();

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
    let pass_takes = paced(cfg, work);
    let every = (cfg.period / 2).max(pass_takes);
    println!();
    println!("{n} rows, one pass in {steps} steps:");
    println!(
        "  work per pass        {:>8.1} ms   (Store::verify, one read of every row: {:.1} ms; ratio {:.2})",
        work.as_secs_f64() * 1e3,
        verify.as_secs_f64() * 1e3,
        work.as_secs_f64() / verify.as_secs_f64()
    );
    println!(
        "  paced pass           {:>8.2} s    (read whole every {:.1} s: a change found within {:.1} s)",
        pass_takes.as_secs_f64(),
        every.as_secs_f64(),
        (every + pass_takes).as_secs_f64()
    );
    println!(
        "  share of one core    {:>8.2} %    (target < 5 %)",
        100.0 * work.as_secs_f64() / every.as_secs_f64()
    );
}

/// A master and a backup of `n` rows, the backup restored from the master.
fn twin_stores(dir: &std::path::Path, n: usize) -> (Store, Store) {
    let m = store(dir, "master.db");
    let b = store(dir, "backup.db");
    load(&m, n);
    let mut snap = m.snapshot().unwrap();
    let header = snap.header().clone();
    let mut restore = b.begin_restore(&header).unwrap();
    while let Some((table, rows)) = snap.next_chunk(8192).unwrap() {
        restore.push(table, &rows).unwrap();
    }
    restore.finish().unwrap();
    drop(snap);
    // The bulk load's WAL is checkpointed first, so the figures that follow
    // are the scrub's and the repair's, not a checkpoint's.
    for name in ["master.db", "backup.db"] {
        let path = dir.join(name);
        let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    (m, b)
}

/// Changes one row's value with SQL, behind the store's back.
fn corrupt(dir: &std::path::Path, id: usize) {
    let mut raw = SqliteConnection::establish(dir.join("backup.db").to_str().unwrap()).unwrap();
    raw.batch_execute(&format!("UPDATE bench_row SET value = -1 WHERE id = {id}"))
        .unwrap();
}

/// 2. A corrupted row on a 1M-row backup, step by step in one thread.
fn one_process(cfg: &ScrubConfig, dir: &std::path::Path, n: usize) {
    let dir = dir.join("one");
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let (m, b) = twin_stores(&dir, n);
    println!();
    println!(
        "{n} rows on both nodes (loaded and restored in {:.1} s); one row changed with SQL on the backup:",
        t.elapsed().as_secs_f64()
    );
    corrupt(&dir, n / 2);
    let (found, work, _) = pass(&b, cfg.step_rows);
    let pass_takes = paced(cfg, work);
    println!(
        "  found by one pass    {:>8.2} s of work; paced at the defaults {:.1} s: found within {:.1} s (period {:?}; {} ranges differ)",
        work.as_secs_f64(),
        pass_takes.as_secs_f64(),
        ((cfg.period / 2).max(pass_takes) + pass_takes).as_secs_f64(),
        cfg.period,
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

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Waits until `ok`, for at most `within`.
async fn wait(what: &str, ok: impl Fn() -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// 3. A running pair at the default scrub settings.
fn running_pair(cfg: &ScrubConfig, dir: &std::path::Path, n: usize) {
    use persist::sync::auth::{AuthConfig, Secret};
    use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
    use persist::sync::worker::backup::start_backup;
    use persist::sync::worker::master::start_master;
    use persist::sync::worker::SyncConfig;

    let dir = dir.join("pair");
    std::fs::create_dir_all(&dir).unwrap();
    let (m, b) = twin_stores(&dir, n);
    let sync = |node: &str| {
        let mut c = SyncConfig::new(
            AuthConfig::new(
                "bench",
                node,
                Secret::new(b"a long shared secret".to_vec()).unwrap(),
            )
            .unwrap(),
        );
        c.scrub = cfg.clone();
        c
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
        let addr = acceptor.local_socket_addr().to_string();
        let master = start_master(m.clone(), acceptor, sync("master")).unwrap();
        let backup = start_backup(b.clone(), TcpDialer::new(addr, None), sync("backup")).unwrap();
        // Both nodes through two passes: the second is planned from the first.
        wait(
            "two passes on each node",
            || master.status().scrub.passes >= 2 && backup.status().scrub.passes >= 2,
            Duration::from_secs(120),
        )
        .await;
        let window = cfg.period * 2;
        let (cpu0, t0) = (process_cpu(), Instant::now());
        tokio::time::sleep(window).await;
        let (cpu, wall) = (process_cpu() - cpu0, t0.elapsed());
        let (ms, bs) = (master.status().scrub, backup.status().scrub);
        println!();
        println!("{n} rows on a running pair (master and backup in this process), scrubbing at the defaults:");
        println!(
            "  pass                 {:>8.2} s (master), {:.2} s (backup), {} rows; finds within {:.1} s / {:.1} s (period {:?})",
            ms.last_pass_took.unwrap().as_secs_f64(),
            bs.last_pass_took.unwrap().as_secs_f64(),
            bs.last_pass_rows,
            ms.finds_within.unwrap().as_secs_f64(),
            bs.finds_within.unwrap().as_secs_f64(),
            cfg.period
        );
        println!(
            "  CPU, both nodes      {:>8.2} % of one core over {:.0} s with no writes: {:.2} % per node (cap {} %)",
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
            wall.as_secs_f64(),
            50.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
            cfg.max_core_percent
        );
        let repairs = backup.status().scrub.repairs;
        corrupt(&dir, n / 3);
        let t = Instant::now();
        wait(
            "the backup repairs the changed row",
            || backup.status().scrub.repairs > repairs,
            cfg.period * 10,
        )
        .await;
        let took = t.elapsed();
        let (ms, bs) = (master.status().scrub, backup.status().scrub);
        assert_eq!(bs.rows_repaired, 1, "{bs:?}");
        println!(
            "  row changed on the backup: repaired after {:.2} s (target: within the period, {:?}; the backup promised {:.1} s); {} row shipped of {n} ({:.5} %)",
            took.as_secs_f64(),
            cfg.period,
            bs.finds_within.unwrap().as_secs_f64(),
            ms.rows_shipped,
            100.0 * ms.rows_shipped as f64 / n as f64
        );
        backup.shutdown().await;
        master.shutdown().await;
    });
    assert!(b.verify().unwrap().is_consistent());
    assert_eq!(b.digest(), m.digest());
}
