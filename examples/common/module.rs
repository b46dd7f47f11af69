//! A sample gateway module, written as a real one would be: the template a
//! module author copies.
//!
//! - **Config records**: notification profiles and the devices that notify
//!   through them (a reference, cascading).
//! - **Record listeners**: devices connect and disconnect as their config
//!   changes, but only as the node's activity allows (Cold: no connections;
//!   Warm: connected, not acting; Active: connected and acting).
//! - **Runtime state**: the alarm book (raised alarms, acknowledgements, which
//!   notifications went out) carried to the standby, so a failover neither
//!   loses an acknowledgement nor notifies twice.
//! - **History**: an alarm journal, store-and-forward from an active backup.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use persist::prelude::*;
use persist::sync::history::{History, HistorySink};
use persist::sync::redundancy::ActivityLevel;
use persist::sync::runtime_state::{RuntimeStates, TypedStateProvider};
use persist::{HistoryItem, RecordEvent, Store, WriteTx};
use serde::{Deserialize, Serialize};

/// How a device is reached.
#[derive(PersistentEnum, Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    ModbusTcp,
    #[persist(rename = "opc-ua")]
    OpcUa,
}

/// Who is told about alarms.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct NotificationProfile {
    #[persist(identity)]
    pub id: i64,
    #[persist(unique)]
    pub name: String,
    #[persist(default = true)]
    pub enabled: bool,
}

/// A device connection with an alarm threshold.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(validate = check_device)]
pub struct Device {
    #[persist(identity)]
    pub id: i64,
    #[persist(unique)]
    pub name: String,
    pub host: String,
    #[persist(default = 502)]
    pub port: i32,
    pub protocol: Protocol,
    #[persist(references = NotificationProfile, on_delete = "cascade")]
    pub profile_id: i64,
    pub alarm_above: f64,
}

fn check_device(d: &Device) -> Result<(), String> {
    if d.port <= 0 || d.port > 65535 {
        return Err(format!("port {} is not a TCP port", d.port));
    }
    Ok(())
}

/// A tag a device exposes (a gateway has many thousands).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct Tag {
    #[persist(identity)]
    pub id: i64,
    #[persist(references = Device, on_delete = "cascade", indexed)]
    pub device_id: i64,
    pub address: String,
    #[persist(default = 1.0)]
    pub scale: f64,
}

/// One line of the alarm journal (history, delivered on the master).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
pub struct JournalEntry {
    #[persist(identity)]
    pub id: i64,
    pub origin: String,
    pub seq: i64,
    pub text: String,
}

/// Registers the module's record types.
pub fn register(store: &Store) -> persist::Result<()> {
    store.register::<Tag>()?; // and Device and NotificationProfile, which it references
    store.register::<JournalEntry>()
}

/// An alarm of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub device: String,
    pub value: f64,
    pub acked_by: Option<String>,
    pub notified: bool,
}

/// Changes of the alarm book, posted by the active node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AlarmUpdate {
    Raised {
        device: i64,
        name: String,
        value: f64,
    },
    Acked {
        device: i64,
        by: String,
    },
    Notified {
        device: i64,
    },
}

/// The alarm book: the module's runtime state.
#[derive(Clone, Default)]
pub struct AlarmBook(Arc<Mutex<BTreeMap<i64, Alarm>>>);

impl AlarmBook {
    fn apply(&self, u: &AlarmUpdate) {
        let mut b = self.0.lock().unwrap();
        match u {
            AlarmUpdate::Raised {
                device,
                name,
                value,
            } => {
                b.insert(
                    *device,
                    Alarm {
                        device: name.clone(),
                        value: *value,
                        acked_by: None,
                        notified: false,
                    },
                );
            }
            AlarmUpdate::Acked { device, by } => {
                if let Some(a) = b.get_mut(device) {
                    a.acked_by = Some(by.clone());
                }
            }
            AlarmUpdate::Notified { device } => {
                if let Some(a) = b.get_mut(device) {
                    a.notified = true;
                }
            }
        }
    }

    /// The alarms now.
    pub fn alarms(&self) -> BTreeMap<i64, Alarm> {
        self.0.lock().unwrap().clone()
    }
}

impl TypedStateProvider for AlarmBook {
    type State = BTreeMap<i64, Alarm>;
    type Update = AlarmUpdate;
    fn full_state(&self) -> Self::State {
        self.alarms()
    }
    fn apply_full(&self, state: Self::State) -> Result<(), String> {
        *self.0.lock().unwrap() = state;
        Ok(())
    }
    fn apply_update(&self, update: AlarmUpdate) -> Result<(), String> {
        self.apply(&update);
        Ok(())
    }
}

/// Writes history into the journal table.
pub struct Journal;

impl HistorySink for Journal {
    fn deliver(
        &self,
        tx: &mut WriteTx<'_>,
        origin: &str,
        item: &HistoryItem,
    ) -> persist::Result<()> {
        tx.insert(&JournalEntry {
            id: 0,
            origin: origin.to_owned(),
            seq: item.seq as i64,
            text: String::from_utf8_lossy(&item.payload).into_owned(),
        })?;
        Ok(())
    }
}

/// The module on one node.
pub struct Module {
    pub node: String,
    pub store: Store,
    pub book: AlarmBook,
    pub runtime: Arc<RuntimeStates>,
    pub history: Arc<History>,
    /// Devices this node is connected to.
    pub connected: Mutex<BTreeSet<String>>,
    /// Notifications this node sent (to count repeats).
    pub notifications: AtomicU64,
    activity: Mutex<ActivityLevel>,
}

impl Module {
    /// The module for a node's store.
    pub fn new(node: &str, store: Store, history: Arc<History>) -> Arc<Module> {
        let book = AlarmBook::default();
        let runtime = RuntimeStates::new();
        runtime.register_typed("alarms", book.clone());
        Arc::new(Module {
            node: node.into(),
            store,
            book,
            runtime,
            history,
            connected: Mutex::new(BTreeSet::new()),
            notifications: AtomicU64::new(0),
            activity: Mutex::new(ActivityLevel::Undecided),
        })
    }

    /// Follows device config changes (a record listener on its own thread).
    pub fn listen(self: &Arc<Self>) -> persist::Result<()> {
        let mut events = self.store.subscribe::<Device>()?;
        let me = self.clone();
        std::thread::spawn(move || {
            while let Ok(ev) = events.recv() {
                match ev {
                    RecordEvent::Added(d) | RecordEvent::Updated { new: d, .. } => {
                        me.connect(&d.name)
                    }
                    RecordEvent::Deleted(d) => {
                        me.connected.lock().unwrap().remove(&d.name);
                    }
                    RecordEvent::Lagged(_) | RecordEvent::Reset => me.reconnect_all(),
                }
            }
        });
        Ok(())
    }

    fn connect(&self, name: &str) {
        if *self.activity.lock().unwrap() >= ActivityLevel::Warm {
            self.connected.lock().unwrap().insert(name.to_owned());
        }
    }

    fn reconnect_all(&self) {
        let level = *self.activity.lock().unwrap();
        let mut c = self.connected.lock().unwrap();
        c.clear();
        if level >= ActivityLevel::Warm {
            for d in self.store.list::<Device>().unwrap_or_default() {
                c.insert(d.name);
            }
        }
    }

    /// The node's activity changed: Cold connects to nothing, Warm connects
    /// but does not act, Active connects and acts.
    pub fn set_activity(&self, level: ActivityLevel) {
        *self.activity.lock().unwrap() = level;
        self.reconnect_all();
        if level == ActivityLevel::Active {
            // Taking over: notify only what was never notified.
            for (id, a) in self.book.alarms() {
                if !a.notified {
                    self.notify(id, &a.device);
                }
            }
        }
    }

    fn active(&self) -> bool {
        *self.activity.lock().unwrap() == ActivityLevel::Active
    }

    fn post(&self, u: AlarmUpdate) {
        self.book.apply(&u);
        let _ = self.runtime.post_typed("alarms", &u);
    }

    fn notify(&self, device: i64, name: &str) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
        self.post(AlarmUpdate::Notified { device });
        let _ = self.history.record(
            "notification",
            format!("{name}: notification sent by {}", self.node).into_bytes(),
        );
    }

    /// A scan of a device's value (acts only on the active node).
    pub fn scan(&self, device: &Device, value: f64) {
        if !self.active()
            || value <= device.alarm_above
            || self.book.alarms().contains_key(&device.id)
        {
            return;
        }
        self.post(AlarmUpdate::Raised {
            device: device.id,
            name: device.name.clone(),
            value,
        });
        let _ = self.history.record(
            "alarm",
            format!("{} above {} ({value})", device.name, device.alarm_above).into_bytes(),
        );
        self.notify(device.id, &device.name);
    }

    /// An operator acknowledges an alarm.
    pub fn acknowledge(&self, device: i64, by: &str) {
        if self.active() {
            self.post(AlarmUpdate::Acked {
                device,
                by: by.into(),
            });
            let _ = self.history.record(
                "ack",
                format!("device {device} acknowledged by {by}").into_bytes(),
            );
        }
    }
}
