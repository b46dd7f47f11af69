//! The tokio side of sync: tasks that move frames and run timers, while every
//! decision is taken by [`crate::core`].
//!
//! - [`master::start_master`]: accepts a backup, plans its sync, streams the
//!   log (or a snapshot), tracks acknowledgements, trims the log.
//! - [`backup::start_backup`]: dials the master with backoff, applies what
//!   arrives, acknowledges durably applied positions.

pub mod backup;
mod bridge;
pub mod master;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::auth::AuthConfig;
use crate::codec::{self, CodecError, Limits};
use crate::core::RetentionPolicy;
use crate::protocol::{Message, RefuseReason};
use crate::transport::{FrameSink, FrameSource};

/// Settings of a sync worker (either side).
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Cluster name, node id and shared secret.
    pub auth: AuthConfig,
    /// Time allowed for the hello and authentication exchange.
    pub handshake_timeout: Duration,
    /// Entries per `Entries` frame, at most.
    pub max_batch_entries: usize,
    /// Bytes of entry bodies per `Entries` frame, at most (one larger entry
    /// still goes alone).
    pub max_batch_bytes: usize,
    /// Entries the master sends ahead of the backup's acknowledgements.
    pub max_in_flight: u64,
    /// Rows per snapshot frame.
    pub snapshot_chunk_rows: usize,
    /// How long the master keeps its log.
    pub retention: RetentionPolicy,
    /// How often the master applies the retention policy.
    pub retention_interval: Duration,
    /// First delay before the backup dials again after a failure.
    pub reconnect_initial: Duration,
    /// Longest delay between the backup's attempts.
    pub reconnect_max: Duration,
    /// Frame limits once authenticated.
    pub limits: Limits,
    /// How often each side sends a heartbeat on an established link.
    pub heartbeat_interval: Duration,
    /// A link whose peer stayed silent this long (or that could not take a
    /// frame for this long) is dropped and dialed again: a dead link is
    /// noticed whatever TCP does.
    pub peer_timeout: Duration,
    /// Where the worker reports every frame heard from the peer, with the
    /// peer's latest heartbeat (the redundancy runtime watches it).
    pub heard: Option<watch::Sender<Option<Heard>>>,
    /// Runtime state carried between the nodes (see [`crate::runtime_state`]).
    pub runtime: Option<Arc<crate::runtime_state::RuntimeStates>>,
    /// History forwarded from an active backup (see [`crate::history`]).
    pub history: Option<Arc<crate::history::History>>,
}

/// The peer as last heard on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// When a frame last arrived from the peer.
    pub at: std::time::Instant,
    /// The peer's node id (authenticated).
    pub node_id: String,
    /// The peer's role, epoch, claim and position from its last heartbeat.
    pub role: crate::protocol::NodeRole,
    /// The peer's claim.
    pub claim: persist_core::Claim,
    /// The peer's log position.
    pub position: u64,
    /// Whether the peer sent a heartbeat in the current session (only then
    /// are `role`, `claim` and `position` current).
    pub announced: bool,
}

/// Starts a session's view of the peer afresh: nothing it announced on an
/// earlier connection counts (it may have been frozen or restarted since).
pub(crate) fn begin_session(cfg: &SyncConfig) {
    if let Some(tx) = &cfg.heard {
        tx.send_replace(None);
    }
}

/// Records a frame from the peer (and, for a heartbeat, its announcement).
pub(crate) fn note_heard(
    cfg: &SyncConfig,
    node_id: &str,
    default_role: crate::protocol::NodeRole,
    msg: Option<&Message>,
) {
    let Some(tx) = &cfg.heard else { return };
    tx.send_modify(|h| {
        let now = std::time::Instant::now();
        let mut cur = match h.take() {
            Some(prev) if prev.node_id == node_id => prev,
            _ => Heard {
                at: now,
                node_id: node_id.to_owned(),
                role: default_role,
                claim: persist_core::Claim::default(),
                position: 0,
                announced: false,
            },
        };
        cur.at = now;
        if let Some(Message::Heartbeat {
            epoch,
            position,
            role,
            active,
        }) = msg
        {
            cur.role = *role;
            cur.claim = persist_core::Claim {
                epoch: *epoch,
                active: active.clone(),
                // Heartbeats do not say who made the claim; the receiver
                // credits the sender if it adopts it.
                by: None,
            };
            cur.position = *position;
            cur.announced = true;
        }
        *h = Some(cur);
    });
}

/// This node's heartbeat: its claim as recorded in the store.
pub(crate) fn heartbeat(store: &persist_core::Store, role: crate::protocol::NodeRole) -> Message {
    let claim = store.claim();
    Message::Heartbeat {
        epoch: claim.epoch.max(store.epoch()),
        position: store.position(),
        role,
        active: claim.active,
    }
}

impl SyncConfig {
    /// Defaults around the given authentication settings.
    pub fn new(auth: AuthConfig) -> Self {
        SyncConfig {
            auth,
            handshake_timeout: Duration::from_secs(5),
            max_batch_entries: 4096,
            max_batch_bytes: 4 << 20,
            max_in_flight: 16_384,
            snapshot_chunk_rows: 8_192,
            retention: RetentionPolicy::default(),
            retention_interval: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            limits: Limits::default(),
            heartbeat_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(5),
            heard: None,
            runtime: None,
            history: None,
        }
    }
}

/// What a sync worker reports about its link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStatus {
    /// Whether an authenticated peer is connected and syncing.
    pub connected: bool,
    /// The peer's node id while connected.
    pub peer: Option<String>,
    /// The local store's position.
    pub position: u64,
    /// On the master: the backup's acknowledged position.
    pub peer_acked: u64,
    /// When the two were last in sync (an ack of the head, or an applied batch).
    pub last_sync: Option<SystemTime>,
    /// The last error, if the link failed.
    pub last_error: Option<String>,
    /// The last refusal (protocol, cluster, schema mismatch), shown to operators.
    pub refused: Option<RefuseReason>,
    /// Full resyncs so far.
    pub resyncs: u64,
    /// Rows done and total of a snapshot in progress.
    pub snapshot_progress: Option<(u64, u64)>,
}

/// A worker's [`LinkStatus`]: kept in a watch channel, with the local
/// position read fresh from the store whenever it is published or read.
pub(crate) struct StatusCell {
    store: persist_core::Store,
    tx: watch::Sender<LinkStatus>,
}

impl StatusCell {
    pub fn new(store: persist_core::Store) -> Self {
        let tx = watch::Sender::new(LinkStatus {
            position: store.position(),
            ..LinkStatus::default()
        });
        StatusCell { store, tx }
    }

    /// Changes the status and publishes it.
    pub fn update(&self, f: impl FnOnce(&mut LinkStatus)) {
        self.tx.send_modify(|s| {
            f(s);
            s.position = self.store.position();
        });
    }

    /// The status now.
    pub fn get(&self) -> LinkStatus {
        let mut s = self.tx.borrow().clone();
        s.position = self.store.position();
        s
    }

    /// Status changes.
    pub fn subscribe(&self) -> watch::Receiver<LinkStatus> {
        self.tx.subscribe()
    }

    /// An authenticated peer is syncing; `last_error` is what still stands.
    pub fn connected(&self, peer: &str, last_error: Option<String>) {
        self.update(|s| {
            s.connected = true;
            s.peer = Some(peer.to_owned());
            s.refused = None;
            s.last_error = last_error;
        });
    }

    /// The session ended with `error`.
    pub fn disconnected(&self, error: &SessionError) {
        self.update(|s| {
            s.connected = false;
            s.peer = None;
            s.last_error = Some(error.to_string());
            if let SessionError::Refused(r) = error {
                s.refused = Some(r.clone());
            }
        });
    }
}

impl std::fmt::Debug for StatusCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.tx.borrow().fmt(f)
    }
}

/// Why a sync session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The link failed.
    #[error("link: {0}")]
    Io(#[from] std::io::Error),
    /// Authentication failed.
    #[error("authentication: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// A frame could not be decoded.
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
    /// The peer refused the connection.
    #[error("refused by peer: {0:?}")]
    Refused(RefuseReason),
    /// We refused the peer.
    #[error("refused the peer: {0:?}")]
    RefusedPeer(RefuseReason),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The local store failed.
    #[error("store: {0}")]
    Store(#[from] persist_core::Error),
    /// An entry or snapshot from the master did not apply: a full resync follows.
    #[error("apply failed: {0}")]
    ApplyFailed(String),
    /// The master's log holds an operation this node does not know: sync
    /// stops at that entry (no resync would make it right) until the module
    /// is installed here.
    #[error("{0}")]
    UnknownOperation(String),
    /// The link closed.
    #[error("the peer closed the link")]
    Closed,
    /// The peer stayed silent (or did not take our frames) for too long.
    #[error("peer silent for {0:?}: link considered dead")]
    Timeout(Duration),
    /// The worker was asked to stop.
    #[error("shutting down")]
    Shutdown,
}

/// Resolves once `flag` is true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// Sends one message.
pub(crate) async fn send<S: FrameSink>(sink: &mut S, msg: &Message) -> Result<(), SessionError> {
    sink.send(codec::encode(msg)).await?;
    Ok(())
}

/// Sends one message, failing if the link cannot take it within `timeout`
/// (a peer that stopped reading, a partition without a reset).
pub(crate) async fn send_within<S: FrameSink>(
    sink: &mut S,
    msg: &Message,
    timeout: Duration,
) -> Result<(), SessionError> {
    match tokio::time::timeout(timeout, send(sink, msg)).await {
        Ok(r) => r,
        Err(_) => Err(SessionError::Timeout(timeout)),
    }
}

/// Receives one message (`Closed` at a clean end).
pub(crate) async fn recv<R: FrameSource>(
    source: &mut R,
    limits: &Limits,
) -> Result<Message, SessionError> {
    match source.recv().await? {
        Some(frame) => Ok(codec::decode(&frame, limits)?),
        None => Err(SessionError::Closed),
    }
}

/// Acknowledged positions, awaitable from async and blocking code alike.
#[derive(Debug)]
pub(crate) struct AckTracker {
    acked: Mutex<u64>,
    changed: Condvar,
    watch: watch::Sender<u64>,
}

impl AckTracker {
    pub fn new(initial: u64) -> Arc<Self> {
        Arc::new(AckTracker {
            acked: Mutex::new(initial),
            changed: Condvar::new(),
            watch: watch::Sender::new(initial),
        })
    }

    pub fn get(&self) -> u64 {
        *self.acked.lock()
    }

    pub fn set(&self, position: u64) {
        let mut a = self.acked.lock();
        if position > *a {
            *a = position;
            self.changed.notify_all();
            self.watch.send_replace(position);
        }
    }

    /// Forgets acknowledgements above `position` (a new backup restarted below).
    pub fn reset(&self, position: u64) {
        let mut a = self.acked.lock();
        *a = position;
        self.changed.notify_all();
        self.watch.send_replace(position);
    }

    pub fn wait_blocking(&self, position: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut a = self.acked.lock();
        while *a < position {
            if self.changed.wait_until(&mut a, deadline).timed_out() {
                return *a >= position;
            }
        }
        true
    }

    pub async fn wait(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.watch.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Errors of synchronous commits.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The write committed locally, but the backup did not confirm it in time.
    #[error("position {position} committed locally but not confirmed by the backup within {timeout:?} (backup at {acked})")]
    Timeout {
        /// The write's position.
        position: u64,
        /// The backup's acknowledged position.
        acked: u64,
        /// The time waited.
        timeout: Duration,
    },
    /// The write itself failed.
    #[error(transparent)]
    Store(#[from] persist_core::Error),
}

/// Resolves when the watch changes; never, without one (or once it closed).
async fn wait_change(rx: Option<&mut watch::Receiver<u64>>) {
    let changed = match rx {
        Some(c) => c.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

/// A session's share of the runtime state exchange.
pub(crate) struct RuntimeLink {
    states: Option<Arc<crate::runtime_state::RuntimeStates>>,
    changed: Option<watch::Receiver<u64>>,
    cursor: crate::runtime_state::Cursor,
}

impl RuntimeLink {
    pub fn new(cfg: &SyncConfig) -> Self {
        RuntimeLink {
            changed: cfg.runtime.as_ref().map(|r| r.subscribe()),
            states: cfg.runtime.clone(),
            cursor: Default::default(),
        }
    }

    /// Sends whatever is due (full states on a new link, queued updates).
    pub async fn flush<S: FrameSink>(
        &mut self,
        sink: &mut S,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let Some(states) = &self.states else {
            return Ok(());
        };
        if let Some(c) = self.changed.as_mut() {
            c.borrow_and_update();
        }
        for msg in states.outgoing(&mut self.cursor) {
            send_within(sink, &msg, timeout).await?;
        }
        Ok(())
    }

    /// Resolves when there may be something to send.
    pub async fn changed(&mut self) {
        wait_change(self.changed.as_mut()).await
    }

    /// Handles a runtime message from the peer; true if it was one.
    pub async fn receive<S: FrameSink>(
        &mut self,
        sink: &mut S,
        msg: &Message,
        timeout: Duration,
    ) -> Result<bool, SessionError> {
        let Some(states) = &self.states else {
            return Ok(matches!(
                msg,
                Message::RuntimeFull { .. }
                    | Message::RuntimeUpdate { .. }
                    | Message::RuntimeResend { .. }
            ));
        };
        match msg {
            Message::RuntimeFull { .. } | Message::RuntimeUpdate { .. } => {
                if let Some(reply) = states.incoming(msg) {
                    send_within(sink, &reply, timeout).await?;
                }
                Ok(true)
            }
            Message::RuntimeResend { provider } => {
                states.resend(&mut self.cursor, provider);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A session's share of history forwarding: the backup sends what it
/// buffered, the master delivers and acknowledges.
pub(crate) struct HistoryLink {
    history: Option<Arc<crate::history::History>>,
    changed: Option<watch::Receiver<u64>>,
    /// Last sequence number sent on this link.
    sent: u64,
    /// Last sequence number the master acknowledged on this link.
    acked: u64,
}

impl HistoryLink {
    pub fn new(cfg: &SyncConfig) -> Self {
        HistoryLink {
            changed: cfg.history.as_ref().map(|h| h.subscribe()),
            history: cfg.history.clone(),
            sent: 0,
            acked: 0,
        }
    }

    /// Backup: sends buffered items not sent on this link yet.
    pub async fn flush<S: FrameSink>(
        &mut self,
        sink: &mut S,
        origin: &str,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let Some(h) = &self.history else {
            return Ok(());
        };
        if let Some(c) = self.changed.as_mut() {
            c.borrow_and_update();
        }
        loop {
            let items = h.pending(self.sent)?;
            let Some(last) = items.last().map(|i| i.seq) else {
                return Ok(());
            };
            send_within(
                sink,
                &Message::HistoryBatch {
                    origin: origin.to_owned(),
                    items,
                },
                timeout,
            )
            .await?;
            self.sent = last;
        }
    }

    /// Resolves when more history may be buffered.
    pub async fn changed(&mut self) {
        wait_change(self.changed.as_mut()).await
    }

    /// Backup: the master delivered up to `seq`.
    pub fn acknowledged(&mut self, seq: u64) -> Result<(), SessionError> {
        self.acked = self.acked.max(seq);
        if let Some(h) = &self.history {
            h.acknowledged(seq)?;
        }
        Ok(())
    }

    /// Backup, at each heartbeat: what was sent and not acknowledged since
    /// goes again (an acknowledgement may have been lost; the master
    /// delivers each item once whatever it receives).
    pub async fn retry<S: FrameSink>(
        &mut self,
        sink: &mut S,
        origin: &str,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        if self.sent > self.acked {
            self.sent = self.acked;
            return self.flush(sink, origin, timeout).await;
        }
        Ok(())
    }

    /// Master: delivers a forwarded batch; the acknowledgement to send back.
    pub fn receive(
        &self,
        origin: &str,
        items: &[persist_core::HistoryItem],
    ) -> Result<Option<Message>, SessionError> {
        let Some(h) = &self.history else {
            return Err(SessionError::Protocol(
                "history forwarded to a master without a history sink".into(),
            ));
        };
        let seq = h.receive(origin, items)?;
        Ok(Some(Message::HistoryAck { seq }))
    }
}
