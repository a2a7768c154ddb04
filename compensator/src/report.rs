//! `bitmig-compensator report`: what the ledger says about a job, for an operator or a script.
//!
//! Read only. Per group `missing = src ∧ ¬tgt ∧ ¬gone` minus ids in `failed`; `tgt ∧ ¬src` is counted
//! as `extra`, an anomaly an operator should look at. The job is complete when a ledger exists, the
//! producer is `done` and planned no more groups than the ledger holds, every group is produced, and
//! nothing is missing or failed; otherwise [`Report::reasons`] says why, in words.
//!
//! Archiving (DESIGN.md §10): `purged_ids` (rows `purge` deleted from the source after proving them),
//! `purge_pending` (in the target, not purged yet) and the groups still holding such rows.
//!
//! The groups are walked in pages of [`GROUP_PAGE`] (meta and bitmaps fetched per page, one pipeline each)
//! and summed by `Report::add_group` as they come, so the report's memory does not grow with the ledger:
//! a billion-id job is read in the memory of one page.
//!
//! A followed job (DESIGN.md §8) adds `follow` (from `bitmig:{JOB}:follow`) and `caught_up`: every group
//! complete, no settle re-drive waiting, lag under a second, not paused (a paused follower reads nothing,
//! so changes may wait unseen in the source's log) and — checked by [`check_queues`], which
//! `report` on the command line runs — the work and retry queues empty. `caught_up` is the moment an
//! operator may switch the application over.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use bitmig_shared::cli;
use bitmig_shared::control::Control;
use bitmig_shared::ids::{and_not, ids_of, popcount};
use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::{GroupBits, GroupStatus, Ledger, SpecCheck};
use serde::Serialize;

/// Groups read per round trip: their meta and bitmaps (~3.75 KB per group of 10 000 ids) are all the
/// report holds at once.
const GROUP_PAGE: usize = 1000;

/// What the ledger says about a job.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub job: String,
    /// Whether a ledger exists at all (`spec` is stored).
    pub ledger_present: bool,
    /// The producer's state: `running`, `done`, or `none`.
    pub producer: String,
    pub groups: u64,
    pub groups_complete: u64,
    pub groups_produced: u64,
    pub groups_producing: u64,
    pub source_ids: u64,
    pub target_ids: u64,
    pub gone_ids: u64,
    pub missing_ids: u64,
    pub extra_ids: u64,
    pub failed_ids: u64,
    pub complete: bool,
    /// Groups with a verification result (meta `verify`, DESIGN.md §9).
    pub groups_verified: u64,
    /// Groups whose last verification found differing ids.
    pub groups_differing: u64,
    /// Ids that differed at the groups' last verifications (sum of meta `differs`).
    pub diff_ids: u64,
    /// Every group verified, none differing (says nothing about rows changed since).
    pub verified: bool,
    /// `bitmig-compensator pause` holds the job (`control.paused`).
    pub paused: bool,
    /// The reason given to `pause` (empty when none, or not paused).
    pub reason: String,
    /// Why work waits for `[throttle]` right now (`control.throttled`), if it does.
    pub throttled: Option<String>,
    /// Ids whose source rows `purge` deleted after proving their copies (`purged` bits, DESIGN.md §10).
    pub purged_ids: u64,
    /// Ids in the target and not purged yet (`tgt ∧ ¬gone ∧ ¬purged`, minus `failed`): what a purge has
    /// still to prove and delete.
    pub purge_pending: u64,
    /// Groups whose source still holds rows for a purge (`purge_pending` in them).
    pub groups_holding_rows: u64,
    /// Up to 20 of them: first → pending ids.
    pub groups_holding: BTreeMap<u64, u64>,
    /// Up to 20 groups with missing ids: first → count.
    pub groups_missing: BTreeMap<u64, u64>,
    /// Target tables bitmig created (`[target] create = true`, `bitmig:{JOB}:created`).
    pub tables_created: u64,
    /// Of those, the ones still without the source's secondary indexes: `bitmig-compensator indexes`
    /// builds them once the job is complete.
    pub tables_awaiting_indexes: Vec<String>,
    /// Why the job is not complete, in words.
    pub reasons: Vec<String>,
    /// The follower's state, for a job run with `bitmig-producer --follow`.
    pub follow: Option<FollowReport>,
    /// Messages in the work and retry queues (`None`: not checked, see [`check_queues`]).
    pub queued: Option<u64>,
    /// Followed, complete, not paused, nothing settling, lag under a second and the queues checked and
    /// empty.
    pub caught_up: bool,
}

/// `bitmig:{JOB}:follow` as `report` shows it (DESIGN.md §4).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FollowReport {
    pub from: String,
    pub position: String,
    /// Now − commit time of the newest change published; 0 when the follower has nothing new.
    pub lag_s: f64,
    pub events: u64,
    pub ids_published: u64,
    pub last_event_at: Option<String>,
    /// Ids published whose settle re-drive (or first publish) is still to come.
    pub settling: u64,
    /// When the follower last wrote its state; a follower that stopped is not caught up.
    pub checkpoint_at: Option<String>,
}

/// Counts the messages waiting in the job's work and retry queues (passive declares, read only) and
/// settles `caught_up`.
pub async fn check_queues(r: &mut Report, amqp_url: &str) -> anyhow::Result<()> {
    use lapin::options::QueueDeclareOptions;
    let conn = bitmig_shared::queue::connect(amqp_url, "bitmig-compensator-report")
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    let mut names = vec![bitmig_shared::queue::work_queue(&r.job)];
    names.extend(
        (1..=bitmig_shared::queue::RETRY_DELAYS.len())
            .map(|n| bitmig_shared::queue::retry_queue(&r.job, n)),
    );
    let mut queued = 0u64;
    for name in names {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .queue_declare(name.as_str().into(), passive, Default::default())
            .await
        {
            Ok(q) => queued += u64::from(q.message_count()),
            // No such queue: nothing waits in it (a passive declare closes the channel, so stop here).
            Err(_) => break,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    r.queued = Some(queued);
    r.caught_up = caught_up(r);
    Ok(())
}

fn caught_up(r: &Report) -> bool {
    r.complete
        && !r.paused
        && r.queued == Some(0)
        && r.follow
            .as_ref()
            .is_some_and(|f| f.lag_s < 1.0 && f.settling == 0)
}

/// Add up the ledger of `job` (read only): counts per kind of bit, groups per status, and the reasons
/// the job is not complete. A job that differs from the recorded spec is [`cli::BadInput`].
pub async fn report(job: &JobSpec, redis_url: &str) -> anyhow::Result<Report> {
    let ledger = Ledger::connect(redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    let mut r = Report {
        job: job.name.clone(),
        ..Default::default()
    };
    let found = cli::check_spec(&ledger, job, false, crate::SPEC_FIELDS_IGNORED).await?;
    r.ledger_present = !matches!(found, SpecCheck::Absent);
    let control = Control::new(ledger.connection(), &job.name).state().await?;
    r.paused = control.paused;
    r.reason = if control.paused {
        control.reason
    } else {
        String::new()
    };
    r.throttled = control.throttled;
    let producer = ledger.producer_state().await?;
    r.producer = producer
        .get("status")
        .cloned()
        .unwrap_or_else(|| "none".into());
    let failed: HashSet<u64> = ledger.failed_ids().await?.into_iter().collect();
    r.failed_ids = failed.len() as u64;
    // One page of groups at a time: memory stays bounded whatever the ledger's size.
    let mut pages = ledger.group_pages(GROUP_PAGE);
    while let Some(firsts) = pages.next().await? {
        let metas = ledger.metas(&firsts).await?;
        // One pipeline per page for the four bitmaps the report reads.
        let bitmaps = ledger
            .bitmaps(&firsts, &["src", "tgt", "gone", "purged"])
            .await?;
        for ((first, meta), mut maps) in firsts.iter().zip(&metas).zip(bitmaps) {
            let purged = maps.pop().unwrap_or_default();
            r.add_group(
                *first,
                meta,
                &GroupBits::from_bitmaps(maps),
                &purged,
                &failed,
            );
        }
    }
    if !r.ledger_present {
        r.reasons.push(format!(
            "no ledger in Redis for job `{}` (never produced, or Redis lost its data): run the producer to build it",
            job.name
        ));
    } else if r.producer != "done" {
        r.reasons.push(format!(
            "the producer has not finished planning (state: {}): run or re-run the producer",
            r.producer
        ));
    }
    let planned: Option<u64> = producer.get("groups").and_then(|g| g.parse().ok());
    if let Some(planned) = planned.filter(|p| r.producer == "done" && *p > r.groups) {
        r.reasons.push(format!(
            "the producer planned {planned} groups but the ledger holds {}: Redis lost data; run the producer again to rebuild it",
            r.groups
        ));
    }
    if r.groups_producing > 0 {
        r.reasons.push(format!(
            "{} groups are not produced yet",
            r.groups_producing
        ));
    }
    if r.missing_ids > 0 {
        r.reasons.push(format!(
            "{} ids are missing from the target (in flight, or lost: `bitmig-compensator run` re-drives them)",
            r.missing_ids
        ));
    }
    if r.failed_ids > 0 {
        r.reasons.push(format!(
            "{} ids were refused by the target (see HGETALL {}; `run --retry-failed` re-drives them)",
            r.failed_ids,
            ledger.job_key("failed")
        ));
    }
    r.complete = r.reasons.is_empty();
    let (created, indexed) = ledger.created_tables().await?;
    r.tables_created = created.len() as u64;
    r.tables_awaiting_indexes = created
        .into_iter()
        .filter(|t| indexed.binary_search(t).is_err())
        .collect();
    r.verified = r.groups > 0 && r.groups_verified == r.groups && r.groups_differing == 0;
    let f = ledger.follow_state().await?;
    if let Some(from) = f.get("from") {
        let num = |k: &str| f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        r.follow = Some(FollowReport {
            from: from.clone(),
            position: f.get("position").cloned().unwrap_or_default(),
            lag_s: f.get("lag_s").and_then(|v| v.parse().ok()).unwrap_or(0.0),
            events: num("events"),
            ids_published: num("ids_published"),
            last_event_at: f.get("last_event_at").cloned(),
            settling: num("settling"),
            checkpoint_at: f.get("checkpoint_at").cloned(),
        });
    }
    r.caught_up = caught_up(&r);
    Ok(r)
}

impl Report {
    /// Add one group's meta and bitmaps to the totals: every per-group count of the report is summed here,
    /// once, as the walk over the ledger's pages goes.
    fn add_group(
        &mut self,
        first: u64,
        meta: &HashMap<String, String>,
        b: &GroupBits,
        purged: &[u8],
        failed: &HashSet<u64>,
    ) {
        self.groups += 1;
        self.purged_ids += popcount(purged);
        let pending_bits = and_not(&b.tgt, &[&b.gone, purged]);
        let pending = match popcount(&pending_bits) {
            0 => 0,
            n if failed.is_empty() => n,
            _ => ids_of(first, &pending_bits)
                .into_iter()
                .filter(|id| !failed.contains(id))
                .count() as u64,
        };
        if pending > 0 {
            self.purge_pending += pending;
            self.groups_holding_rows += 1;
            if self.groups_holding.len() < 20 {
                self.groups_holding.insert(first, pending);
            }
        }
        match meta.get("status").and_then(|s| GroupStatus::parse(s)) {
            Some(GroupStatus::Complete) => self.groups_complete += 1,
            Some(GroupStatus::Produced) => self.groups_produced += 1,
            _ => self.groups_producing += 1,
        }
        match meta.get("verify").map(String::as_str) {
            Some("equal") => self.groups_verified += 1,
            Some("differs") => {
                self.groups_verified += 1;
                self.groups_differing += 1;
                self.diff_ids += meta
                    .get("differs")
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
        self.source_ids += popcount(&b.src);
        self.target_ids += popcount(&b.tgt);
        self.gone_ids += popcount(&and_not(&b.gone, &[&b.tgt]));
        self.extra_ids += popcount(&and_not(&b.tgt, &[&b.src]));
        let missing_bits = and_not(&b.src, &[&b.tgt, &b.gone]);
        let missing = match popcount(&missing_bits) {
            0 => 0,
            n if failed.is_empty() => n,
            _ => ids_of(first, &missing_bits)
                .into_iter()
                .filter(|id| !failed.contains(id))
                .count() as u64,
        };
        if missing > 0 {
            self.missing_ids += missing;
            if self.groups_missing.len() < 20 {
                self.groups_missing.insert(first, missing);
            }
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "job {}: {}",
            self.job,
            if self.complete {
                "COMPLETE"
            } else {
                "INCOMPLETE"
            }
        )?;
        writeln!(
            f,
            "  groups       {:>12}  ({} complete, {} produced, {} producing; producer {})",
            self.groups,
            self.groups_complete,
            self.groups_produced,
            self.groups_producing,
            self.producer
        )?;
        if self.paused {
            match self.reason.as_str() {
                "" => writeln!(f, "  PAUSED (`bitmig-compensator resume` lets it go on)")?,
                why => writeln!(
                    f,
                    "  PAUSED: {why} (`bitmig-compensator resume` lets it go on)"
                )?,
            }
        }
        if let Some(why) = &self.throttled {
            writeln!(f, "  throttled: {why}")?;
        }
        writeln!(f, "  source ids   {:>12}", self.source_ids)?;
        writeln!(f, "  target ids   {:>12}", self.target_ids)?;
        writeln!(f, "  gone ids     {:>12}", self.gone_ids)?;
        writeln!(f, "  missing ids  {:>12}", self.missing_ids)?;
        writeln!(f, "  failed ids   {:>12}", self.failed_ids)?;
        writeln!(f, "  extra ids    {:>12}", self.extra_ids)?;
        writeln!(
            f,
            "  verified     {:>12}  ({} of {} groups verified, {} differing, {} differing ids)",
            if self.verified { "yes" } else { "no" },
            self.groups_verified,
            self.groups,
            self.groups_differing,
            self.diff_ids
        )?;
        if self.purged_ids > 0 {
            writeln!(
                f,
                "  purged ids   {:>12}  ({} pending in {} groups still holding rows)",
                self.purged_ids, self.purge_pending, self.groups_holding_rows
            )?;
        }
        if !self.tables_awaiting_indexes.is_empty() {
            let mut list = self.tables_awaiting_indexes.clone();
            if list.len() > 5 {
                let more = list.len() - 5;
                list.truncate(5);
                list.push(format!("and {more} more"));
            }
            writeln!(
                f,
                "  indexes      {} of {} tables bitmig created lack the source's secondary indexes ({}): `bitmig-compensator indexes` builds them{}",
                self.tables_awaiting_indexes.len(),
                self.tables_created,
                list.join(", "),
                if self.complete { "" } else { " once the job is complete" }
            )?;
        }
        if !self.groups_missing.is_empty() {
            let list: Vec<String> = self
                .groups_missing
                .iter()
                .map(|(g, n)| format!("{g} ({n})"))
                .collect();
            writeln!(f, "  missing in groups: {}", list.join(", "))?;
        }
        if let Some(fo) = &self.follow {
            writeln!(
                f,
                "  follow       from {} at {}, lag {:.1}s, {} events, {} ids published, {} settling, last event {}",
                fo.from,
                fo.position,
                fo.lag_s,
                fo.events,
                fo.ids_published,
                fo.settling,
                fo.last_event_at.as_deref().unwrap_or("none")
            )?;
            let queued = self
                .queued
                .map_or("not checked".to_owned(), |q| q.to_string());
            writeln!(
                f,
                "  caught up    {}  (queued {queued})",
                if self.caught_up { "yes" } else { "no" }
            )?;
        }
        for reason in &self.reasons {
            writeln!(f, "  - {reason}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followed(lag_s: f64, settling: u64, queued: Option<u64>) -> Report {
        Report {
            job: "orders".into(),
            complete: true,
            queued,
            follow: Some(FollowReport {
                from: "binlog".into(),
                position: "mariadb-bin.000002:1234".into(),
                lag_s,
                settling,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn caught_up_needs_every_condition() {
        assert!(caught_up(&followed(0.2, 0, Some(0))));
        assert!(!caught_up(&followed(1.5, 0, Some(0))), "lag");
        assert!(!caught_up(&followed(0.0, 3, Some(0))), "settling");
        assert!(!caught_up(&followed(0.0, 0, Some(1))), "queued");
        assert!(!caught_up(&followed(0.0, 0, None)), "queues not checked");
        let mut incomplete = followed(0.0, 0, Some(0));
        incomplete.complete = false;
        assert!(!caught_up(&incomplete), "incomplete");
        let mut paused = followed(0.0, 0, Some(0));
        paused.paused = true;
        assert!(!caught_up(&paused), "paused");
        let mut unfollowed = followed(0.0, 0, Some(0));
        unfollowed.follow = None;
        assert!(!caught_up(&unfollowed), "not followed");
        let text = followed(0.2, 0, Some(0)).to_string();
        assert!(
            text.contains("follow       from binlog at mariadb-bin.000002:1234"),
            "{text}"
        );
    }
}
