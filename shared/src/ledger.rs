//! The Redis ledger (DESIGN.md §4): per group a `src`, `tgt`, `gone` (and, once purged, `purged`) bitmap
//! and a `meta` hash; per job
//! the `spec`, the `groups` sorted set, the `failed` hash, the `tables` set and the `producer` hash.
//!
//! Keys of one group share the hash tag `{JOB:FIRST}` and keys of the job share `{JOB}`, so every
//! multi-key command (the `BITOP` that ORs a batch's bits in) stays inside one Redis Cluster slot. On a
//! cluster ([`RedisCon::Cluster`]) reads over many groups go as one pipeline per group, run concurrently.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use redis::AsyncCommands;

pub use crate::redis_con::RedisCon;

use crate::ids::bitmap_of;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("ledger: {0}")]
    Corrupt(String),
}

impl LedgerError {
    pub fn is_transient(&self) -> bool {
        match self {
            LedgerError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
            }
            LedgerError::Corrupt(_) => false,
        }
    }
}

/// A group's lifecycle (`meta.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    Producing,
    Produced,
    Complete,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Producing => "producing",
            GroupStatus::Produced => "produced",
            GroupStatus::Complete => "complete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "producing" => Some(GroupStatus::Producing),
            "produced" => Some(GroupStatus::Produced),
            "complete" => Some(GroupStatus::Complete),
            _ => None,
        }
    }
}

/// What comparing our spec with the stored one found.
#[derive(Debug, PartialEq)]
pub enum SpecCheck {
    /// No spec was stored; ours is now.
    Stored,
    Same,
    /// The stored spec differs in these fields.
    Differs(Vec<String>),
    /// Nothing is stored and we were not asked to store.
    Absent,
}

/// A group's bitmaps as stored (missing keys are empty).
#[derive(Debug, Default, Clone)]
pub struct GroupBits {
    pub src: Vec<u8>,
    pub tgt: Vec<u8>,
    pub gone: Vec<u8>,
}

impl GroupBits {
    /// From [`Ledger::bitmaps`] asked for `src`, `tgt`, `gone` first, in that order (later ones are ignored).
    pub fn from_bitmaps(mut v: Vec<Vec<u8>>) -> Self {
        let mut take = |i: usize| v.get_mut(i).map(std::mem::take).unwrap_or_default();
        GroupBits {
            src: take(0),
            tgt: take(1),
            gone: take(2),
        }
    }
}

/// A walk over the planned groups one page at a time ([`Ledger::group_pages`]): memory bounded by the
/// page, whatever the ledger's size.
pub struct GroupPages<'l> {
    ledger: &'l Ledger,
    after: Option<u64>,
    page: usize,
}

impl GroupPages<'_> {
    /// The next page of groups' `first`, ascending; `None` once every group was handed out.
    pub async fn next(&mut self) -> Result<Option<Vec<u64>>, LedgerError> {
        let firsts = self.ledger.groups_after(self.after, self.page).await?;
        match firsts.last() {
            Some(&last) => {
                self.after = Some(last);
                Ok(Some(firsts))
            }
            None => Ok(None),
        }
    }
}

#[derive(Clone)]
pub struct Ledger {
    con: RedisCon,
    job: String,
}

/// What one consumed batch leaves in the ledger, written in one `MULTI` by [`Ledger::record_batch`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchRecord {
    /// Ids committed in the target: `tgt` set.
    pub landed: Vec<u64>,
    /// Ids with no row in the source: `gone` set.
    pub gone: Vec<u64>,
    /// Ids the target refused for good, with the reason: into `failed`.
    pub failed: Vec<(u64, String)>,
    /// The batch deleted its gone ids from the target (DESIGN.md §8.3): `gone` is also cleared for the
    /// landed ids and `tgt` for the gone ones, in the same transaction.
    pub exclusive: bool,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Ledger {
    /// Connect to one node or, given several comma-separated URLs, to a Redis Cluster ([`RedisCon`]); both
    /// reconnect by themselves after Redis restarts.
    pub async fn connect(url: &str, job: &str) -> Result<Self, LedgerError> {
        Ok(Self {
            con: RedisCon::connect(url).await?,
            job: job.to_owned(),
        })
    }

    /// The connection, for the job's other keys (`control`, the throttle's budget).
    pub fn connection(&self) -> RedisCon {
        self.con.clone()
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    pub fn job_key(&self, what: &str) -> String {
        format!("bitmig:{{{}}}:{what}", self.job)
    }

    pub fn group_key(&self, first: u64, what: &str) -> String {
        format!("bitmig:{{{}:{first}}}:{what}", self.job)
    }

    /// Compare the job's spec with the stored one; store it when none is and `store` is set.
    pub async fn check_spec(
        &self,
        ours: &serde_json::Value,
        store: bool,
        ignore: &[&str],
    ) -> Result<SpecCheck, LedgerError> {
        let mut con = self.con.clone();
        let key = self.job_key("spec");
        if store {
            let set: bool = redis::cmd("SET")
                .arg(&key)
                .arg(ours.to_string())
                .arg("NX")
                .query_async::<Option<String>>(&mut con)
                .await?
                .is_some();
            if set {
                return Ok(SpecCheck::Stored);
            }
        }
        let stored: Option<String> = con.get(&key).await?;
        let Some(stored) = stored else {
            return Ok(SpecCheck::Absent);
        };
        let stored: serde_json::Value = serde_json::from_str(&stored)
            .map_err(|e| LedgerError::Corrupt(format!("{key} is not JSON: {e}")))?;
        let diffs: Vec<String> = crate::job::spec_differences(&stored, ours)
            .into_iter()
            .filter(|d| !ignore.iter().any(|i| d.starts_with(&format!("{i}:"))))
            .collect();
        Ok(if diffs.is_empty() {
            SpecCheck::Same
        } else {
            SpecCheck::Differs(diffs)
        })
    }

    /// Every planned group's `first`, ascending.
    pub async fn groups(&self) -> Result<Vec<u64>, LedgerError> {
        let mut con = self.con.clone();
        let v: Vec<u64> = con.zrange(self.job_key("groups"), 0, -1).await?;
        Ok(v)
    }

    /// Up to `limit` planned groups' `first` above `after` (from the lowest when `None`), ascending: one
    /// `ZRANGEBYSCORE … LIMIT` page of `groups`, so a walk over any number of groups holds one page at a
    /// time ([`GroupPages`]). A group planned meanwhile above the cursor is met later in the walk.
    ///
    /// Scores are doubles: above 2^53 neighbouring `first`s may share one, so there the lower bound is
    /// inclusive and what is not above `after` is dropped here (a page made only of those looks further on).
    pub async fn groups_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, LedgerError> {
        let mut con = self.con.clone();
        let limit = limit.max(1);
        // A double holds every integer up to 2^53 exactly: there the bound can exclude `after` itself.
        let min = match after {
            None => "-inf".to_owned(),
            Some(a) if a <= 1 << 53 => format!("({a}"),
            Some(a) => a.to_string(),
        };
        let mut offset = 0isize;
        loop {
            let raw: Vec<u64> = con
                .zrangebyscore_limit(self.job_key("groups"), &min, "+inf", offset, limit as isize)
                .await?;
            let full = raw.len() == limit;
            let fresh: Vec<u64> = raw
                .into_iter()
                .filter(|f| after.is_none_or(|a| *f > a))
                .collect();
            if !fresh.is_empty() || !full {
                return Ok(fresh);
            }
            offset += limit as isize;
        }
    }

    /// Walk every planned group in pages of `page` groups, ascending (see [`Self::groups_after`]).
    pub fn group_pages(&self, page: usize) -> GroupPages<'_> {
        GroupPages {
            ledger: self,
            after: None,
            page,
        }
    }

    /// Whether the producer planned the group (it is in `groups`).
    pub async fn is_planned(&self, first: u64) -> Result<bool, LedgerError> {
        let mut con = self.con.clone();
        let score: Option<f64> = con.zscore(self.job_key("groups"), first).await?;
        Ok(score.is_some())
    }

    /// The `meta` hash of each group, in order.
    pub async fn metas(&self, firsts: &[u64]) -> Result<Vec<HashMap<String, String>>, LedgerError> {
        if self.con.is_cluster() {
            let v: Vec<(HashMap<String, String>,)> = self
                .per_group(firsts, |p, f| {
                    p.hgetall(self.group_key(f, "meta"));
                })
                .await?;
            return Ok(v.into_iter().map(|(m,)| m).collect());
        }
        let mut out = Vec::with_capacity(firsts.len());
        let mut con = self.con.clone();
        for chunk in firsts.chunks(500) {
            let mut p = redis::pipe();
            for &f in chunk {
                p.hgetall(self.group_key(f, "meta"));
            }
            let v: Vec<HashMap<String, String>> = p.query_async(&mut con).await?;
            out.extend(v);
        }
        Ok(out)
    }

    /// The bitmaps of each group, in order.
    pub async fn bits(&self, firsts: &[u64]) -> Result<Vec<GroupBits>, LedgerError> {
        Ok(self
            .bitmaps(firsts, &["src", "tgt", "gone"])
            .await?
            .into_iter()
            .map(GroupBits::from_bitmaps)
            .collect())
    }

    /// Some bitmaps of each group (`which`: `tgt`, `gone`, `purged`, …), in order; a missing key is empty.
    pub async fn bitmaps(
        &self,
        firsts: &[u64],
        which: &[&str],
    ) -> Result<Vec<Vec<Vec<u8>>>, LedgerError> {
        let mut out = Vec::with_capacity(firsts.len());
        if which.is_empty() {
            return Ok(vec![Vec::new(); firsts.len()]);
        }
        if self.con.is_cluster() {
            let v: Vec<Vec<Option<Vec<u8>>>> = self
                .per_group(firsts, |p, f| {
                    for w in which {
                        p.get(self.group_key(f, w));
                    }
                })
                .await?;
            return Ok(v
                .into_iter()
                .map(|g| g.into_iter().map(Option::unwrap_or_default).collect())
                .collect());
        }
        let mut con = self.con.clone();
        for chunk in firsts.chunks(200) {
            let mut p = redis::pipe();
            for &f in chunk {
                for w in which {
                    p.get(self.group_key(f, w));
                }
            }
            let v: Vec<Option<Vec<u8>>> = p.query_async(&mut con).await?;
            for g in v.chunks(which.len()) {
                out.push(g.iter().map(|b| b.clone().unwrap_or_default()).collect());
            }
        }
        Ok(out)
    }

    /// Set the `purged` bits of `ids` (DESIGN.md §10), after their rows were deleted from the source.
    pub async fn add_purged(&self, first: u64, ids: &[u64]) -> Result<(), LedgerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        let mut p = redis::pipe();
        p.atomic();
        self.or_bits(&mut p, first, "purged", ids.iter().copied());
        p.query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// The ids of `ranges` (inside group `first`, ascending) whose `purged` bit is set: one `GETRANGE` of
    /// the bytes the ranges span.
    pub async fn purged_among(
        &self,
        first: u64,
        ranges: &[crate::ids::IdRange],
    ) -> Result<Vec<u64>, LedgerError> {
        let (Some(lo), Some(hi)) = (ranges.first(), ranges.last()) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = (
            lo[0].saturating_sub(first) / 8,
            hi[1].saturating_sub(first) / 8,
        );
        let mut con = self.con.clone();
        let bytes: Vec<u8> = con
            .getrange(self.group_key(first, "purged"), lo as isize, hi as isize)
            .await?;
        let base = first + lo * 8;
        Ok(crate::ids::ids_of(base, &bytes)
            .into_iter()
            .filter(|id| crate::ids::ranges_contain(ranges, *id))
            .collect())
    }

    /// One pipeline per group (each inside the group's hash tag), run concurrently; the answers in order.
    /// A cluster refuses a pipeline that crosses slots, and the groups' tags hash to different slots.
    async fn per_group<T: redis::FromRedisValue>(
        &self,
        firsts: &[u64],
        fill: impl Fn(&mut redis::Pipeline, u64),
    ) -> Result<Vec<T>, LedgerError> {
        let pipes: Vec<redis::Pipeline> = firsts
            .iter()
            .map(|&f| {
                let mut p = redis::pipe();
                fill(&mut p, f);
                p
            })
            .collect();
        futures::stream::iter(pipes)
            .map(|p| {
                let mut con = self.con.clone();
                async move {
                    // A pipeline answers the array of its commands' replies: `T` is a tuple.
                    let v: T = p.query_async(&mut con).await?;
                    Ok::<T, LedgerError>(v)
                }
            })
            .buffered(32)
            .try_collect()
            .await
    }

    /// Plan a group and mark it `producing` (step 1 of the producer).
    pub async fn begin_group(&self, first: u64, last: u64) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let fields = [
            ("first", first.to_string()),
            ("last", last.to_string()),
            ("status", GroupStatus::Producing.as_str().to_owned()),
            ("started_at", now_rfc3339()),
        ];
        if self.con.is_cluster() {
            // `groups` ({JOB}) and the group's meta ({JOB:FIRST}) live in different slots; planned first,
            // as in the pipeline (which is not a transaction either).
            let _: () = con.zadd(self.job_key("groups"), first, first).await?;
            let _: () = con
                .hset_multiple(self.group_key(first, "meta"), &fields)
                .await?;
            return Ok(());
        }
        redis::pipe()
            .zadd(self.job_key("groups"), first, first)
            .ignore()
            .hset_multiple(self.group_key(first, "meta"), &fields)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// OR the bits of `ids` into the group's `src` bitmap.
    pub async fn add_src(&self, first: u64, ids: &[u64]) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let mut p = redis::pipe();
        p.atomic();
        self.or_bits(&mut p, first, "src", ids.iter().copied());
        p.query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// Mark a group `produced` after every batch of it was confirmed by the broker.
    pub async fn finish_group(&self, first: u64, source_count: u64) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let now = now_rfc3339();
        let _: () = con
            .hset_multiple(
                self.group_key(first, "meta"),
                &[
                    ("status", GroupStatus::Produced.as_str()),
                    ("source_count", &source_count.to_string()),
                    ("produced_at", &now),
                    ("driven_at", &now),
                ],
            )
            .await?;
        Ok(())
    }

    fn or_bits(
        &self,
        p: &mut redis::Pipeline,
        first: u64,
        which: &str,
        ids: impl IntoIterator<Item = u64>,
    ) {
        let bits = bitmap_of(first, ids);
        if bits.is_empty() {
            return;
        }
        let dest = self.group_key(first, which);
        let tmp = self.group_key(
            first,
            &format!("tmp:{which}:{:016x}", rand::random::<u64>()),
        );
        p.cmd("SET")
            .arg(&tmp)
            .arg(bits)
            .arg("PX")
            .arg(60_000)
            .ignore();
        p.cmd("BITOP")
            .arg("OR")
            .arg(&dest)
            .arg(&dest)
            .arg(&tmp)
            .ignore();
        p.del(&tmp).ignore();
    }

    /// Record a written batch (consumer step 2): failed rows first, then in one transaction (`MULTI`) the
    /// `tgt` bits of what landed and the `gone` bits of what no longer exists, and for an exclusive batch
    /// the clearing of the opposite bits. One round trip without failures.
    pub async fn record_batch(&self, first: u64, batch: &BatchRecord) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        if !batch.failed.is_empty() {
            let at = now_rfc3339();
            let items: Vec<(String, String)> = batch
                .failed
                .iter()
                .map(|(id, reason)| {
                    (
                        id.to_string(),
                        serde_json::json!({"reason": reason, "at": at}).to_string(),
                    )
                })
                .collect();
            let _: () = con.hset_multiple(self.job_key("failed"), &items).await?;
        }
        if batch.landed.is_empty() && batch.gone.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        p.atomic();
        self.or_bits(&mut p, first, "tgt", batch.landed.iter().copied());
        self.or_bits(&mut p, first, "gone", batch.gone.iter().copied());
        if batch.exclusive {
            self.clear_bits(&mut p, first, "gone", &batch.landed);
            self.clear_bits(&mut p, first, "tgt", &batch.gone);
        }
        p.query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// Clear the bits of `ids` in one `BITFIELD` (offsets as `SETBIT` counts them).
    fn clear_bits(&self, p: &mut redis::Pipeline, first: u64, which: &str, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let cmd = p.cmd("BITFIELD").arg(self.group_key(first, which));
        for id in ids {
            cmd.arg("SET").arg("u1").arg(id - first).arg(0);
        }
        cmd.ignore();
    }

    /// Add target tables or indices to `bitmig:{JOB}:tables` (DESIGN.md §4), before the first write to them.
    pub async fn add_tables(&self, names: &[String]) -> Result<(), LedgerError> {
        self.add_names("tables", names).await
    }

    /// Add `names` to the job's set `which` (nothing to do for none).
    async fn add_names(&self, which: &str, names: &[String]) -> Result<(), LedgerError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        let _: () = con.sadd(self.job_key(which), names).await?;
        Ok(())
    }

    /// Every target table or index the job has written to (`bitmig:{JOB}:tables`), read fresh.
    pub async fn tables(&self) -> Result<Vec<String>, LedgerError> {
        let mut con = self.con.clone();
        let mut names: Vec<String> = con.smembers(self.job_key("tables")).await?;
        names.sort_unstable();
        Ok(names)
    }

    /// Record target tables a consumer is about to create (`bitmig:{JOB}:created`, `create = true`): the
    /// tables `bitmig-compensator indexes` gives the source's secondary indexes after the copy.
    pub async fn add_created_tables(&self, names: &[String]) -> Result<(), LedgerError> {
        self.add_names("created", names).await
    }

    /// Tables bitmig created, and of those the ones `indexes` finished (`bitmig:{JOB}:indexed`), sorted.
    pub async fn created_tables(&self) -> Result<(Vec<String>, Vec<String>), LedgerError> {
        let mut con = self.con.clone();
        let (mut created, mut indexed): (Vec<String>, Vec<String>) = redis::pipe()
            .smembers(self.job_key("created"))
            .smembers(self.job_key("indexed"))
            .query_async(&mut con)
            .await?;
        created.sort_unstable();
        indexed.sort_unstable();
        Ok((created, indexed))
    }

    /// Record that `table` holds every secondary index of the source that can be made on it.
    pub async fn mark_indexed(&self, table: &str) -> Result<(), LedgerError> {
        self.add_names("indexed", &[table.to_owned()]).await
    }

    /// Ids recorded in `failed`.
    pub async fn failed_ids(&self) -> Result<Vec<u64>, LedgerError> {
        let mut con = self.con.clone();
        let keys: Vec<String> = con.hkeys(self.job_key("failed")).await?;
        Ok(keys.iter().filter_map(|k| k.parse().ok()).collect())
    }

    pub async fn failed_count(&self) -> Result<u64, LedgerError> {
        let mut con = self.con.clone();
        Ok(con.hlen(self.job_key("failed")).await?)
    }

    /// Forget failed ids (before re-driving them on request).
    pub async fn forget_failed(&self, ids: &[u64]) -> Result<(), LedgerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        for chunk in ids.chunks(1000) {
            let _: () = con.hdel(self.job_key("failed"), chunk).await?;
        }
        Ok(())
    }

    /// After a re-drive of `missing` ids (compensator step 4).
    pub async fn mark_redriven(&self, first: u64, missing: u64) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let now = now_rfc3339();
        let meta = self.group_key(first, "meta");
        redis::pipe()
            .hincr(&meta, "redrives", 1)
            .ignore()
            .hset_multiple(
                &meta,
                &[
                    ("driven_at", now.as_str()),
                    ("checked_at", now.as_str()),
                    ("missing", &missing.to_string()),
                ],
            )
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// Record a group's verification (DESIGN.md §9): its `diff` bitmap becomes exactly `ids` (removed when
    /// none differ) and its meta says `verify` (`equal`/`differs`), `verified_at` and `differs`, atomically.
    pub async fn record_verify(&self, first: u64, ids: &[u64]) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let now = now_rfc3339();
        let diff = self.group_key(first, "diff");
        let mut p = redis::pipe();
        p.atomic();
        if ids.is_empty() {
            p.del(&diff).ignore();
        } else {
            p.set(&diff, crate::ids::bitmap_of(first, ids.iter().copied()))
                .ignore();
        }
        p.hset_multiple(
            self.group_key(first, "meta"),
            &[
                ("verify", if ids.is_empty() { "equal" } else { "differs" }),
                ("verified_at", now.as_str()),
                ("differs", &ids.len().to_string()),
            ],
        )
        .ignore();
        p.query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// Replace the sampled differences of ids in `first..=last` in `bitmig:{JOB}:diffs` by `entries`
    /// (id → JSON), keeping the sample at most `cap` entries: entries beyond it are not added.
    pub async fn sample_diffs(
        &self,
        first: u64,
        last: u64,
        entries: &[(u64, String)],
        cap: usize,
    ) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let key = self.job_key("diffs");
        let keys: Vec<String> = con.hkeys(&key).await?;
        let stale: Vec<&String> = keys
            .iter()
            .filter(|k| k.parse::<u64>().is_ok_and(|id| id >= first && id <= last))
            .collect();
        if !stale.is_empty() {
            let _: () = con.hdel(&key, stale.as_slice()).await?;
        }
        let room = cap.saturating_sub(keys.len() - stale.len());
        let add: Vec<(String, &str)> = entries
            .iter()
            .take(room)
            .map(|(id, v)| (id.to_string(), v.as_str()))
            .collect();
        if !add.is_empty() {
            let _: () = con.hset_multiple(&key, &add).await?;
        }
        Ok(())
    }

    /// The sample of differing ids (`bitmig:{JOB}:diffs`): id → JSON.
    pub async fn diff_sample(&self) -> Result<HashMap<String, String>, LedgerError> {
        let mut con = self.con.clone();
        Ok(con.hgetall(self.job_key("diffs")).await?)
    }

    /// Marks groups `complete` (the compensator found nothing missing): one pipeline per 500 groups (per
    /// group, 32 at a time, on a cluster) rather than a round trip each — a pass over a billion-id ledger
    /// completes 100 000 groups.
    pub async fn mark_complete_many(&self, firsts: &[u64]) -> Result<(), LedgerError> {
        let now = now_rfc3339();
        let fields = [
            ("status", GroupStatus::Complete.as_str()),
            ("checked_at", now.as_str()),
            ("missing", "0"),
        ];
        if self.con.is_cluster() {
            let _: Vec<((),)> = self
                .per_group(firsts, |p, f| {
                    p.hset_multiple(self.group_key(f, "meta"), &fields);
                })
                .await?;
            return Ok(());
        }
        let mut con = self.con.clone();
        for chunk in firsts.chunks(500) {
            let mut p = redis::pipe();
            for &f in chunk {
                p.hset_multiple(self.group_key(f, "meta"), &fields).ignore();
            }
            let _: () = p.query_async(&mut con).await?;
        }
        Ok(())
    }

    /// A group's `status`, `None` when the group is not planned (the follower plans it then).
    pub async fn group_status(&self, first: u64) -> Result<Option<GroupStatus>, LedgerError> {
        let mut con = self.con.clone();
        let s: Option<String> = con.hget(self.group_key(first, "meta"), "status").await?;
        Ok(s.as_deref().and_then(GroupStatus::parse))
    }

    /// The status of each group of `firsts`, in order, in one round of pipelines ([`Ledger::per_group`]).
    pub async fn group_statuses(
        &self,
        firsts: &[u64],
    ) -> Result<Vec<Option<GroupStatus>>, LedgerError> {
        let v: Vec<(Option<String>,)> = self
            .per_group(firsts, |p, f| {
                p.hget(self.group_key(f, "meta"), "status");
            })
            .await?;
        Ok(v.into_iter()
            .map(|(s,)| s.as_deref().and_then(GroupStatus::parse))
            .collect())
    }

    /// [`Ledger::add_src`] for several groups at once: `(first, ids)` each, one round of pipelines.
    pub async fn add_src_many(&self, groups: &[(u64, Vec<u64>)]) -> Result<(), LedgerError> {
        let firsts: Vec<u64> = groups.iter().map(|(f, _)| *f).collect();
        let _: Vec<()> = self
            .per_group(&firsts, |p, f| {
                p.atomic();
                if let Some((_, ids)) = groups.iter().find(|(g, _)| *g == f) {
                    self.or_bits(p, f, "src", ids.iter().copied());
                }
            })
            .await?;
        Ok(())
    }

    /// After a catch-up of the groups' ids is confirmed (DESIGN.md §8.2): a `complete` group is `produced`
    /// again, and `driven_at` moves to now, so the compensator checks it again once the batches had time
    /// to land. A group the walk is still `producing` is left to the walk. The statuses are read in one
    /// round of pipelines, the groups marked in another.
    pub async fn mark_caught_up_many(&self, firsts: &[u64]) -> Result<(), LedgerError> {
        let statuses = self.group_statuses(firsts).await?;
        let marked: Vec<u64> = firsts
            .iter()
            .zip(statuses)
            .filter(|(_, s)| *s != Some(GroupStatus::Producing))
            .map(|(f, _)| *f)
            .collect();
        let now = now_rfc3339();
        let _: Vec<()> = self
            .per_group(&marked, |p, f| {
                p.hset_multiple(
                    self.group_key(f, "meta"),
                    &[
                        ("status", GroupStatus::Produced.as_str()),
                        ("driven_at", now.as_str()),
                    ],
                )
                .ignore();
            })
            .await?;
        Ok(())
    }

    /// The follower's state (`bitmig:{JOB}:follow`, DESIGN.md §4).
    pub async fn follow_state(&self) -> Result<HashMap<String, String>, LedgerError> {
        let mut con = self.con.clone();
        Ok(con.hgetall(self.job_key("follow")).await?)
    }

    pub async fn set_follow_state(&self, fields: &[(&str, String)]) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let _: () = con.hset_multiple(self.job_key("follow"), fields).await?;
        Ok(())
    }

    /// The producer's own state (`bitmig:{JOB}:producer`): `status` (`running`/`done`), range, times.
    pub async fn producer_state(&self) -> Result<HashMap<String, String>, LedgerError> {
        let mut con = self.con.clone();
        Ok(con.hgetall(self.job_key("producer")).await?)
    }

    pub async fn set_producer_state(&self, fields: &[(&str, String)]) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let _: () = con.hset_multiple(self.job_key("producer"), fields).await?;
        Ok(())
    }
}
