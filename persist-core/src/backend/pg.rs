//! PostgreSQL (the server option).
//!
//! A store lives in one schema (`search_path`), created if missing, so several
//! stores (and test runs) can share a database without seeing each other.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSql;
use diesel::pg::{Pg, PgConnection, PgValue};
use diesel::query_builder::AstPass;
use diesel::serialize::{IsNull, Output, ToSql};
use diesel::sql_types;
use diesel::{Connection as _, QueryResult};

use super::diesel_conn::{bind_mismatch, value_to_sql, DieselConnection, ValueCodec};
use super::{quote_ident, Connection, Dialect};
use crate::error::{Error, Result};
use crate::value::{SqlType, Value};

/// Options of a PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connection URL, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
    pub url: String,
    /// Schema holding the store's tables (`public` if `None`).
    pub schema: Option<String>,
}

impl PgOptions {
    /// Defaults for a URL (schema `public`).
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            schema: None,
        }
    }

    /// Uses (and creates if missing) `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

/// Opens a connection with the store's settings.
pub fn open(options: &PgOptions) -> Result<Box<dyn Connection>> {
    let conn = PgConnection::establish(&options.url)
        .map_err(|e| Error::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
    let mut conn = DieselConnection::new(conn);
    // Notices (e.g. "relation already exists, skipping") are noise here.
    conn.batch("SET client_min_messages = WARNING")?;
    if let Some(schema) = &options.schema {
        let s = quote_ident(schema);
        conn.batch(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))?;
        conn.batch(&format!("SET search_path TO {s}"))?;
    }
    Ok(Box::new(conn))
}

value_to_sql!(Pg, sql_types::BigInt, BigInt, I64);
value_to_sql!(Pg, sql_types::Integer, Integer, I32);
value_to_sql!(Pg, sql_types::Double, Double, F64);
value_to_sql!(Pg, sql_types::Bool, Bool, Bool);
value_to_sql!(Pg, sql_types::Text, Text, Text);
value_to_sql!(Pg, sql_types::Binary, Blob, Blob);

impl ToSql<sql_types::Timestamptz, Pg> for Value {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
        match self {
            Value::Timestamp(us) => {
                let t =
                    DateTime::<Utc>::from_timestamp_micros(*us).ok_or("timestamp out of range")?;
                ToSql::<sql_types::Timestamptz, Pg>::to_sql(&t, &mut out.reborrow())
            }
            Value::Null => Ok(IsNull::Yes),
            other => Err(bind_mismatch(SqlType::Timestamp, other)),
        }
    }
}

impl ValueCodec for Pg {
    const DIALECT: Dialect = Dialect::Postgres;

    fn push_value<'b>(
        pass: &mut AstPass<'_, 'b, Self>,
        ty: SqlType,
        value: &'b Value,
    ) -> QueryResult<()> {
        match ty {
            SqlType::BigInt => pass.push_bind_param_value_only::<sql_types::BigInt, Value>(value),
            SqlType::Integer => pass.push_bind_param_value_only::<sql_types::Integer, Value>(value),
            SqlType::Double => pass.push_bind_param_value_only::<sql_types::Double, Value>(value),
            SqlType::Bool => pass.push_bind_param_value_only::<sql_types::Bool, Value>(value),
            SqlType::Text => pass.push_bind_param_value_only::<sql_types::Text, Value>(value),
            SqlType::Blob => pass.push_bind_param_value_only::<sql_types::Binary, Value>(value),
            SqlType::Timestamp => {
                pass.push_bind_param_value_only::<sql_types::Timestamptz, Value>(value)
            }
        }
    }

    fn read_value(raw: Option<PgValue<'_>>, ty: SqlType) -> diesel::deserialize::Result<Value> {
        let Some(raw) = raw else {
            return Ok(Value::Null);
        };
        Ok(match ty {
            SqlType::BigInt => Value::I64(<i64 as FromSql<sql_types::BigInt, Pg>>::from_sql(raw)?),
            SqlType::Integer => {
                Value::I32(<i32 as FromSql<sql_types::Integer, Pg>>::from_sql(raw)?)
            }
            SqlType::Double => Value::F64(<f64 as FromSql<sql_types::Double, Pg>>::from_sql(raw)?),
            SqlType::Bool => Value::Bool(<bool as FromSql<sql_types::Bool, Pg>>::from_sql(raw)?),
            SqlType::Text => Value::Text(<String as FromSql<sql_types::Text, Pg>>::from_sql(raw)?),
            SqlType::Blob => {
                Value::Blob(<Vec<u8> as FromSql<sql_types::Binary, Pg>>::from_sql(raw)?)
            }
            SqlType::Timestamp => Value::Timestamp(
                <DateTime<Utc> as FromSql<sql_types::Timestamptz, Pg>>::from_sql(raw)?
                    .timestamp_micros(),
            ),
        })
    }
}
