//! The waits `[throttle]` imposes on workers (DESIGN.md §11): a worker calls [`Throttle::wait_for_budget`]
//! before each batch, with the batch's row count.
//!
//! - `max_rows_per_s`, shared by every consumer of the job: the Redis string `bitmig:{JOB}:rate` holds the
//!   time (µs, Redis' own clock) from which the next rows may go. A Lua script reserves `rows / rate` seconds
//!   after `max(now, that time)` and answers how long the caller waits for its turn (a virtual-scheduling
//!   leaky bucket, GCRA). So any number of consumers together keep the rate, a batch larger than one
//!   second's budget still goes (it waits its share), and nobody polls. The key expires a minute after the
//!   last reservation ends.
//! - `max_threads_running` on the source and the SQL target, `max_replica_lag` over `replicas`: [`LoadCheck`]s
//!   run at most once per [`CHECK_EVERY`] (whoever calls first after that runs them; the others wait for and
//!   use the answer), each bounded by [`CHECK_TIMEOUT`]. While one is over its limit the worker waits and
//!   re-checks every second.
//!
//! While work waits, `control.throttled` ([`crate::control`]) says why (written only when the reason
//! changes, at most once per check), and the seconds waited are counted per [`Reason`]
//! ([`Throttle::throttled_seconds`], and `bitmig_throttled_seconds_total` when metrics are attached).
//! A load check that fails (database unreachable) holds work too: not knowing the load is not permission.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::control::Control;
use crate::job::ThrottleSpec;
use crate::job::{DbUrl, Engine};
use crate::ledger::LedgerError;
use crate::redis_con::RedisCon;
use crate::telemetry::metrics::Metrics;

/// How often the load checks run at most, and how long a held worker sleeps between checks.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one load check may take; one that takes longer holds work as a failed check does.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why work waited; the `reason` label of `bitmig_throttled_seconds_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    RowsPerSecond,
    ThreadsRunning,
    ReplicaLag,
}

impl Reason {
    pub const ALL: [Reason; 3] = [
        Reason::RowsPerSecond,
        Reason::ThreadsRunning,
        Reason::ReplicaLag,
    ];

    /// The `[throttle]` field that holds: `max_rows_per_s`, `max_threads_running`, `max_replica_lag`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RowsPerSecond => "max_rows_per_s",
            Reason::ThreadsRunning => "max_threads_running",
            Reason::ReplicaLag => "max_replica_lag",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `bitmig:{JOB}:rate`.
pub fn rate_key(job: &str) -> String {
    format!("bitmig:{{{job}}}:rate")
}

// KEYS[1] the rate key; ARGV[1] the reservation's length in µs. Returns the µs to wait before starting.
// (replicate_commands: Redis 5 and 6 refuse a write after TIME without it; from 7 on it is the default.)
const RESERVE: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local start = math.max(now, tat)
local nxt = start + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 60000)
return start - now
";

/// One load limit, read from one database. `Ok(Some(why))` when over the limit.
#[async_trait::async_trait]
pub trait LoadCheck: Send + Sync {
    fn reason(&self) -> Reason;
    async fn over(&self) -> Result<Option<String>, String>;
}

enum Db {
    Mysql(mysql_async::Pool),
    Postgres(deadpool_postgres::Pool),
}

impl Db {
    fn open(url: &DbUrl) -> Result<Self, String> {
        Ok(match url.engine {
            Engine::Mysql => Db::Mysql(crate::sql::mysql_pool(url, 1)?),
            Engine::Postgres => Db::Postgres(crate::pg::pg_pool(url, 1)?),
        })
    }
}

/// `max_threads_running` on one database: MySQL/MariaDB `Threads_running` (which counts the check's own
/// query), PostgreSQL client backends in state `active` (the check's own included).
pub struct ThreadsRunning {
    what: String,
    db: Db,
    limit: u64,
}

impl ThreadsRunning {
    /// `what` names the database in the reason (`source`, `target`).
    pub fn new(what: &str, url: &DbUrl, limit: u64) -> Result<Self, String> {
        Ok(Self {
            what: what.to_owned(),
            db: Db::open(url).map_err(|e| format!("{what}: {e}"))?,
            limit,
        })
    }

    /// The current count.
    pub async fn read(&self) -> Result<u64, String> {
        match &self.db {
            Db::Mysql(pool) => {
                let mut c = pool.get_conn().await.map_err(|e| e.to_string())?;
                let row: Option<(String, String)> = c
                    .query_first("SHOW GLOBAL STATUS LIKE 'Threads_running'")
                    .await
                    .map_err(|e| e.to_string())?;
                let (_, v) = row.ok_or("SHOW GLOBAL STATUS has no Threads_running")?;
                v.parse()
                    .map_err(|_| format!("Threads_running is {v:?}, not a number"))
            }
            Db::Postgres(pool) => {
                let c = pool.get().await.map_err(|e| e.to_string())?;
                let row = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE state = 'active' AND backend_type = 'client backend'",
                        &[],
                    )
                    .await
                    .map_err(|e| crate::pg::pg_error_text(&e))?;
                let n: i64 = row.get(0);
                Ok(n.max(0) as u64)
            }
        }
    }
}

#[async_trait::async_trait]
impl LoadCheck for ThreadsRunning {
    fn reason(&self) -> Reason {
        Reason::ThreadsRunning
    }

    async fn over(&self) -> Result<Option<String>, String> {
        let n = self
            .read()
            .await
            .map_err(|e| format!("{}: {e}", self.what))?;
        Ok((n > self.limit).then(|| {
            format!(
                "max_threads_running: {} runs {n} threads, more than {}",
                self.what, self.limit
            )
        }))
    }
}

/// `max_replica_lag` on one URL of `replicas`: a MySQL/MariaDB replica's `Seconds_Behind_Master`
/// (`Seconds_Behind_Source` on MySQL ≥ 8.0.22; NULL — replication stopped — counts as over the limit), or
/// the largest `replay_lag` in a PostgreSQL primary's `pg_stat_replication`.
pub struct ReplicaLag {
    shown: String,
    db: Db,
    limit: Duration,
}

impl ReplicaLag {
    pub fn new(url: &DbUrl, limit: Duration) -> Result<Self, String> {
        Ok(Self {
            shown: url.redacted(),
            db: Db::open(url).map_err(|e| format!("replica {}: {e}", url.redacted()))?,
            limit,
        })
    }

    /// The lag now; `None` when a MySQL replica's replication is not running.
    pub async fn read(&self) -> Result<Option<Duration>, String> {
        match &self.db {
            Db::Mysql(pool) => {
                let mut c = pool.get_conn().await.map_err(|e| e.to_string())?;
                let row: Option<mysql_async::Row> = match c.query_first("SHOW REPLICA STATUS").await
                {
                    Ok(r) => r,
                    // MariaDB before 10.5 and MySQL before 8.0.22 know only the old name.
                    Err(mysql_async::Error::Server(_)) => c
                        .query_first("SHOW SLAVE STATUS")
                        .await
                        .map_err(|e| e.to_string())?,
                    Err(e) => return Err(e.to_string()),
                };
                let row = row.ok_or("not a replica (SHOW REPLICA STATUS is empty)")?;
                let lag = ["Seconds_Behind_Master", "Seconds_Behind_Source"]
                    .iter()
                    .find_map(|col| row.get_opt::<Option<u64>, _>(*col))
                    .ok_or("SHOW REPLICA STATUS has no Seconds_Behind_Master")?
                    .map_err(|e| format!("Seconds_Behind_Master: {e}"))?;
                Ok(lag.map(Duration::from_secs))
            }
            Db::Postgres(pool) => {
                let c = pool.get().await.map_err(|e| e.to_string())?;
                let row = c
                    .query_one(
                        "SELECT COALESCE(EXTRACT(EPOCH FROM max(replay_lag))::float8, 0) \
                         FROM pg_stat_replication",
                        &[],
                    )
                    .await
                    .map_err(|e| crate::pg::pg_error_text(&e))?;
                let s: f64 = row.get(0);
                Ok(Some(Duration::from_secs_f64(s.max(0.0))))
            }
        }
    }
}

#[async_trait::async_trait]
impl LoadCheck for ReplicaLag {
    fn reason(&self) -> Reason {
        Reason::ReplicaLag
    }

    async fn over(&self) -> Result<Option<String>, String> {
        let lag = self
            .read()
            .await
            .map_err(|e| format!("replica {}: {e}", self.shown))?;
        Ok(match lag {
            None => Some(format!(
                "max_replica_lag: replica {} is not replicating (lag unknown)",
                self.shown
            )),
            Some(lag) if lag > self.limit => Some(format!(
                "max_replica_lag: replica {} lags {:.1}s, more than {:.1}s",
                self.shown,
                lag.as_secs_f64(),
                self.limit.as_secs_f64()
            )),
            Some(_) => None,
        })
    }
}

#[derive(Default)]
struct CheckState {
    checked_at: Option<Instant>,
    /// The first check over its limit at the last check.
    holding: Option<(Reason, String)>,
    /// What `control.throttled` was last set to by this process.
    written: Option<String>,
    /// When the rate budget last made someone wait, and why (for `control.throttled`).
    rate_waited: Option<Instant>,
}

/// The job's throttle; share it (`Arc`) between a program's workers.
pub struct Throttle {
    con: RedisCon,
    rate_key: String,
    max_rows_per_s: Option<u64>,
    checks: Vec<Box<dyn LoadCheck>>,
    control: Control,
    state: tokio::sync::Mutex<CheckState>,
    waited_us: [AtomicU64; 3],
    metrics: Option<Metrics>,
}

impl Throttle {
    /// A throttle for `job` from its `[throttle]` section; `loads` are the databases whose running threads
    /// `max_threads_running` limits, named (`[("source", &url), ("target", &url)]`; leave out a target that
    /// is not SQL). Nothing is connected to yet.
    pub fn new(
        con: RedisCon,
        job: &str,
        spec: &ThrottleSpec,
        loads: &[(&str, &DbUrl)],
    ) -> Result<Self, String> {
        let mut checks: Vec<Box<dyn LoadCheck>> = Vec::new();
        if let Some(limit) = spec.max_threads_running {
            for (what, url) in loads {
                checks.push(Box::new(ThreadsRunning::new(what, url, limit)?));
            }
        }
        if let Some(limit) = spec.max_replica_lag {
            for url in &spec.replicas {
                checks.push(Box::new(ReplicaLag::new(url, limit)?));
            }
        }
        Ok(Self::with_checks(con, job, spec.max_rows_per_s, checks))
    }

    /// A throttle with the given checks (tests, and programs with checks of their own).
    pub fn with_checks(
        con: RedisCon,
        job: &str,
        max_rows_per_s: Option<u64>,
        checks: Vec<Box<dyn LoadCheck>>,
    ) -> Self {
        Self {
            control: Control::new(con.clone(), job),
            con,
            rate_key: rate_key(job),
            max_rows_per_s,
            checks,
            state: tokio::sync::Mutex::new(CheckState::default()),
            waited_us: Default::default(),
            metrics: None,
        }
    }

    /// Count throttled seconds into `bitmig_throttled_seconds_total` too.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// On the way out: take back the reason this process wrote to `control.throttled`, if the field still
    /// says it (another process still held writes it again at its next check).
    pub async fn release(&self) {
        let Some(why) = self.state.lock().await.written.take() else {
            return;
        };
        if let Err(e) = self.control.clear_throttled_if(&why).await {
            tracing::warn!("cannot clear the throttle in control: {e}");
        }
    }

    /// Whether there is anything to wait for.
    pub fn is_noop(&self) -> bool {
        self.max_rows_per_s.is_none() && self.checks.is_empty()
    }

    /// Seconds waited so far for `reason`, by every caller of this throttle.
    pub fn throttled_seconds(&self, reason: Reason) -> f64 {
        self.waited_us[reason.index()].load(Ordering::Relaxed) as f64 / 1e6
    }

    fn count(&self, reason: Reason, waited: Duration) {
        self.waited_us[reason.index()].fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.throttled(reason.as_str(), waited.as_secs_f64());
        }
    }

    /// Wait until `rows` more rows may be written: first while a load check is over its limit, then for
    /// this batch's turn in the shared rate budget. Errors are Redis errors of the budget (transient ones
    /// are worth retrying as any ledger error); a failing load check holds work instead of failing.
    pub async fn wait_for_budget(&self, rows: u64) -> Result<(), LedgerError> {
        if self.is_noop() {
            return Ok(());
        }
        loop {
            let holding = self.check_loads().await;
            let Some(reason) = holding else { break };
            tokio::time::sleep(CHECK_EVERY).await;
            self.count(reason, CHECK_EVERY);
        }
        let (Some(rate), true) = (self.max_rows_per_s, rows > 0) else {
            return Ok(());
        };
        let cost_us = rows.saturating_mul(1_000_000) / rate.max(1);
        let mut con = self.con.clone();
        let wait_us: i64 = redis::Script::new(RESERVE)
            .key(&self.rate_key)
            .arg(cost_us)
            .invoke_async(&mut con)
            .await?;
        if wait_us > 0 {
            let wait = Duration::from_micros(wait_us as u64);
            self.state.lock().await.rate_waited = Some(Instant::now());
            tokio::time::sleep(wait).await;
            self.count(Reason::RowsPerSecond, wait);
        }
        Ok(())
    }

    /// Run the load checks when the last run is older than [`CHECK_EVERY`]; the reason holding work, if any.
    async fn check_loads(&self) -> Option<Reason> {
        let mut st = self.state.lock().await;
        let due = st.checked_at.is_none_or(|t| t.elapsed() >= CHECK_EVERY);
        if !due {
            return st.holding.as_ref().map(|(r, _)| *r);
        }
        st.checked_at = Some(Instant::now());
        let mut holding = None;
        for check in &self.checks {
            let answer = tokio::time::timeout(CHECK_TIMEOUT, check.over())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
            match answer {
                Ok(None) => {}
                Ok(Some(why)) => {
                    holding = Some((check.reason(), why));
                    break;
                }
                Err(e) => {
                    holding = Some((
                        check.reason(),
                        format!("{}: cannot check: {e}", check.reason().as_str()),
                    ));
                    break;
                }
            }
        }
        st.holding = holding;
        // What control.throttled should say: a load limit, else the rate if it made anyone wait lately.
        let want = match &st.holding {
            Some((_, why)) => Some(why.clone()),
            None => st
                .rate_waited
                .filter(|t| t.elapsed() < 2 * CHECK_EVERY)
                .zip(self.max_rows_per_s)
                .map(|(_, r)| format!("max_rows_per_s: {r} rows per second")),
        };
        // Written again at every check while held, so that a program taking its reason back on its way
        // out ([`Throttle::release`]) leaves the field wrong for one check at most.
        if want != st.written || want.is_some() {
            if want != st.written {
                match &want {
                    Some(why) => tracing::info!("throttled: {why}"),
                    None => tracing::info!("throttle released"),
                }
            }
            match self.control.set_throttled(want.as_deref()).await {
                Ok(()) => st.written = want,
                Err(e) => tracing::warn!("cannot record the throttle in control: {e}"),
            }
        }
        st.holding.as_ref().map(|(r, _)| *r)
    }
}
