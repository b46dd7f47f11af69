//! Sync worker, protocol and redundancy runtime of persist.
//!
//! - [`protocol`]: the messages and their wire encoding.

pub mod protocol;
