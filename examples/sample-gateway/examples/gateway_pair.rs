//! The main job: a redundant gateway pair on embedded SQLite, in one command.
//!
//! `cargo run --release -p sample-gateway --example gateway_pair`
//!
//! Starts a master and a backup on loopback TCP (databases in a temporary
//! directory), each a `persist-gateway` host running the sample modules (the
//! alarm module and the counter module) from a config file,
//! and walks through what happens, measuring it: config created on the
//! master appears on the backup; alarms are raised, notified and
//! acknowledged; the master stops abruptly and the backup takes over with the
//! acknowledgements intact and nothing notified twice; the master comes back
//! and gets the pair back, with the history the backup recorded; a forced full
//! resync. It ends with a table of the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use alarm_module::{AlarmModule, Device, JournalEntry, NotificationProfile, Protocol, Tag};
use counter_module::Counters;
use persist::sync::redundancy::ActivityLevel;
use persist::Error;
use persist_gateway::{Config, Gateway, RunningGateway};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Node {
    gateway: RunningGateway,
    alarms: AlarmModule,
    counters: Counters,
}

/// The config file a plant would write, with this demo's short timers.
fn config(dir: &Path, id: &str, role: &str, link: &str) -> Result<Config> {
    std::fs::write(dir.join("pair.secret"), "demo secret: at least 16 bytes\n")?;
    std::fs::write(dir.join("operator.token"), "demo operator token\n")?;
    let link = match role {
        "master" => format!("listen = \"{link}\""),
        _ => format!("peer = \"{link}\""),
    };
    let text = format!(
        r#"[node]
id = "{id}"
role = "{role}"
cluster = "demo-plant"

[link]
{link}
secret_file = "pair.secret"

[redundancy]
failover_timeout_ms = 1000
heartbeat_ms = 100
startup_allowance_ms = 3000
reconnect_max_ms = 250

[database]
sqlite = "{id}.db"

[status]
listen = "127.0.0.1:0"
operator_token_file = "operator.token"
"#
    );
    let file = dir.join(format!("{id}.toml"));
    std::fs::write(&file, &text)?;
    Ok(Config::load(&file)?)
}

async fn start(dir: &Path, role: &str, id: &str, addr: &str) -> Result<(Node, String)> {
    let (alarms, counters) = (AlarmModule::new(), Counters::new());
    let gateway = Gateway::new(config(dir, id, role, addr)?)
        .module(alarms.clone())
        .module(counters.clone())
        .start()
        .await?;
    let addr = gateway
        .link_addr()
        .map_or(addr.to_owned(), |a| a.to_string());
    Ok((
        Node {
            gateway,
            alarms,
            counters,
        },
        addr,
    ))
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
    let (master, addr) = start(dir.path(), "master", "gw-a", "127.0.0.1:0").await?;
    let (backup, _) = start(dir.path(), "backup", "gw-b", &addr).await?;
    until("master active", || {
        master.gateway.node().state().activity == ActivityLevel::Active
    })
    .await;
    until("backup cold", || {
        backup.gateway.node().state().activity == ActivityLevel::Cold
    })
    .await;

    step(
        2,
        "Create configuration on the master: it appears on the backup",
    );
    let m = master.gateway.node().store().clone();
    let b = backup.gateway.node().store().clone();
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
        master.alarms.connected().len() == 3
    })
    .await;
    println!(
        "    gw-a (active) connected to {:?}; gw-b (cold) to {:?}",
        master.alarms.connected(),
        backup.alarms.connected()
    );
    match b.insert(&NotificationProfile {
        id: 0,
        name: "edit on the backup".into(),
        enabled: true,
    }) {
        Err(Error::NotMaster { reason }) => println!("    an edit on gw-b is refused: {reason}"),
        other => println!("    unexpected: {other:?}"),
    }
    // The second module: a counter changed by a replicated operation (the
    // backup re-runs the operation, not its row changes).
    for _ in 0..3 {
        master.counters.increment("line-1", 5)?;
    }
    until("counter on the backup", || {
        backup.counters.value("line-1").ok().flatten() == Some(15)
    })
    .await;
    println!(
        "    the counter module beside it: line-1 incremented 3 x 5 on gw-a, gw-b shows {:?}",
        backup.counters.value("line-1")?
    );
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
        master.alarms.scan(&d, value);
    }
    master.alarms.acknowledge(devices[0], "operator anna");
    let t = Instant::now();
    until("alarm book on the backup", || {
        backup.alarms.book().alarms() == master.alarms.book().alarms()
    })
    .await;
    for (_, a) in master.alarms.book().alarms() {
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
        master.alarms.notifications()
    );

    step(4, "The master stops abruptly: the backup takes over");
    let killed = Instant::now();
    let master_module = master.alarms.clone();
    drop(master);
    drop(m);
    let failover = until("backup active", || {
        backup.gateway.node().state().activity == ActivityLevel::Active
    })
    .await;
    let failover = failover.max(killed.elapsed());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let book = backup.alarms.book().alarms();
    let acked: Vec<_> = book
        .values()
        .filter(|a| a.acked_by.is_some())
        .map(|a| a.device.clone())
        .collect();
    println!("    gw-b active {} after the master stopped", ms(failover));
    println!("    acknowledgements on gw-b: {acked:?} (kept)");
    println!(
        "    notifications sent by gw-b on takeover: {} (nothing notified twice)",
        backup.alarms.notifications()
    );
    println!("    gw-b now connected to {:?}", backup.alarms.connected());
    backup.alarms.acknowledge(devices[2], "operator ben");
    println!("    an operator acknowledges pump-3 on gw-b; its journal line waits in gw-b's history buffer ({} items)", backup.alarms.history_buffered());
    figures.push((
        "failover (master stopped -> backup active)".into(),
        ms(failover),
        "timeout 1000 ms + heartbeat 100 ms",
    ));
    drop(master_module);

    step(5, "The master comes back: automatic recovery");
    let back = Instant::now();
    let (master, _) = start(dir.path(), "master", "gw-a", &addr).await?;
    let recovery = until("master active again", || {
        master.gateway.node().state().activity == ActivityLevel::Active
            && backup.gateway.node().state().activity == ActivityLevel::Cold
    })
    .await;
    let m = master.gateway.node().store().clone();
    until("history forwarded", || {
        m.list::<JournalEntry>()
            .map(|j| j.iter().any(|e| e.origin == "gw-b"))
            .unwrap_or(false)
    })
    .await;
    until("alarm book back on the master", || {
        master.alarms.book().alarms() == backup.alarms.book().alarms()
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
            .alarms
            .book()
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
    let b = backup.gateway.node().store().clone();
    until("tags on the backup", || b.position() == m.position()).await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    println!("    {n} tags committed on gw-a and applied on gw-b: {rate:.0} rows/s");
    figures.push((
        format!("replicated bulk load ({n} rows)"),
        format!("{rate:.0} rows/s"),
        ">= 0.7x local (bench)",
    ));
    let rows: usize = b.list::<Tag>()?.len() + 4;
    let backup_link = backup.gateway.node().backup().expect("a backup node");
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
