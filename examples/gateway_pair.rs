//! The main job: a redundant gateway pair on embedded SQLite, in one command.
//!
//! `cargo run --release --example gateway_pair`
//!
//! Starts a master and a backup on loopback TCP (databases in a temporary
//! directory), runs the sample module of `examples/common/module.rs` on both,
//! and walks through what happens, measuring it: config created on the
//! master appears on the backup; alarms are raised, notified and
//! acknowledged; the master stops abruptly and the backup takes over with the
//! acknowledgements intact and nothing notified twice; the master comes back
//! and gets the pair back, with the history the backup recorded; a forced full
//! resync. It ends with a table of the figures.

#[path = "common/module.rs"]
mod module;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use module::{Device, JournalEntry, Module, NotificationProfile, Protocol, Tag};
use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::history::{History, HistoryLevel};
use persist::sync::redundancy::{
    ActivityLevel, NodeBuilder, NodeHandle, NodeRole, RedundancySettings,
};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::worker::SyncConfig;
use persist::{Error, Store};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const SECRET: &[u8] = b"demo secret: at least 16 bytes, normally read from a file";

struct Node {
    handle: NodeHandle,
    module: Arc<Module>,
}

fn settings(role: NodeRole, id: &str) -> RedundancySettings {
    let mut s = RedundancySettings::new(role, id);
    s.failover_timeout = Duration::from_millis(1000);
    s.heartbeat_interval = Duration::from_millis(100);
    s.startup_allowance = Duration::from_secs(3);
    s
}

async fn start(
    dir: &std::path::Path,
    role: NodeRole,
    id: &str,
    addr: &str,
) -> Result<(Node, String)> {
    let store = Store::open_sqlite(dir.join(format!("{id}.db")))?;
    module::register(&store)?;
    let history = History::new(
        store.clone(),
        id,
        role,
        HistoryLevel::Partial,
        module::Journal,
    );
    let module = Module::new(id, store.clone(), history.clone());
    module.listen()?;
    let mut sync = SyncConfig::new(AuthConfig::new(
        "demo-plant",
        id,
        Secret::new(SECRET.to_vec())?,
    )?);
    sync.reconnect_initial = Duration::from_millis(50);
    sync.reconnect_max = Duration::from_millis(250);
    let builder = NodeBuilder::new(store, settings(role, id), sync)
        .runtime(module.runtime.clone())
        .history(history);
    let (handle, addr) = match role {
        NodeRole::Backup => (
            builder.start_backup(TcpDialer::new(addr, None))?,
            addr.to_owned(),
        ),
        _ => {
            let acceptor = TcpAcceptor::bind(addr, None).await?;
            let bound = acceptor.local_socket_addr().to_string();
            (builder.start_master(acceptor)?, bound)
        }
    };
    // The module follows the node's activity.
    let mut w = handle.watch();
    let (m, name) = (module.clone(), id.to_owned());
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let s = w.borrow_and_update().clone();
            if last != Some(s.activity) {
                println!(
                    "    [{name}] activity {:?} (epoch {}, active node {})",
                    s.activity,
                    s.epoch,
                    s.active_node.as_deref().unwrap_or("-")
                );
                m.set_activity(s.activity);
                last = Some(s.activity);
            }
            if w.changed().await.is_err() {
                return;
            }
        }
    });
    Ok((Node { handle, module }, addr))
}

async fn until(what: &str, ok: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        if t.elapsed() > Duration::from_secs(30) {
            panic!("gave up waiting: {what}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    t.elapsed()
}

fn step(n: u32, title: &str) {
    println!("\n{n}. {title}");
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn story() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut figures: Vec<(String, String, &str)> = Vec::new();
    println!(
        "persist: a redundant gateway pair (SQLite in {}, loopback TCP)",
        dir.path().display()
    );
    println!("failover timeout 1000 ms, heartbeat 100 ms, automatic recovery, cold standby");

    step(1, "Start the master gw-a and the backup gw-b");
    let (master, addr) = start(dir.path(), NodeRole::Master, "gw-a", "127.0.0.1:0").await?;
    let (backup, _) = start(dir.path(), NodeRole::Backup, "gw-b", &addr).await?;
    until("master active", || {
        master.handle.state().activity == ActivityLevel::Active
    })
    .await;
    until("backup cold", || {
        backup.handle.state().activity == ActivityLevel::Cold
    })
    .await;

    step(
        2,
        "Create configuration on the master: it appears on the backup",
    );
    let m = master.handle.store().clone();
    let b = backup.handle.store().clone();
    let t = Instant::now();
    let devices = m.write(|tx| {
        let ops = tx.insert(&NotificationProfile {
            id: 0,
            name: "operations".into(),
            enabled: true,
        })?;
        let mut ids = Vec::new();
        for (i, (name, proto)) in [
            ("boiler-1", Protocol::ModbusTcp),
            ("tank-7", Protocol::OpcUa),
            ("pump-3", Protocol::ModbusTcp),
        ]
        .into_iter()
        .enumerate()
        {
            ids.push(tx.insert(&Device {
                id: 0,
                name: name.into(),
                host: format!("10.0.0.{}", 10 + i),
                port: if proto == Protocol::OpcUa { 4840 } else { 502 },
                protocol: proto,
                profile_id: ops,
                alarm_above: 80.0,
            })?);
        }
        Ok(ids)
    })?;
    let lag = until("devices on the backup", || {
        b.list::<Device>().map(|d| d.len() == 3).unwrap_or(false)
    })
    .await
    .min(t.elapsed());
    println!(
        "    3 devices and a profile committed on gw-a, applied on gw-b {} later",
        ms(lag)
    );
    until("gw-a connects its devices", || {
        master.module.connected.lock().unwrap().len() == 3
    })
    .await;
    println!(
        "    gw-a (active) connected to {:?}; gw-b (cold) to {:?}",
        master.module.connected.lock().unwrap(),
        backup.module.connected.lock().unwrap()
    );
    match b.insert(&NotificationProfile {
        id: 0,
        name: "edit on the backup".into(),
        enabled: true,
    }) {
        Err(Error::NotMaster { reason }) => println!("    an edit on gw-b is refused: {reason}"),
        other => println!("    unexpected: {other:?}"),
    }
    figures.push((
        "config replicated (commit to applied on the backup)".into(),
        ms(lag),
        "p50 <= 0.1 ms at 1000/s (bench)",
    ));

    step(
        3,
        "Alarms on the master: raised, notified once, one acknowledged",
    );
    for (id, value) in devices.iter().zip([91.5, 42.0, 88.2]) {
        let d = m.get::<Device>(*id)?.expect("device");
        master.module.scan(&d, value);
    }
    master.module.acknowledge(devices[0], "operator anna");
    let t = Instant::now();
    until("alarm book on the backup", || {
        backup.module.book.alarms() == master.module.book.alarms()
    })
    .await;
    for (_, a) in master.module.book.alarms() {
        println!(
            "    {:<9} value {:>5}  acknowledged by {:<14} notified {}",
            a.device,
            a.value,
            a.acked_by.as_deref().unwrap_or("-"),
            a.notified
        );
    }
    println!(
        "    the backup's copy of the alarm book matches ({} after the last change)",
        ms(t.elapsed())
    );
    println!(
        "    notifications sent by gw-a: {}",
        master.module.notifications.load(Ordering::Relaxed)
    );

    step(4, "The master stops abruptly: the backup takes over");
    let killed = Instant::now();
    let master_module = master.module.clone();
    drop(master);
    drop(m);
    let failover = until("backup active", || {
        backup.handle.state().activity == ActivityLevel::Active
    })
    .await;
    let failover = failover.max(killed.elapsed());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let book = backup.module.book.alarms();
    let acked: Vec<_> = book
        .values()
        .filter(|a| a.acked_by.is_some())
        .map(|a| a.device.clone())
        .collect();
    println!("    gw-b active {} after the master stopped", ms(failover));
    println!("    acknowledgements on gw-b: {acked:?} (kept)");
    println!(
        "    notifications sent by gw-b on takeover: {} (nothing notified twice)",
        backup.module.notifications.load(Ordering::Relaxed)
    );
    println!(
        "    gw-b now connected to {:?}",
        backup.module.connected.lock().unwrap()
    );
    backup.module.acknowledge(devices[2], "operator ben");
    println!("    an operator acknowledges pump-3 on gw-b; its journal line waits in gw-b's history buffer ({} items)", backup.module.history.buffered()?.len());
    figures.push((
        "failover (master stopped -> backup active)".into(),
        ms(failover),
        "timeout 1000 ms + heartbeat 100 ms",
    ));
    drop(master_module);

    step(5, "The master comes back: automatic recovery");
    let back = Instant::now();
    let (master, _) = start(dir.path(), NodeRole::Master, "gw-a", &addr).await?;
    let recovery = until("master active again", || {
        master.handle.state().activity == ActivityLevel::Active
            && backup.handle.state().activity == ActivityLevel::Cold
    })
    .await;
    let m = master.handle.store().clone();
    until("history forwarded", || {
        m.list::<JournalEntry>()
            .map(|j| j.iter().any(|e| e.origin == "gw-b"))
            .unwrap_or(false)
    })
    .await;
    until("alarm book back on the master", || {
        master.module.book.alarms() == backup.module.book.alarms()
    })
    .await;
    let journal = m.list::<JournalEntry>()?;
    println!(
        "    gw-a active again {} after it came back; gw-b cold",
        ms(recovery.min(back.elapsed()))
    );
    println!(
        "    the alarm journal on gw-a ({} lines, gw-b's delivered exactly once):",
        journal.len()
    );
    for j in &journal {
        println!("      [{}] {}", j.origin, j.text);
    }
    println!(
        "    pump-3 acknowledged by {:?} on gw-a too",
        master
            .module
            .book
            .alarms()
            .get(&devices[2])
            .and_then(|a| a.acked_by.clone())
    );
    figures.push((
        "recovery (master back -> active again)".into(),
        ms(recovery),
        "automatic",
    ));

    step(6, "Bulk configuration and a forced full resync");
    let n = 200_000;
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<i64>>().chunks(10_000) {
        let tags: Vec<Tag> = chunk
            .iter()
            .map(|i| Tag {
                id: 0,
                device_id: devices[(*i % 3) as usize],
                address: format!("40{:05}", i % 100_000),
                scale: 1.0,
            })
            .collect();
        m.write(|tx| tx.insert_many(&tags))?;
    }
    let b = backup.handle.store().clone();
    until("tags on the backup", || b.position() == m.position()).await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    println!("    {n} tags committed on gw-a and applied on gw-b: {rate:.0} rows/s");
    figures.push((
        format!("replicated bulk load ({n} rows)"),
        format!("{rate:.0} rows/s"),
        ">= 0.7x local (bench)",
    ));
    let rows: usize = b.list::<Tag>()?.len() + 4;
    let backup_link = backup.handle.backup().expect("a backup node");
    let before = backup_link.status().resyncs;
    let t = Instant::now();
    backup_link.request_resync();
    until("resync done", || {
        backup_link.status().resyncs > before && b.position() == m.position()
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "    operator forced a full resync of gw-b: {rows} rows in {:.2} s = {:.0} rows/s",
        secs,
        rows as f64 / secs
    );
    assert_eq!(b.digest(), m.digest());
    println!("    digests equal: {}", m.digest());
    figures.push((
        "forced full resync".into(),
        format!("{:.0} rows/s", rows as f64 / secs),
        ">= 1M rows/s (bench, 1M rows)",
    ));

    println!("\nSummary");
    println!("  {:<52} {:>16}   target / note", "what", "measured");
    for (what, figure, note) in figures {
        println!("  {what:<52} {figure:>16}   {note}");
    }
    drop((master, backup));
    Ok(())
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(story())
}
