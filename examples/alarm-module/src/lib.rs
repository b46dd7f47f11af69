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
//!
//! It uses only `persist`'s public [`Module`] API: a gateway host
//! (`persist-gateway`) runs it, on one node or on a redundant pair, with no
//! transfer code here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use persist::module::{Module, ModuleContext, ModuleError, ModuleHistory, RuntimeState};
use persist::prelude::*;
use persist::sync::history::HistorySink;
use persist::sync::redundancy::ActivityLevel;
use persist::sync::runtime_state::TypedStateProvider;
use persist::{HistoryItem, RecordEvent, Store, WriteTx};
use serde::{Deserialize, Serialize};

/// How a device is reached.
#[derive(PersistentEnum, Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    /// Modbus over TCP.
    ModbusTcp,
    /// OPC UA.
    #[persist(rename = "opc-ua")]
    OpcUa,
}

/// Who is told about alarms.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(title = "Notification profiles")]
pub struct NotificationProfile {
    /// Assigned by the store.
    #[persist(identity, label = "Id")]
    pub id: i64,
    /// The profile's name, unique.
    #[persist(
        unique,
        descriptive,
        label = "Name",
        help = "How devices refer to this profile; unique."
    )]
    pub name: String,
    /// Whether notifications go out through it.
    #[persist(
        default = true,
        label = "Enabled",
        help = "Whether notifications go out through this profile."
    )]
    pub enabled: bool,
}

/// A device connection with an alarm threshold.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(validate = check_device, title = "Devices")]
pub struct Device {
    /// Assigned by the store.
    #[persist(identity, label = "Id")]
    pub id: i64,
    /// The device's name, unique.
    #[persist(
        unique,
        descriptive,
        label = "Name",
        help = "A unique name for the device."
    )]
    pub name: String,
    /// Its address.
    #[persist(label = "Host", help = "Host name or IP address of the device.")]
    pub host: String,
    /// Its TCP port.
    #[persist(
        default = 502,
        label = "Port",
        help = "TCP port, 1 to 65535 (Modbus: 502)."
    )]
    pub port: i32,
    /// How it is reached.
    #[persist(label = "Protocol")]
    pub protocol: Protocol,
    /// Who is told about its alarms (deleting the profile deletes it).
    #[persist(
        references = NotificationProfile,
        on_delete = "cascade",
        label = "Notification profile",
        help = "Who is told about its alarms; deleting the profile deletes the device."
    )]
    pub profile_id: i64,
    /// A value above this raises an alarm.
    #[persist(
        label = "Alarm above",
        help = "A measured value above this raises an alarm."
    )]
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
#[persist(title = "Tags")]
pub struct Tag {
    /// Assigned by the store.
    #[persist(identity, label = "Id")]
    pub id: i64,
    /// The device that exposes it.
    #[persist(
        references = Device,
        on_delete = "cascade",
        indexed,
        label = "Device",
        help = "The device that exposes the tag; deleting the device deletes it."
    )]
    pub device_id: i64,
    /// Its address on the device.
    #[persist(
        descriptive,
        label = "Address",
        help = "The tag's address on the device."
    )]
    pub address: String,
    /// The factor its raw value is scaled by.
    #[persist(
        default = 1.0,
        label = "Scale",
        help = "The factor the raw value is multiplied by."
    )]
    pub scale: f64,
}

/// One line of the alarm journal (history, delivered on the master).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(title = "Alarm journal")]
pub struct JournalEntry {
    /// Assigned by the store.
    #[persist(identity, label = "Id")]
    pub id: i64,
    /// The node that recorded it.
    #[persist(label = "Origin", help = "The node that recorded the line.")]
    pub origin: String,
    /// Its order on that node.
    #[persist(label = "Sequence", help = "The line's order on its node.")]
    pub seq: i64,
    /// What happened.
    #[persist(descriptive, multiline, label = "Text")]
    pub text: String,
}

/// An alarm of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// The device's name.
    pub device: String,
    /// The value that raised it.
    pub value: f64,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// Whether its notification went out.
    pub notified: bool,
}

/// Changes of the alarm book, posted by the active node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields say what they are
pub enum AlarmUpdate {
    /// An alarm was raised.
    Raised {
        device: i64,
        name: String,
        value: f64,
    },
    /// An operator acknowledged it.
    Acked { device: i64, by: String },
    /// Its notification went out.
    Notified { device: i64 },
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

/// The alarm module on one node: a cheap handle (clones share the module),
/// so a program can keep one to drive it while the gateway runs it.
#[derive(Clone, Default)]
pub struct AlarmModule(Arc<Inner>);

#[derive(Default)]
struct Inner {
    node: OnceLock<String>,
    store: OnceLock<Store>,
    book: AlarmBook,
    state: OnceLock<RuntimeState<AlarmUpdate>>,
    history: OnceLock<ModuleHistory>,
    /// Devices this node is connected to.
    connected: Mutex<BTreeSet<String>>,
    /// Notifications this node sent (to count repeats).
    notifications: AtomicU64,
    activity: Mutex<Option<ActivityLevel>>,
}

impl Module for AlarmModule {
    fn name(&self) -> &'static str {
        "alarms"
    }

    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
        ctx.record::<Tag>()?; // and Device and NotificationProfile, which it references
        ctx.record::<JournalEntry>()?;
        let state = ctx.runtime_state("book", self.0.book.clone())?;
        ctx.history_sink(Journal)?;
        let store = ctx.store();
        let events = ctx.subscribe::<Device>()?;
        let _ = self.0.node.set(ctx.node_id().to_owned());
        let _ = self.0.store.set(store);
        let _ = self.0.state.set(state);
        let _ = self.0.history.set(ctx.history());
        // Follows device config changes (a record listener on its own thread).
        let me = self.clone();
        std::thread::Builder::new()
            .name("alarms: devices".into())
            .spawn(move || {
                let mut events = events;
                while let Ok(ev) = events.recv() {
                    match ev {
                        RecordEvent::Added(d) | RecordEvent::Updated { new: d, .. } => {
                            me.connect(&d.name)
                        }
                        RecordEvent::Deleted(d) => {
                            me.0.connected.lock().unwrap().remove(&d.name);
                        }
                        RecordEvent::Lagged(_) | RecordEvent::Reset => me.reconnect_all(),
                    }
                }
            })
            .map_err(|e| ModuleError::new("alarms", format!("listener thread: {e}")))?;
        Ok(())
    }

    /// Cold connects to nothing, Warm connects but does not act, Active
    /// connects and acts.
    fn activity(&self, level: ActivityLevel) {
        *self.0.activity.lock().unwrap() = Some(level);
        self.reconnect_all();
        if level == ActivityLevel::Active {
            // Taking over: notify only what was never notified.
            for (id, a) in self.0.book.alarms() {
                if !a.notified {
                    self.notify(id, &a.device);
                }
            }
        }
    }

    fn shutdown(&self) {
        self.0.connected.lock().unwrap().clear();
    }
}

impl AlarmModule {
    /// A module not yet registered on a gateway.
    pub fn new() -> AlarmModule {
        AlarmModule::default()
    }

    /// The alarm book (this node's copy).
    pub fn book(&self) -> &AlarmBook {
        &self.0.book
    }

    /// Devices this node is connected to now.
    pub fn connected(&self) -> BTreeSet<String> {
        self.0.connected.lock().unwrap().clone()
    }

    /// Notifications this node has sent.
    pub fn notifications(&self) -> u64 {
        self.0.notifications.load(Ordering::Relaxed)
    }

    /// Items of this node's history waiting for the master.
    pub fn history_buffered(&self) -> usize {
        self.0.history.get().map_or(0, |h| h.buffered())
    }

    fn level(&self) -> ActivityLevel {
        self.0
            .activity
            .lock()
            .unwrap()
            .unwrap_or(ActivityLevel::Undecided)
    }

    fn connect(&self, name: &str) {
        if self.level() >= ActivityLevel::Warm {
            self.0.connected.lock().unwrap().insert(name.to_owned());
        }
    }

    fn reconnect_all(&self) {
        let level = self.level();
        let mut c = self.0.connected.lock().unwrap();
        c.clear();
        if level >= ActivityLevel::Warm {
            if let Some(store) = self.0.store.get() {
                for d in store.list::<Device>().unwrap_or_default() {
                    c.insert(d.name);
                }
            }
        }
    }

    fn active(&self) -> bool {
        self.level() == ActivityLevel::Active
    }

    fn post(&self, u: AlarmUpdate) {
        self.0.book.apply(&u);
        if let Some(s) = self.0.state.get() {
            let _ = s.post(&u);
        }
    }

    fn record(&self, kind: &str, text: String) {
        if let Some(h) = self.0.history.get() {
            let _ = h.record(kind, text.into_bytes());
        }
    }

    fn notify(&self, device: i64, name: &str) {
        self.0.notifications.fetch_add(1, Ordering::Relaxed);
        self.post(AlarmUpdate::Notified { device });
        let node = self.0.node.get().map_or("?", |n| n.as_str());
        self.record(
            "notification",
            format!("{name}: notification sent by {node}"),
        );
    }

    /// A scan of a device's value (acts only on the active node).
    pub fn scan(&self, device: &Device, value: f64) {
        if !self.active()
            || value <= device.alarm_above
            || self.0.book.alarms().contains_key(&device.id)
        {
            return;
        }
        self.post(AlarmUpdate::Raised {
            device: device.id,
            name: device.name.clone(),
            value,
        });
        self.record(
            "alarm",
            format!("{} above {} ({value})", device.name, device.alarm_above),
        );
        self.notify(device.id, &device.name);
    }

    /// An operator acknowledges an alarm (on the active node).
    pub fn acknowledge(&self, device: i64, by: &str) {
        if self.active() {
            self.post(AlarmUpdate::Acked {
                device,
                by: by.into(),
            });
            self.record("ack", format!("device {device} acknowledged by {by}"));
        }
    }
}
