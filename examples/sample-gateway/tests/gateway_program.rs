//! The `gateway` program: a pair of real processes from TOML config files,
//! driven and observed through the operator surface; bad config files.

mod gateways;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gateways::*;

const HTTP: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_pair_of_gateway_processes_fails_over_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, sb) = gateway_pair(dir.path());
    let mut a = start(dir.path(), "gw-a");
    let _b = start(dir.path(), "gw-b");
    until("master active", WAIT, || {
        activity(sa).as_deref() == Some("Active")
    });
    until("backup cold", WAIT, || {
        activity(sb).as_deref() == Some("Cold")
    });
    let page = agent(HTTP)
        .get(&format!("http://127.0.0.1:{sa}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("gw-a") && page.contains("Master · Active"));
    let metrics = agent(HTTP)
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
    a.kill();
    until("backup active", WAIT, || {
        activity(sb).as_deref() == Some("Active")
    });
    // The master comes back: automatic recovery.
    let _a = start(dir.path(), "gw-a");
    until("master active again", WAIT, || {
        activity(sa).as_deref() == Some("Active") && activity(sb).as_deref() == Some("Cold")
    });
    until("the backup caught up", WAIT, || switchover_ready(sa));
    // A planned switchover through the operator surface needs the token.
    let r = agent(HTTP)
        .post(&format!("http://127.0.0.1:{sa}/actions/failover"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = agent(HTTP)
        .post(&format!("http://127.0.0.1:{sa}/actions/failover"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    until("backup active after the switchover", WAIT, || {
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
    gateway_pair(dir.path());
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
