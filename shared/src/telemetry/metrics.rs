//! Prometheus metrics and the health endpoint of every long-running program (DESIGN.md §11).
//!
//! [`Metrics`] is one registry per process whose every metric carries the label `job` and a name starting
//! `bitmig_` (see [`Metrics::new`] for the list). Programs count into it through its methods; it is cheap to
//! clone. [`serve`] answers on `--metrics-addr HOST:PORT` (`BITMIG_METRICS_ADDR`, [`MetricsArgs`]):
//!
//! - `GET /metrics`: the registry in the Prometheus text format (`text/plain; version=0.0.4`);
//! - `GET /healthz`: `200 ok` while the process serves at all (liveness);
//! - `GET /readyz`: runs every check registered in [`Readiness`] (broker, Redis, databases) concurrently, each
//!   bounded by [`READY_TIMEOUT`]; `200` when all pass, else `503`; the body has one line per check
//!   (`ok redis` / `fail redis: …`).
//!
//! The server is hyper's HTTP/1 server (already in the tree through reqwest; three fixed routes need no router).

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// How long one readiness check may take before it counts as failed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `--metrics-addr`: flatten into a binary's arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve /metrics, /healthz and /readyz on HOST:PORT (e.g. 0.0.0.0:9100). Off when not given.
    #[arg(long, env = "BITMIG_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

type Labels = [(&'static str, &'static str); 1];

/// A batch's end (`outcome` label of `bitmig_batches_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written and recorded in the ledger; acked.
    Done,
    /// Sent to a retry queue.
    Retried,
    /// Sent to the dead queue.
    DeadLettered,
}

impl BatchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Done => "done",
            BatchOutcome::Retried => "retried",
            BatchOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// The stages of a batch (`stage` label of `bitmig_batch_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    SourceRead,
    TargetWrite,
    Ledger,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::SourceRead => "source_read",
            Stage::TargetWrite => "target_write",
            Stage::Ledger => "ledger",
        }
    }
}

struct Inner {
    registry: Registry,
    rows_written: Counter,
    rows_gone: Counter,
    rows_failed: Counter,
    batches: Family<Labels, Counter>,
    batch_seconds: Family<Labels, Histogram>,
    ids_published: Counter,
    groups_produced: Counter,
    missing_ids: Gauge,
    follow_lag_seconds: Gauge<f64, AtomicU64>,
    follow_events: Counter,
    throttled_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    paused: Gauge,
}

/// The process's metrics, all labelled `job="JOB"`.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Metrics {
    /// A registry with, for `job`:
    ///
    /// | name | type | labels | meaning |
    /// | --- | --- | --- | --- |
    /// | `bitmig_rows_written_total` | counter | | rows committed in the target |
    /// | `bitmig_rows_gone_total` | counter | | ids published but no longer in the source |
    /// | `bitmig_rows_failed_total` | counter | | rows the target rejected for good (`failed`) |
    /// | `bitmig_batches_total` | counter | `outcome` = `done`/`retried`/`dead_lettered` | batches by how they ended |
    /// | `bitmig_batch_seconds` | histogram | `stage` = `source_read`/`target_write`/`ledger` | time per batch and stage |
    /// | `bitmig_ids_published_total` | counter | | ids the producer (or follower) published |
    /// | `bitmig_groups_produced_total` | counter | | groups marked `produced` |
    /// | `bitmig_missing_ids` | gauge | | ids missing after the last compensator pass |
    /// | `bitmig_follow_lag_seconds` | gauge | | how far the follower is behind the source |
    /// | `bitmig_follow_events_total` | counter | | changes of the job's table the follower read |
    /// | `bitmig_throttled_seconds_total` | counter | `reason` = a `[throttle]` field | seconds work waited |
    /// | `bitmig_paused` | gauge | | 1 while the job is paused |
    pub fn new(job: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "bitmig",
            [(Cow::Borrowed("job"), Cow::Owned(job.to_owned()))].into_iter(),
        );
        let rows_written = Counter::default();
        let rows_gone = Counter::default();
        let rows_failed = Counter::default();
        let batches = Family::<Labels, Counter>::default();
        let batch_seconds = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 16))) as fn() -> Histogram,
        );
        let ids_published = Counter::default();
        let groups_produced = Counter::default();
        let missing_ids = Gauge::default();
        let follow_lag_seconds = Gauge::<f64, AtomicU64>::default();
        let follow_events = Counter::default();
        let throttled_seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
        let paused = Gauge::default();
        registry.register(
            "rows_written",
            "Rows committed in the target",
            rows_written.clone(),
        );
        registry.register(
            "rows_gone",
            "Ids published that no longer existed in the source",
            rows_gone.clone(),
        );
        registry.register(
            "rows_failed",
            "Rows the target rejected for good",
            rows_failed.clone(),
        );
        registry.register(
            "batches",
            "Batches by outcome (done, retried, dead_lettered)",
            batches.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time a batch spent per stage (source_read, target_write, ledger)",
            batch_seconds.clone(),
        );
        registry.register(
            "ids_published",
            "Ids published to the work queue",
            ids_published.clone(),
        );
        registry.register(
            "groups_produced",
            "Groups marked produced",
            groups_produced.clone(),
        );
        registry.register(
            "missing_ids",
            "Ids missing from the target after the last compensator pass",
            missing_ids.clone(),
        );
        registry.register(
            "follow_lag_seconds",
            "How far the follower is behind the source",
            follow_lag_seconds.clone(),
        );
        registry.register(
            "follow_events",
            "Changes of the job's table the follower read",
            follow_events.clone(),
        );
        registry.register(
            "throttled_seconds",
            "Seconds work waited for a throttle, by reason",
            throttled_seconds.clone(),
        );
        registry.register("paused", "1 while the job is paused", paused.clone());
        // Every label value exists from the start (at zero), so rates and alerts see a series at once.
        for reason in ["max_rows_per_s", "max_threads_running", "max_replica_lag"] {
            let _ = throttled_seconds.get_or_create(&[("reason", reason)]);
        }
        for outcome in [
            BatchOutcome::Done,
            BatchOutcome::Retried,
            BatchOutcome::DeadLettered,
        ] {
            let _ = batches.get_or_create(&[("outcome", outcome.as_str())]);
        }
        for stage in [Stage::SourceRead, Stage::TargetWrite, Stage::Ledger] {
            let _ = batch_seconds.get_or_create(&[("stage", stage.as_str())]);
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                rows_written,
                rows_gone,
                rows_failed,
                batches,
                batch_seconds,
                ids_published,
                groups_produced,
                missing_ids,
                follow_lag_seconds,
                follow_events,
                throttled_seconds,
                paused,
            }),
        }
    }

    /// A batch's rows: written, gone, failed.
    pub fn rows(&self, written: u64, gone: u64, failed: u64) {
        self.inner.rows_written.inc_by(written);
        self.inner.rows_gone.inc_by(gone);
        self.inner.rows_failed.inc_by(failed);
    }

    pub fn batch(&self, outcome: BatchOutcome) {
        self.inner
            .batches
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn stage(&self, stage: Stage, took: Duration) {
        self.inner
            .batch_seconds
            .get_or_create(&[("stage", stage.as_str())])
            .observe(took.as_secs_f64());
    }

    pub fn ids_published(&self, n: u64) {
        self.inner.ids_published.inc_by(n);
    }

    pub fn group_produced(&self) {
        self.inner.groups_produced.inc();
    }

    pub fn set_missing_ids(&self, n: u64) {
        self.inner.missing_ids.set(n.min(i64::MAX as u64) as i64);
    }

    pub fn set_follow_lag(&self, lag: Duration) {
        self.inner.follow_lag_seconds.set(lag.as_secs_f64());
    }

    /// One change read by the follower (a transaction's changes to the job's table, or one queue event).
    pub fn follow_event(&self) {
        self.inner.follow_events.inc();
    }

    /// `reason` is the `[throttle]` field that held (`throttle::Reason::as_str`).
    pub fn throttled(&self, reason: &'static str, seconds: f64) {
        self.inner
            .throttled_seconds
            .get_or_create(&[("reason", reason)])
            .inc_by(seconds);
    }

    pub fn set_paused(&self, paused: bool) {
        self.inner.paused.set(i64::from(paused));
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The checks behind `/readyz`. Cheap to clone; checks may be registered after the server started.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(String, CheckFn)>>>,
}

impl Readiness {
    /// Add a check named `name` (`redis`, `broker`, `source`, `target`): `Ok` when reachable.
    pub fn register<F, Fut>(&self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let f: CheckFn = Arc::new(move || Box::pin(check()));
        // A poisoned lock means a panic while pushing; the list itself is still whole.
        let mut checks = self.checks.write().unwrap_or_else(|p| p.into_inner());
        checks.push((name.to_owned(), f));
    }

    /// `redis`: PING over the program's connection.
    pub fn register_redis(&self, con: crate::redis_con::RedisCon) {
        self.register("redis", move || {
            let mut con = con.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        });
    }

    /// `name` (`source`, `target`): `SELECT 1` on a MySQL/MariaDB or PostgreSQL database, over a pool of one
    /// connection kept for the checks. `Err` when the URL cannot make a pool.
    pub fn register_sql(&self, name: &str, url: &crate::job::DbUrl) -> Result<(), String> {
        use mysql_async::prelude::Queryable;
        match url.engine {
            crate::job::Engine::Mysql => {
                let pool = crate::sql::mysql_pool(url, 1)?;
                self.register(name, move || {
                    let pool = pool.clone();
                    async move {
                        let mut c = pool.get_conn().await.map_err(|e| e.to_string())?;
                        c.query_drop("SELECT 1").await.map_err(|e| e.to_string())
                    }
                });
            }
            crate::job::Engine::Postgres => {
                let pool = crate::pg::pg_pool(url, 1)?;
                self.register(name, move || {
                    let pool = pool.clone();
                    async move {
                        let c = pool.get().await.map_err(|e| e.to_string())?;
                        c.simple_query("SELECT 1")
                            .await
                            .map(|_| ())
                            .map_err(|e| crate::pg::pg_error_text(&e))
                    }
                });
            }
        }
        Ok(())
    }

    /// Run every check concurrently: whether all passed, and one line per check.
    pub async fn check(&self) -> (bool, String) {
        let checks: Vec<(String, CheckFn)> = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let results = futures::future::join_all(checks.iter().map(|(name, f)| {
            let fut = f();
            async move {
                let r = match tokio::time::timeout(READY_TIMEOUT, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
                };
                (name.as_str(), r)
            }
        }))
        .await;
        let mut ok = true;
        let mut body = String::new();
        for (name, r) in results {
            match r {
                Ok(()) => body.push_str(&format!("ok {name}\n")),
                Err(e) => {
                    ok = false;
                    body.push_str(&format!("fail {name}: {e}\n"));
                }
            }
        }
        (ok, body)
    }
}

/// The running endpoint; it stops when the token given to [`serve`] is cancelled.
pub struct MetricsServer {
    /// The bound address (the port chosen when `:0` was asked for).
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Bind `addr` (`HOST:PORT`) and serve `/metrics`, `/healthz`, `/readyz` until `stop` is cancelled.
/// `Err` (a bad or busy address) names the address; a program should exit 2 on it.
pub async fn serve(
    addr: &str,
    metrics: Metrics,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<MetricsServer, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-addr {addr}: cannot listen ({e})"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("metrics endpoint: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (metrics, readiness) = (metrics.clone(), readiness.clone());
            let service = hyper::service::service_fn(move |req| {
                let (metrics, readiness) = (metrics.clone(), readiness.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(req, &metrics, &readiness).await) }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!("metrics endpoint: connection: {e}");
                }
            });
        }
    });
    Ok(MetricsServer { addr: bound, task })
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        r
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let (ok, body) = readiness.check().await;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_job_label() {
        let m = Metrics::new("orders");
        m.rows(5, 1, 2);
        m.batch(BatchOutcome::Done);
        m.stage(Stage::TargetWrite, Duration::from_millis(3));
        m.throttled("max_rows_per_s", 1.5);
        m.set_paused(true);
        let text = m.encode();
        for line in [
            "bitmig_rows_written_total{job=\"orders\"} 5",
            "bitmig_rows_gone_total{job=\"orders\"} 1",
            "bitmig_rows_failed_total{job=\"orders\"} 2",
            "bitmig_paused{job=\"orders\"} 1",
            "bitmig_missing_ids{job=\"orders\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            text.contains("bitmig_batches_total{job=\"orders\",outcome=\"done\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bitmig_batch_seconds_count{job=\"orders\",stage=\"target_write\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "bitmig_throttled_seconds_total{job=\"orders\",reason=\"max_rows_per_s\"} 1.5"
            ),
            "{text}"
        );
    }
}
