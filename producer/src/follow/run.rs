//! `bitmig-producer --follow` (DESIGN.md §8): the walk of §6 and, beside it, the follower that turns the
//! source's changes into `catchup` batches until SIGTERM.
//!
//! Contract:
//! - The follow position is taken (or the stored checkpoint read) **before** the walk reads anything, and
//!   stored in `bitmig:{JOB}:follow` (`from`, `position`, `started_at`, then `checkpoint_at`,
//!   `last_event_at`, `lag_s`, `events`, `ids_published`, `settling`, `heartbeat_at` every second and
//!   `stopped_at` on a clean stop, which `purge` reads to refuse running beside a follower).
//! - Changed keys gather in a [`RoaringTreemap`] for one window (a hot row is published once per
//!   window): [`WINDOW`] while the consumers keep up, wider (up to [`MAX_WINDOW`], [`window_for`]) while
//!   messages wait in the work queue beyond those the last window published, so a busy table's changes
//!   become fewer, larger batches. Then per
//!   group: plan the group when nobody did (reading all its ids, as the walk does), set the `src` bits,
//!   publish `catchup` batches, wait for the confirms, mark the group `produced` again
//!   ([`Ledger::mark_caught_up_many`]).
//! - Every published id is published once more after `[follow] settle` (seed 001's late-write race), at
//!   most [`SETTLE_BUCKET`] (or two and a half windows) later than that: the re-drives of the windows of
//!   one such span go out together, and with the ids of the window in hand (one message per group for
//!   both).
//! - The stored position (and [`ChangeReader::checkpoint`]) advances, at most about once a second, only
//!   to a change whose ids **and** their settle re-drive are confirmed: a restart, `kill -9` included,
//!   resumes from there and at worst publishes some ids again (harmless: a catch-up is idempotent).
//! - `lag_s`: now − commit time of the newest change published; once a window passes with nothing new,
//!   now − what the reader vouches it has read ([`ChangeReader::read_up_to`]; 0 when it cannot tell);
//!   while paused it grows with the pause (changes may wait unread), until the follower reads again.
//! - A lost stream (binlog, logical) is opened again from the last change taken (`Follower::reopen`);
//!   a queue reader's positions belong to its connection, so it stops instead.
//! - While the job is paused (DESIGN.md §11) the follower neither reads nor publishes (settle re-drives
//!   included) within [`bitmig_shared::control::WATCH_EVERY`] plus the window in hand; the keys it read
//!   and did not publish stay pending, so the checkpoint does not pass them; `resume` goes on from there.
//! - `--metrics-addr` serves the walk's metrics and the follower's: `bitmig_follow_lag_seconds` (`lag_s`),
//!   `bitmig_follow_events_total`, and its ids in `bitmig_ids_published_total` (first publishes only, as
//!   `ids_published`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitmig_shared::cli::{source_error, BadInput};
use bitmig_shared::control::{Control, WATCH_EVERY};
use bitmig_shared::ids::{batches, group_last, group_of};
use bitmig_shared::job::{FollowFrom, FollowSpec, JobSpec};
use bitmig_shared::ledger::{now_rfc3339, Ledger};
use bitmig_shared::queue::{dead_queue, Cause, Message};
use bitmig_shared::telemetry::metrics::Metrics;
use chrono::{DateTime, Utc};
use roaring::RoaringTreemap;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::binlog::{BinlogReader, BinlogSource};
use super::logical::{LogicalReader, LogicalSource};
use super::queue::{QueueReader, QueueSource};
use super::{Change, ChangeReader, FollowError};
use crate::{Amqp, Options, Summary};

/// How long changed keys gather before they are published (and the settle windows' width).
pub const WINDOW: Duration = Duration::from_millis(200);
/// The longest window: while the consumers are behind (ids wait in the work queue), windows widen up to
/// this, so the same changes go out as fewer, larger batches instead of adding messages that would only
/// wait in the queue (see [`window_for`]).
pub const MAX_WINDOW: Duration = Duration::from_secs(2);
/// Messages waiting in the work queue per extra [`WINDOW`] of window.
const BACKLOG_PER_STEP: u32 = 50;
/// How often the work queue's depth is read.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
/// Settle re-drives of the windows falling due within this span (or two and a half windows, when
/// longer) go out as one.
const SETTLE_BUCKET: Duration = Duration::from_secs(1);

/// At most one checkpoint (Redis write and reader checkpoint) per this interval.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Ids waiting before the follower stops reading to publish them (memory bound under a burst).
const MAX_PENDING: u64 = 200_000;
/// Publish attempts of one window before the follower gives up (a broker restart fits inside).
const PUBLISH_ATTEMPTS: u32 = 10;
/// Attempts at reading a lost change stream again (waits 2, 4, … 32 s: about four minutes) before the
/// follower gives up with exit 1; a change read resets the count.
const REOPEN_ATTEMPTS: u32 = 8;

/// The window for a work queue holding `backlog` messages: [`WINDOW`] when the consumers keep up (the lag
/// stays low), one more [`WINDOW`] per [`BACKLOG_PER_STEP`] waiting messages, at most [`MAX_WINDOW`].
/// Publishing sooner than the consumers take the queue only lengthens it: each window's changes are one
/// message per group touched, and a busy table touches every group in every window.
pub fn window_for(backlog: u32) -> Duration {
    (WINDOW * (1 + backlog / BACKLOG_PER_STEP)).min(MAX_WINDOW)
}

/// Plan, publish and follow: the walk ([`crate::walk`]) and the follower run side by side; returns when
/// `cancel` fires (the walk's summary), or with the first error of either.
pub async fn run(
    job: &JobSpec,
    opts: &Options,
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let spec = job.follow.clone().ok_or_else(|| {
        BadInput(format!(
            "job file {}: --follow needs a [follow] section (DESIGN.md §8), e.g. from = \"binlog\" and server_id = 4242",
            job.path.display()
        ))
    })?;
    let ledger = Ledger::connect(&opts.redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    bitmig_shared::cli::check_spec(&ledger, job, true, &[]).await?;
    let position = start_position(job, &spec, &ledger).await?;
    let reader = open_reader(job, opts, &spec, &position).await?;
    info!(job = %job.name, from = spec.from.name(), %position, "following");

    let metrics = Metrics::new(&job.name);
    let _server = crate::serve_metrics(job, opts, &metrics, cancel.clone()).await?;
    let follower = Follower::new(job, opts, spec, ledger, position, metrics.clone()).await?;
    let walk_cancel = cancel.child_token();
    let walk = crate::walk(job, opts, &metrics, walk_cancel.clone());
    let follow = follower.follow(reader, cancel.clone());
    tokio::pin!(walk, follow);
    let mut summary = None;
    loop {
        tokio::select! {
            r = &mut walk, if summary.is_none() => {
                summary = Some(r?);
                info!(job = %job.name, "the walk is done; following until SIGTERM");
            }
            r = &mut follow => {
                r?;
                // The follower returns only when cancelled; let an unfinished walk say so.
                return match summary {
                    Some(s) => Ok(s),
                    None => walk.await,
                };
            }
        }
    }
}

/// The stored checkpoint, or (first run) the source's position now, stored before anything is read.
async fn start_position(
    job: &JobSpec,
    spec: &FollowSpec,
    ledger: &Ledger,
) -> anyhow::Result<String> {
    let state = ledger.follow_state().await?;
    if let Some(position) = state.get("position") {
        let stored = state.get("from").map(String::as_str).unwrap_or("");
        if stored != spec.from.name() {
            return Err(BadInput(format!(
                "job file {}: follow.from is \"{}\" but {} was followed from \"{stored}\"; \
                 a job follows one source (delete {} to start over)",
                job.path.display(),
                spec.from.name(),
                ledger.job_key("follow"),
                ledger.job_key("follow")
            ))
            .into());
        }
        info!(job = %job.name, %position, "resuming from the stored follow checkpoint");
        return Ok(position.clone());
    }
    let position = match &spec.from {
        FollowFrom::Binlog { .. } => super::binlog::position_now(&binlog_source(job, spec)).await,
        FollowFrom::Logical { .. } => {
            super::logical::position_now(&logical_source(job, spec)).await
        }
        FollowFrom::Queue { .. } => Ok(super::queue::position_now()),
    }
    .map_err(follow_error)?;
    ledger
        .set_follow_state(&[
            ("from", spec.from.name().to_owned()),
            ("position", position.clone()),
            ("started_at", now_rfc3339()),
            ("events", "0".into()),
            ("ids_published", "0".into()),
        ])
        .await?;
    Ok(position)
}

fn binlog_source(job: &JobSpec, spec: &FollowSpec) -> BinlogSource {
    let server_id = match spec.from {
        FollowFrom::Binlog { server_id } => server_id,
        _ => 0,
    };
    BinlogSource {
        url: job.source.url.expose().to_owned(),
        database: job.source.table.schema.as_ref().map(|s| s.to_string()),
        table: job.source.table.table.to_string(),
        key: job.source.key.to_string(),
        server_id,
    }
}

fn logical_source(job: &JobSpec, spec: &FollowSpec) -> LogicalSource {
    let (slot, publication) = match &spec.from {
        FollowFrom::Logical { slot, publication } => (slot.clone(), publication.clone()),
        _ => Default::default(),
    };
    LogicalSource {
        url: job.source.url.expose().to_owned(),
        schema: job.source.table.schema.as_ref().map(|s| s.to_string()),
        table: job.source.table.table.to_string(),
        key: job.source.key.to_string(),
        slot,
        publication,
    }
}

async fn open_reader(
    job: &JobSpec,
    opts: &Options,
    spec: &FollowSpec,
    position: &str,
) -> anyhow::Result<Box<dyn ChangeReader>> {
    let reader: Box<dyn ChangeReader> = match &spec.from {
        FollowFrom::Binlog { .. } => Box::new(
            BinlogReader::start(binlog_source(job, spec), position)
                .await
                .map_err(follow_error)?,
        ),
        FollowFrom::Logical { .. } => Box::new(
            LogicalReader::start(logical_source(job, spec), position)
                .await
                .map_err(follow_error)?,
        ),
        FollowFrom::Queue { queue, keys } => Box::new(
            QueueReader::start(&QueueSource {
                amqp_url: opts.amqp_url.clone(),
                queue: queue.clone(),
                keys: keys.clone(),
                // Messages stay unacked until their settle re-drive (the checkpoint), so the window must
                // hold `settle` worth of events: 10 000 is 1 000 events/s at the default 10 s.
                prefetch: 10_000,
            })
            .await
            .map_err(follow_error)?,
        ),
    };
    Ok(reader)
}

/// A reader's error as the binaries' exit codes want it: refusals and bad positions exit 2.
fn follow_error(e: FollowError) -> anyhow::Error {
    match e {
        FollowError::Refused(b) => anyhow::Error::new(b).context("the source cannot be followed"),
        FollowError::BadPosition { position, reason } => {
            anyhow::Error::new(reason).context(format!("bad follow position `{position}`"))
        }
        other => anyhow::Error::new(other),
    }
}

/// A refusal or a bad position (exit 2): opening the stream again cannot help.
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<BadInput>())
}

/// Ids published in one window, to be published again once `due`; `position` is the newest change they
/// cover (`None`: a settle-only window).
struct Settling {
    due: Instant,
    /// The first window's due time: later windows join until [`SETTLE_BUCKET`] after it.
    opened: Instant,
    ids: RoaringTreemap,
    position: Option<String>,
}

struct Follower<'a> {
    job: &'a JobSpec,
    opts: &'a Options,
    spec: FollowSpec,
    ledger: Ledger,
    /// For the ids of a group nobody planned yet (the follower plans it whole).
    source: Box<dyn bitmig_shared::source::Source>,
    amqp: Option<Amqp>,
    /// Keys read, not yet published, and the newest change they came from.
    pending: RoaringTreemap,
    pending_position: Option<String>,
    newest_commit: Option<DateTime<Utc>>,
    settling: VecDeque<Settling>,
    /// The newest position whose ids and settle re-drive are confirmed, and the one stored.
    safe_position: String,
    stored_position: String,
    last_checkpoint: Instant,
    events: u64,
    ids_published: u64,
    last_event_at: Option<DateTime<Utc>>,
    lag_s: f64,
    metrics: Metrics,
    /// The current window ([`window_for`] the work queue's depth), when the pending ids last went out,
    /// and when the depth was last read (on a channel of its own: a failed passive declare closes it).
    window: Duration,
    last_flush: Instant,
    /// Messages the last flush published: not a backlog yet when the depth is read (the consumers had at
    /// most a window to take them), so they do not widen the window.
    last_flush_messages: u32,
    backlog_read: Option<Instant>,
    probe: Option<lapin::Channel>,
}

impl<'a> Follower<'a> {
    async fn new(
        job: &'a JobSpec,
        opts: &'a Options,
        spec: FollowSpec,
        ledger: Ledger,
        position: String,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let state = ledger.follow_state().await?;
        let num = |k: &str| state.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Self {
            source: bitmig_shared::source::open(job, 2).map_err(source_error)?,
            amqp: Some(Amqp::connect(&opts.amqp_url, &job.name).await?),
            job,
            opts,
            spec,
            events: num("events"),
            ids_published: num("ids_published"),
            ledger,
            pending: RoaringTreemap::new(),
            pending_position: None,
            newest_commit: None,
            settling: VecDeque::new(),
            safe_position: position.clone(),
            stored_position: position,
            last_checkpoint: Instant::now(),
            last_event_at: None,
            lag_s: 0.0,
            metrics,
            window: WINDOW,
            last_flush: Instant::now(),
            last_flush_messages: 0,
            backlog_read: None,
            probe: None,
        })
    }

    /// Reads and publishes until `cancel`; then stores the last safe checkpoint.
    async fn follow(
        mut self,
        mut reader: Box<dyn ChangeReader>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut read_in_window = false;
        // Where the reader was last: reading again after a lost stream starts there.
        let mut read_position = self.stored_position.clone();
        let mut reopened = 0u32;
        let pause = Control::new(self.ledger.connection(), &self.job.name)
            .watch(WATCH_EVERY)
            .await
            .context("reading the job's control hash")?;
        let mut paused = pause.subscribe();
        // While paused, changes may wait unread in the source's log: the lag grows with the pause, so
        // `caught_up` cannot read true between a resume and the reading of what came meanwhile.
        let mut paused_at: Option<Instant> = None;
        loop {
            let is_paused = *paused.borrow_and_update();
            self.metrics.set_paused(is_paused);
            if is_paused && paused_at.is_none() {
                paused_at = Some(Instant::now());
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Ok(()) = paused.changed() => {
                    // Seen at the top of the loop; a window read before the pause stays pending.
                    if *paused.borrow() {
                        info!(job = %self.job.name, pending = self.pending.len(), "job paused: the follower stops reading and publishing");
                    } else {
                        info!(job = %self.job.name, "job resumed: the follower goes on");
                        // The first window after a resume keeps the pause's lag: nothing read yet.
                        paused_at = None;
                        read_in_window = true;
                    }
                }
                _ = tick.tick() => {
                    if let Some(at) = paused_at.filter(|_| is_paused) {
                        self.lag_s = self.lag_s.max(at.elapsed().as_secs_f64());
                    }
                    if !is_paused {
                        if !read_in_window && self.pending.is_empty() {
                            // Nothing came: caught up — as far as the reader can vouch (a stalled stream
                            // is quiet too).
                            self.lag_s = reader.read_up_to().map_or(0.0, |t| {
                                ((Utc::now() - t).num_milliseconds().max(0) as f64) / 1000.0
                            });
                        }
                        read_in_window = false;
                        self.adapt_window().await;
                        // A tick early rather than a tick late: the tick is one WINDOW.
                        if self.last_flush.elapsed() + WINDOW / 2 >= self.window {
                            self.flush().await?;
                            self.last_flush = Instant::now();
                        }
                    }
                    self.checkpoint(Some(&mut *reader), false).await?;
                }
                c = reader.next(), if !is_paused && self.pending.len() < MAX_PENDING => {
                    match c {
                        Ok(c) => {
                            read_in_window = true;
                            reopened = 0;
                            self.metrics.follow_event();
                            read_position = c.position.clone();
                            self.take(c).await?;
                        }
                        // A lost or silent stream (binlog, logical): read again from the last change
                        // taken. The queue reader's positions belong to its connection: it stops.
                        Err(FollowError::Source(e))
                            if !matches!(self.spec.from, FollowFrom::Queue { .. }) =>
                        {
                            warn!(job = %self.job.name, position = %read_position, error = %format!("{e:#}"),
                                "the change stream failed; reading again from the last change taken");
                            // The old stream goes first: a binlog dump with the same server_id, or the
                            // slot's walsender, must be gone before the new one starts.
                            drop(reader);
                            let reopened_reader = self
                                .reopen(&read_position, &mut reopened, &cancel)
                                .await
                                .with_context(|| format!("the change stream failed: {e:#}"))?;
                            reader = match reopened_reader {
                                Some(r) => r,
                                None => return self.stop_without_reader().await,
                            };
                        }
                        Err(e) => return Err(follow_error(e)),
                    }
                }
            }
        }
        self.checkpoint(Some(&mut *reader), true).await?;
        self.close().await;
        Ok(())
    }

    /// Opens the change stream again at `position`, after waits of 2, 4, … 32 s, until it opens; `None`
    /// when cancelled meanwhile. `attempts` counts since the last change read (the caller resets it):
    /// past [`REOPEN_ATTEMPTS`], or on a refusal (exit 2), the follower gives up.
    async fn reopen(
        &self,
        position: &str,
        attempts: &mut u32,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Box<dyn ChangeReader>>> {
        loop {
            if *attempts >= REOPEN_ATTEMPTS {
                anyhow::bail!(
                    "the change stream failed {attempts} times in a row without a change read between; giving up"
                );
            }
            *attempts += 1;
            let wait = Duration::from_secs(1 << (*attempts).min(5));
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(wait) => {}
            }
            match open_reader(self.job, self.opts, &self.spec, position).await {
                Ok(r) => {
                    info!(job = %self.job.name, %position, attempt = *attempts, "reading the change stream again");
                    return Ok(Some(r));
                }
                Err(e) if is_bad_input(&e) => {
                    return Err(e.context("opening the change stream again"))
                }
                Err(e) => {
                    warn!(job = %self.job.name, attempt = *attempts, error = %format!("{e:#}"),
                        "could not open the change stream again");
                }
            }
        }
    }

    /// SIGTERM while the change stream was being opened again: the last safe checkpoint, stored.
    async fn stop_without_reader(mut self) -> anyhow::Result<()> {
        self.checkpoint(None, true).await?;
        self.close().await;
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(a) = self.amqp.take() {
            let _ = a.conn.close(200, "done".into()).await;
        }
    }

    async fn take(&mut self, c: Change) -> anyhow::Result<()> {
        self.events += 1;
        self.last_event_at = Some(c.committed_at);
        self.newest_commit = Some(c.committed_at);
        if let Some(nk) = &c.no_key {
            // A change event without a key: to the dead queue with the reason, confirmed before its
            // position can be checkpointed.
            let dead = dead_queue(&self.job.name);
            let reason = format!("change event with no key: {}", nk.reason);
            let mut attempt = 1;
            loop {
                let r = match self.amqp().await {
                    Ok(a) => a
                        .publisher
                        .publish_confirmed(&dead, &nk.body, Some(&reason))
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => break,
                    Err(e) if attempt >= PUBLISH_ATTEMPTS => {
                        return Err(e.context("dead-lettering a change event"))
                    }
                    Err(e) => {
                        warn!(job = %self.job.name, attempt, error = %format!("{e:#}"), "dead-lettering failed; redoing it");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        attempt += 1;
                    }
                }
            }
        }
        self.pending.extend(c.keys.iter().copied());
        self.pending_position = Some(c.position);
        Ok(())
    }

    /// Reads the work queue's depth (at most every [`BACKLOG_EVERY`]) and sets the window from it. A failed
    /// read keeps the window: it is an optimisation, never a reason to stop.
    async fn adapt_window(&mut self) {
        if self
            .backlog_read
            .is_some_and(|at| at.elapsed() < BACKLOG_EVERY)
        {
            return;
        }
        self.backlog_read = Some(Instant::now());
        let queue = bitmig_shared::queue::work_queue(&self.job.name);
        if !self.probe.as_ref().is_some_and(|c| c.status().connected()) {
            self.probe = None;
            let Ok(a) = self.amqp().await else {
                return;
            };
            match a.conn.create_channel().await {
                Ok(c) => self.probe = Some(c),
                Err(_) => return,
            }
        }
        let Some(probe) = &self.probe else {
            return;
        };
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match probe
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await
        {
            Ok(q) => {
                let backlog = q.message_count().saturating_sub(self.last_flush_messages);
                let window = window_for(backlog);
                if window != self.window {
                    debug!(job = %self.job.name, depth = q.message_count(), backlog, window_ms = window.as_millis() as u64, "catch-up window");
                }
                self.window = window;
            }
            Err(e) => {
                debug!(job = %self.job.name, error = %e, "could not read the work queue's depth");
                self.probe = None;
            }
        }
    }

    /// The broker connection, opened again when it was lost.
    async fn amqp(&mut self) -> anyhow::Result<&mut Amqp> {
        if !self
            .amqp
            .as_ref()
            .is_some_and(|a| a.conn.status().connected())
        {
            let a = Amqp::connect(&self.opts.amqp_url, &self.job.name).await?;
            info!(job = %self.job.name, "reconnected to RabbitMQ");
            self.amqp = Some(a);
        }
        // Set just above when it was not.
        self.amqp.as_mut().context("no broker connection")
    }

    /// Publishes the window's pending ids together with the settle re-drives that are due: a group both
    /// touch gets one message, not two (a busy table touches every group in every window and in every
    /// settle bucket, so this halves the messages the consumers take one by one).
    async fn flush(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let due = self.settling.iter().take_while(|s| s.due <= now).count();
        let fresh = std::mem::take(&mut self.pending);
        let merged = (due > 0).then(|| {
            let mut m = fresh.clone();
            for s in self.settling.iter().take(due) {
                m |= &s.ids;
            }
            m
        });
        let out = merged.as_ref().unwrap_or(&fresh);
        // A failed publish stops the follower (after its own retries): the checkpoint has not passed
        // these ids, so a restart reads them again.
        self.last_flush_messages = if out.is_empty() {
            0
        } else {
            self.publish(out).await?
        };
        // Confirmed: the due re-drives are done, their positions safe.
        for s in self.settling.drain(..due) {
            if let Some(p) = s.position {
                self.safe_position = p;
            }
        }
        if !fresh.is_empty() {
            self.ids_published += fresh.len();
            self.metrics.ids_published(fresh.len());
            if let Some(at) = self.newest_commit {
                self.lag_s = ((Utc::now() - at).num_milliseconds().max(0) as f64) / 1000.0;
            }
            let due = Instant::now() + self.spec.settle;
            let position = self.pending_position.take();
            match self.settling.back_mut() {
                // Windows whose re-drives fall due within SETTLE_BUCKET of the bucket's first go out
                // together, each still at least `settle` after its publish: one message per group instead
                // of one per window (a busy table touches the same groups window after window).
                Some(last)
                    if !last.ids.is_empty()
                        && due.saturating_duration_since(last.opened)
                            < SETTLE_BUCKET.max(self.window * 5 / 2) =>
                {
                    last.ids |= fresh;
                    last.due = due;
                    if position.is_some() {
                        last.position = position;
                    }
                }
                _ => self.settling.push_back(Settling {
                    due,
                    opened: due,
                    ids: fresh,
                    position,
                }),
            }
        } else if let Some(position) = self.pending_position.take() {
            // Changes with no key of ours (a queue event dead-lettered): safe once those before it are.
            let now = Instant::now();
            self.settling.push_back(Settling {
                due: now,
                opened: now,
                ids: RoaringTreemap::new(),
                position: Some(position),
            });
        }
        Ok(())
    }

    /// One window's ids as `catchup` batches, group by group, in the order of DESIGN.md §8.2; the number
    /// of messages published.
    async fn publish(&mut self, ids: &RoaringTreemap) -> anyhow::Result<u32> {
        let gs = self.job.group_size;
        let mut groups: Vec<(u64, Vec<u64>)> = Vec::new();
        for id in ids.iter() {
            let first = group_of(id, gs);
            match groups.last_mut() {
                Some((f, v)) if *f == first => v.push(id),
                _ => groups.push((first, vec![id])),
            }
        }
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        // Groups this window planned, kept across attempts (a redone attempt finds them `producing`).
        let mut planned_here = Vec::new();
        loop {
            match self.publish_once(&groups, &mut planned_here).await {
                Ok(messages) => return Ok(messages),
                Err(e) if attempt >= PUBLISH_ATTEMPTS => {
                    return Err(e.context(format!(
                        "publishing catch-up batches: giving up after {attempt} attempts"
                    )))
                }
                Err(e) => {
                    warn!(job = %self.job.name, attempt, retry_in = ?delay, error = %format!("{e:#}"), "catch-up publish failed; redoing it");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                    attempt += 1;
                }
            }
        }
    }

    async fn publish_once(
        &mut self,
        groups: &[(u64, Vec<u64>)],
        planned_here: &mut Vec<(u64, u64)>,
    ) -> anyhow::Result<u32> {
        let job = self.job;
        let gs = job.group_size;
        // The window's groups in a few rounds of pipelines, not a few round trips per group: a busy table
        // touches every group in every window.
        let firsts: Vec<u64> = groups.iter().map(|(f, _)| *f).collect();
        let statuses = self.ledger.group_statuses(&firsts).await?;
        let mut all: Vec<(u64, Vec<u64>)> = Vec::with_capacity(groups.len());
        for ((first, ids), status) in groups.iter().zip(statuses) {
            let mut ids = ids.clone();
            if status.is_none() || planned_here.iter().any(|(f, _)| f == first) {
                // Nobody planned this group (ids above the walk's range, or a group the walk has not
                // reached): plan it whole, as the walk would, so it never passes for produced with only
                // its changed ids. The changed ids stay in, so those gone are deleted.
                self.ledger
                    .begin_group(*first, group_last(*first, gs))
                    .await?;
                let existing = self
                    .source
                    .keys_between(*first, group_last(*first, gs))
                    .await
                    .map_err(source_error)?;
                planned_here.retain(|(f, _)| f != first);
                planned_here.push((*first, existing.len() as u64));
                ids.extend(existing);
                ids.sort_unstable();
                ids.dedup();
            }
            all.push((*first, ids));
        }
        self.ledger.add_src_many(&all).await?;
        let amqp = self.amqp().await?;
        let mut messages = 0u32;
        for (first, ids) in &all {
            for ranges in batches(ids, job.batch_size as usize) {
                messages = messages.saturating_add(1);
                let m = Message {
                    job: job.name.clone(),
                    group: *first,
                    ids: ranges,
                    cause: Cause::Catchup,
                    attempt: 0,
                };
                amqp.publisher.publish_message(&job.name, &m).await?;
            }
        }
        self.amqp()
            .await?
            .publisher
            .wait()
            .await
            .context("catch-up batches not confirmed")?;
        let mut caught_up = Vec::new();
        for first in &firsts {
            match planned_here.iter().find(|(f, _)| f == first) {
                // Planned by the follower, whole.
                Some((_, n)) => self.ledger.finish_group(*first, *n).await?,
                None => caught_up.push(*first),
            }
        }
        self.ledger.mark_caught_up_many(&caught_up).await?;
        Ok(messages)
    }

    /// Stores the state, and advances the stored position and the reader's checkpoint to the newest safe
    /// position, at most once per [`CHECKPOINT_EVERY`] (always when `last`). `reader` is `None` for a
    /// follower stopped while its stream was being opened again: the position is stored all the same.
    async fn checkpoint(
        &mut self,
        reader: Option<&mut dyn ChangeReader>,
        last: bool,
    ) -> anyhow::Result<()> {
        self.metrics
            .set_follow_lag(Duration::from_secs_f64(self.lag_s.max(0.0)));
        if !last && self.last_checkpoint.elapsed() < CHECKPOINT_EVERY {
            return Ok(());
        }
        self.last_checkpoint = Instant::now();
        let settling: u64 =
            self.settling.iter().map(|s| s.ids.len()).sum::<u64>() + self.pending.len();
        let mut fields = vec![
            ("lag_s", format!("{:.3}", self.lag_s)),
            ("events", self.events.to_string()),
            ("ids_published", self.ids_published.to_string()),
            ("settling", settling.to_string()),
            // purge refuses to run while these are fresh and not stopped (DESIGN.md §10)
            ("heartbeat_at", now_rfc3339()),
        ];
        if last {
            fields.push(("stopped_at", now_rfc3339()));
        }
        if let Some(at) = self.last_event_at {
            fields.push((
                "last_event_at",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ));
        }
        if self.safe_position != self.stored_position {
            if let Some(reader) = reader {
                reader
                    .checkpoint(&self.safe_position)
                    .await
                    .map_err(follow_error)?;
            }
            fields.push(("position", self.safe_position.clone()));
            fields.push(("checkpoint_at", now_rfc3339()));
            self.stored_position = self.safe_position.clone();
        }
        self.ledger.set_follow_state(&fields).await?;
        Ok(())
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn the_window_widens_with_the_backlog_and_stops_at_the_longest() {
        assert_eq!(window_for(0), WINDOW);
        assert_eq!(window_for(BACKLOG_PER_STEP - 1), WINDOW);
        assert_eq!(window_for(BACKLOG_PER_STEP), WINDOW * 2);
        assert_eq!(window_for(4 * BACKLOG_PER_STEP), WINDOW * 5);
        assert_eq!(window_for(u32::MAX), MAX_WINDOW);
    }
}
