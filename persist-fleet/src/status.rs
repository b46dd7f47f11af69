//! The fleet as the central node sees it: every edge's last status, and
//! whether its digest agrees with the central one at its position.

use futures_util::StreamExt;

use crate::config::FleetConfig;
use crate::edge::EdgeStatus;
use crate::error::{bounded, Result};
use crate::nats::Fleet;
use crate::wire::{digest_hex, open_entry, MAC_HEADER};

/// One edge in the fleet view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeView {
    /// What the edge last reported.
    pub status: EdgeStatus,
    /// `Some(true)` when its digest is the central one at its position,
    /// `Some(false)` when it differs, `None` when the entry at its position
    /// is no longer in the stream (or it applied nothing yet).
    pub digest_agrees: Option<bool>,
    /// Milliseconds since it last reported (by this machine's clock).
    pub age_ms: u64,
}

/// Reads every edge's status from the fleet's status bucket (for the
/// central operator surface), sorted by edge name. Bounded by the request
/// timeout per NATS call. It opens a NATS connection for the one read: a
/// surface that asks again and again keeps a [`StatusReader`].
pub async fn fleet_status(config: &FleetConfig) -> Result<Vec<EdgeView>> {
    read(&Fleet::connect(config).await?).await
}

/// Reads the fleet's status over one NATS connection, kept from read to
/// read: the central operator surface asks on every page load, and a
/// connection per load is a TCP connection, a handshake and a JetStream
/// lookup each time. Opened at the first read and again after a read that
/// failed (the server restarted, say). Reads from several tasks take turns.
pub struct StatusReader {
    config: FleetConfig,
    fleet: tokio::sync::Mutex<Option<Fleet>>,
}

impl std::fmt::Debug for StatusReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusReader")
            .field("cluster", &self.config.cluster)
            .finish_non_exhaustive()
    }
}

impl StatusReader {
    /// A reader of the fleet `config` names; it connects at its first read.
    pub fn new(config: FleetConfig) -> StatusReader {
        StatusReader {
            config,
            fleet: tokio::sync::Mutex::new(None),
        }
    }

    /// What [`fleet_status`] reads, over the kept connection.
    pub async fn read(&self) -> Result<Vec<EdgeView>> {
        let mut slot = self.fleet.lock().await;
        let fleet = match slot.take() {
            Some(f) => f,
            None => Fleet::connect(&self.config).await?,
        };
        let r = read(&fleet).await;
        if r.is_ok() {
            *slot = Some(fleet);
        }
        r
    }
}

async fn read(fleet: &Fleet) -> Result<Vec<EdgeView>> {
    let config = &fleet.cfg;
    let kv = fleet.status_bucket().await?;
    let stream = fleet.stream(false).await.ok();
    let t = fleet.t();
    let keys: Vec<String> = bounded("status keys", t, async {
        let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            out.push(k.map_err(|e| e.to_string())?);
        }
        Ok::<_, String>(out)
    })
    .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for key in keys {
        let Some(bytes) = bounded("status get", t, kv.get(&key)).await? else {
            continue;
        };
        let Ok(status) = serde_json::from_slice::<EdgeStatus>(&bytes) else {
            tracing::warn!("fleet status: edge {key} wrote an unreadable status");
            continue;
        };
        let mut agrees = None;
        if let (Some(stream), true) = (&stream, status.stream_seq > 0) {
            if let Ok(msg) =
                bounded("status entry", t, stream.get_raw_message(status.stream_seq)).await
            {
                let mac = msg.headers.get(MAC_HEADER).map(|v| v.as_str().to_owned());
                if let Ok(entry) = open_entry(
                    &fleet.key,
                    &config.cluster,
                    &msg.payload,
                    mac.as_deref(),
                    "status",
                ) {
                    if entry.position == status.position {
                        agrees = Some(digest_hex(entry.digest) == status.digest);
                    }
                }
            }
        }
        out.push(EdgeView {
            age_ms: now.saturating_sub(status.last_seen_ms),
            status,
            digest_agrees: agrees,
        });
    }
    out.sort_by(|a, b| a.status.edge.cmp(&b.status.edge));
    Ok(out)
}
