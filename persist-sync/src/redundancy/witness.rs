//! The optional witness lease, as a plain machine (no I/O, time passed in).
//!
//! The active node of a pair holds a lease in a shared key-value bucket
//! (JetStream KV in persist-fleet): created if absent, renewed by
//! compare-and-set on its revision, and expiring on the server after the
//! bucket's TTL. The I/O side carries out a [`LeaseAction`] and answers with
//! a [`LeaseEvent`] naming the action's number; this machine decides.
//!
//! # The rules (see RELIABILITY.md, "Witness")
//! - A lease counts locally until `sent + ttl * (1 - margin)`, `sent` being
//!   when the request that won it was handed out: the server wrote it later,
//!   so it expires there later still, and `margin` covers a clock that runs
//!   slow by up to that fraction.
//! - A node may go active only while its lease counts, or while its peer
//!   confirms it on a live link (the peer's claim names it, in a heartbeat
//!   echoing a send time of this node's from within half the failover
//!   timeout) and no third node holds the lease.
//! - A node that learns another holder, or whose lease stops counting
//!   without a confirming peer, steps down.
//! - One request at a time, each bounded by `request_timeout`: an answer
//!   that does not come in time counts as the witness being unreachable.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::clock::Time;

/// Carries out [`LeaseAction`]s against a real witness (persist-fleet's
/// NATS KV bucket, say). The node task runs one request at a time, bounded
/// by [`WitnessSettings::request_timeout`]; an implementation answers
/// every request with the [`LeaseEvent`] of the same `seq`, and
/// [`LeaseEvent::Unreachable`] for every failure it cannot attribute to
/// another holder.
pub trait WitnessClient: Send + Sync + 'static {
    /// Carries out `action`.
    fn request(&self, action: LeaseAction) -> Pin<Box<dyn Future<Output = LeaseEvent> + Send>>;
}

/// The witness as a node's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WitnessView {
    /// Whether this node's lease counts now.
    pub held_here: bool,
    /// Who holds the lease, as last answered.
    pub holder: Option<String>,
    /// The lease's revision as last seen.
    pub revision: u64,
    /// Why the witness is unreachable, while it is.
    pub error: Option<String>,
}

impl LeaseAction {
    /// The request's number.
    pub fn seq(&self) -> u64 {
        match self {
            LeaseAction::TryAcquire { seq }
            | LeaseAction::Renew { seq, .. }
            | LeaseAction::Release { seq, .. } => *seq,
        }
    }
}

/// Witness settings (per node, never replicated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessSettings {
    /// The lease's lifetime on the server (the bucket's TTL).
    pub ttl: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// The bound on one request to the witness.
    pub request_timeout: Duration,
    /// How much slower than the server's a clock may run, in per mille.
    pub clock_margin_permille: u32,
}

/// A witness setting that cannot work, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("witness {setting}: {problem}")]
pub struct WitnessSettingsError {
    /// The setting (its field name).
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl WitnessSettings {
    /// Defaults for a TTL: renew every third of it, requests bounded by a
    /// quarter, a 5 % clock margin.
    pub fn new(ttl: Duration) -> Self {
        WitnessSettings {
            ttl,
            renew_every: ttl / 3,
            request_timeout: ttl / 4,
            clock_margin_permille: 50,
        }
    }

    /// How long a won lease counts locally from when its request was sent.
    pub fn valid_for(&self) -> Duration {
        self.ttl - self.ttl * self.clock_margin_permille.min(1000) / 1000
    }

    /// Checks the settings against the pair's failover timeout: the TTL must
    /// be shorter (a backup takes over only after the master's lease ended),
    /// and a renewal plus its request must fit in a lease's local life.
    pub fn validate(&self, failover_timeout: Duration) -> Result<(), WitnessSettingsError> {
        let err = |setting, problem: String| Err(WitnessSettingsError { setting, problem });
        if self.ttl >= failover_timeout {
            return err(
                "ttl",
                format!(
                    "must be shorter than the failover timeout ({failover_timeout:?}); it is {:?}",
                    self.ttl
                ),
            );
        }
        if self.clock_margin_permille == 0 || self.clock_margin_permille >= 500 {
            return err(
                "clock_margin_permille",
                format!(
                    "must be between 1 and 499; it is {}",
                    self.clock_margin_permille
                ),
            );
        }
        if self.renew_every.is_zero() || self.request_timeout.is_zero() {
            return err(
                "renew_every",
                "renewal and request bounds must be above zero".into(),
            );
        }
        if self.renew_every + self.request_timeout >= self.valid_for() {
            return err(
                "renew_every",
                format!(
                    "renewal ({:?}) plus request timeout ({:?}) must be below the lease's local life ({:?})",
                    self.renew_every,
                    self.request_timeout,
                    self.valid_for()
                ),
            );
        }
        Ok(())
    }
}

/// What the machine asks of the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Take the lease if nobody holds it (or this node does).
    TryAcquire {
        /// The request's number, repeated in the answer.
        seq: u64,
    },
    /// Renew the lease held at `revision` (compare-and-set).
    Renew {
        /// The request's number.
        seq: u64,
        /// The revision held.
        revision: u64,
    },
    /// Give the lease up (compare-and-set on `revision`).
    Release {
        /// The request's number.
        seq: u64,
        /// The revision held.
        revision: u64,
    },
}

/// What the witness answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease is this node's at `revision` (acquired or renewed).
    Held {
        /// The answered request.
        seq: u64,
        /// The revision written.
        revision: u64,
    },
    /// Another node holds the lease.
    Taken {
        /// The answered request.
        seq: u64,
        /// The holder.
        holder: String,
        /// Its revision.
        revision: u64,
    },
    /// The lease was given up.
    Released {
        /// The answered request.
        seq: u64,
    },
    /// The witness could not be reached (or did not answer in time).
    Unreachable {
        /// The answered request.
        seq: u64,
        /// Why.
        error: String,
    },
}

/// The lease as a node knows it (for status and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Who holds it, as last answered (this node while its lease counts).
    pub holder: Option<String>,
    /// The revision last seen.
    pub revision: u64,
    /// Until when this node's lease counts (while it holds one).
    pub valid_until: Option<Time>,
    /// The last error of the witness, while it is unreachable.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    sent: Time,
    release: bool,
}

/// One node's lease decisions.
#[derive(Debug, Clone)]
pub struct Lease {
    settings: WitnessSettings,
    me: String,
    /// The revision held and until when it counts.
    held: Option<(u64, Time)>,
    renewed: Option<Time>,
    /// Another holder, as last answered.
    other: Option<(String, u64)>,
    pending: Option<Pending>,
    next_try: Time,
    seq: u64,
    want: bool,
    error: Option<String>,
}

impl Lease {
    /// A node `me` that holds no lease at `now`.
    pub fn new(settings: WitnessSettings, me: impl Into<String>, now: Time) -> Lease {
        Lease {
            settings,
            me: me.into(),
            held: None,
            renewed: None,
            other: None,
            pending: None,
            next_try: now,
            seq: 0,
            want: false,
            error: None,
        }
    }

    /// Whether this node wants the lease (it is active, or about to take over).
    pub fn want(&mut self, want: bool) {
        self.want = want;
    }

    /// Whether this node wants the lease (as last told).
    pub fn wants(&self) -> bool {
        self.want
    }

    /// Whether this node's lease counts at `now`.
    pub fn holds(&self, now: Time) -> bool {
        self.held.is_some_and(|(_, until)| now < until)
    }

    /// Whether a node other than `peer` holds the lease, as last answered.
    fn held_by_stranger(&self, peer: Option<&str>) -> bool {
        self.other
            .as_ref()
            .is_some_and(|(h, _)| Some(h.as_str()) != peer)
    }

    /// Whether the node may be active at `now`: its lease counts, or its
    /// peer `peer` confirms it on a live link (`confirmed`) and no third
    /// node holds the lease.
    pub fn permits_active(&self, now: Time, confirmed: bool, peer: Option<&str>) -> bool {
        self.holds(now) || (confirmed && !self.held_by_stranger(peer))
    }

    /// Takes the witness's answer.
    pub fn event(&mut self, now: Time, ev: LeaseEvent) {
        let seq = match &ev {
            LeaseEvent::Held { seq, .. }
            | LeaseEvent::Taken { seq, .. }
            | LeaseEvent::Released { seq }
            | LeaseEvent::Unreachable { seq, .. } => *seq,
        };
        let Some(p) = self.pending.take_if(|p| p.seq == seq) else {
            return; // an answer to a request already given up
        };
        match ev {
            LeaseEvent::Held { revision, .. } if !p.release => {
                self.held = Some((revision, p.sent + self.settings.valid_for()));
                self.renewed = Some(now);
                self.other = None;
                self.error = None;
            }
            LeaseEvent::Held { .. } => {}
            LeaseEvent::Taken {
                holder, revision, ..
            } => {
                self.held = None;
                self.error = None;
                self.other = (holder != self.me).then_some((holder, revision));
                self.next_try = now + self.settings.renew_every;
            }
            LeaseEvent::Released { .. } => {
                self.held = None;
                self.error = None;
            }
            LeaseEvent::Unreachable { error, .. } => {
                self.error = Some(error);
                self.next_try = now + self.settings.renew_every / 2;
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// What to ask of the witness at `now`, if anything (one request at a time).
    pub fn poll(&mut self, now: Time) -> Option<LeaseAction> {
        if self.held.is_some_and(|(_, until)| now >= until) {
            self.held = None;
        }
        if let Some(p) = &self.pending {
            if now < p.sent + self.settings.request_timeout {
                return None;
            }
            let seq = p.seq;
            self.event(
                now,
                LeaseEvent::Unreachable {
                    seq,
                    error: format!("no answer within {:?}", self.settings.request_timeout),
                },
            );
        }
        let action = match (self.want, self.held) {
            (true, Some((revision, _))) => {
                let due = self.renewed.map_or(now, |t| t + self.settings.renew_every);
                if now < due || now < self.next_try.min(due) {
                    return None;
                }
                LeaseAction::Renew {
                    seq: self.next_seq(),
                    revision,
                }
            }
            (true, None) if now >= self.next_try => LeaseAction::TryAcquire {
                seq: self.next_seq(),
            },
            (false, Some((revision, _))) => LeaseAction::Release {
                seq: self.next_seq(),
                revision,
            },
            _ => return None,
        };
        let release = matches!(action, LeaseAction::Release { .. });
        if release {
            // Given up at once: the node stops counting on it before asking.
            self.held = None;
        }
        self.pending = Some(Pending {
            seq: action.seq(),
            sent: now,
            release,
        });
        Some(action)
    }

    /// When [`Lease::poll`] or [`Lease::holds`] may change next.
    pub fn deadline(&self) -> Option<Time> {
        let pending = self
            .pending
            .as_ref()
            .map(|p| p.sent + self.settings.request_timeout);
        let expiry = self.held.map(|(_, t)| t);
        let next = match (self.want, self.held) {
            _ if self.pending.is_some() => None,
            (true, Some(_)) => self.renewed.map(|t| t + self.settings.renew_every),
            (true, None) => Some(self.next_try),
            (false, Some(_)) => Some(self.next_try),
            (false, None) => None,
        };
        [pending, expiry, next].into_iter().flatten().min()
    }

    /// The settings.
    pub fn settings(&self) -> &WitnessSettings {
        &self.settings
    }

    /// The lease as this node knows it.
    pub fn status(&self, now: Time) -> LeaseStatus {
        match (self.held.filter(|_| self.holds(now)), &self.other) {
            (Some((revision, until)), _) => LeaseStatus {
                holder: Some(self.me.clone()),
                revision,
                valid_until: Some(until),
                error: self.error.clone(),
            },
            (None, Some((h, revision))) => LeaseStatus {
                holder: Some(h.clone()),
                revision: *revision,
                valid_until: None,
                error: self.error.clone(),
            },
            (None, None) => LeaseStatus {
                holder: None,
                revision: 0,
                valid_until: None,
                error: self.error.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
