//! Two sample records the `fleet-edge` program, the tests and the benchmark
//! use: [`FleetTag`] is meant to be shared by the fleet, [`SiteNote`] to
//! stay on its site.

use persist_derive::PersistentRecord;

/// A tag definition every site uses (shared).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(crate = "persist_core", table = "fleet_tag")]
pub struct FleetTag {
    /// The tag's name.
    #[persist(key)]
    pub name: String,
    /// Where it is read from.
    pub address: String,
    /// Its scan period.
    pub scan_ms: i64,
}

/// A note of one site (site-local).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(crate = "persist_core", table = "site_note")]
pub struct SiteNote {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// The note.
    pub text: String,
}

/// Registers both and the fleet's own records.
pub fn register(store: &persist_core::Store) -> crate::Result<()> {
    store.register::<FleetTag>()?;
    store.register::<SiteNote>()?;
    crate::records::register(store)
}
