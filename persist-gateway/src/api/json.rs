//! Column values as JSON, in both directions, checked against the column.
//!
//! | column     | JSON                                                        |
//! |------------|-------------------------------------------------------------|
//! | bigint     | integer                                                     |
//! | integer    | integer within `i32`                                        |
//! | double     | number; `"Infinity"` / `"-Infinity"` for the infinities     |
//! | bool       | `true` / `false`                                            |
//! | text       | string (an enum: one of its variant names)                  |
//! | blob       | string, standard base64                                     |
//! | timestamp  | string, RFC 3339 (`2026-12-02T06:31:19.123456Z` when sent)  |
//! | NULL       | `null` (nullable columns only)                              |

use base64::Engine;
use persist::chrono::{DateTime, SecondsFormat, Utc};
use persist::{ColumnMeta, RecordMeta, SqlType, Value};
use serde_json::{Map, Value as Json};

/// A value as JSON (secret columns are never passed here: see [`record`]).
pub(crate) fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::I64(n) => Json::from(*n),
        Value::I32(n) => Json::from(*n),
        Value::F64(x) if x.is_finite() => Json::from(*x),
        Value::F64(x) if *x > 0.0 => Json::from("Infinity"),
        Value::F64(_) => Json::from("-Infinity"),
        Value::Bool(b) => Json::from(*b),
        Value::Text(s) => Json::from(s.as_str()),
        Value::Blob(b) => Json::from(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Timestamp(us) => match DateTime::<Utc>::from_timestamp_micros(*us) {
            Some(t) => Json::from(t.to_rfc3339_opts(SecondsFormat::Micros, true)),
            None => Json::Null,
        },
    }
}

/// A record's row as a JSON object by field name, without its secret fields.
pub(crate) fn record(meta: &RecordMeta, row: &[Value]) -> Map<String, Json> {
    meta.columns
        .iter()
        .zip(row)
        .filter(|(c, _)| !c.ui.secret)
        .map(|(c, v)| (c.field.to_owned(), to_json(v)))
        .collect()
}

fn kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// What a column takes, for messages.
pub(crate) fn expected(c: &ColumnMeta) -> String {
    if let Some(v) = c.variants {
        return format!("one of {}", v.join(", "));
    }
    match c.sql_type {
        SqlType::BigInt => "an integer".into(),
        SqlType::Integer => "an integer within -2147483648..=2147483647".into(),
        SqlType::Double => "a number".into(),
        SqlType::Bool => "true or false".into(),
        SqlType::Text => "a string".into(),
        SqlType::Blob => "a base64 string".into(),
        SqlType::Timestamp => "an RFC 3339 date-time with its offset".into(),
    }
}

/// A JSON value for column `c`, or what is wrong with it.
pub(crate) fn from_json(c: &ColumnMeta, j: &Json) -> Result<Value, String> {
    let bad = || format!("{} must be {}, not {}", c.field, expected(c), kind(j));
    if j.is_null() {
        return if c.nullable {
            Ok(Value::Null)
        } else {
            Err(format!("{} is required (it cannot be null)", c.field))
        };
    }
    match c.sql_type {
        SqlType::BigInt => j.as_i64().map(Value::I64).ok_or_else(bad),
        SqlType::Integer => j
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Value::I32)
            .ok_or_else(bad),
        SqlType::Double => match j {
            Json::Number(n) => n.as_f64().map(Value::F64).ok_or_else(bad),
            Json::String(s) if s == "Infinity" => Ok(Value::F64(f64::INFINITY)),
            Json::String(s) if s == "-Infinity" => Ok(Value::F64(f64::NEG_INFINITY)),
            _ => Err(bad()),
        },
        SqlType::Bool => j.as_bool().map(Value::Bool).ok_or_else(bad),
        SqlType::Text => {
            let s = j.as_str().ok_or_else(bad)?;
            text(c, s)
        }
        SqlType::Blob => {
            let s = j.as_str().ok_or_else(bad)?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Value::Blob)
                .map_err(|e| format!("{}: not base64 ({e})", c.field))
        }
        SqlType::Timestamp => {
            let s = j.as_str().ok_or_else(bad)?;
            timestamp(c, s)
        }
    }
}

fn text(c: &ColumnMeta, s: &str) -> Result<Value, String> {
    if let Some(v) = c.variants {
        if !v.contains(&s) {
            return Err(format!("{}: `{s}` is not {}", c.field, expected(c)));
        }
    }
    Ok(Value::Text(s.to_owned()))
}

fn timestamp(c: &ColumnMeta, s: &str) -> Result<Value, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| Value::Timestamp(t.with_timezone(&Utc).timestamp_micros()))
        .map_err(|e| format!("{}: `{s}` is not {} ({e})", c.field, expected(c)))
}

/// A value of column `c` written as text: a key in a path, an operand in a
/// query string.
pub(crate) fn from_text(c: &ColumnMeta, s: &str) -> Result<Value, String> {
    let bad = || format!("{}: `{s}` is not {}", c.field, expected(c));
    match c.sql_type {
        SqlType::BigInt => s.parse().map(Value::I64).map_err(|_| bad()),
        SqlType::Integer => s.parse().map(Value::I32).map_err(|_| bad()),
        SqlType::Double => match s {
            "Infinity" => Ok(Value::F64(f64::INFINITY)),
            "-Infinity" => Ok(Value::F64(f64::NEG_INFINITY)),
            _ => s
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Value::F64)
                .ok_or_else(bad),
        },
        SqlType::Bool => match s {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        SqlType::Text => text(c, s),
        SqlType::Blob => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Value::Blob)
            .map_err(|_| bad()),
        SqlType::Timestamp => timestamp(c, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persist::ColumnUi;

    fn col(sql_type: SqlType, nullable: bool) -> ColumnMeta {
        ColumnMeta {
            name: "c",
            field: "c",
            sql_type,
            nullable,
            unique: false,
            indexed: false,
            default: None,
            reference: None,
            variants: None,
            ui: ColumnUi::NONE,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let cases = [
            (SqlType::BigInt, Value::I64(i64::MIN)),
            (SqlType::Integer, Value::I32(-7)),
            (SqlType::Double, Value::F64(0.25)),
            (SqlType::Double, Value::F64(f64::NEG_INFINITY)),
            (SqlType::Bool, Value::Bool(true)),
            (SqlType::Text, Value::Text("ä \"x\"".into())),
            (SqlType::Blob, Value::Blob(vec![0, 255, 7])),
            (SqlType::Timestamp, Value::Timestamp(1_796_191_200_123_456)),
        ];
        for (t, v) in cases {
            let c = col(t, false);
            assert_eq!(from_json(&c, &to_json(&v)).unwrap(), v, "{t:?}");
        }
        assert_eq!(
            from_json(&col(SqlType::Text, true), &Json::Null).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn wrong_values_say_what_is_expected() {
        let e = from_json(&col(SqlType::Integer, false), &Json::from(3_000_000_000i64));
        assert!(e.unwrap_err().contains("within"));
        let e = from_json(&col(SqlType::BigInt, false), &Json::from(1.5));
        assert_eq!(e.unwrap_err(), "c must be an integer, not a number");
        let e = from_json(&col(SqlType::Bool, false), &Json::Null);
        assert!(e.unwrap_err().contains("required"));
        let e = from_json(&col(SqlType::Timestamp, false), &Json::from("yesterday"));
        assert!(e.unwrap_err().contains("RFC 3339"));
        let mut c = col(SqlType::Text, false);
        c.variants = Some(&["ModbusTcp", "opc-ua"]);
        let e = from_json(&c, &Json::from("Serial"));
        assert_eq!(
            e.unwrap_err(),
            "c: `Serial` is not one of ModbusTcp, opc-ua"
        );
        assert!(from_text(&col(SqlType::Double, false), "NaN").is_err());
        assert_eq!(
            from_text(&col(SqlType::Timestamp, false), "2026-12-02T07:00:00+01:00").unwrap(),
            Value::Timestamp(1_796_191_200_000_000)
        );
    }
}
