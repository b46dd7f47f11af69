//! The `[witness]` section of a node's configuration: where the lease
//! bucket is and how long a lease lives, checked against the pair's failover
//! timeout before anything starts. The decisions are
//! [`persist_sync::redundancy::witness::Lease`]; the NATS KV task that
//! carries them out is not written yet.

use std::path::PathBuf;
use std::time::Duration;

use persist_sync::redundancy::witness::WitnessSettings;
use serde::Deserialize;

use crate::error::{FleetError, Result};

/// The witness configuration.
///
/// ```
/// let cfg = persist_fleet::WitnessConfig::from_toml(r#"
///     url = "nats://127.0.0.1:4222"
///     bucket = "pair-witness"
///     key = "site-7"
///     ttl_ms = 2000
/// "#).unwrap();
/// // With `credentials_file = "..."` the file must exist.
/// let settings = cfg.settings(std::time::Duration::from_secs(3)).unwrap();
/// assert_eq!(settings.ttl, std::time::Duration::from_secs(2));
/// assert!(cfg.settings(std::time::Duration::from_secs(2)).is_err());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// NATS server URL(s), comma separated.
    pub url: String,
    /// The KV bucket holding the lease (its TTL is the lease's).
    pub bucket: String,
    /// The lease's key (one per pair).
    pub key: String,
    /// The lease's lifetime in ms; must be shorter than the failover timeout.
    pub ttl_ms: u64,
    /// How often the holder renews, in ms (default: a third of the TTL).
    #[serde(default)]
    pub renew_ms: Option<u64>,
    /// A NATS `.creds` file, if the server wants one (never inline).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A file holding an NKey user seed, if the server wants one (never inline).
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
}

fn check_name(setting: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(FleetError::Config(format!(
            "[witness] {setting} = {v:?}: use 1-64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

impl WitnessConfig {
    /// Parses the section (unknown keys are refused).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| FleetError::Config(format!("[witness] {e}")))
    }

    /// The lease settings, checked against the pair's failover timeout: a
    /// TTL at or above it, a bad name, or a credentials file that does not
    /// exist is a specific error here, at startup.
    pub fn settings(&self, failover_timeout: Duration) -> Result<WitnessSettings> {
        if self.url.trim().is_empty() {
            return Err(FleetError::Config(
                "[witness] url: must not be empty".into(),
            ));
        }
        check_name("bucket", &self.bucket)?;
        check_name("key", &self.key)?;
        for (setting, file) in [
            ("credentials_file", &self.credentials_file),
            ("nkey_file", &self.nkey_file),
        ] {
            if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
                return Err(FleetError::Config(format!(
                    "[witness] {setting} = {}: no such file",
                    f.display()
                )));
            }
        }
        let mut s = WitnessSettings::new(Duration::from_millis(self.ttl_ms));
        if let Some(r) = self.renew_ms {
            s.renew_every = Duration::from_millis(r);
        }
        s.validate(failover_timeout)
            .map_err(|e| FleetError::Config(format!("[witness] {e}")))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<WitnessConfig> {
        WitnessConfig::from_toml(&format!(
            "url = \"nats://127.0.0.1:1\"\nbucket = \"w\"\nkey = \"pair-1\"\n{extra}"
        ))
    }

    #[test]
    fn a_ttl_not_below_the_failover_timeout_is_named_at_startup() {
        let e = cfg("ttl_ms = 3000")
            .unwrap()
            .settings(Duration::from_secs(3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[witness] witness ttl"), "{e}");
        assert!(e.contains("shorter than the failover timeout"), "{e}");
    }

    #[test]
    fn secrets_come_from_files_and_unknown_keys_are_refused() {
        let e = cfg("ttl_ms = 1000\npassword = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password"), "{e}");
        let e = cfg("ttl_ms = 1000\ncredentials_file = \"/nonexistent/w.creds\"")
            .unwrap()
            .settings(Duration::from_secs(3))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("credentials_file") && e.contains("no such file"),
            "{e}"
        );
        let e = cfg("ttl_ms = 1000\nrenew_ms = 990")
            .unwrap()
            .settings(Duration::from_secs(3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("renew_every"), "{e}");
        cfg("ttl_ms = 1000")
            .unwrap()
            .settings(Duration::from_secs(3))
            .unwrap();
    }
}
