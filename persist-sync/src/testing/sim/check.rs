//! The invariants, checked after every event.
//!
//! 1. At most one node Active once the link has been up for one heartbeat
//!    plus a claim exchange; never both accepting config writes (two nodes
//!    both configured as master: once the probe found them).
//! 2. After the master dies, freezes, or its link goes silent, the backup is
//!    Active within failover timeout + one heartbeat, whatever its store
//!    was doing.
//! 3. The backup takes over only after the master has been silent for the
//!    failover timeout (a backup whose own store fails does not take over
//!    from a master it still hears; a refusal counts as hearing it).
//! 4. Every write acknowledged by the backup is on the backup; each node only
//!    ever shows whole transactions in the master's commit order (its
//!    digest at its position is the master's digest at that position). A
//!    backup whose module records differ from the master's never syncs.
//! 5. Once faults stop, the nodes converge (checked by the world).
//! 6. Every status read answers: the core never waits (by construction); the
//!    world reads every node's report after every event.
//! 7. A node never holds an epoch lower than the one it stored, and is not
//!    Active before its startup allowance unless it heard its peer's claim.
//!
//! # With a witness
//! - 1 becomes: **never both nodes Active at the same instant**, whatever the
//!   link does, and never both nodes' leases counting at once. (Not while
//!   the backup is configured with the master's id: the witness cannot tell
//!   two nodes of the same name apart, and such a backup never acts anyway
//!   once it has met the master.) One exception unless
//!   [`SimConfig::strict_witness`]: a node Active on its peer's word alone
//!   (its lease does not count) next to the lease holder, for at most half
//!   the failover timeout plus the longest frame transit. The peer's word
//!   counts from when it arrived, not from when it was said: a heartbeat
//!   that waited in a frozen node's socket, or crossed a half-open link
//!   slowly, names the node active after its peer already took the lease.
//!   Each such overlap is counted and reported (`Report::overlaps`).
//! - 2 holds only where the backup can win the lease, with a bound that
//!   waits for the master's lease to end on the server (see
//!   [`Checker::takeover_due`]).

use std::collections::BTreeMap;
use std::time::Duration;

use persist_core::{Claim, Digest};

use super::net::Net;
use super::node::{SimNode, IDS};
use super::witness::{SimWitness, MAX_LATENCY};
use super::{Mistake, SimConfig};
use crate::clock::Time;
use crate::protocol::NodeRole;
use crate::redundancy::machine::ActivityLevel;

/// The invariants, numbered as in the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Invariant {
    /// At most one node Active on a healthy link; never two accepting writes.
    OneActive = 1,
    /// The backup takes over in time.
    Takeover = 2,
    /// The backup takes over only after the master was silent.
    NoPrematureTakeover = 3,
    /// Acknowledged writes survive; whole transactions in commit order.
    Durability = 4,
    /// The nodes converge once faults stop.
    Convergence = 5,
    /// Status reads never wait.
    Status = 6,
    /// Epochs never go back; no early Active on a stored claim.
    Epochs = 7,
}

impl Invariant {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::OneActive => "at most one active node",
            Invariant::Takeover => "takeover within the failover timeout",
            Invariant::NoPrematureTakeover => "no takeover next to a master still heard",
            Invariant::Durability => "acknowledged writes kept, whole transactions in order",
            Invariant::Convergence => "convergence after the faults",
            Invariant::Status => "status answers",
            Invariant::Epochs => "epochs and stored claims",
        }
    }
}

type Failed = (Invariant, String);

pub struct Checker {
    heartbeat: Duration,
    failover: Duration,
    allowance: Duration,
    started: [Time; 2],
    awake_since: [Time; 2],
    /// When a frame of the other node last reached this incarnation.
    heard: [Option<Time>; 2],
    net_changed: Time,
    mistake: Option<(Mistake, Time)>,
    healthy_since: Option<Time>,
    /// The master's commits: position -> digest after it.
    commits: BTreeMap<u64, Digest>,
    /// Data that left the master's history (a node misconfigured as master
    /// wrote its own): exempt until it matches the master's again.
    tainted: [bool; 2],
    max_acked: u64,
    takeovers: u64,
    /// A takeover the last event made (checked against silence).
    pending_takeover: Option<Time>,
    /// When each node last made a claim of its own.
    own_claim: [Option<Time>; 2],
    /// Since when both nodes run and reach each other.
    reachable_since: Option<Time>,
    /// Since when the master runs and reaches the backup well enough to be
    /// heard (no loss, no delay near the failover timeout).
    master_heard_since: Option<Time>,
    handshake: Duration,
    reports: u64,
    /// With a witness, both Active with one on its peer's word alone is a
    /// violation at once (see [`super::SimConfig::strict_witness`]).
    strict_witness: bool,
    /// Since when both nodes are Active, one on its peer's word alone.
    overlap_since: Option<Time>,
    /// How many such overlaps, the longest, and when the first began.
    overlaps: u64,
    overlap_max: Duration,
    first_overlap: Option<Time>,
}

/// The longest a frame takes between the nodes in the simulator when no
/// partition holds it: the largest extra delay plus the largest latency.
const MAX_FRAME_TRANSIT: Duration = Duration::from_micros(700_400);

impl Checker {
    pub fn new(cfg: &SimConfig) -> Checker {
        Checker {
            heartbeat: cfg.heartbeat,
            failover: cfg.failover_timeout,
            allowance: cfg.startup_allowance,
            started: [Time::ZERO; 2],
            awake_since: [Time::ZERO; 2],
            heard: [None; 2],
            net_changed: Time::ZERO,
            mistake: None,
            healthy_since: None,
            commits: BTreeMap::new(),
            tainted: [false; 2],
            max_acked: 0,
            takeovers: 0,
            pending_takeover: None,
            own_claim: [None; 2],
            reachable_since: None,
            master_heard_since: None,
            handshake: Duration::from_millis(1000),
            reports: 0,
            strict_witness: cfg.strict_witness,
            overlap_since: None,
            overlaps: 0,
            overlap_max: Duration::ZERO,
            first_overlap: None,
        }
    }

    pub fn max_acked(&self) -> u64 {
        self.max_acked
    }

    pub fn takeovers(&self) -> u64 {
        self.takeovers
    }

    /// With a witness: both nodes Active with one on its peer's word alone
    /// (how often, the longest, when first).
    pub fn overlaps(&self) -> (u64, Duration, Option<Time>) {
        (self.overlaps, self.overlap_max, self.first_overlap)
    }

    pub fn started(&mut self, i: usize, now: Time) {
        self.started[i] = now;
        self.awake_since[i] = now;
        self.heard[i] = None;
    }

    pub fn crashed(&mut self, i: usize, _now: Time) {
        self.heard[i] = None;
    }

    pub fn frozen(&mut self, _i: usize, _now: Time) {}

    pub fn resumed(&mut self, i: usize, now: Time) {
        self.awake_since[i] = now;
    }

    pub fn heard(&mut self, i: usize, now: Time) {
        self.heard[i] = Some(now);
    }

    pub fn heartbeat_sent(&mut self, _i: usize) {}

    pub fn net_fault(&mut self, now: Time) {
        self.net_changed = now;
    }

    pub fn mistake(&mut self, m: Option<Mistake>, now: Time) {
        if m == Some(Mistake::BothMasters) {
            self.tainted[1] = true;
        }
        self.mistake = m.map(|m| (m, now));
    }

    pub fn acked(&mut self, i: usize, position: u64) {
        if i == 0 && !self.tainted[1] {
            self.max_acked = self.max_acked.max(position);
        }
    }

    /// Node `i` committed a module write at `position`.
    pub fn committed(
        &mut self,
        i: usize,
        position: u64,
        digest: Digest,
        true_master: bool,
        now: Time,
    ) -> Result<(), super::Violation> {
        if true_master {
            self.commits.insert(position, digest);
            return Ok(());
        }
        let _ = now;
        // Only a node misconfigured as master may commit (its data leaves
        // the master's history until it resyncs).
        self.tainted[i] = true;
        Ok(())
    }

    /// A node's claim changed.
    /// Node `i`, configured with id `me`, now holds claim `c`.
    pub fn claimed(&mut self, i: usize, me: &str, c: &Claim, now: Time) {
        if c.by.as_deref() == Some(me) {
            self.own_claim[i] = Some(now);
        }
        if i == 1 && c.active.as_deref() == Some(me) && c.by.as_deref() == Some(me) {
            self.takeovers += 1;
            self.pending_takeover = Some(now);
        }
    }

    /// Status reports read so far.
    pub fn reports(&self) -> u64 {
        self.reports
    }

    /// Invariant 2: when the backup, running and not Active, must be Active
    /// at the latest (`None`: not required now).
    ///
    /// Without a witness: one heartbeat after the failover timeout has run
    /// since it last heard the master (or since its start plus
    /// max(allowance, failover timeout) if it never heard it), counted from
    /// when it last woke up at the earliest.
    ///
    /// With a witness the backup can only take over once it holds the
    /// lease, and it can only win the lease once the master's lease ended
    /// on the server (the master may keep renewing after the backup last
    /// heard it: a cut link with the master still reaching the witness
    /// rightly leaves the master Active for ever). So the bound holds only
    /// while the backup reaches the witness (its way is not cut, the
    /// witness is up and answers without extra delay), and it is
    ///
    /// ```text
    /// max(silent + failover timeout, woke up, lease of another node ended
    ///     on the server, reaches the witness since)
    ///   + heartbeat + renew_every + request_timeout + 3 × max witness latency
    /// ```
    ///
    /// From the last of those moments the backup wants the lease and the
    /// server has it free: a try that found the lease still taken retries
    /// after `renew_every` (its answer came at most one latency late), a
    /// request lost while the way was cut times out after
    /// `request_timeout` and retries after `renew_every / 2`, and the
    /// winning try takes a round trip; it takes over on that answer. For a
    /// master that dies (crash, freeze) at `c` with everything else
    /// healthy, its last renewal was written by `c + latency`, so its lease
    /// ended by `c + latency + ttl`, before `silent + failover timeout`
    /// (`ttl` is below the failover timeout): the bound is then the
    /// witness-less one plus `renew_every + request_timeout + 3 × latency`.
    fn takeover_due(&self, witness: Option<&SimWitness>) -> Option<Time> {
        let silent_from = match self.heard[1] {
            Some(h) => h + self.failover,
            None => self.started[1] + self.allowance.max(self.failover),
        };
        let from = silent_from.max(self.awake_since[1]);
        let Some(w) = witness else {
            return Some(from + self.heartbeat + Duration::from_millis(1));
        };
        let reach = w.reach_since(1)?;
        let s = &w.settings;
        Some(
            from.max(w.foreign_until()).max(reach)
                + self.heartbeat
                + s.renew_every
                + s.request_timeout
                + MAX_LATENCY * 3
                + Duration::from_millis(1),
        )
    }

    pub fn after_event(
        &mut self,
        now: Time,
        nodes: &[SimNode; 2],
        net: &Net,
        witness: Option<&SimWitness>,
    ) -> Result<(), Failed> {
        let active = |i: usize| {
            nodes[i].running.as_ref().is_some_and(|r| {
                r.core
                    .machine()
                    .is_some_and(|m| m.activity(now) == ActivityLevel::Active)
            })
        };
        // 6: every report is computed from the core alone.
        for n in nodes {
            if let Some(r) = &n.running {
                let _ = r.core.report(now);
                self.reports += 1;
            }
        }
        let hearable = nodes[0].awake(now)
            && nodes[1].awake(now)
            && !net.partitioned
            && !net.drop_to.iter().any(|d| *d)
            && net.loss == 0.0
            && net.delay.is_zero();
        if !hearable {
            self.master_heard_since = None;
        } else if self.master_heard_since.is_none() {
            self.master_heard_since = Some(now);
        }
        // 3: a takeover made in this event.
        if let Some(at) = self.pending_takeover.take() {
            // The master ran and was reachable long enough to be heard (a
            // dial in flight when a partition ended may take a handshake
            // timeout): a backup that did not hear it failed on its own.
            if let Some(since) = self.master_heard_since {
                let bound = self.failover + self.handshake + self.heartbeat;
                if nodes[1].config.role == NodeRole::Backup
                    && self.mistake.is_none()
                    && at.since(since) >= bound
                {
                    return Err((
                        Invariant::NoPrematureTakeover,
                        format!(
                            "the backup took over while the master ran and was reachable for {:?}",
                            at.since(since)
                        ),
                    ));
                }
            }
            if nodes[1].config.role == NodeRole::Backup {
                let silent = match self.heard[1] {
                    Some(h) => at.since(h),
                    None => at.since(self.started[1]) + self.failover,
                };
                if silent + Duration::from_micros(10) < self.failover {
                    return Err((
                        Invariant::NoPrematureTakeover,
                        format!(
                            "the backup took over {silent:?} after it last heard the master \
                             (failover timeout {:?})",
                            self.failover
                        ),
                    ));
                }
            }
        }
        let awake = [nodes[0].awake(now), nodes[1].awake(now)];
        // 1: a healthy authenticated link for a heartbeat and a claim exchange.
        let connected = |i: usize| {
            nodes[i]
                .running
                .as_ref()
                .is_some_and(|r| r.core.report(now).connected)
        };
        let healthy = awake[0]
            && awake[1]
            && !net.faulty()
            && self.mistake.is_none()
            && nodes[1].config.role == NodeRole::Backup
            && connected(0)
            && connected(1);
        if !healthy {
            self.healthy_since = None;
        } else if self.healthy_since.is_none() {
            self.healthy_since = Some(now);
        }
        if let Some(since) = self.healthy_since {
            let from = since.max(self.net_changed + Duration::from_secs(1));
            if now >= from + self.heartbeat + Duration::from_millis(10) && active(0) && active(1) {
                return Err((
                    Invariant::OneActive,
                    format!("both nodes Active on a link healthy since {since}"),
                ));
            }
        }
        // 1 with a witness: never both Active, whatever the link.
        let same_id = matches!(self.mistake, Some((Mistake::SameId, _)));
        let mut overlap = false;
        if let (Some(w), false) = (witness, same_id) {
            let holds = |i: usize| {
                nodes[i].running.as_ref().is_some_and(|r| {
                    r.core
                        .machine()
                        .and_then(|m| m.lease(now))
                        .is_some_and(|l| l.valid_until.is_some_and(|t| now < t))
                })
            };
            let both_active = active(0) && active(1);
            // The known limit: one node Active on its peer's word alone (its
            // lease does not count; the word may be old), the other on the
            // lease. Tolerated unless strict, and only for a bounded time.
            overlap = both_active && (holds(0) != holds(1));
            let mut lasted = Duration::ZERO;
            if overlap {
                let since = match self.overlap_since {
                    Some(t) => t,
                    None => {
                        self.overlaps += 1;
                        self.first_overlap.get_or_insert(now);
                        *self.overlap_since.insert(now)
                    }
                };
                lasted = now.since(since);
                self.overlap_max = self.overlap_max.max(lasted);
            }
            let bound = self.failover / 2 + MAX_FRAME_TRANSIT;
            if (both_active && (self.strict_witness || !overlap || lasted > bound))
                || (holds(0) && holds(1))
            {
                let leases: Vec<String> = nodes
                    .iter()
                    .map(
                        |n| match n.running.as_ref().and_then(|r| r.core.machine()) {
                            Some(m) => format!("{}: {:?}", n.name(), m.lease(now)),
                            None => format!("{}: down", n.name()),
                        },
                    )
                    .collect();
                return Err((
                    Invariant::OneActive,
                    format!(
                        "both nodes {} with a witness{} ({}; {})",
                        if both_active {
                            "Active"
                        } else {
                            "hold the lease"
                        },
                        if overlap {
                            format!(
                                " for {lasted:?}, one on its peer's word alone (bound {})",
                                if self.strict_witness {
                                    "none: strict".to_string()
                                } else {
                                    format!("{bound:?}")
                                }
                            )
                        } else {
                            String::new()
                        },
                        leases.join("; "),
                        w.describe(now)
                    ),
                ));
            }
        }
        if !overlap {
            self.overlap_since = None;
        }
        // 1: never both accepting config writes.
        let open = |i: usize| {
            nodes[i]
                .running
                .as_ref()
                .is_some_and(|r| r.store.write_gate().is_none())
        };
        // Two masters find each other once both run and reach each other.
        let reachable = awake[0] && awake[1] && !net.faulty();
        if !reachable {
            self.reachable_since = None;
        } else if self.reachable_since.is_none() {
            self.reachable_since = Some(now);
        }
        if open(0) && open(1) {
            let allowed = matches!(self.mistake, Some((Mistake::BothMasters, t))
                if now.since(t.max(self.reachable_since.unwrap_or(now))) < Duration::from_millis(2500));
            if !allowed {
                return Err((
                    Invariant::OneActive,
                    "both nodes accept config writes".into(),
                ));
            }
        }
        // 2: the backup takes over in time (a backup that found it has the
        // master's id refuses to act until it is fixed).
        if nodes[1].config.role == NodeRole::Backup && awake[1] && !active(1) && !same_id {
            let due = self.takeover_due(witness);
            if due.is_some_and(|due| now > due) {
                return Err((
                    Invariant::Takeover,
                    format!(
                        "the backup is not Active {:?} after it last heard the master ({:?}){}",
                        now.since(self.heard[1].unwrap_or(self.started[1])),
                        self.heard[1],
                        witness.map_or(String::new(), |w| format!(
                            "; {}, another node's lease ended at {}, the backup reaches it since {:?}",
                            w.describe(now),
                            w.foreign_until(),
                            w.reach_since(1)
                        ))
                    ),
                ));
            }
        }
        // 4: a backup whose module records differ is refused, never served.
        let records = |n: &SimNode| {
            let mut m: Vec<(String, u128)> = n
                .config
                .modules
                .iter()
                .map(|m| (m.name.clone(), m.schema))
                .collect();
            m.sort();
            m
        };
        if records(&nodes[0]) != records(&nodes[1]) {
            if let Some(r) = &nodes[1].running {
                if r.core.report(now).connected {
                    return Err((
                        Invariant::Durability,
                        "the backup syncs although its module records differ from the master's"
                            .into(),
                    ));
                }
            }
        }
        // 4 and 7.
        for (i, n) in nodes.iter().enumerate() {
            let Some(r) = &n.running else {
                continue;
            };
            let (p, d) = (r.store.position(), r.store.digest());
            if self.tainted[i] {
                if self.commits.get(&p) == Some(&d) && self.mistake.is_none() {
                    self.tainted[i] = false;
                }
            } else if p > 0 {
                match self.commits.get(&p) {
                    Some(m) if *m == d => {}
                    Some(m) => {
                        return Err((
                            Invariant::Durability,
                            format!(
                                "{} at position {p} holds digest {d}, the master had {m} there",
                                IDS[i]
                            ),
                        ))
                    }
                    None => {
                        return Err((
                            Invariant::Durability,
                            format!(
                                "{} is at position {p}, which the master never committed",
                                IDS[i]
                            ),
                        ))
                    }
                }
            }
            if i == 1 && !self.tainted[1] && p < self.max_acked {
                return Err((
                    Invariant::Durability,
                    format!(
                        "the backup is at position {p} but acknowledged {}",
                        self.max_acked
                    ),
                ));
            }
            if let Some(m) = r.core.machine() {
                let stored = r.store.claim().epoch;
                if m.claim().epoch < stored {
                    return Err((
                        Invariant::Epochs,
                        format!(
                            "{} holds epoch {} below its stored epoch {stored}",
                            IDS[i],
                            m.claim().epoch
                        ),
                    ));
                }
                if m.activity(now) == ActivityLevel::Active
                    && now < self.started[i] + self.allowance
                    && !n.heard_claim
                    && self.own_claim[i].is_none_or(|t| t < self.started[i])
                {
                    return Err((
                        Invariant::Epochs,
                        format!(
                            "{} is Active {:?} after its start without having heard its peer's claim",
                            IDS[i],
                            now.since(self.started[i])
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
