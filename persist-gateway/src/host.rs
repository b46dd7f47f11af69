//! The gateway host: reads the config, opens the store, registers the
//! modules, starts the redundant node, follows its activity on the modules'
//! behalf, serves the operator surface, and shuts down in order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use persist::module::{Module, ModuleError, Modules};
use persist::sync::auth::AuthConfig;
use persist::sync::history::{History, HistoryLevel};
use persist::sync::redundancy::{ActivityLevel, NodeBuilder, NodeHandle, NodeRole};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::transport::tls::{TlsClient, TlsServer};
use persist::sync::worker::SyncConfig;
use persist::{Store, StoreConfig};
use tokio::task::JoinHandle;

use crate::api::ApiSurface;
use crate::audit::AuditLog;
use crate::config::{Config, ConfigError, Database};
use crate::operator::{surface_router, Surface};

/// How long a stopping backup waits for its history to reach the master.
pub const HISTORY_FLUSH: Duration = Duration::from_secs(5);

/// Why a gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The config is wrong.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A module refused to register, or two modules collide.
    #[error("{0}")]
    Module(#[from] ModuleError),
    /// The store could not be opened.
    #[error("database: {0}")]
    Store(#[from] persist::Error),
    /// The node, a listener or a log could not start.
    #[error("{0}")]
    Start(String),
    /// The operator surface stopped.
    #[error("status server: {0}")]
    Status(String),
}

/// A gateway to be started: a checked config and the modules it runs.
///
/// ```no_run
/// # use persist::module::{Module, ModuleContext, ModuleError};
/// # struct Alarms;
/// # impl Module for Alarms {
/// #     fn name(&self) -> &'static str { "alarms" }
/// #     fn version(&self) -> &'static str { "1.0.0" }
/// #     fn register(&self, _: &mut ModuleContext) -> Result<(), ModuleError> { Ok(()) }
/// # }
/// fn main() -> Result<(), persist_gateway::GatewayError> {
///     persist_gateway::Gateway::from_config_file("gw-a.toml")?
///         .module(Alarms)
///         .run()
/// }
/// ```
pub struct Gateway {
    config: Config,
    modules: Vec<Arc<dyn Module>>,
}

impl Gateway {
    /// Reads and checks a config file; nothing is created yet.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Gateway, GatewayError> {
        Ok(Gateway::new(Config::load(path)?))
    }

    /// A gateway for a checked config.
    pub fn new(config: Config) -> Gateway {
        Gateway {
            config,
            modules: Vec::new(),
        }
    }

    /// Adds a module; modules register, follow the activity and shut down
    /// in the order they were added (shut down in reverse).
    pub fn module(self, module: impl Module) -> Gateway {
        self.module_arc(Arc::new(module))
    }

    /// Adds a module the caller keeps a handle on.
    pub fn module_arc(mut self, module: Arc<dyn Module>) -> Gateway {
        self.modules.push(module);
        self
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs the gateway until SIGTERM or SIGINT (then shuts down in order
    /// and returns `Ok`) or a fatal error: installs the log subscriber,
    /// exits the process with a non-zero status on a panic in any task.
    pub fn run(self) -> Result<(), GatewayError> {
        persist::sync::panic::exit_on_panic();
        crate::logging::install(self.config.log_format, &self.config.log_level)
            .map_err(GatewayError::Start)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| GatewayError::Start(format!("runtime: {e}")))?;
        rt.block_on(async move {
            let mut running = self.start().await?;
            let stop = tokio::select! {
                s = signal() => Ok(s),
                e = running.fatal() => Err(e),
            };
            match stop {
                Ok(name) => {
                    tracing::info!("{name}: shutting down");
                    running.shutdown().await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Starts the gateway on the current tokio runtime (no log subscriber,
    /// no signal handling: see [`Gateway::run`]).
    pub async fn start(self) -> Result<RunningGateway, GatewayError> {
        let cfg = self.config;
        for w in &cfg.warnings {
            tracing::warn!("{}: {w}", cfg.file.display());
        }
        let id = cfg.settings.node_id.clone();
        let role = cfg.settings.role;
        // Everything that can be checked without side effects was: from
        // here on the node creates files and binds sockets.
        let audit = Arc::new(
            AuditLog::open(&cfg.audit_file)
                .map_err(|e| GatewayError::Start(format!("[audit] file: {e}")))?,
        );
        let store = match &cfg.database {
            Database::Sqlite(p) => Store::open_sqlite(p)?,
            Database::Postgres { url, schema } => {
                Store::open(StoreConfig::postgres(url.clone(), schema.clone()))?
            }
        };
        let modules = Arc::new(Modules::register(&store, &id, role, self.modules)?);
        for m in modules.manifests() {
            tracing::info!(module = %m.name, version = %m.version, "module registered");
        }
        let history = History::new(
            store.clone(),
            &id,
            role,
            HistoryLevel::Partial,
            modules.history_sink(),
        );
        modules.start_history(history.clone());
        let mut sync = SyncConfig::new(
            AuthConfig::new(cfg.cluster.clone(), id.clone(), cfg.secret.clone())
                .map_err(|e| GatewayError::Start(e.to_string()))?,
        );
        // The peer compares them: a module whose records differ, or that
        // runs on one node only, is refused by name.
        sync = sync.modules(modules.manifests().to_vec());
        sync.reconnect_max = cfg.reconnect_max;
        sync.scrub = cfg.scrub.clone();
        sync.reconnect_initial = sync.reconnect_initial.min(sync.reconnect_max);
        let mut builder = NodeBuilder::new(store.clone(), cfg.settings.clone(), sync)
            .runtime(modules.runtime())
            .history(history.clone());
        if let Some((w, settings)) = &cfg.witness {
            tracing::info!(url = %w.url, bucket = %w.bucket, key = %w.key, ttl = ?settings.ttl, "witness lease");
            let client = persist_fleet::NatsWitness::new(w.clone(), id.clone(), settings.clone());
            builder = builder.witness(settings.clone(), Arc::new(client));
        }
        if let Some(f) = &cfg.fleet {
            crate::fleet::prepare(f, &store).map_err(GatewayError::Start)?;
        }
        let (node, link_addr) = start_node(&cfg, builder).await?;
        let fleet = cfg
            .fleet
            .clone()
            .map(|f| Arc::new(crate::fleet::FleetRunner::start(f, store.clone(), role)));
        let node = Arc::new(node);
        let status = tokio::net::TcpListener::bind(cfg.status_listen)
            .await
            .map_err(|e| {
                GatewayError::Start(format!("[status] listen {}: {e}", cfg.status_listen))
            })?;
        let status_addr = status
            .local_addr()
            .map_err(|e| GatewayError::Start(e.to_string()))?;
        println!("{id}: status page http://{status_addr}/ (state: /state, metrics: /metrics)");
        let app = surface_router(Surface {
            node_id: id.clone(),
            node: node.clone(),
            token: cfg.operator_token.clone(),
            audit: Some(audit.clone()),
            modules: modules.manifests().to_vec(),
        })
        .map_err(|e| GatewayError::Start(format!("[status] {e}")))?
        .merge(crate::api::router(ApiSurface {
            node_id: id.clone(),
            node: node.clone(),
            tokens: cfg.api.tokens.clone(),
            audit: Some(audit.clone()),
            peer_url: cfg.api.peer_url.clone(),
        }))
        .merge(crate::pages::router());
        let app = match &fleet {
            Some(f) => app.merge(crate::fleet::router(f.clone())),
            None => app,
        };
        let status_task = tokio::spawn(crate::http::serve_bounded(
            status,
            app,
            crate::http::HttpLimits::default(),
        ));
        let follower = tokio::spawn(follow(id.clone(), node.clone(), modules.clone()));
        Ok(RunningGateway {
            id,
            role,
            node: Some(node),
            modules,
            history,
            audit,
            status_addr,
            link_addr,
            status_task: Some(status_task),
            follower: Some(follower),
            fleet,
        })
    }
}

async fn start_node(
    cfg: &Config,
    builder: NodeBuilder,
) -> Result<(NodeHandle, Option<SocketAddr>), GatewayError> {
    let id = &cfg.settings.node_id;
    let start = |e: &dyn std::fmt::Display| GatewayError::Start(e.to_string());
    let client = || -> Result<Option<TlsClient>, GatewayError> {
        let identity = cfg.tls.cert.as_deref().zip(cfg.tls.key.as_deref());
        match &cfg.tls.ca {
            Some(ca) => Ok(Some(
                TlsClient::from_pem_files(ca, identity)
                    .map_err(|e| start(&format!("[link] TLS: {e}")))?,
            )),
            None => Ok(None),
        }
    };
    match cfg.settings.role {
        NodeRole::Master => {
            let listen = cfg
                .listen
                .as_deref()
                .expect("checked: the master has [link] listen");
            let tls = match (&cfg.tls.cert, &cfg.tls.key) {
                (Some(c), Some(k)) => Some(
                    TlsServer::from_pem_files(c, k, cfg.tls.ca.as_deref())
                        .map_err(|e| start(&format!("[link] TLS: {e}")))?,
                ),
                _ => None,
            };
            let acceptor = TcpAcceptor::bind(listen, tls)
                .await
                .map_err(|e| start(&format!("[link] listen {listen}: {e}")))?;
            let addr = acceptor.local_socket_addr();
            println!("{id}: master, link on {addr}");
            let node = match &cfg.peer {
                // The probe speaks the link's own protocol, TLS included: a
                // second master with TLS on drops a plain dial.
                Some(peer) => builder.start_master_probing(
                    acceptor,
                    TcpDialer::new(peer.clone(), client()?),
                    Duration::from_secs(5),
                ),
                None => builder.start_master(acceptor),
            }
            .map_err(|e| start(&e))?;
            Ok((node, Some(addr)))
        }
        _ => {
            let peer = cfg
                .peer
                .clone()
                .expect("checked: the backup has [link] peer");
            println!("{id}: backup of {peer}");
            let node = builder
                .start_backup(TcpDialer::new(peer, client()?))
                .map_err(|e| start(&e))?;
            Ok((node, None))
        }
    }
}

/// Follows the node's activity on the modules' behalf, and prints each
/// change on stdout (one line, for people and scripts).
async fn follow(id: String, node: Arc<NodeHandle>, modules: Arc<Modules>) {
    let mut w = node.watch();
    let mut last = None;
    let mut seen = 0;
    loop {
        let s = w.borrow_and_update().clone();
        // The watch holds the latest state: a jump in the transition count
        // means steps were missed (a step down and back, say). The modules
        // get a step down before the new state.
        if s.transitions > seen + 1 && last.is_some_and(|(a, _)| a == ActivityLevel::Active) {
            let missed = s.transitions - seen - 1;
            println!("{id}: {missed} state changes since the last one seen: stepping down first");
            tracing::info!(missed, "state changes missed: the modules step down first");
            let m = modules.clone();
            let _ = tokio::task::spawn_blocking(move || m.set_activity(ActivityLevel::Cold)).await;
            last = Some((ActivityLevel::Cold, s.epoch));
        }
        seen = s.transitions;
        if last != Some((s.activity, s.epoch)) {
            let active = s.active_node.as_deref().unwrap_or("-");
            println!(
                "{id}: {:?} (epoch {}, active node {active})",
                s.activity, s.epoch
            );
            tracing::info!(activity = ?s.activity, epoch = s.epoch, active, "activity");
            // Modules may block (a device connection, say): off the async
            // threads, and in order.
            let (m, level) = (modules.clone(), s.activity);
            let _ = tokio::task::spawn_blocking(move || m.set_activity(level)).await;
            last = Some((s.activity, s.epoch));
        }
        if w.changed().await.is_err() {
            return;
        }
    }
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Without handlers the default action (exit) applies.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// A running gateway. Dropping it stops the node abruptly (as a crash
/// would, minus the process); [`RunningGateway::shutdown`] stops in order.
pub struct RunningGateway {
    id: String,
    role: NodeRole,
    node: Option<Arc<NodeHandle>>,
    modules: Arc<Modules>,
    history: Arc<History>,
    audit: Arc<AuditLog>,
    status_addr: SocketAddr,
    link_addr: Option<SocketAddr>,
    status_task: Option<JoinHandle<std::io::Result<()>>>,
    follower: Option<JoinHandle<()>>,
    fleet: Option<Arc<crate::fleet::FleetRunner>>,
}

impl RunningGateway {
    /// The node.
    pub fn node(&self) -> &NodeHandle {
        self.node.as_ref().expect("the node runs until shutdown")
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        self.node().store()
    }

    /// Where the operator surface listens.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// Where the master's link listens (None on a backup).
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.link_addr
    }

    /// The node's audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Waits until the gateway cannot go on (the operator surface failed).
    pub async fn fatal(&mut self) -> GatewayError {
        match self.status_task.as_mut() {
            Some(t) => match t.await {
                Ok(Ok(())) => GatewayError::Status("stopped".into()),
                Ok(Err(e)) => GatewayError::Status(e.to_string()),
                Err(e) => GatewayError::Status(e.to_string()),
            },
            None => std::future::pending().await,
        }
    }

    /// Stops in order: local writes are refused, the modules shut down, a
    /// backup's buffered history gets up to [`HISTORY_FLUSH`] to reach the
    /// master, the operator surface stops, then the node closes its link and
    /// its store work ends.
    pub async fn shutdown(mut self) {
        let node = self.node.take().expect("shutdown once");
        node.store()
            .set_write_gate(Some(format!("gateway {} is shutting down", self.id)));
        let m = self.modules.clone();
        let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
        if let Some(f) = self.fleet.take() {
            f.stop().await;
        }
        if self.role == NodeRole::Backup {
            let deadline = Instant::now() + HISTORY_FLUSH;
            loop {
                let left = self.history.buffered().map_or(0, |b| b.len());
                if left == 0 {
                    break;
                }
                if Instant::now() >= deadline || !node.state().peer_connected {
                    tracing::warn!(
                        items = left,
                        "history not yet delivered to the master stays buffered for the next start"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(t) = self.follower.take() {
            t.abort();
            let _ = t.await;
        }
        if let Some(t) = self.status_task.take() {
            t.abort();
            let _ = t.await;
        }
        match Arc::try_unwrap(node) {
            Ok(node) => node.shutdown().await,
            Err(_) => {
                tracing::warn!("the node is still shared: it stops when the last handle goes")
            }
        }
        println!("{}: stopped", self.id);
        tracing::info!("stopped");
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(t) = self.follower.take() {
            t.abort();
        }
        if let Some(t) = self.status_task.take() {
            t.abort();
        }
    }
}

/// The `main` of a gateway program, in one line:
///
/// ```no_run
/// # use persist::module::{Module, ModuleContext, ModuleError};
/// # struct Alarms;
/// # impl Module for Alarms {
/// #     fn name(&self) -> &'static str { "alarms" }
/// #     fn version(&self) -> &'static str { "1.0.0" }
/// #     fn register(&self, _: &mut ModuleContext) -> Result<(), ModuleError> { Ok(()) }
/// # }
/// fn main() {
///     persist_gateway::main(|gateway| gateway.module(Alarms))
/// }
/// ```
///
/// Takes the config file as its one argument, runs until SIGTERM or SIGINT
/// and exits 0 after an ordered shutdown; prints the error and exits 1 on a
/// config mistake or a fatal error, 2 on a usage error.
pub fn main(modules: impl FnOnce(Gateway) -> Gateway) -> ! {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: gateway <config.toml>");
        std::process::exit(2);
    };
    let name = std::env::args()
        .next()
        .and_then(|p| {
            Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "gateway".into());
    match Gateway::from_config_file(&path).and_then(|g| modules(g).run()) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
    }
}
