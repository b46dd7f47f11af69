//! Records derived through the facade: row round trips, metadata and column handles.

use chrono::{DateTime, TimeZone, Utc};
use persist::{
    DecodeError, FieldType, KeyKind, OnDelete, PersistentEnum, PersistentRecord, SqlType, Value,
};

#[derive(PersistentEnum, Debug, Clone, PartialEq)]
enum Security {
    Plain,
    #[persist(rename = "tls")]
    Tls,
}

#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(validate = check_device)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(unique)]
    name: String,
    #[persist(indexed, default = 502)]
    port: i32,
    #[persist(default = "Tls")]
    security: Security,
    #[persist(default = 1)]
    scale: f64,
    #[persist(default = true)]
    enabled: bool,
    #[persist(default = b"\x01")]
    secret: Vec<u8>,
    created: DateTime<Utc>,
    #[persist(column = "note_text", default = "none")]
    note: Option<String>,
    fallback: Option<Security>,
    retries: Option<i64>,
}

fn check_device(d: &Device) -> Result<(), String> {
    if d.port > 0 {
        Ok(())
    } else {
        Err(format!("port {} is not positive", d.port))
    }
}

#[derive(PersistentRecord, Debug, PartialEq)]
#[persist(table = "settings")]
struct DeviceSettings {
    #[persist(key, references = Device, on_delete = "cascade")]
    device: i64,
    #[persist(references = Device)]
    backup: Option<i64>,
    poll_ms: i32,
}

fn device() -> Device {
    Device {
        id: 7,
        name: "plc-1".into(),
        port: 502,
        security: Security::Tls,
        scale: 0.5,
        enabled: true,
        secret: vec![1, 2, 3],
        created: Utc.timestamp_micros(1_700_000_000_123_456).unwrap(),
        note: None,
        fallback: Some(Security::Plain),
        retries: Some(-3),
    }
}

#[test]
fn row_round_trip() {
    let d = device();
    let row = d.to_row();
    assert_eq!(
        row,
        vec![
            Value::I64(7),
            Value::Text("plc-1".into()),
            Value::I32(502),
            Value::Text("tls".into()),
            Value::F64(0.5),
            Value::Bool(true),
            Value::Blob(vec![1, 2, 3]),
            Value::Timestamp(1_700_000_000_123_456),
            Value::Null,
            Value::Text("Plain".into()),
            Value::I64(-3),
        ]
    );
    assert_eq!(Device::from_row(row).unwrap(), d);
    assert_eq!(d.key(), 7);
}

#[test]
fn from_row_rejects_wrong_length_and_kinds() {
    let mut row = device().to_row();
    row.pop();
    assert_eq!(
        Device::from_row(row),
        Err(DecodeError::ColumnCount {
            expected: 11,
            found: 10
        })
    );
    let mut row = device().to_row();
    row[2] = Value::Text("502".into());
    assert!(matches!(
        Device::from_row(row),
        Err(DecodeError::TypeMismatch { .. })
    ));
    let mut row = device().to_row();
    row[3] = Value::Text("Tls".into());
    assert!(matches!(
        Device::from_row(row),
        Err(DecodeError::UnknownVariant { .. })
    ));
}

#[test]
fn device_meta() {
    let meta = Device::meta();
    assert!(std::ptr::eq(meta, Device::meta()), "meta is built once");
    assert_eq!(meta.type_name, "Device");
    assert_eq!(meta.table, "device");
    assert_eq!(meta.key, 0);
    assert_eq!(meta.key_kind, KeyKind::Identity);
    let names: Vec<_> = meta.columns.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "id",
            "name",
            "port",
            "security",
            "scale",
            "enabled",
            "secret",
            "created",
            "note_text",
            "fallback",
            "retries"
        ]
    );
    let col = |name: &str| meta.column(name).unwrap().1;

    assert_eq!(col("id").sql_type, SqlType::BigInt);
    assert!(col("name").unique && !col("name").indexed);
    let port = col("port");
    assert!(port.indexed && !port.unique && !port.nullable);
    assert_eq!(port.sql_type, SqlType::Integer);
    assert_eq!(port.default, Some(Value::I32(502)));
    let security = col("security");
    assert_eq!(security.sql_type, SqlType::Text);
    assert_eq!(security.default, Some(Value::Text("tls".into())));
    assert_eq!(security.variants, Some(&["Plain", "tls"][..]));
    assert_eq!(col("scale").default, Some(Value::F64(1.0)));
    assert_eq!(col("enabled").default, Some(Value::Bool(true)));
    assert_eq!(col("secret").default, Some(Value::Blob(vec![1])));
    assert_eq!(col("secret").sql_type, SqlType::Blob);
    assert_eq!(col("created").sql_type, SqlType::Timestamp);
    assert_eq!(col("created").default, None);
    let note = col("note_text");
    assert_eq!(note.field, "note");
    assert!(note.nullable);
    assert_eq!(note.default, Some(Value::Text("none".into())));
    assert!(col("fallback").nullable);
    assert_eq!(col("fallback").variants, Some(&["Plain", "tls"][..]));
    assert!(meta.columns.iter().all(|c| c.reference.is_none()));
}

#[test]
fn settings_meta_and_references() {
    let meta = DeviceSettings::meta();
    assert_eq!(meta.table, "settings");
    assert_eq!(meta.key_kind, KeyKind::Explicit);
    assert_eq!(meta.key_column().name, "device");
    let device = meta.columns[0].reference.unwrap();
    assert_eq!((device.target)().table, "device");
    assert_eq!(device.on_delete, OnDelete::Cascade);
    let backup = meta.columns[1].reference.unwrap();
    assert_eq!(backup.on_delete, OnDelete::Restrict);
    assert!(meta.columns[1].nullable);

    let s = DeviceSettings {
        device: 7,
        backup: None,
        poll_ms: 100,
    };
    assert_eq!(s.key(), 7);
    assert_eq!(DeviceSettings::from_row(s.to_row()).unwrap(), s);
}

#[test]
fn validate_runs_the_validator() {
    let mut d = device();
    assert_eq!(d.validate(), Ok(()));
    d.port = 0;
    assert_eq!(d.validate(), Err("port 0 is not positive".to_string()));
    // Without `validate`, every record is valid.
    let s = DeviceSettings {
        device: 1,
        backup: None,
        poll_ms: 0,
    };
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn column_handles() {
    let c = Device::columns();
    assert_eq!(c.port.name(), "port");
    assert_eq!(c.note.name(), "note_text");
    let f = c.port.gt(5);
    assert!(format!("{f:?}").contains("column 2 Gt I32(5)"), "{f:?}");
    let f = c.note.is_null();
    assert!(format!("{f:?}").contains("column 8 Eq Null"), "{f:?}");
    let _ = c.security.eq(Security::Plain);
    let _ = c.name.desc();
}

#[test]
fn enum_field_type() {
    assert_eq!(Security::VARIANTS, ["Plain", "tls"]);
    assert_eq!(Security::Tls.variant_name(), "tls");
    assert_eq!(Security::from_variant_name("tls"), Some(Security::Tls));
    assert_eq!(Security::from_variant_name("Tls"), None);
    assert_eq!(<Security as FieldType>::SQL_TYPE, SqlType::Text);
    assert_eq!(
        Security::from_value(Value::Text("Plain".into())),
        Ok(Security::Plain)
    );
    assert!(Security::from_value(Value::I64(1)).is_err());
    assert_eq!(Security::variants(), Some(&["Plain", "tls"][..]));
}

mod presentation {
    use persist::{PersistentRecord, Value};

    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "shown", title = "Shown things", validate = odd)]
    pub struct Shown {
        #[persist(identity, label = "Id")]
        pub id: i64,
        #[persist(unique, descriptive, label = "Name", help = "A name.")]
        pub name: String,
        #[persist(secret)]
        pub password: Option<String>,
        #[persist(multiline)]
        pub notes: String,
        #[persist(min = 1, max = 65535, default = 502, label = "Port")]
        pub port: i32,
        #[persist(min = -0.5, max = 2)]
        pub ratio: Option<f64>,
    }

    fn odd(s: &Shown) -> Result<(), String> {
        if s.port % 2 == 0 {
            return Err(format!("port {} is even", s.port));
        }
        Ok(())
    }

    /// The same table without any presentation.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "shown")]
    pub struct Plain {
        #[persist(identity)]
        pub id: i64,
        #[persist(unique)]
        pub name: String,
        pub password: Option<String>,
        pub notes: String,
        #[persist(default = 502)]
        pub port: i32,
        pub ratio: Option<f64>,
    }

    fn shown(port: i32, ratio: Option<f64>) -> Shown {
        Shown {
            id: 0,
            name: "a".into(),
            password: None,
            notes: String::new(),
            port,
            ratio,
        }
    }

    #[test]
    fn metadata_is_emitted() {
        let m = Shown::meta();
        assert_eq!(m.title, Some("Shown things"));
        let (i, name) = m.descriptive_column().unwrap();
        assert_eq!((i, name.name), (1, "name"));
        assert_eq!(name.ui.label, Some("Name"));
        assert_eq!(name.ui.help, Some("A name."));
        assert!(m.columns[2].ui.secret && !m.columns[2].ui.multiline);
        assert!(m.columns[3].ui.multiline);
        assert_eq!(
            (m.columns[4].ui.min, m.columns[4].ui.max),
            (Some(1.0), Some(65535.0))
        );
        assert_eq!(
            (m.columns[5].ui.min, m.columns[5].ui.max),
            (Some(-0.5), Some(2.0))
        );
        assert_eq!(Plain::meta().descriptive_column().map(|(i, _)| i), None);
    }

    #[test]
    fn presentation_is_not_schema() {
        // Labels, help, flags and bounds are presentation: the stored schema,
        // and so the fingerprint peers compare, is the same without them.
        assert_eq!(Shown::meta().canonical(), Plain::meta().canonical());
        assert_eq!(
            persist::schema_fingerprint_of(&[Shown::meta()], &[]),
            persist::schema_fingerprint_of(&[Plain::meta()], &[])
        );
    }

    #[test]
    fn bounds_run_before_the_validator() {
        assert_eq!(shown(1, None).validate(), Ok(()));
        assert_eq!(shown(65535, Some(2.0)).validate(), Ok(()));
        assert_eq!(
            shown(0, None).validate(),
            Err("Port must be at least 1, not 0".into())
        );
        assert_eq!(
            shown(70001, None).validate(),
            Err("Port must be at most 65535, not 70001".into())
        );
        assert_eq!(
            shown(3, Some(-1.0)).validate(),
            Err("ratio must be at least -0.5, not -1".into())
        );
        assert_eq!(shown(4, None).validate(), Err("port 4 is even".into()));
    }

    #[test]
    fn check_row_decodes_then_validates() {
        let check = Shown::meta().check_row.unwrap();
        assert_eq!(check(shown(3, None).to_row()), Ok(()));
        assert_eq!(check(shown(4, None).to_row()), Err("port 4 is even".into()));
        let mut row = shown(3, None).to_row();
        row[4] = Value::Text("x".into());
        assert!(check(row).unwrap_err().contains("expected a"));
        assert!(check(vec![]).unwrap_err().contains("columns"));
    }
}
