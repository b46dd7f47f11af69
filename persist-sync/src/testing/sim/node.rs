//! A simulated node: its real store (an SQLite file), the real store
//! worker and the real node core, and what the simulator knows about it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use persist_core::{Error, Store};

use super::rng::Rng;
use super::{SimClock, SimConfig, SimRow};
use crate::auth::{AuthConfig, Secret};
use crate::clock::Time;
use crate::engine::{ConnId, NodeCore, NodeParams, OpId, Role, StoreOp};
use crate::protocol::{ModuleManifest, NodeRole};
use crate::redundancy::machine::RedundancySettings;
use crate::runtime_state::{RuntimeStates, TypedStateProvider};
use crate::worker::executor::StoreWorker;
use crate::worker::SyncConfig;

/// The two nodes' ids.
pub const IDS: [&str; 2] = ["gw-a", "gw-b"];

/// The pair's shared secret (and a wrong one).
const SECRET: &[u8] = b"the simulated pair's shared secret";
const WRONG_SECRET: &[u8] = b"a secret the master does not know";

/// How a node is configured (a mistake is a wrong setting here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub role: NodeRole,
    pub node_id: String,
    pub wrong_secret: bool,
    /// The node this one probes for a second master (masters only).
    pub probe: Option<usize>,
    /// The modules the node declares.
    pub modules: Vec<ModuleManifest>,
}

/// The fingerprint both nodes declare for the workload's module.
pub const SIM_MODULE_SCHEMA: u128 = 0x5157_0001;

impl NodeConfig {
    /// The right configuration of node `i` (0: master, 1: backup).
    pub fn correct(i: usize) -> NodeConfig {
        NodeConfig {
            role: if i == 0 {
                NodeRole::Master
            } else {
                NodeRole::Backup
            },
            node_id: IDS[i].to_owned(),
            wrong_secret: false,
            probe: (i == 0).then_some(1),
            // A code-only upgrade under way in every seed: the same records
            // at two versions, which must change nothing but the warnings.
            modules: vec![ModuleManifest::new(
                "sim",
                ["1.0.0", "1.1.0"][i],
                SIM_MODULE_SCHEMA,
            )],
        }
    }
}

/// Store faults in force on a node.
#[derive(Debug, Default, Clone)]
pub struct StoreFaults {
    pub disk_full: bool,
    /// Another process holds the write lock; writers wait this long, then fail.
    pub locked: Option<Duration>,
    /// Every write takes this much longer (a slow fsync).
    pub slow: Option<Duration>,
}

/// The module's runtime state in the simulation: a counter.
#[derive(Clone, Default)]
pub struct Counter(pub Arc<Mutex<u64>>);

impl TypedStateProvider for Counter {
    type State = u64;
    type Update = u64;
    fn full_state(&self) -> u64 {
        *self.0.lock()
    }
    fn apply_full(&self, state: u64) -> Result<(), String> {
        *self.0.lock() = state;
        Ok(())
    }
    fn apply_update(&self, update: u64) -> Result<(), String> {
        *self.0.lock() += update;
        Ok(())
    }
}

/// Whether an operation writes (and so fails on a full disk or a lock).
pub fn writes(op: &StoreOp) -> bool {
    matches!(
        op,
        StoreOp::AdoptHistory(_)
            | StoreOp::Apply(_)
            | StoreOp::RestoreBegin(_)
            | StoreOp::RestoreChunk { .. }
            | StoreOp::RestoreFinish
            | StoreOp::HistoryDelivered { .. }
            | StoreOp::DeliverHistory { .. }
            | StoreOp::Retain { .. }
            | StoreOp::SetClaim(_)
    )
}

/// A running incarnation of a node.
pub struct Running {
    pub store: Store,
    pub worker: StoreWorker,
    pub core: NodeCore,
    pub runtime: Arc<RuntimeStates>,
    pub counter: Counter,
    /// The core's links and the network's connection numbers.
    pub links: BTreeMap<ConnId, u64>,
    /// Store operations waiting, in order; the first one is running if `busy`.
    pub ops: VecDeque<(OpId, StoreOp)>,
    pub busy: bool,
    /// Accepted links are numbered from here on.
    pub next_accepted: ConnId,
    /// A tick is scheduled for this time.
    pub tick_at: Option<Time>,
}

/// A simulated node across its incarnations.
pub struct SimNode {
    pub index: usize,
    pub path: PathBuf,
    pub config: NodeConfig,
    pub running: Option<Running>,
    /// Counts starts; events of an older incarnation are dropped.
    pub incarnation: u64,
    /// When the current incarnation started.
    pub started: Time,
    /// Frozen (SIGSTOP) until this time.
    pub frozen_until: Option<Time>,
    /// Down (crashed) until it is restarted.
    pub down: bool,
    pub faults: Arc<Mutex<StoreFaults>>,
    /// When a frame from the other node last reached this incarnation.
    pub heard_at: Option<Time>,
    /// Whether this incarnation received a heartbeat of the other node.
    pub heard_claim: bool,
    /// When the node last became able to act (a restart or a resume).
    pub awake_since: Time,
}

impl SimNode {
    pub fn new(index: usize, path: PathBuf) -> SimNode {
        SimNode {
            index,
            path,
            config: NodeConfig::correct(index),
            running: None,
            incarnation: 0,
            started: Time::ZERO,
            frozen_until: None,
            down: true,
            faults: Arc::default(),
            heard_at: None,
            heard_claim: false,
            awake_since: Time::ZERO,
        }
    }

    /// The node's name in traces.
    pub fn name(&self) -> &'static str {
        IDS[self.index]
    }

    /// Opens the store and starts a fresh incarnation at `now`.
    pub fn start(&mut self, now: Time, cfg: &SimConfig, rng: &mut Rng, clock: &Arc<SimClock>) {
        self.incarnation += 1;
        self.started = now;
        self.awake_since = now;
        self.down = false;
        self.frozen_until = None;
        self.heard_at = None;
        self.heard_claim = false;
        let store = Store::open_sqlite(&self.path).expect("the simulated store opens");
        store.register::<SimRow>().expect("the workload registers");
        let role = match self.config.role {
            NodeRole::Master => Role::Master,
            _ => Role::Backup,
        };
        let mut settings = RedundancySettings::new(self.config.role, self.config.node_id.clone());
        settings.heartbeat_interval = cfg.heartbeat;
        settings.failover_timeout = cfg.failover_timeout;
        settings.startup_allowance = cfg.startup_allowance;
        settings.recovery = cfg.recovery;
        let secret = if self.config.wrong_secret {
            WRONG_SECRET
        } else {
            SECRET
        };
        let auth = AuthConfig::new(
            "sim",
            self.config.node_id.clone(),
            Secret::new(secret.to_vec()).expect("long enough"),
        )
        .expect("valid names");
        let mut sync = SyncConfig::new(auth).modules(self.config.modules.clone());
        sync.handshake_timeout = Duration::from_millis(1000);
        sync.reconnect_initial = Duration::from_millis(20);
        sync.reconnect_max = Duration::from_secs(2);
        sync.max_batch_entries = 64;
        sync.snapshot_chunk_rows = 50;
        sync.max_in_flight = 256;
        sync.retention.keep_acked = 20;
        sync.retention.max_entries = 400;
        sync.retention_interval = Duration::from_millis(200);
        // A few steps per pass, a change found within 2 s: repairs within a run.
        sync.scrub.period = Duration::from_secs(2);
        sync.scrub.step_rows = 50;
        let sync = crate::redundancy::node::prepare(&store, role, &settings, sync);
        let faults = self.faults.clone();
        let mut worker = StoreWorker::new(store.clone(), None, None, clock.clone());
        worker.inject_faults(Box::new(move |op| {
            let f = faults.lock();
            if !writes(op) {
                return None;
            }
            if f.disk_full {
                return Some(Error::DiskFull("the simulated disk is full".into()));
            }
            f.locked.map(|_| {
                Error::Locked("the simulated database is locked by another process".into())
            })
        }));
        let runtime = RuntimeStates::new();
        let counter = Counter::default();
        runtime.register_typed("counter", counter.clone());
        let mut nonces = rng.fork();
        let core = NodeCore::new(
            NodeParams {
                role,
                redundancy: Some(settings),
                // A fresh lease on every start (it learns who holds it).
                witness: cfg.witness.clone(),
                claim: store.claim(),
                position: store.position(),
                schema: store.schema_fingerprint(),
                history_id: store.history(),
                runtime: Some(runtime.clone()),
                history: false,
                probe_every: self.config.probe.map(|_| Duration::from_millis(1000)),
                nonces: Box::new(move || nonces.nonce()),
                sync,
            },
            now,
        );
        self.running = Some(Running {
            store,
            worker,
            core,
            runtime,
            counter,
            links: BTreeMap::new(),
            ops: VecDeque::new(),
            busy: false,
            next_accepted: crate::worker::driver::FIRST_ACCEPTED,
            tick_at: None,
        });
    }

    /// A crash: whatever was not committed is lost (an open restore rolls
    /// back with the connection), the links die.
    pub fn crash(&mut self) -> Option<Running> {
        self.down = true;
        self.frozen_until = None;
        self.running.take()
    }

    /// Whether the node processes events at `now`.
    pub fn awake(&self, _now: Time) -> bool {
        self.running.is_some() && self.frozen_until.is_none()
    }
}
