//! Synthetic ledgers written straight into Redis: `groups` complete groups of [`GROUP_SIZE`] ids, as a finished
//! copy leaves them (DESIGN.md §4) — `src` and `tgt` all ones, meta `produced` an hour ago with
//! `source_count`, producer `done`, every group in `bitmig:{JOB}:groups`; no `spec` key.
//!
//! Contract: the keys go in pipelines of 500 groups (SET of the bitmaps, HSET, ZADD), so 100 000 groups
//! (~375 MB in Redis) take seconds; the caller clears them with [`crate::Bench::clear_job`] afterwards.

use std::time::Instant;

use anyhow::Result;

use crate::bitmig::GROUP_SIZE;
use crate::Bench;

impl Bench {
    pub async fn write_ledger(&self, job: &str, groups: u64) -> Result<()> {
        let t0 = Instant::now();
        let mut r = self.redis().await?;
        let ago = (chrono::Utc::now() - chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let ones = vec![0xffu8; (GROUP_SIZE / 8) as usize];
        let mut g = 0;
        while g < groups {
            let mut p = redis::pipe();
            for group in g..(g + 500).min(groups) {
                let first = group * GROUP_SIZE;
                let tag = format!("bitmig:{{{job}:{first}}}");
                p.cmd("SET").arg(format!("{tag}:src")).arg(&ones).ignore();
                p.cmd("SET").arg(format!("{tag}:tgt")).arg(&ones).ignore();
                p.cmd("HSET")
                    .arg(format!("{tag}:meta"))
                    .arg(&[
                        ("first", first.to_string()),
                        ("last", (first + GROUP_SIZE - 1).to_string()),
                        ("status", "produced".into()),
                        ("produced_at", ago.clone()),
                        ("driven_at", ago.clone()),
                        ("source_count", GROUP_SIZE.to_string()),
                    ])
                    .ignore();
                p.cmd("ZADD")
                    .arg(format!("bitmig:{{{job}}}:groups"))
                    .arg(first)
                    .arg(first)
                    .ignore();
            }
            let _: () = p.query_async(&mut r).await?;
            g += 500;
        }
        let _: () = redis::cmd("HSET")
            .arg(format!("bitmig:{{{job}}}:producer"))
            .arg("status")
            .arg("done")
            .query_async(&mut r)
            .await?;
        println!(
            "wrote {groups} complete groups ({} ids) of job '{job}' in {:.1} s",
            groups * GROUP_SIZE,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// How many ids `0..=max_id` of `job` were published (`src`) and have neither landed (`tgt`) nor been
    /// found deleted (`gone`): zero once every row a copy read up to the start's largest id is dealt with
    /// (DESIGN.md §4's bit offsets).
    pub async fn not_landed(&self, job: &str, max_id: u64) -> Result<u64> {
        let mut r = self.redis().await?;
        let mut p = redis::pipe();
        let firsts: Vec<u64> = (0..=max_id / GROUP_SIZE).map(|g| g * GROUP_SIZE).collect();
        for first in &firsts {
            let tag = format!("bitmig:{{{job}:{first}}}");
            for which in ["src", "tgt", "gone"] {
                p.cmd("GET").arg(format!("{tag}:{which}"));
            }
        }
        let maps: Vec<Option<Vec<u8>>> = p.query_async(&mut r).await?;
        let mut n = 0;
        for (i, first) in firsts.iter().enumerate() {
            // Ids above max_id (in its group) were inserted later: not counted.
            let ids = (max_id - first + 1).min(GROUP_SIZE);
            let map = |k: usize| maps[3 * i + k].as_deref();
            n += count_src_only(map(0), map(1), map(2), ids);
        }
        Ok(n)
    }
}

/// Ids among offsets `0..ids` with a bit in `src` and in neither `a` nor `b` (Redis bitmaps: bit 0 is the
/// top bit of byte 0).
fn count_src_only(src: Option<&[u8]>, a: Option<&[u8]>, b: Option<&[u8]>, ids: u64) -> u64 {
    let byte = |m: Option<&[u8]>, i: usize| m.and_then(|m| m.get(i).copied()).unwrap_or(0);
    let mut n = 0;
    for i in 0..ids.div_ceil(8) as usize {
        let mut v = byte(src, i) & !(byte(a, i) | byte(b, i));
        let bits_left = ids - 8 * i as u64;
        if bits_left < 8 {
            v &= 0xffu8 << (8 - bits_left);
        }
        n += v.count_ones() as u64;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::count_src_only;

    #[test]
    fn published_ids_neither_landed_nor_gone_are_counted_up_to_the_limit() {
        let src: &[u8] = &[0b1111_0001, 0b1100_0000];
        assert_eq!(
            count_src_only(Some(src), Some(&[0b1000_0000]), Some(&[0b0100_0000]), 16),
            5
        );
        assert_eq!(count_src_only(Some(src), None, None, 9), 6);
        assert_eq!(count_src_only(Some(src), None, None, 7), 4);
        assert_eq!(count_src_only(None, None, None, 100), 0);
        assert_eq!(
            count_src_only(Some(&[0xff]), Some(&[0xf0]), Some(&[0x0f]), 8),
            0
        );
    }
}
