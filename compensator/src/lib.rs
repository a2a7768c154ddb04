//! The compensator: re-drives what the ledger says is missing and reports on a job (DESIGN.md §6 step 4).
//!
//! `missing = src ∧ ¬tgt ∧ ¬gone`, minus ids in `failed`, for groups `produced` and last driven longer ago
//! than `--min-age` (younger groups may still have batches in flight). A group with nothing missing
//! becomes `complete`. `tgt ∧ ¬src` is reported as `extra`, an anomaly an operator should look at.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use bitmig_shared::ids::{and_not, batches, group_last, ids_of, popcount};
use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::{GroupStatus, Ledger};
use bitmig_shared::queue::{self, Cause, Message, Publisher};
use serde::Serialize;
use tracing::info;

/// Fields of the spec the compensator does not depend on: it never opens the databases, so it may run
/// where their host names differ.
const SPEC_FIELDS_IGNORED: &[&str] = &["source.url", "target.url"];

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub amqp_url: String,
    pub redis_url: String,
    pub min_age: Duration,
    /// Re-drive ids recorded in `failed` too (they are removed from `failed` first).
    pub retry_failed: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PassSummary {
    pub job: String,
    pub groups: u64,
    pub groups_checked: u64,
    pub groups_too_young: u64,
    pub groups_complete: u64,
    pub groups_redriven: u64,
    pub republished_ids: u64,
    pub messages: u64,
}

fn parse_time(s: Option<&String>) -> Option<chrono::DateTime<chrono::Utc>> {
    s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// One pass over every group.
pub async fn run_once(job: &JobSpec, opts: &RunOptions) -> anyhow::Result<PassSummary> {
    let ledger = Ledger::connect(&opts.redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    bitmig_shared::cli::check_spec(&ledger, job, false, SPEC_FIELDS_IGNORED).await?;
    let firsts = ledger.groups().await?;
    let metas = ledger.metas(&firsts).await?;
    let now = chrono::Utc::now();
    let min_age = chrono::Duration::from_std(opts.min_age).unwrap_or(chrono::Duration::MAX);

    let mut summary = PassSummary {
        job: job.name.clone(),
        groups: firsts.len() as u64,
        ..Default::default()
    };
    let mut due = Vec::new();
    for (first, meta) in firsts.iter().zip(&metas) {
        match meta.get("status").and_then(|s| GroupStatus::parse(s)) {
            Some(GroupStatus::Complete) => summary.groups_complete += 1,
            Some(GroupStatus::Produced) => {
                let driven = parse_time(meta.get("driven_at").or(meta.get("produced_at")));
                if driven.is_some_and(|t| now - t >= min_age) {
                    due.push(*first);
                } else {
                    summary.groups_too_young += 1;
                }
            }
            // `producing` (or no meta): the producer owns it until it is produced.
            _ => {}
        }
    }
    if due.is_empty() {
        return Ok(summary);
    }

    let failed: HashSet<u64> = ledger.failed_ids().await?.into_iter().collect();
    let bits = ledger.bits(&due).await?;
    let conn = queue::connect(&opts.amqp_url, "bitmig-compensator")
        .await
        .context("connecting to RabbitMQ")?;
    let mut publisher = Publisher::new(&conn).await?;
    queue::declare_topology(publisher.channel(), &job.name).await?;

    for (first, b) in due.iter().copied().zip(bits) {
        summary.groups_checked += 1;
        let missing_bits = and_not(&b.src, &[&b.tgt, &b.gone]);
        let last = group_last(first, job.group_size);
        let mut missing: Vec<u64> = ids_of(first, &missing_bits)
            .into_iter()
            .filter(|id| *id <= last)
            .collect();
        if opts.retry_failed {
            let retry: Vec<u64> = missing
                .iter()
                .copied()
                .filter(|id| failed.contains(id))
                .collect();
            ledger.forget_failed(&retry).await?;
        } else {
            missing.retain(|id| !failed.contains(id));
        }
        if missing.is_empty() {
            // Only a group whose failed ids are all settled may be complete; failed ones keep it open.
            if popcount(&missing_bits) == 0 {
                ledger.mark_complete(first).await?;
                summary.groups_complete += 1;
            }
            continue;
        }
        for ranges in batches(&missing, job.batch_size as usize) {
            let m = Message {
                job: job.name.clone(),
                group: first,
                ids: ranges,
                cause: Cause::Redrive,
                attempt: 0,
            };
            publisher.publish_message(&job.name, &m).await?;
            summary.messages += 1;
        }
        publisher
            .wait()
            .await
            .with_context(|| format!("re-publishing group {first}"))?;
        ledger.mark_redriven(first, missing.len() as u64).await?;
        info!(job = %job.name, group = first, cause = "redrive", ids = missing.len(), "re-published missing ids");
        summary.groups_redriven += 1;
        summary.republished_ids += missing.len() as u64;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(summary)
}

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
    /// Up to 20 groups with missing ids: first → count.
    pub groups_missing: BTreeMap<u64, u64>,
    /// Why the job is not complete, in words.
    pub reasons: Vec<String>,
}

pub async fn report(job: &JobSpec, redis_url: &str) -> anyhow::Result<Report> {
    let ledger = Ledger::connect(redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    let mut r = Report {
        job: job.name.clone(),
        ..Default::default()
    };
    use bitmig_shared::ledger::SpecCheck;
    r.ledger_present = match ledger
        .check_spec(&job.ledger_spec(), false, SPEC_FIELDS_IGNORED)
        .await?
    {
        SpecCheck::Absent => false,
        SpecCheck::Differs(fields) => {
            return Err(bitmig_shared::cli::BadInput(format!(
                "job `{}` differs from the job recorded in Redis: {}",
                job.name,
                fields.join("; ")
            ))
            .into())
        }
        _ => true,
    };
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
