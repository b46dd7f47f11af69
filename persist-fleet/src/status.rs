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
/// timeout per NATS call.
pub async fn fleet_status(config: &FleetConfig) -> Result<Vec<EdgeView>> {
    let fleet = Fleet::connect(config).await?;
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
