//! Profiling aid: single-row or batched inserts through the store.
//! `cargo run --release --example profile_single -- 1 50000`
use persist::{PersistentRecord, Store};

#[derive(PersistentRecord, Debug, Clone)]
struct BenchRow {
    #[persist(identity)]
    id: i64,
    name: String,
    value: i32,
    active: bool,
    note: Option<String>,
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (per_tx, n) = (args.first().copied().unwrap_or(1), args.get(1).copied().unwrap_or(50_000));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path().join("p.db")).unwrap();
    store.register::<BenchRow>().unwrap();
    let rows: Vec<BenchRow> = (0..n)
        .map(|i| BenchRow { id: 0, name: format!("device-{i:08}-gateway-a"), value: i as i32, active: true, note: None })
        .collect();
    let t = std::time::Instant::now();
    for chunk in rows.chunks(per_tx) {
        store.write(|tx| { for r in chunk { tx.insert(r)?; } Ok(()) }).unwrap();
    }
    println!("{:.0} rows/s", n as f64 / t.elapsed().as_secs_f64());
}
