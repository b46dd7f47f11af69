//! The redundancy runtime of one node: its sync side (master or backup) and
//! the [`Machine`](super::Machine) in one node task, with durable claims, a
//! write gate by role, and the node's [`RedundancyState`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};
use persist_core::Store;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::machine::{ActivityLevel, RedundancySettings};
use super::witness::{WitnessClient, WitnessSettings, WitnessView};
use crate::engine::{Command, CommandError, NodeReport, RedundancyReport, Role};
use crate::history::History;
use crate::protocol::{ModuleManifest, NodeRole};
use crate::runtime_state::RuntimeStates;
use crate::transport::{Acceptor, Dialer};
use crate::worker::driver::{self, Nowhere, Request, Start, StartError};
use crate::worker::{BackupHandle, MasterHandle, SyncConfig};

/// What module code sees of redundancy, at any time.
///
/// [`NodeHandle::watch`] always holds the latest state; a subscriber that
/// falls behind sees the newest one, not every step between. `transitions`
/// counts every change of activity, epoch or active node since the node
/// started, so a subscriber that sees it grow by more than one since the
/// state it last handled knows it missed steps (a step down and back up,
/// say) and should treat the jump as a step down followed by the new state.
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
    /// The last error (sync link, refusal, or a claim that could not be
    /// stored). A refusal names its reason, e.g. "refused the peer: module
    /// `alarms`: 1.1.0 on gw-a, 1.0.0 on gw-b, and its records differ".
    pub last_error: Option<String>,
    /// Changes of activity, epoch or active node since the node started.
    pub transitions: u64,
    /// The modules the connected peer declared (empty while not connected).
    pub peer_modules: Vec<ModuleManifest>,
    /// Modules both nodes run at different versions with the same records
    /// (replication, switchover and failover go on), one line each, e.g.
    /// "module `alarms`: 1.1.0 here, 1.0.0 on gw-a: same records,
    /// replication continues"; empty while not connected.
    pub module_warnings: Vec<String>,
    /// The witness lease as this node knows it (`None`: the pair has no
    /// witness).
    pub witness: Option<WitnessView>,
}

#[derive(Default)]
struct Blocking {
    state: Mutex<Option<(u64, RedundancyState)>>,
    changed: Condvar,
}

/// Where the node task publishes its redundancy state.
pub(crate) struct StatePublisher {
    tx: watch::Sender<RedundancyState>,
    blocking: Arc<Blocking>,
}

impl StatePublisher {
    pub fn publish(
        &self,
        report: &NodeReport,
        r: &RedundancyReport,
        last_sync: Option<SystemTime>,
    ) {
        let next = RedundancyState {
            role: r.role,
            activity: r.activity,
            epoch: r.epoch,
            active_node: r.active_node.clone(),
            peer_connected: report.connected,
            last_sync,
            pending_updates: report.pending_updates,
            last_error: r.error.clone().or_else(|| report.last_error.clone()),
            transitions: r.transitions,
            peer_modules: report.peer_modules.clone(),
            module_warnings: report.module_warnings.clone(),
            witness: r.lease.as_ref().map(|l| WitnessView {
                held_here: l.valid_until.is_some(),
                holder: l.holder.clone(),
                revision: l.revision,
                error: l.error.clone(),
            }),
        };
        if *self.tx.borrow() == next {
            return;
        }
        self.tx.send_replace(next.clone());
        let mut b = self.blocking.state.lock();
        let version = b.as_ref().map_or(0, |(v, _)| v + 1);
        *b = Some((version, next));
        self.blocking.changed.notify_all();
    }
}

/// A running node.
pub struct NodeHandle {
    runtime: Option<Arc<RuntimeStates>>,
    store: Store,
    state: watch::Receiver<RedundancyState>,
    blocking: Arc<Blocking>,
    requests: tokio::sync::mpsc::Sender<Request>,
    master: Option<MasterHandle>,
    backup: Option<BackupHandle>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// How a node is put together: its store, settings, and what its module
/// carries over the link (runtime state, history).
#[derive(Debug)]
pub struct NodeBuilder {
    store: Store,
    settings: RedundancySettings,
    sync: SyncConfig,
    runtime: Option<Arc<RuntimeStates>>,
    history: Option<Arc<History>>,
    witness: Option<(WitnessSettings, Arc<dyn WitnessClient>)>,
}

impl std::fmt::Debug for dyn WitnessClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WitnessClient")
    }
}

impl NodeBuilder {
    /// A node on `store` with these settings.
    pub fn new(store: Store, settings: RedundancySettings, sync: SyncConfig) -> NodeBuilder {
        NodeBuilder {
            store,
            settings,
            sync,
            runtime: None,
            history: None,
            witness: None,
        }
    }

    /// Fences the pair with a witness lease: this node acts only while it
    /// holds the lease or its peer confirms it on a live link, and takes
    /// over only once it holds the lease (see
    /// [`Machine`](super::Machine)'s "With a witness"). Give both nodes of
    /// the pair the same witness and key. `settings.ttl` must be shorter
    /// than the failover timeout (checked at start).
    pub fn witness(
        mut self,
        settings: WitnessSettings,
        client: Arc<dyn WitnessClient>,
    ) -> NodeBuilder {
        self.witness = Some((settings, client));
        self
    }

    /// Runtime state carried to the standby (see [`crate::runtime_state`]).
    pub fn runtime(mut self, runtime: Arc<RuntimeStates>) -> NodeBuilder {
        self.runtime = Some(runtime);
        self
    }

    /// History forwarded from an active backup (see [`crate::history`]).
    pub fn history(mut self, history: Arc<History>) -> NodeBuilder {
        self.history = Some(history);
        self
    }

    /// Starts the master node on the current tokio runtime.
    pub fn start_master<A: Acceptor>(self, acceptor: A) -> Result<NodeHandle, StartError> {
        self.start::<A, Nowhere, Nowhere>(Some(acceptor), None, None)
    }

    /// Starts the master node, dialing `probe` (the other node's link
    /// address) every `every` to make sure it is not configured as master
    /// too. If it is, both nodes refuse config writes (`Error::NotMaster`
    /// naming the other node) and report it, and only the one whose id
    /// sorts first stays active, until an operator fixes the configuration
    /// and restarts them. A probe address that leads back to this node is
    /// reported as a configuration mistake.
    pub fn start_master_probing<A: Acceptor, P: Dialer>(
        self,
        acceptor: A,
        probe: P,
        every: Duration,
    ) -> Result<NodeHandle, StartError> {
        self.start::<A, Nowhere, P>(Some(acceptor), None, Some((probe, every)))
    }

    /// Starts the backup node on the current tokio runtime.
    pub fn start_backup<D: Dialer>(self, dialer: D) -> Result<NodeHandle, StartError> {
        self.start::<Nowhere, D, Nowhere>(None, Some(dialer), None)
    }

    fn start<A: Acceptor, D: Dialer, P: Dialer>(
        mut self,
        acceptor: Option<A>,
        dialer: Option<D>,
        probe: Option<(P, Duration)>,
    ) -> Result<NodeHandle, StartError> {
        let role = match (acceptor.is_some(), self.settings.role) {
            (true, NodeRole::Master) => Role::Master,
            (false, NodeRole::Backup) => Role::Backup,
            (_, r) => {
                return Err(StartError::Mismatch(format!(
                    "a node configured as {r:?} is started as {}",
                    if acceptor.is_some() {
                        "master"
                    } else {
                        "backup"
                    }
                )))
            }
        };
        self.settings.validate()?;
        self.sync = prepare(&self.store, role, &self.settings, self.sync);
        let initial = RedundancyState {
            role: self.settings.role,
            activity: ActivityLevel::Undecided,
            epoch: self.store.claim().epoch,
            active_node: self.store.claim().active,
            peer_connected: false,
            last_sync: None,
            pending_updates: 0,
            last_error: None,
            transitions: 0,
            peer_modules: Vec::new(),
            module_warnings: Vec::new(),
            witness: self.witness.as_ref().map(|_| WitnessView::default()),
        };
        let (tx, state) = watch::channel(initial.clone());
        let blocking = Arc::new(Blocking::default());
        *blocking.state.lock() = Some((0, initial));
        let (probe, probe_every) = match probe {
            Some((p, every)) => (Some(p), Some(every)),
            None => (None, None),
        };
        let started = driver::spawn(
            Start {
                store: self.store.clone(),
                role,
                sync: self.sync,
                redundancy: Some(self.settings),
                runtime: self.runtime.clone(),
                history: self.history,
                probe_every,
                state: Some(StatePublisher {
                    tx,
                    blocking: blocking.clone(),
                }),
                witness: self.witness,
            },
            acceptor,
            dialer,
            probe,
        )?;
        let (master, backup) = match role {
            Role::Master => (
                Some(MasterHandle {
                    published: started.published.clone(),
                    requests: started.requests.clone(),
                    store: self.store.clone(),
                    task: None,
                }),
                None,
            ),
            Role::Backup => (
                None,
                Some(BackupHandle {
                    published: started.published.clone(),
                    requests: started.requests.clone(),
                    store: self.store.clone(),
                    task: None,
                }),
            ),
        };
        Ok(NodeHandle {
            runtime: self.runtime,
            store: self.store,
            state,
            blocking,
            requests: started.requests,
            master,
            backup,
            task: Some(started.task),
        })
    }
}

/// What a node's settings make of its store and sync settings (shared by
/// the tokio node and the simulator): config writes only on the master,
/// whatever the activity; the link's heartbeat is the node's, and a link
/// silent for the failover timeout is dead for sync too.
pub(crate) fn prepare(
    store: &Store,
    role: Role,
    settings: &RedundancySettings,
    mut sync: SyncConfig,
) -> SyncConfig {
    store.set_write_gate(match role {
        Role::Backup => Some("this node is the backup; write to the master".into()),
        Role::Master => None,
    });
    sync.heartbeat_interval = settings.heartbeat_interval;
    sync.peer_timeout = settings
        .failover_timeout
        .max(settings.heartbeat_interval * 2);
    sync
}

/// Starts the master node of a pair on the current tokio runtime (see
/// [`NodeBuilder`] for runtime state, history and the dual-master probe).
pub fn start_master_node<A: Acceptor>(
    store: Store,
    settings: RedundancySettings,
    acceptor: A,
    sync: SyncConfig,
) -> Result<NodeHandle, StartError> {
    NodeBuilder::new(store, settings, sync).start_master(acceptor)
}

/// Starts the backup node of a pair on the current tokio runtime.
pub fn start_backup_node<D: Dialer>(
    store: Store,
    settings: RedundancySettings,
    dialer: D,
    sync: SyncConfig,
) -> Result<NodeHandle, StartError> {
    NodeBuilder::new(store, settings, sync).start_backup(dialer)
}

impl NodeHandle {
    /// The node's redundancy state now.
    pub fn state(&self) -> RedundancyState {
        self.state.borrow().clone()
    }

    /// State changes, for async module code (see [`RedundancyState`] for
    /// what a subscriber is guaranteed to see).
    pub fn watch(&self) -> watch::Receiver<RedundancyState> {
        self.state.clone()
    }

    /// For blocking module code: waits until the state differs from
    /// `version` (pass 0 first, then the returned version), at most `timeout`.
    pub fn wait_state_blocking(&self, version: u64, timeout: Duration) -> (u64, RedundancyState) {
        let mut b = self.blocking.state.lock();
        let _ = self.blocking.changed.wait_while_for(
            &mut b,
            |b| b.as_ref().is_some_and(|(v, _)| *v == version),
            timeout,
        );
        b.clone().expect("initialized at start")
    }

    /// The runtime state registry given to the node, if any.
    pub fn runtime(&self) -> Option<&Arc<RuntimeStates>> {
        self.runtime.as_ref()
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The master side of the sync link (master nodes).
    pub fn master(&self) -> Option<&MasterHandle> {
        self.master.as_ref()
    }

    /// The backup side of the sync link (backup nodes).
    pub fn backup(&self) -> Option<&BackupHandle> {
        self.backup.as_ref()
    }

    async fn request(&self, command: Command) -> Result<(), CommandError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((command, tx))
            .await
            .map_err(|_| CommandError::Stopped)?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    /// Planned switchover, on the active master: the backup takes over
    /// (e.g. before upgrading the master). Refused unless the backup is
    /// connected and has confirmed everything the master holds; undone if
    /// the backup does not take over within the failover timeout. Nothing
    /// is lost: the backup holds everything it acknowledged, and the master
    /// keeps serving its log.
    pub async fn request_switchover(&self) -> Result<(), CommandError> {
        self.request(Command::Switchover).await
    }

    /// Handback, on the active backup (manual recovery): the master takes over again.
    pub async fn request_handback(&self) -> Result<(), CommandError> {
        self.request(Command::Handback).await
    }

    /// Stops the node and waits until its task, links and store work have
    /// ended.
    pub async fn shutdown(mut self) {
        let _ = self.request(Command::Shutdown).await;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let (tx, _) = oneshot::channel();
            let _ = self.requests.try_send((Command::Shutdown, tx));
        }
    }
}
