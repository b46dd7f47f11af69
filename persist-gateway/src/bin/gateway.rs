//! `gateway`: one node of a redundant pair, from a TOML config file.
//!
//! `cargo run --release -p persist-gateway --bin gateway -- gw-a.toml`
//!
//! Runs the sample module of `examples/common/module.rs` on the node, the
//! redundancy runtime, and the operator surface (state, metrics, status page,
//! actions). See the README for a pair in two terminals. The config:
//!
//! ```toml
//! [node]
//! id = "gw-a"
//! role = "master"                  # master | backup
//! cluster = "plant-7"
//!
//! [link]
//! listen = "127.0.0.1:8060"        # master: where the backup dials
//! peer = "127.0.0.1:8061"          # backup: the master's address; master: probed for a second master
//! secret_file = "pair.secret"      # required, at least 16 bytes
//! # tls_cert = "gw-a.pem"  tls_key = "gw-a.key"  tls_ca = "ca.pem"   (mutual TLS, optional)
//!
//! [redundancy]
//! standby = "cold"                 # cold | warm
//! failover_timeout_ms = 3000       # at least two heartbeats
//! heartbeat_ms = 250               # at least 1
//! startup_allowance_ms = 10000     # at least one heartbeat
//! recovery = "automatic"           # automatic | manual
//! reconnect_max_ms = 10000         # backup: longest pause between dials (capped at half
//!                                  # the failover timeout and half the startup allowance)
//!
//! [database]
//! sqlite = "gw-a.db"               # or: postgres_url = "postgres://..."  postgres_schema = "gw_a"
//!
//! [status]
//! listen = "127.0.0.1:8080"        # loopback by default
//! operator_token_file = "operator.token"
//! ```

#[path = "../../../examples/common/module.rs"]
mod module;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::history::{History, HistoryLevel};
use persist::sync::redundancy::{
    ActivityLevel, NodeBuilder, NodeRole, RecoveryMode, RedundancySettings, StandbyLevel,
};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::transport::tls::{TlsClient, TlsServer};
use persist::sync::worker::SyncConfig;
use persist::{Store, StoreConfig};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    node: NodeSection,
    link: LinkSection,
    #[serde(default)]
    redundancy: RedundancySection,
    database: DatabaseSection,
    status: StatusSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    id: String,
    role: RoleName,
    cluster: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Master,
    Backup,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkSection {
    listen: Option<String>,
    peer: Option<String>,
    secret_file: PathBuf,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RedundancySection {
    standby: StandbyName,
    failover_timeout_ms: u64,
    heartbeat_ms: u64,
    startup_allowance_ms: u64,
    recovery: RecoveryName,
    reconnect_max_ms: u64,
}

impl Default for RedundancySection {
    fn default() -> Self {
        RedundancySection {
            standby: StandbyName::Cold,
            failover_timeout_ms: 3000,
            heartbeat_ms: 250,
            startup_allowance_ms: 10_000,
            recovery: RecoveryName::Automatic,
            reconnect_max_ms: 10_000,
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum StandbyName {
    Cold,
    Warm,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RecoveryName {
    Automatic,
    Manual,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    sqlite: Option<PathBuf>,
    postgres_url: Option<String>,
    postgres_schema: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusSection {
    #[serde(default = "loopback")]
    listen: String,
    operator_token_file: PathBuf,
}

fn loopback() -> String {
    "127.0.0.1:8080".into()
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Reads a file named in the config, relative to the config file.
fn read(base: &Path, file: &Path, what: &str) -> Result<Vec<u8>> {
    let path = if file.is_absolute() {
        file.to_path_buf()
    } else {
        base.join(file)
    };
    std::fs::read(&path).map_err(|e| format!("{what} {}: {e}", path.display()).into())
}

fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // toml's errors name the key and show the line.
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

async fn run(config_path: PathBuf) -> Result<()> {
    let cfg = load(&config_path)?;
    let base = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let role = match cfg.node.role {
        RoleName::Master => NodeRole::Master,
        RoleName::Backup => NodeRole::Backup,
    };
    let mut settings = RedundancySettings::new(role, cfg.node.id.clone());
    settings.standby = match cfg.redundancy.standby {
        StandbyName::Cold => StandbyLevel::Cold,
        StandbyName::Warm => StandbyLevel::Warm,
    };
    settings.failover_timeout = Duration::from_millis(cfg.redundancy.failover_timeout_ms);
    settings.heartbeat_interval = Duration::from_millis(cfg.redundancy.heartbeat_ms);
    settings.startup_allowance = Duration::from_millis(cfg.redundancy.startup_allowance_ms);
    settings.recovery = match cfg.redundancy.recovery {
        RecoveryName::Automatic => RecoveryMode::Automatic,
        RecoveryName::Manual => RecoveryMode::Manual,
    };
    validate(&config_path, &cfg, &settings)?;
    let store = match (&cfg.database.sqlite, &cfg.database.postgres_url) {
        (Some(p), None) => Store::open_sqlite(if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        })?,
        (None, Some(url)) => Store::open(StoreConfig::postgres(
            url.clone(),
            cfg.database
                .postgres_schema
                .clone()
                .unwrap_or_else(|| cfg.node.id.replace('-', "_")),
        ))?,
        _ => return Err("[database]: give exactly one of `sqlite` or `postgres_url`".into()),
    };
    module::register(&store)?;
    let secret = Secret::new(read(&base, &cfg.link.secret_file, "link.secret_file")?)
        .map_err(|e| format!("link.secret_file: {e}"))?;
    let token = String::from_utf8(read(
        &base,
        &cfg.status.operator_token_file,
        "status.operator_token_file",
    )?)?
    .trim()
    .to_owned();
    let history = History::new(
        store.clone(),
        &cfg.node.id,
        role,
        HistoryLevel::Partial,
        module::Journal,
    );
    let module = module::Module::new(&cfg.node.id, store.clone(), history.clone());
    module.listen()?;
    let mut sync = SyncConfig::new(AuthConfig::new(
        cfg.node.cluster.clone(),
        cfg.node.id.clone(),
        secret,
    )?);
    sync.reconnect_max = Duration::from_millis(cfg.redundancy.reconnect_max_ms);
    sync.reconnect_initial = sync.reconnect_initial.min(sync.reconnect_max);
    let builder = NodeBuilder::new(store.clone(), settings, sync)
        .runtime(module.runtime.clone())
        .history(history);
    let abs = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    };
    let node = match role {
        NodeRole::Master => {
            let listen = cfg
                .link
                .listen
                .clone()
                .ok_or("[link] listen: required on the master")?;
            let tls = match (&cfg.link.tls_cert, &cfg.link.tls_key) {
                (Some(c), Some(k)) => Some(TlsServer::from_pem_files(
                    &abs(c),
                    &abs(k),
                    cfg.link.tls_ca.as_ref().map(abs).as_deref(),
                )?),
                (None, None) => None,
                _ => return Err("[link]: tls_cert and tls_key go together".into()),
            };
            let acceptor = TcpAcceptor::bind(listen.as_str(), tls).await?;
            println!(
                "{}: master, link on {}",
                cfg.node.id,
                acceptor.local_socket_addr()
            );
            match &cfg.link.peer {
                // The probe speaks the link's own protocol, TLS included:
                // a second master with TLS on drops a plain dial.
                Some(peer) => {
                    let client = match (&cfg.link.tls_ca, &cfg.link.tls_cert, &cfg.link.tls_key) {
                        (Some(ca), Some(c), Some(k)) => Some(TlsClient::from_pem_files(
                            &abs(ca),
                            Some((abs(c).as_path(), abs(k).as_path())),
                        )?),
                        (Some(ca), _, _) => Some(TlsClient::from_pem_files(&abs(ca), None)?),
                        _ => None,
                    };
                    builder.start_master_probing(
                        acceptor,
                        TcpDialer::new(peer.clone(), client),
                        Duration::from_secs(5),
                    )?
                }
                None => builder.start_master(acceptor)?,
            }
        }
        _ => {
            let peer = cfg
                .link
                .peer
                .clone()
                .ok_or("[link] peer: required on the backup (the master's address)")?;
            let tls = match &cfg.link.tls_ca {
                Some(ca) => Some(TlsClient::from_pem_files(
                    &abs(ca),
                    cfg.link
                        .tls_cert
                        .as_ref()
                        .zip(cfg.link.tls_key.as_ref())
                        .map(|(c, k)| (abs(c), abs(k)))
                        .as_ref()
                        .map(|(c, k)| (c.as_path(), k.as_path())),
                )?),
                None => None,
            };
            println!("{}: backup of {peer}", cfg.node.id);
            builder.start_backup(TcpDialer::new(peer, tls))?
        }
    };
    let node = Arc::new(node);
    let status = tokio::net::TcpListener::bind(&cfg.status.listen)
        .await
        .map_err(|e| format!("[status] listen {}: {e}", cfg.status.listen))?;
    println!(
        "{}: status page http://{}/ (state: /state, metrics: /metrics)",
        cfg.node.id,
        status.local_addr()?
    );
    tokio::spawn(persist_gateway::operator::serve(
        status,
        cfg.node.id.clone(),
        node.clone(),
        token,
    ));
    let mut w = node.watch();
    let mut last = None;
    let mut seen = 0;
    loop {
        let s = w.borrow_and_update().clone();
        // The watch holds the latest state: a jump in the transition count
        // means steps were missed (a step down and back, say). The module
        // treats it as a step down before the new state.
        if s.transitions > seen + 1 && last.is_some_and(|(a, _)| a == ActivityLevel::Active) {
            println!(
                "{}: {} state changes since the last one seen: stepping down first",
                cfg.node.id,
                s.transitions - seen - 1
            );
            module.set_activity(ActivityLevel::Cold);
            last = Some((ActivityLevel::Cold, s.epoch));
        }
        seen = s.transitions;
        if last != Some((s.activity, s.epoch)) {
            println!(
                "{}: {:?} (epoch {}, active node {})",
                cfg.node.id,
                s.activity,
                s.epoch,
                s.active_node.as_deref().unwrap_or("-")
            );
            module.set_activity(s.activity);
            last = Some((s.activity, s.epoch));
        }
        if s.activity == ActivityLevel::Active {
            // The module's own loop would scan its devices here.
        }
        if w.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Checks the timers as the node will (every duration has a rule), naming
/// the config key, and settings that contradict each other.
fn validate(path: &Path, cfg: &Config, settings: &RedundancySettings) -> Result<()> {
    let key = |setting: &str| match setting {
        "heartbeat_interval" => "[redundancy] heartbeat_ms",
        "failover_timeout" => "[redundancy] failover_timeout_ms",
        "startup_allowance" => "[redundancy] startup_allowance_ms",
        "node_id" => "[node] id",
        _ => "[redundancy]",
    };
    if let Err(e) = settings.validate() {
        return Err(format!("{}: {}: {}", path.display(), key(e.setting), e.problem).into());
    }
    if cfg.redundancy.reconnect_max_ms == 0 {
        return Err(format!(
            "{}: [redundancy] reconnect_max_ms: must be at least 1",
            path.display()
        )
        .into());
    }
    if let (Some(listen), Some(peer)) = (&cfg.link.listen, &cfg.link.peer) {
        if listen == peer {
            return Err(format!(
                "{}: [link] peer: {peer} is this node's own listen address; \
                 give the other node's link address",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

fn main() {
    // A panic in any task stops the gateway with a non-zero status.
    persist::sync::panic::exit_on_panic();
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: gateway <config.toml>");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(PathBuf::from(path))) {
        eprintln!("gateway: {e}");
        std::process::exit(1);
    }
}
