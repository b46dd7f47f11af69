//! Untyped access: rows as `Vec<Value>`, record types by table name.
//!
//! For a host that does not know a module's Rust types (the gateway's REST
//! API and pages): it reads and writes rows by the [`RecordMeta`] they were
//! registered with. Writes take the same path as the typed ones (the row is
//! checked against the column types, validated by the record's own
//! [`RecordMeta::check_row`], references checked, logged, replicated,
//! announced to listeners), and can be guarded by a [`RowVersion`].
//!
//! An error from a write here must end the transaction (return it from the
//! [`Store::write`] closure, which rolls back): unlike the typed calls these
//! do not mark the transaction spoiled themselves.

use std::fmt;

use crate::backend::{quote_ident, Statement};
use crate::digest::row_hash;
use crate::error::{Error, KeyDisplay, Result};
use crate::log::encode_image;
use crate::record::{CompareOp, KeyKind, RecordMeta};
use crate::value::{canonical_row, refuse_nan, SqlType, Value};

use super::schema::{column_list, Table};
use super::write::{not_found, WriteTx};
use super::{query_rows, Registry, Store};

/// The version of a stored row: the hash of its row image (the value the
/// row contributes to the state digest).
///
/// It is derived from the row itself, so no version column is stored (the
/// schema and the fingerprint stay as declared) and both nodes of a pair
/// give the same version for the same row: a version read on the backup is
/// good on the master, before and after a failover. Any change to any
/// column gives another version (up to a 128-bit hash collision); writing
/// back identical values keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowVersion(pub u128);

impl RowVersion {
    /// The version of `row`, a row image of `table`.
    pub fn of(table: &str, row: &[Value]) -> RowVersion {
        let mut image = Vec::new();
        encode_image(row, &mut image);
        RowVersion(row_hash(crate::digest::table_seed(table), &image))
    }

    /// Parses the 32 hexadecimal digits of [`RowVersion`]'s `Display`.
    pub fn parse(s: &str) -> Option<RowVersion> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(RowVersion)
    }
}

impl fmt::Display for RowVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RowVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowVersion({self})")
    }
}

/// A guarded write found the row at another version than expected (someone
/// else changed or deleted it since it was read). Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The row's version now; `None` when it no longer exists.
    pub current: Option<RowVersion>,
}

/// A filtered, ordered, paged read of one table by column index (the
/// untyped [`Query`](super::Query)). Filters combine with AND; rows come in
/// `order`, then key order.
#[derive(Debug, Clone, Default)]
pub struct RowQuery {
    /// (column index, operator, operand). A NULL operand with `Eq` / `Ne`
    /// means `IS NULL` / `IS NOT NULL`.
    pub filters: Vec<(usize, CompareOp, Value)>,
    /// (column index, descending).
    pub order: Vec<(usize, bool)>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Skip this many rows first.
    pub offset: Option<u64>,
}

fn table<'r>(reg: &'r Registry, name: &str) -> Result<&'r Table> {
    reg.tables.get(name).ok_or_else(|| Error::SchemaConflict {
        table: name.to_owned(),
        column: None,
        reason: "no record type of this table is registered with this store".into(),
    })
}

/// The key value `key` must be for `t`'s key column.
fn check_key(t: &Table, key: &Value) -> Result<()> {
    let c = t.meta.key_column();
    if key.sql_type() != Some(c.sql_type) {
        return Err(Error::Validation {
            table: t.name.to_owned(),
            message: format!(
                "the key {} is a {} value, but column {} is {}",
                KeyDisplay(key),
                key.kind(),
                c.name,
                c.sql_type.name()
            ),
        });
    }
    Ok(())
}

/// Column kinds, nullability and enum names, then NaN, then the record's
/// own validation: what a typed write guarantees by construction.
fn check_row(t: &Table, row: &mut [Value]) -> Result<()> {
    let meta = t.meta;
    let invalid = |message: String| Error::Validation {
        table: t.name.to_owned(),
        message,
    };
    if row.len() != meta.columns.len() {
        return Err(invalid(format!(
            "a row has {} values, the record has {} columns",
            row.len(),
            meta.columns.len()
        )));
    }
    for (c, v) in meta.columns.iter().zip(row.iter()) {
        if v.is_null() && !c.nullable {
            return Err(invalid(format!("{} is required", c.name)));
        }
        if !v.fits(c.sql_type) {
            return Err(invalid(format!(
                "{} is {}, not {}",
                c.name,
                c.sql_type.name(),
                v.kind()
            )));
        }
        if let (Some(variants), Value::Text(name)) = (c.variants, v) {
            if !variants.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "{}: `{name}` is not one of {variants:?}",
                    c.name
                )));
            }
        }
    }
    refuse_nan(meta, &meta.columns, row)?;
    canonical_row(row);
    if let Some(check) = meta.check_row {
        check(row.to_vec()).map_err(invalid)?;
    }
    Ok(())
}

fn select(t: &Table, q: &RowQuery, count: bool) -> Result<(Statement, Vec<Value>)> {
    let meta = t.meta;
    let column = |i: usize| {
        meta.columns.get(i).ok_or_else(|| Error::SchemaConflict {
            table: t.name.to_owned(),
            column: None,
            reason: format!("no column {i}"),
        })
    };
    let what = if count {
        "COUNT(*)".to_owned()
    } else {
        column_list(meta)
    };
    let mut stmt = Statement::new(format!("SELECT {what} FROM {}", quote_ident(t.name)));
    let mut values = Vec::new();
    for (n, (i, op, v)) in q.filters.iter().enumerate() {
        let c = column(*i)?;
        refuse_nan(meta, std::slice::from_ref(c), std::slice::from_ref(v))?;
        if !v.fits(c.sql_type) {
            return Err(Error::Validation {
                table: t.name.to_owned(),
                message: format!(
                    "filter on {}: {} is {}, not {}",
                    c.name,
                    c.name,
                    c.sql_type.name(),
                    v.kind()
                ),
            });
        }
        stmt.sql(if n == 0 { " WHERE " } else { " AND " });
        let col = quote_ident(c.name);
        match (op, v.is_null()) {
            (CompareOp::Eq, true) => {
                stmt.sql(&format!("{col} IS NULL"));
            }
            (CompareOp::Ne, true) => {
                stmt.sql(&format!("{col} IS NOT NULL"));
            }
            (_, true) => {
                // Any other comparison with NULL is unknown: no row matches.
                stmt.sql("1 = 0");
            }
            (op, false) => {
                stmt.sql(&format!("{col} {} ", op.sql()))
                    .bind(values.len(), c.sql_type);
                values.push(v.clone());
            }
        }
    }
    if !count {
        let mut parts = Vec::new();
        for (i, desc) in &q.order {
            let c = column(*i)?;
            parts.push(format!(
                "{} {}",
                quote_ident(c.name),
                if *desc { "DESC" } else { "ASC" }
            ));
        }
        parts.push(quote_ident(meta.key_column().name));
        stmt.sql(" ORDER BY ").sql(&parts.join(", "));
        if q.limit.is_some() || q.offset.is_some() {
            stmt.sql(" LIMIT ").bind(values.len(), SqlType::BigInt);
            values.push(Value::I64(
                q.limit.map_or(i64::MAX, |l| l.min(i64::MAX as u64) as i64),
            ));
            stmt.sql(" OFFSET ").bind(values.len(), SqlType::BigInt);
            values.push(Value::I64(q.offset.unwrap_or(0).min(i64::MAX as u64) as i64));
        }
    }
    Ok((stmt, values))
}

/// What deleting a row would do (see [`Store::delete_preview`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletePreview {
    /// Rows deleted with it, per table (`on_delete = cascade`, transitively).
    pub cascade: Vec<(&'static str, u64)>,
    /// Rows that refuse the delete, per table (`on_delete = restrict`, on
    /// the row or on a row that would cascade with it).
    pub restrict: Vec<(&'static str, u64)>,
}

impl DeletePreview {
    fn add(list: &mut Vec<(&'static str, u64)>, table: &'static str, n: u64) {
        match list.iter_mut().find(|(t, _)| *t == table) {
            Some((_, c)) => *c += n,
            None => list.push((table, n)),
        }
    }
}

impl Store {
    /// What deleting the row of `table` with `key` would do, read in one
    /// read transaction: the rows that would cascade with it and the rows
    /// that would refuse it. A preview for a person about to confirm;
    /// the delete itself checks again.
    pub fn delete_preview(&self, table: &str, key: &Value) -> Result<DeletePreview> {
        let reg = self.registry();
        let t = self::table(&reg, table)?;
        check_key(t, key)?;
        self.with_reader(|conn| {
            let mut out = DeletePreview::default();
            let mut seen: Vec<(&'static str, Value)> = vec![(t.name, key.clone())];
            let mut todo: Vec<(&Table, Value)> = vec![(t, key.clone())];
            while let Some((t, key)) = todo.pop() {
                for (child, sel) in t.children.iter().zip(&t.child_select) {
                    let Some(ct) = reg.tables.get(child.table) else {
                        continue;
                    };
                    let rows = query_rows(conn, sel, std::slice::from_ref(&key), &ct.types)?;
                    for row in rows {
                        let k = row[ct.meta.key].clone();
                        if seen.iter().any(|(tn, sk)| *tn == ct.name && *sk == k) {
                            continue;
                        }
                        seen.push((ct.name, k.clone()));
                        match child.on_delete {
                            crate::record::OnDelete::Restrict => {
                                DeletePreview::add(&mut out.restrict, ct.name, 1)
                            }
                            crate::record::OnDelete::Cascade => {
                                DeletePreview::add(&mut out.cascade, ct.name, 1);
                                todo.push((ct, k));
                            }
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    /// The registered record types (modules' and their references'), by table name.
    pub fn record_types(&self) -> Vec<&'static RecordMeta> {
        let reg = self.registry();
        let mut v: Vec<_> = reg.tables.values().map(|t| t.meta).collect();
        v.sort_unstable_by_key(|m| m.table);
        v
    }

    /// The row of `table` with `key`, if any.
    pub fn get_row(&self, table: &str, key: &Value) -> Result<Option<Vec<Value>>> {
        let reg = self.registry();
        let t = self::table(&reg, table)?;
        check_key(t, key)?;
        let rows = self.run_query(&t.select_key, std::slice::from_ref(key), &t.types)?;
        Ok(rows.into_iter().next())
    }

    /// The rows of `table` matching `query`.
    pub fn query_rows(&self, table: &str, query: &RowQuery) -> Result<Vec<Vec<Value>>> {
        let reg = self.registry();
        let t = self::table(&reg, table)?;
        let (stmt, values) = select(t, query, false)?;
        self.run_query(&stmt, &values, &t.types)
    }

    /// How many rows of `table` match `query`'s filters.
    pub fn count_rows(&self, table: &str, query: &RowQuery) -> Result<u64> {
        let reg = self.registry();
        let t = self::table(&reg, table)?;
        let (stmt, values) = select(t, query, true)?;
        let rows = self.run_query(&stmt, &values, &[SqlType::BigInt])?;
        Ok(match rows.first().and_then(|r| r.first()) {
            Some(Value::I64(n)) => *n as u64,
            _ => 0,
        })
    }
}

impl WriteTx<'_> {
    /// The row of `table` with `key`, as this transaction sees it.
    pub fn get_row(&mut self, table: &str, key: &Value) -> Result<Option<Vec<Value>>> {
        let reg = self.reg;
        let t = self::table(reg, table)?;
        check_key(t, key)?;
        self.select_key(t, key)
    }

    /// Inserts a row of `table` (column order, as [`RecordMeta::columns`]);
    /// returns its key. An identity key's value in `row` is ignored and
    /// assigned. Checked like a typed insert: column kinds, NULLs, enum
    /// names, the record's validation ([`RecordMeta::check_row`]), references.
    pub fn insert_values(&mut self, table: &str, mut row: Vec<Value>) -> Result<Value> {
        let reg = self.reg;
        let t = self::table(reg, table)?;
        let k = t.meta.key;
        if t.meta.key_kind == KeyKind::Identity && row.len() == t.meta.columns.len() {
            // A placeholder of the right kind, so the row decodes for validation.
            row[k] = Value::I64(0);
        }
        check_row(t, &mut row)?;
        if t.meta.key_kind == KeyKind::Identity {
            let next = self.w.next_id.entry(t.name).or_insert(1);
            row[k] = Value::I64(*next);
            *next += 1;
        }
        let key = row[k].clone();
        self.references(t, &row)?;
        self.insert_row(t, row)?;
        Ok(key)
    }

    /// Replaces the row with `row`'s key, if it is at version `expected`
    /// (any version when `None`); returns the row's new version, or
    /// [`Stale`] (nothing written) when it is at another version or gone.
    /// [`Error::NotFound`] when there is no such row and no version was expected.
    /// The version is read and checked in this transaction, under the writer's
    /// lock, so no other write comes between the check and the update.
    pub fn update_values(
        &mut self,
        table: &str,
        mut row: Vec<Value>,
        expected: Option<RowVersion>,
    ) -> Result<std::result::Result<RowVersion, Stale>> {
        let reg = self.reg;
        let t = self::table(reg, table)?;
        check_row(t, &mut row)?;
        let key = row[t.meta.key].clone();
        let current = self.select_key(t, &key)?;
        if let Some(expected) = expected {
            let now = current.as_deref().map(|r| RowVersion::of(t.name, r));
            if now != Some(expected) {
                return Ok(Err(Stale { current: now }));
            }
        }
        if current.is_none() {
            return Err(not_found(t, &key));
        }
        self.references(t, &row)?;
        let version = RowVersion::of(t.name, &row);
        self.update_row(t, row, true)?;
        Ok(Ok(version))
    }

    /// Deletes the row of `table` with `key` (cascading as declared), if it
    /// is at version `expected` (any when `None`); [`Stale`] otherwise.
    pub fn delete_values(
        &mut self,
        table: &str,
        key: &Value,
        expected: Option<RowVersion>,
    ) -> Result<std::result::Result<(), Stale>> {
        let reg = self.reg;
        let t = self::table(reg, table)?;
        check_key(t, key)?;
        if let Some(expected) = expected {
            let now = self.select_key(t, key)?.map(|r| RowVersion::of(t.name, &r));
            if now != Some(expected) {
                return Ok(Err(Stale { current: now }));
            }
        }
        self.delete_row(t, key.clone(), true)?;
        Ok(Ok(()))
    }

    /// Every reference of `row` names an existing row.
    fn references(&mut self, t: &Table, row: &[Value]) -> Result<()> {
        for &(col, target) in &t.refs {
            let v = &row[col];
            if v.is_null() {
                continue;
            }
            let Some(tt) = self.reg.tables.get(target) else {
                continue;
            };
            let found = query_rows(
                &mut *self.w.conn,
                &tt.exists_key,
                std::slice::from_ref(v),
                &[tt.meta.key_column().sql_type],
            )?;
            if found.is_empty() {
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
}
