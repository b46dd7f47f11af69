//! # persist
//!
//! Redundancy for gateway modules: declare configuration as a plain struct,
//! add `#[derive(PersistentRecord)]`, and get a table, typed CRUD, change
//! events and a replication log that the sync worker ships to the backup.
//!
//! See the README for the guide.

pub use persist_core::*;
pub use persist_derive::{PersistentEnum, PersistentRecord};

/// The names a module usually needs: `use persist::prelude::*;`.
pub mod prelude {
    pub use persist_core::{FieldType, PersistentEnum as _, PersistentRecord as _};
    pub use persist_derive::{PersistentEnum, PersistentRecord};
}
