//! The backup's side: one link to the master at a time. Dials with
//! backoff; authenticates; verifies its rows; asks for a plan; restores a
//! snapshot or applies entries; forwards buffered history.
//!
//! A failure of this node's own store never drops the link: the link keeps
//! carrying heartbeats both ways (the master stays heard, so no takeover
//! next to a live master), and the sync round starts again after a pause.

use std::collections::VecDeque;
use std::time::Duration;

use persist_core::store::{RangeMismatch, RangeRows, RepairSet, ScrubReport, BUCKETS};
use persist_core::{Error as StoreError, LogEntry, SnapshotHeader, SnapshotTableInfo};

use super::node::{auth_end, Ctx, Owner, PeerEvent};
use super::{
    compare_modules, ConnId, Input, LinkEnd, NodeReport, Output, StoreOp, StoreResult, StoreValue,
    APPLY_BATCH,
};
use crate::auth::{Handshake, HandshakeStep};
use crate::clock::Time;
use crate::protocol::{
    LinkRole, Message, ModuleManifest, NodeRole, Plan, RefuseReason, RepairRefusal, ResyncReason,
};
use crate::runtime_state::Cursor;
use crate::worker::SyncConfig;

/// The first pause before a failed sync round starts again.
const ROUND_RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest pause between sync rounds that keep failing.
const ROUND_RETRY_MAX: Duration = Duration::from_secs(10);
/// How long an unknown operation waits before it is tried again (the
/// module may register it meanwhile).
const STUCK_RETRY: Duration = Duration::from_secs(5);
/// More differing ranges than this in one scrub: the data is far off, a
/// snapshot is cheaper than a repair.
const MAX_REPAIR_RANGES: usize = BUCKETS / 4;
/// Row hashes one repair request carries at most (16 bytes each).
const MAX_REPAIR_HASHES: usize = 500_000;
/// Repairs in a row that did not fit (rows kept changing under them)
/// before the backup asks for a snapshot instead.
const MAX_REPAIR_FAILURES: u32 = 3;

/// How to recover from a failed apply or restore.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recovery {
    /// The data cannot be made right incrementally: ask for a snapshot.
    Resync(ResyncReason),
    /// The store failed (locked, full, unavailable) or the link misbehaved:
    /// ask again from where the data stands.
    Retry,
    /// An operation this node does not know: wait for the module.
    Stuck(String),
}

fn recovery(e: &StoreError) -> Recovery {
    match e {
        StoreError::UnknownOperation { .. } => Recovery::Stuck(e.to_string()),
        StoreError::Inapplicable { .. }
        | StoreError::Divergence { .. }
        | StoreError::Decode { .. } => Recovery::Resync(ResyncReason::ApplyFailed(e.to_string())),
        _ => Recovery::Retry,
    }
}

struct Restoring {
    header: Option<SnapshotHeader>,
    rows: u64,
    total: u64,
    chunks_done: u64,
    /// `SnapshotEnd` arrived; the restore is being committed. Entries that
    /// follow wait in `queue`.
    finishing: bool,
    queue: VecDeque<LogEntry>,
}

impl Restoring {
    fn new() -> Restoring {
        Restoring {
            header: None,
            rows: 0,
            total: 0,
            chunks_done: 0,
            finishing: false,
            queue: VecDeque::new(),
        }
    }
}

enum Step {
    Handshake(Box<Handshake>),
    /// Verifying the rows (`pending`), or waiting until `at` to do so.
    Verifying {
        force: Option<ResyncReason>,
        at: Option<Time>,
    },
    /// The sync request is out; the plan has not come.
    Requested,
    Restoring(Restoring),
    Streaming {
        queue: VecDeque<LogEntry>,
        applying: bool,
    },
}

struct Link {
    conn: ConnId,
    since: Time,
    last_heard: Time,
    /// When the round last made progress (a plan, a snapshot frame): a
    /// request or a snapshot that stops moving while heartbeats still flow
    /// (a lost frame, a broken peer) ends the link.
    progress_at: Time,
    next_beat: Option<Time>,
    /// The newest heartbeat send time heard from the master (echoed back).
    peer_sent: u64,
    peer: Option<String>,
    step: Step,
    /// Sync rounds on this link; results of older rounds are dropped.
    round: u64,
    /// A restart of the round asked for while a request was out (at most
    /// one request is out at a time, so the plan that comes is unambiguous).
    restart: Option<Option<ResyncReason>>,
    /// The plan of a round was accepted: the link synced.
    synced: bool,
    /// A restore was begun and not yet finished or aborted.
    restore_open: bool,
    runtime: Cursor,
    history_in_flight: Option<(u64, Time)>,
    history_reading: bool,
    /// The modules the master declared (it does so once, right after
    /// authenticating).
    master_modules: Option<Vec<ModuleManifest>>,
    /// Version differences were logged (once per link).
    warned: bool,
    /// A ranged repair in progress on this link.
    repair: Repair,
}

/// A ranged repair's progress (one at a time, while streaming).
enum Repair {
    Idle,
    /// Reading this node's rows of the differing buckets.
    Reading,
    /// The request is out.
    Requested {
        local: RangeRows,
        at: Time,
    },
    /// The master's rows, read at `position`: applied once this node has
    /// applied that position (and no further).
    Holding {
        local: RangeRows,
        position: u64,
        set: RepairSet,
    },
    /// Being applied.
    Applying,
}

enum State {
    Waiting { until: Time },
    Dialing { conn: ConnId, since: Time },
    Up(Box<Link>),
}

pub(crate) struct BackupSide {
    state: State,
    delay: Duration,
    initial_delay: Duration,
    redial_max: Duration,
    round_delay: Duration,
    handshake_timeout: Duration,
    peer_timeout: Duration,
    heartbeat: Duration,
    history: bool,
    /// The store's position as this node last learned it.
    position: u64,
    /// What the master announced last.
    master_position: u64,
    resync_next: Option<ResyncReason>,
    stuck: Option<String>,
    connected: bool,
    peer: Option<String>,
    last_sync: Option<Time>,
    last_error: Option<String>,
    refused: Option<RefuseReason>,
    /// The last failure logged as a warning: the same failure at every
    /// redial (a refusal, a master that is down) is logged once.
    failure_logged: Option<LinkEnd>,
    /// Links that failed since the last one that synced.
    failures: u64,
    /// What the connected master declared, and the version differences.
    peer_modules: Vec<ModuleManifest>,
    module_warnings: Vec<String>,
    resyncs: u64,
    snapshot_progress: Option<(u64, u64)>,
    history_acked: u64,
    /// This node is the active one: it redials every heartbeat.
    active: bool,
    /// Repairs in a row that did not fit.
    repair_failures: u32,
    /// The verify found rows at odds with the digest: scrub as soon as
    /// entries stream, to repair them by range.
    scrub_when_streaming: bool,
}

impl BackupSide {
    pub fn new(
        cfg: &SyncConfig,
        now: Time,
        position: u64,
        history: bool,
        redial_max: Duration,
    ) -> BackupSide {
        BackupSide {
            state: State::Waiting { until: now },
            delay: cfg.reconnect_initial,
            initial_delay: cfg.reconnect_initial,
            redial_max,
            round_delay: ROUND_RETRY_MIN,
            handshake_timeout: cfg.handshake_timeout,
            peer_timeout: cfg.peer_timeout,
            heartbeat: cfg.heartbeat_interval,
            history,
            position,
            master_position: 0,
            resync_next: None,
            stuck: None,
            connected: false,
            peer: None,
            last_sync: None,
            last_error: None,
            refused: None,
            failure_logged: None,
            failures: 0,
            peer_modules: Vec::new(),
            module_warnings: Vec::new(),
            resyncs: 0,
            snapshot_progress: None,
            history_acked: 0,
            active: false,
            repair_failures: 0,
            scrub_when_streaming: false,
        }
    }

    /// Follows the node's activity. An active backup (it took over) redials
    /// every heartbeat: the master it took over from may be restarting, and
    /// must hear this node's claim before its own startup allowance runs out,
    /// whatever the master's allowance is set to.
    pub fn set_active(&mut self, active: bool, now: Time) {
        self.active = active;
        if let State::Waiting { until } = &mut self.state {
            if active {
                *until = (*until).min(now + self.heartbeat);
            }
        }
    }

    fn link(&mut self, conn: ConnId) -> Option<&mut Link> {
        match &mut self.state {
            State::Up(l) if l.conn == conn => Some(l),
            _ => None,
        }
    }

    pub fn authenticated(&self, conn: ConnId) -> bool {
        matches!(&self.state, State::Up(l) if l.conn == conn && !matches!(l.step, Step::Handshake(_)))
    }

    pub fn input(&mut self, ctx: &mut Ctx<'_>, input: Input) {
        match input {
            Input::Dialed { conn } => {
                if !matches!(self.state, State::Dialing { conn: c, .. } if c == conn) {
                    ctx.close(conn);
                    return;
                }
                let mut hs = Handshake::new(LinkRole::Dialer, &ctx.cfg.auth, ctx.nonce());
                let mut send = Vec::new();
                hs.start(&mut send);
                for m in send {
                    ctx.send(conn, m);
                }
                self.state = State::Up(Box::new(Link {
                    conn,
                    since: ctx.now,
                    last_heard: ctx.now,
                    progress_at: ctx.now,
                    next_beat: None,
                    peer_sent: 0,
                    peer: None,
                    step: Step::Handshake(Box::new(hs)),
                    round: 0,
                    restart: None,
                    synced: false,
                    restore_open: false,
                    runtime: Cursor::default(),
                    history_in_flight: None,
                    history_reading: false,
                    master_modules: None,
                    warned: false,
                    repair: Repair::Idle,
                }));
            }
            Input::DialFailed { conn, error } => {
                if matches!(self.state, State::Dialing { conn: c, .. } if c == conn) {
                    self.down(ctx, LinkEnd::Dial(error));
                }
            }
            Input::Frame { conn, msg } => {
                if self.link(conn).is_some() {
                    self.frame(ctx, msg);
                }
            }
            Input::Malformed { conn, error } => {
                if self.link(conn).is_some() {
                    self.down(ctx, LinkEnd::Malformed(error));
                }
            }
            Input::Closed { conn, error } => {
                if let Some(link) = self.link(conn) {
                    // A close during the handshake says something of its own
                    // (after our proof: the master rejected our secret).
                    if let Step::Handshake(hs) = &mut link.step {
                        if let HandshakeStep::Failed(e) = ctx.handshake(hs, conn, None) {
                            self.down(ctx, auth_end(e));
                            return;
                        }
                    }
                    self.down(ctx, error.map_or(LinkEnd::Closed, LinkEnd::Io));
                } else if matches!(self.state, State::Dialing { conn: c, .. } if c == conn) {
                    self.down(ctx, error.map_or(LinkEnd::Closed, LinkEnd::Io));
                }
            }
            Input::Sent { .. }
            | Input::Accepted { .. }
            | Input::AcceptFailed { .. }
            | Input::Head(_)
            | Input::Store { .. }
            | Input::Lease(_) => {}
            Input::RuntimeChanged => self.flush_runtime(ctx),
            Input::HistoryChanged => self.pump_history(ctx),
            Input::Tick => self.tick(ctx),
        }
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        match &mut self.state {
            State::Waiting { until } if now >= *until => {
                let conn = ctx.new_conn();
                self.state = State::Dialing { conn, since: now };
                ctx.out.push(Output::Dial { conn, probe: false });
            }
            State::Waiting { .. } => {}
            State::Dialing { since, .. } => {
                if now >= *since + self.handshake_timeout {
                    let t = self.handshake_timeout;
                    self.down(ctx, LinkEnd::Dial(format!("no connection within {t:?}")));
                }
            }
            State::Up(link) => {
                if let Step::Handshake(_) = link.step {
                    if now >= link.since + self.handshake_timeout {
                        let t = self.handshake_timeout;
                        self.down(
                            ctx,
                            LinkEnd::Auth(format!("authentication timed out after {t:?}")),
                        );
                        return;
                    }
                } else if now >= link.last_heard + self.peer_timeout {
                    // The master is silent: whatever the store is doing (a
                    // restore waiting for chunks), the link is dead.
                    self.down(ctx, LinkEnd::Timeout(self.peer_timeout));
                    return;
                } else if link.waiting_on_master() && now >= link.progress_at + self.peer_timeout {
                    let t = self.peer_timeout;
                    self.down(
                        ctx,
                        LinkEnd::Protocol(format!("the master's sync made no progress in {t:?}")),
                    );
                    return;
                }
                if link.next_beat.is_some_and(|t| now >= t) {
                    link.next_beat = Some(now + self.heartbeat);
                    let hb = ctx.heartbeat(NodeRole::Backup, self.position, link.peer_sent);
                    ctx.send(link.conn, hb);
                    // Snapshot acknowledgements are cumulative: repeat the
                    // last one, so one lost on the way cannot stall the snapshot.
                    if let Step::Restoring(r) = &link.step {
                        if r.chunks_done > 0 {
                            ctx.send(
                                link.conn,
                                Message::SnapshotAck {
                                    chunks: r.chunks_done,
                                },
                            );
                        }
                    }
                    // An acknowledgement of forwarded history may have been lost.
                    if link
                        .history_in_flight
                        .is_some_and(|(_, at)| now >= at + self.heartbeat * 2)
                    {
                        link.history_in_flight = None;
                    }
                    self.pump_history(ctx);
                }
                let due = matches!(
                    self.link_mut().map(|l| &l.step),
                    Some(Step::Verifying { at: Some(at), .. }) if now >= *at
                );
                if due {
                    self.verify(ctx);
                }
            }
        }
    }

    fn link_mut(&mut self) -> Option<&mut Link> {
        match &mut self.state {
            State::Up(l) => Some(l),
            _ => None,
        }
    }

    pub fn deadline(&self) -> Option<Time> {
        match &self.state {
            State::Waiting { until } => Some(*until),
            State::Dialing { since, .. } => Some(*since + self.handshake_timeout),
            State::Up(l) => {
                let timeout = match l.step {
                    Step::Handshake(_) => l.since + self.handshake_timeout,
                    _ => l.last_heard + self.peer_timeout,
                };
                let retry = match &l.step {
                    Step::Verifying { at, .. } => *at,
                    _ => None,
                };
                let stall = l
                    .waiting_on_master()
                    .then(|| l.progress_at + self.peer_timeout);
                [Some(timeout), l.next_beat, retry, stall]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    fn frame(&mut self, ctx: &mut Ctx<'_>, msg: Message) {
        let now = ctx.now;
        let State::Up(link) = &mut self.state else {
            return;
        };
        let conn = link.conn;
        link.last_heard = now;
        // Any frame from the master is a sign of life, even a hello before a
        // refusal: a master that answers must not be taken over from.
        ctx.events.push(PeerEvent::Alive);
        if let Step::Handshake(hs) = &mut link.step {
            match ctx.handshake(hs, conn, Some(msg)) {
                HandshakeStep::Continue => {}
                HandshakeStep::Done(peer) => {
                    link.peer = Some(peer.node_id);
                    link.next_beat = Some(now + self.heartbeat);
                    ctx.out.push(Output::Authenticated { conn });
                    let hb = ctx.heartbeat(NodeRole::Backup, self.position, link.peer_sent);
                    ctx.send(conn, hb);
                    ctx.send(conn, Message::Modules(ctx.cfg.modules.clone()));
                    // An active backup hands its runtime state over before it
                    // hears the master (and, in automatic recovery, hands back).
                    self.flush_runtime(ctx);
                    let force = self.resync_next.take();
                    self.start_round(ctx, force, None);
                }
                HandshakeStep::Failed(e) => {
                    let why = auth_end(e);
                    match &why {
                        LinkEnd::Refused(r) => self.refused = Some(r.clone()),
                        LinkEnd::SameNodeId(_) => ctx.events.push(PeerEvent::SameNodeId),
                        _ => {}
                    }
                    self.down(ctx, why);
                }
            }
            return;
        }
        match msg {
            Message::Heartbeat {
                epoch,
                position,
                role,
                active,
                sent,
                echo,
            } => {
                self.master_position = position;
                link.peer_sent = link.peer_sent.max(sent);
                let peer = link.peer.clone().unwrap_or_default();
                ctx.announced(peer, role, epoch, active, self.position >= position, echo);
            }
            Message::Refused { reason } => {
                self.refused = Some(reason.clone());
                self.down(ctx, LinkEnd::Refused(reason));
            }
            Message::Modules(modules) => {
                if link.master_modules.is_some() {
                    self.down(
                        ctx,
                        LinkEnd::Protocol("the master declared its modules twice".into()),
                    );
                    return;
                }
                link.master_modules = Some(modules);
            }
            Message::HistoryAck { seq } => {
                if link.history_in_flight.is_some_and(|(s, _)| seq >= s) {
                    link.history_in_flight = None;
                }
                if seq > self.history_acked {
                    self.history_acked = seq;
                    ctx.store(Owner::Nobody, StoreOp::HistoryDelivered { seq });
                }
                self.pump_history(ctx);
            }
            m @ (Message::RuntimeFull { .. }
            | Message::RuntimeUpdate { .. }
            | Message::RuntimeResend { .. }) => {
                if ctx.runtime_message(conn, &mut link.runtime, &m) {
                    self.flush_runtime(ctx);
                }
            }
            other => self.sync_frame(ctx, other),
        }
    }

    /// A frame of the sync round itself.
    fn sync_frame(&mut self, ctx: &mut Ctx<'_>, msg: Message) {
        let State::Up(link) = &mut self.state else {
            return;
        };
        let conn = link.conn;
        let round = link.round;
        let protocol = |what: String| LinkEnd::Protocol(what);
        if matches!(
            msg,
            Message::SyncPlan(_)
                | Message::SnapshotBegin { .. }
                | Message::SnapshotRows { .. }
                | Message::SnapshotEnd
        ) {
            link.progress_at = ctx.now;
        }
        match (&mut link.step, msg) {
            (Step::Requested, Message::SyncPlan(plan)) => {
                // The master compared the modules and accepted them; the
                // same comparison here gives the version differences.
                let peer = link.peer.clone().unwrap_or_default();
                let verdict = match &link.master_modules {
                    None => Err("the master planned before declaring its modules".to_owned()),
                    Some(theirs) => compare_modules(&ctx.cfg.modules, theirs)
                        .map(|skews| (theirs.clone(), skews))
                        .map_err(|c| {
                            let r = c.refusal(&ctx.cfg.auth.node_id, &peer);
                            format!("the master accepted this node although {r}")
                        }),
                };
                let (modules, skews) = match verdict {
                    Ok(v) => v,
                    Err(e) => {
                        self.down(ctx, protocol(e));
                        return;
                    }
                };
                self.module_warnings = skews.iter().map(|k| k.warning(&peer)).collect();
                self.peer_modules = modules;
                if !std::mem::replace(&mut link.warned, true) {
                    for w in &self.module_warnings {
                        tracing::warn!(peer = %peer, "{w}");
                    }
                }
                self.failure_logged = None;
                let failures = std::mem::take(&mut self.failures);
                tracing::info!(peer = ?link.peer, ?plan, failures, "connected to the master");
                link.synced = true;
                self.connected = true;
                self.peer = link.peer.clone();
                self.refused = None;
                self.last_error = self.stuck.clone();
                self.delay = self.initial_delay;
                match plan {
                    Plan::Incremental { from, history } => {
                        if from != self.position + 1 {
                            let p = self.position;
                            self.down(
                                ctx,
                                protocol(format!(
                                    "master plans from {from}, this backup is at {p}"
                                )),
                            );
                            return;
                        }
                        if from == 1 {
                            ctx.store(Owner::Link { conn, round }, StoreOp::AdoptHistory(history));
                        }
                        link.step = Step::Streaming {
                            queue: VecDeque::new(),
                            applying: false,
                        };
                        if std::mem::take(&mut self.scrub_when_streaming) {
                            ctx.scrub.hurry(ctx.now);
                        }
                        if let Some(force) = link.restart.take() {
                            self.start_round(ctx, force, None);
                            return;
                        }
                        self.flush_runtime(ctx);
                        self.pump_history(ctx);
                    }
                    Plan::Snapshot { reason } => {
                        tracing::info!(?reason, "master sends a full snapshot");
                        link.step = Step::Restoring(Restoring::new());
                        if let Some(force) = link.restart.take() {
                            self.start_round(ctx, force, None);
                        }
                    }
                }
            }
            // What the master sent for an earlier round, before it read our
            // new request.
            (
                Step::Requested | Step::Verifying { .. },
                Message::Entries(_)
                | Message::SnapshotBegin { .. }
                | Message::SnapshotRows { .. }
                | Message::SnapshotEnd
                | Message::SyncPlan(_),
            ) => {}
            (Step::Restoring(r), Message::SyncPlan(Plan::Snapshot { reason })) => {
                // The master starts its snapshot again.
                tracing::info!(?reason, "master restarts the snapshot");
                if std::mem::take(&mut link.restore_open) {
                    ctx.store(Owner::Nobody, StoreOp::RestoreAbort);
                }
                link.round += 1;
                *r = Restoring::new();
                self.snapshot_progress = None;
            }
            (
                Step::Restoring(r),
                Message::SnapshotBegin {
                    history,
                    position,
                    digest,
                    epoch,
                    tables,
                },
            ) if r.header.is_none() => {
                let header = SnapshotHeader {
                    history,
                    position,
                    digest,
                    epoch,
                    tables: tables
                        .into_iter()
                        .map(|t| SnapshotTableInfo {
                            name: t.name,
                            rows: t.rows,
                        })
                        .collect(),
                };
                r.total = header.tables.iter().map(|t| t.rows).sum();
                tracing::info!(rows = r.total, position, "receiving a full snapshot");
                self.snapshot_progress = Some((0, r.total));
                r.header = Some(header.clone());
                link.restore_open = true;
                ctx.store(Owner::Link { conn, round }, StoreOp::RestoreBegin(header));
            }
            (Step::Restoring(r), Message::SnapshotRows { table, rows })
                if r.header.is_some() && !r.finishing =>
            {
                r.rows += rows.len() as u64;
                self.snapshot_progress = Some((r.rows, r.total));
                ctx.store(
                    Owner::Link { conn, round },
                    StoreOp::RestoreChunk { table, rows },
                );
            }
            (Step::Restoring(r), Message::SnapshotEnd) if r.header.is_some() && !r.finishing => {
                r.finishing = true;
                ctx.store(Owner::Link { conn, round }, StoreOp::RestoreFinish);
            }
            (Step::Restoring(r), Message::Entries(entries)) if r.finishing => {
                // They follow the snapshot, not the data it replaces.
                let base = r.header.as_ref().map_or(0, |h| h.position);
                extend(&mut r.queue, base, entries);
            }
            (Step::Streaming { queue, applying }, Message::Entries(entries)) => {
                let added = extend(queue, self.position, entries);
                if added == 0 && !*applying && queue.is_empty() {
                    // Only what is here already (sent again because an
                    // acknowledgement was lost): acknowledge it again.
                    let position = self.position;
                    ctx.send(conn, Message::Ack { position });
                }
                self.pump_apply(ctx);
            }
            (Step::Streaming { .. }, Message::SyncPlan(Plan::Snapshot { reason })) => {
                tracing::info!(?reason, "master sends a full snapshot");
                link.round += 1;
                link.repair = Repair::Idle;
                link.step = Step::Restoring(Restoring::new());
            }
            (step, Message::RepairRows { position, set }) => {
                let streaming = matches!(step, Step::Streaming { .. });
                match std::mem::replace(&mut link.repair, Repair::Idle) {
                    Repair::Requested { local, .. } if streaming => {
                        ctx.scrub.status.rows_shipped += set.rows.len() as u64;
                        link.repair = Repair::Holding {
                            local,
                            position,
                            set,
                        };
                        self.pump_apply(ctx);
                    }
                    // The answer to a request of an earlier round.
                    other => link.repair = other,
                }
            }
            (_, Message::RepairRefused { reason }) => {
                if !matches!(link.repair, Repair::Requested { .. }) {
                    return;
                }
                link.repair = Repair::Idle;
                match reason {
                    RepairRefusal::TooLarge { .. } => {
                        tracing::warn!("repair refused: {reason}; asking for a snapshot");
                        self.start_round(ctx, Some(ResyncReason::DigestMismatch), None);
                    }
                    RepairRefusal::MasterDiverged(_) => {
                        tracing::error!("repair refused: {reason}");
                        ctx.scrub.status.master_diverged = Some(reason.to_string());
                    }
                    RepairRefusal::Unavailable(_) => {
                        tracing::warn!("repair refused: {reason}; trying after the next scrub");
                    }
                }
            }
            (_, other) => {
                let kind = other.kind();
                self.down(
                    ctx,
                    protocol(format!("unexpected message from the master: {kind}")),
                );
            }
        }
    }

    /// Starts a sync round on the link: verify the rows, then ask.
    fn start_round(&mut self, ctx: &mut Ctx<'_>, force: Option<ResyncReason>, at: Option<Time>) {
        let Some(link) = self.link_mut() else {
            return;
        };
        if let Step::Requested = link.step {
            // One request out at a time: restart once its plan has come.
            let merged = match link.restart.take() {
                Some(prev) => prev.or(force),
                None => force,
            };
            link.restart = Some(merged);
            return;
        }
        if std::mem::take(&mut link.restore_open) {
            ctx.store(Owner::Nobody, StoreOp::RestoreAbort);
        }
        link.round += 1;
        link.history_in_flight = None;
        link.repair = Repair::Idle;
        let force = match &link.step {
            Step::Verifying { force: prev, .. } => force.or(prev.clone()),
            _ => force,
        };
        link.step = Step::Verifying { force, at };
        self.snapshot_progress = None;
        if at.is_none() {
            self.verify(ctx);
        }
    }

    fn verify(&mut self, ctx: &mut Ctx<'_>) {
        let Some(link) = self.link_mut() else {
            return;
        };
        if let Step::Verifying { at, .. } = &mut link.step {
            *at = None;
            let (conn, round) = (link.conn, link.round);
            ctx.store(Owner::Link { conn, round }, StoreOp::Verify);
        }
    }

    /// Restarts the round after a failure, with a growing pause.
    fn retry_round(&mut self, ctx: &mut Ctx<'_>, force: Option<ResyncReason>, pause: Duration) {
        let at = ctx.now + pause;
        self.start_round(ctx, force, Some(at));
    }

    pub fn store_result(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnId,
        round: u64,
        result: StoreResult,
    ) {
        // Facts about the store hold whatever link or round asked.
        match &result {
            Ok(StoreValue::Applied { position }) | Ok(StoreValue::Restored { position }) => {
                self.position = *position;
            }
            Ok(StoreValue::Verified { verification, .. }) => {
                self.position = verification.position;
            }
            _ => {}
        }
        let current = matches!(&self.state, State::Up(l) if l.conn == conn);
        if !current {
            return;
        }
        let State::Up(link) = &mut self.state else {
            return;
        };
        let stale = round != link.round;
        match result {
            Ok(StoreValue::Applied { position }) => {
                // Valid in any round: the master has not read a newer request
                // before this acknowledgement (it is sent before it).
                ctx.send(conn, Message::Ack { position });
                if let Step::Streaming { applying, .. } = &mut link.step {
                    if !stale {
                        *applying = false;
                    }
                }
                self.synced(ctx.now);
                self.pump_apply(ctx);
            }
            _ if stale => {}
            Ok(StoreValue::Verified {
                verification,
                schema,
                history,
                epoch,
                ranges_trusted,
            }) => {
                let Step::Verifying { force, .. } = &mut link.step else {
                    return;
                };
                let mut force = force.take();
                let mut digest = verification.computed;
                if force.is_none() && !verification.is_consistent() {
                    if ranges_trusted && ctx.cfg.scrub.enabled {
                        // The recorded digests say where: plan as if the
                        // rows were right, and let the scrub repair the
                        // ranges that are not.
                        tracing::warn!(
                            position = verification.position,
                            "local data does not match its recorded digest: repairing by range"
                        );
                        digest = verification.recorded;
                        self.scrub_when_streaming = true;
                    } else {
                        tracing::warn!(
                            position = verification.position,
                            "local data does not match its recorded digest: asking for a full resync"
                        );
                        force = Some(ResyncReason::DigestMismatch);
                    }
                }
                ctx.send(
                    conn,
                    Message::SyncRequest {
                        schema,
                        history,
                        position: verification.position,
                        digest,
                        epoch,
                        force_snapshot: force,
                        role: NodeRole::Backup,
                    },
                );
                link.step = Step::Requested;
                link.progress_at = ctx.now;
            }
            Ok(StoreValue::Restored { position }) => {
                link.restore_open = false;
                self.scrub_when_streaming = false;
                ctx.scrub.data_replaced(ctx.now);
                ctx.scrub.status.master_diverged = None;
                self.resyncs += 1;
                self.snapshot_progress = None;
                tracing::info!(position, "snapshot restored");
                ctx.send(conn, Message::Ack { position });
                let queue = match std::mem::replace(&mut link.step, Step::Requested) {
                    Step::Restoring(r) => r.queue,
                    _ => VecDeque::new(),
                };
                link.step = Step::Streaming {
                    queue,
                    applying: false,
                };
                self.synced(ctx.now);
                self.flush_runtime(ctx);
                self.pump_history(ctx);
                self.pump_apply(ctx);
            }
            Ok(StoreValue::ChunkRestored) => {
                if let Step::Restoring(r) = &mut link.step {
                    // Let the master send further.
                    r.chunks_done += 1;
                    ctx.send(
                        conn,
                        Message::SnapshotAck {
                            chunks: r.chunks_done,
                        },
                    );
                }
            }
            Ok(StoreValue::HistoryItems(items)) => {
                link.history_reading = false;
                if let Some(last) = items.last().map(|i| i.seq) {
                    if link.history_in_flight.is_none() {
                        link.history_in_flight = Some((last, ctx.now));
                        ctx.send(
                            conn,
                            Message::HistoryBatch {
                                origin: ctx.cfg.auth.node_id.clone(),
                                items,
                            },
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(e) => self.store_failed(ctx, e),
        }
    }

    fn store_failed(&mut self, ctx: &mut Ctx<'_>, e: StoreError) {
        let Some(link) = self.link_mut() else {
            return;
        };
        match &link.step {
            Step::Verifying { .. } | Step::Requested => {
                tracing::warn!("verifying the backup's rows failed: {e}");
            }
            _ => tracing::warn!("applying what the master sent failed: {e}"),
        }
        link.history_reading = false;
        if let Step::Restoring(_) = link.step {
            // The restore rolled itself back.
            link.restore_open = false;
        }
        self.last_error = Some(format!("store: {e}"));
        let pause = self.round_delay;
        self.round_delay = (self.round_delay * 2).min(ROUND_RETRY_MAX);
        match recovery(&e) {
            Recovery::Resync(reason) => self.retry_round(ctx, Some(reason), pause),
            Recovery::Retry => self.retry_round(ctx, None, pause),
            Recovery::Stuck(why) => {
                self.stuck = Some(why.clone());
                self.last_error = Some(why);
                self.retry_round(ctx, None, STUCK_RETRY);
            }
        }
    }

    /// An apply or restore went through.
    fn synced(&mut self, now: Time) {
        self.last_sync = Some(now);
        self.round_delay = ROUND_RETRY_MIN;
        if self.stuck.take().is_some() {
            self.last_error = None;
        }
    }

    fn pump_apply(&mut self, ctx: &mut Ctx<'_>) {
        let position = self.position;
        let Some(link) = self.link_mut() else {
            return;
        };
        let (conn, round) = (link.conn, link.round);
        if let Step::Streaming { queue, applying } = &mut link.step {
            if *applying || matches!(link.repair, Repair::Applying) {
                return;
            }
            // A repair read at `at` goes in right after the entry at `at`.
            let hold = match &link.repair {
                Repair::Holding { position: at, .. } => Some(*at),
                _ => None,
            };
            if hold.is_some_and(|at| position >= at) {
                let Repair::Holding { local, set, .. } =
                    std::mem::replace(&mut link.repair, Repair::Applying)
                else {
                    unreachable!("matched above");
                };
                ctx.store(
                    Owner::Repair { conn, round },
                    StoreOp::Repair { local, set },
                );
                return;
            }
            if queue.is_empty() {
                return;
            }
            let mut n = apply_batch_len(queue, ctx.cfg.max_batch_bytes);
            if let Some(at) = hold {
                n = n.min(queue.iter().take_while(|e| e.position <= at).count());
                if n == 0 {
                    return;
                }
            }
            let batch: Vec<LogEntry> = queue.drain(..n).collect();
            *applying = true;
            ctx.store(Owner::Link { conn, round }, StoreOp::Apply(batch));
        }
    }

    fn pump_history(&mut self, ctx: &mut Ctx<'_>) {
        if !self.history {
            return;
        }
        let after = self.history_acked;
        let Some(link) = self.link_mut() else {
            return;
        };
        if !matches!(link.step, Step::Streaming { .. })
            || link.history_reading
            || link.history_in_flight.is_some()
        {
            return;
        }
        link.history_reading = true;
        let (conn, round) = (link.conn, link.round);
        ctx.store(
            Owner::Link { conn, round },
            StoreOp::HistoryPending { after },
        );
    }

    pub fn flush_runtime(&mut self, ctx: &mut Ctx<'_>) {
        let Some(rt) = ctx.runtime else {
            return;
        };
        let State::Up(link) = &mut self.state else {
            return;
        };
        if link.peer.is_none() {
            // Not authenticated yet.
            return;
        }
        // An active backup (after a failover) hands its state to the master.
        for m in rt.outgoing(&mut link.runtime) {
            ctx.send(link.conn, m);
        }
    }

    pub fn announce(&mut self, ctx: &mut Ctx<'_>) {
        let position = self.position;
        if let State::Up(link) = &mut self.state {
            if !matches!(link.step, Step::Handshake(_)) {
                link.next_beat = Some(ctx.now + self.heartbeat);
                let hb = ctx.heartbeat(NodeRole::Backup, position, link.peer_sent);
                ctx.send(link.conn, hb);
            }
        }
    }

    /// The link is gone: close it, give up a restore, wait, dial again.
    fn down(&mut self, ctx: &mut Ctx<'_>, why: LinkEnd) {
        let state = std::mem::replace(&mut self.state, State::Waiting { until: ctx.now });
        let mut synced = false;
        match state {
            State::Up(link) => {
                ctx.close(link.conn);
                if link.restore_open {
                    ctx.store(Owner::Nobody, StoreOp::RestoreAbort);
                }
                if !matches!(link.step, Step::Handshake(_)) {
                    ctx.events.push(PeerEvent::LinkDown);
                }
                synced = link.synced;
            }
            State::Dialing { conn, .. } => ctx.close(conn),
            State::Waiting { .. } => {}
        }
        match &why {
            LinkEnd::Shutdown => {}
            // A master that refuses every redial for the same reason, or
            // stays down: logged once, until a link syncs again.
            _ if self.failure_logged.as_ref() == Some(&why) => {
                self.failures += 1;
                tracing::debug!(
                    failures = self.failures,
                    "sync with the master failed: {why}"
                );
            }
            _ => {
                self.failures += 1;
                self.failure_logged = Some(why.clone());
                tracing::warn!("sync with the master failed: {why}");
            }
        }
        if !matches!(why, LinkEnd::Shutdown) {
            self.last_error = Some(why.to_string());
        }
        self.connected = false;
        self.peer = None;
        self.peer_modules.clear();
        self.module_warnings.clear();
        self.snapshot_progress = None;
        if synced {
            self.delay = self.initial_delay;
        }
        let wait = if self.active {
            self.delay.min(self.heartbeat)
        } else {
            self.delay
        };
        self.delay = (self.delay * 2).min(self.redial_max);
        self.state = State::Waiting {
            until: ctx.now + wait,
        };
    }

    pub fn resync(&mut self, ctx: &mut Ctx<'_>) {
        match &self.state {
            State::Up(l) if !matches!(l.step, Step::Handshake(_)) => {
                self.start_round(ctx, Some(ResyncReason::Requested), None);
            }
            _ => self.resync_next = Some(ResyncReason::Requested),
        }
    }

    /// A scrub pass of this node's rows ended: ranges that differ from
    /// their recorded digests are repaired from the master (or, when too
    /// many differ, replaced by a snapshot).
    pub fn scrubbed(&mut self, ctx: &mut Ctx<'_>, report: ScrubReport) {
        if report.differing.is_empty() {
            if report.trusted && ctx.scrub.status.repairs > 0 {
                // A clean pass after a repair: whatever the master refused is gone too.
                ctx.scrub.status.master_diverged = None;
            }
            return;
        }
        let ranges = report.differing_buckets();
        tracing::warn!(
            position = report.position,
            ranges,
            "scrub: rows here do not match their recorded digests"
        );
        let now = ctx.now;
        let peer_timeout = self.peer_timeout;
        let Some(link) = self.link_mut() else {
            // Not connected: the verify of the next connect finds it.
            return;
        };
        if !matches!(link.step, Step::Streaming { .. }) {
            return;
        }
        match &link.repair {
            Repair::Idle => {}
            // The answer was lost (the link keeps the order, a broken peer
            // may not answer): ask again.
            Repair::Requested { at, .. } if now.since(*at) > peer_timeout => {}
            _ => return,
        }
        if ranges > MAX_REPAIR_RANGES {
            tracing::warn!(
                ranges,
                "too many ranges differ for a repair: asking for a snapshot"
            );
            self.start_round(ctx, Some(ResyncReason::DigestMismatch), None);
            return;
        }
        let (conn, round) = (link.conn, link.round);
        link.repair = Repair::Reading;
        ctx.store(
            Owner::Repair { conn, round },
            StoreOp::RangeRows(report.differing),
        );
    }

    /// This node's read of the ranges to repair, or the repair's result.
    pub fn repair_result(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnId,
        round: u64,
        result: StoreResult,
    ) {
        let now = ctx.now;
        let State::Up(link) = &mut self.state else {
            return;
        };
        if link.conn != conn || link.round != round {
            // A repair applied on an older round still changed the rows.
            if let Ok(StoreValue::Repaired(_)) = result {
                ctx.scrub.data_replaced(now);
            }
            return;
        }
        let state = std::mem::replace(&mut link.repair, Repair::Idle);
        match (state, result) {
            (Repair::Reading, Ok(StoreValue::RangeRows(local))) => {
                let still = local.differing();
                if still.is_empty() {
                    return;
                }
                let hashes: Vec<(String, Vec<u128>)> = local
                    .tables
                    .iter()
                    .map(|t| (t.table.clone(), t.rows.iter().map(|(h, _)| *h).collect()))
                    .collect();
                let count: usize = hashes.iter().map(|(_, h)| h.len()).sum();
                if count > MAX_REPAIR_HASHES {
                    tracing::warn!(
                        count,
                        "the ranges to repair hold too many rows: asking for a snapshot"
                    );
                    self.start_round(ctx, Some(ResyncReason::DigestMismatch), None);
                    return;
                }
                let ranges: Vec<RangeMismatch> = local
                    .tables
                    .iter()
                    .map(|t| RangeMismatch {
                        table: t.table.clone(),
                        buckets: t.buckets.iter().map(|(b, _, _)| *b).collect(),
                    })
                    .collect();
                tracing::info!(
                    position = local.position,
                    ranges = still.iter().map(|m| m.buckets.len()).sum::<usize>(),
                    rows = count,
                    "asking the master to repair ranges"
                );
                ctx.send(conn, Message::RepairRequest { ranges, hashes });
                link.repair = Repair::Requested { local, at: now };
            }
            (Repair::Applying, Ok(StoreValue::Repaired(outcome))) => {
                tracing::info!(
                    inserted = outcome.inserted,
                    updated = outcome.updated,
                    deleted = outcome.deleted,
                    "ranges repaired from the master"
                );
                self.repair_failures = 0;
                ctx.scrub.status.repairs += 1;
                ctx.scrub.status.rows_repaired += outcome.changed();
                ctx.scrub.data_replaced(now);
                self.pump_apply(ctx);
            }
            (Repair::Applying, Err(e)) => {
                ctx.scrub.status.repair_failures += 1;
                self.repair_failures += 1;
                if self.repair_failures >= MAX_REPAIR_FAILURES {
                    tracing::warn!(
                        "repair failed ({e}) {} times: asking for a snapshot",
                        self.repair_failures
                    );
                    self.repair_failures = 0;
                    self.start_round(ctx, Some(ResyncReason::DigestMismatch), None);
                } else {
                    tracing::info!("repair did not fit, trying after the next scrub: {e}");
                    ctx.scrub.data_replaced(now);
                    self.pump_apply(ctx);
                }
            }
            (_, Err(e)) => {
                tracing::warn!("reading the ranges to repair: {e}");
            }
            (other, _) => link.repair = other,
        }
    }

    pub fn shutdown(&mut self, ctx: &mut Ctx<'_>) {
        self.down(ctx, LinkEnd::Shutdown);
        self.state = State::Waiting {
            until: Time::from_offset(Duration::MAX),
        };
    }

    pub fn report(&self) -> NodeReport {
        NodeReport {
            connected: self.connected,
            peer: self.peer.clone(),
            peer_acked: 0,
            last_sync: self.last_sync,
            last_error: self.last_error.clone(),
            refused: self.refused.clone(),
            resyncs: self.resyncs,
            snapshot_progress: self.snapshot_progress,
            pending_updates: self.master_position.saturating_sub(self.position),
            peer_modules: self.peer_modules.clone(),
            module_warnings: self.module_warnings.clone(),
            unauthenticated_failures: 0,
            redundancy: None,
            scrub: Default::default(),
        }
    }
}

impl Link {
    /// The round waits for the master (not for this node's store).
    fn waiting_on_master(&self) -> bool {
        match &self.step {
            Step::Requested => true,
            Step::Restoring(r) => !r.finishing,
            _ => false,
        }
    }
}

/// How many queued entries the next transaction applies: at most
/// [`APPLY_BATCH`] entries and about `max_bytes` of bodies counted unpacked
/// (one frame's worth of plain bodies; a larger entry goes alone), so a
/// backlog is applied and acknowledged a batch at a time, not in one
/// transaction that outlasts the master's patience (15 entries of 10,000
/// rows: 1.2 s in a debug build).
fn apply_batch_len(queue: &VecDeque<LogEntry>, max_bytes: usize) -> usize {
    let mut bytes = 0usize;
    queue
        .iter()
        .take(APPLY_BATCH)
        .take_while(|e| {
            bytes = bytes.saturating_add(e.plain_len());
            bytes <= max_bytes
        })
        .count()
        .max(1)
        .min(queue.len())
}

/// Queues entries after those already queued (or applied), dropping
/// duplicates a faulty link delivered twice; returns how many it queued.
fn extend(queue: &mut VecDeque<LogEntry>, applied: u64, entries: Vec<LogEntry>) -> usize {
    let mut last = queue.back().map_or(applied, |e| e.position);
    let mut added = 0;
    for e in entries {
        if e.position > last {
            last = e.position;
            queue.push_back(e);
            added += 1;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(sizes: &[usize]) -> VecDeque<LogEntry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| LogEntry {
                position: i as u64 + 1,
                epoch: 1,
                committed_at: 0,
                digest: persist_core::Digest::EMPTY,
                body: vec![0; n],
            })
            .collect()
    }

    #[test]
    fn a_transaction_applies_about_one_frame_of_the_backlog() {
        let mb = 1 << 20;
        assert_eq!(apply_batch_len(&queue(&[mb; 15]), 4 * mb), 4);
        assert_eq!(
            apply_batch_len(&queue(&[5 * mb, mb]), 4 * mb),
            1,
            "a large entry goes alone"
        );
        assert_eq!(apply_batch_len(&queue(&[10; 3]), 4 * mb), 3);
        assert_eq!(
            apply_batch_len(&queue(&[10; APPLY_BATCH + 5]), 4 * mb),
            APPLY_BATCH
        );
        // Packed bodies count as what they unpack to.
        let mut packed = queue(&[mb; 15]);
        for e in &mut packed {
            e.body = persist_core::log::pack_stored(std::mem::take(&mut e.body));
            assert!(e.body.len() < mb / 100);
        }
        assert_eq!(apply_batch_len(&packed, 4 * mb), 4);
    }
}
