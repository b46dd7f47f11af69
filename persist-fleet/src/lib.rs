//! Configuration for a fleet of persist gateways over NATS JetStream.
//!
//! A central gateway holds the configuration the sites share; every edge
//! gateway receives it, applies it, and keeps running on what it has when
//! the WAN is down. JetStream does the fan-out and keeps the entries while
//! edges are away: the central node publishes once, whatever the number of
//! edges.
//!
//! # How fleet entries relate to an edge's own log
//! An edge is the master of its site-local records and replicates its own
//! log to its backup, so a fleet entry cannot go through
//! [`Store::apply`](persist_core::Store::apply) with the central node's
//! positions and digest. Instead:
//!
//! - **Central ([`Publisher`])**: follows the central store's committed log
//!   (`Store::read_log`, woken by a commit hook), keeps only the row changes
//!   of the shared tables (the record changes a replicated operation made
//!   are carried, not the operation), and publishes one [`FleetEntry`] per
//!   central entry that touches them: its fleet position (dense, from 1; the
//!   JetStream message id, so a re-send is de-duplicated), the central
//!   position it reflects, the epoch, and the digest over the *shared tables
//!   only* (the store's own rule, XOR of seeded row hashes, restricted to
//!   them). The publisher keeps an in-memory copy of the shared tables as
//!   published, which gives the old image of each updated or deleted row
//!   and lets it write a snapshot at exactly a published position. Every
//!   `snapshot_every` entries it writes one to the JetStream object store,
//!   keeps `keep_snapshots`, and purges the stream below the oldest kept:
//!   retention is tied to the snapshots. When the central log cannot be
//!   followed (trimmed past what was published, a restored store, an entry
//!   larger than `max_entry_bytes`), it publishes a snapshot and a `Rebase`
//!   entry instead. It runs on the central node whose role is master.
//! - **Edge ([`Edge`])**: a durable pull consumer, created after the
//!   stream sequence the edge's store records. It applies entries in
//!   order, a batch in *one local write transaction* that makes each row
//!   change as the edge's own ([`WriteTx::apply_row_change`](persist_core::WriteTx::apply_row_change)),
//!   checks each entry's shared digest, and saves the edge's
//!   [`records::FleetCursor`] (fleet position, stream sequence, digest) in
//!   the same transaction: idempotent (positions already applied are
//!   skipped), gap-refusing (a gap loads a snapshot), and atomic. It acks
//!   after the commit. Because the rows are the edge's own changes, its own
//!   log, and so its pair link, carries them (and the cursor) to its backup.
//!   It loads the newest snapshot when its position is older than the
//!   stream's first message, when an entry does not give its digest, or when
//!   its shared tables do not give the cursor's digest at start (rows
//!   changed behind the fleet's back).
//! - **A redundant edge pair**: only the node whose *role* is master
//!   consumes. It is the one that can write (a backup's write gate refuses
//!   config writes even while it is active), its commits reach the backup
//!   through the pair link as every other change does, and one consumer per
//!   site keeps one cursor: two consumers would apply the same entry twice
//!   on two logs. After a failover the active backup keeps the applied data
//!   and the cursor; consuming resumes when a master runs again.
//!
//! # Shared and site-local records
//! A record type is fleet-shared when its table is listed in the fleet
//! configuration (`shared = ["device"]` in TOML, or
//! [`FleetConfig::share::<Device>()`](FleetConfig::share) at registration);
//! every other table is site-local and never leaves the site. No derive
//! attribute is needed. Shared tables on an edge are a copy of the central
//! node's: module code on an edge does not write them (a change there is
//! found by the digest and repaired from a snapshot). A **per-site
//! override** of a shared record is a site-local [`records::FleetOverride`]
//! holding the site's version of that row ([`records::set_override`]);
//! module code reads [`records::effective`], which prefers it. The shared
//! row keeps following the central node (so digests agree) and the
//! override outlives its updates until cleared.
//!
//! # Security
//! NATS credentials (`credentials_file`, a `.creds` file) or an NKey seed
//! (`nkey_file`) are read from files, never from the TOML itself. Every
//! entry and snapshot carries an HMAC-SHA256 under the fleet key
//! (`key_file`), over the cluster name and the payload: a NATS account that
//! can publish on the subject cannot inject configuration (its messages are
//! refused, counted in [`EdgeStatus::refused`], and terminated), and if it
//! takes an entry's message id first, the publisher sees the duplicate and
//! publishes under another id.
//!
//! # Status
//! Each edge writes its [`EdgeStatus`] (applied position, digest, lag, last
//! seen) to a JetStream KV bucket; [`fleet_status`] reads them on the
//! central node and says whether each edge's digest agrees with the
//! central one at the edge's position ([`StatusReader`] reads them again
//! and again over one kept connection, for an operator surface).

mod config;
mod edge;
mod error;
mod nats;
mod publisher;
pub mod records;
pub mod sample;
mod shadow;
mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;
mod witness;

pub use config::{FleetConfig, FleetKey};
pub use edge::{Edge, EdgeStatus};
pub use error::{FleetError, Result};
pub use publisher::{Publisher, PublisherStatus};
pub use status::{fleet_status, EdgeView, StatusReader};
pub use wire::FleetEntry;
pub use witness::{NatsWitness, WitnessConfig};

/// Row images per shared table.
pub(crate) type SharedRows = Vec<(String, Vec<Vec<u8>>)>;

/// The shared tables' rows and the position they are at, in one read transaction.
pub(crate) fn read_shared(
    store: &persist_core::Store,
    names: &[String],
) -> persist_core::Result<(u64, SharedRows)> {
    let mut snap = store.snapshot()?;
    let header = snap.header().clone();
    let mut tables: Vec<(String, Vec<Vec<u8>>)> =
        names.iter().map(|n| (n.clone(), Vec::new())).collect();
    while let Some((index, rows)) = snap.next_chunk(1024)? {
        let name = &header.tables[index as usize].name;
        if let Some((_, v)) = tables.iter_mut().find(|(n, _)| n == name) {
            v.extend(rows);
        }
    }
    Ok((header.position, tables))
}
