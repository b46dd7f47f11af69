//! `gateway` processes for the process-level tests: TOML files for a pair,
//! start, signal and kill them, and read their operator surface.

#![allow(dead_code)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
pub const TOKEN: &str = "operator token for the test pair";

/// A running gateway; what it writes goes to `<dir>/<id>.log` (appended
/// across restarts), printed when a test fails while the process is held.
pub struct Proc {
    pub child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "--- {} (last {} lines) ---\n{}",
                self.log.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

fn log_file(dir: &Path, id: &str) -> (std::fs::File, PathBuf) {
    let path = dir.join(format!("{id}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    (file, path)
}

/// A free port for a gateway, below the kernel's ephemeral range: client
/// sockets (some tests open them by the hundred) take ephemeral ports, and
/// one could take a port picked for a gateway before the gateway binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = 4000;
    let base = low.saturating_sub(span + 1000).max(1024);
    let offset = (std::process::id() % u32::from(span)) as u16;
    loop {
        let port = base + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Timers of the gateway pairs below.
pub const GW_FAILOVER_MS: u64 = 600;
pub const GW_HEARTBEAT_MS: u64 = 60;

/// Writes `<id>.toml` in `dir`; `link` holds the `[link]` lines besides the secret.
/// Writes a file only its owner may read (as secrets should be).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn gateway_config(dir: &Path, id: &str, role: &str, link: &str, status: u16) {
    write_private(&dir.join("pair.secret"), "a secret shared by both gateways");
    write_private(&dir.join("operator.token"), TOKEN);
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!(
            r#"[node]
id = "{id}"
role = "{role}"
cluster = "test-plant"

[link]
{link}
secret_file = "pair.secret"

[redundancy]
failover_timeout_ms = {GW_FAILOVER_MS}
heartbeat_ms = {GW_HEARTBEAT_MS}
startup_allowance_ms = 1500

[database]
sqlite = "{id}.db"

[status]
listen = "127.0.0.1:{status}"
operator_token_file = "operator.token"
"#
        ),
    )
    .unwrap();
}

/// A master gw-a and a backup gw-b; returns (link port, status a, status b).
pub fn gateway_pair(dir: &Path) -> (u16, u16, u16) {
    let (link, sa, sb) = (free_port(), free_port(), free_port());
    gateway_config(
        dir,
        "gw-a",
        "master",
        &format!("listen = \"127.0.0.1:{link}\""),
        sa,
    );
    gateway_config(
        dir,
        "gw-b",
        "backup",
        &format!("peer = \"127.0.0.1:{link}\""),
        sb,
    );
    (link, sa, sb)
}

/// Runs `cmd` as gateway `<id>`, its output appended to `<dir>/<id>.log`.
fn spawn(dir: &Path, id: &str, mut cmd: Command) -> Proc {
    let (file, log) = log_file(dir, id);
    let child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc { child, log }
}

fn config_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.toml"))
}

pub fn start(dir: &Path, id: &str) -> Proc {
    let mut cmd = Command::new(GATEWAY);
    cmd.arg(config_of(dir, id));
    spawn(dir, id, cmd)
}

pub const DRILL: &str = env!("CARGO_BIN_EXE_drill-gateway");

/// Starts `<id>` as `drill-gateway` with the counter module at `release`.
pub fn start_drill(dir: &Path, id: &str, release: &str) -> Proc {
    let mut cmd = Command::new(DRILL);
    cmd.arg(config_of(dir, id)).arg(release);
    spawn(dir, id, cmd)
}

/// Starts `<id>` with at most `nofile` open file descriptors (soft and hard
/// limit, set by the shell that then becomes the gateway: the pid is the
/// gateway's).
pub fn start_with_fd_limit(dir: &Path, id: &str, nofile: u32) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
        .arg(GATEWAY)
        .arg(config_of(dir, id));
    spawn(dir, id, cmd)
}

/// Fills gw-a's database before it starts, as the sample module's records:
/// a profile, a device, and `chunks` transactions of `per_chunk` tags whose
/// address `address(chunk, i)` gives.
pub fn seed_master_tags(
    dir: &Path,
    chunks: usize,
    per_chunk: usize,
    address: impl Fn(usize, usize) -> String,
) {
    use alarm_module as module;
    let m = persist::Store::open_sqlite(dir.join("gw-a.db")).unwrap();
    m.register::<module::Tag>().unwrap();
    let p = m
        .insert(&module::NotificationProfile {
            id: 0,
            name: "operators".into(),
            enabled: true,
        })
        .unwrap();
    let d = m
        .insert(&module::Device {
            id: 0,
            name: "pump-1".into(),
            host: "10.0.0.1".into(),
            port: 502,
            protocol: module::Protocol::ModbusTcp,
            profile_id: p,
            alarm_above: 80.0,
        })
        .unwrap();
    for chunk in 0..chunks {
        let tags: Vec<module::Tag> = (0..per_chunk)
            .map(|i| module::Tag {
                id: 0,
                device_id: d,
                address: address(chunk, i),
                scale: 1.0,
            })
            .collect();
        m.write(|tx| tx.insert_many(&tags)).unwrap();
    }
}

/// Starts `<id>` and hands its stdout lines over a channel (and to the log).
pub fn start_with_lines(dir: &Path, id: &str) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let (mut file, log) = log_file(dir, id);
    let mut child = Command::new(GATEWAY)
        .arg(dir.join(format!("{id}.toml")))
        .stdout(Stdio::piped())
        .stderr(file.try_clone().unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            // Keep draining after the receiver is gone: a full pipe would
            // block the gateway's stdout.
            let _ = tx.send(line);
        }
    });
    (Proc { child, log }, rx)
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

pub fn get(port: u16, path: &str, timeout: Duration) -> Option<String> {
    let mut r = agent(timeout)
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    r.body_mut().read_to_string().ok()
}

pub fn state_within(port: u16, timeout: Duration) -> Option<serde_json::Value> {
    serde_json::from_str(&get(port, "/state", timeout)?).ok()
}

pub fn state(port: u16) -> Option<serde_json::Value> {
    state_within(port, Duration::from_secs(2))
}

pub fn activity(port: u16) -> Option<String> {
    state(port).and_then(|s| s["activity"].as_str().map(str::to_owned))
}

/// Whether the master at `port` would accept a planned switchover: its
/// backup is connected and has acknowledged everything it holds (it refuses
/// with 409 otherwise, as it should, and a test that asks right after a
/// recovery can meet that window).
pub fn switchover_ready(port: u16) -> bool {
    state(port).is_some_and(|s| s["peer_connected"] == true && s["peer_acked"] == s["position"])
}

pub fn post(port: u16, path: &str) -> (u16, String) {
    let mut r = agent(Duration::from_secs(5))
        .post(&format!("http://127.0.0.1:{port}{path}"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub fn until(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn running_gateway_pair(dir: &Path) -> (Proc, Proc, u16, u16) {
    let (_, sa, sb) = gateway_pair(dir);
    let a = start(dir, "gw-a");
    let b = start(dir, "gw-b");
    until("gw-a active", Duration::from_secs(30), || {
        activity(sa).as_deref() == Some("Active")
    });
    until("gw-b cold", Duration::from_secs(30), || {
        activity(sb).as_deref() == Some("Cold")
    });
    (a, b, sa, sb)
}
