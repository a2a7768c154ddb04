//! One valid message, end to end (DESIGN.md §6 step 2, §8.3): check the group is planned, read the current
//! rows, let [`crate::batch::plan`] decide, apply the changes to the sink, record the outcome in the ledger.
//! Transient failures are retried a few times in-process before the batch goes back to the session as
//! [`Failure::Retry`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bitmig_shared::ids::{group_last, IdRange};
use bitmig_shared::ledger::BatchRecord;
use bitmig_shared::queue::Message;
use bitmig_shared::sink::{Changes, SinkError};
use bitmig_shared::source::SourceError;
use bitmig_shared::telemetry::metrics::Stage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::batch::{self, LedgerFacts};
use crate::{Ctx, QUICK_RETRIES};

/// Why a batch did not complete.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The message itself is wrong: to the dead queue, never retried.
    Dead(String),
    /// Worth another attempt later.
    Retry(String),
}

fn source_failure(e: SourceError) -> Failure {
    Failure::Retry(e.to_string())
}

fn sink_failure(e: SinkError) -> Failure {
    Failure::Retry(e.to_string())
}

/// Retry `op` a few times in-process while its error is transient and no shutdown is requested.
async fn quick_retry<T, E, F, Fut>(
    cancel: &CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delays = QUICK_RETRIES.iter();
    loop {
        match op().await {
            Err(e) if transient(&e) && !cancel.is_cancelled() => match delays.next() {
                Some(delay) => tokio::time::sleep(*delay).await,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Read → write → record, for one valid message, or for several exclusive ones taken together (see
/// [`crate::batch::union`]): their ids read in one query, written in one transaction, the outcome recorded
/// group by group. Every group was checked by [`check_planned`] first.
pub(crate) async fn process(ctx: &Ctx, ms: &[&Message]) -> Result<(), Failure> {
    let Some(first) = ms.first() else {
        return Ok(());
    };
    let cause = first.cause;
    let merged;
    let ids: &[IdRange] = if ms.len() == 1 {
        &first.ids
    } else {
        merged = batch::union(ms.iter().map(|m| m.ids.as_slice()));
        &merged
    };
    let mut groups: Vec<u64> = ms.iter().map(|m| m.group).collect();
    groups.sort_unstable();
    groups.dedup();
    wait_for_budget(ctx, bitmig_shared::ids::count_in(ids)).await?;
    if !batch::is_exclusive(cause) {
        // Source and target on one server: the server copies the batch itself, or nothing is kept.
        let started = Instant::now();
        let copied = quick_retry(&ctx.cancel, SinkError::is_transient, || {
            ctx.sink.copy_within(ids)
        })
        .await
        .map_err(sink_failure)?;
        if copied {
            ctx.metrics.stage(Stage::TargetWrite, started.elapsed());
            let record = batch::copied_whole(ids);
            return record_and_count(ctx, ms.len(), &groups, record, 0).await;
        }
    }
    let started = Instant::now();
    let rows = if batch::is_exclusive(cause) || ms.len() == 1 {
        quick_retry(&ctx.cancel, SourceError::is_transient, || {
            ctx.source.read_rows(ids)
        })
        .await
        .map_err(source_failure)?
    } else {
        read_each(ctx, ms).await?
    };
    ctx.metrics.stage(Stage::SourceRead, started.elapsed());
    // DESIGN.md §10: a purged id is archived — its source row is gone on purpose, and a `catchup`,
    // `redrive` or `verify` batch must neither delete its target row nor mark it gone. Read after the
    // source rows, so that an id purged while this batch read its rows is seen purged here too (purge
    // sets the bit right after its commit). A `produce` batch deletes nothing: no look-up.
    let facts = if batch::is_exclusive(cause) {
        // One look-up per group, all at once (a batch of several groups taken together).
        let purged = futures::future::try_join_all(groups.iter().map(|&g| {
            let (lo, hi) = (g, group_last(g, ctx.job.group_size));
            let of_group: Vec<IdRange> = ids
                .iter()
                .filter(|r| r[1] >= lo && r[0] <= hi)
                .map(|r| [r[0].max(lo), r[1].min(hi)])
                .collect();
            async move { ctx.ledger.purged_among(g, &of_group).await }
        }))
        .await
        .map_err(|e| Failure::Retry(format!("reading the purged ids in Redis: {e}")))?;
        let skip = purged.into_iter().flatten().collect();
        LedgerFacts { skip }
    } else {
        LedgerFacts::default()
    };
    let plan = batch::plan(cause, ids, rows, &facts);
    let changes = Changes {
        rows: &plan.rows,
        delete: &plan.delete,
        exclusive: plan.exclusive,
    };
    let started = Instant::now();
    let outcome = quick_retry(&ctx.cancel, SinkError::is_transient, || {
        ctx.sink.apply(&changes)
    })
    .await
    .map_err(sink_failure)?;
    ctx.metrics.stage(Stage::TargetWrite, started.elapsed());
    for (id, reason) in &outcome.failed {
        warn!(id, reason = %reason, "row refused by the target: recorded in failed");
    }
    let record = plan.record(outcome);
    record_and_count(ctx, ms.len(), &groups, record, plan.delete.len()).await
}

/// The rows of `produce` batches taken together, read batch by batch: each is dense in its own span, while
/// their union (the broker hands a consumer every other batch) spans the other consumers' batches too,
/// which one read would list as gaps. Ascending by key, as one read returns them.
async fn read_each(ctx: &Ctx, ms: &[&Message]) -> Result<bitmig_shared::value::RowSet, Failure> {
    let mut all: Option<bitmig_shared::value::RowSet> = None;
    for m in ms {
        let rows = quick_retry(&ctx.cancel, SourceError::is_transient, || {
            ctx.source.read_rows(&m.ids)
        })
        .await
        .map_err(source_failure)?;
        match &mut all {
            None => all = Some(rows),
            Some(all) => all.rows.extend(rows.rows),
        }
    }
    let mut all = all.ok_or_else(|| Failure::Retry("no batch to read".into()))?;
    all.rows.sort_unstable_by_key(|r| r.key);
    all.rows.dedup_by_key(|r| r.key);
    Ok(all)
}

/// Set the bits of a committed batch (`batches` deliveries of `groups`), then count it.
async fn record_and_count(
    ctx: &Ctx,
    batches: usize,
    groups: &[u64],
    record: BatchRecord,
    deleted: usize,
) -> Result<(), Failure> {
    let (landed, gone, failed) = (record.landed.len(), record.gone.len(), record.failed.len());
    // The changes are committed: the bits must follow. Keep trying while Redis is away (the
    // ConnectionManager reconnects); a shutdown leaves the batch unacked, and its redelivery rewrites it
    // idempotently.
    let started = Instant::now();
    let records = batch::split_by_group(record, ctx.job.group_size, groups);
    futures::future::try_join_all(records.iter().map(|(group, record)| async move {
        let mut wait = Duration::from_millis(200);
        loop {
            match ctx.ledger.record_batch(*group, record).await {
                Ok(()) => return Ok(()),
                Err(e) if !ctx.cancel.is_cancelled() => {
                    warn!(error = %e, "could not record the batch in Redis; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(Failure::Retry(format!("recording in Redis: {e}"))),
            }
        }
    }))
    .await?;
    ctx.metrics.stage(Stage::Ledger, started.elapsed());
    ctx.metrics.rows(landed as u64, gone as u64, failed as u64);
    ctx.stats
        .batches
        .fetch_add(batches as u64, Ordering::Relaxed);
    ctx.stats.writes.fetch_add(1, Ordering::Relaxed);
    ctx.stats
        .rows_written
        .fetch_add(landed as u64, Ordering::Relaxed);
    ctx.stats.gone.fetch_add(gone as u64, Ordering::Relaxed);
    ctx.stats.failed.fetch_add(failed as u64, Ordering::Relaxed);
    debug!(
        batches,
        written = landed,
        gone,
        deleted,
        failed,
        "batch done"
    );
    Ok(())
}

/// Wait for the job's `[throttle]` to let `rows` more rows go. A Redis error of the shared budget is retried
/// here (as the ledger's are) rather than sending the batch to a retry queue; only a shutdown gives up.
async fn wait_for_budget(ctx: &Ctx, rows: u64) -> Result<(), Failure> {
    let mut wait = Duration::from_millis(200);
    loop {
        match ctx.throttle.wait_for_budget(rows).await {
            Ok(()) => return Ok(()),
            Err(e) if !ctx.cancel.is_cancelled() => {
                warn!(error = %e, "could not reserve the throttle's budget in Redis; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(Failure::Retry(format!("throttle budget in Redis: {e}"))),
        }
    }
}

/// A message for a group the producer never planned is forged or left over from a lost ledger: its ids
/// must not become bits (nor rows). One Redis look-up per group and consumer, then remembered.
pub(crate) async fn check_planned(ctx: &Ctx, group: u64) -> Result<(), Failure> {
    let known = ctx
        .planned
        .lock()
        .map(|set| set.contains(&group))
        .unwrap_or(false);
    if known {
        return Ok(());
    }
    match ctx.ledger.is_planned(group).await {
        Ok(true) => {
            if let Ok(mut set) = ctx.planned.lock() {
                set.insert(group);
            }
            Ok(())
        }
        Ok(false) => Err(Failure::Dead(format!(
            "group {group} was never planned by the producer (not in {})",
            ctx.ledger.job_key("groups")
        ))),
        Err(e) => Err(Failure::Retry(format!(
            "checking group {group} in Redis: {e}"
        ))),
    }
}
