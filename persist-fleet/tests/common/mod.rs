//! Test tools: a `nats-server` of the test's own (a free port, a temp
//! store dir, killed on drop), a fleet key file, a central store, and
//! `fleet-edge` processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use persist_core::Store;
use persist_fleet::sample::{FleetLimit, FleetTag};
use persist_fleet::{Edge, FleetConfig, Publisher};

pub use persist_fleet::testing::NatsServer;

/// A two-worker runtime, as the machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a fleet key file.
pub fn key_file(dir: &Path, byte: u8) -> PathBuf {
    let p = dir.join(format!("fleet-{byte}.key"));
    std::fs::write(&p, "".to_owned() + &format!("{byte:02x}").repeat(32)).unwrap();
    p
}

pub fn config(nats: &NatsServer, key: &Path) -> FleetConfig {
    let mut c = FleetConfig::new(nats.url(), "test", key)
        .share::<FleetTag>()
        .share::<FleetLimit>();
    c.request_timeout_ms = 3_000;
    c
}

/// What most fleet tests start with: a nats-server of their own, a
/// central store and its publisher (bind the fields in this order: they
/// drop in reverse).
pub struct Central {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub key: PathBuf,
    pub cfg: FleetConfig,
    pub rt: tokio::runtime::Runtime,
    pub central: Store,
    pub publisher: Publisher,
}

/// Starts a [`Central`] with the fleet key of `key_byte`; `tune` adjusts
/// the configuration before the publisher starts.
pub fn start_central(key_byte: u8, tune: impl FnOnce(&mut FleetConfig)) -> Central {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let key = key_file(dir.path(), key_byte);
    let mut cfg = config(&nats, &key);
    tune(&mut cfg);
    let rt = runtime();
    let central = open_store(&dir.path().join("central.db"));
    let publisher = rt
        .block_on(Publisher::start(central.clone(), cfg.clone()))
        .unwrap();
    Central {
        dir,
        nats,
        key,
        cfg,
        rt,
        central,
        publisher,
    }
}

/// An in-process edge named `name`, consuming into a store of its own at `path`.
pub fn start_edge(
    rt: &tokio::runtime::Runtime,
    cfg: &FleetConfig,
    path: &Path,
    name: &str,
) -> (Store, Edge) {
    let store = open_store(path);
    let edge = rt
        .block_on(Edge::start(store.clone(), cfg.clone().with_edge(name)))
        .unwrap();
    (store, edge)
}

pub fn open_store(path: &Path) -> Store {
    let store = Store::open_sqlite(path).unwrap();
    persist_fleet::sample::register(&store).unwrap();
    store
}

pub fn tag(i: u64, scan: i64) -> FleetTag {
    FleetTag {
        name: format!("tag-{i:06}"),
        address: format!("plc-1/db{}/{}", i % 7, i),
        scan_ms: scan,
    }
}

/// The shared rows of a store, sorted.
pub fn tags(store: &Store) -> Vec<FleetTag> {
    store.list::<FleetTag>().unwrap()
}

/// A `fleet-edge` process.
pub struct EdgeProcess {
    pub name: String,
    pub db: PathBuf,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub position: u64,
    pub digest: String,
    /// With `--timestamps`: each `applied` line's position and wall-clock
    /// time (µs since the Unix epoch), in order.
    pub stamps: Vec<(u64, u64)>,
}

impl EdgeProcess {
    /// Starts a `fleet-edge` and waits until it says it started.
    pub fn spawn(nats: &NatsServer, key: &Path, dir: &Path, name: &str) -> EdgeProcess {
        let mut e = EdgeProcess::launch(nats, key, dir, name, &[]);
        e.wait_started();
        e
    }

    /// Starts a `fleet-edge` (with `extra` arguments) without waiting for it.
    pub fn launch(
        nats: &NatsServer,
        key: &Path,
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> EdgeProcess {
        let db = dir.join(format!("{name}.db"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-edge"))
            .args([
                "--url",
                &nats.url(),
                "--cluster",
                "test",
                "--edge",
                name,
                "--key-file",
            ])
            .arg(key)
            .arg("--db")
            .arg(&db)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fleet-edge");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        EdgeProcess {
            name: name.to_owned(),
            db,
            child: Some(child),
            lines: rx,
            position: 0,
            digest: String::new(),
            stamps: Vec::new(),
        }
    }

    /// Waits for the `started` line (panics after 60 s).
    pub fn wait_started(&mut self) {
        assert!(
            self.wait_line(|l| l == "started", Duration::from_secs(60)),
            "{} did not start",
            self.name
        );
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill -{sig} {pid}");
        }
    }

    fn handle(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("applied ") {
            let mut it = rest.split(' ');
            self.position = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            self.digest = it.next().unwrap_or("").to_owned();
            if let Some(us) = it.next().and_then(|t| t.parse().ok()) {
                self.stamps.push((self.position, us));
            }
        }
    }

    fn wait_line(&mut self, want: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.handle(&line);
                    if want(&line) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Reads the lines already printed, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.handle(&line);
        }
    }

    /// Waits until the edge applied `position` or later.
    pub fn wait_position(&mut self, position: u64, timeout: Duration) -> bool {
        if self.position >= position {
            return true;
        }
        let deadline = Instant::now() + timeout;
        while self.position < position {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_line(|l| l.starts_with("applied "), left) {
                return self.position >= position;
            }
        }
        true
    }

    /// Asks the edge to stop (closes its stdin) without waiting.
    pub fn request_stop(&mut self) {
        if let Some(c) = &mut self.child {
            drop(c.stdin.take());
        }
    }

    /// Asks the edge to stop (closes its stdin) and waits for it.
    pub fn stop(&mut self) {
        self.request_stop();
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU time (user, system) a process has used so far, in seconds (Linux).
pub fn cpu_secs(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 (1-based), in clock ticks of 1/100 s.
    let tick = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    (tick(11), tick(12))
}

/// Starts `fleet-edge` processes together, then waits until each started.
pub fn spawn_edges(
    nats: &NatsServer,
    key: &Path,
    dir: &Path,
    names: &[String],
    extra: &[&str],
) -> Vec<EdgeProcess> {
    let mut edges: Vec<EdgeProcess> = names
        .iter()
        .map(|n| EdgeProcess::launch(nats, key, dir, n, extra))
        .collect();
    for e in &mut edges {
        e.wait_started();
    }
    edges
}

/// Stops every edge: all are asked first, then each is waited for (an edge
/// takes up to half a second to notice, so one by one would add up).
pub fn stop_all(edges: &mut [EdgeProcess]) {
    for e in edges.iter_mut() {
        e.request_stop();
    }
    for e in edges.iter_mut() {
        e.stop();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
