//! Replication benchmark: master and backup on loopback TCP, SQLite on both
//! (or PostgreSQL on both).
//!
//! `cargo bench -p sample-gateway --bench replication` runs every case; name cases to run some:
//! `cargo bench -p sample-gateway --bench replication -- lag resync`. Sizes: `PERSIST_BENCH_ROWS`
//! (default 1,000,000), `PERSIST_BENCH_LAG_COMMITS` (default 5,000),
//! `PERSIST_BENCH_CATCHUP_TXS` (default 100,000); rounds of the throughput
//! case: `PERSIST_BENCH_TP_ROUNDS` (default 3).
//!
//! Shapes: `simple` (the four-column [`Item`]) and `tags` (the sample
//! module's devices and tags: references, unique and plain indexes, a long
//! text column, see `shapes/mod.rs`); both run unless one is named.
//! `PERSIST_NODE_BIN` runs another build of `persist-node` in the resync.
//! Backends: `sqlite` (the default) and `pg` (PostgreSQL stores on both
//! nodes, two schemas at `PERSIST_BENCH_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); name both to run both.
//!
//! Cases and their targets (issue 3; PostgreSQL 15 logical replication on a
//! machine like ours in brackets):
//! - throughput: rows/s committed on the master and applied on the backup,
//!   1,000-row transactions, against local-only batched inserts in the same
//!   run: >= 0.7 of local [269k rows/s]
//! - lag: master commit to backup apply at 1,000 commits/s: p50 <= 0.1 ms,
//!   p99 <= 0.5 ms [0.35 / 1.09 ms at 500/s]; beside its floor in the same
//!   run: one local commit of the row plus the sync path's hops without a
//!   store (both at the same pacing)
//! - resync: full resync of 1M rows between two processes: >= 1M rows/s and
//!   < 100 MB peak RSS each [initial copy 648k rows/s]; on SQLite, beside
//!   SQLite's own bulk load of the same rows in the same run (generated in
//!   SQL, `INSERT ... SELECT`, indexes built after): the database alone
//! - catchup: 100,000 transactions missed while the backup was down:
//!   >= 700k row changes/s [342k rows/s]
//!
//! `lagparts` (only when named, simple shape) breaks the lag tail down in
//! one run (issue 11): the lag as the `lag` case measures it, then with the
//! SQLite checkpoints deferred past the run, with the scrubber off, with
//! both, with checkpoints inside commits; the master's own commit latency
//! and the backup's apply alone (a local store, same pacing); and the floors
//! without a store: one-way loopback TCP between two threads, and the same
//! hops the sync path takes (committing thread -> tokio task -> TCP -> tokio
//! task -> store thread), all at the same 1,000 messages/s. On SQLite it
//! also runs the backup in a second process (this binary again), both sides
//! stamping with the wall clock. `PERSIST_BENCH_LAGPARTS` picks the parts
//! and their order (see `lag_parts`).

#![allow(missing_docs)]

#[path = "shapes/mod.rs"]
mod shapes;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use persist::listen::CommitEvent;
use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::worker::backup::{start_backup, BackupHandle};
use persist::sync::worker::master::{start_master, MasterHandle};
use persist::sync::worker::SyncConfig;
use persist::{PersistentRecord, Store, StoreConfig};

#[derive(PersistentRecord, Debug, Clone)]
struct Item {
    #[persist(identity)]
    id: i64,
    #[persist(indexed)]
    tx: i64,
    seq: i32,
    payload: String,
}

const SECRET: &[u8] = b"a long shared secret for the pair";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn item(tx: i64, seq: i32) -> Item {
    Item {
        id: 0,
        tx,
        seq,
        payload: format!("device-{tx:08}-point-{seq:03}-value"),
    }
}

/// Which record shape a case writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Simple,
    Tags,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::Simple => "simple",
            Shape::Tags => "tags",
        }
    }
}

/// Where the stores live.
#[derive(Debug, Clone)]
enum Db {
    Sqlite(PathBuf),
    /// URL and a prefix for the schemas of this run.
    Pg(String, String),
}

impl Db {
    fn label(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Pg(..) => "pg",
        }
    }

    fn config(&self, name: &str) -> StoreConfig {
        match self {
            Db::Sqlite(dir) => StoreConfig::sqlite(dir.join(format!("{name}.db"))),
            Db::Pg(url, prefix) => StoreConfig::postgres(url.clone(), format!("{prefix}_{name}")),
        }
    }

    /// `persist-node` arguments opening the store `name`.
    fn node_args(&self, name: &str) -> Vec<String> {
        match self {
            Db::Sqlite(dir) => vec![
                "--db".into(),
                dir.join(format!("{name}.db")).to_str().unwrap().into(),
            ],
            Db::Pg(url, prefix) => vec![
                "--db".into(),
                "unused.db".into(),
                "--pg-url".into(),
                url.clone(),
                "--pg-schema".into(),
                format!("{prefix}_{name}"),
            ],
        }
    }

    /// Drops this run's schemas (PostgreSQL).
    fn clean(&self) {
        use diesel::Connection;
        if let Db::Pg(url, prefix) = self {
            let mut c = diesel::PgConnection::establish(url).unwrap();
            for name in [
                "local",
                "tp-master",
                "tp-backup",
                "lag-master",
                "lag-backup",
                "rs-master",
                "rs-backup",
                "cu-master",
                "cu-backup",
                "lp-local",
                "lp-local-deferred",
                "lp0-master",
                "lp0-backup",
                "lp1-master",
                "lp1-backup",
                "lp2-master",
                "lp2-backup",
                "lp3-master",
                "lp3-backup",
                "lp4-master",
                "lp4-backup",
            ] {
                for shape in [Shape::Simple, Shape::Tags] {
                    drop_schema(&mut c, prefix, &store_name(name, shape));
                }
            }
        }
    }
}

/// The name of the store `name` of `shape`: its file stem or schema suffix.
fn store_name(name: &str, shape: Shape) -> String {
    format!("{name}-{}", shape.label())
}

fn drop_schema(c: &mut diesel::PgConnection, prefix: &str, store: &str) {
    use diesel::connection::SimpleConnection;
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS \"{prefix}_{store}\" CASCADE"
    ))
    .unwrap();
}

/// Removes the store `name` of `shape`, if there is one: its files on
/// SQLite, its schema on PostgreSQL.
fn remove_store(db: &Db, name: &str, shape: Shape) {
    let name = store_name(name, shape);
    match db {
        Db::Sqlite(dir) => {
            for ext in ["db", "db-wal", "db-shm"] {
                let _ = std::fs::remove_file(dir.join(format!("{name}.{ext}")));
            }
        }
        Db::Pg(url, prefix) => {
            use diesel::Connection;
            drop_schema(
                &mut diesel::PgConnection::establish(url).unwrap(),
                prefix,
                &name,
            );
        }
    }
}

fn open(db: &Db, name: &str, shape: Shape) -> Store {
    open_with(db, name, shape, Checkpoints::Default)
}

/// The SQLite checkpoint regime of a `lagparts` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checkpoints {
    /// The store's default: a background thread every 100 ms.
    Default,
    /// The background thread's first checkpoint an hour away: none in the run.
    Deferred,
    /// No background thread: SQLite checkpoints inside commits (every 1,000 WAL pages).
    InCommit,
}

fn open_with(db: &Db, name: &str, shape: Shape, ckpt: Checkpoints) -> Store {
    let mut config = db.config(&store_name(name, shape));
    if let persist::store::BackendConfig::Sqlite(o) = &mut config.backend {
        match ckpt {
            Checkpoints::Default => {}
            Checkpoints::Deferred => o.background_checkpoint = Some(Duration::from_secs(3600)),
            Checkpoints::InCommit => o.background_checkpoint = None,
        }
    }
    let s = Store::open(config).unwrap();
    s.register::<Item>().unwrap();
    if shape == Shape::Tags {
        shapes::register(&s).unwrap();
    }
    s
}

fn cfg(node: &str) -> SyncConfig {
    let mut c = SyncConfig::new(
        AuthConfig::new("bench", node, Secret::new(SECRET.to_vec()).unwrap()).unwrap(),
    );
    c.reconnect_initial = Duration::from_millis(10);
    c.reconnect_max = Duration::from_millis(100);
    c
}

async fn pair(m: &Store, b: &Store) -> (MasterHandle, BackupHandle, String) {
    pair_with(m, b, true).await
}

async fn pair_with(m: &Store, b: &Store, scrub: bool) -> (MasterHandle, BackupHandle, String) {
    let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
    let addr = acceptor.local_socket_addr().to_string();
    let (mut mc, mut bc) = (cfg("master"), cfg("backup"));
    mc.scrub.enabled = scrub;
    bc.scrub.enabled = scrub;
    let master = start_master(m.clone(), acceptor, mc).unwrap();
    let backup = start_backup(b.clone(), TcpDialer::new(addr.clone(), None), bc).unwrap();
    (master, backup, addr)
}

async fn wait_for(b: &Store, position: u64) {
    while b.position() < position {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn write_batched(s: &Store, shape: Shape, rows: u64, per_tx: u64, first_tx: i64) {
    let mut tx = first_tx;
    let mut left = rows;
    while left > 0 {
        let n = left.min(per_tx);
        match shape {
            Shape::Simple => {
                let batch: Vec<Item> = (0..n as i32).map(|seq| item(tx, seq)).collect();
                s.write(|t| t.insert_many(&batch)).unwrap();
            }
            Shape::Tags => s.write(|t| shapes::write_tx(t, tx as u64, n)).unwrap(),
        }
        left -= n;
        tx += 1;
    }
}

/// Makes a master ready for `shape` (the profiles devices reference).
fn seed(s: &Store, shape: Shape) {
    if shape == Shape::Tags {
        shapes::seed_profiles(s).unwrap();
    }
}

fn row(case: &str, figure: String, target: &str) {
    println!("{case:<64} {figure:>30}   {target}");
}

/// One round of the throughput case: local-only rows/s, then the master's
/// rows/s and the rows/s committed and applied, with a pair.
async fn throughput_round(db: &Db, shape: Shape, rows: u64, local_first: bool) -> [f64; 3] {
    // Each store is removed once measured: the next round starts afresh.
    let local_rate = || {
        let local = open(db, "local", shape);
        seed(&local, shape);
        let t = Instant::now();
        write_batched(&local, shape, rows, 1000, 0);
        let rate = rows as f64 / t.elapsed().as_secs_f64();
        drop(local);
        remove_store(db, "local", shape);
        rate
    };
    let local = local_first.then(local_rate);
    let (m, b) = (open(db, "tp-master", shape), open(db, "tp-backup", shape));
    let (master, backup, _) = pair(&m, &b).await;
    seed(&m, shape);
    wait_for(&b, m.position()).await;
    let t = Instant::now();
    let mm = m.clone();
    let master_done = tokio::task::spawn_blocking(move || {
        write_batched(&mm, shape, rows, 1000, 0);
        Instant::now()
    })
    .await
    .unwrap();
    wait_for(&b, m.position()).await;
    let all = t.elapsed().as_secs_f64();
    let master_rate = rows as f64 / (master_done - t).as_secs_f64();
    assert_eq!(b.digest(), m.digest());
    drop((master, backup, m, b));
    for name in ["tp-master", "tp-backup"] {
        remove_store(db, name, shape);
    }
    let local = local.unwrap_or_else(local_rate);
    [local, master_rate, rows as f64 / all]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Returns the local-only rate (rows/s, the median of the rounds), the
/// baseline of this shape. Local and replicated runs alternate which goes
/// first, `PERSIST_BENCH_TP_ROUNDS` rounds (default 3); the ratio printed is
/// of the medians, with the range of the rounds' own ratios beside it.
async fn throughput(db: &Db, shape: Shape) -> f64 {
    let rows = env("PERSIST_BENCH_ROWS", 1_000_000);
    let rounds = env("PERSIST_BENCH_TP_ROUNDS", 3).max(1);
    let (sh, be) = (shape.label(), db.label());
    let mut runs = Vec::new();
    for r in 0..rounds {
        runs.push(throughput_round(db, shape, rows, r % 2 == 0).await);
    }
    let col = |i: usize| median(runs.iter().map(|r| r[i]).collect());
    let (local_rate, master_rate, rate) = (col(0), col(1), col(2));
    let ratios: Vec<f64> = runs.iter().map(|r| r[2] / r[0]).collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    row(
        &format!("{be} {sh} throughput: local-only batched inserts (1000-row tx)"),
        format!("{local_rate:.0} rows/s"),
        &format!("baseline, median of {rounds}"),
    );
    row(
        &format!("{be} {sh} throughput: master commits while replicating"),
        format!("{master_rate:.0} rows/s"),
        "",
    );
    row(
        &format!("{be} {sh} throughput: committed on master AND applied on backup"),
        format!("{rate:.0} rows/s ({:.2}x)", rate / local_rate),
        &format!(">= 0.7x local (rounds {lo:.2}-{hi:.2}x)"),
    );
    local_rate
}

async fn lag(db: &Db, shape: Shape) {
    let commits = env("PERSIST_BENCH_LAG_COMMITS", 5_000) as usize;
    let (sh, be) = (shape.label(), db.label());
    let h = lag_run(db, shape, "lag", Checkpoints::Default, true).await;
    // The floor of the same run: the backup's apply is at least one local
    // commit of the row, and the entry crosses at least the hops of the
    // sync path (committing thread -> task -> TCP -> task -> store thread).
    let local = local_commits(db, shape, Checkpoints::Default);
    let hops = hops_floor().await;
    let p50 = |h: &Histogram<u64>| h.value_at_quantile(0.5) as f64 / 1000.0;
    let floor = p50(&local) + p50(&hops);
    row(
        &format!("{be} {sh} lag: one local single-row commit, same pacing"),
        quantiles(&local),
        "baseline",
    );
    row(
        &format!("{be} {sh} lag: the sync path's hops with no store"),
        quantiles(&hops),
        "baseline",
    );
    row(
        &format!("{be} {sh} lag: commit -> applied, {commits} commits at 1000/s"),
        format!(
            "{} (p50 {:.2}x of its floor {floor:.3} ms: commit p50 + hops p50)",
            quantiles(&h),
            p50(&h) / floor
        ),
        "p50 <= 0.1, p99 <= 0.5 ms",
    );
}

fn quantiles(h: &Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.3} p99 {:.3} max {:.3} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// Sleeps until commit `i` of a 1,000/s load started at `start` is due.
/// Sleep, never spin: on two cores a spinning load generator would steal
/// the CPU the replication path needs.
fn pace(start: Instant, i: usize) {
    let due = start + Duration::from_micros(1000 * i as u64);
    if let Some(left) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// What a lag load's inserts need first: the simple row's table in use and,
/// for `tags`, one device (key 1) the tags reference.
fn lag_seed(s: &Store, shape: Shape) {
    s.insert(&item(-1, 0)).unwrap();
    seed(s, shape);
    if shape == Shape::Tags {
        s.write(|t| shapes::write_tx(t, 0, 1)).unwrap();
    }
}

/// Commit `i` of a lag load: one single-row insert of the shape.
fn lag_insert(s: &Store, shape: Shape, i: usize) {
    match shape {
        Shape::Simple => drop(s.insert(&item(i as i64, 0)).unwrap()),
        Shape::Tags => drop(
            s.insert(&shapes::Tag {
                id: 0,
                device_id: 1,
                address: format!("ns=2;s=Lag.Register{i:05}"),
                scale: 0.1,
                description: shapes::description(0, i as u64),
            })
            .unwrap(),
        ),
    }
}

/// One lag measurement (the `lag` case's): microseconds from the master's
/// insert returning to the backup's commit hook, per commit.
async fn lag_run(
    db: &Db,
    shape: Shape,
    name: &str,
    ckpt: Checkpoints,
    scrub: bool,
) -> Histogram<u64> {
    let commits = env("PERSIST_BENCH_LAG_COMMITS", 5_000) as usize;
    let (m, b) = (
        open_with(db, &format!("{name}-master"), shape, ckpt),
        open_with(db, &format!("{name}-backup"), shape, ckpt),
    );
    let (master, backup, _) = pair_with(&m, &b, scrub).await;
    lag_seed(&m, shape);
    wait_for(&b, m.position()).await;
    let base = m.position();
    // Timestamped in the backup's committing thread, right after the apply commits.
    let applied_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; commits]));
    let sink = applied_at.clone();
    let hook = b.add_commit_hook(move |event| {
        if let CommitEvent::Commit(c) = event {
            let now = Instant::now();
            let i = c.position.wrapping_sub(base + 1) as usize;
            if let Some(slot) = sink.lock().unwrap().get_mut(i) {
                *slot = Some(now);
            }
        }
    });
    let mm = m.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let mut at = Vec::with_capacity(commits);
        let start = Instant::now();
        for i in 0..commits {
            pace(start, i);
            lag_insert(&mm, shape, i);
            at.push(Instant::now());
        }
        at
    })
    .await
    .unwrap();
    wait_for(&b, m.position()).await;
    b.remove_commit_hook(hook);
    // Nothing of this pair runs on while the next part is measured.
    backup.shutdown().await;
    master.shutdown().await;
    let applied = applied_at.lock().unwrap().clone();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for (c, a) in committed.iter().zip(&applied) {
        let a = a.expect("every commit applied");
        h.record(a.saturating_duration_since(*c).as_micros() as u64)
            .unwrap();
    }
    h
}

/// A local store (no replication) written as the lag case's master is:
/// single-row inserts of the shape at 1,000/s; the histogram of each
/// insert's duration (what the backup's apply of one entry costs at least).
fn local_commits(db: &Db, shape: Shape, ckpt: Checkpoints) -> Histogram<u64> {
    let commits = env("PERSIST_BENCH_LAG_COMMITS", 5_000) as usize;
    let name = match ckpt {
        Checkpoints::Default => "lp-local",
        _ => "lp-local-deferred",
    };
    remove_store(db, name, shape);
    let s = open_with(db, name, shape, ckpt);
    lag_seed(&s, shape);
    let mut h = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    for i in 0..commits {
        pace(start, i);
        let t = Instant::now();
        lag_insert(&s, shape, i);
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    h
}

/// One-way loopback TCP between two threads (blocking sockets, no delay):
/// 8-byte messages at 1,000/s, from before the write to after the read.
fn tcp_floor() -> Histogram<u64> {
    use std::io::{Read, Write};
    let commits = env("PERSIST_BENCH_LAG_COMMITS", 5_000) as usize;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_nodelay(true).unwrap();
        let mut at = vec![Instant::now(); commits];
        let mut buf = [0u8; 8];
        for _ in 0..commits {
            c.read_exact(&mut buf).unwrap();
            at[u64::from_le_bytes(buf) as usize] = Instant::now();
        }
        at
    });
    let mut w = std::net::TcpStream::connect(addr).unwrap();
    w.set_nodelay(true).unwrap();
    let mut sent = Vec::with_capacity(commits);
    let start = Instant::now();
    for i in 0..commits {
        pace(start, i);
        sent.push(Instant::now());
        w.write_all(&(i as u64).to_le_bytes()).unwrap();
    }
    let got = reader.join().unwrap();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for (s, g) in sent.iter().zip(&got) {
        h.record(g.saturating_duration_since(*s).as_micros() as u64)
            .unwrap();
    }
    h
}

/// The sync path's hops without a store: the committing thread hands the
/// message to a tokio task (unbounded channel, as a commit hook would), which
/// writes it to loopback TCP; another tokio task reads it and hands it to a
/// plain thread (the backup's store thread), which timestamps it.
async fn hops_floor() -> Histogram<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let commits = env("PERSIST_BENCH_LAG_COMMITS", 5_000) as usize;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (to_store, store_rx) = std::sync::mpsc::channel::<u64>();
    let store_thread = std::thread::spawn(move || {
        let mut at = vec![Instant::now(); commits];
        for _ in 0..commits {
            let i = store_rx.recv().unwrap();
            at[i as usize] = Instant::now();
        }
        at
    });
    let reader = tokio::spawn(async move {
        let (mut c, _) = listener.accept().await.unwrap();
        c.set_nodelay(true).unwrap();
        let mut buf = [0u8; 8];
        for _ in 0..commits {
            c.read_exact(&mut buf).await.unwrap();
            to_store.send(u64::from_le_bytes(buf)).unwrap();
        }
    });
    let mut w = tokio::net::TcpStream::connect(addr).await.unwrap();
    w.set_nodelay(true).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let writer = tokio::spawn(async move {
        while let Some(i) = rx.recv().await {
            w.write_all(&i.to_le_bytes()).await.unwrap();
        }
    });
    let sent = tokio::task::spawn_blocking(move || {
        let mut sent = Vec::with_capacity(commits);
        let start = Instant::now();
        for i in 0..commits {
            pace(start, i);
            sent.push(Instant::now());
            tx.send(i as u64).unwrap();
        }
        sent
    })
    .await
    .unwrap();
    writer.await.unwrap();
    reader.await.unwrap();
    let got = store_thread.join().unwrap();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for (s, g) in sent.iter().zip(&got) {
        h.record(g.saturating_duration_since(*s).as_micros() as u64)
            .unwrap();
    }
    h
}

/// The backup of `lag_two_processes`, in a child process (this binary run
/// again with `PERSIST_BENCH_LAG_CHILD=<db file>|<master addr>|<base>|<commits>`):
/// applies, stamps each commit with the wall clock in its commit hook, and
/// prints `READY` once caught up with `base`, then `APPLIED <i> <unix ns>`
/// lines once `base + commits` is applied.
fn lag_child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (path, addr) = (parts[0], parts[1].to_string());
    let base: u64 = parts[2].parse().unwrap();
    let commits: usize = parts[3].parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = Store::open(StoreConfig::sqlite(path)).unwrap();
    b.register::<Item>().unwrap();
    let applied_at: Arc<Mutex<Vec<u128>>> = Arc::new(Mutex::new(vec![0; commits]));
    let sink = applied_at.clone();
    b.add_commit_hook(move |event| {
        if let CommitEvent::Commit(c) = event {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let i = c.position.wrapping_sub(base + 1) as usize;
            if let Some(slot) = sink.lock().unwrap().get_mut(i) {
                *slot = now;
            }
        }
    });
    rt.block_on(async {
        let _backup = start_backup(b.clone(), TcpDialer::new(addr, None), cfg("backup")).unwrap();
        wait_for(&b, base).await;
        println!("READY");
        wait_for(&b, base + commits as u64).await;
    });
    let mut out = String::new();
    for (i, t) in applied_at.lock().unwrap().iter().enumerate() {
        out.push_str(&format!("APPLIED {i} {t}\n"));
    }
    print!("{out}");
}

/// The lag case with the backup in another process (SQLite, simple shape):
/// the wall clock on both sides, from the master's insert returning to the
/// backup's commit hook.
async fn lag_two_processes(dir: &Path) -> Histogram<u64> {
    let commits = env("PERSIST_BENCH_LAG_COMMITS", 5_000) as usize;
    let db = Db::Sqlite(dir.to_path_buf());
    let m = open(&db, "lp5-master", Shape::Simple);
    let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
    let addr = acceptor.local_socket_addr().to_string();
    let _master = start_master(m.clone(), acceptor, cfg("master")).unwrap();
    m.insert(&item(-1, 0)).unwrap();
    let base = m.position();
    let path = dir.join("lp5-backup-simple.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(
            "PERSIST_BENCH_LAG_CHILD",
            format!("{}|{addr}|{base}|{commits}", path.display()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let l = lines.next().unwrap().unwrap();
        assert_eq!(l, "READY");
        lines
    })
    .await
    .unwrap();
    let mm = m.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let mut at = Vec::with_capacity(commits);
        let start = Instant::now();
        for i in 0..commits {
            pace(start, i);
            mm.insert(&item(i as i64, 0)).unwrap();
            at.push(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos(),
            );
        }
        at
    })
    .await
    .unwrap();
    let applied = tokio::task::spawn_blocking(move || {
        let mut applied = vec![0u128; commits];
        for l in ready {
            let l = l.unwrap();
            let mut w = l.split_whitespace();
            if w.next() == Some("APPLIED") {
                let i: usize = w.next().unwrap().parse().unwrap();
                applied[i] = w.next().unwrap().parse().unwrap();
            }
        }
        applied
    })
    .await
    .unwrap();
    let _ = child.wait();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for (c, a) in committed.iter().zip(&applied) {
        assert!(*a > 0, "every commit applied");
        h.record((a.saturating_sub(*c) / 1000) as u64).unwrap();
    }
    h
}

/// The `lagparts` case (see the module docs). `PERSIST_BENCH_LAGPARTS`
/// names the parts to run, in that order (comma-separated; default all):
/// `lp0` as the lag case, `lp1` checkpoints deferred, `lp2` scrubber off,
/// `lp3` both, `lp4` checkpoints inside commits, `lp5` backup in another
/// process, `local`, `local-deferred`, `tcp`, `hops`. Rotating the order
/// between runs keeps a burst of load on the machine from landing on the
/// same part every time.
async fn lag_parts(db: &Db) {
    let commits = env("PERSIST_BENCH_LAG_COMMITS", 5_000) as usize;
    let be = db.label();
    let target = "p50 <= 0.1, p99 <= 0.5 ms";
    let sqlite = matches!(db, Db::Sqlite(_));
    let parts = std::env::var("PERSIST_BENCH_LAGPARTS")
        .unwrap_or_else(|_| "lp0,lp1,lp2,lp3,lp4,lp5,local,local-deferred,tcp,hops".into());
    for part in parts.split(',').map(str::trim) {
        let variant = match part {
            "lp0" => Some(("as the lag case (defaults)", Checkpoints::Default, true)),
            "lp1" if sqlite => Some((
                "checkpoints deferred past the run",
                Checkpoints::Deferred,
                true,
            )),
            "lp2" => Some(("scrubber off", Checkpoints::Default, false)),
            "lp3" if sqlite => Some((
                "checkpoints deferred AND scrubber off",
                Checkpoints::Deferred,
                false,
            )),
            "lp4" if sqlite => Some(("checkpoints inside commits", Checkpoints::InCommit, true)),
            _ => None,
        };
        if let Some((label, ckpt, scrub)) = variant {
            let h = lag_run(db, Shape::Simple, part, ckpt, scrub).await;
            row(
                &format!("{be} lagparts {part}: commit -> applied, {label}"),
                quantiles(&h),
                target,
            );
            continue;
        }
        match (part, db) {
            ("lp5", Db::Sqlite(dir)) => {
                let h = lag_two_processes(dir).await;
                row(
                    &format!("{be} lagparts lp5: commit -> applied, backup in another process"),
                    quantiles(&h),
                    target,
                );
            }
            ("local", _) => {
                let h = local_commits(db, Shape::Simple, Checkpoints::Default);
                row(
                    &format!("{be} lagparts local: one local single-row commit (no replication)"),
                    quantiles(&h),
                    "",
                );
            }
            ("local-deferred", Db::Sqlite(_)) => {
                let h = local_commits(db, Shape::Simple, Checkpoints::Deferred);
                row(
                    &format!("{be} lagparts local-deferred: the same, checkpoints deferred"),
                    quantiles(&h),
                    "",
                );
            }
            ("tcp", _) => {
                let h = tokio::task::spawn_blocking(tcp_floor).await.unwrap();
                row(
                    &format!(
                        "lagparts tcp: one-way loopback TCP, thread to thread, {commits} at 1000/s"
                    ),
                    quantiles(&h),
                    "",
                );
            }
            ("hops", _) => {
                let h = hops_floor().await;
                row(
                    "lagparts hops: thread -> task -> TCP -> task -> thread, no store",
                    quantiles(&h),
                    "",
                );
            }
            _ => {}
        }
    }
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// CPU time (ms) per thread name of this process, from `/proc/self/task`.
fn thread_cpu_ms() -> std::collections::BTreeMap<String, u64> {
    process_thread_cpu_ms("self")
}

/// CPU time (ms) per thread name of process `pid` (or `self`).
fn process_thread_cpu_ms(pid: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        // USER_HZ is 100.
        *out.entry(name).or_insert(0) += ticks * 10;
    }
    out
}

/// Prints where the CPU went between two [`thread_cpu_ms`] readings
/// (threads that ended meanwhile are not counted), when
/// `PERSIST_BENCH_THREADS` is set.
fn print_thread_cpu(what: &str, before: &std::collections::BTreeMap<String, u64>, secs: f64) {
    print_cpu_between(what, before, &thread_cpu_ms(), secs);
}

/// Prints the CPU per thread between two readings, when
/// `PERSIST_BENCH_THREADS` is set.
fn print_cpu_between(
    what: &str,
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    secs: f64,
) {
    if std::env::var_os("PERSIST_BENCH_THREADS").is_none() {
        return;
    }
    let mut parts: Vec<(u64, &String)> = after
        .iter()
        .map(|(name, ms)| {
            (
                ms.saturating_sub(before.get(name).copied().unwrap_or(0)),
                name,
            )
        })
        .filter(|(ms, _)| *ms > 0)
        .collect();
    parts.sort_unstable_by(|a, b| b.cmp(a));
    let list: Vec<String> = parts
        .iter()
        .map(|(ms, name)| format!("{name} {:.0} %", *ms as f64 / 10.0 / secs))
        .collect();
    println!(
        "  {what}: CPU per thread over {secs:.2} s: {}",
        list.join(", ")
    );
}

/// Returns the resync rate (rows/s).
fn resync(db: &Db, dir: &Path, shape: Shape) -> f64 {
    let rows = env("PERSIST_BENCH_ROWS", 1_000_000);
    let (sh, be) = (shape.label(), db.label());
    let (mname, bname) = (format!("rs-master-{sh}"), format!("rs-backup-{sh}"));
    let head = {
        let m = open(db, "rs-master", shape);
        seed(&m, shape);
        write_batched(&m, shape, rows, 1000, 0);
        // Trim the log: a fresh backup cannot replay it and needs a snapshot.
        m.trim_log(m.position()).unwrap();
        m.position()
    };
    let shape_args: &[&str] = match shape {
        Shape::Simple => &[],
        Shape::Tags => &["--tags"],
    };
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    // PERSIST_NODE_BIN runs another build's node (e.g. the code before a change).
    let node = std::env::var("PERSIST_NODE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_persist-node").to_owned());
    let mut master = Command::new(&node)
        .arg("master")
        .args(db.node_args(&mname))
        .args(shape_args)
        .args([
            "--secret-file",
            secret.to_str().unwrap(),
            "--cluster",
            "bench",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut mlines = BufReader::new(master.stdout.take().unwrap()).lines();
    let addr = mlines
        .next()
        .unwrap()
        .unwrap()
        .trim_start_matches("LISTENING ")
        .to_string();
    let t = Instant::now();
    let mut backup = Command::new(&node)
        .arg("backup")
        .args(db.node_args(&bname))
        .args(shape_args)
        .args([
            "--secret-file",
            secret.to_str().unwrap(),
            "--cluster",
            "bench",
            "--peer",
            &addr,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let target = format!("POSITION {head}");
    for l in BufReader::new(backup.stdout.take().unwrap()).lines() {
        if l.unwrap() == target {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let (mrss, brss) = (peak_rss_mb(master.id()), peak_rss_mb(backup.id()));
    let none = Default::default();
    for (who, p) in [("master", &master), ("backup", &backup)] {
        let cpu = process_thread_cpu_ms(&p.id().to_string());
        print_cpu_between(
            &format!("{be} {sh} resync, {who} process"),
            &none,
            &cpu,
            secs,
        );
    }
    let _ = master.kill();
    let _ = backup.kill();
    let _ = master.wait();
    let _ = backup.wait();
    let (m, b) = (open(db, "rs-master", shape), open(db, "rs-backup", shape));
    assert_eq!(
        (m.position(), m.digest()),
        (b.position(), b.digest()),
        "resync converged"
    );
    let rate = rows as f64 / secs;
    row(
        &format!("{be} {sh} resync: {rows} rows, fresh backup process (start to done)"),
        format!("{rate:.0} rows/s"),
        match shape {
            Shape::Simple => ">= 1M rows/s",
            Shape::Tags => ">= 0.8x simple",
        },
    );
    row(
        &format!("{be} {sh} resync: peak RSS master / backup process"),
        format!("{mrss:.1} / {brss:.1} MB"),
        "< 100 MB each",
    );
    rate
}

/// The rows of a resync of `shape` (as `write_batched` writes them: 1,000-row
/// transactions), generated in SQL: `(table, columns, SELECT over c(x))`,
/// `x` counting from 0, the long text column named as in the record. The
/// tags shape's tables are filled devices first.
fn generated_rows(shape: Shape, rows: u64) -> Vec<(&'static str, &'static str, String)> {
    match shape {
        Shape::Simple => vec![(
            "item",
            "id, tx, seq, payload",
            format!(
                "SELECT x + 1, x / 1000, x % 1000, \
                 printf('device-%08d-point-%03d-value', x / 1000, x % 1000) AS payload \
                 FROM c WHERE x < {rows}"
            ),
        )],
        Shape::Tags => {
            // Per 1,000-row transaction t: 20 devices, 980 tags (49 each).
            let txs = rows / 1000;
            vec![
                (
                    "device",
                    "id, name, host, port, profile_id, alarm_above",
                    format!(
                        "SELECT x + 1, printf('plc-%08d', x), \
                         printf('10.%d.%d.%d', x / 65536 % 256, x / 256 % 256, x % 256), \
                         502, x % {profiles} + 1, 80.5 FROM c WHERE x < {devices}",
                        profiles = shapes::PROFILES,
                        devices = txs * 20,
                    ),
                ),
                (
                    "tag",
                    "id, device_id, address, scale, description",
                    format!(
                        "SELECT x + 1, (x / 980) * 20 + (x % 980) / 49 + 1, \
                         printf('ns=2;s=Line%d.Cell%d.Register%04d', x / 980, x % 980 % 7, x % 980), \
                         0.1, \
                         printf('Holding register %d of cell %d: motor current in tenths of an \
                         ampere, sampled every 500 ms, alarms above the device threshold; \
                         commissioned on line %d, see the wiring diagram sheet %d for the \
                         terminal layout.', x % 980, x % 980 % 7, x / 980, x % 980 % 97) \
                         AS description FROM c WHERE x < {tags}",
                        tags = txs * 980,
                    ),
                ),
            ]
        }
    }
}

/// SQLite's own bulk load of the rows of a resync of `shape`, into a fresh
/// store of the shape (tables, indexes and pragmas as persist makes them),
/// loaded the way the restore loads them but with no transfer, no decoding
/// and no binding: the rows generated beforehand into an in-memory table,
/// then in one transaction the secondary indexes dropped, `INSERT ...
/// SELECT`, the indexes built, every reference checked once per distinct
/// value, commit; the WAL left to the checkpointer, as the
/// restore leaves it. What the database alone needs for these rows: the
/// baseline of the resync. Returns rows/s and the seconds of each phase
/// (insert, indexes, references).
fn sqlite_bulk_load(dir: &Path, shape: Shape, rows: u64) -> (f64, [f64; 3]) {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Pair {
        #[diesel(sql_type = diesel::sql_types::Text)]
        a: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        b: String,
    }
    let db = Db::Sqlite(dir.to_path_buf());
    remove_store(&db, "floor", shape);
    let s = open(&db, "floor", shape);
    seed(&s, shape);
    drop(s);
    let path = dir.join(format!("{}.db", store_name("floor", shape)));
    let mut c = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    c.batch_execute(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; \
         PRAGMA wal_autocheckpoint = 0; ATTACH ':memory:' AS gen",
    )
    .unwrap();
    let parts = generated_rows(shape, rows);
    for (table, _, select) in &parts {
        c.batch_execute(&format!(
            "CREATE TABLE gen.{table} AS WITH RECURSIVE c(x) AS \
             (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < {rows}) {select}"
        ))
        .unwrap();
    }
    // The SQL above mirrors the bench's own rows (`item`, `shapes`): the
    // last row's long text column, checked against them.
    let (table, column, x, want) = match shape {
        Shape::Simple => ("item", "payload", rows - 1, {
            item((rows - 1) as i64 / 1000, ((rows - 1) % 1000) as i32).payload
        }),
        Shape::Tags => {
            let x = rows / 1000 * 980 - 1;
            (
                "tag",
                "description",
                x,
                shapes::description(x / 980, x % 980),
            )
        }
    };
    let got: Vec<Pair> = diesel::sql_query(format!(
        "SELECT {column} AS a, '' AS b FROM gen.{table} WHERE rowid = {}",
        x + 1
    ))
    .load(&mut c)
    .unwrap();
    assert_eq!(
        got.first().map(|p| p.a.as_str()),
        Some(want.as_str()),
        "the generated {table} rows drifted from the bench's"
    );
    let tables: Vec<String> = parts.iter().map(|(t, ..)| format!("'{t}'")).collect();
    // (name, CREATE INDEX statement) of the secondary indexes.
    let indexes: Vec<Pair> = diesel::sql_query(format!(
        "SELECT name AS a, sql AS b FROM main.sqlite_master WHERE type = 'index' \
         AND sql IS NOT NULL AND tbl_name IN ({})",
        tables.join(", ")
    ))
    .load(&mut c)
    .unwrap();
    let t = Instant::now();
    let mut sql = String::from("BEGIN;");
    for ix in &indexes {
        sql += &format!("DROP INDEX main.\"{}\";", ix.a);
    }
    for (table, columns, _) in &parts {
        sql += &format!("INSERT INTO main.{table} ({columns}) SELECT * FROM gen.{table};");
    }
    c.batch_execute(&sql).unwrap();
    let inserted = t.elapsed().as_secs_f64();
    let sql: String = indexes.iter().map(|ix| format!("{};", ix.b)).collect();
    c.batch_execute(&sql).unwrap();
    let indexed = t.elapsed().as_secs_f64();
    // As the restore checks them: once per distinct value of each
    // referencing column, read from its index where it has one.
    #[derive(diesel::QueryableByName)]
    struct Fk {
        #[diesel(sql_type = diesel::sql_types::Text)]
        child: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        col: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        parent: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        key: String,
    }
    let fks: Vec<Fk> = diesel::sql_query(
        "SELECT m.name AS child, f.\"from\" AS col, f.\"table\" AS parent, f.\"to\" AS key \
         FROM main.sqlite_master AS m, pragma_foreign_key_list(m.name) AS f \
         WHERE m.type = 'table'",
    )
    .load(&mut c)
    .unwrap();
    let mut dangling = Vec::new();
    for fk in &fks {
        dangling.extend(
            diesel::sql_query(format!(
                "SELECT '{child}' AS a, quote(c.v) AS b FROM (SELECT DISTINCT \"{col}\" AS v \
                 FROM main.\"{child}\" WHERE \"{col}\" IS NOT NULL) AS c WHERE NOT EXISTS \
                 (SELECT 1 FROM main.\"{parent}\" AS p WHERE p.\"{key}\" = c.v) LIMIT 1",
                child = fk.child,
                col = fk.col,
                parent = fk.parent,
                key = fk.key,
            ))
            .load::<Pair>(&mut c)
            .unwrap(),
        );
    }
    c.batch_execute("COMMIT").unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(dangling.is_empty(), "generated rows reference missing rows");
    drop(c);
    remove_store(&db, "floor", shape);
    (
        rows as f64 / secs,
        [inserted, indexed - inserted, secs - indexed],
    )
}

async fn catchup(db: &Db, shape: Shape) {
    let txs = env("PERSIST_BENCH_CATCHUP_TXS", 100_000);
    let per_tx: u64 = 10;
    let (sh, be) = (shape.label(), db.label());
    let (m, b) = (open(db, "cu-master", shape), open(db, "cu-backup", shape));
    let (_master, backup, addr) = pair(&m, &b).await;
    m.insert(&item(-1, 0)).unwrap();
    seed(&m, shape);
    wait_for(&b, m.position()).await;
    backup.shutdown().await;
    let mm = m.clone();
    let local = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        write_batched(&mm, shape, txs * per_tx, per_tx, 0);
        (txs * per_tx) as f64 / t.elapsed().as_secs_f64()
    })
    .await
    .unwrap();
    let (t, cpu) = (Instant::now(), thread_cpu_ms());
    let _backup = start_backup(b.clone(), TcpDialer::new(addr, None), cfg("backup")).unwrap();
    wait_for(&b, m.position()).await;
    let secs = t.elapsed().as_secs_f64();
    print_thread_cpu(&format!("{be} {sh} catch-up"), &cpu, secs);
    assert_eq!(b.digest(), m.digest());
    row(
        &format!("{be} {sh} catch-up: the master wrote those transactions (local, while the backup was down)"),
        format!("{local:.0} row changes/s"),
        "baseline",
    );
    let rate = (txs * per_tx) as f64 / secs;
    row(
        &format!("{be} {sh} catch-up: {txs} missed transactions of {per_tx} rows"),
        format!(
            "{rate:.0} row changes/s ({:.0} tx/s, {:.2}x)",
            txs as f64 / secs,
            rate / local
        ),
        ">= 700k changes/s",
    );
}

fn main() {
    if let Ok(spec) = std::env::var("PERSIST_BENCH_LAG_CHILD") {
        return lag_child(&spec);
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let named = |set: &[&str]| args.iter().any(|a| set.contains(&a.as_str()));
    let cases = ["throughput", "lag", "resync", "catchup"];
    // `lagparts` only runs when named; naming it alone runs nothing else.
    let run =
        |case: &str| !(named(&cases) || named(&["lagparts"])) || args.iter().any(|a| a == case);
    let shapes: Vec<Shape> = [Shape::Simple, Shape::Tags]
        .into_iter()
        .filter(|s| !named(&["simple", "tags"]) || args.iter().any(|a| a == s.label()))
        .collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "persist replication benchmark: loopback TCP, SQLite (WAL, synchronous=NORMAL) or PostgreSQL on both nodes; {} cores, {cpu}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut dbs = Vec::new();
    if !named(&["sqlite", "pg"]) || args.iter().any(|a| a == "sqlite") {
        dbs.push(Db::Sqlite(dir.path().to_path_buf()));
    }
    if args.iter().any(|a| a == "pg") {
        let url = std::env::var("PERSIST_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        dbs.push(Db::Pg(url, format!("bench_{}", std::process::id())));
    }
    for db in &dbs {
        db.clean();
        let mut local = Vec::new();
        for &shape in &shapes {
            if run("throughput") {
                local.push((shape, rt.block_on(throughput(db, shape))));
            }
        }
        for &shape in &shapes {
            if run("lag") {
                rt.block_on(lag(db, shape));
            }
        }
        if run("resync") {
            let rates: Vec<(Shape, f64)> = shapes
                .iter()
                .map(|&shape| (shape, resync(db, dir.path(), shape)))
                .collect();
            if let [(Shape::Simple, simple), (Shape::Tags, tags)] = rates[..] {
                row(
                    &format!("{} resync: tags rate / simple rate, same run", db.label()),
                    format!("{:.2}x", tags / simple),
                    ">= 0.8x",
                );
            }
            // Beside what writing each shape costs the store at all: the
            // throughput case's local-only batched inserts of the same run.
            for (shape, rate) in &rates {
                if let Some((_, l)) = local.iter().find(|(s, _)| s == shape) {
                    row(
                        &format!(
                            "{} {} resync / local-only batched inserts of the shape",
                            db.label(),
                            shape.label()
                        ),
                        format!("{:.2}x", rate / l),
                        "",
                    );
                }
            }
            if let [(Shape::Simple, simple), (Shape::Tags, tags)] = local[..] {
                row(
                    &format!(
                        "{} local-only batched inserts: tags rate / simple rate",
                        db.label()
                    ),
                    format!("{:.2}x", tags / simple),
                    "what the shape costs the store",
                );
            }
            // Beside what SQLite itself needs to load the same rows, in
            // this run: the database's share of the resync's cost.
            if let Db::Sqlite(dir) = db {
                let rows = env("PERSIST_BENCH_ROWS", 1_000_000);
                let floors: Vec<(Shape, f64)> = rates
                    .iter()
                    .map(|&(shape, rate)| {
                        let (floor, [insert, index, check]) = sqlite_bulk_load(dir, shape, rows);
                        row(
                            &format!(
                                "sqlite {} bulk load by SQLite alone (INSERT ... SELECT)",
                                shape.label()
                            ),
                            format!("{floor:.0} rows/s"),
                            "baseline: the database alone",
                        );
                        row(
                            &format!(
                                "sqlite {} bulk load by SQLite alone, its phases",
                                shape.label()
                            ),
                            format!("{insert:.2} + {index:.2} + {check:.2} s"),
                            "insert + indexes + references",
                        );
                        row(
                            &format!("sqlite {} resync / SQLite's own bulk load", shape.label()),
                            format!("{:.2}x", rate / floor),
                            "",
                        );
                        (shape, floor)
                    })
                    .collect();
                if let [(Shape::Simple, simple), (Shape::Tags, tags)] = floors[..] {
                    row(
                        "sqlite bulk load, SQLite alone: tags rate / simple rate",
                        format!("{:.2}x", tags / simple),
                        "what the shape costs SQLite itself",
                    );
                }
            }
        }
        for &shape in &shapes {
            if run("catchup") {
                rt.block_on(catchup(db, shape));
            }
        }
        if args.iter().any(|a| a == "lagparts") {
            rt.block_on(lag_parts(db));
        }
        db.clean();
    }
}
