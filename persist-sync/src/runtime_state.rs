//! Runtime state: a module's live state (active alarms and their
//! acknowledgements, say) carried from the active node to the standby, so a
//! failover neither loses it nor repeats what it already did.
//!
//! A module registers [`StateProvider`]s by id. The active node posts updates
//! with [`RuntimeStates::post`]; the standby applies them in order. A full
//! state goes across when a link comes up and whenever the standby has fallen
//! further behind than the bounded update queue (default
//! [`DEFAULT_QUEUE`] updates); otherwise only the updates travel. Every
//! message carries the sender's epoch, and a node refuses runtime state from
//! an older epoch than its own. A provider that returns an error or panics is
//! isolated: the error is reported in [`RuntimeStates::errors`], the other
//! providers carry on, and a full state repairs its copy at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::protocol::Message;

/// Updates kept per provider for a standby that is behind; past this, it gets a full state.
pub const DEFAULT_QUEUE: usize = 200;

/// A source and sink of one kind of runtime state, with raw bytes.
///
/// Implement [`TypedStateProvider`] instead to work with serde types.
pub trait StateProvider: Send + Sync + 'static {
    /// The whole current state (on the active node).
    fn full_state(&self) -> Result<Vec<u8>, String>;
    /// Replaces the local state with a full state (on the standby).
    fn apply_full(&self, state: &[u8]) -> Result<(), String>;
    /// Applies one update, in order (on the standby).
    fn apply_update(&self, update: &[u8]) -> Result<(), String>;
}

/// A [`StateProvider`] over serde types: `State` for full transfers, `Update`
/// for increments. Encoded with postcard.
pub trait TypedStateProvider: Send + Sync + 'static {
    /// The full state.
    type State: Serialize + DeserializeOwned;
    /// One update.
    type Update: Serialize + DeserializeOwned;
    /// The whole current state.
    fn full_state(&self) -> Self::State;
    /// Replaces the local state.
    fn apply_full(&self, state: Self::State) -> Result<(), String>;
    /// Applies one update.
    fn apply_update(&self, update: Self::Update) -> Result<(), String>;
}

struct Typed<P>(P);

impl<P: TypedStateProvider> StateProvider for Typed<P> {
    fn full_state(&self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(&self.0.full_state()).map_err(|e| e.to_string())
    }
    fn apply_full(&self, state: &[u8]) -> Result<(), String> {
        let s = postcard::from_bytes(state).map_err(|e| format!("undecodable full state: {e}"))?;
        self.0.apply_full(s)
    }
    fn apply_update(&self, update: &[u8]) -> Result<(), String> {
        let u = postcard::from_bytes(update).map_err(|e| format!("undecodable update: {e}"))?;
        self.0.apply_update(u)
    }
}

struct Slot {
    provider: Arc<dyn StateProvider>,
    /// Sequence number of the last posted update.
    seq: u64,
    /// The most recent updates, contiguous, ending at `seq`.
    queue: VecDeque<(u64, Arc<Vec<u8>>)>,
    /// On the standby: the last sequence applied from the peer.
    applied: Option<u64>,
    /// On the standby: a gap or a failure was seen; waiting for a full state.
    broken: bool,
}

/// What a provider has to send to one session.
struct Due {
    id: String,
    provider: Arc<dyn StateProvider>,
    seq: u64,
    pending: Vec<(u64, Arc<Vec<u8>>)>,
}

/// What one session has sent of each provider.
#[derive(Debug, Default)]
pub struct Cursor {
    sent: BTreeMap<String, u64>,
}

/// The runtime state registry of a node.
pub struct RuntimeStates {
    slots: Mutex<BTreeMap<String, Slot>>,
    active: AtomicBool,
    /// The node's epoch (the claim it holds).
    epoch: Mutex<u64>,
    /// The epoch of the state this node holds: when it was posted here, or
    /// the epoch of the active node it came from. Newer state wins.
    state_epoch: Mutex<u64>,
    /// Providers whose full state this node asks its peer for (it stepped
    /// down, or its copy broke) or was asked to send.
    ask: Mutex<Vec<String>>,
    queue_len: usize,
    changed: watch::Sender<u64>,
    errors: Mutex<BTreeMap<String, (u64, String)>>,
}

impl std::fmt::Debug for RuntimeStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeStates")
            .field(
                "providers",
                &self.slots.lock().keys().cloned().collect::<Vec<_>>(),
            )
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match crate::panic::catching(f) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(format!("{what} panicked: {msg}"))
        }
    }
}

impl RuntimeStates {
    /// An empty registry with the default queue length.
    pub fn new() -> Arc<Self> {
        Self::with_queue(DEFAULT_QUEUE)
    }

    /// An empty registry keeping `queue_len` updates per provider.
    pub fn with_queue(queue_len: usize) -> Arc<Self> {
        Arc::new(RuntimeStates {
            slots: Mutex::new(BTreeMap::new()),
            active: AtomicBool::new(false),
            epoch: Mutex::new(0),
            state_epoch: Mutex::new(0),
            ask: Mutex::new(Vec::new()),
            queue_len: queue_len.max(1),
            changed: watch::Sender::new(0),
            errors: Mutex::new(BTreeMap::new()),
        })
    }

    /// Registers a raw provider under `id` (replacing one of the same id).
    pub fn register(&self, id: &str, provider: impl StateProvider) {
        self.slots.lock().insert(
            id.to_owned(),
            Slot {
                provider: Arc::new(provider),
                seq: 0,
                queue: VecDeque::new(),
                applied: None,
                broken: false,
            },
        );
    }

    /// Registers a typed provider under `id`.
    pub fn register_typed(&self, id: &str, provider: impl TypedStateProvider) {
        self.register(id, Typed(provider));
    }

    /// Posts an update of provider `id` (on the active node; a standby's
    /// posts are refused, since its state comes from the active node).
    pub fn post(&self, id: &str, update: Vec<u8>) -> Result<(), String> {
        if !self.active.load(Ordering::Acquire) {
            return Err("this node is not active: runtime state flows from the active node".into());
        }
        let mut slots = self.slots.lock();
        let slot = slots
            .get_mut(id)
            .ok_or_else(|| format!("no runtime state provider {id}"))?;
        let epoch = *self.epoch.lock();
        let mut se = self.state_epoch.lock();
        *se = (*se).max(epoch);
        drop(se);
        slot.seq += 1;
        slot.queue.push_back((slot.seq, Arc::new(update)));
        while slot.queue.len() > self.queue_len {
            slot.queue.pop_front();
        }
        drop(slots);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Posts a typed update.
    pub fn post_typed<U: Serialize>(&self, id: &str, update: &U) -> Result<(), String> {
        self.post(
            id,
            postcard::to_allocvec(update).map_err(|e| e.to_string())?,
        )
    }

    /// The last error of each provider that failed, by provider id, with
    /// how many times it failed (kept for operators after a full state
    /// repaired it).
    pub fn errors(&self) -> BTreeMap<String, (u64, String)> {
        self.errors.lock().clone()
    }

    /// The ids of the registered providers, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.slots.lock().keys().cloned().collect()
    }

    /// Updates held in the bounded queues (all providers), for operators.
    pub fn queued(&self) -> usize {
        self.slots.lock().values().map(|s| s.queue.len()).sum()
    }

    /// Whether this node is the active one (set by the redundancy runtime).
    pub fn set_active(&self, active: bool, epoch: u64) {
        *self.epoch.lock() = epoch;
        let was = self.active.swap(active, Ordering::AcqRel);
        if active && !was {
            // Becoming active: the local state is the truth from now on, and
            // sequence numbers continue from what was applied.
            for slot in self.slots.lock().values_mut() {
                slot.seq = slot.seq.max(slot.applied.unwrap_or(0));
                slot.queue.clear();
                slot.broken = false;
            }
        }
        if was && !active {
            // Stepping down: the new active node may hold newer state; ask for it.
            let ids: Vec<String> = self.slots.lock().keys().cloned().collect();
            self.ask
                .lock()
                .extend(ids.into_iter().map(|id| format!("?{id}")));
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Resolves when something may be sendable.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn fail(&self, id: &str, e: String) {
        tracing::warn!(provider = id, "runtime state: {e}");
        let mut errors = self.errors.lock();
        let entry = errors.entry(id.to_owned()).or_insert((0, String::new()));
        entry.0 += 1;
        entry.1 = e;
    }

    /// What a session should send now (only the active node sends).
    pub(crate) fn outgoing(&self, cursor: &mut Cursor) -> Vec<Message> {
        let mut out = Vec::new();
        let asks: Vec<String> = std::mem::take(&mut *self.ask.lock());
        let active = self.active.load(Ordering::Acquire);
        for a in asks {
            if let Some(id) = a.strip_prefix('?') {
                out.push(Message::RuntimeResend {
                    provider: id.to_owned(),
                });
            } else if let Some(id) = a.strip_prefix('!') {
                // Asked for a full state: answer with the freshest state held,
                // active or not (a backup that just handed back has it).
                cursor.sent.remove(id);
                if !active {
                    if let Some(m) = self.full_message(id, *self.state_epoch.lock()) {
                        out.push(m);
                    }
                }
            }
        }
        if !active {
            cursor.sent.clear();
            return out;
        }
        let epoch = *self.epoch.lock();
        let slots: Vec<Due> = {
            let slots = self.slots.lock();
            slots
                .iter()
                .map(|(id, s)| {
                    let after = cursor.sent.get(id).copied();
                    Due {
                        id: id.clone(),
                        provider: s.provider.clone(),
                        seq: s.seq,
                        pending: s
                            .queue
                            .iter()
                            .filter(|(q, _)| after.is_some_and(|a| *q > a))
                            .cloned()
                            .collect(),
                    }
                })
                .collect()
        };
        for Due {
            id,
            provider,
            seq,
            pending,
        } in slots
        {
            let sent = cursor.sent.get(&id).copied();
            // A full state on a new link, or when the queue no longer reaches back.
            let needs_full = match sent {
                None => true,
                Some(s) => s < seq && pending.first().is_none_or(|(first, _)| *first != s + 1),
            };
            if needs_full {
                match guarded(&format!("provider {id} full_state"), || {
                    provider.full_state()
                }) {
                    Ok(state) => {
                        out.push(Message::RuntimeFull {
                            provider: id.clone(),
                            epoch,
                            seq,
                            state,
                        });
                        cursor.sent.insert(id, seq);
                    }
                    Err(e) => self.fail(&id, e),
                }
                continue;
            }
            for (q, update) in pending {
                out.push(Message::RuntimeUpdate {
                    provider: id.clone(),
                    epoch,
                    seq: q,
                    update: update.to_vec(),
                });
                cursor.sent.insert(id.clone(), q);
            }
        }
        out
    }

    fn full_message(&self, id: &str, epoch: u64) -> Option<Message> {
        let (provider, seq) = {
            let slots = self.slots.lock();
            let s = slots.get(id)?;
            (s.provider.clone(), s.seq.max(s.applied.unwrap_or(0)))
        };
        match guarded(&format!("provider {id} full_state"), || {
            provider.full_state()
        }) {
            Ok(state) => Some(Message::RuntimeFull {
                provider: id.to_owned(),
                epoch,
                seq,
                state,
            }),
            Err(e) => {
                self.fail(id, e);
                None
            }
        }
    }

    /// Applies a runtime message from the peer. State from an older epoch
    /// than the state held here is refused; newer state is applied even on
    /// an active node (after a cut link, the higher claim's state wins).
    /// Returns a resend request when a gap or a failure needs a full state.
    pub(crate) fn incoming(&self, msg: &Message) -> Option<Message> {
        let (id, epoch, seq, full, bytes) = match msg {
            Message::RuntimeFull {
                provider,
                epoch,
                seq,
                state,
            } => (provider, *epoch, *seq, true, state),
            Message::RuntimeUpdate {
                provider,
                epoch,
                seq,
                update,
            } => (provider, *epoch, *seq, false, update),
            _ => return None,
        };
        let held = *self.state_epoch.lock();
        let active_here = self.active.load(Ordering::Acquire);
        if epoch < held || (active_here && epoch <= *self.epoch.lock()) {
            self.fail(id, format!("refused runtime state of epoch {epoch} (this node holds state of epoch {held})"));
            return None;
        }
        let provider = {
            let mut slots = self.slots.lock();
            let Some(slot) = slots.get_mut(id) else {
                drop(slots);
                self.fail(
                    id,
                    "the peer sends state for a provider not registered here".into(),
                );
                return None;
            };
            if !full && (slot.broken || slot.applied.is_none_or(|a| seq != a + 1)) {
                if !slot.broken {
                    slot.broken = true;
                    return Some(Message::RuntimeResend {
                        provider: id.clone(),
                    });
                }
                return None;
            }
            slot.provider.clone()
        };
        let r = if full {
            guarded(&format!("provider {id} apply_full"), || {
                provider.apply_full(bytes)
            })
        } else {
            guarded(&format!("provider {id} apply_update"), || {
                provider.apply_update(bytes)
            })
        };
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(id)?;
        match r {
            Ok(()) => {
                slot.applied = Some(seq);
                slot.seq = seq;
                slot.broken = false;
                drop(slots);
                let mut se = self.state_epoch.lock();
                *se = (*se).max(epoch);
                None
            }
            Err(e) => {
                slot.broken = true;
                drop(slots);
                self.fail(id, e);
                Some(Message::RuntimeResend {
                    provider: id.clone(),
                })
            }
        }
    }

    /// The peer asks for a full state of `provider` (it stepped down, or its
    /// copy broke).
    pub(crate) fn resend(&self, cursor: &mut Cursor, provider: &str) {
        cursor.sent.remove(provider);
        self.ask.lock().push(format!("!{provider}"));
        self.changed.send_modify(|n| *n += 1);
    }
}
