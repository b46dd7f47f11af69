//! The tokio side of sync: a node task per node that carries out what its
//! [`NodeCore`](crate::engine::NodeCore) decides, link tasks that only move
//! frames, and one store executor thread per node.
//!
//! - [`start_master`] / [`start_backup`]: a sync worker without the
//!   redundancy runtime (see [`crate::redundancy`] for a full node).
//! - [`SyncConfig`]: the settings; [`LinkStatus`]: what a worker reports.

pub mod backup;
mod bridge;
mod config;
pub(crate) mod driver;
pub(crate) mod executor;
mod link;
pub mod master;
mod status;

pub use backup::{start_backup, BackupHandle};
pub use config::{ConfigError, SyncConfig};
pub use driver::StartError;
pub use master::{start_master, MasterHandle};
pub use status::{LinkStatus, SyncError};
