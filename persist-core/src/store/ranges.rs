//! Range digests: the state digest split, per table, into [`BUCKETS`] buckets
//! by the top bits of each row's hash, so two stores (or a store and its own
//! rows) can tell *which* part of a table differs, not only that something
//! does.
//!
//! A row lands in the bucket its hash names (`row_hash >> 118`), so the
//! buckets cost nothing per change beyond what the total digest already
//! computes: each change's hash is kept in the transaction (a [`RangeDelta`])
//! and folded into the store's in-memory buckets when it commits. The
//! buckets are not written to the database: they are recomputed from the
//! rows when the store opens (one scan, accepted as recorded when their XOR
//! equals the recorded digest), rebuilt by a restore and kept by every
//! commit and applied entry. The XOR of every bucket of every table is the
//! state digest.
//!
//! The scrubber ([`Store::scrub`]) reads every row again, in steps, inside
//! one consistent read, and compares the buckets it computes with the ones
//! recorded at that position: a bucket that differs holds a row changed
//! behind the library's back. A repair ([`Store::range_rows`] on both nodes,
//! [`plan_repair`] on the master, [`Store::repair`] on the backup) then
//! ships only the rows that differ within those buckets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::backend::{quote_ident, Connection, Statement};
use crate::digest::{row_hash, table_seed, Digest};
use crate::error::{Error, Result};
use crate::listen::Commit;
use crate::log::{encode_image, encode_key, LogEntry};
use crate::value::{SqlType, Value};

use super::schema::{self, column_list, Table};
use super::{check_image, load_head, query_i64, Registry, Store};

/// Buckets per table. A bucket of a 1M-row table holds about 1,000 rows.
pub const BUCKETS: usize = 1024;
const SHIFT: u32 = 128 - BUCKETS.trailing_zeros();

/// The bucket a row with this hash falls in.
#[inline]
pub fn bucket_of(hash: u128) -> u16 {
    (hash >> SHIFT) as u16
}

/// Per-table bucket digests (see the module docs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RangeDigests {
    tables: BTreeMap<String, Box<[u128]>>,
}

impl std::fmt::Debug for RangeDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.tables.iter().map(|(t, b)| (t, xor(b))))
            .finish()
    }
}

fn xor(buckets: &[u128]) -> Digest {
    Digest(buckets.iter().fold(0, |a, b| a ^ b))
}

fn empty_buckets() -> Box<[u128]> {
    vec![0u128; BUCKETS].into_boxed_slice()
}

impl RangeDigests {
    /// Adds or removes a row of `table` by its hash.
    #[inline]
    pub fn toggle(&mut self, table: &str, hash: u128) {
        let b = bucket_of(hash) as usize;
        match self.tables.get_mut(table) {
            Some(buckets) => buckets[b] ^= hash,
            None => {
                let mut buckets = empty_buckets();
                buckets[b] ^= hash;
                self.tables.insert(table.to_owned(), buckets);
            }
        }
    }

    /// The buckets of `table` (`None`: no row of it was ever seen).
    pub fn table(&self, table: &str) -> Option<&[u128]> {
        self.tables.get(table).map(|b| &b[..])
    }

    /// One bucket's digest (zero for a table never seen).
    pub fn bucket(&self, table: &str, bucket: u16) -> u128 {
        self.tables
            .get(table)
            .and_then(|b| b.get(bucket as usize).copied())
            .unwrap_or(0)
    }

    /// Table names, sorted.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// The XOR of every bucket: the state digest of these tables.
    pub fn total(&self) -> Digest {
        Digest(self.tables.values().fold(0, |a, b| a ^ xor(b).0))
    }

    /// The buckets of `tables` that differ between `self` and `other`, per
    /// table (a table missing on one side counts as empty there).
    pub fn differing<'a>(
        &self,
        other: &RangeDigests,
        tables: impl IntoIterator<Item = &'a str>,
    ) -> Vec<RangeMismatch> {
        let mut out = Vec::new();
        for table in tables {
            let buckets: Vec<u16> = (0..BUCKETS as u16)
                .filter(|&b| self.bucket(table, b) != other.bucket(table, b))
                .collect();
            if !buckets.is_empty() {
                out.push(RangeMismatch {
                    table: table.to_owned(),
                    buckets,
                });
            }
        }
        out
    }
}

/// The buckets of one table that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeMismatch {
    /// The table.
    pub table: String,
    /// The buckets, ascending.
    pub buckets: Vec<u16>,
}

/// The hashes of rows a transaction added or removed, folded into the
/// store's buckets when it commits (dropped with a rollback).
#[derive(Default)]
pub(crate) struct RangeDelta {
    toggles: Vec<(&'static str, u128)>,
}

impl RangeDelta {
    /// Toggles a row in the digest and remembers it for the buckets.
    #[inline]
    pub(crate) fn toggle(
        &mut self,
        digest: &mut Digest,
        table: &'static str,
        seed: u64,
        image: &[u8],
    ) {
        let h = row_hash(seed, image);
        digest.0 ^= h;
        self.toggles.push((table, h));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.toggles.is_empty()
    }

    /// Folds the toggles into `into` and forgets them.
    pub(crate) fn drain_into(&mut self, into: &mut RangeDigests) {
        let mut rest = &self.toggles[..];
        while let Some(&(table, _)) = rest.first() {
            // One lookup per run of changes to the same table.
            let run = rest
                .iter()
                .take_while(|(t, _)| std::ptr::eq(*t, table) || *t == table)
                .count();
            let buckets = into
                .tables
                .entry(table.to_owned())
                .or_insert_with(empty_buckets);
            for &(_, h) in &rest[..run] {
                buckets[bucket_of(h) as usize] ^= h;
            }
            rest = &rest[run..];
        }
        self.toggles.clear();
    }

    /// The toggles per (table, bucket): the XOR of the hashes.
    fn per_bucket(&self) -> HashMap<(&'static str, u16), u128> {
        let mut m = HashMap::new();
        for &(t, h) in &self.toggles {
            *m.entry((t, bucket_of(h))).or_insert(0) ^= h;
        }
        m
    }
}

/// The recorded buckets, as of a position, shared by the writer (which
/// updates them after each commit) and readers (the scrubber).
#[derive(Debug, Default)]
pub(crate) struct RangeState {
    pub position: u64,
    pub digests: RangeDigests,
    /// The buckets are the recorded ones: false when the rows did not match
    /// the recorded digest when the store opened (they were computed from
    /// those rows, so they cannot tell which part is wrong).
    pub trusted: bool,
}

pub(crate) type SharedRanges = Arc<RwLock<RangeState>>;

/// After a commit: the delta goes into the shared buckets at `position`.
pub(crate) fn committed(shared: &SharedRanges, position: u64, delta: &mut RangeDelta) {
    if delta.is_empty() && shared.read().position == position {
        return;
    }
    let mut s = shared.write();
    delta.drain_into(&mut s.digests);
    s.position = position;
}

/// After a restore: the restored rows' buckets are the recorded ones.
pub(crate) fn restored(
    shared: &SharedRanges,
    position: u64,
    digests: RangeDigests,
    recorded: Digest,
) {
    let trusted = digests.total() == recorded;
    *shared.write() = RangeState {
        position,
        digests,
        trusted,
    };
}

/// After a migration that changed row images (the digest was recomputed
/// from the rows): the buckets are recomputed the same way.
pub(crate) fn migrated(
    conn: &mut dyn Connection,
    shared: &SharedRanges,
    position: u64,
    recorded: Digest,
) -> Result<()> {
    let state = opened(conn, position, recorded)?;
    *shared.write() = state;
    Ok(())
}

/// The buckets of every table the store manages, from its rows (registered
/// in this run or not, as [`Store::verify`] counts them).
pub(crate) fn recompute(conn: &mut dyn Connection) -> Result<RangeDigests> {
    let mut out = RangeDigests::default();
    let mut image = Vec::new();
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
            .map(|c| quote_ident(&c.name))
            .collect();
        let stmt = Statement::new(format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            quote_ident(&table)
        ));
        let seed = table_seed(&table);
        let mut buckets = empty_buckets();
        conn.query(&stmt, &[], &types, &mut |row| {
            encode_image(row, &mut image);
            let h = row_hash(seed, &image);
            buckets[bucket_of(h) as usize] ^= h;
            Ok(())
        })?;
        out.tables.insert(table, buckets);
    }
    Ok(out)
}

/// The state for a store that opened with these rows and this recorded digest.
pub(crate) fn opened(
    conn: &mut dyn Connection,
    position: u64,
    recorded: Digest,
) -> Result<RangeState> {
    let digests = recompute(conn)?;
    let trusted = digests.total() == recorded;
    if !trusted {
        tracing::warn!(
            position,
            "the rows do not match the recorded digest: range digests cannot tell where until a resync"
        );
    }
    Ok(RangeState {
        position,
        digests,
        trusted,
    })
}

/// Begins a read on `conn` and takes the recorded buckets of the same
/// position (the writer updates them just after its commit; a read that
/// lands in between is taken again).
fn consistent_read(
    conn: &mut dyn Connection,
    shared: &SharedRanges,
) -> Result<(u64, RangeDigests, bool)> {
    for _ in 0..100 {
        let state = shared.read();
        conn.begin_read()?;
        let head = match load_head(conn) {
            Ok(h) => h,
            Err(e) => {
                let _ = conn.rollback();
                return Err(e);
            }
        };
        if head.position == state.position {
            return Ok((state.position, state.digests.clone(), state.trusted));
        }
        drop(state);
        let _ = conn.rollback();
        std::thread::yield_now();
    }
    Err(Error::Locked(
        "the head kept moving while reading the range digests".into(),
    ))
}

/// What a scrub found ([`Scrub::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// The position the rows were read at.
    pub position: u64,
    /// Rows read.
    pub rows: u64,
    /// Tables read.
    pub tables: usize,
    /// Whether the recorded buckets were known (see [`Verification`](super::Verification)):
    /// when not, `differing` is empty and only the total digest tells.
    pub trusted: bool,
    /// Buckets whose rows do not match their recorded digest.
    pub differing: Vec<RangeMismatch>,
}

impl ScrubReport {
    /// Buckets that differ, over every table.
    pub fn differing_buckets(&self) -> usize {
        self.differing.iter().map(|m| m.buckets.len()).sum()
    }
}

/// A scrub in progress (see [`Store::scrub`]): one consistent read of every
/// registered table, taken a bounded number of rows at a time.
pub struct Scrub {
    conn: Box<dyn Connection>,
    reg: Arc<Registry>,
    names: Vec<&'static str>,
    position: u64,
    recorded: RangeDigests,
    trusted: bool,
    computed: RangeDigests,
    table: usize,
    last_key: Option<Value>,
    image: Vec<u8>,
    rows: u64,
}

impl std::fmt::Debug for Scrub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrub")
            .field("position", &self.position)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl Scrub {
    /// The position being checked.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The rows this pass reads in all: each registered table counted in
    /// the pass's read (SQLite scans each table's smallest index for it:
    /// worth it once, to pace a pass whose size is not known yet).
    pub fn count_rows(&mut self) -> Result<u64> {
        let mut total = 0u64;
        for name in &self.names {
            let stmt = Statement::new(format!("SELECT COUNT(*) FROM {}", quote_ident(name)));
            let n = query_i64(&mut *self.conn, &stmt, &[])?.unwrap_or(0);
            total += u64::try_from(n).unwrap_or(0);
        }
        Ok(total)
    }

    /// Reads up to `max_rows` more rows; `true` once every table is read.
    pub fn step(&mut self, max_rows: usize) -> Result<bool> {
        let max_rows = max_rows.max(1);
        let mut left = max_rows;
        while self.table < self.names.len() && left > 0 {
            let t: &Table = self
                .reg
                .tables
                .get(self.names[self.table])
                .ok_or_else(|| Error::Database("a table left the registry".into()))?;
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
            values.push(Value::I64(left as i64));
            let mut n = 0usize;
            let mut last: Option<Value> = None;
            let (image, computed) = (&mut self.image, &mut self.computed);
            let (name, seed, key_index) = (t.name, t.seed, t.meta.key);
            self.conn.query(&stmt, &values, &t.types, &mut |row| {
                encode_image(row, image);
                computed.toggle(name, row_hash(seed, image));
                n += 1;
                last = Some(row[key_index].clone());
                Ok(())
            })?;
            self.rows += n as u64;
            left -= n;
            if left > 0 {
                self.table += 1;
            } else {
                self.last_key = last;
            }
        }
        Ok(self.table >= self.names.len())
    }

    /// The comparison (call after [`Scrub::step`] returned `true`; a scrub
    /// finished early compares only what it read, and says so in `rows`).
    pub fn finish(mut self) -> ScrubReport {
        let _ = self.conn.rollback();
        for name in &self.names {
            if self.computed.table(name).is_none() {
                self.computed
                    .tables
                    .insert((*name).to_owned(), empty_buckets());
            }
        }
        let differing = if self.trusted {
            self.computed
                .differing(&self.recorded, self.names.iter().copied())
        } else {
            Vec::new()
        };
        ScrubReport {
            position: self.position,
            rows: self.rows,
            tables: self.names.len(),
            trusted: self.trusted,
            differing,
        }
    }
}

impl Drop for Scrub {
    fn drop(&mut self) {
        let _ = self.conn.rollback();
    }
}

/// The rows of some buckets, read in one consistent read ([`Store::range_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRows {
    /// The position they were read at.
    pub position: u64,
    /// Per table asked for.
    pub tables: Vec<TableRangeRows>,
}

/// The rows of some buckets of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRangeRows {
    /// The table.
    pub table: String,
    /// The buckets asked for, with (recorded, computed) digests each.
    pub buckets: Vec<(u16, u128, u128)>,
    /// The rows in them: (hash, image).
    pub rows: Vec<(u128, Vec<u8>)>,
}

impl RangeRows {
    /// Buckets whose rows do not match their recorded digest.
    pub fn differing(&self) -> Vec<RangeMismatch> {
        self.tables
            .iter()
            .filter_map(|t| {
                let buckets: Vec<u16> = t
                    .buckets
                    .iter()
                    .filter(|(_, r, c)| r != c)
                    .map(|(b, _, _)| *b)
                    .collect();
                (!buckets.is_empty()).then(|| RangeMismatch {
                    table: t.table.clone(),
                    buckets,
                })
            })
            .collect()
    }

    /// Rows over every table.
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }
}

/// What the master sends to repair some buckets of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepairSet {
    /// Row images the backup lacks: (table, image).
    pub rows: Vec<(String, Vec<u8>)>,
    /// Hashes of the backup's rows the master does not have: (table, hash).
    pub remove: Vec<(String, u128)>,
}

/// The master's side of a repair: given its rows of the buckets
/// (`master`, read by [`Store::range_rows`]) and the hashes of the backup's
/// rows in the same buckets, the rows to ship and the backup's rows to
/// drop. Refused if the master's own rows in those buckets do not match its
/// recorded digest: they are not shipped as truth.
pub fn plan_repair(
    master: &RangeRows,
    backup: &[(String, Vec<u128>)],
) -> std::result::Result<RepairSet, Vec<RangeMismatch>> {
    let bad = master.differing();
    if !bad.is_empty() {
        return Err(bad);
    }
    let mut out = RepairSet::default();
    for t in &master.tables {
        let theirs: HashSet<u128> = backup
            .iter()
            .filter(|(name, _)| *name == t.table)
            .flat_map(|(_, h)| h.iter().copied())
            .collect();
        let ours: HashSet<u128> = t.rows.iter().map(|(h, _)| *h).collect();
        for (h, image) in &t.rows {
            if !theirs.contains(h) {
                out.rows.push((t.table.clone(), image.clone()));
            }
        }
        let mut remove: Vec<u128> = theirs.difference(&ours).copied().collect();
        remove.sort_unstable();
        out.remove
            .extend(remove.into_iter().map(|h| (t.table.clone(), h)));
    }
    Ok(out)
}

/// What a repair changed on the backup ([`Store::repair`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairOutcome {
    /// Rows inserted.
    pub inserted: u64,
    /// Rows replaced.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
}

impl RepairOutcome {
    /// Rows changed.
    pub fn changed(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

fn key_bytes(key: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(key, &mut out);
    out
}

impl Store {
    /// Whether the recorded range digests are known: false when the rows
    /// did not match the recorded digest when the store opened (the buckets
    /// were computed from those rows) until a restore replaces them.
    pub fn ranges_trusted(&self) -> bool {
        self.inner.ranges.read().trusted
    }

    /// The recorded range digests, at the head.
    pub fn range_digests(&self) -> RangeDigests {
        self.inner.ranges.read().digests.clone()
    }

    /// Starts re-reading every registered table in one consistent read, to
    /// compare its rows with the recorded range digests (see the module
    /// docs): call [`Scrub::step`] until it returns `true`, then
    /// [`Scrub::finish`]. The read holds no lock: writers go on meanwhile.
    pub fn scrub(&self) -> Result<Scrub> {
        let reg = self.registry();
        let shared = self.inner.ranges.clone();
        let mut conn = self.inner.config.connect()?;
        let (position, recorded, trusted) = consistent_read(&mut *conn, &shared)?;
        let mut names: Vec<&'static str> = reg.tables.keys().copied().collect();
        names.sort_unstable();
        Ok(Scrub {
            conn,
            reg,
            names,
            position,
            recorded,
            trusted,
            computed: RangeDigests::default(),
            table: 0,
            last_key: None,
            image: Vec::new(),
            rows: 0,
        })
    }

    /// The rows of some buckets, with each bucket's recorded and computed
    /// digest, in one consistent read (every row of the named tables is
    /// read; those in the buckets are kept).
    pub fn range_rows(&self, wanted: &[RangeMismatch]) -> Result<RangeRows> {
        let reg = self.registry();
        let shared = self.inner.ranges.clone();
        let mut conn = self.inner.config.connect()?;
        let (position, recorded, _) = consistent_read(&mut *conn, &shared)?;
        let r = (|| {
            let mut tables = Vec::with_capacity(wanted.len());
            for m in wanted {
                let t = reg
                    .tables
                    .get(m.table.as_str())
                    .ok_or_else(|| Error::Inapplicable {
                        position,
                        reason: format!("table {} is not registered on this node", m.table),
                    })?;
                let mut want = vec![false; BUCKETS];
                for &b in &m.buckets {
                    if let Some(w) = want.get_mut(b as usize) {
                        *w = true;
                    }
                }
                let stmt = Statement::new(format!(
                    "SELECT {} FROM {}",
                    column_list(t.meta),
                    quote_ident(t.name)
                ));
                let mut computed = vec![0u128; BUCKETS];
                let mut rows = Vec::new();
                let mut image = Vec::new();
                conn.query(&stmt, &[], &t.types, &mut |row| {
                    encode_image(row, &mut image);
                    let h = row_hash(t.seed, &image);
                    let b = bucket_of(h) as usize;
                    if want[b] {
                        computed[b] ^= h;
                        rows.push((h, image.clone()));
                    }
                    Ok(())
                })?;
                let mut buckets: Vec<u16> = m.buckets.clone();
                buckets.sort_unstable();
                buckets.dedup();
                buckets.retain(|b| (*b as usize) < BUCKETS);
                tables.push(TableRangeRows {
                    table: m.table.clone(),
                    buckets: buckets
                        .into_iter()
                        .map(|b| (b, recorded.bucket(&m.table, b), computed[b as usize]))
                        .collect(),
                    rows,
                });
            }
            Ok(RangeRows { position, tables })
        })();
        let _ = conn.rollback();
        r
    }

    /// Repairs some buckets of this store (a backup) with what its master
    /// sent: `local` is this store's own read of the buckets
    /// ([`Store::range_rows`]), `set` the master's answer ([`plan_repair`]).
    ///
    /// In one transaction, without a log entry (the position and the
    /// recorded digests stay: they are the master's): the shipped rows are
    /// written where they differ, this store's rows the master lacks are
    /// deleted, and the result must bring every bucket of `local` to its
    /// recorded digest (and touch no other bucket), or nothing changes
    /// ([`Error::Inapplicable`]; rows that changed on either node since the
    /// reads make it so, and a later scrub tries again). Subscriptions get
    /// events for the rows that changed.
    pub fn repair(&self, local: &RangeRows, set: &RepairSet) -> Result<RepairOutcome> {
        let reg = self.registry();
        // Bounded: a restore in progress holds the writer between its steps.
        let mut w = self
            .inner
            .writer
            .try_lock_for(std::time::Duration::from_secs(5))
            .ok_or_else(|| Error::Locked("the writer is busy (a restore?)".into()))?;
        let position = w.position;
        let refuse = |reason: String| Error::Inapplicable { position, reason };
        // What each bucket must change by: computed ^ recorded, as read.
        let mut expected: HashMap<(&'static str, u16), u128> = HashMap::new();
        for t in &local.tables {
            let table = reg
                .tables
                .get(t.table.as_str())
                .ok_or_else(|| refuse(format!("table {} is not registered here", t.table)))?;
            for &(b, recorded, computed) in &t.buckets {
                expected.insert((table.name, b), recorded ^ computed);
            }
        }
        let mut mine: HashMap<(&str, u128), &[u8]> = HashMap::new();
        for t in &local.tables {
            for (h, image) in &t.rows {
                mine.insert((t.table.as_str(), *h), image.as_slice());
            }
        }
        let mut tx = super::write::WriteTx::begin(&mut w, &reg)?;
        tx.logging = false;
        let mut outcome = RepairOutcome::default();
        // Keys written from the master's rows, by their encoded form.
        let mut upserted: HashSet<(&'static str, Vec<u8>)> = HashSet::new();
        for (name, image) in &set.rows {
            let t = reg
                .tables
                .get(name.as_str())
                .ok_or_else(|| refuse(format!("table {name} is not registered here")))?;
            let values = check_image(t, image).map_err(refuse)?;
            let key = values[t.meta.key].clone();
            match tx.select_key(t, &key)? {
                Some(old) if old == values => {}
                Some(_) => {
                    tx.update_row(t, values, false)?;
                    outcome.updated += 1;
                }
                None => {
                    tx.insert_rows(t, values)?;
                    outcome.inserted += 1;
                }
            }
            upserted.insert((t.name, key_bytes(&key)));
        }
        let mut image = Vec::new();
        for (name, h) in &set.remove {
            let t = reg
                .tables
                .get(name.as_str())
                .ok_or_else(|| refuse(format!("table {name} is not registered here")))?;
            let Some(theirs) = mine.get(&(name.as_str(), *h)) else {
                return Err(refuse(format!(
                    "{name}: asked to drop a row this node did not report"
                )));
            };
            let values = check_image(t, theirs).map_err(refuse)?;
            let key = values[t.meta.key].clone();
            if upserted.contains(&(t.name, key_bytes(&key))) {
                continue;
            }
            let Some(current) = tx.select_key(t, &key)? else {
                continue;
            };
            encode_image(&current, &mut image);
            if row_hash(t.seed, &image) == *h {
                tx.delete_row(t, key, false)?;
                outcome.deleted += 1;
            }
        }
        let delta = std::mem::take(&mut tx.delta);
        let made = delta.per_bucket();
        let fits = made
            .iter()
            .all(|(k, v)| expected.get(k).copied().unwrap_or(0) == *v)
            && expected
                .iter()
                .all(|(k, v)| made.get(k).copied().unwrap_or(0) == *v);
        if !fits {
            // Dropping the transaction rolls it back.
            return Err(refuse(
                "the repair does not bring the buckets to their recorded digests (rows changed meanwhile)"
                    .into(),
            ));
        }
        let changes = std::mem::take(&mut tx.captured);
        let (epoch, digest) = (tx.w.epoch, tx.w.digest);
        tx.finish(Vec::new())?;
        if !changes.is_empty() {
            w.listeners.dispatch_to_subscribers(Commit {
                position,
                changes,
                entry: Arc::new(LogEntry {
                    position,
                    epoch,
                    committed_at: super::now_micros(),
                    digest,
                    body: Vec::new(),
                }),
            });
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sum_to_the_digest_and_name_the_changed_part() {
        let seed = table_seed("t");
        let mut a = RangeDigests::default();
        let mut total = Digest::EMPTY;
        for i in 0..5000u32 {
            let image = i.to_le_bytes();
            a.toggle("t", row_hash(seed, &image));
            total.toggle(seed, &image);
        }
        assert_eq!(a.total(), total);
        let mut b = a.clone();
        // One row changed: its old and new buckets differ, nothing else.
        let (old, new) = (
            row_hash(seed, &7u32.to_le_bytes()),
            row_hash(seed, b"seven"),
        );
        b.toggle("t", old);
        b.toggle("t", new);
        let d = a.differing(&b, ["t"]);
        let mut want = vec![bucket_of(old), bucket_of(new)];
        want.sort_unstable();
        want.dedup();
        assert_eq!(
            d,
            vec![RangeMismatch {
                table: "t".into(),
                buckets: want
            }]
        );
        assert!(a.differing(&a, ["t", "other"]).is_empty());
    }

    #[test]
    fn a_delta_folds_in_once() {
        let seed = table_seed("t");
        let mut delta = RangeDelta::default();
        let mut digest = Digest::EMPTY;
        delta.toggle(&mut digest, "t", seed, b"one");
        delta.toggle(&mut digest, "u", table_seed("u"), b"one");
        delta.toggle(&mut digest, "t", seed, b"two");
        let mut r = RangeDigests::default();
        delta.drain_into(&mut r);
        assert!(delta.is_empty());
        assert_eq!(r.total(), digest);
        assert_eq!(r.table_names().collect::<Vec<_>>(), ["t", "u"]);
    }

    fn rows(table: &str, hashes: &[(u128, &[u8])], bad: bool) -> RangeRows {
        let b = bucket_of(hashes[0].0);
        let c = hashes.iter().fold(0, |a, (h, _)| a ^ h);
        RangeRows {
            position: 9,
            tables: vec![TableRangeRows {
                table: table.into(),
                buckets: vec![(b, if bad { c ^ 1 } else { c }, c)],
                rows: hashes.iter().map(|(h, i)| (*h, i.to_vec())).collect(),
            }],
        }
    }

    #[test]
    fn the_plan_ships_only_what_differs_and_refuses_a_master_at_odds_with_itself() {
        let master = rows("t", &[(1, b"a"), (2, b"b"), (3, b"c")], false);
        let backup = vec![("t".to_owned(), vec![1, 3, 4])];
        let set = plan_repair(&master, &backup).unwrap();
        assert_eq!(set.rows, vec![("t".to_owned(), b"b".to_vec())]);
        assert_eq!(set.remove, vec![("t".to_owned(), 4)]);
        let bad = rows("t", &[(1, b"a")], true);
        assert_eq!(plan_repair(&bad, &backup).unwrap_err().len(), 1);
    }
}
