//! Typed errors of the store and the log.

use std::fmt;

/// A value, row image or log entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A column held a value of another kind than the field expects.
    #[error("expected a {expected} value, found {found}")]
    TypeMismatch {
        /// The kind the field expects.
        expected: &'static str,
        /// The kind that was found.
        found: &'static str,
    },
    /// A text column held a name that is not a variant of the enum.
    #[error("unknown enum variant `{name}`, expected one of {expected:?}")]
    UnknownVariant {
        /// The stored name.
        name: String,
        /// The names the enum knows.
        expected: &'static [&'static str],
    },
    /// A value is outside the range its Rust type can hold.
    #[error("{0} value out of range")]
    OutOfRange(&'static str),
    /// A row had fewer or more values than the record has columns.
    #[error("row has {found} values, the record has {expected} columns")]
    ColumnCount {
        /// Columns of the record.
        expected: usize,
        /// Values in the row.
        found: usize,
    },
    /// The bytes are not a valid encoding (truncated, corrupt, or too large).
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// The bytes were written by a newer format version.
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
}

/// Everything the store can report to a caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No row with this key exists.
    #[error("{table}: no record with key {key}")]
    NotFound {
        /// The table.
        table: String,
        /// The key, printed.
        key: String,
    },
    /// A write would duplicate a value in a unique column (or the key).
    #[error("{table}.{column}: unique constraint violated{}", value.as_ref().map(|v| format!(" by {v}")).unwrap_or_default())]
    UniqueViolation {
        /// The table.
        table: String,
        /// The unique column (the key column for a duplicate key).
        column: String,
        /// The duplicated value, when known.
        value: Option<String>,
    },
    /// The record's validator refused it.
    #[error("{table}: validation failed: {message}")]
    Validation {
        /// The table.
        table: String,
        /// The validator's message.
        message: String,
    },
    /// Returned for a NaN `f64`: in a record being written (insert, update,
    /// save, insert_many), in a query filter, or in a row image applied from
    /// the log or a snapshot. Nothing is written (a write transaction is
    /// spoiled, as by any failed write). NaN cannot be stored: SQLite would
    /// bind it as NULL, and both backends must hold the same values. Use an
    /// `Option<f64>` field and `None` for a missing value. (-0.0 is accepted
    /// and stored as +0.0; see [`FieldType`](crate::FieldType) for `f64`.)
    #[error("{table}.{column}: NaN is refused: an f64 column holds numbers and infinities only (use an Option<f64> field and None for no value)")]
    NotANumber {
        /// The table.
        table: String,
        /// The column holding (or compared with) NaN.
        column: String,
    },
    /// A reference column names a key that does not exist in the referenced table.
    #[error("{table}.{column}: references {target} key {key}, which does not exist")]
    MissingReference {
        /// The referencing table.
        table: String,
        /// The reference column.
        column: String,
        /// The referenced table.
        target: String,
        /// The missing key.
        key: String,
    },
    /// A delete was refused because rows reference the record (`on_delete = restrict`).
    #[error(
        "{table} key {key} is still referenced by {by_table}.{by_column} (on_delete = restrict)"
    )]
    Referenced {
        /// The table of the record being deleted.
        table: String,
        /// Its key.
        key: String,
        /// The referencing table.
        by_table: String,
        /// The referencing column.
        by_column: String,
    },
    /// The declared record type cannot be reconciled with the table in the database.
    #[error("schema conflict on {table}{}: {reason}", column.as_ref().map(|c| format!(".{c}")).unwrap_or_default())]
    SchemaConflict {
        /// The table.
        table: String,
        /// The column, when the conflict is about one.
        column: Option<String>,
        /// What is wrong and what to do about it.
        reason: String,
    },
    /// The record type was used before `Store::register`.
    #[error("record type {type_name} (table {table}) is not registered with this store")]
    NotRegistered {
        /// The Rust type name.
        type_name: &'static str,
        /// Its table.
        table: &'static str,
    },
    /// Config writes are accepted only on the master node; this node refuses
    /// them (a backup, even while active, or a master in conflict).
    #[error("not the master: config writes are refused here ({reason})")]
    NotMaster {
        /// Why this node refuses writes.
        reason: String,
    },
    /// The database is locked by another connection or process and stayed locked past the busy timeout.
    #[error("database is locked: {0}")]
    Locked(String),
    /// The database cannot be reached or opened.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The disk (or the database's quota) is full; nothing of the transaction was kept.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// A log entry does not follow the last applied position.
    #[error("log gap: expected position {expected}, got {got}")]
    Gap {
        /// The next position this store can apply.
        expected: u64,
        /// The position offered.
        got: u64,
    },
    /// After applying an entry, this store's digest differs from the one the writer recorded.
    #[error("divergence at position {position}: digest {local} here, {remote} at the origin")]
    Divergence {
        /// The entry's position.
        position: u64,
        /// The digest this store computed.
        local: crate::Digest,
        /// The digest recorded in the entry.
        remote: crate::Digest,
    },
    /// A log entry cannot be applied to this store's data (a row it changes is
    /// missing or already present): the data has diverged.
    #[error("entry {position} does not apply: {reason}")]
    Inapplicable {
        /// The entry's position.
        position: u64,
        /// What did not match.
        reason: String,
    },
    /// A log entry holds a replicated operation this node has not registered:
    /// the module that defines it is missing here. The entry is not applied
    /// (and not skipped); replication stops at it until the module is installed.
    #[error("entry {position} runs operation {name}, which is not registered on this node: install the module that defines it")]
    UnknownOperation {
        /// The entry's position.
        position: u64,
        /// The operation's name.
        name: String,
    },
    /// The entry or row could not be decoded.
    #[error("decode error in {context}: {source}")]
    Decode {
        /// Where (table, column, or log position).
        context: String,
        /// What went wrong.
        #[source]
        source: DecodeError,
    },
    /// Any other database error, with the database's message.
    #[error("database error: {0}")]
    Database(String),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats a key value for error messages.
pub(crate) struct KeyDisplay<'a>(pub &'a crate::Value);

impl fmt::Display for KeyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::Value::*;
        match self.0 {
            Null => f.write_str("NULL"),
            I64(v) => write!(f, "{v}"),
            I32(v) => write!(f, "{v}"),
            F64(v) => write!(f, "{v}"),
            Bool(v) => write!(f, "{v}"),
            Text(v) => write!(f, "{v:?}"),
            Blob(v) => write!(f, "<{} bytes>", v.len()),
            Timestamp(v) => write!(f, "{v}us"),
        }
    }
}
