//! Ids, groups and bitmaps.
//!
//! A group holds the ids `first ..= first + group_size - 1` with `first` a multiple of `group_size`. Its
//! bitmaps use Redis's bit order: bit offset `id - first`, bit 0 the most significant bit of byte 0.

/// An inclusive id range `[lo, hi]`, as in the message body.
pub type IdRange = [u64; 2];

/// The `first` id of the group holding `id`.
pub fn group_of(id: u64, group_size: u64) -> u64 {
    id - id % group_size
}

/// The last id of the group starting at `first` (saturating at `u64::MAX`).
pub fn group_last(first: u64, group_size: u64) -> u64 {
    first.saturating_add(group_size - 1)
}

/// Compress ascending, distinct ids into inclusive ranges.
pub fn to_ranges(sorted_ids: &[u64]) -> Vec<IdRange> {
    let mut out: Vec<IdRange> = Vec::new();
    for &id in sorted_ids {
        match out.last_mut() {
            Some(r) if r[1].checked_add(1) == Some(id) => r[1] = id,
            _ => out.push([id, id]),
        }
    }
    out
}

/// Number of ids covered by ranges (which the caller has validated as `lo <= hi`).
pub fn count_in(ranges: &[IdRange]) -> u64 {
    ranges.iter().map(|r| r[1] - r[0] + 1).sum()
}

/// Whether `id` lies in one of the ascending, non-overlapping `ranges`.
pub fn ranges_contain(ranges: &[IdRange], id: u64) -> bool {
    let i = ranges.partition_point(|r| r[1] < id);
    ranges.get(i).is_some_and(|r| r[0] <= id)
}

/// Every id in the ranges, ascending.
pub fn expand(ranges: &[IdRange]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|r| r[0]..=r[1])
}

/// A bitmap for the group starting at `first` with the bits of `ids` set; just long enough for the
/// highest id, so it can be OR-ed into the stored one.
pub fn bitmap_of(first: u64, ids: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let mut bits: Vec<u8> = Vec::new();
    for id in ids {
        let off = (id - first) as usize;
        let byte = off / 8;
        if byte >= bits.len() {
            bits.resize(byte + 1, 0);
        }
        bits[byte] |= 0x80 >> (off % 8);
    }
    bits
}

/// The ids whose bits are set, ascending.
pub fn ids_of(first: u64, bitmap: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, &b) in bitmap.iter().enumerate() {
        if b == 0 {
            continue;
        }
        for bit in 0..8 {
            if b & (0x80 >> bit) != 0 {
                out.push(first + (i * 8 + bit) as u64);
            }
        }
    }
    out
}

/// Number of set bits.
pub fn popcount(bitmap: &[u8]) -> u64 {
    bitmap.iter().map(|b| u64::from(b.count_ones())).sum()
}

/// `a AND NOT b AND NOT c ...`, byte by byte; missing bytes count as zero.
pub fn and_not(a: &[u8], nots: &[&[u8]]) -> Vec<u8> {
    a.iter()
        .enumerate()
        .map(|(i, &x)| {
            nots.iter()
                .fold(x, |acc, n| acc & !n.get(i).copied().unwrap_or(0))
        })
        .collect()
}

/// Split ascending ids into batches of at most `batch_size` ids, each as ranges.
pub fn batches(sorted_ids: &[u64], batch_size: usize) -> Vec<Vec<IdRange>> {
    sorted_ids
        .chunks(batch_size.max(1))
        .map(to_ranges)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_math_handles_zero_and_large_ids() {
        assert_eq!(group_of(0, 10_000), 0);
        assert_eq!(group_of(9_999, 10_000), 0);
        assert_eq!(group_of(10_000, 10_000), 10_000);
        let big = (1u64 << 40) + 12_345;
        assert_eq!(group_of(big, 10_000) % 10_000, 0);
        assert_eq!(group_last(u64::MAX - 5, 10), u64::MAX);
    }

    #[test]
    fn ranges_compress_runs_and_keep_gaps() {
        assert_eq!(to_ranges(&[]), Vec::<IdRange>::new());
        assert_eq!(to_ranges(&[5]), vec![[5, 5]]);
        assert_eq!(to_ranges(&[1, 2, 3, 5, 6, 9]), vec![[1, 3], [5, 6], [9, 9]]);
        assert_eq!(
            to_ranges(&[u64::MAX - 1, u64::MAX]),
            vec![[u64::MAX - 1, u64::MAX]]
        );
        let r = to_ranges(&[1, 2, 3, 5, 6, 9]);
        assert_eq!(count_in(&r), 6);
        assert!(ranges_contain(&r, 5));
        assert!(!ranges_contain(&r, 4));
        assert!(!ranges_contain(&r, 10));
        assert!(!ranges_contain(&r, 0));
        assert_eq!(expand(&r).collect::<Vec<_>>(), vec![1, 2, 3, 5, 6, 9]);
    }

    #[test]
    fn bitmaps_are_msb_first_like_redis() {
        // SETBIT k 0 1 makes byte 0 = 0x80; SETBIT k 9 1 makes byte 1 = 0x40.
        assert_eq!(bitmap_of(20_000, [20_000]), vec![0x80]);
        assert_eq!(bitmap_of(20_000, [20_009]), vec![0x00, 0x40]);
        assert_eq!(bitmap_of(0, [7, 0]), vec![0x81]);
        assert_eq!(ids_of(20_000, &[0x81, 0x40]), vec![20_000, 20_007, 20_009]);
        assert_eq!(popcount(&[0xff, 0x01]), 9);
        assert!(bitmap_of(0, []).is_empty());
    }

    #[test]
    fn last_bit_of_a_full_group_round_trips() {
        let ids: Vec<u64> = (0..10_000).collect();
        let bm = bitmap_of(0, ids.iter().copied());
        assert_eq!(bm.len(), 1_250);
        assert_eq!(ids_of(0, &bm), ids);
    }

    #[test]
    fn and_not_treats_short_bitmaps_as_zero_padded() {
        assert_eq!(and_not(&[0xff, 0xff], &[&[0x0f], &[]]), vec![0xf0, 0xff]);
        assert_eq!(and_not(&[], &[&[0xff]]), Vec::<u8>::new());
    }

    #[test]
    fn batches_never_exceed_the_batch_size() {
        let ids: Vec<u64> = (0..25).filter(|i| i % 4 != 3).collect();
        let b = batches(&ids, 5);
        assert_eq!(b.len(), 4);
        assert!(b.iter().all(|r| count_in(r) <= 5));
        assert_eq!(b.iter().map(|r| count_in(r)).sum::<u64>(), ids.len() as u64);
    }
}
