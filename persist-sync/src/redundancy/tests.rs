use std::time::Duration;

use persist_core::Claim;

use super::machine::*;
use crate::clock::Time;
use crate::protocol::NodeRole;

fn settings(role: NodeRole, id: &str) -> RedundancySettings {
    let mut s = RedundancySettings::new(role, id);
    s.failover_timeout = Duration::from_millis(1000);
    s.heartbeat_interval = Duration::from_millis(100);
    s.startup_allowance = Duration::from_millis(2000);
    s
}

fn claim(epoch: u64, active: &str) -> Claim {
    Claim {
        epoch,
        active: Some(active.into()),
        by: None,
    }
}

/// Compares claims without who made them.
fn same(a: &Claim, b: &Claim) -> bool {
    a.epoch == b.epoch && a.active == b.active
}

fn claims(effects: &[Effect]) -> Vec<(u64, Option<String>)> {
    effects
        .iter()
        .map(|Effect::Claim(c)| (c.epoch, c.active.clone()))
        .collect()
}

fn c(epoch: u64, active: &str) -> Vec<(u64, Option<String>)> {
    vec![(epoch, Some(active.to_string()))]
}

fn view(id: &str, role: NodeRole, c: Claim, caught_up: bool) -> PeerView {
    PeerView {
        node_id: id.into(),
        role,
        claim: c,
        caught_up,
        echo: None,
    }
}

fn ms(t0: Time, n: u64) -> Time {
    t0 + Duration::from_millis(n)
}

/// A fresh pair: the master claims epoch 1 when it hears the backup, the backup adopts it.
fn fresh_pair(t0: Time) -> (Machine, Machine) {
    let mut m = Machine::new(settings(NodeRole::Master, "a"), Claim::default(), t0);
    let mut b = Machine::new(settings(NodeRole::Backup, "b"), Claim::default(), t0);
    assert_eq!(m.activity(t0), ActivityLevel::Undecided);
    let e = m.announced(
        ms(t0, 10),
        view("b", NodeRole::Backup, Claim::default(), false),
    );
    assert_eq!(claims(&e), c(1, "a"));
    b.announced(ms(t0, 20), view("a", NodeRole::Master, claim(1, "a"), true));
    assert!(same(b.claim(), &claim(1, "a")));
    assert_eq!(m.activity(ms(t0, 20)), ActivityLevel::Active);
    assert_eq!(b.activity(ms(t0, 20)), ActivityLevel::Cold);
    (m, b)
}

#[test]
fn backup_takes_over_after_the_failover_timeout_of_silence() {
    let t0 = Time::ZERO;
    let (_m, mut b) = fresh_pair(t0);
    b.announced(
        ms(t0, 500),
        view("a", NodeRole::Master, claim(1, "a"), true),
    );
    assert_eq!(b.deadline(), Some(ms(t0, 1500)));
    assert!(b.tick(ms(t0, 1499)).is_empty(), "not before the timeout");
    assert_eq!(claims(&b.tick(ms(t0, 1500))), c(2, "b"));
    assert_eq!(b.activity(ms(t0, 1500)), ActivityLevel::Active);
    assert_eq!(b.deadline(), None);
}

#[test]
fn a_returning_master_steps_down_then_automatic_recovery_hands_back() {
    let t0 = Time::ZERO;
    let (mut m, mut b) = fresh_pair(t0);
    b.tick(ms(t0, 1100)); // master silent (frozen, killed, or cut off)
    assert!(same(b.claim(), &claim(2, "b")));
    // The master comes back: it hears the higher claim and steps down, no fight.
    let e = m.announced(
        ms(t0, 5000),
        view("b", NodeRole::Backup, claim(2, "b"), false),
    );
    assert_eq!(claims(&e), c(2, "b"));
    assert_eq!(m.activity(ms(t0, 5000)), ActivityLevel::Cold);
    // The backup hears the master; once caught up it hands back.
    assert!(
        b.announced(
            ms(t0, 5010),
            view("a", NodeRole::Master, claim(2, "b"), false)
        )
        .is_empty(),
        "not before catching up"
    );
    let e = b.announced(
        ms(t0, 5020),
        view("a", NodeRole::Master, claim(2, "b"), true),
    );
    assert_eq!(claims(&e), c(3, "a"));
    assert_eq!(b.activity(ms(t0, 5020)), ActivityLevel::Cold);
    m.announced(
        ms(t0, 5030),
        view("b", NodeRole::Backup, claim(3, "a"), false),
    );
    assert_eq!(m.activity(ms(t0, 5030)), ActivityLevel::Active);
}

#[test]
fn manual_recovery_waits_for_the_operator() {
    let t0 = Time::ZERO;
    let mut s = settings(NodeRole::Backup, "b");
    s.recovery = RecoveryMode::Manual;
    let mut b = Machine::new(s, claim(1, "a"), t0);
    b.announced(ms(t0, 10), view("a", NodeRole::Master, claim(1, "a"), true));
    b.tick(ms(t0, 1100));
    assert!(same(b.claim(), &claim(2, "b")));
    assert!(
        b.announced(
            ms(t0, 3000),
            view("a", NodeRole::Master, claim(2, "b"), true)
        )
        .is_empty(),
        "stays active"
    );
    assert_eq!(b.activity(ms(t0, 3000)), ActivityLevel::Active);
    assert_eq!(claims(&b.request_handback().unwrap()), c(3, "a"));
    assert!(
        b.request_handback().is_err(),
        "only the active backup hands back"
    );
}

#[test]
fn planned_switchover_names_the_backup() {
    let t0 = Time::ZERO;
    let (mut m, mut b) = fresh_pair(t0);
    let caught_up = BackupProgress {
        connected: true,
        acked: 7,
        head: 7,
    };
    assert_eq!(
        claims(&m.request_switchover(ms(t0, 25), caught_up).unwrap()),
        c(2, "b")
    );
    assert_eq!(m.activity(ms(t0, 30)), ActivityLevel::Cold);
    b.announced(ms(t0, 40), view("a", NodeRole::Master, claim(2, "b"), true));
    assert_eq!(b.activity(ms(t0, 40)), ActivityLevel::Active);
    assert!(
        b.request_switchover(ms(t0, 40), caught_up).is_err(),
        "a backup does not switch over"
    );
}

#[test]
fn cut_link_settles_to_one_active_node() {
    let t0 = Time::ZERO;
    let (mut m, mut b) = fresh_pair(t0);
    // The link is cut while both run: the backup must assume the master died.
    b.tick(ms(t0, 1100));
    assert_eq!(m.activity(ms(t0, 1100)), ActivityLevel::Active);
    assert_eq!(b.activity(ms(t0, 1100)), ActivityLevel::Active);
    // The link returns: the higher claim wins at once, recovery hands back.
    m.announced(
        ms(t0, 9000),
        view("b", NodeRole::Backup, claim(2, "b"), false),
    );
    assert_eq!(m.activity(ms(t0, 9000)), ActivityLevel::Cold);
    let e = b.announced(
        ms(t0, 9001),
        view("a", NodeRole::Master, claim(2, "b"), true),
    );
    m.announced(
        ms(t0, 9002),
        view("b", NodeRole::Backup, b.claim().clone(), false),
    );
    assert_eq!(claims(&e), c(3, "a"));
    assert_eq!(
        (m.activity(ms(t0, 9002)), b.activity(ms(t0, 9002))),
        (ActivityLevel::Active, ActivityLevel::Cold)
    );
}

#[test]
fn only_an_announcement_counts_not_a_stale_view() {
    let t0 = Time::ZERO;
    let (_m, mut b) = fresh_pair(t0);
    b.tick(ms(t0, 1100));
    assert!(same(b.claim(), &claim(2, "b")));
    // A reconnect: the peer is alive, but has not announced anything yet.
    b.link_down();
    b.alive(ms(t0, 3000));
    assert!(
        b.tick(ms(t0, 3000)).is_empty(),
        "no handback on what it said before"
    );
    assert_eq!(b.claim().active.as_deref(), Some("b"));
    assert_eq!(b.deadline(), None, "active and decided: no timer");
}

#[test]
fn equal_epochs_favour_the_master() {
    let t0 = Time::ZERO;
    // Both made epoch 5 without hearing each other (master restarted alone during a cut).
    let mut m = Machine::new(settings(NodeRole::Master, "a"), claim(5, "a"), t0);
    let mut b = Machine::new(settings(NodeRole::Backup, "b"), claim(5, "b"), t0);
    assert!(m
        .announced(
            ms(t0, 10),
            view("b", NodeRole::Backup, claim(5, "b"), false)
        )
        .is_empty());
    assert_eq!(
        claims(&b.announced(
            ms(t0, 10),
            view("a", NodeRole::Master, claim(5, "a"), false)
        )),
        c(5, "a")
    );
    assert_eq!(b.activity(ms(t0, 10)), ActivityLevel::Cold);
}

#[test]
fn startup_allowance_then_decide_alone() {
    let t0 = Time::ZERO;
    let mut m = Machine::new(settings(NodeRole::Master, "a"), Claim::default(), t0);
    assert_eq!(m.deadline(), Some(ms(t0, 2000)));
    assert!(m.tick(ms(t0, 1999)).is_empty());
    assert_eq!(claims(&m.tick(ms(t0, 2000))), c(1, "a"));
    let mut b = Machine::new(settings(NodeRole::Backup, "b"), claim(1, "a"), t0);
    assert_eq!(b.activity(ms(t0, 100)), ActivityLevel::Undecided);
    assert!(
        b.tick(ms(t0, 1999)).is_empty(),
        "a starting backup waits the whole allowance"
    );
    assert_eq!(claims(&b.tick(ms(t0, 2000))), c(2, "b"));
    let mut w = settings(NodeRole::Backup, "w");
    w.standby = StandbyLevel::Warm;
    let mut warm = Machine::new(w, claim(1, "a"), t0);
    warm.announced(ms(t0, 5), view("a", NodeRole::Master, claim(1, "a"), true));
    assert_eq!(warm.activity(ms(t0, 5)), ActivityLevel::Warm);
    let mut i = Machine::new(settings(NodeRole::Independent, "i"), Claim::default(), t0);
    assert_eq!(i.activity(t0), ActivityLevel::Active);
    assert_eq!(claims(&i.tick(t0)), c(1, "i"));
}

#[test]
fn a_restarted_node_acts_on_its_stored_claim_only_after_hearing_the_peer() {
    let t0 = Time::ZERO;
    // A master restarts with its stored claim naming itself, while the
    // backup took over meanwhile (epoch 2).
    let mut m = Machine::new(settings(NodeRole::Master, "a"), claim(1, "a"), t0);
    assert_eq!(m.activity(t0), ActivityLevel::Undecided);
    // The link comes up: frames arrive before the backup's claim does.
    m.alive(ms(t0, 10));
    assert_eq!(
        m.activity(ms(t0, 10)),
        ActivityLevel::Undecided,
        "alive is not the claim: never Active on the stale one"
    );
    m.announced(
        ms(t0, 12),
        view("b", NodeRole::Backup, claim(2, "b"), false),
    );
    assert_eq!(m.activity(ms(t0, 12)), ActivityLevel::Cold);
    // Without the peer, the allowance decides.
    let m2 = Machine::new(settings(NodeRole::Master, "a"), claim(1, "a"), t0);
    assert_eq!(m2.deadline(), Some(ms(t0, 2000)));
    assert_eq!(m2.activity(ms(t0, 2000)), ActivityLevel::Active);
}

#[test]
fn a_refusing_master_counts_as_heard() {
    let t0 = Time::ZERO;
    let mut b = Machine::new(settings(NodeRole::Backup, "b"), claim(1, "a"), t0);
    // A wrong secret: the master answers each dial with its hello, then closes.
    for t in (0..20_000).step_by(400) {
        b.alive(ms(t0, t));
        assert!(b.tick(ms(t0, t + 1)).is_empty(), "no takeover at {t} ms");
    }
    assert_ne!(b.activity(ms(t0, 20_000)), ActivityLevel::Active);
    // Once it stays silent for the timeout, the backup takes over.
    assert_eq!(b.deadline(), Some(ms(t0, 19_600 + 1000)));
    assert_eq!(claims(&b.tick(ms(t0, 20_600))), c(2, "b"));
}

#[test]
fn switchover_needs_a_caught_up_backup_and_is_undone_if_it_does_not_take_over() {
    let t0 = Time::ZERO;
    let (mut m, _b) = fresh_pair(t0);
    let down = BackupProgress {
        connected: false,
        acked: 7,
        head: 7,
    };
    assert_eq!(
        m.request_switchover(ms(t0, 30), down),
        Err(RequestError::BackupNotConnected)
    );
    let behind = BackupProgress {
        connected: true,
        acked: 5,
        head: 7,
    };
    assert_eq!(
        m.request_switchover(ms(t0, 30), behind),
        Err(RequestError::BackupBehind { acked: 5, head: 7 })
    );
    assert_eq!(m.activity(ms(t0, 30)), ActivityLevel::Active);
    let ok = BackupProgress {
        connected: true,
        acked: 7,
        head: 7,
    };
    assert_eq!(
        claims(&m.request_switchover(ms(t0, 40), ok).unwrap()),
        c(2, "b")
    );
    assert_eq!(m.activity(ms(t0, 41)), ActivityLevel::Cold);
    // The backup dies right then and never announces epoch 2: undone.
    assert_eq!(m.deadline(), Some(ms(t0, 1040)));
    assert!(m.tick(ms(t0, 1039)).is_empty());
    assert_eq!(claims(&m.tick(ms(t0, 1040))), c(3, "a"));
    assert_eq!(m.activity(ms(t0, 1040)), ActivityLevel::Active);
    // Announced in time: it stays.
    let (mut m, _b) = fresh_pair(t0);
    m.request_switchover(ms(t0, 40), ok).unwrap();
    m.announced(
        ms(t0, 60),
        view("b", NodeRole::Backup, claim(2, "b"), false),
    );
    assert!(m.tick(ms(t0, 5000)).is_empty());
    assert_eq!(m.activity(ms(t0, 5000)), ActivityLevel::Cold);
}

#[test]
fn two_masters_keep_one_active() {
    let t0 = Time::ZERO;
    let mut a = Machine::new(settings(NodeRole::Master, "gw-a"), claim(3, "gw-a"), t0);
    let mut b = Machine::new(settings(NodeRole::Master, "gw-b"), claim(1, "gw-b"), t0);
    let (ta, tb) = (a.tick(ms(t0, 2000)), b.tick(ms(t0, 2000)));
    assert!(
        ta.is_empty() && tb.is_empty(),
        "both act on their own claims"
    );
    a.dual_master("gw-b");
    b.dual_master("gw-a");
    assert_eq!(a.activity(ms(t0, 2001)), ActivityLevel::Active);
    assert_eq!(b.activity(ms(t0, 2001)), ActivityLevel::Cold);
    let ok = BackupProgress {
        connected: true,
        acked: 0,
        head: 0,
    };
    assert!(matches!(
        a.request_switchover(ms(t0, 2002), ok),
        Err(RequestError::DualMaster(_)) | Err(RequestError::BackupNotConnected)
    ));
}

#[test]
fn settings_are_validated() {
    let mut s = settings(NodeRole::Backup, "b");
    assert!(s.validate().is_ok());
    s.heartbeat_interval = Duration::ZERO;
    assert_eq!(s.validate().unwrap_err().setting, "heartbeat_interval");
    s.heartbeat_interval = Duration::from_millis(600);
    assert_eq!(s.validate().unwrap_err().setting, "failover_timeout");
    s.heartbeat_interval = Duration::from_millis(100);
    s.startup_allowance = Duration::from_millis(50);
    assert_eq!(s.validate().unwrap_err().setting, "startup_allowance");
    s.startup_allowance = Duration::from_secs(1);
    s.node_id.clear();
    assert_eq!(s.validate().unwrap_err().setting, "node_id");
}
