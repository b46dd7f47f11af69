//! A central gateway pair with `[fleet]` and `[witness]`, and an edge
//! gateway with `[fleet]`, all from config files, against a `nats-server`
//! of the test's own: what a module author's users get from the TOML alone.

mod api_support;

use std::path::Path;
use std::time::{Duration, Instant};

use api_support::{config, write, OPERATOR, READ, WRITE};
use persist::module::{Module, ModuleContext, ModuleError};
use persist::Store;
use persist_fleet::sample::FleetTag;
use persist_fleet::testing::NatsServer;
use persist_gateway::{Config, Gateway, RunningGateway};

/// A module that keeps the fleet's sample tags.
struct Tags;

impl Module for Tags {
    fn name(&self) -> &'static str {
        "tags"
    }
    fn version(&self) -> &'static str {
        "1.0.0"
    }
    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
        ctx.record::<FleetTag>()
    }
}

async fn start(path: &Path) -> RunningGateway {
    Gateway::new(Config::load(path).unwrap())
        .module(Tags)
        .start()
        .await
        .unwrap()
}

fn append(path: &Path, text: &str) {
    let mut t = std::fs::read_to_string(path).unwrap();
    t.push_str(text);
    std::fs::write(path, t).unwrap();
}

fn get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap()
}

fn json(url: &str) -> serde_json::Value {
    serde_json::from_str(&get(url)).unwrap()
}

async fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

fn tags(store: &Store) -> Vec<(String, i64)> {
    let mut v: Vec<_> = store
        .list::<FleetTag>()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.scan_ms))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_pair_with_a_witness_feeds_an_edge_gateway_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = NatsServer::start(d);
    write(d, "pair.secret", "a pair secret of 32 bytes, really\n");
    write(d, "operator.token", &format!("{OPERATOR}\n"));
    write(d, "scada.token", &format!("{READ}\n"));
    write(d, "tool.token", &format!("{WRITE}\n"));
    write(d, "fleet.key", &"5a".repeat(32));
    let fleet = |edge: Option<&str>| {
        format!(
            "\n[fleet]\nurl = \"{}\"\ncluster = \"plant-a\"\n{}key_file = \"fleet.key\"\nshared = [\"fleet_tag\"]\nrequest_timeout_ms = 3000\n",
            nats.url(),
            edge.map(|e| format!("edge = \"{e}\"\n")).unwrap_or_default()
        )
    };
    let witness = format!(
        "\n[witness]\nurl = \"{}\"\nbucket = \"pair-witness\"\nkey = \"central\"\nttl_ms = 2000\n",
        nats.url()
    );
    // The central pair: both nodes with the fleet and the witness.
    let a_cfg = config(d, "gw-a", "master", "127.0.0.1:0", None);
    append(&a_cfg, &format!("{}{witness}", fleet(None)));
    let a = start(&a_cfg).await;
    let b_cfg = config(
        d,
        "gw-b",
        "backup",
        &a.link_addr().unwrap().to_string(),
        None,
    );
    append(&b_cfg, &format!("{}{witness}", fleet(None)));
    let b = start(&b_cfg).await;
    // An edge gateway of its own (a master alone).
    let e_cfg = config(d, "gw-e", "master", "127.0.0.1:0", None);
    append(&e_cfg, &fleet(Some("site-1")));
    let e = start(&e_cfg).await;

    let (sa, sb) = (
        format!("http://{}", a.status_addr()),
        format!("http://{}", b.status_addr()),
    );
    // The witness: the master holds the lease, the backup knows it.
    assert!(
        wait(Duration::from_secs(15), || {
            let s = json(&format!("{sa}/state"));
            s["activity"] == "Active" && s["witness_held_here"] == true
        })
        .await,
        "{}",
        get(&format!("{sa}/state"))
    );
    // The backup hears its master, so it does not ask the witness.
    let sbs = json(&format!("{sb}/state"));
    assert_eq!(
        (&sbs["witness"], &sbs["witness_held_here"], &sbs["activity"]),
        (&true.into(), &false.into(), &"Cold".into()),
        "{sbs}"
    );
    assert!(get(&format!("{sa}/metrics")).contains("persist_witness_lease_held 1"));
    assert!(get(&format!("{sa}/")).contains("held here"));

    // Config written on the central master reaches the backup and the edge.
    for i in 0..20 {
        a.store()
            .insert(&FleetTag {
                name: format!("tag-{i:03}"),
                address: format!("plc-1/db1/{i}"),
                scan_ms: 100 + i,
            })
            .unwrap();
    }
    let want = tags(a.store());
    assert!(
        wait(Duration::from_secs(20), || tags(e.store()) == want
            && tags(b.store()) == want)
        .await,
        "edge has {} of {} tags",
        tags(e.store()).len(),
        want.len()
    );
    // The central surface shows the edge, its position and its agreement.
    assert!(
        wait(Duration::from_secs(10), || {
            let f = json(&format!("{sa}/fleet.json"));
            f["part"] == "central"
                && f["edges"][0]["edge"] == "site-1"
                && f["edges"][0]["digest_agrees"] == true
                && f["edges"][0]["position"] == f["published"]
        })
        .await,
        "{}",
        get(&format!("{sa}/fleet.json"))
    );
    let page = get(&format!("{sa}/fleet"));
    assert!(page.contains("site-1") && page.contains("agrees"), "{page}");
    let se = format!("http://{}", e.status_addr());
    assert_eq!(json(&format!("{se}/fleet.json"))["part"], "edge");
    assert_eq!(json(&format!("{sb}/fleet.json"))["part"], "none");

    e.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}
