//! History: data a module produces while running (events, samples), and where
//! it goes when the backup is the active node.
//!
//! - **Partial** (the default): an active backup buffers history durably in
//!   its own database and forwards it to the master once the master is back;
//!   the master delivers every item exactly once, in order (a node-local
//!   marker per origin commits in the same transaction as the delivery, so a
//!   batch sent again after a lost acknowledgement delivers nothing twice).
//! - **Full**: an active backup writes history directly where the module
//!   keeps it ([`HistorySink::write_direct`]); duplicates are possible there,
//!   as in the real system.
//!
//! On the master, history is delivered at once, through the same sink.

use std::sync::Arc;

use persist_core::{HistoryItem, Store, WriteTx};
use tokio::sync::watch;

use crate::protocol::NodeRole;

/// How an active backup treats history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryLevel {
    /// Buffer on the backup, forward to the master when it is back.
    Partial,
    /// Write directly where the module keeps history.
    Full,
}

/// Where a module's history ends up.
pub trait HistorySink: Send + Sync + 'static {
    /// Delivers one item on the master, inside the write transaction that
    /// also records it as delivered (write it to a journal table, say).
    /// `origin` is the node that recorded it.
    fn deliver(
        &self,
        tx: &mut WriteTx<'_>,
        origin: &str,
        item: &HistoryItem,
    ) -> persist_core::Result<()>;

    /// History level Full on an active backup: writes the item directly.
    fn write_direct(&self, item: &HistoryItem) -> Result<(), String> {
        let _ = item;
        Err("this module has no direct history target; use HistoryLevel::Partial".into())
    }
}

/// A node's history service.
pub struct History {
    store: Store,
    node_id: String,
    role: NodeRole,
    level: HistoryLevel,
    sink: Arc<dyn HistorySink>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// Items per forwarded batch, at most.
pub(crate) const BATCH: usize = 512;

impl History {
    /// A history service for a node.
    pub fn new(
        store: Store,
        node_id: impl Into<String>,
        role: NodeRole,
        level: HistoryLevel,
        sink: impl HistorySink,
    ) -> Arc<Self> {
        Arc::new(History {
            store,
            node_id: node_id.into(),
            role,
            level,
            sink: Arc::new(sink),
            changed: watch::Sender::new(0),
        })
    }

    /// Records an item: delivered at once on the master; on a backup,
    /// buffered for the master (Partial) or written directly (Full).
    pub fn record(&self, kind: &str, payload: Vec<u8>) -> Result<(), String> {
        match (self.role, self.level) {
            (NodeRole::Master | NodeRole::Independent, _) => {
                let item = HistoryItem {
                    seq: 0,
                    at: now_micros(),
                    kind: kind.to_owned(),
                    payload,
                };
                self.store
                    .write(|tx| self.sink.deliver(tx, &self.node_id, &item))
                    .map_err(|e| e.to_string())
            }
            (NodeRole::Backup, HistoryLevel::Full) => self.sink.write_direct(&HistoryItem {
                seq: 0,
                at: now_micros(),
                kind: kind.to_owned(),
                payload,
            }),
            (NodeRole::Backup, HistoryLevel::Partial) => {
                self.store
                    .history_append(kind, payload)
                    .map_err(|e| e.to_string())?;
                self.changed.send_modify(|n| *n += 1);
                Ok(())
            }
        }
    }

    /// Items buffered here and not yet acknowledged by the master.
    pub fn buffered(&self) -> persist_core::Result<Vec<HistoryItem>> {
        self.store.history_pending(0, usize::MAX >> 1)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn pending(&self, after: u64) -> persist_core::Result<Vec<HistoryItem>> {
        self.store.history_pending(after, BATCH)
    }

    pub(crate) fn acknowledged(&self, seq: u64) -> persist_core::Result<()> {
        self.store.history_trim(seq).map(|_| ())
    }

    /// On the master: delivers a batch forwarded by `origin`, each item once.
    /// Returns the last sequence number now delivered.
    pub(crate) fn receive(&self, origin: &str, items: &[HistoryItem]) -> persist_core::Result<u64> {
        let marker = format!("history:{origin}");
        self.store.write(|tx| {
            let mut done = tx.local_marker(&marker)?.unwrap_or(0);
            for item in items {
                if item.seq <= done {
                    continue;
                }
                self.sink.deliver(tx, origin, item)?;
                done = item.seq;
            }
            tx.set_local_marker(&marker, done)?;
            Ok(done)
        })
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
