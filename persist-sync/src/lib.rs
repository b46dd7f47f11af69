//! Sync worker, protocol and redundancy runtime of persist.
//!
//! - [`protocol`]: the messages and their wire encoding.
//! - [`codec`]: one message per frame, with size limits for untrusted input.
//! - [`transport`]: links that carry frames (TCP with optional TLS, in-memory
//!   with fault injection).
//! - [`auth`]: mutual challenge-response authentication of a link.

pub mod auth;
pub mod codec;
pub mod protocol;
pub mod transport;
