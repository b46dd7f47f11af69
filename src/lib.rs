#![doc = include_str!("../README.md")]

pub use persist_core::*;
pub use persist_derive::{PersistentEnum, PersistentRecord};

/// Replication between a master and a backup: protocol, transports, workers.
pub use persist_sync as sync;

/// The date-time types record fields use (`chrono::DateTime<chrono::Utc>`),
/// at the version persist is built with.
pub use chrono;

/// The async runtime persist's nodes run on, at the version persist is built
/// with (a module that follows `NodeHandle::watch` uses its `sync::watch`).
pub use tokio;

pub mod module;

/// The names a module usually needs: `use persist::prelude::*;`.
pub mod prelude {
    pub use persist_core::{FieldType, PersistentEnum as _, PersistentRecord as _};
    pub use persist_derive::{PersistentEnum, PersistentRecord};
}
