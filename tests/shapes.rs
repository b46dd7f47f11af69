//! Record shapes with references and indexes, on every backend: references
//! checked once per batch in `insert_many` (and once per key in a
//! transaction of single inserts) with the same errors as row by row, and
//! the restore that loads fresh tables and builds their indexes after.

mod conformance;

use conformance::Fixture;
use diesel::{Connection, RunQueryDsl};
use persist::store::BackendConfig;
use persist::{Error, PersistentRecord, Store};

#[derive(PersistentRecord, Debug, Clone, PartialEq)]
struct Owner {
    #[persist(identity)]
    id: i64,
    #[persist(unique)]
    name: String,
}

#[derive(PersistentRecord, Debug, Clone, PartialEq)]
struct Part {
    #[persist(identity)]
    id: i64,
    #[persist(references = Owner, on_delete = "cascade", indexed)]
    owner_id: i64,
    /// A second, optional reference.
    #[persist(references = Owner, on_delete = "cascade")]
    spare_owner: Option<i64>,
    text: String,
}

fn open(fx: &Fixture) -> Store {
    let s = fx.open();
    s.register::<Owner>().unwrap();
    s.register::<Part>().unwrap();
    s
}

fn owner(i: usize) -> Owner {
    Owner {
        id: 0,
        name: format!("owner-{i}"),
    }
}

fn part(owner_id: i64, spare_owner: Option<i64>) -> Part {
    Part {
        id: 0,
        owner_id,
        spare_owner,
        text: format!("a part of {owner_id}"),
    }
}

fn insert_many_checks_references_once_per_batch(fx: &Fixture) {
    let s = open(fx);
    // More distinct targets than one lookup takes (256): several chunks.
    let owners: Vec<Owner> = (0..600).map(owner).collect();
    let keys = s.write(|tx| tx.insert_many(&owners)).unwrap();
    let parts: Vec<Part> = keys
        .iter()
        .flat_map(|&k| [part(k, None), part(k, Some(keys[0]))])
        .collect();
    s.write(|tx| tx.insert_many(&parts)).unwrap();
    assert_eq!(s.list::<Part>().unwrap().len(), 1200);
    let position = s.position();

    // The first row, in order, with a missing reference is the one named;
    // nothing of the batch is kept.
    let mut bad: Vec<Part> = keys.iter().map(|&k| part(k, None)).collect();
    bad[400] = part(keys[1], Some(9999));
    bad[500] = part(8888, None);
    let err = s.write(|tx| tx.insert_many(&bad)).unwrap_err();
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
                ("part", "spare_owner", "owner", "9999")
            );
        }
        other => panic!("expected a missing reference, got {other}"),
    }
    let mut bad: Vec<Part> = keys.iter().map(|&k| part(k, None)).collect();
    bad[10] = part(8888, None);
    assert!(matches!(
        s.write(|tx| tx.insert_many(&bad)),
        Err(Error::MissingReference { ref key, .. }) if key == "8888"
    ));
    assert_eq!(s.position(), position);
    assert_eq!(s.list::<Part>().unwrap().len(), 1200);

    // Targets inserted earlier in the same transaction count.
    s.write(|tx| {
        let k = tx.insert_many(&[owner(1000), owner(1001)])?;
        tx.insert_many(&[part(k[0], Some(k[1])), part(k[1], None)])?;
        Ok(())
    })
    .unwrap();
    assert!(s.verify().unwrap().is_consistent());
}

fn single_inserts_forget_a_verified_key_when_it_is_deleted(fx: &Fixture) {
    let s = open(fx);
    let k = s.insert(&owner(1)).unwrap();
    let r = s.write(|tx| {
        tx.insert(&part(k, None))?;
        tx.insert(&part(k, None))?;
        // Cascades to both parts.
        tx.delete::<Owner>(k)?;
        tx.insert(&part(k, None))
    });
    assert!(
        matches!(r, Err(Error::MissingReference { ref key, .. }) if *key == k.to_string()),
        "{r:?}"
    );
    assert!(s.list::<Part>().unwrap().is_empty());
}

/// A source store and its snapshot, restored into a fresh store.
fn loaded(fx: &Fixture) -> Store {
    let a = open(fx);
    let owners: Vec<Owner> = (0..300).map(owner).collect();
    let keys = a.write(|tx| tx.insert_many(&owners)).unwrap();
    let parts: Vec<Part> = keys.iter().map(|&k| part(k, Some(keys[0]))).collect();
    a.write(|tx| tx.insert_many(&parts)).unwrap();
    a
}

fn restore_all(from: &Store, to: &Store) -> persist::Result<()> {
    let mut snap = from.snapshot()?;
    let header = snap.header().clone();
    let mut chunks = Vec::new();
    while let Some(c) = snap.next_chunk(64)? {
        chunks.push(Ok(c));
    }
    to.restore(&header, chunks)
}

/// Restores `from` as it stands (its rows changed behind its back), with the
/// digest recomputed from those rows, so only the row check can refuse it.
fn restore_forged(from: &Store, to: &Store) -> persist::Result<()> {
    let mut snap = from.snapshot()?;
    let mut header = snap.header().clone();
    header.digest = from.verify()?.computed;
    let mut chunks = Vec::new();
    while let Some(c) = snap.next_chunk(64)? {
        chunks.push(Ok(c));
    }
    to.restore(&header, chunks)
}

fn sqlite_indexes(fx: &Fixture) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let BackendConfig::Sqlite(o) = fx.config().backend else {
        return Vec::new();
    };
    let mut c = diesel::SqliteConnection::establish(o.path.to_str().unwrap()).unwrap();
    let mut names: Vec<String> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    )
    .load::<Name>(&mut c)
    .unwrap()
    .into_iter()
    .map(|n| n.name)
    .collect();
    names.sort();
    names
}

fn restore_builds_indexes_and_keeps_checking_references(fx: &Fixture) {
    let a = loaded(fx);
    let fx_b = fx.sibling();
    let b = open(&fx_b);
    b.insert(&owner(7777)).unwrap();
    let before = sqlite_indexes(&fx_b);
    restore_all(&a, &b).unwrap();
    assert_eq!(b.list::<Part>().unwrap(), a.list::<Part>().unwrap());
    assert_eq!((b.position(), b.digest()), (a.position(), a.digest()));
    assert!(b.verify().unwrap().is_consistent());
    // The indexes are back, and enforced.
    assert_eq!(sqlite_indexes(&fx_b), before);
    if fx.is_sqlite() {
        assert_eq!(
            before,
            ["owner__name__key", "part__owner_id__idx"],
            "the tables' secondary indexes"
        );
    }
    assert!(matches!(
        b.insert(&owner(5)),
        Err(Error::UniqueViolation { ref column, .. }) if column == "name"
    ));
    // The database checks references again after the restore: an entry whose
    // target is gone (removed behind the library's back) is refused.
    fx_b.raw(&format!(
        "{} DELETE FROM \"owner\" WHERE \"id\" = 300",
        unchecked(fx)
    ));
    a.insert(&part(300, None)).unwrap();
    let entry = a.read_log(a.position(), 1).unwrap();
    assert!(b.apply(&entry[0]).is_err(), "a dangling reference applied");
    // Identities go on after the restored keys (owners 1..=300; the refused
    // insert above may have used one).
    let next = b.insert(&owner(1000)).unwrap();
    assert!(
        next > 300,
        "a new owner got key {next}, restored ones go to 300"
    );
}

/// SQL that lets a raw connection leave references dangling.
fn unchecked(fx: &Fixture) -> &'static str {
    if fx.is_sqlite() {
        "PRAGMA foreign_keys = OFF;"
    } else {
        "SET session_replication_role = replica;"
    }
}

fn restore_refuses_dangling_references_and_duplicates(fx: &Fixture) {
    let fx_b = fx.sibling();
    let b = open(&fx_b);
    let kept = b.insert(&owner(42)).unwrap();
    let check_intact = |b: &Store| {
        assert_eq!(
            b.list::<Owner>().unwrap(),
            vec![Owner {
                id: kept,
                name: "owner-42".into()
            }]
        );
        assert!(b.list::<Part>().unwrap().is_empty());
        assert!(b.verify().unwrap().is_consistent());
    };

    // Parts whose owner is gone.
    let a = loaded(fx);
    fx.raw(&format!(
        "{} DELETE FROM \"owner\" WHERE \"id\" = 3",
        unchecked(fx)
    ));
    let err = restore_forged(&a, &b).unwrap_err();
    if fx.is_sqlite() {
        assert!(
            matches!(&err, Error::Inapplicable { reason, .. } if reason.contains("reference a missing owner")),
            "{err}"
        );
    }
    check_intact(&b);
    // The failed restore left the identities as they were: the next owner
    // follows the one kept, not the rows that were rolled back.
    let next = b.insert(&owner(43)).unwrap();
    assert_eq!(next, kept + 1);
    b.delete::<Owner>(next).unwrap();
    drop(a);

    // Two owners with one name.
    let fx_c = fx.sibling();
    let c = loaded(&fx_c);
    fx_c.raw("DROP INDEX \"owner__name__key\"; UPDATE \"owner\" SET \"name\" = 'dup' WHERE \"id\" IN (1, 2)");
    let err = restore_forged(&c, &b).unwrap_err();
    assert!(
        matches!(&err, Error::Inapplicable { reason, .. } if reason.contains("name")),
        "{err}"
    );
    check_intact(&b);
    // And the store still restores a good snapshot afterwards.
    let fx_d = fx.sibling();
    let d = loaded(&fx_d);
    restore_all(&d, &b).unwrap();
    assert_eq!(b.list::<Owner>().unwrap().len(), 300);
    assert_eq!(b.insert(&owner(1000)).unwrap(), 301);
}

macro_rules! suite {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::*;
            #[test]
            fn insert_many_checks_references_once_per_batch() {
                super::insert_many_checks_references_once_per_batch(&$fixture);
            }
            #[test]
            fn single_inserts_forget_a_verified_key_when_it_is_deleted() {
                super::single_inserts_forget_a_verified_key_when_it_is_deleted(&$fixture);
            }
            #[test]
            fn restore_builds_indexes_and_keeps_checking_references() {
                super::restore_builds_indexes_and_keeps_checking_references(&$fixture);
            }
            #[test]
            fn restore_refuses_dangling_references_and_duplicates() {
                super::restore_refuses_dangling_references_and_duplicates(&$fixture);
            }
        }
    };
}

suite!(sqlite, Fixture::sqlite());
suite!(postgres, Fixture::postgres());
