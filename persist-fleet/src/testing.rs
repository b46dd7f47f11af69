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
    /// Its JetStream store directory.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server storing under `dir/nats`, and waits until it listens.
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
        std::fs::create_dir_all(&self.dir).expect("the server's store dir");
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

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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
