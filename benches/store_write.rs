//! Write path benchmark: derive + store + replication log, against plain
//! diesel inserts into an identical table without a log, on bundled SQLite
//! (WAL, synchronous = NORMAL), in the same process.
//!
//! `cargo bench --bench store_write` (rows: `PERSIST_BENCH_ROWS`, default 200000
//! for batched and 50000 for single-row transactions). Prints rows/s, the
//! ratio to plain diesel, and the bytes the log adds per row change.

#![allow(missing_docs)] // diesel::table! generates undocumented items

use std::path::Path;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use persist::backend::sqlite::{Checkpointer, SqliteOptions};
use persist::store::BackendConfig;
use persist::{PersistentRecord, Store, StoreConfig};

diesel::table! {
    plain_row (id) {
        id -> BigInt,
        name -> Text,
        value -> Integer,
        active -> Bool,
        note -> Nullable<Text>,
    }
}

#[derive(PersistentRecord, Debug, Clone)]
struct BenchRow {
    #[persist(identity)]
    id: i64,
    name: String,
    value: i32,
    active: bool,
    note: Option<String>,
}

fn row(i: usize) -> BenchRow {
    BenchRow {
        id: 0,
        name: format!("device-{i:08}-gateway-a"),
        value: i as i32,
        active: i % 3 != 0,
        note: (i % 2 == 0).then(|| "some note text about this row".to_string()),
    }
}

/// Plain diesel, in its fastest single-row form: every column bound with
/// `.eq()` (an `Insertable` struct turns `None` into `DEFAULT`, which changes
/// the SQL per row and defeats diesel's statement cache).
fn plain(path: &Path, rows: &[BenchRow], per_tx: usize, background_checkpoint: bool) -> f64 {
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         CREATE TABLE plain_row (id INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL,
                                 active BOOLEAN NOT NULL, note TEXT)",
    )
    .unwrap();
    // The same checkpoint regime as the store when asked: a background
    // thread checkpoints, commits do not.
    let _checkpointer = background_checkpoint.then(|| {
        conn.batch_execute("PRAGMA wal_autocheckpoint = 16384")
            .unwrap();
        Checkpointer::start(&SqliteOptions::new(path), Duration::from_millis(100)).unwrap()
    });
    let start = Instant::now();
    for (c, chunk) in rows.chunks(per_tx).enumerate() {
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            for (j, r) in chunk.iter().enumerate() {
                diesel::insert_into(plain_row::table)
                    .values((
                        plain_row::id.eq((c * per_tx + j + 1) as i64),
                        plain_row::name.eq(&r.name),
                        plain_row::value.eq(r.value),
                        plain_row::active.eq(r.active),
                        plain_row::note.eq(r.note.as_deref()),
                    ))
                    .execute(conn)?;
            }
            Ok(())
        })
        .unwrap();
    }
    rows.len() as f64 / start.elapsed().as_secs_f64()
}

fn persist(
    path: &Path,
    rows: &[BenchRow],
    per_tx: usize,
    background_checkpoint: bool,
    many: bool,
) -> (f64, u64) {
    let mut o = SqliteOptions::new(path);
    if !background_checkpoint {
        o.background_checkpoint = None;
    }
    let store = Store::open(StoreConfig {
        backend: BackendConfig::Sqlite(o),
        ..StoreConfig::sqlite(path)
    })
    .unwrap();
    store.register::<BenchRow>().unwrap();
    let start = Instant::now();
    for chunk in rows.chunks(per_tx) {
        store
            .write(|tx| {
                if many {
                    tx.insert_many(chunk)?;
                } else {
                    for r in chunk {
                        tx.insert(r)?;
                    }
                }
                Ok(())
            })
            .unwrap();
    }
    let rate = rows.len() as f64 / start.elapsed().as_secs_f64();
    let bytes: u64 = store
        .log_iter(1, 1000)
        .map(|e| e.unwrap().body.len() as u64 + 8 * 3 + 16)
        .sum();
    (rate, bytes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rows_batched: usize = std::env::var("PERSIST_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rows_single = (rows_batched / 4).max(1000);
    let rounds = 3;
    println!("persist store_write benchmark: bundled SQLite, WAL, synchronous=NORMAL, {rounds} rounds, median");
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );
    println!();
    println!(
        "{:<52} {:>12} {:>12} {:>6} {:>7}",
        "case", "plain rows/s", "log rows/s", "ratio", "target"
    );
    for (label, n, per_tx, target, many) in [
        ("1000-row tx, insert_many", rows_batched, 1000, 0.8, true),
        (
            "1000-row tx, insert per row",
            rows_batched,
            1000,
            0.8,
            false,
        ),
        ("single-row tx", rows_single, 1, 0.7, false),
    ] {
        let data: Vec<BenchRow> = (0..n).map(row).collect();
        // Both sides always run the same checkpoint regime.
        for (bg, bg_label) in [
            (true, "background checkpoints"),
            (false, "checkpoints in commit"),
        ] {
            let (mut p, mut l, mut bytes) = (Vec::new(), Vec::new(), 0);
            for round in 0..rounds {
                let dir = tempfile::tempdir().unwrap();
                // Alternate the order so neither side always runs on a warmer cache.
                if round % 2 == 0 {
                    p.push(plain(&dir.path().join("plain.db"), &data, per_tx, bg));
                    let (r, b) = persist(&dir.path().join("log.db"), &data, per_tx, bg, many);
                    l.push(r);
                    bytes = b;
                } else {
                    let (r, b) = persist(&dir.path().join("log.db"), &data, per_tx, bg, many);
                    l.push(r);
                    bytes = b;
                    p.push(plain(&dir.path().join("plain.db"), &data, per_tx, bg));
                }
            }
            let (p, l) = (median(p), median(l));
            println!(
                "{:<52} {:>12.0} {:>12.0} {:>6.2} {:>7}",
                format!("{label}, {bg_label}"),
                p,
                l,
                l / p,
                format!(">= {target}")
            );
            if bg {
                println!(
                    "{:<52} {:>12.1} bytes of log per row change (entry overhead included)",
                    "",
                    bytes as f64 / n as f64
                );
            }
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
