//! The simulated witness: one key of a key-value bucket with a TTL, as
//! persist-fleet's `NatsWitness` uses a JetStream KV bucket, and each
//! node's way to it.
//!
//! - Acquiring creates the key if it is absent (or expired); renewing is a
//!   compare-and-set on the revision held; releasing deletes on it. Every
//!   write takes the next revision and lives `ttl` from when the server
//!   wrote it (when the request arrived).
//! - As `NatsWitness` answers: a create or an update that finds the key
//!   held by the asking node itself (an answer lost on the way, a restart
//!   within the TTL) renews it on the revision found; an update that finds
//!   the key gone answers "unreachable" (the lease changed while it was
//!   read); a delete on a revision no longer current answers "released".
//! - Requests and answers travel with latency (0.2-3 ms each way, plus a
//!   slow witness's extra delay: answers then come after the node gave up,
//!   and it ignores them). A request applies when it arrives.
//! - A node's way to the witness can be cut (requests and answers on it
//!   vanish), and the witness can be down (a request that arrives is not
//!   applied; half of them are answered "connection refused", the others
//!   time out). The bucket survives a witness restart (file storage), so
//!   its expiry times do too.
//! - A request on the wire when its node crashes still reaches the server
//!   (it was sent); its answer vanishes with the incarnation.

use std::time::Duration;

use super::rng::Rng;
use crate::clock::Time;
use crate::redundancy::witness::{LeaseAction, LeaseEvent, WitnessSettings};

/// The longest a request or an answer travels without a slow-witness fault.
pub const MAX_LATENCY: Duration = Duration::from_millis(3);

/// The witness server, its bucket and the ways to it.
#[derive(Debug)]
pub struct SimWitness {
    pub settings: WitnessSettings,
    /// The key: holder, revision, expiry on the server.
    key: Option<(String, u64, Time)>,
    /// The bucket's last revision (deletes count too).
    revision: u64,
    /// The witness is down.
    pub down: bool,
    /// Each node's way to the witness is cut.
    pub cut: [bool; 2],
    /// Extra one-way latency (a slow witness).
    pub extra: Duration,
    /// Since when each node reaches a witness that is up, without extra
    /// latency (`None`: it does not).
    reach_since: [Option<Time>; 2],
    /// Until when a node other than `backup_id` held the lease on the
    /// server: its expiry, or when it was deleted.
    foreign_until: Time,
    backup_id: String,
    /// Writes the server made (acquisitions and renewals).
    pub writes: u64,
    /// Times the holder changed.
    pub handovers: u64,
    /// Requests that reached a running server.
    pub requests: u64,
    rng: Rng,
}

impl SimWitness {
    pub fn new(settings: WitnessSettings, backup_id: &str, rng: Rng) -> SimWitness {
        SimWitness {
            settings,
            key: None,
            revision: 0,
            down: false,
            cut: [false; 2],
            extra: Duration::ZERO,
            reach_since: [Some(Time::ZERO); 2],
            foreign_until: Time::ZERO,
            backup_id: backup_id.to_owned(),
            writes: 0,
            handovers: 0,
            requests: 0,
            rng,
        }
    }

    /// The witness's own random numbers (they leave the world's alone, so
    /// a seed without a witness draws exactly what it drew before).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// One way's latency.
    pub fn latency(&mut self) -> Duration {
        self.rng.us(200, MAX_LATENCY.as_micros() as u64) + self.extra
    }

    /// Whether node `i` reaches a running witness without extra latency.
    pub fn reaches(&self, i: usize) -> bool {
        !self.down && !self.cut[i] && self.extra.is_zero()
    }

    /// Since when node `i` reaches the witness (see [`SimWitness::reaches`]).
    pub fn reach_since(&self, i: usize) -> Option<Time> {
        self.reach_since[i]
    }

    /// Until when a node other than the backup held the lease.
    pub fn foreign_until(&self) -> Time {
        self.foreign_until
    }

    /// Notes the faults in force at `now` (call after every change).
    pub fn refresh(&mut self, now: Time) {
        for i in 0..2 {
            if !self.reaches(i) {
                self.reach_since[i] = None;
            } else if self.reach_since[i].is_none() {
                self.reach_since[i] = Some(now);
            }
        }
    }

    /// Every witness fault ends.
    pub fn heal(&mut self, now: Time) {
        self.down = false;
        self.cut = [false; 2];
        self.extra = Duration::ZERO;
        self.refresh(now);
    }

    /// The live holder and its revision at `now`.
    pub fn holder(&self, now: Time) -> Option<(&str, u64)> {
        self.key
            .as_ref()
            .filter(|(_, _, exp)| now < *exp)
            .map(|(h, r, _)| (h.as_str(), *r))
    }

    fn write(&mut self, now: Time, me: &str, seq: u64) -> LeaseEvent {
        if self.holder(now).is_none_or(|(h, _)| h != me) {
            self.handovers += 1;
        }
        self.revision += 1;
        self.writes += 1;
        self.key = Some((me.to_owned(), self.revision, now + self.settings.ttl));
        if me != self.backup_id {
            self.foreign_until = now + self.settings.ttl;
        }
        LeaseEvent::Held {
            seq,
            revision: self.revision,
        }
    }

    /// Applies `action` of node `me` as it arrives at `now`; the answer.
    pub fn apply(&mut self, now: Time, me: &str, action: &LeaseAction) -> LeaseEvent {
        self.requests += 1;
        let seq = action.seq();
        let live = self.holder(now).map(|(h, r)| (h.to_owned(), r));
        match (action, live) {
            (LeaseAction::TryAcquire { .. }, None) => self.write(now, me, seq),
            // The node's own lease (an answer lost, a restart): renewed.
            (LeaseAction::TryAcquire { .. } | LeaseAction::Renew { .. }, Some((h, _)))
                if h == me =>
            {
                self.write(now, me, seq)
            }
            (
                LeaseAction::TryAcquire { .. } | LeaseAction::Renew { .. },
                Some((holder, revision)),
            ) => LeaseEvent::Taken {
                seq,
                holder,
                revision,
            },
            (LeaseAction::Renew { .. }, None) => LeaseEvent::Unreachable {
                seq,
                error: "the lease changed while it was read".into(),
            },
            (LeaseAction::Release { revision, .. }, Some((holder, r))) if r == *revision => {
                if holder != self.backup_id {
                    self.foreign_until = now;
                }
                self.revision += 1;
                self.key = None;
                LeaseEvent::Released { seq }
            }
            (LeaseAction::Release { .. }, _) => LeaseEvent::Released { seq },
        }
    }

    /// The lease as a trace shows it.
    pub fn describe(&self, now: Time) -> String {
        let holder = match self.holder(now) {
            Some((h, r)) => format!("{h} at revision {r}"),
            None => "nobody".into(),
        };
        format!(
            "witness: held by {holder}{}{}{}",
            if self.down { ", down" } else { "" },
            match self.cut {
                [true, true] => ", cut from both",
                [true, false] => ", cut from gw-a",
                [false, true] => ", cut from gw-b",
                _ => "",
            },
            if self.extra.is_zero() {
                String::new()
            } else {
                format!(", {:?} slower", self.extra)
            }
        )
    }
}
