//! The wire codec: one [`Message`] per frame.
//!
//! # Frame format
//! ```text
//! u8     wire version (WIRE_VERSION = 1)
//! bytes  postcard encoding of Message
//! ```
//! The transport delimits frames; a frame carries exactly one message, with
//! no trailing bytes.
//!
//! # Limits
//! Frames come from the network, so [`decode`] treats every size in them as
//! hostile:
//! - the frame length is checked against [`Limits::max_frame`] first (the
//!   transport has already refused anything longer before reading it);
//! - before postcard runs, the element counts of the sequences that could
//!   expand (entries, snapshot rows, snapshot tables, module manifests) are read from the frame
//!   and checked against [`Limits::max_items`] and against the bytes that
//!   remain, so a small frame cannot make the decoder allocate gigabytes of
//!   empty structs;
//! - strings cannot allocate more than the frame holds; their lengths are
//!   checked against [`Limits::max_string`] after decoding;
//! - [`Message::Entries`] must hold strictly consecutive positions, and no
//!   body may state an unpacked length beyond [`Limits::max_frame`].
//!
//! Entry bodies are not decoded here: the apply step unpacks a packed body
//! ([`persist_core::LogEntry::plain_body`], whose stated length is bounded
//! by what LZ4 can expand the bytes to) and decodes it with
//! [`persist_core::log::decode_body`], which bounds its own lengths.

use persist_core::LogEntry;
use thiserror::Error;

use crate::protocol::{Message, Plan, RefuseReason, RepairRefusal, ResyncReason};
use persist_core::store::BUCKETS;

/// The frame format version this build writes and reads.
pub const WIRE_VERSION: u8 = 1;

/// Size limits applied to frames received from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, version byte included, in bytes.
    pub max_frame: usize,
    /// Most elements in one sequence: entries per [`Message::Entries`], rows
    /// per [`Message::SnapshotRows`], tables per [`Message::SnapshotBegin`].
    pub max_items: usize,
    /// Longest string (cluster, node id, history, refusal detail, table
    /// name), in bytes.
    pub max_string: usize,
}

impl Limits {
    /// Limits for frames received before the peer is authenticated: only
    /// hellos, proofs and refusals are expected, so frames are tiny and carry
    /// no sequences.
    pub const fn handshake() -> Limits {
        Limits {
            max_frame: 4 * 1024,
            max_items: 0,
            max_string: 256,
        }
    }
}

impl Default for Limits {
    /// Limits for an authenticated peer: 64 MiB frames, 1M items per
    /// sequence, 64 KiB strings.
    fn default() -> Limits {
        Limits {
            max_frame: 64 * 1024 * 1024,
            max_items: 1_000_000,
            max_string: 64 * 1024,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The frame ends before the message does.
    #[error("truncated frame: the message ends past the end of the frame")]
    Truncated,
    /// The frame is not a valid encoding of a message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame was written by another wire version.
    #[error("unsupported wire version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// The version byte of the frame.
        found: u8,
        /// [`WIRE_VERSION`].
        supported: u8,
    },
    /// A size exceeds its [`Limits`].
    #[error("{what} too large: {size} exceeds the limit of {limit}")]
    TooLarge {
        /// What was measured ("frame", "entries", "cluster name", ...).
        what: &'static str,
        /// The size found.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An [`Message::Entries`] whose positions do not follow each other.
    #[error(
        "entries are not consecutive: entry {index} has position {found}, expected {expected}"
    )]
    NonConsecutive {
        /// Index of the offending entry in the message.
        index: usize,
        /// The position it should have had.
        expected: u64,
        /// The position it has.
        found: u64,
    },
}

/// Encodes a message into a frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    // Postcard into a Vec only fails for sequences of unknown length or
    // custom serializer errors; Message has neither. The version byte then
    // the message is the tuple's encoding; `to_allocvec` copies byte strings
    // at once (`to_extend` pushes them byte by byte).
    postcard::to_allocvec(&(WIRE_VERSION, msg))
        .expect("postcard cannot fail to serialize a Message into a Vec")
}

/// Decodes a frame received from a peer, enforcing `limits` (see the module
/// docs).
pub fn decode(frame: &[u8], limits: &Limits) -> Result<Message, CodecError> {
    check_size("frame", frame.len(), limits.max_frame)?;
    let (&version, body) = frame.split_first().ok_or(CodecError::Truncated)?;
    if version != WIRE_VERSION {
        return Err(CodecError::UnsupportedVersion {
            found: version,
            supported: WIRE_VERSION,
        });
    }
    prescan(body, limits)?;
    let (msg, rest) = postcard::take_from_bytes::<Message>(body).map_err(postcard_error)?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    check_message(&msg, limits)?;
    Ok(msg)
}

fn postcard_error(e: postcard::Error) -> CodecError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => CodecError::Truncated,
        other => CodecError::Malformed(other.to_string()),
    }
}

fn check_size(what: &'static str, size: usize, limit: usize) -> Result<(), CodecError> {
    if size > limit {
        return Err(CodecError::TooLarge {
            what,
            size: size as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

// Postcard variant indices of the messages holding sequences. They follow the
// declaration order of `Message`; `tests::prescan_reads_real_counts` fails if
// the enum is reordered.
const ENTRIES: u64 = 5;
const SNAPSHOT_BEGIN: u64 = 7;
const SNAPSHOT_ROWS: u64 = 8;
const MODULES: u64 = 17;

// Smallest encodings of one sequence element, to tell a count that cannot fit
// in the frame before postcard allocates for it.
const MIN_ENTRY_BYTES: usize = 5; // position, epoch, committed_at, digest, body length
const MIN_ROW_BYTES: usize = 1; // length
const MIN_TABLE_BYTES: usize = 2; // name length, rows
const MIN_MODULE_BYTES: usize = 3; // name length, version length, schema

/// Reads the element count of the expandable sequences before postcard does.
/// Anything it cannot parse is left to postcard to report.
fn prescan(body: &[u8], limits: &Limits) -> Result<(), CodecError> {
    let mut r = Scan { bytes: body };
    let Some(variant) = r.varint(5) else {
        return Ok(());
    };
    let (what, min_bytes) = match variant {
        ENTRIES => ("entries", MIN_ENTRY_BYTES),
        MODULES => ("module manifests", MIN_MODULE_BYTES),
        SNAPSHOT_ROWS => {
            if r.varint(5).is_none() {
                return Ok(());
            }
            ("snapshot rows", MIN_ROW_BYTES)
        }
        SNAPSHOT_BEGIN => {
            let skipped = r
                .varint(10)
                .and_then(|len| r.skip(len))
                .and_then(|()| r.varint(10)) // position
                .and_then(|_| r.varint(19)) // digest
                .and_then(|_| r.varint(10)); // epoch
            if skipped.is_none() {
                return Ok(());
            }
            ("snapshot tables", MIN_TABLE_BYTES)
        }
        _ => return Ok(()),
    };
    let Some(count) = r.varint(10) else {
        return Ok(());
    };
    check_count(what, count, limits.max_items)?;
    let room = (r.bytes.len() / min_bytes) as u64;
    if count > room {
        return Err(CodecError::Malformed(format!(
            "{count} {what} cannot fit in the {} bytes left",
            r.bytes.len()
        )));
    }
    Ok(())
}

fn check_count(what: &'static str, count: u64, limit: usize) -> Result<(), CodecError> {
    if count > limit as u64 {
        return Err(CodecError::TooLarge {
            what,
            size: count,
            limit: limit as u64,
        });
    }
    Ok(())
}

struct Scan<'a> {
    bytes: &'a [u8],
}

impl Scan<'_> {
    /// A postcard varint of at most `max_len` bytes.
    fn varint(&mut self, max_len: usize) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..max_len {
            let (&b, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            // Bits past 64 only matter for the u128 digest, which is skipped.
            if i < 10 {
                v |= u64::from(b & 0x7f).checked_shl(7 * i as u32).unwrap_or(0);
            }
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn skip(&mut self, len: u64) -> Option<()> {
        let len = usize::try_from(len).ok()?;
        self.bytes = self.bytes.get(len..)?;
        Some(())
    }
}

fn check_message(msg: &Message, limits: &Limits) -> Result<(), CodecError> {
    let string = |what, s: &str| check_size(what, s.len(), limits.max_string);
    match msg {
        Message::Hello {
            cluster, node_id, ..
        } => {
            string("cluster name", cluster)?;
            string("node id", node_id)?;
        }
        Message::Refused {
            reason: RefuseReason::Protocol(detail),
        } => string("refusal detail", detail)?,
        Message::Refused {
            reason: RefuseReason::ModuleMismatch(m),
        } => {
            string("module name", &m.module)?;
            for version in [&m.ours, &m.theirs].into_iter().flatten() {
                string("module version", version)?;
            }
            string("node id", &m.ours_node)?;
            string("node id", &m.theirs_node)?;
        }
        Message::SyncRequest {
            history,
            force_snapshot,
            ..
        } => {
            string("history id", history)?;
            if let Some(ResyncReason::ApplyFailed(detail)) = force_snapshot {
                string("resync detail", detail)?;
            }
        }
        Message::SyncPlan(Plan::Snapshot {
            reason: ResyncReason::ApplyFailed(detail),
        }) => string("resync detail", detail)?,
        Message::Entries(entries) => {
            check_count("entries", entries.len() as u64, limits.max_items)?;
            check_consecutive(entries)?;
            // A packed body states what it unpacks to: no more than a frame,
            // the bound a body had when bodies travelled unpacked, so a small
            // frame cannot make the apply allocate gigabytes.
            for e in entries {
                check_size("unpacked entry body", e.plain_len(), limits.max_frame)?;
            }
        }
        Message::SnapshotBegin {
            history, tables, ..
        } => {
            string("history id", history)?;
            check_count("snapshot tables", tables.len() as u64, limits.max_items)?;
            for t in tables {
                string("table name", &t.name)?;
            }
        }
        Message::SnapshotRows { rows, .. } => {
            check_count("snapshot rows", rows.len() as u64, limits.max_items)?;
        }
        Message::Heartbeat {
            active: Some(active),
            ..
        } => string("active node id", active)?,
        Message::RuntimeFull { provider, .. }
        | Message::RuntimeUpdate { provider, .. }
        | Message::RuntimeResend { provider } => string("runtime state provider id", provider)?,
        Message::HistoryBatch { origin, items } => {
            string("history origin", origin)?;
            check_count("history items", items.len() as u64, limits.max_items)?;
            for i in items {
                string("history kind", &i.kind)?;
            }
        }
        Message::Modules(modules) => {
            check_count("module manifests", modules.len() as u64, limits.max_items)?;
            for m in modules {
                string("module name", &m.name)?;
                string("module version", &m.version)?;
            }
        }
        Message::RepairRequest { ranges, hashes } => {
            check_count("repair ranges", ranges.len() as u64, limits.max_items)?;
            for r in ranges {
                string("table name", &r.table)?;
                check_count("repair buckets", r.buckets.len() as u64, limits.max_items)?;
                if let Some(b) = r.buckets.iter().find(|&&b| b as usize >= BUCKETS) {
                    return Err(CodecError::Malformed(format!(
                        "repair bucket {b} of {}: there are {BUCKETS}",
                        r.table
                    )));
                }
            }
            check_count("repair hash sets", hashes.len() as u64, limits.max_items)?;
            for (table, h) in hashes {
                string("table name", table)?;
                check_count("repair hashes", h.len() as u64, limits.max_items)?;
            }
        }
        Message::RepairRows { set, .. } => {
            check_count("repair rows", set.rows.len() as u64, limits.max_items)?;
            check_count("repair removals", set.remove.len() as u64, limits.max_items)?;
            for (table, _) in &set.rows {
                string("table name", table)?;
            }
            for (table, _) in &set.remove {
                string("table name", table)?;
            }
        }
        Message::RepairRefused { reason } => match reason {
            RepairRefusal::MasterDiverged(m) => {
                check_count("repair ranges", m.len() as u64, limits.max_items)?;
                for r in m {
                    string("table name", &r.table)?;
                }
            }
            RepairRefusal::Unavailable(detail) => string("repair refusal detail", detail)?,
            RepairRefusal::TooLarge { .. } => {}
        },
        Message::Proof { .. }
        | Message::Refused { .. }
        | Message::SyncPlan(_)
        | Message::Ack { .. }
        | Message::SnapshotEnd
        | Message::HistoryAck { .. }
        | Message::SnapshotAck { .. }
        | Message::Heartbeat { .. } => {}
    }
    Ok(())
}

fn check_consecutive(entries: &[LogEntry]) -> Result<(), CodecError> {
    for (index, pair) in entries.windows(2).enumerate() {
        let (prev, next) = (&pair[0], &pair[1]);
        if prev.position.checked_add(1) != Some(next.position) {
            return Err(CodecError::NonConsecutive {
                index: index + 1,
                // u64::MAX has no successor; report the wrapped value.
                expected: prev.position.wrapping_add(1),
                found: next.position,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ModuleManifest, SnapshotTable};
    use persist_core::Digest;

    fn entry(position: u64) -> LogEntry {
        LogEntry {
            position,
            epoch: 1,
            committed_at: 2,
            digest: Digest(3),
            body: vec![4],
        }
    }

    /// Entry bodies are written as byte strings (one copy, not a serde call
    /// per byte): the frames must be byte for byte what a sequence of `u8`
    /// gave, so nodes of either build understand each other.
    #[test]
    fn entry_bodies_keep_their_wire_format() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct SequenceBody {
            position: u64,
            epoch: u64,
            committed_at: i64,
            digest: Digest,
            body: Vec<u8>,
        }
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let e = LogEntry {
                body: (0..len).map(|i| (i * 7) as u8).collect(),
                ..entry(9)
            };
            let old = SequenceBody {
                position: e.position,
                epoch: e.epoch,
                committed_at: e.committed_at,
                digest: e.digest,
                body: e.body.clone(),
            };
            let bytes = postcard::to_allocvec(&old).unwrap();
            assert_eq!(
                postcard::to_allocvec(&e).unwrap(),
                bytes,
                "body of {len} bytes"
            );
            assert_eq!(postcard::from_bytes::<LogEntry>(&bytes).unwrap(), e);
            let msg = Message::Entries(vec![e.clone()]);
            let frame = encode(&msg);
            assert_eq!(
                frame,
                postcard::to_extend(&msg, vec![WIRE_VERSION]).unwrap(),
                "the version byte, then the message"
            );
            assert_eq!(
                decode(&frame, &Limits::default()),
                Ok(Message::Entries(vec![e]))
            );
        }
    }

    /// A packed body may not state more than a frame's worth of body: the
    /// frame is refused before anything is unpacked, whatever it holds.
    #[test]
    fn a_packed_body_stating_more_than_a_frame_is_refused() {
        let limits = Limits {
            max_frame: 64 * 1024,
            ..Limits::default()
        };
        let packed = |position, plain: usize| LogEntry {
            body: persist_core::log::pack_stored(vec![7; plain]),
            ..entry(position)
        };
        let fits = packed(1, 60 * 1024);
        assert!(fits.body.len() < 1024 && fits.plain_len() == 60 * 1024);
        let frame = encode(&Message::Entries(vec![fits.clone()]));
        assert_eq!(decode(&frame, &limits), Ok(Message::Entries(vec![fits])));
        let frame = encode(&Message::Entries(vec![entry(1), packed(2, 65 * 1024)]));
        assert!(frame.len() < 2048);
        assert_eq!(
            decode(&frame, &limits),
            Err(CodecError::TooLarge {
                what: "unpacked entry body",
                size: 65 * 1024,
                limit: 64 * 1024,
            })
        );
    }

    #[test]
    fn prescan_reads_real_counts() {
        // The prescan's variant indices and field walk must match the real
        // encoding: a limit of one item less than the real count must trip
        // the prescan (TooLarge), not postcard or the post-decode check.
        let msgs = [
            Message::Entries(vec![entry(1), entry(2), entry(3)]),
            Message::SnapshotRows {
                table: 300,
                rows: vec![vec![1], vec![], vec![2, 3]],
            },
            Message::SnapshotBegin {
                history: "h".repeat(200),
                position: u64::MAX,
                digest: Digest(u128::MAX),
                epoch: 1 << 40,
                tables: vec![
                    SnapshotTable {
                        name: "a".into(),
                        rows: 1,
                    },
                    SnapshotTable {
                        name: "b".into(),
                        rows: 2,
                    },
                    SnapshotTable {
                        name: "c".into(),
                        rows: 3,
                    },
                ],
            },
            Message::Modules(vec![
                ModuleManifest::new("alarms", "1.0.0", u128::MAX),
                ModuleManifest::new("", "", 0),
                ModuleManifest::new("counters", "2.1.0-rc.1", 7),
            ]),
        ];
        for msg in msgs {
            let frame = encode(&msg);
            let limits = Limits {
                max_items: 2,
                ..Limits::default()
            };
            assert!(
                matches!(
                    prescan(&frame[1..], &limits),
                    Err(CodecError::TooLarge { size: 3, .. })
                ),
                "{msg:?}"
            );
            assert_eq!(prescan(&frame[1..], &Limits::default()), Ok(()));
        }
    }
}
