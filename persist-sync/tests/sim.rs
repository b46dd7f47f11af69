//! The deterministic simulator (see `persist_sync::testing::sim`).
//!
//! - `random_seeds_keep_every_invariant`: as many seeds as fit in
//!   `PERSIST_SIM_SECONDS` (default 40) or exactly `PERSIST_SIM_SEEDS`,
//!   from `PERSIST_SIM_FIRST_SEED` (default 1), on `PERSIST_SIM_THREADS`
//!   threads (default 2). It prints how many seeds and simulated seconds it
//!   covered, and how many of them ran with a witness
//!   (`SimConfig::for_seed`: 40 % of seeds; `PERSIST_SIM_WITNESS=1` runs
//!   only those, `=0` none of them), and the seeds where a node was Active
//!   on its peer's word alone next to the lease holder (a violation; with
//!   `PERSIST_SIM_STRICT_WITNESS=0` the checker tolerates it for a bounded
//!   time and counts it, as it did to find the stale-confirmation defect).
//! - `PERSIST_SIM_SEED=n`: replays seed `n` alone, with a trace of every event.
//! - `seeds_that_found_bugs_stay_fixed`: every seed that once found a defect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persist_sync::engine::Command;
use persist_sync::redundancy::witness::WitnessSettings;
use persist_sync::redundancy::RecoveryMode;
use persist_sync::testing::sim::{run, Fault, Mistake, Report, SimConfig};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_seeds_keep_every_invariant() {
    if let Some(seed) = env("PERSIST_SIM_SEED") {
        let cfg = SimConfig {
            trace: true,
            strict_witness: env("PERSIST_SIM_STRICT_WITNESS") != Some(0),
            ..SimConfig::for_seed(seed)
        };
        match run(seed, &cfg) {
            Ok(r) => {
                for l in &r.schedule {
                    println!("{l}");
                }
                println!("seed {seed}: ok {r:?}");
            }
            Err(v) => panic!("{v}"),
        }
        return;
    }
    let first = env("PERSIST_SIM_FIRST_SEED").unwrap_or(1);
    let count = env("PERSIST_SIM_SEEDS");
    let budget = Duration::from_secs(env("PERSIST_SIM_SECONDS").unwrap_or(40));
    let threads = env("PERSIST_SIM_THREADS").unwrap_or(2).max(1);
    let next = Arc::new(AtomicU64::new(first));
    let done = Arc::new(AtomicU64::new(0));
    let simulated = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));
    // With a witness: seeds, simulated ms, faults, lease handovers.
    let witnessed = Arc::new([(); 4].map(|_| AtomicU64::new(0)));
    // Seeds where one node was Active on its peer's word alone next to the
    // lease holder, with the longest such overlap.
    let overlaps = Arc::new(Mutex::new(Vec::new()));
    let only = env("PERSIST_SIM_WITNESS");
    let strict = env("PERSIST_SIM_STRICT_WITNESS") != Some(0);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, done, simulated, events, faults, witnessed, overlaps, failures) = (
                next.clone(),
                done.clone(),
                simulated.clone(),
                events.clone(),
                faults.clone(),
                witnessed.clone(),
                overlaps.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                let out_of_seeds = count.is_some_and(|c| seed >= first + c);
                let out_of_time = count.is_none() && started.elapsed() >= budget;
                if out_of_seeds || out_of_time || !failures.lock().unwrap().is_empty() {
                    return;
                }
                let cfg = SimConfig {
                    strict_witness: strict,
                    ..SimConfig::for_seed(seed)
                };
                if only.is_some_and(|w| (w == 1) != cfg.witness.is_some()) {
                    continue;
                }
                match run(seed, &cfg) {
                    Ok(r) => {
                        let ms = r.simulated.as_millis() as u64;
                        done.fetch_add(1, Ordering::SeqCst);
                        simulated.fetch_add(ms, Ordering::SeqCst);
                        events.fetch_add(r.events, Ordering::SeqCst);
                        faults.fetch_add(r.faults, Ordering::SeqCst);
                        if r.witness {
                            for (n, v) in
                                [1, ms, r.faults, r.lease_handovers].into_iter().enumerate()
                            {
                                witnessed[n].fetch_add(v, Ordering::SeqCst);
                            }
                            if r.overlaps > 0 {
                                overlaps.lock().unwrap().push((r.overlap_max, seed));
                            }
                        }
                    }
                    Err(v) => failures.lock().unwrap().push(v),
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let w = |n: usize| witnessed[n].load(Ordering::SeqCst);
    let mut overlaps = overlaps.lock().unwrap().clone();
    overlaps.sort_by(|a, b| b.cmp(a));
    println!(
        "simulator: {} seeds from {first}, {:.0} simulated seconds, {} events, {} faults, \
         violations: {}, in {:.1} s; with a witness: {} seeds, {:.0} simulated seconds, \
         {} faults, {} lease handovers; {} seeds with a node Active on its peer's word \
         next to the lease holder (the longest: {:?})",
        done.load(Ordering::SeqCst),
        simulated.load(Ordering::SeqCst) as f64 / 1000.0,
        events.load(Ordering::SeqCst),
        faults.load(Ordering::SeqCst),
        failures.lock().unwrap().len(),
        started.elapsed().as_secs_f64(),
        w(0),
        w(1) as f64 / 1000.0,
        w(2),
        w(3),
        overlaps.len(),
        &overlaps[..overlaps.len().min(5)]
    );
    let failures = failures.lock().unwrap();
    if let Some(v) = failures.first() {
        panic!("{v}");
    }
}

/// Seeds that found defects of the node while the simulator was built, with
/// what each found. They run on every test run.
const FOUND: &[(u64, &str)] = &[
    (6, "a backup configured with the master's id acted on the master's claim as its own"),
    (13, "a sync request lost on the way left the backup waiting for a plan for ever"),
    (24, "a backup with the master's id asked for a tick in the past after every tick (a spin)"),
    (43, "a restarted backup that took over stayed Undecided until its startup allowance"),
    (81, "a restarted backup whose stored claim named it waited for its allowance after the master died"),
    (90, "an entry lost on the way was never sent again once writes stopped"),
    (141, "a claim retry due while a claim write was in flight made the node spin"),
    (
        1001322,
        "the checker took a backup misconfigured with the master's id for a takeover by gw-b",
    ),
    (
        1068035,
        "a backup restoring over data of its own took its heartbeat position (the data about to be \
         replaced) as an acknowledgement on the master, and dropped the entries that followed the \
         snapshot as duplicates",
    ),
];

#[test]
fn seeds_that_found_bugs_stay_fixed() {
    let cfg = SimConfig::default();
    for (seed, what) in FOUND {
        if let Err(v) = run(*seed, &cfg) {
            panic!("seed {seed} ({what}) fails again:\n{v}");
        }
    }
}

/// Random seeds with a witness (`SimConfig::for_seed`) that found the
/// stale-confirmation defect: a master frozen past the failover timeout, or
/// its heartbeats' answers held by a partition, read its backup's old
/// heartbeats naming it as a fresh confirmation, Active next to the lease
/// holder (seed 1358: 242 ms, the link cut too; 602: a partition then a
/// freeze).
const FOUND_WITH_WITNESS: &[u64] = &[364, 602, 880, 1358, 5440];

#[test]
fn witness_seeds_that_found_bugs_stay_fixed() {
    for &seed in FOUND_WITH_WITNESS {
        let cfg = SimConfig::for_seed(seed);
        assert!(cfg.witness.is_some() && cfg.strict_witness, "seed {seed}");
        if let Err(v) = run(seed, &cfg) {
            panic!("seed {seed} (a stale confirmation) fails again:\n{v}");
        }
    }
}

/// Runs a scripted scenario on several seeds (the seed varies the start
/// order, latencies, the workload and store timings).
fn scenario(
    what: &str,
    script: Vec<(Duration, Fault)>,
    tweak: impl Fn(&mut SimConfig),
) -> Vec<Report> {
    let mut cfg = SimConfig {
        script: Some(script),
        ..SimConfig::default()
    };
    tweak(&mut cfg);
    // PERSIST_SIM_TRACE=1 prints every event of seed 1 of each scenario.
    if std::env::var_os("PERSIST_SIM_TRACE").is_some() {
        let traced = SimConfig {
            trace: true,
            ..cfg.clone()
        };
        match run(1, &traced) {
            Ok(r) => r.schedule.iter().for_each(|l| println!("{what}: {l}")),
            Err(v) => println!("{v}"),
        }
    }
    (1..=12)
        .map(|seed| run(seed, &cfg).unwrap_or_else(|v| panic!("{what}:\n{v}")))
        .collect()
}

fn s(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Item 1: the master freezes (or its link goes silent) during a full
/// resync, asked for by either node: the backup takes over in time, the
/// restore is given up with the old data intact, and the pair converges.
#[test]
fn master_frozen_or_cut_off_during_a_full_resync() {
    for (who, second) in [
        (0, Fault::Freeze(0, s(3000))),
        (1, Fault::Freeze(0, s(3000))),
        (0, Fault::Partition(s(2500))),
    ] {
        scenario(
            "freeze during a full resync",
            vec![
                (s(2000), Fault::Bulk(3000)),
                (s(3000), Fault::Operator(who, Command::Resync)),
                (s(3004), second),
            ],
            |_| {},
        );
    }
}

/// Item 2: both nodes configured with the same id, for a while.
#[test]
fn the_same_node_id_on_both_nodes() {
    scenario(
        "same node id",
        vec![(s(2500), Fault::Mistake(Mistake::SameId, s(3500)))],
        |_| {},
    );
}

/// Item 4: the backup's disk fills up, or another process holds its lock
/// past the busy timeout, next to a live master.
#[test]
fn a_backup_whose_store_fails_next_to_a_live_master() {
    scenario(
        "disk full",
        vec![(s(2500), Fault::DiskFull(1, s(3000)))],
        |_| {},
    );
    scenario(
        "locked",
        vec![(s(2500), Fault::Locked(1, s(900), s(3000)))],
        |_| {},
    );
}

/// A row changed behind the running backup's back (the master keeps
/// writing other rows): the pair converges to the master's rows, by a
/// ranged repair from the backup's scrubber (or, when an entry touches the
/// row first, by the snapshot its failed apply asks for); never by waiting
/// for a reconnect.
#[test]
fn a_row_changed_on_a_running_backup_is_repaired() {
    let reports = scenario("live tamper", vec![(s(2500), Fault::Tamper(1))], |_| {});
    for r in &reports {
        assert!(r.repairs + r.resyncs >= 1, "seed {}: {r:?}", r.seed);
    }
    let repaired = reports.iter().filter(|r| r.repairs >= 1).count();
    assert!(
        repaired * 2 >= reports.len(),
        "most seeds repair by range, {repaired} of {} did",
        reports.len()
    );
}

/// Item 5: the backup has the wrong secret next to a live master.
#[test]
fn a_backup_with_a_wrong_secret() {
    scenario(
        "wrong secret",
        vec![(s(2500), Fault::Mistake(Mistake::WrongSecret, s(4000)))],
        |_| {},
    );
}

/// A backup whose module has other records than the master's (an upgrade
/// installed on the backup alone) is refused by name; it stays standby next
/// to the live master, and takes over in time when the master dies while
/// the mistake lasts (the invariants check both).
#[test]
fn a_backup_with_a_module_mismatch() {
    scenario(
        "module mismatch",
        vec![(s(2500), Fault::Mistake(Mistake::ModuleMismatch, s(4000)))],
        |_| {},
    );
    scenario(
        "module mismatch, then the master dies",
        vec![
            (s(2500), Fault::Mistake(Mistake::ModuleMismatch, s(4000))),
            (s(4000), Fault::Crash(0, s(1500))),
        ],
        |_| {},
    );
}

/// Items 6 and 7: the master restarts after a failover (short and long
/// outages: the backup's backoff has grown), in both recovery modes.
#[test]
fn a_master_restarted_after_a_failover() {
    for recovery in [RecoveryMode::Automatic, RecoveryMode::Manual] {
        for down in [1500, 5000] {
            scenario(
                "restarted master",
                vec![(s(2500), Fault::Crash(0, s(down)))],
                |c| c.recovery = recovery,
            );
        }
    }
}

/// Item 8: a switchover while the backup is down is refused, and leaves
/// the master active.
#[test]
fn a_switchover_while_the_backup_is_down_is_refused() {
    let reports = scenario(
        "switchover with the backup down",
        vec![
            (s(2500), Fault::Crash(1, s(3000))),
            (s(3000), Fault::Operator(0, Command::Switchover)),
        ],
        |_| {},
    );
    for r in reports {
        assert!(
            r.replies.iter().any(|a| a.contains("BackupNotConnected")),
            "seed {}: {:?}",
            r.seed,
            r.replies
        );
    }
}

/// A witness with a 300 ms lease (the failover timeout is 500 ms), and both
/// nodes Active at once a violation even on a peer's word alone.
fn with_witness(c: &mut SimConfig) {
    let w = WitnessSettings::new(s(300));
    w.validate(c.failover_timeout)
        .expect("valid witness settings");
    c.witness = Some(w);
    c.strict_witness = true;
}

/// Which nodes were Active at `t` (gw-a, gw-b).
fn active_at(r: &Report, t: Duration) -> [bool; 2] {
    r.activity
        .iter()
        .take_while(|(at, _)| at.offset() <= t)
        .last()
        .map_or([false; 2], |(_, a)| *a)
}

/// The changes of activity from `from` to `to`, and the state in force at
/// `from` (with the time it began).
fn activity_between(r: &Report, from: Duration, to: Duration) -> Vec<(Duration, [bool; 2])> {
    let mut out = vec![(from, active_at(r, from))];
    out.extend(
        r.activity
            .iter()
            .filter(|(at, _)| at.offset() > from && at.offset() <= to)
            .map(|(at, a)| (at.offset(), *a)),
    );
    out
}

/// Witness: the pair link is cut for 3 s while both nodes reach the
/// witness: the master keeps renewing its lease, the backup's tries find
/// it taken, and exactly one node (the master) is Active throughout.
#[test]
fn a_cut_link_with_a_witness_keeps_exactly_one_active() {
    let reports = scenario(
        "cut link, witness reachable",
        vec![(s(3000), Fault::Partition(s(3000)))],
        with_witness,
    );
    for r in &reports {
        let during = activity_between(r, s(3000), s(6000));
        assert!(
            during.iter().all(|(_, a)| *a == [true, false]),
            "seed {}: only the master Active during the cut: {during:?}",
            r.seed
        );
    }
}

/// Witness: the master is cut from the pair link and from the witness. Its
/// lease stops counting before the server expires it, so it stands down
/// first (never both Active: strict); the backup wins the lease once the
/// server expired it, and takes over within the failover timeout plus the
/// lease's TTL and a renewal round.
#[test]
fn an_isolated_master_gives_way_to_the_backup_once_it_wins_the_lease() {
    let reports = scenario(
        "master cut from link and witness",
        vec![(s(3000), Fault::Isolate(0, s(3000)))],
        with_witness,
    );
    let w = WitnessSettings::new(s(300));
    for r in &reports {
        assert_eq!(active_at(r, s(3000)), [true, false], "seed {}", r.seed);
        let took = r
            .activity
            .iter()
            .find(|(at, a)| at.offset() > s(3000) && a[1])
            .map(|(at, _)| at.offset())
            .unwrap_or_else(|| panic!("seed {}: the backup took over: {:?}", r.seed, r.activity));
        // Not before the failover timeout after the master's last
        // heartbeat (at most one interval before the cut), not after the
        // master's lease ended on the server plus a try (ttl < failover
        // timeout).
        let latest = s(3000) + s(500) + w.renew_every + w.request_timeout + s(110);
        assert!(
            took >= s(3400) && took <= latest,
            "seed {}: took over at {took:?} (latest {latest:?})",
            r.seed
        );
        let stood_down = r
            .activity
            .iter()
            .find(|(at, a)| at.offset() > s(3000) && !a[0])
            .map(|(at, _)| at.offset())
            .unwrap_or_else(|| panic!("seed {}: the master stood down", r.seed));
        assert!(
            stood_down <= s(3000) + w.valid_for() && stood_down < took,
            "seed {}: the master stood down at {stood_down:?}, the backup took over at {took:?}",
            r.seed
        );
        assert!(r.lease_handovers >= 2, "seed {}: {r:?}", r.seed);
    }
}

/// Witness: the witness is down for 4 s with the pair link up: the pair
/// runs on its last decision (the master stays Active on its backup's
/// word). The master dies meanwhile: nobody can take the lease, so nobody
/// is Active until the witness returns; then the backup takes over.
#[test]
fn with_the_witness_down_the_pair_keeps_its_decision_and_waits_for_it_to_take_over() {
    let reports = scenario(
        "witness down",
        vec![(s(2500), Fault::WitnessDown(s(4000)))],
        with_witness,
    );
    for r in &reports {
        let during = activity_between(r, s(2500), s(6500));
        assert!(
            during.iter().all(|(_, a)| *a == [true, false]),
            "seed {}: the master stays Active: {during:?}",
            r.seed
        );
    }
    let reports = scenario(
        "witness down, then the master dies",
        vec![
            (s(2500), Fault::WitnessDown(s(3000))),
            (s(3000), Fault::Crash(0, s(4000))),
        ],
        with_witness,
    );
    for r in &reports {
        let during = activity_between(r, s(3001), s(5500));
        assert!(
            during.iter().all(|(_, a)| *a == [false, false]),
            "seed {}: nobody Active without the witness: {during:?}",
            r.seed
        );
        assert!(
            active_at(r, s(6000))[1],
            "seed {}: {:?}",
            r.seed,
            r.activity
        );
    }
}

/// Witness: the active master freezes (SIGSTOP) for longer than the
/// failover timeout; the backup wins the lease and takes over. When the
/// master resumes, its socket still holds the backup's heartbeats sent
/// before the takeover, naming the master: the machine counts each as its
/// peer's confirmation from when it is read, so the master is Active next
/// to the lease holder until the backup's close or its new claim arrives.
/// Fixed in protocol 5: a confirmation counts from this node's own send time
/// that the peer's heartbeat echoes, not from when it is read.
#[test]
fn a_master_frozen_past_the_failover_does_not_act_on_stale_confirmations() {
    scenario(
        "master frozen past the failover timeout",
        vec![(s(3000), Fault::Freeze(0, s(1500)))],
        with_witness,
    );
}
