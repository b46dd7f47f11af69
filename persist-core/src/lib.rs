//! Records, the store and the replication log of persist.
//!
//! See the `persist` facade crate for the user guide.

pub mod digest;
pub mod error;
pub mod record;
pub mod value;

pub use digest::Digest;
pub use error::{DecodeError, Error, Result};
pub use record::{
    Column, ColumnMeta, CompareOp, Filter, KeyKind, OnDelete, Order, PersistentRecord, RecordMeta,
    Reference,
};
pub use value::{FieldType, PersistentEnum, SqlType, Value};
