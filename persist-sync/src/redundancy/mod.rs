//! The redundant pair at run time: roles, activity levels, failover and
//! recovery, fenced by epochs.
//!
//! - [`machine`]: the decisions (pure; see its docs for the rule).
//! - [`node`]: the runtime that drives them over the sync link.
//! - [`witness`]: the optional witness lease against split brain (pure).

pub mod machine;
pub mod node;
pub mod witness;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod witness_pair_tests;

pub use crate::protocol::NodeRole;
pub use machine::{
    ActivityLevel, Machine, RecoveryMode, RedundancySettings, RequestError, SettingsError,
    StandbyLevel,
};
pub use node::{start_backup_node, start_master_node, NodeBuilder, NodeHandle, RedundancyState};
