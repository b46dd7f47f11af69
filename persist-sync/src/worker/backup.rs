//! The backup's sync service: dials the master and applies what it sends.

use std::sync::Arc;
use std::time::Duration;

use persist_core::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::driver::{self, Nowhere, Published, Request, Start, StartError};
use super::{LinkStatus, SyncConfig};
use crate::engine::{Command, Role};
use crate::transport::Dialer;

/// A running backup sync service (alone, or the backup side of a node).
pub struct BackupHandle {
    pub(crate) published: Arc<Published>,
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) store: Store,
    /// Set when the service runs alone (a node owns its task otherwise).
    pub(crate) task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupHandle")
            .field("status", &self.status())
            .finish()
    }
}

/// Starts the backup side on the current tokio runtime.
pub fn start_backup<D: Dialer>(
    store: Store,
    dialer: D,
    cfg: SyncConfig,
) -> Result<BackupHandle, StartError> {
    let started = driver::spawn::<Nowhere, D, Nowhere>(
        Start {
            store: store.clone(),
            role: Role::Backup,
            sync: cfg,
            redundancy: None,
            runtime: None,
            history: None,
            probe_every: None,
            state: None,
            witness: None,
        },
        None,
        Some(dialer),
        None,
    )?;
    Ok(BackupHandle {
        published: started.published,
        requests: started.requests,
        store,
        task: Some(started.task),
    })
}

impl BackupHandle {
    /// The link's current status.
    pub fn status(&self) -> LinkStatus {
        let mut s = self.published.status.borrow().clone();
        s.position = self.store.position();
        s
    }

    /// Status changes, for async code.
    pub fn watch_status(&self) -> watch::Receiver<LinkStatus> {
        self.published.status.subscribe()
    }

    /// Asks the master for a full snapshot (operator action).
    pub fn request_resync(&self) {
        let (tx, _) = oneshot::channel();
        let _ = self.requests.try_send((Command::Resync, tx));
    }

    /// Waits until the backup's position reaches `position`.
    pub async fn wait_position(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.published.status.subscribe();
        let store = self.store.clone();
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
            && self.store.position() >= position
    }

    /// Stops the service and waits for it (for the backup side of a node,
    /// use the node's `shutdown`).
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send((Command::Shutdown, tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for BackupHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let (tx, _) = oneshot::channel();
            let _ = self.requests.try_send((Command::Shutdown, tx));
        }
    }
}
