//! Sync worker, protocol and redundancy runtime of persist.
//!
//! - [`protocol`]: the messages.
//! - [`codec`]: one message per frame, with size limits for untrusted input.
//! - [`transport`]: links that carry frames (TCP with optional TLS).
//! - [`auth`]: mutual challenge-response authentication of a link.
//! - [`engine`]: every decision of a node (sessions, redundancy, claims) as a
//!   state machine without I/O or clock.
//! - [`worker`]: the tokio tasks that carry those decisions out, and the
//!   store executor.
//! - [`redundancy`]: roles, activity, failover and recovery of the pair.
//! - [`runtime_state`]: a module's live state carried to the standby.
//! - [`history`]: store-and-forward of history produced on an active backup.
//! - [`clock`]: the one clock the drivers read.
//! - `testing` (feature `testing`): the in-memory fault network and the
//!   deterministic simulator.

pub mod auth;
pub mod clock;
pub mod codec;
pub mod engine;
pub mod history;
pub mod panic;
pub mod protocol;
pub mod redundancy;
pub mod runtime_state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod worker;
