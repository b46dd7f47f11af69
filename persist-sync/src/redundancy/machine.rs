//! The redundancy decisions, free of I/O and clocks (time is passed in).
//!
//! # The rule
//! Each node holds a [`Claim`]: an epoch and the id of the node that is active
//! at that epoch. Claims are ordered by epoch, and at equal epochs a claim
//! naming the master ranks higher. A node that hears a higher-ranking claim
//! adopts it, and is active exactly when the claim it holds names it. Every
//! change of the active node makes a new claim with the next epoch:
//! - the backup takes over when it has heard nothing from the master for the
//!   failover timeout (or never heard it within the startup allowance);
//! - a backup in automatic recovery hands back (names the master) once a
//!   returned master is heard and the backup has caught up with it, after a
//!   takeover it made itself (a planned switchover stays until handed back);
//! - a planned switchover is the master naming the backup; a manual handback
//!   is the backup naming the master;
//! - a master that starts and hears no peer within the startup allowance
//!   names itself.
//!
//! With two nodes and no third party, a cut link while both run leaves both
//! active until the link returns (each must assume the other died); config
//! writes stay on the master either way, so data never diverges. When the
//! link returns, the higher claim wins at once: the master adopts the backup's
//! takeover and steps down, and automatic recovery then hands back, so exactly
//! one node is active once things settle.
//!
//! # What counts
//! - A node is *undecided* until it has heard its peer's current claim (a
//!   heartbeat on a live link) or its startup allowance has run out: a node
//!   that restarts never acts on the claim it stored before it learns
//!   whether the pair moved on meanwhile.
//! - The backup's failover timer runs from the last sign of life of the
//!   master: any frame, including a hello or a refusal (wrong secret, wrong
//!   cluster, schema mismatch). A master that answers is alive, even if the
//!   pair cannot sync; taking over next to it would split the pair.
//! - A planned switchover is accepted only while the backup is connected
//!   and has acknowledged the master's head, and it is undone if the backup
//!   has not announced the new claim within the failover timeout.
//! - Two nodes both configured as master (found by the master's probe):
//!   both refuse config writes, and only the one whose id sorts first stays
//!   active, until an operator fixes the configuration.
//!
//! # With a witness
//! A pair given a witness ([`Machine::with_witness`]) fences split brain
//! with a lease (the rules are in [`super::witness`]):
//! - a node makes a claim naming itself (a takeover, a master's startup
//!   decision, an undone switchover) only while it holds the lease: it
//!   wants the lease once the takeover is due, and takes over when it has
//!   it;
//! - a node whose claim names it is active only while its lease counts or
//!   its peer confirms it on a live link (the peer's claim names it; see
//!   the echo below) and no third node holds the lease;
//!   otherwise it stands by (at its standby level) without giving up its
//!   claim, and is active again once either holds;
//! - a confirmation counts until half a failover timeout after this
//!   node's own send time that the peer's heartbeat echoes (protocol 5): the
//!   peer cannot have taken over before a full failover timeout after it
//!   heard that, so a heartbeat that waited on the way (read after this node
//!   was frozen, or held by a partition) confirms nothing stale.
//!
//! So with the pair link cut, only the node that can hold the lease is
//! active; with the witness unreachable and the link up, the pair runs on
//! its last decision; with both gone, nobody is active until one returns.

use std::time::Duration;

use persist_core::Claim;

use super::witness::{Lease, LeaseAction, LeaseEvent, LeaseStatus, WitnessSettings};
use crate::clock::Time;
use crate::protocol::NodeRole;

/// A node's activity, ordered from least to most active.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ActivityLevel {
    /// Not decided yet (waiting for the peer within the startup allowance).
    Undecided,
    /// Standby with minimal activity: no device connections.
    Cold,
    /// Standby ready to take over: connected and subscribed, but not acting.
    Warm,
    /// The node that acts.
    Active,
}

/// The standby level a node takes when it is not active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StandbyLevel {
    /// Minimal activity.
    Cold,
    /// Everything prepared for a fast takeover.
    Warm,
}

/// What happens when the master returns after a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RecoveryMode {
    /// The backup hands back as soon as it has caught up with the returned master.
    Automatic,
    /// The backup stays active until an operator requests the handback.
    Manual,
}

/// Per-node redundancy settings (never replicated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedundancySettings {
    /// This node's role.
    pub role: NodeRole,
    /// This node's id (as in the sync link's authentication).
    pub node_id: String,
    /// Activity when not active.
    pub standby: StandbyLevel,
    /// Silence from the master after which the backup takes over.
    pub failover_timeout: Duration,
    /// How often heartbeats are sent.
    pub heartbeat_interval: Duration,
    /// How long a starting node waits for its peer before deciding.
    pub startup_allowance: Duration,
    /// Master recovery (the backup's setting decides).
    pub recovery: RecoveryMode,
}

/// A redundancy setting that cannot work, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct SettingsError {
    /// The setting (its field name).
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl RedundancySettings {
    /// Defaults for a plant (see `ARCHITECTURE.md` for the comparison with
    /// the real system's: 10 s failover timeout, 1 s ping, 30 s allowance).
    pub fn new(role: NodeRole, node_id: impl Into<String>) -> Self {
        RedundancySettings {
            role,
            node_id: node_id.into(),
            standby: StandbyLevel::Cold,
            failover_timeout: Duration::from_millis(3000),
            heartbeat_interval: Duration::from_millis(250),
            startup_allowance: Duration::from_secs(10),
            recovery: RecoveryMode::Automatic,
        }
    }

    /// Checks that the timers can work together: a heartbeat of at least
    /// 1 ms, a failover timeout of at least two heartbeats (one lost
    /// heartbeat is no failover), a startup allowance of at least one
    /// heartbeat, and a node id.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |setting, problem: String| Err(SettingsError { setting, problem });
        if self.node_id.is_empty() {
            return err("node_id", "must not be empty".into());
        }
        if self.heartbeat_interval < Duration::from_millis(1) {
            return err(
                "heartbeat_interval",
                format!(
                    "must be at least 1 ms (it is {:?})",
                    self.heartbeat_interval
                ),
            );
        }
        if self.failover_timeout < self.heartbeat_interval * 2 {
            return err(
                "failover_timeout",
                format!(
                    "must be at least two heartbeat intervals ({:?}); it is {:?}",
                    self.heartbeat_interval * 2,
                    self.failover_timeout
                ),
            );
        }
        if self.startup_allowance < self.heartbeat_interval {
            return err(
                "startup_allowance",
                format!(
                    "must be at least one heartbeat interval ({:?}); it is {:?}",
                    self.heartbeat_interval, self.startup_allowance
                ),
            );
        }
        Ok(())
    }
}

/// What the peer announced on the current link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// Its node id.
    pub node_id: String,
    /// Its role.
    pub role: NodeRole,
    /// Its claim.
    pub claim: Claim,
    /// Whether this node has caught up with the peer's log (a backup's view
    /// of its master: its position reached the master's announced position).
    pub caught_up: bool,
    /// This node's own send time that the announcement echoes, by this
    /// node's clock: the peer's view is at least that fresh, however long
    /// the frame waited on the way (`None`: it echoed nothing yet).
    pub echo: Option<Time>,
}

/// What the driver must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A new claim: act on it at once, record it durably, announce it.
    Claim(Claim),
}

/// Why an operator request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A switchover is asked of the active master only.
    #[error("a switchover is requested on the active master")]
    NotActiveMaster,
    /// A handback is asked of the active backup only.
    #[error("a handback is requested on the active backup")]
    NotActiveBackup,
    /// The backup is not connected: nobody would take over.
    #[error("the backup is not connected: nobody would take over")]
    BackupNotConnected,
    /// The backup has not confirmed everything the master holds.
    #[error("the backup is behind: it confirmed position {acked} of {head}")]
    BackupBehind {
        /// What the backup acknowledged.
        acked: u64,
        /// The master's head.
        head: u64,
    },
    /// The master has not been heard on the current link.
    #[error("the master has not been heard")]
    MasterNotHeard,
    /// Two masters: fix the configuration first.
    #[error("node {0} is also configured as master; fix the configuration first")]
    DualMaster(String),
}

/// The backup as the master sees it when a switchover is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupProgress {
    /// Whether the backup is connected and syncing.
    pub connected: bool,
    /// What it acknowledged.
    pub acked: u64,
    /// The master's head.
    pub head: u64,
}

/// The redundancy state machine of one node.
#[derive(Debug, Clone)]
pub struct Machine {
    settings: RedundancySettings,
    claim: Claim,
    started: Time,
    /// The last sign of life of the peer (see the module docs).
    last_heard: Option<Time>,
    /// Whether the peer's claim was heard since this node started.
    heard_claim: bool,
    /// Whether the startup allowance has run out (seen by a tick).
    allowance_over: bool,
    /// Whether this node made a claim of its own since it started (a
    /// decision, not the stored claim of an earlier run).
    decided_alone: bool,
    peer: Option<PeerView>,
    /// A switchover this master made: its epoch and when it is undone if
    /// the backup has not announced it.
    switchover: Option<(u64, Time)>,
    /// Another node configured as master.
    conflict: Option<String>,
    /// The peer uses this node's id: a backup so configured never acts
    /// (its claims would name the master too) until it is fixed.
    same_id: bool,
    /// The witness lease, if the pair has a witness.
    lease: Option<Lease>,
    /// Until when the peer's last announcement confirms this node as the
    /// active one (its claim named this node), with a witness only.
    confirmed_until: Option<Time>,
}

fn rank(c: &Claim, master_id: Option<&str>) -> (u64, bool) {
    (
        c.epoch,
        c.active.is_some() && c.active.as_deref() == master_id,
    )
}

impl Machine {
    /// A machine starting at `now` with the claim the store recorded.
    pub fn new(settings: RedundancySettings, stored: Claim, now: Time) -> Self {
        Machine {
            settings,
            claim: stored,
            started: now,
            last_heard: None,
            heard_claim: false,
            allowance_over: false,
            decided_alone: false,
            peer: None,
            switchover: None,
            conflict: None,
            same_id: false,
            lease: None,
            confirmed_until: None,
        }
    }

    /// The same machine fenced by a witness lease (see the module docs).
    /// `settings` should have passed [`WitnessSettings::validate`] against
    /// this node's failover timeout.
    pub fn with_witness(mut self, settings: WitnessSettings, now: Time) -> Self {
        self.lease = Some(Lease::new(settings, self.settings.node_id.clone(), now));
        self
    }

    /// The lease as this node knows it (`None`: no witness).
    pub fn lease(&self, now: Time) -> Option<LeaseStatus> {
        self.lease.as_ref().map(|l| l.status(now))
    }

    /// Whether the peer confirms this node as the active one at `now`.
    fn confirmed(&self, now: Time) -> bool {
        self.peer.is_some() && self.confirmed_until.is_some_and(|t| now < t)
    }

    /// Whether the witness (if any) lets the node its claim names act.
    fn witness_permits(&self, now: Time) -> bool {
        self.lease.as_ref().is_none_or(|l| {
            l.permits_active(
                now,
                self.confirmed(now),
                self.peer.as_ref().map(|p| p.node_id.as_str()),
            )
        })
    }

    /// What to ask of the witness at `now`, if anything: the node wants
    /// the lease while its claim names it or a takeover is due.
    pub fn lease_poll(&mut self, now: Time) -> Option<LeaseAction> {
        let want = self.holds_me() || self.takeover_due(now);
        let lease = self.lease.as_mut()?;
        lease.want(want);
        lease.poll(now)
    }

    /// The witness answered; call [`Machine::tick`] after it (a takeover
    /// may now go ahead).
    pub fn lease_event(&mut self, now: Time, event: LeaseEvent) {
        if let Some(l) = &mut self.lease {
            l.event(now, event);
        }
    }

    /// The claim this node holds.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The settings.
    pub fn settings(&self) -> &RedundancySettings {
        &self.settings
    }

    /// What the peer announced on the current link.
    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }

    /// When the peer last showed a sign of life.
    pub fn last_heard(&self) -> Option<Time> {
        self.last_heard
    }

    /// Another master found by the probe, if any.
    pub fn conflict(&self) -> Option<&str> {
        self.conflict.as_deref()
    }

    fn me(&self) -> &str {
        &self.settings.node_id
    }

    fn holds_me(&self) -> bool {
        self.claim.active.as_deref() == Some(self.me())
    }

    fn standby(&self) -> ActivityLevel {
        match self.settings.standby {
            StandbyLevel::Cold => ActivityLevel::Cold,
            StandbyLevel::Warm => ActivityLevel::Warm,
        }
    }

    /// This node's activity.
    pub fn activity(&self, now: Time) -> ActivityLevel {
        if self.settings.role == NodeRole::Independent {
            return ActivityLevel::Active;
        }
        if !self.decided(now) {
            return ActivityLevel::Undecided;
        }
        if self.same_id && self.settings.role == NodeRole::Backup {
            return self.standby();
        }
        match &self.claim.active {
            Some(id) if id == self.me() => match &self.conflict {
                // Two masters: only the one whose id sorts first acts.
                Some(other) if other.as_str() < self.me() => self.standby(),
                // Neither the lease nor the peer vouches for this node.
                _ if !self.witness_permits(now) => self.standby(),
                _ => ActivityLevel::Active,
            },
            Some(_) => self.standby(),
            None => ActivityLevel::Undecided,
        }
    }

    /// A node decides once it heard its peer's claim or its startup
    /// allowance passed.
    fn decided(&self, now: Time) -> bool {
        self.heard_claim
            || self.decided_alone
            || now.since(self.started) >= self.settings.startup_allowance
    }

    fn master_id(&self) -> Option<String> {
        match self.settings.role {
            NodeRole::Master => Some(self.settings.node_id.clone()),
            _ => self
                .peer
                .as_ref()
                .filter(|p| p.role == NodeRole::Master)
                .map(|p| p.node_id.clone()),
        }
    }

    fn make(&mut self, active: String) -> Vec<Effect> {
        self.decided_alone = true;
        self.claim = Claim {
            epoch: self.claim.epoch + 1,
            active: Some(active),
            by: Some(self.settings.node_id.clone()),
        };
        vec![Effect::Claim(self.claim.clone())]
    }

    /// A sign of life of the peer without a claim (a frame before
    /// authentication, a refusal): it feeds the failover timer only.
    pub fn alive(&mut self, now: Time) {
        self.last_heard = Some(now);
    }

    /// The peer's link went away: what it announced no longer counts.
    pub fn link_down(&mut self) {
        self.peer = None;
        self.confirmed_until = None;
    }

    /// The peer announced its claim on the current link (a heartbeat).
    pub fn announced(&mut self, now: Time, view: PeerView) -> Vec<Effect> {
        self.last_heard = Some(now);
        self.heard_claim = true;
        let master = self
            .master_id()
            .or_else(|| (view.role == NodeRole::Master).then(|| view.node_id.clone()));
        let mut effects = Vec::new();
        if rank(&view.claim, master.as_deref()) > rank(&self.claim, master.as_deref()) {
            self.claim = Claim {
                by: view.claim.by.clone().or_else(|| Some(view.node_id.clone())),
                ..view.claim.clone()
            };
            effects.push(Effect::Claim(self.claim.clone()));
        }
        if let Some((epoch, _)) = self.switchover {
            if view.claim.epoch >= epoch {
                self.switchover = None;
            }
        }
        let me = self.settings.node_id.clone();
        // The peer's word counts from when this node sent what the peer
        // had heard (its echo), not from when it arrived.
        self.confirmed_until = view
            .echo
            .filter(|_| self.lease.is_some() && view.claim.active.as_deref() == Some(me.as_str()))
            .map(|sent| sent + self.settings.failover_timeout / 2);
        let i_am_active = self.holds_me();
        match self.settings.role {
            NodeRole::Backup => {
                // Automatic recovery: after a takeover this backup made itself
                // (not a planned switchover), a returned master gets the pair
                // back once this backup holds everything it has.
                let took_over = self.claim.by.as_deref() == Some(&me);
                if i_am_active
                    && took_over
                    && self.settings.recovery == RecoveryMode::Automatic
                    && view.role == NodeRole::Master
                    && view.caught_up
                {
                    effects.extend(self.make(view.node_id.clone()));
                }
            }
            NodeRole::Master => {
                // Nobody active yet (first start of the pair): the master is.
                if self.claim.active.is_none() {
                    effects.extend(self.make(me));
                }
            }
            NodeRole::Independent => {}
        }
        self.peer = Some(view);
        effects
    }

    /// Another node is configured as master too (see the module docs).
    pub fn dual_master(&mut self, other: &str) {
        self.conflict = Some(other.to_owned());
    }

    /// The peer presented this node's own id: a backup stays standby and
    /// never takes over until its configuration is fixed (it restarts).
    pub fn same_id(&mut self) {
        self.same_id = true;
    }

    /// Time passed; the driver calls this at [`Machine::deadline`] at least.
    pub fn tick(&mut self, now: Time) -> Vec<Effect> {
        if now.since(self.started) >= self.settings.startup_allowance {
            self.allowance_over = true;
        }
        if self.confirmed_until.is_some_and(|t| now >= t) {
            self.confirmed_until = None;
        }
        if self.switchover.is_some_and(|(_, undo_at)| now >= undo_at)
            && (self.settings.role != NodeRole::Master || self.holds_me())
        {
            // Announced meanwhile, or taken back by other means.
            self.switchover = None;
        }
        if !self.takeover_due(now) {
            return Vec::new();
        }
        if self.lease.as_ref().is_some_and(|l| !l.holds(now)) {
            // With a witness a node takes over only once it holds the lease
            // ([`Machine::lease_poll`] asks for it).
            return Vec::new();
        }
        self.switchover = None;
        let me = self.settings.node_id.clone();
        self.make(me)
    }

    /// Whether this node is due to make a claim naming itself.
    fn takeover_due(&self, now: Time) -> bool {
        let i_am_active = self.holds_me();
        match self.settings.role {
            NodeRole::Independent => !i_am_active,
            // Silence for the failover timeout: take over. A restarted backup
            // whose stored claim names it makes a fresh claim too rather than
            // act on the old one (whose epoch the master may have passed).
            NodeRole::Backup => {
                !self.same_id && (!i_am_active || !self.decided(now)) && now >= self.failover_at()
            }
            // A master alone after its startup allowance, or whose
            // switchover the backup never announced, takes the pair (back).
            NodeRole::Master => {
                !i_am_active
                    && ((!self.heard_claim
                        && now.since(self.started) >= self.settings.startup_allowance)
                        || self.switchover.is_some_and(|(_, undo_at)| now >= undo_at))
            }
        }
    }

    /// When a backup that is not active takes over, if it hears nothing more.
    fn failover_at(&self) -> Time {
        match self.last_heard {
            Some(t) => t + self.settings.failover_timeout,
            None => {
                self.started
                    + self
                        .settings
                        .startup_allowance
                        .max(self.settings.failover_timeout)
            }
        }
    }

    /// When [`Machine::tick`] or [`Machine::activity`] may change next
    /// (`None`: only inputs matter).
    pub fn deadline(&self) -> Option<Time> {
        // While a node waits for the lease, the lease's own timers drive it
        // (the takeover's time has passed and must not be ticked again).
        let waiting = self.lease.as_ref().is_some_and(|l| l.wants());
        let undo = self.switchover.map(|(_, t)| t).filter(|_| !waiting);
        let undecided = (!self.heard_claim && !self.decided_alone && !self.allowance_over)
            .then(|| self.started + self.settings.startup_allowance);
        let own = match self.settings.role {
            NodeRole::Backup if self.same_id || waiting => None,
            NodeRole::Backup if !self.holds_me() => Some(self.failover_at()),
            NodeRole::Backup => undecided.map(|_| self.failover_at()),
            _ if self.holds_me() => None,
            NodeRole::Independent => Some(self.started),
            NodeRole::Master => undecided,
        };
        let lease = self.lease.as_ref().and_then(|l| l.deadline());
        [undo, undecided, own, lease, self.confirmed_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Planned switchover (on the active master): the backup takes over.
    /// Refused unless the backup is connected and has confirmed the
    /// master's head; undone if the backup has not announced it within the
    /// failover timeout.
    pub fn request_switchover(
        &mut self,
        now: Time,
        backup: BackupProgress,
    ) -> Result<Vec<Effect>, RequestError> {
        if self.settings.role != NodeRole::Master || !self.holds_me() {
            return Err(RequestError::NotActiveMaster);
        }
        if let Some(other) = &self.conflict {
            return Err(RequestError::DualMaster(other.clone()));
        }
        let peer = match &self.peer {
            Some(p) if backup.connected => p.node_id.clone(),
            _ => return Err(RequestError::BackupNotConnected),
        };
        if backup.acked < backup.head {
            return Err(RequestError::BackupBehind {
                acked: backup.acked,
                head: backup.head,
            });
        }
        let effects = self.make(peer);
        self.switchover = Some((self.claim.epoch, now + self.settings.failover_timeout));
        Ok(effects)
    }

    /// Manual handback (on the active backup): the master takes over again.
    pub fn request_handback(&mut self) -> Result<Vec<Effect>, RequestError> {
        if self.settings.role != NodeRole::Backup || !self.holds_me() {
            return Err(RequestError::NotActiveBackup);
        }
        let master = self.master_id().ok_or(RequestError::MasterNotHeard)?;
        Ok(self.make(master))
    }
}
