//! The fleet configuration: where NATS is, which cluster, which record types
//! are shared, and the files that hold the secrets (never the secrets
//! themselves).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use persist_core::PersistentRecord;
use serde::Deserialize;
use sha2::Sha256;

use crate::error::{FleetError, Result};

/// The fleet configuration (the `[fleet]` table of a gateway's TOML, or
/// built in code).
///
/// ```
/// let cfg = persist_fleet::FleetConfig::from_toml(r#"
///     url = "nats://127.0.0.1:4222"
///     cluster = "plant-a"
///     edge = "site-7"
///     key_file = "/etc/persist/fleet.key"
///     shared = ["fleet_tag"]
/// "#).unwrap();
/// assert!(cfg.is_shared("fleet_tag"));
/// assert!(!cfg.is_shared("site_note"));
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// NATS server URL(s), comma separated.
    pub url: String,
    /// The fleet (cluster) name: letters, digits, `-` and `_`. Names the
    /// stream, subject, buckets and object store.
    pub cluster: String,
    /// This edge's name (edges only; letters, digits, `-` and `_`).
    #[serde(default)]
    pub edge: Option<String>,
    /// The file holding the fleet key (at least 32 bytes, raw or hex): every
    /// entry and snapshot is authenticated with HMAC-SHA256 under it.
    pub key_file: PathBuf,
    /// A NATS `.creds` file (JWT + NKey seed), if the server wants one.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU...`), if the server wants one.
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
    /// The tables (record types) shared by the fleet; every other table is
    /// site-local. See [`FleetConfig::share`].
    #[serde(default)]
    pub shared: Vec<String>,
    /// The publisher writes a snapshot every this many entries (default 10 000).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Snapshots kept (default 2); the stream keeps entries from the oldest on.
    #[serde(default = "default_keep_snapshots")]
    pub keep_snapshots: usize,
    /// The largest entry published as a message (default 512 KiB, below
    /// NATS's 1 MiB default); a larger change goes out as a snapshot.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
    /// The bound on every NATS request (default 5 s).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_snapshot_every() -> u64 {
    10_000
}
fn default_keep_snapshots() -> usize {
    2
}
fn default_max_entry_bytes() -> usize {
    512 * 1024
}
fn default_request_timeout_ms() -> u64 {
    5_000
}

/// A name that goes into subjects, stream and bucket names.
pub(crate) fn check_name(key: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(FleetError::Config(format!(
            "{key} = {v:?}: use 1-64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

impl FleetConfig {
    /// A configuration with defaults for everything optional.
    pub fn new(
        url: impl Into<String>,
        cluster: impl Into<String>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        FleetConfig {
            url: url.into(),
            cluster: cluster.into(),
            edge: None,
            key_file: key_file.into(),
            credentials_file: None,
            nkey_file: None,
            shared: Vec::new(),
            snapshot_every: default_snapshot_every(),
            keep_snapshots: default_keep_snapshots(),
            max_entry_bytes: default_max_entry_bytes(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }

    /// Parses and checks a configuration.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: FleetConfig =
            toml::from_str(text).map_err(|e| FleetError::Config(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Marks a record type as fleet-shared (the registration-time option;
    /// the same as listing its table in `shared`).
    pub fn share<R: PersistentRecord>(mut self) -> Self {
        let t = R::meta().table.to_owned();
        if !self.shared.contains(&t) {
            self.shared.push(t);
        }
        self
    }

    /// Names this edge.
    pub fn with_edge(mut self, edge: impl Into<String>) -> Self {
        self.edge = Some(edge.into());
        self
    }

    /// Whether `table` is fleet-shared.
    pub fn is_shared(&self, table: &str) -> bool {
        self.shared.iter().any(|t| t == table)
    }

    /// Checks names and bounds.
    pub fn check(&self) -> Result<()> {
        check_name("cluster", &self.cluster)?;
        if let Some(e) = &self.edge {
            check_name("edge", e)?;
        }
        if self.shared.is_empty() {
            return Err(FleetError::Config(
                "shared: list at least one table the fleet shares".into(),
            ));
        }
        if self.snapshot_every == 0 || self.keep_snapshots == 0 {
            return Err(FleetError::Config(
                "snapshot_every and keep_snapshots must be at least 1".into(),
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_entry_bytes) {
            return Err(FleetError::Config(
                "max_entry_bytes must be between 1 KiB and 64 MiB".into(),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(FleetError::Config(
                "request_timeout_ms must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The bound on each NATS request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The stream holding the fleet's entries.
    pub fn stream_name(&self) -> String {
        format!("PERSIST_FLEET_{}", self.cluster)
    }
    /// The subject entries are published on.
    pub fn subject(&self) -> String {
        format!("persist.fleet.{}.entries", self.cluster)
    }
    /// The object store bucket holding snapshots.
    pub fn snapshot_bucket(&self) -> String {
        format!("persist-fleet-{}-snapshots", self.cluster)
    }
    /// The KV bucket edges report their status to.
    pub fn status_bucket(&self) -> String {
        format!("persist-fleet-{}-status", self.cluster)
    }

    /// Reads the fleet key from `key_file`.
    pub fn load_key(&self) -> Result<FleetKey> {
        FleetKey::from_file(&self.key_file)
    }

    /// Connects to NATS with the credentials the configuration names,
    /// bounded by the request timeout (the client then reconnects by itself).
    pub async fn connect(&self) -> Result<async_nats::Client> {
        let opts = credentials(self.credentials_file.as_deref(), self.nkey_file.as_deref()).await?;
        let timeout = self.request_timeout();
        let opts = opts
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .retry_on_initial_connect()
            .name(format!(
                "persist-fleet {} {}",
                self.cluster,
                self.edge.as_deref().unwrap_or("central")
            ));
        crate::error::bounded("connect", timeout, opts.connect(self.url.as_str())).await
    }
}

/// Connection options with the credentials from files: a NATS `.creds`
/// file and/or an NKey seed file (secrets never come from the TOML itself).
pub(crate) async fn credentials(
    credentials_file: Option<&Path>,
    nkey_file: Option<&Path>,
) -> Result<async_nats::ConnectOptions> {
    let mut opts = match credentials_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| file_error(path, e))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(path) = nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    Ok(opts)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> FleetError {
    FleetError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The fleet's shared secret: every entry and snapshot carries an
/// HMAC-SHA256 under it, so a NATS account that can publish on the subject
/// cannot inject configuration.
#[derive(Clone)]
pub struct FleetKey(Vec<u8>);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// A key from bytes (at least 32).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<FleetKey> {
        let bytes = bytes.into();
        if bytes.len() < 32 {
            return Err(FleetError::Config(format!(
                "the fleet key has {} bytes; it needs at least 32",
                bytes.len()
            )));
        }
        Ok(FleetKey(bytes))
    }

    /// Reads a key file: 64+ hex digits (whitespace trimmed), or else the raw bytes.
    pub fn from_file(path: &Path) -> Result<FleetKey> {
        let raw = std::fs::read(path).map_err(|e| file_error(path, e))?;
        let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
        let bytes = if text.len() >= 64
            && text.len().is_multiple_of(2)
            && text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or(0))
                .collect()
        } else {
            raw
        };
        FleetKey::new(bytes).map_err(|e| file_error(path, e))
    }

    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_le_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_le_bytes());
            m.update(p);
        }
        m.verify_slice(tag).is_ok()
    }
}
