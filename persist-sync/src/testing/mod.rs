//! Test tools, behind the `testing` cargo feature (not in a production build).
//!
//! - [`memory`]: an in-process network that cuts, partitions, drops, delays
//!   and duplicates frames.
//! - [`sim`]: the deterministic simulator of a pair.

pub mod memory;
pub mod sim;
