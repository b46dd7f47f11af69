//! The witness lease in a JetStream key-value bucket: the `[witness]`
//! section of a node's configuration (checked against the pair's failover
//! timeout before anything starts) and [`NatsWitness`], which carries out
//! the lease requests of a node. The decisions are
//! [`persist_sync::redundancy::witness::Lease`], in the node core.
//!
//! # The bucket
//! One key per pair (`key`), its value the holder's node id. The bucket's
//! `max_age` is the lease's TTL, so the server forgets a lease nobody
//! renews; file storage, so a restarted server still remembers who holds
//! it (a server that forgot would let the backup take a lease the master
//! still counts on). Acquiring is a create (only if absent), renewing an
//! update on the revision held (compare-and-set), releasing a delete on it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use persist_sync::redundancy::witness::{LeaseAction, LeaseEvent, WitnessClient, WitnessSettings};
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
    crate::config::check_name(&format!("[witness] {setting}"), v)
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

/// A node's way to the witness: a NATS connection (made on the first
/// request, then kept and redialed by the client) and the lease bucket.
pub struct NatsWitness {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: WitnessConfig,
    node_id: String,
    settings: WitnessSettings,
    conn: tokio::sync::Mutex<Conn>,
}

#[derive(Default)]
struct Conn {
    js: Option<jetstream::Context>,
    bucket: Option<kv::Store>,
}

impl std::fmt::Debug for NatsWitness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsWitness")
            .field("url", &self.inner.cfg.url)
            .field("bucket", &self.inner.cfg.bucket)
            .field("key", &self.inner.cfg.key)
            .finish_non_exhaustive()
    }
}

fn unreachable(seq: u64, e: impl std::fmt::Display) -> LeaseEvent {
    LeaseEvent::Unreachable {
        seq,
        error: e.to_string(),
    }
}

impl NatsWitness {
    /// A witness for node `node_id` with `settings` (from
    /// [`WitnessConfig::settings`]). Nothing is dialed yet: a node starts
    /// while NATS is down, and its lease requests answer "unreachable" until
    /// it is up.
    pub fn new(cfg: WitnessConfig, node_id: impl Into<String>, settings: WitnessSettings) -> Self {
        NatsWitness {
            inner: Arc::new(Inner {
                cfg,
                node_id: node_id.into(),
                settings,
                conn: tokio::sync::Mutex::new(Conn::default()),
            }),
        }
    }
}

impl Inner {
    async fn connect(&self) -> Result<jetstream::Context> {
        let cfg = &self.cfg;
        let opts =
            crate::config::credentials(cfg.credentials_file.as_deref(), cfg.nkey_file.as_deref())
                .await?;
        let t = self.settings.request_timeout;
        // Redial soon after the server returns: a lease is worth as much
        // as the time left to renew it.
        let most = self.settings.renew_every.max(Duration::from_millis(10));
        let opts = opts
            .connection_timeout(t)
            .request_timeout(Some(t))
            .retry_on_initial_connect()
            .reconnect_delay_callback(move |attempts| {
                (Duration::from_millis(50) * attempts.min(1000) as u32).min(most)
            })
            .name(format!("persist witness {}", self.node_id));
        let client = crate::error::bounded("connect", t, opts.connect(cfg.url.as_str())).await?;
        let mut js = jetstream::new(client);
        js.set_timeout(t);
        Ok(js)
    }

    /// The bucket, created with the lease's TTL if absent; one whose TTL
    /// differs from this node's is refused by name (the nodes of a pair
    /// must agree on how long a lease lives).
    async fn bucket(&self) -> Result<kv::Store> {
        let mut conn = self.conn.lock().await;
        if let Some(b) = &conn.bucket {
            return Ok(b.clone());
        }
        if conn.js.is_none() {
            conn.js = Some(self.connect().await?);
        }
        let js = conn.js.clone().expect("connected above");
        let t = self.settings.request_timeout;
        let name = &self.cfg.bucket;
        let store = crate::nats::kv_bucket(&js, &self.cfg.bucket, self.settings.ttl, t).await?;
        let status = store.status().await.map_err(|e| FleetError::Nats {
            op: "witness bucket status",
            reason: e.to_string(),
        })?;
        if status.max_age() != self.settings.ttl {
            return Err(FleetError::Config(format!(
                "[witness] ttl_ms: the bucket `{name}` keeps leases for {} ms, this node's ttl_ms is {}; give both nodes of the pair the same ttl_ms (or remove the bucket)",
                status.max_age().as_millis(),
                self.settings.ttl.as_millis()
            )));
        }
        conn.bucket = Some(store.clone());
        Ok(store)
    }

    /// Carries out `action`; after a failure the bucket is looked up again
    /// at the next request (a server restarted without its store has none).
    async fn request(&self, action: LeaseAction) -> LeaseEvent {
        let event = self.carry_out(action).await;
        if matches!(event, LeaseEvent::Unreachable { .. }) {
            self.conn.lock().await.bucket = None;
        }
        event
    }

    async fn carry_out(&self, action: LeaseAction) -> LeaseEvent {
        let seq = action.seq();
        let kv = match self.bucket().await {
            Ok(kv) => kv,
            Err(e) => return unreachable(seq, e),
        };
        let key = self.cfg.key.as_str();
        let me = bytes::Bytes::from(self.node_id.clone().into_bytes());
        match action {
            LeaseAction::TryAcquire { .. } => match kv.create(key, me.clone()).await {
                Ok(revision) => LeaseEvent::Held { seq, revision },
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    self.held_by(&kv, seq).await
                }
                Err(e) => unreachable(seq, format!("acquire the lease: {e}")),
            },
            LeaseAction::Renew { revision, .. } => match kv.update(key, me, revision).await {
                Ok(revision) => LeaseEvent::Held { seq, revision },
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.held_by(&kv, seq).await
                }
                Err(e) => unreachable(seq, format!("renew the lease: {e}")),
            },
            LeaseAction::Release { revision, .. } => {
                match kv.delete_expect_revision(key, Some(revision)).await {
                    Ok(()) => LeaseEvent::Released { seq },
                    // Somebody else's already, or gone: not ours either way.
                    Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                        LeaseEvent::Released { seq }
                    }
                    Err(e) => unreachable(seq, format!("release the lease: {e}")),
                }
            }
        }
    }

    /// The lease was not where this node expected it: who holds it now.
    /// This node's own lease (an answer lost on the way, a restart within
    /// the TTL) is renewed on the revision found.
    async fn held_by(&self, kv: &kv::Store, seq: u64) -> LeaseEvent {
        let key = self.cfg.key.as_str();
        let entry = match kv.entry(key).await {
            Ok(e) => e,
            Err(e) => return unreachable(seq, format!("read the lease: {e}")),
        };
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let holder = String::from_utf8_lossy(&e.value).into_owned();
                if holder != self.node_id {
                    return LeaseEvent::Taken {
                        seq,
                        holder,
                        revision: e.revision,
                    };
                }
                let me = bytes::Bytes::from(self.node_id.clone().into_bytes());
                match kv.update(key, me, e.revision).await {
                    Ok(revision) => LeaseEvent::Held { seq, revision },
                    Err(e) => unreachable(seq, format!("renew the lease: {e}")),
                }
            }
            // Nobody holds it (expired or released since): take it, as an
            // acquire would. The node counts the lease from when it asked,
            // which is before this create.
            _ => match kv
                .create(key, bytes::Bytes::from(self.node_id.clone().into_bytes()))
                .await
            {
                Ok(revision) => LeaseEvent::Held { seq, revision },
                Err(e) => unreachable(seq, format!("acquire the lease: {e}")),
            },
        }
    }
}

impl WitnessClient for NatsWitness {
    fn request(&self, action: LeaseAction) -> Pin<Box<dyn Future<Output = LeaseEvent> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.request(action).await })
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
