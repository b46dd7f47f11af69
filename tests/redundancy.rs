//! The redundancy runtime in process: failover over a silent link, the
//! settling rule after a cut, planned switchover, handback, write gating.

mod conformance;

use std::time::{Duration, Instant};

use conformance::records::*;
use conformance::Fixture;
use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::redundancy::{
    start_backup_node, start_master_node, ActivityLevel, NodeHandle, NodeRole, RedundancySettings,
};
use persist::sync::transport::memory::MemoryNetwork;
use persist::sync::worker::SyncConfig;
use persist::{Error, Store};

fn sync(node: &str) -> SyncConfig {
    let mut c = SyncConfig::new(
        AuthConfig::new(
            "plant-7",
            node,
            Secret::new(b"correct horse battery staple".to_vec()).unwrap(),
        )
        .unwrap(),
    );
    c.reconnect_initial = Duration::from_millis(20);
    c.reconnect_max = Duration::from_millis(100);
    c
}

fn settings(role: NodeRole, node: &str) -> RedundancySettings {
    let mut s = RedundancySettings::new(role, node);
    s.failover_timeout = Duration::from_millis(400);
    s.heartbeat_interval = Duration::from_millis(40);
    s.startup_allowance = Duration::from_millis(800);
    s
}

fn store(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<SmsSettings>().unwrap();
    s
}

async fn until(what: &str, node: &NodeHandle, ok: impl Fn(ActivityLevel) -> bool) -> Duration {
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ok(node.state().activity) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: state stayed {:?}",
            node.state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.elapsed()
}

async fn pair(
    net: &MemoryNetwork,
    fm: &Fixture,
    fb: &Fixture,
    backup: RedundancySettings,
) -> (NodeHandle, NodeHandle) {
    let m = start_master_node(
        store(fm),
        settings(NodeRole::Master, "gw-a"),
        net.acceptor("gw-a"),
        sync("gw-a"),
    )
    .unwrap();
    let b = start_backup_node(store(fb), backup, net.dialer("gw-a"), sync("gw-b"));
    until("master active", &m, |a| a == ActivityLevel::Active).await;
    until("backup cold", &b, |a| a == ActivityLevel::Cold).await;
    (m, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_fails_over_then_settles_to_one_active_node() {
    let net = MemoryNetwork::with_seed(1);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = pair(&net, &fm, &fb, settings(NodeRole::Backup, "gw-b")).await;
    m.store().insert(&profile("before the cut")).unwrap();
    // Frames vanish silently, dials fail: the link is dead, TCP would not say so.
    net.partition(true);
    let took = until("backup takes over", &b, |a| a == ActivityLevel::Active).await;
    println!("failover after a silent cut: {took:?} (timeout 400 ms, heartbeat 40 ms)");
    // The rule while both run: both active, config writes only on the master.
    assert_eq!(m.state().activity, ActivityLevel::Active);
    assert!(
        matches!(
            b.store().insert(&profile("on the backup")),
            Err(Error::NotMaster { .. })
        ),
        "an active backup refuses config writes"
    );
    m.store().insert(&profile("during the cut")).unwrap();
    assert!(b.state().epoch > m.state().epoch);
    // The link returns: the master steps down at once, then gets the pair back.
    net.partition(false);
    until("master back to active", &m, |a| a == ActivityLevel::Active).await;
    until("backup back to standby", &b, |a| a == ActivityLevel::Cold).await;
    let (sm, sb) = (m.state(), b.state());
    assert_eq!(sm.epoch, sb.epoch);
    assert_eq!(sm.active_node.as_deref(), Some("gw-a"));
    // Nothing written on the master was lost; the backup has all of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.store().digest() != m.store().digest() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.store().list::<Profile>().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_and_manual_handback() {
    let net = MemoryNetwork::with_seed(2);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = pair(&net, &fm, &fb, settings(NodeRole::Backup, "gw-b")).await;
    m.request_switchover().await.unwrap();
    until("backup active after switchover", &b, |a| {
        a == ActivityLevel::Active
    })
    .await;
    until("master standby after switchover", &m, |a| {
        a == ActivityLevel::Cold
    })
    .await;
    // A planned switchover is not undone by automatic recovery.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.state().activity, ActivityLevel::Active);
    // Config writes still go to the master, the pair keeps replicating.
    m.store()
        .insert(&profile("written during the upgrade window"))
        .unwrap();
    assert!(
        m.request_switchover().await.is_err(),
        "only the active master switches over"
    );
    b.request_handback().await.unwrap();
    until("master active after handback", &m, |a| {
        a == ActivityLevel::Active
    })
    .await;
    until("backup cold after handback", &b, |a| {
        a == ActivityLevel::Cold
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_subscribers_see_every_change() {
    let net = MemoryNetwork::with_seed(3);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (m, b) = pair(&net, &fm, &fb, settings(NodeRole::Backup, "gw-b")).await;
    let b = std::sync::Arc::new(b);
    let bb = b.clone();
    let watcher = std::thread::spawn(move || {
        let (mut version, mut state) = bb.wait_state_blocking(u64::MAX, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.activity != ActivityLevel::Active && Instant::now() < deadline {
            (version, state) = bb.wait_state_blocking(version, Duration::from_secs(1));
        }
        state.activity
    });
    net.partition(true);
    assert_eq!(
        tokio::task::spawn_blocking(move || watcher.join().unwrap())
            .await
            .unwrap(),
        ActivityLevel::Active
    );
    drop(m);
}
