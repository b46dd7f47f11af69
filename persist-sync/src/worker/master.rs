//! The master's sync service: accepts backups and keeps them up to date.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use persist_core::{SnapshotHeader, Store, WriteTx};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::bridge::Bridge;
use super::{
    recv, send, send_within, AckTracker, LinkStatus, SessionError, StatusCell, SyncConfig,
    SyncError,
};
use crate::auth::authenticate;
use crate::core::{plan_sync, BackupView, Decision, MasterView, SendWindow};
use crate::protocol::{
    LinkRole, Message, NodeRole, Plan, RefuseReason, ResyncReason, SnapshotTable,
};
use crate::transport::{Acceptor, FrameSink, FrameSource, Link};

struct Ctx {
    store: Store,
    cfg: SyncConfig,
    acks: Arc<AckTracker>,
    ever_acked: AtomicBool,
    status: StatusCell,
    resync: Notify,
    /// Sessions so far; the newest one serves, older ones stop.
    current: watch::Sender<u64>,
    bridge: Bridge,
    shutdown: watch::Sender<bool>,
}

/// A running master sync service.
pub struct MasterHandle {
    ctx: Arc<Ctx>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for MasterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterHandle")
            .field("status", &self.ctx.status)
            .finish()
    }
}

/// Starts the master side on the current tokio runtime.
pub fn start_master<A: Acceptor>(
    store: Store,
    acceptor: A,
    cfg: SyncConfig,
) -> std::io::Result<MasterHandle> {
    let ctx = Arc::new(Ctx {
        bridge: Bridge::start(store.clone())?,
        acks: AckTracker::new(0),
        ever_acked: AtomicBool::new(false),
        status: StatusCell::new(store.clone()),
        resync: Notify::new(),
        current: watch::Sender::new(0),
        shutdown: watch::Sender::new(false),
        store,
        cfg,
    });
    let tasks = vec![
        tokio::spawn(accept_loop(acceptor, ctx.clone())),
        tokio::spawn(retention_loop(ctx.clone())),
    ];
    Ok(MasterHandle { ctx, tasks })
}

impl MasterHandle {
    /// The link's current status.
    pub fn status(&self) -> LinkStatus {
        self.ctx.status.get()
    }

    /// Status changes, for async code.
    pub fn watch_status(&self) -> watch::Receiver<LinkStatus> {
        self.ctx.status.subscribe()
    }

    /// The backup's acknowledged position.
    pub fn acked(&self) -> u64 {
        self.ctx.acks.get()
    }

    /// Waits until the backup has durably applied `position`.
    pub async fn wait_replicated(&self, position: u64, timeout: Duration) -> Result<(), SyncError> {
        if self.ctx.acks.wait(position, timeout).await {
            Ok(())
        } else {
            Err(SyncError::Timeout {
                position,
                acked: self.acked(),
                timeout,
            })
        }
    }

    /// Blocking form of [`MasterHandle::wait_replicated`] for non-async module code.
    pub fn wait_replicated_blocking(
        &self,
        position: u64,
        timeout: Duration,
    ) -> Result<(), SyncError> {
        if self.ctx.acks.wait_blocking(position, timeout) {
            Ok(())
        } else {
            Err(SyncError::Timeout {
                position,
                acked: self.acked(),
                timeout,
            })
        }
    }

    /// A synchronous commit: runs `f` in a write transaction on the master
    /// and returns once the backup has durably applied it (blocking; call it
    /// from a blocking thread, not from async code). On
    /// [`SyncError::Timeout`] the write is committed locally but not yet
    /// confirmed by the backup.
    pub fn write_replicated<T>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut WriteTx<'_>) -> persist_core::Result<T>,
    ) -> Result<T, SyncError> {
        let (value, position) = self.ctx.store.write_positioned(f)?;
        if let Some(p) = position {
            self.wait_replicated_blocking(p, timeout)?;
        }
        Ok(value)
    }

    /// Asks for a full resync of the connected backup (operator action).
    pub fn request_resync(&self) {
        self.ctx.resync.notify_one();
    }

    /// Stops the service and waits for its tasks.
    pub async fn shutdown(mut self) {
        self.ctx.shutdown.send_replace(true);
        self.ctx.current.send_modify(|g| *g += 1);
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for MasterHandle {
    fn drop(&mut self) {
        self.ctx.shutdown.send_replace(true);
        self.ctx.current.send_modify(|g| *g += 1);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop<A: Acceptor>(mut acceptor: A, ctx: Arc<Ctx>) {
    let mut shutdown = ctx.shutdown.subscribe();
    loop {
        let link = tokio::select! {
            r = acceptor.accept() => r,
            _ = super::stopped(&mut shutdown) => return,
        };
        match link {
            Ok(link) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let peer = link.peer();
                    let mut generation = None;
                    match session(link, &ctx, &mut generation).await {
                        Ok(()) | Err(SessionError::Shutdown) => {}
                        Err(e) => {
                            tracing::warn!(%peer, "sync session ended: {e}");
                            // Only the session that serves the backup speaks for the
                            // link: a client that never got that far (a wrong secret,
                            // a refusal) or a session a newer one replaced leaves the
                            // connection state alone and only records its error.
                            let serving = generation.is_some_and(|g| g == *ctx.current.borrow());
                            if serving {
                                ctx.status.disconnected(&e);
                            } else {
                                ctx.status.update(|s| s.last_error = Some(e.to_string()));
                            }
                        }
                    }
                });
            }
            Err(e) => tracing::warn!("accepting a backup failed: {e}"),
        }
    }
}

async fn session<L: Link>(
    link: L,
    ctx: &Arc<Ctx>,
    generation_out: &mut Option<u64>,
) -> Result<(), SessionError> {
    let (mut sink, mut source) = link.split();
    let peer = authenticate(
        &mut sink,
        &mut source,
        LinkRole::Acceptor,
        &ctx.cfg.auth,
        ctx.cfg.handshake_timeout,
    )
    .await?;
    source.set_max_frame(ctx.cfg.limits.max_frame);
    let Message::SyncRequest {
        schema,
        history,
        position,
        digest,
        epoch: _,
        force_snapshot,
        role,
    } = recv(&mut source, &ctx.cfg.limits).await?
    else {
        let reason = RefuseReason::Protocol("expected a sync request".into());
        let _ = send(
            &mut sink,
            &Message::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(SessionError::Protocol("expected a sync request".into()));
    };
    if role == NodeRole::Master {
        // Two masters: neither may take config writes (see `redundancy`).
        let reason = RefuseReason::DualMaster;
        tracing::error!(peer = %peer.node_id, "another node is configured as master: refusing config writes");
        let _ = send(
            &mut sink,
            &Message::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        enter_dual_master(&ctx.store, &peer.node_id);
        ctx.status.update(|s| s.refused = Some(reason.clone()));
        return Err(SessionError::RefusedPeer(reason));
    }
    let store = ctx.store.clone();
    let head = store.head()?;
    let master = MasterView {
        schema: store.schema_fingerprint(),
        history: store.history(),
        position: head.position,
        first_retained: head.first_retained,
    };
    let digest_at = if position <= head.position {
        store.digest_at(position)?
    } else {
        None
    };
    let backup = BackupView {
        schema,
        history,
        position,
        digest,
        force_snapshot,
    };
    let plan = match plan_sync(&master, &backup, digest_at) {
        Decision::Refuse(reason) => {
            tracing::warn!(peer = %peer.node_id, "refusing backup: {reason:?}");
            let _ = send(
                &mut sink,
                &Message::Refused {
                    reason: reason.clone(),
                },
            )
            .await;
            ctx.status.update(|s| s.refused = Some(reason.clone()));
            return Err(SessionError::RefusedPeer(reason));
        }
        Decision::Sync(plan) => plan,
    };
    // This session serves from now on; an older one stops.
    let generation = {
        let mut g = 0;
        ctx.current.send_modify(|c| {
            *c += 1;
            g = *c;
        });
        g
    };
    *generation_out = Some(generation);
    tracing::info!(peer = %peer.node_id, ?plan, "backup connected");
    send(&mut sink, &Message::SyncPlan(plan.clone())).await?;
    ctx.status.connected(&peer.node_id, None);
    let from = match plan {
        Plan::Incremental { from, .. } => from,
        Plan::Snapshot { .. } => send_snapshot(&mut sink, ctx).await? + 1,
    };
    ctx.acks.reset(from - 1);
    super::begin_session(&ctx.cfg);
    stream(sink, source, from, ctx, generation, peer.node_id).await
}

/// Closes the write gate of a master that found another master.
pub(crate) fn enter_dual_master(store: &Store, other: &str) {
    store.set_write_gate(Some(format!(
        "node {other} is also configured as master; fix the configuration and restart both nodes"
    )));
}

/// Dials `dialer` as a master would and reports whether the peer is a
/// master too (then both refuse config writes). Used by the master node's
/// periodic probe of its configured peer.
pub(crate) async fn probe_peer<D: crate::transport::Dialer>(
    dialer: &D,
    store: &Store,
    cfg: &SyncConfig,
) -> Result<bool, SessionError> {
    let link = dialer.dial().await?;
    let (mut sink, mut source) = link.split();
    let peer = authenticate(
        &mut sink,
        &mut source,
        LinkRole::Dialer,
        &cfg.auth,
        cfg.handshake_timeout,
    )
    .await?;
    send(
        &mut sink,
        &Message::SyncRequest {
            schema: store.schema_fingerprint(),
            history: store.history(),
            position: store.position(),
            digest: store.digest(),
            epoch: store.epoch(),
            force_snapshot: None,
            role: NodeRole::Master,
        },
    )
    .await?;
    match recv(&mut source, &cfg.limits).await {
        Ok(Message::Refused {
            reason: RefuseReason::DualMaster,
        }) => {
            enter_dual_master(store, &peer.node_id);
            Ok(true)
        }
        _ => Ok(false),
    }
}

async fn send_snapshot<S: FrameSink>(sink: &mut S, ctx: &Arc<Ctx>) -> Result<u64, SessionError> {
    enum Item {
        Header(SnapshotHeader),
        Rows(u32, Vec<Vec<u8>>),
    }
    let (tx, mut rx) = mpsc::channel::<persist_core::Result<Item>>(4);
    let store = ctx.store.clone();
    let rows_per_chunk = ctx.cfg.snapshot_chunk_rows;
    // The snapshot is read on a blocking thread; the bounded channel keeps
    // memory to a few chunks however large the tables are.
    tokio::task::spawn_blocking(move || {
        let mut snap = match store.snapshot() {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if tx
            .blocking_send(Ok(Item::Header(snap.header().clone())))
            .is_err()
        {
            return;
        }
        loop {
            let item = match snap.next_chunk(rows_per_chunk) {
                Ok(Some((t, rows))) => Ok(Item::Rows(t, rows)),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let header = match rx.recv().await {
        Some(Ok(Item::Header(h))) => h,
        Some(Err(e)) => return Err(e.into()),
        _ => return Err(SessionError::Protocol("snapshot reader stopped".into())),
    };
    let total: u64 = header.tables.iter().map(|t| t.rows).sum();
    send(
        sink,
        &Message::SnapshotBegin {
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
    )
    .await?;
    ctx.status
        .update(|s| s.snapshot_progress = Some((0, total)));
    let mut done = 0u64;
    while let Some(item) = rx.recv().await {
        match item? {
            Item::Rows(table, rows) => {
                done += rows.len() as u64;
                send(sink, &Message::SnapshotRows { table, rows }).await?;
                ctx.status
                    .update(|s| s.snapshot_progress = Some((done, total)));
            }
            Item::Header(_) => return Err(SessionError::Protocol("second snapshot header".into())),
        }
    }
    send(sink, &Message::SnapshotEnd).await?;
    ctx.status.update(|s| {
        s.snapshot_progress = None;
        s.resyncs += 1;
    });
    tracing::info!(rows = total, position = header.position, "snapshot sent");
    Ok(header.position)
}

async fn stream<S: FrameSink, R: FrameSource>(
    mut sink: S,
    mut source: R,
    from: u64,
    ctx: &Arc<Ctx>,
    generation: u64,
    peer_id: String,
) -> Result<(), SessionError> {
    let cfg = &ctx.cfg;
    let (tx, mut from_backup) = mpsc::channel(64);
    let limits = cfg.limits;
    let reader = tokio::spawn(async move {
        loop {
            let m = recv(&mut source, &limits).await;
            let end = m.is_err();
            if tx.send(m).await.is_err() || end {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut window = SendWindow::new(from, cfg.max_in_flight);
    let mut head = ctx.bridge.head.clone();
    let mut current = ctx.current.subscribe();
    let mut beat = tokio::time::interval(cfg.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let mut runtime = super::RuntimeLink::new(cfg);
    runtime.flush(&mut sink, cfg.peer_timeout).await?;
    loop {
        let head_pos = (*head.borrow_and_update()).max(ctx.store.position());
        let n = window.sendable(head_pos);
        if n > 0 {
            let next = window.next();
            let max = n.min(cfg.max_batch_entries as u64) as usize;
            let cached = ctx
                .bridge
                .recent
                .lock()
                .take(next, max, cfg.max_batch_bytes);
            let batch = match cached {
                Some(b) if !b.is_empty() => b,
                _ => {
                    let mut b = ctx.store.read_log(next, max)?;
                    let mut bytes = 0;
                    let keep = b
                        .iter()
                        .take_while(|e| {
                            bytes += e.body.len();
                            bytes <= cfg.max_batch_bytes
                        })
                        .count()
                        .max(1);
                    b.truncate(keep);
                    b
                }
            };
            match batch.first() {
                Some(e) if e.position == next => {}
                Some(e) => {
                    return Err(SessionError::Protocol(format!(
                    "log does not hold position {next} (next is {}): trimmed under a live session",
                    e.position
                )))
                }
                None => {
                    // The head moved but the entry is not readable yet; wait for the next change.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
            let last = batch.last().map_or(next, |e| e.position);
            send_within(&mut sink, &Message::Entries(batch), cfg.peer_timeout).await?;
            window.on_sent(last);
            continue;
        }
        tokio::select! {
            _ = runtime.changed() => runtime.flush(&mut sink, cfg.peer_timeout).await?,
            _ = beat.tick() => {
                let hb = super::heartbeat(&ctx.store, NodeRole::Master);
                send_within(&mut sink, &hb, cfg.peer_timeout).await?;
            }
            _ = tokio::time::sleep_until(last_heard + cfg.peer_timeout) => {
                return Err(SessionError::Timeout(cfg.peer_timeout));
            }
            changed = head.changed() => {
                if changed.is_err() {
                    return Err(SessionError::Shutdown);
                }
            }
            msg = from_backup.recv() => {
                last_heard = tokio::time::Instant::now();
                // Only a message counts as hearing the peer; a closed or failed
                // link is silence.
                if let Some(Ok(m)) = &msg {
                    super::note_heard(cfg, &peer_id, NodeRole::Backup, Some(m));
                }
                match msg {
                Some(Ok(Message::Ack { position })) => {
                    if !window.on_ack(position) {
                        return Err(SessionError::Protocol(format!("ack of position {position}, never sent")));
                    }
                    ctx.acks.set(position);
                    ctx.ever_acked.store(true, Ordering::Relaxed);
                    let in_sync = position >= ctx.store.position();
                    ctx.status.update(|s| {
                        s.peer_acked = position;
                        if in_sync {
                            s.last_sync = Some(SystemTime::now());
                        }
                    });
                }
                Some(Ok(Message::Heartbeat { .. })) => {}
                Some(Ok(Message::HistoryBatch { origin, items })) => {
                    let history = super::HistoryLink::new(cfg);
                    if let Some(ack) = history.receive(&origin, &items)? {
                        send_within(&mut sink, &ack, cfg.peer_timeout).await?;
                    }
                }
                Some(Ok(m)) if runtime.receive(&mut sink, &m, cfg.peer_timeout).await? => {}
                Some(Ok(other)) => {
                    return Err(SessionError::Protocol(format!("unexpected message from the backup: {}", other.kind())));
                }
                Some(Err(e)) => return Err(e),
                None => return Err(SessionError::Closed),
            }
            },
            _ = ctx.resync.notified() => {
                tracing::info!("full resync requested");
                send(&mut sink, &Message::SyncPlan(Plan::Snapshot { reason: ResyncReason::Requested })).await?;
                let p = send_snapshot(&mut sink, ctx).await?;
                window = SendWindow::new(p + 1, cfg.max_in_flight);
            }
            _ = current.changed() => {
                if *current.borrow() != generation {
                    tracing::info!("sync session superseded by a newer connection");
                    return Err(SessionError::Shutdown);
                }
            }
        }
    }
}

async fn retention_loop(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ctx.cfg.retention_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = ctx.store.clone();
        let policy = ctx.cfg.retention.clone();
        let acked = ctx
            .ever_acked
            .load(Ordering::Relaxed)
            .then(|| ctx.acks.get());
        let r = tokio::task::spawn_blocking(move || -> persist_core::Result<u64> {
            let head = store.head()?;
            let cutoff = SystemTime::now()
                .checked_sub(policy.max_age)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as i64);
            let within = store
                .first_position_since(cutoff)?
                .unwrap_or(head.position + 1);
            let below = policy.trim_below(head.position, acked, Some(within));
            if below > head.first_retained {
                return store.trim_log(below);
            }
            Ok(0)
        })
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => tracing::debug!(trimmed = n, "log retention"),
            Ok(Err(e)) => tracing::warn!("log retention failed: {e}"),
            _ => {}
        }
    }
}

/// Aborts a task when dropped (a session's reader dies with the session).
pub(crate) struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
