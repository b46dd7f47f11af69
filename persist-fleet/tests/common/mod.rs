//! Test tools: a `nats-server` of the test's own (a free port, a temp
//! store dir, killed on drop), a fleet key file, a central store, and
//! `fleet-edge` processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use persist_core::Store;
use persist_fleet::sample::{FleetLimit, FleetTag};
use persist_fleet::FleetConfig;

/// The server binary: `NATS_SERVER`, else `nats-server` on the PATH, else Debian's place.
fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    let p = PathBuf::from("/usr/sbin/nats-server");
    assert!(
        p.exists(),
        "nats-server not found: install Debian's nats-server package or set NATS_SERVER"
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A nats-server with JetStream, for one test.
pub struct NatsServer {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start(dir: &Path) -> NatsServer {
        let mut s = NatsServer {
            port: free_port(),
            dir: dir.join("nats"),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new(server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port and store dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
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
}

impl EdgeProcess {
    pub fn spawn(nats: &NatsServer, key: &Path, dir: &Path, name: &str) -> EdgeProcess {
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
        let mut e = EdgeProcess {
            name: name.to_owned(),
            db,
            child: Some(child),
            lines: rx,
            position: 0,
            digest: String::new(),
        };
        e.wait_line(|l| l == "started", Duration::from_secs(20));
        e
    }

    fn wait_line(&mut self, want: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("applied ") {
                        let mut it = rest.split(' ');
                        self.position = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                        self.digest = it.next().unwrap_or("").to_owned();
                    }
                    if want(&line) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
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

    /// Asks the edge to stop (closes its stdin) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
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

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
