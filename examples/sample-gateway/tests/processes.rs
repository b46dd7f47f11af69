//! Real processes, real faults: `persist-node` master and backup on loopback
//! TCP, killed with SIGKILL at random moments.
//!
//! `PERSIST_CRASH_TRIALS` sets the number of master crashes in the campaign
//! (default 20); `PERSIST_CRASH_SEED` replays a campaign.

mod nodes;

use std::path::Path;
use std::time::{Duration, Instant};

use nodes::Pair;

use persist::{PersistentRecord, Store};

/// The record `persist-node` writes (same table and columns, so the same schema).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
struct Item {
    #[persist(identity)]
    id: i64,
    #[persist(indexed)]
    tx: i64,
    seq: i32,
    payload: String,
}

fn open(path: &Path) -> Store {
    let s = Store::open_sqlite(path).unwrap();
    s.register::<Item>().unwrap();
    s
}

/// Waits until both databases are at the same position with the same digest.
/// The stores are opened afresh each time: other processes write these files.
fn converge(m: &Path, b: &Path) -> (Store, Store) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ms, bs) = (open(m), open(b));
        if ms.position() == bs.position() && ms.digest() == bs.digest() && ms.position() > 0 {
            return (ms, bs);
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: master at {}, backup at {}",
            ms.position(),
            bs.position()
        );
        drop((ms, bs));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rows(s: &Store) -> Vec<Item> {
    s.list::<Item>().unwrap()
}

#[test]
fn backup_killed_mid_stream_catches_up_after_restart() {
    let pair = Pair::new();
    let (master, addr) = pair.master(&[
        "--write-txs",
        "3000",
        "--rows-per-tx",
        "5",
        "--sync-timeout-ms",
        "0",
    ]);
    let mut backup = pair.backup(&addr);
    for round in 0..3 {
        // Let it stream a while, then kill it in the middle of the flow.
        let _ = backup.expect("POSITION ");
        std::thread::sleep(Duration::from_millis(60 + round * 40));
        backup.kill();
        backup = pair.backup(&addr);
    }
    // Compare once the master has written everything (a backup that keeps
    // up can match a master still writing).
    master.expect("DONE");
    let (m, b) = converge(&pair.path("master.db"), &pair.path("backup.db"));
    assert_eq!(rows(&b), rows(&m));
    assert!(b.verify().unwrap().is_consistent());
}

/// A small deterministic generator (SplitMix64) for kill timings.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[test]
fn crash_campaign_loses_no_acknowledged_write() {
    let trials: u64 = std::env::var("PERSIST_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("PERSIST_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash campaign: {trials} trials, PERSIST_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let pair = Pair::new();
    let rows_per_tx = 4;
    // The master listens on a fixed port across restarts, so the backup keeps dialing one address.
    let (probe, addr) = pair.master(&[]);
    drop(probe);
    let backup = pair.backup(&addr);
    let mut acked: Vec<i64> = Vec::new();
    for trial in 0..trials {
        let first_tx = (trial * 1_000_000).to_string();
        let (mut master, _) = pair.master(&[
            "--listen",
            &addr,
            "--write-txs",
            "100000",
            "--rows-per-tx",
            &rows_per_tx.to_string(),
            "--sync-timeout-ms",
            "5000",
            "--first-tx",
            &first_tx,
        ]);
        let run_for = Duration::from_millis(100 + rng.next() % 400);
        let started = Instant::now();
        while started.elapsed() < run_for {
            if let Ok(line) = master.lines.recv_timeout(Duration::from_millis(5)) {
                if let Some(tx) = line.strip_prefix("ACKED ") {
                    acked.push(tx.parse().unwrap());
                }
            }
        }
        master.kill();
        // Lines already written before the kill count as acknowledged too.
        while let Ok(line) = master.lines.try_recv() {
            if let Some(tx) = line.strip_prefix("ACKED ") {
                acked.push(tx.parse().unwrap());
            }
        }
        // Every acknowledged write is on the backup, right now, whole.
        let b = open(&pair.path("backup.db"));
        let on_backup = rows(&b);
        let mut per_tx = std::collections::BTreeMap::<i64, i32>::new();
        for r in &on_backup {
            *per_tx.entry(r.tx).or_default() += 1;
        }
        for tx in &acked {
            assert_eq!(per_tx.get(tx), Some(&rows_per_tx), "trial {trial}: acknowledged transaction {tx} is not (whole) on the backup (seed {seed})");
        }
        for (tx, n) in &per_tx {
            assert_eq!(
                *n, rows_per_tx,
                "trial {trial}: transaction {tx} is partial on the backup (seed {seed})"
            );
        }
    }
    assert!(
        acked.len() as u64 >= trials,
        "the campaign acknowledged almost nothing: {} writes",
        acked.len()
    );
    // Bring the master back without load: the pair converges to identical data.
    let (_master, _) = pair.master(&["--listen", &addr]);
    let (m, b) = converge(&pair.path("master.db"), &pair.path("backup.db"));
    assert_eq!(rows(&b), rows(&m));
    assert!(m.verify().unwrap().is_consistent() && b.verify().unwrap().is_consistent());
    drop(backup);
    println!(
        "crash campaign: {} acknowledged transactions survived {trials} master crashes",
        acked.len()
    );
}
