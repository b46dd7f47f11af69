//! The gateway host as an operator meets it: two modules on a pair of
//! gateway processes, an ordered shutdown on SIGTERM, the audit log of
//! operator actions, a resync asked of a master without a backup, and
//! config mistakes refused before anything is created.

mod gateways;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gateways::*;

/// Waits for a process to exit; its status, or None after `limit`.
fn exit_within(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(s) = p.child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn log(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default()
}

#[test]
fn two_modules_run_on_both_nodes_and_sigterm_stops_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, sa, sb) = running_gateway_pair(dir.path());
    for port in [sa, sb] {
        let s = state(port).unwrap();
        let modules: Vec<&str> = s["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(modules, ["alarms 0.1.0", "counters 0.1.0"], "{s}");
    }
    // SIGTERM on the backup: it stops in order and exits 0.
    b.signal("TERM");
    let status = exit_within(&mut b, Duration::from_secs(15)).expect("gw-b exits after SIGTERM");
    assert!(
        status.success(),
        "gw-b exited with {status}: {}",
        log(dir.path(), "gw-b")
    );
    let text = log(dir.path(), "gw-b");
    assert!(text.contains("SIGTERM: shutting down"), "{text}");
    assert!(text.contains("gw-b: stopped"), "{text}");
    // SIGINT on the master: the same.
    a.signal("INT");
    let status = exit_within(&mut a, Duration::from_secs(15)).expect("gw-a exits after SIGINT");
    assert!(
        status.success(),
        "gw-a exited with {status}: {}",
        log(dir.path(), "gw-a")
    );
    assert!(log(dir.path(), "gw-a").contains("SIGINT: shutting down"));
}

#[test]
fn operator_actions_are_audited_and_a_resync_without_a_backup_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, _) = gateway_pair(dir.path());
    let _a = start(dir.path(), "gw-a");
    until("gw-a active", Duration::from_secs(30), || {
        activity(sa).as_deref() == Some("Active")
    });
    // No backup connected: the master says so instead of starting nothing.
    let (code, body) = post(sa, "/actions/resync");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("no backup is connected"), "{body}");
    // Without the token: refused, and audited as such.
    let r = agent(Duration::from_secs(5))
        .post(&format!("http://127.0.0.1:{sa}/actions/failover"))
        .header("Authorization", "Bearer not the operator token at all")
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let audit: serde_json::Value =
        serde_json::from_str(&get(sa, "/audit", Duration::from_secs(5)).unwrap()).unwrap();
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    assert_eq!(entries[0]["action"], "POST /actions/resync");
    assert_eq!(entries[0]["ok"], false);
    assert!(entries[0]["who"].as_str().unwrap().starts_with("token:"));
    assert!(
        !audit.to_string().contains(TOKEN),
        "the token itself is never logged"
    );
    assert_eq!(entries[1]["who"], "a wrong token");
    assert_eq!(entries[1]["action"], "POST /actions/failover");
    // The status page shows them; the file keeps them across a restart.
    let page = get(sa, "/", Duration::from_secs(5)).unwrap();
    assert!(
        page.contains("Operator actions") && page.contains("a wrong token"),
        "{page}"
    );
    let file = std::fs::read_to_string(dir.path().join("gw-a.audit.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 2, "{file}");
}

fn refused(dir: &Path, config: &str) -> String {
    std::fs::write(dir.join("bad.toml"), config).unwrap();
    let out = Command::new(GATEWAY)
        .arg(dir.join("bad.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a bad config exits 1");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_mistakes_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    gateway_pair(dir.path());
    let good = std::fs::read_to_string(dir.path().join("gw-a.toml")).unwrap();
    // An operator token too short to be safe: refused at start, with the
    // key, and no database file or audit log left behind.
    write_private(&dir.path().join("short.token"), "short\n");
    let err = refused(dir.path(), &good.replace("operator.token", "short.token"));
    assert!(
        err.contains("[status] operator_token_file") && err.contains("at least 16"),
        "{err}"
    );
    write_private(&dir.path().join("empty.token"), "");
    let err = refused(dir.path(), &good.replace("operator.token", "empty.token"));
    assert!(err.contains("0 characters"), "{err}");
    let err = refused(
        dir.path(),
        &good.replace("heartbeat_ms = 60", "heartbeat_ms = 0"),
    );
    assert!(
        err.contains("line") && err.contains("[redundancy] heartbeat_ms"),
        "{err}"
    );
    assert!(
        !dir.path().join("gw-a.db").exists(),
        "no database was created"
    );
    assert!(!dir.path().join("gw-a.audit.jsonl").exists());
}

#[test]
fn a_secret_file_with_a_trailing_newline_on_one_node_only_is_the_same_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, sb) = gateway_pair(dir.path());
    // `echo secret > pair.secret` on gw-a, an editor without a final
    // newline on gw-b.
    write_private(
        &dir.path().join("pair.secret"),
        "a secret shared by both gateways\n",
    );
    write_private(
        &dir.path().join("pair-b.secret"),
        "a secret shared by both gateways",
    );
    let b_config = std::fs::read_to_string(dir.path().join("gw-b.toml")).unwrap();
    std::fs::write(
        dir.path().join("gw-b.toml"),
        b_config.replace("pair.secret", "pair-b.secret"),
    )
    .unwrap();
    let _a = start(dir.path(), "gw-a");
    let _b = start(dir.path(), "gw-b");
    until("the pair forms", Duration::from_secs(30), || {
        state(sa).is_some_and(|s| s["peer_connected"] == true)
            && state(sb).is_some_and(|s| s["peer_connected"] == true)
    });
}

#[test]
fn logs_are_json_lines_when_the_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, _) = gateway_pair(dir.path());
    let config = std::fs::read_to_string(dir.path().join("gw-a.toml")).unwrap();
    std::fs::write(
        dir.path().join("gw-a.toml"),
        format!("{config}\n[log]\nformat = \"json\"\nlevel = \"info\"\n"),
    )
    .unwrap();
    let mut a = start(dir.path(), "gw-a");
    until("gw-a active", Duration::from_secs(30), || {
        activity(sa).as_deref() == Some("Active")
    });
    a.signal("TERM");
    exit_within(&mut a, Duration::from_secs(15)).expect("gw-a exits after SIGTERM");
    let text = log(dir.path(), "gw-a");
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "module registered" && e["module"] == "alarms"),
        "{text}"
    );
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
    // Stdout keeps its plain activity lines for people and scripts.
    assert!(
        text.contains("gw-a: Active (epoch 1, active node gw-a)"),
        "{text}"
    );
}
