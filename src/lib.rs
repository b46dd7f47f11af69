#![doc = include_str!("../README.md")]

pub use persist_core::*;
pub use persist_derive::{PersistentEnum, PersistentRecord};

/// The names a module usually needs: `use persist::prelude::*;`.
pub mod prelude {
    pub use persist_core::{FieldType, PersistentEnum as _, PersistentRecord as _};
    pub use persist_derive::{PersistentEnum, PersistentRecord};
}
