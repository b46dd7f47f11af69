//! Two sample records the `fleet-edge` program, the tests and the benchmark
//! use: [`FleetTag`] and [`FleetLimit`] are meant to be shared by the
//! fleet, [`SiteNote`] and [`SiteTagNote`] to stay on their site.

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

/// A limit on a tag (shared too; deleted with its tag).
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(crate = "persist_core", table = "fleet_limit")]
pub struct FleetLimit {
    /// Its name.
    #[persist(key)]
    pub name: String,
    /// The tag it watches.
    #[persist(references = FleetTag, on_delete = "cascade")]
    pub tag: String,
    /// The limit.
    pub high: i64,
}

/// A note of one site (site-local), optionally about a shared tag: it goes
/// with the tag when the fleet deletes it.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(crate = "persist_core", table = "site_tag_note")]
pub struct SiteTagNote {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// The tag.
    #[persist(references = FleetTag, on_delete = "cascade")]
    pub tag: String,
    /// The note.
    pub text: String,
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

/// Registers them and the fleet's own records.
pub fn register(store: &persist_core::Store) -> crate::Result<()> {
    store.register::<FleetTag>()?;
    store.register::<FleetLimit>()?;
    store.register::<SiteNote>()?;
    store.register::<SiteTagNote>()?;
    crate::records::register(store)
}
