//! The messages of the sync protocol.
//!
//! A connection goes through three phases:
//! 1. **Hello** (unauthenticated, small frames): both sides state protocol
//!    version, cluster name and node id, and send a fresh nonce.
//! 2. **Authentication**: each side proves knowledge of the shared secret with
//!    an HMAC over the whole hello transcript ([`Message::Proof`]); the dialer
//!    proves first. A wrong proof closes the connection without a word.
//! 3. **Sync** (authenticated): both sides announce themselves at once with a
//!    [`Message::Heartbeat`] (their claim of who is active), and keep doing so
//!    every heartbeat interval whatever else is going on (a long verify, a
//!    snapshot), then each declares the modules it runs
//!    ([`Message::Modules`]; see [`ModuleManifest`] for the rule the master
//!    applies to them). The backup states where it stands ([`Message::SyncRequest`]),
//!    the master answers with a [`Plan`], then streams [`Message::Entries`]
//!    (or a snapshot, paced by [`Message::SnapshotAck`]) and the backup
//!    acknowledges durably applied positions ([`Message::Ack`]). The backup
//!    may send a new `SyncRequest` at any time (a failed apply, an operator's
//!    resync): the master drops what it was sending and plans again.
//! 4. **Repair** (while streaming, protocol 4): a backup whose scrubber found
//!    rows that do not match its recorded range digests asks for those
//!    buckets only ([`Message::RepairRequest`], with the hashes of the rows
//!    it holds there); the master answers with the rows it lacks and the
//!    hashes of the ones to drop ([`Message::RepairRows`], read at a
//!    position the backup reaches before applying it) or says why not
//!    ([`Message::RepairRefused`]).
//!
//! Every message travels as one frame: a version byte, then the postcard
//! encoding of [`Message`]. The variant order is part of the wire format:
//! append, never reorder.

use persist_core::store::{RangeMismatch, RepairSet};
use persist_core::{Digest, LogEntry};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
///
/// Version 3 added module manifests ([`Message::Modules`],
/// [`RefuseReason::ModuleMismatch`]); version 4 added ranged repair
/// ([`Message::RepairRequest`], [`Message::RepairRows`],
/// [`Message::RepairRefused`]); version 5 added the send time and its echo
/// to [`Message::Heartbeat`] (the witness's confirmation); version 6 ships
/// entry bodies as the store keeps them, packed when they are large (see
/// [`persist_core::log`]), which a version-5 peer cannot read. A peer of
/// another version is refused in the hello with
/// [`RefuseReason::ProtocolVersion`].
pub const PROTOCOL_VERSION: u16 = 6;

/// A node's configured role in the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// No pair: always active, no link.
    Independent,
    /// Holds the official configuration and serves the log.
    Master,
    /// Follows the master; takes over when it fails.
    Backup,
}

/// One module a node runs: a named set of record types, as the host
/// declares it in [`SyncConfig::modules`](crate::worker::SyncConfig::modules).
///
/// Both nodes send their manifests right after authenticating
/// ([`Message::Modules`]), and the master compares them
/// ([`compare_modules`](crate::engine::plan::compare_modules)) before
/// anything else of a sync request:
/// - **the same name and `schema`, different versions**: accepted. The
///   module's records are the same, so replication, switchover and failover
///   go on (a code-only upgrade, one node after the other: a rolling
///   upgrade). Both nodes show the difference in their state
///   (`module_warnings`, next to the `peer_modules` the peer declared) and
///   log it once per link.
/// - **a module on one node only, or the same name with a different
///   `schema`**: refused with [`RefuseReason::ModuleMismatch`], which names
///   the module and both versions (this check comes before the store's
///   global schema fingerprint, so the operator reads a name rather than two
///   numbers). Both nodes show the refusal. The refused backup keeps its
///   data, stays standby while the master answers (a refusal is a sign of
///   life), and takes over if the master dies.
///
/// Two nodes that declare no modules behave as before modules existed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModuleManifest {
    /// The module's name (unique on a node).
    pub name: String,
    /// The module's version, shown to operators; never compared for order.
    pub version: String,
    /// Fingerprint of the module's record definitions, computed by the host
    /// (opaque here: only equality counts).
    pub schema: u128,
}

impl ModuleManifest {
    /// A manifest.
    pub fn new(name: impl Into<String>, version: impl Into<String>, schema: u128) -> Self {
        ModuleManifest {
            name: name.into(),
            version: version.into(),
            schema,
        }
    }
}

/// Which end of the link a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkRole {
    /// The node that dials (the backup).
    Dialer,
    /// The node that accepts (the master).
    Acceptor,
}

/// Why a connection was refused; shown in both nodes' state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The peers speak different protocol versions.
    ProtocolVersion {
        /// The refusing side's version.
        ours: u16,
        /// The version the peer announced.
        theirs: u16,
    },
    /// The peers belong to different clusters.
    ClusterName,
    /// The registered record schemas differ (fingerprints attached).
    SchemaMismatch {
        /// The refusing side's fingerprint.
        ours: u128,
        /// The peer's fingerprint.
        theirs: u128,
    },
    /// The acceptor is not the master (it cannot serve a log).
    NotMaster,
    /// Another backup is already connected.
    Busy,
    /// Both nodes are configured as master: neither may accept config writes
    /// until an operator fixes the configuration.
    DualMaster,
    /// The peer broke the protocol (unexpected message).
    Protocol(String),
    /// A module is on one node only, or its records differ between the
    /// nodes (see [`ModuleManifest`]). Sent by the master. Boxed: the
    /// other reasons are small, and so stay the errors that carry one.
    ModuleMismatch(Box<ModuleMismatch>),
}

/// What [`RefuseReason::ModuleMismatch`] says: the module, its version on
/// each node, and the nodes, so both show the same text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleMismatch {
    /// The module's name.
    pub module: String,
    /// Its version on the refusing node (`None`: not installed there).
    pub ours: Option<String>,
    /// Its version on the refused node (`None`: not installed there).
    pub theirs: Option<String>,
    /// The refusing node's id.
    pub ours_node: String,
    /// The refused node's id.
    pub theirs_node: String,
}

impl std::fmt::Display for ModuleMismatch {
    /// E.g. "module `alarms`: 1.1.0 on gw-a, 1.0.0 on gw-b, and its records
    /// differ", or "module `counters` 1.0.0 is installed on gw-a only".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ModuleMismatch {
            module,
            ours,
            theirs,
            ours_node,
            theirs_node,
        } = self;
        match (ours, theirs) {
            (Some(o), Some(t)) if o == t => write!(
                f,
                "module `{module}` {o}: its records differ between {ours_node} and {theirs_node}"
            ),
            (Some(o), Some(t)) => write!(
                f,
                "module `{module}`: {o} on {ours_node}, {t} on {theirs_node}, \
                 and its records differ"
            ),
            (Some(o), None) => write!(f, "module `{module}` {o} is installed on {ours_node} only"),
            (None, Some(t)) => {
                write!(
                    f,
                    "module `{module}` {t} is installed on {theirs_node} only"
                )
            }
            (None, None) => write!(f, "module `{module}` is installed on neither node"),
        }
    }
}

impl std::fmt::Display for RefuseReason {
    /// What an operator reads: the same text on both nodes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseReason::ProtocolVersion { ours, theirs } => write!(
                f,
                "protocol version {theirs} refused by a node speaking version {ours}: \
                 run releases of the same protocol on both nodes"
            ),
            RefuseReason::ClusterName => f.write_str("the nodes belong to different clusters"),
            RefuseReason::SchemaMismatch { ours, theirs } => write!(
                f,
                "the record schemas differ (fingerprint {ours:032x} on the refusing node, \
                 {theirs:032x} on the refused one)"
            ),
            RefuseReason::NotMaster => f.write_str("the node dialed is not the master"),
            RefuseReason::Busy => f.write_str("another backup is already connected"),
            RefuseReason::DualMaster => f.write_str("both nodes are configured as master"),
            RefuseReason::Protocol(detail) => write!(f, "protocol violation: {detail}"),
            RefuseReason::ModuleMismatch(m) => m.fmt(f),
        }
    }
}

/// A table in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTable {
    /// Table name.
    pub name: String,
    /// Rows the table holds in the snapshot.
    pub rows: u64,
}

/// The master's answer to a [`Message::SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Plan {
    /// Log entries follow, starting at `from` (the backup's position + 1).
    Incremental {
        /// First position that will be sent.
        from: u64,
        /// The master's history: a fresh backup (position 0) adopts it, as it
        /// is about to replay the master's log from its first entry.
        history: String,
    },
    /// A full snapshot follows.
    Snapshot {
        /// Why incremental shipping was not possible.
        reason: ResyncReason,
    },
}

/// Why the master sends a full snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResyncReason {
    /// The backup belongs to another data history (another master's database).
    DifferentHistory,
    /// The backup claims a position the master never reached.
    AheadOfMaster,
    /// Digests differ at the same position.
    DigestMismatch,
    /// The backup needs entries the master no longer retains.
    EntriesTrimmed,
    /// An entry failed to apply on the backup.
    ApplyFailed(String),
    /// An operator asked for it.
    Requested,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message of each side.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        protocol: u16,
        /// Cluster name; both nodes of a pair use the same.
        cluster: String,
        /// The sender's node id.
        node_id: String,
        /// Which end the sender is.
        role: LinkRole,
        /// Fresh random challenge.
        nonce: [u8; 32],
    },
    /// HMAC-SHA256 over the hello transcript, keyed with the shared secret.
    Proof {
        /// The MAC.
        mac: [u8; 32],
    },
    /// The connection is refused; the sender closes it after this.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
    /// Backup to master: where the backup stands.
    SyncRequest {
        /// Fingerprint of the backup's registered schema.
        schema: u128,
        /// The backup's data history id.
        history: String,
        /// The backup's last applied position.
        position: u64,
        /// The backup's digest at that position (recomputed from its rows).
        digest: Digest,
        /// The highest epoch the backup has seen.
        epoch: u64,
        /// Ask for a full snapshot regardless.
        force_snapshot: Option<ResyncReason>,
        /// The requester's configured role (a master probing its peer says
        /// Master, so two masters find each other).
        role: NodeRole,
    },
    /// Master to backup: what follows.
    SyncPlan(Plan),
    /// Master to backup: consecutive log entries.
    Entries(Vec<LogEntry>),
    /// Backup to master: every position up to this one is durably applied.
    Ack {
        /// Last durably applied position.
        position: u64,
    },
    /// Master to backup: a snapshot begins.
    SnapshotBegin {
        /// The master's history id (the backup adopts it).
        history: String,
        /// The log position the snapshot represents.
        position: u64,
        /// The digest at that position.
        digest: Digest,
        /// The epoch of the master.
        epoch: u64,
        /// Tables and their row counts.
        tables: Vec<SnapshotTable>,
    },
    /// Master to backup: row images of one table (index into `SnapshotBegin::tables`).
    SnapshotRows {
        /// Table index.
        table: u32,
        /// Encoded row images.
        rows: Vec<Vec<u8>>,
    },
    /// Master to backup: the snapshot is complete.
    SnapshotEnd,
    /// Either way: liveness (independent of TCP timeouts) and the sender's
    /// view of who is active.
    Heartbeat {
        /// The sender's epoch.
        epoch: u64,
        /// The sender's last log position.
        position: u64,
        /// The sender's configured role.
        role: NodeRole,
        /// The node the sender holds active at `epoch` (`None`: undecided).
        active: Option<String>,
        /// When the sender sent it, by its own monotonic clock (µs).
        sent: u64,
        /// The newest `sent` the sender has heard from the receiver on this
        /// link (0: none yet): the receiver learns, by its own clock, how
        /// fresh the sender's view is, whatever waited on the way.
        echo: u64,
    },
    /// From the active node: the full runtime state of one provider.
    RuntimeFull {
        /// Provider id.
        provider: String,
        /// The sender's epoch.
        epoch: u64,
        /// Sequence number of the last update the state includes.
        seq: u64,
        /// The provider's encoded state.
        state: Vec<u8>,
    },
    /// From the active node: one update of one provider.
    RuntimeUpdate {
        /// Provider id.
        provider: String,
        /// The sender's epoch.
        epoch: u64,
        /// The update's sequence number (one more than the previous).
        seq: u64,
        /// The provider's encoded update.
        update: Vec<u8>,
    },
    /// From the standby: its copy of a provider's state is broken (a gap or a
    /// failed apply); send a full state.
    RuntimeResend {
        /// Provider id.
        provider: String,
    },
    /// From the backup: history it buffered while active, in order.
    HistoryBatch {
        /// The node that recorded the items.
        origin: String,
        /// The items.
        items: Vec<persist_core::HistoryItem>,
    },
    /// From the master: every buffered item up to `seq` is delivered.
    HistoryAck {
        /// Last delivered sequence number.
        seq: u64,
    },
    /// From the backup during a snapshot: this many `SnapshotRows` frames
    /// are restored. The master sends only a few frames ahead of it, so the
    /// backup never has to stop reading the link (and hearing the master)
    /// because its store is slower than the network.
    SnapshotAck {
        /// Chunks restored so far in this snapshot.
        chunks: u64,
    },
    /// Either way, once per link right after authenticating: the modules the
    /// sender runs (see [`ModuleManifest`]).
    Modules(Vec<ModuleManifest>),
    /// Backup to master, while streaming: the rows of these buckets do not
    /// match their recorded digests here; `hashes` are the row hashes the
    /// backup holds in them, per table. At most one is out at a time.
    RepairRequest {
        /// The buckets, per table.
        ranges: Vec<RangeMismatch>,
        /// The backup's row hashes in those buckets, per table.
        hashes: Vec<(String, Vec<u128>)>,
    },
    /// Master to backup: the answer to a [`Message::RepairRequest`], read at
    /// `position` (the backup applies it once it has applied that position).
    RepairRows {
        /// The master's position when it read the rows.
        position: u64,
        /// The rows the backup lacks and the hashes of those it should drop.
        set: RepairSet,
    },
    /// Master to backup: a [`Message::RepairRequest`] is not answered with rows.
    RepairRefused {
        /// Why.
        reason: RepairRefusal,
    },
}

/// Why a master does not answer a repair request with rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepairRefusal {
    /// The master's own rows in these buckets do not match its recorded
    /// digests: they are not shipped as truth (an operator decides).
    MasterDiverged(Vec<RangeMismatch>),
    /// More rows differ than a repair ships: the backup asks for a snapshot.
    TooLarge {
        /// Rows that would travel.
        rows: u64,
        /// The master's limit.
        max: u64,
    },
    /// The master could not read the rows (its store failed); try later.
    Unavailable(String),
}

impl std::fmt::Display for RepairRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepairRefusal::MasterDiverged(m) => {
                let buckets: usize = m.iter().map(|t| t.buckets.len()).sum();
                let tables: Vec<&str> = m.iter().map(|t| t.table.as_str()).collect();
                write!(
                    f,
                    "the master's own rows do not match its digest ({buckets} range(s) of {}): \
                     not shipped; an operator must decide which node is right",
                    tables.join(", ")
                )
            }
            RepairRefusal::TooLarge { rows, max } => {
                write!(f, "{rows} rows differ, more than a repair ships ({max})")
            }
            RepairRefusal::Unavailable(e) => write!(f, "the master could not read the rows: {e}"),
        }
    }
}

impl Message {
    /// The variant's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Proof { .. } => "Proof",
            Message::Refused { .. } => "Refused",
            Message::SyncRequest { .. } => "SyncRequest",
            Message::SyncPlan(_) => "SyncPlan",
            Message::Entries(_) => "Entries",
            Message::Ack { .. } => "Ack",
            Message::SnapshotBegin { .. } => "SnapshotBegin",
            Message::SnapshotRows { .. } => "SnapshotRows",
            Message::SnapshotEnd => "SnapshotEnd",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::RuntimeFull { .. } => "RuntimeFull",
            Message::RuntimeUpdate { .. } => "RuntimeUpdate",
            Message::RuntimeResend { .. } => "RuntimeResend",
            Message::HistoryBatch { .. } => "HistoryBatch",
            Message::HistoryAck { .. } => "HistoryAck",
            Message::SnapshotAck { .. } => "SnapshotAck",
            Message::Modules(_) => "Modules",
            Message::RepairRequest { .. } => "RepairRequest",
            Message::RepairRows { .. } => "RepairRows",
            Message::RepairRefused { .. } => "RepairRefused",
        }
    }
}
