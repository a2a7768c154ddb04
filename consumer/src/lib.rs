//! The consumer: takes batches from the work queue, reads the current rows, writes them to the target,
//! sets the ledger's bits, then acks (DESIGN.md §6 steps 2–3).
//!
//! Nothing is acked that is not committed, recorded as gone or failed, or handed to a retry or dead queue
//! under a broker confirm. A crash anywhere before the ack means a redelivery and an idempotent rewrite.
//!
//! Operating (DESIGN.md §11): a [`PauseWatch`] polls `bitmig:{JOB}:control`; while the job is paused the
//! session holds no subscription on the work queue: deliveries taken but not started are requeued to the work
//! queue (never to a retry queue), in-flight batches finish and are acked, and a consumer started while
//! paused waits. Before each batch the job's
//! `[throttle]` ([`Throttle::wait_for_budget`]) may hold it. `--metrics-addr` serves [`Metrics`] with
//! `/readyz` checking the broker, Redis and the databases.
//!
//! - [`session`]: the AMQP connection, deliveries under the concurrency limit, settling each one, pausing.
//! - [`process`]: one message end to end: read, decide, apply to the sink, record in the ledger.
//! - [`batch`]: the decision itself, pure: what to write, delete and record.

pub mod batch;
mod process;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bitmig_shared::cli::{self, BadInput};
use bitmig_shared::control::{Control, PauseWatch, WATCH_EVERY};
use bitmig_shared::job::{JobSpec, TargetSpec};
use bitmig_shared::ledger::Ledger;
use bitmig_shared::sink::{self, Sink, SinkError};
use bitmig_shared::source::{self, Source};
use bitmig_shared::telemetry::metrics::{self, Metrics, Readiness};
use bitmig_shared::throttle::Throttle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use session::session;

/// How long in-flight batches get to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Deliveries one batch slot takes together at most: small `catchup`, `redrive` and `verify` batches the
/// broker has already pushed go in one read and one transaction (a busy table's catch-ups are many batches
/// of a few ids). The default prefetch leaves room for them.
pub const MERGE_MAX: usize = 16;
/// Ids `produce` batches taken together hold at most, for a sink that writes them better together
/// ([`Sink::merges_produce`]: PostgreSQL, where each `COPY` has a cost of its own; one `COPY` of 8 000 rows
/// costs the server about half of what eight of 1 000 do).
pub const PRODUCE_MERGE_IDS: u64 = 8_000;
/// Delays between reconnections to RabbitMQ.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(15);
/// In-process retries of a transient failure before the batch goes to a retry queue.
pub(crate) const QUICK_RETRIES: [Duration; 3] = [
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
    /// `--metrics-addr`: serve `/metrics`, `/healthz`, `/readyz` here.
    pub metrics_addr: Option<String>,
}

/// Counters of one run.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    /// Reads and writes of batches: fewer than `batches` when small ones were taken together.
    pub writes: AtomicU64,
    pub rows_written: AtomicU64,
    pub gone: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
}

pub(crate) struct Ctx {
    job: JobSpec,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    ledger: Ledger,
    /// Groups known to be planned (in `groups`); a message for any other group is not the producer's.
    planned: std::sync::Mutex<std::collections::HashSet<u64>>,
    stats: Stats,
    cancel: CancellationToken,
    /// The job's `paused` flag as last polled (the watch's task lives as long as `_pause`).
    pause: tokio::sync::watch::Receiver<bool>,
    _pause: PauseWatch,
    throttle: Throttle,
    metrics: Metrics,
}

/// The sink's table log: the ledger, bound once connected (no batch runs before).
#[derive(Default)]
struct LedgerTables(std::sync::OnceLock<Ledger>);

impl LedgerTables {
    fn ledger(&self) -> Result<&Ledger, SinkError> {
        self.0
            .get()
            .ok_or_else(|| SinkError::Transient("the ledger is not connected yet".into()))
    }
}

#[async_trait::async_trait]
impl sink::TableLog for LedgerTables {
    async fn record(&self, names: &[String]) -> Result<(), SinkError> {
        sink::TableLog::record(self.ledger()?, names).await
    }

    async fn members(&self) -> Result<Vec<String>, SinkError> {
        sink::TableLog::members(self.ledger()?).await
    }

    async fn record_created(&self, names: &[String]) -> Result<(), SinkError> {
        sink::TableLog::record_created(self.ledger()?, names).await
    }
}

/// Consume until `cancel` fires or, with `exit_when_idle`, the queue stays empty that long.
pub async fn run(
    job: JobSpec,
    opts: &Options,
    cancel: CancellationToken,
) -> anyhow::Result<Arc<StatsView>> {
    let conns = opts.concurrency + 1;
    let source = source::open(&job, conns).map_err(cli::source_error)?;
    let columns = source.describe().await.map_err(cli::source_error)?;
    // The sink records its tables in the ledger, which is connected after the job is checked against the
    // source and target (a wrong job says so before any Redis error).
    let tables = Arc::new(LedgerTables::default());
    let sink =
        sink::open_logged(&job, conns, tables.clone()).map_err(|e| BadInput(e.to_string()))?;
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
    tables
        .0
        .set(ledger.clone())
        .map_err(|_| anyhow::anyhow!("the table log was bound twice"))?;

    let metrics = Metrics::new(&job.name);
    let mut loads = vec![("source", &job.source.url)];
    if let TargetSpec::Sql(t) = &job.target {
        loads.push(("target", &t.url));
    }
    let throttle = Throttle::new(ledger.connection(), &job.name, &job.throttle, &loads)
        .map_err(|e| BadInput(format!("`throttle`: {e}")))?
        .with_metrics(metrics.clone());
    let pause_watch = Control::new(ledger.connection(), &job.name)
        .watch(WATCH_EVERY)
        .await
        .context("reading the job's control hash")?;
    let _server = match &opts.metrics_addr {
        Some(addr) => {
            let readiness = readiness(&job, &ledger, &opts.amqp_url)?;
            let server = metrics::serve(addr, metrics.clone(), readiness, cancel.clone())
                .await
                .map_err(BadInput)?;
            info!(addr = %server.addr, "serving /metrics, /healthz, /readyz");
            Some(server)
        }
        None => None,
    };

    let ctx = Arc::new(Ctx {
        job,
        source,
        sink,
        ledger,
        planned: Default::default(),
        stats: Stats::default(),
        cancel: cancel.clone(),
        pause: pause_watch.subscribe(),
        _pause: pause_watch,
        throttle,
        metrics,
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

    ctx.throttle.release().await;
    let view = Arc::new(StatsView::from(&ctx.stats));
    info!(
        job = %ctx.job.name,
        batches = view.batches,
        writes = view.writes,
        rows_written = view.rows_written,
        gone = view.gone,
        failed = view.failed,
        retried = view.retried,
        dead = view.dead,
        "consumer stopped"
    );
    Ok(view)
}

/// `/readyz`: the broker (a connection opened and closed), Redis (PING), the source and an SQL target
/// (`SELECT 1`).
fn readiness(job: &JobSpec, ledger: &Ledger, amqp_url: &str) -> anyhow::Result<Readiness> {
    let r = Readiness::default();
    let url = amqp_url.to_owned();
    r.register("broker", move || {
        let url = url.clone();
        async move {
            let conn = bitmig_shared::queue::connect(&url, "bitmig-consumer-readyz")
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.close(200, "ready".into()).await;
            Ok(())
        }
    });
    r.register_redis(ledger.connection());
    r.register_sql("source", &job.source.url)
        .map_err(|e| BadInput(format!("`source.url`: {e}")))?;
    if let TargetSpec::Sql(t) = &job.target {
        r.register_sql("target", &t.url)
            .map_err(|e| BadInput(format!("`target.url`: {e}")))?;
    }
    Ok(r)
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsView {
    pub batches: u64,
    pub writes: u64,
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
            writes: s.writes.load(Ordering::Relaxed),
            rows_written: s.rows_written.load(Ordering::Relaxed),
            gone: s.gone.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            dead: s.dead.load(Ordering::Relaxed),
        }
    }
}
