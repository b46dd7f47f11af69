//! Write transactions: every change is executed, captured into the log entry
//! body, folded into the digest, and kept for listeners, in one pass.

use crate::backend::{quote_ident, Statement};
use crate::digest::Digest;
use crate::error::{Error, KeyDisplay, Result};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::listen::{Commit, RowChange};
use crate::log::{encode_image, encode_key, BodyWriter, LogEntry, Op};
use crate::record::{KeyKind, OnDelete, PersistentRecord};
use crate::value::{canonical_row, refuse_nan, FieldType, SqlType, Value};

use super::query::{self, Query, Source};
use super::schema::{Table, LOG_TABLE};
use super::{now_micros, query_rows, Registry, Writer};

/// One write transaction (see [`Store::write`](super::Store::write)).
///
/// If any operation returns an error, the transaction is spoiled: later
/// writes in it fail, and it is rolled back when the closure returns, even
/// if the closure itself returns `Ok` (a database that aborted a statement,
/// as PostgreSQL does, cannot be trusted to commit the rest).
pub struct WriteTx<'a> {
    pub(crate) w: &'a mut Writer,
    pub(crate) reg: &'a Registry,
    pub(crate) digest: Digest,
    pub(crate) body: BodyWriter,
    pub(crate) captured: Vec<RowChange>,
    pub(crate) capture: bool,
    /// Whether changes go into a log entry body (not when replaying or restoring).
    pub(crate) logging: bool,
    scratch: Vec<u8>,
    /// Row hashes for the range digests.
    pub(crate) delta: super::ranges::RangeDelta,
    /// Position and digest of the last entry recorded in this transaction.
    head: Option<(u64, Digest)>,
    /// Epoch of the last entry recorded in this transaction.
    entry_epoch: Option<u64>,
    /// An operation is running (they do not nest).
    pub(crate) in_operation: bool,
    spoiled: Option<String>,
    finished: bool,
    /// (table, key) rows being deleted, so cascades through cycles terminate.
    deleting: Vec<(&'static str, Value)>,
    /// Referenced keys (encoded) found to exist in this transaction, per
    /// table, so rows sharing a target look it up once; a delete from the
    /// table forgets them.
    verified: HashMap<&'static str, HashSet<Vec<u8>>>,
}

/// Buffers a writer keeps from one transaction to the next, so a bulk load
/// does not allocate (and the kernel zero) hundreds of kilobytes per commit
/// for its log body: measured on the shaped `store_write` benchmark.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    body: BodyWriter,
    /// The finished body (or, applying, an entry's unpacked one).
    pub(crate) plain: Vec<u8>,
    /// Room for packing it.
    packed: Vec<u8>,
}

/// A kept buffer larger than this is freed instead: one huge transaction
/// should not pin its memory for the life of the store.
const SPARE_MAX: usize = 4 << 20;

pub(crate) fn keep_at_most(buf: &mut Vec<u8>) {
    if buf.capacity() > SPARE_MAX {
        *buf = Vec::new();
    }
}

/// Distinct referenced keys per `IN` query when a batch's references are checked.
const REF_CHUNK: usize = 256;
/// Verified referenced keys a transaction remembers per table, at most.
const VERIFIED_CAP: usize = 4096;

fn log_insert() -> &'static Statement {
    static STMT: std::sync::OnceLock<Statement> = std::sync::OnceLock::new();
    STMT.get_or_init(|| {
        let mut s = Statement::new(format!(
            "INSERT INTO {LOG_TABLE} (position, epoch, committed_at, digest, body) VALUES ("
        ));
        s.bind(0, SqlType::BigInt)
            .sql(", ")
            .bind(1, SqlType::BigInt)
            .sql(", ")
            .bind(2, SqlType::BigInt)
            .sql(", ")
            .bind(3, SqlType::Blob)
            .sql(", ")
            .bind(4, SqlType::Blob)
            .sql(")");
        s
    })
}

pub(crate) fn run<T>(
    w: &mut Writer,
    reg: &Registry,
    f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
) -> Result<(T, Option<u64>)> {
    let mut tx = WriteTx::begin(w, reg)?;
    let value = f(&mut tx)?;
    if let Some(why) = tx.spoiled.take() {
        return Err(Error::Database(format!(
            "transaction rolled back after an earlier error: {why}"
        )));
    }
    let position = tx.w.position + 1;
    let epoch = tx.w.epoch;
    let changed = !tx.body.is_empty();
    tx.commit(position, epoch, now_micros(), None)?;
    Ok((value, changed.then_some(position)))
}

impl<'a> WriteTx<'a> {
    pub(crate) fn begin(w: &'a mut Writer, reg: &'a Registry) -> Result<WriteTx<'a>> {
        w.conn.begin_write()?;
        let (digest, capture) = (w.digest, w.listeners.wants_rows());
        let mut tx = WriteTx::attach(w, reg, digest);
        tx.capture = capture;
        tx.logging = true;
        tx.finished = false;
        Ok(tx)
    }

    /// A view of a transaction the caller opened and will end itself (a
    /// restore in progress): no BEGIN, and dropping it neither commits nor
    /// rolls back. Nothing is logged or captured.
    pub(crate) fn attach(w: &'a mut Writer, reg: &'a Registry, digest: Digest) -> WriteTx<'a> {
        let body = std::mem::take(&mut w.spare.body);
        WriteTx {
            digest,
            capture: false,
            logging: false,
            w,
            reg,
            body,
            captured: Vec::new(),
            scratch: Vec::new(),
            delta: Default::default(),
            head: None,
            entry_epoch: None,
            in_operation: false,
            spoiled: None,
            finished: true,
            deleting: Vec::new(),
            verified: HashMap::new(),
        }
    }

    /// Commits. `replay` carries the body of an entry being applied as-is.
    pub(crate) fn commit(
        mut self,
        position: u64,
        epoch: u64,
        committed_at: i64,
        replay: Option<(&[u8], Digest)>,
    ) -> Result<()> {
        let commit = self.record_entry(position, epoch, committed_at, replay)?;
        self.finish(commit.into_iter().collect())
    }

    /// Writes the log row of the changes made so far (or of a replayed entry)
    /// at `position`; the next entry of the same database transaction starts
    /// empty. Returns what listeners get once the transaction commits.
    pub(crate) fn record_entry(
        &mut self,
        position: u64,
        epoch: u64,
        committed_at: i64,
        replay: Option<(&[u8], Digest)>,
    ) -> Result<Option<Commit>> {
        if replay.is_none() && self.body.is_empty() {
            return Ok(None);
        }
        // A replayed body is kept as its origin stored it (packed or not):
        // the logs of both nodes hold the same bytes, packed once.
        let (stored, digest) = match replay {
            Some((b, d)) => (b.to_vec(), d),
            None => {
                let spare = &mut self.w.spare;
                self.body.finish_into(&mut spare.plain);
                let stored = crate::log::pack_stored_with(&spare.plain, &mut spare.packed);
                keep_at_most(&mut spare.plain);
                keep_at_most(&mut spare.packed);
                (stored, self.digest)
            }
        };
        self.body.clear();
        // The commit feed carries the entry, so the sync worker can ship a
        // fresh commit without reading it back.
        let entry = (!self.w.listeners.is_empty()).then(|| {
            Arc::new(LogEntry {
                position,
                epoch,
                committed_at,
                digest,
                body: stored.clone(),
            })
        });
        let values = [
            Value::I64(position as i64),
            Value::I64(epoch as i64),
            Value::I64(committed_at),
            Value::Blob(digest.to_bytes().to_vec()),
            Value::Blob(stored),
        ];
        self.w.conn.execute(log_insert(), &values)?;
        self.head = Some((position, self.digest));
        self.entry_epoch = Some(epoch);
        Ok(entry.map(|entry| Commit {
            position,
            changes: std::mem::take(&mut self.captured),
            entry,
        }))
    }

    /// Commits the database transaction and announces its entries.
    pub(crate) fn finish(mut self, commits: Vec<Commit>) -> Result<()> {
        self.w.conn.commit()?;
        self.finished = true;
        if let Some((position, digest)) = self.head {
            self.w.position = position;
            self.w.digest = digest;
            self.w.publish();
        }
        super::ranges::committed(&self.w.ranges, self.w.position, &mut self.delta);
        if let Some(e) = self.entry_epoch {
            self.w.last_entry_epoch = self.w.last_entry_epoch.max(e);
        }
        for c in commits {
            self.w.listeners.dispatch(c);
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        match &self.spoiled {
            Some(why) => Err(Error::Database(format!(
                "transaction already failed: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn spoil<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.spoiled.get_or_insert_with(|| e.to_string());
        }
        r
    }

    /// Inserts a record; returns its key (the assigned one for an identity key,
    /// whose value in `record` is ignored).
    pub fn insert<R: PersistentRecord>(&mut self, record: &R) -> Result<R::Key> {
        self.check_usable()?;
        let r = self.insert_inner(record);
        self.spoil(r)
    }

    fn insert_inner<R: PersistentRecord>(&mut self, record: &R) -> Result<R::Key> {
        let t = self.reg.table_of::<R>()?;
        let mut values = row_of(t, record)?;
        let k = t.meta.key;
        if t.meta.key_kind == KeyKind::Identity {
            let next = self.w.next_id.entry(t.name).or_insert(1);
            values[k] = Value::I64(*next);
            *next += 1;
        }
        let key = R::Key::from_value(values[k].clone()).map_err(|source| Error::Decode {
            context: format!("{} key", t.name),
            source,
        })?;
        self.check_references(t, &values)?;
        self.insert_row(t, values)?;
        Ok(key)
    }

    /// Inserts many records of one type with multi-row statements (much
    /// faster than one `insert` per record for bulk loads); returns their
    /// keys in order. Validation and key assignment happen per record before
    /// anything is written; a constraint violation fails the whole call (and
    /// spoils the transaction) without saying which record caused it beyond
    /// the column.
    pub fn insert_many<'r, R: PersistentRecord + 'r>(
        &mut self,
        records: impl IntoIterator<Item = &'r R>,
    ) -> Result<Vec<R::Key>> {
        self.check_usable()?;
        let r = (|| {
            let t = self.reg.table_of::<R>()?;
            let k = t.meta.key;
            let ncols = t.types.len();
            let mut keys = Vec::new();
            let mut flat: Vec<Value> = Vec::new();
            // Reference values to check once the rows are in, so a batch may
            // reference its own rows (e.g. a tree inserted parent first).
            let mut refs: Vec<Value> = Vec::new();
            for record in records {
                let mut values = row_of(t, record)?;
                if t.meta.key_kind == KeyKind::Identity {
                    let next = self.w.next_id.entry(t.name).or_insert(1);
                    values[k] = Value::I64(*next);
                    *next += 1;
                }
                keys.push(R::Key::from_value(values[k].clone()).map_err(|source| {
                    Error::Decode {
                        context: format!("{} key", t.name),
                        source,
                    }
                })?);
                refs.extend(t.refs.iter().map(|&(col, _)| values[col].clone()));
                flat.extend(values);
            }
            self.insert_rows(t, flat)?;
            self.check_references_many(t, &refs)?;
            Ok((keys, ncols))
        })();
        let (keys, _) = self.spoil(r)?;
        Ok(keys)
    }

    /// Updates the record with `record`'s key; [`Error::NotFound`] if there is none.
    pub fn update<R: PersistentRecord>(&mut self, record: &R) -> Result<()> {
        self.check_usable()?;
        let r = (|| {
            let t = self.reg.table_of::<R>()?;
            let values = row_of(t, record)?;
            self.check_references(t, &values)?;
            self.update_row(t, values, true)
        })();
        self.spoil(r)
    }

    /// Inserts the record, or updates it if a record with its key exists.
    /// For identity keys this is an update when the key exists, an insert
    /// (with a newly assigned key) otherwise.
    pub fn save<R: PersistentRecord>(&mut self, record: &R) -> Result<R::Key> {
        self.check_usable()?;
        let r = (|| {
            let t = self.reg.table_of::<R>()?;
            let key = record.key();
            if self.exists(t, &key.to_value())? {
                let values = row_of(t, record)?;
                self.check_references(t, &values)?;
                self.update_row(t, values, true)?;
                Ok(key)
            } else {
                self.insert_inner(record)
            }
        })();
        self.spoil(r)
    }

    /// Deletes the record with `key`: [`Error::NotFound`] if there is none,
    /// [`Error::Referenced`] if a `restrict` reference points at it; rows
    /// referencing it with `cascade` are deleted first, each logged.
    pub fn delete<R: PersistentRecord>(&mut self, key: impl Into<R::Key>) -> Result<()> {
        self.check_usable()?;
        let key = key.into().to_value();
        let r = (|| {
            let t = self.reg.table_of::<R>()?;
            self.delete_row(t, key, true)
        })();
        self.spoil(r)
    }

    /// The record with `key`, as this transaction sees it.
    pub fn get<R: PersistentRecord>(&mut self, key: impl Into<R::Key>) -> Result<Option<R>> {
        let t = self.reg.table_of::<R>()?;
        query::get::<R>(&mut *self.w.conn, t, key.into())
    }

    /// Every record of a type, as this transaction sees it.
    pub fn list<R: PersistentRecord>(&mut self) -> Result<Vec<R>> {
        self.query::<R>().load()
    }

    /// A query that sees this transaction's changes.
    pub fn query<R: PersistentRecord>(&mut self) -> Query<'_, R> {
        Query::new(Source::Tx(&mut *self.w.conn, self.reg))
    }

    pub(crate) fn select_key(&mut self, t: &Table, key: &Value) -> Result<Option<Vec<Value>>> {
        let rows = query_rows(
            &mut *self.w.conn,
            &t.select_key,
            std::slice::from_ref(key),
            &t.types,
        )?;
        Ok(rows.into_iter().next())
    }

    fn exists(&mut self, t: &Table, key: &Value) -> Result<bool> {
        let rows = query_rows(
            &mut *self.w.conn,
            &t.exists_key,
            std::slice::from_ref(key),
            &[t.key_type()],
        )?;
        Ok(!rows.is_empty())
    }

    fn check_references(&mut self, t: &Table, values: &[Value]) -> Result<()> {
        for &(col, target) in &t.refs {
            let v = &values[col];
            if v.is_null() {
                continue;
            }
            let Some(tt) = self.reg.tables.get(target) else {
                continue;
            };
            encode_key(v, &mut self.scratch);
            if self
                .verified
                .get(tt.name)
                .is_some_and(|known| known.contains(self.scratch.as_slice()))
            {
                continue;
            }
            if self.exists(tt, v)? {
                encode_key(v, &mut self.scratch);
                let known = self.verified.entry(tt.name).or_default();
                if known.len() >= VERIFIED_CAP {
                    known.clear();
                }
                known.insert(self.scratch.clone());
            } else {
                return Err(Error::MissingReference {
                    table: t.name.to_owned(),
                    column: t.meta.columns[col].name.to_owned(),
                    target: target.to_owned(),
                    key: KeyDisplay(v).to_string(),
                });
            }
        }
        Ok(())
    }

    /// The references of many rows at once (`refs`: each row's reference
    /// values, in `t.refs` order): one `IN` query per referenced table for
    /// up to [`REF_CHUNK`] distinct keys instead of one SELECT per row. The
    /// error is the one [`Self::check_references`] gives for the first row,
    /// in order, with a missing reference.
    fn check_references_many(&mut self, t: &Table, refs: &[Value]) -> Result<()> {
        let nrefs = t.refs.len();
        if nrefs == 0 {
            return Ok(());
        }
        let mut missing: Vec<HashSet<Vec<u8>>> = Vec::with_capacity(nrefs);
        for (j, &(_, target)) in t.refs.iter().enumerate() {
            let mut distinct: HashSet<Vec<u8>> = HashSet::new();
            let mut keys: Vec<&Value> = Vec::new();
            if let Some(tt) = self.reg.tables.get(target) {
                let mut last: Option<&Value> = None;
                for v in refs.iter().skip(j).step_by(nrefs) {
                    // Rows of a batch often share a target: skip repeats cheaply.
                    if v.is_null() || last == Some(v) {
                        continue;
                    }
                    last = Some(v);
                    encode_key(v, &mut self.scratch);
                    if !distinct.contains(&self.scratch) {
                        distinct.insert(self.scratch.clone());
                        keys.push(v);
                    }
                }
                for chunk in keys.chunks(REF_CHUNK) {
                    for found in self.existing_keys(tt, chunk)? {
                        encode_key(&found, &mut self.scratch);
                        distinct.remove(&self.scratch);
                    }
                }
            }
            missing.push(distinct);
        }
        if missing.iter().all(HashSet::is_empty) {
            return Ok(());
        }
        for row in refs.chunks_exact(nrefs) {
            for ((&(col, target), v), gone) in t.refs.iter().zip(row).zip(&missing) {
                if v.is_null() || gone.is_empty() {
                    continue;
                }
                encode_key(v, &mut self.scratch);
                if gone.contains(&self.scratch) {
                    return Err(Error::MissingReference {
                        table: t.name.to_owned(),
                        column: t.meta.columns[col].name.to_owned(),
                        target: target.to_owned(),
                        key: KeyDisplay(v).to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Which of `keys` (at most [`REF_CHUNK`]) exist in `t`. The list is
    /// padded with its last key to a power of four, so a handful of
    /// statement texts (and prepared statements) serve every batch.
    fn existing_keys(&mut self, t: &Table, keys: &[&Value]) -> Result<Vec<Value>> {
        let Some(&last) = keys.last() else {
            return Ok(Vec::new());
        };
        let mut n = 1;
        while n < keys.len() {
            n *= 4;
        }
        let kq = quote_ident(t.meta.key_column().name);
        let mut stmt = Statement::new(format!(
            "SELECT {kq} FROM {} WHERE {kq} IN (",
            quote_ident(t.name)
        ));
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 {
                stmt.sql(", ");
            }
            stmt.bind(i, t.key_type());
            values.push(keys.get(i).copied().unwrap_or(last).clone());
        }
        stmt.sql(")");
        let rows = query_rows(&mut *self.w.conn, &stmt, &values, &[t.key_type()])?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    pub(crate) fn insert_row(&mut self, t: &Table, values: Vec<Value>) -> Result<()> {
        self.w
            .conn
            .execute(&t.insert, &values)
            .map_err(|e| refine(e, t, &values))?;
        self.after_insert(t, &values);
        if self.capture {
            self.captured.push(RowChange {
                table: t.name,
                op: Op::Insert,
                old: None,
                new: Some(values),
            });
        }
        Ok(())
    }

    /// Inserts rows given flattened (row-major, all columns), using
    /// multi-row statements for full batches and single-row ones for the rest.
    pub(crate) fn insert_rows(&mut self, t: &Table, flat: Vec<Value>) -> Result<()> {
        let ncols = t.types.len();
        self.exec_insert_rows(t, &flat)?;
        for row in flat.chunks_exact(ncols) {
            self.after_insert(t, row);
            if self.capture {
                self.captured.push(RowChange {
                    table: t.name,
                    op: Op::Insert,
                    old: None,
                    new: Some(row.to_vec()),
                });
            }
        }
        Ok(())
    }

    /// Executes the inserts of flattened rows, nothing else: no digest, log
    /// or event bookkeeping (the caller does it).
    pub(crate) fn exec_insert_rows(&mut self, t: &Table, flat: &[Value]) -> Result<()> {
        let ncols = t.types.len();
        // Rows applied from the log or a snapshot have not been through `row_of`.
        refuse_nan(t.meta, t.meta.columns.iter().cycle(), flat)?;
        let batch = t.batch_rows * ncols;
        let mut start = 0;
        if t.batch_rows > 1 {
            while flat.len() - start >= batch {
                self.w
                    .conn
                    .execute(&t.insert_batch, &flat[start..start + batch])
                    .map_err(|e| refine(e, t, &[]))?;
                start += batch;
            }
        }
        for row in flat[start..].chunks_exact(ncols) {
            self.w
                .conn
                .execute(&t.insert, row)
                .map_err(|e| refine(e, t, row))?;
        }
        Ok(())
    }

    /// Keeps the identity counter ahead of an inserted row's key.
    pub(crate) fn bump_identity(&mut self, t: &Table, values: &[Value]) {
        if let Some(next) = self.w.next_id.get_mut(t.name) {
            if let Value::I64(id) = values[t.meta.key] {
                *next = (*next).max(id.saturating_add(1));
            }
        }
    }

    /// Log, digest and identity bookkeeping of an inserted row.
    fn after_insert(&mut self, t: &Table, values: &[Value]) {
        self.bump_identity(t, values);
        encode_image(values, &mut self.scratch);
        self.delta
            .toggle(&mut self.digest, t.name, t.seed, &self.scratch);
        if self.logging {
            self.body.push(t.name, Op::Insert, &self.scratch);
        }
    }

    pub(crate) fn update_row(&mut self, t: &Table, values: Vec<Value>, local: bool) -> Result<()> {
        refuse_nan(t.meta, &t.meta.columns, &values)?;
        let key = &values[t.meta.key];
        let Some(old) = self.select_key(t, key)? else {
            return Err(not_found(t, key));
        };
        if local && old == values {
            // Nothing changes: no log entry, no event.
            return Ok(());
        }
        self.w
            .conn
            .execute(&t.update, &values)
            .map_err(|e| refine(e, t, &values))?;
        encode_image(&old, &mut self.scratch);
        self.delta
            .toggle(&mut self.digest, t.name, t.seed, &self.scratch);
        encode_image(&values, &mut self.scratch);
        self.delta
            .toggle(&mut self.digest, t.name, t.seed, &self.scratch);
        if self.logging {
            self.body.push(t.name, Op::Update, &self.scratch);
        }
        if self.capture {
            self.captured.push(RowChange {
                table: t.name,
                op: Op::Update,
                old: Some(old),
                new: Some(values),
            });
        }
        Ok(())
    }

    pub(crate) fn delete_row(&mut self, t: &Table, key: Value, local: bool) -> Result<()> {
        let Some(old) = self.select_key(t, &key)? else {
            return Err(not_found(t, &key));
        };
        if local && !t.children.is_empty() {
            self.deleting.push((t.name, key.clone()));
            let r = self.delete_children(t, &key);
            self.deleting.pop();
            r?;
        }
        self.w.conn.execute(&t.delete, std::slice::from_ref(&key))?;
        self.verified.remove(t.name);
        encode_image(&old, &mut self.scratch);
        self.delta
            .toggle(&mut self.digest, t.name, t.seed, &self.scratch);
        if self.logging {
            encode_key(&key, &mut self.scratch);
            self.body.push(t.name, Op::Delete, &self.scratch);
        }
        if self.capture {
            self.captured.push(RowChange {
                table: t.name,
                op: Op::Delete,
                old: Some(old),
                new: None,
            });
        }
        Ok(())
    }

    fn delete_children(&mut self, t: &Table, key: &Value) -> Result<()> {
        let reg = self.reg;
        let mut cascade: Vec<(&Table, Value)> = Vec::new();
        for (child, sel) in t.children.iter().zip(&t.child_select) {
            let Some(ct) = reg.tables.get(child.table) else {
                continue;
            };
            let rows = query_rows(&mut *self.w.conn, sel, std::slice::from_ref(key), &ct.types)?;
            for row in rows {
                let child_key = row[ct.meta.key].clone();
                if self
                    .deleting
                    .iter()
                    .any(|(tn, k)| *tn == ct.name && *k == child_key)
                {
                    continue;
                }
                match child.on_delete {
                    OnDelete::Restrict => {
                        return Err(Error::Referenced {
                            table: t.name.to_owned(),
                            key: KeyDisplay(key).to_string(),
                            by_table: ct.name.to_owned(),
                            by_column: ct.meta.columns[child.column].name.to_owned(),
                        })
                    }
                    OnDelete::Cascade => cascade.push((ct, child_key)),
                }
            }
        }
        for (ct, child_key) in cascade {
            // A row reached twice through two paths is deleted once.
            if self.select_key(ct, &child_key)?.is_some() {
                self.delete_row(ct, child_key, true)?;
            }
        }
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.w.conn.rollback() {
                tracing::warn!("rollback failed: {e}");
            }
        }
        self.body.release_above(SPARE_MAX);
        self.w.spare.body = std::mem::take(&mut self.body);
    }
}

/// The row of a record to write: validated, NaN refused, -0.0 made +0.0
/// (see `FieldType for f64`), before any key is assigned or anything written.
fn row_of<R: PersistentRecord>(t: &Table, record: &R) -> Result<Vec<Value>> {
    record.validate().map_err(|message| Error::Validation {
        table: t.name.to_owned(),
        message,
    })?;
    let mut values = record.to_row();
    refuse_nan(t.meta, &t.meta.columns, &values)?;
    canonical_row(&mut values);
    Ok(values)
}

pub(crate) fn not_found(t: &Table, key: &Value) -> Error {
    Error::NotFound {
        table: t.name.to_owned(),
        key: KeyDisplay(key).to_string(),
    }
}

/// Turns a constraint failure into the typed error naming the column.
pub(crate) fn refine(e: Error, t: &Table, values: &[Value]) -> Error {
    let Error::Database(msg) = &e else {
        return e;
    };
    let unique = msg.starts_with("[unique:") || msg.contains("UNIQUE constraint failed");
    if !unique {
        return e;
    }
    // SQLite: "UNIQUE constraint failed: table.column"; PostgreSQL: the index
    // or constraint name, `<table>__<column>__key` or `<table>_pkey`.
    let column = t
        .meta
        .columns
        .iter()
        .enumerate()
        .find(|(i, c)| {
            msg.contains(&format!("{}.{}", t.name, c.name))
                || msg.contains(&format!("{}__{}__key", t.name, c.name))
                || (*i == t.meta.key && msg.contains(&format!("{}_pkey", t.name)))
        })
        .map(|(i, c)| (i, c.name));
    match column {
        Some((i, name)) => Error::UniqueViolation {
            table: t.name.to_owned(),
            column: name.to_owned(),
            value: values.get(i).map(|v| KeyDisplay(v).to_string()),
        },
        None => e,
    }
}
