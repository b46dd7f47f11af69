//! The redundancy runtime in process: failover over a silent link, the
//! settling rule after a cut, planned switchover, handback, write gating.

mod conformance;
mod pair;

use std::time::{Duration, Instant};

use conformance::records::*;
use conformance::Fixture;
use pair::{settings, sync};
use persist::sync::redundancy::{
    start_backup_node, start_master_node, ActivityLevel, NodeBuilder, NodeHandle, NodeRole,
    RedundancySettings, RedundancyState,
};
use persist::sync::testing::memory::MemoryNetwork;
use persist::{Error, Store};

fn store(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<SmsSettings>().unwrap();
    s
}

async fn until(what: &str, node: &NodeHandle, ok: impl Fn(ActivityLevel) -> bool) -> Duration {
    until_state(what, node, |s| ok(s.activity)).await
}

async fn until_state(
    what: &str,
    node: &NodeHandle,
    ok: impl Fn(&RedundancyState) -> bool,
) -> Duration {
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ok(&node.state()) {
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
    let b = start_backup_node(store(fb), backup, net.dialer("gw-a"), sync("gw-b")).unwrap();
    until("master active", &m, |a| a == ActivityLevel::Active).await;
    // A backup starts Cold, so seeing it Cold says nothing: the pair is up
    // once the master serves it and it holds the master's head.
    until_state("master serves the backup", &m, |s| {
        s.peer_connected && s.pending_updates == 0
    })
    .await;
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
    // Settled: one claim on both nodes, naming the master, above the takeover.
    let takeover = b.state().epoch;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (sm, sb) = (m.state(), b.state());
        if sm.epoch == sb.epoch
            && sm.epoch > takeover
            && sm.activity == ActivityLevel::Active
            && sb.activity == ActivityLevel::Cold
        {
            assert_eq!(sm.active_node.as_deref(), Some("gw-a"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never settled: master {sm:?}, backup {sb:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

mod alarms {
    //! A module's alarm book as runtime state: raised alarms, acknowledgements,
    //! and which notifications went out.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use persist::sync::runtime_state::TypedStateProvider;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Alarm {
        pub name: String,
        pub acked: bool,
        pub notified: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub enum Update {
        Raise(u64, String),
        Ack(u64),
        Notified(u64),
    }

    #[derive(Clone, Default)]
    pub struct Book(pub Arc<Mutex<BTreeMap<u64, Alarm>>>);

    impl Book {
        pub fn apply(&self, u: &Update) {
            let mut b = self.0.lock().unwrap();
            match u {
                Update::Raise(id, name) => {
                    b.insert(
                        *id,
                        Alarm {
                            name: name.clone(),
                            acked: false,
                            notified: false,
                        },
                    );
                }
                Update::Ack(id) => {
                    if let Some(a) = b.get_mut(id) {
                        a.acked = true;
                    }
                }
                Update::Notified(id) => {
                    if let Some(a) = b.get_mut(id) {
                        a.notified = true;
                    }
                }
            }
        }
        pub fn snapshot(&self) -> BTreeMap<u64, Alarm> {
            self.0.lock().unwrap().clone()
        }
    }

    impl TypedStateProvider for Book {
        type State = BTreeMap<u64, Alarm>;
        type Update = Update;
        fn full_state(&self) -> Self::State {
            self.snapshot()
        }
        fn apply_full(&self, state: Self::State) -> Result<(), String> {
            *self.0.lock().unwrap() = state;
            Ok(())
        }
        fn apply_update(&self, update: Update) -> Result<(), String> {
            self.apply(&update);
            Ok(())
        }
    }

    /// A provider whose updates always panic: it must not stop the others.
    pub struct Broken;
    impl TypedStateProvider for Broken {
        type State = u32;
        type Update = u32;
        fn full_state(&self) -> u32 {
            0
        }
        fn apply_full(&self, _: u32) -> Result<(), String> {
            Ok(())
        }
        fn apply_update(&self, _: u32) -> Result<(), String> {
            panic!("module bug in the broken provider")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_and_acks_survive_failover_and_nothing_is_notified_twice() {
    use persist::sync::runtime_state::RuntimeStates;
    let net = MemoryNetwork::with_seed(9);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (book_a, book_b) = (alarms::Book::default(), alarms::Book::default());
    let (rt_a, rt_b) = (RuntimeStates::new(), RuntimeStates::new());
    rt_a.register_typed("alarms", book_a.clone());
    rt_b.register_typed("alarms", book_b.clone());
    rt_a.register_typed("broken", alarms::Broken);
    rt_b.register_typed("broken", alarms::Broken);
    let m = NodeBuilder::new(store(&fm), settings(NodeRole::Master, "gw-a"), sync("gw-a"))
        .runtime(rt_a.clone())
        .start_master(net.acceptor("gw-a"))
        .unwrap();
    let b = NodeBuilder::new(store(&fb), settings(NodeRole::Backup, "gw-b"), sync("gw-b"))
        .runtime(rt_b.clone())
        .start_backup(net.dialer("gw-a"))
        .unwrap();
    until("master active", &m, |a| a == ActivityLevel::Active).await;
    until("backup cold", &b, |a| a == ActivityLevel::Cold).await;
    // Synced: the standby holds the initial full states, so what is posted
    // now travels as updates (the broken provider's must reach its panic).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(m.state().peer_connected && b.state().peer_connected) {
        assert!(tokio::time::Instant::now() < deadline, "pair never synced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        rt_b.post_typed("alarms", &alarms::Update::Ack(1)).is_err(),
        "a standby does not post"
    );

    // The active master raises, acknowledges and notifies; each change is posted.
    for id in 0..100u64 {
        let u = alarms::Update::Raise(id, format!("tank {id} high"));
        book_a.apply(&u);
        rt_a.post_typed("alarms", &u).unwrap();
        let n = alarms::Update::Notified(id);
        book_a.apply(&n);
        rt_a.post_typed("alarms", &n).unwrap();
    }
    for id in (0..100u64).step_by(3) {
        let u = alarms::Update::Ack(id);
        book_a.apply(&u);
        rt_a.post_typed("alarms", &u).unwrap();
    }
    rt_a.post_typed("broken", &7u32).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while book_b.snapshot() != book_a.snapshot() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "standby state never matched"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The broken provider's panic was isolated and reported.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !rt_b.errors().contains_key("broken") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken provider's failure was not reported"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!rt_b.errors().contains_key("alarms"));

    // Failover: the backup takes over with every acknowledgement, and finds
    // nothing left to notify.
    net.partition(true);
    until("backup takes over", &b, |a| a == ActivityLevel::Active).await;
    let book = book_b.snapshot();
    assert_eq!(book.len(), 100);
    assert_eq!(book.values().filter(|a| a.acked).count(), 34);
    let to_notify: Vec<_> = book
        .iter()
        .filter(|(_, a)| !a.notified)
        .map(|(id, _)| *id)
        .collect();
    assert!(to_notify.is_empty(), "would notify again: {to_notify:?}");
    // While the backup is active it posts; when the master returns it gets the state.
    let u = alarms::Update::Raise(500, "raised on the backup".into());
    book_b.apply(&u);
    rt_b.post_typed("alarms", &u).unwrap();
    net.partition(false);
    until("master active again", &m, |a| a == ActivityLevel::Active).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !book_a.snapshot().contains_key(&500) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the master never got the state of the active backup"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(book_a.snapshot(), book_b.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_both_refuse_config_writes() {
    let net = MemoryNetwork::with_seed(4);
    let (fa, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (sa, sb) = (store(&fa), store(&fb));
    // Both accept writes until they find each other.
    sa.insert(&profile("a alone")).unwrap();
    let a = NodeBuilder::new(sa, settings(NodeRole::Master, "gw-a"), sync("gw-a"))
        .start_master_probing(
            net.acceptor("gw-a"),
            net.dialer("gw-b"),
            Duration::from_millis(50),
        )
        .unwrap();
    let b = NodeBuilder::new(sb, settings(NodeRole::Master, "gw-b"), sync("gw-b"))
        .start_master_probing(
            net.acceptor("gw-b"),
            net.dialer("gw-a"),
            Duration::from_millis(50),
        )
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = |n: &NodeHandle| matches!(n.store().insert(&profile("x")), Err(Error::NotMaster { ref reason }) if reason.contains("also configured as master"));
        if refused(&a) && refused(&b) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a: {:?} b: {:?}",
            a.state(),
            b.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(a.state().last_error.is_some_and(|e| e.contains("gw-b"))
        && b.state().last_error.is_some_and(|e| e.contains("gw-a")))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the conflict is not shown: a {:?} b {:?}",
            a.state(),
            b.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An alarm journal: where history ends up on the master (replicated like any record).
#[derive(persist::PersistentRecord, Debug, Clone, PartialEq)]
struct JournalEntry {
    #[persist(identity)]
    id: i64,
    origin: String,
    seq: i64,
    text: String,
}

struct Journal;

impl persist::sync::history::HistorySink for Journal {
    fn deliver(
        &self,
        tx: &mut persist::WriteTx<'_>,
        origin: &str,
        item: &persist::HistoryItem,
    ) -> persist::Result<()> {
        tx.insert(&JournalEntry {
            id: 0,
            origin: origin.to_owned(),
            seq: item.seq as i64,
            text: String::from_utf8_lossy(&item.payload).into_owned(),
        })?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_written_on_an_active_backup_reaches_the_master_exactly_once() {
    use persist::sync::history::{History, HistoryLevel};
    use persist::sync::testing::memory::{Direction, Verdict};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let net = MemoryNetwork::with_seed(12);
    let (fm, fb) = (Fixture::sqlite(), Fixture::sqlite());
    let (ms, bs) = (store(&fm), store(&fb));
    ms.register::<JournalEntry>().unwrap();
    bs.register::<JournalEntry>().unwrap();
    let hm = History::new(
        ms.clone(),
        "gw-a",
        NodeRole::Master,
        HistoryLevel::Partial,
        Journal,
    );
    let hb = History::new(
        bs.clone(),
        "gw-b",
        NodeRole::Backup,
        HistoryLevel::Partial,
        Journal,
    );

    // The first history acknowledgement is lost on the wire: the batch is sent
    // again, and must not be delivered twice.
    let dropped = std::sync::Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    net.on_link(move |link| {
        let d = d.clone();
        link.on_frame(move |dir, frame| {
            if dir == Direction::ToDialer && d.load(Ordering::SeqCst) == 0 {
                if let Ok(persist::sync::protocol::Message::HistoryAck { .. }) =
                    persist::sync::codec::decode(frame, &Default::default())
                {
                    d.store(1, Ordering::SeqCst);
                    return Verdict::Drop;
                }
            }
            Verdict::Pass
        });
    });
    let m = NodeBuilder::new(ms.clone(), settings(NodeRole::Master, "gw-a"), sync("gw-a"))
        .history(hm.clone())
        .start_master(net.acceptor("gw-a"))
        .unwrap();
    let b = NodeBuilder::new(bs.clone(), settings(NodeRole::Backup, "gw-b"), sync("gw-b"))
        .history(hb.clone())
        .start_backup(net.dialer("gw-a"))
        .unwrap();
    until("master active", &m, |a| a == ActivityLevel::Active).await;
    until("backup cold", &b, |a| a == ActivityLevel::Cold).await;
    for i in 0..3 {
        hm.record("alarm", format!("on the master {i}").into_bytes())
            .unwrap();
    }
    net.partition(true);
    until("backup takes over", &b, |a| a == ActivityLevel::Active).await;
    for i in 0..5 {
        hb.record("alarm", format!("on the backup {i}").into_bytes())
            .unwrap();
    }
    assert_eq!(
        hb.buffered().unwrap().len(),
        5,
        "buffered durably while the master is away"
    );
    net.partition(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let journal = ms.list::<JournalEntry>().unwrap();
        if journal.len() >= 8 && hb.buffered().unwrap().is_empty() {
            let from_backup: Vec<(i64, String)> = journal
                .iter()
                .filter(|j| j.origin == "gw-b")
                .map(|j| (j.seq, j.text.clone()))
                .collect();
            assert_eq!(
                from_backup,
                (0..5)
                    .map(|i| (i + 1, format!("on the backup {i}")))
                    .collect::<Vec<_>>(),
                "exactly once, in order"
            );
            assert_eq!(journal.len(), 8);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never arrived: journal {journal:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "an acknowledgement was lost on the way"
    );
    // The journal replicates like any record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bs.list::<JournalEntry>().unwrap().len() != 8 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((m, b));
}
