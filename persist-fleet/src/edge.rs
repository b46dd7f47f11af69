//! The edge side: a durable JetStream consumer that applies fleet entries
//! in order, each batch as one local write transaction that also moves the
//! edge's [`FleetCursor`], and acknowledges after the commit.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{kv, object_store::ObjectStore, stream::Stream, AckKind, Message};
use futures_util::StreamExt;
use persist_core::log::decode_body;
use persist_core::store::digest_of_images;
use persist_core::{Digest, Store};
use serde::{Deserialize, Serialize};

use crate::config::FleetConfig;
use crate::error::{bounded, FleetError, Result};
use crate::nats::Fleet;
use crate::records::FleetCursor;
use crate::wire::{digest_hex, open_entry, EntryBody, FleetEntry, FleetSnapshot, MAC_HEADER};

/// What an edge reports (to its status bucket, under its name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStatus {
    /// The edge's name.
    pub edge: String,
    /// The last fleet position applied.
    pub position: u64,
    /// The central log position that corresponds to.
    pub source_position: u64,
    /// The stream sequence of that entry.
    pub stream_seq: u64,
    /// The digest of this edge's shared tables (hex).
    pub digest: String,
    /// Messages in the stream after the last one this edge processed.
    pub lag: u64,
    /// When this status was written (ms since the Unix epoch).
    pub last_seen_ms: u64,
    /// Entries applied since start.
    pub applied: u64,
    /// Snapshots loaded since start.
    pub bootstraps: u64,
    /// Messages refused (failed authentication or decoding) since start.
    pub refused: u64,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
}

/// A running edge subscriber. Start it on the edge node whose role is
/// master (the one that can write); see the crate docs for why.
pub struct Edge {
    status: Arc<Mutex<EdgeStatus>>,
    position: tokio::sync::watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("status", &self.status())
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Edge {
    /// Checks the configuration (it must name the edge; every shared table
    /// and the fleet's records must be registered on `store`), connects, and
    /// starts consuming. A stream that does not exist yet is waited for.
    pub async fn start(store: Store, config: FleetConfig) -> Result<Edge> {
        let name = config
            .edge
            .clone()
            .ok_or_else(|| FleetError::Config("edge: an edge needs a name".into()))?;
        for t in config
            .shared
            .iter()
            .map(String::as_str)
            .chain([<FleetCursor as persist_core::PersistentRecord>::meta().table])
        {
            if store.key_column_of(t).is_none() {
                return Err(FleetError::Config(format!(
                    "table {t} is not registered on this store (shared tables and persist_fleet::records::register)"
                )));
            }
        }
        let fleet = Fleet::connect(&config).await?;
        let status = Arc::new(Mutex::new(EdgeStatus {
            edge: name.clone(),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (position_tx, position) = tokio::sync::watch::channel(0);
        let mut e = EdgeTask {
            position: position_tx,
            shared: config.shared.iter().cloned().collect(),
            fleet,
            store,
            name,
            status: status.clone(),
            cursor: Cursor::default(),
            kv: None,
            last_put: 0,
        };
        let s = stop.clone();
        let task = tokio::spawn(async move { e.run(s).await });
        Ok(Edge {
            status,
            position,
            stop,
            task,
        })
    }

    /// The edge's status.
    pub fn status(&self) -> EdgeStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The applied fleet position, updated right after each commit.
    pub fn watch_position(&self) -> tokio::sync::watch::Receiver<u64> {
        self.position.clone()
    }

    /// Waits until the edge applied fleet position `position` (or later), at
    /// most `timeout`; returns whether it did.
    pub async fn wait_position(&self, position: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.status().position < position {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Stops consuming (within about a second).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    position: u64,
    source: u64,
    seq: u64,
    digest: Digest,
    epoch: u64,
}

struct EdgeTask {
    position: tokio::sync::watch::Sender<u64>,
    shared: HashSet<String>,
    fleet: Fleet,
    store: Store,
    name: String,
    status: Arc<Mutex<EdgeStatus>>,
    cursor: Cursor,
    kv: Option<kv::Store>,
    last_put: u64,
}

/// Entries applied per transaction at most.
const APPLY_BATCH: usize = 256;

enum Next {
    /// Go on reading.
    Continue,
    /// Load the newest snapshot (it must reach at least the position just
    /// before this one), then consume after it.
    Bootstrap(u64),
}

impl EdgeTask {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| FleetError::Config(format!("store task: {e}")))?
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut s) = self.status.lock() {
            s.last_error = e;
        }
    }

    fn note(&self, f: impl FnOnce(&mut EdgeStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    async fn run(&mut self, stop: Arc<AtomicBool>) {
        let mut backoff = Duration::from_millis(100);
        let mut repair = false;
        while !stop.load(Ordering::SeqCst) {
            match self.session(&stop, repair).await {
                Ok(()) => {
                    repair = false;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!("fleet edge {}: {e}", self.name);
                    self.set_error(Some(e.to_string()));
                    // An entry that does not fit the rows: load a snapshot
                    // over them, whatever its position.
                    repair = matches!(e, FleetError::Divergence { .. });
                    self.put_status(true).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.put_status(true).await;
    }

    /// One consumer's life: reads the cursor, loads a snapshot when asked
    /// (`repair`) or needed, then consumes until a snapshot must be loaded,
    /// it is told to stop, or an error.
    async fn session(&mut self, stop: &AtomicBool, mut repair: bool) -> Result<()> {
        if let Some(reason) = self.store.write_gate() {
            // Not the master of its pair: another node consumes under this
            // edge's name; touching the consumer would disturb it.
            self.set_error(Some(format!("not consuming: {reason}")));
            self.put_status(false).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        let fleet_name = self.fleet.cfg.cluster.clone();
        let shared: Vec<String> = self.shared.iter().cloned().collect();
        let (cursor, digest) = self
            .blocking(move |store| {
                let c = store.get::<FleetCursor>(fleet_name)?;
                let (_, tables) = crate::read_shared(&store, &shared)?;
                Ok((c, shared_digest(&tables)))
            })
            .await?;
        self.cursor = match cursor {
            Some(c) => Cursor {
                position: c.position as u64,
                source: c.source_position as u64,
                seq: c.stream_seq as u64,
                digest: Digest::from_bytes(&c.digest).unwrap_or_default(),
                epoch: c.epoch as u64,
            },
            None => Cursor::default(),
        };
        if digest != self.cursor.digest {
            // Shared rows changed behind the fleet's back (or a restore).
            tracing::warn!(
                "fleet edge {}: shared tables do not match the applied position {}; loading a snapshot",
                self.name,
                self.cursor.position
            );
            repair = true;
        }
        self.publish_cursor();
        let stream = self.fleet.stream(false).await?;
        let objects = self.fleet.snapshots(true).await?;
        if self.kv.is_none() {
            self.kv = self.fleet.status_bucket().await.ok();
        }
        let info = bounded("stream info", self.fleet.t(), stream.get_info()).await?;
        let behind = info.state.messages > 0 && info.state.first_sequence > self.cursor.seq + 1;
        if repair || behind {
            self.bootstrap(&objects, repair).await?;
        }
        self.consume(&stream, &objects, stop).await
    }

    /// Loads the newest snapshot if it is ahead of the cursor, or whatever
    /// its position if `force` (the stream keeps the entries after it).
    async fn bootstrap(&mut self, objects: &ObjectStore, force: bool) -> Result<()> {
        let snaps = self.fleet.snapshot_positions(objects).await?;
        let Some(&(pos, seq)) = snaps.last() else {
            if force {
                return Err(FleetError::Config(
                    "no fleet snapshot to repair the shared tables from yet".into(),
                ));
            }
            return Ok(());
        };
        if pos <= self.cursor.position && !force {
            return Ok(());
        }
        let snap = self.fleet.read_snapshot(objects, (pos, seq)).await?;
        let computed = shared_digest(&snap.tables);
        if computed != snap.digest {
            return Err(FleetError::Refused {
                what: format!("snapshot {pos}"),
                reason: "its rows do not give its digest".into(),
            });
        }
        let fleet_name = self.fleet.cfg.cluster.clone();
        let shared = self.shared.clone();
        let cursor = self
            .blocking(move |store| load_snapshot(&store, &fleet_name, &shared, &snap))
            .await?;
        tracing::info!(
            "fleet edge {}: loaded snapshot {pos} (was at {})",
            self.name,
            self.cursor.position
        );
        self.cursor = cursor;
        self.note(|s| s.bootstraps += 1);
        self.publish_cursor();
        self.put_status(true).await;
        Ok(())
    }

    async fn consumer(&self, stream: &Stream) -> Result<pull::Stream> {
        let t = self.fleet.t();
        let durable = format!("edge-{}", self.name);
        // The store's cursor is the truth: the consumer starts after it.
        let _ = bounded("delete consumer", t, stream.delete_consumer(&durable)).await;
        let consumer = bounded(
            "create consumer",
            t,
            stream.create_consumer(pull::Config {
                durable_name: Some(durable),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.cursor.seq + 1,
                },
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 100_000,
                ..Default::default()
            }),
        )
        .await?;
        // Short pull requests with a short idle heartbeat: the client's
        // defaults (30 s expiry, 15 s heartbeat) let a catch-up stall for
        // 30 s now and then (seen in 2 of 9 catch-ups of 50,000 entries in
        // the fleet benchmark, ended by "missed idle heartbeat"); with these
        // a stalled pull ends within seconds.
        bounded(
            "consume",
            t,
            consumer
                .stream()
                .expires(Duration::from_secs(5))
                .heartbeat(Duration::from_secs(2))
                .messages(),
        )
        .await
    }

    async fn consume(
        &mut self,
        stream: &Stream,
        objects: &ObjectStore,
        stop: &AtomicBool,
    ) -> Result<()> {
        // Every message ready, up to a batch, at each wake-up (polled with
        // the task's own waker: a no-op waker poll of the pull stream can
        // leave it never woken again).
        let mut messages = self.consumer(stream).await?.ready_chunks(APPLY_BATCH);
        let mut batch: Vec<(FleetEntry, Message)> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if self.store.write_gate().is_some() {
                // Became a backup: stop consuming (the consumer stays for the master).
                return Ok(());
            }
            let ready =
                match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
                    Err(_) => {
                        self.put_status(false).await;
                        continue;
                    }
                    Ok(None) => {
                        return Err(FleetError::Nats {
                            op: "consume",
                            reason: "the message stream ended".into(),
                        })
                    }
                    Ok(Some(ready)) => ready,
                };
            let mut msgs = Vec::with_capacity(ready.len());
            for m in ready {
                msgs.push(m.map_err(|e| FleetError::Nats {
                    op: "consume",
                    reason: e.to_string(),
                })?);
            }
            for msg in msgs {
                match self.take(msg, &mut batch).await? {
                    Next::Continue => {}
                    Next::Bootstrap(position) => {
                        self.flush(&mut batch).await?;
                        self.bootstrap(objects, false).await?;
                        if self.cursor.position + 1 < position {
                            return Err(FleetError::Refused {
                                what: format!("fleet entry {position}"),
                                reason: format!(
                                    "this edge is at {} and no snapshot reaches further",
                                    self.cursor.position
                                ),
                            });
                        }
                        // Consume again after the snapshot's sequence.
                        return Ok(());
                    }
                }
                if batch.len() >= APPLY_BATCH {
                    self.flush(&mut batch).await?;
                }
            }
            self.flush(&mut batch).await?;
            self.put_status(false).await;
        }
        Ok(())
    }

    /// Sorts one message: refused, already applied, next (batched) or a gap.
    async fn take(&mut self, msg: Message, batch: &mut Vec<(FleetEntry, Message)>) -> Result<Next> {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let mac = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(MAC_HEADER))
            .map(|v| v.as_str().to_owned());
        let entry = match open_entry(
            &self.fleet.key,
            &self.fleet.cfg.cluster,
            &msg.payload,
            mac.as_deref(),
            &format!("stream sequence {seq}"),
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("fleet edge {}: {e}", self.name);
                self.note(|s| {
                    s.refused += 1;
                    s.last_error = Some(e.to_string());
                });
                let _ = bounded("term", self.fleet.t(), msg.ack_with(AckKind::Term)).await;
                return Ok(Next::Continue);
            }
        };
        let applied = batch
            .last()
            .map_or(self.cursor.position, |(e, _)| e.position);
        if entry.position <= applied {
            let _ = bounded("ack", self.fleet.t(), msg.ack()).await;
            return Ok(Next::Continue);
        }
        if entry.position > applied + 1 || entry.body == EntryBody::Rebase {
            return Ok(Next::Bootstrap(entry.position));
        }
        batch.push((entry, msg));
        Ok(Next::Continue)
    }

    /// Applies the batch in one transaction, then acknowledges its last message.
    async fn flush(&mut self, batch: &mut Vec<(FleetEntry, Message)>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let entries: Vec<(FleetEntry, u64)> = batch
            .iter()
            .map(|(e, m)| (e.clone(), m.info().map(|i| i.stream_sequence).unwrap_or(0)))
            .collect();
        let pending = batch
            .last()
            .and_then(|(_, m)| m.info().ok())
            .map_or(0, |i| i.pending);
        let (fleet_name, shared, cursor) = (
            self.fleet.cfg.cluster.clone(),
            self.shared.clone(),
            self.cursor,
        );
        let n = entries.len() as u64;
        let r = self
            .blocking(move |store| apply_entries(&store, &fleet_name, &shared, cursor, &entries))
            .await;
        let cursor = match r {
            Ok(c) => c,
            Err(e) => {
                batch.clear();
                return Err(e);
            }
        };
        self.cursor = cursor;
        if let Some((_, last)) = batch.last() {
            // AckPolicy::All: the last acknowledges the batch.
            bounded("ack", self.fleet.t(), last.ack()).await?;
        }
        batch.clear();
        self.note(|s| {
            s.applied += n;
            s.lag = pending;
            s.last_error = None;
        });
        self.publish_cursor();
        Ok(())
    }

    fn publish_cursor(&self) {
        let c = self.cursor;
        self.note(|s| {
            s.position = c.position;
            s.source_position = c.source;
            s.stream_seq = c.seq;
            s.digest = digest_hex(c.digest);
        });
        self.position
            .send_if_modified(|p| std::mem::replace(p, c.position) != c.position);
    }

    /// Writes the status to the bucket, at most every 500 ms unless `now`.
    async fn put_status(&mut self, now: bool) {
        let t = now_ms();
        if !now && t < self.last_put + 500 {
            return;
        }
        self.last_put = t;
        let mut status = match self.status.lock() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        status.last_seen_ms = t;
        let Some(kv) = &self.kv else { return };
        let body = serde_json::to_vec(&status).unwrap_or_default();
        if let Err(e) = bounded("status", self.fleet.t(), kv.put(&self.name, body.into())).await {
            tracing::debug!("fleet edge {}: status not written: {e}", self.name);
        }
    }
}

fn shared_digest(tables: &[(String, Vec<Vec<u8>>)]) -> Digest {
    let mut d = Digest::default();
    for (name, rows) in tables {
        d.0 ^= digest_of_images(name, rows.iter().map(Vec::as_slice)).0;
    }
    d
}

fn cursor_record(fleet: &str, c: &Cursor) -> FleetCursor {
    FleetCursor {
        fleet: fleet.to_owned(),
        position: c.position as i64,
        source_position: c.source as i64,
        stream_seq: c.seq as i64,
        digest: c.digest.to_bytes().to_vec(),
        epoch: c.epoch as i64,
    }
}

/// Applies fleet entries (each digest-checked) and moves the cursor, in one
/// write transaction of the edge's own.
fn apply_entries(
    store: &Store,
    fleet: &str,
    shared: &HashSet<String>,
    mut cursor: Cursor,
    entries: &[(FleetEntry, u64)],
) -> Result<Cursor> {
    let mut divergence = None;
    let r = store.write(|tx| {
        for (e, seq) in entries {
            if e.position != cursor.position + 1 {
                return Err(persist_core::Error::Gap {
                    expected: cursor.position + 1,
                    got: e.position,
                });
            }
            let EntryBody::Changes(body) = &e.body else {
                return Err(persist_core::Error::Inapplicable {
                    position: e.position,
                    reason: "a rebase is loaded, not applied".into(),
                });
            };
            let changes = decode_body(body).map_err(|source| persist_core::Error::Decode {
                context: format!("fleet entry {}", e.position),
                source,
            })?;
            for ch in changes {
                if !shared.contains(ch.table) {
                    return Err(persist_core::Error::Inapplicable {
                        position: e.position,
                        reason: format!("{} is not a shared table here", ch.table),
                    });
                }
                let images = tx.apply_row_change(ch.table, ch.op, ch.payload)?;
                images.toggle_into(ch.table, &mut cursor.digest);
            }
            if cursor.digest != e.digest {
                divergence = Some(e.position);
                return Err(persist_core::Error::Divergence {
                    position: e.position,
                    local: cursor.digest,
                    remote: e.digest,
                });
            }
            cursor.position = e.position;
            cursor.source = e.source_position;
            cursor.epoch = e.epoch;
            cursor.seq = *seq;
        }
        tx.save(&cursor_record(fleet, &cursor)).map(|_| ())
    });
    match r {
        Ok(()) => Ok(cursor),
        Err(_) if divergence.is_some() => Err(FleetError::Divergence {
            position: divergence.unwrap_or(0),
        }),
        Err(persist_core::Error::Inapplicable { position, reason }) => {
            // A row the entry expects is not as the central node had it.
            tracing::warn!("fleet entry {position}: {reason}");
            Err(FleetError::Divergence { position })
        }
        Err(
            e @ (persist_core::Error::NotFound { .. }
            | persist_core::Error::UniqueViolation { .. }
            | persist_core::Error::MissingReference { .. }),
        ) => {
            tracing::warn!("fleet entry: {e}");
            Err(FleetError::Divergence {
                position: cursor.position + 1,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes the shared tables the snapshot's rows, in one transaction.
fn load_snapshot(
    store: &Store,
    fleet: &str,
    shared: &HashSet<String>,
    snap: &FleetSnapshot,
) -> Result<Cursor> {
    let tables: Vec<(&str, Vec<Vec<u8>>)> = snap
        .tables
        .iter()
        .filter(|(n, _)| shared.contains(n))
        .map(|(n, rows)| (n.as_str(), rows.clone()))
        .collect();
    let cursor = Cursor {
        position: snap.position,
        source: snap.source_position,
        seq: snap.stream_seq,
        digest: snap.digest,
        epoch: snap.epoch,
    };
    store.write(|tx| {
        tx.replace_tables(&tables)?;
        tx.save(&cursor_record(fleet, &cursor)).map(|_| ())
    })?;
    Ok(cursor)
}
