//! `persist-node`: one node of a replicated pair as a real process, used by
//! the process-level tests (SIGKILL campaigns, restarts) and benchmarks.
//!
//! ```text
//! persist-node master --db m.db --listen 127.0.0.1:0 --secret-file s [--write-txs N --rows-per-tx K --sync-timeout-ms T]
//! persist-node backup --db b.db --peer 127.0.0.1:PORT --secret-file s
//! ```
//! `--tags` (either role) also registers the sample module's shapes;
//! `--pg-url URL --pg-schema S` keeps the store on PostgreSQL.
//! It prints one line per event on stdout: `LISTENING <addr>`, `ACKED <tx>`
//! (a synchronous commit the backup confirmed), `UNCONFIRMED <tx>`,
//! `POSITION <n>`, `DONE`. Records: [`Item`], an `i64` identity, the
//! transaction number, the row's sequence in it, and a payload.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use persist::prelude::*;
use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::redundancy::{
    NodeBuilder, NodeHandle, NodeRole, RecoveryMode, RedundancySettings,
};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::worker::{SyncConfig, SyncError};
use persist::Store;
use std::sync::Arc;

#[path = "../../benches/shapes/mod.rs"]
#[allow(dead_code)] // the writers are the benchmark's
mod shapes;

/// A row written by the load generator; `tx` groups the rows of one transaction.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
struct Item {
    #[persist(identity)]
    id: i64,
    #[persist(indexed)]
    tx: i64,
    seq: i32,
    payload: String,
}

/// Another version of [`Item`] (an extra column): its schema fingerprint differs.
mod v2 {
    use persist::PersistentRecord;
    /// See the module docs.
    #[derive(PersistentRecord, Debug, Clone, PartialEq)]
    #[persist(table = "item")]
    pub(crate) struct Item {
        #[persist(identity)]
        id: i64,
        #[persist(indexed)]
        tx: i64,
        seq: i32,
        payload: String,
        extra: Option<String>,
    }
}

#[derive(Parser)]
#[command(about = "One node of a persist redundant pair (test and benchmark tool)")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(clap::Args)]
struct Common {
    /// SQLite database file.
    #[arg(long)]
    db: PathBuf,
    /// File holding the shared secret (at least 16 bytes).
    #[arg(long)]
    secret_file: PathBuf,
    /// Cluster name.
    #[arg(long, default_value = "test-pair")]
    cluster: String,
    /// This node's id.
    #[arg(long)]
    node_id: Option<String>,
    /// Register the second version of the schema (to test mismatches).
    #[arg(long)]
    schema_v2: bool,
    /// Also register the sample module's shapes (profiles, devices, tags:
    /// references, unique and plain indexes, a long text column), as the
    /// replication benchmark's realistic case does.
    #[arg(long)]
    tags: bool,
    /// Keep the store on PostgreSQL at this URL instead of SQLite (`--db`
    /// is then ignored); `--pg-schema` names its schema.
    #[arg(long)]
    pg_url: Option<String>,
    /// The PostgreSQL schema of the store (with `--pg-url`).
    #[arg(long, default_value = "persist_node")]
    pg_schema: String,
    /// Longest delay between reconnection attempts, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    reconnect_max_ms: u64,
    /// Silence from the master after which the backup takes over, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    failover_timeout_ms: u64,
    /// Heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
    /// How long a starting node waits for its peer, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    startup_allowance_ms: u64,
    /// Master recovery: `automatic` or `manual` (the backup's setting decides).
    #[arg(long, default_value = "automatic")]
    recovery: String,
    /// For tests: a task panics after this many milliseconds (the process
    /// must then exit with a non-zero status).
    #[arg(long, hide = true)]
    panic_in_task_after_ms: Option<u64>,
}

#[derive(Subcommand)]
enum Role {
    /// Serve the log to a backup; optionally generate a write load.
    Master {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Transactions to write (0: none, serve only).
        #[arg(long, default_value_t = 0)]
        write_txs: u64,
        /// Rows per transaction.
        #[arg(long, default_value_t = 3)]
        rows_per_tx: i32,
        /// Synchronous commit timeout per transaction (0: asynchronous commits).
        #[arg(long, default_value_t = 2000)]
        sync_timeout_ms: u64,
        /// First transaction number (to continue after a restart).
        #[arg(long, default_value_t = 0)]
        first_tx: i64,
        /// The peer's address, probed to make sure it is not a master too.
        #[arg(long)]
        probe_peer: Option<String>,
    },
    /// Follow a master.
    Backup {
        #[command(flatten)]
        common: Common,
        /// The master's address.
        #[arg(long)]
        peer: String,
    },
}

fn line(s: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn settings(
    common: &Common,
    role: NodeRole,
    node_id: &str,
) -> Result<RedundancySettings, Box<dyn std::error::Error>> {
    let mut s = RedundancySettings::new(role, node_id);
    s.failover_timeout = Duration::from_millis(common.failover_timeout_ms);
    s.heartbeat_interval = Duration::from_millis(common.heartbeat_ms);
    s.startup_allowance = Duration::from_millis(common.startup_allowance_ms);
    s.recovery = match common.recovery.as_str() {
        "automatic" => RecoveryMode::Automatic,
        "manual" => RecoveryMode::Manual,
        other => {
            return Err(format!("--recovery: expected automatic or manual, got {other:?}").into())
        }
    };
    Ok(s)
}

/// Prints every change of the node's redundancy state, and runs operator
/// commands read from standard input: SWITCHOVER, HANDBACK.
fn narrate(rt: &tokio::runtime::Runtime, node: &Arc<NodeHandle>) {
    let n = node.clone();
    rt.spawn(async move {
        let mut w = n.watch();
        let mut last = None;
        loop {
            let s = w.borrow_and_update().clone();
            let key = (s.activity, s.epoch, s.active_node.clone());
            if last.as_ref() != Some(&key) {
                line(format_args!(
                    "ACTIVITY {:?} EPOCH {} ACTIVE {}",
                    s.activity,
                    s.epoch,
                    s.active_node.as_deref().unwrap_or("-")
                ));
                last = Some(key);
            }
            if w.changed().await.is_err() {
                return;
            }
        }
    });
    let n = node.clone();
    let handle = rt.handle().clone();
    std::thread::spawn(move || {
        for cmd in std::io::stdin().lines().map_while(Result::ok) {
            let r = match cmd.trim() {
                "SWITCHOVER" => handle
                    .block_on(n.request_switchover())
                    .map_err(|e| e.to_string()),
                "HANDBACK" => handle
                    .block_on(n.request_handback())
                    .map_err(|e| e.to_string()),
                "" => continue,
                other => Err(format!("unknown command {other}")),
            };
            line(format_args!(
                "COMMAND {} {}",
                cmd.trim(),
                r.map_or_else(|e| format!("refused: {e}"), |()| "ok".to_string())
            ));
        }
    });
}

fn open(
    common: &Common,
    default_id: &str,
) -> Result<(Store, SyncConfig), Box<dyn std::error::Error>> {
    let store = match &common.pg_url {
        Some(url) => Store::open(persist::StoreConfig::postgres(
            url.clone(),
            common.pg_schema.clone(),
        ))?,
        None => Store::open_sqlite(&common.db)?,
    };
    if common.schema_v2 {
        store.register::<v2::Item>()?;
    } else {
        store.register::<Item>()?;
    }
    if common.tags {
        shapes::register(&store)?;
    }
    let secret = Secret::new(std::fs::read(&common.secret_file)?)?;
    let node_id = common
        .node_id
        .clone()
        .unwrap_or_else(|| default_id.to_string());
    let mut cfg = SyncConfig::new(AuthConfig::new(common.cluster.clone(), node_id, secret)?);
    cfg.reconnect_max = Duration::from_millis(common.reconnect_max_ms);
    cfg.reconnect_initial = cfg.reconnect_initial.min(cfg.reconnect_max);
    Ok((store, cfg))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    persist::sync::panic::exit_on_panic();
    // Log lines on stderr (stdout carries the event lines tests read);
    // RUST_LOG picks the level, warnings and errors by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cli = Cli::parse();
    let common = match &cli.role {
        Role::Master { common, .. } | Role::Backup { common, .. } => common,
    };
    if let Some(ms) = common.panic_in_task_after_ms {
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            panic!("a task panicked on purpose (--panic-in-task-after-ms)");
        });
    }
    match cli.role {
        Role::Master {
            common,
            listen,
            write_txs,
            rows_per_tx,
            sync_timeout_ms,
            first_tx,
            probe_peer,
        } => {
            let (store, cfg) = open(&common, "master")?;
            let red = settings(&common, NodeRole::Master, &cfg.auth.node_id)?;
            let node = Arc::new(rt.block_on(async {
                let acceptor = TcpAcceptor::bind(listen.as_str(), None).await?;
                line(format_args!("LISTENING {}", acceptor.local_socket_addr()));
                let builder = NodeBuilder::new(store.clone(), red, cfg);
                let node = match probe_peer {
                    Some(peer) => builder.start_master_probing(
                        acceptor,
                        TcpDialer::new(peer, None),
                        Duration::from_secs(2),
                    )?,
                    None => builder.start_master(acceptor)?,
                };
                Ok::<_, Box<dyn std::error::Error>>(node)
            })?);
            narrate(&rt, &node);
            let master = node.master().expect("a master node");
            let timeout = Duration::from_millis(sync_timeout_ms);
            for tx in first_tx..first_tx + write_txs as i64 {
                let write = |t: &mut persist::WriteTx<'_>| {
                    for seq in 0..rows_per_tx {
                        t.insert(&Item {
                            id: 0,
                            tx,
                            seq,
                            payload: format!("tx {tx} row {seq}"),
                        })?;
                    }
                    Ok(())
                };
                if sync_timeout_ms == 0 {
                    store.write(write)?;
                    line(format_args!("COMMITTED {tx}"));
                    continue;
                }
                match master.write_replicated(timeout, write) {
                    Ok(()) => line(format_args!("ACKED {tx}")),
                    Err(SyncError::Timeout { .. }) => line(format_args!("UNCONFIRMED {tx}")),
                    Err(e) => return Err(e.into()),
                }
            }
            line("DONE");
            rt.block_on(std::future::pending::<()>());
            Ok(())
        }
        Role::Backup { common, peer } => {
            let (store, cfg) = open(&common, "backup")?;
            let red = settings(&common, NodeRole::Backup, &cfg.auth.node_id)?;
            let node = Arc::new(rt.block_on(async {
                NodeBuilder::new(store.clone(), red, cfg).start_backup(TcpDialer::new(peer, None))
            })?);
            narrate(&rt, &node);
            let mut last = u64::MAX;
            loop {
                let p = store.position();
                if p != last {
                    line(format_args!("POSITION {p}"));
                    last = p;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
