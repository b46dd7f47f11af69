//! The small decisions the sessions take: plain functions and state types.
//!
//! - [`compare_modules`]: whether two nodes' modules let them sync.
//! - [`plan_sync`]: what the master answers a backup that connects.
//! - [`SendWindow`]: how far the master may run ahead of the backup's acks.
//! - [`RetentionPolicy::trim_below`]: which log entries the master may drop.

use std::collections::BTreeMap;
use std::time::Duration;

use persist_core::Digest;

use crate::protocol::{ModuleManifest, ModuleMismatch, Plan, RefuseReason, ResyncReason};

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

/// The master's side of a sync decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterView {
    /// Fingerprint of the master's registered schema.
    pub schema: u128,
    /// The master's data history.
    pub history: String,
    /// The master's head position.
    pub position: u64,
    /// The first position the master still holds in its log.
    pub first_retained: u64,
}

/// What a backup states when it connects (a `SyncRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupView {
    /// Fingerprint of the backup's registered schema.
    pub schema: u128,
    /// The backup's data history.
    pub history: String,
    /// The backup's last applied position.
    pub position: u64,
    /// The backup's digest, recomputed from its rows.
    pub digest: Digest,
    /// A snapshot the backup asks for, and why.
    pub force_snapshot: Option<ResyncReason>,
}

/// The master's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Refuse the connection.
    Refuse(RefuseReason),
    /// Sync as planned.
    Sync(Plan),
}

/// A module both nodes run with the same records at different versions:
/// the pair syncs, and both nodes warn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSkew {
    /// The module's name.
    pub module: String,
    /// Its version on this node.
    pub ours: String,
    /// Its version on the peer.
    pub theirs: String,
}

impl VersionSkew {
    /// What this node shows and logs, `peer` being the peer's node id.
    pub fn warning(&self, peer: &str) -> String {
        format!(
            "module `{}`: {} here, {} on {peer}: same records, replication continues",
            self.module, self.ours, self.theirs
        )
    }
}

/// A module that keeps two nodes from syncing: on one node only, or with
/// different records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleConflict {
    /// The module's name.
    pub module: String,
    /// Its version on this node (`None`: not installed here).
    pub ours: Option<String>,
    /// Its version on the peer (`None`: not installed there).
    pub theirs: Option<String>,
}

impl ModuleConflict {
    /// The refusal the master sends: the conflict with both nodes' ids.
    pub fn refusal(self, ours_node: &str, theirs_node: &str) -> RefuseReason {
        RefuseReason::ModuleMismatch(Box::new(ModuleMismatch {
            module: self.module,
            ours: self.ours,
            theirs: self.theirs,
            ours_node: ours_node.to_owned(),
            theirs_node: theirs_node.to_owned(),
        }))
    }
}

/// Compares this node's modules with those the peer declared (the rule is
/// in [`ModuleManifest`]'s docs): the version differences of modules whose
/// records are the same, in name order, or the first module by name that is
/// on one node only or whose `schema` differs.
///
/// The comparison is symmetric: swapping the sides swaps `ours` and
/// `theirs` and gives the same verdict. Were a name declared twice (a
/// configuration [`SyncConfig::validate`](crate::worker::SyncConfig::validate)
/// refuses), its first declaration counts.
pub fn compare_modules(
    ours: &[ModuleManifest],
    theirs: &[ModuleManifest],
) -> Result<Vec<VersionSkew>, ModuleConflict> {
    fn index(list: &[ModuleManifest]) -> BTreeMap<&str, &ModuleManifest> {
        let mut map = BTreeMap::new();
        for m in list {
            map.entry(m.name.as_str()).or_insert(m);
        }
        map
    }
    let (ours, theirs) = (index(ours), index(theirs));
    let mut names: Vec<&str> = ours.keys().chain(theirs.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let mut skews = Vec::new();
    for name in names {
        match (ours.get(name), theirs.get(name)) {
            (Some(o), Some(t)) if o.schema == t.schema => {
                if o.version != t.version {
                    skews.push(VersionSkew {
                        module: name.to_owned(),
                        ours: o.version.clone(),
                        theirs: t.version.clone(),
                    });
                }
            }
            (o, t) => {
                return Err(ModuleConflict {
                    module: name.to_owned(),
                    ours: o.map(|m| m.version.clone()),
                    theirs: t.map(|m| m.version.clone()),
                })
            }
        }
    }
    Ok(skews)
}

/// Decides how a connecting backup is brought up to date.
///
/// `digest_at_backup_position` is the master's recorded digest at the
/// backup's position (`Store::digest_at`), `None` when the master no longer
/// (or never) knew it.
pub fn plan_sync(
    master: &MasterView,
    backup: &BackupView,
    digest_at_backup_position: Option<Digest>,
) -> Decision {
    use ResyncReason::*;
    if master.schema != backup.schema {
        return Decision::Refuse(RefuseReason::SchemaMismatch {
            ours: master.schema,
            theirs: backup.schema,
        });
    }
    let snapshot = |reason| Decision::Sync(Plan::Snapshot { reason });
    if let Some(reason) = &backup.force_snapshot {
        return snapshot(reason.clone());
    }
    let fresh = backup.position == 0 && backup.digest == Digest::EMPTY;
    if backup.history != master.history && !fresh {
        return snapshot(DifferentHistory);
    }
    if backup.position > master.position {
        return snapshot(AheadOfMaster);
    }
    if backup.position + 1 < master.first_retained {
        return snapshot(EntriesTrimmed);
    }
    match digest_at_backup_position {
        Some(d) if d == backup.digest => Decision::Sync(Plan::Incremental {
            from: backup.position + 1,
            history: master.history.clone(),
        }),
        Some(_) => snapshot(DigestMismatch),
        None => snapshot(EntriesTrimmed),
    }
}

/// Flow control on the master: entries in flight to the backup are bounded,
/// so a slow backup never makes the master buffer without bound.
///
/// After a [`rewind`](SendWindow::rewind) (entries unacknowledged for the
/// peer timeout: maybe lost), what was sent before goes again one batch at a
/// time, each after the backup acknowledged the one before: a backup that
/// was only slow (a long apply) gets one batch twice, not the whole window,
/// and its acknowledgements of what was sent before the rewind still count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    next: u64,
    acked: u64,
    /// The highest position ever sent (before a rewind too).
    sent: u64,
    max_in_flight: u64,
}

impl SendWindow {
    /// A window starting at position `from` (nothing sent, `from - 1` acked).
    pub fn new(from: u64, max_in_flight: u64) -> Self {
        SendWindow {
            next: from,
            acked: from.saturating_sub(1),
            sent: from.saturating_sub(1),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Next position to send.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Last position the backup acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records an acknowledgement. Returns false for an ack of a position
    /// never sent (a protocol violation). An acknowledgement of entries sent
    /// before a rewind moves the next position past them.
    pub fn on_ack(&mut self, position: u64) -> bool {
        if position > self.sent {
            return false;
        }
        self.acked = self.acked.max(position);
        self.next = self.next.max(self.acked + 1);
        true
    }

    /// Up to how many entries may be sent now, given the master's head
    /// (0: nothing to send, or the window is full, or a batch sent again
    /// after a rewind is not acknowledged yet).
    pub fn sendable(&self, head: u64) -> u64 {
        if self.next <= self.sent && self.in_flight() {
            return 0;
        }
        let available = head.saturating_sub(self.next - 1);
        let room = self
            .max_in_flight
            .saturating_sub(self.next - 1 - self.acked);
        available.min(room)
    }

    /// Records that entries up to `last` were sent.
    pub fn on_sent(&mut self, last: u64) {
        self.next = self.next.max(last + 1);
        self.sent = self.sent.max(last);
    }

    /// Whether entries are sent and not acknowledged.
    pub fn in_flight(&self) -> bool {
        self.next - 1 > self.acked
    }

    /// Sends again from the first unacknowledged entry (frames were lost).
    pub fn rewind(&mut self) {
        self.next = self.acked + 1;
    }
}

/// How long the master keeps log entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Entries kept below the backup's acknowledged position, so a backup
    /// that restarts from a slightly older state still catches up incrementally.
    pub keep_acked: u64,
    /// At most this many entries are kept, acknowledged or not; a backup
    /// further behind gets a full resync.
    pub max_entries: u64,
    /// Entries older than this are dropped, acknowledged or not.
    pub max_age: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_acked: 1_000,
            max_entries: 1_000_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl RetentionPolicy {
    /// The position below which entries may be trimmed.
    ///
    /// `acked` is the backup's acknowledged position (if a backup ever
    /// acknowledged); `first_within_age` the first position committed within
    /// `max_age` (`None`: none is older).
    pub fn trim_below(&self, head: u64, acked: Option<u64>, first_within_age: Option<u64>) -> u64 {
        let by_ack = acked.map_or(0, |a| (a + 1).saturating_sub(self.keep_acked));
        let by_size = (head + 1).saturating_sub(self.max_entries);
        let by_age = first_within_age.unwrap_or(0);
        by_ack.max(by_size).max(by_age).min(head)
    }
}
