//! A module's configuration as persistent records, end to end.
//!
//! `cargo run --release --example records`
//!
//! Declares records the way a gateway module would, stores them in embedded
//! SQLite, reacts to changes through a listener, shows the replication log
//! that every write produced, and replays that log into a second store (what
//! the backup gateway does) to show both end up identical.

use std::time::{Duration, Instant};

use persist::prelude::*;
use persist::{Error, RecordEvent, Store};

/// How a device is reached.
#[derive(PersistentEnum, Debug, Clone, Copy, PartialEq)]
enum Protocol {
    ModbusTcp,
    #[persist(rename = "opc-ua")]
    OpcUa,
}

/// An alarm notification profile.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(validate = check_profile)]
struct NotificationProfile {
    #[persist(identity)]
    id: i64,
    #[persist(unique)]
    name: String,
    #[persist(default = true)]
    enabled: bool,
}

fn check_profile(p: &NotificationProfile) -> Result<(), String> {
    if p.name.trim().is_empty() {
        return Err("a profile needs a name".into());
    }
    Ok(())
}

/// A device connection, notifying through a profile.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(unique)]
    name: String,
    host: String,
    #[persist(default = 502)]
    port: i32,
    protocol: Protocol,
    #[persist(references = NotificationProfile, on_delete = "cascade")]
    profile_id: i64,
    scan_ms: Option<i64>,
}

fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Unavailable(e.to_string()))?;
    let master_path = dir.path().join("master.db");
    println!(
        "persist: records example (SQLite at {})\n",
        master_path.display()
    );

    let master = Store::open_sqlite(&master_path)?;
    master.register::<Device>()?; // registers NotificationProfile first
    println!(
        "registered tables {:?}, schema fingerprint {:032x}",
        master.tables(),
        master.schema_fingerprint()
    );

    // A module listens for config changes (e.g. to connect devices).
    let mut devices = master.subscribe::<Device>()?;
    let listener = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(event) = devices.recv_timeout(Duration::from_secs(2)) {
            seen.push(match event {
                RecordEvent::Added(d) => format!("connect {} at {}:{}", d.name, d.host, d.port),
                RecordEvent::Updated { old, new } => {
                    format!("reconnect {}: port {} -> {}", new.name, old.port, new.port)
                }
                RecordEvent::Deleted(d) => format!("disconnect {}", d.name),
                RecordEvent::Lagged(n) => format!("missed {n} commits: re-read all devices"),
                RecordEvent::Reset => "replaced by a full resync: re-read all devices".to_string(),
            });
        }
        seen
    });

    // One transaction: a profile and two devices, all or nothing.
    let (line1, line2) = master.write(|tx| {
        let ops = tx.insert(&NotificationProfile {
            id: 0,
            name: "operations".into(),
            enabled: true,
        })?;
        let plc = Device {
            id: 0,
            name: "line-1 PLC".into(),
            host: "10.0.0.10".into(),
            port: 502,
            protocol: Protocol::ModbusTcp,
            profile_id: ops,
            scan_ms: Some(250),
        };
        let a = tx.insert(&plc)?;
        let b = tx.insert(&Device {
            name: "line-2 OPC".into(),
            host: "10.0.0.11".into(),
            port: 4840,
            protocol: Protocol::OpcUa,
            ..plc
        })?;
        Ok((a, b))
    })?;
    let mut dev = master.get::<Device>(line1)?.expect("just inserted");
    dev.port = 5020;
    master.update(&dev)?;
    master.delete::<Device>(line2)?;

    // Bad input gets a specific error and changes nothing.
    let blank = NotificationProfile {
        id: 0,
        name: " ".into(),
        enabled: true,
    };
    println!(
        "\ninvalid profile      -> {}",
        master.insert(&blank).unwrap_err()
    );
    let dup = NotificationProfile {
        id: 0,
        name: "operations".into(),
        enabled: true,
    };
    println!(
        "duplicate name       -> {}",
        master.insert(&dup).unwrap_err()
    );
    let orphan = Device {
        id: 0,
        profile_id: 99,
        name: "orphan".into(),
        ..dev.clone()
    };
    println!(
        "dangling reference   -> {}",
        master.insert(&orphan).unwrap_err()
    );

    let c = Device::columns();
    let fast = master
        .query::<Device>()
        .filter(c.scan_ms.lt(Some(500)))
        .order_by(c.name.asc())
        .load()?;
    println!(
        "\ndevices scanning faster than 500 ms: {:?}",
        fast.iter().map(|d| &d.name).collect::<Vec<_>>()
    );

    println!("\nreplication log (one entry per committed transaction):");
    for entry in master.log_iter(1, 100) {
        let entry = entry?;
        let decode = |source| Error::Decode {
            context: format!("log entry {}", entry.position),
            source,
        };
        let body = entry.plain_body().map_err(decode)?;
        let changes = persist::log::decode_body(&body).map_err(decode)?;
        let summary: Vec<String> = changes
            .iter()
            .map(|c| format!("{} {}", c.op.name(), c.table))
            .collect();
        println!(
            "  #{} ({} bytes, digest {}): {}",
            entry.position,
            entry.body.len(),
            entry.digest,
            summary.join(", ")
        );
    }

    println!("\nthe module's listener saw:");
    for line in listener.join().expect("listener thread") {
        println!("  {line}");
    }

    // What the backup does with the log: apply every entry, verify the digest.
    let backup = Store::open_sqlite(dir.path().join("backup.db"))?;
    backup.register::<Device>()?;
    let started = Instant::now();
    for entry in master.log_iter(1, 100) {
        backup.apply(&entry?)?;
    }
    println!(
        "\nbackup replayed {} entries in {:?}: position {} digest {} (master: position {} digest {})",
        backup.position(),
        started.elapsed(),
        backup.position(),
        backup.digest(),
        master.position(),
        master.digest()
    );
    assert_eq!(backup.list::<Device>()?, master.list::<Device>()?);
    println!(
        "full verification on the backup: {}",
        if backup.verify()?.is_consistent() {
            "consistent"
        } else {
            "DIVERGED"
        }
    );
    Ok(())
}
