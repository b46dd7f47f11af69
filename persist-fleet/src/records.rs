//! The edge's own records of the fleet: where it is in the fleet's stream
//! ([`FleetCursor`]) and its per-site overrides of shared records
//! ([`FleetOverride`], used through [`set_override`], [`clear_override`]
//! and [`effective`]). Both are site-local: they are written in the edge's
//! own transactions, so its pair link carries them to its backup, and a
//! promoted backup continues from the same fleet position.

use persist_core::log::{decode_image, encode_image, encode_key};
use persist_core::{FieldType, PersistentRecord, Store};
use persist_derive::PersistentRecord;

use crate::error::Result;

/// Where an edge is in the fleet's stream, written in the same transaction
/// as the rows of the entries it applied.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(crate = "persist_core", table = "persist_fleet_cursor")]
pub struct FleetCursor {
    /// The fleet (cluster) name.
    #[persist(key)]
    pub fleet: String,
    /// The last fleet position applied.
    pub position: i64,
    /// The central log position it corresponds to.
    pub source_position: i64,
    /// The stream sequence of that entry (consuming goes on after it).
    pub stream_seq: i64,
    /// The digest of the shared tables after it (16 bytes).
    pub digest: Vec<u8>,
    /// The central epoch of that entry.
    pub epoch: i64,
}

/// A per-site override of one shared record: the shared row stays as the
/// fleet has it (so digests agree with the central node), and module code
/// reads [`effective`], which prefers the override.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(crate = "persist_core", table = "persist_fleet_override")]
pub struct FleetOverride {
    /// `table` + `/` + the hex of the encoded key.
    #[persist(key)]
    pub id: String,
    /// The shared table.
    pub table_name: String,
    /// The site's row image.
    pub image: Vec<u8>,
}

fn override_id(table: &str, key: &persist_core::Value) -> String {
    let mut k = Vec::new();
    encode_key(key, &mut k);
    format!("{table}/{}", crate::wire::hex(&k))
}

/// Registers the fleet's own records on an edge's store (the host does it
/// with the modules' records, before the node starts).
pub fn register(store: &Store) -> Result<()> {
    store.register::<FleetCursor>()?;
    store.register::<FleetOverride>()?;
    Ok(())
}

/// The cursor of `fleet` on this store, if it ever applied an entry.
pub fn cursor(store: &Store, fleet: &str) -> Result<Option<FleetCursor>> {
    Ok(store.get::<FleetCursor>(fleet.to_owned())?)
}

/// Sets this site's override of the shared record with `record`'s key.
pub fn set_override<R: PersistentRecord>(store: &Store, record: &R) -> Result<()> {
    let mut image = Vec::new();
    encode_image(&record.to_row(), &mut image);
    let o = FleetOverride {
        id: override_id(R::meta().table, &record.key().to_value()),
        table_name: R::meta().table.to_owned(),
        image,
    };
    store.write(|tx| tx.save(&o).map(|_| ()))?;
    Ok(())
}

/// Removes this site's override of the shared record with `key` (no-op if none).
pub fn clear_override<R: PersistentRecord>(store: &Store, key: R::Key) -> Result<()> {
    let id = override_id(R::meta().table, &key.to_value());
    store.write(|tx| match tx.get::<FleetOverride>(id.clone())? {
        Some(_) => tx.delete::<FleetOverride>(id),
        None => Ok(()),
    })?;
    Ok(())
}

/// The record with `key` as this site uses it: its override if it has one,
/// else the shared record.
pub fn effective<R: PersistentRecord>(store: &Store, key: R::Key) -> Result<Option<R>> {
    let id = override_id(R::meta().table, &key.clone().to_value());
    if let Some(o) = store.get::<FleetOverride>(id)? {
        let values = decode_image(&o.image).map_err(|source| persist_core::Error::Decode {
            context: format!("override {}", o.id),
            source,
        })?;
        let r = R::from_row(values).map_err(|source| persist_core::Error::Decode {
            context: format!("override {}", o.id),
            source,
        })?;
        return Ok(Some(r));
    }
    Ok(store.get::<R>(key)?)
}
