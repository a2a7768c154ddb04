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
}
