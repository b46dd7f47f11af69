//! The operator surface over real HTTP: state, metrics, status page, and
//! actions that need the operator token.

#[path = "../../tests/conformance/mod.rs"]
mod conformance;
#[path = "../../tests/pair/mod.rs"]
mod pair;

use std::sync::Arc;
use std::time::Duration;

use conformance::records::*;
use conformance::Fixture;
use pair::{settings, sync};
use persist::sync::redundancy::{
    start_backup_node, start_master_node, ActivityLevel, NodeHandle, NodeRole,
};
use persist::sync::testing::memory::MemoryNetwork;
use persist::sync::worker::SyncConfig;
use persist::Store;

const TOKEN: &str = "operator token of the pair";

async fn serve(node: Arc<NodeHandle>, id: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(persist_gateway::operator::serve(
        listener,
        id.to_owned(),
        node,
        TOKEN.to_owned(),
    ));
    url
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn get(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = agent().post(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send_empty().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A master `gw-a` and a backup `gw-b` of profiles, each on its own SQLite
/// store, linked over a memory network (which, like the fixtures, must
/// outlive the nodes).
struct Pair {
    m: Arc<NodeHandle>,
    b: Arc<NodeHandle>,
    ms: Store,
    bs: Store,
    fm: Fixture,
    fb: Fixture,
    net: MemoryNetwork,
}

fn start_pair(seed: u64, sync: impl Fn(&str) -> SyncConfig) -> Pair {
    let net = MemoryNetwork::with_seed(seed);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (ms, bs) = (fm.open(), fb.open());
    ms.register::<Profile>().unwrap();
    bs.register::<Profile>().unwrap();
    let m = start_master_node(
        ms.clone(),
        settings(NodeRole::Master, "gw-a"),
        net.acceptor("gw-a"),
        sync("gw-a"),
    )
    .unwrap();
    let b = start_backup_node(
        bs.clone(),
        settings(NodeRole::Backup, "gw-b"),
        net.dialer("gw-a"),
        sync("gw-b"),
    )
    .unwrap();
    Pair {
        m: Arc::new(m),
        b: Arc::new(b),
        ms,
        bs,
        fm,
        fb,
        net,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_surface_over_http() {
    // Every part is bound (`_x` too holds it): the fixtures and the network
    // must live as long as the nodes.
    let Pair {
        m,
        b,
        ms,
        bs: _bs,
        fm: _fm,
        fb: _fb,
        net: _net,
    } = start_pair(21, sync);
    until("pair up", || {
        m.state().activity == ActivityLevel::Active && b.state().activity == ActivityLevel::Cold
    })
    .await;
    ms.insert(&profile("p")).unwrap();
    let (mu, bu) = (
        serve(m.clone(), "gw-a").await,
        serve(b.clone(), "gw-b").await,
    );

    let (mu2, bu2) = (mu.clone(), bu.clone());
    let (state_m, state_b, metrics, page) = blocking(move || {
        (
            get(&format!("{mu2}/state")),
            get(&format!("{bu2}/state")),
            get(&format!("{mu2}/metrics")),
            get(&format!("{mu2}/")),
        )
    })
    .await;
    assert_eq!(state_m.0, 200);
    let sm: serde_json::Value = serde_json::from_str(&state_m.1).unwrap();
    let sb: serde_json::Value = serde_json::from_str(&state_b.1).unwrap();
    assert_eq!(
        (sm["role"].as_str(), sm["activity"].as_str()),
        (Some("Master"), Some("Active"))
    );
    assert_eq!(
        (sb["role"].as_str(), sb["activity"].as_str()),
        (Some("Backup"), Some("Cold"))
    );
    assert_eq!(sm["active_node"].as_str(), Some("gw-a"));
    assert_eq!(sm["position"].as_u64(), Some(1));
    assert!(
        metrics
            .1
            .contains("persist_activity_level{node=\"gw-a\"} 3"),
        "{}",
        metrics.1
    );
    assert!(metrics.1.contains("# TYPE persist_epoch gauge"));
    for name in [
        "persist_role",
        "persist_log_position",
        "persist_peer_acked_position",
        "persist_pending_updates",
        "persist_last_sync_timestamp_seconds",
        "persist_resyncs_total",
        "persist_runtime_state_queued_updates",
    ] {
        assert!(
            metrics.1.contains(&format!("{name}{{node=\"gw-a\"}}")),
            "{name} missing"
        );
    }
    assert!(
        page.1.contains("gw-a") && page.1.contains("Master · Active"),
        "{}",
        page.1
    );

    // Actions need the token.
    let mu2 = mu.clone();
    let (none, wrong) = blocking(move || {
        (
            post(&format!("{mu2}/actions/failover"), None),
            post(
                &format!("{mu2}/actions/failover"),
                Some("guess guess guess guess"),
            ),
        )
    })
    .await;
    assert_eq!((none.0, wrong.0), (401, 401));
    assert_eq!(
        m.state().activity,
        ActivityLevel::Active,
        "nothing happened"
    );
    // A planned switchover, then a handback, then a resync, all over HTTP.
    let mu2 = mu.clone();
    let ok = blocking(move || post(&format!("{mu2}/actions/failover"), Some(TOKEN))).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    until("backup active after the switchover", || {
        b.state().activity == ActivityLevel::Active
    })
    .await;
    let bu2 = bu.clone();
    let ok = blocking(move || post(&format!("{bu2}/actions/handback"), Some(TOKEN))).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    until("master active after the handback", || {
        m.state().activity == ActivityLevel::Active && b.state().activity == ActivityLevel::Cold
    })
    .await;
    let mu2 = mu.clone();
    let refused = blocking(move || post(&format!("{mu2}/actions/handback"), Some(TOKEN))).await;
    assert_eq!(
        refused.0, 409,
        "a handback is for the active backup: {}",
        refused.1
    );
    let bu2 = bu.clone();
    let ok = blocking(move || post(&format!("{bu2}/actions/resync"), Some(TOKEN))).await;
    assert_eq!(ok.0, 200);
    until("resync done", || b.backup().unwrap().status().resyncs == 1).await;
    let bu2 = bu.clone();
    let (_, after) = blocking(move || get(&format!("{bu2}/state"))).await;
    let sb: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(sb["resyncs"].as_u64(), Some(1));
}

/// What the scrubber finds reaches the operator: a row changed behind the
/// backup's back is repaired and counted on `/state` and `/metrics`; a row
/// changed behind the master's back is reported loudly on both nodes
/// (`/state`, `/metrics`, the status page) and not shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_findings_reach_the_operator() {
    let Pair {
        m,
        b,
        ms,
        bs,
        fm,
        fb,
        net: _net,
    } = start_pair(22, |node| {
        let mut c = sync(node);
        c.scrub.period = Duration::from_millis(300);
        c
    });
    for i in 0..50 {
        ms.insert(&profile(&format!("p{i}"))).unwrap();
    }
    until("the backup caught up", || bs.position() == ms.position()).await;
    let (mu, bu) = (
        serve(m.clone(), "gw-a").await,
        serve(b.clone(), "gw-b").await,
    );
    let state = |url: String| serde_json::from_str::<serde_json::Value>(&get(&url).1).unwrap();
    let (mu2, bu2) = (mu.clone(), bu.clone());
    let clean = blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = state(format!("{bu2}/state"));
            if s["scrub"]["passes"].as_u64() >= Some(2) {
                return (s, state(format!("{mu2}/state")));
            }
            assert!(std::time::Instant::now() < deadline, "no scrub pass: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    for s in [&clean.0, &clean.1] {
        assert_eq!(s["scrub"]["alarms"].as_u64(), Some(0), "{s}");
        assert!(s["scrub"]["master_diverged"].is_null(), "{s}");
        assert!(
            s["scrub"]["finds_within_ms"].as_u64().unwrap() <= 300,
            "{s}"
        );
    }

    // Behind the backup's back: repaired, one row shipped.
    fb.raw("UPDATE notification_profile SET name = 'tampered' WHERE id = 7");
    let bu2 = bu.clone();
    let repaired = blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = state(format!("{bu2}/state"));
            if s["scrub"]["rows_repaired"].as_u64() >= Some(1) {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "no repair: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    assert_eq!(
        repaired["scrub"]["rows_shipped"].as_u64(),
        Some(1),
        "{repaired}"
    );
    assert_eq!(repaired["resyncs"].as_u64(), Some(0), "{repaired}");
    let bu2 = bu.clone();
    let metrics = blocking(move || get(&format!("{bu2}/metrics")).1).await;
    assert!(
        metrics.contains("persist_scrub_rows_repaired_total{node=\"gw-b\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("persist_scrub_master_diverged{node=\"gw-b\"} 0"));

    // Behind the master's back: reported by the master, nothing shipped
    // (the backup, whose rows match its digest, has nothing to ask for).
    fm.raw("UPDATE notification_profile SET name = 'forged' WHERE id = 9");
    let mu2 = mu.clone();
    let (sm, metrics, page) = blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let sm = state(format!("{mu2}/state"));
            if !sm["scrub"]["master_diverged"].is_null() {
                return (
                    sm,
                    get(&format!("{mu2}/metrics")).1,
                    get(&format!("{mu2}/")).1,
                );
            }
            assert!(std::time::Instant::now() < deadline, "not reported: {sm}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    assert!(sm["scrub"]["alarms"].as_u64() >= Some(1), "{sm}");
    assert!(
        metrics.contains("persist_scrub_master_diverged{node=\"gw-a\"} 1"),
        "{metrics}"
    );
    assert!(page.contains("do not match its own digest"), "{page}");
    assert_eq!(
        bs.get::<Profile>(9i64).unwrap().unwrap().name,
        "p8",
        "the master's forged row is not shipped"
    );
    assert_eq!(b.state().activity, ActivityLevel::Cold);
}
