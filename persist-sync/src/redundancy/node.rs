//! The redundancy runtime of one node: drives the [`Machine`] from the sync
//! link's heartbeats and its own timers, records claims durably, gates config
//! writes by role, and publishes the node's [`RedundancyState`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use persist_core::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::machine::{ActivityLevel, Effect, Machine, PeerView, RedundancySettings};
use crate::protocol::NodeRole;
use crate::transport::{Acceptor, Dialer};
use crate::worker::backup::{start_backup, BackupHandle};
use crate::worker::master::{start_master, MasterHandle};
use crate::worker::{Heard, LinkStatus, SyncConfig};

/// What module code sees of redundancy, at any time.
#[derive(Debug, Clone, PartialEq)]
pub struct RedundancyState {
    /// This node's configured role.
    pub role: NodeRole,
    /// This node's activity.
    pub activity: ActivityLevel,
    /// The pair's epoch as this node knows it.
    pub epoch: u64,
    /// The node this node holds active.
    pub active_node: Option<String>,
    /// Whether the peer is connected on the sync link.
    pub peer_connected: bool,
    /// When the pair was last in sync.
    pub last_sync: Option<SystemTime>,
    /// On the master: log entries the backup has not acknowledged. On the
    /// backup: entries the master announced that are not applied here yet.
    pub pending_updates: u64,
    /// The last error (sync link, refusal, or a claim that could not be stored).
    pub last_error: Option<String>,
}

enum Command {
    Switchover(oneshot::Sender<Result<(), String>>),
    Handback(oneshot::Sender<Result<(), String>>),
}

#[derive(Default)]
struct Blocking {
    state: Mutex<Option<(u64, RedundancyState)>>,
    changed: Condvar,
}

/// A running node.
pub struct NodeHandle {
    probes: Mutex<Vec<JoinHandle<()>>>,
    runtime: Option<Arc<crate::runtime_state::RuntimeStates>>,
    store: Store,
    state: watch::Receiver<RedundancyState>,
    blocking: Arc<Blocking>,
    commands: mpsc::Sender<Command>,
    master: Option<Arc<MasterHandle>>,
    backup: Option<BackupHandle>,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Starts the master node of a pair on the current tokio runtime.
pub fn start_master_node<A: Acceptor>(
    store: Store,
    settings: RedundancySettings,
    acceptor: A,
    sync: SyncConfig,
) -> std::io::Result<NodeHandle> {
    let (sync, heard) = prepare(&store, &settings, sync);
    let runtime = sync.runtime.clone();
    let master = Arc::new(start_master(store.clone(), acceptor, sync)?);
    Ok(spawn_driver(
        store,
        settings,
        heard,
        Some(master),
        None,
        runtime,
    ))
}

/// Starts the backup node of a pair on the current tokio runtime.
pub fn start_backup_node<D: Dialer>(
    store: Store,
    settings: RedundancySettings,
    dialer: D,
    sync: SyncConfig,
) -> NodeHandle {
    let (sync, heard) = prepare(&store, &settings, sync);
    let runtime = sync.runtime.clone();
    let backup = start_backup(store.clone(), dialer, sync);
    spawn_driver(store, settings, heard, None, Some(backup), runtime)
}

fn prepare(
    store: &Store,
    settings: &RedundancySettings,
    mut sync: SyncConfig,
) -> (SyncConfig, watch::Receiver<Option<Heard>>) {
    // Config writes only on the master, whatever the activity.
    store.set_write_gate(match settings.role {
        NodeRole::Backup => Some("this node is the backup; write to the master".into()),
        NodeRole::Master | NodeRole::Independent => None,
    });
    let (tx, rx) = watch::channel(None);
    sync.heard = Some(tx);
    sync.heartbeat_interval = settings.heartbeat_interval;
    // A link silent for the failover timeout is dead for sync too.
    sync.peer_timeout = settings
        .failover_timeout
        .max(settings.heartbeat_interval * 2);
    (sync, rx)
}

fn spawn_driver(
    store: Store,
    settings: RedundancySettings,
    heard: watch::Receiver<Option<Heard>>,
    master: Option<Arc<MasterHandle>>,
    backup: Option<BackupHandle>,
    runtime: Option<Arc<crate::runtime_state::RuntimeStates>>,
) -> NodeHandle {
    let machine = Machine::new(settings, store.claim(), Instant::now());
    let link = match (&master, &backup) {
        (Some(m), _) => LinkSource::Master(m.clone()),
        (_, Some(b)) => LinkSource::Backup(b.watch_status()),
        _ => LinkSource::None,
    };
    let initial = describe(&machine, &store, &link, None);
    let (state_tx, state) = watch::channel(initial.clone());
    let blocking = Arc::new(Blocking::default());
    *blocking.state.lock() = Some((0, initial));
    let (commands, rx) = mpsc::channel(8);
    let driver = tokio::spawn(drive(Driver {
        machine,
        store: store.clone(),
        heard,
        commands: rx,
        state: state_tx,
        blocking: blocking.clone(),
        link,
        runtime: runtime.clone(),
    }));
    NodeHandle {
        probes: Mutex::new(Vec::new()),
        runtime,
        store,
        state,
        blocking,
        commands,
        master,
        backup,
        driver,
    }
}

enum LinkSource {
    Master(Arc<MasterHandle>),
    Backup(watch::Receiver<LinkStatus>),
    None,
}

impl LinkSource {
    fn status(&self) -> Option<LinkStatus> {
        match self {
            LinkSource::Master(m) => Some(m.status()),
            LinkSource::Backup(b) => Some(b.borrow().clone()),
            LinkSource::None => None,
        }
    }
}

fn describe(
    m: &Machine,
    store: &Store,
    link: &LinkSource,
    error: Option<String>,
) -> RedundancyState {
    let status = link.status().unwrap_or_default();
    let pending = match m.settings().role {
        NodeRole::Master => store.position().saturating_sub(status.peer_acked),
        NodeRole::Backup => 0,
        NodeRole::Independent => 0,
    };
    RedundancyState {
        role: m.settings().role,
        activity: m.activity(Instant::now()),
        epoch: m.claim().epoch,
        active_node: m.claim().active.clone(),
        peer_connected: status.connected,
        last_sync: status.last_sync,
        pending_updates: pending,
        last_error: error
            .or_else(|| {
                (m.settings().role == NodeRole::Master)
                    .then(|| store.write_gate())
                    .flatten()
            })
            .or(status.last_error),
    }
}

/// Everything the driver task owns.
struct Driver {
    machine: Machine,
    store: Store,
    heard: watch::Receiver<Option<Heard>>,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<RedundancyState>,
    blocking: Arc<Blocking>,
    link: LinkSource,
    runtime: Option<Arc<crate::runtime_state::RuntimeStates>>,
}

async fn drive(d: Driver) {
    let Driver {
        mut machine,
        store,
        mut heard,
        mut commands,
        state,
        blocking,
        link,
        runtime,
    } = d;
    if let Some(rt) = &runtime {
        let s = state.borrow().clone();
        rt.set_active(s.activity == ActivityLevel::Active, s.epoch);
    }
    let mut error: Option<String> = None;
    let mut pending_position = 0u64;
    let mut refresh = tokio::time::interval(machine.settings().heartbeat_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = machine.deadline().map(tokio::time::Instant::from_std);
        let effects = tokio::select! {
            changed = heard.changed() => {
                if changed.is_err() {
                    return;
                }
                let h = heard.borrow_and_update().clone();
                match h {
                    Some(h) => {
                        pending_position = h.position;
                        let view = PeerView {
                            node_id: h.node_id,
                            role: h.role,
                            claim: h.claim,
                            caught_up: store.position() >= h.position,
                            announced: h.announced,
                        };
                        machine.heard(h.at, view)
                    }
                    None => Vec::new(),
                }
            }
            _ = sleep_until_opt(deadline) => machine.tick(Instant::now()),
            cmd = commands.recv() => match cmd {
                Some(Command::Switchover(reply)) => {
                    let r = machine.request_switchover();
                    let effects = r.clone().unwrap_or_default();
                    let _ = reply.send(r.map(|_| ()));
                    effects
                }
                Some(Command::Handback(reply)) => {
                    let r = machine.request_handback();
                    let effects = r.clone().unwrap_or_default();
                    let _ = reply.send(r.map(|_| ()));
                    effects
                }
                None => return,
            },
            _ = refresh.tick() => Vec::new(),
        };
        for effect in effects {
            match effect {
                Effect::Claim(claim) => {
                    // Durable before it is acted on or announced.
                    if let Err(e) = store.set_claim(&claim) {
                        tracing::error!("cannot record claim {claim:?}: {e}");
                        error = Some(format!("cannot record claim: {e}"));
                    } else {
                        tracing::info!(epoch = claim.epoch, active = ?claim.active, "redundancy claim");
                    }
                }
            }
        }
        let mut next = describe(&machine, &store, &link, error.clone());
        if let Some(rt) = &runtime {
            if state.borrow().activity != next.activity || state.borrow().epoch != next.epoch {
                rt.set_active(next.activity == ActivityLevel::Active, next.epoch);
            }
        }
        if next.role == NodeRole::Backup {
            next.pending_updates = pending_position.saturating_sub(store.position());
        }
        if *state.borrow() != next {
            state.send_replace(next.clone());
            let mut b = blocking.state.lock();
            let version = b.as_ref().map_or(0, |(v, _)| v + 1);
            *b = Some((version, next));
            blocking.changed.notify_all();
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl NodeHandle {
    /// The node's redundancy state now.
    pub fn state(&self) -> RedundancyState {
        self.state.borrow().clone()
    }

    /// State changes, for async module code.
    pub fn watch(&self) -> watch::Receiver<RedundancyState> {
        self.state.clone()
    }

    /// For blocking module code: waits until the state differs from
    /// `version` (pass 0 first, then the returned version), at most `timeout`.
    pub fn wait_state_blocking(&self, version: u64, timeout: Duration) -> (u64, RedundancyState) {
        let deadline = Instant::now() + timeout;
        let mut b = self.blocking.state.lock();
        loop {
            if let Some((v, s)) = b.as_ref() {
                if *v != version {
                    return (*v, s.clone());
                }
            }
            if self
                .blocking
                .changed
                .wait_until(&mut b, deadline)
                .timed_out()
            {
                let (v, s) = b.clone().expect("initialized at start");
                return (v, s);
            }
        }
    }

    /// The runtime state registry given in the sync settings, if any.
    pub fn runtime(&self) -> Option<&Arc<crate::runtime_state::RuntimeStates>> {
        self.runtime.as_ref()
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The master side of the sync link (master nodes).
    pub fn master(&self) -> Option<&MasterHandle> {
        self.master.as_deref()
    }

    /// The backup side of the sync link (backup nodes).
    pub fn backup(&self) -> Option<&BackupHandle> {
        self.backup.as_ref()
    }

    /// Planned switchover, on the active master: the backup takes over
    /// (e.g. before upgrading the master). Nothing is lost: the backup holds
    /// everything it acknowledged, and the master keeps serving its log.
    pub async fn request_switchover(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Switchover(tx))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await.map_err(|_| "node stopped".to_string())?
    }

    /// Handback, on the active backup (manual recovery): the master takes over again.
    pub async fn request_handback(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Handback(tx))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await.map_err(|_| "node stopped".to_string())?
    }

    /// On a master: dials the configured peer every `every` to make sure it
    /// is not a master too. If it is, both nodes close their write gates
    /// (config writes fail with `Error::NotMaster` naming the other node) and
    /// report it in `last_error`, until an operator fixes the configuration
    /// and restarts them: two masters must never both accept config writes.
    pub fn probe_peer<D: Dialer>(&self, dialer: D, sync: SyncConfig, every: Duration) {
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match crate::worker::master::probe_peer(&dialer, &store, &sync).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => tracing::debug!("peer probe: {e}"),
                }
            }
        });
        self.probes.lock().push(task);
    }

    /// Stops the node.
    pub async fn shutdown(mut self) {
        self.driver.abort();
        if let Some(b) = self.backup.take() {
            b.shutdown().await;
        }
        if let Some(m) = self.master.take() {
            if let Ok(m) = Arc::try_unwrap(m) {
                m.shutdown().await;
            }
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.driver.abort();
        for p in self.probes.lock().drain(..) {
            p.abort();
        }
    }
}
