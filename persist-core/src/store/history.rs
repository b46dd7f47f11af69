//! Node-local history buffer (store-and-forward) and delivery markers.
//!
//! History is data a module produces while running (events, samples). On a
//! backup that is active, with history level Partial, it is buffered here,
//! durably and in order, and forwarded to the master once the master is back;
//! the master delivers each item exactly once, recording what it delivered
//! with a node-local marker in the same transaction. Neither the buffer nor
//! the markers are replicated or logged, and the write gate does not apply to
//! them: they belong to the node, not to the configuration.

use serde::{Deserialize, Serialize};

use crate::backend::Statement;
use crate::error::Result;
use crate::value::{SqlType, Value};

use super::schema::HISTORY_TABLE;
use super::write::WriteTx;
use super::{in_transaction, meta_get, meta_set, now_micros, query_i64, Store};

/// One history item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    /// Its order on the node that recorded it (1, 2, ...).
    pub seq: u64,
    /// When it was recorded, microseconds since the Unix epoch.
    pub at: i64,
    /// What kind of item (the module's own name).
    pub kind: String,
    /// The module's encoded item.
    pub payload: Vec<u8>,
}

impl Store {
    /// Appends an item to this node's history buffer; returns its sequence number.
    pub fn history_append(&self, kind: &str, payload: Vec<u8>) -> Result<u64> {
        let mut w = self.inner.writer.lock();
        in_transaction(&mut *w.conn, |conn| {
            let max = Statement::new(format!("SELECT MAX(seq) FROM {HISTORY_TABLE}"));
            let last_seq = query_i64(conn, &max, &[])?.unwrap_or(0) as u64;
            // Sequence numbers never go back, even after the buffer was emptied.
            let floor = meta_get(conn, "history_seq")?
                .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
                .unwrap_or(0);
            let seq = last_seq.max(floor) + 1;
            let mut stmt = Statement::new(format!(
                "INSERT INTO {HISTORY_TABLE} (seq, at, kind, payload) VALUES ("
            ));
            stmt.bind(0, SqlType::BigInt)
                .sql(", ")
                .bind(1, SqlType::BigInt)
                .sql(", ")
                .bind(2, SqlType::Text)
                .sql(", ")
                .bind(3, SqlType::Blob)
                .sql(")");
            conn.execute(
                &stmt,
                &[
                    Value::I64(seq as i64),
                    Value::I64(now_micros()),
                    Value::Text(kind.to_owned()),
                    Value::Blob(payload),
                ],
            )?;
            meta_set(conn, "history_seq", seq.to_le_bytes().to_vec())?;
            Ok(seq)
        })
    }

    /// Up to `max` buffered items after `after`, in order.
    pub fn history_pending(&self, after: u64, max: usize) -> Result<Vec<HistoryItem>> {
        let mut stmt = Statement::new(format!(
            "SELECT seq, at, kind, payload FROM {HISTORY_TABLE} WHERE seq > "
        ));
        stmt.bind(0, SqlType::BigInt)
            .sql(" ORDER BY seq LIMIT ")
            .bind(1, SqlType::BigInt);
        let rows = self.run_query(
            &stmt,
            &[Value::I64(after as i64), Value::I64(max as i64)],
            &[
                SqlType::BigInt,
                SqlType::BigInt,
                SqlType::Text,
                SqlType::Blob,
            ],
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                match (it.next(), it.next(), it.next(), it.next()) {
                    (
                        Some(Value::I64(seq)),
                        Some(Value::I64(at)),
                        Some(Value::Text(kind)),
                        Some(Value::Blob(payload)),
                    ) => Some(HistoryItem {
                        seq: seq as u64,
                        at,
                        kind,
                        payload,
                    }),
                    _ => None,
                }
            })
            .collect())
    }

    /// Drops buffered items up to and including `seq` (the master has them).
    pub fn history_trim(&self, seq: u64) -> Result<u64> {
        let mut w = self.inner.writer.lock();
        let mut stmt = Statement::new(format!("DELETE FROM {HISTORY_TABLE} WHERE seq <= "));
        stmt.bind(0, SqlType::BigInt);
        Ok(w.conn.execute(&stmt, &[Value::I64(seq as i64)])? as u64)
    }
}

impl WriteTx<'_> {
    /// A node-local marker (not replicated, not logged), e.g. the last
    /// history item delivered from a peer.
    pub fn local_marker(&mut self, key: &str) -> Result<Option<u64>> {
        Ok(meta_get(&mut *self.w.conn, &format!("marker:{key}"))?
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes)))
    }

    /// Sets a node-local marker in this transaction: it commits with it.
    pub fn set_local_marker(&mut self, key: &str, value: u64) -> Result<()> {
        meta_set(
            &mut *self.w.conn,
            &format!("marker:{key}"),
            value.to_le_bytes().to_vec(),
        )
    }
}
