//! The Redis ledger of DESIGN.md §4, read as an operator with redis-cli would.

use std::collections::HashMap;

use redis::AsyncCommands;

use crate::TestJob;

/// The bitmaps of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bits {
    /// `:src`: the id existed in the source and was published.
    Src,
    /// `:tgt`: the id's row is committed in the target.
    Tgt,
    /// `:gone`: the id was published but no longer existed when a consumer looked.
    Gone,
    /// `:purged`: the id's row was deleted from the source after it was proven in the target (§10).
    Purged,
}

impl Bits {
    pub(super) fn suffix(self) -> &'static str {
        match self {
            Bits::Src => "src",
            Bits::Tgt => "tgt",
            Bits::Gone => "gone",
            Bits::Purged => "purged",
        }
    }
}

impl TestJob {
    /// `bitmig:{JOB}:<what>`.
    pub fn job_key(&self, what: &str) -> String {
        format!("bitmig:{{{}}}:{what}", self.name)
    }

    /// `bitmig:{JOB:FIRST}:<what>`.
    pub fn group_key(&self, first: u64, what: &str) -> String {
        format!("bitmig:{{{}:{first}}}:{what}", self.name)
    }

    /// The planned groups' `FIRST`s, from the `groups` sorted set, ascending.
    pub async fn groups(&self) -> Vec<u64> {
        let mut redis = self.redis.clone();
        let members: Vec<String> = redis
            .zrange(self.job_key("groups"), 0, -1)
            .await
            .expect("ZRANGE groups");
        let mut firsts: Vec<u64> = members
            .iter()
            .map(|m| {
                m.parse()
                    .unwrap_or_else(|_| panic!("groups member {m:?} is not a number"))
            })
            .collect();
        firsts.sort_unstable();
        firsts
    }

    /// The ids whose bit is set in the group's bitmap (GET, decoded MSB-first as SETBIT numbers bits).
    pub async fn bitmap_ids(&self, first: u64, bits: Bits) -> Vec<u64> {
        let mut redis = self.redis.clone();
        let bytes: Option<Vec<u8>> = redis
            .get(self.group_key(first, bits.suffix()))
            .await
            .expect("GET bitmap");
        ids_from_bitmap(first, &bytes.unwrap_or_default())
    }

    /// `BITCOUNT` of one group's bitmap.
    pub async fn bitcount(&self, first: u64, bits: Bits) -> u64 {
        let mut redis = self.redis.clone();
        redis::cmd("BITCOUNT")
            .arg(self.group_key(first, bits.suffix()))
            .query_async(&mut redis)
            .await
            .expect("BITCOUNT")
    }

    /// The sum of `BITCOUNT` over `groups`, in one round trip.
    pub async fn bitcount_sum(&self, groups: &[u64], bits: Bits) -> u64 {
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        for &first in groups {
            pipe.cmd("BITCOUNT")
                .arg(self.group_key(first, bits.suffix()));
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut redis)
            .await
            .expect("BITCOUNT pipeline");
        counts.iter().sum()
    }

    /// The group's `meta` hash.
    pub async fn meta(&self, first: u64) -> HashMap<String, String> {
        let mut redis = self.redis.clone();
        redis
            .hgetall(self.group_key(first, "meta"))
            .await
            .expect("HGETALL meta")
    }

    /// Every Redis key of this job: `bitmig:{JOB}*` and `bitmig:{JOB:*`.
    pub async fn redis_keys(&self) -> Vec<String> {
        let mut redis = self.redis.clone();
        job_keys(&mut redis, &self.name).await.expect("SCAN")
    }

    /// The ids of the group's `diff` bitmap (DESIGN.md §9): those that differed at its last verification.
    pub async fn diff_ids(&self, first: u64) -> Vec<u64> {
        let mut redis = self.redis.clone();
        let bytes: Option<Vec<u8>> = redis
            .get(self.group_key(first, "diff"))
            .await
            .expect("GET diff");
        ids_from_bitmap(first, &bytes.unwrap_or_default())
    }

    /// `bitmig:{JOB}:diffs`: the sample of differing ids, id → JSON.
    pub async fn diff_sample(&self) -> HashMap<String, String> {
        let mut redis = self.redis.clone();
        redis
            .hgetall(self.job_key("diffs"))
            .await
            .expect("HGETALL diffs")
    }

    /// `GET bitmig:{JOB}:spec`: the job as the ledger recorded it, if any.
    pub async fn recorded_spec(&self) -> Option<String> {
        let mut redis = self.redis.clone();
        redis.get(self.job_key("spec")).await.expect("GET spec")
    }
}

/// The ids of the set bits of a bitmap that starts at id `first`; bit 0 is the top bit of byte 0.
pub fn ids_from_bitmap(first: u64, bytes: &[u8]) -> Vec<u64> {
    let mut ids = Vec::new();
    for (i, &byte) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                ids.push(first + (i as u64) * 8 + bit);
            }
        }
    }
    ids
}

async fn job_keys(
    redis: &mut redis::aio::MultiplexedConnection,
    job: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    for pattern in [format!("bitmig:{{{job}}}*"), format!("bitmig:{{{job}:*")] {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(redis)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Cleanup: deletes every key of `job`, reporting (not failing on) errors.
pub(super) async fn delete_job_keys(redis_url: &str, job: &str) {
    let result = async {
        let mut redis = redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await?;
        let keys = job_keys(&mut redis, job).await?;
        for chunk in keys.chunks(500) {
            redis::cmd("DEL")
                .arg(chunk)
                .query_async::<()>(&mut redis)
                .await?;
        }
        redis::RedisResult::Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("cleanup: Redis keys of {job}: {e}");
    }
}

#[test]
fn bitmap_bits_are_numbered_from_the_top_bit_of_byte_zero() {
    assert_eq!(
        ids_from_bitmap(100, &[0b1000_0001, 0, 0b0100_0000]),
        vec![100, 107, 117]
    );
    assert!(ids_from_bitmap(0, &[]).is_empty());
}
