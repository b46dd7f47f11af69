//! Column values and the mapping between Rust field types and SQL column types.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, Error};
use crate::record::{ColumnMeta, RecordMeta};

/// The SQL type of a column, independent of the backend.
///
/// Each backend maps these onto its own type names (see `ARCHITECTURE.md`);
/// the mapping is part of the schema fingerprint, so two nodes only replicate
/// when they agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SqlType {
    /// 64-bit signed integer (`i64`).
    BigInt,
    /// 32-bit signed integer (`i32`).
    Integer,
    /// 64-bit float (`f64`).
    Double,
    /// Boolean (`bool`).
    Bool,
    /// UTF-8 text (`String`, and enums stored by variant name).
    Text,
    /// Raw bytes (`Vec<u8>`).
    Blob,
    /// A UTC instant with microsecond precision (`chrono::DateTime<Utc>`).
    Timestamp,
}

impl SqlType {
    /// A short, stable name used in error messages and the schema fingerprint.
    pub const fn name(self) -> &'static str {
        match self {
            SqlType::BigInt => "bigint",
            SqlType::Integer => "integer",
            SqlType::Double => "double",
            SqlType::Bool => "bool",
            SqlType::Text => "text",
            SqlType::Blob => "blob",
            SqlType::Timestamp => "timestamp",
        }
    }
}

/// One column value, as stored in a row image and bound to a statement.
///
/// The serialized form of a `Vec<Value>` (postcard) is the *row image* that
/// travels in the replication log and feeds the state digest, so the
/// variant order below is part of the log format: append, never reorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A `BigInt` value.
    I64(i64),
    /// An `Integer` value.
    I32(i32),
    /// A `Double` value.
    F64(f64),
    /// A `Bool` value.
    Bool(bool),
    /// A `Text` value.
    Text(String),
    /// A `Blob` value.
    Blob(Vec<u8>),
    /// A `Timestamp` value: microseconds since the Unix epoch, UTC.
    Timestamp(i64),
}

impl Value {
    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The SQL type this value belongs to, or `None` for NULL.
    pub fn sql_type(&self) -> Option<SqlType> {
        Some(match self {
            Value::Null => return None,
            Value::I64(_) => SqlType::BigInt,
            Value::I32(_) => SqlType::Integer,
            Value::F64(_) => SqlType::Double,
            Value::Bool(_) => SqlType::Bool,
            Value::Text(_) => SqlType::Text,
            Value::Blob(_) => SqlType::Blob,
            Value::Timestamp(_) => SqlType::Timestamp,
        })
    }

    /// A short description of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        self.sql_type().map_or("null", SqlType::name)
    }

    /// Whether this value may be stored in a column of type `ty`
    /// (NULL fits every type; nullability is checked separately).
    pub fn fits(&self, ty: SqlType) -> bool {
        self.sql_type().is_none_or(|t| t == ty)
    }

    /// Makes this `Value::Text(text)`, keeping the buffer if it holds text
    /// already (rows read one over the other allocate nothing then).
    pub(crate) fn set_text(&mut self, text: &str) {
        match self {
            Value::Text(kept) => {
                kept.clear();
                kept.push_str(text);
            }
            _ => *self = Value::Text(text.to_owned()),
        }
    }

    /// Makes this `Value::Blob(bytes)`, keeping the buffer if it holds a
    /// blob already.
    pub(crate) fn set_blob(&mut self, bytes: &[u8]) {
        match self {
            Value::Blob(kept) => {
                kept.clear();
                kept.extend_from_slice(bytes);
            }
            _ => *self = Value::Blob(bytes.to_vec()),
        }
    }
}

/// A Rust type that can be a field of a [`PersistentRecord`](crate::PersistentRecord).
///
/// Implemented for `i64`, `i32`, `f64`, `bool`, `String`, `Vec<u8>`,
/// `chrono::DateTime<Utc>`, every `#[derive(PersistentEnum)]` enum, and
/// `Option<T>` of any of those (a nullable column). A field of any other
/// type is a compile error at the derive.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a field of a persistent record",
    label = "unsupported field type",
    note = "supported: i64, i32, f64, bool, String, Vec<u8>, chrono::DateTime<chrono::Utc>, an enum with #[derive(PersistentEnum)], or Option<T> of one of these"
)]
pub trait FieldType: Sized {
    /// The column type.
    const SQL_TYPE: SqlType;
    /// Whether the column accepts NULL (true only for `Option<T>`).
    const NULLABLE: bool = false;

    /// Converts the field into a column value.
    fn to_value(&self) -> Value;

    /// Converts a column value back; fails on a value of another kind.
    fn from_value(value: Value) -> Result<Self, DecodeError>;

    /// For enums stored by name: the variant names, in declaration order.
    fn variants() -> Option<&'static [&'static str]> {
        None
    }
}

fn mismatch(expected: SqlType, found: &Value) -> DecodeError {
    DecodeError::TypeMismatch {
        expected: expected.name(),
        found: found.kind(),
    }
}

macro_rules! scalar_field {
    ($t:ty, $sql:ident, $variant:ident) => {
        impl FieldType for $t {
            const SQL_TYPE: SqlType = SqlType::$sql;
            fn to_value(&self) -> Value {
                Value::$variant(self.clone())
            }
            fn from_value(value: Value) -> Result<Self, DecodeError> {
                match value {
                    Value::$variant(v) => Ok(v),
                    other => Err(mismatch(SqlType::$sql, &other)),
                }
            }
        }
    };
}

scalar_field!(i64, BigInt, I64);
scalar_field!(i32, Integer, I32);
scalar_field!(bool, Bool, Bool);
scalar_field!(String, Text, Text);
scalar_field!(Vec<u8>, Blob, Blob);

/// A `DOUBLE PRECISION` column, on both backends.
///
/// Every `f64` round-trips bit for bit (infinities, subnormals, `MIN_POSITIVE`,
/// `MAX`, `0.1 + 0.2`, ...), with two exceptions, the same on SQLite and
/// PostgreSQL:
///
/// - **-0.0 is stored as +0.0.** SQLite keeps an integral value of a REAL
///   column as an integer on disk, so it reads -0.0 back as +0.0. Only a
///   column without REAL affinity (declared `BLOB`, or with no type) would
///   keep the sign, and an existing table cannot change a column's type in
///   place. So the sign of zero is dropped where values enter the store: in
///   this conversion, which every record field, filter operand and column
///   default goes through (and again on every row written, for a custom
///   [`FieldType`]). The row image, the bind, the digest and what reads back
///   agree, and a SQLite node and a PostgreSQL node holding the same rows have
///   the same digest. Both backends compare -0.0 equal to +0.0 anyway (a
///   unique column cannot hold both).
/// - **NaN is refused** with [`Error::NotANumber`] naming the table and
///   column, before anything is written (SQLite would bind it as NULL;
///   PostgreSQL would store it, but the backends must agree and a SQLite
///   backup could not hold it). A NaN in a query filter is refused the same
///   way. Use `Option<f64>` and `None` for a missing value.
impl FieldType for f64 {
    const SQL_TYPE: SqlType = SqlType::Double;
    fn to_value(&self) -> Value {
        Value::F64(canonical_f64(*self))
    }
    fn from_value(value: Value) -> Result<Self, DecodeError> {
        match value {
            Value::F64(v) => Ok(v),
            other => Err(mismatch(SqlType::Double, &other)),
        }
    }
}

/// The form in which the store keeps an `f64`: -0.0 becomes +0.0, every other
/// value is unchanged (see [`FieldType`] for `f64`).
pub(crate) fn canonical_f64(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

fn not_a_number(meta: &RecordMeta, column: &ColumnMeta) -> Error {
    Error::NotANumber {
        table: meta.table.to_owned(),
        column: column.name.to_owned(),
    }
}

/// The [`Error::NotANumber`] for the first NaN in `values`, a row of `meta`
/// or part of one (`columns[i]` describes `values[i]`).
pub(crate) fn refuse_nan<'c>(
    meta: &RecordMeta,
    columns: impl IntoIterator<Item = &'c ColumnMeta>,
    values: &[Value],
) -> Result<(), Error> {
    match values
        .iter()
        .zip(columns)
        .find(|(v, _)| matches!(v, Value::F64(x) if x.is_nan()))
    {
        Some((_, c)) => Err(not_a_number(meta, c)),
        None => Ok(()),
    }
}

/// Turns every -0.0 of a row into +0.0 (values from a custom [`FieldType`]
/// included).
pub(crate) fn canonical_row(values: &mut [Value]) {
    for v in values {
        if let Value::F64(x) = v {
            *x = canonical_f64(*x);
        }
    }
}

impl FieldType for DateTime<Utc> {
    const SQL_TYPE: SqlType = SqlType::Timestamp;
    fn to_value(&self) -> Value {
        Value::Timestamp(self.timestamp_micros())
    }
    fn from_value(value: Value) -> Result<Self, DecodeError> {
        match value {
            Value::Timestamp(us) => Utc
                .timestamp_micros(us)
                .single()
                .ok_or(DecodeError::OutOfRange("timestamp")),
            other => Err(mismatch(SqlType::Timestamp, &other)),
        }
    }
}

impl<T: FieldType> FieldType for Option<T> {
    const SQL_TYPE: SqlType = T::SQL_TYPE;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
    fn from_value(value: Value) -> Result<Self, DecodeError> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
    fn variants() -> Option<&'static [&'static str]> {
        T::variants()
    }
}

/// An enum stored by variant name in a text column.
///
/// Derive it with `#[derive(PersistentEnum)]` on an enum whose variants carry
/// no data; the derive also implements [`FieldType`], so the enum can be a
/// record field. A variant can be stored under another name with
/// `#[persist(rename = "...")]`.
pub trait PersistentEnum: Sized + 'static {
    /// Every stored name, in declaration order.
    const VARIANTS: &'static [&'static str];
    /// The stored name of this variant.
    fn variant_name(&self) -> &'static str;
    /// The variant stored under `name`, if any.
    fn from_variant_name(name: &str) -> Option<Self>;
}

/// Implements [`FieldType::from_value`] for a [`PersistentEnum`]; used by the derive.
#[doc(hidden)]
pub fn enum_from_value<E: PersistentEnum>(value: Value) -> Result<E, DecodeError> {
    match value {
        Value::Text(name) => match E::from_variant_name(&name) {
            Some(v) => Ok(v),
            None => Err(DecodeError::UnknownVariant {
                name,
                expected: E::VARIANTS,
            }),
        },
        other => Err(mismatch(SqlType::Text, &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::KeyKind;

    fn column(name: &'static str, sql_type: SqlType) -> ColumnMeta {
        ColumnMeta {
            name,
            field: name,
            sql_type,
            nullable: true,
            unique: false,
            indexed: false,
            default: None,
            reference: None,
            variants: None,
            ui: crate::record::ColumnUi::NONE,
        }
    }

    fn meta() -> RecordMeta {
        RecordMeta {
            type_name: "T",
            table: "t",
            columns: vec![column("id", SqlType::BigInt), column("x", SqlType::Double)],
            key: 0,
            key_kind: KeyKind::Identity,
            title: None,
            check_row: None,
        }
    }

    #[test]
    fn negative_zero_is_stored_as_positive_zero() {
        assert_eq!((-0.0f64).to_value(), Value::F64(0.0));
        let Value::F64(x) = (-0.0f64).to_value() else {
            unreachable!()
        };
        assert_eq!(x.to_bits(), 0);
        assert_eq!(Some(-0.0f64).to_value(), Value::F64(0.0));
        for x in [
            f64::INFINITY,
            f64::from_bits(1),
            -f64::MIN_POSITIVE,
            0.1 + 0.2,
        ] {
            assert_eq!(canonical_f64(x).to_bits(), x.to_bits());
        }
        // A value that did not come through `to_value` (a custom FieldType).
        let mut row = vec![Value::I64(1), Value::F64(-0.0)];
        canonical_row(&mut row);
        assert!(matches!(row[1], Value::F64(x) if x.to_bits() == 0));
    }

    #[test]
    fn nan_is_refused_naming_the_column() {
        let m = meta();
        let row = [Value::I64(1), Value::F64(-f64::NAN)];
        match refuse_nan(&m, &m.columns, &row) {
            Err(Error::NotANumber { table, column }) => {
                assert_eq!((table, column), ("t".into(), "x".into()))
            }
            other => panic!("{other:?}"),
        }
        // Flattened rows: the column is found across row boundaries.
        let flat = [
            Value::I64(1),
            Value::F64(1.0),
            Value::I64(2),
            Value::F64(f64::NAN),
        ];
        assert!(matches!(
            refuse_nan(&m, m.columns.iter().cycle(), &flat),
            Err(Error::NotANumber { ref column, .. }) if column == "x"
        ));
        assert!(refuse_nan(&m, &m.columns, &[Value::I64(1), Value::Null]).is_ok());
    }
}
