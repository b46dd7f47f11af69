//! The gateway host of persist: runs [modules](persist::module) on one node
//! of a redundant pair.
//!
//! A module author writes the module against `persist` alone; a gateway
//! program is a `main` of one line ([`main`]) or a [`Gateway`] built from a
//! TOML file ([`config`]). The host opens the store, registers the modules,
//! starts the node, follows its activity on the modules' behalf, serves the
//! operator surface ([`operator`]) with a node-local [`audit`] log, logs
//! with `tracing` ([`logging`]), and shuts down in order on SIGTERM and
//! SIGINT. [`http`] is how the operator surface is served: connections
//! capped and bounded in time, so idle, slow or flooding clients cannot take
//! it down. [`api`] is the REST API of the modules' records, on the same
//! listener, and [`pages`] the configuration pages built on it. [`fleet`]
//! runs the gateway's part in a fleet (`[fleet]`) and shows it at `/fleet`.

pub mod api;
pub mod audit;
pub mod config;
pub mod fleet;
mod host;
pub mod http;
pub mod logging;
pub mod operator;
pub mod pages;

pub use config::{Config, ConfigError};
pub use host::{main, Gateway, GatewayError, RunningGateway, HISTORY_FLUSH};
