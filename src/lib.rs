#![doc = include_str!("../README.md")]

pub use persist_core::*;
pub use persist_derive::{PersistentEnum, PersistentRecord};

/// Replication between a master and a backup: protocol, transports, workers.
pub use persist_sync as sync;

pub mod operator;

/// The names a module usually needs: `use persist::prelude::*;`.
pub mod prelude {
    pub use persist_core::{FieldType, PersistentEnum as _, PersistentRecord as _};
    pub use persist_derive::{PersistentEnum, PersistentRecord};
}
