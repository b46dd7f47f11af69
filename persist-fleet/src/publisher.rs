//! The central side: follows the committed log of the central node and
//! publishes the changes of the shared tables, one fleet entry per central
//! entry that touches them; periodically writes a snapshot and trims the
//! stream to the oldest snapshot kept.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{object_store::ObjectStore, stream::Stream};
use async_nats::HeaderMap;
use persist_core::{Digest, Store};
use tokio::sync::Notify;

use crate::config::FleetConfig;
use crate::error::{bounded, FleetError, Result};
use crate::nats::Fleet;
use crate::shadow::Shadow;
use crate::wire::{
    digest_hex, open_entry, seal_entry, seal_snapshot, snapshot_name, EntryBody, FleetEntry,
    DIGEST_HEADER, EPOCH_HEADER, MAC_HEADER, POSITION_HEADER,
};

/// What the publisher has done, as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublisherStatus {
    /// The last fleet position published (and acknowledged by JetStream).
    pub position: u64,
    /// The central log position the shared data is published up to.
    pub source_position: u64,
    /// The shared digest at `position`.
    pub digest: Digest,
    /// The stream sequence of `position`.
    pub stream_seq: u64,
    /// Entries published since start.
    pub published: u64,
    /// Snapshots written since start.
    pub snapshots: u64,
    /// Rebases (a snapshot in place of entries) since start.
    pub rebases: u64,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
}

/// A running publisher (see the crate docs). Run it on the central node
/// whose role is master; stop it when the node stops being master.
pub struct Publisher {
    status: Arc<Mutex<PublisherStatus>>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    store: Store,
    hook: persist_core::listen::HookId,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("status", &self.status())
            .finish()
    }
}

impl Publisher {
    /// Connects, creates the stream and buckets if missing, recovers where
    /// publishing stopped (from the newest snapshot and the stream), and
    /// starts following `store`'s log. Every table in `config.shared` must be
    /// registered on `store`.
    pub async fn start(store: Store, config: FleetConfig) -> Result<Publisher> {
        let mut tables = Vec::new();
        for t in &config.shared {
            let key = store.key_column_of(t).ok_or_else(|| {
                FleetError::Config(format!("shared: table {t} is not registered on this store"))
            })?;
            tables.push((t.clone(), key));
        }
        let fleet = Fleet::connect(&config).await?;
        let stream = fleet.stream(true).await?;
        let objects = fleet.snapshots(true).await?;
        fleet.status_bucket().await?;
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        let hook = store.add_commit_hook(move |_| w.notify_one());
        let mut p = Pub {
            fleet,
            stream,
            objects,
            store: store.clone(),
            shadow: Shadow::new(&tables),
            tables,
            position: 0,
            source: 0,
            epoch: 0,
            stream_seq: 0,
            last_snapshot: 0,
            pending: None,
            status: Arc::new(Mutex::new(PublisherStatus::default())),
        };
        let resync = p.recover().await?;
        p.publish_status(None);
        let status = p.status.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, wk) = (stop.clone(), wake.clone());
        let task = tokio::spawn(async move { p.run(resync, s, wk).await });
        Ok(Publisher {
            status,
            stop,
            wake,
            task,
            store,
            hook,
        })
    }

    /// The publisher's status.
    pub fn status(&self) -> PublisherStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the central log position `source` (or later) is
    /// published, at most `timeout`; returns whether it was.
    pub async fn wait_published(&self, source: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.status().source_position >= source {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops publishing (at most the request timeout for a publish in flight).
    pub async fn stop(self) {
        self.store.remove_commit_hook(self.hook);
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

struct Pub {
    fleet: Fleet,
    stream: Stream,
    objects: ObjectStore,
    store: Store,
    shadow: Shadow,
    tables: Vec<(String, usize)>,
    position: u64,
    source: u64,
    epoch: u64,
    stream_seq: u64,
    last_snapshot: u64,
    pending: Option<Sealed>,
    status: Arc<Mutex<PublisherStatus>>,
}

/// Central log entries read per store call.
const READ_BATCH: usize = 256;

impl Pub {
    fn publish_status(&self, error: Option<String>) {
        if let Ok(mut s) = self.status.lock() {
            s.position = self.position;
            s.source_position = self.source;
            s.digest = self.shadow.digest;
            s.stream_seq = self.stream_seq;
            s.last_error = error;
        }
    }

    fn count(&self, f: impl FnOnce(&mut PublisherStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Rebuilds the published state from the newest snapshot and the
    /// stream after it; returns whether a resync is needed (the stream
    /// cannot be followed back to a snapshot).
    async fn recover(&mut self) -> Result<bool> {
        let t = self.fleet.t();
        let info = bounded("stream info", t, self.stream.get_info()).await?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let snaps = self.fleet.snapshot_positions(&self.objects).await?;
        let mut from = 1;
        if let Some(&(pos, seq)) = snaps.last() {
            let snap = self.fleet.read_snapshot(&self.objects, (pos, seq)).await?;
            self.shadow.load(&snap.tables)?;
            if self.shadow.digest != snap.digest {
                return Err(FleetError::Refused {
                    what: snapshot_name(pos, seq),
                    reason: "rows do not give its digest".into(),
                });
            }
            (self.position, self.source, self.epoch) = (pos, snap.source_position, snap.epoch);
            self.stream_seq = seq;
            self.last_snapshot = pos;
            from = seq + 1;
        } else if info.state.messages > 0 && first > 1 {
            // Entries were trimmed and no snapshot says what they held.
            return Ok(true);
        }
        let mut seq = from.max(first);
        while seq <= last && info.state.messages > 0 {
            let msg = match bounded("read entry", t, self.stream.get_raw_message(seq)).await {
                Ok(m) => m,
                Err(FleetError::Nats { reason, .. }) if reason.contains("no message found") => {
                    seq += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mac = msg.headers.get(MAC_HEADER).map(|v| v.as_str().to_owned());
            let entry = match open_entry(
                &self.fleet.key,
                &self.fleet.cfg.cluster,
                &msg.payload,
                mac.as_deref(),
                &format!("stream sequence {seq}"),
            ) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("fleet publisher: skipping a message it did not write: {e}");
                    seq += 1;
                    continue;
                }
            };
            if entry.position <= self.position {
                seq += 1;
                continue;
            }
            if entry.position != self.position + 1 {
                return Ok(true);
            }
            match &entry.body {
                EntryBody::Changes(body) => {
                    if self.shadow.apply_body(body).is_err() {
                        return Ok(true);
                    }
                }
                EntryBody::Rebase => {
                    let Some(&(p, s)) = snaps.iter().find(|(p, _)| *p == entry.position) else {
                        return Ok(true);
                    };
                    let snap = self.fleet.read_snapshot(&self.objects, (p, s)).await?;
                    self.shadow.load(&snap.tables)?;
                }
            }
            if self.shadow.digest != entry.digest {
                return Ok(true);
            }
            self.position = entry.position;
            self.source = entry.source_position;
            self.epoch = entry.epoch;
            self.stream_seq = seq;
            seq += 1;
        }
        tracing::info!(
            "fleet publisher: recovered at fleet position {} (central {})",
            self.position,
            self.source
        );
        Ok(false)
    }

    async fn run(mut self, mut resync: bool, stop: Arc<AtomicBool>, wake: Arc<Notify>) {
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::SeqCst) {
            let r = match self.pending.take() {
                // A publish that failed goes out first, unchanged (same id).
                Some(p) => self.send(p).await.map(|()| Step::Progressed),
                None if resync => self.resync().await.map(|()| Step::Progressed),
                None => self.step().await,
            };
            match r {
                Ok(Step::Progressed) => {
                    resync = false;
                    backoff = Duration::from_millis(100);
                    self.publish_status(None);
                }
                Ok(Step::Idle) => {
                    self.publish_status(None);
                    let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
                }
                Ok(Step::Resync) => resync = true,
                Err(e) => {
                    tracing::warn!("fleet publisher: {e}");
                    self.publish_status(Some(e.to_string()));
                    let _ = tokio::time::timeout(backoff, wake.notified()).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The store's head, once it has caught up with what this publisher
    /// read: the writer publishes its head just after a commit that a
    /// reader may already see, so a head behind `source` for a moment is
    /// that race (seen under a tight write loop: six needless rebases in
    /// 100,000 entries), not a store that went back. One that stays behind
    /// for 100 ms did go back (a restore).
    async fn settled_head(&self, mut head: persist_core::LogHead) -> Result<persist_core::LogHead> {
        for _ in 0..20 {
            if head.position >= self.source {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let store = self.store.clone();
            head = tokio::task::spawn_blocking(move || store.head())
                .await
                .map_err(|e| FleetError::Config(format!("store task: {e}")))??;
        }
        Ok(head)
    }

    /// Publishes what the central log has after `source`.
    async fn step(&mut self) -> Result<Step> {
        let (store, from) = (self.store.clone(), self.source + 1);
        let (head, entries) = tokio::task::spawn_blocking(move || {
            let head = store.head()?;
            let entries = store.read_log(from, READ_BATCH)?;
            Ok::<_, persist_core::Error>((head, entries))
        })
        .await
        .map_err(|e| FleetError::Config(format!("store task: {e}")))??;
        let head = self.settled_head(head).await?;
        if head.position < self.source || (head.position >= from && head.first_retained > from) {
            // The central store went back, or trimmed what was not published.
            return Ok(Step::Resync);
        }
        if entries.is_empty() {
            return Ok(Step::Idle);
        }
        for e in entries {
            if e.position != self.source + 1 {
                return Ok(Step::Resync);
            }
            let body = match self.shadow.take_shared(&e.body) {
                Ok(Some(body)) => body,
                Ok(None) => {
                    self.source = e.position;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(
                        "fleet publisher: central entry {}: {err}; resynchronising",
                        e.position
                    );
                    return Ok(Step::Resync);
                }
            };
            let entry = FleetEntry {
                position: self.position + 1,
                source_position: e.position,
                epoch: e.epoch,
                committed_at: e.committed_at,
                digest: self.shadow.digest,
                body: EntryBody::Changes(body),
            };
            let sealed = self.seal(entry);
            if sealed.payload.len() > self.fleet.cfg.max_entry_bytes {
                return Ok(Step::Resync);
            }
            self.send(sealed).await?;
        }
        Ok(Step::Progressed)
    }

    fn seal(&self, entry: FleetEntry) -> Sealed {
        let (payload, mac) = seal_entry(&self.fleet.key, &self.fleet.cfg.cluster, &entry);
        Sealed {
            entry,
            payload: payload.into(),
            mac,
            attempt: 0,
            retried: false,
        }
    }

    /// Publishes one entry and waits for JetStream's acknowledgement
    /// (bounded); on failure keeps it as pending, to go out again unchanged.
    async fn send(&mut self, mut s: Sealed) -> Result<()> {
        let cfg = &self.fleet.cfg;
        loop {
            let id = match s.attempt {
                0 => format!("{}:{}", cfg.cluster, s.entry.position),
                n => format!("{}:{}:{n}", cfg.cluster, s.entry.position),
            };
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(MAC_HEADER, s.mac.as_str());
            headers.insert(POSITION_HEADER, s.entry.position.to_string().as_str());
            headers.insert(DIGEST_HEADER, digest_hex(s.entry.digest).as_str());
            headers.insert(EPOCH_HEADER, s.entry.epoch.to_string().as_str());
            let js = &self.fleet.js;
            let ack = bounded("publish", self.fleet.t(), async {
                js.publish_with_headers(cfg.subject(), headers, s.payload.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            match ack {
                Ok(ack) if ack.duplicate && !s.retried => {
                    // Someone else published under this entry's id first:
                    // this entry was not stored. Another id makes it stored.
                    tracing::warn!(
                        "fleet publisher: message id {id} was already taken by a message it did not send"
                    );
                    s.attempt += 1;
                }
                Ok(ack) => {
                    let e = &s.entry;
                    (self.position, self.source, self.epoch) =
                        (e.position, e.source_position, e.epoch);
                    self.stream_seq = ack.sequence;
                    self.count(|st| st.published += 1);
                    if self.position >= self.last_snapshot + cfg.snapshot_every {
                        if let Err(err) = self.write_snapshot().await {
                            // The entries are out; the snapshot is retried at the next entry.
                            tracing::warn!("fleet publisher: snapshot: {err}");
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    s.retried = true;
                    self.pending = Some(s);
                    return Err(e);
                }
            }
        }
    }

    /// Writes the snapshot of the published position, then deletes the
    /// snapshots beyond `keep_snapshots` and purges the stream below the
    /// oldest one kept.
    async fn write_snapshot(&mut self) -> Result<()> {
        let snap = self
            .shadow
            .snapshot(self.position, self.source, self.epoch, self.stream_seq);
        self.put_snapshot(&snap).await?;
        self.last_snapshot = self.position;
        self.count(|st| st.snapshots += 1);
        let t = self.fleet.t();
        let snaps = self.fleet.snapshot_positions(&self.objects).await?;
        let keep = self.fleet.cfg.keep_snapshots;
        if snaps.len() > keep {
            for &(p, s) in &snaps[..snaps.len() - keep] {
                bounded(
                    "delete snapshot",
                    t,
                    self.objects.delete(snapshot_name(p, s)),
                )
                .await?;
            }
        }
        if let Some(&(_, oldest_seq)) = snaps.get(snaps.len().saturating_sub(keep)) {
            // Entries after the oldest snapshot kept stay; older ones go.
            bounded(
                "purge stream",
                t,
                self.stream.purge().sequence(oldest_seq + 1).into_future(),
            )
            .await?;
        }
        Ok(())
    }

    async fn put_snapshot(&self, snap: &crate::wire::FleetSnapshot) -> Result<()> {
        let bytes = seal_snapshot(&self.fleet.key, &self.fleet.cfg.cluster, snap);
        let name = snapshot_name(snap.position, snap.stream_seq);
        let objects = &self.objects;
        bounded("write snapshot", self.fleet.t() * 10, async {
            objects.put(name.as_str(), &mut bytes.as_slice()).await
        })
        .await?;
        Ok(())
    }

    /// Makes the published state the central store's shared rows: when they
    /// differ from what was published, a snapshot at the next position and
    /// a `Rebase` entry that points edges to it.
    async fn resync(&mut self) -> Result<()> {
        let store = self.store.clone();
        let names: Vec<String> = self.tables.iter().map(|(n, _)| n.clone()).collect();
        let (position, tables) =
            tokio::task::spawn_blocking(move || crate::read_shared(&store, &names))
                .await
                .map_err(|e| FleetError::Config(format!("store task: {e}")))??;
        if self.shadow.same_as(&tables) {
            self.source = position;
            return Ok(());
        }
        self.shadow.load(&tables)?;
        let next = self.position + 1;
        let snap = self
            .shadow
            .snapshot(next, position, self.epoch, self.stream_seq);
        self.put_snapshot(&snap).await?;
        let entry = FleetEntry {
            position: next,
            source_position: position,
            epoch: self.store.epoch(),
            committed_at: 0,
            digest: self.shadow.digest,
            body: EntryBody::Rebase,
        };
        let sealed = self.seal(entry);
        self.send(sealed).await?;
        self.last_snapshot = next;
        self.count(|st| {
            st.rebases += 1;
            st.snapshots += 1;
        });
        tracing::info!("fleet publisher: rebased at fleet position {next} (central {position})");
        Ok(())
    }
}

enum Step {
    Idle,
    Progressed,
    Resync,
}

struct Sealed {
    entry: FleetEntry,
    payload: bytes::Bytes,
    mac: String,
    /// How many times the id was found taken by someone else.
    attempt: u32,
    /// Sent before without an answer (a duplicate then is our own).
    retried: bool,
}
