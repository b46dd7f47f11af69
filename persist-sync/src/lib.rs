//! Sync worker, protocol and redundancy runtime of persist.
//!
//! - [`protocol`]: the messages.
//! - [`codec`]: one message per frame, with size limits for untrusted input.
//! - [`transport`]: links that carry frames (TCP with optional TLS, in-memory
//!   with fault injection).
//! - [`auth`]: mutual challenge-response authentication of a link.
//! - [`core`]: the protocol's decisions, free of I/O.
//! - [`worker`]: the tokio tasks that drive a master and a backup.
//! - [`redundancy`]: roles, activity, failover and recovery of the pair.
//! - [`runtime_state`]: a module's live state carried to the standby.
//! - [`history`]: store-and-forward of history produced on an active backup.

pub mod auth;
pub mod codec;
pub mod core;
pub mod history;
pub mod protocol;
pub mod redundancy;
pub mod runtime_state;
pub mod transport;
pub mod worker;
