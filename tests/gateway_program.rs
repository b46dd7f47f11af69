//! The `gateway` program: a pair of real processes from TOML config files,
//! driven and observed through the operator surface; bad config files.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
const TOKEN: &str = "operator token for the test pair";

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_pair(dir: &Path) -> (u16, u16, u16) {
    std::fs::write(dir.join("pair.secret"), "a secret shared by both gateways").unwrap();
    std::fs::write(dir.join("operator.token"), TOKEN).unwrap();
    let (link, status_a, status_b) = (free_port(), free_port(), free_port());
    for (id, role, status, extra) in [
        (
            "gw-a",
            "master",
            status_a,
            format!("listen = \"127.0.0.1:{link}\""),
        ),
        (
            "gw-b",
            "backup",
            status_b,
            format!("peer = \"127.0.0.1:{link}\""),
        ),
    ] {
        std::fs::write(
            dir.join(format!("{id}.toml")),
            format!(
                r#"[node]
id = "{id}"
role = "{role}"
cluster = "test-plant"

[link]
{extra}
secret_file = "pair.secret"

[redundancy]
failover_timeout_ms = 600
heartbeat_ms = 60
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
    (link, status_a, status_b)
}

fn start(dir: &Path, id: &str) -> Proc {
    Proc(
        Command::new(GATEWAY)
            .arg(dir.join(format!("{id}.toml")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

fn state(port: u16) -> Option<serde_json::Value> {
    let mut r = agent()
        .get(&format!("http://127.0.0.1:{port}/state"))
        .call()
        .ok()?;
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}

fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn activity(port: u16) -> Option<String> {
    state(port).and_then(|s| s["activity"].as_str().map(str::to_owned))
}

#[test]
fn a_pair_of_gateway_processes_fails_over_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, sb) = write_pair(dir.path());
    let mut a = start(dir.path(), "gw-a");
    let _b = start(dir.path(), "gw-b");
    until("master active", || {
        activity(sa).as_deref() == Some("Active")
    });
    until("backup cold", || activity(sb).as_deref() == Some("Cold"));
    let page = agent()
        .get(&format!("http://127.0.0.1:{sa}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("gw-a") && page.contains("Master · Active"));
    let metrics = agent()
        .get(&format!("http://127.0.0.1:{sb}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("persist_activity_level{node=\"gw-b\"} 1"),
        "{metrics}"
    );
    // SIGKILL the master process: the backup takes over.
    let _ = a.0.kill();
    let _ = a.0.wait();
    until("backup active", || {
        activity(sb).as_deref() == Some("Active")
    });
    // The master comes back: automatic recovery.
    let _a = start(dir.path(), "gw-a");
    until("master active again", || {
        activity(sa).as_deref() == Some("Active") && activity(sb).as_deref() == Some("Cold")
    });
    // A planned switchover through the operator surface needs the token.
    let r = agent()
        .post(&format!("http://127.0.0.1:{sa}/actions/failover"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = agent()
        .post(&format!("http://127.0.0.1:{sa}/actions/failover"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    until("backup active after the switchover", || {
        activity(sb).as_deref() == Some("Active")
    });
}

fn run_with(config: &str, dir: &Path) -> String {
    std::fs::write(dir.join("bad.toml"), config).unwrap();
    let out = Command::new(GATEWAY)
        .arg(dir.join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad config must not start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_files_are_refused_with_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path());
    let good = std::fs::read_to_string(dir.path().join("gw-a.toml")).unwrap();
    let typo = good.replace("failover_timeout_ms", "failover_timout_ms");
    let err = run_with(&typo, dir.path());
    assert!(
        err.contains("failover_timout_ms") && err.contains("line"),
        "{err}"
    );
    let no_secret = good.replace("secret_file = \"pair.secret\"\n", "");
    let err = run_with(&no_secret, dir.path());
    assert!(
        err.contains("secret_file"),
        "a missing secret is refused, not defaulted: {err}"
    );
    let short = good.replace("pair.secret", "short.secret");
    std::fs::write(dir.path().join("short.secret"), "tooshort").unwrap();
    let err = run_with(&short, dir.path());
    assert!(err.contains("secret") && err.contains("16"), "{err}");
    let wrong_type = good.replace("heartbeat_ms = 60", "heartbeat_ms = \"fast\"");
    let err = run_with(&wrong_type, dir.path());
    assert!(
        err.contains("heartbeat_ms") || err.contains("line 14"),
        "{err}"
    );
}
