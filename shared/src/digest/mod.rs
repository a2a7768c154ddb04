//! Row digests (DESIGN.md §9): prove that target rows equal their source rows without shipping rows
//! around, and find which ids differ when they do not. Used by `verify` and `purge`.
//!
//! - [`canon`]: the canonical encoding of a row, equal across engines for equal rows; a [`RowPlan`] shared
//!   by every side and a [`RowEncoder`] per side, which hashes a row with xxh3-128.
//! - [`GroupDigest`]: row count, wrapping sum and XOR of the rows' 128-bit hashes. Order-independent, so
//!   rows may be fed in any order and from several target tables (routes); [`ChunkDigests`] keeps one per
//!   key sub-range of a group, so a differing group is narrowed down before any per-key work.
//! - [`diff`]: merging both sides' (key, row hash) by key into `missing` / `extra` / `differs`, then the
//!   differing columns of the few rows that differ.
//! - [`json`]: canonical JSON (sorted keys, no spacing, numbers by value).
//! - [`es`]: the digest of an Elasticsearch document, comparable with the document the ES encoder makes
//!   of the source row.
//! - [`pushdown`]: MySQL/MariaDB → MySQL/MariaDB with matching column types: the SQL that computes the
//!   digests on the servers, so only digests cross the network.
//!
//! The contract for callers (verify, purge):
//! 1. `RowPlan::new(names, &[source_columns, target_table_columns…])`, one `RowEncoder` per side.
//! 2. Per group, per side: `ChunkDigests::new(first, last, chunk)`, `add(key, encoder.hash(key, values))`
//!    for each row read. Equal `ChunkDigests` → the group is equal.
//! 3. For each differing chunk: both sides' `(key, hash)` ascending by key ([`RowEncoder::key_hashes`], or
//!    [`pushdown::MysqlChecksum::key_hashes`]), merged with [`diff::merge_keyed`] into missing / extra /
//!    changed keys; read the changed keys' full rows and classify them canonically with
//!    [`diff::compare_rows`] (which names the differing columns). Purge deletes only
//!    [`diff::proven_equal`] keys.
//!
//! Memory stays bounded by the chunk, not the group: a group of 4 M rows in chunks of 65 536 keys holds at
//! most 64 chunk digests, and per-key hashes (24 bytes a row) for one differing chunk at a time.

pub mod canon;
pub mod diff;
pub mod es;
pub mod json;
pub mod pushdown;

pub use canon::{Canon, RowEncoder, RowPlan};
pub use diff::{compare_rows, merge_keyed, proven_equal, DiffKind, KeyDiff};

/// What a digest cannot be built from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// A compared column is missing on one side (`side` 0 is the source, then each target table in the
    /// order given to [`RowPlan::new`]).
    #[error("column `{column}` is not among the columns of side {side}")]
    NoColumn { column: String, side: usize },
    /// An encoder was asked for a layout that lacks a compared column.
    #[error("column `{0}` is not among the columns read")]
    NotInLayout(String),
    /// Keys given to a merge out of ascending order.
    #[error("keys must be ascending: {after} came after {before}")]
    Unsorted { before: u64, after: u64 },
    /// A document or text that should be JSON and is not.
    #[error("id {key}: not a JSON document ({message})")]
    NotJson { key: u64, message: String },
    /// A SQL result that does not have the shape the pushdown query gives.
    #[error("checksum query: {0}")]
    BadResult(String),
    /// A checksum query failed (`transient`: worth retrying).
    #[error("checksum query: {message}")]
    Query { message: String, transient: bool },
}

/// The digest of a set of rows: count, wrapping sum and XOR of their 128-bit row hashes. Two sets with
/// equal digests hold the same rows (up to a 2^-128-ish chance); adding is commutative, so neither order
/// nor the table a row came from matters. A duplicated row changes the count and the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GroupDigest {
    pub rows: u64,
    pub sum: u128,
    pub xor: u128,
}

impl GroupDigest {
    /// Adds one row's hash.
    pub fn add(&mut self, hash: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
        self.xor ^= hash;
    }

    /// Adds every row of `other` (a digest of other rows: another target table, another reader).
    pub fn merge(&mut self, other: &GroupDigest) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
        self.xor ^= other.xor;
    }
}

impl std::fmt::Display for GroupDigest {
    /// `rows:sum:xor`, the hashes in hex: the form kept in logs and ledger meta.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{:032x}:{:032x}", self.rows, self.sum, self.xor)
    }
}

/// Digests of a group's key range `first..=last` cut into chunks of `chunk` keys, so that a differing
/// group is narrowed to its differing chunks before any per-key hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDigests {
    first: u64,
    last: u64,
    chunk: u64,
    digests: Vec<GroupDigest>,
}

impl ChunkDigests {
    /// Chunks of `chunk` keys (at least 1) over `first..=last`.
    pub fn new(first: u64, last: u64, chunk: u64) -> Self {
        let chunk = chunk.max(1);
        let n = (last.saturating_sub(first) / chunk).saturating_add(1);
        Self {
            first,
            last,
            chunk,
            digests: vec![GroupDigest::default(); usize::try_from(n).unwrap_or(usize::MAX)],
        }
    }

    /// Adds a row's hash to its key's chunk. A key outside `first..=last` is refused (`false`).
    pub fn add(&mut self, key: u64, hash: u128) -> bool {
        if key < self.first || key > self.last {
            return false;
        }
        let i = ((key - self.first) / self.chunk) as usize;
        self.digests[i].add(hash);
        true
    }

    /// Adds a digest computed elsewhere (a SQL pushdown's chunk row) to chunk number `i`.
    pub fn merge_chunk(&mut self, i: usize, digest: &GroupDigest) -> bool {
        match self.digests.get_mut(i) {
            Some(d) => {
                d.merge(digest);
                true
            }
            None => false,
        }
    }

    /// The whole range's digest.
    pub fn total(&self) -> GroupDigest {
        let mut t = GroupDigest::default();
        for d in &self.digests {
            t.merge(d);
        }
        t
    }

    /// The per-chunk digests, chunk 0 first.
    pub fn chunks(&self) -> &[GroupDigest] {
        &self.digests
    }

    /// The key range `[first, last]` of chunk number `i`.
    pub fn range_of(&self, i: usize) -> [u64; 2] {
        let lo = self
            .first
            .saturating_add(self.chunk.saturating_mul(i as u64));
        let hi = lo.saturating_add(self.chunk - 1).min(self.last);
        [lo, hi]
    }

    /// The key ranges of the chunks whose digests differ from `other`'s (which must cut the same range the
    /// same way; otherwise the whole range is returned).
    pub fn differing_ranges(&self, other: &ChunkDigests) -> Vec<[u64; 2]> {
        if (self.first, self.last, self.chunk) != (other.first, other.last, other.chunk) {
            return vec![[self.first, self.last]];
        }
        let mut out: Vec<[u64; 2]> = Vec::new();
        for (i, (a, b)) in self.digests.iter().zip(&other.digests).enumerate() {
            if a != b {
                let r = self.range_of(i);
                match out.last_mut() {
                    Some(prev) if prev[1].checked_add(1) == Some(r[0]) => prev[1] = r[1],
                    _ => out.push(r),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_ignores_order_and_sees_duplicates() {
        let hashes = [1u128 << 100, 7, u128::MAX, 42];
        let mut a = GroupDigest::default();
        hashes.iter().for_each(|h| a.add(*h));
        let mut b = GroupDigest::default();
        hashes.iter().rev().for_each(|h| b.add(*h));
        assert_eq!(a, b);
        // split over two target tables
        let (mut t1, mut t2) = (GroupDigest::default(), GroupDigest::default());
        t1.add(hashes[0]);
        t1.add(hashes[2]);
        t2.add(hashes[1]);
        t2.add(hashes[3]);
        t1.merge(&t2);
        assert_eq!(a, t1);
        let mut dup = a;
        dup.add(42);
        dup.add(42);
        assert_ne!(a.xor, 0);
        assert_eq!(a.xor, dup.xor, "XOR alone misses a pair…");
        assert_ne!(a, dup, "…count and sum do not");
        assert_eq!(
            GroupDigest::default().to_string(),
            format!("0:{0}:{0}", "0".repeat(32))
        );
    }

    #[test]
    fn chunks_narrow_a_difference_down() {
        let mut s = ChunkDigests::new(100, 1099, 100);
        let mut t = ChunkDigests::new(100, 1099, 100);
        assert_eq!(s.chunks().len(), 10);
        for k in 100..1100 {
            s.add(k, u128::from(k) * 31);
            if k != 150 && k != 399 && k != 400 {
                t.add(k, u128::from(k) * 31);
            }
        }
        assert!(!s.add(1100, 1), "outside the range");
        assert_eq!(
            s.differing_ranges(&t),
            [[100, 199], [300, 499]],
            "adjacent differing chunks are one range"
        );
        assert_eq!(s.range_of(9), [1000, 1099]);
        assert_eq!(s.total().rows, 1000);
        assert_eq!(t.total().rows, 997);
        let odd = ChunkDigests::new(0, 10, 4);
        assert_eq!(odd.chunks().len(), 3);
        assert_eq!(odd.range_of(2), [8, 10]);
    }
}
