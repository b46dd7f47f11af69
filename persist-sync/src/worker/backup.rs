//! The backup's sync service: dials the master and applies what it sends.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use persist_core::{Error as StoreError, LogEntry, SnapshotHeader, SnapshotTableInfo, Store};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::master::AbortOnDrop;
use super::{recv, send, send_within, LinkStatus, SessionError, StatusCell, SyncConfig};
use crate::auth::authenticate;
use crate::protocol::{LinkRole, Message, NodeRole, Plan, ResyncReason};
use crate::transport::{Dialer, FrameSource, Link};

/// Entries the applier merges into one database transaction, at most.
const APPLY_BATCH: usize = 8192;

struct Ctx {
    store: Store,
    cfg: SyncConfig,
    status: StatusCell,
    resync_next: Mutex<Option<ResyncReason>>,
    /// Sync stopped at an entry this node cannot apply as is (an unknown
    /// operation): shown in the status until an apply gets past it.
    stuck: Mutex<Option<String>>,
    reconnect: Notify,
    shutdown: watch::Sender<bool>,
}

/// A running backup sync service.
pub struct BackupHandle {
    ctx: Arc<Ctx>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupHandle")
            .field("status", &self.ctx.status)
            .finish()
    }
}

/// Starts the backup side on the current tokio runtime.
pub fn start_backup<D: Dialer>(store: Store, dialer: D, cfg: SyncConfig) -> BackupHandle {
    let ctx = Arc::new(Ctx {
        status: StatusCell::new(store.clone()),
        store,
        cfg,
        resync_next: Mutex::new(None),
        stuck: Mutex::new(None),
        reconnect: Notify::new(),
        shutdown: watch::Sender::new(false),
    });
    let task = tokio::spawn(run(dialer, ctx.clone()));
    BackupHandle {
        ctx,
        task: Some(task),
    }
}

impl BackupHandle {
    /// The link's current status.
    pub fn status(&self) -> LinkStatus {
        self.ctx.status.get()
    }

    /// Status changes, for async code.
    pub fn watch_status(&self) -> watch::Receiver<LinkStatus> {
        self.ctx.status.subscribe()
    }

    /// Reconnects and asks the master for a full snapshot (operator action).
    pub fn request_resync(&self) {
        *self.ctx.resync_next.lock() = Some(ResyncReason::Requested);
        self.ctx.reconnect.notify_one();
    }

    /// Waits until the backup's position reaches `position`.
    pub async fn wait_position(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.ctx.status.subscribe();
        let store = self.ctx.store.clone();
        tokio::time::timeout(timeout, async move {
            loop {
                if store.position() >= position {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && self.ctx.store.position() >= position
    }

    /// Stops the service and waits for it.
    pub async fn shutdown(mut self) {
        self.ctx.shutdown.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for BackupHandle {
    fn drop(&mut self) {
        self.ctx.shutdown.send_replace(true);
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn run<D: Dialer>(dialer: D, ctx: Arc<Ctx>) {
    let cfg = &ctx.cfg;
    let mut delay = cfg.reconnect_initial;
    let mut shutdown = ctx.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = once(&dialer, &ctx) => r,
            _ = super::stopped(&mut shutdown) => return,
        };
        let mut retry_now = false;
        match result {
            Ok(()) => {}
            Err(SessionError::Shutdown) => return,
            Err(e) => {
                tracing::warn!("sync with the master failed: {e}");
                if let SessionError::UnknownOperation(why) = &e {
                    *ctx.stuck.lock() = Some(why.clone());
                }
                if let SessionError::ApplyFailed(why) = &e {
                    *ctx.resync_next.lock() = Some(ResyncReason::ApplyFailed(why.clone()));
                    retry_now = true;
                }
                if matches!(e, SessionError::Protocol(ref m) if m == "resync requested") {
                    retry_now = true;
                }
                ctx.status.disconnected(&e);
            }
        }
        if started.elapsed() > Duration::from_secs(5) || retry_now {
            delay = cfg.reconnect_initial;
        }
        if !retry_now {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = super::stopped(&mut shutdown) => return,
            }
            delay = (delay * 2).min(cfg.reconnect_max);
        }
    }
}

/// An apply went through: the pair is in sync, and whatever stopped sync before is past.
fn synced(ctx: &Ctx) {
    let was_stuck = ctx.stuck.lock().take().is_some();
    ctx.status.update(|s| {
        s.last_sync = Some(SystemTime::now());
        if was_stuck {
            s.last_error = None;
        }
    });
}

fn apply_error(e: StoreError) -> SessionError {
    match e {
        e @ StoreError::UnknownOperation { .. } => SessionError::UnknownOperation(e.to_string()),
        e @ (StoreError::Inapplicable { .. }
        | StoreError::Divergence { .. }
        | StoreError::Decode { .. }) => SessionError::ApplyFailed(e.to_string()),
        // Entries out of order: the link misbehaved, not the data; reconnect
        // and resume from the applied position.
        e @ StoreError::Gap { .. } => SessionError::Protocol(e.to_string()),
        other => SessionError::Store(other),
    }
}

async fn once<D: Dialer>(dialer: &D, ctx: &Arc<Ctx>) -> Result<(), SessionError> {
    let cfg = &ctx.cfg;
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
    source.set_max_frame(cfg.limits.max_frame);

    // Where this backup stands, checked against its rows: a row changed
    // behind the library's back shows as a digest the master does not have.
    let store = ctx.store.clone();
    let verified = tokio::task::spawn_blocking(move || store.verify())
        .await
        .map_err(|e| SessionError::Protocol(format!("verification task: {e}")))??;
    let mut force = ctx.resync_next.lock().take();
    if force.is_none() && !verified.is_consistent() {
        tracing::warn!(
            position = verified.position,
            "local data does not match its recorded digest: asking for a full resync"
        );
        force = Some(ResyncReason::DigestMismatch);
    }
    let store = &ctx.store;
    send(
        &mut sink,
        &Message::SyncRequest {
            schema: store.schema_fingerprint(),
            history: store.history(),
            position: verified.position,
            digest: verified.computed,
            epoch: store.epoch(),
            force_snapshot: force.clone(),
            role: NodeRole::Backup,
        },
    )
    .await?;
    let first = recv(&mut source, &cfg.limits).await;
    if let Ok(m) = &first {
        super::note_heard(cfg, &peer.node_id, NodeRole::Master, Some(m));
    }
    let plan = match first {
        Ok(Message::SyncPlan(plan)) => plan,
        Ok(Message::Refused { reason }) => return Err(SessionError::Refused(reason)),
        Ok(other) => {
            return Err(SessionError::Protocol(format!(
                "expected a sync plan, got {}",
                other.kind()
            )))
        }
        Err(e) => {
            // Keep asking for the snapshot next time.
            if force.is_some() {
                *ctx.resync_next.lock() = force;
            }
            return Err(e);
        }
    };
    tracing::info!(peer = %peer.node_id, ?plan, "connected to the master");
    ctx.status
        .connected(&peer.node_id, ctx.stuck.lock().clone());
    if let Plan::Snapshot { .. } = plan {
        let p = receive_snapshot(&mut source, ctx, &peer.node_id).await?;
        send(&mut sink, &Message::Ack { position: p }).await?;
    } else if let Plan::Incremental { from, history } = &plan {
        if *from != ctx.store.position() + 1 {
            return Err(SessionError::Protocol(format!(
                "master plans from {from}, this backup is at {}",
                ctx.store.position()
            )));
        }
        if *from == 1 && ctx.store.history() != *history {
            ctx.store.adopt_history(history)?;
        }
    }

    // The applier runs on its own thread: it merges queued batches into one
    // transaction and reports each applied position for the ack.
    let (to_apply, mut queue) = mpsc::channel::<Vec<LogEntry>>(64);
    let (applied_tx, mut applied) = mpsc::unbounded_channel::<(usize, Result<u64, StoreError>)>();
    let store = ctx.store.clone();
    let applier = std::thread::Builder::new()
        .name("persist-apply".into())
        .spawn(move || {
            while let Some(mut batch) = queue.blocking_recv() {
                let mut merged = 1;
                while batch.len() < APPLY_BATCH {
                    match queue.try_recv() {
                        Ok(more) => {
                            batch.extend(more);
                            merged += 1;
                        }
                        Err(_) => break,
                    }
                }
                let last = batch.last().map(|e| e.position);
                let r = store.apply_batch(&batch).map(|_| last.unwrap_or(0));
                let failed = r.is_err();
                if applied_tx.send((merged, r)).is_err() || failed {
                    return;
                }
            }
        })?;
    let mut shutdown = ctx.shutdown.subscribe();
    let mut beat = tokio::time::interval(cfg.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    // Batches handed to the applier and not yet reported back.
    let mut in_flight = 0usize;
    let inline_ok = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let mut runtime = super::RuntimeLink::new(cfg);
    // An active backup (after a failover) hands its state to the returning master.
    runtime.flush(&mut sink, cfg.peer_timeout).await?;
    // And the history it buffered meanwhile.
    let mut history = super::HistoryLink::new(cfg);
    history
        .flush(&mut sink, &cfg.auth.node_id, cfg.peer_timeout)
        .await?;
    let result = loop {
        tokio::select! {
            _ = history.changed() => {
                if let Err(e) = history.flush(&mut sink, &cfg.auth.node_id, cfg.peer_timeout).await {
                    break Err(e);
                }
            }
            _ = runtime.changed() => {
                if let Err(e) = runtime.flush(&mut sink, cfg.peer_timeout).await {
                    break Err(e);
                }
            }
            _ = beat.tick() => {
                if let Err(e) = history.retry(&mut sink, &cfg.auth.node_id, cfg.peer_timeout).await {
                    break Err(e);
                }
                let hb = super::heartbeat(&ctx.store, NodeRole::Backup);
                if let Err(e) = send_within(&mut sink, &hb, cfg.peer_timeout).await {
                    break Err(e);
                }
            }
            _ = tokio::time::sleep_until(last_heard + cfg.peer_timeout) => {
                break Err(SessionError::Timeout(cfg.peer_timeout));
            }
            msg = recv(&mut source, &cfg.limits) => {
                last_heard = tokio::time::Instant::now();
                // Only a message counts as hearing the peer; a closed or failed
                // link is silence.
                if let Ok(m) = &msg {
                    super::note_heard(cfg, &peer.node_id, NodeRole::Master, Some(m));
                }
                match msg {
                Ok(Message::Entries(entries)) => {
                    if entries.is_empty() {
                        continue;
                    }
                    // Nothing queued: apply right here, saving a thread hop
                    // (the lag at low rates). Under load the applier thread
                    // takes batches, so receiving and applying overlap.
                    if in_flight == 0 && inline_ok {
                        let last = entries.last().map_or(0, |e| e.position);
                        let store = &ctx.store;
                        match tokio::task::block_in_place(|| store.apply_batch(&entries)) {
                            Ok(_) => {
                                if let Err(e) = send_within(&mut sink, &Message::Ack { position: last }, cfg.peer_timeout).await {
                                    break Err(e);
                                }
                                synced(ctx);
                            }
                            Err(e) => break Err(apply_error(e)),
                        }
                        continue;
                    }
                    in_flight += 1;
                    if to_apply.send(entries).await.is_err() {
                        break Err(SessionError::Protocol("applier stopped".into()));
                    }
                }
                Ok(Message::SyncPlan(Plan::Snapshot { reason })) => {
                    tracing::info!(?reason, "master sends a full snapshot");
                    match receive_snapshot(&mut source, ctx, &peer.node_id).await {
                        Ok(p) => {
                            last_heard = tokio::time::Instant::now();
                            if let Err(e) = send(&mut sink, &Message::Ack { position: p }).await {
                                break Err(e);
                            }
                        }
                        Err(e) => break Err(e),
                    }
                }
                Ok(Message::Heartbeat { .. }) => {}
                Ok(Message::Refused { reason }) => break Err(SessionError::Refused(reason)),
                Ok(Message::HistoryAck { seq }) => {
                    if let Err(e) = history.acknowledged(seq) {
                        break Err(e);
                    }
                }
                Ok(m @ (Message::RuntimeFull { .. } | Message::RuntimeUpdate { .. } | Message::RuntimeResend { .. })) => {
                    if let Err(e) = runtime.receive(&mut sink, &m, cfg.peer_timeout).await {
                        break Err(e);
                    }
                }
                Ok(other) => break Err(SessionError::Protocol(format!("unexpected message from the master: {}", other.kind()))),
                Err(e) => break Err(e),
            }
            },
            done = applied.recv() => match done {
                Some((merged, Ok(position))) => {
                    in_flight = in_flight.saturating_sub(merged);
                    if let Err(e) = send_within(&mut sink, &Message::Ack { position }, cfg.peer_timeout).await {
                        break Err(e);
                    }
                    synced(ctx);
                }
                Some((_, Err(e))) => break Err(apply_error(e)),
                None => break Err(SessionError::Protocol("applier stopped".into())),
            },
            _ = ctx.reconnect.notified() => break Err(SessionError::Protocol("resync requested".into())),
            _ = super::stopped(&mut shutdown) => break Err(SessionError::Shutdown),
        }
    };
    drop(to_apply);
    let _ = tokio::task::spawn_blocking(move || applier.join()).await;
    result
}

async fn receive_snapshot<R: FrameSource>(
    source: &mut R,
    ctx: &Arc<Ctx>,
    peer: &str,
) -> Result<u64, SessionError> {
    let limits = &ctx.cfg.limits;
    let begin = recv(source, limits).await?;
    super::note_heard(&ctx.cfg, peer, NodeRole::Master, Some(&begin));
    let header = match begin {
        Message::SnapshotBegin {
            history,
            position,
            digest,
            epoch,
            tables,
        } => SnapshotHeader {
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
        },
        other => {
            return Err(SessionError::Protocol(format!(
                "expected a snapshot, got {}",
                other.kind()
            )))
        }
    };
    let total: u64 = header.tables.iter().map(|t| t.rows).sum();
    tracing::info!(
        rows = total,
        position = header.position,
        "receiving a full snapshot"
    );
    ctx.status
        .update(|s| s.snapshot_progress = Some((0, total)));
    // The restore runs on a blocking thread, fed chunk by chunk; the bounded
    // channel keeps memory to a few chunks.
    let (tx, mut rx) = mpsc::channel::<persist_core::Result<(u32, Vec<Vec<u8>>)>>(4);
    let store = ctx.store.clone();
    let h = header.clone();
    let restore = AbortOnDrop(tokio::task::spawn_blocking(move || {
        store.restore(&h, std::iter::from_fn(|| rx.blocking_recv()))
    }));
    let mut done = 0u64;
    let transfer = loop {
        let msg = recv(source, limits).await;
        // Every snapshot frame is the master alive: a long resync is no failover.
        if let Ok(m) = &msg {
            super::note_heard(&ctx.cfg, peer, NodeRole::Master, Some(m));
        }
        match msg {
            Ok(Message::SnapshotRows { table, rows }) => {
                done += rows.len() as u64;
                if tx.send(Ok((table, rows))).await.is_err() {
                    break Err(SessionError::Protocol("restore stopped early".into()));
                }
                ctx.status
                    .update(|s| s.snapshot_progress = Some((done, total)));
            }
            Ok(Message::SnapshotEnd) => break Ok(()),
            Ok(other) => {
                break Err(SessionError::Protocol(format!(
                    "unexpected {} inside a snapshot",
                    other.kind()
                )))
            }
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = &transfer {
        let _ = tx
            .send(Err(StoreError::Unavailable(format!(
                "snapshot transfer interrupted: {e}"
            ))))
            .await;
    }
    drop(tx);
    let restored = (&mut { restore }.0)
        .await
        .map_err(|e| SessionError::Protocol(format!("restore task: {e}")))?;
    ctx.status.update(|s| s.snapshot_progress = None);
    transfer?;
    restored.map_err(apply_error)?;
    ctx.status.update(|s| s.resyncs += 1);
    tracing::info!(
        rows = total,
        position = header.position,
        "snapshot restored"
    );
    Ok(header.position)
}
