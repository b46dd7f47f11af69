//! The store: registration, typed CRUD, transactions, change capture, apply.

mod apply;
mod dynamic;
mod fleet;
mod history;
mod operation;
mod query;
mod ranges;
pub(crate) mod schema;
mod snapshot;
mod write;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::backend::pg::PgOptions;
use crate::backend::sqlite::{Checkpointer, SqliteOptions};
use crate::backend::{Connection, Dialect, Statement};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::listen::{CommitFeed, Listeners, Subscription, DEFAULT_CAPACITY};
use crate::log::{decode_image_over, encode_image, LogEntry};
use crate::record::{PersistentRecord, RecordMeta};
use crate::value::{SqlType, Value};

pub use apply::Applied;
pub use dynamic::{DeletePreview, RowQuery, RowVersion, Stale};
pub use fleet::{digest_of_images, RowImages};
pub use history::HistoryItem;
pub use operation::ReplicatedOperation;
pub use query::Query;
pub use ranges::{
    bucket_of, plan_repair, RangeDigests, RangeMismatch, RangeRows, RepairOutcome, RepairSet,
    Scrub, ScrubReport, TableRangeRows, BUCKETS,
};
pub use snapshot::{Restore, Snapshot, SnapshotChunk, SnapshotHeader, SnapshotTableInfo};
pub use write::WriteTx;

use schema::{Migration, Table, LOG_TABLE, META_TABLE};

/// Where the store keeps its data.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// Embedded SQLite in a file.
    Sqlite(SqliteOptions),
    /// PostgreSQL.
    Postgres(PgOptions),
}

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database.
    pub backend: BackendConfig,
    /// Commits a record subscription holds before it lags (see [`crate::listen`]).
    pub listener_capacity: usize,
}

impl StoreConfig {
    /// Embedded SQLite in `path` with default options.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            backend: BackendConfig::Sqlite(SqliteOptions::new(path)),
            listener_capacity: DEFAULT_CAPACITY,
        }
    }

    /// PostgreSQL at `url`, in `schema` (created if missing).
    pub fn postgres(url: impl Into<String>, schema: impl Into<String>) -> Self {
        StoreConfig {
            backend: BackendConfig::Postgres(PgOptions::new(url).schema(schema)),
            listener_capacity: DEFAULT_CAPACITY,
        }
    }

    fn connect(&self) -> Result<Box<dyn Connection>> {
        match &self.backend {
            BackendConfig::Sqlite(o) => crate::backend::sqlite::open(o),
            BackendConfig::Postgres(o) => crate::backend::pg::open(o),
        }
    }
}

/// Registered tables, replaced as a whole when a type is registered.
#[derive(Default)]
pub(crate) struct Registry {
    pub tables: HashMap<&'static str, Table>,
    pub operations: HashMap<&'static str, operation::OpHandler>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .field("operations", &self.operations.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    pub fn table_of<R: PersistentRecord>(&self) -> Result<&Table> {
        let meta = R::meta();
        self.tables.get(meta.table).ok_or(Error::NotRegistered {
            type_name: meta.type_name,
            table: meta.table,
        })
    }
}

/// The writer's state: one connection, the log head, listeners.
pub(crate) struct Writer {
    pub conn: Box<dyn Connection>,
    pub position: u64,
    pub digest: Digest,
    pub epoch: u64,
    pub next_id: HashMap<&'static str, i64>,
    pub listeners: Listeners,
    pub history: String,
    /// What readers see of the head, without taking the writer's lock.
    pub published: Arc<RwLock<Published>>,
    /// Epoch of the newest entry in the log: entries must not go back in epoch.
    pub last_entry_epoch: u64,
    /// The recorded range digests (see `ranges`), shared with readers.
    pub ranges: ranges::SharedRanges,
    /// Buffers kept for the next write transaction.
    pub spare: write::Spare,
}

/// Which node a pair considers active, as of an epoch. The epoch grows by one
/// each time the active node changes; a node that learns of a higher epoch
/// adopts that claim. Stored durably with the data.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    /// The epoch.
    pub epoch: u64,
    /// The node id of the active node at this epoch (`None`: not decided yet).
    pub active: Option<String>,
    /// The node that made the claim (a takeover is made by the node taking
    /// over; a switchover or handback by the node giving up).
    #[serde(default)]
    pub by: Option<String>,
}

/// The head as published to readers: updated by the writer after each
/// commit, read without waiting for a write in progress (a heartbeat or a
/// status page must never stall behind a long transaction).
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    pub position: u64,
    pub digest: Digest,
    pub epoch: u64,
    pub history: String,
}

impl Writer {
    /// Publishes the writer's head to readers.
    pub fn publish(&self) {
        let mut p = self.published.write();
        p.position = self.position;
        p.digest = self.digest;
        p.epoch = self.epoch;
        // The history changes rarely (a restore, an adoption): no clone per commit.
        if p.history != self.history {
            p.history = self.history.clone();
        }
    }
}

struct Inner {
    config: StoreConfig,
    dialect: Dialect,
    /// Shared with a [`Restore`] in progress, which holds the lock across calls.
    writer: Arc<Mutex<Writer>>,
    published: Arc<RwLock<Published>>,
    /// The recorded range digests, as the writer's.
    ranges: ranges::SharedRanges,
    /// Why local writes are refused, if they are (see [`Store::set_write_gate`]);
    /// kept apart from the writer so reading or changing it never waits for a write.
    gate: RwLock<Option<String>>,
    claim: RwLock<Claim>,
    readers: Mutex<Vec<Box<dyn Connection>>>,
    registry: RwLock<Arc<Registry>>,
    _checkpointer: Option<Checkpointer>,
}

/// A persistent record store with a replication log. Cheap to clone; all
/// clones share one database and one writer.
///
/// Writes are serialized through one writer connection; reads use a small
/// pool of their own connections, so they never wait for a writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.inner.dialect)
            .finish_non_exhaustive()
    }
}

/// The position and digest of the log head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    /// Last committed (or applied) position; 0 for an empty store.
    pub position: u64,
    /// The digest after that position.
    pub digest: Digest,
    /// First position still held in the log (`position + 1` when the log is empty).
    pub first_retained: u64,
}

/// Result of [`Store::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// Position the check ran at.
    pub position: u64,
    /// Digest recorded for that position.
    pub recorded: Digest,
    /// Digest recomputed from every row.
    pub computed: Digest,
}

impl Verification {
    /// Whether the data matches its recorded digest.
    pub fn is_consistent(&self) -> bool {
        self.recorded == self.computed
    }
}

pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub(crate) fn query_rows(
    conn: &mut dyn Connection,
    stmt: &Statement,
    values: &[Value],
    types: &[SqlType],
) -> Result<Vec<Vec<Value>>> {
    let mut rows = Vec::new();
    conn.query(stmt, values, types, &mut |r| {
        rows.push(std::mem::take(r));
        Ok(())
    })?;
    Ok(rows)
}

/// Runs `f` in a write transaction on `conn`: commits if it succeeds, rolls
/// back if it (or the commit) fails.
pub(crate) fn in_transaction<T>(
    conn: &mut dyn Connection,
    f: impl FnOnce(&mut dyn Connection) -> Result<T>,
) -> Result<T> {
    conn.begin_write()?;
    match f(conn).and_then(|v| conn.commit().map(|()| v)) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = conn.rollback();
            Err(e)
        }
    }
}

/// The single integer a query returns (`COUNT`, `MIN`, `MAX`), if not NULL.
pub(crate) fn query_i64(
    conn: &mut dyn Connection,
    stmt: &Statement,
    values: &[Value],
) -> Result<Option<i64>> {
    let rows = query_rows(conn, stmt, values, &[SqlType::BigInt])?;
    Ok(
        match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(Value::I64(v)) => Some(v),
            _ => None,
        },
    )
}

pub(crate) fn meta_get(conn: &mut dyn Connection, key: &str) -> Result<Option<Vec<u8>>> {
    let mut stmt = Statement::new(format!("SELECT value FROM {META_TABLE} WHERE key = "));
    stmt.bind(0, SqlType::Text);
    let rows = query_rows(conn, &stmt, &[Value::Text(key.into())], &[SqlType::Blob])?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| match r.into_iter().next() {
            Some(Value::Blob(b)) => Some(b),
            _ => None,
        }))
}

pub(crate) fn meta_set(conn: &mut dyn Connection, key: &str, value: Vec<u8>) -> Result<()> {
    let mut stmt = Statement::new(format!("INSERT INTO {META_TABLE} (key, value) VALUES ("));
    stmt.bind(0, SqlType::Text)
        .sql(", ")
        .bind(1, SqlType::Blob)
        .sql(") ON CONFLICT (key) DO UPDATE SET value = excluded.value");
    conn.execute(&stmt, &[Value::Text(key.into()), Value::Blob(value)])?;
    Ok(())
}

/// The anchor: the digest at a position not (or no longer) backed by a log
/// entry's digest (after a trim, a migration or a snapshot load).
pub(crate) fn write_anchor(conn: &mut dyn Connection, position: u64, digest: Digest) -> Result<()> {
    let mut v = position.to_le_bytes().to_vec();
    v.extend_from_slice(&digest.to_bytes());
    meta_set(conn, "anchor", v)
}

fn read_anchor(conn: &mut dyn Connection) -> Result<(u64, Digest)> {
    Ok(match meta_get(conn, "anchor")? {
        Some(v) if v.len() == 24 => (
            u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
            Digest::from_bytes(&v[8..]).expect("16 bytes"),
        ),
        _ => (0, Digest::EMPTY),
    })
}

const LOG_COLUMNS: [SqlType; 5] = [
    SqlType::BigInt,
    SqlType::BigInt,
    SqlType::BigInt,
    SqlType::Blob,
    SqlType::Blob,
];

fn entry_from_row(row: Vec<Value>) -> Result<LogEntry> {
    let mut it = row.into_iter();
    match (it.next(), it.next(), it.next(), it.next(), it.next()) {
        (
            Some(Value::I64(p)),
            Some(Value::I64(e)),
            Some(Value::I64(t)),
            Some(Value::Blob(d)),
            Some(Value::Blob(b)),
        ) => Ok(LogEntry {
            position: p as u64,
            epoch: e as u64,
            committed_at: t,
            digest: Digest::from_bytes(&d)
                .ok_or_else(|| Error::Database(format!("log entry {p}: digest is not 16 bytes")))?,
            body: b,
        }),
        _ => Err(Error::Database("malformed log row".into())),
    }
}

/// Position, digest and first retained position, read from the database.
pub(crate) fn load_head(conn: &mut dyn Connection) -> Result<LogHead> {
    let (anchor_pos, anchor_digest) = read_anchor(conn)?;
    let stmt = Statement::new(format!(
        "SELECT position, epoch, committed_at, digest, body FROM {LOG_TABLE} ORDER BY position DESC LIMIT 1"
    ));
    let last = query_rows(conn, &stmt, &[], &LOG_COLUMNS)?
        .into_iter()
        .next()
        .map(entry_from_row)
        .transpose()?;
    let first = query_rows(
        conn,
        &Statement::new(format!("SELECT MIN(position) FROM {LOG_TABLE}")),
        &[],
        &[SqlType::BigInt],
    )?
    .into_iter()
    .next()
    .and_then(|r| match r.into_iter().next() {
        Some(Value::I64(v)) => Some(v as u64),
        _ => None,
    });
    Ok(match last {
        Some(e) if e.position > anchor_pos => LogHead {
            position: e.position,
            digest: e.digest,
            first_retained: first.unwrap_or(e.position).max(anchor_pos + 1),
        },
        _ => LogHead {
            position: anchor_pos,
            digest: anchor_digest,
            first_retained: anchor_pos + 1,
        },
    })
}

impl Store {
    /// Opens (creating if needed) an SQLite store in `path`.
    pub fn open_sqlite(path: impl Into<PathBuf>) -> Result<Store> {
        Store::open(StoreConfig::sqlite(path))
    }

    /// Opens a PostgreSQL store at `url` in `schema` (created if missing).
    pub fn open_postgres(url: &str, schema: &str) -> Result<Store> {
        Store::open(StoreConfig::postgres(url, schema))
    }

    /// Opens a store.
    pub fn open(config: StoreConfig) -> Result<Store> {
        let mut conn = config.connect()?;
        let dialect = conn.dialect();
        let (history, head, epoch, last_entry_epoch, claim, ranges) =
            in_transaction(&mut *conn, |conn| {
                for ddl in schema::internal_ddl(dialect) {
                    conn.batch(&ddl)?;
                }
                let history = match meta_get(conn, "history")? {
                    Some(h) => String::from_utf8_lossy(&h).into_owned(),
                    None => {
                        let h = uuid::Uuid::new_v4().to_string();
                        meta_set(conn, "history", h.clone().into_bytes())?;
                        h
                    }
                };
                let head = load_head(conn)?;
                let claim: Claim = meta_get(conn, "claim")?
                    .and_then(|b| postcard::from_bytes(&b).ok())
                    .unwrap_or_default();
                let max_epoch = Statement::new(format!("SELECT MAX(epoch) FROM {LOG_TABLE}"));
                let log_epoch = query_i64(conn, &max_epoch, &[])?.unwrap_or(0) as u64;
                let epoch = log_epoch.max(claim.epoch);
                let ranges = ranges::opened(conn, head.position, head.digest)?;
                Ok((history, head, epoch, log_epoch, claim, ranges))
            })?;
        let checkpointer = match &config.backend {
            BackendConfig::Sqlite(o) => match o.background_checkpoint {
                Some(every) => Some(Checkpointer::start(o, every)?),
                None => None,
            },
            BackendConfig::Postgres(_) => None,
        };
        let published = Arc::new(RwLock::new(Published {
            position: head.position,
            digest: head.digest,
            epoch,
            history: history.clone(),
        }));
        let ranges = Arc::new(RwLock::new(ranges));
        Ok(Store {
            inner: Arc::new(Inner {
                dialect,
                ranges: ranges.clone(),
                published: published.clone(),
                claim: RwLock::new(claim),
                gate: RwLock::new(None),
                writer: Arc::new(Mutex::new(Writer {
                    ranges,
                    published,
                    last_entry_epoch,
                    history,
                    conn,
                    position: head.position,
                    digest: head.digest,
                    epoch,
                    next_id: HashMap::new(),
                    spare: Default::default(),
                    listeners: Listeners::default(),
                })),
                readers: Mutex::new(Vec::new()),
                registry: RwLock::new(Arc::new(Registry::default())),
                config,
                _checkpointer: checkpointer,
            }),
        })
    }

    /// The backend's dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Adopts another store's history: allowed only while this store is
    /// fresh (position 0, no rows), e.g. a new backup about to replay a
    /// master's log from its first entry.
    pub fn adopt_history(&self, history: &str) -> Result<()> {
        let mut w = self.inner.writer.lock();
        if w.history == history {
            return Ok(());
        }
        if w.position != 0 || w.digest != Digest::EMPTY {
            return Err(Error::Inapplicable {
                position: w.position,
                reason: format!(
                    "only a fresh store can adopt another history (this one is at position {})",
                    w.position
                ),
            });
        }
        meta_set(&mut *w.conn, "history", history.as_bytes().to_vec())?;
        w.history = history.to_owned();
        w.publish();
        Ok(())
    }

    /// The identity of this store's data history (created with the database).
    /// A backup that took a full snapshot adopts the master's history.
    pub fn history(&self) -> String {
        self.inner.published.read().history.clone()
    }

    /// Registers a record type: creates or migrates its table (and, first,
    /// the tables it references). Safe to call again; a changed struct is
    /// migrated where that loses nothing, and refused with
    /// [`Error::SchemaConflict`] otherwise.
    pub fn register<R: PersistentRecord>(&self) -> Result<()> {
        self.register_meta(R::meta())
    }

    /// Registers a record type by its metadata (see [`Store::register`]).
    pub fn register_meta(&self, meta: &'static RecordMeta) -> Result<()> {
        let mut order = Vec::new();
        collect_dependencies(meta, &mut order);
        let mut w = self.inner.writer.lock();
        let current = self.inner.registry.read().clone();
        let mut tables: HashMap<&'static str, Table> = HashMap::new();
        for (name, t) in &current.tables {
            tables.insert(name, Table::compile(t.meta));
        }
        let mut images_changed = false;
        w.conn.begin_write()?;
        let result = (|| {
            for m in &order {
                if let Some(existing) = current.tables.get(m.table) {
                    if !std::ptr::eq(existing.meta, *m) && existing.meta.type_name != m.type_name {
                        return Err(Error::SchemaConflict {
                            table: m.table.to_owned(),
                            column: None,
                            reason: format!(
                                "already registered by {}, cannot register {} on it too",
                                existing.meta.type_name, m.type_name
                            ),
                        });
                    }
                    continue;
                }
                match schema::ensure_table(&mut *w.conn, m)? {
                    Migration::Altered {
                        images_changed: true,
                    } => images_changed = true,
                    Migration::Unchanged | Migration::Created | Migration::Altered { .. } => {}
                }
                tables.insert(m.table, Table::compile(m));
            }
            schema::link_children(&mut tables);
            if images_changed {
                let digest = recompute_digest(&mut *w.conn)?;
                let position = w.position;
                write_anchor(&mut *w.conn, position, digest)?;
                return Ok(Some(digest));
            }
            Ok(None)
        })();
        match result.and_then(|d| w.conn.commit().map(|()| d)) {
            Ok(new_digest) => {
                if let Some(d) = new_digest {
                    w.digest = d;
                    w.publish();
                    let (shared, position) = (w.ranges.clone(), w.position);
                    ranges::migrated(&mut *w.conn, &shared, position, d)?;
                }
                for m in &order {
                    if schema::is_identity(m) && !w.next_id.contains_key(m.table) {
                        let t = &tables[m.table];
                        let max = query_i64(&mut *w.conn, &t.max_key, &[])?.unwrap_or(0);
                        w.next_id.insert(m.table, max + 1);
                    }
                }
                let operations = current.operations.clone();
                *self.inner.registry.write() = Arc::new(Registry { tables, operations });
                Ok(())
            }
            Err(e) => {
                let _ = w.conn.rollback();
                Err(e)
            }
        }
    }

    /// Registers a replicated operation type (on every node that runs or
    /// applies it; see [`ReplicatedOperation`]).
    pub fn register_operation<O: ReplicatedOperation>(&self) {
        let _w = self.inner.writer.lock();
        let mut reg = self.inner.registry.write();
        let mut tables = HashMap::new();
        for (name, t) in &reg.tables {
            tables.insert(*name, Table::compile(t.meta));
        }
        schema::link_children(&mut tables);
        let mut operations = reg.operations.clone();
        operations.insert(O::NAME, operation::handler::<O>());
        *reg = Arc::new(Registry { tables, operations });
    }

    /// Runs a replicated operation in its own transaction.
    pub fn run_operation<O: ReplicatedOperation>(&self, op: &O) -> Result<()> {
        self.write(|tx| tx.run_operation(op))
    }

    /// The fingerprint of the registered schema: equal on two stores exactly
    /// when they registered the same tables with the same definitions.
    pub fn schema_fingerprint(&self) -> u128 {
        let reg = self.registry();
        let mut defs: Vec<(String, String)> = reg
            .tables
            .values()
            .map(|t| (t.name.to_owned(), t.meta.canonical()))
            .collect();
        defs.sort();
        schema::fingerprint(&defs)
    }

    /// Names of the registered tables, sorted.
    pub fn tables(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.registry().tables.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.inner.registry.read().clone()
    }

    /// Runs `f` in one write transaction: every change commits, or none does.
    /// The transaction's changes form one log entry.
    pub fn write<T>(&self, f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>) -> Result<T> {
        self.write_positioned(f).map(|(v, _)| v)
    }

    /// Like [`Store::write`], and also returns the log position of the
    /// transaction (`None` when it changed nothing), e.g. to wait until a
    /// backup has applied it.
    pub fn write_positioned<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<(T, Option<u64>)> {
        if let Some(reason) = self.write_gate() {
            return Err(Error::NotMaster { reason });
        }
        let mut w = self.inner.writer.lock();
        let reg = self.registry();
        write::run(&mut w, &reg, f)
    }

    /// The first log position committed at or after `micros` (Unix time,
    /// microseconds), if any: entries below it are older.
    pub fn first_position_since(&self, micros: i64) -> Result<Option<u64>> {
        let mut stmt = Statement::new(format!(
            "SELECT MIN(position) FROM {LOG_TABLE} WHERE committed_at >= "
        ));
        stmt.bind(0, SqlType::BigInt);
        let first = self.with_reader(|c| query_i64(c, &stmt, &[Value::I64(micros)]))?;
        Ok(first.map(|p| p as u64))
    }

    /// Inserts a record in its own transaction; returns its key (the assigned
    /// one for an identity key).
    pub fn insert<R: PersistentRecord>(&self, record: &R) -> Result<R::Key> {
        self.write(|tx| tx.insert(record))
    }

    /// Updates a record (found by its key) in its own transaction.
    pub fn update<R: PersistentRecord>(&self, record: &R) -> Result<()> {
        self.write(|tx| tx.update(record))
    }

    /// Deletes the record with `key` in its own transaction (cascading as declared).
    pub fn delete<R: PersistentRecord>(&self, key: impl Into<R::Key>) -> Result<()> {
        let key = key.into();
        self.write(|tx| tx.delete::<R>(key))
    }

    fn with_reader<T>(&self, f: impl FnOnce(&mut dyn Connection) -> Result<T>) -> Result<T> {
        let pooled = self.inner.readers.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.inner.config.connect()?,
        };
        let result = f(&mut *conn);
        if !matches!(result, Err(Error::Unavailable(_))) {
            let mut pool = self.inner.readers.lock();
            if pool.len() < 4 {
                pool.push(conn);
            }
        }
        result
    }

    /// The record with `key`, if any.
    pub fn get<R: PersistentRecord>(&self, key: impl Into<R::Key>) -> Result<Option<R>> {
        let reg = self.registry();
        let t = reg.table_of::<R>()?;
        let key = key.into();
        self.with_reader(|c| query::get::<R>(c, t, key))
    }

    /// Every record of a type, in key order.
    pub fn list<R: PersistentRecord>(&self) -> Result<Vec<R>> {
        self.query::<R>().load()
    }

    /// A query over a record type: `store.query::<Device>().filter(..).order_by(..).limit(n).load()`.
    pub fn query<R: PersistentRecord>(&self) -> Query<'_, R> {
        Query::new(query::Source::Store(self))
    }

    pub(crate) fn run_query(
        &self,
        stmt: &Statement,
        values: &[Value],
        types: &[SqlType],
    ) -> Result<Vec<Vec<Value>>> {
        self.with_reader(|c| query_rows(c, stmt, values, types))
    }

    /// Subscribes to added / updated / deleted events of a record type (see [`crate::listen`]).
    pub fn subscribe<R: PersistentRecord>(&self) -> Result<Subscription<R>> {
        self.registry().table_of::<R>()?;
        let rx = self
            .inner
            .writer
            .lock()
            .listeners
            .add(Some(R::meta().table), self.inner.config.listener_capacity);
        Ok(Subscription::new(rx))
    }

    /// Runs `hook` in the committing thread right after every commit (and
    /// applied entry, and full restore), in commit order. This is the
    /// lowest-latency way to learn of a commit (the sync worker ships a fresh
    /// entry from here); the hook runs while the writer holds its lock, so it
    /// must only hand the event on (e.g. a channel send or a watch update),
    /// never block and never call into the store.
    pub fn add_commit_hook(
        &self,
        hook: impl Fn(crate::listen::CommitEvent<'_>) + Send + Sync + 'static,
    ) -> crate::listen::HookId {
        self.inner.writer.lock().listeners.add_hook(Arc::new(hook))
    }

    /// Removes a hook added with [`Store::add_commit_hook`].
    pub fn remove_commit_hook(&self, id: crate::listen::HookId) {
        self.inner.writer.lock().listeners.remove_hook(id);
    }

    /// Subscribes to every commit of every table.
    pub fn commit_feed(&self, capacity: usize) -> CommitFeed {
        CommitFeed {
            rx: self.inner.writer.lock().listeners.add(None, capacity),
        }
    }

    /// The log head: last position, its digest, first retained position.
    pub fn head(&self) -> Result<LogHead> {
        let (position, digest) = {
            let p = self.inner.published.read();
            (p.position, p.digest)
        };
        let first = self.with_reader(|c| load_head(c))?.first_retained;
        Ok(LogHead {
            position,
            digest,
            first_retained: first.min(position + 1),
        })
    }

    /// The digest recorded for `position`, if this store still knows it: the
    /// head, a retained entry, or the anchor (digest where the log was trimmed
    /// or restored). `None` for positions trimmed away or never reached.
    pub fn digest_at(&self, position: u64) -> Result<Option<Digest>> {
        {
            let head = self.inner.published.read();
            if position == head.position {
                return Ok(Some(head.digest));
            }
            if position > head.position {
                return Ok(None);
            }
        }
        self.with_reader(|c| {
            let mut sel = Statement::new(format!(
                "SELECT position, epoch, committed_at, digest, body FROM {LOG_TABLE} WHERE position = "
            ));
            sel.bind(0, SqlType::BigInt);
            if let Some(row) = query_rows(c, &sel, &[Value::I64(position as i64)], &LOG_COLUMNS)?.into_iter().next() {
                return Ok(Some(entry_from_row(row)?.digest));
            }
            let (anchor, digest) = read_anchor(c)?;
            if position == anchor {
                return Ok(Some(digest));
            }
            Ok(None)
        })
    }

    /// Last committed or applied position (0 for a new store).
    pub fn position(&self) -> u64 {
        self.inner.published.read().position
    }

    /// The state digest after the last position.
    pub fn digest(&self) -> Digest {
        self.inner.published.read().digest
    }

    /// The epoch stamped on new log entries.
    pub fn epoch(&self) -> u64 {
        self.inner.published.read().epoch
    }

    /// Sets the epoch stamped on new log entries (the redundancy runtime
    /// sets it through [`Store::set_claim`]; this does not persist it).
    pub fn set_epoch(&self, epoch: u64) {
        let mut w = self.inner.writer.lock();
        w.epoch = epoch;
        w.publish();
    }

    /// The pair's claim as this node last recorded it.
    pub fn claim(&self) -> Claim {
        self.inner.claim.read().clone()
    }

    /// Records a new claim durably (it survives a restart) and stamps its
    /// epoch on new log entries. Refuses to go back in epoch.
    pub fn set_claim(&self, claim: &Claim) -> Result<()> {
        let mut w = self.inner.writer.lock();
        if claim.epoch < w.epoch {
            return Err(Error::Inapplicable {
                position: w.position,
                reason: format!(
                    "claim of epoch {} is older than this node's epoch {}",
                    claim.epoch, w.epoch
                ),
            });
        }
        let bytes = postcard::to_allocvec(claim)
            .map_err(|e| Error::Database(format!("encoding the claim: {e}")))?;
        in_transaction(&mut *w.conn, |conn| meta_set(conn, "claim", bytes))?;
        w.epoch = claim.epoch;
        w.publish();
        *self.inner.claim.write() = claim.clone();
        Ok(())
    }

    /// Refuses local writes with [`Error::NotMaster`] carrying `reason`
    /// (`None` accepts them again). Applying the master's log is unaffected.
    /// Never waits for a write in progress: a write already running when the
    /// gate closes may still commit.
    pub fn set_write_gate(&self, reason: Option<String>) {
        *self.inner.gate.write() = reason;
    }

    /// Why local writes are refused, if they are.
    pub fn write_gate(&self) -> Option<String> {
        self.inner.gate.read().clone()
    }

    /// Up to `max` log entries from `from` on, in order.
    pub fn read_log(&self, from: u64, max: usize) -> Result<Vec<LogEntry>> {
        let mut stmt = Statement::new(format!(
            "SELECT position, epoch, committed_at, digest, body FROM {LOG_TABLE} WHERE position >= "
        ));
        stmt.bind(0, SqlType::BigInt)
            .sql(" ORDER BY position LIMIT ")
            .bind(1, SqlType::BigInt);
        let rows = self.run_query(
            &stmt,
            &[
                Value::I64(from as i64),
                Value::I64(max.min(i64::MAX as usize) as i64),
            ],
            &LOG_COLUMNS,
        )?;
        rows.into_iter().map(entry_from_row).collect()
    }

    /// Iterates over the log from `from` on, reading `batch` entries at a time.
    pub fn log_iter(&self, from: u64, batch: usize) -> LogIter<'_> {
        LogIter {
            store: self,
            next: from,
            batch: batch.max(1),
            buf: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Removes log entries below `below`. The newest entry is always kept, so
    /// the head's digest stays recorded; returns the number removed.
    pub fn trim_log(&self, below: u64) -> Result<u64> {
        let mut w = self.inner.writer.lock();
        let below = below.min(w.position);
        if below == 0 {
            return Ok(0);
        }
        let removed = in_transaction(&mut *w.conn, |conn| {
            let mut sel = Statement::new(format!(
                "SELECT position, epoch, committed_at, digest, body FROM {LOG_TABLE} WHERE position = "
            ));
            sel.bind(0, SqlType::BigInt);
            let prev = query_rows(conn, &sel, &[Value::I64(below as i64 - 1)], &LOG_COLUMNS)?;
            if let Some(row) = prev.into_iter().next() {
                let e = entry_from_row(row)?;
                let (anchor, _) = read_anchor(conn)?;
                if e.position > anchor {
                    write_anchor(conn, e.position, e.digest)?;
                }
            }
            let mut del = Statement::new(format!("DELETE FROM {LOG_TABLE} WHERE position < "));
            del.bind(0, SqlType::BigInt);
            conn.execute(&del, &[Value::I64(below as i64)])
        })?;
        Ok(removed as u64)
    }

    /// Recomputes the digest from every row and compares it with the one
    /// recorded for the current position, in one consistent read.
    pub fn verify(&self) -> Result<Verification> {
        self.with_reader(|c| {
            c.begin_read()?;
            let r = (|| {
                let head = load_head(c)?;
                let computed = recompute_digest(c)?;
                Ok(Verification {
                    position: head.position,
                    recorded: head.digest,
                    computed,
                })
            })();
            let _ = c.rollback();
            r
        })
    }

    /// Applies a log entry from the master (see [`Applied`]).
    pub fn apply(&self, entry: &LogEntry) -> Result<Applied> {
        self.apply_batch(std::slice::from_ref(entry)).map(|n| {
            if n == 0 {
                Applied::AlreadyApplied
            } else {
                Applied::Applied {
                    changes: entry.change_count().unwrap_or(0),
                }
            }
        })
    }

    /// Applies consecutive log entries in one database transaction: each is
    /// applied whole and verified against its digest, readers see them all
    /// at once, and one commit serves them all (what makes catch-up fast).
    /// Entries at or below the current position are skipped. On any error
    /// nothing of the batch is kept. Returns how many entries were applied.
    pub fn apply_batch(&self, entries: &[LogEntry]) -> Result<usize> {
        let mut w = self.inner.writer.lock();
        let reg = self.registry();
        apply::apply_batch(&mut w, &reg, entries)
    }
}

/// Iterator over log entries (see [`Store::log_iter`]).
pub struct LogIter<'a> {
    store: &'a Store,
    next: u64,
    batch: usize,
    buf: std::vec::IntoIter<LogEntry>,
    done: bool,
}

impl Iterator for LogIter<'_> {
    type Item = Result<LogEntry>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.buf.next() {
            self.next = e.position + 1;
            return Some(Ok(e));
        }
        if self.done {
            return None;
        }
        match self.store.read_log(self.next, self.batch) {
            Ok(v) => {
                if v.len() < self.batch {
                    self.done = true;
                }
                self.buf = v.into_iter();
                let e = self.buf.next()?;
                self.next = e.position + 1;
                Some(Ok(e))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The record types `metas` name and every type they reference, directly or
/// not, referenced ones first: what [`Store::register`] creates for them.
pub fn with_dependencies(metas: &[&'static RecordMeta]) -> Vec<&'static RecordMeta> {
    let mut order = Vec::new();
    for m in metas {
        collect_dependencies(m, &mut order);
    }
    order
}

/// The fingerprint of these record types, the ones they reference and the
/// named replicated operations; without operations, what
/// [`Store::schema_fingerprint`] computes for a store that registered exactly
/// these types. Equal on two nodes exactly when the definitions agree.
pub fn schema_fingerprint_of(metas: &[&'static RecordMeta], operations: &[&str]) -> u128 {
    let mut defs: Vec<(String, String)> = with_dependencies(metas)
        .into_iter()
        .map(|m| (m.table.to_owned(), m.canonical()))
        .collect();
    defs.sort();
    let mut ops: Vec<&str> = operations.to_vec();
    ops.sort_unstable();
    defs.extend(
        ops.into_iter()
            .map(|o| (format!("operation {o}"), String::new())),
    );
    schema::fingerprint(&defs)
}

fn collect_dependencies(meta: &'static RecordMeta, order: &mut Vec<&'static RecordMeta>) {
    if order.iter().any(|m| m.table == meta.table) {
        return;
    }
    // Mark before recursing so a cycle of references terminates.
    order.push(meta);
    let at = order.len() - 1;
    for c in &meta.columns {
        if let Some(r) = c.reference {
            let target = (r.target)();
            if target.table != meta.table {
                collect_dependencies(target, order);
            }
        }
    }
    // Referenced tables go first.
    let me = order.remove(at);
    order.push(me);
}

/// The digest of every persist-managed table, from scratch.
pub(crate) fn recompute_digest(conn: &mut dyn Connection) -> Result<Digest> {
    let mut digest = Digest::EMPTY;
    let mut image = Vec::new();
    // Every table the store manages counts, registered in this run or not, so
    // the digest matches the one maintained through the log.
    for (table, def) in schema::all_definitions(conn)? {
        let stored = schema::StoredTable::parse(&def);
        let types = stored.sql_types().ok_or_else(|| Error::SchemaConflict {
            table: table.clone(),
            column: None,
            reason: "stored definition has an unknown column type".into(),
        })?;
        let cols: Vec<String> = stored
            .columns
            .iter()
            .map(|c| crate::backend::quote_ident(&c.name))
            .collect();
        let stmt = Statement::new(format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            crate::backend::quote_ident(&table)
        ));
        let seed = crate::digest::table_seed(&table);
        conn.query(&stmt, &[], &types, &mut |row| {
            encode_image(row, &mut image);
            digest.toggle(seed, &image);
            Ok(())
        })?;
    }
    Ok(digest)
}

/// Decodes a row image against a table (types and column count checked).
pub(crate) fn check_image(t: &Table, bytes: &[u8]) -> std::result::Result<Vec<Value>, String> {
    let mut values = Vec::new();
    check_image_over(t, bytes, &mut values, 0)?;
    Ok(values)
}

/// [`check_image`] into `out[at..]`, keeping the buffers of the values it
/// overwrites (see [`crate::log::decode_image_over`]).
pub(crate) fn check_image_over(
    t: &Table,
    bytes: &[u8],
    out: &mut Vec<Value>,
    at: usize,
) -> std::result::Result<(), String> {
    let n = decode_image_over(bytes, out, at).map_err(|e| e.to_string())?;
    if n != t.types.len() {
        return Err(format!(
            "{}: row image has {} values, table has {} columns",
            t.name,
            n,
            t.types.len()
        ));
    }
    let values = &out[at..at + n];
    for (i, (v, ty)) in values.iter().zip(&t.types).enumerate() {
        if !v.fits(*ty) || (v.is_null() && !t.meta.columns[i].nullable) {
            return Err(format!(
                "{}.{}: {} value does not fit column type {}",
                t.name,
                t.meta.columns[i].name,
                v.kind(),
                ty.name()
            ));
        }
    }
    // Before any SQL runs, so the refusal names the entry that carries it.
    crate::value::refuse_nan(t.meta, &t.meta.columns, values).map_err(|e| e.to_string())
}
