//! Record types shaped like those of real gateway modules (REFERENCE.md §1).

use chrono::{DateTime, Utc};
use persist::{PersistentEnum, PersistentRecord};

/// How an SMS gateway is reached.
#[derive(PersistentEnum, Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Plain,
    Tls,
    #[persist(rename = "start-tls")]
    StartTls,
}

pub fn check_profile(p: &Profile) -> Result<(), String> {
    if p.name.trim().is_empty() {
        return Err("name must not be blank".into());
    }
    Ok(())
}

/// A notification profile (identity key, unique name, validator).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(table = "notification_profile", validate = check_profile)]
pub struct Profile {
    #[persist(identity)]
    pub id: i64,
    #[persist(unique)]
    pub name: String,
    #[persist(default = true)]
    pub enabled: bool,
    pub created: DateTime<Utc>,
    pub note: Option<String>,
}

/// SMS settings keyed by the id of the profile they belong to; deleted with it.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct SmsSettings {
    #[persist(key, references = Profile, on_delete = "cascade")]
    pub profile_id: i64,
    pub host: String,
    #[persist(default = 8080)]
    pub port: i32,
    pub mode: Mode,
    #[persist(indexed)]
    pub weight: f64,
    pub secret: Vec<u8>,
    pub timeout_ms: Option<i64>,
}

/// A broker publish config referencing a profile (restrict).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct Broker {
    #[persist(identity)]
    pub id: i64,
    #[persist(references = Profile)]
    pub profile_id: i64,
    #[persist(column = "broker_name")]
    pub name: String,
    pub parent: Option<i64>,
}

/// A tree: cascade through a self-reference.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct Folder {
    #[persist(identity)]
    pub id: i64,
    #[persist(references = Folder, on_delete = "cascade")]
    pub parent: Option<i64>,
    pub name: String,
}

pub fn profile(name: &str) -> Profile {
    Profile {
        id: 0,
        name: name.into(),
        enabled: true,
        created: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
        note: None,
    }
}

pub fn sms(profile_id: i64) -> SmsSettings {
    SmsSettings {
        profile_id,
        host: "sms.example".into(),
        port: 2775,
        mode: Mode::StartTls,
        weight: 0.25,
        secret: vec![0, 1, 2, 255],
        timeout_ms: Some(1500),
    }
}

pub mod v1 {
    use persist::PersistentRecord;
    /// A table as module version 1 declared it.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "evolving")]
    pub struct Evolving {
        #[persist(identity)]
        pub id: i64,
        pub name: String,
        pub legacy: Option<String>,
    }
}

pub mod v2_added {
    use persist::PersistentRecord;
    /// Version 2: a new column with a default, a new nullable one, `legacy` kept.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "evolving")]
    pub struct Evolving {
        #[persist(identity)]
        pub id: i64,
        pub name: String,
        pub legacy: Option<String>,
        #[persist(default = 5, indexed)]
        pub retries: i32,
        pub comment: Option<String>,
    }
}

pub mod v2_type_change {
    use persist::PersistentRecord;
    /// `name` changed type: cannot be migrated in place.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "evolving")]
    pub struct Evolving {
        #[persist(identity)]
        pub id: i64,
        pub name: i64,
        pub legacy: Option<String>,
    }
}

pub mod v2_dropped {
    use persist::PersistentRecord;
    /// `legacy` removed.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "evolving")]
    pub struct Evolving {
        #[persist(identity)]
        pub id: i64,
        pub name: String,
    }
}

pub mod v2_not_null {
    use persist::PersistentRecord;
    /// A new NOT NULL column without a default.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "evolving")]
    pub struct Evolving {
        #[persist(identity)]
        pub id: i64,
        pub name: String,
        pub legacy: Option<String>,
        pub required: String,
    }
}

/// Floats at the edges: a NOT NULL (indexed) and a nullable `f64` column.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct Reading {
    #[persist(identity)]
    pub id: i64,
    pub label: String,
    #[persist(indexed)]
    pub value: f64,
    pub spare: Option<f64>,
}

/// Every kind of finite and infinite `f64` a module may store, by name.
pub fn edge_floats() -> Vec<(&'static str, f64)> {
    vec![
        ("+0.0", 0.0),
        ("-0.0", -0.0),
        ("+inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
        ("smallest subnormal", f64::from_bits(1)),
        ("negative subnormal", -f64::from_bits(1)),
        ("largest subnormal", f64::from_bits(0x000f_ffff_ffff_ffff)),
        ("MIN_POSITIVE", f64::MIN_POSITIVE),
        ("MAX", f64::MAX),
        ("MIN", f64::MIN),
        ("EPSILON", f64::EPSILON),
        ("0.1+0.2", 0.1 + 0.2),
        ("-1", -1.0),
        // Integral values: SQLite keeps those of a REAL column as integers on disk.
        ("1e15", 1e15),
        ("2^53", 9_007_199_254_740_992.0),
        ("2^63", 9_223_372_036_854_775_808.0),
        ("-2^63", -9_223_372_036_854_775_808.0),
    ]
}

/// The value the store keeps for `x`: -0.0 is stored as +0.0, everything
/// else (but NaN, which is refused) bit for bit.
pub fn stored(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// NaNs of every sign and payload: all refused.
pub fn nans() -> Vec<f64> {
    vec![
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7ff0_0000_0000_0001), // signalling
        f64::from_bits(0xfff8_dead_beef_0001), // negative, with a payload
    ]
}

pub mod gauge_v1 {
    use persist::PersistentRecord;
    /// A table before its float columns were added.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "gauge")]
    pub struct Gauge {
        #[persist(identity)]
        pub id: i64,
        pub name: String,
    }
}

pub mod gauge_v2 {
    use persist::PersistentRecord;
    /// Float columns added with a default of -0.0: existing rows get +0.0.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "gauge")]
    pub struct Gauge {
        #[persist(identity)]
        pub id: i64,
        pub name: String,
        #[persist(default = -0.0)]
        pub level: f64,
        #[persist(default = -0.0)]
        pub offset: Option<f64>,
    }
}
