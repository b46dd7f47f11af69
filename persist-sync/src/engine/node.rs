//! [`NodeCore`]: one node's sync side (master or backup), its redundancy
//! machine, durable claims and reports, driven by `(now, input)`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use persist_core::Claim;

use super::backup::BackupSide;
use super::master::MasterSide;
use super::scrub::{ScrubStatus, Scrubber};
use super::{ConnId, Input, LinkEnd, OpId, Output, StoreOp, StoreResult};
use crate::clock::Time;
use crate::protocol::{Message, ModuleManifest, NodeRole, RefuseReason};
use crate::redundancy::machine::{
    ActivityLevel, Effect, Machine, PeerView, RedundancySettings, RequestError,
};
use crate::redundancy::witness::{LeaseStatus, WitnessSettings};
use crate::runtime_state::RuntimeStates;
use crate::worker::SyncConfig;

/// Which end of the sync link a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts the backup and serves the log.
    Master,
    /// Dials the master and follows it.
    Backup,
}

/// An operator or module request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Planned switchover, on the active master.
    Switchover,
    /// Handback, on the active backup.
    Handback,
    /// A full resync of the backup.
    Resync,
    /// Stop: close the links, end what the store is doing.
    Shutdown,
}

/// Why a [`Command`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The redundancy rule refuses it.
    #[error(transparent)]
    Refused(#[from] RequestError),
    /// This node runs no redundancy (a sync worker alone).
    #[error("this node runs no redundancy")]
    NoRedundancy,
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// What a node is started with.
pub struct NodeParams {
    /// Master or backup end of the link.
    pub role: Role,
    /// Sync settings.
    pub sync: SyncConfig,
    /// Redundancy settings (`None`: a sync worker without the redundancy runtime).
    pub redundancy: Option<RedundancySettings>,
    /// A witness lease fencing the pair (redundancy only; `None`: no witness).
    pub witness: Option<WitnessSettings>,
    /// The claim the store recorded.
    pub claim: Claim,
    /// The store's position.
    pub position: u64,
    /// The store's schema fingerprint (the probe states it).
    pub schema: u128,
    /// The store's data history.
    pub history_id: String,
    /// Runtime state carried over the link.
    pub runtime: Option<Arc<RuntimeStates>>,
    /// Whether a history service is attached (forwarded by a backup,
    /// delivered by the master).
    pub history: bool,
    /// Master: probe the peer address this often for a second master.
    pub probe_every: Option<Duration>,
    /// Fresh random nonces for handshakes.
    pub nonces: Box<dyn FnMut() -> [u8; 32] + Send>,
}

impl std::fmt::Debug for NodeParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeParams")
            .field("role", &self.role)
            .field("redundancy", &self.redundancy)
            .field("claim", &self.claim)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// What a node reports about its link and its redundancy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeReport {
    /// Whether an authenticated peer is connected and syncing.
    pub connected: bool,
    /// The peer's node id while connected.
    pub peer: Option<String>,
    /// On the master: the backup's acknowledged position.
    pub peer_acked: u64,
    /// When the two were last in sync.
    pub last_sync: Option<Time>,
    /// The last error of the link.
    pub last_error: Option<String>,
    /// The last refusal.
    pub refused: Option<RefuseReason>,
    /// Full resyncs so far.
    pub resyncs: u64,
    /// Rows done and total of a snapshot in progress.
    pub snapshot_progress: Option<(u64, u64)>,
    /// Entries not yet on the other node (master: the backup has not
    /// acknowledged them; backup: announced by the master, not applied).
    pub pending_updates: u64,
    /// The modules the connected peer declared (empty while not connected).
    pub peer_modules: Vec<ModuleManifest>,
    /// Modules both nodes run at different versions with the same records,
    /// one line each (e.g. "module `alarms`: 1.1.0 here, 1.0.0 on gw-a: same
    /// records, replication continues"), while connected.
    pub module_warnings: Vec<String>,
    /// Master: clients that connected and failed before authenticating (a
    /// wrong secret, silence, garbage, another cluster, or closed to make
    /// room for newer ones), since the node started. They do not change
    /// `last_error`.
    pub unauthenticated_failures: u64,
    /// The redundancy state, if the node runs redundancy.
    pub redundancy: Option<RedundancyReport>,
    /// Scrubbing and ranged repairs.
    pub scrub: ScrubStatus,
}

/// The redundancy part of a [`NodeReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct RedundancyReport {
    /// The configured role.
    pub role: NodeRole,
    /// The activity.
    pub activity: ActivityLevel,
    /// The epoch of the claim held.
    pub epoch: u64,
    /// The node the claim names.
    pub active_node: Option<String>,
    /// Changes of activity, epoch or active node since the node started.
    pub transitions: u64,
    /// A redundancy problem (a claim that could not be recorded, a second master).
    pub error: Option<String>,
    /// The witness lease as this node knows it (`None`: no witness).
    pub lease: Option<LeaseStatus>,
}

/// What the link sides tell the node about the peer.
#[derive(Debug)]
pub(crate) enum PeerEvent {
    /// A sign of life without a claim.
    Alive,
    /// The peer's announcement on an authenticated link.
    Announced(PeerView),
    /// The authenticated link went away.
    LinkDown,
    /// The peer is configured as master too.
    DualMaster(String),
    /// The peer presented this node's own id.
    SameNodeId,
}

/// Who gets a store result.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Owner {
    /// A link's work, in a round of it.
    Link { conn: ConnId, round: u64 },
    /// Writing a claim.
    Claim,
    /// Master: log retention.
    Retain,
    /// The scrubber's step.
    Scrub,
    /// A ranged repair's read or apply, on a link in a round of it.
    Repair { conn: ConnId, round: u64 },
    /// Nobody waits (cleanup).
    Nobody,
}

/// Nonces this node sent recently: a peer presenting one is this node.
#[derive(Default)]
pub(crate) struct Nonces {
    recent: VecDeque<[u8; 32]>,
}

impl Nonces {
    pub fn remember(&mut self, nonce: [u8; 32]) {
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(nonce);
    }

    pub fn is_own(&self, nonce: &[u8; 32]) -> bool {
        self.recent.contains(nonce)
    }
}

/// What a link side works with during one step.
pub(crate) struct Ctx<'a> {
    pub now: Time,
    pub cfg: &'a SyncConfig,
    pub out: &'a mut Vec<Output>,
    pub events: &'a mut Vec<PeerEvent>,
    pub runtime: Option<&'a Arc<RuntimeStates>>,
    pub nonces: &'a mut Nonces,
    nonce_source: &'a mut (dyn FnMut() -> [u8; 32] + Send),
    ops: &'a mut Ops,
    next_conn: &'a mut ConnId,
    /// The claim announced in heartbeats.
    pub claim: &'a Claim,
    /// The scrubber: its counts, and told when data changes outside the log.
    pub scrub: &'a mut Scrubber,
}

impl Ctx<'_> {
    pub fn send(&mut self, conn: ConnId, msg: Message) {
        self.out.push(Output::Send { conn, msg });
    }

    pub fn close(&mut self, conn: ConnId) {
        self.out.push(Output::Close { conn });
    }

    pub fn store(&mut self, owner: Owner, op: StoreOp) -> OpId {
        let id = self.ops.next;
        self.ops.next += 1;
        self.ops.owners.insert(id, owner);
        self.out.push(Output::Store { id, op });
        id
    }

    pub fn new_conn(&mut self) -> ConnId {
        let c = *self.next_conn;
        *self.next_conn += 1;
        c
    }

    /// A nonce for a new handshake, remembered as this node's own.
    pub fn nonce(&mut self) -> [u8; 32] {
        let n = (self.nonce_source)();
        self.nonces.remember(n);
        n
    }

    /// Feeds a handshake the next message (`None`: the link closed) and
    /// sends what it queued.
    pub fn handshake(
        &mut self,
        hs: &mut crate::auth::Handshake,
        conn: ConnId,
        msg: Option<Message>,
    ) -> crate::auth::HandshakeStep {
        let mut send = Vec::new();
        let nonces = &*self.nonces;
        let step = hs.on_message(msg, &mut send, &|n| nonces.is_own(n));
        for m in send {
            self.send(conn, m);
        }
        step
    }

    /// Handles a runtime state message from the peer on `conn`; true if
    /// the peer asked for a full state (the caller flushes).
    pub fn runtime_message(
        &mut self,
        conn: ConnId,
        cursor: &mut crate::runtime_state::Cursor,
        msg: &Message,
    ) -> bool {
        let Some(rt) = self.runtime else {
            return false;
        };
        if let Message::RuntimeResend { provider } = msg {
            rt.resend(cursor, provider);
            return true;
        }
        if let Some(reply) = rt.incoming(msg) {
            self.send(conn, reply);
        }
        false
    }

    /// The peer announced its claim in a heartbeat (which does not say who
    /// made it: the receiver credits the sender if it adopts it). `echo` is
    /// the heartbeat's echo of this node's own send time (0: none).
    pub fn announced(
        &mut self,
        node_id: String,
        role: NodeRole,
        epoch: u64,
        active: Option<String>,
        caught_up: bool,
        echo: u64,
    ) {
        self.events.push(PeerEvent::Announced(PeerView {
            node_id,
            role,
            claim: Claim {
                epoch,
                active,
                by: None,
            },
            caught_up,
            echo: (echo > 0).then(|| Time::from_offset(Duration::from_micros(echo))),
        }));
    }

    /// This node's heartbeat at `position`, echoing `echo` (the newest send
    /// time heard from the peer on this link, 0 for none).
    pub fn heartbeat(&self, role: NodeRole, position: u64, echo: u64) -> Message {
        Message::Heartbeat {
            epoch: self.claim.epoch,
            position,
            role,
            active: self.claim.active.clone(),
            // Never 0 (that means "none" in an echo).
            sent: (self.now.offset().as_micros() as u64).max(1),
            echo,
        }
    }
}

#[derive(Default)]
pub(crate) struct Ops {
    next: OpId,
    owners: BTreeMap<OpId, Owner>,
}

/// Durable claims: the newest claim is written in the background; the
/// machine acts on it at once (a full or locked store must not hold up a
/// takeover), and a failed write is retried and reported.
#[derive(Default)]
struct ClaimWriter {
    writing: bool,
    /// A newer claim to write once the current write ends.
    next: Option<Claim>,
    retry_at: Option<Time>,
    error: Option<String>,
}

enum Side {
    Master(MasterSide),
    Backup(BackupSide),
}

/// One node's decisions (see the [module docs](super)).
pub struct NodeCore {
    cfg: SyncConfig,
    side: Side,
    machine: Option<Machine>,
    /// The claim of a node without redundancy (announced as recorded).
    fixed_claim: Claim,
    runtime: Option<Arc<RuntimeStates>>,
    ops: Ops,
    next_conn: ConnId,
    nonces: Nonces,
    nonce_source: Box<dyn FnMut() -> [u8; 32] + Send>,
    claims: ClaimWriter,
    scrubber: Scrubber,
    last_state: Option<(ActivityLevel, u64, Option<String>)>,
    transitions: u64,
    stopped: bool,
}

impl std::fmt::Debug for NodeCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCore")
            .field("machine", &self.machine)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl NodeCore {
    /// A node starting at `now`. Feed it [`Input::Tick`] first.
    pub fn new(p: NodeParams, now: Time) -> NodeCore {
        let machine = p.redundancy.clone().map(|s| {
            let m = Machine::new(s, p.claim.clone(), now);
            match p.witness.clone() {
                Some(w) => m.with_witness(w, now),
                None => m,
            }
        });
        let redial_max = match &p.redundancy {
            // Redial often enough to keep hearing a master that refuses us
            // (a refusal counts as hearing it), and to reach a restarting
            // master within its startup allowance.
            Some(s) => p
                .sync
                .reconnect_max
                .min(s.failover_timeout / 2)
                .min(s.startup_allowance / 2),
            None => p.sync.reconnect_max,
        };
        let side = match p.role {
            Role::Master => Side::Master(MasterSide::new(
                &p.sync,
                now,
                p.position,
                p.schema,
                p.history_id.clone(),
                p.history,
                p.probe_every,
            )),
            Role::Backup => Side::Backup(BackupSide::new(
                &p.sync,
                now,
                p.position,
                p.history,
                redial_max.max(p.sync.reconnect_initial),
            )),
        };
        let scrub_cfg = p.sync.scrub.clone();
        let mut core = NodeCore {
            cfg: p.sync,
            side,
            machine,
            fixed_claim: p.claim,
            runtime: p.runtime,
            ops: Ops::default(),
            next_conn: 1,
            nonces: Nonces::default(),
            nonce_source: p.nonces,
            claims: ClaimWriter::default(),
            scrubber: Scrubber::new(scrub_cfg, now),
            last_state: None,
            transitions: 0,
            stopped: false,
        };
        core.last_state = Some(core.state_key(now));
        if let Some(rt) = &core.runtime {
            let (activity, epoch, _) = core.state_key(now);
            rt.set_active(activity == ActivityLevel::Active, epoch);
        }
        core
    }

    /// Whether the node stopped (after [`Command::Shutdown`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The redundancy machine, if the node runs one.
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    fn claim(&self) -> &Claim {
        self.machine
            .as_ref()
            .map_or(&self.fixed_claim, |m| m.claim())
    }

    fn state_key(&self, now: Time) -> (ActivityLevel, u64, Option<String>) {
        match &self.machine {
            Some(m) => (m.activity(now), m.claim().epoch, m.claim().active.clone()),
            None => (
                ActivityLevel::Active,
                self.fixed_claim.epoch,
                self.fixed_claim.active.clone(),
            ),
        }
    }

    /// Takes one input at `now`; returns what to do, in order.
    pub fn step(&mut self, now: Time, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        let mut claim_result = None;
        let mut scrub_result = None;
        let mut lease_event = None;
        let mut events = self.with_ctx(now, &mut out, |side, ctx| match input {
            Input::Store { id, result } => {
                match ctx.ops.owners.remove(&id).unwrap_or(Owner::Nobody) {
                    Owner::Link { conn, round } => match side {
                        Side::Master(m) => m.store_result(ctx, conn, round, result),
                        Side::Backup(b) => b.store_result(ctx, conn, round, result),
                    },
                    Owner::Retain => {
                        if let Side::Master(m) = side {
                            m.retained(ctx, result);
                        }
                    }
                    Owner::Claim => claim_result = Some(result),
                    Owner::Scrub => scrub_result = Some(result),
                    Owner::Repair { conn, round } => match side {
                        Side::Master(m) => m.repair_result(ctx, conn, round, result),
                        Side::Backup(b) => b.repair_result(ctx, conn, round, result),
                    },
                    Owner::Nobody => {}
                }
            }
            Input::Lease(event) => lease_event = Some(event),
            other => match side {
                Side::Master(m) => m.input(ctx, other),
                Side::Backup(b) => b.input(ctx, other),
            },
        });
        if let Some(result) = claim_result {
            self.claim_written(now, result, &mut out);
        }
        if let (Some(event), Some(m)) = (lease_event, &mut self.machine) {
            m.lease_event(now, event);
        }
        if let Some(report) = scrub_result.and_then(|r| self.scrubber.stepped(now, r)) {
            events.extend(self.with_ctx(now, &mut out, |side, ctx| match side {
                Side::Master(m) => m.scrubbed(ctx, report),
                Side::Backup(b) => b.scrubbed(ctx, report),
            }));
        }
        self.settle(now, events, &mut out);
        if let Some(op) = self.scrubber.poll(now) {
            let id = self.ops.next;
            self.ops.next += 1;
            self.ops.owners.insert(id, Owner::Scrub);
            out.push(Output::Store { id, op });
        }
        out
    }

    fn claim_written(&mut self, now: Time, result: StoreResult, out: &mut Vec<Output>) {
        self.claims.writing = false;
        match result {
            Ok(_) => self.claims.error = None,
            Err(e) => {
                tracing::error!("cannot record the redundancy claim: {e}");
                self.claims.error = Some(format!(
                    "the claim could not be recorded (acting on it anyway): {e}"
                ));
                self.claims.retry_at = Some(now + Duration::from_secs(1));
            }
        }
        // A newer claim waited for this write: write it now.
        if let Some(next) = self.claims.next.take() {
            self.claims.retry_at = None;
            self.write_claim(next, out);
        }
    }

    /// Takes a command; its answer comes as [`Output::Reply`] with `id`.
    pub fn command(&mut self, now: Time, id: u64, command: Command) -> Vec<Output> {
        let mut out = Vec::new();
        if self.stopped {
            out.push(Output::Reply {
                id,
                result: Err(CommandError::Stopped),
            });
            return out;
        }
        let mut effects = Vec::new();
        let mut events = Vec::new();
        let result = match command {
            Command::Resync => {
                events = self.with_ctx(now, &mut out, |side, ctx| match side {
                    Side::Master(m) => m.resync(ctx),
                    Side::Backup(b) => b.resync(ctx),
                });
                Ok(())
            }
            Command::Shutdown => {
                events = self.with_ctx(now, &mut out, |side, ctx| match side {
                    Side::Master(m) => m.shutdown(ctx),
                    Side::Backup(b) => b.shutdown(ctx),
                });
                self.stopped = true;
                Ok(())
            }
            Command::Switchover => match (&mut self.machine, &self.side) {
                (Some(machine), Side::Master(m)) => machine
                    .request_switchover(now, m.backup_progress())
                    .map(|e| effects = e)
                    .map_err(CommandError::from),
                (Some(_), Side::Backup(_)) => {
                    Err(CommandError::Refused(RequestError::NotActiveMaster))
                }
                (None, _) => Err(CommandError::NoRedundancy),
            },
            Command::Handback => match &mut self.machine {
                Some(machine) => machine
                    .request_handback()
                    .map(|e| effects = e)
                    .map_err(CommandError::from),
                None => Err(CommandError::NoRedundancy),
            },
        };
        out.push(Output::Reply { id, result });
        if self.stopped {
            out.push(Output::Stopped);
            return out;
        }
        self.apply_effects(now, effects, &mut out);
        self.settle(now, events, &mut out);
        out
    }

    /// Feeds what the link sides learned into the machine, writes claims,
    /// and follows activity changes.
    fn settle(&mut self, now: Time, events: Vec<PeerEvent>, out: &mut Vec<Output>) {
        let mut effects = Vec::new();
        for e in events {
            let Some(machine) = &mut self.machine else {
                continue;
            };
            match e {
                PeerEvent::Alive => machine.alive(now),
                PeerEvent::Announced(view) => effects.extend(machine.announced(now, view)),
                PeerEvent::LinkDown => machine.link_down(),
                PeerEvent::DualMaster(other) => machine.dual_master(&other),
                PeerEvent::SameNodeId => machine.same_id(),
            }
        }
        if let Some(m) = &mut self.machine {
            effects.extend(m.tick(now));
            // After the tick: the lease is wanted once a takeover is due.
            if let Some(action) = m.lease_poll(now) {
                out.push(Output::Lease(action));
            }
        }
        self.apply_effects(now, effects, out);
        if self.claims.retry_at.is_some_and(|t| now >= t) && !self.claims.writing {
            self.claims.retry_at = None;
            let c = self.claim().clone();
            self.write_claim(c, out);
        }
        let key = self.state_key(now);
        if self.last_state.as_ref() != Some(&key) {
            let was = self.last_state.replace(key.clone());
            self.transitions += 1;
            if let Side::Backup(b) = &mut self.side {
                b.set_active(key.0 == ActivityLevel::Active, now);
            }
            if let Some(rt) = &self.runtime {
                if was.as_ref().map(|w| (w.0, w.1)) != Some((key.0, key.1)) {
                    rt.set_active(key.0 == ActivityLevel::Active, key.1);
                }
            }
            // Runtime state moves with activity: a node that became active
            // sends its state, one that stepped down asks for the new one.
            self.with_ctx(now, out, |side, ctx| match side {
                Side::Master(m) => m.flush_runtime(ctx),
                Side::Backup(b) => b.flush_runtime(ctx),
            });
        }
    }

    fn apply_effects(&mut self, now: Time, effects: Vec<Effect>, out: &mut Vec<Output>) {
        if effects.is_empty() {
            return;
        }
        for Effect::Claim(c) in effects {
            tracing::info!(epoch = c.epoch, active = ?c.active, "redundancy claim");
            self.write_claim(c, out);
        }
        // Announce the new claim at once rather than at the next heartbeat.
        let _ = self.with_ctx(now, out, |side, ctx| match side {
            Side::Master(m) => m.announce(ctx),
            Side::Backup(b) => b.announce(ctx),
        });
    }

    fn write_claim(&mut self, claim: Claim, out: &mut Vec<Output>) {
        if self.claims.writing {
            self.claims.next = Some(claim);
            return;
        }
        self.claims.writing = true;
        let id = self.ops.next;
        self.ops.next += 1;
        self.ops.owners.insert(id, Owner::Claim);
        out.push(Output::Store {
            id,
            op: StoreOp::SetClaim(claim),
        });
    }

    /// Runs `f` on the link side with a context over the rest of the core;
    /// returns what the side learned about the peer.
    fn with_ctx(
        &mut self,
        now: Time,
        out: &mut Vec<Output>,
        f: impl FnOnce(&mut Side, &mut Ctx<'_>),
    ) -> Vec<PeerEvent> {
        let mut events = Vec::new();
        let claim = self.claim().clone();
        let mut ctx = Ctx {
            now,
            cfg: &self.cfg,
            out,
            events: &mut events,
            runtime: self.runtime.as_ref(),
            nonces: &mut self.nonces,
            nonce_source: &mut *self.nonce_source,
            ops: &mut self.ops,
            next_conn: &mut self.next_conn,
            claim: &claim,
            scrub: &mut self.scrubber,
        };
        f(&mut self.side, &mut ctx);
        events
    }

    /// When the node wants an [`Input::Tick`] at the latest (`None`: only
    /// inputs matter).
    pub fn deadline(&self) -> Option<Time> {
        if self.stopped {
            return None;
        }
        let side = match &self.side {
            Side::Master(m) => m.deadline(),
            Side::Backup(b) => b.deadline(),
        };
        [
            side,
            self.machine.as_ref().and_then(|m| m.deadline()),
            self.claims.retry_at.filter(|_| !self.claims.writing),
            self.scrubber.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Each part's deadline (side, machine, claim retry), for diagnostics.
    pub fn deadlines(&self) -> [Option<Time>; 3] {
        let side = match &self.side {
            Side::Master(m) => m.deadline(),
            Side::Backup(b) => b.deadline(),
        };
        [
            side,
            self.machine.as_ref().and_then(|m| m.deadline()),
            self.claims.retry_at,
        ]
    }

    /// Whether frames on `conn` may be full size (its peer authenticated).
    pub fn authenticated(&self, conn: ConnId) -> bool {
        match &self.side {
            Side::Master(m) => m.authenticated(conn),
            Side::Backup(b) => b.authenticated(conn),
        }
    }

    /// What the node reports now.
    pub fn report(&self, now: Time) -> NodeReport {
        let mut r = match &self.side {
            Side::Master(m) => m.report(),
            Side::Backup(b) => b.report(),
        };
        let gate_error = match &self.side {
            Side::Master(m) => m.dual_master_reason(),
            Side::Backup(_) => None,
        };
        r.redundancy = self.machine.as_ref().map(|m| RedundancyReport {
            role: m.settings().role,
            activity: m.activity(now),
            epoch: m.claim().epoch,
            active_node: m.claim().active.clone(),
            transitions: self.transitions,
            error: gate_error.or_else(|| self.claims.error.clone()),
            lease: m.lease(now),
        });
        r.scrub = self.scrubber.status.clone();
        r
    }
}

/// Maps an authentication failure to how the link ended.
pub(crate) fn auth_end(e: crate::auth::AuthError) -> LinkEnd {
    use crate::auth::AuthError;
    match e {
        AuthError::Refused(r) => LinkEnd::Refused(r),
        AuthError::SameNodeId(id) => LinkEnd::SameNodeId(id),
        AuthError::SelfConnection => LinkEnd::SelfConnection,
        other => LinkEnd::Auth(other.to_string()),
    }
}
