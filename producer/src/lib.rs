//! The producer: plans groups over the source's key space and publishes their ids (DESIGN.md §6 step 1).
//!
//! For each group: mark it `producing` → read its ids → OR them into `src` → publish every batch and wait
//! for the broker's confirms → mark it `produced`. A group already `produced` or `complete` is skipped, so
//! running again resumes after a crash and publishes nothing once everything is produced.
//!
//! Operating (DESIGN.md §11): while the job is paused the producer waits between groups (the group in hand
//! is finished: its batches are published and confirmed, it is marked `produced`); `--metrics-addr` serves
//! `bitmig_ids_published_total`, `bitmig_groups_produced_total` and `bitmig_paused` with `/readyz` (broker,
//! Redis, source) — [`serve_metrics`], shared with the follower of `--follow`.

pub mod follow;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitmig_shared::cli::{source_error, BadInput};
use bitmig_shared::control::{Control, WATCH_EVERY};
use bitmig_shared::ids::{batches, group_last, group_of};
use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::{now_rfc3339, GroupStatus, Ledger};
use bitmig_shared::progress::Progress;
use bitmig_shared::queue::{self, Cause, Message, Publisher};
use bitmig_shared::source;
use bitmig_shared::telemetry::metrics::{self, Metrics, Readiness};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Below this average fill a group's bitmaps cost more than the ids they track; the run says so.
const SPARSE_FILL: f64 = 0.01;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub amqp_url: String,
    pub redis_url: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// At most this many ids published per second.
    pub rate: Option<u64>,
    /// `--follow`: also follow the source's changes until cancelled ([`follow::run::run`]).
    pub follow: bool,
    /// `--metrics-addr`: serve `/metrics`, `/healthz`, `/readyz` here.
    pub metrics_addr: Option<String>,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub groups_produced: u64,
    pub groups_skipped: u64,
    pub ids_published: u64,
    pub messages: u64,
}

/// Plan and publish, serving `--metrics-addr` meanwhile. Returns when every group in the range is
/// produced, or with an error; a cancelled token stops after the group in hand, which is left `produced`.
pub async fn run(
    job: &JobSpec,
    opts: &Options,
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let metrics = Metrics::new(&job.name);
    let _server = serve_metrics(job, opts, &metrics, cancel.clone()).await?;
    walk(job, opts, &metrics, cancel).await
}

/// `--metrics-addr` (nothing when it is not given): `metrics` on `/metrics`, and `/readyz` checking the
/// broker (a connection opened and closed), Redis (PING) and the source (`SELECT 1`), until `stop` fires.
/// A bad or busy address, or a source URL that cannot make a pool, is bad input (exit 2).
pub async fn serve_metrics(
    job: &JobSpec,
    opts: &Options,
    metrics: &Metrics,
    stop: CancellationToken,
) -> anyhow::Result<Option<metrics::MetricsServer>> {
    let Some(addr) = &opts.metrics_addr else {
        return Ok(None);
    };
    let readiness = Readiness::default();
    let url = opts.amqp_url.clone();
    readiness.register("broker", move || {
        let url = url.clone();
        async move {
            let conn = queue::connect(&url, "bitmig-producer-readyz")
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.close(200, "ready".into()).await;
            Ok(())
        }
    });
    let redis = bitmig_shared::redis_con::RedisCon::connect(&opts.redis_url)
        .await
        .context("connecting to Redis")?;
    readiness.register_redis(redis);
    readiness
        .register_sql("source", &job.source.url)
        .map_err(|e| BadInput(format!("`source.url`: {e}")))?;
    let server = metrics::serve(addr, metrics.clone(), readiness, stop)
        .await
        .map_err(BadInput)?;
    info!(addr = %server.addr, "serving /metrics, /healthz, /readyz");
    Ok(Some(server))
}

/// The walk of [`run`] without its endpoint: counts into `metrics` (ids published, groups produced, paused).
pub async fn walk(
    job: &JobSpec,
    opts: &Options,
    metrics: &Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let source = source::open(job, 2).map_err(source_error)?;
    let columns = source.describe().await.map_err(source_error)?;
    info!(job = %job.name, table = %job.source.table, columns = columns.len(), "source described");

    let bounds = match (opts.from, opts.to) {
        (Some(lo), Some(hi)) => Some((lo, hi)),
        (lo, hi) => source
            .key_bounds()
            .await
            .map_err(source_error)?
            .map(|(min, max)| (lo.unwrap_or(min), hi.unwrap_or(max))),
    };
    // Whole groups: the ledger's unit. `--from`/`--to` are widened to the groups that hold them.
    let gs = job.group_size;
    let bounds = bounds
        .filter(|(lo, hi)| lo <= hi)
        .map(|(lo, hi)| (group_of(lo, gs), group_last(group_of(hi, gs), gs)));
    if let Some((lo, hi)) = bounds {
        check_ranges_cover(job, &*source, lo, hi).await?;
    }

    let ledger = Ledger::connect(&opts.redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    bitmig_shared::cli::check_spec(&ledger, job, true, &[]).await?;

    let mut amqp = Some(Amqp::connect(&opts.amqp_url, &job.name).await?);

    // DESIGN.md §11: a pause holds the producer between groups (the group in hand is finished).
    let pause = Control::new(ledger.connection(), &job.name)
        .watch(WATCH_EVERY)
        .await
        .context("reading the job's control hash")?;
    let Some((lo, hi)) = bounds else {
        info!(job = %job.name, "the source has no rows in range: nothing to produce");
        ledger
            .set_producer_state(&[("status", "done".into()), ("finished_at", now_rfc3339())])
            .await?;
        return Ok(Summary::default());
    };

    let planned = ledger.groups().await?;
    let metas = ledger.metas(&planned).await?;
    let done: HashMap<u64, GroupStatus> = planned
        .iter()
        .zip(&metas)
        .filter_map(|(f, m)| Some((*f, GroupStatus::parse(m.get("status")?)?)))
        .filter(|(_, s)| *s != GroupStatus::Producing)
        .collect();
    // Left `producing` by an interrupted run: redone. Any other group found `producing` later was begun
    // since by someone else (the follower, planning a group it saw changed): it copies the group whole.
    let producing_at_start: std::collections::HashSet<u64> = planned
        .iter()
        .zip(&metas)
        .filter(|(_, m)| {
            m.get("status").and_then(|s| GroupStatus::parse(s)) == Some(GroupStatus::Producing)
        })
        .map(|(f, _)| *f)
        .collect();

    ledger
        .set_producer_state(&[
            ("status", "running".into()),
            ("from", lo.to_string()),
            ("to", hi.to_string()),
            ("started_at", now_rfc3339()),
        ])
        .await?;
    info!(job = %job.name, from = lo, to = hi, already_done = done.len(), "producing");

    let started = Instant::now();
    let mut progress = Progress::new("producing", lo, hi);
    let mut summary = Summary::default();
    let mut cursor = lo;
    loop {
        if cancel.is_cancelled() {
            progress.finish();
            anyhow::bail!(
                "interrupted after {} groups; run the producer again to resume",
                summary.groups_produced
            );
        }
        if pause.is_paused() {
            metrics.set_paused(true);
            info!(job = %job.name, "job paused: waiting for `bitmig-compensator resume`");
            tokio::select! {
                _ = pause.wait_running() => info!(job = %job.name, "job resumed"),
                _ = cancel.cancelled() => continue,
            }
            metrics.set_paused(false);
        }
        let Some(next) = source.next_key(cursor, hi).await.map_err(source_error)? else {
            break;
        };
        let first = group_of(next, gs);
        let last = group_last(first, gs);
        // Done before this run, or — while following — planned whole by the follower since (a change in a
        // group the walk had not reached), finished or still in its hands: producing it again would copy
        // it twice.
        let skip = done.contains_key(&first)
            || match ledger.group_status(first).await? {
                Some(GroupStatus::Produced | GroupStatus::Complete) => true,
                Some(GroupStatus::Producing) => !producing_at_start.contains(&first),
                None => false,
            };
        if skip {
            summary.groups_skipped += 1;
            progress.skipped += 1;
        } else {
            let (ids, messages) = produce_group_retrying(
                job, opts, &*source, &ledger, &mut amqp, first, last, &cancel,
            )
            .await?;
            summary.groups_produced += 1;
            summary.ids_published += ids;
            metrics.group_produced();
            metrics.ids_published(ids);
            summary.messages += messages;
            progress.groups += 1;
            progress.ids += ids;
            if let Some(rate) = opts.rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(summary.ids_published as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
            }
        }
        progress.update(last);
        if last >= hi {
            break;
        }
        cursor = last + 1;
    }
    progress.finish();

    let groups = summary.groups_produced + summary.groups_skipped;
    ledger
        .set_producer_state(&[
            ("status", "done".into()),
            ("finished_at", now_rfc3339()),
            ("groups", groups.to_string()),
        ])
        .await?;
    if summary.groups_produced > 0 {
        let fill = summary.ids_published as f64 / (summary.groups_produced * gs) as f64;
        if fill < SPARSE_FILL {
            let per_group = 3 * gs.div_ceil(8) + 256;
            warn!(
                job = %job.name,
                avg_ids_per_group = summary.ids_published / summary.groups_produced,
                ledger_bytes_max = groups * per_group,
                "sparse keys: each group holds few ids, so the ledger costs up to {} KiB for {} groups; \
                 a larger group_size would not help, a denser key would",
                groups * per_group / 1024,
                groups
            );
        }
    }
    info!(
        job = %job.name,
        groups_produced = summary.groups_produced,
        groups_skipped = summary.groups_skipped,
        ids = summary.ids_published,
        messages = summary.messages,
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "every group is produced"
    );
    if let Some(amqp) = amqp {
        let _ = amqp.conn.close(200, "done".into()).await;
    }
    Ok(summary)
}

/// With `[target.ranges]`, an id of the source outside every range has nowhere to go: refuse the job before
/// publishing anything, naming the first such id and the stretch it lies in (a few `LIMIT 1` look-ups, one
/// per gap between ranges).
async fn check_ranges_cover(
    job: &JobSpec,
    source: &dyn source::Source,
    lo: u64,
    hi: u64,
) -> anyhow::Result<()> {
    let bitmig_shared::job::TargetSpec::Sql(t) = &job.target else {
        return Ok(());
    };
    let bitmig_shared::job::TableRoute::Ranges(map) = &t.table else {
        return Ok(());
    };
    let mut gaps = Vec::new();
    let mut next = Some(lo);
    for r in &map.ranges {
        if let Some(from) = next.filter(|f| *f < r.first && *f <= hi) {
            gaps.push((from, (r.first - 1).min(hi)));
        }
        next = next.map(|n| n.max(r.last.saturating_add(1)));
        if r.last == u64::MAX {
            next = None;
        }
    }
    if let Some(from) = next.filter(|f| *f <= hi) {
        gaps.push((from, hi));
    }
    for (from, to) in gaps {
        if let Some(id) = source.next_key(from, to).await.map_err(source_error)? {
            return Err(BadInput(format!(
                "job file {}: `[target.ranges]` has no table for key {id} (no range covers {from}..{to}, \
                 and the source has rows there)",
                job.path.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Attempts at one group before the producer gives up; with the delays below they span about 90 s, long
/// enough for a broker or Redis restart.
const GROUP_ATTEMPTS: u32 = 10;
const RETRY_MAX: Duration = Duration::from_secs(15);

/// The broker connection and its confirm-mode channel.
pub(crate) struct Amqp {
    pub(crate) conn: lapin::Connection,
    pub(crate) publisher: Publisher,
}

impl Amqp {
    pub(crate) async fn connect(url: &str, job: &str) -> anyhow::Result<Self> {
        let conn = queue::connect(url, "bitmig-producer")
            .await
            .context("connecting to RabbitMQ")?;
        let publisher = Publisher::new(&conn).await?;
        queue::declare_topology(publisher.channel(), job).await?;
        Ok(Self { conn, publisher })
    }
}

/// [`produce_group`], redone from its start after a transient failure (the broker or Redis restarting, a
/// lost connection, a confirm that never came): every step is idempotent, and re-published batches are
/// harmless duplicates. A lost broker connection is re-opened.
#[allow(clippy::too_many_arguments)]
async fn produce_group_retrying(
    job: &JobSpec,
    opts: &Options,
    source: &dyn source::Source,
    ledger: &Ledger,
    amqp: &mut Option<Amqp>,
    first: u64,
    last: u64,
    cancel: &CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let result = match amqp {
            Some(a) if a.conn.status().connected() => {
                produce_group(job, source, ledger, &mut a.publisher, first, last).await
            }
            _ => match Amqp::connect(&opts.amqp_url, &job.name).await {
                Ok(a) => {
                    info!(job = %job.name, "reconnected to RabbitMQ");
                    let a = amqp.insert(a);
                    produce_group(job, source, ledger, &mut a.publisher, first, last).await
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(done) => return Ok(done),
            Err(e)
                if bitmig_shared::cli::exit_code_for(&e) == bitmig_shared::cli::exit::BAD_INPUT =>
            {
                return Err(e)
            }
            Err(e) if attempt >= GROUP_ATTEMPTS || cancel.is_cancelled() => {
                return Err(e.context(format!("group {first}: giving up after {attempt} attempts")))
            }
            Err(e) => {
                warn!(job = %job.name, group = first, attempt, retry_in = ?delay, error = %format!("{e:#}"), "group failed; redoing it");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
                attempt += 1;
            }
        }
    }
}

/// One group, in the order of DESIGN.md §6 step 1. Returns (ids, messages).
#[tracing::instrument(skip_all, fields(job = %job.name, group = first, cause = "produce"))]
async fn produce_group(
    job: &JobSpec,
    source: &dyn source::Source,
    ledger: &Ledger,
    publisher: &mut Publisher,
    first: u64,
    last: u64,
) -> anyhow::Result<(u64, u64)> {
    ledger.begin_group(first, last).await?;
    let ids = source
        .keys_between(first, last)
        .await
        .map_err(source_error)?;
    ledger.add_src(first, &ids).await?;
    let batches = batches(&ids, job.batch_size as usize);
    for ranges in &batches {
        let m = Message {
            job: job.name.clone(),
            group: first,
            ids: ranges.clone(),
            cause: Cause::Produce,
            attempt: 0,
        };
        publisher.publish_message(&job.name, &m).await?;
    }
    publisher
        .wait()
        .await
        .with_context(|| format!("publishing group {first}"))?;
    ledger.finish_group(first, ids.len() as u64).await?;
    tracing::debug!(ids = ids.len(), messages = batches.len(), "group produced");
    Ok((ids.len() as u64, batches.len() as u64))
}
