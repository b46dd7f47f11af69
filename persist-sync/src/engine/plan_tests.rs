use super::*;
use crate::protocol::ModuleManifest;

fn master() -> MasterView {
    MasterView {
        schema: 7,
        history: "h".into(),
        position: 100,
        first_retained: 51,
    }
}

fn backup(position: u64, digest: u128) -> BackupView {
    BackupView {
        schema: 7,
        history: "h".into(),
        position,
        digest: Digest(digest),
        force_snapshot: None,
    }
}

fn snap(reason: ResyncReason) -> Decision {
    Decision::Sync(Plan::Snapshot { reason })
}

#[test]
fn matching_backup_streams_from_its_position() {
    assert_eq!(
        plan_sync(&master(), &backup(80, 5), Some(Digest(5))),
        Decision::Sync(Plan::Incremental {
            from: 81,
            history: "h".into()
        })
    );
    assert_eq!(
        plan_sync(&master(), &backup(100, 9), Some(Digest(9))),
        Decision::Sync(Plan::Incremental {
            from: 101,
            history: "h".into()
        })
    );
    // Right at the trim boundary the anchor's digest counts.
    assert_eq!(
        plan_sync(&master(), &backup(50, 3), Some(Digest(3))),
        Decision::Sync(Plan::Incremental {
            from: 51,
            history: "h".into()
        })
    );
}

#[test]
fn schema_mismatch_is_refused() {
    let mut b = backup(80, 5);
    b.schema = 8;
    assert_eq!(
        plan_sync(&master(), &b, Some(Digest(5))),
        Decision::Refuse(RefuseReason::SchemaMismatch { ours: 7, theirs: 8 })
    );
}

#[test]
fn every_resync_reason() {
    assert_eq!(
        plan_sync(&master(), &backup(80, 5), Some(Digest(6))),
        snap(ResyncReason::DigestMismatch)
    );
    assert_eq!(
        plan_sync(&master(), &backup(101, 5), None),
        snap(ResyncReason::AheadOfMaster)
    );
    assert_eq!(
        plan_sync(&master(), &backup(49, 5), None),
        snap(ResyncReason::EntriesTrimmed)
    );
    assert_eq!(
        plan_sync(&master(), &backup(60, 5), None),
        snap(ResyncReason::EntriesTrimmed)
    );
    let mut other = backup(80, 5);
    other.history = "other".into();
    assert_eq!(
        plan_sync(&master(), &other, Some(Digest(5))),
        snap(ResyncReason::DifferentHistory)
    );
    let mut asked = backup(80, 5);
    asked.force_snapshot = Some(ResyncReason::Requested);
    assert_eq!(
        plan_sync(&master(), &asked, Some(Digest(5))),
        snap(ResyncReason::Requested)
    );
}

#[test]
fn fresh_backup_replays_a_complete_log() {
    let mut m = master();
    m.first_retained = 1;
    let mut fresh = backup(0, 0);
    fresh.history = "its own".into();
    assert_eq!(
        plan_sync(&m, &fresh, Some(Digest::EMPTY)),
        Decision::Sync(Plan::Incremental {
            from: 1,
            history: "h".into()
        })
    );
    // Unless the log was trimmed.
    assert_eq!(
        plan_sync(&master(), &fresh, None),
        snap(ResyncReason::EntriesTrimmed)
    );
    // A backup at position 0 holding rows is not fresh.
    let mut dirty = backup(0, 42);
    dirty.history = "its own".into();
    assert_eq!(
        plan_sync(&m, &dirty, Some(Digest::EMPTY)),
        snap(ResyncReason::DifferentHistory)
    );
}

#[test]
fn window_bounds_entries_in_flight() {
    let mut w = SendWindow::new(11, 5);
    assert_eq!(w.sendable(10), 0, "nothing new");
    assert_eq!(w.sendable(30), 5, "window of 5");
    w.on_sent(15);
    assert_eq!(w.sendable(30), 0, "full until acked");
    assert!(w.on_ack(12));
    assert_eq!(w.sendable(30), 2);
    assert!(!w.on_ack(16), "ack of an unsent position");
    assert!(w.on_ack(15));
    assert_eq!(w.sendable(17), 2);
    assert_eq!(w.acked(), 15);
    assert!(w.on_ack(13), "a stale ack is harmless");
    assert_eq!(w.acked(), 15);
}

/// After a rewind, entries go again one batch at a time, and a late
/// acknowledgement of what was sent before the rewind is no violation (the
/// old window refused it: "ack of position 10, never sent" ended the link of
/// a backup that was only slow to apply).
#[test]
fn a_rewind_sends_again_one_batch_at_a_time_and_late_acks_count() {
    let mut w = SendWindow::new(1, 100);
    w.on_sent(5);
    w.on_sent(10);
    w.on_sent(15);
    assert!(w.on_ack(5));
    w.rewind();
    assert_eq!(w.next(), 6);
    assert!(!w.in_flight());
    assert_eq!(w.sendable(20), 15, "one batch may go");
    w.on_sent(8);
    assert_eq!(w.sendable(20), 0, "the next one waits for its ack");
    // The backup was only slow: it acknowledges what came before the rewind.
    assert!(w.on_ack(10), "an ack of an entry sent before the rewind");
    assert_eq!((w.acked(), w.next()), (10, 11));
    assert_eq!(w.sendable(20), 10, "one more batch of what was sent before");
    w.on_sent(12);
    assert_eq!(w.sendable(20), 0);
    assert!(w.on_ack(12));
    assert_eq!(w.sendable(20), 8, "12 acked: 13..15 may go again");
    w.on_sent(15);
    assert_eq!(
        w.sendable(20),
        5,
        "past what was sent before: the window as usual"
    );
    assert!(
        !w.on_ack(16),
        "an ack of an entry never sent is still refused"
    );
    assert!(w.on_ack(15));
    assert_eq!(w.sendable(20), 5);
}

#[test]
fn retention_follows_acks_size_and_age() {
    let p = RetentionPolicy {
        keep_acked: 10,
        max_entries: 100,
        max_age: Duration::from_secs(60),
    };
    assert_eq!(
        p.trim_below(50, None, None),
        0,
        "no backup yet, within size"
    );
    assert_eq!(p.trim_below(50, Some(40), None), 31);
    assert_eq!(
        p.trim_below(500, Some(40), None),
        401,
        "size bound beats a lagging backup"
    );
    assert_eq!(p.trim_below(50, Some(5), Some(20)), 20, "age bound");
    assert_eq!(
        p.trim_below(50, Some(50), Some(60)),
        50,
        "never past the head"
    );
}

fn module(name: &str, version: &str, schema: u128) -> ModuleManifest {
    ModuleManifest::new(name, version, schema)
}

#[test]
fn no_modules_on_either_node_compare_equal() {
    assert_eq!(compare_modules(&[], &[]), Ok(vec![]));
    let same = [module("alarms", "1.0.0", 1), module("counters", "2.0.0", 2)];
    assert_eq!(compare_modules(&same, &same), Ok(vec![]));
}

#[test]
fn a_version_only_difference_is_accepted_and_listed() {
    let ours = [module("counters", "2.0.0", 2), module("alarms", "1.1.0", 1)];
    let theirs = [module("alarms", "1.0.0", 1), module("counters", "2.0.1", 2)];
    assert_eq!(
        compare_modules(&ours, &theirs),
        Ok(vec![
            VersionSkew {
                module: "alarms".into(),
                ours: "1.1.0".into(),
                theirs: "1.0.0".into(),
            },
            VersionSkew {
                module: "counters".into(),
                ours: "2.0.0".into(),
                theirs: "2.0.1".into(),
            },
        ]),
        "in name order, whatever the declaration order"
    );
    let skew = &compare_modules(&ours, &theirs).unwrap()[0];
    assert_eq!(
        skew.warning("gw-a"),
        "module `alarms`: 1.1.0 here, 1.0.0 on gw-a: same records, replication continues"
    );
}

#[test]
fn different_records_are_refused_by_name_with_both_versions() {
    let ours = [module("alarms", "1.1.0", 1)];
    let theirs = [module("alarms", "1.0.0", 9)];
    let conflict = compare_modules(&ours, &theirs).unwrap_err();
    assert_eq!(
        conflict,
        ModuleConflict {
            module: "alarms".into(),
            ours: Some("1.1.0".into()),
            theirs: Some("1.0.0".into()),
        }
    );
    let reason = conflict.refusal("gw-a", "gw-b");
    assert_eq!(
        reason.to_string(),
        "module `alarms`: 1.1.0 on gw-a, 1.0.0 on gw-b, and its records differ"
    );
    // The same version with other records (a module built from changed
    // sources without a new version number).
    let theirs = [module("alarms", "1.1.0", 9)];
    assert_eq!(
        compare_modules(&ours, &theirs)
            .unwrap_err()
            .refusal("gw-a", "gw-b")
            .to_string(),
        "module `alarms` 1.1.0: its records differ between gw-a and gw-b"
    );
}

#[test]
fn a_module_on_one_node_only_is_refused_by_name() {
    let both = module("alarms", "1.0.0", 1);
    let ours = [both.clone(), module("counters", "1.0.0", 2)];
    let theirs = [both.clone()];
    let conflict = compare_modules(&ours, &theirs).unwrap_err();
    assert_eq!(
        conflict,
        ModuleConflict {
            module: "counters".into(),
            ours: Some("1.0.0".into()),
            theirs: None,
        }
    );
    assert_eq!(
        conflict.refusal("gw-a", "gw-b").to_string(),
        "module `counters` 1.0.0 is installed on gw-a only"
    );
    let conflict = compare_modules(&theirs, &ours).unwrap_err();
    assert_eq!(
        (conflict.ours.clone(), conflict.theirs.clone()),
        (None, Some("1.0.0".into()))
    );
    assert_eq!(
        conflict.refusal("gw-a", "gw-b").to_string(),
        "module `counters` 1.0.0 is installed on gw-b only"
    );
    // Modules declared on one node and none on the other.
    assert_eq!(
        compare_modules(&[], &theirs).unwrap_err().module,
        "alarms",
        "a node that declares no modules is refused by one that declares some"
    );
}

#[test]
fn the_first_conflict_by_name_wins_over_version_differences() {
    let ours = [
        module("zeta", "1", 5),
        module("alarms", "2.0.0", 1),
        module("beta", "1", 3),
    ];
    let theirs = [
        module("alarms", "1.0.0", 1),
        module("beta", "1", 4),
        module("gamma", "1", 6),
    ];
    assert_eq!(compare_modules(&ours, &theirs).unwrap_err().module, "beta");
}

#[test]
fn the_comparison_is_symmetric() {
    let lists = [
        vec![],
        vec![module("alarms", "1.0.0", 1)],
        vec![module("alarms", "1.1.0", 1)],
        vec![module("alarms", "1.0.0", 2)],
        vec![module("alarms", "1.0.0", 1), module("counters", "1", 3)],
        vec![module("counters", "1", 3)],
    ];
    for a in &lists {
        for b in &lists {
            match (compare_modules(a, b), compare_modules(b, a)) {
                (Ok(x), Ok(y)) => {
                    let swapped: Vec<VersionSkew> = y
                        .into_iter()
                        .map(|k| VersionSkew {
                            module: k.module,
                            ours: k.theirs,
                            theirs: k.ours,
                        })
                        .collect();
                    assert_eq!(x, swapped, "{a:?} / {b:?}");
                }
                (Err(x), Err(y)) => {
                    assert_eq!(
                        (x.module, x.ours, x.theirs),
                        (y.module, y.theirs, y.ours),
                        "{a:?} / {b:?}"
                    );
                }
                (x, y) => panic!("{a:?} / {b:?}: {x:?} but {y:?}"),
            }
        }
    }
}
