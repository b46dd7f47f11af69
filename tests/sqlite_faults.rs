//! SQLite under faults: a database locked by another process, a full disk.

mod conformance;

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use persist::backend::sqlite::SqliteOptions;
use persist::store::BackendConfig;
use persist::{Error, Store, StoreConfig};

use conformance::records::{profile, Profile};

fn config(path: &std::path::Path, tweak: impl FnOnce(&mut SqliteOptions)) -> StoreConfig {
    let mut o = SqliteOptions::new(path);
    tweak(&mut o);
    StoreConfig {
        backend: BackendConfig::Sqlite(o),
        ..StoreConfig::sqlite(path)
    }
}

#[test]
fn locked_database_is_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let store = Store::open(config(&path, |o| {
        o.busy_timeout = Duration::from_millis(200)
    }))
    .unwrap();
    store.register::<Profile>().unwrap();
    store.insert(&profile("before")).unwrap();

    // Another process (here: connection) holds the write lock.
    let mut other = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    other.batch_execute("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let err = store.insert(&profile("blocked")).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "waited for the busy timeout first"
    );
    // Reads still work while the writer is locked out.
    assert_eq!(store.list::<Profile>().unwrap().len(), 1);
    other.batch_execute("ROLLBACK").unwrap();

    store.insert(&profile("after")).unwrap();
    let names: Vec<String> = store
        .list::<Profile>()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["before", "after"]);
    assert_eq!(store.position(), 2);
    assert!(store.verify().unwrap().is_consistent());
}

#[test]
fn full_disk_is_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    let store = Store::open(config(&path, |o| o.max_pages = Some(64))).unwrap();
    store.register::<Profile>().unwrap();
    let mut committed = Vec::new();
    let err = loop {
        let mut p = profile(&format!("p{}", committed.len()));
        p.note = Some("x".repeat(2000));
        match store.insert(&p) {
            Ok(_) => committed.push(p.name),
            Err(e) => break e,
        }
        assert!(committed.len() < 10_000, "the cap never hit");
    };
    assert!(matches!(err, Error::DiskFull(_)), "{err}");
    // Everything acknowledged is there, nothing of the failed write is, and the log agrees.
    let names: Vec<String> = store
        .list::<Profile>()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, committed);
    assert_eq!(store.position(), committed.len() as u64);
    assert!(store.verify().unwrap().is_consistent());
    // Freeing space makes the store writable again.
    store.delete::<Profile>(1).unwrap();
    store.trim_log(store.position()).unwrap();
    store.insert(&profile("small")).unwrap();
    drop(store);
    let store = Store::open(config(&path, |_| {})).unwrap();
    store.register::<Profile>().unwrap();
    assert_eq!(store.position(), committed.len() as u64 + 2);
    assert!(store.verify().unwrap().is_consistent());
}

#[test]
fn unreachable_database_is_unavailable() {
    let err = Store::open_sqlite("/nonexistent-dir/sub/x.db").unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    let err = Store::open_postgres("postgres://postgres@127.0.0.1:1/none", "s").unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
}
