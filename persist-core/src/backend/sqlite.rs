//! Embedded SQLite (bundled: nothing to install).
//!
//! Connections run in WAL mode with `foreign_keys` on and a busy timeout.
//! The writer does not checkpoint inside `COMMIT`: a background thread runs
//! passive checkpoints (see [`Checkpointer`]), which keeps the WAL checkpoint
//! off the commit path (it is the lag tail otherwise), while the writer's own
//! auto-checkpoint stays armed at a high mark as a cap on WAL growth when
//! readers pin the WAL.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use diesel::query_builder::AstPass;
use diesel::serialize::{IsNull, Output, ToSql};
use diesel::sql_types;
use diesel::sqlite::{Sqlite, SqliteValue};
use diesel::{Connection as _, QueryResult, SqliteConnection};

use super::diesel_conn::{bind_mismatch, value_to_sql, DieselConnection, ValueCodec};
use super::{Connection, Dialect};
use crate::error::{Error, Result};
use crate::value::{SqlType, Value};

/// How hard SQLite works to make each commit survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous = NORMAL`: commits survive a crash of the process but the
    /// last ones may be lost on power loss (WAL is synced at checkpoints).
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit is synced to disk before it returns.
    Full,
}

/// Options of an SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Database file.
    pub path: PathBuf,
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Run WAL checkpoints on a background thread every this often
    /// (`None`: SQLite checkpoints inside commits, its default).
    pub background_checkpoint: Option<Duration>,
    /// Caps the database file at this many pages (4 KiB each): a write that
    /// would grow it further fails with `Error::DiskFull`, exactly as on a
    /// full disk, and keeps nothing. `None`: no cap.
    pub max_pages: Option<u32>,
}

impl SqliteOptions {
    /// Defaults for a database file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            background_checkpoint: Some(Duration::from_millis(100)),
            max_pages: None,
        }
    }
}

/// WAL pages the writer lets accumulate before it checkpoints itself: only
/// reached when the background checkpointer cannot keep up (readers pin the WAL).
const WAL_CAP_PAGES: u32 = 16_384;

/// Opens a connection with the store's pragmas.
pub fn open(options: &SqliteOptions) -> Result<Box<dyn Connection>> {
    Ok(Box::new(open_raw(options)?))
}

pub(crate) fn open_raw(options: &SqliteOptions) -> Result<DieselConnection<SqliteConnection>> {
    let url = path_url(&options.path)?;
    let conn = SqliteConnection::establish(&url)
        .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", options.path.display())))?;
    let mut conn = DieselConnection::new(conn);
    // busy_timeout first: the journal-mode switch itself may meet a lock.
    conn.batch(&format!(
        "PRAGMA busy_timeout = {}",
        options.busy_timeout.as_millis()
    ))?;
    conn.batch("PRAGMA journal_mode = WAL")?;
    conn.batch(match options.synchronous {
        Synchronous::Normal => "PRAGMA synchronous = NORMAL",
        Synchronous::Full => "PRAGMA synchronous = FULL",
    })?;
    conn.batch("PRAGMA foreign_keys = ON")?;
    if let Some(pages) = options.max_pages {
        conn.batch(&format!("PRAGMA max_page_count = {pages}"))?;
    }
    if options.background_checkpoint.is_some() {
        conn.batch(&format!("PRAGMA wal_autocheckpoint = {WAL_CAP_PAGES}"))?;
    }
    Ok(conn)
}

fn path_url(path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        Error::Unavailable(format!("database path is not UTF-8: {}", path.display()))
    })
}

/// Runs passive WAL checkpoints on its own connection until dropped.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread.
    pub fn start(options: &SqliteOptions, every: Duration) -> Result<Checkpointer> {
        let mut conn = open_raw(options)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("persist-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::park_timeout(every);
                    if let Err(e) = conn.batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::debug!("background checkpoint: {e}");
                    }
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The text form of a timestamp in SQLite: RFC 3339, UTC, microseconds,
/// fixed width, so text order is time order.
pub fn timestamp_text(micros: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn parse_timestamp(text: &str) -> diesel::deserialize::Result<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
        .map_err(|e| format!("bad timestamp `{text}`: {e}").into())
}

value_to_sql!(Sqlite, sql_types::BigInt, BigInt, I64);
value_to_sql!(Sqlite, sql_types::Integer, Integer, I32);
value_to_sql!(Sqlite, sql_types::Double, Double, F64);
value_to_sql!(Sqlite, sql_types::Bool, Bool, Bool);
value_to_sql!(Sqlite, sql_types::Binary, Blob, Blob);

/// Text and timestamps both bind as SQLite text.
impl ToSql<sql_types::Text, Sqlite> for Value {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> diesel::serialize::Result {
        match self {
            Value::Text(v) => ToSql::<sql_types::Text, Sqlite>::to_sql(v, out),
            Value::Timestamp(us) => {
                let text = timestamp_text(*us).ok_or("timestamp out of range")?;
                out.set_value(text);
                Ok(IsNull::No)
            }
            Value::Null => Ok(IsNull::Yes),
            other => Err(bind_mismatch(SqlType::Text, other)),
        }
    }
}

impl ValueCodec for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;

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
            SqlType::Blob => pass.push_bind_param_value_only::<sql_types::Binary, Value>(value),
            SqlType::Text | SqlType::Timestamp => {
                pass.push_bind_param_value_only::<sql_types::Text, Value>(value)
            }
        }
    }

    fn read_value(
        raw: Option<SqliteValue<'_, '_, '_>>,
        ty: SqlType,
    ) -> diesel::deserialize::Result<Value> {
        let Some(mut raw) = raw else {
            return Ok(Value::Null);
        };
        Ok(match ty {
            SqlType::BigInt => Value::I64(raw.read_long()),
            SqlType::Integer => Value::I32(raw.read_integer()),
            SqlType::Double => Value::F64(raw.read_double()),
            SqlType::Bool => Value::Bool(raw.read_integer() != 0),
            SqlType::Text => Value::Text(raw.read_text().to_owned()),
            SqlType::Blob => Value::Blob(raw.read_blob().to_vec()),
            SqlType::Timestamp => Value::Timestamp(parse_timestamp(raw.read_text())?),
        })
    }

    fn read_value_over(
        raw: Option<SqliteValue<'_, '_, '_>>,
        ty: SqlType,
        slot: &mut Value,
    ) -> diesel::deserialize::Result<()> {
        match (raw, ty) {
            (Some(mut raw), SqlType::Text) => slot.set_text(raw.read_text()),
            (Some(mut raw), SqlType::Blob) => slot.set_blob(raw.read_blob()),
            (raw, ty) => *slot = Self::read_value(raw, ty)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;

    #[derive(QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }

    /// The workspace's `.cargo/config.toml` compiles the bundled SQLite
    /// without the two process-wide mutexes and in multi-thread mode, with
    /// no mutex per connection (see there): lose that file, or
    /// build outside the workspace without the flags, and this says so.
    #[test]
    fn bundled_sqlite_is_built_without_process_wide_mutexes() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        let options: Vec<String> = diesel::sql_query("PRAGMA compile_options")
            .load::<CompileOption>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|o| o.compile_options)
            .collect();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "memory statistics on: {options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "shared page-cache LRU on: {options:?}"
        );
        assert!(
            options.iter().any(|o| o == "THREADSAFE=2"),
            "not multi-thread mode (a mutex per connection call): {options:?}"
        );
    }

    /// A query reads each row over the previous one's values: text over
    /// text (shorter and longer), NULL over text, text over NULL, blobs
    /// likewise, and a row the callback took leaves nothing behind.
    #[test]
    fn rows_read_over_kept_values_are_each_rows_own() {
        use crate::backend::diesel_conn::DieselConnection;
        use crate::backend::{Connection, Statement};
        use crate::value::{SqlType, Value};
        let mut conn = DieselConnection::new(SqliteConnection::establish(":memory:").unwrap());
        conn.batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, b BLOB); \
             INSERT INTO t VALUES (1, 'a longer first text', x'0102'), (2, 'b', NULL), \
             (3, NULL, x'03'), (4, 'fourth', x'040506'), (5, '', x''), (6, 'six', x'06')",
        )
        .unwrap();
        let want = [
            (1, Some("a longer first text"), Some(&[1u8, 2][..])),
            (2, Some("b"), None),
            (3, None, Some(&[3][..])),
            (4, Some("fourth"), Some(&[4, 5, 6][..])),
            (5, Some(""), Some(&[][..])),
            (6, Some("six"), Some(&[6][..])),
        ]
        .map(|(id, s, b)| {
            vec![
                Value::I64(id),
                s.map_or(Value::Null, |s| Value::Text(s.into())),
                b.map_or(Value::Null, |b| Value::Blob(b.to_vec())),
            ]
        });
        let mut seen = Vec::new();
        conn.query(
            &Statement::new("SELECT id, s, b FROM t ORDER BY id"),
            &[],
            &[SqlType::BigInt, SqlType::Text, SqlType::Blob],
            &mut |row| {
                // Row 4 is taken: row 5 is read into fresh values.
                seen.push(if seen.len() == 3 {
                    std::mem::take(row)
                } else {
                    row.clone()
                });
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, want);
    }
}
