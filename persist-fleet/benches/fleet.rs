//! Fleet benchmark: one central publisher and 20 edge processes on this
//! machine, against the pair's own TCP link in the same run.
//!
//! `cargo bench -p persist-fleet --bench fleet`
//!
//! It starts a `nats-server` of its own (a free port, a temp store dir;
//! `NATS_SERVER` names the binary, as in the tests) and `fleet-edge`
//! processes (the release build of this package's binary). Sizes:
//! `FLEET_BENCH_EDGES` (default 20), `FLEET_BENCH_LAG_COMMITS` (default
//! 1,000, at `FLEET_BENCH_RATE` commits/s, default 100), `FLEET_BENCH_BURST`
//! (default 2,000 entries), `FLEET_BENCH_CATCHUP` (default 50,000 entries).
//! A full run takes about a minute on two cores. It prints figures; it never asserts
//! a timing (only that every edge and the backup end with the central data).
//!
//! Every central commit is one small configuration transaction (one shared
//! tag saved), so a commit is one fleet entry and one pair-link entry.
//!
//! Cases:
//! - **lag**: central commit to applied, at 100 commits/s: on *all* edges
//!   (the last edge to apply each commit) and per edge (every edge and
//!   commit). The edges are processes; each prints `applied <position>
//!   <digest> <µs since the Unix epoch>` (`fleet-edge --timestamps`) as soon
//!   as it sees the position committed, and the commit is stamped on the same
//!   wall clock right after `Store::write` returns. Same machine, same clock:
//!   the times compare across processes to a few µs, and the stamp costs
//!   the edge one `clock_gettime`. An edge that applies several entries in
//!   one transaction stamps them all at its commit.
//! - **burst**: the central node commits N entries as fast as it can while
//!   the edges run: its publish rate and the rate at which all edges have
//!   them (the end-to-end fan-out throughput).
//! - **apply**: the edges are paused (SIGSTOP) while N entries are
//!   published, then resumed together: each edge's apply rate from the
//!   stream, and the total over all edges (they share the two cores).
//! - **catch-up**: every edge stopped, N entries published, one edge
//!   process started: entries/s from process start to the last entry
//!   applied (a replay of the stream, not a snapshot: `snapshot_every` is
//!   set past the run), and its longest pause without progress: a pull
//!   consumer that stalls shows there as a pause of about 30 s (twice the
//!   client's 15 s idle heartbeat, after which the edge recreates its
//!   consumer and goes on; it logs `missed idle heartbeat`).
//! - **pair**: the same commits replicated master -> backup by persist-sync
//!   over loopback TCP in this process (start_master / start_backup, as in
//!   `examples/sample-gateway/benches/replication.rs`): commit to applied on
//!   the backup (its commit hook) at the same rate, a burst of the same
//!   commits, and a catch-up of the same size with the backup stopped. The
//!   fleet's figures are printed with their ratio to the pair's.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use hdrhistogram::Histogram;
use persist_core::listen::CommitEvent;
use persist_core::Store;
use persist_fleet::{Publisher, PublisherStatus};
use persist_sync::auth::{AuthConfig, Secret};
use persist_sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist_sync::worker::{start_backup, start_master, BackupHandle, MasterHandle, SyncConfig};

const WAIT: Duration = Duration::from_secs(300);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One central configuration transaction: one shared tag saved. `i` past
/// the tags written so far inserts, below updates.
fn commit(store: &Store, i: u64) {
    store.write(|tx| tx.save(&tag(i, 100)).map(|_| ())).unwrap();
}

/// Commits `n` transactions (`from..from + n`) at `rate` per second
/// (sleeping, never spinning: on two cores a spinning load generator would
/// steal the CPU the path measured needs); returns each commit's time in
/// µs since the Unix epoch, taken right after the write returned.
fn paced(store: &Store, from: u64, n: u64, rate: u64) -> Vec<u64> {
    let mut at = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_micros(1_000_000 * i / rate);
        if let Some(left) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        commit(store, from + i);
        at.push(now_us());
    }
    at
}

fn row(case: &str, figure: String) {
    println!("{case:<62} {figure}");
}

fn ratio(case: &str, fleet: f64, pair: f64, what: &str) {
    row(
        case,
        format!("{:.2}x {what}", fleet / pair.max(f64::MIN_POSITIVE)),
    );
}

struct Quantiles {
    p50: f64,
    p99: f64,
    max: f64,
}

fn quantiles(h: &Histogram<u64>) -> Quantiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Quantiles {
        p50: ms(h.value_at_quantile(0.5)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
    }
}

fn show(q: &Quantiles) -> String {
    format!("p50 {:.2}  p99 {:.2}  max {:.2} ms", q.p50, q.p99, q.max)
}

/// The time (µs since the epoch) `edge` applied `position`: its first
/// `applied` line at or past it.
fn applied_at(edge: &EdgeProcess, position: u64) -> Option<u64> {
    let i = edge.stamps.partition_point(|&(p, _)| p < position);
    edge.stamps.get(i).map(|&(_, t)| t)
}

struct Fleet {
    rt: tokio::runtime::Runtime,
    nats: NatsServer,
    key: std::path::PathBuf,
    dir: tempfile::TempDir,
    cfg: persist_fleet::FleetConfig,
    central: Store,
    publisher: Option<Publisher>,
    names: Vec<String>,
    edges: Vec<EdgeProcess>,
    next: u64,
}

impl Fleet {
    fn start(edges: usize) -> Fleet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsServer::start(dir.path());
        let key = key_file(dir.path(), 1);
        let mut cfg = config(&nats, &key);
        // No snapshot in the run: catch-up replays the stream.
        cfg.snapshot_every = 100_000_000;
        cfg.request_timeout_ms = 10_000;
        let central = open_store(&dir.path().join("central.db"));
        let publisher = rt
            .block_on(Publisher::start(central.clone(), cfg.clone()))
            .unwrap();
        let names: Vec<String> = (0..edges).map(|i| format!("site-{i:02}")).collect();
        let edges = spawn_edges(&nats, &key, dir.path(), &names, &["--timestamps"]);
        let mut f = Fleet {
            rt,
            nats,
            key,
            dir,
            cfg,
            central,
            publisher: Some(publisher),
            names,
            edges,
            next: 0,
        };
        // A first entry everywhere: consumers created, stores warm.
        let at = f.commit_fast(10);
        f.wait_all(at);
        f
    }

    fn publisher(&self) -> &Publisher {
        self.publisher.as_ref().unwrap()
    }

    /// Commits `n` entries as fast as the central store takes them, waits
    /// until they are published; returns the last fleet position.
    fn commit_fast(&mut self, n: u64) -> u64 {
        for i in 0..n {
            commit(&self.central, self.next + i);
        }
        self.next += n;
        self.wait_published()
    }

    fn wait_published(&self) -> u64 {
        let p = self.publisher();
        assert!(
            self.rt
                .block_on(p.wait_published(self.central.position(), WAIT)),
            "{:?}",
            p.status()
        );
        p.status().position
    }

    fn wait_all(&mut self, position: u64) {
        for e in &mut self.edges {
            assert!(
                e.wait_position(position, WAIT),
                "{} stuck at {}",
                e.name,
                e.position
            );
        }
    }

    fn forget_stamps(&mut self) {
        for e in &mut self.edges {
            e.drain();
            e.stamps.clear();
        }
    }

    fn check(&mut self) -> PublisherStatus {
        let st = self.publisher().status();
        self.wait_all(st.position);
        for e in &self.edges {
            assert_eq!(
                e.digest,
                persist_fleet::wire::digest_hex(st.digest),
                "{}",
                e.name
            );
        }
        st
    }
}

/// CPU seconds used so far: the edges (user, system), the nats-server,
/// and this process (central store, publisher, and the pair).
#[derive(Clone, Copy, Default)]
struct Cpu {
    edges_user: f64,
    edges_sys: f64,
    nats: f64,
    bench: f64,
}

impl Cpu {
    fn now(f: &Fleet) -> Cpu {
        let mut c = Cpu::default();
        for e in &f.edges {
            if let Some(pid) = e.pid() {
                let (u, s) = cpu_secs(pid);
                c.edges_user += u;
                c.edges_sys += s;
            }
        }
        c.nats = f.nats.pid().map_or(0.0, |p| {
            let (u, s) = cpu_secs(p);
            u + s
        });
        let (u, s) = cpu_secs(std::process::id());
        c.bench = u + s;
        c
    }

    /// What was used since `before`, per entry applied on each edge.
    fn show(self, before: Cpu, entries: u64, edges: usize) -> String {
        let per = |secs: f64| secs * 1e6 / (entries as f64 * edges as f64);
        let (eu, es) = (
            self.edges_user - before.edges_user,
            self.edges_sys - before.edges_sys,
        );
        format!(
            "edges {:.1} s ({:.0} µs user + {:.0} µs system per entry per edge), nats-server {:.1} s, \
             central+publisher {:.1} s",
            eu + es,
            per(eu),
            per(es),
            self.nats - before.nats,
            self.bench - before.bench
        )
    }
}

struct Lag {
    all: Quantiles,
    each: Quantiles,
}

fn fleet_lag(f: &mut Fleet, n: u64, rate: u64) -> Lag {
    f.forget_stamps();
    let base = f.publisher().status().position;
    let central = f.central.clone();
    let from = f.next;
    let committed = std::thread::spawn(move || paced(&central, from, n, rate))
        .join()
        .unwrap();
    f.next += n;
    let last = f.wait_published();
    assert_eq!(last, base + n, "one fleet entry per commit");
    f.wait_all(last);
    let mut all = Histogram::<u64>::new(3).unwrap();
    let mut each = Histogram::<u64>::new(3).unwrap();
    for (i, c) in committed.iter().enumerate() {
        let position = base + i as u64 + 1;
        let mut slowest = 0;
        for e in &f.edges {
            let t = applied_at(e, position).expect("every entry applied");
            let us = t.saturating_sub(*c);
            each.record(us).unwrap();
            slowest = slowest.max(us);
        }
        all.record(slowest).unwrap();
    }
    Lag {
        all: quantiles(&all),
        each: quantiles(&each),
    }
}

struct Burst {
    central: f64,
    published: f64,
    all: f64,
}

/// N entries committed as fast as possible while the edges run: entries/s
/// committed, published, and applied on every edge.
fn fleet_burst(f: &mut Fleet, n: u64) -> Burst {
    f.forget_stamps();
    let t0 = Instant::now();
    let start = now_us();
    let central = f.central.clone();
    let from = f.next;
    std::thread::spawn(move || {
        for i in 0..n {
            commit(&central, from + i);
        }
    })
    .join()
    .unwrap();
    let committed = t0.elapsed().as_secs_f64();
    f.next += n;
    let last = f.wait_published();
    let published = t0.elapsed().as_secs_f64();
    f.wait_all(last);
    let done = f
        .edges
        .iter()
        .map(|e| applied_at(e, last).unwrap())
        .max()
        .unwrap();
    Burst {
        central: n as f64 / committed,
        published: n as f64 / published,
        all: n as f64 / ((done - start) as f64 / 1e6),
    }
}

struct Apply {
    slowest: f64,
    median: f64,
    fastest: f64,
    total: f64,
}

/// The edges paused while N entries are published, then resumed together.
fn fleet_apply(f: &mut Fleet, n: u64) -> Apply {
    f.forget_stamps();
    for e in &f.edges {
        e.signal("STOP");
    }
    let last = f.commit_fast(n);
    let start = now_us();
    for e in &f.edges {
        e.signal("CONT");
    }
    f.wait_all(last);
    let mut secs: Vec<f64> = f
        .edges
        .iter()
        .map(|e| (applied_at(e, last).unwrap().saturating_sub(start)) as f64 / 1e6)
        .collect();
    secs.sort_by(f64::total_cmp);
    let rate = |s: f64| n as f64 / s;
    Apply {
        slowest: rate(secs[secs.len() - 1]),
        median: rate(secs[secs.len() / 2]),
        fastest: rate(secs[0]),
        total: (n * f.edges.len() as u64) as f64 / secs[secs.len() - 1],
    }
}

struct Catchup {
    /// Entries/s published while no edge ran.
    published: f64,
    /// Entries/s from the process start to the last entry applied.
    from_start: f64,
    /// Entries/s from its `started` line (store open, NATS connected).
    from_started: f64,
    bootstraps: u64,
    /// The longest time without an applied position, and the position it followed.
    pause_ms: f64,
    pause_after: u64,
    /// Entries/s from its `started` line, that pause left out.
    without_pause: f64,
}

/// Every edge stopped, N entries published, one edge started.
fn fleet_catchup(f: &mut Fleet, n: u64) -> Catchup {
    stop_all(&mut f.edges);
    let t0 = Instant::now();
    let last = f.commit_fast(n);
    let published = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut e = EdgeProcess::launch(
        &f.nats,
        &f.key,
        f.dir.path(),
        &f.names[0],
        &["--timestamps"],
    );
    e.wait_started();
    let started = Instant::now();
    let started_us = now_us();
    assert!(e.wait_position(last, WAIT), "{} at {}", e.name, e.position);
    let (from_start, from_started) = (t0.elapsed().as_secs_f64(), started.elapsed().as_secs_f64());
    assert_eq!(
        e.digest,
        persist_fleet::wire::digest_hex(f.publisher().status().digest)
    );
    // Its reported status: the catch-up replayed the stream.
    std::thread::sleep(Duration::from_millis(700));
    let bootstraps =
        f.rt.block_on(persist_fleet::fleet_status(&f.cfg))
            .unwrap()
            .into_iter()
            .find(|v| v.status.edge == f.names[0])
            .map_or(u64::MAX, |v| v.status.bootstraps);
    e.stop();
    // The longest time without progress (from the `started` line on).
    let mut pause = (0, 0);
    let mut prev = (e.stamps.first().map_or(0, |s| s.0), started_us);
    for &(p, t) in &e.stamps {
        if t.saturating_sub(prev.1) > pause.0 {
            pause = (t.saturating_sub(prev.1), prev.0);
        }
        prev = (p, t);
    }
    Catchup {
        published,
        from_start: n as f64 / from_start,
        from_started: n as f64 / from_started,
        bootstraps,
        pause_ms: pause.0 as f64 / 1000.0,
        pause_after: pause.1,
        without_pause: n as f64 / (from_started - pause.0 as f64 / 1e6),
    }
}

// ---- the pair on loopback TCP -------------------------------------------

const SECRET: &[u8] = b"a long shared secret for the pair";

fn sync_cfg(node: &str) -> SyncConfig {
    let mut c = SyncConfig::new(
        AuthConfig::new("bench", node, Secret::new(SECRET.to_vec()).unwrap()).unwrap(),
    );
    c.reconnect_initial = Duration::from_millis(10);
    c.reconnect_max = Duration::from_millis(100);
    c
}

struct Pair {
    master: Store,
    backup: Store,
    _master_handle: MasterHandle,
    backup_handle: Option<BackupHandle>,
    addr: String,
    next: u64,
}

async fn start_pair(dir: &std::path::Path) -> Pair {
    let master = open_store(&dir.join("pair-master.db"));
    let backup = open_store(&dir.join("pair-backup.db"));
    let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
    let addr = acceptor.local_socket_addr().to_string();
    let m = start_master(master.clone(), acceptor, sync_cfg("master")).unwrap();
    let b = start_backup(
        backup.clone(),
        TcpDialer::new(addr.clone(), None),
        sync_cfg("backup"),
    )
    .unwrap();
    let mut p = Pair {
        master,
        backup,
        _master_handle: m,
        backup_handle: Some(b),
        addr,
        next: 0,
    };
    for i in 0..10 {
        commit(&p.master, i);
    }
    p.next = 10;
    wait_for(&p.backup, p.master.position()).await;
    p
}

async fn wait_for(b: &Store, position: u64) {
    let deadline = Instant::now() + WAIT;
    while b.position() < position {
        assert!(
            Instant::now() < deadline,
            "backup stuck at {}",
            b.position()
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Commit on the master to applied on the backup (its commit hook, in the
/// committing thread), at the same rate.
async fn pair_lag(p: &mut Pair, n: u64, rate: u64) -> Quantiles {
    let base = p.master.position();
    let stamps: Arc<Mutex<Vec<Option<u64>>>> = Arc::new(Mutex::new(vec![None; n as usize]));
    let sink = stamps.clone();
    let hook = p.backup.add_commit_hook(move |event| {
        if let CommitEvent::Commit(c) = event {
            let now = now_us();
            let i = c.position.wrapping_sub(base + 1) as usize;
            if let Some(slot) = sink.lock().unwrap().get_mut(i) {
                *slot = Some(now);
            }
        }
    });
    let (m, from) = (p.master.clone(), p.next);
    let committed = tokio::task::spawn_blocking(move || paced(&m, from, n, rate))
        .await
        .unwrap();
    p.next += n;
    assert_eq!(p.master.position(), base + n, "one log entry per commit");
    wait_for(&p.backup, p.master.position()).await;
    p.backup.remove_commit_hook(hook);
    let applied = stamps.lock().unwrap().clone();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for (c, a) in committed.iter().zip(&applied) {
        let a = a.expect("every commit applied");
        h.record(a.saturating_sub(*c)).unwrap();
    }
    quantiles(&h)
}

impl Pair {
    /// Commits the next `n` transactions on the master, as fast as it takes them.
    async fn commit_burst(&mut self, n: u64) {
        let (m, from) = (self.master.clone(), self.next);
        tokio::task::spawn_blocking(move || {
            for i in 0..n {
                commit(&m, from + i);
            }
        })
        .await
        .unwrap();
        self.next += n;
    }
}

/// The same burst: entries/s committed on the master and applied on the backup.
async fn pair_burst(p: &mut Pair, n: u64) -> f64 {
    let t0 = Instant::now();
    p.commit_burst(n).await;
    wait_for(&p.backup, p.master.position()).await;
    n as f64 / t0.elapsed().as_secs_f64()
}

/// The backup stopped while N entries are committed, then started.
async fn pair_catchup(p: &mut Pair, n: u64) -> f64 {
    if let Some(b) = p.backup_handle.take() {
        b.shutdown().await;
    }
    p.commit_burst(n).await;
    let t0 = Instant::now();
    p.backup_handle = Some(
        start_backup(
            p.backup.clone(),
            TcpDialer::new(p.addr.clone(), None),
            sync_cfg("backup"),
        )
        .unwrap(),
    );
    wait_for(&p.backup, p.master.position()).await;
    n as f64 / t0.elapsed().as_secs_f64()
}

fn nats_version() -> String {
    let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() {
    let edges = env("FLEET_BENCH_EDGES", 20) as usize;
    let lag_n = env("FLEET_BENCH_LAG_COMMITS", 1_000);
    let rate = env("FLEET_BENCH_RATE", 100);
    let burst_n = env("FLEET_BENCH_BURST", 2_000);
    let catchup_n = env("FLEET_BENCH_CATCHUP", 50_000);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "persist fleet benchmark: 1 publisher + {edges} fleet-edge processes, {}, SQLite everywhere; \
         against the pair link (persist-sync, loopback TCP); {} cores, {cpu}; load average at start {}",
        nats_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let run = Instant::now();

    let mut f = Fleet::start(edges);
    let pair_dir = tempfile::tempdir().unwrap();
    let mut pair = f.rt.block_on(start_pair(pair_dir.path()));

    let c0 = Cpu::now(&f);
    let lag = fleet_lag(&mut f, lag_n, rate);
    let c1 = Cpu::now(&f);
    let plag = f.rt.block_on(pair_lag(&mut pair, lag_n, rate));
    let c2 = Cpu::now(&f);
    let burst = fleet_burst(&mut f, burst_n);
    let c3 = Cpu::now(&f);
    let pburst = f.rt.block_on(pair_burst(&mut pair, burst_n));
    let c4 = Cpu::now(&f);
    let apply = fleet_apply(&mut f, burst_n);
    let c5 = Cpu::now(&f);
    let st = f.check();
    let catchup = fleet_catchup(&mut f, catchup_n);
    let pcatchup = f.rt.block_on(pair_catchup(&mut pair, catchup_n));
    assert_eq!(
        pair.backup.digest(),
        pair.master.digest(),
        "the pair agrees"
    );
    if let Some(p) = f.publisher.take() {
        f.rt.block_on(p.stop());
    }

    println!();
    let lag_case = format!("commit -> applied, {lag_n} commits at {rate}/s");
    row(
        &format!("fleet lag: {lag_case}, on all {edges} edges"),
        show(&lag.all),
    );
    row(&format!("fleet lag: {lag_case}, per edge"), show(&lag.each));
    row(&format!("pair  lag: {lag_case}, backup"), show(&plag));
    row("  CPU, fleet lag", c1.show(c0, lag_n, edges));
    ratio("  ratio all-edges / pair, p50", lag.all.p50, plag.p50, "");
    ratio("  ratio all-edges / pair, p99", lag.all.p99, plag.p99, "");
    ratio("  ratio per-edge / pair, p50", lag.each.p50, plag.p50, "");
    row(
        &format!("fleet burst: {burst_n} entries committed on the central node"),
        format!("{:.0} entries/s", burst.central),
    );
    row(
        "fleet burst: published (acknowledged by JetStream)",
        format!("{:.0} entries/s", burst.published),
    );
    row(
        &format!("fleet burst: applied on all {edges} edges"),
        format!(
            "{:.0} entries/s ({:.0} applications/s in total)",
            burst.all,
            burst.all * edges as f64
        ),
    );
    row(
        &format!("pair  burst: {burst_n} entries committed and applied on the backup"),
        format!("{pburst:.0} entries/s"),
    );
    row("  CPU, fleet burst", c3.show(c2, burst_n, edges));
    ratio("  ratio fleet (all edges) / pair", burst.all, pburst, "");
    row(
        &format!("fleet apply: {burst_n} entries, {edges} edges resumed together, per edge"),
        format!(
            "slowest {:.0}  median {:.0}  fastest {:.0} entries/s",
            apply.slowest, apply.median, apply.fastest
        ),
    );
    row(
        "fleet apply: total over the edges",
        format!("{:.0} entries/s", apply.total),
    );
    row("  CPU, fleet apply", c5.show(c4, burst_n, edges));
    row(
        &format!("fleet catch-up: {catchup_n} entries published, no edge running"),
        format!("{:.0} entries/s", catchup.published),
    );
    row(
        &format!("fleet catch-up: one edge, {catchup_n} entries, from process start"),
        format!(
            "{:.0} entries/s (snapshots loaded: {})",
            catchup.from_start, catchup.bootstraps
        ),
    );
    row(
        "fleet catch-up: the same, from its `started` line",
        format!("{:.0} entries/s", catchup.from_started),
    );
    row(
        "fleet catch-up: its longest pause without progress",
        format!(
            "{:.0} ms after position {} ({:.0} entries/s without it)",
            catchup.pause_ms, catchup.pause_after, catchup.without_pause
        ),
    );
    row(
        &format!("pair  catch-up: backup restarted, {catchup_n} entries"),
        format!("{pcatchup:.0} entries/s"),
    );
    ratio(
        "  ratio fleet catch-up (from start) / pair catch-up",
        catchup.from_start,
        pcatchup,
        "",
    );
    ratio(
        "  ratio fleet apply median edge / pair catch-up",
        apply.median,
        pcatchup,
        "",
    );
    ratio(
        "  ratio fleet apply total / pair catch-up",
        apply.total,
        pcatchup,
        "",
    );
    println!(
        "(fleet at position {}; run took {:.0} s; load average at end {})",
        st.position,
        run.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
