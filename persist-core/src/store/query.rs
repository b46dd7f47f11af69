//! Typed reads: get by key, list, filtered queries.

use crate::backend::{quote_ident, Connection, Statement};
use crate::error::{Error, Result};
use crate::record::{CompareOp, Filter, Order, PersistentRecord};
use crate::value::{refuse_nan, FieldType, SqlType, Value};

use super::schema::{column_list, Table};
use super::{query_rows, Registry, Store};

pub(crate) enum Source<'a> {
    Store(&'a Store),
    Tx(&'a mut dyn Connection, &'a Registry),
}

fn decode<R: PersistentRecord>(table: &str, row: Vec<Value>) -> Result<R> {
    R::from_row(row).map_err(|source| Error::Decode {
        context: format!("a row of {table}"),
        source,
    })
}

pub(crate) fn get<R: PersistentRecord>(
    conn: &mut dyn Connection,
    t: &Table,
    key: R::Key,
) -> Result<Option<R>> {
    let rows = query_rows(conn, &t.select_key, &[key.to_value()], &t.types)?;
    rows.into_iter()
        .next()
        .map(|r| decode(t.name, r))
        .transpose()
}

/// A query over one record type. Filters combine with AND; without an
/// order, rows come in key order.
pub struct Query<'a, R> {
    source: Source<'a>,
    filters: Vec<Filter<R>>,
    order: Vec<Order<R>>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl<'a, R: PersistentRecord> Query<'a, R> {
    pub(crate) fn new(source: Source<'a>) -> Self {
        Query {
            source,
            filters: Vec::new(),
            order: Vec::new(),
            limit: None,
            offset: None,
        }
    }

    /// Keeps rows matching `filter` (e.g. `Device::columns().port.gt(1024)`).
    pub fn filter(mut self, filter: Filter<R>) -> Self {
        self.filters.push(filter);
        self
    }

    /// Orders by a column (e.g. `Device::columns().name.asc()`); later calls break ties.
    pub fn order_by(mut self, order: Order<R>) -> Self {
        self.order.push(order);
        self
    }

    /// Returns at most `n` rows.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` rows.
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = Some(n);
        self
    }

    /// A NaN operand matches nothing under IEEE rules but equals itself on
    /// PostgreSQL, and SQLite binds it as NULL: refused, as in writes.
    fn check_filters(filters: &[Filter<R>], t: &Table) -> Result<()> {
        for f in filters {
            refuse_nan(
                t.meta,
                std::slice::from_ref(&t.meta.columns[f.column]),
                std::slice::from_ref(&f.value),
            )?;
        }
        Ok(())
    }

    fn build(&self, t: &Table, select: &str) -> (Statement, Vec<Value>) {
        let mut stmt = Statement::new(format!("SELECT {select} FROM {}", quote_ident(t.name)));
        let mut values = Vec::new();
        for (i, f) in self.filters.iter().enumerate() {
            stmt.sql(if i == 0 { " WHERE " } else { " AND " });
            let c = &t.meta.columns[f.column];
            let col = quote_ident(c.name);
            match (f.op, f.value.is_null()) {
                (CompareOp::Eq, true) => {
                    stmt.sql(&format!("{col} IS NULL"));
                }
                (CompareOp::Ne, true) => {
                    stmt.sql(&format!("{col} IS NOT NULL"));
                }
                (op, _) => {
                    stmt.sql(&format!("{col} {} ", op.sql()))
                        .bind(values.len(), c.sql_type);
                    values.push(f.value.clone());
                }
            }
        }
        if select != "COUNT(*)" {
            stmt.sql(" ORDER BY ");
            let mut parts: Vec<String> = self
                .order
                .iter()
                .map(|o| {
                    format!(
                        "{} {}",
                        quote_ident(t.meta.columns[o.column].name),
                        if o.descending { "DESC" } else { "ASC" }
                    )
                })
                .collect();
            // The key breaks remaining ties, so paging with offset is stable.
            parts.push(quote_ident(t.meta.key_column().name));
            stmt.sql(&parts.join(", "));
            if self.limit.is_some() || self.offset.is_some() {
                stmt.sql(" LIMIT ").bind(values.len(), SqlType::BigInt);
                values.push(Value::I64(
                    self.limit
                        .map_or(i64::MAX, |l| l.min(i64::MAX as u64) as i64),
                ));
                stmt.sql(" OFFSET ").bind(values.len(), SqlType::BigInt);
                values.push(Value::I64(
                    self.offset.unwrap_or(0).min(i64::MAX as u64) as i64
                ));
            }
        }
        (stmt, values)
    }

    fn run(
        self,
        select: fn(&Table) -> String,
        types: fn(&Table) -> Vec<SqlType>,
    ) -> Result<(Vec<Vec<Value>>, &'static str)> {
        let table = R::meta().table;
        match self.source {
            Source::Store(store) => {
                let reg = store.registry();
                let t = reg.table_of::<R>()?;
                Self::check_filters(&self.filters, t)?;
                let q = Query::<R> {
                    source: Source::Store(store),
                    ..self
                };
                let (stmt, values) = q.build(t, &select(t));
                Ok((store.run_query(&stmt, &values, &types(t))?, table))
            }
            Source::Tx(conn, reg) => {
                let t = reg.table_of::<R>()?;
                Self::check_filters(&self.filters, t)?;
                let (stmt, values) = Query::<R> {
                    source: Source::Tx(&mut *conn, reg),
                    ..self
                }
                .build_owned(t, &select(t));
                Ok((query_rows(conn, &stmt, &values, &types(t))?, table))
            }
        }
    }

    fn build_owned(self, t: &Table, select: &str) -> (Statement, Vec<Value>) {
        self.build(t, select)
    }

    /// Runs the query.
    pub fn load(self) -> Result<Vec<R>> {
        let (rows, table) = self.run(|t| column_list(t.meta), |t| t.types.clone())?;
        rows.into_iter().map(|r| decode(table, r)).collect()
    }

    /// The first matching record, if any.
    pub fn first(self) -> Result<Option<R>> {
        Ok(self.limit(1).load()?.into_iter().next())
    }

    /// The number of matching records (limit and offset are ignored).
    pub fn count(self) -> Result<u64> {
        let (rows, _) = self.run(|_| "COUNT(*)".to_owned(), |_| vec![SqlType::BigInt])?;
        Ok(
            match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
                Some(Value::I64(n)) => n as u64,
                _ => 0,
            },
        )
    }
}
