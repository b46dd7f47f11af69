use std::time::{Duration, Instant};

use persist_core::Claim;

use super::machine::*;
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
        announced: true,
    }
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

/// A fresh pair: the master claims epoch 1 when it hears the backup, the backup adopts it.
fn fresh_pair(t0: Instant) -> (Machine, Machine) {
    let mut m = Machine::new(settings(NodeRole::Master, "a"), Claim::default(), t0);
    let mut b = Machine::new(settings(NodeRole::Backup, "b"), Claim::default(), t0);
    assert_eq!(m.activity(t0), ActivityLevel::Undecided);
    let e = m.heard(
        ms(t0, 10),
        view("b", NodeRole::Backup, Claim::default(), false),
    );
    assert_eq!(claims(&e), c(1, "a"));
    b.heard(ms(t0, 20), view("a", NodeRole::Master, claim(1, "a"), true));
    assert!(same(b.claim(), &claim(1, "a")));
    assert_eq!(m.activity(ms(t0, 20)), ActivityLevel::Active);
    assert_eq!(b.activity(ms(t0, 20)), ActivityLevel::Cold);
    (m, b)
}

#[test]
fn backup_takes_over_after_the_failover_timeout_of_silence() {
    let t0 = Instant::now();
    let (_m, mut b) = fresh_pair(t0);
    b.heard(
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
    let t0 = Instant::now();
    let (mut m, mut b) = fresh_pair(t0);
    b.tick(ms(t0, 1100)); // master silent (frozen, killed, or cut off)
    assert!(same(b.claim(), &claim(2, "b")));
    // The master comes back: it hears the higher claim and steps down, no fight.
    let e = m.heard(
        ms(t0, 5000),
        view("b", NodeRole::Backup, claim(2, "b"), false),
    );
    assert_eq!(claims(&e), c(2, "b"));
    assert_eq!(m.activity(ms(t0, 5000)), ActivityLevel::Cold);
    // The backup hears the master; once caught up it hands back.
    assert!(
        b.heard(
            ms(t0, 5010),
            view("a", NodeRole::Master, claim(2, "b"), false)
        )
        .is_empty(),
        "not before catching up"
    );
    let e = b.heard(
        ms(t0, 5020),
        view("a", NodeRole::Master, claim(2, "b"), true),
    );
    assert_eq!(claims(&e), c(3, "a"));
    assert_eq!(b.activity(ms(t0, 5020)), ActivityLevel::Cold);
    m.heard(
        ms(t0, 5030),
        view("b", NodeRole::Backup, claim(3, "a"), false),
    );
    assert_eq!(m.activity(ms(t0, 5030)), ActivityLevel::Active);
}

#[test]
fn manual_recovery_waits_for_the_operator() {
    let t0 = Instant::now();
    let mut s = settings(NodeRole::Backup, "b");
    s.recovery = RecoveryMode::Manual;
    let mut b = Machine::new(s, claim(1, "a"), t0);
    b.heard(ms(t0, 10), view("a", NodeRole::Master, claim(1, "a"), true));
    b.tick(ms(t0, 1100));
    assert!(same(b.claim(), &claim(2, "b")));
    assert!(
        b.heard(
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
    let t0 = Instant::now();
    let (mut m, mut b) = fresh_pair(t0);
    assert_eq!(claims(&m.request_switchover().unwrap()), c(2, "b"));
    assert_eq!(m.activity(ms(t0, 30)), ActivityLevel::Cold);
    b.heard(ms(t0, 40), view("a", NodeRole::Master, claim(2, "b"), true));
    assert_eq!(b.activity(ms(t0, 40)), ActivityLevel::Active);
    assert!(
        b.request_switchover().is_err(),
        "a backup does not switch over"
    );
}

#[test]
fn cut_link_settles_to_one_active_node() {
    let t0 = Instant::now();
    let (mut m, mut b) = fresh_pair(t0);
    // The link is cut while both run: the backup must assume the master died.
    b.tick(ms(t0, 1100));
    assert_eq!(m.activity(ms(t0, 1100)), ActivityLevel::Active);
    assert_eq!(b.activity(ms(t0, 1100)), ActivityLevel::Active);
    // The link returns: the higher claim wins at once, recovery hands back.
    m.heard(
        ms(t0, 9000),
        view("b", NodeRole::Backup, claim(2, "b"), false),
    );
    assert_eq!(m.activity(ms(t0, 9000)), ActivityLevel::Cold);
    let e = b.heard(
        ms(t0, 9001),
        view("a", NodeRole::Master, claim(2, "b"), true),
    );
    m.heard(
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
    let t0 = Instant::now();
    let (_m, mut b) = fresh_pair(t0);
    b.tick(ms(t0, 1100));
    assert!(same(b.claim(), &claim(2, "b")));
    // A reconnect: the peer is alive, but has not announced anything yet.
    let mut silent = view("a", NodeRole::Master, claim(1, "a"), true);
    silent.announced = false;
    assert!(
        b.heard(ms(t0, 3000), silent).is_empty(),
        "no handback on what it said before"
    );
    assert_eq!(b.deadline(), None, "active: no timer");
}

#[test]
fn equal_epochs_favour_the_master() {
    let t0 = Instant::now();
    // Both made epoch 5 without hearing each other (master restarted alone during a cut).
    let mut m = Machine::new(settings(NodeRole::Master, "a"), claim(5, "a"), t0);
    let mut b = Machine::new(settings(NodeRole::Backup, "b"), claim(5, "b"), t0);
    assert!(m
        .heard(
            ms(t0, 10),
            view("b", NodeRole::Backup, claim(5, "b"), false)
        )
        .is_empty());
    assert_eq!(
        claims(&b.heard(
            ms(t0, 10),
            view("a", NodeRole::Master, claim(5, "a"), false)
        )),
        c(5, "a")
    );
    assert_eq!(b.activity(ms(t0, 10)), ActivityLevel::Cold);
}

#[test]
fn startup_allowance_then_decide_alone() {
    let t0 = Instant::now();
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
    warm.heard(ms(t0, 5), view("a", NodeRole::Master, claim(1, "a"), true));
    assert_eq!(warm.activity(ms(t0, 5)), ActivityLevel::Warm);
    let mut i = Machine::new(settings(NodeRole::Independent, "i"), Claim::default(), t0);
    assert_eq!(i.activity(t0), ActivityLevel::Active);
    assert_eq!(claims(&i.tick(t0)), c(1, "i"));
}
