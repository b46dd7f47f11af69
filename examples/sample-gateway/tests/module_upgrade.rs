//! Modules across the pair, between real gateway processes: a module whose
//! records differ is refused by name on both nodes while the backup stays
//! ready to take over; a rolling upgrade (backup first, a switchover, then
//! the old master) keeps the pair replicating with nothing lost.

mod gateways;

use std::path::Path;
use std::time::{Duration, Instant};

use gateways::*;

const WAIT: Duration = Duration::from_secs(30);

fn text(port: u16, key: &str) -> String {
    state(port).map_or(String::new(), |s| s[key].to_string())
}

/// Rows on the master before it starts (the alarm module's records).
fn seed(dir: &Path, rows: usize) {
    seed_master_tags(dir, 1, rows, |_, i| format!("40{i:05}"));
}

fn in_sync(sa: u16, sb: u16) -> bool {
    match (state(sa), state(sb)) {
        (Some(a), Some(b)) => {
            a["digest"] == b["digest"]
                && a["position"] == b["position"]
                && a["peer_connected"] == true
        }
        _ => false,
    }
}

#[test]
fn a_module_whose_records_differ_is_refused_by_name_and_the_backup_still_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, sb) = gateway_pair(dir.path());
    seed(dir.path(), 100);
    let mut a = start(dir.path(), "gw-a");
    let _b = start_drill(dir.path(), "gw-b", "0.2.0");
    let expected = "module `counters`: 0.1.0 on gw-a, 0.2.0 on gw-b, and its records differ";
    until("both nodes name the module and both versions", WAIT, || {
        text(sa, "last_error").contains(expected) && text(sb, "last_error").contains(expected)
    });
    // No data crosses, and the backup stays standby next to the live master
    // (a master that answers is alive): well past the failover timeout.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(4 * GW_FAILOVER_MS) {
        assert_eq!(
            activity(sb).as_deref(),
            Some("Cold"),
            "{}",
            text(sb, "last_error")
        );
        assert_eq!(activity(sa).as_deref(), Some("Active"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(text(sb, "position"), text(sa, "position"));
    let page = get(sb, "/", Duration::from_secs(5)).unwrap();
    assert!(
        page.contains("module `counters`"),
        "the backup's status page shows it"
    );
    let log = std::fs::read_to_string(dir.path().join("gw-a.log")).unwrap();
    assert!(log.contains(expected), "the master logs it: {log}");
    // The master dies: the refused backup takes over with its own data.
    a.kill();
    until("the backup takes over", WAIT, || {
        activity(sb).as_deref() == Some("Active")
    });
}

#[test]
fn a_rolling_upgrade_backup_first_then_a_switchover_then_the_old_master() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, sb) = gateway_pair(dir.path());
    seed(dir.path(), 2_000);
    let mut a = start(dir.path(), "gw-a");
    let mut b = start(dir.path(), "gw-b");
    until("the pair in sync on 0.1.0", WAIT, || in_sync(sa, sb));
    let digest = text(sa, "digest");

    // 1. The backup first: stopped in order, started on release 0.1.1.
    b.signal("TERM");
    assert!(b.child.wait().unwrap().success());
    let b = start_drill(dir.path(), "gw-b", "0.1.1");
    let skew = "module `counters`: 0.1.1 here, 0.1.0 on gw-a: same records, replication continues";
    until(
        "the pair replicates across versions, and says so",
        WAIT,
        || in_sync(sa, sb) && switchover_ready(sa) && text(sb, "module_warnings").contains(skew),
    );
    assert!(
        text(sa, "module_warnings").contains("0.1.0 here, 0.1.1 on gw-b"),
        "{}",
        text(sa, "module_warnings")
    );
    assert!(text(sb, "peer_modules").contains("counters 0.1.0"));

    // 2. A planned switchover to the upgraded backup.
    let (code, body) = post(sa, "/actions/failover");
    assert_eq!(code, 200, "{body}");
    until("the upgraded backup is active", WAIT, || {
        activity(sb).as_deref() == Some("Active") && activity(sa).as_deref() == Some("Cold")
    });

    // 3. The old master: stopped in order, started on 0.1.1.
    a.signal("TERM");
    assert!(a.child.wait().unwrap().success());
    until("the backup stays active alone", WAIT, || {
        activity(sb).as_deref() == Some("Active")
    });
    let _a = start_drill(dir.path(), "gw-a", "0.1.1");
    until("both on 0.1.1, in sync, no warning", WAIT, || {
        in_sync(sa, sb)
            && text(sa, "module_warnings") == "[]"
            && text(sb, "module_warnings") == "[]"
    });
    // Exactly one node active, nothing lost.
    until("one active node", WAIT, || {
        let (x, y) = (activity(sa), activity(sb));
        (x.as_deref() == Some("Active")) != (y.as_deref() == Some("Active"))
    });
    assert_eq!(
        text(sa, "digest"),
        digest,
        "the master's data is what it was"
    );
    assert_eq!(text(sb, "digest"), digest);
    // Handing back to the master works across the finished upgrade.
    if activity(sb).as_deref() == Some("Active") {
        let (code, body) = post(sb, "/actions/handback");
        assert_eq!(code, 200, "{body}");
    }
    until("the master active again", WAIT, || {
        activity(sa).as_deref() == Some("Active") && activity(sb).as_deref() == Some("Cold")
    });
    drop(b);
}
