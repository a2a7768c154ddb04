//! One AMQP session of the consumer: connect, declare the topology, take deliveries under the concurrency
//! limit, and settle each one — ack after success or after a confirmed hand-over to the retry or dead
//! queue, otherwise nack with requeue so the broker keeps it. What a batch does is [`crate::process`].
//! While the job is paused the session has no subscription on the work queue (see [`wait_running`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bitmig_shared::queue::{self, Message, Publisher, MAX_ATTEMPTS};
use bitmig_shared::telemetry::metrics::BatchOutcome;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use crate::process::{check_planned, process, Failure};
use crate::{Ctx, Options, MERGE_MAX, PRODUCE_MERGE_IDS, SHUTDOWN_GRACE};

/// Connect, consume until cancelled, idle or the connection is lost, then settle in-flight batches.
/// `Ok` means the consumer should stop; `Err` that the connection failed. `connected` is set once
/// deliveries flow, and a batch that lands resets `idle_since`.
pub(crate) async fn session(
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
    *connected = true;

    let cancel = &ctx.cancel;
    let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let tracker = TaskTracker::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut lost = None;
    let mut paused = ctx.pause.clone();
    // One subscription per stretch of running: a pause cancels it (the broker keeps the queue's
    // messages, nothing is nacked), a resume subscribes again.
    'running: while wait_running(ctx, &mut paused, idle_since).await {
        let mut deliveries = ch
            .basic_consume(
                queue::work_queue(job).as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(job = %job, concurrency = opts.concurrency, prefetch = opts.prefetch, "consuming");
        let mut pausing = false;
        // A delivery (or the stream's end) taken from the stream but not started yet.
        let mut stash: Option<Option<Result<Delivery, lapin::Error>>> = None;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Ok(_) = paused.wait_for(|p| *p) => {
                    pausing = true;
                    break;
                }
                next = next_delivery(&mut stash, &mut deliveries) => {
                    let delivery = match next {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => {
                            lost = Some(anyhow::Error::from(e));
                            break 'running;
                        }
                        None => {
                            lost = Some(anyhow::anyhow!("the broker ended the consumer"));
                            break 'running;
                        }
                    };
                    let mut pause = ctx.pause.clone();
                    let permit = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => {
                            // Not started: give it back to the queue at once.
                            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                            break;
                        }
                        Ok(_) = pause.wait_for(|p| *p) => {
                            // Not started: back to the head of the work queue (not a retry queue).
                            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                            pausing = true;
                            break;
                        }
                        p = slots.clone().acquire_owned() => p?,
                    };
                    // Batches of the same kind the broker already pushed go along with this one (one read,
                    // one transaction): small exclusive ones, or `produce` ones for a sink that writes them
                    // better together. The first that cannot join waits in `stash` for the next slot.
                    let parsed = Message::parse(&delivery.data, job, ctx.job.group_size);
                    let mut room = merge_room(ctx, &parsed);
                    let mut taken = vec![(delivery, parsed)];
                    while room.is_some() && taken.len() < MERGE_MAX {
                        match deliveries.next().now_or_never() {
                            None => break,
                            Some(Some(Ok(d))) => {
                                let parsed = Message::parse(&d.data, job, ctx.job.group_size);
                                match (merge_room(ctx, &parsed), room) {
                                    (Some((kind, _)), Some((joins, left)))
                                        if kind == joins && ids_of(&parsed) <= left =>
                                    {
                                        room = Some((kind, left - ids_of(&parsed)));
                                        taken.push((d, parsed));
                                    }
                                    _ => {
                                        stash = Some(Some(Ok(d)));
                                        break;
                                    }
                                }
                            }
                            Some(other) => {
                                stash = Some(other);
                                break;
                            }
                        }
                    }
                    let (ctx, publisher) = (ctx.clone(), publisher.clone());
                    tracker.spawn(async move {
                        handle(&ctx, &publisher, taken).await;
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
        match stash.take() {
            // Not started: back to the head of the work queue.
            Some(Some(Ok(d))) => {
                let _ = d
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
            Some(Some(Err(e))) => {
                lost = Some(anyhow::Error::from(e));
                break 'running;
            }
            Some(None) => {
                lost = Some(anyhow::anyhow!("the broker ended the consumer"));
                break 'running;
            }
            None => {}
        }
        if !pausing {
            break;
        }
        // Paused: stop the subscription. Deliveries the broker pushed before the cancel (at most the
        // prefetch) were not started: they go back to the head of the work queue (requeued, not retried);
        // the stream ends after the last one.
        ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        let mut requeued = 0u32;
        while let Some(next) = deliveries.next().await {
            match next {
                Ok(d) => {
                    requeued += 1;
                    let _ = d
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                }
                Err(e) => {
                    lost = Some(anyhow::Error::from(e));
                    break 'running;
                }
            }
        }
        info!(job = %job, requeued, "job paused: stopped taking deliveries; in-flight batches finish");
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

/// Return `true` at once while the job runs; while it is paused, wait for `resume` (`true`) or a shutdown
/// (`false`). The idle clock restarts after a pause: a paused queue is not an idle one.
async fn wait_running(
    ctx: &Ctx,
    paused: &mut tokio::sync::watch::Receiver<bool>,
    idle_since: &mut tokio::time::Instant,
) -> bool {
    if ctx.cancel.is_cancelled() {
        return false;
    }
    if !*paused.borrow_and_update() {
        return true;
    }
    ctx.metrics.set_paused(true);
    info!(job = %ctx.job.name, "job paused: waiting for `bitmig-compensator resume`");
    let resumed = tokio::select! {
        r = paused.wait_for(|p| !*p) => r.is_ok(),
        _ = ctx.cancel.cancelled() => false,
    };
    ctx.metrics.set_paused(false);
    if resumed {
        info!(job = %ctx.job.name, "job resumed");
    }
    *idle_since = tokio::time::Instant::now();
    resumed
}

/// The next delivery: the stashed one first.
async fn next_delivery(
    stash: &mut Option<Option<Result<Delivery, lapin::Error>>>,
    deliveries: &mut lapin::Consumer,
) -> Option<Result<Delivery, lapin::Error>> {
    match stash.take() {
        Some(next) => next,
        None => deliveries.next().await,
    }
}

/// Whether a delivery can be taken together with others, and with which: its kind (`true`: exclusive)
/// and the ids the batches joining it may still bring. A small exclusive batch
/// ([`crate::batch::mergeable`]) leaves the job's batch size minus its own ids; a `produce` batch, for a
/// sink that [merges them](bitmig_shared::sink::Sink::merges_produce), [`PRODUCE_MERGE_IDS`] minus its own.
fn merge_room(ctx: &Ctx, parsed: &Result<Message, String>) -> Option<(bool, u64)> {
    let m = parsed.as_ref().ok()?;
    let ids = bitmig_shared::ids::count_in(&m.ids);
    let limit = ctx.job.batch_size;
    if crate::batch::mergeable(m.cause, &m.ids, limit) {
        return Some((true, limit - ids));
    }
    let produce_merges = !crate::batch::is_exclusive(m.cause) && ctx.sink.merges_produce();
    (produce_merges && ids < PRODUCE_MERGE_IDS).then(|| (false, PRODUCE_MERGE_IDS - ids))
}

fn ids_of(parsed: &Result<Message, String>) -> u64 {
    parsed
        .as_ref()
        .map(|m| bitmig_shared::ids::count_in(&m.ids))
        .unwrap_or(0)
}

/// Process deliveries taken together (one, or several small exclusive batches) and settle each: ack after
/// success or after a confirmed hand-over to the retry or dead queue; otherwise nack with requeue so the
/// broker keeps it. A delivery that does not parse or whose group is not planned is settled alone; the
/// others share one read, one write and its outcome.
async fn handle(
    ctx: &Ctx,
    publisher: &Mutex<Publisher>,
    taken: Vec<(Delivery, Result<Message, String>)>,
) {
    let span = match taken.first().map(|(_, p)| p) {
        Some(Ok(m)) if taken.len() > 1 => {
            tracing::info_span!("batch", job = %ctx.job.name, group = m.group, cause = m.cause.as_str(), attempt = m.attempt, together = taken.len())
        }
        Some(Ok(m)) => {
            tracing::info_span!("batch", job = %ctx.job.name, group = m.group, cause = m.cause.as_str(), attempt = m.attempt)
        }
        _ => tracing::info_span!("batch", job = %ctx.job.name),
    };
    async {
        let mut ready: Vec<(Delivery, Message)> = Vec::new();
        for (d, parsed) in taken {
            match parsed {
                Err(reason) => settle(ctx, publisher, d, None, Err(Failure::Dead(reason))).await,
                Ok(m) => match check_planned(ctx, m.group).await {
                    Ok(()) => ready.push((d, m)),
                    Err(f) => settle(ctx, publisher, d, Some(m), Err(f)).await,
                },
            }
        }
        if ready.is_empty() {
            return;
        }
        let messages: Vec<&Message> = ready.iter().map(|(_, m)| m).collect();
        let outcome = process(ctx, &messages).await;
        for (d, m) in ready {
            settle(ctx, publisher, d, Some(m), outcome.clone()).await;
        }
    }
    .instrument(span)
    .await
}

/// Settle one delivery after `outcome`: ack it, or hand it to the dead queue (`Failure::Dead`, a message that
/// did not parse: `m` is `None`) or its next retry queue first; a failed hand-over nacks it with requeue.
async fn settle(
    ctx: &Ctx,
    publisher: &Mutex<Publisher>,
    d: Delivery,
    m: Option<Message>,
    outcome: Result<(), Failure>,
) {
    let dead = queue::dead_queue(&ctx.job.name);
    // Where the delivery goes instead, when it did not complete: (queue, body, reason header).
    let handoff: Option<(String, Vec<u8>, Option<String>)> = match (outcome, m) {
        (Ok(()), _) => None,
        (Err(Failure::Dead(reason)), _) => Some((dead.clone(), d.data.clone(), Some(reason))),
        (Err(Failure::Retry(reason)), None) => Some((dead.clone(), d.data.clone(), Some(reason))),
        (Err(Failure::Retry(reason)), Some(mut m)) => {
            m.attempt += 1;
            if m.attempt > MAX_ATTEMPTS {
                error!(group = m.group, reason = %reason, attempts = m.attempt - 1, "batch failed every attempt: to the dead queue");
                let why = format!("failed {} attempts; last error: {reason}", m.attempt - 1);
                Some((dead.clone(), m.to_json(), Some(why)))
            } else {
                warn!(group = m.group, reason = %reason, next_attempt = m.attempt, "batch will be retried");
                Some((
                    queue::retry_queue_for(&ctx.job.name, m.attempt),
                    m.to_json(),
                    None,
                ))
            }
        }
    };
    let settled = match handoff {
        None => {
            ctx.metrics.batch(BatchOutcome::Done);
            Ok(())
        }
        Some((queue_name, body, why)) => {
            if queue_name == dead {
                warn!(
                    reason = why.as_deref().unwrap_or_default(),
                    "message to the dead queue"
                );
            }
            let sent = publisher
                .lock()
                .await
                .publish_confirmed(&queue_name, &body, why.as_deref())
                .await;
            match sent {
                Ok(()) if queue_name == dead => {
                    ctx.stats.dead.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.batch(BatchOutcome::DeadLettered);
                    Ok(())
                }
                Ok(()) => {
                    ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.batch(BatchOutcome::Retried);
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
        Err(()) => {
            d.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
        }
    };
    match acked {
        Ok(true) => {}
        Ok(false) => warn!("ack not sent (channel closed): the batch will be redelivered"),
        Err(e) => warn!(error = %e, "ack failed: the batch will be redelivered"),
    }
}
