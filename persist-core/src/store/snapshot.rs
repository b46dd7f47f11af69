//! Full snapshots: a consistent, streamed read of every registered table on
//! the master, and an atomic restore on the backup.
//!
//! The snapshot reads inside one read transaction (SQLite WAL snapshot,
//! PostgreSQL REPEATABLE READ), so writers go on while it streams, and pages
//! through each table by key, so memory stays bounded by the chunk size
//! whatever the table size. The restore runs in one write transaction: readers
//! on the backup keep seeing the old data until the new set is complete and
//! verified against the master's digest; an interrupted transfer rolls back and
//! leaves the old data intact.

use std::sync::Arc;

use crate::backend::{quote_ident, Connection, Dialect, Statement};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::log::encode_image;
use crate::value::{SqlType, Value};

use parking_lot::lock_api::ArcMutexGuard;
use parking_lot::RawMutex;

use super::schema::{
    column_list, create_secondary_indexes, drop_secondary_indexes, Table, LOG_TABLE,
};
use super::write::WriteTx;
use super::{
    check_image_over, load_head, meta_set, query_i64, query_rows, write_anchor, Registry, Store,
    Writer,
};

/// Rows of one table in a snapshot: the table's index in
/// [`SnapshotHeader::tables`] and encoded row images.
pub type SnapshotChunk = (u32, Vec<Vec<u8>>);

/// A table of a snapshot and its row count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTableInfo {
    /// Table name.
    pub name: String,
    /// Rows in the snapshot.
    pub rows: u64,
}

/// What a snapshot represents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The origin's data history.
    pub history: String,
    /// The log position the data corresponds to.
    pub position: u64,
    /// The digest of the data.
    pub digest: Digest,
    /// The origin's epoch.
    pub epoch: u64,
    /// Tables, in the order their rows are streamed.
    pub tables: Vec<SnapshotTableInfo>,
}

/// A consistent read of every registered table (see [`Store::snapshot`]).
pub struct Snapshot {
    conn: Box<dyn Connection>,
    reg: Arc<Registry>,
    header: SnapshotHeader,
    table: usize,
    last_key: Option<Value>,
    image: Vec<u8>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

fn count(conn: &mut dyn Connection, table: &str) -> Result<u64> {
    let stmt = Statement::new(format!("SELECT COUNT(*) FROM {}", quote_ident(table)));
    Ok(query_i64(conn, &stmt, &[])?.unwrap_or(0) as u64)
}

impl Snapshot {
    pub(crate) fn open(store: &Store) -> Result<Snapshot> {
        let reg = store.registry();
        let mut conn = store.inner.config.connect()?;
        let (history, epoch) = (store.history(), store.epoch());
        conn.begin_read()?;
        let r = (|| {
            // The first read fixes the snapshot: head and rows agree.
            let head = load_head(&mut *conn)?;
            let mut names: Vec<&'static str> = reg.tables.keys().copied().collect();
            names.sort_unstable();
            let mut tables = Vec::with_capacity(names.len());
            for name in names {
                tables.push(SnapshotTableInfo {
                    name: name.to_owned(),
                    rows: count(&mut *conn, name)?,
                });
            }
            Ok(SnapshotHeader {
                history,
                position: head.position,
                digest: head.digest,
                epoch,
                tables,
            })
        })();
        let header = match r {
            Ok(h) => h,
            Err(e) => {
                let _ = conn.rollback();
                return Err(e);
            }
        };
        Ok(Snapshot {
            conn,
            reg,
            header,
            table: 0,
            last_key: None,
            image: Vec::new(),
        })
    }

    /// What the snapshot represents.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The next rows, as (table index, encoded row images), at most `max_rows`;
    /// `None` when every table has been read.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<SnapshotChunk>> {
        let max_rows = max_rows.max(1);
        while self.table < self.header.tables.len() {
            let name = self.header.tables[self.table].name.as_str();
            let t: &Table = self
                .reg
                .tables
                .get(name)
                .ok_or_else(|| Error::Database(format!("table {name} left the registry")))?;
            let key = quote_ident(t.meta.key_column().name);
            let mut stmt = Statement::new(format!(
                "SELECT {} FROM {}",
                column_list(t.meta),
                quote_ident(t.name)
            ));
            let mut values = Vec::new();
            if let Some(last) = self.last_key.take() {
                stmt.sql(&format!(" WHERE {key} > ")).bind(0, t.key_type());
                values.push(last);
            }
            stmt.sql(&format!(" ORDER BY {key} LIMIT "))
                .bind(values.len(), SqlType::BigInt);
            values.push(Value::I64(max_rows as i64));
            // Each row encoded as it is read (its values read over the
            // previous row's), and only the last row's key kept.
            let (mut images, mut last) = (Vec::new(), None::<Value>);
            let (image, key) = (&mut self.image, t.meta.key);
            self.conn.query(&stmt, &values, &t.types, &mut |row| {
                encode_image(row, image);
                images.push(image.clone());
                last = Some(row[key].clone());
                Ok(())
            })?;
            let index = self.table as u32;
            if images.len() < max_rows {
                self.table += 1;
                self.last_key = None;
            } else {
                self.last_key = last;
            }
            if images.is_empty() {
                continue;
            }
            return Ok(Some((index, images)));
        }
        Ok(None)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = self.conn.rollback();
    }
}

impl Store {
    /// Opens a consistent snapshot of every registered table (see the module docs).
    pub fn snapshot(&self) -> Result<Snapshot> {
        Snapshot::open(self)
    }

    /// Replaces every registered table with a snapshot, atomically.
    ///
    /// `chunks` yields (table index into `header.tables`, row images) until the
    /// snapshot is complete; an error from it (a cut link) aborts the restore
    /// and leaves the old data untouched. The result must match the header's
    /// row counts and digest, or nothing changes ([`Error::Divergence`] /
    /// [`Error::Inapplicable`]). On success the store holds the origin's data,
    /// history, position and digest, its log is empty (first retained position
    /// = position + 1), and every subscription gets [`RecordEvent::Reset`](crate::RecordEvent::Reset).
    ///
    /// The same in steps, for a caller fed chunk by chunk: [`Store::begin_restore`].
    pub fn restore(
        &self,
        header: &SnapshotHeader,
        chunks: impl IntoIterator<Item = Result<SnapshotChunk>>,
    ) -> Result<()> {
        let mut restore = self.begin_restore(header)?;
        for chunk in chunks {
            let (table, rows) = chunk?;
            restore.push(table, &rows)?;
        }
        restore.finish()
    }

    /// Starts replacing every registered table with a snapshot described by
    /// `header` (see [`Store::restore`]), in one write transaction that the
    /// returned [`Restore`] keeps open: feed it with [`Restore::push`], then
    /// [`Restore::finish`]. Dropping it, or any error, rolls everything back.
    ///
    /// The restore holds the store's writer until it ends: other writes on
    /// this store wait meanwhile (readers do not), so the caller must end it
    /// (finish or drop) whatever the source of chunks does.
    pub fn begin_restore(&self, header: &SnapshotHeader) -> Result<Restore> {
        let reg = self.registry();
        let refuse = |reason: String| Error::Inapplicable {
            position: header.position,
            reason,
        };
        let mut tables = Vec::with_capacity(header.tables.len());
        for info in &header.tables {
            let t = reg.tables.get(info.name.as_str()).ok_or_else(|| {
                refuse(format!(
                    "snapshot table {} is not registered here",
                    info.name
                ))
            })?;
            tables.push(t.name);
        }
        let mut w = self.inner.writer.lock_arc();
        // SQLite loads fresh tables: no index maintained row by row, no
        // reference looked up per row (nor, for a parent arriving after its
        // children, children scanned per row); `finish` builds the indexes
        // and checks every reference once. Readers see none of it (WAL), so
        // only SQLite does this: PostgreSQL's DROP INDEX would block them.
        // Nor does its commit checkpoint the whole snapshot from the WAL
        // into the database inside COMMIT: the background checkpointer (or
        // the next commit) does, as for any other commit.
        let fresh = if w.conn.dialect() == Dialect::Sqlite {
            let pages = query_i64(
                &mut *w.conn,
                &Statement::new("PRAGMA wal_autocheckpoint"),
                &[],
            )?
            .unwrap_or(1000);
            w.conn.batch("PRAGMA foreign_keys = OFF")?;
            w.conn.batch("PRAGMA wal_autocheckpoint = 0")?;
            Some(pages)
        } else {
            None
        };
        if let Err(e) = w.conn.begin_write() {
            if let Some(pages) = fresh {
                end_fresh(&mut *w.conn, pages);
            }
            return Err(e);
        }
        let mut names: Vec<&'static str> = reg.tables.keys().copied().collect();
        names.sort_unstable();
        for name in &names {
            let mut r = w.conn.batch(&format!("DELETE FROM {}", quote_ident(name)));
            if fresh.is_some() && r.is_ok() {
                r = drop_secondary_indexes(&mut *w.conn, reg.tables[name].meta);
            }
            if let Err(e) = r {
                let _ = w.conn.rollback();
                if let Some(pages) = fresh {
                    end_fresh(&mut *w.conn, pages);
                }
                return Err(e);
            }
        }
        Ok(Restore {
            fresh,
            w,
            reg,
            counts: vec![0; tables.len()],
            tables,
            header: header.clone(),
            digest: Digest::EMPTY,
            ranges: Default::default(),
            open: true,
            values: Vec::new(),
        })
    }
}

/// A restore in progress (see [`Store::begin_restore`]). It holds the
/// store's writer and an open write transaction; readers keep seeing the old
/// data until [`Restore::finish`] commits.
pub struct Restore {
    w: ArcMutexGuard<RawMutex, Writer>,
    reg: Arc<Registry>,
    /// Table names by their index in the header.
    tables: Vec<&'static str>,
    counts: Vec<u64>,
    header: SnapshotHeader,
    digest: Digest,
    /// The range digests of the rows restored so far.
    ranges: super::ranges::RangeDigests,
    /// The transaction is open (not committed, not rolled back).
    open: bool,
    /// Loading fresh tables (SQLite): references unenforced, secondary
    /// indexes dropped and no checkpoint in commit until `finish` (see
    /// [`Store::begin_restore`]); the writer's `wal_autocheckpoint` to put back.
    fresh: Option<i64>,
    /// The values of the chunk being loaded, kept from chunk to chunk with
    /// their text buffers: decoding a chunk allocates nothing once they are
    /// large enough (a chunk's worth, freed when the restore ends).
    values: Vec<Value>,
}

/// Puts SQLite's reference enforcement and the writer's checkpoint mark
/// back after a restore.
fn end_fresh(conn: &mut dyn Connection, autocheckpoint: i64) {
    for sql in [
        "PRAGMA foreign_keys = ON".to_owned(),
        format!("PRAGMA wal_autocheckpoint = {autocheckpoint}"),
    ] {
        if let Err(e) = conn.batch(&sql) {
            tracing::warn!("after a restore, `{sql}` failed: {e}");
        }
    }
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restore")
            .field("header", &self.header)
            .field("rows", &self.rows())
            .finish_non_exhaustive()
    }
}

impl Restore {
    /// What is being restored.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Rows restored so far.
    pub fn rows(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn refuse(&self, reason: String) -> Error {
        Error::Inapplicable {
            position: self.header.position,
            reason,
        }
    }

    fn rollback(&mut self) {
        if std::mem::take(&mut self.open) {
            if let Err(e) = self.w.conn.rollback() {
                tracing::warn!("rolling back a restore failed: {e}");
            }
            if let Some(pages) = self.fresh {
                end_fresh(&mut *self.w.conn, pages);
            }
        }
    }

    /// Adds rows of the table at index `table` of the header. On an error
    /// the restore is rolled back and every later call fails.
    pub fn push(&mut self, table: u32, rows: &[Vec<u8>]) -> Result<()> {
        let r = self.push_inner(table, rows);
        if r.is_err() {
            self.rollback();
        }
        r
    }

    fn push_inner(&mut self, table: u32, rows: &[Vec<u8>]) -> Result<()> {
        if !self.open {
            return Err(self.refuse("the restore already failed".into()));
        }
        let name = *self.tables.get(table as usize).ok_or_else(|| {
            self.refuse(format!(
                "row chunk for table index {table} of {}",
                self.tables.len()
            ))
        })?;
        let reg = self.reg.clone();
        let t = &reg.tables[name];
        let width = t.types.len();
        let mut flat = std::mem::take(&mut self.values);
        for (i, image) in rows.iter().enumerate() {
            if let Err(e) = check_image_over(t, image, &mut flat, i * width) {
                return Err(self.refuse(e));
            }
        }
        let r = self.insert_chunk(t, &reg, &flat[..rows.len() * width], rows);
        self.values = flat;
        r?;
        self.counts[table as usize] += rows.len() as u64;
        Ok(())
    }

    /// Inserts one chunk's decoded rows (`flat`, from the images `rows`)
    /// and folds the images into the digests.
    fn insert_chunk(
        &mut self,
        t: &Table,
        reg: &Registry,
        flat: &[Value],
        rows: &[Vec<u8>],
    ) -> Result<()> {
        let mut tx = WriteTx::attach(&mut self.w, reg, self.digest);
        tx.exec_insert_rows(t, flat).map_err(|e| match e {
            e @ (Error::Locked(_) | Error::Unavailable(_) | Error::DiskFull(_)) => e,
            other => Error::Inapplicable {
                position: self.header.position,
                reason: format!("{}: {other}", t.name),
            },
        })?;
        // The digest from the images as they came (as an applied entry's
        // are), not encoded again: a non-canonical image fails the digest
        // check at `finish`. No identity bookkeeping per row: `finish` sets
        // each identity from the restored table's largest key, and a restore
        // that fails leaves the identities as they were.
        for image in rows {
            tx.delta.toggle(&mut tx.digest, t.name, t.seed, image);
        }
        self.digest = tx.digest;
        tx.delta.drain_into(&mut self.ranges);
        Ok(())
    }

    /// Checks row counts and digest against the header and commits: the
    /// store then holds the origin's data, history, position and digest.
    pub fn finish(mut self) -> Result<()> {
        let r = self.finish_inner();
        if r.is_err() {
            self.rollback();
        }
        r
    }

    fn finish_inner(&mut self) -> Result<()> {
        if !self.open {
            return Err(self.refuse("the restore already failed".into()));
        }
        let header = self.header.clone();
        for (info, n) in header.tables.iter().zip(&self.counts) {
            if info.rows != *n {
                return Err(self.refuse(format!(
                    "{}: snapshot announced {} rows, {} arrived",
                    info.name, info.rows, n
                )));
            }
        }
        if self.digest != header.digest {
            return Err(Error::Divergence {
                position: header.position,
                local: self.digest,
                remote: header.digest,
            });
        }
        if self.fresh.is_some() {
            self.build_and_check()?;
        }
        let w = &mut *self.w;
        w.conn.batch(&format!("DELETE FROM {LOG_TABLE}"))?;
        write_anchor(&mut *w.conn, header.position, header.digest)?;
        meta_set(&mut *w.conn, "history", header.history.clone().into_bytes())?;
        w.conn.commit()?;
        self.open = false;
        if let Some(pages) = self.fresh {
            end_fresh(&mut *w.conn, pages);
        }
        w.position = header.position;
        w.digest = header.digest;
        w.history = header.history.clone();
        w.epoch = w.epoch.max(header.epoch);
        w.last_entry_epoch = header.epoch;
        w.publish();
        super::ranges::restored(
            &w.ranges,
            header.position,
            std::mem::take(&mut self.ranges),
            header.digest,
        );
        for t in self.reg.tables.values() {
            if w.next_id.contains_key(t.name) {
                let max = query_i64(&mut *w.conn, &t.max_key, &[])?.unwrap_or(0);
                w.next_id.insert(t.name, max + 1);
            }
        }
        w.listeners.reset();
        Ok(())
    }

    /// Builds the secondary indexes dropped at the start and checks every
    /// reference once per distinct value, before commit.
    fn build_and_check(&mut self) -> Result<()> {
        let reg = self.reg.clone();
        let mut names: Vec<&'static str> = reg.tables.keys().copied().collect();
        names.sort_unstable();
        for &name in &names {
            create_secondary_indexes(&mut *self.w.conn, reg.tables[name].meta).map_err(
                |e| match e {
                    e @ (Error::Locked(_) | Error::Unavailable(_) | Error::DiskFull(_)) => e,
                    other => self.refuse(format!("{name}: {other}")),
                },
            )?;
        }
        // Each reference is checked once per distinct value, read from the
        // referencing column's index where it has one (built just above):
        // SQLite's `foreign_key_check` reads every row of the child table
        // and looks its parent up row by row.
        for name in names {
            let meta = reg.tables[name].meta;
            for c in &meta.columns {
                let Some(r) = &c.reference else { continue };
                let parent = (r.target)();
                let check = Statement::new(format!(
                    "SELECT quote(c.v) FROM (SELECT DISTINCT {col} AS v FROM {child} \
                     WHERE {col} IS NOT NULL) AS c WHERE NOT EXISTS \
                     (SELECT 1 FROM {parent} AS p WHERE p.{key} = c.v) LIMIT 1",
                    col = quote_ident(c.name),
                    child = quote_ident(name),
                    parent = quote_ident(parent.table),
                    key = quote_ident(parent.key_column().name),
                ));
                let bad = query_rows(&mut *self.w.conn, &check, &[], &[SqlType::Text])?;
                if let Some(Value::Text(value)) = bad.first().and_then(|row| row.first()) {
                    return Err(self.refuse(format!(
                        "{name} rows with {} = {value} reference a missing {} row",
                        c.name, parent.table
                    )));
                }
            }
        }
        Ok(())
    }

    /// Gives up: rolls back, the old data stays as it was.
    pub fn abort(mut self) {
        self.rollback();
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        self.rollback();
    }
}
