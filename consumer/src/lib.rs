//! The consumer: takes batches from the work queue, reads the current rows, writes them to the target,
//! sets the ledger's bits, then acks (DESIGN.md §6 steps 2–3).
//!
//! Nothing is acked that is not committed, recorded as gone or failed, or handed to a retry or dead queue
//! under a broker confirm. A crash anywhere before the ack means a redelivery and an idempotent rewrite.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bitmig_shared::cli::BadInput;
use bitmig_shared::ids::expand;
use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::Ledger;
use bitmig_shared::queue::{self, Message, Publisher, MAX_ATTEMPTS};
use bitmig_shared::sink::{self, Sink, SinkError};
use bitmig_shared::source::{self, Source, SourceError};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

/// How long in-flight batches get to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Delays between reconnections to RabbitMQ.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(15);
/// In-process retries of a transient failure before the batch goes to a retry queue.
const QUICK_RETRIES: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

#[derive(Debug, Clone)]
pub struct Options {
    pub amqp_url: String,
    pub redis_url: String,
    /// Batches processed at once.
    pub concurrency: usize,
    /// Unacked deliveries the broker may push ahead.
    pub prefetch: u16,
    /// Stop once the work queue has given nothing for this long and nothing is in flight.
    pub exit_when_idle: Option<Duration>,
}

/// Counters of one run.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub rows_written: AtomicU64,
    pub gone: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
}

struct Ctx {
    job: JobSpec,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    ledger: Ledger,
    /// Groups known to be planned (in `groups`); a message for any other group is not the producer's.
    planned: std::sync::Mutex<std::collections::HashSet<u64>>,
    stats: Stats,
    cancel: CancellationToken,
}

/// Why a batch did not complete.
enum Failure {
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

/// Consume until `cancel` fires or, with `exit_when_idle`, the queue stays empty that long.
pub async fn run(
    job: JobSpec,
    opts: &Options,
    cancel: CancellationToken,
) -> anyhow::Result<Arc<StatsView>> {
    let conns = opts.concurrency + 1;
    let source = source::open(&job, conns).map_err(|e| match e {
        SourceError::Schema { .. } | SourceError::Unsupported(_) => {
            anyhow::Error::from(BadInput(e.to_string()))
        }
        e => e.into(),
    })?;
    let columns = source.describe().await.map_err(|e| match e {
        SourceError::Schema { .. } => anyhow::Error::from(BadInput(e.to_string())),
        e => e.into(),
    })?;
    let sink = sink::open(&job, conns).map_err(|e| BadInput(e.to_string()))?;
    sink.prepare(&columns).await.map_err(|e| match e {
        SinkError::Batch(m) => anyhow::Error::from(BadInput(m)),
        e => e.into(),
    })?;

    let ledger = Ledger::connect(&opts.redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    // Only the producer records the spec: a consumer storing it into an emptied Redis would make a lost
    // ledger look present.
    bitmig_shared::cli::check_spec(&ledger, &job, false, &[]).await?;

    let ctx = Arc::new(Ctx {
        job,
        source,
        sink,
        ledger,
        planned: Default::default(),
        stats: Stats::default(),
        cancel: cancel.clone(),
    });

    // One session per AMQP connection. A lost connection (broker restart, network) ends the session; its
    // unacked deliveries go back to the queue, and the next session picks up where the broker stands.
    let mut connected = false;
    let mut backoff = RECONNECT_MIN;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        match session(&ctx, opts, &mut idle_since, &mut connected).await {
            Ok(()) => break,
            // The first connection failing is a configuration problem more often than an outage: say so.
            Err(e) if !connected => return Err(e),
            Err(e) if cancel.is_cancelled() => {
                warn!(job = %ctx.job.name, error = %format!("{e:#}"), "connection lost while stopping");
                break;
            }
            Err(e) => {
                warn!(job = %ctx.job.name, error = %format!("{e:#}"), retry_in = ?backoff, "RabbitMQ connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => break,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                idle_since = tokio::time::Instant::now();
            }
        }
    }

    let view = Arc::new(StatsView::from(&ctx.stats));
    info!(
        job = %ctx.job.name,
        batches = view.batches,
        rows_written = view.rows_written,
        gone = view.gone,
        failed = view.failed,
        retried = view.retried,
        dead = view.dead,
        "consumer stopped"
    );
    Ok(view)
}

/// Connect, consume until cancelled, idle or the connection is lost, then settle in-flight batches.
/// `Ok` means the consumer should stop; `Err` that the connection failed. `connected` is set once
/// deliveries flow, and a batch that lands resets `idle_since`.
async fn session(
    ctx: &Arc<Ctx>,
    opts: &Options,
    idle_since: &mut tokio::time::Instant,
    connected: &mut bool,
) -> anyhow::Result<()> {
    let job = &ctx.job.name;
    let conn = queue::connect(&opts.amqp_url, "bitmig-consumer")
        .await
        .context("connecting to RabbitMQ")?;
    let publisher = Publisher::new(&conn).await?;
    queue::declare_topology(publisher.channel(), job).await?;
    let publisher = Arc::new(Mutex::new(publisher));
    let ch = conn.create_channel().await?;
    ch.basic_qos(opts.prefetch.max(1), BasicQosOptions::default())
        .await?;
    let tag = format!("bitmig-consumer-{}", std::process::id());
    let mut deliveries = ch
        .basic_consume(
            queue::work_queue(job).as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    *connected = true;
    info!(job = %job, concurrency = opts.concurrency, prefetch = opts.prefetch, "consuming");

    let cancel = &ctx.cancel;
    let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let tracker = TaskTracker::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut lost = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            next = deliveries.next() => {
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        lost = Some(anyhow::Error::from(e));
                        break;
                    }
                    None => {
                        lost = Some(anyhow::anyhow!("the broker ended the consumer"));
                        break;
                    }
                };
                let permit = tokio::select! {
                    p = slots.clone().acquire_owned() => p?,
                    _ = cancel.cancelled() => {
                        // Not started: give it back to the queue at once.
                        let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        break;
                    }
                };
                let (ctx, publisher) = (ctx.clone(), publisher.clone());
                tracker.spawn(async move {
                    handle(&ctx, &publisher, delivery).await;
                    drop(permit);
                });
                *idle_since = tokio::time::Instant::now();
            }
            _ = tick.tick() => {
                let busy = slots.available_permits() < opts.concurrency.max(1);
                if busy {
                    *idle_since = tokio::time::Instant::now();
                } else if let Some(idle) = opts.exit_when_idle {
                    if idle_since.elapsed() >= idle {
                        info!(job = %job, idle_secs = idle.as_secs(), "work queue idle: exiting");
                        break;
                    }
                }
            }
        }
    }

    // Stop taking deliveries, finish in-flight batches, then close.
    let _ = ch
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(job = %job, "in-flight batches did not finish within the grace period; they will be redelivered");
    }
    let _ = ch.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    match lost {
        Some(e) if !cancel.is_cancelled() => Err(e.context("the work queue's consumer stopped")),
        _ => Ok(()),
    }
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsView {
    pub batches: u64,
    pub rows_written: u64,
    pub gone: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead: u64,
}

impl From<&Stats> for StatsView {
    fn from(s: &Stats) -> Self {
        Self {
            batches: s.batches.load(Ordering::Relaxed),
            rows_written: s.rows_written.load(Ordering::Relaxed),
            gone: s.gone.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            dead: s.dead.load(Ordering::Relaxed),
        }
    }
}

/// Process one delivery and settle it: ack after success, after a confirmed hand-over to the retry or
/// dead queue; otherwise nack with requeue so the broker keeps it.
async fn handle(ctx: &Ctx, publisher: &Mutex<Publisher>, d: Delivery) {
    let parsed = Message::parse(&d.data, &ctx.job.name, ctx.job.group_size);
    let span = match &parsed {
        Ok(m) => {
            tracing::info_span!("batch", job = %ctx.job.name, group = m.group, cause = m.cause.as_str(), attempt = m.attempt)
        }
        Err(_) => tracing::info_span!("batch", job = %ctx.job.name),
    };
    async {
        let dead = queue::dead_queue(&ctx.job.name);
        // Where the delivery goes instead, when it did not complete: (queue, body, reason header).
        let handoff: Option<(String, Vec<u8>, Option<String>)> = match parsed {
            Err(reason) => Some((dead.clone(), d.data.clone(), Some(reason))),
            Ok(m) => match process(ctx, &m).await {
                Ok(()) => None,
                Err(Failure::Dead(reason)) => Some((dead.clone(), d.data.clone(), Some(reason))),
                Err(Failure::Retry(reason)) => {
                    let mut m = m;
                    m.attempt += 1;
                    if m.attempt > MAX_ATTEMPTS {
                        error!(reason = %reason, attempts = m.attempt - 1, "batch failed every attempt: to the dead queue");
                        let why = format!("failed {} attempts; last error: {reason}", m.attempt - 1);
                        Some((dead.clone(), m.to_json(), Some(why)))
                    } else {
                        warn!(reason = %reason, next_attempt = m.attempt, "batch will be retried");
                        Some((queue::retry_queue_for(&ctx.job.name, m.attempt), m.to_json(), None))
                    }
                }
            },
        };
        let settled = match handoff {
            None => Ok(()),
            Some((queue_name, body, why)) => {
                if queue_name == dead {
                    warn!(reason = why.as_deref().unwrap_or_default(), "message to the dead queue");
                }
                let sent = publisher
                    .lock()
                    .await
                    .publish_confirmed(&queue_name, &body, why.as_deref())
                    .await;
                match sent {
                    Ok(()) if queue_name == dead => {
                        ctx.stats.dead.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(()) => {
                        ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    // Not handed over: the broker keeps the delivery (nack with requeue below).
                    Err(e) => {
                        error!(error = %e, "could not hand the batch to {queue_name}");
                        Err(())
                    }
                }
            }
        };
        let acked = match settled {
            Ok(()) => d.ack(BasicAckOptions::default()).await,
            Err(()) => d.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
        };
        match acked {
            Ok(true) => {}
            Ok(false) => warn!("ack not sent (channel closed): the batch will be redelivered"),
            Err(e) => warn!(error = %e, "ack failed: the batch will be redelivered"),
        }
    }
    .instrument(span)
    .await
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

/// Read → write → record, for one valid message.
async fn process(ctx: &Ctx, m: &Message) -> Result<(), Failure> {
    check_planned(ctx, m.group).await?;
    let rows = quick_retry(&ctx.cancel, SourceError::is_transient, || {
        ctx.source.read_rows(&m.ids)
    })
    .await
    .map_err(source_failure)?;
    let gone = gone_ids(&m.ids, &rows.rows);
    let outcome = quick_retry(&ctx.cancel, SinkError::is_transient, || {
        ctx.sink.write(&rows)
    })
    .await
    .map_err(sink_failure)?;
    for (id, reason) in &outcome.failed {
        warn!(id, reason = %reason, "row refused by the target: recorded in failed");
    }
    // The rows are committed: the bits must follow. Keep trying while Redis is away (the ConnectionManager
    // reconnects); a shutdown leaves the batch unacked, and its redelivery rewrites it idempotently.
    let mut wait = Duration::from_millis(200);
    loop {
        match ctx
            .ledger
            .record_batch(m.group, &outcome.written, &gone, &outcome.failed)
            .await
        {
            Ok(()) => break,
            Err(e) if !ctx.cancel.is_cancelled() => {
                warn!(error = %e, "could not record the batch in Redis; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(Failure::Retry(format!("recording in Redis: {e}"))),
        }
    }
    ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
    ctx.stats
        .rows_written
        .fetch_add(outcome.written.len() as u64, Ordering::Relaxed);
    ctx.stats
        .gone
        .fetch_add(gone.len() as u64, Ordering::Relaxed);
    ctx.stats
        .failed
        .fetch_add(outcome.failed.len() as u64, Ordering::Relaxed);
    debug!(
        written = outcome.written.len(),
        gone = gone.len(),
        failed = outcome.failed.len(),
        "batch done"
    );
    Ok(())
}

/// A message for a group the producer never planned is forged or left over from a lost ledger: its ids
/// must not become bits (nor rows). One Redis look-up per group and consumer, then remembered.
async fn check_planned(ctx: &Ctx, group: u64) -> Result<(), Failure> {
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

/// Ids of the ranges with no row among `rows` (both ascending).
fn gone_ids(
    ranges: &[bitmig_shared::ids::IdRange],
    rows: &[bitmig_shared::value::Row],
) -> Vec<u64> {
    let mut i = 0;
    expand(ranges)
        .filter(|&id| {
            while i < rows.len() && rows[i].key < id {
                i += 1;
            }
            !(i < rows.len() && rows[i].key == id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitmig_shared::value::Row;

    fn row(key: u64) -> Row {
        Row {
            key,
            values: Vec::new(),
        }
    }

    #[test]
    fn ids_without_a_row_are_gone() {
        let rows = [row(2), row(3), row(7)];
        assert_eq!(gone_ids(&[[1, 3], [6, 8]], &rows), vec![1, 6, 8]);
        assert_eq!(gone_ids(&[[1, 3]], &[]), vec![1, 2, 3]);
        assert!(gone_ids(&[[2, 3]], &rows[..2]).is_empty());
    }
}
