//! Runtime state benchmark: a master and a backup node over loopback TCP.
//!
//! `cargo bench --bench runtime_state`: the time for a full transfer of
//! 10,000 alarm states to a standby that connects, and the rate of
//! differential updates the standby applies.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::redundancy::{
    ActivityLevel, NodeBuilder, NodeHandle, NodeRole, RedundancySettings,
};
use persist::sync::runtime_state::{RuntimeStates, TypedStateProvider};
use persist::sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist::sync::worker::SyncConfig;
use persist::{PersistentRecord, Store};
use serde::{Deserialize, Serialize};

#[derive(PersistentRecord, Debug, Clone)]
struct Config {
    #[persist(key)]
    name: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Alarm {
    source: String,
    priority: u8,
    acked_by: Option<String>,
    notified: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Update {
    Set(u64, Alarm),
    Ack(u64, String),
}

#[derive(Clone, Default)]
struct Book(Arc<Mutex<BTreeMap<u64, Alarm>>>, Arc<Mutex<u64>>);

impl TypedStateProvider for Book {
    type State = BTreeMap<u64, Alarm>;
    type Update = Update;
    fn full_state(&self) -> Self::State {
        self.0.lock().unwrap().clone()
    }
    fn apply_full(&self, s: Self::State) -> Result<(), String> {
        *self.0.lock().unwrap() = s;
        Ok(())
    }
    fn apply_update(&self, u: Update) -> Result<(), String> {
        let mut b = self.0.lock().unwrap();
        match u {
            Update::Set(id, a) => {
                b.insert(id, a);
            }
            Update::Ack(id, by) => {
                if let Some(a) = b.get_mut(&id) {
                    a.acked_by = Some(by);
                }
            }
        }
        *self.1.lock().unwrap() += 1;
        Ok(())
    }
}

fn sync(node: &str) -> SyncConfig {
    let mut c = SyncConfig::new(
        AuthConfig::new(
            "bench",
            node,
            Secret::new(b"a long shared secret for the pair".to_vec()).unwrap(),
        )
        .unwrap(),
    );
    c.reconnect_initial = Duration::from_millis(10);
    c
}

fn settings(role: NodeRole, node: &str) -> RedundancySettings {
    let mut s = RedundancySettings::new(role, node);
    s.startup_allowance = Duration::from_millis(200);
    s
}

async fn until(node: &NodeHandle, level: ActivityLevel) {
    while node.state().activity != level {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (m_store, b_store) = (Store::open_sqlite(dir.path().join("m.db")).unwrap(), Store::open_sqlite(dir.path().join("b.db")).unwrap());
        m_store.register::<Config>().unwrap();
        b_store.register::<Config>().unwrap();
        let (book_m, book_b) = (Book::default(), Book::default());
        let (rt_m, rt_b) = (RuntimeStates::with_queue(100_000), RuntimeStates::with_queue(100_000));
        rt_m.register_typed("alarms", book_m.clone());
        rt_b.register_typed("alarms", book_b.clone());
        for id in 0..10_000u64 {
            book_m.0.lock().unwrap().insert(
                id,
                Alarm {
                    source: format!("plant/area-{}/tank-{id}/level", id % 40),
                    priority: (id % 4) as u8,
                    acked_by: (id % 3 == 0).then(|| "operator-7".to_string()),
                    notified: true,
                },
            );
        }
        let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
        let addr = acceptor.local_socket_addr().to_string();
        let m = NodeBuilder::new(m_store, settings(NodeRole::Master, "a"), sync("a")).runtime(rt_m.clone()).start_master(acceptor).unwrap();
        until(&m, ActivityLevel::Active).await;
        // Full transfer: the standby connects and receives all 10,000 alarms.
        let t = Instant::now();
        let b = NodeBuilder::new(b_store, settings(NodeRole::Backup, "b"), sync("b")).runtime(rt_b.clone()).start_backup(TcpDialer::new(addr, None)).unwrap();
        while book_b.0.lock().unwrap().len() < 10_000 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let full = t.elapsed();
        until(&b, ActivityLevel::Cold).await;
        println!("runtime state: full transfer of 10,000 alarm states (connect to applied): {:.1} ms", full.as_secs_f64() * 1000.0);
        // Differential: acknowledgements posted on the active node, applied on the standby.
        let n = 100_000u64;
        let t = Instant::now();
        for i in 0..n {
            rt_m.post_typed("alarms", &Update::Ack(i % 10_000, format!("op-{i}"))).unwrap();
            if i % 1000 == 999 {
                tokio::task::yield_now().await;
            }
        }
        while *book_b.1.lock().unwrap() < n {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        println!("runtime state: {n} differential updates posted and applied on the standby: {:.0} updates/s", n as f64 / secs);
        drop((m, b));
    });
}
