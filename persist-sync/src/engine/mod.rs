//! The sync and redundancy decisions of one node, as a state machine without
//! I/O and without a clock: [`NodeCore`] takes `(now, input)` (a frame
//! arrived, a link closed, a store operation finished, a timer fired, an
//! operator asked for something) and answers with [`Output`]s (send this
//! frame, dial, run this store operation, report this acknowledgement).
//! The tokio drivers in [`crate::worker`] only carry out outputs and feed
//! inputs back; the simulator in `sim` does the same under virtual time,
//! so it exercises exactly the decisions production runs.
//!
//! - [`plan`]: the small pure decisions ([`compare_modules`], [`plan_sync`],
//!   [`SendWindow`], [`RetentionPolicy`]).
//! - `master`: the master's sessions (one per accepted link; the newest
//!   authenticated one serves) and its probe for a second master.
//! - `backup`: the backup's link: dialing with backoff, verify, request,
//!   restore, apply, history forwarding.
//! - [`NodeCore`]: both, the redundancy [`Machine`](crate::redundancy::Machine),
//!   durable claims, and what the node reports.

mod backup;
mod master;
mod node;
pub mod plan;
mod scrub;

use std::time::Duration;

use persist_core::store::{RangeMismatch, RangeRows, RepairOutcome, RepairSet, ScrubReport};
use persist_core::{Claim, Digest, HistoryItem, LogEntry, SnapshotHeader, Verification};

use crate::protocol::{Message, RefuseReason};

pub use node::{Command, CommandError, NodeCore, NodeParams, NodeReport, RedundancyReport, Role};
pub use plan::{
    compare_modules, plan_sync, BackupView, Decision, MasterView, ModuleConflict, RetentionPolicy,
    SendWindow, VersionSkew,
};
pub use scrub::{ScrubConfig, ScrubStatus};

/// A link of this node, numbered by the node (never reused).
pub type ConnId = u64;

/// A store operation of this node, numbered by the node.
pub type OpId = u64;

/// Something that happened to the node.
#[derive(Debug)]
pub enum Input {
    /// Master: a peer connected (transport-level; it still has to authenticate).
    Accepted {
        /// The new link.
        conn: ConnId,
        /// The remote address, for logs.
        addr: String,
    },
    /// Master: an incoming connection failed before it became a link (a
    /// TLS handshake failed, timed out, or was refused because too many
    /// were in progress). Counted as an unauthenticated client's failure.
    AcceptFailed {
        /// What happened (names the remote address where known).
        error: String,
    },
    /// A dial asked for with [`Output::Dial`] connected.
    Dialed {
        /// The link.
        conn: ConnId,
    },
    /// A dial asked for with [`Output::Dial`] failed.
    DialFailed {
        /// The link that was not made.
        conn: ConnId,
        /// Why.
        error: String,
    },
    /// A frame arrived and decoded.
    Frame {
        /// The link.
        conn: ConnId,
        /// The message.
        msg: Message,
    },
    /// A frame arrived that did not decode or broke a limit.
    Malformed {
        /// The link.
        conn: ConnId,
        /// What was wrong.
        error: String,
    },
    /// The link ended: closed by the peer (`error: None`) or failed.
    Closed {
        /// The link.
        conn: ConnId,
        /// The failure, if it was one.
        error: Option<String>,
    },
    /// Stream frames (`is_stream_frame`) handed over with [`Output::Send`]
    /// left for the network (other frames are not reported).
    Sent {
        /// The link.
        conn: ConnId,
        /// How many.
        frames: usize,
    },
    /// A store operation finished.
    Store {
        /// The operation.
        id: OpId,
        /// What it gave.
        result: StoreResult,
    },
    /// Master: the store's head moved to this position (a commit).
    Head(u64),
    /// Runtime state has something to send.
    RuntimeChanged,
    /// History was buffered and may be forwarded.
    HistoryChanged,
    /// Time passed (at [`NodeCore::deadline`], or whenever the driver likes).
    Tick,
    /// The witness answered a [`Output::Lease`] request.
    Lease(crate::redundancy::witness::LeaseEvent),
}

/// Something the node wants done.
#[derive(Debug)]
pub enum Output {
    /// Open a link to the peer (`probe`: to the address probed for a second
    /// master, not the master this backup follows).
    Dial {
        /// The number the link will have.
        conn: ConnId,
        /// Whether it is the dual-master probe.
        probe: bool,
    },
    /// Send a frame on a link (after those sent before).
    Send {
        /// The link.
        conn: ConnId,
        /// The message.
        msg: Message,
    },
    /// The peer of this link authenticated: frames up to the full limits
    /// may arrive from now on.
    Authenticated {
        /// The link.
        conn: ConnId,
    },
    /// Close a link (and stop a dial in progress); pending sends may be lost.
    Close {
        /// The link.
        conn: ConnId,
    },
    /// Run a store operation; its result comes back as [`Input::Store`].
    /// Operations run one at a time, in the order they are given.
    Store {
        /// Its number.
        id: OpId,
        /// What to do.
        op: StoreOp,
    },
    /// Master: the backup has durably applied everything up to `position`
    /// (`reset`: forget acknowledgements above it, a new backup session).
    Acked {
        /// The position.
        position: u64,
        /// Whether this replaces a higher one.
        reset: bool,
    },
    /// Set the store's write gate (`None`: open).
    Gate(Option<String>),
    /// The answer to a [`Command`] given to [`NodeCore::command`].
    Reply {
        /// The command's number.
        id: u64,
        /// The answer.
        result: Result<(), CommandError>,
    },
    /// The node stopped (after [`Command::Shutdown`]): nothing more will come.
    Stopped,
    /// Ask the witness this (one request at a time; answer with
    /// [`Input::Lease`], within the witness's request timeout).
    Lease(crate::redundancy::witness::LeaseAction),
}

/// What the node asks of its store. Reads use the store's readers (they
/// never wait for the writer); writes take the writer.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// Backup: recompute the digest from every row ([`persist_core::Store::verify`]),
    /// and report schema fingerprint, history and epoch.
    Verify,
    /// Backup: adopt the master's history (a fresh store about to replay its log).
    AdoptHistory(String),
    /// Backup: apply consecutive entries in one transaction.
    Apply(Vec<LogEntry>),
    /// Backup: start replacing the data with a snapshot.
    RestoreBegin(SnapshotHeader),
    /// Backup: rows of the snapshot being restored.
    RestoreChunk {
        /// Table index in the header.
        table: u32,
        /// Row images.
        rows: Vec<Vec<u8>>,
    },
    /// Backup: check and commit the snapshot.
    RestoreFinish,
    /// Backup: give up the snapshot being restored (old data stays).
    RestoreAbort,
    /// Backup: history buffered here after sequence number `after`.
    HistoryPending {
        /// Last sequence number already sent.
        after: u64,
    },
    /// Backup: the master delivered history up to `seq`; drop it here.
    HistoryDelivered {
        /// Last delivered sequence number.
        seq: u64,
    },
    /// Master: what planning a backup's sync needs (head, first retained
    /// position, the digest at the backup's position).
    PlanInputs {
        /// The backup's position.
        position: u64,
    },
    /// Master: log entries from `from` on.
    ReadLog {
        /// First position.
        from: u64,
        /// Entries at most.
        max: usize,
        /// Bytes of entry bodies at most (one larger entry still goes alone).
        max_bytes: usize,
    },
    /// Master: open a consistent snapshot for link `conn`.
    SnapshotOpen {
        /// The link it is for.
        conn: ConnId,
    },
    /// Master: the next rows of link `conn`'s snapshot.
    SnapshotNext {
        /// The link.
        conn: ConnId,
        /// Rows at most.
        rows: usize,
    },
    /// Master: close link `conn`'s snapshot.
    SnapshotClose {
        /// The link.
        conn: ConnId,
    },
    /// Master: deliver history forwarded by `origin`, each item once.
    DeliverHistory {
        /// The node that recorded it.
        origin: String,
        /// The items.
        items: Vec<HistoryItem>,
    },
    /// Master: apply the log retention policy.
    Retain {
        /// The policy.
        policy: RetentionPolicy,
        /// The backup's acknowledged position, if a backup ever acknowledged.
        acked: Option<u64>,
    },
    /// Record this claim durably.
    SetClaim(Claim),
    /// Either side: read the next rows of the scrub pass in progress
    /// (opening one if none is), see [`persist_core::Store::scrub`].
    ScrubStep {
        /// Rows at most.
        rows: usize,
        /// Also count the rows the pass reads in all (answered with
        /// [`StoreValue::ScrubProgress`] unless the step ends the pass).
        count: bool,
    },
    /// Either side: the rows of some buckets, with their recorded and
    /// computed digests ([`persist_core::Store::range_rows`]).
    RangeRows(Vec<RangeMismatch>),
    /// Backup: repair buckets read as `local` with the master's `set`
    /// ([`persist_core::Store::repair`]).
    Repair {
        /// This store's read of the buckets.
        local: RangeRows,
        /// What the master sent.
        set: RepairSet,
    },
}

/// What a store operation gave.
#[derive(Debug, Clone)]
pub enum StoreValue {
    /// Nothing to report.
    Done,
    /// [`StoreOp::Verify`].
    Verified {
        /// The check.
        verification: Verification,
        /// The registered schema's fingerprint.
        schema: u128,
        /// The data history.
        history: String,
        /// The epoch stamped on new entries.
        epoch: u64,
        /// The recorded range digests are known (see
        /// [`persist_core::Store::ranges_trusted`]): rows at odds with the
        /// digest can be repaired by range instead of a snapshot.
        ranges_trusted: bool,
    },
    /// [`StoreOp::RestoreChunk`]: the rows are in the restore.
    ChunkRestored,
    /// [`StoreOp::Apply`]: the position reached.
    Applied {
        /// The store's position now.
        position: u64,
    },
    /// [`StoreOp::RestoreFinish`]: the position and history now held.
    Restored {
        /// The snapshot's position.
        position: u64,
    },
    /// [`StoreOp::PlanInputs`].
    Planned {
        /// The master's side of the decision.
        view: MasterView,
        /// The digest recorded at the backup's position, if known.
        digest_at: Option<Digest>,
    },
    /// [`StoreOp::ReadLog`].
    Entries(Vec<LogEntry>),
    /// [`StoreOp::SnapshotOpen`].
    SnapshotOpened(SnapshotHeader),
    /// [`StoreOp::SnapshotNext`]: rows of one table, or `None` at the end.
    Chunk(Option<(u32, Vec<Vec<u8>>)>),
    /// [`StoreOp::HistoryPending`].
    HistoryItems(Vec<HistoryItem>),
    /// [`StoreOp::DeliverHistory`]: everything up to `seq` is delivered.
    Delivered {
        /// Last delivered sequence number.
        seq: u64,
    },
    /// [`StoreOp::ScrubStep`]: the pass's result once it has read every row.
    Scrubbed(Option<ScrubReport>),
    /// [`StoreOp::ScrubStep`] with `count`: the pass goes on, and reads
    /// `total` rows in all.
    ScrubProgress {
        /// Rows the pass reads in all.
        total: u64,
    },
    /// [`StoreOp::RangeRows`].
    RangeRows(RangeRows),
    /// [`StoreOp::Repair`].
    Repaired(RepairOutcome),
}

/// The result of a store operation.
pub type StoreResult = Result<StoreValue, persist_core::Error>;

/// Why a link ended. Decisions match on these, never on text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// The dial did not connect.
    Dial(String),
    /// The link failed (a transport error).
    Io(String),
    /// The peer closed the link.
    Closed,
    /// A frame could not be decoded.
    Malformed(String),
    /// Authentication failed.
    Auth(String),
    /// The peer uses this node's id.
    SameNodeId(String),
    /// The link leads back to this node.
    SelfConnection,
    /// The peer refused us.
    Refused(RefuseReason),
    /// We refused the peer.
    RefusedPeer(RefuseReason),
    /// The peer broke the protocol.
    Protocol(String),
    /// The peer stayed silent this long.
    Timeout(Duration),
    /// A newer session of the same peer took over.
    Superseded,
    /// The node is stopping.
    Shutdown,
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::Dial(e) => write!(f, "dial: {e}"),
            LinkEnd::Io(e) => write!(f, "link: {e}"),
            LinkEnd::Closed => f.write_str("the peer closed the link"),
            LinkEnd::Malformed(e) => write!(f, "malformed frame: {e}"),
            LinkEnd::Auth(e) => write!(f, "authentication: {e}"),
            LinkEnd::SameNodeId(id) => write!(
                f,
                "the peer uses this node's own id {id:?}: give each node of the pair its own id"
            ),
            LinkEnd::SelfConnection => f.write_str("the peer address points at this node itself"),
            LinkEnd::Refused(r) => write!(f, "refused by the peer: {r}"),
            LinkEnd::RefusedPeer(r) => write!(f, "refused the peer: {r}"),
            LinkEnd::Protocol(e) => write!(f, "protocol violation: {e}"),
            LinkEnd::Timeout(d) => write!(f, "peer silent for {d:?}: link considered dead"),
            LinkEnd::Superseded => f.write_str("superseded by a newer connection"),
            LinkEnd::Shutdown => f.write_str("shutting down"),
        }
    }
}

/// Stream frames handed to a link's writer and not yet sent, at most:
/// keeps memory bounded to a few frames per link whatever the peer's speed.
pub(crate) const MAX_QUEUED_FRAMES: usize = 4;

/// Whether `msg` is a frame of the sync stream: log entries and snapshot
/// frames, the bulk of what a link carries. They are what
/// [`MAX_QUEUED_FRAMES`] bounds and [`Input::Sent`] counts, and the only
/// frames a heartbeat may overtake in a link's writer (a heartbeat means
/// nothing about them, and must not wait behind megabytes of them: the
/// peer's silence timer runs meanwhile).
pub(crate) fn is_stream_frame(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Entries(_)
            | Message::SnapshotBegin { .. }
            | Message::SnapshotRows { .. }
            | Message::SnapshotEnd
    )
}

/// Snapshot frames the master sends ahead of the backup's restore.
pub(crate) const SNAPSHOT_WINDOW: u64 = 4;

/// Entries the backup applies in one transaction, at most.
pub(crate) const APPLY_BATCH: usize = 8192;

#[cfg(test)]
mod tests;
