//! The sync protocol: messages and their wire encoding.

pub mod message;

pub use message::{
    LinkRole, Message, ModuleManifest, ModuleMismatch, NodeRole, Plan, RefuseReason, RepairRefusal,
    ResyncReason, SnapshotTable, PROTOCOL_VERSION,
};
