//! Storage backends: the narrow interface the store needs from a database.
//!
//! The store speaks SQL templates with typed binds ([`Statement`]) to a
//! [`Connection`]. One generic implementation over diesel
//! ([`diesel_conn::DieselConnection`]) serves both SQLite and PostgreSQL;
//! each backend only supplies how a [`Value`] is bound and read back
//! ([`sqlite`], [`pg`]) and its DDL dialect ([`Dialect`]). Values always travel
//! as bind parameters; the only literals ever rendered into SQL text are
//! identifiers from record metadata and the column defaults declared in code
//! (see [`Dialect::literal`]).

pub mod diesel_conn;
pub mod pg;
pub mod sqlite;

use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::error::Result;
use crate::value::{SqlType, Value};

/// The SQL dialect of a backend, for DDL and type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// The column type name for `ty`. `rowid_key` asks for SQLite's
    /// `INTEGER PRIMARY KEY` spelling (an alias of the rowid).
    pub fn type_name(self, ty: SqlType, rowid_key: bool) -> &'static str {
        match (self, ty) {
            (Dialect::Sqlite, SqlType::BigInt) if rowid_key => "INTEGER",
            (_, SqlType::BigInt) => "BIGINT",
            (_, SqlType::Integer) => "INTEGER",
            (_, SqlType::Double) => "DOUBLE PRECISION",
            (_, SqlType::Bool) => "BOOLEAN",
            (_, SqlType::Text) => "TEXT",
            (Dialect::Sqlite, SqlType::Blob) => "BLOB",
            (Dialect::Postgres, SqlType::Blob) => "BYTEA",
            (Dialect::Sqlite, SqlType::Timestamp) => "TEXT",
            (Dialect::Postgres, SqlType::Timestamp) => "TIMESTAMPTZ",
        }
    }

    /// Renders a default value declared in a record type as a SQL literal.
    ///
    /// DDL cannot take bind parameters, so a column default is the one value
    /// that is written into SQL text. It comes from the module's source code,
    /// never from input; text is quoted by doubling quotes. Timestamps have no
    /// literal form (the derive refuses defaults on them).
    pub fn literal(self, value: &Value) -> Option<String> {
        Some(match value {
            Value::Null => "NULL".to_owned(),
            Value::I64(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::F64(v) if v.is_finite() => format!("{v:?}"),
            Value::F64(_) => return None,
            Value::Bool(b) => match self {
                Dialect::Sqlite => (if *b { "1" } else { "0" }).to_owned(),
                Dialect::Postgres => (if *b { "TRUE" } else { "FALSE" }).to_owned(),
            },
            Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Value::Blob(b) => {
                let mut hex = String::with_capacity(b.len() * 2);
                for byte in b {
                    let _ = write!(hex, "{byte:02x}");
                }
                match self {
                    Dialect::Sqlite => format!("X'{hex}'"),
                    Dialect::Postgres => format!("'\\x{hex}'::bytea"),
                }
            }
            Value::Timestamp(_) => return None,
        })
    }
}

/// Quotes an identifier (table or column name) for both dialects.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL statement split around its bind placeholders.
///
/// `parts.len() == binds.len() + 1`; bind `i` sits between `parts[i]` and
/// `parts[i + 1]` and takes `values[binds[i].0]` as SQL type `binds[i].1`, so
/// one row image can feed an `UPDATE` whose placeholders are in another order.
///
/// The text with each dialect's placeholders is rendered once, on first use,
/// and kept: the store runs the same statements millions of times, and a
/// multi-row insert's text is several kilobytes.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    parts: Vec<String>,
    binds: Vec<(usize, SqlType)>,
    /// The text with placeholders, per dialect ([`Dialect::Sqlite`] first).
    rendered: [OnceLock<String>; 2],
}

impl Statement {
    /// Starts a statement with SQL text.
    pub fn new(sql: impl Into<String>) -> Self {
        Statement {
            parts: vec![sql.into()],
            binds: Vec::new(),
            rendered: Default::default(),
        }
    }

    /// Appends SQL text.
    pub fn sql(&mut self, sql: &str) -> &mut Self {
        self.parts.last_mut().expect("never empty").push_str(sql);
        self.rendered = Default::default();
        self
    }

    /// Appends a placeholder bound to `values[index]` as `ty`.
    pub fn bind(&mut self, index: usize, ty: SqlType) -> &mut Self {
        self.binds.push((index, ty));
        self.parts.push(String::new());
        self.rendered = Default::default();
        self
    }

    /// The SQL pieces around the placeholders.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The binds: index into the value slice and SQL type.
    pub fn binds(&self) -> &[(usize, SqlType)] {
        &self.binds
    }

    /// The statement as text with `?` placeholders (for logs and errors).
    pub fn display(&self) -> String {
        self.parts.join("?")
    }

    /// The statement's text as `dialect` runs it: `?` placeholders for
    /// SQLite, `$1`, `$2`, ... in bind order for PostgreSQL. Rendered on the
    /// first call and kept.
    pub fn text(&self, dialect: Dialect) -> &str {
        let slot = match dialect {
            Dialect::Sqlite => &self.rendered[0],
            Dialect::Postgres => &self.rendered[1],
        };
        slot.get_or_init(|| {
            let len = self.parts.iter().map(String::len).sum::<usize>() + 6 * self.binds.len();
            let mut text = String::with_capacity(len);
            for (i, part) in self.parts.iter().enumerate() {
                if i > 0 {
                    match dialect {
                        Dialect::Sqlite => text.push('?'),
                        Dialect::Postgres => {
                            let _ = write!(text, "${i}");
                        }
                    }
                }
                text.push_str(part);
            }
            text
        })
    }
}

/// One database connection, as the store uses it.
///
/// Implementations must bind every value as a parameter, never splice it into
/// the SQL text. The conformance suite (`persist_core::conformance`) runs the
/// same tests against every implementation.
pub trait Connection: Send {
    /// The connection's dialect.
    fn dialect(&self) -> Dialect;

    /// Runs SQL text without binds (DDL, pragmas, transaction control).
    fn batch(&mut self, sql: &str) -> Result<()>;

    /// Runs a statement; returns the number of rows changed.
    fn execute(&mut self, stmt: &Statement, values: &[Value]) -> Result<usize>;

    /// Runs a query and calls `row` for each result row, decoded as
    /// `columns`. The values are read over the previous row's, keeping their
    /// buffers: `row` borrows them, or takes them (`std::mem::take`) to keep
    /// the row.
    fn query(
        &mut self,
        stmt: &Statement,
        values: &[Value],
        columns: &[SqlType],
        row: &mut dyn FnMut(&mut Vec<Value>) -> Result<()>,
    ) -> Result<()>;

    /// Starts a write transaction (SQLite: `BEGIN IMMEDIATE`, so a writer
    /// never has to upgrade a read lock).
    fn begin_write(&mut self) -> Result<()>;

    /// Starts a read transaction: a consistent view of the database until
    /// [`Connection::commit`] or [`Connection::rollback`].
    fn begin_read(&mut self) -> Result<()>;

    /// Commits the open transaction.
    fn commit(&mut self) -> Result<()>;

    /// Rolls back the open transaction.
    fn rollback(&mut self) -> Result<()>;

    /// Names of the tables that exist in the connection's schema.
    fn table_names(&mut self) -> Result<Vec<String>>;
}
