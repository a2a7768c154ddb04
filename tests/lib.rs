//! `bitmig-tests`: what every end-to-end and fault test needs, as a library both test binaries use
//! (`e2e/` as `crate::helpers` through `use bitmig_tests as helpers;`, `faults/` likewise): a [`TestJob`]
//! with its own database, job name, queues and ledger keys (a random suffix, so tests run in parallel), the
//! real binaries as subprocesses, and polling with deadlines.
//!
//! - `process`: find and run `bitmig-producer`, `bitmig-consumer`, `bitmig-compensator`; their exit codes,
//!   output and JSON.
//! - `sql`: the source table with every column type, generated rows, exact row comparison.
//! - `ledger`: the Redis keys of DESIGN.md §4, read the way an operator would.
//! - `queue`: the RabbitMQ queues of DESIGN.md §5: counts, purge, publish, fetch.
//! - `pg`: a PostgreSQL database of the test's own, dropped at the end.
//! - `metrics`: a program's `--metrics-addr` endpoint: a free address, `GET`, one sample of a scrape.
//! - `cluster`: the local Redis Cluster for a job whose ledger lives there, its bits read slot-aware.
//! - `es`: the Elasticsearch cluster of the tests (osmem-server or `BITMIG_TEST_ES_URL`); `es_double`: a
//!   scripted stand-in for the failures no real cluster produces on demand; `es_tasks_double`: a stand-in
//!   cluster with tasks (`_reindex`, `_delete_by_query`, `_tasks`) for `bitmig-rollover`.
//! - `follow`: the follower (`--follow`), its state in Redis, `caught_up`, and a writer of changes.

mod cluster;
pub mod es;
pub mod es_double;
pub mod es_tasks_double;
pub mod follow;
mod ledger;
pub mod metrics;
pub mod pg;
mod process;
mod queue;
mod sql;

pub use ledger::Bits;
pub use process::{wait_while_running, Bin, Finished, Proc};
pub use queue::{assert_messages_cover, header_text, Message, ERROR_HEADER};
pub use sql::{drop_database, gappy_ids, private_server, DatabaseOn, MysqlUser, TWO_POW_40};

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::atomic::AtomicU32,
    time::{Duration, Instant},
};

use mysql_async::prelude::Queryable;
use rand::Rng;
use serde_json::Value;

pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a one-shot command (producer, compensator) may take before the test gives up on it.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Where the services are: loopback defaults, overridable by environment variables.
#[derive(Clone, Debug)]
pub struct Services {
    /// Server URL without a database; each test appends its own.
    pub mysql_url: String,
    pub redis_url: String,
    pub amqp_url: String,
}

impl Services {
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            mysql_url: var("BITMIG_TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
            redis_url: var("BITMIG_REDIS_URL", DEFAULT_REDIS_URL),
            amqp_url: var("BITMIG_AMQP_URL", DEFAULT_AMQP_URL),
        }
    }

    /// The server URL with its path replaced by `/database` (query parameters kept).
    pub fn mysql_url_for(&self, database: &str) -> String {
        let mut url = url::Url::parse(&self.mysql_url)
            .unwrap_or_else(|e| panic!("BITMIG_TEST_MYSQL_URL {:?}: {e}", self.mysql_url));
        url.set_path(&format!("/{database}"));
        url.to_string()
    }
}

/// One test's migration: job `t_<suffix>`, database `bmt_<suffix>`, a temp dir with the job file and the
/// programs' logs, and connections to the three services. Dropping it deletes the job's queues, Redis keys
/// and database (best effort); the temp dir is kept when the test failed, so the logs can be read.
pub struct TestJob {
    /// The job name, `t_<suffix>`.
    pub name: String,
    /// The test's MariaDB database, `bmt_<suffix>`.
    pub database: String,
    /// `mysql://…/bmt_<suffix>`: the source and the target of the default job file.
    pub database_url: String,
    pub services: Services,
    pub group_size: u64,
    pub batch_size: u64,
    /// The temp dir holding job files and the programs' stdout/stderr.
    pub dir: PathBuf,
    /// The default job file: `src` → `dst` in the test's database.
    pub job_file: PathBuf,
    pub mysql: mysql_async::Pool,
    pub redis: redis::aio::MultiplexedConnection,
    pub amqp: lapin::Connection,
    bin_dir: PathBuf,
    spawned: AtomicU32,
    _cleanup: Cleanup,
}

impl TestJob {
    /// Creates the database and writes the default job file; no table exists yet.
    pub async fn new(group_size: u64, batch_size: u64) -> Self {
        let bin_dir = process::bin_dir();
        let services = Services::from_env();
        let suffix = random_suffix();
        let name = format!("t_{suffix}");
        let database = format!("bmt_{suffix}");
        let database_url = services.mysql_url_for(&database);
        let dir = std::env::temp_dir().join(format!("bitmig-e2e-{name}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));

        // The guard exists before anything it cleans up, so a failure below still cleans up.
        let cleanup = Cleanup {
            job: name.clone(),
            database: database.clone(),
            services: services.clone(),
            dir: dir.clone(),
        };

        let mut server = mysql_async::Conn::from_url(&services.mysql_url)
            .await
            .unwrap_or_else(|e| panic!("connect to MariaDB at {}: {e}", services.mysql_url));
        server
            .query_drop(format!(
                "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ))
            .await
            .unwrap_or_else(|e| panic!("create database {database}: {e}"));
        server.disconnect().await.ok();
        let mysql = mysql_async::Pool::from_url(&database_url)
            .unwrap_or_else(|e| panic!("bad MariaDB URL {database_url}: {e}"));

        let redis = redis::Client::open(services.redis_url.as_str())
            .unwrap_or_else(|e| panic!("bad Redis URL {}: {e}", services.redis_url))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to Redis at {}: {e}", services.redis_url));
        let amqp = lapin::Connection::connect(&services.amqp_url, Default::default())
            .await
            .unwrap_or_else(|e| panic!("connect to RabbitMQ at {}: {e}", services.amqp_url));

        let job = Self {
            job_file: dir.join("job.toml"),
            name,
            database,
            database_url,
            services,
            group_size,
            batch_size,
            dir,
            mysql,
            redis,
            amqp,
            bin_dir,
            spawned: AtomicU32::new(0),
            _cleanup: cleanup,
        };
        job.write_file("job.toml", &job.job_toml());
        job
    }

    /// The default job file: every column of `src` into `dst`, both in the test's database.
    pub fn job_toml(&self) -> String {
        format!(
            r#"name = "{name}"
group_size = {group_size}
batch_size = {batch_size}

[source]
url = "{url}"
table = "src"
key = "id"

[target]
kind = "sql"
url = "{url}"
table = "dst"
"#,
            name = self.name,
            group_size = self.group_size,
            batch_size = self.batch_size,
            url = self.database_url,
        )
    }

    /// Writes `text` to `file_name` in the test's temp dir and returns the path.
    pub fn write_file(&self, file_name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file_name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The job file as an argument.
    pub fn job_arg(&self) -> &str {
        path_str(&self.job_file)
    }

    /// Once the consumers are done: a compensator pass (`--min-age 0s`) finds nothing to re-drive, and then
    /// every group's meta says `complete` and the report says the job is complete: `source_ids` ids published,
    /// `gone_ids` of them gone, the rest in the target, nothing missing, extra or failed, every group
    /// complete. Returns the report.
    pub async fn assert_job_complete(&self, source_ids: u64, gone_ids: u64) -> Value {
        let pass = self.compensate(Some("0s")).await;
        assert_eq!(
            pass["republished_ids"].as_u64(),
            Some(0),
            "the consumers are done, yet the compensator found ids to re-drive: {pass}"
        );
        let firsts = self.groups().await;
        for &first in &firsts {
            let meta = self.meta(first).await;
            assert_eq!(
                meta.get("status").map(String::as_str),
                Some("complete"),
                "after a compensator pass that found nothing missing, group {first} is not complete: {meta:?}"
            );
        }
        let groups = firsts.len() as u64;
        let (code, report) = self.report().await;
        let expected = [
            ("groups", groups),
            ("groups_complete", groups),
            ("source_ids", source_ids),
            ("target_ids", source_ids - gone_ids),
            ("gone_ids", gone_ids),
            ("missing_ids", 0),
            ("extra_ids", 0),
            ("failed_ids", 0),
        ];
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(field, want)| report[*field].as_u64() != Some(*want))
            .map(|(field, want)| format!("{field} = {} (expected {want})", report[*field]))
            .collect();
        assert!(
            code == 0 && wrong.is_empty() && report["job"] == self.name.as_str(),
            "report (exit {code}) is not the complete job {}: {}\n{report:#}",
            self.name,
            wrong.join(", ")
        );
        report
    }

    /// The `FIRST` of the group holding `id`.
    pub fn group_of(&self, id: u64) -> u64 {
        id - id % self.group_size
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Polls `probe` every `interval` until it returns `Ok`, and returns that value. `Err` carries what the probe
/// saw; on timeout the test panics with the last of those.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if started.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last saw: {seen}")
            }
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

/// Runs `work` (at most 30 s) on a runtime of its own, in a thread of its own, and waits for it: for `Drop`,
/// which runs also while a panic unwinds, when the test's runtime may be unusable, and from inside that
/// runtime, which cannot block on itself. `what` names the work in what it reports.
pub fn clean_up(what: impl Into<String>, work: impl Future<Output = ()> + Send + 'static) {
    let what = what.into();
    let outcome = std::thread::spawn({
        let what = what.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a cleanup runtime");
            runtime.block_on(async {
                if tokio::time::timeout(Duration::from_secs(30), work)
                    .await
                    .is_err()
                {
                    eprintln!("cleanup of {what} timed out");
                }
            });
        }
    })
    .join();
    if outcome.is_err() {
        eprintln!("cleanup of {what} panicked");
    }
}

/// `url` with this user and password.
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    url.set_username(user).expect("a URL that takes a user");
    url.set_password(Some(password))
        .expect("a URL that takes a password");
    url.to_string()
}

/// Deletes what a test leaves behind (see [`clean_up`]).
struct Cleanup {
    job: String,
    database: String,
    services: Services,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (job, database, services) = (
            self.job.clone(),
            self.database.clone(),
            self.services.clone(),
        );
        clean_up(self.job.clone(), async move {
            queue::delete_job_queues(&services.amqp_url, &job).await;
            ledger::delete_job_keys(&services.redis_url, &job).await;
            sql::drop_database(&services.mysql_url, &database).await;
        });
        if std::thread::panicking() {
            eprintln!("job file and program logs kept in {}", self.dir.display());
        } else {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}
