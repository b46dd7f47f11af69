//! Two `gateway` processes fenced by a witness lease in a `nats-server` of
//! the test's own: the master frozen with SIGSTOP and then killed with
//! SIGKILL. The backup takes over only once the master's lease ran out on
//! the server, the resumed master stands down on its expired lease instead
//! of acting on its stale claim, and the pair ends with one active node and
//! the same data.

mod gateways;

use std::path::Path;
use std::time::{Duration, Instant};

use gateways::*;
use persist_fleet::testing::NatsServer;

const FAILOVER_MS: u64 = 2000;
const TTL_MS: u64 = 1200;

fn with_witness(dir: &Path, id: &str, nats: &NatsServer) {
    let path = dir.join(format!("{id}.toml"));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("failover_timeout_ms = {GW_FAILOVER_MS}"),
        &format!("failover_timeout_ms = {FAILOVER_MS}"),
    );
    let text = format!(
        "{text}\n[witness]\nurl = \"{}\"\nbucket = \"pair-witness\"\nkey = \"line-1\"\nttl_ms = {TTL_MS}\n",
        nats.url()
    );
    std::fs::write(path, text).unwrap();
}

fn field(port: u16, name: &str) -> Option<serde_json::Value> {
    state(port).map(|s| s[name].clone())
}

fn active(port: u16) -> bool {
    activity(port).as_deref() == Some("Active")
}

fn held_here(port: u16) -> bool {
    field(port, "witness_held_here") == Some(true.into())
}

#[test]
fn a_frozen_then_killed_master_is_replaced_only_after_its_lease_and_the_pair_converges() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = NatsServer::start(d);
    let (_, sa, sb) = gateway_pair(d);
    seed_master_tags(d, 4, 500, |chunk, i| format!("40{chunk:02}{i:05}"));
    with_witness(d, "gw-a", &nats);
    with_witness(d, "gw-b", &nats);
    let mut a = start(d, "gw-a");
    let _b = start(d, "gw-b");
    until(
        "gw-a active and holding the lease",
        Duration::from_secs(30),
        || active(sa) && held_here(sa),
    );
    until("gw-b cold", Duration::from_secs(30), || {
        activity(sb).as_deref() == Some("Cold")
    });
    converged(sa, sb);

    // SIGSTOP: the frozen master can neither renew nor step down, so the
    // backup must wait for the lease to run out on the server.
    a.signal("STOP");
    let stopped = Instant::now();
    until("gw-b active", Duration::from_secs(20), || active(sb));
    let took = stopped.elapsed();
    println!("backup Active {took:?} after SIGSTOP of the master");
    assert!(
        took >= Duration::from_millis(FAILOVER_MS - 200),
        "took over after {took:?}, before the failover timeout"
    );
    assert!(held_here(sb), "{:?}", state(sb));

    // SIGCONT: the resumed master's lease has expired and its claim is
    // stale: it stands down, hears the backup's claim, and automatic
    // recovery hands the pair back once it caught up.
    a.signal("CONT");
    let resumed = Instant::now();
    let mut both = None;
    loop {
        let (ma, mb) = (active(sa), active(sb));
        if ma && mb && resumed.elapsed() > Duration::from_millis(300) {
            both = Some(resumed.elapsed());
        }
        if ma && !mb && held_here(sa) {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "not handed back: {:?} / {:?}",
            state(sa),
            state(sb)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(both, None, "both active after the master resumed");
    converged(sa, sb);

    // SIGKILL, then a restart: the same, from a dead master.
    a.kill();
    let killed = Instant::now();
    until("gw-b active again", Duration::from_secs(20), || active(sb));
    assert!(killed.elapsed() >= Duration::from_millis(FAILOVER_MS - 200));
    let _a = start(d, "gw-a");
    until(
        "handed back after the restart",
        Duration::from_secs(40),
        || active(sa) && !active(sb) && held_here(sa),
    );
    converged(sa, sb);

    // The transient states too, from what each gateway printed: a node is
    // Active at most once per epoch (a stale claim re-asserted after SIGCONT
    // or a restart would print a second line), and never at an epoch the
    // other node was Active at.
    let epochs = |id: &str| -> Vec<u64> {
        let prefix = format!("{id}: Active (epoch ");
        std::fs::read_to_string(d.join(format!("{id}.log")))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .collect()
    };
    let (ea, eb) = (epochs("gw-a"), epochs("gw-b"));
    for (id, e) in [("gw-a", &ea), ("gw-b", &eb)] {
        let mut once = e.to_vec();
        once.dedup();
        assert_eq!(&once, e, "{id} Active twice at one epoch: {e:?}");
    }
    assert!(
        ea.iter().all(|e| !eb.contains(e)),
        "both Active at one epoch: gw-a {ea:?}, gw-b {eb:?}"
    );
    assert_eq!(eb.len(), 2, "the backup took over twice: {eb:?}");
}

fn converged(sa: u16, sb: u16) {
    until(
        "the two nodes hold the same data",
        Duration::from_secs(20),
        || {
            let (x, y) = (state(sa), state(sb));
            match (x, y) {
                (Some(x), Some(y)) => x["position"] == y["position"] && x["digest"] == y["digest"],
                _ => false,
            }
        },
    );
}
