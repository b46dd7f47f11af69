//! The shared tables as the fleet has them: the publisher's in-memory copy,
//! kept in step with every published entry, so it knows the old image of a
//! row an update or delete replaces (the central log carries only the new
//! image or the key) and can write a snapshot at exactly a published
//! position.

use std::collections::{BTreeMap, HashMap};

use persist_core::log::{decode_body, decode_image, unpack_stored, Op};
use persist_core::{Digest, Value};

use crate::error::{FleetError, Result};
use crate::wire::FleetSnapshot;

#[derive(Debug, Default)]
pub(crate) struct Shadow {
    /// table -> (encoded key -> image)
    tables: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    keys: HashMap<String, usize>,
    seeds: HashMap<String, u64>,
    pub(crate) digest: Digest,
}

fn bad(reason: String) -> FleetError {
    FleetError::Refused {
        what: "shared change".into(),
        reason,
    }
}

impl Shadow {
    /// An empty copy of `tables` (name, key column).
    pub(crate) fn new(tables: &[(String, usize)]) -> Shadow {
        let mut s = Shadow::default();
        for (name, key) in tables {
            s.tables.insert(name.clone(), BTreeMap::new());
            s.keys.insert(name.clone(), *key);
            s.seeds
                .insert(name.clone(), persist_core::digest::table_seed(name));
        }
        s
    }

    pub(crate) fn is_shared(&self, table: &str) -> bool {
        self.keys.contains_key(table)
    }

    fn key_of(&self, table: &str, image: &[u8]) -> Result<Vec<u8>> {
        let values = decode_image(image).map_err(|e| bad(format!("{table}: {e}")))?;
        let k = self.keys[table];
        let key = values
            .get(k)
            .ok_or_else(|| bad(format!("{table}: image has no key column")))?;
        Ok(encode_key(key))
    }

    /// Applies one change; returns an error for a change that does not fit
    /// (an insert of a present key, an update or delete of an absent one).
    pub(crate) fn apply(&mut self, table: &str, op: Op, payload: &[u8]) -> Result<()> {
        let seed = self.seeds[table];
        let (key, new) = match op {
            Op::Insert | Op::Update => (self.key_of(table, payload)?, Some(payload.to_vec())),
            Op::Delete => {
                let key: Value =
                    postcard::from_bytes(payload).map_err(|e| bad(format!("{table}: key: {e}")))?;
                (encode_key(&key), None)
            }
            Op::Operation => return Ok(()),
        };
        let rows = self.tables.get_mut(table).expect("shared table");
        let old = match &new {
            Some(image) => rows.insert(key, image.clone()),
            None => rows.remove(&key),
        };
        match (op, &old) {
            (Op::Insert, Some(_)) => return Err(bad(format!("{table}: insert of a present key"))),
            (Op::Update | Op::Delete, None) => {
                return Err(bad(format!("{table}: {} of an absent key", op.name())))
            }
            _ => {}
        }
        for image in [old.as_deref(), new.as_deref()].into_iter().flatten() {
            self.digest.toggle(seed, image);
        }
        Ok(())
    }

    /// Keeps the shared changes of a central log body (as the central store
    /// keeps it: packed or not); returns them encoded as a body (None when
    /// the entry touches no shared table) and applies them to the copy.
    /// Operation markers are dropped: the record changes an operation made
    /// are in the body before it and are carried instead.
    pub(crate) fn take_shared(&mut self, stored: &[u8]) -> Result<Option<Vec<u8>>> {
        let body = unpack_stored(stored).map_err(|e| bad(e.to_string()))?;
        let changes = decode_body(&body).map_err(|e| bad(e.to_string()))?;
        let mut kept: Vec<(&str, Op, &[u8])> = Vec::new();
        for ch in &changes {
            if ch.op != Op::Operation && self.is_shared(ch.table) {
                kept.push((ch.table, ch.op, ch.payload));
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        for (t, op, p) in &kept {
            self.apply(t, *op, p)?;
        }
        Ok(Some(persist_core::log::encode_body(&kept)))
    }

    /// Applies a published body (replaying the stream).
    pub(crate) fn apply_body(&mut self, body: &[u8]) -> Result<()> {
        let changes = decode_body(body).map_err(|e| bad(e.to_string()))?;
        for ch in changes {
            if !self.is_shared(ch.table) {
                return Err(bad(format!("{} is not a shared table", ch.table)));
            }
            self.apply(ch.table, ch.op, ch.payload)?;
        }
        Ok(())
    }

    /// Replaces the whole copy.
    pub(crate) fn load(&mut self, tables: &[(String, Vec<Vec<u8>>)]) -> Result<()> {
        for rows in self.tables.values_mut() {
            rows.clear();
        }
        self.digest = Digest::default();
        for (name, images) in tables {
            if !self.is_shared(name) {
                continue;
            }
            for image in images {
                self.apply(name, Op::Insert, image)?;
            }
        }
        Ok(())
    }

    /// Whether the copy holds exactly these rows.
    pub(crate) fn same_as(&self, tables: &[(String, Vec<Vec<u8>>)]) -> bool {
        let mut other = Shadow::new(
            &self
                .keys
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect::<Vec<_>>(),
        );
        other.load(tables).is_ok() && other.digest == self.digest && other.tables == self.tables
    }

    pub(crate) fn snapshot(
        &self,
        position: u64,
        source_position: u64,
        epoch: u64,
        stream_seq: u64,
    ) -> FleetSnapshot {
        FleetSnapshot {
            position,
            source_position,
            epoch,
            digest: self.digest,
            stream_seq,
            tables: self
                .tables
                .iter()
                .map(|(n, rows)| (n.clone(), rows.values().cloned().collect()))
                .collect(),
        }
    }
}

fn encode_key(key: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    persist_core::log::encode_key(key, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use persist_core::log::encode_image;

    fn image(id: i64, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_image(&[Value::I64(id), Value::Text(name.into())], &mut out);
        out
    }

    #[test]
    fn the_digest_follows_changes_and_matches_a_reload() {
        let mut s = Shadow::new(&[("t".into(), 0)]);
        let body = persist_core::log::encode_body(&[
            ("t", Op::Insert, &image(1, "a")),
            ("local", Op::Insert, &image(1, "x")),
            ("t", Op::Insert, &image(2, "b")),
        ]);
        let kept = s.take_shared(&body).unwrap().unwrap();
        assert_eq!(
            decode_body(&kept).unwrap().len(),
            2,
            "the site-local change is dropped"
        );
        let mut key = Vec::new();
        persist_core::log::encode_key(&Value::I64(1), &mut key);
        s.apply("t", Op::Update, &image(2, "c")).unwrap();
        s.apply("t", Op::Delete, &key).unwrap();
        let expected = persist_core::store::digest_of_images("t", [image(2, "c").as_slice()]);
        assert_eq!(s.digest, expected);
        let snap = s.snapshot(3, 3, 0, 3);
        assert!(s.same_as(&snap.tables));
        assert!(s.apply("t", Op::Delete, &key).is_err(), "absent key");
        assert!(
            s.apply("t", Op::Insert, &image(2, "d")).is_err(),
            "present key"
        );
    }
}
