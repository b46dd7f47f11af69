//! What goes over NATS: entries (one message each) and snapshots (one
//! object each), both authenticated with the fleet key.
//!
//! An entry message's payload is the postcard encoding of [`FleetEntry`];
//! its headers carry `Nats-Msg-Id` (the fleet position, so a re-sent entry is
//! dropped by JetStream's de-duplication), `Persist-Position`,
//! `Persist-Digest` (hex), `Persist-Epoch` (for people and tools; the edge
//! trusts only the authenticated payload) and `Persist-Mac`: hex
//! HMAC-SHA256 over the cluster name, the kind and the payload. A snapshot
//! object is the 32-byte MAC followed by the postcard encoding of
//! [`FleetSnapshot`].

use persist_core::Digest;
use serde::{Deserialize, Serialize};

use crate::config::FleetKey;
use crate::error::{FleetError, Result};

/// The header carrying an entry's MAC.
pub const MAC_HEADER: &str = "Persist-Mac";
/// The header carrying an entry's fleet position (informative).
pub const POSITION_HEADER: &str = "Persist-Position";
/// The header carrying an entry's shared digest in hex (informative).
pub const DIGEST_HEADER: &str = "Persist-Digest";
/// The header carrying an entry's epoch (informative).
pub const EPOCH_HEADER: &str = "Persist-Epoch";

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    /// Row changes of shared tables, in the log body format
    /// (`persist_core::log`), applied as one transaction.
    Changes(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// Load the snapshot taken at this entry's position (a change too large
    /// for one message, or a resynchronisation).
    Rebase,
}

/// One fleet entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEntry {
    /// The fleet position: dense, from 1; the JetStream sequence too.
    pub position: u64,
    /// The central node's log position this entry brings the shared data to.
    pub source_position: u64,
    /// The central node's epoch when it published.
    pub epoch: u64,
    /// Commit time on the central node (µs since the Unix epoch).
    pub committed_at: i64,
    /// The digest of the shared tables after this entry.
    pub digest: Digest,
    /// What it does.
    pub body: EntryBody,
}

/// The shared tables at one fleet position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSnapshot {
    /// The fleet position the rows correspond to.
    pub position: u64,
    /// The central log position.
    pub source_position: u64,
    /// The central epoch.
    pub epoch: u64,
    /// The digest of the rows.
    pub digest: Digest,
    /// The stream sequence at or after which entries later than `position`
    /// are found (an edge that loaded the snapshot consumes from the next one).
    pub stream_seq: u64,
    /// Per shared table: its name and row images (key order).
    pub tables: Vec<(String, Vec<Vec<u8>>)>,
}

mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        // postcard encodes bytes as a length and the bytes: a `&[u8]` borrow
        // is the cheapest read.
        let b: &[u8] = Deserialize::deserialize(d)?;
        Ok(b.to_vec())
    }
}

/// Hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of hex; `None` when not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hex of a digest (big-endian, as people read a number).
pub fn digest_hex(d: Digest) -> String {
    format!("{:032x}", d.0)
}

/// The largest payload decoded (a bound on what a hostile message can make
/// us allocate: postcard checks lengths against the input anyway).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Encodes an entry and its MAC.
pub fn seal_entry(key: &FleetKey, cluster: &str, entry: &FleetEntry) -> (Vec<u8>, String) {
    let payload = postcard::to_allocvec(entry).unwrap_or_default();
    let mac = key.mac(&[cluster.as_bytes(), b"entry", &payload]);
    (payload, hex(&mac))
}

/// Checks an entry message's MAC and decodes it; refuses anything else.
pub fn open_entry(
    key: &FleetKey,
    cluster: &str,
    payload: &[u8],
    mac_hex: Option<&str>,
    what: &str,
) -> Result<FleetEntry> {
    let refuse = |reason: &str| FleetError::Refused {
        what: what.to_owned(),
        reason: reason.to_owned(),
    };
    let mac = mac_hex
        .and_then(unhex)
        .ok_or_else(|| refuse("no valid Persist-Mac header"))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(refuse("payload too large"));
    }
    if !key.verify(&[cluster.as_bytes(), b"entry", payload], &mac) {
        return Err(refuse("MAC does not verify under the fleet key"));
    }
    postcard::from_bytes(payload).map_err(|e| refuse(&format!("undecodable entry: {e}")))
}

/// Encodes a snapshot object (MAC first).
pub fn seal_snapshot(key: &FleetKey, cluster: &str, snap: &FleetSnapshot) -> Vec<u8> {
    let payload = postcard::to_allocvec(snap).unwrap_or_default();
    let mac = key.mac(&[cluster.as_bytes(), b"snapshot", &payload]);
    let mut out = Vec::with_capacity(32 + payload.len());
    out.extend_from_slice(&mac);
    out.extend_from_slice(&payload);
    out
}

/// Checks a snapshot object's MAC and decodes it.
pub fn open_snapshot(
    key: &FleetKey,
    cluster: &str,
    bytes: &[u8],
    what: &str,
) -> Result<FleetSnapshot> {
    let refuse = |reason: String| FleetError::Refused {
        what: what.to_owned(),
        reason,
    };
    if bytes.len() < 32 {
        return Err(refuse("shorter than its MAC".into()));
    }
    let (mac, payload) = bytes.split_at(32);
    if !key.verify(&[cluster.as_bytes(), b"snapshot", payload], mac) {
        return Err(refuse("MAC does not verify under the fleet key".into()));
    }
    postcard::from_bytes(payload).map_err(|e| refuse(format!("undecodable snapshot: {e}")))
}

/// The object name of the snapshot at `position` whose entries go on after
/// stream sequence `stream_seq` (names sort by position).
pub fn snapshot_name(position: u64, stream_seq: u64) -> String {
    format!("snapshot-{position:020}-{stream_seq:020}")
}

/// The position and stream sequence in a snapshot object name.
pub fn snapshot_position(name: &str) -> Option<(u64, u64)> {
    let (p, s) = name.strip_prefix("snapshot-")?.split_once('-')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FleetKey {
        FleetKey::new(vec![7u8; 32]).unwrap()
    }

    #[test]
    fn an_entry_round_trips_and_a_changed_byte_is_refused() {
        let e = FleetEntry {
            position: 3,
            source_position: 9,
            epoch: 2,
            committed_at: 1,
            digest: Digest(42),
            body: EntryBody::Changes(vec![1, 2, 3]),
        };
        let (mut payload, mac) = seal_entry(&key(), "c", &e);
        assert_eq!(
            open_entry(&key(), "c", &payload, Some(&mac), "m").unwrap(),
            e
        );
        // Another cluster's key context, a missing MAC, a flipped byte: refused.
        assert!(open_entry(&key(), "d", &payload, Some(&mac), "m").is_err());
        assert!(open_entry(&key(), "c", &payload, None, "m").is_err());
        let last = payload.len() - 1;
        payload[last] ^= 1;
        let err = open_entry(&key(), "c", &payload, Some(&mac), "m").unwrap_err();
        assert!(err.to_string().contains("MAC does not verify"), "{err}");
    }

    #[test]
    fn a_snapshot_round_trips_and_garbage_is_refused() {
        let s = FleetSnapshot {
            position: 5,
            source_position: 7,
            epoch: 1,
            digest: Digest(1),
            stream_seq: 4,
            tables: vec![("t".into(), vec![vec![1], vec![2]])],
        };
        let bytes = seal_snapshot(&key(), "c", &s);
        assert_eq!(open_snapshot(&key(), "c", &bytes, "s").unwrap(), s);
        assert!(open_snapshot(&key(), "c", &bytes[..10], "s").is_err());
        assert!(open_snapshot(&FleetKey::new(vec![8u8; 32]).unwrap(), "c", &bytes, "s").is_err());
        assert_eq!(snapshot_position(&snapshot_name(77, 80)), Some((77, 80)));
    }
}
