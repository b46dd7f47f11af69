use std::time::Duration;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(n: u64) -> Time {
    Time::from_offset(ms(n))
}

fn settings() -> WitnessSettings {
    WitnessSettings::new(ms(1200))
}

fn seq(a: &LeaseAction) -> u64 {
    match a {
        LeaseAction::TryAcquire { seq }
        | LeaseAction::Renew { seq, .. }
        | LeaseAction::Release { seq, .. } => *seq,
    }
}

#[test]
fn ttl_at_or_above_the_failover_timeout_is_refused_by_name() {
    let e = WitnessSettings::new(ms(3000))
        .validate(ms(3000))
        .unwrap_err();
    assert_eq!(e.setting, "ttl");
    assert!(
        e.to_string().contains("shorter than the failover timeout"),
        "{e}"
    );
    settings().validate(ms(3000)).unwrap();
    let mut s = settings();
    s.renew_every = ms(1100);
    assert_eq!(s.validate(ms(3000)).unwrap_err().setting, "renew_every");
    s = settings();
    s.clock_margin_permille = 0;
    assert_eq!(
        s.validate(ms(3000)).unwrap_err().setting,
        "clock_margin_permille"
    );
}

#[test]
fn a_won_lease_counts_from_the_request_less_the_clock_margin() {
    let mut l = Lease::new(settings(), "a", at(0));
    assert!(l.poll(at(0)).is_none(), "nothing wanted, nothing asked");
    l.want(true);
    let a = l.poll(at(100)).unwrap();
    assert_eq!(a, LeaseAction::TryAcquire { seq: 1 });
    assert!(l.poll(at(150)).is_none(), "one request at a time");
    l.event(
        at(400),
        LeaseEvent::Held {
            seq: 1,
            revision: 7,
        },
    );
    // 1200 ms less 5 % = 1140 ms from the request at 100, not the answer at 400.
    assert!(l.holds(at(1239)));
    assert!(!l.holds(at(1240)));
    assert_eq!(l.status(at(500)).holder.as_deref(), Some("a"));
    assert_eq!(l.status(at(500)).valid_until, Some(at(1240)));
}

#[test]
fn the_holder_renews_on_its_revision_and_loses_the_lease_when_taken() {
    let mut l = Lease::new(settings(), "a", at(0));
    l.want(true);
    let s1 = seq(&l.poll(at(0)).unwrap());
    l.event(
        at(10),
        LeaseEvent::Held {
            seq: s1,
            revision: 3,
        },
    );
    assert!(l.poll(at(409)).is_none(), "renewal every 400 ms");
    let r = l.poll(at(410)).unwrap();
    assert_eq!(
        r,
        LeaseAction::Renew {
            seq: 2,
            revision: 3
        }
    );
    l.event(
        at(420),
        LeaseEvent::Taken {
            seq: 2,
            holder: "b".into(),
            revision: 4,
        },
    );
    assert!(
        !l.holds(at(420)),
        "a node that loses the lease steps down at once"
    );
    assert!(
        !l.permits_active(at(420), true, Some("c")),
        "a third holder beats a peer's word"
    );
    assert!(
        l.permits_active(at(420), true, Some("b")),
        "the peer holding it confirms us"
    );
    assert_eq!(l.status(at(420)).holder.as_deref(), Some("b"));
    assert!(l.poll(at(819)).is_none(), "retries wait a renewal interval");
    assert!(matches!(
        l.poll(at(820)),
        Some(LeaseAction::TryAcquire { .. })
    ));
}

#[test]
fn an_unreachable_witness_lets_the_lease_run_out_before_the_ttl() {
    let mut l = Lease::new(settings(), "a", at(0));
    l.want(true);
    let s1 = seq(&l.poll(at(0)).unwrap());
    l.event(
        at(5),
        LeaseEvent::Held {
            seq: s1,
            revision: 1,
        },
    );
    let mut t = 0;
    while t < 2000 {
        if let Some(a) = l.poll(at(t)) {
            // Every request fails: the witness is cut off.
            l.event(
                at(t + 1),
                LeaseEvent::Unreachable {
                    seq: seq(&a),
                    error: "connection refused".into(),
                },
            );
        }
        assert_eq!(l.holds(at(t)), t < 1140, "at {t} ms");
        assert_eq!(l.permits_active(at(t), false, None), t < 1140);
        assert!(
            l.permits_active(at(t), true, Some("b")),
            "a confirming peer keeps it"
        );
        t += 10;
    }
    assert_eq!(
        l.status(at(2000)).error.as_deref(),
        Some("connection refused")
    );
}

#[test]
fn a_request_without_an_answer_is_given_up_and_its_late_answer_ignored() {
    let mut l = Lease::new(settings(), "a", at(0));
    l.want(true);
    let s1 = seq(&l.poll(at(0)).unwrap());
    assert!(l.poll(at(299)).is_none());
    assert_eq!(
        l.deadline(),
        Some(at(300)),
        "the request's bound is a deadline"
    );
    assert!(
        l.poll(at(500)).is_none(),
        "given up at 500, retried after 200 ms"
    );
    let again = l.poll(at(700)).unwrap();
    assert_ne!(seq(&again), s1);
    l.event(
        at(710),
        LeaseEvent::Held {
            seq: s1,
            revision: 9,
        },
    );
    assert!(!l.holds(at(710)), "a late answer counts for nothing");
    l.event(
        at(720),
        LeaseEvent::Held {
            seq: seq(&again),
            revision: 10,
        },
    );
    assert!(l.holds(at(720)));
}

#[test]
fn a_node_that_no_longer_wants_the_lease_stops_counting_on_it_and_releases() {
    let mut l = Lease::new(settings(), "a", at(0));
    l.want(true);
    let s1 = seq(&l.poll(at(0)).unwrap());
    l.event(
        at(5),
        LeaseEvent::Held {
            seq: s1,
            revision: 2,
        },
    );
    l.want(false);
    let r = l.poll(at(10)).unwrap();
    assert_eq!(
        r,
        LeaseAction::Release {
            seq: 2,
            revision: 2
        }
    );
    assert!(!l.holds(at(10)));
    l.event(at(20), LeaseEvent::Released { seq: 2 });
    assert!(l.poll(at(5000)).is_none());
    assert_eq!(l.deadline(), None);
}
