//! Failover between real processes: SIGKILL and SIGSTOP the master, restart it
//! under automatic and manual recovery.

mod nodes;

use std::time::{Duration, Instant};

use nodes::{Node, Pair};

const TIMEOUT_MS: u64 = 1000;
const HEARTBEAT_MS: u64 = 100;

fn timing() -> Vec<String> {
    vec![
        "--failover-timeout-ms".into(),
        TIMEOUT_MS.to_string(),
        "--heartbeat-ms".into(),
        HEARTBEAT_MS.to_string(),
        "--startup-allowance-ms".into(),
        "1500".into(),
    ]
}

fn master(pair: &Pair, listen: Option<&str>) -> (Node, String) {
    let mut args = timing();
    if let Some(addr) = listen {
        args.extend(["--listen".to_string(), addr.to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.master(&refs)
}

fn backup(pair: &Pair, addr: &str, extra: &[&str]) -> Node {
    let mut args = timing();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.backup_with(addr, &refs)
}

/// Waits for `ACTIVITY <level>`; returns the rest of the line.
fn activity(node: &Node, level: &str) -> String {
    node.expect(&format!("ACTIVITY {level} "))
}

fn running_pair(pair: &Pair) -> (Node, Node, String) {
    let (m, addr) = master(pair, None);
    let b = backup(pair, &addr, &[]);
    activity(&m, "Active");
    activity(&b, "Cold");
    (m, b, addr)
}

#[test]
fn sigkill_master_backup_active_within_timeout_plus_one_heartbeat() {
    let pair = Pair::new();
    let (mut m, b, _) = running_pair(&pair);
    let killed = Instant::now();
    m.kill();
    activity(&b, "Active");
    let took = killed.elapsed();
    println!("SIGKILL -> backup Active in {took:?} (timeout {TIMEOUT_MS} ms, heartbeat {HEARTBEAT_MS} ms)");
    // The backup waits for the whole timeout of silence, counted from the last
    // frame it heard (at most one heartbeat before the kill) ...
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS - HEARTBEAT_MS),
        "premature failover: {took:?}"
    );
    // ... and acts at once then; the margin covers process scheduling only.
    assert!(
        took <= Duration::from_millis(TIMEOUT_MS + HEARTBEAT_MS + 400),
        "late failover: {took:?}"
    );
}

fn epoch(line: &str) -> u64 {
    line.split_whitespace()
        .skip_while(|w| *w != "EPOCH")
        .nth(1)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigstop_master_then_continue_steps_down_and_recovers() {
    let pair = Pair::new();
    let (m, b, _) = running_pair(&pair);
    let stopped = Instant::now();
    m.signal("STOP");
    let takeover = epoch(&activity(&b, "Active"));
    println!(
        "SIGSTOP -> backup Active in {:?} (epoch {takeover})",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    m.signal("CONT");
    // The frozen master wakes up to a higher claim and never re-asserts its
    // old one: every activity line it prints from now on carries an epoch at
    // or above the takeover, and it is active again only at a later epoch,
    // the one of the automatic handback.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = m
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("master active again");
        if !line.starts_with("ACTIVITY") {
            continue;
        }
        let e = epoch(&line);
        assert!(
            e >= takeover,
            "the continued master fought with its old claim: {line}"
        );
        if line.starts_with("ACTIVITY Active") {
            assert!(e > takeover, "{line}");
            break;
        }
    }
    activity(&b, "Cold");
}

#[test]
fn restarted_master_recovers_automatically_or_waits_in_manual_mode() {
    for manual in [false, true] {
        let pair = Pair::new();
        let (mut m, addr) = master(&pair, None);
        let mut b = backup(
            &pair,
            &addr,
            if manual {
                &["--recovery", "manual"]
            } else {
                &[]
            },
        );
        activity(&m, "Active");
        activity(&b, "Cold");
        m.kill();
        activity(&b, "Active");
        let (m2, _) = master(&pair, Some(&addr));
        if manual {
            activity(&m2, "Cold");
            std::thread::sleep(Duration::from_millis(3 * TIMEOUT_MS));
            assert!(
                m2.lines
                    .try_iter()
                    .all(|l| !l.starts_with("ACTIVITY Active")),
                "manual recovery: the master must wait for the operator"
            );
            b.command("HANDBACK");
            // The reply and the backup's own step down print from two
            // threads: in either order.
            b.expect_all(&["COMMAND HANDBACK ok", "ACTIVITY Cold "]);
        } else {
            activity(&b, "Cold");
        }
        activity(&m2, "Active");
    }
}
