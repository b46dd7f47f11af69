//! The store executor: the one place a node calls its store from the sync
//! layer. Operations run one at a time, in order, on a dedicated thread
//! ([`StoreExecutor`]); nothing of it runs on a tokio worker, so a store
//! that is slow, locked or full never holds up the node's timers, its links
//! or its status. [`StoreWorker`] is the part that runs the operations; the
//! simulator drives it directly.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use parking_lot::Mutex;
use persist_core::{Error, Restore, Snapshot, Store};
use tokio::sync::mpsc;

use super::bridge::Recent;
use crate::clock::Clock;
use crate::engine::{ConnId, MasterView, OpId, StoreOp, StoreResult, StoreValue};
use crate::history::History;

/// A fault to inject in place of running an operation (tests and the simulator).
pub(crate) type FaultHook = Box<dyn FnMut(&StoreOp) -> Option<Error> + Send>;

/// Runs store operations for one node (see the module docs).
pub(crate) struct StoreWorker {
    store: Store,
    history: Option<Arc<History>>,
    recent: Option<Arc<Mutex<Recent>>>,
    clock: Arc<dyn Clock>,
    snapshots: BTreeMap<ConnId, Snapshot>,
    restore: Option<Restore>,
    /// The scrub pass in progress.
    scrub: Option<persist_core::store::Scrub>,
    /// Operations that need the writer while a restore holds it.
    deferred: VecDeque<(OpId, StoreOp)>,
    faults: Option<FaultHook>,
}

impl std::fmt::Debug for StoreWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWorker")
            .field("snapshots", &self.snapshots.len())
            .field("restoring", &self.restore.is_some())
            .field("deferred", &self.deferred.len())
            .finish_non_exhaustive()
    }
}

/// Whether an operation takes the store's writer (and so waits for a
/// restore in progress, which holds it).
fn needs_writer(op: &StoreOp) -> bool {
    matches!(
        op,
        StoreOp::AdoptHistory(_)
            | StoreOp::Apply(_)
            | StoreOp::RestoreBegin(_)
            | StoreOp::HistoryDelivered { .. }
            | StoreOp::DeliverHistory { .. }
            | StoreOp::Retain { .. }
            | StoreOp::SetClaim(_)
            | StoreOp::Repair { .. }
    )
}

impl StoreWorker {
    /// A worker for `store` (with the node's history service, and on a
    /// master the ring of recent entries the commit hook fills).
    pub fn new(
        store: Store,
        history: Option<Arc<History>>,
        recent: Option<Arc<Mutex<Recent>>>,
        clock: Arc<dyn Clock>,
    ) -> StoreWorker {
        StoreWorker {
            store,
            history,
            recent,
            clock,
            snapshots: BTreeMap::new(),
            restore: None,
            scrub: None,
            deferred: VecDeque::new(),
            faults: None,
        }
    }

    /// Replaces operations by the error `hook` returns for them.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn inject_faults(&mut self, hook: FaultHook) {
        self.faults = Some(hook);
    }

    /// Runs `op` (or defers it behind a restore in progress); returns the
    /// results that are ready, in order.
    pub fn run(&mut self, id: OpId, op: StoreOp) -> Vec<(OpId, StoreResult)> {
        if self.restore.is_some() && needs_writer(&op) {
            self.deferred.push_back((id, op));
            return Vec::new();
        }
        let mut done = vec![(id, self.execute(op))];
        while self.restore.is_none() {
            let Some((id, op)) = self.deferred.pop_front() else {
                break;
            };
            done.push((id, self.execute(op)));
        }
        done
    }

    fn execute(&mut self, op: StoreOp) -> StoreResult {
        if let Some(hook) = &mut self.faults {
            if let Some(e) = hook(&op) {
                if matches!(op, StoreOp::RestoreChunk { .. } | StoreOp::RestoreFinish) {
                    // A failed step rolls the restore back, as a real failure does.
                    self.restore = None;
                }
                return Err(e);
            }
        }
        let store = &self.store;
        match op {
            StoreOp::Verify => Ok(StoreValue::Verified {
                ranges_trusted: store.ranges_trusted(),
                verification: store.verify()?,
                schema: store.schema_fingerprint(),
                history: store.history(),
                epoch: store.epoch(),
            }),
            StoreOp::AdoptHistory(h) => {
                store.adopt_history(&h)?;
                Ok(StoreValue::Done)
            }
            StoreOp::Apply(entries) => {
                store.apply_batch(&entries)?;
                Ok(StoreValue::Applied {
                    position: store.position(),
                })
            }
            StoreOp::RestoreBegin(header) => {
                self.restore = None;
                self.restore = Some(store.begin_restore(&header)?);
                Ok(StoreValue::Done)
            }
            StoreOp::RestoreChunk { table, rows } => {
                let Some(r) = self.restore.as_mut() else {
                    return Err(no_restore());
                };
                if let Err(e) = r.push(table, &rows) {
                    self.restore = None;
                    return Err(e);
                }
                Ok(StoreValue::ChunkRestored)
            }
            StoreOp::RestoreFinish => {
                let r = self.restore.take().ok_or_else(no_restore)?;
                r.finish()?;
                Ok(StoreValue::Restored {
                    position: store.position(),
                })
            }
            StoreOp::RestoreAbort => {
                if let Some(r) = self.restore.take() {
                    r.abort();
                }
                Ok(StoreValue::Done)
            }
            StoreOp::HistoryPending { after } => match &self.history {
                Some(h) => Ok(StoreValue::HistoryItems(h.pending(after)?)),
                None => Ok(StoreValue::HistoryItems(Vec::new())),
            },
            StoreOp::HistoryDelivered { seq } => {
                if let Some(h) = &self.history {
                    h.acknowledged(seq)?;
                }
                Ok(StoreValue::Done)
            }
            StoreOp::PlanInputs { position } => {
                let head = store.head()?;
                let digest_at = if position <= head.position {
                    store.digest_at(position)?
                } else {
                    None
                };
                Ok(StoreValue::Planned {
                    view: MasterView {
                        schema: store.schema_fingerprint(),
                        history: store.history(),
                        position: head.position,
                        first_retained: head.first_retained,
                    },
                    digest_at,
                })
            }
            StoreOp::ReadLog {
                from,
                max,
                max_bytes,
            } => Ok(StoreValue::Entries(read_log(
                store,
                self.recent.as_ref(),
                from,
                max,
                max_bytes,
            )?)),
            StoreOp::SnapshotOpen { conn } => {
                let snap = store.snapshot()?;
                let header = snap.header().clone();
                self.snapshots.insert(conn, snap);
                Ok(StoreValue::SnapshotOpened(header))
            }
            StoreOp::SnapshotNext { conn, rows } => {
                let snap = self.snapshots.get_mut(&conn).ok_or_else(|| {
                    Error::Unavailable(format!("no snapshot open for link {conn}"))
                })?;
                match snap.next_chunk(rows) {
                    Ok(c) => Ok(StoreValue::Chunk(c)),
                    Err(e) => {
                        self.snapshots.remove(&conn);
                        Err(e)
                    }
                }
            }
            StoreOp::SnapshotClose { conn } => {
                self.snapshots.remove(&conn);
                Ok(StoreValue::Done)
            }
            StoreOp::DeliverHistory { origin, items } => match &self.history {
                Some(h) => Ok(StoreValue::Delivered {
                    seq: h.receive(&origin, &items)?,
                }),
                None => Err(Error::Unavailable("no history sink on this node".into())),
            },
            StoreOp::Retain { policy, acked } => {
                let head = store.head()?;
                let cutoff = self
                    .clock
                    .wall(self.clock.now())
                    .checked_sub(policy.max_age)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_micros() as i64);
                let within = store
                    .first_position_since(cutoff)?
                    .unwrap_or(head.position + 1);
                let below = policy.trim_below(head.position, acked, Some(within));
                if below > head.first_retained {
                    let n = store.trim_log(below)?;
                    tracing::debug!(trimmed = n, "log retention");
                }
                Ok(StoreValue::Done)
            }
            StoreOp::ScrubStep { rows, count } => {
                let scrub = match &mut self.scrub {
                    Some(s) => s,
                    None => self.scrub.insert(store.scrub()?),
                };
                let total = if count {
                    scrub.count_rows().map(Some)
                } else {
                    Ok(None)
                };
                match total.and_then(|total| Ok((total, scrub.step(rows)?))) {
                    Ok((Some(total), false)) => Ok(StoreValue::ScrubProgress { total }),
                    Ok((None, false)) => Ok(StoreValue::Scrubbed(None)),
                    Ok((_, true)) => {
                        let report = self.scrub.take().expect("a scrub in progress").finish();
                        Ok(StoreValue::Scrubbed(Some(report)))
                    }
                    Err(e) => {
                        self.scrub = None;
                        Err(e)
                    }
                }
            }
            StoreOp::RangeRows(ranges) => Ok(StoreValue::RangeRows(store.range_rows(&ranges)?)),
            StoreOp::Repair { local, set } => Ok(StoreValue::Repaired(store.repair(&local, &set)?)),
            StoreOp::SetClaim(claim) => {
                // A claim below the store's epoch is superseded already (the
                // store applied entries of a later epoch): nothing to record.
                if claim.epoch >= store.epoch() {
                    store.set_claim(&claim)?;
                }
                Ok(StoreValue::Done)
            }
        }
    }
}

fn no_restore() -> Error {
    Error::Inapplicable {
        position: 0,
        reason: "no restore in progress (it failed or was given up)".into(),
    }
}

/// Entries from `from` on: from the ring of recent entries when it holds
/// them (a live master ships a fresh commit without reading it back), from
/// the log otherwise.
pub(crate) fn read_log(
    store: &Store,
    recent: Option<&Arc<Mutex<Recent>>>,
    from: u64,
    max: usize,
    max_bytes: usize,
) -> persist_core::Result<Vec<persist_core::LogEntry>> {
    if let Some(hit) = recent.and_then(|r| r.lock().take(from, max, max_bytes)) {
        if !hit.is_empty() {
            return Ok(hit);
        }
    }
    let mut b = store.read_log(from, max)?;
    let mut bytes = 0;
    let keep = b
        .iter()
        .take_while(|e| {
            bytes += e.body.len();
            bytes <= max_bytes
        })
        .count()
        .max(1);
    b.truncate(keep);
    Ok(b)
}

/// A [`StoreWorker`] on its own thread. Results come back on a tokio channel.
pub(crate) struct StoreExecutor {
    jobs: Option<std::sync::mpsc::Sender<(OpId, StoreOp)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    recent: Option<Arc<Mutex<Recent>>>,
    done: mpsc::UnboundedSender<(OpId, StoreResult)>,
}

impl StoreExecutor {
    /// Starts the thread.
    ///
    /// The worker is made on the thread (a restore in progress holds the
    /// store's writer guard, which stays on one thread).
    pub fn start(
        name: &str,
        make: impl FnOnce() -> StoreWorker + Send + 'static,
        recent: Option<Arc<Mutex<Recent>>>,
        done: mpsc::UnboundedSender<(OpId, StoreResult)>,
    ) -> std::io::Result<StoreExecutor> {
        let (jobs, rx) = std::sync::mpsc::channel::<(OpId, StoreOp)>();
        let results = done.clone();
        let thread = std::thread::Builder::new()
            .name(format!("persist-store-{name}"))
            .spawn(move || {
                let mut worker = make();
                while let Ok((id, op)) = rx.recv() {
                    for r in worker.run(id, op) {
                        if results.send(r).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(StoreExecutor {
            jobs: Some(jobs),
            thread: Some(thread),
            recent,
            done,
        })
    }

    /// Hands over an operation. A log read the ring of recent entries can
    /// answer is answered at once, without the thread hop: it touches no
    /// database and only ever runs ahead of nothing (reads commute).
    pub fn submit(&self, id: OpId, op: StoreOp) {
        if let StoreOp::ReadLog {
            from,
            max,
            max_bytes,
        } = &op
        {
            if let Some(hit) = self
                .recent
                .as_ref()
                .and_then(|r| r.lock().take(*from, *max, *max_bytes))
            {
                if !hit.is_empty() {
                    let _ = self.done.send((id, Ok(StoreValue::Entries(hit))));
                    return;
                }
            }
        }
        if let Some(jobs) = &self.jobs {
            // A stopped thread means a panic there; the node sees its
            // results channel close.
            let _ = jobs.send((id, op));
        }
    }

    /// Lets the thread finish what it was given, then waits for it (on a
    /// blocking thread, so the runtime goes on meanwhile).
    pub async fn finish(mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for StoreExecutor {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it is done; nobody waits here.
        self.jobs.take();
    }
}
