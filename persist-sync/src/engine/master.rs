//! The master's side: one session per accepted link, the newest
//! authenticated one serving the backup; log retention; the probe that
//! finds a second master.

use std::collections::BTreeMap;
use std::time::Duration;

use persist_core::store::{plan_repair, ScrubReport};
use persist_core::{Digest, LogEntry, SnapshotHeader};

use super::node::{auth_end, Ctx, Owner, PeerEvent};
use super::{
    compare_modules, plan_sync, BackupView, ConnId, Decision, Input, LinkEnd, Output, SendWindow,
    StoreOp, StoreResult, StoreValue, MAX_QUEUED_FRAMES, SNAPSHOT_WINDOW,
};
use crate::auth::{Handshake, HandshakeStep};
use crate::clock::Time;
use crate::protocol::{
    LinkRole, Message, ModuleManifest, NodeRole, Plan, RefuseReason, RepairRefusal, ResyncReason,
    SnapshotTable,
};
use crate::redundancy::machine::BackupProgress;
use crate::runtime_state::Cursor;
use crate::worker::SyncConfig;

/// How long a failed store read waits before it is tried again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Unauthenticated links held at once, at most: when one more connects, the
/// oldest of them is closed. A flood of clients that connect and say
/// nothing (or too little) then holds a bounded number of sessions and
/// descriptors, each for the handshake timeout at most; the real backup,
/// which authenticates within a round trip or two, is closed only if this
/// many connections arrive during its own handshake. (Refusing the newest
/// instead would let a few silent clients, reconnecting every handshake
/// timeout, keep the backup out for good.)
pub(crate) const MAX_UNAUTHENTICATED: usize = 64;

/// Failures of unauthenticated clients are logged at most once per this
/// long (each one is counted in the report).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

enum Phase {
    Handshake(Box<Handshake>),
    /// Authenticated; the backup has not asked for anything yet.
    AwaitRequest,
    /// The plan's store inputs are being read.
    Planning(BackupView),
    /// A snapshot is being sent.
    Snapshot(SnapshotSend),
    /// Log entries are being streamed.
    Streaming,
}

#[derive(Default)]
struct SnapshotSend {
    /// The snapshot's position and row count, once opened.
    opened: Option<(u64, u64)>,
    rows: u64,
    chunks: u64,
    /// Chunks the backup restored.
    acked: u64,
    reading: bool,
}

struct Session {
    phase: Phase,
    opened: Time,
    last_heard: Time,
    next_beat: Option<Time>,
    /// The newest heartbeat send time heard from the peer (echoed back).
    peer_sent: u64,
    peer: Option<String>,
    /// Sync rounds (a new `SyncRequest` starts one); results of older
    /// rounds are dropped.
    round: u64,
    window: SendWindow,
    fetching: bool,
    /// Frames handed to the writer, not yet sent.
    queued: usize,
    /// A store read failed: try again at this time.
    retry_at: Option<Time>,
    /// When the backup last acknowledged something new (or entries started
    /// to be in flight): entries unacknowledged for a peer timeout while the
    /// backup is heard are sent again.
    acked_at: Time,
    runtime: Cursor,
    /// The modules the peer declared (it does so once, right after
    /// authenticating).
    modules: Option<Vec<ModuleManifest>>,
    /// Modules the peer runs at another version with the same records.
    module_warnings: Vec<String>,
    /// The warnings were logged (once per link).
    warned: bool,
    /// The remote address, for logs.
    addr: String,
    /// A repair request being read: the backup's row hashes in its buckets.
    repair: Option<Vec<(String, Vec<u128>)>>,
}

impl Session {
    fn authenticated(&self) -> bool {
        !matches!(self.phase, Phase::Handshake(_))
    }
}

/// Clients that failed before they authenticated (a wrong secret, silence,
/// garbage, a foreign cluster): counted for the report and logged at most
/// once per [`FAILURE_LOG_EVERY`]. They never become the link's last error,
/// which belongs to the real backup's sessions.
#[derive(Default)]
struct Unauthenticated {
    failures: u64,
    logged_at: Option<Time>,
    /// Failures since the last line logged.
    unlogged: u64,
}

impl Unauthenticated {
    fn failed(&mut self, now: Time, addr: Option<&str>, why: &dyn std::fmt::Display) {
        self.failures += 1;
        if self.logged_at.is_some_and(|t| now < t + FAILURE_LOG_EVERY) {
            self.unlogged += 1;
            return;
        }
        self.logged_at = Some(now);
        let unlogged = std::mem::take(&mut self.unlogged);
        let (peer, failures) = (addr.unwrap_or("-"), self.failures);
        if unlogged == 0 {
            tracing::warn!(%peer, failures, "unauthenticated client failed: {why}");
        } else {
            tracing::warn!(
                %peer,
                failures,
                "unauthenticated client failed: {why} \
                 ({unlogged} more since the last such line, not logged)"
            );
        }
    }
}

struct Probe {
    conn: ConnId,
    since: Time,
    handshake: Option<Box<Handshake>>,
    peer: Option<String>,
}

pub(crate) struct MasterSide {
    sessions: BTreeMap<ConnId, Session>,
    serving: Option<ConnId>,
    head: u64,
    schema: u128,
    history_id: String,
    history: bool,
    /// The serving backup's acknowledged position, if a backup ever acknowledged.
    acked: Option<u64>,
    last_sync: Option<Time>,
    last_error: Option<String>,
    refused: Option<RefuseReason>,
    /// The last refusal logged as a warning: the same refusal of a backup
    /// that keeps redialing is logged once.
    refusal_logged: Option<RefuseReason>,
    resyncs: u64,
    snapshot_progress: Option<(u64, u64)>,
    resync_pending: bool,
    retain_at: Time,
    retaining: bool,
    probe_every: Option<Duration>,
    probe_at: Time,
    probe: Option<Probe>,
    /// Why probing stopped for good (the probe address is this node).
    probe_off: Option<String>,
    dual_master: Option<String>,
    handshake_timeout: Duration,
    peer_timeout: Duration,
    unauthenticated: Unauthenticated,
}

fn beat_due(next: Option<Time>, now: Time) -> bool {
    next.is_some_and(|t| now >= t)
}

impl MasterSide {
    pub fn new(
        cfg: &SyncConfig,
        now: Time,
        head: u64,
        schema: u128,
        history_id: String,
        history: bool,
        probe_every: Option<Duration>,
    ) -> MasterSide {
        MasterSide {
            sessions: BTreeMap::new(),
            serving: None,
            head,
            schema,
            history_id,
            history,
            acked: None,
            last_sync: None,
            last_error: None,
            refused: None,
            refusal_logged: None,
            resyncs: 0,
            snapshot_progress: None,
            resync_pending: false,
            retain_at: now + cfg.retention_interval,
            retaining: false,
            probe_every,
            probe_at: now,
            probe: None,
            probe_off: None,
            dual_master: None,
            handshake_timeout: cfg.handshake_timeout,
            peer_timeout: cfg.peer_timeout,
            unauthenticated: Unauthenticated::default(),
        }
    }

    pub fn input(&mut self, ctx: &mut Ctx<'_>, input: Input) {
        match input {
            Input::Accepted { conn, addr } => {
                self.make_room(ctx);
                let hs = Handshake::new(LinkRole::Acceptor, &ctx.cfg.auth, ctx.nonce());
                self.sessions.insert(
                    conn,
                    Session {
                        phase: Phase::Handshake(Box::new(hs)),
                        opened: ctx.now,
                        last_heard: ctx.now,
                        next_beat: None,
                        peer_sent: 0,
                        peer: None,
                        round: 0,
                        window: SendWindow::new(1, ctx.cfg.max_in_flight),
                        fetching: false,
                        queued: 0,
                        retry_at: None,
                        repair: None,
                        acked_at: ctx.now,
                        runtime: Cursor::default(),
                        modules: None,
                        module_warnings: Vec::new(),
                        warned: false,
                        addr,
                    },
                );
            }
            Input::AcceptFailed { error } => self.unauthenticated.failed(ctx.now, None, &error),
            Input::Dialed { conn } => self.probe_dialed(ctx, conn),
            Input::DialFailed { conn, error } => {
                if self.probe.as_ref().is_some_and(|p| p.conn == conn) {
                    tracing::debug!("peer probe: {error}");
                    self.end_probe(ctx, None);
                }
            }
            Input::Frame { conn, msg } => {
                if self.probe.as_ref().is_some_and(|p| p.conn == conn) {
                    self.probe_frame(ctx, msg);
                } else if self.sessions.contains_key(&conn) {
                    self.frame(ctx, conn, msg);
                }
            }
            Input::Malformed { conn, error } => {
                if self.probe.as_ref().is_some_and(|p| p.conn == conn) {
                    self.end_probe(ctx, Some(LinkEnd::Malformed(error)));
                } else {
                    self.end(ctx, conn, LinkEnd::Malformed(error));
                }
            }
            Input::Closed { conn, error } => {
                let mut why = error.map_or(LinkEnd::Closed, LinkEnd::Io);
                if let Some(Session {
                    phase: Phase::Handshake(hs),
                    ..
                }) = self.sessions.get_mut(&conn)
                {
                    if let HandshakeStep::Failed(e) = ctx.handshake(hs, conn, None) {
                        why = auth_end(e);
                    }
                }
                if self.probe.as_ref().is_some_and(|p| p.conn == conn) {
                    self.end_probe(ctx, None);
                } else {
                    self.end(ctx, conn, why);
                }
            }
            Input::Sent { conn, frames } => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.queued = s.queued.saturating_sub(frames);
                    self.pump(ctx, conn);
                }
            }
            Input::Head(p) => {
                self.head = self.head.max(p);
                if let Some(conn) = self.serving {
                    self.pump(ctx, conn);
                }
            }
            Input::RuntimeChanged => self.flush_runtime(ctx),
            Input::HistoryChanged | Input::Store { .. } | Input::Lease(_) => {}
            Input::Tick => self.tick(ctx),
        }
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            if let Phase::Handshake(_) = s.phase {
                if now >= s.opened + ctx.cfg.handshake_timeout {
                    let t = ctx.cfg.handshake_timeout;
                    self.end(
                        ctx,
                        conn,
                        LinkEnd::Auth(format!("authentication timed out after {t:?}")),
                    );
                    continue;
                }
            } else if now >= s.last_heard + ctx.cfg.peer_timeout {
                self.end(ctx, conn, LinkEnd::Timeout(ctx.cfg.peer_timeout));
                continue;
            }
            if beat_due(s.next_beat, now) {
                s.next_beat = Some(now + ctx.cfg.heartbeat_interval);
                let hb = ctx.heartbeat(NodeRole::Master, self.head, s.peer_sent);
                ctx.send(conn, hb);
            }
            if s.retry_at.is_some_and(|t| now >= t) {
                s.retry_at = None;
                self.retry(ctx, conn);
            }
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            if matches!(s.phase, Phase::Streaming)
                && s.window.in_flight()
                && now >= s.acked_at + ctx.cfg.peer_timeout
            {
                // The backup is heard but acknowledges nothing: what was
                // sent is lost somewhere; send it again (the backup drops
                // what it has already).
                tracing::warn!(
                    acked = s.window.acked(),
                    "entries unacknowledged: sending them again"
                );
                s.window.rewind();
                s.round += 1;
                s.fetching = false;
                s.acked_at = now;
                self.pump(ctx, conn);
            }
        }
        if now >= self.retain_at && !self.retaining {
            self.retaining = true;
            ctx.store(
                Owner::Retain,
                StoreOp::Retain {
                    policy: ctx.cfg.retention.clone(),
                    acked: self.acked,
                },
            );
        }
        if let Some(every) = self.probe_every {
            if self
                .probe
                .as_ref()
                .is_some_and(|p| now >= p.since + ctx.cfg.handshake_timeout)
            {
                self.end_probe(ctx, None);
            }
            if self.probe.is_none()
                && now >= self.probe_at
                && self.probe_off.is_none()
                && self.dual_master.is_none()
            {
                let conn = ctx.new_conn();
                self.probe = Some(Probe {
                    conn,
                    since: now,
                    handshake: None,
                    peer: None,
                });
                self.probe_at = now + every;
                ctx.out.push(Output::Dial { conn, probe: true });
            }
        }
    }

    /// Closes the oldest unauthenticated session if [`MAX_UNAUTHENTICATED`]
    /// are open, so that one more fits.
    fn make_room(&mut self, ctx: &mut Ctx<'_>) {
        let pending = || self.sessions.iter().filter(|(_, s)| !s.authenticated());
        if pending().count() < MAX_UNAUTHENTICATED {
            return;
        }
        let oldest = pending().min_by_key(|(&conn, s)| (s.opened, conn));
        if let Some((&conn, _)) = oldest {
            self.end(
                ctx,
                conn,
                LinkEnd::Auth(format!(
                    "closed unauthenticated: {MAX_UNAUTHENTICATED} clients were authenticating \
                     at once and another connected"
                )),
            );
        }
    }

    pub fn deadline(&self) -> Option<Time> {
        let mut times = Vec::new();
        for s in self.sessions.values() {
            times.push(match s.phase {
                Phase::Handshake(_) => s.opened + self.handshake_timeout,
                _ => s.last_heard + self.peer_timeout,
            });
            times.extend(s.next_beat);
            times.extend(s.retry_at);
            if matches!(s.phase, Phase::Streaming) && s.window.in_flight() {
                times.push(s.acked_at + self.peer_timeout);
            }
        }
        if !self.retaining {
            times.push(self.retain_at);
        }
        match &self.probe {
            Some(p) => times.push(p.since + self.handshake_timeout),
            None if self.probe_every.is_some()
                && self.probe_off.is_none()
                && self.dual_master.is_none() =>
            {
                times.push(self.probe_at)
            }
            None => {}
        }
        times.into_iter().min()
    }

    pub fn authenticated(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_some_and(|s| s.authenticated())
            || self
                .probe
                .as_ref()
                .is_some_and(|p| p.conn == conn && p.peer.is_some())
    }

    fn frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, msg: Message) {
        let now = ctx.now;
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if let Phase::Handshake(hs) = &mut s.phase {
            match ctx.handshake(hs, conn, Some(msg)) {
                HandshakeStep::Continue => {}
                HandshakeStep::Done(peer) => {
                    s.phase = Phase::AwaitRequest;
                    s.peer = Some(peer.node_id);
                    s.last_heard = now;
                    s.next_beat = Some(now + ctx.cfg.heartbeat_interval);
                    ctx.out.push(Output::Authenticated { conn });
                    let hb = ctx.heartbeat(NodeRole::Master, self.head, s.peer_sent);
                    ctx.send(conn, hb);
                    ctx.send(conn, Message::Modules(ctx.cfg.modules.clone()));
                }
                HandshakeStep::Failed(e) => {
                    let why = match auth_end(e) {
                        LinkEnd::Refused(r) => LinkEnd::RefusedPeer(r),
                        other => other,
                    };
                    self.end(ctx, conn, why);
                }
            }
            return;
        }
        s.last_heard = now;
        ctx.events.push(PeerEvent::Alive);
        match msg {
            Message::Heartbeat {
                epoch,
                position,
                role,
                active,
                sent,
                echo,
            } => {
                // Not an acknowledgement: a backup restoring a snapshot still
                // announces the position of the data it is about to replace.
                let _ = position;
                s.peer_sent = s.peer_sent.max(sent);
                let peer = s.peer.clone().unwrap_or_default();
                ctx.announced(peer, role, epoch, active, false, echo);
            }
            Message::Modules(modules) => {
                if s.modules.is_some() {
                    self.end(
                        ctx,
                        conn,
                        LinkEnd::Protocol("modules declared twice on one link".into()),
                    );
                    return;
                }
                s.modules = Some(modules);
            }
            Message::SyncRequest {
                schema,
                history,
                position,
                digest,
                epoch: _,
                force_snapshot,
                role,
            } => {
                if role == NodeRole::Master {
                    // Two masters: neither may take config writes.
                    let other = s.peer.clone().unwrap_or_default();
                    tracing::error!(peer = %other, "another node is configured as master: refusing config writes");
                    ctx.send(
                        conn,
                        Message::Refused {
                            reason: RefuseReason::DualMaster,
                        },
                    );
                    self.refused = Some(RefuseReason::DualMaster);
                    self.enter_dual_master(ctx, &other);
                    self.end(ctx, conn, LinkEnd::RefusedPeer(RefuseReason::DualMaster));
                    return;
                }
                // Modules first: an operator reads the module's name, not
                // two schema fingerprints.
                let peer = s.peer.clone().unwrap_or_default();
                let verdict = match &s.modules {
                    None => Err(RefuseReason::Protocol(
                        "a sync request before the module manifest".into(),
                    )),
                    Some(theirs) => compare_modules(&ctx.cfg.modules, theirs)
                        .map_err(|c| c.refusal(&ctx.cfg.auth.node_id, &peer)),
                };
                match verdict {
                    Ok(skews) => {
                        s.module_warnings = skews.iter().map(|k| k.warning(&peer)).collect();
                    }
                    Err(reason) => {
                        self.refuse(ctx, conn, reason);
                        return;
                    }
                }
                self.close_snapshot(ctx, conn);
                let s = self.sessions.get_mut(&conn).expect("session present");
                s.round += 1;
                s.fetching = false;
                s.retry_at = None;
                s.phase = Phase::Planning(BackupView {
                    schema,
                    history,
                    position,
                    digest,
                    force_snapshot,
                });
                let round = s.round;
                ctx.store(
                    Owner::Link { conn, round },
                    StoreOp::PlanInputs { position },
                );
            }
            Message::Ack { position } => {
                if !matches!(s.phase, Phase::Streaming) {
                    // An acknowledgement of an earlier round.
                    return;
                }
                if position > s.window.acked() || !s.window.in_flight() {
                    s.acked_at = now;
                }
                if !s.window.on_ack(position) {
                    self.end(
                        ctx,
                        conn,
                        LinkEnd::Protocol(format!("ack of position {position}, never sent")),
                    );
                    return;
                }
                if self.serving == Some(conn) {
                    self.acked = Some(s.window.acked());
                    ctx.out.push(Output::Acked {
                        position,
                        reset: false,
                    });
                    if position >= self.head {
                        self.last_sync = Some(now);
                    }
                }
                self.pump(ctx, conn);
            }
            Message::SnapshotAck { chunks } => {
                if let Phase::Snapshot(snap) = &mut s.phase {
                    let sent = snap.chunks;
                    if chunks > sent {
                        self.end(
                            ctx,
                            conn,
                            LinkEnd::Protocol(format!(
                                "snapshot ack of chunk {chunks}, {sent} sent"
                            )),
                        );
                        return;
                    }
                    snap.acked = snap.acked.max(chunks);
                    self.pump(ctx, conn);
                }
            }
            Message::HistoryBatch { origin, items } => {
                if !self.history {
                    self.end(
                        ctx,
                        conn,
                        LinkEnd::Protocol(
                            "history forwarded to a master without a history sink".into(),
                        ),
                    );
                    return;
                }
                let round = s.round;
                ctx.store(
                    Owner::Link { conn, round },
                    StoreOp::DeliverHistory { origin, items },
                );
            }
            m @ (Message::RuntimeFull { .. }
            | Message::RuntimeUpdate { .. }
            | Message::RuntimeResend { .. }) => {
                if ctx.runtime_message(conn, &mut s.runtime, &m) {
                    self.flush_runtime(ctx);
                }
            }
            Message::RepairRequest { ranges, hashes } => {
                if !matches!(s.phase, Phase::Streaming) || s.repair.is_some() {
                    // Of an earlier round, or a second one out: the backup
                    // asks again after its next scrub.
                    return;
                }
                let asked: usize = ranges.iter().map(|r| r.buckets.len()).sum();
                tracing::info!(peer = ?s.peer, ranges = asked, "the backup asks to repair ranges");
                s.repair = Some(hashes);
                let round = s.round;
                ctx.store(Owner::Repair { conn, round }, StoreOp::RangeRows(ranges));
            }
            other => {
                let kind = other.kind();
                self.end(
                    ctx,
                    conn,
                    LinkEnd::Protocol(format!("unexpected message from the backup: {kind}")),
                );
            }
        }
    }

    pub fn store_result(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnId,
        round: u64,
        result: StoreResult,
    ) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            // The session ended: close a snapshot opened for it meanwhile.
            if let Ok(StoreValue::SnapshotOpened(_)) = result {
                ctx.store(Owner::Nobody, StoreOp::SnapshotClose { conn });
            }
            return;
        };
        if round != s.round {
            if let Ok(StoreValue::SnapshotOpened(_)) = result {
                ctx.store(Owner::Nobody, StoreOp::SnapshotClose { conn });
            }
            return;
        }
        match result {
            Ok(StoreValue::Planned { view, digest_at }) => {
                let Phase::Planning(request) = &s.phase else {
                    return;
                };
                let mut view = view;
                view.position = view.position.max(self.head);
                self.head = view.position;
                match plan_sync(&view, request, digest_at) {
                    Decision::Refuse(reason) => self.refuse(ctx, conn, reason),
                    Decision::Sync(plan) => self.serve(ctx, conn, plan),
                }
            }
            Ok(StoreValue::Entries(batch)) => {
                s.fetching = false;
                if matches!(s.phase, Phase::Streaming) {
                    self.ship(ctx, conn, batch);
                }
            }
            Ok(StoreValue::SnapshotOpened(header)) => self.snapshot_opened(ctx, conn, header),
            Ok(StoreValue::Chunk(chunk)) => self.chunk(ctx, conn, chunk),
            Ok(StoreValue::Delivered { seq }) => ctx.send(conn, Message::HistoryAck { seq }),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("master store: {e}");
                self.last_error = Some(format!("store: {e}"));
                s.fetching = false;
                if let Phase::Snapshot(snap) = &mut s.phase {
                    // Start the snapshot again from scratch: the backup drops
                    // what it received of this one.
                    snap.reading = false;
                    ctx.store(Owner::Nobody, StoreOp::SnapshotClose { conn });
                    s.phase = Phase::Snapshot(SnapshotSend::default());
                    s.round += 1;
                }
                s.retry_at = Some(ctx.now + STORE_RETRY);
            }
        }
    }

    /// The master's rows of the buckets a backup asked to repair: answered
    /// with the rows it lacks, or refused (its own rows at odds with its
    /// digest are never shipped).
    pub fn repair_result(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnId,
        round: u64,
        result: StoreResult,
    ) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(hashes) = s.repair.take() else {
            return;
        };
        if round != s.round {
            return;
        }
        let reason = match result {
            Ok(StoreValue::RangeRows(rows)) => match plan_repair(&rows, &hashes) {
                Ok(set) if set.rows.len() > ctx.cfg.scrub.max_repair_rows => {
                    RepairRefusal::TooLarge {
                        rows: set.rows.len() as u64,
                        max: ctx.cfg.scrub.max_repair_rows as u64,
                    }
                }
                Ok(set) => {
                    let shipped = set.rows.len() as u64;
                    tracing::info!(
                        position = rows.position,
                        shipped,
                        dropped = set.remove.len(),
                        "repairing the backup's ranges"
                    );
                    ctx.scrub.status.repairs += 1;
                    ctx.scrub.status.rows_shipped += shipped;
                    ctx.send(
                        conn,
                        Message::RepairRows {
                            position: rows.position,
                            set,
                        },
                    );
                    return;
                }
                Err(bad) => {
                    let refusal = RepairRefusal::MasterDiverged(bad);
                    tracing::error!("{refusal}");
                    ctx.scrub.status.master_diverged = Some(refusal.to_string());
                    refusal
                }
            },
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("reading rows to repair the backup: {e}");
                RepairRefusal::Unavailable(e.to_string())
            }
        };
        ctx.send(conn, Message::RepairRefused { reason });
    }

    /// A scrub pass of the master's own rows ended: rows at odds with the
    /// master's digest are reported loudly (and never shipped as truth).
    pub fn scrubbed(&mut self, ctx: &mut Ctx<'_>, report: ScrubReport) {
        if !report.trusted {
            let why = "the master's rows did not match its recorded digest when it opened: \
                       a scrub cannot tell which; an operator must decide (a resync from a good node)";
            if ctx.scrub.status.master_diverged.is_none() {
                tracing::error!(position = report.position, "{why}");
            }
            ctx.scrub.status.master_diverged = Some(why.into());
        } else if report.differing.is_empty() {
            ctx.scrub.status.master_diverged = None;
        } else {
            let refusal = RepairRefusal::MasterDiverged(report.differing);
            tracing::error!(position = report.position, "scrub: {refusal}");
            ctx.scrub.status.master_diverged = Some(refusal.to_string());
        }
    }

    /// Tries again what a failed store read left undone.
    fn retry(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let round = s.round;
        match &s.phase {
            Phase::Planning(request) => {
                let position = request.position;
                ctx.store(
                    Owner::Link { conn, round },
                    StoreOp::PlanInputs { position },
                );
            }
            Phase::Snapshot(snap) if snap.opened.is_none() => {
                ctx.send(
                    conn,
                    Message::SyncPlan(Plan::Snapshot {
                        reason: ResyncReason::Requested,
                    }),
                );
                ctx.store(Owner::Link { conn, round }, StoreOp::SnapshotOpen { conn });
            }
            _ => self.pump(ctx, conn),
        }
    }

    /// Refuses the backup of session `conn`: tells it why, shows it, and
    /// ends the session.
    fn refuse(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: RefuseReason) {
        ctx.send(
            conn,
            Message::Refused {
                reason: reason.clone(),
            },
        );
        self.refused = Some(reason.clone());
        self.end(ctx, conn, LinkEnd::RefusedPeer(reason));
    }

    /// The session's plan is made: it serves the backup from now on; an
    /// older session stops.
    fn serve(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, plan: Plan) {
        if let Some(old) = self.serving.filter(|&c| c != conn) {
            tracing::info!("sync session superseded by a newer connection");
            self.end(ctx, old, LinkEnd::Superseded);
        }
        self.serving = Some(conn);
        let s = self.sessions.get_mut(&conn).expect("session present");
        // The link works again: an earlier error or refusal (a module
        // mismatch the operator has since fixed) no longer describes it.
        self.refused = None;
        self.refusal_logged = None;
        self.last_error = None;
        tracing::info!(peer = ?s.peer, ?plan, "backup connected");
        if !std::mem::replace(&mut s.warned, true) {
            for w in &s.module_warnings {
                tracing::warn!(peer = ?s.peer, "{w}");
            }
        }
        ctx.send(conn, Message::SyncPlan(plan.clone()));
        match plan {
            Plan::Incremental { from, .. } => {
                s.window = SendWindow::new(from, ctx.cfg.max_in_flight);
                s.phase = Phase::Streaming;
                // The backup holds everything below `from`: in sync right
                // away if that is the head.
                self.acked = Some(from - 1);
                ctx.out.push(Output::Acked {
                    position: from - 1,
                    reset: true,
                });
                if from > self.head {
                    self.last_sync = Some(ctx.now);
                }
                self.runtime_start(ctx, conn);
                if std::mem::take(&mut self.resync_pending) {
                    self.start_snapshot(ctx, conn, ResyncReason::Requested);
                } else {
                    self.pump(ctx, conn);
                }
            }
            Plan::Snapshot { .. } => {
                self.begin_snapshot(ctx, conn);
            }
        }
    }

    fn runtime_start(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.runtime = Cursor::default();
        }
        self.flush_runtime(ctx);
    }

    /// Sends the runtime state due on the serving session.
    pub fn flush_runtime(&mut self, ctx: &mut Ctx<'_>) {
        let (Some(rt), Some(conn)) = (ctx.runtime, self.serving) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if !matches!(s.phase, Phase::Streaming) {
            return;
        }
        for m in rt.outgoing(&mut s.runtime) {
            ctx.send(conn, m);
        }
    }

    /// Sends this node's claim on every authenticated session now.
    pub fn announce(&mut self, ctx: &mut Ctx<'_>) {
        for (&conn, s) in &mut self.sessions {
            if s.authenticated() {
                s.next_beat = Some(ctx.now + ctx.cfg.heartbeat_interval);
                let hb = ctx.heartbeat(NodeRole::Master, self.head, s.peer_sent);
                ctx.send(conn, hb);
            }
        }
    }

    fn start_snapshot(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: ResyncReason) {
        tracing::info!(?reason, "sending a full snapshot");
        self.close_snapshot(ctx, conn);
        ctx.send(conn, Message::SyncPlan(Plan::Snapshot { reason }));
        self.begin_snapshot(ctx, conn);
    }

    fn begin_snapshot(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.round += 1;
        s.fetching = false;
        s.phase = Phase::Snapshot(SnapshotSend::default());
        // Acknowledgements before the snapshot no longer say what the
        // backup will hold; synchronous commits wait for the snapshot.
        self.acked = Some(0);
        ctx.out.push(Output::Acked {
            position: 0,
            reset: true,
        });
        let round = s.round;
        ctx.store(Owner::Link { conn, round }, StoreOp::SnapshotOpen { conn });
    }

    fn close_snapshot(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if let Some(Session {
            phase: Phase::Snapshot(snap),
            ..
        }) = self.sessions.get(&conn)
        {
            if snap.opened.is_some() || snap.reading {
                ctx.store(Owner::Nobody, StoreOp::SnapshotClose { conn });
            }
            if self.serving == Some(conn) {
                self.snapshot_progress = None;
            }
        }
    }

    fn snapshot_opened(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, header: SnapshotHeader) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Phase::Snapshot(snap) = &mut s.phase else {
            ctx.store(Owner::Nobody, StoreOp::SnapshotClose { conn });
            return;
        };
        let total: u64 = header.tables.iter().map(|t| t.rows).sum();
        snap.opened = Some((header.position, total));
        ctx.send(
            conn,
            Message::SnapshotBegin {
                history: header.history.clone(),
                position: header.position,
                digest: header.digest,
                epoch: header.epoch,
                tables: header
                    .tables
                    .iter()
                    .map(|t| SnapshotTable {
                        name: t.name.clone(),
                        rows: t.rows,
                    })
                    .collect(),
            },
        );
        s.queued += 1;
        if self.serving == Some(conn) {
            self.snapshot_progress = Some((0, total));
        }
        self.pump(ctx, conn);
    }

    fn chunk(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, chunk: Option<(u32, Vec<Vec<u8>>)>) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Phase::Snapshot(snap) = &mut s.phase else {
            return;
        };
        snap.reading = false;
        let Some((position, total)) = snap.opened else {
            return;
        };
        match chunk {
            Some((table, rows)) => {
                snap.rows += rows.len() as u64;
                snap.chunks += 1;
                let done = snap.rows;
                ctx.send(conn, Message::SnapshotRows { table, rows });
                s.queued += 1;
                if self.serving == Some(conn) {
                    self.snapshot_progress = Some((done, total));
                }
                self.pump(ctx, conn);
            }
            None => {
                ctx.send(conn, Message::SnapshotEnd);
                s.queued += 1;
                ctx.store(Owner::Nobody, StoreOp::SnapshotClose { conn });
                tracing::info!(rows = total, position, "snapshot sent");
                s.phase = Phase::Streaming;
                s.window = SendWindow::new(position + 1, ctx.cfg.max_in_flight);
                if self.serving == Some(conn) {
                    self.snapshot_progress = None;
                    self.resyncs += 1;
                }
                self.runtime_start(ctx, conn);
                self.pump(ctx, conn);
            }
        }
    }

    /// Sends what the session may send now: log entries within the window,
    /// or the next snapshot chunk within the backup's pace.
    fn pump(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.queued >= MAX_QUEUED_FRAMES || s.retry_at.is_some() {
            return;
        }
        let round = s.round;
        match &mut s.phase {
            Phase::Streaming if !s.fetching && self.serving == Some(conn) => {
                let n = s.window.sendable(self.head);
                if n == 0 {
                    return;
                }
                s.fetching = true;
                ctx.store(
                    Owner::Link { conn, round },
                    StoreOp::ReadLog {
                        from: s.window.next(),
                        max: n.min(ctx.cfg.max_batch_entries as u64) as usize,
                        max_bytes: ctx.cfg.max_batch_bytes,
                    },
                );
            }
            Phase::Snapshot(snap)
                if snap.opened.is_some()
                    && !snap.reading
                    && snap.chunks < snap.acked + SNAPSHOT_WINDOW =>
            {
                snap.reading = true;
                ctx.store(
                    Owner::Link { conn, round },
                    StoreOp::SnapshotNext {
                        conn,
                        rows: ctx.cfg.snapshot_chunk_rows,
                    },
                );
            }
            _ => {}
        }
    }

    fn ship(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, batch: Vec<LogEntry>) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let next = s.window.next();
        // An acknowledgement that came while the batch was read (of entries
        // sent before a rewind) may cover some of it: those are not sent again.
        let covered = batch.first().is_some_and(|e| e.position < next);
        let batch: Vec<LogEntry> = if covered {
            batch.into_iter().filter(|e| e.position >= next).collect()
        } else {
            batch
        };
        match batch.first() {
            Some(e) if e.position == next => {}
            None if covered => {
                self.pump(ctx, conn);
                return;
            }
            Some(e) => {
                // Retention trimmed what this session still needed.
                tracing::warn!(
                    next,
                    first = e.position,
                    "log trimmed under a live session: sending a snapshot"
                );
                self.start_snapshot(ctx, conn, ResyncReason::EntriesTrimmed);
                return;
            }
            None => {
                // The head moved but the entry is not readable yet.
                s.retry_at = Some(ctx.now + Duration::from_millis(1));
                return;
            }
        }
        let last = batch.last().map_or(next, |e| e.position);
        if !s.window.in_flight() {
            s.acked_at = ctx.now;
        }
        ctx.send(conn, Message::Entries(batch));
        s.queued += 1;
        s.window.on_sent(last);
        self.pump(ctx, conn);
    }

    /// Ends a session.
    fn end(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, why: LinkEnd) {
        self.close_snapshot(ctx, conn);
        let Some(s) = self.sessions.remove(&conn) else {
            return;
        };
        ctx.close(conn);
        let serving = self.serving == Some(conn);
        // A peer that proved the secret and was then refused (its own id,
        // a link to this node) is a real node of the pair, misconfigured.
        let proven =
            s.authenticated() || matches!(why, LinkEnd::SameNodeId(_) | LinkEnd::SelfConnection);
        match &why {
            LinkEnd::Shutdown | LinkEnd::Superseded => {}
            e if !proven => {
                // Anyone who can reach the port can get this far: counted
                // and logged (rate-limited), never the link's last error.
                self.unauthenticated.failed(ctx.now, Some(&s.addr), e);
                return;
            }
            // A backup that keeps redialing into the same refusal: logged once.
            e @ LinkEnd::RefusedPeer(r) if self.refusal_logged.as_ref() == Some(r) => {
                tracing::debug!(peer = ?s.peer, addr = %s.addr, "sync session ended: {e}");
                self.last_error = Some(e.to_string());
            }
            e => {
                if let LinkEnd::RefusedPeer(r) = e {
                    self.refusal_logged = Some(r.clone());
                }
                tracing::warn!(peer = ?s.peer, addr = %s.addr, "sync session ended: {e}");
                self.last_error = Some(e.to_string());
            }
        }
        if serving {
            // Only the session that serves the backup speaks for the link: a
            // session a newer one replaced only records its error.
            self.serving = None;
            self.snapshot_progress = None;
            if let LinkEnd::RefusedPeer(r) = &why {
                self.refused = Some(r.clone());
            }
        }
        if s.authenticated() && (serving || self.serving.is_none()) {
            ctx.events.push(PeerEvent::LinkDown);
        }
    }

    pub fn retained(&mut self, ctx: &mut Ctx<'_>, result: StoreResult) {
        self.retaining = false;
        self.retain_at = ctx.now + ctx.cfg.retention_interval;
        if let Err(e) = result {
            tracing::warn!("log retention failed: {e}");
        }
    }

    pub fn resync(&mut self, ctx: &mut Ctx<'_>) {
        match self.serving {
            Some(conn)
                if self
                    .sessions
                    .get(&conn)
                    .is_some_and(|s| matches!(s.phase, Phase::Streaming)) =>
            {
                tracing::info!("full resync requested");
                self.start_snapshot(ctx, conn, ResyncReason::Requested);
            }
            Some(_) => {}
            None => self.resync_pending = true,
        }
    }

    pub fn shutdown(&mut self, ctx: &mut Ctx<'_>) {
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            self.end(ctx, conn, LinkEnd::Shutdown);
        }
        if let Some(p) = self.probe.take() {
            ctx.close(p.conn);
        }
    }

    /// The serving backup's progress, for a switchover.
    pub fn backup_progress(&self) -> BackupProgress {
        let connected = self.serving.is_some_and(|c| {
            self.sessions
                .get(&c)
                .is_some_and(|s| matches!(s.phase, Phase::Streaming))
        });
        BackupProgress {
            connected,
            acked: self.acked.unwrap_or(0),
            head: self.head,
        }
    }

    pub fn dual_master_reason(&self) -> Option<String> {
        self.dual_master
            .as_ref()
            .map(|other| dual_master_gate(other))
    }

    fn enter_dual_master(&mut self, ctx: &mut Ctx<'_>, other: &str) {
        if self.dual_master.is_none() {
            self.dual_master = Some(other.to_owned());
            ctx.out.push(Output::Gate(Some(dual_master_gate(other))));
            ctx.events.push(PeerEvent::DualMaster(other.to_owned()));
        }
    }

    pub fn report(&self) -> super::NodeReport {
        let serving = self.serving.and_then(|c| self.sessions.get(&c));
        let connected = serving.is_some();
        let acked = self.acked.unwrap_or(0);
        super::NodeReport {
            connected,
            peer: serving.and_then(|s| s.peer.clone()),
            peer_acked: acked,
            last_sync: self.last_sync,
            last_error: self
                .probe_off
                .clone()
                .or_else(|| self.dual_master_reason())
                .or_else(|| self.last_error.clone()),
            refused: self.refused.clone(),
            resyncs: self.resyncs,
            snapshot_progress: self.snapshot_progress,
            pending_updates: self.head.saturating_sub(acked),
            peer_modules: serving.and_then(|s| s.modules.clone()).unwrap_or_default(),
            module_warnings: serving.map_or_else(Vec::new, |s| s.module_warnings.clone()),
            unauthenticated_failures: self.unauthenticated.failures,
            redundancy: None,
            scrub: Default::default(),
        }
    }

    fn probe_dialed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let Some(p) = self.probe.as_mut().filter(|p| p.conn == conn) else {
            ctx.close(conn);
            return;
        };
        let mut hs = Handshake::new(LinkRole::Dialer, &ctx.cfg.auth, ctx.nonce());
        let mut send = Vec::new();
        hs.start(&mut send);
        p.handshake = Some(Box::new(hs));
        for m in send {
            ctx.send(conn, m);
        }
    }

    fn probe_frame(&mut self, ctx: &mut Ctx<'_>, msg: Message) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        let conn = p.conn;
        if let Some(hs) = p.handshake.as_mut().filter(|_| p.peer.is_none()) {
            match ctx.handshake(hs, conn, Some(msg)) {
                HandshakeStep::Continue => {}
                HandshakeStep::Done(peer) => {
                    p.peer = Some(peer.node_id);
                    ctx.out.push(Output::Authenticated { conn });
                    ctx.send(conn, Message::Modules(ctx.cfg.modules.clone()));
                    ctx.send(
                        conn,
                        Message::SyncRequest {
                            schema: self.schema,
                            history: self.history_id.clone(),
                            position: self.head,
                            digest: Digest::EMPTY,
                            epoch: ctx.claim.epoch,
                            force_snapshot: None,
                            role: NodeRole::Master,
                        },
                    );
                }
                HandshakeStep::Failed(e) => {
                    let why = auth_end(e);
                    self.end_probe(ctx, Some(why));
                }
            }
            return;
        }
        match msg {
            Message::Refused {
                reason: RefuseReason::DualMaster,
            } => {
                let other = p.peer.clone().unwrap_or_default();
                tracing::error!(peer = %other, "the probed peer is configured as master too: refusing config writes");
                self.refused = Some(RefuseReason::DualMaster);
                self.enter_dual_master(ctx, &other);
                self.end_probe(ctx, None);
            }
            Message::Heartbeat { .. } | Message::Modules(_) => {}
            _ => self.end_probe(ctx, None),
        }
    }

    fn end_probe(&mut self, ctx: &mut Ctx<'_>, why: Option<LinkEnd>) {
        if let Some(p) = self.probe.take() {
            ctx.close(p.conn);
        }
        match why {
            Some(LinkEnd::SelfConnection) => {
                let msg =
                    "the peer address probed for a second master points at this node itself: \
                           set it to the other node's link address"
                        .to_owned();
                tracing::error!("{msg}");
                self.probe_off = Some(msg);
            }
            Some(e @ LinkEnd::SameNodeId(_)) => {
                tracing::error!("peer probe: {e}");
                self.last_error = Some(e.to_string());
            }
            Some(e) => {
                tracing::warn!("peer probe: {e}");
                self.last_error = Some(format!("peer probe: {e}"));
            }
            None => {}
        }
    }
}

/// The write gate's reason on a master that found a second master.
pub(crate) fn dual_master_gate(other: &str) -> String {
    format!(
        "node {other} is also configured as master; fix the configuration and restart both nodes"
    )
}
