//! The master's sync service: accepts backups and keeps them up to date.

use std::sync::Arc;
use std::time::Duration;

use persist_core::{Store, WriteTx};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::driver::{self, Nowhere, Published, Request, Start, StartError};
use super::{LinkStatus, SyncConfig, SyncError};
use crate::engine::{Command, Role};
use crate::transport::Acceptor;

/// A running master sync service (alone, or the master side of a node).
pub struct MasterHandle {
    pub(crate) published: Arc<Published>,
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) store: Store,
    /// Set when the service runs alone (a node owns its task otherwise).
    pub(crate) task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MasterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterHandle")
            .field("status", &self.status())
            .finish()
    }
}

/// Starts the master side on the current tokio runtime.
pub fn start_master<A: Acceptor>(
    store: Store,
    acceptor: A,
    cfg: SyncConfig,
) -> Result<MasterHandle, StartError> {
    let started = driver::spawn::<A, Nowhere, Nowhere>(
        Start {
            store: store.clone(),
            role: Role::Master,
            sync: cfg,
            redundancy: None,
            runtime: None,
            history: None,
            probe_every: None,
            state: None,
            witness: None,
        },
        Some(acceptor),
        None,
        None,
    )?;
    Ok(MasterHandle {
        published: started.published,
        requests: started.requests,
        store,
        task: Some(started.task),
    })
}

impl MasterHandle {
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

    /// The backup's acknowledged position.
    pub fn acked(&self) -> u64 {
        self.published.acks.get()
    }

    /// Waits until the backup has durably applied `position`.
    pub async fn wait_replicated(&self, position: u64, timeout: Duration) -> Result<(), SyncError> {
        if self.published.acks.wait(position, timeout).await {
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
        if self.published.acks.wait_blocking(position, timeout) {
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
        let (value, position) = self.store.write_positioned(f)?;
        if let Some(p) = position {
            self.wait_replicated_blocking(p, timeout)?;
        }
        Ok(value)
    }

    /// Asks for a full resync of the connected backup (operator action; the
    /// next backup to connect gets it if none is connected).
    pub fn request_resync(&self) {
        let (tx, _) = oneshot::channel();
        let _ = self.requests.try_send((Command::Resync, tx));
    }

    /// Stops the service and waits for it (for the master side of a node,
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

impl Drop for MasterHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let (tx, _) = oneshot::channel();
            let _ = self.requests.try_send((Command::Shutdown, tx));
        }
    }
}
