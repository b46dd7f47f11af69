//! The state digest: an order-independent hash over every record row.
//!
//! Each row contributes `xxh3_128(row image)` seeded by its table; the digest
//! is the XOR of all contributions. An insert XORs the new row in, a delete
//! XORs the old row out, an update does both: O(1) per change, and the same
//! value can be recomputed from scratch by scanning the tables. Two stores
//! with the same rows have the same digest whatever order the rows arrived in.
//! It detects divergence; it is not a defence against an adversary (the link
//! is authenticated separately).

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

/// The digest of a store's rows (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Digest(pub u128);

impl Digest {
    /// The digest of no rows.
    pub const EMPTY: Digest = Digest(0);

    /// Adds or removes one row (XOR is its own inverse).
    #[inline]
    pub fn toggle(&mut self, table_seed: u64, image: &[u8]) {
        self.0 ^= row_hash(table_seed, image);
    }

    /// The 16 bytes stored in the log.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// Reads the stored form; `None` if it is not 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Digest> {
        Some(Digest(u128::from_le_bytes(bytes.try_into().ok()?)))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({:032x})", self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The seed that makes identical images in different tables hash differently.
pub fn table_seed(table: &str) -> u64 {
    xxh3_64(table.as_bytes())
}

/// One row's contribution.
#[inline]
pub fn row_hash(table_seed: u64, image: &[u8]) -> u128 {
    xxh3_128_with_seed(image, table_seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_self_inverse() {
        let s = table_seed("t");
        let mut a = Digest::EMPTY;
        a.toggle(s, b"one");
        a.toggle(s, b"two");
        let mut b = Digest::EMPTY;
        b.toggle(s, b"two");
        b.toggle(s, b"one");
        assert_eq!(a, b);
        b.toggle(s, b"one");
        b.toggle(s, b"two");
        assert_eq!(b, Digest::EMPTY);
        assert_ne!(a, Digest::EMPTY);
    }

    #[test]
    fn tables_are_distinguished() {
        let mut a = Digest::EMPTY;
        a.toggle(table_seed("a"), b"row");
        let mut b = Digest::EMPTY;
        b.toggle(table_seed("b"), b"row");
        assert_ne!(a, b);
        assert_eq!(Digest::from_bytes(&a.to_bytes()), Some(a));
    }
}
