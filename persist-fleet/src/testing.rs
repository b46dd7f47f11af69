//! Test tools (feature `testing`): a `nats-server` of the test's own, on a
//! free loopback port with a store directory the test gives, killed on
//! drop, so no test touches a shared server. They panic on failure: they
//! are for tests only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: `NATS_SERVER`, else `nats-server` on the PATH, else
/// Debian's place.
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

/// A free loopback port (free when asked).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A nats-server with JetStream, for one test.
pub struct NatsServer {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its HTTP monitoring port on 127.0.0.1 (`/varz`, `/connz`).
    pub monitor_port: u16,
    /// Its JetStream store directory.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server storing under `dir/nats`, and waits until it listens.
    pub fn start(dir: &Path) -> NatsServer {
        let port = free_port();
        let monitor_port = std::iter::repeat_with(free_port)
            .find(|&p| p != port)
            .expect("a second free port");
        let mut s = NatsServer {
            port,
            monitor_port,
            dir: dir.join("nats"),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("the server's store dir");
        let child = Command::new(server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
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

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Client connections the server accepted since it started (`/varz`'s
    /// `total_connections`).
    pub fn total_connections(&self) -> u64 {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.monitor_port))
            .expect("nats-server's monitoring port");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).expect("/varz");
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let varz: serde_json::Value = serde_json::from_str(body).expect("/varz is JSON");
        varz["total_connections"]
            .as_u64()
            .expect("/varz has total_connections")
    }

    /// Its process id while it runs (to measure its CPU, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills it (SIGKILL).
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
