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

use std::time::{Duration, Instant};

use persist_core::Claim;

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
}

/// What the peer last announced.
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
    /// Whether the peer announced itself (a heartbeat) on the current link;
    /// until then only the fact that it is alive counts, not its claim.
    pub announced: bool,
}

/// What the driver must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Record this claim durably and announce it from now on.
    Claim(Claim),
}

/// The redundancy state machine of one node.
#[derive(Debug, Clone)]
pub struct Machine {
    settings: RedundancySettings,
    claim: Claim,
    started: Instant,
    last_heard: Option<Instant>,
    peer: Option<PeerView>,
}

fn rank(c: &Claim, master_id: Option<&str>) -> (u64, bool) {
    (
        c.epoch,
        c.active.is_some() && c.active.as_deref() == master_id,
    )
}

impl Machine {
    /// A machine starting at `now` with the claim the store recorded.
    pub fn new(settings: RedundancySettings, stored: Claim, now: Instant) -> Self {
        Machine {
            settings,
            claim: stored,
            started: now,
            last_heard: None,
            peer: None,
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

    /// What the peer last announced.
    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }

    /// When the peer was last heard.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// This node's activity.
    pub fn activity(&self, now: Instant) -> ActivityLevel {
        if self.settings.role == NodeRole::Independent {
            return ActivityLevel::Active;
        }
        match &self.claim.active {
            Some(id) if *id == self.settings.node_id && self.decided(now) => ActivityLevel::Active,
            Some(_) if self.decided(now) => match self.settings.standby {
                StandbyLevel::Cold => ActivityLevel::Cold,
                StandbyLevel::Warm => ActivityLevel::Warm,
            },
            _ => ActivityLevel::Undecided,
        }
    }

    /// A node decides once it heard its peer or its startup allowance passed.
    fn decided(&self, now: Instant) -> bool {
        self.last_heard.is_some()
            || now.duration_since(self.started) >= self.settings.startup_allowance
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
        self.claim = Claim {
            epoch: self.claim.epoch + 1,
            active: Some(active),
            by: Some(self.settings.node_id.clone()),
        };
        vec![Effect::Claim(self.claim.clone())]
    }

    /// The peer was heard (any frame; `view` is its latest announcement).
    pub fn heard(&mut self, now: Instant, view: PeerView) -> Vec<Effect> {
        self.last_heard = Some(now);
        if !view.announced {
            return Vec::new();
        }
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
        let me = self.settings.node_id.clone();
        let i_am_active = self.claim.active.as_deref() == Some(&me);
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

    /// Time passed; the driver calls this at [`Machine::deadline`] at least.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let me = self.settings.node_id.clone();
        let i_am_active = self.claim.active.as_deref() == Some(&me);
        match self.settings.role {
            NodeRole::Independent if !i_am_active => self.make(me),
            NodeRole::Backup if !i_am_active => {
                let silent_since = self.last_heard.unwrap_or(self.started);
                let limit = if self.last_heard.is_some() {
                    self.settings.failover_timeout
                } else {
                    self.settings
                        .startup_allowance
                        .max(self.settings.failover_timeout)
                };
                if now.duration_since(silent_since) >= limit {
                    self.make(me)
                } else {
                    Vec::new()
                }
            }
            NodeRole::Master if !i_am_active && self.last_heard.is_none() => {
                if now.duration_since(self.started) >= self.settings.startup_allowance {
                    self.make(me)
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// When [`Machine::tick`] should run next (`None`: only inputs matter).
    pub fn deadline(&self) -> Option<Instant> {
        let me = self.settings.node_id.as_str();
        if self.claim.active.as_deref() == Some(me) {
            return None;
        }
        match self.settings.role {
            NodeRole::Backup => Some(match self.last_heard {
                Some(t) => t + self.settings.failover_timeout,
                None => {
                    self.started
                        + self
                            .settings
                            .startup_allowance
                            .max(self.settings.failover_timeout)
                }
            }),
            NodeRole::Master if self.last_heard.is_none() => {
                Some(self.started + self.settings.startup_allowance)
            }
            NodeRole::Independent => Some(self.started),
            _ => None,
        }
    }

    /// Planned switchover (on the active master): the backup takes over.
    pub fn request_switchover(&mut self) -> Result<Vec<Effect>, String> {
        let me = self.settings.node_id.clone();
        if self.settings.role != NodeRole::Master || self.claim.active.as_deref() != Some(&me) {
            return Err("a switchover is requested on the active master".into());
        }
        let peer = self
            .peer
            .as_ref()
            .map(|p| p.node_id.clone())
            .ok_or("no backup has been heard")?;
        Ok(self.make(peer))
    }

    /// Manual handback (on the active backup): the master takes over again.
    pub fn request_handback(&mut self) -> Result<Vec<Effect>, String> {
        let me = self.settings.node_id.clone();
        if self.settings.role != NodeRole::Backup || self.claim.active.as_deref() != Some(&me) {
            return Err("a handback is requested on the active backup".into());
        }
        let master = self.master_id().ok_or("the master has not been heard")?;
        Ok(self.make(master))
    }
}
