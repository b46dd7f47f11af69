//! A hand-written record (no derive), to check the store's core path on its own.

use std::sync::OnceLock;

use persist_core::record::{Column, ColumnMeta, KeyKind, RecordMeta};
use persist_core::{DecodeError, FieldType, PersistentRecord, SqlType, Store, Value};

#[derive(Debug, Clone, PartialEq)]
struct Item {
    id: i64,
    name: String,
    qty: i32,
}

struct ItemColumns {
    qty: Column<Item, i32>,
}

impl PersistentRecord for Item {
    type Key = i64;
    type Columns = ItemColumns;
    fn meta() -> &'static RecordMeta {
        static M: OnceLock<RecordMeta> = OnceLock::new();
        M.get_or_init(|| {
            let col = |name, ty, unique| ColumnMeta {
                name,
                field: name,
                sql_type: ty,
                nullable: false,
                unique,
                indexed: false,
                default: None,
                reference: None,
                variants: None,
                ui: persist_core::ColumnUi::NONE,
            };
            RecordMeta {
                type_name: "Item",
                table: "item",
                columns: vec![
                    col("id", SqlType::BigInt, false),
                    col("name", SqlType::Text, true),
                    col("qty", SqlType::Integer, false),
                ],
                key: 0,
                key_kind: KeyKind::Identity,
                title: None,
                check_row: None,
            }
        })
    }
    fn columns() -> ItemColumns {
        ItemColumns {
            qty: Column::new(2, "qty"),
        }
    }
    fn to_row(&self) -> Vec<Value> {
        vec![
            self.id.to_value(),
            self.name.to_value(),
            self.qty.to_value(),
        ]
    }
    fn from_row(row: Vec<Value>) -> Result<Self, DecodeError> {
        let mut it = row.into_iter();
        Ok(Item {
            id: i64::from_value(it.next().unwrap())?,
            name: String::from_value(it.next().unwrap())?,
            qty: i32::from_value(it.next().unwrap())?,
        })
    }
    fn key(&self) -> i64 {
        self.id
    }
}

#[test]
fn crud_log_apply_verify() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open_sqlite(dir.path().join("a.db")).unwrap();
    a.register::<Item>().unwrap();
    let mut sub = a.subscribe::<Item>().unwrap();
    let id = a
        .insert(&Item {
            id: 0,
            name: "x".into(),
            qty: 1,
        })
        .unwrap();
    assert_eq!(id, 1);
    a.update(&Item {
        id,
        name: "x".into(),
        qty: 5,
    })
    .unwrap();
    let err = a
        .insert(&Item {
            id: 0,
            name: "x".into(),
            qty: 1,
        })
        .unwrap_err();
    assert!(
        matches!(err, persist_core::Error::UniqueViolation { ref column, .. } if column == "name"),
        "{err}"
    );
    a.write(|tx| {
        tx.insert(&Item {
            id: 0,
            name: "y".into(),
            qty: 2,
        })?;
        tx.insert(&Item {
            id: 0,
            name: "z".into(),
            qty: 3,
        })
    })
    .unwrap();
    a.delete::<Item>(id).unwrap();
    assert_eq!(a.position(), 4);
    let big = a
        .query::<Item>()
        .filter(Item::columns().qty.ge(3))
        .load()
        .unwrap();
    assert_eq!(big.len(), 1);
    assert!(a.verify().unwrap().is_consistent());
    let ev: Vec<_> = (0..5).map(|_| sub.recv().unwrap()).collect();
    assert!(matches!(ev[0], persist_core::RecordEvent::Added(_)));
    assert!(matches!(ev[4], persist_core::RecordEvent::Deleted(_)));

    let b = Store::open_sqlite(dir.path().join("b.db")).unwrap();
    b.register::<Item>().unwrap();
    for e in a.read_log(1, 100).unwrap() {
        b.apply(&e).unwrap();
    }
    assert_eq!(b.position(), 4);
    assert_eq!(b.digest(), a.digest());
    assert_eq!(b.list::<Item>().unwrap(), a.list::<Item>().unwrap());
    assert!(b.verify().unwrap().is_consistent());
    drop(a);
    let a2 = Store::open_sqlite(dir.path().join("a.db")).unwrap();
    a2.register::<Item>().unwrap();
    assert_eq!(a2.position(), 4);
    assert_eq!(a2.digest(), b.digest());
    // Ids: x=1, the refused duplicate used 2, y=3, z=4; after restart the next is max + 1.
    assert_eq!(
        a2.insert(&Item {
            id: 0,
            name: "w".into(),
            qty: 1
        })
        .unwrap(),
        5
    );
}
