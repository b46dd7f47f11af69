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

use std::collections::BTreeMap;
use std::time::Duration;

use persist_core::{Claim, Digest};

use super::net::Net;
use super::node::{SimNode, IDS};
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
}

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
        }
    }

    pub fn max_acked(&self) -> u64 {
        self.max_acked
    }

    pub fn takeovers(&self) -> u64 {
        self.takeovers
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

    pub fn after_event(
        &mut self,
        now: Time,
        nodes: &[SimNode; 2],
        net: &Net,
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
        let same_id = matches!(self.mistake, Some((Mistake::SameId, _)));
        if nodes[1].config.role == NodeRole::Backup && awake[1] && !active(1) && !same_id {
            let silent_from = match self.heard[1] {
                Some(h) => h + self.failover,
                None => self.started[1] + self.allowance.max(self.failover),
            };
            let due =
                silent_from.max(self.awake_since[1]) + self.heartbeat + Duration::from_millis(1);
            if now > due {
                return Err((
                    Invariant::Takeover,
                    format!(
                        "the backup is not Active {:?} after it last heard the master ({:?})",
                        now.since(self.heard[1].unwrap_or(self.started[1])),
                        self.heard[1]
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
