//! Sync worker, protocol and redundancy runtime of persist.
//!
//! - [`protocol`]: the messages and their wire encoding.
//! - [`core`]: the protocol's decisions, free of I/O.

pub mod core;
pub mod protocol;
