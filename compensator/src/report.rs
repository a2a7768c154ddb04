//! `bitmig-compensator report`: what the ledger says about a job, for an operator or a script.
//!
//! Read only. Per group `missing = src ∧ ¬tgt ∧ ¬gone` minus ids in `failed`; `tgt ∧ ¬src` is counted
//! as `extra`, an anomaly an operator should look at. The job is complete when a ledger exists, the
//! producer is `done` and planned no more groups than the ledger holds, every group is produced, and
//! nothing is missing or failed; otherwise [`Report::reasons`] says why, in words.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use bitmig_shared::cli;
use bitmig_shared::control::Control;
use bitmig_shared::ids::{and_not, ids_of, popcount};
use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::{GroupStatus, Ledger, SpecCheck};
use serde::Serialize;

/// What the ledger says about a job.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
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
    /// `bitmig-compensator pause` holds the job (`control.paused`).
    pub paused: bool,
    /// The reason given to `pause` (empty when none, or not paused).
    pub reason: String,
    /// Why work waits for `[throttle]` right now (`control.throttled`), if it does.
    pub throttled: Option<String>,
    /// Up to 20 groups with missing ids: first → count.
    pub groups_missing: BTreeMap<u64, u64>,
    /// Why the job is not complete, in words.
    pub reasons: Vec<String>,
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
    let firsts = ledger.groups().await?;
    let metas = ledger.metas(&firsts).await?;
    let failed: HashSet<u64> = ledger.failed_ids().await?.into_iter().collect();
    r.failed_ids = failed.len() as u64;
    r.groups = firsts.len() as u64;
    for chunk in firsts.chunks(200).zip(metas.chunks(200)) {
        let (firsts, metas) = chunk;
        let bits = ledger.bits(firsts).await?;
        for ((first, meta), b) in firsts.iter().zip(metas).zip(bits) {
            match meta.get("status").and_then(|s| GroupStatus::parse(s)) {
                Some(GroupStatus::Complete) => r.groups_complete += 1,
                Some(GroupStatus::Produced) => r.groups_produced += 1,
                _ => r.groups_producing += 1,
            }
            r.source_ids += popcount(&b.src);
            r.target_ids += popcount(&b.tgt);
            r.gone_ids += popcount(&and_not(&b.gone, &[&b.tgt]));
            r.extra_ids += popcount(&and_not(&b.tgt, &[&b.src]));
            let missing = ids_of(*first, &and_not(&b.src, &[&b.tgt, &b.gone]))
                .into_iter()
                .filter(|id| !failed.contains(id))
                .count() as u64;
            if missing > 0 {
                r.missing_ids += missing;
                if r.groups_missing.len() < 20 {
                    r.groups_missing.insert(*first, missing);
                }
            }
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
    Ok(r)
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
        if !self.groups_missing.is_empty() {
            let list: Vec<String> = self
                .groups_missing
                .iter()
                .map(|(g, n)| format!("{g} ({n})"))
                .collect();
            writeln!(f, "  missing in groups: {}", list.join(", "))?;
        }
        for reason in &self.reasons {
            writeln!(f, "  - {reason}")?;
        }
        Ok(())
    }
}
