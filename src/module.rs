//! Modules: what a gateway runs, and the only API a module author writes
//! against.
//!
//! A module is a value that implements [`Module`]: a name and a version, a
//! [`register`](Module::register) that declares what it keeps (record types,
//! replicated operations, runtime state, history), a reaction to the node's
//! activity level, and a shutdown. A host (the `persist-gateway` crate) opens
//! the store, calls `register` on every module with a [`ModuleContext`],
//! starts the redundant node and then follows its activity; the module never
//! sees a socket, a transfer or a snapshot.
//!
//! ```
//! use persist::module::{Module, ModuleContext, ModuleError};
//! use persist::prelude::*;
//! use persist::sync::redundancy::ActivityLevel;
//!
//! #[derive(PersistentRecord, Debug, Clone)]
//! pub struct Pump {
//!     #[persist(identity)]
//!     pub id: i64,
//!     #[persist(unique)]
//!     pub name: String,
//! }
//!
//! pub struct Pumps;
//!
//! impl Module for Pumps {
//!     fn name(&self) -> &'static str { "pumps" }
//!     fn version(&self) -> &'static str { "1.0.0" }
//!     fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
//!         ctx.record::<Pump>()?;
//!         Ok(())
//!     }
//!     fn activity(&self, level: ActivityLevel) {
//!         // Cold: nothing runs; Warm: connected, not acting; Active: acting.
//!         let _ = level;
//!     }
//! }
//! ```
//!
//! # Names
//! Several modules run in one gateway. What they declare is namespaced by
//! the module: runtime-state providers and history kinds are stored as
//! `<module>/<id>`, so two modules may use the same ids; a table or a
//! replicated operation belongs to the first module that declares it, and a
//! second module that declares the same one is refused at start with both
//! modules' names (a table name is part of the data both nodes share, so it
//! is never renamed behind the author's back). Every error about a module
//! carries its name.
//!
//! # Versions
//! [`ModuleContext::manifest`] is what the node announces to its peer: the
//! name, the version and a fingerprint of the module's record definitions.
//! Two nodes may run different versions of a module whose records are the
//! same (a code-only upgrade, rolled node by node); a module whose records
//! differ, or that runs on one node only, is refused by name.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use persist_core::{
    schema_fingerprint_of, with_dependencies, HistoryItem, PersistentRecord, RecordMeta,
    ReplicatedOperation, Store, Subscription, WriteTx,
};
use persist_sync::history::{History, HistorySink};
use persist_sync::redundancy::{ActivityLevel, NodeRole};
use persist_sync::runtime_state::{RuntimeStates, TypedStateProvider};
use serde::Serialize;

pub use persist_sync::protocol::ModuleManifest;

/// A module of a gateway.
///
/// Implementations are shared between the host's tasks (`Send + Sync`);
/// keep mutable state behind a lock or an atomic.
pub trait Module: Send + Sync + 'static {
    /// The module's name: stable, short, unique in a gateway (`"alarms"`).
    fn name(&self) -> &'static str;

    /// The module's version (`"1.2.0"`), shown on both nodes' status pages.
    fn version(&self) -> &'static str;

    /// Declares what the module keeps. Called once, before the node starts.
    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError>;

    /// The node's activity changed (Cold: nothing running; Warm: connected,
    /// not acting; Active: acting). Called in order, from one task; a step
    /// down the host could not observe (the node stepped down and back up
    /// between two looks) is reported as a Cold before the new level.
    fn activity(&self, level: ActivityLevel) {
        let _ = level;
    }

    /// The gateway stops: writes are already refused, the node still runs.
    /// Return once the module's own work is done.
    fn shutdown(&self) {}
}

/// An error of a module, with the module's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module `{module}`: {problem}")]
pub struct ModuleError {
    /// The module's name.
    pub module: String,
    /// What went wrong.
    pub problem: String,
}

impl ModuleError {
    /// An error of module `module`.
    pub fn new(module: &str, problem: impl std::fmt::Display) -> ModuleError {
        ModuleError {
            module: module.to_owned(),
            problem: problem.to_string(),
        }
    }
}

/// What a module gets to declare its parts, in [`Module::register`].
pub struct ModuleContext {
    module: &'static str,
    version: &'static str,
    store: Store,
    node_id: String,
    role: NodeRole,
    runtime: Arc<RuntimeStates>,
    history: ModuleHistory,
    owners: Arc<std::sync::Mutex<Owners>>,
    records: Vec<&'static RecordMeta>,
    operations: Vec<&'static str>,
    sink: Option<Arc<dyn HistorySink>>,
}

/// Who declared which table, operation and provider.
#[derive(Default)]
struct Owners {
    tables: BTreeMap<&'static str, &'static str>,
    operations: BTreeMap<&'static str, &'static str>,
}

impl ModuleContext {
    /// The module's name.
    pub fn module(&self) -> &'static str {
        self.module
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's configured role.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// The node's store (records, queries, listeners). Writes are accepted
    /// on the master only; a backup's store follows the master's.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    fn error(&self, problem: impl std::fmt::Display) -> ModuleError {
        ModuleError::new(self.module, problem)
    }

    /// Declares a record type (and, with it, the types it references): its
    /// table is created or checked now, and replicated to the peer.
    pub fn record<R: PersistentRecord>(&mut self) -> Result<(), ModuleError> {
        let meta = R::meta();
        {
            let mut owners = self.owners.lock().expect("owners lock");
            // A referenced table may belong to another module: only the
            // declared type is claimed.
            match owners.tables.get(meta.table) {
                Some(&other) if other != self.module => {
                    return Err(self.error(format!(
                        "table `{}` (record {}) is already declared by module `{other}`; \
                         give one of them another table name (#[persist(table = \"...\")])",
                        meta.table, meta.type_name
                    )))
                }
                _ => {
                    owners.tables.insert(meta.table, self.module);
                }
            }
        }
        self.store
            .register::<R>()
            .map_err(|e| self.error(format!("record {}: {e}", meta.type_name)))?;
        if !self.records.iter().any(|m| m.table == meta.table) {
            self.records.push(meta);
        }
        Ok(())
    }

    /// A listener on a record type: every committed change, on every node
    /// (on a backup, as the master's changes are applied). Receive on a
    /// thread of the module's own.
    pub fn subscribe<R: PersistentRecord>(&self) -> Result<Subscription<R>, ModuleError> {
        self.store
            .subscribe::<R>()
            .map_err(|e| self.error(format!("listener on {}: {e}", R::meta().type_name)))
    }

    /// Declares a replicated operation: run on the master, re-run on the
    /// backup from the log (see [`ReplicatedOperation`]).
    pub fn operation<O: ReplicatedOperation>(&mut self) -> Result<(), ModuleError> {
        {
            let mut owners = self.owners.lock().expect("owners lock");
            if let Some(&other) = owners.operations.get(O::NAME) {
                if other != self.module {
                    return Err(self.error(format!(
                        "operation `{}` is already declared by module `{other}`",
                        O::NAME
                    )));
                }
            }
            owners.operations.insert(O::NAME, self.module);
        }
        self.store.register_operation::<O>();
        self.operations.push(O::NAME);
        Ok(())
    }

    /// Declares a kind of runtime state (alarms and their acknowledgements,
    /// say), carried from the active node to the standby. `id` is the
    /// module's own name for it; post updates through the returned handle.
    pub fn runtime_state<P: TypedStateProvider>(
        &mut self,
        id: &str,
        provider: P,
    ) -> Result<RuntimeState<P::Update>, ModuleError> {
        if id.is_empty() || id.contains('/') {
            return Err(self.error(format!(
                "runtime state id `{id}` must be non-empty and without '/'"
            )));
        }
        let full = format!("{}/{id}", self.module);
        self.runtime.register_typed(&full, provider);
        Ok(RuntimeState {
            states: self.runtime.clone(),
            id: full,
            _update: std::marker::PhantomData,
        })
    }

    /// Declares where the module's history goes on the master (a journal
    /// table, say). At most one sink per module.
    pub fn history_sink(&mut self, sink: impl HistorySink) -> Result<(), ModuleError> {
        if self.sink.is_some() {
            return Err(self.error("a history sink is already declared"));
        }
        self.sink = Some(Arc::new(sink));
        Ok(())
    }

    /// The module's history: records items of the module's own kinds,
    /// delivered to its sink on the master (from a backup, when the master
    /// is back). Usable once the gateway runs.
    pub fn history(&self) -> ModuleHistory {
        self.history.clone()
    }

    /// What this node announces about the module to its peer: its name,
    /// version and the fingerprint of its records (the ones it declared and
    /// the ones they reference) and operations.
    pub fn manifest(&self) -> ModuleManifest {
        ModuleManifest {
            name: self.module.to_owned(),
            version: self.version.to_owned(),
            schema: schema_fingerprint_of(&self.records, &self.operations),
        }
    }

    /// The tables this module's records live in (with the ones they
    /// reference).
    pub fn tables(&self) -> Vec<&'static str> {
        with_dependencies(&self.records)
            .into_iter()
            .map(|m| m.table)
            .collect()
    }
}

/// A module's handle on one kind of its runtime state.
pub struct RuntimeState<U> {
    states: Arc<RuntimeStates>,
    id: String,
    _update: std::marker::PhantomData<fn(U)>,
}

impl<U> Clone for RuntimeState<U> {
    fn clone(&self) -> Self {
        RuntimeState {
            states: self.states.clone(),
            id: self.id.clone(),
            _update: std::marker::PhantomData,
        }
    }
}

impl<U: Serialize> RuntimeState<U> {
    /// Posts an update to the standby (on the active node; refused on a
    /// standby, whose state comes from the active node).
    pub fn post(&self, update: &U) -> Result<(), String> {
        self.states.post_typed(&self.id, update)
    }

    /// The id the state travels under (`<module>/<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A module's history, usable once the gateway runs.
#[derive(Clone)]
pub struct ModuleHistory {
    module: &'static str,
    history: Arc<OnceLock<Arc<History>>>,
}

impl ModuleHistory {
    /// Records an item of kind `kind` (the module's own name for it): at
    /// once on the master, buffered on a backup until the master is back.
    pub fn record(&self, kind: &str, payload: Vec<u8>) -> Result<(), ModuleError> {
        let h = self
            .history
            .get()
            .ok_or_else(|| ModuleError::new(self.module, "history is not running yet"))?;
        h.record(&format!("{}/{kind}", self.module), payload)
            .map_err(|e| ModuleError::new(self.module, format!("history: {e}")))
    }

    /// Items of this node's history not yet delivered to the master (every
    /// module's).
    pub fn buffered(&self) -> usize {
        self.history
            .get()
            .and_then(|h| h.buffered().ok())
            .map_or(0, |b| b.len())
    }
}

/// The modules of a gateway, registered on one store: what a host needs to
/// start the node. Built by [`Modules::register`].
pub struct Modules {
    modules: Vec<Arc<dyn Module>>,
    manifests: Vec<ModuleManifest>,
    runtime: Arc<RuntimeStates>,
    sinks: BTreeMap<&'static str, Arc<dyn HistorySink>>,
    history: Arc<OnceLock<Arc<History>>>,
}

impl Modules {
    /// Calls every module's [`Module::register`] on `store`, in order, and
    /// collects what they declared. Refuses two modules of the same name and
    /// a table or operation declared by two modules, naming both.
    pub fn register(
        store: &Store,
        node_id: &str,
        role: NodeRole,
        modules: Vec<Arc<dyn Module>>,
    ) -> Result<Modules, ModuleError> {
        let runtime = RuntimeStates::new();
        let history = Arc::new(OnceLock::new());
        let owners = Arc::new(std::sync::Mutex::new(Owners::default()));
        let mut manifests: Vec<ModuleManifest> = Vec::new();
        let mut sinks = BTreeMap::new();
        for m in &modules {
            let name = m.name();
            if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
                return Err(ModuleError::new(
                    name,
                    "a module name must be non-empty, without '/' or spaces",
                ));
            }
            if manifests.iter().any(|x| x.name == name) {
                return Err(ModuleError::new(name, "two modules of this name"));
            }
            let mut ctx = ModuleContext {
                module: name,
                version: m.version(),
                store: store.clone(),
                node_id: node_id.to_owned(),
                role,
                runtime: runtime.clone(),
                history: ModuleHistory {
                    module: name,
                    history: history.clone(),
                },
                owners: owners.clone(),
                records: Vec::new(),
                operations: Vec::new(),
                sink: None,
            };
            m.register(&mut ctx).map_err(|e| {
                if e.module == name {
                    e
                } else {
                    ModuleError::new(name, e)
                }
            })?;
            manifests.push(ctx.manifest());
            if let Some(s) = ctx.sink.take() {
                sinks.insert(name, s);
            }
        }
        Ok(Modules {
            modules,
            manifests,
            runtime,
            sinks,
            history,
        })
    }

    /// The modules, in registration order.
    pub fn modules(&self) -> &[Arc<dyn Module>] {
        &self.modules
    }

    /// What the node announces to its peer, one entry per module.
    pub fn manifests(&self) -> &[ModuleManifest] {
        &self.manifests
    }

    /// The runtime states every module declared, for the node.
    pub fn runtime(&self) -> Arc<RuntimeStates> {
        self.runtime.clone()
    }

    /// The history sink of all modules: routes each item to the sink of the
    /// module whose kind it carries (`<module>/<kind>`).
    pub fn history_sink(&self) -> impl HistorySink {
        Router {
            sinks: self.sinks.clone(),
        }
    }

    /// Makes the node's history service available to the modules.
    pub fn start_history(&self, history: Arc<History>) {
        let _ = self.history.set(history);
    }

    /// Tells every module the node's activity, in order.
    pub fn set_activity(&self, level: ActivityLevel) {
        for m in &self.modules {
            m.activity(level);
        }
    }

    /// Shuts the modules down, the last registered first.
    pub fn shutdown(&self) {
        for m in self.modules.iter().rev() {
            m.shutdown();
        }
    }
}

struct Router {
    sinks: BTreeMap<&'static str, Arc<dyn HistorySink>>,
}

impl Router {
    /// The sink of the module an item belongs to, and the item with the
    /// module's own kind.
    fn route(&self, item: &HistoryItem) -> Result<(&Arc<dyn HistorySink>, HistoryItem), String> {
        let (module, kind) = item.kind.split_once('/').unwrap_or(("", &item.kind));
        let sink = self.sinks.get(module).ok_or_else(|| {
            format!(
                "history item of kind `{}`: no module declared a sink for it",
                item.kind
            )
        })?;
        Ok((
            sink,
            HistoryItem {
                kind: kind.to_owned(),
                ..item.clone()
            },
        ))
    }
}

impl HistorySink for Router {
    fn deliver(
        &self,
        tx: &mut WriteTx<'_>,
        origin: &str,
        item: &HistoryItem,
    ) -> persist_core::Result<()> {
        let (sink, item) = self.route(item).map_err(|reason| {
            // An item no module takes stays in the sender's buffer.
            persist_core::Error::Inapplicable {
                position: 0,
                reason,
            }
        })?;
        sink.deliver(tx, origin, &item)
    }

    fn write_direct(&self, item: &HistoryItem) -> Result<(), String> {
        let (sink, item) = self.route(item)?;
        sink.write_direct(&item)
    }
}
