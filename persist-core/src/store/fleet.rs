//! Row changes that come from outside this node's own replication, written
//! as this node's own changes: what `persist-fleet` needs to apply a fleet
//! entry (configuration published by a central gateway) on an edge.
//!
//! A backup replays its master's log with [`Store::apply`](super::Store::apply):
//! the master's position, digest and body are stored as-is. An edge cannot do
//! that with a fleet entry, because the edge is itself a master of its
//! site-local records and has a log of its own (which its pair link carries
//! to its backup). So a fleet entry's row changes are made here inside an
//! ordinary [`Store::write`](super::Store::write) transaction: they are
//! logged at the edge's next position, change the edge's digest, reach its
//! listeners and cascade as declared, exactly like a change the module made.
//!
//! These calls take row images and keys as a log body carries them
//! ([`crate::log`]), by table name, because the fleet layer moves rows
//! without knowing their Rust types. On an error, return it from the
//! transaction's closure: the whole transaction then rolls back.

use std::collections::HashMap;

use crate::digest::{row_hash, Digest};
use crate::error::{Error, Result};
use crate::log::{decode_image, encode_image, Op};
use crate::value::Value;

use super::check_image;
use super::query_rows;
use super::schema::Table;
use super::write::WriteTx;

/// The images of one row before and after a change made by
/// [`WriteTx::apply_row_change`], so the caller can keep a digest over a
/// subset of tables (`None`: no row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowImages {
    /// The row before the change.
    pub old: Option<Vec<u8>>,
    /// The row after the change.
    pub new: Option<Vec<u8>>,
}

impl RowImages {
    /// Toggles both images into `digest` for `table` (the store's own rule:
    /// XOR of `xxh3_128(image)` seeded per table).
    pub fn toggle_into(&self, table: &str, digest: &mut Digest) {
        let seed = crate::digest::table_seed(table);
        for image in [&self.old, &self.new].into_iter().flatten() {
            digest.toggle(seed, image);
        }
    }
}

/// The digest of a set of row images of `table`, as the store computes it.
pub fn digest_of_images<'a>(table: &str, images: impl IntoIterator<Item = &'a [u8]>) -> Digest {
    let seed = crate::digest::table_seed(table);
    let mut d = Digest::default();
    for image in images {
        d.0 ^= row_hash(seed, image);
    }
    d
}

fn refused(table: &str, reason: impl Into<String>) -> Error {
    Error::Inapplicable {
        position: 0,
        reason: format!("{table}: {}", reason.into()),
    }
}

impl WriteTx<'_> {
    fn table_named(&self, table: &str) -> Result<&Table> {
        self.reg
            .tables
            .get(table)
            .ok_or_else(|| refused(table, "table is not registered on this node"))
    }

    /// Makes one row change given as a log body carries it: `payload` is the
    /// row image for [`Op::Insert`] and [`Op::Update`], the key for
    /// [`Op::Delete`]. The change is this transaction's own (logged, in the
    /// digest, announced; a delete cascades to referencing rows as declared
    /// and is refused by a restricting one). An insert of a key that exists,
    /// or an update or delete of one that does not, is an error, as is an
    /// image that does not fit the table. [`Op::Operation`] is refused: a
    /// replicated operation's record changes are carried, not the operation.
    pub fn apply_row_change(&mut self, table: &str, op: Op, payload: &[u8]) -> Result<RowImages> {
        let reg = self.reg;
        let t = reg
            .tables
            .get(table)
            .ok_or_else(|| refused(table, "table is not registered on this node"))?;
        match op {
            Op::Insert => {
                let values = check_image(t, payload).map_err(|r| refused(table, r))?;
                let mut new = Vec::new();
                encode_image(&values, &mut new);
                self.insert_row(t, values)?;
                Ok(RowImages {
                    old: None,
                    new: Some(new),
                })
            }
            Op::Update => {
                let values = check_image(t, payload).map_err(|r| refused(table, r))?;
                let key = values[t.meta.key].clone();
                let old = self
                    .select_key(t, &key)?
                    .ok_or_else(|| super::write::not_found(t, &key))?;
                let mut old_image = Vec::new();
                encode_image(&old, &mut old_image);
                let mut new = Vec::new();
                encode_image(&values, &mut new);
                self.update_row(t, values, true)?;
                Ok(RowImages {
                    old: Some(old_image),
                    new: Some(new),
                })
            }
            Op::Delete => {
                let key: Value = postcard::from_bytes(payload)
                    .map_err(|e| refused(table, format!("undecodable key: {e}")))?;
                if !key.fits(t.key_type()) || key.is_null() {
                    return Err(refused(table, format!("key of kind {}", key.kind())));
                }
                let old = self
                    .select_key(t, &key)?
                    .ok_or_else(|| super::write::not_found(t, &key))?;
                let mut old_image = Vec::new();
                encode_image(&old, &mut old_image);
                self.delete_row(t, key, true)?;
                Ok(RowImages {
                    old: Some(old_image),
                    new: None,
                })
            }
            Op::Operation => Err(refused(
                table,
                "a replicated operation cannot be applied as a row change",
            )),
        }
    }

    /// Every row image of `table` as this transaction sees it, in key order.
    pub fn row_images(&mut self, table: &str) -> Result<Vec<Vec<u8>>> {
        let t = self.table_named(table)?;
        let (stmt, types) = (
            super::Statement::new(format!(
                "SELECT {} FROM {} ORDER BY {}",
                super::schema::column_list(t.meta),
                crate::backend::quote_ident(t.name),
                crate::backend::quote_ident(t.meta.key_column().name),
            )),
            t.types.clone(),
        );
        let rows = query_rows(&mut *self.w.conn, &stmt, &[], &types)?;
        Ok(rows
            .iter()
            .map(|r| {
                let mut image = Vec::new();
                encode_image(r, &mut image);
                image
            })
            .collect())
    }

    /// Makes `tables` hold exactly the given row images, with the fewest row
    /// changes (inserts, updates and deletes of the differences, made as in
    /// [`WriteTx::apply_row_change`]), e.g. to load a fleet snapshot over an
    /// edge's older copy. Rows are matched by key; upserts go in the order
    /// given, deletes after them in reverse order (a row a cascade already
    /// removed is skipped). Returns how many rows changed.
    pub fn replace_tables(&mut self, tables: &[(&str, Vec<Vec<u8>>)]) -> Result<u64> {
        let reg = self.reg;
        let mut changed = 0u64;
        let mut deletes: Vec<(&Table, Vec<Value>)> = Vec::new();
        for (name, images) in tables {
            let t = reg
                .tables
                .get(name)
                .ok_or_else(|| refused(name, "table is not registered on this node"))?;
            let mut existing: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for image in self.row_images(name)? {
                let values = decode_image(&image).map_err(|e| refused(name, e.to_string()))?;
                existing.insert(key_bytes(&values[t.meta.key]), image);
            }
            for image in images {
                let values = check_image(t, image).map_err(|r| refused(name, r))?;
                let mut canonical = Vec::new();
                encode_image(&values, &mut canonical);
                match existing.remove(&key_bytes(&values[t.meta.key])) {
                    Some(old) if old == canonical => {}
                    Some(_) => {
                        self.update_row(t, values, true)?;
                        changed += 1;
                    }
                    None => {
                        self.insert_row(t, values)?;
                        changed += 1;
                    }
                }
            }
            let gone = existing
                .into_values()
                .map(|image| decode_image(&image).map_err(|e| refused(name, e.to_string())))
                .collect::<Result<Vec<_>>>()?;
            deletes.push((t, gone.into_iter().map(|v| v[t.meta.key].clone()).collect()));
        }
        for (t, keys) in deletes.into_iter().rev() {
            for key in keys {
                if self.select_key(t, &key)?.is_some() {
                    self.delete_row(t, key, true)?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }
}

fn key_bytes(key: &Value) -> Vec<u8> {
    postcard::to_allocvec(key).unwrap_or_default()
}

impl super::Store {
    /// The index of `table`'s key column in its row images, if the table is
    /// registered (so a tool that moves row images by table name can match
    /// rows by key).
    pub fn key_column_of(&self, table: &str) -> Option<usize> {
        self.registry().tables.get(table).map(|t| t.meta.key)
    }
}
