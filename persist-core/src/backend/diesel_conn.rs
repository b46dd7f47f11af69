//! The generic diesel implementation of [`Connection`].

use diesel::backend::Backend;
use diesel::connection::LoadConnection;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::row::{Field, Row};
use diesel::sql_types::Untyped;
use diesel::QueryResult;

use super::{Connection, Dialect, Statement};
use crate::error::{Error, Result};
use crate::value::{SqlType, Value};

/// How one diesel backend binds and reads [`Value`]s.
pub trait ValueCodec: Backend + Sized {
    /// The dialect for DDL.
    const DIALECT: Dialect;

    /// Pushes `value` as a bind parameter of type `ty`, without its
    /// placeholder: the statement's text already holds it
    /// ([`Statement::text`]).
    fn push_value<'b>(
        pass: &mut AstPass<'_, 'b, Self>,
        ty: SqlType,
        value: &'b Value,
    ) -> QueryResult<()>;

    /// Decodes one result column of type `ty` (`None` is SQL NULL).
    fn read_value(
        raw: Option<Self::RawValue<'_>>,
        ty: SqlType,
    ) -> diesel::deserialize::Result<Value>;

    /// [`ValueCodec::read_value`] into `slot`, which holds the previous
    /// row's value of the column: a backend that can keeps its text or blob
    /// buffer.
    fn read_value_over(
        raw: Option<Self::RawValue<'_>>,
        ty: SqlType,
        slot: &mut Value,
    ) -> diesel::deserialize::Result<()> {
        *slot = Self::read_value(raw, ty)?;
        Ok(())
    }
}

/// The error for a value bound as a column type it does not fit.
pub(crate) fn bind_mismatch(
    expected: SqlType,
    value: &Value,
) -> Box<dyn std::error::Error + Send + Sync> {
    format!(
        "cannot bind a {} value as {}",
        value.kind(),
        expected.name()
    )
    .into()
}

/// Implements `ToSql<$st, $db>` for [`Value`]: the `$variant` value goes
/// through diesel's own impl for its Rust type, NULL binds NULL, any other
/// kind is an error.
macro_rules! value_to_sql {
    ($db:ty, $st:ty, $sql:ident, $variant:ident) => {
        impl diesel::serialize::ToSql<$st, $db> for Value {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, $db>,
            ) -> diesel::serialize::Result {
                match self {
                    Value::$variant(v) => diesel::serialize::ToSql::<$st, $db>::to_sql(v, out),
                    Value::Null => Ok(diesel::serialize::IsNull::Yes),
                    other => Err($crate::backend::diesel_conn::bind_mismatch(
                        SqlType::$sql,
                        other,
                    )),
                }
            }
        }
    };
}
pub(crate) use value_to_sql;

/// A statement with its values, as a diesel query.
pub(crate) struct Bound<'a> {
    stmt: &'a Statement,
    values: &'a [Value],
}

impl<DB: ValueCodec> QueryFragment<DB> for Bound<'_> {
    /// The whole text in one piece, then the values alone: diesel builds the
    /// text of a statement it has not cached by type on every execution, and
    /// pushing a multi-row insert's text piece by piece, placeholder by
    /// placeholder, cost more than binding its values.
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        pass.push_sql(self.stmt.text(DB::DIALECT));
        for &(index, ty) in self.stmt.binds() {
            let value = self.values.get(index).ok_or_else(|| {
                DieselError::QueryBuilderError(
                    format!("bind {index} missing for `{}`", self.stmt.display()).into(),
                )
            })?;
            DB::push_value(&mut pass, ty, value)?;
        }
        Ok(())
    }
}

impl QueryId for Bound<'_> {
    type QueryId = ();
    // Not static: diesel caches the prepared statement under its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Bound<'_> {
    type SqlType = Untyped;
}

/// `BEGIN IMMEDIATE` and `COMMIT` as statements, so diesel's statement cache
/// keeps them prepared: a single-row transaction pays for two statements
/// fewer prepares (SQLite re-parses text run through `batch_execute`).
static TX_STATEMENTS: std::sync::OnceLock<(Statement, Statement)> = std::sync::OnceLock::new();

fn tx_statements() -> (Statement, Statement) {
    (Statement::new("BEGIN IMMEDIATE"), Statement::new("COMMIT"))
}

impl<C, DB> DieselConnection<C>
where
    C: diesel::Connection<Backend = DB> + LoadConnection + LoadRows + Send,
    DB: ValueCodec,
    DB::QueryBuilder: Default,
{
    fn control(&mut self, stmt: &Statement) -> Result<()> {
        Connection::execute(self, stmt, &[]).map(|_| ())
    }
}

/// How a diesel connection hands a result set to [`Connection::query`]: row
/// by row where the driver can, so a large result never sits whole in memory
/// (SQLite steps through its rows anyway; PostgreSQL uses libpq's
/// single-row mode instead of loading the whole result first).
pub trait LoadRows: diesel::Connection + Send
where
    Self::Backend: ValueCodec,
{
    /// Runs the query and calls `each` with every row, decoded as `columns`,
    /// as the rows arrive.
    fn load_rows(
        &mut self,
        stmt: &Statement,
        values: &[Value],
        columns: &[SqlType],
        each: &mut dyn FnMut(&mut Vec<Value>) -> Result<()>,
    ) -> Result<()>;
}

/// [`LoadRows`] in the loading mode `M`.
fn load_rows_with<M, C>(
    conn: &mut C,
    stmt: &Statement,
    values: &[Value],
    columns: &[SqlType],
    each: &mut dyn FnMut(&mut Vec<Value>) -> Result<()>,
) -> Result<()>
where
    C: diesel::Connection + LoadConnection<M>,
    C::Backend: ValueCodec,
    <C::Backend as Backend>::QueryBuilder: Default,
{
    let sql = || stmt.display();
    let cursor = conn
        .load(Bound { stmt, values })
        .map_err(|e| map_error(e, &sql()))?;
    // One row's values, read over the previous row's: text and blob
    // buffers are kept unless `each` takes the row.
    let mut out: Vec<Value> = Vec::new();
    for row in cursor {
        let row = row.map_err(|e| map_error(e, &sql()))?;
        out.resize(columns.len(), Value::Null);
        for (i, (&ty, slot)) in columns.iter().zip(&mut out).enumerate() {
            let field = row.get(i).ok_or_else(|| {
                Error::Database(format!("result has no column {i} in `{}`", sql()))
            })?;
            <C::Backend as ValueCodec>::read_value_over(field.value(), ty, slot)
                .map_err(|e| Error::Database(format!("column {i} of `{}`: {e}", sql())))?;
        }
        each(&mut out)?;
    }
    Ok(())
}

impl LoadRows for diesel::SqliteConnection {
    fn load_rows(
        &mut self,
        stmt: &Statement,
        values: &[Value],
        columns: &[SqlType],
        each: &mut dyn FnMut(&mut Vec<Value>) -> Result<()>,
    ) -> Result<()> {
        load_rows_with::<diesel::connection::DefaultLoadingMode, _>(
            self, stmt, values, columns, each,
        )
    }
}

impl LoadRows for diesel::PgConnection {
    fn load_rows(
        &mut self,
        stmt: &Statement,
        values: &[Value],
        columns: &[SqlType],
        each: &mut dyn FnMut(&mut Vec<Value>) -> Result<()>,
    ) -> Result<()> {
        load_rows_with::<diesel::pg::PgRowByRowLoadingMode, _>(self, stmt, values, columns, each)
    }
}

/// A diesel connection serving as a persist [`Connection`].
pub struct DieselConnection<C> {
    pub(crate) conn: C,
}

impl<C> DieselConnection<C> {
    /// Wraps an open diesel connection.
    pub fn new(conn: C) -> Self {
        DieselConnection { conn }
    }
}

impl<C, DB> Connection for DieselConnection<C>
where
    C: diesel::Connection<Backend = DB> + LoadConnection + LoadRows + Send,
    DB: ValueCodec,
    DB::QueryBuilder: Default,
{
    fn dialect(&self) -> Dialect {
        DB::DIALECT
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.conn.batch_execute(sql).map_err(|e| map_error(e, sql))
    }

    fn execute(&mut self, stmt: &Statement, values: &[Value]) -> Result<usize> {
        self.conn
            .execute_returning_count(&Bound { stmt, values })
            .map_err(|e| map_error(e, &stmt.display()))
    }

    fn query(
        &mut self,
        stmt: &Statement,
        values: &[Value],
        columns: &[SqlType],
        each: &mut dyn FnMut(&mut Vec<Value>) -> Result<()>,
    ) -> Result<()> {
        self.conn.load_rows(stmt, values, columns, each)
    }

    fn begin_write(&mut self) -> Result<()> {
        match DB::DIALECT {
            Dialect::Sqlite => self.control(&TX_STATEMENTS.get_or_init(tx_statements).0),
            Dialect::Postgres => self.batch("BEGIN ISOLATION LEVEL READ COMMITTED"),
        }
    }

    fn begin_read(&mut self) -> Result<()> {
        match DB::DIALECT {
            Dialect::Sqlite => self.batch("BEGIN DEFERRED"),
            Dialect::Postgres => self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        }
    }

    fn commit(&mut self) -> Result<()> {
        match DB::DIALECT {
            Dialect::Sqlite => self.control(&TX_STATEMENTS.get_or_init(tx_statements).1),
            Dialect::Postgres => self.batch("COMMIT"),
        }
    }

    fn rollback(&mut self) -> Result<()> {
        self.batch("ROLLBACK")
    }

    fn table_names(&mut self) -> Result<Vec<String>> {
        let stmt = Statement::new(match DB::DIALECT {
            Dialect::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table'",
            Dialect::Postgres => "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
        });
        let mut names = Vec::new();
        self.query(&stmt, &[], &[SqlType::Text], &mut |row| {
            if let Some(Value::Text(name)) = row.first_mut() {
                names.push(std::mem::take(name));
            }
            Ok(())
        })?;
        Ok(names)
    }
}

/// Maps a diesel error to the store's typed errors. Constraint violations are
/// refined by the store, which knows the table; here they become `Database`.
pub(crate) fn map_error(e: DieselError, sql: &str) -> Error {
    match e {
        DieselError::DatabaseError(kind, info) => {
            let message = info.message().to_owned();
            let lower = message.to_ascii_lowercase();
            if lower.contains("database is locked")
                || lower.contains("database table is locked")
                || lower.contains("lock timeout")
            {
                Error::Locked(message)
            } else if lower.contains("disk is full")
                || lower.contains("disk full")
                || lower.contains("no space left")
            {
                Error::DiskFull(message)
            } else if matches!(kind, DatabaseErrorKind::ClosedConnection) {
                Error::Unavailable(message)
            } else {
                let detail = match (kind, info.constraint_name()) {
                    (DatabaseErrorKind::UniqueViolation, Some(c)) => format!("unique:{c}"),
                    (DatabaseErrorKind::UniqueViolation, None) => "unique:".to_owned(),
                    (DatabaseErrorKind::ForeignKeyViolation, _) => "foreign-key:".to_owned(),
                    _ => String::new(),
                };
                Error::Database(if detail.is_empty() {
                    format!("{message} (in `{sql}`)")
                } else {
                    format!("[{detail}] {message}")
                })
            }
        }
        other => Error::Database(format!("{other} (in `{sql}`)")),
    }
}
