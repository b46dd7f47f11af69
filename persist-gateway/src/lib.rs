//! The gateway host of persist: what runs a node and its modules.
//!
//! - [`operator`]: the operator surface over HTTP (state, metrics, status
//!   page, token-protected actions).
//! - [`http`]: how it is served: connections capped and bounded in time,
//!   so idle, slow or flooding clients cannot take it down.
//! - The `gateway` program (`src/bin/gateway.rs`): one node from a TOML file.
//! - The `persist-node` program (`src/bin/persist-node.rs`): a minimal node
//!   for process-level tests and benchmarks.

pub mod http;
pub mod operator;
