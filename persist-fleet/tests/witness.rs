//! The witness lease against a real `nats-server` of the test's own: a pair
//! of nodes on SQLite whose pair link and whose ways to NATS each go through
//! a TCP proxy the test can cut. Every test samples both nodes every 5 ms
//! and fails if it ever sees both active.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{open_store, runtime, tag, tags, NatsServer};
use persist_core::Store;
use persist_fleet::{NatsWitness, WitnessConfig};
use persist_sync::auth::{AuthConfig, Secret};
use persist_sync::redundancy::{
    ActivityLevel, NodeBuilder, NodeHandle, NodeRole, RedundancySettings,
};
use persist_sync::transport::tcp::{TcpAcceptor, TcpDialer};
use persist_sync::transport::Acceptor;
use persist_sync::worker::SyncConfig;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"a long shared secret for the witness pair";

/// A TCP proxy that can be cut: a cut closes every connection through it
/// and refuses new ones until it heals.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (c, g) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let mut cuts = g.subscribe();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut down, mut up) = (down, up);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cut,
            generation,
            task,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Pair {
    master: NodeHandle,
    backup: NodeHandle,
    link: Proxy,
    nats_a: Proxy,
    nats_b: Proxy,
    both_active: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

fn settings(role: NodeRole, id: &str) -> RedundancySettings {
    let mut s = RedundancySettings::new(role, id);
    s.failover_timeout = Duration::from_millis(1000);
    s.heartbeat_interval = Duration::from_millis(100);
    s.startup_allowance = Duration::from_millis(1500);
    s
}

fn witness(nats_port: u16, node: &str, failover: Duration) -> Arc<NatsWitness> {
    let cfg = WitnessConfig::from_toml(&format!(
        "url = \"nats://127.0.0.1:{nats_port}\"\nbucket = \"pair-witness\"\nkey = \"line-1\"\nttl_ms = 600\n"
    ))
    .unwrap();
    let s = cfg.settings(failover).unwrap();
    Arc::new(NatsWitness::new(cfg, node, s.clone()))
}

fn witness_settings(failover: Duration) -> persist_sync::redundancy::witness::WitnessSettings {
    WitnessConfig::from_toml("url = \"nats://x\"\nbucket = \"b\"\nkey = \"k\"\nttl_ms = 600\n")
        .unwrap()
        .settings(failover)
        .unwrap()
}

fn sync(node: &str) -> SyncConfig {
    SyncConfig::new(AuthConfig::new("plant", node, Secret::new(SECRET).unwrap()).unwrap())
}

impl Pair {
    async fn start(nats: &NatsServer) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let a_store = open_store(&dir.path().join("a.db"));
        let b_store = open_store(&dir.path().join("b.db"));
        let nats_a = Proxy::start(nats.port).await;
        let nats_b = Proxy::start(nats.port).await;
        let acceptor = TcpAcceptor::bind("127.0.0.1:0", None).await.unwrap();
        let master_port: u16 = acceptor
            .local_addr()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let link = Proxy::start(master_port).await;
        let fo = Duration::from_millis(1000);
        let master = NodeBuilder::new(a_store, settings(NodeRole::Master, "gw-a"), sync("gw-a"))
            .witness(witness_settings(fo), witness(nats_a.port, "gw-a", fo))
            .start_master(acceptor)
            .unwrap();
        let backup = NodeBuilder::new(b_store, settings(NodeRole::Backup, "gw-b"), sync("gw-b"))
            .witness(witness_settings(fo), witness(nats_b.port, "gw-b", fo))
            .start_backup(TcpDialer::new(format!("127.0.0.1:{}", link.port), None))
            .unwrap();
        let pair = Pair {
            master,
            backup,
            link,
            nats_a,
            nats_b,
            both_active: Arc::new(AtomicBool::new(false)),
            _dir: dir,
        };
        pair.watch_both();
        let settled = pair.sample(Duration::from_secs(10), |a, b| a && !b).await;
        assert!(settled, "the master is active: {:?}", pair.states());
        // and holds the lease
        let held = pair
            .wait(Duration::from_secs(5), |p| {
                p.master
                    .state()
                    .witness
                    .is_some_and(|w| w.held_here && w.holder.as_deref() == Some("gw-a"))
            })
            .await;
        assert!(held, "{:?}", pair.states());
        pair
    }

    fn active(h: &NodeHandle) -> bool {
        h.state().activity == ActivityLevel::Active
    }

    /// Flags any moment both are active, for the whole test.
    fn watch_both(&self) {
        let (mut a, mut b) = (self.master.watch(), self.backup.watch());
        let flag = self.both_active.clone();
        tokio::spawn(async move {
            loop {
                let both = a.borrow().activity == ActivityLevel::Active
                    && b.borrow().activity == ActivityLevel::Active;
                if both {
                    flag.store(true, Ordering::SeqCst);
                }
                tokio::select! {
                    r = a.changed() => if r.is_err() { return },
                    r = b.changed() => if r.is_err() { return },
                }
            }
        });
    }

    fn states(&self) -> String {
        format!(
            "master {:?}\nbackup {:?}",
            self.master.state(),
            self.backup.state()
        )
    }

    /// Waits up to `limit` until `f(master active, backup active)` holds.
    async fn sample(&self, limit: Duration, f: impl Fn(bool, bool) -> bool) -> bool {
        self.wait(limit, |p| {
            f(Self::active(&p.master), Self::active(&p.backup))
        })
        .await
    }

    async fn wait(&self, limit: Duration, f: impl Fn(&Pair) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f(self)
    }

    /// Checks `f` every 5 ms for `span`.
    async fn hold(&self, span: Duration, what: &str, f: impl Fn(bool, bool) -> bool) {
        let end = Instant::now() + span;
        while Instant::now() < end {
            let (a, b) = (Self::active(&self.master), Self::active(&self.backup));
            assert!(f(a, b), "{what}: master {a}, backup {b}\n{}", self.states());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn never_both(&self) {
        assert!(
            !self.both_active.load(Ordering::SeqCst),
            "both nodes were active at some moment"
        );
    }

    async fn shutdown(self) {
        self.never_both();
        self.master.shutdown().await;
        self.backup.shutdown().await;
    }
}

fn write(store: &Store, from: u64, n: u64) {
    store
        .write(|tx| {
            for i in from..from + n {
                tx.save(&tag(i, 100))?;
            }
            Ok(())
        })
        .unwrap();
}

async fn converged(a: &Store, b: &Store) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if a.position() == b.position() && tags(a) == tags(b) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[test]
fn a_cut_pair_link_leaves_exactly_one_active_while_both_reach_the_witness() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    runtime().block_on(async {
        let p = Pair::start(&nats).await;
        p.link.cut();
        // Four failover timeouts: without the witness the backup would
        // have taken over after one.
        p.hold(Duration::from_secs(4), "only the master active", |a, b| {
            a && !b
        })
        .await;
        let w = p.backup.state().witness.unwrap();
        assert_eq!(w.holder.as_deref(), Some("gw-a"), "{w:?}");
        assert!(!w.held_here);
        write(p.master.store(), 0, 50);
        p.link.heal();
        p.hold(Duration::from_secs(2), "only the master active", |a, b| {
            a && !b
        })
        .await;
        assert!(converged(p.master.store(), p.backup.store()).await);
        p.shutdown().await;
    });
}

#[test]
fn the_node_that_can_hold_the_lease_is_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    runtime().block_on(async {
        let p = Pair::start(&nats).await;
        write(p.master.store(), 0, 20);
        assert!(converged(p.master.store(), p.backup.store()).await);
        // The master loses the pair link and NATS: it stands down when its
        // lease stops counting, and the backup takes over once it won the
        // lease, never both.
        p.link.cut();
        p.nats_a.cut();
        let cut_at = Instant::now();
        assert!(
            p.sample(Duration::from_secs(10), |a, b| !a && b).await,
            "the backup took over: {}",
            p.states()
        );
        let took = cut_at.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        let w = p.backup.state().witness.unwrap();
        assert!(w.held_here && w.holder.as_deref() == Some("gw-b"), "{w:?}");
        p.hold(Duration::from_secs(2), "only the backup active", |a, b| {
            !a && b
        })
        .await;
        // Both return: the higher claim wins, automatic recovery hands the
        // pair back once the backup has caught up, and the data agrees.
        p.nats_a.heal();
        p.link.heal();
        assert!(
            p.sample(Duration::from_secs(15), |a, b| a && !b).await,
            "handed back: {}",
            p.states()
        );
        write(p.master.store(), 20, 20);
        assert!(converged(p.master.store(), p.backup.store()).await);
        assert_eq!(tags(p.backup.store()).len(), 40);
        // Until the master holds the lease again, only its backup's word
        // keeps it active.
        assert!(
            p.wait(Duration::from_secs(5), |p| p
                .master
                .state()
                .witness
                .is_some_and(|w| w.held_here))
                .await,
            "{}",
            p.states()
        );

        // Now the backup loses both: the master keeps the pair.
        p.link.cut();
        p.nats_b.cut();
        p.hold(Duration::from_secs(3), "only the master active", |a, b| {
            a && !b
        })
        .await;
        p.link.heal();
        p.nats_b.heal();
        p.shutdown().await;
    });
}

#[test]
fn with_nats_down_the_pair_runs_on_its_last_decision_and_never_stops_both_while_linked() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(dir.path());
    let rt = runtime();
    let p = rt.block_on(Pair::start(&nats));
    nats.stop();
    rt.block_on(async {
        // Pair link up: the backup confirms the master, which stays active
        // long after its lease ran out.
        p.hold(Duration::from_secs(3), "the master stays active", |a, b| {
            a && !b
        })
        .await;
        let w = p.master.state().witness.unwrap();
        assert!(w.error.is_some(), "{w:?}");
        write(p.master.store(), 0, 30);
        assert!(converged(p.master.store(), p.backup.store()).await);
        // Pair link gone too: nobody can confirm anything, both stand by.
        p.link.cut();
        assert!(
            p.sample(Duration::from_secs(3), |a, b| !a && !b).await,
            "both stand by: {}",
            p.states()
        );
        p.hold(Duration::from_secs(2), "both stand by", |a, b| !a && !b)
            .await;
    });
    // NATS returns (same store dir): one node takes the pair again.
    nats.restart();
    rt.block_on(async {
        assert!(
            p.sample(Duration::from_secs(15), |a, b| a ^ b).await,
            "one active once NATS is back: {}",
            p.states()
        );
        p.link.heal();
        assert!(
            p.sample(Duration::from_secs(15), |a, b| a && !b).await,
            "the master has the pair: {}",
            p.states()
        );
        assert!(converged(p.master.store(), p.backup.store()).await);
        p.shutdown().await;
    });
}
