//! `persist-node`: one node of a replicated pair as a real process, used by
//! the process-level tests (SIGKILL campaigns, restarts) and benchmarks.
//!
//! ```text
//! persist-node master --db m.db --listen 127.0.0.1:0 --secret-file s [--write-txs N --rows-per-tx K --sync-timeout-ms T]
//! persist-node backup --db b.db --peer 127.0.0.1:PORT --secret-file s
//! ```
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
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::worker::backup::start_backup;
use persist::sync::worker::master::start_master;
use persist::sync::worker::{SyncConfig, SyncError};
use persist::Store;

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
    /// Longest delay between reconnection attempts, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    reconnect_max_ms: u64,
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

fn open(
    common: &Common,
    default_id: &str,
) -> Result<(Store, SyncConfig), Box<dyn std::error::Error>> {
    let store = Store::open_sqlite(&common.db)?;
    if common.schema_v2 {
        store.register::<v2::Item>()?;
    } else {
        store.register::<Item>()?;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match Cli::parse().role {
        Role::Master {
            common,
            listen,
            write_txs,
            rows_per_tx,
            sync_timeout_ms,
            first_tx,
        } => {
            let (store, cfg) = open(&common, "master")?;
            let master = rt.block_on(async {
                let acceptor = TcpAcceptor::bind(listen.as_str(), None).await?;
                line(format_args!("LISTENING {}", acceptor.local_socket_addr()));
                start_master(store.clone(), acceptor, cfg)
            })?;
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
            let _backup =
                rt.block_on(async { start_backup(store.clone(), TcpDialer::new(peer, None), cfg) });
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
