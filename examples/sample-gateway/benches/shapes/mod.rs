//! The sample module's record shapes (examples/alarm-module) as the
//! replication benchmark and `persist-node --tags` both register them:
//! devices that notify through a profile (a reference, a unique name) and the
//! tags they expose (a reference with a plain index, a long text column).
//! Shared by `#[path]` so both ends register the very same definitions.

use persist::{PersistentRecord, Store, WriteTx};

/// Who is told about alarms.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct NotificationProfile {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// Unique.
    #[persist(unique)]
    pub name: String,
    /// Whether notifications go out through it.
    #[persist(default = true)]
    pub enabled: bool,
}

/// A device connection.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct Device {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// Unique.
    #[persist(unique)]
    pub name: String,
    /// Its address.
    pub host: String,
    /// Its TCP port.
    #[persist(default = 502)]
    pub port: i32,
    /// Who is told about its alarms.
    #[persist(references = NotificationProfile, on_delete = "cascade")]
    pub profile_id: i64,
    /// A value above this raises an alarm.
    pub alarm_above: f64,
}

/// A tag a device exposes.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct Tag {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// The device that exposes it.
    #[persist(references = Device, on_delete = "cascade", indexed)]
    pub device_id: i64,
    /// Its address on the device.
    pub address: String,
    /// The factor its raw value is scaled by.
    #[persist(default = 1.0)]
    pub scale: f64,
    /// The long text column: an operator's description of the point.
    pub description: String,
}

/// Notification profiles every shaped store starts with.
pub const PROFILES: i64 = 10;

/// Registers the three tables.
pub fn register(s: &Store) -> persist::Result<()> {
    s.register::<NotificationProfile>()?;
    s.register::<Device>()?;
    s.register::<Tag>()?;
    Ok(())
}

/// Inserts the profiles if the store has none.
#[allow(dead_code)] // persist-node only registers
pub fn seed_profiles(s: &Store) -> persist::Result<()> {
    if !s.list::<NotificationProfile>()?.is_empty() {
        return Ok(());
    }
    s.write(|tx| {
        for p in 1..=PROFILES {
            tx.insert(&NotificationProfile {
                id: 0,
                name: format!("profile-{p}"),
                enabled: true,
            })?;
        }
        Ok(())
    })
}

/// Writes transaction number `t` of `rows` rows: one device per 50 rows (at
/// least one) and 49 tags each (the rest of the rows), as a configuration
/// import does. Device names are unique per `t`.
#[allow(dead_code)]
pub fn write_tx(tx: &mut WriteTx<'_>, t: u64, rows: u64) -> persist::Result<()> {
    let devices = (rows / 50).max(1);
    let first = t * devices;
    let batch: Vec<Device> = (0..devices)
        .map(|d| {
            let n = first + d;
            Device {
                id: 0,
                name: format!("plc-{n:08}"),
                host: format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256),
                port: 502,
                profile_id: (n as i64 % PROFILES) + 1,
                alarm_above: 80.5,
            }
        })
        .collect();
    let keys = tx.insert_many(&batch)?;
    let tags = rows.saturating_sub(devices);
    let per_device = tags.div_ceil(devices).max(1);
    let batch: Vec<Tag> = (0..tags)
        .map(|i| Tag {
            id: 0,
            device_id: keys[(i / per_device) as usize],
            address: format!("ns=2;s=Line{t}.Cell{}.Register{i:04}", i % 7),
            scale: 0.1,
            description: description(t, i),
        })
        .collect();
    tx.insert_many(&batch)?;
    Ok(())
}

/// A ~240-byte description.
#[allow(dead_code)]
pub fn description(t: u64, i: u64) -> String {
    format!(
        "Holding register {i} of cell {}: motor current in tenths of an ampere, sampled every \
         500 ms, alarms above the device threshold; commissioned on line {t}, see the wiring \
         diagram sheet {} for the terminal layout.",
        i % 7,
        i % 97
    )
}
