//! The cases. Each takes a fixture and must hold on every backend.

use std::time::Duration;

use persist::log::{decode_body, LogEntry, Op};
use persist::{Applied, Error, PersistentRecord, RecordEvent, Store, Value};

use super::records::*;
use super::Fixture;

fn store_with_all(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<SmsSettings>().unwrap(); // registers Profile first
    s.register::<Broker>().unwrap();
    s.register::<Folder>().unwrap();
    s
}

pub fn crud_round_trips_every_field_type(fx: &Fixture) {
    let s = store_with_all(fx);
    let mut p = profile("alarms");
    p.note = Some("multi\nline 'quoted' \"text\" ✓".into());
    let id = s.insert(&p).unwrap();
    p.id = id;
    assert_eq!(s.get::<Profile>(id).unwrap(), Some(p.clone()));
    let mut settings = sms(id);
    s.insert(&settings).unwrap();
    assert_eq!(s.get::<SmsSettings>(id).unwrap(), Some(settings.clone()));
    settings.timeout_ms = None;
    settings.mode = Mode::Plain;
    settings.weight = -1e300;
    settings.secret = Vec::new();
    s.update(&settings).unwrap();
    assert_eq!(s.get::<SmsSettings>(id).unwrap(), Some(settings));
    p.enabled = false;
    p.note = None;
    s.update(&p).unwrap();
    assert_eq!(s.list::<Profile>().unwrap(), vec![p]);
}

pub fn identity_keys_are_assigned_in_order(fx: &Fixture) {
    let s = store_with_all(fx);
    let mut p = profile("a");
    p.id = 999; // ignored: the store assigns identities
    let a = s.insert(&p).unwrap();
    let b = s.insert(&profile("b")).unwrap();
    assert_eq!((a, b), (1, 2));
    drop(s);
    let s = store_with_all(fx);
    assert_eq!(s.insert(&profile("c")).unwrap(), 3);
}

pub fn explicit_keys_and_save(fx: &Fixture) {
    let s = store_with_all(fx);
    let id = s.insert(&profile("p")).unwrap();
    let mut st = sms(id);
    assert_eq!(s.write(|tx| tx.save(&st)).unwrap(), id);
    st.port = 1;
    s.write(|tx| tx.save(&st)).unwrap();
    assert_eq!(s.get::<SmsSettings>(id).unwrap().unwrap().port, 1);
    let err = s.insert(&st).unwrap_err();
    assert!(
        matches!(err, Error::UniqueViolation { ref column, .. } if column == "profile_id"),
        "{err}"
    );
}

pub fn missing_rows_are_not_found(fx: &Fixture) {
    let s = store_with_all(fx);
    assert_eq!(s.get::<Profile>(42).unwrap(), None);
    let mut p = profile("ghost");
    p.id = 42;
    assert!(
        matches!(s.update(&p), Err(Error::NotFound { ref table, ref key }) if table == "notification_profile" && key == "42")
    );
    assert!(matches!(
        s.delete::<Profile>(42),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(s.position(), 0, "failed writes log nothing");
}

pub fn unique_violation_names_the_column(fx: &Fixture) {
    let s = store_with_all(fx);
    s.insert(&profile("dup")).unwrap();
    let err = s.insert(&profile("dup")).unwrap_err();
    match err {
        Error::UniqueViolation {
            table,
            column,
            value,
        } => {
            assert_eq!(
                (table.as_str(), column.as_str()),
                ("notification_profile", "name")
            );
            assert_eq!(value.as_deref(), Some("\"dup\""));
        }
        other => panic!("expected a unique violation, got {other}"),
    }
    assert_eq!(s.position(), 1);
    assert_eq!(s.list::<Profile>().unwrap().len(), 1);
}

pub fn validation_error_reaches_the_caller(fx: &Fixture) {
    let s = store_with_all(fx);
    let err = s.insert(&profile("  ")).unwrap_err();
    assert!(
        matches!(err, Error::Validation { ref message, .. } if message == "name must not be blank"),
        "{err}"
    );
    let id = s.insert(&profile("ok")).unwrap();
    let mut p = s.get::<Profile>(id).unwrap().unwrap();
    p.name = String::new();
    assert!(matches!(s.update(&p), Err(Error::Validation { .. })));
    assert_eq!(s.get::<Profile>(id).unwrap().unwrap().name, "ok");
    assert_eq!(s.position(), 1);
}

pub fn missing_reference_is_refused(fx: &Fixture) {
    let s = store_with_all(fx);
    let err = s.insert(&sms(77)).unwrap_err();
    match err {
        Error::MissingReference {
            table,
            column,
            target,
            key,
        } => {
            assert_eq!(
                (
                    table.as_str(),
                    column.as_str(),
                    target.as_str(),
                    key.as_str()
                ),
                ("sms_settings", "profile_id", "notification_profile", "77")
            );
        }
        other => panic!("expected a missing reference, got {other}"),
    }
    // Inserting the parent in the same transaction makes it valid.
    s.write(|tx| {
        let id = tx.insert(&profile("p"))?;
        tx.insert(&sms(id))
    })
    .unwrap();
}

pub fn restrict_refuses_delete(fx: &Fixture) {
    let s = store_with_all(fx);
    let p = s.insert(&profile("p")).unwrap();
    s.insert(&Broker {
        id: 0,
        profile_id: p,
        name: "b".into(),
        parent: None,
    })
    .unwrap();
    let err = s.delete::<Profile>(p).unwrap_err();
    match err {
        Error::Referenced {
            table,
            by_table,
            by_column,
            ..
        } => {
            assert_eq!(
                (table.as_str(), by_table.as_str(), by_column.as_str()),
                ("notification_profile", "broker", "profile_id")
            );
        }
        other => panic!("expected referenced, got {other}"),
    }
    assert!(s.get::<Profile>(p).unwrap().is_some());
}

pub fn cascade_deletes_are_logged_and_announced(fx: &Fixture) {
    let s = store_with_all(fx);
    let mut events = s.subscribe::<SmsSettings>().unwrap();
    let p = s.insert(&profile("p")).unwrap();
    s.insert(&sms(p)).unwrap();
    let before = s.position();
    s.delete::<Profile>(p).unwrap();
    assert_eq!(s.get::<SmsSettings>(p).unwrap(), None);
    let entry = s.read_log(before + 1, 1).unwrap().remove(0);
    let body = entry.plain_body().unwrap();
    let changes = decode_body(&body).unwrap();
    let summary: Vec<_> = changes.iter().map(|c| (c.table, c.op)).collect();
    assert_eq!(
        summary,
        vec![
            ("sms_settings", Op::Delete),
            ("notification_profile", Op::Delete)
        ]
    );
    assert!(matches!(
        events.recv_timeout(Duration::from_secs(5)).unwrap(),
        RecordEvent::Added(_)
    ));
    assert!(
        matches!(events.recv_timeout(Duration::from_secs(5)).unwrap(), RecordEvent::Deleted(ref d) if d.profile_id == p)
    );
    assert!(s.verify().unwrap().is_consistent());
}

pub fn cascade_through_self_reference(fx: &Fixture) {
    let s = store_with_all(fx);
    let root = s
        .insert(&Folder {
            id: 0,
            parent: None,
            name: "root".into(),
        })
        .unwrap();
    let a = s
        .insert(&Folder {
            id: 0,
            parent: Some(root),
            name: "a".into(),
        })
        .unwrap();
    s.insert(&Folder {
        id: 0,
        parent: Some(a),
        name: "a1".into(),
    })
    .unwrap();
    let other = s
        .insert(&Folder {
            id: 0,
            parent: None,
            name: "other".into(),
        })
        .unwrap();
    s.delete::<Folder>(root).unwrap();
    let left: Vec<i64> = s.list::<Folder>().unwrap().iter().map(|f| f.id).collect();
    assert_eq!(left, vec![other]);
    assert!(s.verify().unwrap().is_consistent());
}

pub fn transaction_is_all_or_nothing(fx: &Fixture) {
    let s = store_with_all(fx);
    let r: Result<(), Error> = s.write(|tx| {
        tx.insert(&profile("one"))?;
        tx.insert(&profile("two"))?;
        Err(Error::Database("module gave up".into()))
    });
    assert!(r.is_err());
    assert!(s.list::<Profile>().unwrap().is_empty());
    assert_eq!(s.position(), 0);
    s.write(|tx| {
        tx.insert(&profile("one"))?;
        tx.insert(&profile("two"))
    })
    .unwrap();
    assert_eq!(s.list::<Profile>().unwrap().len(), 2);
    assert_eq!(s.position(), 1, "one transaction, one entry");
}

pub fn failed_operation_spoils_the_transaction(fx: &Fixture) {
    let s = store_with_all(fx);
    s.insert(&profile("taken")).unwrap();
    let r = s.write(|tx| {
        tx.insert(&profile("fresh"))?;
        let dup = tx.insert(&profile("taken"));
        assert!(matches!(dup, Err(Error::UniqueViolation { .. })));
        // Ignoring the error does not let the transaction commit half done.
        assert!(tx.insert(&profile("later")).is_err());
        Ok(())
    });
    assert!(r.is_err());
    assert_eq!(s.list::<Profile>().unwrap().len(), 1);
    assert_eq!(s.position(), 1);
}

pub fn panic_in_transaction_rolls_back(fx: &Fixture) {
    let s = store_with_all(fx);
    let s2 = s.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s2.write(|tx| -> Result<(), Error> {
            tx.insert(&profile("half")).unwrap();
            panic!("module bug");
        })
    }));
    assert!(r.is_err());
    assert!(s.list::<Profile>().unwrap().is_empty());
    s.insert(&profile("after")).unwrap();
    assert_eq!(s.position(), 1);
}

pub fn queries_filter_order_limit_count(fx: &Fixture) {
    let s = store_with_all(fx);
    for (i, name) in ["d", "a", "c", "b", "e"].iter().enumerate() {
        let mut p = profile(name);
        p.enabled = i % 2 == 0;
        p.note = (i < 2).then(|| format!("n{i}"));
        s.insert(&p).unwrap();
    }
    let c = Profile::columns();
    let names = |v: Vec<Profile>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.query::<Profile>().order_by(c.name.asc()).load().unwrap()),
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(
        names(
            s.query::<Profile>()
                .order_by(c.name.desc())
                .limit(2)
                .load()
                .unwrap()
        ),
        ["e", "d"]
    );
    assert_eq!(
        names(
            s.query::<Profile>()
                .order_by(c.name.asc())
                .limit(2)
                .offset(2)
                .load()
                .unwrap()
        ),
        ["c", "d"]
    );
    assert_eq!(
        names(
            s.query::<Profile>()
                .filter(c.enabled.eq(true))
                .load()
                .unwrap()
        ),
        ["d", "c", "e"]
    );
    assert_eq!(
        names(
            s.query::<Profile>()
                .filter(c.name.ne("a"))
                .filter(c.name.lt("d"))
                .order_by(c.name.asc())
                .load()
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(s.query::<Profile>().filter(c.id.ge(4)).load().unwrap()),
        ["b", "e"]
    );
    assert_eq!(
        names(s.query::<Profile>().filter(c.id.gt(4)).load().unwrap()),
        ["e"]
    );
    assert_eq!(
        names(s.query::<Profile>().filter(c.id.le(1)).load().unwrap()),
        ["d"]
    );
    assert_eq!(
        names(
            s.query::<Profile>()
                .filter(c.note.is_null())
                .load()
                .unwrap()
        ),
        ["c", "b", "e"]
    );
    assert_eq!(
        names(
            s.query::<Profile>()
                .filter(c.note.is_not_null())
                .load()
                .unwrap()
        ),
        ["d", "a"]
    );
    assert_eq!(
        s.query::<Profile>()
            .filter(c.note.eq(Some("n1".to_string())))
            .first()
            .unwrap()
            .unwrap()
            .name,
        "a"
    );
    assert_eq!(
        s.query::<Profile>()
            .filter(c.enabled.eq(false))
            .count()
            .unwrap(),
        2
    );
    // Inside a transaction, queries see its own writes.
    s.write(|tx| {
        tx.insert(&profile("f"))?;
        assert_eq!(tx.query::<Profile>().count()?, 6);
        assert_eq!(tx.list::<Profile>()?.len(), 6);
        Ok(())
    })
    .unwrap();
}

pub fn log_positions_are_dense_and_survive_restart(fx: &Fixture) {
    let s = store_with_all(fx);
    for i in 0..5 {
        s.insert(&profile(&format!("p{i}"))).unwrap();
    }
    let _ = s.insert(&profile("p0")); // refused: no entry
    let _ = s.write(|tx| {
        tx.insert(&profile("rolled back"))?;
        Err::<(), _>(Error::Database("no".into()))
    });
    s.write(|_| Ok(())).unwrap(); // empty: no entry
    let positions: Vec<u64> = s
        .read_log(0, 100)
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5]);
    let digest = s.digest();
    drop(s);
    let s = store_with_all(fx);
    assert_eq!((s.position(), s.digest()), (5, digest));
    s.insert(&profile("p5")).unwrap();
    assert_eq!(s.read_log(6, 10).unwrap()[0].position, 6);
}

pub fn log_entries_hold_changes_in_commit_order(fx: &Fixture) {
    let s = store_with_all(fx);
    s.set_epoch(7);
    let (p, b) = s
        .write(|tx| {
            let p = tx.insert(&profile("p"))?;
            let b = tx.insert(&Broker {
                id: 0,
                profile_id: p,
                name: "b".into(),
                parent: None,
            })?;
            let mut pr = tx.get::<Profile>(p)?.unwrap();
            pr.note = Some("edited".into());
            tx.update(&pr)?;
            tx.delete::<Broker>(b)?;
            Ok((p, b))
        })
        .unwrap();
    let e = &s.read_log(1, 1).unwrap()[0];
    assert_eq!(e.epoch, 7);
    assert_eq!(e.digest, s.digest());
    let body = e.plain_body().unwrap();
    let changes = decode_body(&body).unwrap();
    let ops: Vec<_> = changes.iter().map(|c| (c.table, c.op)).collect();
    assert_eq!(
        ops,
        vec![
            ("notification_profile", Op::Insert),
            ("broker", Op::Insert),
            ("notification_profile", Op::Update),
            ("broker", Op::Delete)
        ]
    );
    let image = changes[2].image().unwrap();
    assert_eq!(image[0], Value::I64(p));
    assert_eq!(image[4], Value::Text("edited".into()));
    assert_eq!(changes[3].key().unwrap(), Value::I64(b));
}

pub fn log_reads_and_trim(fx: &Fixture) {
    let s = store_with_all(fx);
    for i in 0..10 {
        s.insert(&profile(&format!("p{i}"))).unwrap();
    }
    let all: Vec<LogEntry> = s.log_iter(1, 3).collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(
        s.read_log(4, 2)
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(s.trim_log(6).unwrap(), 5);
    let head = s.head().unwrap();
    assert_eq!((head.position, head.first_retained), (10, 6));
    assert_eq!(s.read_log(0, 100).unwrap().len(), 5);
    // The newest entry always stays, so the head digest survives a restart.
    assert_eq!(s.trim_log(1000).unwrap(), 4);
    let digest = s.digest();
    drop(s);
    let s = store_with_all(fx);
    let head = s.head().unwrap();
    assert_eq!(
        (head.position, head.digest, head.first_retained),
        (10, digest, 10)
    );
    assert!(s.verify().unwrap().is_consistent());
}

/// A transaction of many rows has a body large enough to be stored packed:
/// it reads back the same, after a restart too, travels packed (the feed
/// and the log carry the stored bytes), and replays on a sibling, which
/// keeps the same bytes.
pub fn large_entries_read_back_as_written(fx: &Fixture) {
    let a = store_with_all(fx);
    let feed = a.commit_feed(16);
    let rows: Vec<Profile> = (0..500)
        .map(|i| profile(&format!("alarm profile {i} for line {}", i % 7)))
        .collect();
    a.write(|tx| tx.insert_many(&rows).map(|_| ())).unwrap();
    let written = a.read_log(1, 10).unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].change_count().unwrap(), 500);
    let plain = written[0].plain_body().unwrap();
    assert_eq!(written[0].plain_len(), plain.len());
    assert!(
        written[0].body.len() * 4 < plain.len(),
        "packed: {} bytes for a body of {}",
        written[0].body.len(),
        plain.len()
    );
    match feed.recv_timeout(Duration::from_secs(5)).unwrap() {
        persist::listen::FeedItem::Commit(c) => {
            assert_eq!(
                *c.entry, written[0],
                "the commit feed carries the entry as read back"
            )
        }
        other => panic!("{other:?}"),
    }
    let digest = a.digest();
    drop(a);
    let a = store_with_all(fx);
    assert_eq!(a.read_log(1, 10).unwrap(), written, "after a restart");
    assert!(a.verify().unwrap().is_consistent());
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    assert!(matches!(
        b.apply(&written[0]).unwrap(),
        Applied::Applied { changes: 500 }
    ));
    assert_eq!(b.digest(), digest);
    assert_eq!(
        b.read_log(1, 10).unwrap(),
        written,
        "the backup keeps the master's entry"
    );
    assert_eq!(b.list::<Profile>().unwrap(), a.list::<Profile>().unwrap());
}

/// Many entries applied in one batch keep every log row: the sibling's log
/// is the master's, after a restart too, and a batch that fails on its last
/// entry leaves none of them.
pub fn a_batch_of_entries_keeps_every_log_row(fx: &Fixture) {
    let a = store_with_all(fx);
    for i in 0..150 {
        a.insert(&profile(&format!("p{i}"))).unwrap();
    }
    let written = a.read_log(1, 1000).unwrap();
    assert_eq!(written.len(), 150);
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    let mut bad = written.clone();
    bad[149].digest = persist::Digest(bad[149].digest.0 ^ 1);
    assert!(
        b.apply_batch(&bad).is_err(),
        "a wrong digest on the last entry"
    );
    assert_eq!((b.position(), b.read_log(1, 1000).unwrap().len()), (0, 0));
    assert_eq!(b.apply_batch(&written).unwrap(), 150);
    assert_eq!(b.read_log(1, 1000).unwrap(), written);
    assert_eq!(b.digest(), a.digest());
    drop(b);
    let b = store_with_all(&fx_b);
    assert_eq!(b.position(), 150);
    assert_eq!(b.read_log(1, 1000).unwrap(), written, "after a restart");
    assert!(b.verify().unwrap().is_consistent());
}

/// Writes a mixed history on `a` and replays it on a fresh sibling.
fn replicate(fx: &Fixture) -> (Store, Store, Fixture) {
    let a = store_with_all(fx);
    let p = a.insert(&profile("p")).unwrap();
    a.write(|tx| {
        tx.insert(&sms(p))?;
        let q = tx.insert(&profile("q"))?;
        tx.insert(&Broker {
            id: 0,
            profile_id: q,
            name: "b".into(),
            parent: Some(p),
        })?;
        Ok(())
    })
    .unwrap();
    let mut st = a.get::<SmsSettings>(p).unwrap().unwrap();
    st.host = "other".into();
    a.update(&st).unwrap();
    a.delete::<Profile>(p).unwrap();
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    (a, b, fx_b)
}

pub fn apply_replicates_exactly(fx: &Fixture) {
    let (a, b, _fx_b) = replicate(fx);
    for e in a.read_log(1, 100).unwrap() {
        assert!(matches!(b.apply(&e).unwrap(), Applied::Applied { .. }));
    }
    assert_eq!((b.position(), b.digest()), (a.position(), a.digest()));
    assert_eq!(b.list::<Profile>().unwrap(), a.list::<Profile>().unwrap());
    assert_eq!(
        b.list::<SmsSettings>().unwrap(),
        a.list::<SmsSettings>().unwrap()
    );
    assert_eq!(b.list::<Broker>().unwrap(), a.list::<Broker>().unwrap());
    assert_eq!(
        b.read_log(1, 100).unwrap(),
        a.read_log(1, 100).unwrap(),
        "the backup's log is the master's"
    );
    assert!(b.verify().unwrap().is_consistent());
    // Identity counters follow applied rows, so the backup can take over.
    let next = b.insert(&profile("after failover")).unwrap();
    assert_eq!(next, 3);
}

pub fn apply_is_idempotent_and_refuses_gaps(fx: &Fixture) {
    let (a, b, _fx_b) = replicate(fx);
    let log = a.read_log(1, 100).unwrap();
    assert!(matches!(
        b.apply(&log[1]),
        Err(Error::Gap {
            expected: 1,
            got: 2
        })
    ));
    b.apply(&log[0]).unwrap();
    assert_eq!(b.apply(&log[0]).unwrap(), Applied::AlreadyApplied);
    for e in &log {
        b.apply(e).unwrap();
    }
    assert_eq!(b.digest(), a.digest());
}

pub fn apply_detects_divergence(fx: &Fixture) {
    let (a, b, fx_b) = replicate(fx);
    let log = a.read_log(1, 100).unwrap();
    for e in &log[..3] {
        b.apply(e).unwrap();
    }
    // Someone edits the backup's database behind the library's back.
    fx_b.raw("UPDATE notification_profile SET note = 'tampered' WHERE id = 1");
    // A full check finds it at once ...
    assert!(!b.verify().unwrap().is_consistent());
    // ... and the first entry that touches the row (deleting profile 1) is refused.
    let err = b.apply(&log[3]).unwrap_err();
    assert!(
        matches!(err, Error::Divergence { position: 4, .. }),
        "{err}"
    );
    assert_eq!(b.position(), 3, "nothing of a refused entry is kept");
    assert_eq!(b.list::<Profile>().unwrap().len(), 2);
    // A forged digest is caught as well.
    let fx2 = fx.sibling();
    let (a2, b2, _fx2b) = replicate(&fx2);
    let mut forged = a2.read_log(1, 1).unwrap().remove(0);
    forged.digest = persist::Digest(forged.digest.0 ^ 1);
    assert!(matches!(
        b2.apply(&forged),
        Err(Error::Divergence { position: 1, .. })
    ));
    assert!(b2.list::<Profile>().unwrap().is_empty());
}

pub fn apply_refuses_malformed_entries(fx: &Fixture) {
    let (a, b, _fx_b) = replicate(fx);
    let good = a.read_log(1, 1).unwrap().remove(0);
    let mut bad = good.clone();
    bad.body.truncate(bad.body.len() / 2);
    assert!(matches!(b.apply(&bad), Err(Error::Decode { .. })));
    let mut wrong_table = good.clone();
    wrong_table.body = persist::log::encode_body(&[("no_such_table", Op::Insert, &[1, 0])]);
    assert!(matches!(
        b.apply(&wrong_table),
        Err(Error::Inapplicable { .. })
    ));
    let mut wrong_image = good.clone();
    let mut img = Vec::new();
    persist::log::encode_image(&[Value::Text("not an id".into())], &mut img);
    wrong_image.body = persist::log::encode_body(&[("notification_profile", Op::Insert, &img)]);
    assert!(matches!(
        b.apply(&wrong_image),
        Err(Error::Inapplicable { .. })
    ));
    assert_eq!(b.position(), 0);
    b.apply(&good).unwrap();
    assert_eq!(b.position(), 1);
}

pub fn listeners_see_commits_in_order_on_master_and_backup(fx: &Fixture) {
    let (a, b, _fx_b) = {
        let a = store_with_all(fx);
        let fx_b = fx.sibling();
        let b = store_with_all(&fx_b);
        (a, b, fx_b)
    };
    let mut on_a = a.subscribe::<Profile>().unwrap();
    let mut on_b = b.subscribe::<Profile>().unwrap();
    let id = a.insert(&profile("one")).unwrap();
    let mut p = a.get::<Profile>(id).unwrap().unwrap();
    p.enabled = false;
    a.update(&p).unwrap();
    a.update(&p).unwrap(); // no change: no event
    a.delete::<Profile>(id).unwrap();
    for e in a.read_log(1, 10).unwrap() {
        b.apply(&e).unwrap();
    }
    for sub in [&mut on_a, &mut on_b] {
        let evs: Vec<_> = (0..3)
            .map(|_| sub.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert!(matches!(&evs[0], RecordEvent::Added(p) if p.name == "one"));
        assert!(
            matches!(&evs[1], RecordEvent::Updated { old, new } if old.enabled && !new.enabled)
        );
        assert!(matches!(&evs[2], RecordEvent::Deleted(p) if p.id == id));
        assert!(sub.try_recv().unwrap().is_none());
    }
}

pub fn slow_listener_lags_instead_of_growing(fx: &Fixture) {
    let mut config = fx.config();
    config.listener_capacity = 4;
    let s = Store::open(config).unwrap();
    s.register::<Profile>().unwrap();
    let mut slow = s.subscribe::<Profile>().unwrap();
    for i in 0..20 {
        s.insert(&profile(&format!("p{i}"))).unwrap();
    }
    let mut added = 0;
    let mut lagged = 0;
    while let Some(ev) = slow.try_recv().unwrap() {
        match ev {
            RecordEvent::Added(_) => added += 1,
            RecordEvent::Lagged(n) => lagged += n,
            RecordEvent::Reset => panic!("no resync here"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 4, "the channel holds its capacity");
    assert_eq!(
        added + lagged,
        20,
        "every commit is delivered or counted as missed"
    );
    s.insert(&profile("later")).unwrap();
    assert!(
        matches!(slow.recv_timeout(Duration::from_secs(5)).unwrap(), RecordEvent::Added(p) if p.name == "later")
    );
}

pub fn migration_adds_columns_without_losing_rows(fx: &Fixture) {
    let s = fx.open();
    s.register::<v1::Evolving>().unwrap();
    for i in 0..3 {
        s.insert(&v1::Evolving {
            id: 0,
            name: format!("r{i}"),
            legacy: Some("x".into()),
        })
        .unwrap();
    }
    drop(s);
    let s = fx.open();
    s.register::<v2_added::Evolving>().unwrap();
    let rows = s.list::<v2_added::Evolving>().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r.retries == 5 && r.comment.is_none() && r.legacy.as_deref() == Some("x")));
    assert!(
        s.verify().unwrap().is_consistent(),
        "the digest follows the new row images"
    );
    s.insert(&v2_added::Evolving {
        id: 0,
        name: "new".into(),
        legacy: None,
        retries: 1,
        comment: Some("c".into()),
    })
    .unwrap();
    drop(s);
    let s = fx.open();
    s.register::<v2_added::Evolving>().unwrap();
    assert_eq!(s.list::<v2_added::Evolving>().unwrap().len(), 4);
    assert!(s.verify().unwrap().is_consistent());
}

fn seeded_v1(fx: &Fixture) {
    let s = fx.open();
    s.register::<v1::Evolving>().unwrap();
    s.insert(&v1::Evolving {
        id: 0,
        name: "keep me".into(),
        legacy: Some("data".into()),
    })
    .unwrap();
}

fn assert_conflict(err: Error, column: &str) {
    match err {
        Error::SchemaConflict {
            table,
            column: Some(c),
            reason,
        } => {
            assert_eq!(
                (table.as_str(), c.as_str()),
                ("evolving", column),
                "{reason}"
            );
        }
        other => panic!("expected a schema conflict on evolving.{column}, got {other}"),
    }
}

fn assert_v1_intact(fx: &Fixture) {
    let s = fx.open();
    s.register::<v1::Evolving>().unwrap();
    let rows = s.list::<v1::Evolving>().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].legacy.as_deref(), Some("data"));
}

pub fn migration_refuses_type_change(fx: &Fixture) {
    seeded_v1(fx);
    assert_conflict(
        fx.open()
            .register::<v2_type_change::Evolving>()
            .unwrap_err(),
        "name",
    );
    assert_v1_intact(fx);
}

pub fn migration_refuses_dropping_data(fx: &Fixture) {
    seeded_v1(fx);
    assert_conflict(
        fx.open().register::<v2_dropped::Evolving>().unwrap_err(),
        "legacy",
    );
    assert_v1_intact(fx);
}

pub fn migration_refuses_new_not_null_without_default(fx: &Fixture) {
    seeded_v1(fx);
    assert_conflict(
        fx.open().register::<v2_not_null::Evolving>().unwrap_err(),
        "required",
    );
    assert_v1_intact(fx);
}

pub fn migration_drops_empty_column(fx: &Fixture) {
    let s = fx.open();
    s.register::<v1::Evolving>().unwrap();
    s.insert(&v1::Evolving {
        id: 0,
        name: "n".into(),
        legacy: None,
    })
    .unwrap();
    drop(s);
    let s = fx.open();
    s.register::<v2_dropped::Evolving>().unwrap();
    assert_eq!(s.list::<v2_dropped::Evolving>().unwrap()[0].name, "n");
    assert!(s.verify().unwrap().is_consistent());
}

pub fn fingerprint_is_stable_and_sensitive(fx: &Fixture) {
    let a = store_with_all(fx);
    let fx_b = fx.sibling();
    let b = fx_b.open();
    // Registration order does not matter.
    b.register::<Folder>().unwrap();
    b.register::<Broker>().unwrap();
    b.register::<SmsSettings>().unwrap();
    assert_eq!(a.schema_fingerprint(), b.schema_fingerprint());
    let fp = a.schema_fingerprint();
    drop(a);
    assert_eq!(store_with_all(fx).schema_fingerprint(), fp);
    let (fx_c, fx_d, fx_e) = (fx.sibling(), fx.sibling(), fx.sibling());
    let c = fx_c.open();
    c.register::<SmsSettings>().unwrap();
    assert_ne!(c.schema_fingerprint(), fp);
    let d = fx_d.open();
    d.register::<v1::Evolving>().unwrap();
    let e = fx_e.open();
    e.register::<v2_added::Evolving>().unwrap();
    assert_ne!(d.schema_fingerprint(), e.schema_fingerprint());
}

pub fn digest_is_order_independent_and_verifiable(fx: &Fixture) {
    let a = store_with_all(fx);
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    // Same final rows, reached by different histories.
    a.insert(&profile("x")).unwrap();
    a.insert(&profile("y")).unwrap();
    b.write(|tx| {
        tx.insert(&profile("x"))?;
        tx.insert(&profile("y"))
    })
    .unwrap();
    assert_eq!(a.digest(), b.digest());
    a.delete::<Profile>(2).unwrap();
    assert_ne!(a.digest(), b.digest());
    let v = a.verify().unwrap();
    assert!(v.is_consistent());
    assert_eq!(v.position, 3);
}

pub fn foreign_table_name_is_refused(fx: &Fixture) {
    fx.raw("CREATE TABLE notification_profile (x INTEGER)");
    let s = fx.open();
    let err = s.register::<Profile>().unwrap_err();
    assert!(
        matches!(err, Error::SchemaConflict { ref table, .. } if table == "notification_profile"),
        "{err}"
    );
}

pub fn unregistered_type_is_an_error(fx: &Fixture) {
    let s = fx.open();
    assert!(matches!(
        s.insert(&profile("p")),
        Err(Error::NotRegistered {
            table: "notification_profile",
            ..
        })
    ));
    assert!(matches!(
        s.list::<Profile>(),
        Err(Error::NotRegistered { .. })
    ));
    assert!(s.subscribe::<Profile>().is_err());
}

pub fn insert_many_batches_and_checks(fx: &Fixture) {
    let s = store_with_all(fx);
    let mut events = s.subscribe::<Folder>().unwrap();
    // 250 rows: two full multi-row statements and a remainder; children
    // reference parents inserted earlier in the same batch.
    let folders: Vec<Folder> = (0..250)
        .map(|i| Folder {
            id: 0,
            parent: (i > 0).then_some(i as i64),
            name: format!("f{i}"),
        })
        .collect();
    let keys = s.write(|tx| tx.insert_many(&folders)).unwrap();
    assert_eq!(keys, (1..=250).collect::<Vec<i64>>());
    assert_eq!(s.list::<Folder>().unwrap().len(), 250);
    assert_eq!(s.position(), 1);
    for i in 0..250 {
        assert!(
            matches!(events.recv_timeout(Duration::from_secs(5)).unwrap(), RecordEvent::Added(f) if f.name == format!("f{i}"))
        );
    }
    assert!(s.verify().unwrap().is_consistent());
    // A dangling reference anywhere in the batch refuses all of it.
    let bad = vec![
        Folder {
            id: 0,
            parent: None,
            name: "ok".into(),
        },
        Folder {
            id: 0,
            parent: Some(9999),
            name: "dangling".into(),
        },
    ];
    assert!(matches!(
        s.write(|tx| tx.insert_many(&bad)),
        Err(Error::MissingReference { .. })
    ));
    // A duplicate in a full batch names the column.
    let profiles: Vec<Profile> = (0..150)
        .map(|i| profile(&format!("p{}", i % 149)))
        .collect();
    let err = s.write(|tx| tx.insert_many(&profiles)).unwrap_err();
    assert!(
        matches!(err, Error::UniqueViolation { ref column, .. } if column == "name"),
        "{err}"
    );
    assert_eq!(s.list::<Profile>().unwrap().len(), 0);
    assert_eq!(s.position(), 1);
    // The entry replays (as multi-row statements) to the same state.
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    for e in s.read_log(1, 10).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!(b.list::<Folder>().unwrap(), s.list::<Folder>().unwrap());
    assert_eq!(b.digest(), s.digest());
}

fn stream(
    snap: &mut persist::Snapshot,
    chunk: usize,
) -> Vec<Result<persist::store::SnapshotChunk, Error>> {
    let mut out = Vec::new();
    while let Some(c) = snap.next_chunk(chunk).unwrap() {
        out.push(Ok(c));
    }
    out
}

pub fn snapshot_restore_replaces_diverged_data(fx: &Fixture) {
    let a = store_with_all(fx);
    let folders: Vec<Folder> = (0..120)
        .map(|i| Folder {
            id: 0,
            parent: None,
            name: format!("f{i}"),
        })
        .collect();
    a.write(|tx| tx.insert_many(&folders)).unwrap();
    let p = a.insert(&profile("p")).unwrap();
    a.insert(&sms(p)).unwrap();
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    b.insert(&profile("only on the backup")).unwrap();
    b.insert(&profile("and this")).unwrap();
    let mut reset = b.subscribe::<Profile>().unwrap();

    let mut snap = a.snapshot().unwrap();
    let header = snap.header().clone();
    assert_eq!(
        (header.position, header.digest, header.history.clone()),
        (a.position(), a.digest(), a.history())
    );
    let chunks = stream(&mut snap, 50);
    assert!(chunks.len() >= 3, "folders come in pages of 50");
    b.restore(&header, chunks).unwrap();

    assert_eq!(b.list::<Folder>().unwrap(), a.list::<Folder>().unwrap());
    assert_eq!(b.list::<Profile>().unwrap(), a.list::<Profile>().unwrap());
    assert_eq!(
        b.list::<SmsSettings>().unwrap(),
        a.list::<SmsSettings>().unwrap()
    );
    assert_eq!(
        (b.position(), b.digest(), b.history()),
        (a.position(), a.digest(), a.history())
    );
    assert_eq!(b.head().unwrap().first_retained, a.position() + 1);
    assert!(b.verify().unwrap().is_consistent());
    assert!(matches!(
        reset.recv_timeout(Duration::from_secs(5)).unwrap(),
        RecordEvent::Reset
    ));
    // Incremental shipping resumes from the snapshot's position.
    a.insert(&profile("later")).unwrap();
    for e in a.read_log(header.position + 1, 10).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!(b.digest(), a.digest());
    // Identity counters follow the restored rows.
    assert_eq!(
        b.insert(&profile("next")).unwrap(),
        a.insert(&profile("next")).unwrap()
    );
    drop(b);
    let b = store_with_all(&fx_b);
    assert_eq!(
        b.history(),
        a.history(),
        "the adopted history survives a restart"
    );
}

pub fn snapshot_is_consistent_while_writes_go_on(fx: &Fixture) {
    let a = store_with_all(fx);
    for i in 0..30 {
        a.insert(&profile(&format!("p{i}"))).unwrap();
    }
    let mut snap = a.snapshot().unwrap();
    let header = snap.header().clone();
    // The master keeps writing while the snapshot streams.
    let first = snap.next_chunk(10).unwrap().unwrap();
    a.insert(&profile("during")).unwrap();
    a.delete::<Profile>(1).unwrap();
    let mut chunks = vec![Ok(first)];
    chunks.extend(stream(&mut snap, 10));
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    b.restore(&header, chunks).unwrap();
    assert_eq!(b.position(), 30);
    assert_eq!(b.list::<Profile>().unwrap().len(), 30);
    for e in a.read_log(31, 10).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!(b.list::<Profile>().unwrap(), a.list::<Profile>().unwrap());
    assert_eq!(b.digest(), a.digest());
}

pub fn interrupted_restore_keeps_old_data(fx: &Fixture) {
    let a = store_with_all(fx);
    for i in 0..30 {
        a.insert(&profile(&format!("p{i}"))).unwrap();
    }
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    b.insert(&profile("old")).unwrap();
    let before = (b.position(), b.digest(), b.history());
    let mut snap = a.snapshot().unwrap();
    let header = snap.header().clone();
    let mut chunks = stream(&mut snap, 10);
    chunks.truncate(2);
    chunks.push(Err(Error::Unavailable("link cut".into())));
    assert!(matches!(
        b.restore(&header, chunks),
        Err(Error::Unavailable(_))
    ));
    assert_eq!((b.position(), b.digest(), b.history()), before);
    assert_eq!(b.list::<Profile>().unwrap().len(), 1);
    // A truncated stream without an error is caught by the row counts.
    let mut chunks = stream(&mut a.snapshot().unwrap(), 10);
    chunks.pop();
    assert!(matches!(
        b.restore(&header, chunks),
        Err(Error::Inapplicable { .. })
    ));
    // A forged digest is refused.
    let mut forged = header.clone();
    forged.digest = persist::Digest(1);
    assert!(matches!(
        b.restore(&forged, stream(&mut a.snapshot().unwrap(), 10)),
        Err(Error::Divergence { .. })
    ));
    assert_eq!(b.list::<Profile>().unwrap().len(), 1);
    b.restore(&header, stream(&mut a.snapshot().unwrap(), 10))
        .unwrap();
    assert_eq!(b.list::<Profile>().unwrap().len(), 30);
}

pub fn stepwise_restore_keeps_readers_on_old_data_until_it_commits(fx: &Fixture) {
    let a = store_with_all(fx);
    for i in 0..25 {
        a.insert(&profile(&format!("p{i}"))).unwrap();
    }
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    b.insert(&profile("old")).unwrap();
    let before = (b.position(), b.digest(), b.history());
    let mut snap = a.snapshot().unwrap();
    let header = snap.header().clone();
    // Dropped half way: rolled back, nothing changed.
    let mut restore = b.begin_restore(&header).unwrap();
    let (t, rows) = snap.next_chunk(10).unwrap().unwrap();
    restore.push(t, &rows).unwrap();
    assert_eq!(restore.rows(), 10);
    // Readers, the gate and the head never wait for the restore's writer.
    assert_eq!(b.list::<Profile>().unwrap().len(), 1);
    assert_eq!(b.position(), before.0);
    b.set_write_gate(Some("closed while restoring".into()));
    assert!(b.write_gate().is_some());
    b.set_write_gate(None);
    drop(restore);
    assert_eq!((b.position(), b.digest(), b.history()), before);
    assert_eq!(b.list::<Profile>().unwrap().len(), 1);
    // A push after a failed one fails too, and the data stays.
    let mut restore = b.begin_restore(&header).unwrap();
    assert!(matches!(
        restore.push(99, &rows),
        Err(Error::Inapplicable { .. })
    ));
    assert!(restore.push(t, &rows).is_err());
    assert!(restore.finish().is_err());
    assert_eq!(b.list::<Profile>().unwrap().len(), 1);
    // Fed in steps to the end: the master's data, position and history.
    let mut snap = a.snapshot().unwrap();
    let mut restore = b.begin_restore(&header).unwrap();
    while let Some((t, rows)) = snap.next_chunk(7).unwrap() {
        restore.push(t, &rows).unwrap();
    }
    restore.finish().unwrap();
    assert_eq!(b.list::<Profile>().unwrap(), a.list::<Profile>().unwrap());
    assert_eq!(
        (b.position(), b.digest(), b.history()),
        (a.position(), a.digest(), a.history())
    );
    assert!(b.verify().unwrap().is_consistent());
}

pub fn apply_batch_is_all_or_nothing(fx: &Fixture) {
    let (a, b, _fx_b) = replicate(fx);
    let log = a.read_log(1, 100).unwrap();
    assert_eq!(b.apply_batch(&log[..2]).unwrap(), 2);
    assert_eq!(b.apply_batch(&log[..2]).unwrap(), 0, "already applied");
    assert!(matches!(
        b.apply_batch(&log[3..]),
        Err(Error::Gap {
            expected: 3,
            got: 4
        })
    ));
    // A bad entry in the middle: nothing of the batch is kept.
    let mut bad = log[3].clone();
    bad.digest = persist::Digest(bad.digest.0 ^ 1);
    let batch = vec![log[2].clone(), bad];
    assert!(matches!(
        b.apply_batch(&batch),
        Err(Error::Divergence { position: 4, .. })
    ));
    assert_eq!(b.position(), 2);
    // Overlapping batches skip what is applied.
    assert_eq!(b.apply_batch(&log).unwrap(), log.len() - 2);
    assert_eq!((b.position(), b.digest()), (a.position(), a.digest()));
    assert_eq!(b.read_log(1, 100).unwrap(), log);
}

pub fn commit_feed_carries_entries(fx: &Fixture) {
    let s = store_with_all(fx);
    let feed = s.commit_feed(16);
    let (id, pos) = s.write_positioned(|tx| tx.insert(&profile("p"))).unwrap();
    assert_eq!(pos, Some(1));
    assert_eq!(
        s.write_positioned(|_| Ok(())).unwrap().1,
        None,
        "empty transaction: no position"
    );
    match feed.recv_timeout(Duration::from_secs(5)).unwrap() {
        persist::listen::FeedItem::Commit(c) => {
            assert_eq!(c.position, 1);
            assert_eq!(*c.entry, s.read_log(1, 1).unwrap()[0]);
            assert!(matches!(&c.changes[0].new, Some(v) if v[0] == Value::I64(id)));
        }
        other => panic!("{other:?}"),
    }
    assert!(s.first_position_since(0).unwrap() == Some(1));
    assert!(s.first_position_since(i64::MAX).unwrap().is_none());
}

pub fn write_gate_refuses_local_writes_only(fx: &Fixture) {
    let (a, b, _fx_b) = replicate(fx);
    b.set_write_gate(Some("backup node".into()));
    let err = b.insert(&profile("edit on the backup")).unwrap_err();
    assert!(
        matches!(err, Error::NotMaster { ref reason } if reason == "backup node"),
        "{err}"
    );
    // The master's log still applies.
    for e in a.read_log(1, 100).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!(b.digest(), a.digest());
    b.set_write_gate(None);
    b.insert(&profile("promoted")).unwrap();
}

pub fn claims_are_durable_and_stamp_entries(fx: &Fixture) {
    let s = store_with_all(fx);
    assert_eq!(s.claim(), persist::Claim::default());
    s.set_claim(&persist::Claim {
        epoch: 3,
        active: Some("gw-a".into()),
        by: None,
    })
    .unwrap();
    s.insert(&profile("p")).unwrap();
    assert_eq!(s.read_log(1, 1).unwrap()[0].epoch, 3);
    assert!(
        s.set_claim(&persist::Claim {
            epoch: 2,
            active: None,
            by: None
        })
        .is_err(),
        "epochs only grow"
    );
    drop(s);
    let s = store_with_all(fx);
    assert_eq!(
        s.claim(),
        persist::Claim {
            epoch: 3,
            active: Some("gw-a".into()),
            by: None
        }
    );
    assert_eq!(s.epoch(), 3);
}

pub fn stale_epoch_entries_are_refused(fx: &Fixture) {
    let a = store_with_all(fx);
    a.set_claim(&persist::Claim {
        epoch: 5,
        active: Some("a".into()),
        by: None,
    })
    .unwrap();
    a.insert(&profile("at five")).unwrap();
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    b.apply(&a.read_log(1, 1).unwrap()[0]).unwrap();
    // A deposed writer at an older epoch tries to append.
    let fx_c = fx.sibling();
    let c = store_with_all(&fx_c);
    c.set_claim(&persist::Claim {
        epoch: 4,
        active: Some("c".into()),
        by: None,
    })
    .unwrap();
    c.insert(&profile("at five")).unwrap();
    c.insert(&profile("stale")).unwrap();
    let stale = c.read_log(2, 1).unwrap().remove(0);
    assert!(matches!(
        b.apply(&stale),
        Err(Error::Inapplicable { position: 2, .. })
    ));
}

/// Renames every profile with a prefix and adds a marker: replicated as the
/// operation, not as its row changes. Counts its runs per prefix.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Rollover {
    prefix: String,
}

impl Rollover {
    /// A rollover adding `prefix` to every profile name.
    pub fn new(prefix: &str) -> Self {
        Rollover {
            prefix: prefix.to_owned(),
        }
    }
}

static ROLLOVER_RUNS: std::sync::Mutex<std::collections::BTreeMap<String, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

impl persist::ReplicatedOperation for Rollover {
    const NAME: &'static str = "rollover";
    fn execute(&self, tx: &mut persist::WriteTx<'_>) -> Result<(), Error> {
        for p in tx.list::<Profile>()? {
            let mut q = p.clone();
            q.name = format!("{}{}", self.prefix, p.name);
            tx.update(&q)?;
        }
        tx.insert(&profile(&format!("{}marker", self.prefix)))?;
        *ROLLOVER_RUNS
            .lock()
            .unwrap()
            .entry(self.prefix.clone())
            .or_default() += 1;
        Ok(())
    }
}

pub fn replicated_operation_runs_once_on_each_node(fx: &Fixture) {
    let prefix = format!(
        "r{}-",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let runs = || {
        ROLLOVER_RUNS
            .lock()
            .unwrap()
            .get(&prefix)
            .copied()
            .unwrap_or(0)
    };
    let a = store_with_all(fx);
    a.register_operation::<Rollover>();
    a.insert(&profile("one")).unwrap();
    a.insert(&profile("two")).unwrap();
    a.write(|tx| {
        tx.insert(&profile("three"))?;
        tx.run_operation(&Rollover {
            prefix: prefix.clone(),
        })
    })
    .unwrap();
    assert_eq!(runs(), 1);
    let entry = a.read_log(3, 1).unwrap().remove(0);
    let body = entry.plain_body().unwrap();
    let ops: Vec<Op> = decode_body(&body).unwrap().iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        vec![
            Op::Insert,
            Op::Update,
            Op::Update,
            Op::Update,
            Op::Insert,
            Op::Operation
        ]
    );
    let fx_b = fx.sibling();
    let b = store_with_all(&fx_b);
    b.register_operation::<Rollover>();
    for e in a.read_log(1, 10).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!(
        runs(),
        2,
        "once on the master, once on the backup; its row changes not applied again"
    );
    assert_eq!(b.list::<Profile>().unwrap(), a.list::<Profile>().unwrap());
    assert_eq!(b.digest(), a.digest());
    // A node that does not know the operation refuses the entry, naming it.
    let fx_c = fx.sibling();
    let c = store_with_all(&fx_c);
    for e in a.read_log(1, 2).unwrap() {
        c.apply(&e).unwrap();
    }
    match c.apply(&entry) {
        Err(Error::UnknownOperation { position: 3, name }) => assert_eq!(name, "rollover"),
        other => panic!("expected the unknown operation to be refused, got {other:?}"),
    }
    assert_eq!(c.position(), 2, "not applied, not skipped");
    // An unregistered operation cannot run on the master either.
    assert!(matches!(
        c.run_operation(&Rollover {
            prefix: prefix.clone()
        }),
        Err(Error::NotRegistered { .. })
    ));
}

// ---- f64: every value round-trips bit for bit, NaN is refused ----

fn store_with_readings(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<Reading>().unwrap();
    s
}

fn bits(x: f64) -> String {
    format!("{x:e} ({:#018x})", x.to_bits())
}

/// `got` holds exactly the bits the store keeps for `wrote`.
fn assert_stored(got: f64, wrote: f64, what: &str) {
    assert_eq!(
        bits(got),
        bits(stored(wrote)),
        "{what}: wrote {}, read back {}",
        bits(wrote),
        bits(got)
    );
}

fn assert_reading(r: &Reading, value: f64, spare: Option<f64>, what: &str) {
    assert_stored(r.value, value, &format!("{what} (value)"));
    match (r.spare, spare) {
        (Some(got), Some(wrote)) => assert_stored(got, wrote, &format!("{what} (spare)")),
        (None, None) => {}
        (got, wrote) => panic!("{what} (spare): wrote {wrote:?}, read back {got:?}"),
    }
}

fn reading(label: &str, value: f64, spare: Option<f64>) -> Reading {
    Reading {
        id: 0,
        label: label.into(),
        value,
        spare,
    }
}

fn assert_consistent(s: &Store, what: &str) {
    let v = s.verify().unwrap();
    assert!(
        v.is_consistent(),
        "{what}: verify() recorded {} but computed {} from the rows",
        v.recorded,
        v.computed
    );
}

/// Writes one reading per edge value (value and spare both hold it), plus
/// one with no spare; returns (key, written value) in key order.
fn write_edge_readings(s: &Store) -> Vec<(i64, f64)> {
    let mut keys = Vec::new();
    for (name, x) in edge_floats() {
        let id = s.insert(&reading(name, x, Some(x))).unwrap();
        keys.push((id, x));
    }
    let id = s.insert(&reading("no spare", 1.5, None)).unwrap();
    keys.push((id, 1.5));
    keys
}

pub fn f64_values_round_trip_bit_for_bit(fx: &Fixture) {
    let s = store_with_readings(fx);
    let written = write_edge_readings(&s);
    for &(id, x) in &written {
        let r = s.get::<Reading>(id).unwrap().unwrap();
        let spare = (r.label != "no spare").then_some(x);
        assert_reading(&r, x, spare, &r.label);
    }
    assert_consistent(&s, "after inserting every edge value");
    // The log holds the stored form too: what a backup hashes is what it keeps.
    let entry = &s.read_log(2, 1).unwrap()[0];
    let body = entry.plain_body().unwrap();
    let image = decode_body(&body).unwrap()[0].image().unwrap();
    assert_eq!(image[1], Value::Text("-0.0".into()));
    match (&image[2], &image[3]) {
        (Value::F64(v), Value::F64(sp)) => {
            assert_stored(*v, -0.0, "-0.0 in the log image (value)");
            assert_stored(*sp, -0.0, "-0.0 in the log image (spare)");
        }
        other => panic!("unexpected image {other:?}"),
    }
    // SQL comparison and ordering on the column are numeric, -0.0 = +0.0.
    let c = Reading::columns();
    let labels = |v: Vec<Reading>| v.into_iter().map(|r| r.label).collect::<Vec<_>>();
    assert_eq!(
        labels(
            s.query::<Reading>()
                .filter(c.value.eq(-0.0))
                .load()
                .unwrap()
        ),
        ["+0.0", "-0.0"]
    );
    assert_eq!(
        labels(
            s.query::<Reading>()
                .filter(c.spare.eq(Some(f64::INFINITY)))
                .load()
                .unwrap()
        ),
        ["+inf"]
    );
    let mut expected: Vec<(f64, i64, String)> = s
        .list::<Reading>()
        .unwrap()
        .into_iter()
        .map(|r| (r.value, r.id, r.label))
        .collect();
    expected.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    assert_eq!(
        labels(s.query::<Reading>().order_by(c.value.asc()).load().unwrap()),
        expected.into_iter().map(|e| e.2).collect::<Vec<_>>()
    );
    // Updates: every row takes another edge value, in both columns.
    let values: Vec<f64> = written.iter().map(|w| w.1).collect();
    for (i, &(id, _)) in written.iter().enumerate() {
        let x = values[values.len() - 1 - i];
        let mut r = s.get::<Reading>(id).unwrap().unwrap();
        r.value = x;
        r.spare = Some(-x);
        s.update(&r).unwrap();
        let back = s.get::<Reading>(id).unwrap().unwrap();
        assert_reading(&back, x, Some(-x), &format!("{} updated", r.label));
    }
    assert_consistent(&s, "after updating every row");
    // Writing -0.0 over a stored +0.0 changes nothing: no entry, no event.
    let zero = written[0].0;
    let mut r = s.get::<Reading>(zero).unwrap().unwrap();
    r.value = 0.0;
    r.spare = Some(0.0);
    s.update(&r).unwrap();
    let position = s.position();
    r.value = -0.0;
    r.spare = Some(-0.0);
    s.update(&r).unwrap();
    assert_eq!(s.position(), position, "-0.0 over +0.0 is no change");
    // A restart reads the same bits and the same digest.
    let before: Vec<Reading> = s.list::<Reading>().unwrap();
    let digest = s.digest();
    drop(s);
    let s = store_with_readings(fx);
    assert_eq!(s.digest(), digest);
    assert_consistent(&s, "after a restart");
    for (a, b) in s.list::<Reading>().unwrap().iter().zip(&before) {
        assert_reading(a, b.value, b.spare, &a.label);
    }
    // A backup of the same backend replays the log to the same bits and digest.
    let fx_b = fx.sibling();
    let b = store_with_readings(&fx_b);
    for e in s.read_log(1, 1000).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!((b.position(), b.digest()), (s.position(), s.digest()));
    assert_consistent(&b, "the backup after applying the log");
    for (a, b) in b.list::<Reading>().unwrap().iter().zip(&before) {
        assert_reading(a, b.value, b.spare, &format!("{} on the backup", a.label));
    }
}

pub fn f64_digests_agree_across_backends(fx: &Fixture) {
    let a = store_with_readings(fx);
    let written = write_edge_readings(&a);
    a.write(|tx| {
        for &(id, x) in &written {
            let mut r = tx.get::<Reading>(id)?.unwrap();
            r.spare = Some(-x);
            tx.update(&r)?;
        }
        Ok(())
    })
    .unwrap();
    assert_consistent(&a, "the master");
    let rows = a.list::<Reading>().unwrap();
    // The other backend replays the log ...
    let fx_b = fx.other_backend();
    let b = store_with_readings(&fx_b);
    for e in a.read_log(1, 1000).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!((b.position(), b.digest()), (a.position(), a.digest()));
    assert_consistent(&b, "the other backend after applying the log");
    for (got, want) in b.list::<Reading>().unwrap().iter().zip(&rows) {
        assert_reading(got, want.value, want.spare, &got.label);
    }
    // ... or restores a snapshot: the same digest either way.
    let fx_c = fx.other_backend();
    let c = store_with_readings(&fx_c);
    let mut snap = a.snapshot().unwrap();
    let header = snap.header().clone();
    let mut chunks = Vec::new();
    while let Some(chunk) = snap.next_chunk(7).unwrap() {
        chunks.push(Ok(chunk));
    }
    c.restore(&header, chunks).unwrap();
    assert_eq!(c.digest(), a.digest());
    assert_consistent(&c, "the other backend after a restore");
    for (got, want) in c.list::<Reading>().unwrap().iter().zip(&rows) {
        assert_reading(got, want.value, want.spare, &got.label);
    }
}

pub fn f64_default_is_stored_canonically(fx: &Fixture) {
    let mut digests = Vec::new();
    for f in [fx.sibling(), fx.other_backend()] {
        let s = f.open();
        s.register::<gauge_v1::Gauge>().unwrap();
        for name in ["a", "b"] {
            s.insert(&gauge_v1::Gauge {
                id: 0,
                name: name.into(),
            })
            .unwrap();
        }
        drop(s);
        let s = f.open();
        s.register::<gauge_v2::Gauge>().unwrap();
        for g in s.list::<gauge_v2::Gauge>().unwrap() {
            assert_stored(g.level, -0.0, "the default of an added f64 column");
            assert_stored(
                g.offset.expect("the default fills the nullable column too"),
                -0.0,
                "the default of an added Option<f64> column",
            );
        }
        assert_consistent(&s, "after adding the float columns");
        digests.push(s.digest());
    }
    assert_eq!(
        digests[0], digests[1],
        "a SQLite and a PostgreSQL store holding the same rows have the same digest"
    );
}

/// The typed refusal of a NaN in `reading.<column>`.
fn assert_nan_refused<T: std::fmt::Debug>(r: Result<T, Error>, column: &str, what: &str) {
    match r {
        Err(Error::NotANumber { table, column: c }) => {
            assert_eq!((table.as_str(), c.as_str()), ("reading", column), "{what}")
        }
        other => panic!(
            "{what}: expected NaN in reading.{column} to be refused with Error::NotANumber, got {other:?}"
        ),
    }
}

pub fn nan_is_refused_with_a_typed_error(fx: &Fixture) {
    let s = store_with_readings(fx);
    let kept = reading("kept", 2.5, Some(-2.5));
    let id = s.insert(&kept).unwrap();
    let kept = Reading { id, ..kept };
    let head = (s.position(), s.digest());
    for nan in nans() {
        let what = |op: &str| format!("{op} with {:#018x}", nan.to_bits());
        assert_nan_refused(
            s.insert(&reading("nan", nan, None)),
            "value",
            &what("insert"),
        );
        assert_nan_refused(
            s.insert(&reading("nan spare", 1.0, Some(nan))),
            "spare",
            &what("insert"),
        );
        assert_nan_refused(
            s.update(&Reading {
                value: nan,
                ..kept.clone()
            }),
            "value",
            &what("update"),
        );
        assert_nan_refused(
            s.update(&Reading {
                spare: Some(nan),
                ..kept.clone()
            }),
            "spare",
            &what("update"),
        );
        assert_nan_refused(
            s.write(|tx| {
                tx.save(&Reading {
                    value: nan,
                    ..kept.clone()
                })
            }),
            "value",
            &what("save (update)"),
        );
        assert_nan_refused(
            s.write(|tx| tx.save(&reading("new", nan, None))),
            "value",
            &what("save (insert)"),
        );
        let batch = vec![
            reading("ok 1", 1.0, None),
            reading("bad", 1.0, Some(nan)),
            reading("ok 2", 2.0, None),
        ];
        assert_nan_refused(
            s.write(|tx| tx.insert_many(&batch)),
            "spare",
            &what("insert_many"),
        );
        // In a larger transaction: that write fails, and so does the transaction.
        let r = s.write(|tx| {
            tx.insert(&reading("before", 1.0, None))?;
            assert_nan_refused(
                tx.insert(&reading("nan", nan, None)),
                "value",
                &what("insert in a transaction"),
            );
            Ok(())
        });
        assert!(r.is_err(), "the transaction is spoiled");
    }
    assert_eq!(
        (s.position(), s.digest()),
        head,
        "nothing of a refused write is kept"
    );
    assert_eq!(s.list::<Reading>().unwrap(), vec![kept.clone()]);
    assert_consistent(&s, "after the refusals");
    // The store goes on as before.
    let next = s
        .insert(&reading("after", -0.0, Some(f64::INFINITY)))
        .unwrap();
    assert_reading(
        &s.get::<Reading>(next).unwrap().unwrap(),
        -0.0,
        Some(f64::INFINITY),
        "after",
    );
    assert_consistent(&s, "after a write following the refusals");
}

pub fn nan_in_a_filter_is_refused(fx: &Fixture) {
    let s = store_with_readings(fx);
    s.insert(&reading("one", 1.0, None)).unwrap();
    let c = Reading::columns();
    for nan in nans() {
        assert_nan_refused(
            s.query::<Reading>().filter(c.value.eq(nan)).load(),
            "value",
            "load with value = NaN",
        );
        assert_nan_refused(
            s.query::<Reading>().filter(c.value.ne(nan)).count(),
            "value",
            "count with value <> NaN",
        );
        assert_nan_refused(
            s.query::<Reading>()
                .filter(c.value.gt(0.0))
                .filter(c.spare.lt(Some(nan)))
                .first(),
            "spare",
            "first with spare < NaN",
        );
        s.write(|tx| {
            assert_nan_refused(
                tx.query::<Reading>().filter(c.value.ge(nan)).load(),
                "value",
                "load in a transaction",
            );
            Ok(())
        })
        .unwrap();
    }
}

/// A log entry as a master before the NaN/-0.0 fix wrote it: one insert
/// (`old` is `None`) or update of a reading, its digest the previous one with
/// the change folded in.
fn legacy_entry(
    position: u64,
    previous: persist::Digest,
    old: Option<&[Value]>,
    values: &[Value],
) -> (LogEntry, persist::Digest) {
    let seed = persist::digest::table_seed("reading");
    let mut image = Vec::new();
    let mut digest = previous;
    if let Some(old) = old {
        persist::log::encode_image(old, &mut image);
        digest.toggle(seed, &image);
    }
    persist::log::encode_image(values, &mut image);
    digest.toggle(seed, &image);
    let op = if old.is_some() {
        Op::Update
    } else {
        Op::Insert
    };
    let entry = LogEntry {
        position,
        epoch: 0,
        committed_at: 1_764_000_000_000_000,
        digest,
        body: persist::log::encode_body(&[("reading", op, &image)]),
    };
    (entry, digest)
}

fn legacy_row(id: i64, label: &str, value: f64, spare: Option<f64>) -> Vec<Value> {
    vec![
        Value::I64(id),
        Value::Text(label.into()),
        Value::F64(value),
        spare.map_or(Value::Null, Value::F64),
    ]
}

/// An older master logged -0.0 as written. The backup hashes the image as it
/// came (its digest must be the master's), so the entry applies and
/// replication goes on; what it stores is +0.0 on SQLite (which cannot keep
/// the sign) and -0.0 on PostgreSQL, equal in every comparison.
pub fn legacy_negative_zero_image_applies(fx: &Fixture) {
    let b = store_with_readings(fx);
    let (e1, d1) = legacy_entry(
        1,
        persist::Digest::EMPTY,
        None,
        &legacy_row(1, "legacy", -0.0, Some(-0.0)),
    );
    assert!(matches!(b.apply(&e1), Ok(Applied::Applied { changes: 1 })));
    assert_eq!((b.position(), b.digest()), (1, d1));
    let r = b.get::<Reading>(1).unwrap().unwrap();
    assert!(r.value == 0.0 && r.spare == Some(0.0), "{r:?}");
    // Replication goes on.
    let (e2, d2) = legacy_entry(2, d1, None, &legacy_row(2, "next", 1.0, None));
    b.apply(&e2).unwrap();
    assert_eq!((b.position(), b.digest()), (2, d2));
}

pub fn legacy_nan_image_is_refused_without_harm(fx: &Fixture) {
    let b = store_with_readings(fx);
    let good = legacy_row(1, "good", 1.0, None);
    for nan in nans() {
        for (row, column) in [
            (legacy_row(1, "nan", nan, None), "value"),
            (legacy_row(1, "nan spare", 1.0, Some(nan)), "spare"),
        ] {
            let (bad, _) = legacy_entry(1, persist::Digest::EMPTY, None, &row);
            match b.apply(&bad) {
                Err(Error::Inapplicable {
                    position: 1,
                    reason,
                }) => assert!(
                    reason.contains(&format!("reading.{column}")) && reason.contains("NaN"),
                    "the reason names the column and NaN: {reason}"
                ),
                other => {
                    panic!("expected the NaN in reading.{column} to be refused, got {other:?}")
                }
            }
            // A snapshot holding it is refused as well, keeping the old data.
            let mut image = Vec::new();
            persist::log::encode_image(&row, &mut image);
            let mut digest = persist::Digest::EMPTY;
            digest.toggle(persist::digest::table_seed("reading"), &image);
            let header = persist::SnapshotHeader {
                history: b.history(),
                position: 7,
                digest,
                epoch: 0,
                tables: vec![persist::SnapshotTableInfo {
                    name: "reading".into(),
                    rows: 1,
                }],
            };
            match b.restore(&header, vec![Ok((0, vec![image]))]) {
                Err(Error::Inapplicable { reason, .. }) => assert!(
                    reason.contains(&format!("reading.{column}")) && reason.contains("NaN"),
                    "the reason names the column and NaN: {reason}"
                ),
                other => panic!(
                    "expected the snapshot with NaN in reading.{column} to be refused, got {other:?}"
                ),
            }
            assert_eq!((b.position(), b.digest()), (0, persist::Digest::EMPTY));
            assert!(b.list::<Reading>().unwrap().is_empty());
            assert_consistent(&b, "after refusing a NaN image");
        }
    }
    // The backup is unharmed: the right entry at that position applies.
    let (e1, d1) = legacy_entry(1, persist::Digest::EMPTY, None, &good);
    b.apply(&e1).unwrap();
    assert_eq!((b.position(), b.digest()), (1, d1));
    assert_consistent(&b, "after the good entry");
    // An update carrying NaN is refused the same way.
    for (row, column) in [
        (legacy_row(1, "good", f64::NAN, None), "value"),
        (legacy_row(1, "good", 1.0, Some(f64::NAN)), "spare"),
    ] {
        let (bad, _) = legacy_entry(2, d1, Some(&good), &row);
        match b.apply(&bad) {
            Err(Error::Inapplicable {
                position: 2,
                reason,
            }) => assert!(
                reason.contains(&format!("reading.{column}")) && reason.contains("NaN"),
                "the reason names the column and NaN: {reason}"
            ),
            other => {
                panic!("expected the NaN update of reading.{column} to be refused, got {other:?}")
            }
        }
        assert_eq!((b.position(), b.digest()), (1, d1));
        assert_consistent(&b, "after refusing a NaN update");
    }
    let (e2, d2) = legacy_entry(2, d1, Some(&good), &legacy_row(1, "good", 2.0, Some(-0.5)));
    b.apply(&e2).unwrap();
    assert_eq!((b.position(), b.digest()), (2, d2));
    assert_consistent(&b, "after the good update");
}
