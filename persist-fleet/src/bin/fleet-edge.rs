//! An edge gateway's fleet side alone, for process-level tests and the
//! benchmark: opens a SQLite store with the sample records, writes a
//! site-local note, consumes the fleet, and prints one line per change of
//! its applied position (`applied <position> <digest>`). Ends on SIGTERM,
//! SIGINT, or when its standard input closes. With `--timestamps` each line
//! also carries the wall-clock time the edge saw the position applied, in
//! microseconds since the Unix epoch (`applied <position> <digest> <us>`),
//! for the benchmark's commit-to-applied times across processes.
//!
//! `fleet-edge --url nats://127.0.0.1:4222 --cluster c --edge site-1 --key-file k --db edge.db`

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use persist_core::Store;
use persist_fleet::sample::{FleetLimit, FleetTag, SiteNote};
use persist_fleet::{Edge, FleetConfig};
use tokio::io::AsyncReadExt;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long)]
    cluster: String,
    #[arg(long)]
    edge: String,
    #[arg(long)]
    key_file: std::path::PathBuf,
    #[arg(long)]
    db: std::path::PathBuf,
    /// Appends the time (µs since the Unix epoch) to each `applied` line.
    #[arg(long)]
    timestamps: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber_init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("fleet-edge: {e}");
        std::process::exit(1);
    }
}

/// Logs go to stderr (`RUST_LOG`, default `warn`): stdout is the protocol.
fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(args: Args) -> persist_fleet::Result<()> {
    let db = args.db.clone();
    let store = tokio::task::spawn_blocking(move || {
        let store = Store::open_sqlite(db)?;
        persist_fleet::sample::register(&store)?;
        store.insert(&SiteNote {
            id: 0,
            text: "edge started".into(),
        })?;
        Ok::<_, persist_fleet::FleetError>(store)
    })
    .await
    .map_err(|e| persist_fleet::FleetError::Config(e.to_string()))??;
    let timestamps = args.timestamps;
    let cfg = FleetConfig::new(args.url, args.cluster, args.key_file)
        .with_edge(args.edge)
        .share::<FleetTag>()
        .share::<FleetLimit>();
    let edge = Edge::start(store, cfg).await?;
    println!("started");
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| persist_fleet::FleetError::Config(e.to_string()))?;
    let mut position = edge.watch_position();
    let mut last = u64::MAX;
    loop {
        let s = edge.status();
        if s.position != last {
            last = s.position;
            if timestamps {
                let us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                println!("applied {} {} {us}", s.position, s.digest);
            } else {
                println!("applied {} {}", s.position, s.digest);
            }
        }
        tokio::select! {
            r = stdin.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = position.changed() => {}
            // The digest can change without the position (a snapshot load).
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    edge.stop().await;
    Ok(())
}
