//! Write path benchmark: derive + store + replication log, against plain
//! diesel inserts into an identical table without a log, on bundled SQLite
//! (WAL, synchronous = NORMAL), in the same process.
//!
//! `cargo bench --bench store_write` (rows: `PERSIST_BENCH_ROWS`, default 200000
//! for batched and 50000 for single-row transactions). Prints rows/s, the
//! ratio to plain diesel, and the bytes the log adds per row change (as
//! written, and as stored: the store packs large bodies with LZ4). The
//! realistic shape runs twice: with the sample module's templated
//! descriptions, and with descriptions of random letters that nothing can
//! pack, so the figure does not rest on how well the text compresses.
//!
//! `PERSIST_BENCH_ONLY=simple|shaped` runs one half, `PERSIST_BENCH_CASE=text`
//! only the cases whose label contains `text`, `PERSIST_BENCH_ROUNDS` sets the
//! rounds (3).

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
/// Rows per multi-row INSERT on the plain side when it batches (the store's
/// own batch for these tables).
const PLAIN_BATCH: usize = 100;

/// Plain diesel: `many` batches each transaction's rows into multi-row
/// inserts (`insert_into(..).values(&vec)`), as a diesel user loading rows
/// in bulk would, and is the baseline of `insert_many`; otherwise one
/// INSERT per row, the baseline of `insert`.
fn plain(
    path: &Path,
    rows: &[BenchRow],
    per_tx: usize,
    background_checkpoint: bool,
    many: bool,
) -> f64 {
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
            if many {
                let all: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, r)| {
                        (
                            plain_row::id.eq((c * per_tx + j + 1) as i64),
                            plain_row::name.eq(&r.name),
                            plain_row::value.eq(r.value),
                            plain_row::active.eq(r.active),
                            plain_row::note.eq(r.note.as_deref()),
                        )
                    })
                    .collect();
                for batch in all.chunks(PLAIN_BATCH) {
                    diesel::insert_into(plain_row::table)
                        .values(batch)
                        .execute(conn)?;
                }
            } else {
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
) -> (f64, LogBytes) {
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
    (rate, log_bytes(&store, path))
}

// The sample module's shapes (examples/alarm-module): devices that notify
// through a profile (a reference, a unique name) and the tags they expose (a
// reference with a plain index), with a long text column.
diesel::table! {
    device (id) {
        id -> BigInt,
        name -> Text,
        host -> Text,
        port -> Integer,
        profile_id -> BigInt,
        alarm_above -> Double,
    }
}

diesel::table! {
    tag (id) {
        id -> BigInt,
        device_id -> BigInt,
        address -> Text,
        scale -> Double,
        description -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(device, tag);

#[derive(PersistentRecord, Debug, Clone)]
struct NotificationProfile {
    #[persist(identity)]
    id: i64,
    #[persist(unique)]
    name: String,
    #[persist(default = true)]
    enabled: bool,
}

#[derive(PersistentRecord, Debug, Clone)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(unique)]
    name: String,
    host: String,
    #[persist(default = 502)]
    port: i32,
    #[persist(references = NotificationProfile, on_delete = "cascade")]
    profile_id: i64,
    alarm_above: f64,
}

#[derive(PersistentRecord, Debug, Clone)]
struct Tag {
    #[persist(identity)]
    id: i64,
    #[persist(references = Device, on_delete = "cascade", indexed)]
    device_id: i64,
    address: String,
    #[persist(default = 1.0)]
    scale: f64,
    /// The long text column: an operator's description of the point.
    description: String,
}

/// Devices per 1000-row transaction of the realistic shape; the rest are
/// their tags (49 each).
const DEVICES_PER_TX: usize = 20;
const PROFILES: i64 = 10;

/// The realistic load: per transaction, `DEVICES_PER_TX` devices and their
/// tags, `per_tx` rows in all (a configuration import).
#[derive(Clone)]
struct Shaped {
    devices: Vec<Device>,
    tags: Vec<Tag>,
}

/// The description column's text.
#[derive(Clone, Copy, PartialEq)]
enum Text {
    /// The sample module's: a template with the register's numbers.
    Templated,
    /// 240 random lowercase letters per row: LZ4 finds nothing to pack.
    Random,
}

fn random_text(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

fn shaped(txs: usize, per_tx: usize, text: Text) -> Vec<Shaped> {
    let tags_per_device = (per_tx - DEVICES_PER_TX) / DEVICES_PER_TX;
    (0..txs)
        .map(|t| {
            let devices = (0..DEVICES_PER_TX)
                .map(|d| {
                    let n = t * DEVICES_PER_TX + d;
                    Device {
                        id: 0,
                        name: format!("plc-{n:07}"),
                        host: format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256),
                        port: 502,
                        profile_id: (n as i64 % PROFILES) + 1,
                        alarm_above: 80.5,
                    }
                })
                .collect();
            let tags = (0..DEVICES_PER_TX * tags_per_device)
                .map(|i| Tag {
                    id: 0,
                    // Filled with the device's key when written.
                    device_id: (i / tags_per_device) as i64,
                    address: format!("ns=2;s=Line{t}.Cell{}.Register{i:04}", i % 7),
                    scale: 0.1,
                    description: match text {
                        Text::Templated => format!(
                            "Holding register {i} of cell {}: motor current in tenths of an \
                             ampere, sampled every 500 ms, alarms above the device threshold; \
                             commissioned on line {t}, see the wiring diagram sheet {} for the \
                             terminal layout.",
                            i % 7,
                            i % 97
                        ),
                        Text::Random => random_text((t * per_tx + i) as u64, 240),
                    },
                })
                .collect();
            Shaped { devices, tags }
        })
        .collect()
}

fn shaped_rows(data: &[Shaped]) -> usize {
    data.iter().map(|s| s.devices.len() + s.tags.len()).sum()
}

/// Plain diesel on the same tables: the same columns, the same unique and
/// plain indexes, the same deferred foreign keys (SQLite checks them), every
/// column bound with `.eq()`.
/// Plain diesel on the shape; `many` as in [`plain`].
fn plain_shaped(path: &Path, data: &[Shaped], background_checkpoint: bool, many: bool) -> f64 {
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         CREATE TABLE notification_profile (id INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,
                                            enabled BOOLEAN NOT NULL DEFAULT 1);
         CREATE UNIQUE INDEX notification_profile__name__key ON notification_profile (name);
         CREATE TABLE device (id INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, host TEXT NOT NULL,
                              port INTEGER NOT NULL DEFAULT 502,
                              profile_id BIGINT NOT NULL REFERENCES notification_profile(id) DEFERRABLE INITIALLY DEFERRED,
                              alarm_above DOUBLE PRECISION NOT NULL);
         CREATE UNIQUE INDEX device__name__key ON device (name);
         CREATE TABLE tag (id INTEGER NOT NULL PRIMARY KEY,
                           device_id BIGINT NOT NULL REFERENCES device(id) DEFERRABLE INITIALLY DEFERRED,
                           address TEXT NOT NULL, scale DOUBLE PRECISION NOT NULL DEFAULT 1.0,
                           description TEXT NOT NULL);
         CREATE INDEX tag__device_id__idx ON tag (device_id);",
    )
    .unwrap();
    for p in 1..=PROFILES {
        conn.batch_execute(&format!(
            "INSERT INTO notification_profile (id, name, enabled) VALUES ({p}, 'profile-{p}', 1)"
        ))
        .unwrap();
    }
    let _checkpointer = background_checkpoint.then(|| {
        conn.batch_execute("PRAGMA wal_autocheckpoint = 16384")
            .unwrap();
        Checkpointer::start(&SqliteOptions::new(path), Duration::from_millis(100)).unwrap()
    });
    let (mut next_device, mut next_tag) = (1i64, 1i64);
    let start = Instant::now();
    for s in data {
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            let first_device = next_device;
            let devices: Vec<_> = s
                .devices
                .iter()
                .map(|d| {
                    next_device += 1;
                    (
                        device::id.eq(next_device - 1),
                        device::name.eq(&d.name),
                        device::host.eq(&d.host),
                        device::port.eq(d.port),
                        device::profile_id.eq(d.profile_id),
                        device::alarm_above.eq(d.alarm_above),
                    )
                })
                .collect();
            let tags: Vec<_> = s
                .tags
                .iter()
                .map(|t| {
                    next_tag += 1;
                    (
                        tag::id.eq(next_tag - 1),
                        tag::device_id.eq(first_device + t.device_id),
                        tag::address.eq(&t.address),
                        tag::scale.eq(t.scale),
                        tag::description.eq(&t.description),
                    )
                })
                .collect();
            if many {
                for batch in devices.chunks(PLAIN_BATCH) {
                    diesel::insert_into(device::table)
                        .values(batch)
                        .execute(conn)?;
                }
                for batch in tags.chunks(PLAIN_BATCH) {
                    diesel::insert_into(tag::table)
                        .values(batch)
                        .execute(conn)?;
                }
            } else {
                for d in devices {
                    diesel::insert_into(device::table).values(d).execute(conn)?;
                }
                for t in tags {
                    diesel::insert_into(tag::table).values(t).execute(conn)?;
                }
            }
            Ok(())
        })
        .unwrap();
    }
    shaped_rows(data) as f64 / start.elapsed().as_secs_f64()
}

/// Bytes of log entries (their bodies and the 40 bytes of position, epoch,
/// commit time and digest): as the entries carry them, and as the store
/// keeps them.
#[derive(Clone, Copy, Default)]
struct LogBytes {
    written: u64,
    stored: u64,
}

impl LogBytes {
    fn line(self, rows: usize) -> String {
        format!(
            "{:.1} bytes of log per row change as written, {:.1} as stored (entry overhead included)",
            self.written as f64 / rows as f64,
            self.stored as f64 / rows as f64
        )
    }
}

/// Position, epoch, commit time (8 bytes each) and digest (16) of an entry.
const ENTRY_OVERHEAD: u64 = 8 * 3 + 16;

#[derive(QueryableByName)]
struct Total {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn log_bytes(store: &Store, path: &Path) -> LogBytes {
    let (mut entries, mut written) = (0, 0);
    for e in store.log_iter(1, 1000) {
        entries += 1;
        written += e.unwrap().plain_len() as u64;
    }
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let stored = diesel::sql_query("SELECT COALESCE(SUM(LENGTH(body)), 0) AS n FROM _persist_log")
        .get_result::<Total>(&mut conn)
        .unwrap()
        .n as u64;
    LogBytes {
        written: written + entries * ENTRY_OVERHEAD,
        stored: stored + entries * ENTRY_OVERHEAD,
    }
}

fn persist_shaped(
    path: &Path,
    data: &[Shaped],
    background_checkpoint: bool,
    many: bool,
) -> (f64, LogBytes) {
    let mut o = SqliteOptions::new(path);
    if !background_checkpoint {
        o.background_checkpoint = None;
    }
    let store = Store::open(StoreConfig {
        backend: BackendConfig::Sqlite(o),
        ..StoreConfig::sqlite(path)
    })
    .unwrap();
    store.register::<NotificationProfile>().unwrap();
    store.register::<Device>().unwrap();
    store.register::<Tag>().unwrap();
    store
        .write(|tx| {
            for p in 1..=PROFILES {
                tx.insert(&NotificationProfile {
                    id: 0,
                    name: format!("profile-{p}"),
                    enabled: true,
                })?;
            }
            Ok(())
        })
        .unwrap();
    // The module owns its records and fills in each tag's device key once
    // the devices have theirs, in place; the copy for this round is made
    // before the clock starts (plain diesel binds the shared data by
    // reference, so cloning inside the loop charged persist for the
    // harness: 10 % of its time).
    let mut data = data.to_vec();
    let start = Instant::now();
    for s in &mut data {
        store
            .write(|tx| {
                let keys = if many {
                    tx.insert_many(&s.devices)?
                } else {
                    let mut keys = Vec::with_capacity(s.devices.len());
                    for d in &s.devices {
                        keys.push(tx.insert(d)?);
                    }
                    keys
                };
                for t in &mut s.tags {
                    t.device_id = keys[t.device_id as usize];
                }
                if many {
                    tx.insert_many(&s.tags)?;
                } else {
                    for t in &s.tags {
                        tx.insert(t)?;
                    }
                }
                Ok(())
            })
            .unwrap();
    }
    let rate = shaped_rows(&data) as f64 / start.elapsed().as_secs_f64();
    (rate, log_bytes(&store, path))
}

/// Runs plain diesel and persist once per round, each in a fresh directory,
/// alternating which goes first so neither always runs on a warmer cache.
/// Returns both sides' rates and the log bytes of persist's last round.
fn rounds_of(
    rounds: usize,
    mut plain: impl FnMut(&Path) -> f64,
    mut ours: impl FnMut(&Path) -> (f64, LogBytes),
) -> (Vec<f64>, Vec<f64>, LogBytes) {
    let (mut p, mut l, mut bytes) = (Vec::new(), Vec::new(), LogBytes::default());
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let mut run_ours = || {
            let (r, b) = ours(dir.path());
            l.push(r);
            bytes = b;
        };
        if round % 2 == 0 {
            p.push(plain(dir.path()));
            run_ours();
        } else {
            run_ours();
            p.push(plain(dir.path()));
        }
    }
    (p, l, bytes)
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
    let rounds: usize = std::env::var("PERSIST_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // `PERSIST_BENCH_CASE=text` runs only the cases whose label contains it
    // (to profile one case, say).
    let case = std::env::var("PERSIST_BENCH_CASE").unwrap_or_default();
    let wanted = |label: &str, bg_label: &str| format!("{label}, {bg_label}").contains(&case);
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
    // `PERSIST_BENCH_ONLY=simple` or `=shaped` runs one half.
    let only = std::env::var("PERSIST_BENCH_ONLY").unwrap_or_default();
    let cases: &[(&str, usize, usize, f64, bool)] = if only == "shaped" {
        &[]
    } else {
        &[
            ("1000-row tx, insert_many", rows_batched, 1000, 0.8, true),
            (
                "1000-row tx, insert per row",
                rows_batched,
                1000,
                0.8,
                false,
            ),
            ("single-row tx", rows_single, 1, 0.7, false),
        ]
    };
    for &(label, n, per_tx, target, many) in cases {
        let data: Vec<BenchRow> = (0..n).map(row).collect();
        // Both sides always run the same checkpoint regime.
        for (bg, bg_label) in [
            (true, "background checkpoints"),
            (false, "checkpoints in commit"),
        ] {
            if !wanted(label, bg_label) {
                continue;
            }
            let (p, l, bytes) = rounds_of(
                rounds,
                |dir| plain(&dir.join("plain.db"), &data, per_tx, bg, many),
                |dir| persist(&dir.join("log.db"), &data, per_tx, bg, many),
            );
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
                println!("{:<52} {}", "", bytes.line(n));
            }
        }
    }
    if only == "simple" {
        return;
    }
    println!();
    println!("realistic shape (examples/alarm-module): per 1000-row tx, {DEVICES_PER_TX} devices (unique name, reference to a profile)");
    println!("and their tags (reference to the device, plain index, ~240-byte description); plain diesel has the same tables");
    // The random-text variant runs the batched case only: it is there to
    // show what the figure is when the log cannot be packed.
    let variants = [
        (Text::Templated, "shaped 1000-row tx", &[true, false][..]),
        (
            Text::Random,
            "shaped, random text, 1000-row tx",
            &[true][..],
        ),
    ];
    for (text, name, modes) in variants {
        let data = shaped(rows_batched / 1000, 1000, text);
        for &many in modes {
            let label = if many {
                format!("{name}, insert_many")
            } else {
                format!("{name}, insert per row")
            };
            for (bg, bg_label) in [
                (true, "background checkpoints"),
                (false, "checkpoints in commit"),
            ] {
                if !wanted(&label, bg_label) {
                    continue;
                }
                let (p, l, bytes) = rounds_of(
                    rounds,
                    |dir| plain_shaped(&dir.join("plain.db"), &data, bg, many),
                    |dir| persist_shaped(&dir.join("log.db"), &data, bg, many),
                );
                let (pm, lm) = (median(p.clone()), median(l.clone()));
                let ratios: Vec<f64> = l.iter().zip(&p).map(|(l, p)| l / p).collect();
                let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().copied().fold(0.0, f64::max);
                println!(
                    "{:<52} {:>12.0} {:>12.0} {:>6.2} {:>7}   (per-round ratios {lo:.2}-{hi:.2})",
                    format!("{label}, {bg_label}"),
                    pm,
                    lm,
                    lm / pm,
                    ">= 0.8"
                );
                if bg {
                    println!("{:<52} {}", "", bytes.line(shaped_rows(&data)));
                }
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
