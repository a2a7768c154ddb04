//! `bitmig-compensator run`: re-publish what the ledger says is missing (DESIGN.md §6 step 4).
//!
//! A pass looks at every group `produced` and last driven longer ago than `--min-age` (younger groups may
//! still have batches in flight), re-publishes `src ∧ ¬tgt ∧ ¬gone` minus the ids in `failed` (unless
//! `--retry-failed`) as `redrive` messages with publisher confirms, records the re-drive in the group's
//! meta, and marks a group with nothing missing `complete`. [`run_every`] repeats passes until cancelled:
//! a pass that fails at run time is logged and the next one runs as scheduled; bad input stops the loop.
//!
//! While the job is paused (DESIGN.md §11) a pass re-publishes nothing and marks nothing: the consumers take
//! no work, so ids waiting in the queue would look missing once older than `--min-age` and be published
//! again and again. With metrics attached, [`run_every`] sets `bitmig_missing_ids` after each pass to the
//! ledger's `missing_ids` as `report` counts it, and `bitmig_paused`.
//!
//! With `--verify` ([`RunOptions::verify`]), each pass ([`run_pass`]) then verifies the groups that are
//! complete and not found equal since they were last driven (never verified, re-driven since, or differing
//! at the last verification; [`crate::verify::VerifyOptions::due_only`]) and re-drives what differs, so a
//! scheduled compensator keeps the answer current without re-reading equal groups every pass.
//!
//! A pass walks the groups in pages of [`GROUP_PAGE`]: per page one pipeline of metas, then one of the
//! due groups' bitmaps, so its memory does not grow with the ledger. RabbitMQ is connected only when a
//! group has ids to re-publish.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use bitmig_shared::cli::{self, exit};
use bitmig_shared::control::Control;
use bitmig_shared::ids::{and_not, group_last, ids_of, popcount};
use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::{GroupStatus, Ledger};
use bitmig_shared::queue::Cause;
use bitmig_shared::telemetry::metrics::Metrics;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::republish::Republisher;

/// Groups whose meta is read per round trip (and whose bitmaps, of the due ones): all a pass holds at once.
const GROUP_PAGE: usize = 1000;

/// What a `run` pass needs besides the job: where the services are and which groups it may touch.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub amqp_url: String,
    pub redis_url: String,
    pub min_age: Duration,
    /// Re-drive ids recorded in `failed` too (they are removed from `failed` first).
    pub retry_failed: bool,
    /// Also verify the groups due (see the module doc), re-checking differing ids after this delay.
    pub verify: Option<Duration>,
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
    /// The job was paused: the pass looked at nothing and re-published nothing.
    pub paused: bool,
    /// With `--verify`: what the verification of this pass found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::VerifySummary>,
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
    bitmig_shared::cli::check_spec(&ledger, job, false, crate::SPEC_FIELDS_IGNORED).await?;
    if Control::new(ledger.connection(), &job.name)
        .is_paused()
        .await?
    {
        info!(job = %job.name, "job paused: this pass re-publishes nothing (`bitmig-compensator resume`)");
        return Ok(PassSummary {
            job: job.name.clone(),
            paused: true,
            ..Default::default()
        });
    }
    let now = chrono::Utc::now();
    let min_age = chrono::Duration::from_std(opts.min_age).unwrap_or(chrono::Duration::MAX);
    let mut summary = PassSummary {
        job: job.name.clone(),
        ..Default::default()
    };
    // Read when the first group is due; RabbitMQ is connected when the first id is missing.
    let mut failed: Option<HashSet<u64>> = None;
    let mut republisher = Republisher::new(&opts.amqp_url, job);
    // One page of groups at a time: memory stays bounded whatever the ledger's size.
    let mut pages = ledger.group_pages(GROUP_PAGE);
    while let Some(firsts) = pages.next().await? {
        summary.groups += firsts.len() as u64;
        let metas = ledger.metas(&firsts).await?;
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
            continue;
        }
        let failed = match &mut failed {
            Some(f) => f,
            None => failed.insert(ledger.failed_ids().await?.into_iter().collect()),
        };
        let bits = ledger.bits(&due).await?;
        // Groups found whole: marked complete together at the end of the page, in one pipeline.
        let mut whole = Vec::new();
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
                    whole.push(first);
                }
                continue;
            }
            summary.messages += republisher.group(first, &missing, Cause::Redrive).await?;
            ledger.mark_redriven(first, missing.len() as u64).await?;
            info!(job = %job.name, group = first, cause = "redrive", ids = missing.len(), "re-published missing ids");
            summary.groups_redriven += 1;
            summary.republished_ids += missing.len() as u64;
        }
        ledger.mark_complete_many(&whole).await?;
        summary.groups_complete += whole.len() as u64;
    }
    republisher.close().await;
    Ok(summary)
}

/// One pass of `run`: [`run_once`], then with [`RunOptions::verify`] a verification of the groups due,
/// whose differing ids are re-driven as `verify` batches (nothing while the job is paused).
pub async fn run_pass(job: &JobSpec, opts: &RunOptions) -> anyhow::Result<PassSummary> {
    let mut summary = run_once(job, opts).await?;
    if summary.paused {
        return Ok(summary);
    }
    if let Some(recheck_after) = opts.verify {
        let v = crate::verify::verify(
            job,
            &crate::verify::VerifyOptions {
                amqp_url: opts.amqp_url.clone(),
                redis_url: opts.redis_url.clone(),
                groups: None,
                rate: None,
                recheck_after,
                redrive: true,
                due_only: true,
            },
        )
        .await?;
        summary.verify = Some(v);
    }
    Ok(summary)
}

/// One pass every `every` until `cancel` fires, each pass's summary handed to `on_pass`; with `metrics`,
/// `bitmig_missing_ids` is set after each pass to what [`crate::report()`] counts then (so the gauge and
/// `report` agree), and `bitmig_paused` to whether the pass found the job paused.
///
/// The first pass runs at once; the token is checked between passes, so a pass in progress finishes
/// (its publishes confirmed) before this returns `Ok`. A pass that fails at run time (Redis or RabbitMQ
/// away: exit code [`exit::FAILED`]) is logged and the loop carries on; any other error — a job that
/// differs from the ledger's, bad input — is returned, since the next pass would fail the same way.
pub async fn run_every(
    job: &JobSpec,
    opts: &RunOptions,
    every: Duration,
    cancel: CancellationToken,
    metrics: Option<&Metrics>,
    mut on_pass: impl FnMut(&PassSummary),
) -> anyhow::Result<()> {
    while !cancel.is_cancelled() {
        match run_pass(job, opts).await {
            Ok(summary) => {
                if let Some(m) = metrics {
                    m.set_paused(summary.paused);
                    match crate::report(job, &opts.redis_url).await {
                        Ok(r) => m.set_missing_ids(r.missing_ids),
                        Err(e) => {
                            tracing::warn!(job = %job.name, error = %format!("{e:#}"), "cannot count the missing ids for bitmig_missing_ids")
                        }
                    }
                }
                on_pass(&summary)
            }
            Err(e) if cli::exit_code_for(&e) == exit::FAILED => {
                tracing::error!(job = %job.name, error = %format!("{e:#}"), "compensator pass failed; next pass as scheduled");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! [`run_every`] against the real Redis of the tests (`BITMIG_REDIS_URL`, default loopback), on a job
    //! of its own whose keys are deleted at the end. With no ledger a pass touches neither RabbitMQ nor
    //! any group, so these tests check the loop alone: when it stops and what it stops on.

    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use bitmig_shared::queue;

    fn redis_url() -> String {
        std::env::var("BITMIG_REDIS_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| cli::DEFAULT_REDIS_URL.to_owned())
    }

    /// A job name of this test run's own.
    fn unique_name(tag: &str) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .subsec_nanos();
        format!(
            "t_{tag}_{}_{nanos}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Job `name` reading `table`.
    fn job(name: &str, table: &str) -> JobSpec {
        let text = format!(
            "name = \"{name}\"\n[source]\nurl = \"mysql://root@127.0.0.1:3306/none\"\ntable = \"{table}\"\n\
             key = \"id\"\n[target]\nkind = \"sql\"\nurl = \"mysql://root@127.0.0.1:3306/none\"\n\
             table = \"dst\"\n"
        );
        JobSpec::parse_str(&text, Path::new("job.toml"), &|_| None).expect("a valid job")
    }

    fn opts() -> RunOptions {
        RunOptions {
            // Never connected to: a job without a ledger has no group to re-drive.
            amqp_url: "amqp://127.0.0.1:1/%2f".into(),
            redis_url: redis_url(),
            min_age: Duration::ZERO,
            retry_failed: false,
            verify: None,
        }
    }

    /// Deletes the job's spec key.
    async fn forget(job: &JobSpec) {
        let client = redis::Client::open(redis_url()).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is up");
        let key = Ledger::connect(&redis_url(), &job.name)
            .await
            .expect("Redis is up")
            .job_key("spec");
        let _: () = redis::AsyncCommands::del(&mut conn, key)
            .await
            .expect("DEL");
    }

    #[tokio::test]
    async fn passes_run_until_the_token_is_cancelled() {
        let job = job(&unique_name("every"), "src");
        let cancel = CancellationToken::new();
        let mut passes = Vec::new();
        let done = tokio::time::timeout(
            Duration::from_secs(60),
            run_every(
                &job,
                &opts(),
                Duration::from_millis(5),
                cancel.clone(),
                None,
                |s| {
                    passes.push(s.clone());
                    if passes.len() == 3 {
                        cancel.cancel();
                    }
                },
            ),
        )
        .await
        .expect("run_every returns once its token is cancelled");
        assert!(done.is_ok(), "a cancelled loop ends with Ok: {done:?}");
        assert_eq!(passes.len(), 3, "no pass after the cancel: {passes:?}");
        for pass in &passes {
            assert_eq!((pass.job.as_str(), pass.groups), (job.name.as_str(), 0));
        }
    }

    /// Writes a ledger of `groups` groups of job `job` straight into Redis: every group `produced` long
    /// ago with 10 ids published and landed, except `missing` (group first → ids published, not landed).
    async fn synthetic_ledger(job: &JobSpec, groups: u64, missing: &[(u64, Vec<u64>)]) {
        let ledger = Ledger::connect(&redis_url(), &job.name)
            .await
            .expect("Redis is up");
        let mut con = ledger.connection();
        let size = job.group_size;
        for chunk in (0..groups).collect::<Vec<_>>().chunks(500) {
            let mut p = redis::pipe();
            for g in chunk {
                let first = g * size;
                let ids: Vec<u64> = (first..first + 10).collect();
                let bits = bitmig_shared::ids::bitmap_of(first, ids.iter().copied());
                let landed: Vec<u64> = match missing.iter().find(|(f, _)| *f == first) {
                    Some((_, gone)) => ids.iter().copied().filter(|i| !gone.contains(i)).collect(),
                    None => ids.clone(),
                };
                let tgt = bitmig_shared::ids::bitmap_of(first, landed);
                p.zadd(ledger.job_key("groups"), first, first)
                    .set(ledger.group_key(first, "src"), bits)
                    .set(ledger.group_key(first, "tgt"), tgt)
                    .hset_multiple(
                        ledger.group_key(first, "meta"),
                        &[
                            ("status", "produced"),
                            ("driven_at", "2020-01-01T00:00:00.000Z"),
                        ],
                    );
            }
            p.query_async::<()>(&mut con).await.expect("pipeline");
        }
    }

    /// Deletes every key of the job (its groups' keys included).
    async fn forget_all(job: &JobSpec) {
        let client = redis::Client::open(redis_url()).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is up");
        let pattern = format!("bitmig:{{{}*", job.name);
        let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, pattern)
            .await
            .expect("KEYS");
        for chunk in keys.chunks(1000) {
            let _: () = redis::AsyncCommands::del(&mut conn, chunk)
                .await
                .expect("DEL");
        }
    }

    #[tokio::test]
    async fn report_and_run_walk_every_page_of_a_ledger_larger_than_a_page() {
        let job = job(&unique_name("pages"), "src");
        let groups = 2 * GROUP_PAGE as u64 + 345;
        let size = job.group_size;
        // Missing ids on the first, a middle and the very last group: in the first, second and third page.
        let missing = vec![
            (0, vec![3]),
            (1_500 * size, vec![1_500 * size, 1_500 * size + 9]),
            ((groups - 1) * size, vec![(groups - 1) * size + 5]),
        ];
        synthetic_ledger(&job, groups, &missing).await;

        let r = crate::report(&job, &redis_url()).await;
        let pass = run_once(
            &job,
            &RunOptions {
                // Groups with missing ids exist: a pass connects to the tests' RabbitMQ and re-publishes
                // them; `retry_failed` off, nothing recorded as failed.
                amqp_url: std::env::var("BITMIG_AMQP_URL")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| cli::DEFAULT_AMQP_URL.to_owned()),
                ..opts()
            },
        )
        .await;
        let after = crate::report(&job, &redis_url()).await;
        forget_all(&job).await;
        let conn = queue::connect(
            &std::env::var("BITMIG_AMQP_URL")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| cli::DEFAULT_AMQP_URL.to_owned()),
            "bitmig-compensator-test",
        )
        .await
        .expect("RabbitMQ is up");
        let ch = conn.create_channel().await.expect("a channel");
        let mut names = vec![queue::work_queue(&job.name), queue::dead_queue(&job.name)];
        names.extend((1..=queue::RETRY_DELAYS.len()).map(|n| queue::retry_queue(&job.name, n)));
        for name in names {
            ch.queue_delete(name.as_str().into(), Default::default())
                .await
                .expect("queue deleted");
        }
        let _ = conn.close(200, "done".into()).await;

        let r = r.expect("report");
        assert_eq!(r.groups, groups);
        assert_eq!(r.groups_produced, groups);
        assert_eq!(r.source_ids, groups * 10);
        assert_eq!(r.missing_ids, 4);
        assert_eq!(r.target_ids, groups * 10 - 4);
        assert_eq!(
            r.groups_missing.into_iter().collect::<Vec<_>>(),
            [(0, 1), (1_500 * size, 2), ((groups - 1) * size, 1)]
        );
        let pass = pass.expect("a pass");
        assert_eq!(pass.groups, groups);
        assert_eq!(pass.groups_checked, groups);
        assert_eq!(pass.groups_complete, groups - 3);
        assert_eq!((pass.groups_redriven, pass.republished_ids), (3, 4));
        let after = after.expect("report");
        assert_eq!(after.groups_complete, groups - 3);
    }

    #[tokio::test]
    async fn a_cancelled_token_runs_no_pass() {
        let job = job(&unique_name("cancelled"), "src");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut passes = 0;
        let done = run_every(
            &job,
            &opts(),
            Duration::from_secs(3600),
            cancel,
            None,
            |_| passes += 1,
        )
        .await;
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(passes, 0);
    }

    #[tokio::test]
    async fn a_job_that_differs_from_the_ledger_stops_the_loop_and_report_with_bad_input() {
        let name = unique_name("differs");
        let recorded = job(&name, "src");
        let ledger = Ledger::connect(&redis_url(), &recorded.name)
            .await
            .expect("Redis is up");
        ledger
            .check_spec(&recorded.ledger_spec(), true, &[])
            .await
            .expect("the spec is stored");
        let changed = job(&name, "other");
        let mut passes = 0;
        let done = tokio::time::timeout(
            Duration::from_secs(60),
            run_every(
                &changed,
                &opts(),
                Duration::from_millis(5),
                CancellationToken::new(),
                None,
                |_| passes += 1,
            ),
        )
        .await;
        let reported = crate::report(&changed, &redis_url()).await;
        forget(&recorded).await;
        let refused = reported.expect_err("report refuses a job that differs too");
        assert_eq!(cli::exit_code_for(&refused), exit::BAD_INPUT, "{refused:#}");
        assert!(
            format!("{refused:#}").contains("source.table"),
            "report names the field that differs: {refused:#}"
        );
        let err = done
            .expect("a job that differs ends the loop at once")
            .expect_err("a job that differs is an error");
        assert_eq!(
            cli::exit_code_for(&err),
            exit::BAD_INPUT,
            "a job that differs is bad input: {err:#}"
        );
        assert!(format!("{err:#}").contains("differs"), "{err:#}");
        assert_eq!(passes, 0);
    }
}
