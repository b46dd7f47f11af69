//! Regression tests with real processes (the `gateway` program and
//! `persist-node`), for defects an operator found by trying the pair. Each
//! test fails on the code that has the defect and passes once it is fixed as
//! its doc comment says. Every wait has a deadline.

mod gateways;
mod nodes;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateways::*;
use nodes::{Node, Pair};

// ---------------------------------------------------------------------------
// 1. The master frozen during a full resync.

/// Many rows on the master (the sample module's tags); the operator forces a
/// full resync; the master is SIGSTOPped while the backup restores. The
/// backup's `/state` and `/metrics` keep answering, and it reports Active
/// within failover timeout + one heartbeat (+ a margin). Until the freeze,
/// the catch-up and the resync move no epoch (item 15).
#[test]
fn backup_answers_and_takes_over_when_the_master_freezes_during_a_full_resync() {
    let dir = tempfile::tempdir().unwrap();
    seed_master_tags(dir.path(), 20, 10_000, |chunk, i| {
        format!("40{chunk:02}{i:05} holding register of pump-1")
    });
    let (a, _b, sa, sb) = running_gateway_pair(dir.path());
    let position = |port| state(port).and_then(|s| s["position"].as_u64());
    until("the backup caught up", Duration::from_secs(60), || {
        position(sb).is_some() && position(sb) == position(sa)
    });
    // The master refuses a resync while no backup is connected (409): ask
    // until it serves the backup.
    until(
        "the master starts a resync of its backup",
        Duration::from_secs(20),
        || post(sa, "/actions/resync").0 == 200,
    );
    until(
        "the backup is restoring a snapshot",
        Duration::from_secs(20),
        || state(sb).is_some_and(|s| !s["snapshot_progress"].is_null()),
    );
    // Catching up and resyncing 200,000 rows is no reason to fail over: the
    // epoch is still the master's first (item 15: heartbeats waited behind
    // megabytes of entries, the link flapped and the backup took over).
    for (who, port) in [("master", sa), ("backup", sb)] {
        let s = state(port).unwrap();
        assert_eq!(
            s["epoch"], 1,
            "before the master was frozen, the {who} is at epoch {}: the pair failed over \
             under the load of the catch-up or the resync: {s}",
            s["epoch"]
        );
    }
    a.signal("STOP");
    let stopped = Instant::now();
    let progress = state(sb).map(|s| s["snapshot_progress"].clone());
    let limit = Duration::from_millis(GW_FAILOVER_MS + GW_HEARTBEAT_MS + 1000);
    loop {
        let asked = Instant::now();
        let s = state_within(sb, Duration::from_secs(1));
        let metrics = get(sb, "/metrics", Duration::from_secs(1));
        let Some(s) = s.filter(|_| metrics.is_some()) else {
            panic!(
                "{:?} after the master was frozen mid-resync (snapshot progress then {progress:?}), \
                 the backup's /state or /metrics did not answer within 1 s (asked {:?} ago)",
                stopped.elapsed(),
                asked.elapsed()
            );
        };
        if s["activity"] == "Active" {
            println!(
                "backup Active {:?} after SIGSTOP mid-resync",
                stopped.elapsed()
            );
            break;
        }
        assert!(
            stopped.elapsed() < limit,
            "backup still {} {:?} after the master was frozen mid-resync (limit {limit:?}): {s}",
            s["activity"],
            stopped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// 3. Two masters with mutual TLS.

/// A CA and one certificate for 127.0.0.1/localhost usable as server and
/// client, as PEM files in `dir`: ca.pem, node.pem, node.key.
fn pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "pair CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "gateway");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
}

/// Both nodes configured as master with mutual TLS, each probing the other's
/// link address: they find each other, and both refuse config writes, shown
/// in `/state` `last_error`.
#[test]
fn two_masters_with_mutual_tls_find_each_other() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let (la, lb, sa, sb) = (free_port(), free_port(), free_port(), free_port());
    let tls = "tls_cert = \"node.pem\"\ntls_key = \"node.key\"\ntls_ca = \"ca.pem\"";
    gateway_config(
        dir.path(),
        "gw-a",
        "master",
        &format!("listen = \"127.0.0.1:{la}\"\npeer = \"127.0.0.1:{lb}\"\n{tls}"),
        sa,
    );
    gateway_config(
        dir.path(),
        "gw-b",
        "master",
        &format!("listen = \"127.0.0.1:{lb}\"\npeer = \"127.0.0.1:{la}\"\n{tls}"),
        sb,
    );
    let _a = start(dir.path(), "gw-a");
    let _b = start(dir.path(), "gw-b");
    until("both gateways answer", Duration::from_secs(30), || {
        state(sa).is_some() && state(sb).is_some()
    });
    let started = Instant::now();
    let error = |port| state(port).and_then(|s| s["last_error"].as_str().map(str::to_owned));
    loop {
        let (ea, eb) = (error(sa), error(sb));
        let found = |e: &Option<String>, other: &str| {
            e.as_deref()
                .is_some_and(|e| e.contains("also configured as master") && e.contains(other))
        };
        if found(&ea, "gw-b") && found(&eb, "gw-a") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "two masters over mutual TLS did not find each other in {:?} (the probe runs every \
             5 s): gw-a {} last_error {ea:?}, gw-b {} last_error {eb:?}",
            started.elapsed(),
            activity(sa).unwrap_or_default(),
            activity(sb).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// 8. An operator failover while the backup is down.

/// `POST /actions/failover` on the master while the backup is down is
/// refused with 409 and the reason, and the master stays Active.
#[test]
fn operator_failover_is_refused_while_the_backup_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, mut b, sa, _sb) = running_gateway_pair(dir.path());
    b.kill();
    until(
        "the master sees the backup gone",
        Duration::from_secs(10),
        || state(sa).is_some_and(|s| s["peer_connected"] == false),
    );
    let (code, body) = post(sa, "/actions/failover");
    std::thread::sleep(Duration::from_millis(500));
    let after = activity(sa);
    assert_eq!(
        code, 409,
        "a failover with the backup down answered {code} {body}; the master is now {after:?}"
    );
    assert_eq!(after.as_deref(), Some("Active"), "{body}");
}

// ---------------------------------------------------------------------------
// 9. `heartbeat_ms = 0`, and panics in tasks.

/// Waits for a process to exit, at most `limit`; kills it otherwise.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `heartbeat_ms = 0` in the gateway's TOML is refused at startup naming
/// the key, with a non-zero exit status.
#[test]
fn gateway_refuses_a_zero_heartbeat_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    gateway_pair(dir.path());
    let config = dir.path().join("gw-a.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("heartbeat_ms = {GW_HEARTBEAT_MS}"),
        "heartbeat_ms = 0",
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(GATEWAY)
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let status = status.expect("the gateway with heartbeat_ms = 0 still runs after 10 s");
    assert!(
        !status.success(),
        "the gateway with heartbeat_ms = 0 exited with {status}; stderr: {err}"
    );
    assert!(
        err.contains("heartbeat_ms"),
        "the refusal does not name the key: {err}"
    );
}

/// A node given a zero heartbeat is refused at startup with a non-zero
/// status (before the fix its driver panicked inside a task and the process
/// went on without it); and a panic in any task ends the process with a
/// non-zero status instead of leaving it running without that task.
#[test]
fn a_node_whose_driver_cannot_run_exits_non_zero() {
    let pair = Pair::new();
    let db = pair.path("master.db").display().to_string();
    let secret = pair.secret();
    for (extra, expect_code) in [
        (["--heartbeat-ms", "0"], None),
        (["--panic-in-task-after-ms", "200"], Some(101)),
    ] {
        let mut args = vec!["master", "--db", &db, "--secret-file", &secret];
        args.extend(extra);
        let mut node = Node::spawn(&args);
        let status = exit_within(&mut node.child, Duration::from_secs(10));
        let lines: Vec<String> = node.lines.try_iter().collect();
        let Some(s) = status else {
            panic!("persist-node {extra:?} still runs after 10 s; it printed {lines:?}");
        };
        assert!(
            s.code().is_some_and(|c| c != 0) && expect_code.is_none_or(|c| s.code() == Some(c)),
            "persist-node {extra:?} ended with {s}; printed {lines:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// A restarted master (6: a gateway pair; 7: a persist-node pair).

const TIMEOUT_MS: u64 = 1000;
const HEARTBEAT_MS: u64 = 100;

fn timing(allowance_ms: u64) -> Vec<String> {
    [
        "--failover-timeout-ms",
        &TIMEOUT_MS.to_string(),
        "--heartbeat-ms",
        &HEARTBEAT_MS.to_string(),
        "--startup-allowance-ms",
        &allowance_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_master(pair: &Pair, listen: Option<&str>, allowance_ms: u64) -> (Node, String) {
    let mut args = timing(allowance_ms);
    if let Some(addr) = listen {
        args.extend(["--listen".to_string(), addr.to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.master(&refs)
}

// 6. A restarted master's stale claim.

/// Starts a gateway whose stdout lines ("gw-a: Active (epoch 3, active node
/// gw-a)", one per activity or epoch the module is told) come on a channel.
/// "gw-a: Active (epoch 3, active node gw-a)" -> ("Active", 3).
fn gateway_activity(line: &str) -> Option<(String, u64)> {
    let (_, rest) = line.split_once(": ")?;
    let (level, rest) = rest.split_once(" (epoch ")?;
    let epoch = rest.split(',').next()?.parse().ok()?;
    Some((level.to_owned(), epoch))
}

/// A gateway master restarted after a failover (manual recovery on the
/// backup) never goes Active at an epoch below the backup's takeover: not
/// even for the moment between the link coming up and the backup's claim
/// arriving, and the module is never told so. Up to 7 restarts; every line
/// the gateway prints counts.
#[test]
fn restarted_master_never_reports_active_on_its_stale_claim() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sa, sb) = gateway_pair(dir.path());
    let backup_config = dir.path().join("gw-b.toml");
    let text = std::fs::read_to_string(&backup_config)
        .unwrap()
        .replace("[redundancy]\n", "[redundancy]\nrecovery = \"manual\"\n");
    std::fs::write(&backup_config, text).unwrap();
    // A long startup allowance on the master: only the moment the link comes
    // up can make it active (not an allowance shorter than the backup's
    // redial backoff, which is item 7).
    let master_config = dir.path().join("gw-a.toml");
    let text = std::fs::read_to_string(&master_config).unwrap().replace(
        "startup_allowance_ms = 1500",
        "startup_allowance_ms = 20000",
    );
    std::fs::write(&master_config, text).unwrap();
    let mut a = start(dir.path(), "gw-a");
    let _b = start(dir.path(), "gw-b");
    until("gw-a active", Duration::from_secs(30), || {
        activity(sa).as_deref() == Some("Active")
    });
    until("gw-b cold", Duration::from_secs(30), || {
        activity(sb).as_deref() == Some("Cold")
    });
    for attempt in 1..=7 {
        a.kill();
        until("gw-b takes over", Duration::from_secs(30), || {
            activity(sb).as_deref() == Some("Active")
        });
        let takeover = state(sb).and_then(|s| s["epoch"].as_u64()).unwrap();
        let (a2, lines) = start_with_lines(dir.path(), "gw-a");
        a = a2;
        let restarted = Instant::now();
        let mut seen = Vec::new();
        loop {
            let left = Duration::from_secs(20).saturating_sub(restarted.elapsed());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!("attempt {attempt}: the restarted master never settled ({e}): {seen:?}")
            });
            let Some((level, epoch)) = gateway_activity(&line) else {
                continue;
            };
            seen.push(line.clone());
            assert!(
                !(level == "Active" && epoch < takeover),
                "attempt {attempt}: {:?} after its restart the master printed `{line}`, below the \
                 backup's takeover epoch {takeover} (lines so far: {seen:?})",
                restarted.elapsed()
            );
            if epoch >= takeover {
                break;
            }
        }
        // The operator hands back once the backup hears the master; the next
        // attempt starts from a settled pair.
        until("gw-b hears the master", Duration::from_secs(30), || {
            state(sb).is_some_and(|s| s["peer_connected"] == true)
        });
        let (code, body) = post(sb, "/actions/handback");
        assert_eq!(code, 200, "{body}");
        until(
            "gw-a active after the handback",
            Duration::from_secs(30),
            || activity(sa).as_deref() == Some("Active") && activity(sb).as_deref() == Some("Cold"),
        );
    }
}

// 7. A restarted master with a short startup allowance.

/// The master is down long enough for the backup's redial backoff to grow
/// (persist-node's default `--reconnect-max-ms` of 10 s), then restarts with
/// a startup allowance shorter than that backoff: the two nodes are never
/// both Active for longer than about a heartbeat and a claim exchange.
#[test]
fn restarted_master_with_a_short_allowance_is_not_active_alone_next_to_an_active_backup() {
    let pair = Pair::new();
    let (mut m, addr) = start_master(&pair, None, 1500);
    let db = pair.path("backup.db").display().to_string();
    let secret = pair.secret();
    let mut args = vec![
        "backup".to_string(),
        "--db".into(),
        db,
        "--secret-file".into(),
        secret,
        "--peer".into(),
        addr.clone(),
    ];
    args.extend(timing(1500));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Node::spawn(&refs); // default --reconnect-max-ms (10 s)
    m.expect("ACTIVITY Active ");
    b.expect("ACTIVITY Cold ");
    m.kill();
    b.expect("ACTIVITY Active ");
    // Several failed dials: the backoff grows past 6 s.
    std::thread::sleep(Duration::from_secs(7));
    let (m2, _) = start_master(&pair, Some(&addr), 300);
    let restarted = Instant::now();
    let (mut m_active, mut b_active) = (false, true);
    let mut both_since: Option<Instant> = None;
    let mut longest = Duration::ZERO;
    let deadline = restarted + Duration::from_secs(20);
    let bound = Duration::from_millis(HEARTBEAT_MS + 400);
    loop {
        let mut any = false;
        for (lines, active) in [(&m2.lines, &mut m_active), (&b.lines, &mut b_active)] {
            while let Ok(line) = lines.try_recv() {
                any = true;
                if let Some(rest) = line.strip_prefix("ACTIVITY ") {
                    *active = rest.starts_with("Active");
                }
            }
        }
        let now = Instant::now();
        match (m_active && b_active, both_since) {
            (true, None) => both_since = Some(now),
            (false, Some(t)) => {
                longest = longest.max(now - t);
                both_since = None;
            }
            _ => {}
        }
        // Settled: the master active, the backup standby.
        if m_active && !b_active && !any {
            break;
        }
        assert!(
            now < deadline,
            "the pair never settled after the restart: master active {m_active}, backup active {b_active}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("longest both-Active stretch after the restart: {longest:?}");
    assert!(
        longest <= bound,
        "both nodes Active for {longest:?} with a healthy link once the master was up \
         (restarted master's allowance 300 ms, heartbeat {HEARTBEAT_MS} ms, bound {bound:?}); \
         settled {:?} after the restart",
        restarted.elapsed()
    );
}
