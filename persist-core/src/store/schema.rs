//! Tables of registered record types: DDL, compiled statements, migrations.

use std::collections::HashMap;

use crate::backend::{quote_ident, Connection, Dialect, Statement};
use crate::digest::table_seed;
use crate::error::{Error, Result};
use crate::record::{canonical_column, ColumnMeta, KeyKind, OnDelete, RecordMeta};
use crate::value::{SqlType, Value};

/// The store's own tables.
pub(crate) const LOG_TABLE: &str = "_persist_log";
pub(crate) const META_TABLE: &str = "_persist_meta";
pub(crate) const SCHEMA_TABLE: &str = "_persist_schema";
pub(crate) const HISTORY_TABLE: &str = "_persist_history";

pub(crate) fn internal_ddl(d: Dialect) -> Vec<String> {
    let (pos, blob) = match d {
        Dialect::Sqlite => ("INTEGER", "BLOB"),
        Dialect::Postgres => ("BIGINT", "BYTEA"),
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (position {pos} NOT NULL PRIMARY KEY, epoch BIGINT NOT NULL, \
             committed_at BIGINT NOT NULL, digest {blob} NOT NULL, body {blob} NOT NULL)"
        ),
        format!("CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT NOT NULL PRIMARY KEY, value {blob} NOT NULL)"),
        format!("CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (table_name TEXT NOT NULL PRIMARY KEY, definition TEXT NOT NULL)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (seq {pos} NOT NULL PRIMARY KEY, at BIGINT NOT NULL, \
             kind TEXT NOT NULL, payload {blob} NOT NULL)"
        ),
    ]
}

/// Rows per multi-row INSERT, at most.
pub(crate) const BATCH_ROWS: usize = 100;
/// Binds per multi-row INSERT, at most.
const BATCH_BINDS: usize = 30_000;

/// A column that references this table's key.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    pub table: &'static str,
    pub column: usize,
    pub on_delete: OnDelete,
}

/// A registered table with its prepared statement templates.
#[derive(Debug)]
pub(crate) struct Table {
    pub meta: &'static RecordMeta,
    pub name: &'static str,
    pub seed: u64,
    pub types: Vec<SqlType>,
    pub insert: Statement,
    /// Multi-row insert of `batch_rows` rows; binds index a flattened row-major value slice.
    pub insert_batch: Statement,
    pub batch_rows: usize,
    pub update: Statement,
    pub delete: Statement,
    pub select_key: Statement,
    pub exists_key: Statement,
    pub max_key: Statement,
    /// (column index, referenced table) of each reference column.
    pub refs: Vec<(usize, &'static str)>,
    /// Filled in by the registry: columns of other tables referencing this one.
    pub children: Vec<Child>,
    /// `SELECT <key>, <all columns> FROM child WHERE col = ?` per child, same order as `children`.
    pub child_select: Vec<Statement>,
}

pub(crate) fn column_list(meta: &RecordMeta) -> String {
    meta.columns
        .iter()
        .map(|c| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Table {
    pub fn compile(meta: &'static RecordMeta) -> Table {
        let t = quote_ident(meta.table);
        let cols = column_list(meta);
        let types: Vec<SqlType> = meta.columns.iter().map(|c| c.sql_type).collect();
        let key = meta.key_column();
        let kq = quote_ident(key.name);

        let mut insert = Statement::new(format!("INSERT INTO {t} ({cols}) VALUES ("));
        for (i, c) in meta.columns.iter().enumerate() {
            if i > 0 {
                insert.sql(", ");
            }
            insert.bind(i, c.sql_type);
        }
        insert.sql(")");

        // As many rows per statement as stay well inside both backends' bind
        // limits (SQLite 32766, PostgreSQL 65535).
        let ncols = meta.columns.len();
        let batch_rows = (BATCH_BINDS / ncols.max(1)).clamp(1, BATCH_ROWS);
        let mut insert_batch = Statement::new(format!("INSERT INTO {t} ({cols}) VALUES "));
        for r in 0..batch_rows {
            insert_batch.sql(if r == 0 { "(" } else { ", (" });
            for (i, c) in meta.columns.iter().enumerate() {
                if i > 0 {
                    insert_batch.sql(", ");
                }
                insert_batch.bind(r * ncols + i, c.sql_type);
            }
            insert_batch.sql(")");
        }

        let mut update = Statement::new(format!("UPDATE {t} SET "));
        let mut first = true;
        for (i, c) in meta.columns.iter().enumerate() {
            if i == meta.key {
                continue;
            }
            if !first {
                update.sql(", ");
            }
            first = false;
            update
                .sql(&format!("{} = ", quote_ident(c.name)))
                .bind(i, c.sql_type);
        }
        if first {
            // Key-only table: an update rewrites nothing but must still find the row.
            update.sql(&format!("{kq} = {kq}"));
        }
        update
            .sql(&format!(" WHERE {kq} = "))
            .bind(meta.key, key.sql_type);

        let mut delete = Statement::new(format!("DELETE FROM {t} WHERE {kq} = "));
        delete.bind(0, key.sql_type);
        let mut select_key = Statement::new(format!("SELECT {cols} FROM {t} WHERE {kq} = "));
        select_key.bind(0, key.sql_type);
        let mut exists_key = Statement::new(format!("SELECT {kq} FROM {t} WHERE {kq} = "));
        exists_key.bind(0, key.sql_type);
        let max_key = Statement::new(format!("SELECT MAX({kq}) FROM {t}"));

        let refs = meta
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.reference.map(|r| (i, (r.target)().table)))
            .collect();
        Table {
            meta,
            name: meta.table,
            seed: table_seed(meta.table),
            types,
            insert,
            insert_batch,
            batch_rows,
            update,
            delete,
            select_key,
            exists_key,
            max_key,
            refs,
            children: Vec::new(),
            child_select: Vec::new(),
        }
    }

    pub fn key_type(&self) -> SqlType {
        self.types[self.meta.key]
    }
}

/// Links every table to the columns that reference it.
pub(crate) fn link_children(tables: &mut HashMap<&'static str, Table>) {
    let mut links: Vec<(&'static str, Child, Statement)> = Vec::new();
    for t in tables.values() {
        for &(col, target) in &t.refs {
            let c = &t.meta.columns[col];
            let on_delete = c.reference.map_or(OnDelete::Restrict, |r| r.on_delete);
            let mut sel = Statement::new(format!(
                "SELECT {} FROM {} WHERE {} = ",
                column_list(t.meta),
                quote_ident(t.name),
                quote_ident(c.name)
            ));
            sel.bind(0, c.sql_type);
            links.push((
                target,
                Child {
                    table: t.name,
                    column: col,
                    on_delete,
                },
                sel,
            ));
        }
    }
    for t in tables.values_mut() {
        t.children.clear();
        t.child_select.clear();
    }
    for (target, child, sel) in links {
        if let Some(t) = tables.get_mut(target) {
            t.children.push(child);
            t.child_select.push(sel);
        }
    }
}

fn column_ddl(
    d: Dialect,
    meta: &RecordMeta,
    i: usize,
    c: &ColumnMeta,
    with_fk: bool,
) -> Result<String> {
    let is_key = i == meta.key;
    let rowid = is_key && c.sql_type == SqlType::BigInt;
    let mut s = format!("{} {}", quote_ident(c.name), d.type_name(c.sql_type, rowid));
    if !c.nullable {
        s.push_str(" NOT NULL");
    }
    if is_key {
        s.push_str(" PRIMARY KEY");
    }
    if let Some(def) = &c.default {
        let lit = d.literal(def).ok_or_else(|| Error::SchemaConflict {
            table: meta.table.to_owned(),
            column: Some(c.name.to_owned()),
            reason: "this default has no SQL literal form (timestamps and non-finite floats cannot be defaults)".into(),
        })?;
        s.push_str(&format!(" DEFAULT {lit}"));
    }
    if with_fk {
        if let Some(r) = c.reference {
            let target = (r.target)();
            // The store enforces restrict/cascade itself (so cascaded deletes are
            // logged and announced); the database constraint is a deferred safety net.
            s.push_str(&format!(
                " REFERENCES {}({}) DEFERRABLE INITIALLY DEFERRED",
                quote_ident(target.table),
                quote_ident(target.key_column().name)
            ));
        }
    }
    Ok(s)
}

fn index_name(table: &str, column: &str, unique: bool) -> String {
    format!("{table}__{column}__{}", if unique { "key" } else { "idx" })
}

fn create_index(conn: &mut dyn Connection, table: &str, column: &str, unique: bool) -> Result<()> {
    let sql = format!(
        "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
        if unique { "UNIQUE " } else { "" },
        quote_ident(&index_name(table, column, unique)),
        quote_ident(table),
        quote_ident(column)
    );
    conn.batch(&sql).map_err(|e| Error::SchemaConflict {
        table: table.to_owned(),
        column: Some(column.to_owned()),
        reason: format!(
            "cannot create {}index: {e}",
            if unique { "unique " } else { "" }
        ),
    })
}

fn drop_index(conn: &mut dyn Connection, table: &str, column: &str, unique: bool) -> Result<()> {
    conn.batch(&format!(
        "DROP INDEX IF EXISTS {}",
        quote_ident(&index_name(table, column, unique))
    ))
}

/// The secondary indexes of a table, as `create_table` makes them: (column, unique).
fn secondary_indexes(meta: &RecordMeta) -> impl Iterator<Item = (&'static str, bool)> + '_ {
    meta.columns
        .iter()
        .enumerate()
        .filter(move |&(i, c)| i != meta.key && (c.unique || c.indexed))
        .map(|(_, c)| (c.name, c.unique))
}

/// Drops the secondary indexes of a table (a restore loads rows without
/// them and builds them once at the end, see [`create_secondary_indexes`]).
pub(crate) fn drop_secondary_indexes(conn: &mut dyn Connection, meta: &RecordMeta) -> Result<()> {
    for (column, unique) in secondary_indexes(meta) {
        drop_index(conn, meta.table, column, unique)?;
    }
    Ok(())
}

/// Builds the secondary indexes of a table from its rows (a unique index
/// over duplicate values fails with [`Error::SchemaConflict`] naming the column).
pub(crate) fn create_secondary_indexes(conn: &mut dyn Connection, meta: &RecordMeta) -> Result<()> {
    for (column, unique) in secondary_indexes(meta) {
        create_index(conn, meta.table, column, unique)?;
    }
    Ok(())
}

fn create_table(conn: &mut dyn Connection, meta: &RecordMeta) -> Result<()> {
    let d = conn.dialect();
    let mut cols = Vec::new();
    for (i, c) in meta.columns.iter().enumerate() {
        cols.push(column_ddl(d, meta, i, c, true)?);
    }
    conn.batch(&format!(
        "CREATE TABLE {} ({})",
        quote_ident(meta.table),
        cols.join(", ")
    ))?;
    create_secondary_indexes(conn, meta)
}

/// One column as recorded in a stored definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredColumn {
    pub name: String,
    pub ty: String,
    pub nullable: bool,
    pub unique: bool,
    pub indexed: bool,
    pub line: String,
}

/// A stored table definition, parsed back from its canonical text.
#[derive(Debug, Clone)]
pub(crate) struct StoredTable {
    pub header: String,
    pub columns: Vec<StoredColumn>,
}

impl StoredTable {
    pub fn parse(text: &str) -> StoredTable {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default().to_owned();
        let columns = lines
            .filter(|l| l.starts_with("column "))
            .map(|l| {
                let tokens: Vec<&str> = l.split(' ').collect();
                StoredColumn {
                    name: tokens.get(1).copied().unwrap_or_default().to_owned(),
                    ty: tokens.get(2).copied().unwrap_or_default().to_owned(),
                    nullable: tokens.get(3) == Some(&"null"),
                    unique: tokens.contains(&"unique"),
                    indexed: tokens.contains(&"indexed"),
                    line: l.to_owned(),
                }
            })
            .collect();
        StoredTable { header, columns }
    }

    pub fn sql_types(&self) -> Option<Vec<SqlType>> {
        self.columns
            .iter()
            .map(|c| {
                Some(match c.ty.as_str() {
                    "bigint" => SqlType::BigInt,
                    "integer" => SqlType::Integer,
                    "double" => SqlType::Double,
                    "bool" => SqlType::Bool,
                    "text" => SqlType::Text,
                    "blob" => SqlType::Blob,
                    "timestamp" => SqlType::Timestamp,
                    _ => return None,
                })
            })
            .collect()
    }
}

pub(crate) fn stored_definition(conn: &mut dyn Connection, table: &str) -> Result<Option<String>> {
    let mut stmt = Statement::new(format!(
        "SELECT definition FROM {SCHEMA_TABLE} WHERE table_name = "
    ));
    stmt.bind(0, SqlType::Text);
    let mut out = None;
    conn.query(
        &stmt,
        &[Value::Text(table.to_owned())],
        &[SqlType::Text],
        &mut |row| {
            if let Some(Value::Text(d)) = row.first_mut() {
                out = Some(std::mem::take(d));
            }
            Ok(())
        },
    )?;
    Ok(out)
}

pub(crate) fn all_definitions(conn: &mut dyn Connection) -> Result<Vec<(String, String)>> {
    let stmt = Statement::new(format!(
        "SELECT table_name, definition FROM {SCHEMA_TABLE} ORDER BY table_name"
    ));
    let mut out = Vec::new();
    conn.query(&stmt, &[], &[SqlType::Text, SqlType::Text], &mut |row| {
        if let [Value::Text(t), Value::Text(d)] = &mut row[..] {
            out.push((std::mem::take(t), std::mem::take(d)));
        }
        Ok(())
    })?;
    Ok(out)
}

fn save_definition(conn: &mut dyn Connection, table: &str, def: &str) -> Result<()> {
    let mut stmt = Statement::new(format!(
        "INSERT INTO {SCHEMA_TABLE} (table_name, definition) VALUES ("
    ));
    stmt.bind(0, SqlType::Text)
        .sql(", ")
        .bind(1, SqlType::Text)
        .sql(") ON CONFLICT (table_name) DO UPDATE SET definition = excluded.definition");
    conn.execute(
        &stmt,
        &[Value::Text(table.to_owned()), Value::Text(def.to_owned())],
    )?;
    Ok(())
}

fn count(conn: &mut dyn Connection, sql: String) -> Result<i64> {
    Ok(super::query_i64(conn, &Statement::new(sql), &[])?.unwrap_or(0))
}

/// What registering a table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Migration {
    /// Table and definition already matched.
    Unchanged,
    /// The table was created.
    Created,
    /// The table was altered in place; `images_changed` when row images differ now.
    Altered { images_changed: bool },
}

fn conflict(table: &str, column: Option<&str>, reason: impl Into<String>) -> Error {
    Error::SchemaConflict {
        table: table.to_owned(),
        column: column.map(str::to_owned),
        reason: reason.into(),
    }
}

/// Creates or migrates the table of `meta`, inside the caller's write transaction.
pub(crate) fn ensure_table(conn: &mut dyn Connection, meta: &RecordMeta) -> Result<Migration> {
    let table = meta.table;
    if table.starts_with("_persist") {
        return Err(conflict(
            table,
            None,
            "table names starting with `_persist` are reserved for the store",
        ));
    }
    let canonical = meta.canonical();
    let exists = conn.table_names()?.iter().any(|t| t == table);
    let Some(stored) = stored_definition(conn, table)? else {
        if exists {
            return Err(conflict(
                table,
                None,
                "a table of this name exists but was not created by persist; rename the record's table \
                 (#[persist(table = \"...\")]) or move the existing table away",
            ));
        }
        create_table(conn, meta)?;
        save_definition(conn, table, &canonical)?;
        return Ok(Migration::Created);
    };
    if stored == canonical {
        return Ok(Migration::Unchanged);
    }
    let old = StoredTable::parse(&stored);
    let rows = count(conn, format!("SELECT COUNT(*) FROM {}", quote_ident(table)))?;
    if rows == 0 {
        // Nothing to preserve: rebuild the table to the new definition.
        conn.batch(&format!("DROP TABLE {}", quote_ident(table)))
            .map_err(|e| conflict(table, None, format!("cannot rebuild empty table: {e}")))?;
        create_table(conn, meta)?;
        save_definition(conn, table, &canonical)?;
        return Ok(Migration::Altered {
            images_changed: true,
        });
    }
    let new_header = canonical.lines().next().unwrap_or_default();
    if old.header != new_header {
        return Err(conflict(
            table,
            Some(meta.key_column().name),
            format!(
                "the primary key changed (`{}` -> `{}`) on a table holding {rows} rows; keys cannot be migrated in place",
                old.header, new_header
            ),
        ));
    }
    let d = conn.dialect();
    let mut images_changed = false;
    // Check everything before changing anything, so a refusal leaves the table untouched.
    for (i, c) in meta.columns.iter().enumerate() {
        match old.columns.iter().find(|o| o.name == c.name) {
            None => {
                if !c.nullable && c.default.is_none() {
                    return Err(conflict(
                        table,
                        Some(c.name),
                        format!(
                            "new NOT NULL column without a default on a table holding {rows} rows: \
                             add #[persist(default = ...)] or make the field an Option"
                        ),
                    ));
                }
                let _ = column_ddl(d, meta, i, c, false)?;
            }
            Some(o) => {
                if o.ty != c.sql_type.name() {
                    return Err(conflict(
                        table,
                        Some(c.name),
                        format!(
                            "type changed from {} to {}; a type change cannot be applied in place",
                            o.ty,
                            c.sql_type.name()
                        ),
                    ));
                }
                if o.nullable != c.nullable {
                    return Err(conflict(
                        table,
                        Some(c.name),
                        format!(
                            "nullability changed ({} -> {}); this cannot be applied in place",
                            if o.nullable { "NULL" } else { "NOT NULL" },
                            if c.nullable { "NULL" } else { "NOT NULL" }
                        ),
                    ));
                }
            }
        }
    }
    for o in &old.columns {
        if meta.column(&o.name).is_none() {
            let held = count(
                conn,
                format!(
                    "SELECT COUNT(*) FROM {} WHERE {} IS NOT NULL",
                    quote_ident(table),
                    quote_ident(&o.name)
                ),
            )?;
            if held > 0 {
                return Err(conflict(
                    table,
                    Some(&o.name),
                    format!("the column was removed from the record but holds data in {held} rows; keep the field, or clear the column first"),
                ));
            }
        }
    }
    // Apply.
    for o in &old.columns {
        if meta.column(&o.name).is_none() {
            if o.unique || o.indexed {
                drop_index(conn, table, &o.name, o.unique)?;
            }
            conn.batch(&format!(
                "ALTER TABLE {} DROP COLUMN {}",
                quote_ident(table),
                quote_ident(&o.name)
            ))
            .map_err(|e| {
                conflict(
                    table,
                    Some(&o.name),
                    format!("cannot drop the empty column: {e}"),
                )
            })?;
            images_changed = true;
        }
    }
    for (i, c) in meta.columns.iter().enumerate() {
        let old_col = old.columns.iter().find(|o| o.name == c.name);
        if old_col.is_none() {
            let ddl = column_ddl(d, meta, i, c, false)?;
            conn.batch(&format!(
                "ALTER TABLE {} ADD COLUMN {ddl}",
                quote_ident(table)
            ))
            .map_err(|e| conflict(table, Some(c.name), format!("cannot add column: {e}")))?;
            images_changed = true;
        }
        let (was_unique, was_indexed) = old_col.map_or((false, false), |o| (o.unique, o.indexed));
        if i != meta.key {
            if was_unique && !c.unique {
                drop_index(conn, table, c.name, true)?;
            }
            if was_indexed && !c.indexed {
                drop_index(conn, table, c.name, false)?;
            }
            if c.unique && !was_unique {
                create_index(conn, table, c.name, true)?;
            }
            if c.indexed && !was_indexed {
                create_index(conn, table, c.name, false)?;
            }
        }
    }
    // Column order in row images follows the record; a reordering changes every image.
    let old_order: Vec<&str> = old.columns.iter().map(|c| c.name.as_str()).collect();
    let new_order: Vec<&str> = meta.columns.iter().map(|c| c.name).collect();
    if old_order != new_order {
        images_changed = true;
    }
    save_definition(conn, table, &canonical)?;
    Ok(Migration::Altered { images_changed })
}

/// The canonical definitions that make up the schema fingerprint.
pub(crate) fn fingerprint(defs: &[(String, String)]) -> u128 {
    let mut text = String::new();
    for (table, def) in defs {
        text.push_str(table);
        text.push('\n');
        text.push_str(def);
    }
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// Whether `c` is described the same way in `def` (used by tests).
#[allow(dead_code)]
pub(crate) fn column_matches(def: &str, c: &ColumnMeta) -> bool {
    def.lines().any(|l| l == canonical_column(c))
}

/// Identity tables get their next key from the table.
pub(crate) fn is_identity(meta: &RecordMeta) -> bool {
    meta.key_kind == KeyKind::Identity
}
