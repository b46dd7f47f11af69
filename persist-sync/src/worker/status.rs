//! What a sync worker publishes: its link status, and the backup's
//! acknowledged position (awaited by synchronous commits).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::protocol::{ModuleManifest, RefuseReason};

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
    /// The modules the connected peer declared (empty while not connected).
    pub peer_modules: Vec<ModuleManifest>,
    /// Modules both nodes run at different versions with the same records,
    /// one line each, while connected.
    pub module_warnings: Vec<String>,
    /// Master: clients that connected and failed before authenticating
    /// (they do not change `last_error`, which is the backup's link's).
    pub unauthenticated_failures: u64,
    /// Scrubbing of this node's rows and ranged repairs (see
    /// [`ScrubStatus`](crate::engine::ScrubStatus)).
    pub scrub: crate::engine::ScrubStatus,
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

    /// Records an acknowledgement (`reset`: forget those above it, a new
    /// backup session that starts lower).
    pub fn set(&self, position: u64, reset: bool) {
        let mut a = self.acked.lock();
        if position > *a || (reset && position != *a) {
            *a = position;
            self.changed.notify_all();
            self.watch.send_replace(position);
        }
    }

    pub fn wait_blocking(&self, position: u64, timeout: Duration) -> bool {
        let mut a = self.acked.lock();
        let r = self
            .changed
            .wait_while_for(&mut a, |a| *a < position, timeout);
        !r.timed_out() || *a >= position
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
