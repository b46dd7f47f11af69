//! Module manifests in the sync handshake, in process: a module whose
//! records differ, or that is on one node only, is refused by name on both
//! nodes, and the refused backup stays standby next to the live master and
//! takes over when it dies; a version-only difference replicates and both
//! nodes warn.

mod conformance;
mod pair;

use std::time::{Duration, Instant};

use conformance::records::*;
use conformance::Fixture;
use pair::{settings, sync};
use persist::sync::protocol::{ModuleManifest, ModuleMismatch, RefuseReason};
use persist::sync::redundancy::{
    start_backup_node, start_master_node, ActivityLevel, NodeHandle, NodeRole, RedundancyState,
};
use persist::sync::testing::memory::MemoryNetwork;
use persist::Store;

/// The pair's timers (see `pair::settings`).
const FAILOVER: Duration = Duration::from_millis(400);
const ALLOWANCE: Duration = Duration::from_millis(800);

fn store(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<SmsSettings>().unwrap();
    s
}

fn master(net: &MemoryNetwork, fx: &Fixture, modules: Vec<ModuleManifest>) -> NodeHandle {
    start_master_node(
        store(fx),
        settings(NodeRole::Master, "gw-a"),
        net.acceptor("gw-a"),
        sync("gw-a").modules(modules),
    )
    .unwrap()
}

fn backup(net: &MemoryNetwork, fx: &Fixture, modules: Vec<ModuleManifest>) -> NodeHandle {
    start_backup_node(
        store(fx),
        settings(NodeRole::Backup, "gw-b"),
        net.dialer("gw-a"),
        sync("gw-b").modules(modules),
    )
    .unwrap()
}

async fn until_state(
    what: &str,
    node: &NodeHandle,
    ok: impl Fn(&RedundancyState) -> bool,
) -> RedundancyState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = node.state();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: state stayed {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn until_synced(m: &NodeHandle, b: &NodeHandle) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(m.state().peer_connected
        && b.store().position() == m.store().position()
        && b.store().digest() == m.store().digest())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never synced: master {:?}, backup {:?}",
            m.state(),
            b.state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Both nodes show the refusal: its text in `last_error`, the typed reason
/// in the link status.
async fn both_show_the_refusal(m: &NodeHandle, b: &NodeHandle, text: &str, reason: &RefuseReason) {
    assert_eq!(reason.to_string(), text);
    for (node, name) in [(b, "backup"), (m, "master")] {
        let s = until_state(&format!("the {name} shows the refusal"), node, |s| {
            s.last_error.as_deref().is_some_and(|e| e.contains(text))
        })
        .await;
        assert!(!s.peer_connected, "{name}: {s:?}");
        assert!(s.module_warnings.is_empty(), "{name}: {s:?}");
    }
    assert_eq!(b.backup().unwrap().status().refused.as_ref(), Some(reason));
    assert_eq!(m.master().unwrap().status().refused.as_ref(), Some(reason));
}

/// Watches the pair for `window`: the backup stays Cold (standby), the
/// master Active.
async fn backup_stays_standby(m: &NodeHandle, b: &NodeHandle, window: Duration) {
    let start = Instant::now();
    while start.elapsed() < window {
        let (sm, sb) = (m.state(), b.state());
        assert!(
            sb.activity != ActivityLevel::Active,
            "{:?} in: the refused backup is Active next to a live master: {sb:?}; master {sm:?}",
            start.elapsed()
        );
        assert_eq!(sm.activity, ActivityLevel::Active, "master {sm:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.state().activity, ActivityLevel::Cold, "{:?}", b.state());
}

/// The backup is upgraded alone to a version of `alarms` whose records
/// differ: both nodes name the module and both versions, the backup keeps
/// its data and stays standby next to the live master for several failover
/// timeouts, then takes over once the master is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_whose_records_differ_is_refused_by_name_and_the_backup_takes_over_when_the_master_dies(
) {
    let net = MemoryNetwork::with_seed(301);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let alarms = ModuleManifest::new("alarms", "1.0.0", 0xa1);
    let m = master(&net, &fm, vec![alarms.clone()]);
    let b = backup(&net, &fb, vec![alarms]);
    m.store().insert(&profile("before the upgrade")).unwrap();
    until_synced(&m, &b).await;

    b.shutdown().await;
    let b = backup(
        &net,
        &fb,
        vec![ModuleManifest::new("alarms", "1.1.0", 0xa2)],
    );
    let reason = RefuseReason::ModuleMismatch(Box::new(ModuleMismatch {
        module: "alarms".into(),
        ours: Some("1.0.0".into()),
        theirs: Some("1.1.0".into()),
        ours_node: "gw-a".into(),
        theirs_node: "gw-b".into(),
    }));
    both_show_the_refusal(
        &m,
        &b,
        "module `alarms`: 1.0.0 on gw-a, 1.1.0 on gw-b, and its records differ",
        &reason,
    )
    .await;
    // A master that answers is alive: the refused backup never takes over
    // (past its startup allowance, for three failover timeouts).
    backup_stays_standby(&m, &b, ALLOWANCE + 3 * FAILOVER).await;
    m.store().insert(&profile("while refused")).unwrap();
    tokio::time::sleep(FAILOVER).await;
    assert_eq!(
        b.store().list::<Profile>().unwrap().len(),
        1,
        "the refused backup keeps its data and receives nothing"
    );

    m.shutdown().await;
    until_state("the backup takes over from the dead master", &b, |s| {
        s.activity == ActivityLevel::Active
    })
    .await;
    let kept: Vec<String> = b
        .store()
        .list::<Profile>()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(kept, ["before the upgrade"]);
}

/// The same records at two versions (a code-only upgrade of the master):
/// the pair replicates, both nodes show the difference and what the peer
/// declared, and a planned switchover goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_only_difference_replicates_and_both_nodes_warn() {
    let net = MemoryNetwork::with_seed(302);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let counters = ModuleManifest::new("counters", "2.0.0", 0xc0);
    let on_master = vec![
        ModuleManifest::new("alarms", "1.1.0", 0xa1),
        counters.clone(),
    ];
    let on_backup = vec![counters, ModuleManifest::new("alarms", "1.0.0", 0xa1)];
    let m = master(&net, &fm, on_master.clone());
    let b = backup(&net, &fb, on_backup.clone());
    m.store().insert(&profile("replicated")).unwrap();
    until_synced(&m, &b).await;
    assert_eq!(b.store().list::<Profile>().unwrap().len(), 1);

    let sm = until_state("the master warns", &m, |s| !s.module_warnings.is_empty()).await;
    assert_eq!(
        sm.module_warnings,
        ["module `alarms`: 1.1.0 here, 1.0.0 on gw-b: same records, replication continues"]
    );
    assert_eq!(sm.peer_modules, on_backup);
    let sb = until_state("the backup warns", &b, |s| !s.module_warnings.is_empty()).await;
    assert_eq!(
        sb.module_warnings,
        ["module `alarms`: 1.0.0 here, 1.1.0 on gw-a: same records, replication continues"]
    );
    assert_eq!(sb.peer_modules, on_master);
    let (lm, lb) = (m.master().unwrap().status(), b.backup().unwrap().status());
    assert_eq!(lm.module_warnings, sm.module_warnings);
    assert_eq!(lb.peer_modules, on_master);
    assert_eq!((lm.refused, lb.refused), (None, None));

    m.request_switchover().await.unwrap();
    until_state("the backup takes over in the switchover", &b, |s| {
        s.activity == ActivityLevel::Active
    })
    .await;
    until_state("the master stands by", &m, |s| {
        s.activity == ActivityLevel::Cold
    })
    .await;
    m.store().insert(&profile("during the switchover")).unwrap();
    until_synced(&m, &b).await;
    assert_eq!(b.state().module_warnings, sb.module_warnings);
}

/// A module installed on the master alone: refused by name on both nodes;
/// the backup stays standby; once the module is installed on the backup
/// too, the pair syncs and the refusal is gone from both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_on_one_node_only_is_refused_by_name() {
    let net = MemoryNetwork::with_seed(303);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let m_modules = || {
        vec![
            ModuleManifest::new("alarms", "1.0.0", 0xa1),
            ModuleManifest::new("counters", "1.0.0", 0xc0),
        ]
    };
    let m = master(&net, &fm, m_modules());
    let b = backup(
        &net,
        &fb,
        vec![ModuleManifest::new("alarms", "1.0.0", 0xa1)],
    );
    let reason = RefuseReason::ModuleMismatch(Box::new(ModuleMismatch {
        module: "counters".into(),
        ours: Some("1.0.0".into()),
        theirs: None,
        ours_node: "gw-a".into(),
        theirs_node: "gw-b".into(),
    }));
    both_show_the_refusal(
        &m,
        &b,
        "module `counters` 1.0.0 is installed on gw-a only",
        &reason,
    )
    .await;
    backup_stays_standby(&m, &b, ALLOWANCE + 2 * FAILOVER).await;

    // The operator installs the module on the backup: the pair syncs, and
    // neither node shows the refusal any more.
    b.shutdown().await;
    let b = backup(&net, &fb, m_modules());
    m.store().insert(&profile("after the fix")).unwrap();
    until_synced(&m, &b).await;
    for (node, name) in [(&m, "master"), (&b, "backup")] {
        let s = until_state(&format!("the {name} forgets the refusal"), node, |s| {
            s.last_error.is_none()
        })
        .await;
        assert!(s.module_warnings.is_empty(), "{name}: {s:?}");
    }
    assert_eq!(m.master().unwrap().status().refused, None);
    assert_eq!(b.backup().unwrap().status().refused, None);
}
