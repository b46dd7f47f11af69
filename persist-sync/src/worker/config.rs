//! Settings of a sync worker.

use std::time::Duration;

use crate::auth::AuthConfig;
use crate::codec::Limits;
use crate::engine::{RetentionPolicy, ScrubConfig};
use crate::protocol::ModuleManifest;

/// Settings of a sync worker (either side).
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Cluster name, node id and shared secret.
    pub auth: AuthConfig,
    /// Time allowed for the hello and authentication exchange.
    pub handshake_timeout: Duration,
    /// Entries per `Entries` frame, at most.
    pub max_batch_entries: usize,
    /// Bytes of entry bodies per `Entries` frame, at most (one larger entry
    /// still goes alone).
    pub max_batch_bytes: usize,
    /// Entries the master sends ahead of the backup's acknowledgements.
    pub max_in_flight: u64,
    /// Rows per snapshot frame.
    pub snapshot_chunk_rows: usize,
    /// How long the master keeps its log.
    pub retention: RetentionPolicy,
    /// How often the master applies the retention policy.
    pub retention_interval: Duration,
    /// First delay before the backup dials again after a failure.
    pub reconnect_initial: Duration,
    /// Longest delay between the backup's attempts.
    pub reconnect_max: Duration,
    /// Frame limits once authenticated.
    pub limits: Limits,
    /// How often each side sends a heartbeat on an established link.
    pub heartbeat_interval: Duration,
    /// A link whose peer stayed silent this long is dropped and dialed
    /// again: a dead link is noticed whatever TCP does.
    pub peer_timeout: Duration,
    /// The modules this node runs, declared to the peer after
    /// authentication (see [`ModuleManifest`] for what the master accepts).
    /// Empty (the default): none declared.
    pub modules: Vec<ModuleManifest>,
    /// Scrubbing and ranged repair (see [`ScrubConfig`]).
    pub scrub: ScrubConfig,
}

impl SyncConfig {
    /// Defaults around the given authentication settings.
    pub fn new(auth: AuthConfig) -> Self {
        SyncConfig {
            auth,
            handshake_timeout: Duration::from_secs(5),
            max_batch_entries: 4096,
            max_batch_bytes: 4 << 20,
            max_in_flight: 16_384,
            snapshot_chunk_rows: 8_192,
            retention: RetentionPolicy::default(),
            retention_interval: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            limits: Limits::default(),
            heartbeat_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(5),
            modules: Vec::new(),
            scrub: ScrubConfig::default(),
        }
    }

    /// These settings, declaring `modules` as the modules this node runs
    /// (see [`ModuleManifest`]).
    pub fn modules(mut self, modules: Vec<ModuleManifest>) -> Self {
        self.modules = modules;
        self
    }

    /// Checks every setting: durations that must be positive are, a peer
    /// timeout spans at least two heartbeats, backoff bounds are ordered,
    /// sizes are positive, the frame limit holds a handshake frame, and each
    /// module is declared once, with a name, and within the string limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |setting, problem: String| Err(ConfigError { setting, problem });
        let positive = [
            ("handshake_timeout", self.handshake_timeout),
            ("retention_interval", self.retention_interval),
            ("reconnect_initial", self.reconnect_initial),
            ("heartbeat_interval", self.heartbeat_interval),
        ];
        for (setting, d) in positive {
            if d < Duration::from_millis(1) {
                return err(setting, format!("must be at least 1 ms (it is {d:?})"));
            }
        }
        if self.peer_timeout < self.heartbeat_interval * 2 {
            return err(
                "peer_timeout",
                format!(
                    "must be at least two heartbeat intervals ({:?}); it is {:?}",
                    self.heartbeat_interval * 2,
                    self.peer_timeout
                ),
            );
        }
        if self.reconnect_max < self.reconnect_initial {
            return err(
                "reconnect_max",
                format!(
                    "must be at least reconnect_initial ({:?}); it is {:?}",
                    self.reconnect_initial, self.reconnect_max
                ),
            );
        }
        let sizes = [
            ("max_batch_entries", self.max_batch_entries as u64),
            ("max_batch_bytes", self.max_batch_bytes as u64),
            ("max_in_flight", self.max_in_flight),
            ("snapshot_chunk_rows", self.snapshot_chunk_rows as u64),
        ];
        let scrub_sizes = [
            ("scrub.step_rows", self.scrub.step_rows as u64),
            ("scrub.max_repair_rows", self.scrub.max_repair_rows as u64),
        ];
        if self.scrub.enabled {
            for (setting, d) in [
                ("scrub.period", self.scrub.period),
                ("scrub.min_pause", self.scrub.min_pause),
            ] {
                if d < Duration::from_millis(1) {
                    return err(setting, format!("must be at least 1 ms (it is {d:?})"));
                }
            }
            if !(1..=100).contains(&self.scrub.max_core_percent) {
                return err(
                    "scrub.max_core_percent",
                    format!(
                        "must be from 1 to 100 (it is {})",
                        self.scrub.max_core_percent
                    ),
                );
            }
        }
        for (setting, n) in sizes.into_iter().chain(scrub_sizes) {
            if n == 0 {
                return err(setting, "must be at least 1".into());
            }
        }
        if self.limits.max_frame < crate::codec::Limits::handshake().max_frame {
            return err(
                "limits.max_frame",
                format!(
                    "must hold a handshake frame ({} bytes); it is {}",
                    crate::codec::Limits::handshake().max_frame,
                    self.limits.max_frame
                ),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for m in &self.modules {
            if m.name.is_empty() {
                return err("modules", "a module has an empty name".into());
            }
            if m.name.len().max(m.version.len()) > self.limits.max_string {
                return err(
                    "modules",
                    format!(
                        "module `{}`: name and version must be at most {} bytes",
                        m.name.chars().take(64).collect::<String>(),
                        self.limits.max_string
                    ),
                );
            }
            if !names.insert(m.name.as_str()) {
                return err("modules", format!("module `{}` is declared twice", m.name));
            }
        }
        Ok(())
    }
}

/// A sync setting that cannot work, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The setting (its field name).
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn cfg() -> SyncConfig {
        SyncConfig::new(
            AuthConfig::new("plant-7", "gw-a", Secret::new(vec![7; 32]).unwrap()).unwrap(),
        )
    }

    #[test]
    fn modules_are_declared_once_each_with_a_name() {
        assert!(cfg().modules.is_empty(), "none declared by default");
        let ok = cfg().modules(vec![
            ModuleManifest::new("alarms", "1.0.0", 1),
            ModuleManifest::new("counters", "1.0.0", 1),
        ]);
        assert_eq!(ok.modules.len(), 2);
        assert_eq!(ok.validate(), Ok(()));
        let twice = cfg().modules(vec![
            ModuleManifest::new("alarms", "1.0.0", 1),
            ModuleManifest::new("alarms", "1.1.0", 1),
        ]);
        let e = twice.validate().unwrap_err();
        assert_eq!(e.setting, "modules");
        assert_eq!(e.to_string(), "modules: module `alarms` is declared twice");
        let unnamed = cfg().modules(vec![ModuleManifest::new("", "1.0.0", 1)]);
        assert_eq!(unnamed.validate().unwrap_err().setting, "modules");
        let long = cfg().modules(vec![ModuleManifest::new("alarms", "1".repeat(70_000), 1)]);
        assert_eq!(long.validate().unwrap_err().setting, "modules");
    }
}
