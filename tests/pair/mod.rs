//! Settings of an in-process test pair: fast timers, quick reconnects.

#![allow(dead_code)]

use std::time::Duration;

use persist::sync::auth::{AuthConfig, Secret};
use persist::sync::redundancy::{NodeRole, RedundancySettings};
use persist::sync::worker::SyncConfig;

/// Sync settings of node `node` in cluster "plant-7".
pub fn sync(node: &str) -> SyncConfig {
    let mut c = SyncConfig::new(
        AuthConfig::new(
            "plant-7",
            node,
            Secret::new(b"correct horse battery staple".to_vec()).unwrap(),
        )
        .unwrap(),
    );
    c.reconnect_initial = Duration::from_millis(20);
    c.reconnect_max = Duration::from_millis(100);
    c
}

/// Redundancy settings: 400 ms failover timeout, 40 ms heartbeat, 800 ms allowance.
pub fn settings(role: NodeRole, node: &str) -> RedundancySettings {
    let mut s = RedundancySettings::new(role, node);
    s.failover_timeout = Duration::from_millis(400);
    s.heartbeat_interval = Duration::from_millis(40);
    s.startup_allowance = Duration::from_millis(800);
    s
}
