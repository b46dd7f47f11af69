//! A deterministic simulator of a redundant pair.
//!
//! Two nodes run the real [`NodeCore`](crate::engine::NodeCore) (sessions,
//! handshake, redundancy machine, claims) and the real store worker over
//! real stores (SQLite files in a temporary directory, so apply, restore,
//! digests and claims are the production code paths), under virtual time,
//! from a seed. Only what lies outside the node is modelled: the network
//! (latency, loss, duplication, partitions, resets), processes (crash and
//! restart, freeze and resume), the store's timing and faults (a full disk,
//! a lock held by another process past the busy timeout, a slow fsync, a row
//! changed behind the library's back), operators and configuration mistakes,
//! and for a pair fenced by a witness ([`SimConfig::witness`]), the
//! witness's key-value bucket and each node's way to it (down, cut, slow;
//! see `witness.rs`).
//!
//! The invariants of [`check`] are checked after every event; a violation
//! carries the seed (running it again replays it exactly) and the schedule
//! of faults that led there.
//!
//! Why real SQLite files rather than an in-memory store: an in-memory store
//! would have to reimplement apply, restore, digests and claims, and the
//! simulator would then prove the reimplementation. On a RAM disk a seed
//! costs a few tens of milliseconds, which still allows 100,000 seeds in a
//! long run.

mod check;
mod net;
mod node;
mod rng;
mod witness;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use persist_core::Store;

use self::check::Checker;
use self::net::Net;
use self::node::{NodeConfig, SimNode, IDS as IDS_};
use self::rng::Rng;
use self::witness::SimWitness;
use crate::clock::{Clock, Time};
use crate::engine::{Command, ConnId, Input, OpId, Output, StoreOp};
use crate::protocol::NodeRole;
use crate::redundancy::machine::{ActivityLevel, RecoveryMode};
use crate::redundancy::witness::{LeaseAction, LeaseEvent, WitnessSettings};

pub use self::check::Invariant;

/// The workload's record: what a module writes.
#[derive(persist_derive::PersistentRecord, Debug, Clone, PartialEq)]
#[persist(crate = "persist_core", table = "sim_row")]
pub struct SimRow {
    #[persist(identity)]
    id: i64,
    #[persist(indexed)]
    tx: i64,
    n: i64,
    label: String,
}

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated time during which faults happen.
    pub fault_phase: Duration,
    /// After the faults stop, the nodes must have converged within this.
    pub converge_within: Duration,
    /// Mean time between two faults.
    pub fault_every: Duration,
    /// Probability that a seed has a configuration mistake for a while.
    pub mistake_chance: f64,
    /// The pair's timers.
    pub heartbeat: Duration,
    /// Failover timeout.
    pub failover_timeout: Duration,
    /// Startup allowance.
    pub startup_allowance: Duration,
    /// Master recovery.
    pub recovery: RecoveryMode,
    /// Keep a trace of every event (for a replay).
    pub trace: bool,
    /// These faults at these times instead of random ones (a scenario).
    pub script: Option<Vec<(Duration, Fault)>>,
    /// A witness lease fencing the pair (`None`: no witness). Its settings
    /// should pass [`WitnessSettings::validate`] against `failover_timeout`.
    pub witness: Option<WitnessSettings>,
    /// With a witness, both nodes Active at once is a violation even while
    /// one of them is Active on its peer's word alone. On by default (the
    /// confirmation counts from the echoed send time since protocol 5);
    /// off, the checker tolerates such an overlap for a bounded time and
    /// counts it in [`Report::overlaps`] (it found the stale-confirmation
    /// defect that way).
    pub strict_witness: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            fault_phase: Duration::from_secs(8),
            converge_within: Duration::from_secs(12),
            fault_every: Duration::from_millis(900),
            mistake_chance: 0.12,
            heartbeat: Duration::from_millis(100),
            failover_timeout: Duration::from_millis(500),
            startup_allowance: Duration::from_millis(1000),
            recovery: RecoveryMode::Automatic,
            trace: false,
            script: None,
            witness: None,
            strict_witness: true,
        }
    }
}

impl SimConfig {
    /// The configuration a random seed runs with: the default, and for
    /// 40 % of seeds a witness with a TTL of 200-450 ms (below the 500 ms
    /// failover timeout), renewal every fifth to third of it and requests
    /// bounded by an eighth to a third, a clock margin of 1-20 % (each drawn
    /// again until the settings validate). Drawn from the seed alone, so a
    /// replay of the seed gets the same.
    pub fn for_seed(seed: u64) -> SimConfig {
        let mut cfg = SimConfig::default();
        let mut rng = Rng::new(seed ^ 0x3117_E55E_11EA_5E00);
        if rng.below(5) >= 2 {
            return cfg;
        }
        let ttl = rng.ms(200, 450);
        let w = loop {
            let w = WitnessSettings {
                ttl,
                renew_every: ttl * (3 + rng.below(3) as u32) / 15,
                request_timeout: ttl * (3 + rng.below(6) as u32) / 24,
                clock_margin_permille: 10 + rng.below(191) as u32,
            };
            if w.validate(cfg.failover_timeout).is_ok() {
                break w;
            }
        };
        cfg.witness = Some(w);
        cfg
    }
}

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Simulated time covered.
    pub simulated: Duration,
    /// Events processed.
    pub events: u64,
    /// Faults injected.
    pub faults: u64,
    /// Transactions the master committed.
    pub commits: u64,
    /// The highest position the backup acknowledged.
    pub acked: u64,
    /// Takeovers by the backup.
    pub takeovers: u64,
    /// Full resyncs.
    pub resyncs: u64,
    /// Ranged repairs the backup applied (its scrubber found rows at odds
    /// with their recorded digests).
    pub repairs: u64,
    /// Time from the end of the faults to convergence.
    pub converged_after: Duration,
    /// Status reports read (after every event, from each running node).
    pub reports: u64,
    /// Answers to operator requests, in order.
    pub replies: Vec<String>,
    /// The seed ran with a witness.
    pub witness: bool,
    /// Times the witness's lease changed hands.
    pub lease_handovers: u64,
    /// Lease requests that reached a running witness.
    pub lease_requests: u64,
    /// With a witness: times both nodes were Active with one of them on its
    /// peer's word alone (tolerated unless `strict_witness`), the longest
    /// such overlap, and when the first began.
    pub overlaps: u64,
    /// The longest overlap.
    pub overlap_max: Duration,
    /// When the first overlap began.
    pub first_overlap: Option<Time>,
    /// Which nodes were Active (gw-a, gw-b), each time that changed, as
    /// seen after the event that changed it.
    pub activity: Vec<(Time, [bool; 2])>,
    /// The fault schedule (and, with `trace`, every event).
    pub schedule: Vec<String>,
}

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed: running it again replays the violation.
    pub seed: u64,
    /// When.
    pub at: Time,
    /// Which invariant.
    pub invariant: Invariant,
    /// What was seen.
    pub message: String,
    /// The faults (and, with `trace`, events) up to the violation.
    pub schedule: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} at {}: invariant {} ({}) violated: {}",
            self.seed,
            self.at,
            self.invariant as u8,
            self.invariant.name(),
            self.message
        )?;
        writeln!(
            f,
            "replay: PERSIST_SIM_SEED={} cargo test -p persist-sync --test sim -- --nocapture",
            self.seed
        )?;
        writeln!(f, "schedule:")?;
        for line in &self.schedule {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// The simulator's clock, for the store worker (retention reads wall time).
#[derive(Debug, Default)]
pub struct SimClock(AtomicU64);

impl Clock for SimClock {
    fn now(&self) -> Time {
        Time::from_offset(Duration::from_micros(self.0.load(Ordering::Relaxed)))
    }
    fn wall(&self, t: Time) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000) + t.offset()
    }
}

/// A fault the scheduler injects (node 0 is the master gw-a, node 1 the
/// backup gw-b; the last duration is how long the fault lasts).
#[derive(Debug, Clone)]
pub enum Fault {
    /// The node crashes (SIGKILL) and restarts after the duration.
    Crash(usize, Duration),
    /// The node crashes, a row of its database changes behind the
    /// library's back while it is down, and it restarts.
    CrashAndTamper(usize, Duration),
    /// A row of the running node's database changes behind the library's
    /// back (the sqlite3 CLI next to a live node): the backup's scrubber
    /// must find it and repair that range from the master.
    Tamper(usize),
    /// The node freezes (SIGSTOP) and resumes.
    Freeze(usize, Duration),
    /// Frames in both directions are held (a pulled cable, no reset).
    Partition(Duration),
    /// Every connection is reset.
    Reset,
    /// Frames towards this node are held.
    OneWay(usize, Duration),
    /// Extra one-way latency (the first duration).
    Delay(Duration, Duration),
    /// This share of frames is delivered twice.
    Duplicate(f64, Duration),
    /// This share of frames is lost.
    Loss(f64, Duration),
    /// The node's disk is full.
    DiskFull(usize, Duration),
    /// Another process holds the node's write lock: each write waits the
    /// first duration (the busy timeout), then fails.
    Locked(usize, Duration, Duration),
    /// Each write of the node takes the first duration longer.
    SlowFsync(usize, Duration, Duration),
    /// An operator asks the node for this.
    Operator(usize, Command),
    /// A configuration mistake, fixed (with a restart) after the duration.
    Mistake(Mistake, Duration),
    /// The master's module writes this many rows in one transaction (so a
    /// snapshot spans many frames).
    Bulk(usize),
    /// The witness is down (requests fail or time out; it keeps its bucket).
    WitnessDown(Duration),
    /// The node's way to the witness is cut (requests and answers vanish).
    WitnessCut(usize, Duration),
    /// The witness answers this much later each way (answers come after
    /// the node gave up).
    WitnessSlow(Duration, Duration),
    /// The node is cut from the pair link (a partition) and from the
    /// witness at once.
    Isolate(usize, Duration),
}

/// A configuration mistake, in force for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mistake {
    /// The backup has the wrong secret.
    WrongSecret,
    /// The backup uses the master's id.
    SameId,
    /// The backup is configured as master too (the nodes probe each other).
    BothMasters,
    /// The master's probe address points at itself.
    SelfProbe,
    /// The backup runs the workload's module with other records (an
    /// upgrade that changed them, installed on the backup alone).
    ModuleMismatch,
}

#[derive(Debug)]
enum Ev {
    Tick(usize, u64),
    Frame {
        net: u64,
        to: usize,
        bytes: Vec<u8>,
    },
    Closed {
        net: u64,
        to: usize,
        error: Option<String>,
    },
    Sent {
        net: u64,
        to: usize,
        frames: usize,
    },
    Dialed {
        node: usize,
        inc: u64,
        conn: ConnId,
        net: Result<u64, String>,
    },
    Accept {
        node: usize,
        net: u64,
    },
    StoreDone(usize, u64),
    /// A lease request reaches the witness (sent by `from` as `id`).
    WitnessRequest {
        from: usize,
        inc: u64,
        id: String,
        action: LeaseAction,
    },
    /// The witness's answer reaches the node.
    WitnessAnswer {
        to: usize,
        inc: u64,
        event: LeaseEvent,
    },
    Fault(Fault),
    Undo(Undo),
    Write(usize),
    Heal,
}

#[derive(Debug)]
enum Undo {
    Restart(usize),
    Unfreeze(usize),
    Partition,
    OneWay(usize),
    Delay,
    Duplicate,
    Loss,
    DiskFull(usize),
    Locked(usize),
    Slow(usize),
    Mistake(Mistake),
    WitnessUp,
    WitnessReach(usize),
    WitnessFast,
}

struct Scheduled {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The simulated world of one seed.
struct World {
    seed: u64,
    cfg: SimConfig,
    now: Time,
    rng: Rng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    nodes: [SimNode; 2],
    net: Net,
    check: Checker,
    clock: Arc<SimClock>,
    report: Report,
    next_tx: i64,
    /// Rows the master committed, for updates and deletes.
    ids: Vec<i64>,
    mistake: Option<Mistake>,
    healed: Option<Time>,
    /// A tick is being handled / it left its deadline in the past.
    ticking: bool,
    spin: Option<String>,
    deep_checked: Time,
    /// Events for a frozen node, in arrival order.
    deferred: [Vec<Ev>; 2],
    /// Frames were lost at random in this seed.
    lossy: bool,
    /// Frames and closes towards each node held by a partition.
    held: [Vec<Ev>; 2],
    /// The witness, if the pair has one.
    witness: Option<SimWitness>,
    _dir: tempfile::TempDir,
}

/// Runs seed `seed`.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<Report, Violation> {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory");
    let nodes = [
        SimNode::new(0, base.path().join("gw-a.db")),
        SimNode::new(1, base.path().join("gw-b.db")),
    ];
    let mut w = World {
        seed,
        cfg: cfg.clone(),
        now: Time::ZERO,
        rng: Rng::new(seed),
        queue: BinaryHeap::new(),
        seq: 0,
        nodes,
        net: Net::default(),
        check: Checker::new(cfg),
        clock: Arc::new(SimClock::default()),
        report: Report {
            seed,
            witness: cfg.witness.is_some(),
            ..Report::default()
        },
        next_tx: 1,
        ids: Vec::new(),
        mistake: None,
        healed: None,
        ticking: false,
        spin: None,
        deep_checked: Time::ZERO,
        deferred: [Vec::new(), Vec::new()],
        lossy: false,
        held: [Vec::new(), Vec::new()],
        witness: cfg
            .witness
            .clone()
            .map(|w| SimWitness::new(w, node::IDS[1], Rng::new(seed ^ 0x0057_17E5_5000_0001))),
        _dir: base,
    };
    w.setup();
    w.run()?;
    Ok(w.report)
}

impl World {
    fn at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        self.at(self.now + d, ev);
    }

    fn log(&mut self, line: String) {
        let entry = format!("{} {line}", self.now);
        self.report.schedule.push(entry);
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = line();
            self.log(l);
        }
    }

    fn setup(&mut self) {
        // The nodes start a little apart, in either order.
        let first = self.rng.below(2) as usize;
        let gap = self.rng.ms(0, 1500);
        self.start(first);
        self.nodes[1 - first].down = true;
        self.after(gap, Ev::Undo(Undo::Restart(1 - first)));
        // Faults.
        let mut t = Time::ZERO + Duration::from_millis(1500);
        let end = Time::ZERO + self.cfg.fault_phase;
        let mut mistake_done = false;
        if let Some(script) = self.cfg.script.clone() {
            for (at, f) in script {
                self.at(Time::ZERO + at, Ev::Fault(f));
            }
            t = end;
        }
        while t < end {
            let mean = self.cfg.fault_every.as_millis() as u64;
            t += self.rng.ms(mean / 4, mean * 7 / 4);
            if t >= end {
                break;
            }
            let f = self.pick_fault(&mut mistake_done);
            self.at(t, Ev::Fault(f));
        }
        self.at(end, Ev::Heal);
        for i in 0..2 {
            let d = self.rng.ms(10, 150);
            self.after(d, Ev::Write(i));
        }
    }

    fn pick_fault(&mut self, mistake_done: &mut bool) -> Fault {
        // A witness's faults come from its own random numbers: a seed
        // without a witness draws what it always drew.
        if let Some(w) = &mut self.witness {
            let r = w.rng();
            if r.chance(0.3) {
                let node = r.below(2) as usize;
                return match r.below(5) {
                    0 => Fault::WitnessDown(r.ms(200, 2500)),
                    1 | 2 => Fault::WitnessCut(node, r.ms(200, 2500)),
                    3 => Fault::WitnessSlow(r.ms(5, 300), r.ms(300, 2000)),
                    _ => Fault::Isolate(node, r.ms(300, 2500)),
                };
            }
        }
        let node = self.rng.below(2) as usize;
        if !*mistake_done && self.rng.chance(self.cfg.mistake_chance) {
            *mistake_done = true;
            let m = match self.rng.below(5) {
                0 => Mistake::WrongSecret,
                1 => Mistake::SameId,
                2 => Mistake::BothMasters,
                3 => Mistake::SelfProbe,
                _ => Mistake::ModuleMismatch,
            };
            return Fault::Mistake(m, self.rng.ms(1500, 4000));
        }
        match self.rng.below(15) {
            0 | 1 => Fault::Crash(node, self.rng.ms(100, 2500)),
            2 if self.rng.chance(0.5) => Fault::CrashAndTamper(1, self.rng.ms(100, 1500)),
            2 => Fault::Tamper(1),
            3 | 4 => Fault::Freeze(node, self.rng.ms(200, 3000)),
            5 => Fault::Partition(self.rng.ms(200, 2500)),
            6 => Fault::Reset,
            7 => Fault::OneWay(node, self.rng.ms(200, 2000)),
            8 => Fault::Delay(self.rng.ms(5, 700), self.rng.ms(300, 2500)),
            9 => Fault::Duplicate(
                0.1 + self.rng.below(40) as f64 / 100.0,
                self.rng.ms(300, 2000),
            ),
            10 => Fault::Loss(
                0.02 + self.rng.below(25) as f64 / 100.0,
                self.rng.ms(300, 2000),
            ),
            11 => Fault::DiskFull(node, self.rng.ms(200, 2500)),
            12 => Fault::Locked(node, self.rng.ms(100, 1200), self.rng.ms(300, 2500)),
            13 => Fault::SlowFsync(node, self.rng.ms(20, 600), self.rng.ms(300, 2500)),
            _ => {
                let c = match self.rng.below(3) {
                    0 => Command::Switchover,
                    1 => Command::Handback,
                    _ => Command::Resync,
                };
                let on = match c {
                    Command::Switchover => 0,
                    Command::Handback => 1,
                    _ => node,
                };
                Fault::Operator(on, c)
            }
        }
    }

    fn run(&mut self) -> Result<(), Violation> {
        while let Some(Reverse(s)) = self.queue.pop() {
            self.now = s.at;
            self.clock
                .0
                .store(self.now.offset().as_micros() as u64, Ordering::Relaxed);
            // A frozen node takes its events when it resumes, in order.
            if let Some(i) = self.target(&s.ev) {
                if self.nodes[i].frozen_until.is_some() {
                    self.deferred[i].push(s.ev);
                    continue;
                }
            }
            self.report.events += 1;
            if self.report.events > 2_000_000 {
                return Err(self.violation(
                    Invariant::Status,
                    format!(
                        "runaway: 2,000,000 events by {} ({})",
                        self.now,
                        self.describe()
                    ),
                ));
            }
            self.handle(s.ev)?;
            self.check_all()?;
            let act = self.actives();
            if self.report.activity.last().map(|(_, a)| *a) != Some(act) {
                self.report.activity.push((self.now, act));
            }
            if let Some(h) = self.healed {
                // The deep check (every row, both digests recomputed) only
                // once the cheap signs agree, at most every 50 ms.
                if self.converged() && self.now >= self.deep_checked + Duration::from_millis(50) {
                    self.deep_checked = self.now;
                    if self.same_data() {
                        self.report.converged_after = self.now.since(h);
                        self.finish();
                        self.report.simulated = self.now.offset();
                        return Ok(());
                    }
                }
                if self.now.since(h) > self.cfg.converge_within {
                    return Err(self.violation(
                        Invariant::Convergence,
                        format!(
                            "not converged {:?} after the faults stopped: {}",
                            self.cfg.converge_within,
                            self.describe()
                        ),
                    ));
                }
            }
        }
        Err(self.violation(Invariant::Convergence, "the simulation ran dry".into()))
    }

    /// The node an event is for (a frozen node defers it).
    fn target(&self, ev: &Ev) -> Option<usize> {
        match ev {
            Ev::Tick(i, _) | Ev::StoreDone(i, _) | Ev::Write(i) => Some(*i),
            Ev::WitnessAnswer { to, .. } => Some(*to),
            Ev::Frame { to, .. } | Ev::Closed { to, .. } | Ev::Sent { to, .. } => Some(*to),
            Ev::Dialed { node, .. } | Ev::Accept { node, .. } => Some(*node),
            _ => None,
        }
    }

    fn violation(&self, invariant: Invariant, message: String) -> Violation {
        Violation {
            seed: self.seed,
            at: self.now,
            invariant,
            message,
            schedule: self.report.schedule.clone(),
        }
    }

    fn describe(&self) -> String {
        let mut out = Vec::new();
        for n in &self.nodes {
            let Some(r) = &n.running else {
                out.push(format!("{}: down", n.name()));
                continue;
            };
            let rep = r.core.report(self.now);
            let red = rep.redundancy.as_ref();
            out.push(format!(
                "{}: {:?} epoch {} active {:?} position {} digest {} connected {} error {:?}{}",
                n.name(),
                red.map(|r| r.activity),
                red.map_or(0, |r| r.epoch),
                red.and_then(|r| r.active_node.clone()),
                r.store.position(),
                r.store.digest(),
                rep.connected,
                rep.last_error,
                if n.frozen_until.is_some_and(|t| t > self.now) {
                    " (frozen)"
                } else {
                    ""
                }
            ));
        }
        if let Some(w) = &self.witness {
            out.push(w.describe(self.now));
        }
        out.join("; ")
    }

    fn start(&mut self, i: usize) {
        let clock = self.clock.clone();
        let cfg = self.cfg.clone();
        let (nodes, rng) = (&mut self.nodes, &mut self.rng);
        nodes[i].start(self.now, &cfg, rng, &clock);
        self.check.started(i, self.now);
        let name = self.nodes[i].name();
        let c = self.nodes[i].config.clone();
        let modules: Vec<String> = c
            .modules
            .iter()
            .map(|m| format!("{} {} ({:x})", m.name, m.version, m.schema))
            .collect();
        self.log(format!(
            "start {name} as {:?} id {} wrong secret {} modules {}",
            c.role,
            c.node_id,
            c.wrong_secret,
            modules.join(", ")
        ));
        self.step(i, Input::Tick);
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Tick(i, inc) => {
                // Only the latest tick scheduled counts (a deadline that
                // moved earlier left an older one behind).
                let current = self.live(i, inc)
                    && self.nodes[i]
                        .running
                        .as_ref()
                        .is_some_and(|r| r.tick_at.is_some_and(|t| t <= self.now));
                if current {
                    if let Some(r) = &mut self.nodes[i].running {
                        r.tick_at = None;
                    }
                    self.ticking = true;
                    self.step(i, Input::Tick);
                    self.ticking = false;
                    if let Some(why) = self.spin.take() {
                        return Err(self.violation(Invariant::Status, why));
                    }
                }
            }
            Ev::Frame { net, to, bytes } => self.deliver(net, to, bytes),
            Ev::Closed { net, to, error } => {
                if let Some(conn) = self.net.end(net, to, self.nodes[to].incarnation) {
                    if let Some(r) = &mut self.nodes[to].running {
                        r.links.remove(&conn);
                    }
                    self.step(to, Input::Closed { conn, error });
                }
            }
            Ev::Sent { net, to, frames } => {
                if let Some(conn) = self.net.end(net, to, self.nodes[to].incarnation) {
                    self.step(to, Input::Sent { conn, frames });
                }
            }
            Ev::Dialed {
                node,
                inc,
                conn,
                net,
            } => {
                if self.live(node, inc) {
                    match net {
                        Ok(net) => {
                            if let Some(r) = &mut self.nodes[node].running {
                                r.links.insert(conn, net);
                            }
                            self.step(node, Input::Dialed { conn });
                        }
                        Err(error) => self.step(node, Input::DialFailed { conn, error }),
                    }
                }
            }
            Ev::Accept { node, net } => {
                let inc = self.nodes[node].incarnation;
                let Some(r) = &mut self.nodes[node].running else {
                    return Ok(());
                };
                let conn = r.next_accepted;
                r.next_accepted += 1;
                if self.net.accepted(net, node, inc, conn) {
                    r.links.insert(conn, net);
                    let addr = format!("sim link {net}");
                    self.step(node, Input::Accepted { conn, addr });
                }
            }
            Ev::StoreDone(i, inc) => {
                if self.live(i, inc) {
                    self.store_done(i);
                }
            }
            Ev::WitnessRequest {
                from,
                inc,
                id,
                action,
            } => self.witness_request(from, inc, id, action),
            Ev::WitnessAnswer { to, inc, event } => {
                let lost = self.witness.as_ref().is_none_or(|w| w.cut[to]);
                if !lost && self.live(to, inc) {
                    self.step(to, Input::Lease(event));
                }
            }
            Ev::Fault(f) => self.fault(f),
            Ev::Undo(u) => self.undo(u),
            Ev::Write(i) => {
                if self.healed.is_none() {
                    self.write(i)?;
                    let d = self.rng.ms(20, 250);
                    self.after(d, Ev::Write(i));
                }
            }
            Ev::Heal => self.heal(),
        }
        Ok(())
    }

    fn live(&self, i: usize, inc: u64) -> bool {
        self.nodes[i].running.is_some() && self.nodes[i].incarnation == inc
    }

    /// Feeds an input to node `i` and carries out what it answers.
    fn step(&mut self, i: usize, input: Input) {
        let now = self.now;
        if self.cfg.trace {
            let line = format!("{} <- {}", self.nodes[i].name(), short_input(&input));
            self.log(line);
        }
        self.drive(i, |core| core.step(now, input));
    }

    fn command(&mut self, i: usize, command: Command) {
        let now = self.now;
        self.drive(i, |core| core.command(now, 1, command));
    }

    /// Runs `f` on node `i`'s core, notes a claim it made or adopted, and
    /// carries out what it answered.
    fn drive(&mut self, i: usize, f: impl FnOnce(&mut crate::engine::NodeCore) -> Vec<Output>) {
        let Some(r) = &mut self.nodes[i].running else {
            return;
        };
        let before = r.core.machine().map(|m| m.claim().clone());
        let outputs = f(&mut r.core);
        let after = r.core.machine().map(|m| m.claim().clone());
        if before != after {
            if let Some(c) = &after {
                let id = self.nodes[i].config.node_id.clone();
                self.check.claimed(i, &id, c, self.now);
            }
        }
        self.carry_out(i, outputs);
        self.reschedule(i);
    }

    fn reschedule(&mut self, i: usize) {
        let inc = self.nodes[i].incarnation;
        let Some(r) = &mut self.nodes[i].running else {
            return;
        };
        let Some(d) = r.core.deadline() else {
            return;
        };
        if d <= self.now && self.ticking {
            // A tick that leaves its own deadline in the past would spin the
            // node task.
            self.spin = Some(format!(
                "{} asks for a tick at {d} right after one (side, machine, claim: {:?}; {:?})",
                IDS_[i],
                r.core.deadlines(),
                r.core.machine()
            ));
        }
        let d = d.max(self.now);
        if r.tick_at.is_some_and(|t| t <= d) {
            return;
        }
        r.tick_at = Some(d);
        self.at(d, Ev::Tick(i, inc));
    }

    fn carry_out(&mut self, i: usize, outputs: Vec<Output>) {
        for o in outputs {
            if self.cfg.trace {
                let line = format!("{} -> {}", self.nodes[i].name(), short_output(&o));
                self.log(line);
            }
            match o {
                Output::Dial { conn, probe } => self.dial(i, conn, probe),
                Output::Send { conn, msg } => {
                    let Some(net) = self.nodes[i]
                        .running
                        .as_ref()
                        .and_then(|r| r.links.get(&conn).copied())
                    else {
                        continue;
                    };
                    if let crate::protocol::Message::Heartbeat { .. } = &msg {
                        self.check.heartbeat_sent(i);
                    }
                    let stream = crate::engine::is_stream_frame(&msg);
                    let bytes = crate::codec::encode(&msg);
                    self.send(i, net, bytes, stream);
                }
                Output::Authenticated { .. } => {}
                Output::Close { conn } => {
                    let net = self.nodes[i]
                        .running
                        .as_mut()
                        .and_then(|r| r.links.remove(&conn));
                    if let Some(net) = net {
                        self.close(i, net);
                    }
                }
                Output::Store { id, op } => self.submit(i, id, op),
                Output::Acked { position, .. } => self.check.acked(i, position),
                Output::Gate(reason) => {
                    if let Some(r) = &self.nodes[i].running {
                        r.store.set_write_gate(reason);
                    }
                }
                Output::Reply { result, .. } => {
                    let name = self.nodes[i].name();
                    self.log(format!("{name}: operator request answered {result:?}"));
                    self.report.replies.push(format!("{name}: {result:?}"));
                }
                Output::Stopped => {}
                Output::Lease(action) => self.ask_witness(i, action),
            }
        }
    }

    fn latency(&mut self) -> Duration {
        self.rng.us(40, 400) + self.net.delay
    }

    /// Node `i` sends a lease request to the witness.
    fn ask_witness(&mut self, i: usize, action: LeaseAction) {
        let inc = self.nodes[i].incarnation;
        let id = self.nodes[i].config.node_id.clone();
        let Some(w) = &mut self.witness else {
            return;
        };
        if w.cut[i] {
            return;
        }
        let l = w.latency();
        self.after(
            l,
            Ev::WitnessRequest {
                from: i,
                inc,
                id,
                action,
            },
        );
    }

    /// A lease request reaches the witness: applied if it runs, answered
    /// (the answer may come after its node gave up, or not at all).
    fn witness_request(&mut self, from: usize, inc: u64, id: String, action: LeaseAction) {
        let now = self.now;
        let Some(w) = &mut self.witness else {
            return;
        };
        if w.cut[from] {
            return;
        }
        let event = if w.down {
            if !w.rng().chance(0.5) {
                return;
            }
            LeaseEvent::Unreachable {
                seq: action.seq(),
                error: "connection refused".into(),
            }
        } else {
            w.apply(now, &id, &action)
        };
        let l = w.latency();
        if self.cfg.trace {
            let line = format!(
                "witness <- {id}: {action:?} -> {event:?} ({})",
                self.witness
                    .as_ref()
                    .map_or(String::new(), |w| w.describe(now))
            );
            self.log(line);
        }
        self.after(
            l,
            Ev::WitnessAnswer {
                to: from,
                inc,
                event,
            },
        );
    }

    fn dial(&mut self, i: usize, conn: ConnId, probe: bool) {
        let to = match (probe, self.nodes[i].config.probe) {
            (true, Some(t)) => t,
            _ => 1 - i,
        };
        let inc = self.nodes[i].incarnation;
        if to != i && self.net.blocked(i, to) {
            // No answer at all: the dial times out in the core.
            return;
        }
        let rtt = self.latency() * 2;
        let target = &self.nodes[to];
        let listening =
            !target.down && target.running.is_some() && target.config.role == NodeRole::Master;
        if !listening {
            self.after(
                rtt,
                Ev::Dialed {
                    node: i,
                    inc,
                    conn,
                    net: Err("connection refused".into()),
                },
            );
            return;
        }
        // The acceptor learns of the connection before the dialer can send.
        let net = self.net.open(i, inc, conn, to);
        let syn = self.latency();
        self.after(syn, Ev::Accept { node: to, net });
        let ack = self.latency();
        self.after(
            syn + ack,
            Ev::Dialed {
                node: i,
                inc,
                conn,
                net: Ok(net),
            },
        );
    }

    fn send(&mut self, from: usize, net: u64, bytes: Vec<u8>, stream: bool) {
        let Some(to) = self.net.other(net, from) else {
            return;
        };
        let tiny = self.rng.us(5, 50);
        // Like a link's writer, only stream frames are reported sent.
        if stream {
            self.after(
                tiny,
                Ev::Sent {
                    net,
                    to: from,
                    frames: 1,
                },
            );
        }
        if !self.net.is_open(net) {
            return;
        }
        if self.rng.chance(self.net.loss) {
            return;
        }
        if self.net.blocked(from, to) {
            // TCP retransmits: the frame arrives once the path is back.
            self.held[to].push(Ev::Frame { net, to, bytes });
            return;
        }
        let l = self.latency();
        let at = self.net.fifo(net, to, self.now + l);
        let dup = self.rng.chance(self.net.duplicate);
        if dup {
            self.at(
                at,
                Ev::Frame {
                    net,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
        self.at(at, Ev::Frame { net, to, bytes });
    }

    fn close(&mut self, from: usize, net: u64) {
        let Some(to) = self.net.other(net, from) else {
            return;
        };
        self.net.close(net);
        let closed = Ev::Closed {
            net,
            to,
            error: None,
        };
        if self.net.blocked(from, to) {
            self.held[to].push(closed);
        } else {
            let l = self.latency();
            let at = self.net.fifo(net, to, self.now + l);
            self.at(at, closed);
        }
    }

    /// The path towards each node that is open again delivers what it held.
    fn release(&mut self) {
        for to in 0..2 {
            if self.net.blocked(1 - to, to) {
                continue;
            }
            for ev in std::mem::take(&mut self.held[to]) {
                let net = match &ev {
                    Ev::Frame { net, .. } | Ev::Closed { net, .. } => *net,
                    _ => continue,
                };
                let l = self.latency();
                let at = self.net.fifo(net, to, self.now + l);
                self.at(at, ev);
            }
        }
    }

    fn deliver(&mut self, net: u64, to: usize, bytes: Vec<u8>) {
        let inc = self.nodes[to].incarnation;
        let Some(conn) = self.net.end(net, to, inc) else {
            return;
        };
        let Some(r) = &self.nodes[to].running else {
            return;
        };
        if !r.links.contains_key(&conn) {
            return;
        }
        let limits = if r.core.authenticated(conn) {
            crate::codec::Limits::default()
        } else {
            crate::codec::Limits::handshake()
        };
        let input = match crate::codec::decode(&bytes, &limits) {
            Ok(msg) => {
                self.check.heard(to, self.now);
                self.nodes[to].heard_at = Some(self.now);
                if let crate::protocol::Message::Heartbeat { .. } = &msg {
                    if r.core.authenticated(conn) {
                        self.nodes[to].heard_claim = true;
                    }
                }
                Input::Frame { conn, msg }
            }
            Err(e) => Input::Malformed {
                conn,
                error: e.to_string(),
            },
        };
        self.step(to, input);
    }

    fn submit(&mut self, i: usize, id: OpId, op: StoreOp) {
        let Some(r) = &mut self.nodes[i].running else {
            return;
        };
        r.ops.push_back((id, op));
        if !r.busy {
            self.start_op(i);
        }
    }

    fn start_op(&mut self, i: usize) {
        let inc = self.nodes[i].incarnation;
        let faults = self.nodes[i].faults.lock().clone();
        let Some(r) = &mut self.nodes[i].running else {
            return;
        };
        let Some((_, op)) = r.ops.front() else {
            return;
        };
        r.busy = true;
        let write = node::writes(op);
        let base = match op {
            StoreOp::Verify => Duration::from_micros(500 + 20 * r.store.position().min(5000)),
            StoreOp::RestoreChunk { rows, .. } => {
                Duration::from_micros(200 + 10 * rows.len() as u64)
            }
            StoreOp::Apply(e) => Duration::from_micros(150 + 30 * e.len() as u64),
            _ => Duration::from_micros(100),
        };
        let mut cost = base + self.rng.us(0, 300);
        if write {
            if let Some(slow) = faults.slow {
                cost += slow;
            }
            if let Some(wait) = faults.locked {
                // The busy timeout runs out before the lock error.
                cost += wait;
            }
        }
        self.after(cost, Ev::StoreDone(i, inc));
    }

    fn store_done(&mut self, i: usize) {
        let Some(r) = &mut self.nodes[i].running else {
            return;
        };
        let Some((id, op)) = r.ops.pop_front() else {
            return;
        };
        r.busy = false;
        let results = r.worker.run(id, op);
        for (id, result) in results {
            self.step(i, Input::Store { id, result });
        }
        if self.nodes[i]
            .running
            .as_ref()
            .is_some_and(|r| !r.ops.is_empty() && !r.busy)
        {
            self.start_op(i);
        }
    }

    /// The module on node `i` writes (and, if active, posts runtime state).
    fn write(&mut self, i: usize) -> Result<(), Violation> {
        if !self.nodes[i].awake(self.now) {
            return Ok(());
        }
        let faults = self.nodes[i].faults.lock().clone();
        let tx = self.next_tx;
        let Some(r) = &self.nodes[i].running else {
            return Ok(());
        };
        let active = r
            .core
            .machine()
            .is_some_and(|m| m.activity(self.now) == ActivityLevel::Active);
        if active {
            // As a module does: change its own state, then post the change.
            *r.counter.0.lock() += 1;
            let _ = r.runtime.post_typed("counter", &1u64);
            self.step(i, Input::RuntimeChanged);
        }
        let Some(r) = &self.nodes[i].running else {
            return Ok(());
        };
        if faults.disk_full || faults.locked.is_some() {
            return Ok(());
        }
        let pick = (!self.ids.is_empty())
            .then(|| self.ids[self.rng.below(self.ids.len() as u64) as usize]);
        let rows = 1 + self.rng.below(4) as i64;
        let delete = self.rng.chance(0.15);
        let result = r.store.write(|t| {
            let mut new = Vec::new();
            for n in 0..rows {
                new.push(t.insert(&SimRow {
                    id: 0,
                    tx,
                    n,
                    label: format!("tx {tx} row {n}"),
                })?);
            }
            if let Some(id) = pick {
                if delete {
                    let _ = t.delete::<SimRow>(id);
                } else if let Some(mut row) = t.get::<SimRow>(id)? {
                    row.label = format!("updated by tx {tx}");
                    t.update(&row)?;
                }
            }
            Ok(new)
        });
        match result {
            Ok(new) => {
                self.next_tx += 1;
                let (p, d) = (r.store.position(), r.store.digest());
                // Node 0 is the master in every configuration; node 1 commits
                // only when it is misconfigured as master.
                let true_master = i == 0;
                self.check.committed(i, p, d, true_master, self.now)?;
                if true_master {
                    self.report.commits += 1;
                    self.ids.extend(new);
                    if delete {
                        if let Some(id) = pick {
                            self.ids.retain(|x| *x != id);
                        }
                    }
                }
                self.step(i, Input::Head(p));
            }
            Err(persist_core::Error::NotMaster { .. }) => {}
            Err(e) => {
                let name = self.nodes[i].name();
                self.trace(|| format!("{name}: write failed: {e}"));
            }
        }
        Ok(())
    }

    fn fault(&mut self, f: Fault) {
        if self.healed.is_some() {
            return;
        }
        self.report.faults += 1;
        self.log(format!("fault {f:?}"));
        match f {
            Fault::Crash(i, d) | Fault::CrashAndTamper(i, d) => {
                if self.nodes[i].down {
                    return;
                }
                self.crash(i);
                if matches!(f, Fault::CrashAndTamper(..)) {
                    self.tamper(i);
                }
                self.after(d, Ev::Undo(Undo::Restart(i)));
            }
            Fault::Tamper(i) => {
                if self.nodes[i].running.is_some() {
                    self.tamper(i);
                }
            }
            Fault::Freeze(i, d) => {
                if self.nodes[i].running.is_some() && self.nodes[i].frozen_until.is_none() {
                    self.nodes[i].frozen_until = Some(self.now + d);
                    self.check.frozen(i, self.now);
                    self.after(d, Ev::Undo(Undo::Unfreeze(i)));
                }
            }
            Fault::Partition(d) => {
                self.net.partitioned = true;
                self.check.net_fault(self.now);
                self.after(d, Ev::Undo(Undo::Partition));
            }
            Fault::Reset => {
                for (net, a, b) in self.net.reset() {
                    for to in [a, b] {
                        let l = self.latency();
                        self.after(
                            l,
                            Ev::Closed {
                                net,
                                to,
                                error: Some("connection reset".into()),
                            },
                        );
                    }
                }
                self.check.net_fault(self.now);
            }
            Fault::OneWay(to, d) => {
                self.net.drop_to[to] = true;
                self.check.net_fault(self.now);
                self.after(d, Ev::Undo(Undo::OneWay(to)));
            }
            Fault::Delay(delay, d) => {
                self.net.delay = delay;
                self.check.net_fault(self.now);
                self.after(d, Ev::Undo(Undo::Delay));
            }
            Fault::Duplicate(p, d) => {
                self.net.duplicate = p;
                self.after(d, Ev::Undo(Undo::Duplicate));
            }
            Fault::Loss(p, d) => {
                self.lossy = true;
                self.net.loss = p;
                self.check.net_fault(self.now);
                self.after(d, Ev::Undo(Undo::Loss));
            }
            Fault::DiskFull(i, d) => {
                self.nodes[i].faults.lock().disk_full = true;
                self.after(d, Ev::Undo(Undo::DiskFull(i)));
            }
            Fault::Locked(i, wait, d) => {
                self.nodes[i].faults.lock().locked = Some(wait);
                self.after(d, Ev::Undo(Undo::Locked(i)));
            }
            Fault::SlowFsync(i, slow, d) => {
                self.nodes[i].faults.lock().slow = Some(slow);
                self.after(d, Ev::Undo(Undo::Slow(i)));
            }
            Fault::Operator(i, c) => {
                if self.nodes[i].awake(self.now) {
                    self.command(i, c);
                }
            }
            Fault::Bulk(n) => self.bulk(n),
            Fault::WitnessDown(d) => {
                if let Some(w) = &mut self.witness {
                    w.down = true;
                    w.refresh(self.now);
                    self.after(d, Ev::Undo(Undo::WitnessUp));
                }
            }
            Fault::WitnessCut(i, d) => {
                if let Some(w) = &mut self.witness {
                    w.cut[i] = true;
                    w.refresh(self.now);
                    self.after(d, Ev::Undo(Undo::WitnessReach(i)));
                }
            }
            Fault::WitnessSlow(extra, d) => {
                if let Some(w) = &mut self.witness {
                    w.extra = extra;
                    w.refresh(self.now);
                    self.after(d, Ev::Undo(Undo::WitnessFast));
                }
            }
            Fault::Isolate(i, d) => {
                self.net.partitioned = true;
                self.check.net_fault(self.now);
                self.after(d, Ev::Undo(Undo::Partition));
                if let Some(w) = &mut self.witness {
                    w.cut[i] = true;
                    w.refresh(self.now);
                    self.after(d, Ev::Undo(Undo::WitnessReach(i)));
                }
            }
            Fault::Mistake(m, d) => {
                self.mistake = Some(m);
                self.check.mistake(Some(m), self.now);
                match m {
                    Mistake::WrongSecret => {
                        self.nodes[1].config.wrong_secret = true;
                        self.restart_now(1);
                    }
                    Mistake::SameId => {
                        self.nodes[1].config.node_id = node::IDS[0].to_owned();
                        self.restart_now(1);
                    }
                    Mistake::BothMasters => {
                        self.nodes[1].config.role = NodeRole::Master;
                        self.nodes[1].config.probe = Some(0);
                        self.restart_now(1);
                    }
                    Mistake::SelfProbe => {
                        self.nodes[0].config.probe = Some(0);
                        self.restart_now(0);
                    }
                    Mistake::ModuleMismatch => {
                        self.nodes[1].config.modules[0].version = "2.0.0".into();
                        self.nodes[1].config.modules[0].schema = node::SIM_MODULE_SCHEMA + 1;
                        self.restart_now(1);
                    }
                }
                self.after(d, Ev::Undo(Undo::Mistake(m)));
            }
        }
    }

    fn undo(&mut self, u: Undo) {
        match u {
            Undo::Restart(i) => {
                if self.nodes[i].down {
                    self.start(i);
                }
            }
            Undo::Unfreeze(i) => {
                if self.nodes[i].frozen_until.is_some_and(|t| t <= self.now) {
                    self.nodes[i].frozen_until = None;
                    self.nodes[i].awake_since = self.now;
                    self.check.resumed(i, self.now);
                    // What arrived meanwhile, in order, then its timers (the
                    // node task reads pending inputs before overdue deadlines:
                    // the ticks that came due meanwhile are the one below).
                    for ev in std::mem::take(&mut self.deferred[i]) {
                        if !matches!(ev, Ev::Tick(..)) {
                            self.at(self.now, ev);
                        }
                    }
                    let inc = self.nodes[i].incarnation;
                    if let Some(r) = &mut self.nodes[i].running {
                        r.tick_at = Some(self.now);
                    }
                    self.at(self.now, Ev::Tick(i, inc));
                }
            }
            Undo::Partition => {
                self.net.partitioned = false;
                self.check.net_fault(self.now);
                self.release();
            }
            Undo::OneWay(to) => {
                self.net.drop_to[to] = false;
                self.check.net_fault(self.now);
                self.release();
            }
            Undo::Delay => {
                self.net.delay = Duration::ZERO;
                self.check.net_fault(self.now);
            }
            Undo::Duplicate => self.net.duplicate = 0.0,
            Undo::Loss => {
                self.net.loss = 0.0;
                self.check.net_fault(self.now);
            }
            Undo::DiskFull(i) => self.nodes[i].faults.lock().disk_full = false,
            Undo::Locked(i) => self.nodes[i].faults.lock().locked = None,
            Undo::Slow(i) => self.nodes[i].faults.lock().slow = None,
            Undo::Mistake(m) => {
                if self.mistake != Some(m) {
                    return;
                }
                self.fix_mistake();
            }
            Undo::WitnessUp | Undo::WitnessReach(_) | Undo::WitnessFast => {
                let now = self.now;
                if let Some(w) = &mut self.witness {
                    match u {
                        Undo::WitnessUp => w.down = false,
                        Undo::WitnessReach(i) => w.cut[i] = false,
                        _ => w.extra = Duration::ZERO,
                    }
                    w.refresh(now);
                }
            }
        }
    }

    /// The operator fixes the configuration and restarts the nodes it touched.
    fn fix_mistake(&mut self) {
        let Some(m) = self.mistake.take() else {
            return;
        };
        self.log(format!("the operator fixes {m:?}"));
        self.nodes[0].config = NodeConfig::correct(0);
        self.nodes[1].config = NodeConfig::correct(1);
        match m {
            Mistake::WrongSecret | Mistake::SameId | Mistake::ModuleMismatch => self.restart_now(1),
            Mistake::SelfProbe => self.restart_now(0),
            // Two masters: both refuse writes until both are restarted.
            Mistake::BothMasters => {
                self.restart_now(0);
                self.restart_now(1);
            }
        }
        self.check.mistake(None, self.now);
    }

    fn bulk(&mut self, n: usize) {
        let tx = self.next_tx;
        let Some(r) = &self.nodes[0].running else {
            return;
        };
        let result = r.store.write(|t| {
            let mut ids = Vec::with_capacity(n);
            for k in 0..n {
                ids.push(t.insert(&SimRow {
                    id: 0,
                    tx,
                    n: k as i64,
                    label: format!("bulk {tx} row {k}"),
                })?);
            }
            Ok(ids)
        });
        if let Ok(ids) = result {
            self.next_tx += 1;
            let (p, d) = (r.store.position(), r.store.digest());
            let _ = self.check.committed(0, p, d, true, self.now);
            self.report.commits += 1;
            self.ids.extend(ids);
            self.step(0, Input::Head(p));
        }
    }

    fn crash(&mut self, i: usize) {
        let name = self.nodes[i].name();
        self.log(format!("{name} crashes"));
        self.deferred[i].clear();
        if let Some(r) = self.nodes[i].crash() {
            for net in r.links.values() {
                if let Some(to) = self.net.other(*net, i) {
                    self.net.close(*net);
                    let reset = Ev::Closed {
                        net: *net,
                        to,
                        error: Some("connection reset by peer".into()),
                    };
                    if self.net.blocked(i, to) {
                        self.held[to].push(reset);
                    } else {
                        let l = self.latency();
                        self.after(l, reset);
                    }
                }
            }
            // Dropping the worker rolls back a restore in progress, then the
            // store closes: what was not committed is gone.
            drop(r);
        }
        self.check.crashed(i, self.now);
    }

    fn restart_now(&mut self, i: usize) {
        if !self.nodes[i].down {
            self.crash(i);
        }
        self.start(i);
    }

    /// A row of node `i`'s database changed behind the library's back
    /// (while the node is down, or next to it running).
    fn tamper(&mut self, i: usize) {
        let path = self.nodes[i].path.clone();
        let Ok(mut conn) = persist_core::backend::sqlite::open(
            &persist_core::backend::sqlite::SqliteOptions::new(path),
        ) else {
            return;
        };
        let _ = conn.batch(
            "UPDATE sim_row SET label = 'changed behind the library''s back' \
             WHERE id = (SELECT MIN(id) FROM sim_row)",
        );
        let name = self.nodes[i].name();
        self.log(format!("{name}: a row changed behind the library's back"));
    }

    fn heal(&mut self) {
        self.log("faults stop".into());
        self.net = Net {
            conns: std::mem::take(&mut self.net.conns),
            next: self.net.next,
            ..Net::default()
        };
        self.release();
        for i in 0..2 {
            *self.nodes[i].faults.lock() = Default::default();
            if self.nodes[i].frozen_until.is_some() {
                self.nodes[i].frozen_until = Some(self.now);
                self.after(Duration::ZERO, Ev::Undo(Undo::Unfreeze(i)));
            }
        }
        if self.mistake.is_some() {
            self.fix_mistake();
        }
        if let Some(w) = &mut self.witness {
            w.heal(self.now);
        }
        for i in 0..2 {
            if self.nodes[i].down {
                self.start(i);
            }
        }
        self.check.net_fault(self.now);
        self.healed = Some(self.now);
    }

    fn check_all(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let r = self
            .check
            .after_event(now, &self.nodes, &self.net, self.witness.as_ref());
        r.map_err(|(inv, msg)| {
            let d = self.describe();
            self.violation(inv, format!("{msg} [{d}]"))
        })
    }

    /// Which nodes are Active now.
    fn actives(&self) -> [bool; 2] {
        [0, 1].map(|i| {
            self.nodes[i].running.as_ref().is_some_and(|r| {
                r.core
                    .machine()
                    .is_some_and(|m| m.activity(self.now) == ActivityLevel::Active)
            })
        })
    }

    fn converged(&self) -> bool {
        let (Some(a), Some(b)) = (&self.nodes[0].running, &self.nodes[1].running) else {
            return false;
        };
        if !(self.nodes[0].awake(self.now) && self.nodes[1].awake(self.now)) {
            return false;
        }
        let act = |r: &node::Running| {
            r.core
                .machine()
                .is_some_and(|m| m.activity(self.now) == ActivityLevel::Active)
        };
        let (ra, rb) = (a.core.report(self.now), b.core.report(self.now));
        // Both show the version difference of the workload's module.
        let warns = |r: &crate::engine::NodeReport| {
            r.module_warnings.len() == 1 && r.module_warnings[0].starts_with("module `sim`")
        };
        a.store.position() == b.store.position()
            && a.store.digest() == b.store.digest()
            && (act(a) != act(b))
            && a.store.write_gate().is_none()
            && ra.connected
            && rb.connected
            && warns(&ra)
            && warns(&rb)
    }

    /// Same rows on both nodes, and each node's rows match its digest.
    fn same_data(&self) -> bool {
        let (Some(a), Some(b)) = (&self.nodes[0].running, &self.nodes[1].running) else {
            return false;
        };
        let rows = |s: &Store| s.list::<SimRow>().ok();
        let consistent = |s: &Store| s.verify().is_ok_and(|v| v.is_consistent());
        let ok = rows(&a.store).is_some()
            && rows(&a.store) == rows(&b.store)
            && consistent(&a.store)
            && consistent(&b.store)
            // Runtime state heals a gap at the next update; a last update
            // lost on the wire (the frame loss fault, which TCP never shows)
            // stays lost, so only a seed without it must agree.
            && (self.lossy || *a.counter.0.lock() == *b.counter.0.lock());
        if !ok && std::env::var_os("PERSIST_SIM_DEBUG").is_some() {
            eprintln!(
                "{}: rows equal {} consistent {} {} counters {} {}",
                self.now,
                rows(&a.store) == rows(&b.store),
                consistent(&a.store),
                consistent(&b.store),
                *a.counter.0.lock(),
                *b.counter.0.lock()
            );
        }
        ok
    }

    fn finish(&mut self) {
        self.report.acked = self.check.max_acked();
        self.report.takeovers = self.check.takeovers();
        self.report.reports = self.check.reports();
        (
            self.report.overlaps,
            self.report.overlap_max,
            self.report.first_overlap,
        ) = self.check.overlaps();
        if let Some(w) = &self.witness {
            self.report.lease_handovers = w.handovers;
            self.report.lease_requests = w.requests;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(r) = &n.running {
                let report = r.core.report(self.now);
                self.report.resyncs += report.resyncs;
                // Node 1 is the backup (gw-b).
                if i == 1 {
                    self.report.repairs += report.scrub.repairs;
                }
            }
        }
    }
}

fn short_msg(m: &crate::protocol::Message) -> String {
    use crate::protocol::Message;
    match m {
        Message::Heartbeat {
            epoch,
            position,
            active,
            ..
        } => format!("Heartbeat(e{epoch} p{position} {active:?})"),
        Message::Entries(e) => format!(
            "Entries({}..{})",
            e.first().map_or(0, |e| e.position),
            e.last().map_or(0, |e| e.position)
        ),
        Message::Ack { position } => format!("Ack({position})"),
        Message::SyncRequest {
            position,
            force_snapshot,
            role,
            ..
        } => format!("SyncRequest(p{position} {force_snapshot:?} {role:?})"),
        Message::SyncPlan(p) => format!("SyncPlan({p:?})"),
        Message::Refused { reason } => format!("Refused({reason:?})"),
        Message::SnapshotRows { table, rows } => format!("SnapshotRows(t{table} {})", rows.len()),
        other => other.kind().to_string(),
    }
}

fn short_input(i: &Input) -> String {
    match i {
        Input::Frame { conn, msg } => format!("frame {conn}: {}", short_msg(msg)),
        Input::Store { id, result } => format!(
            "store {id}: {}",
            match result {
                Ok(v) => format!("{v:?}").chars().take(80).collect::<String>(),
                Err(e) => format!("error {e}"),
            }
        ),
        Input::Sent { .. } => "sent".into(),
        other => format!("{other:?}").chars().take(120).collect(),
    }
}

fn short_output(o: &Output) -> String {
    match o {
        Output::Send { conn, msg } => format!("send {conn}: {}", short_msg(msg)),
        Output::Store { id, op } => format!(
            "op {id}: {}",
            format!("{op:?}").chars().take(60).collect::<String>()
        ),
        other => format!("{other:?}").chars().take(120).collect(),
    }
}
