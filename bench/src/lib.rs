//! `bitmig-bench`: bitmig's rows/s side by side with the tools a user would pick instead, on the same data
//! in the same run, phase by phase (README "Benchmark"). `scripts/bench` starts the services and builds the
//! release binaries, then execs this program.
//!
//! - `cli`: the command line (`--rows`, `--phases`, `--name` for every name the run makes, …);
//! - `sys`: load average and CPU seconds per phase from /proc, programs run under GNU time (peak RSS, CPU);
//! - `mariadb`, `postgres`: the generated `orders` data, fresh tables, the flush before each method, and the
//!   fingerprints (`COUNT` + `CHECKSUM TABLE`, or an engine-independent row hash) that prove a copy;
//! - `bitmig`: job files, clearing a job, a copy timed until `report` says complete, compensator commands;
//! - `ledger`: synthetic ledgers of complete groups written straight into Redis;
//! - `phases/`: one module per phase, each a function returning typed figures after it checked every
//!   target equals the source — no figure is printed otherwise;
//! - `results`: the one table (with the issues' targets, PASS/MISS) and the one JSON writer.

mod bitmig;
mod cli;
mod ledger;
mod mariadb;
mod phases;
mod postgres;
mod results;
mod sys;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub use cli::{Options, Phase};

use crate::mariadb::{Db, Fingerprint};

/// What every phase shares: the options, where logs and job files go, the source and what earlier phases of
/// this run left that later ones reuse (a finished job is verified rather than copied again).
pub struct Bench {
    pub opts: Options,
    pub tmp: PathBuf,
    pub logs: PathBuf,
    /// The MariaDB database `bitmig_NAME` holding `orders`, and its fingerprint.
    pub db: Option<Db>,
    pub source: Option<Fingerprint>,
    /// The job of the copy phase (MariaDB `orders` → `t_bitmig`), complete.
    pub mariadb_job: Option<bitmig::Job>,
    /// The job of the pg phase (MariaDB `orders` → PostgreSQL `t_bitmig`), complete.
    pub pg_job: Option<bitmig::Job>,
    /// Whether the PostgreSQL database `bitmig_NAME` was made in this run.
    pub pg_ready: bool,
}

impl Bench {
    pub fn db(&self) -> Result<&Db> {
        self.db
            .as_ref()
            .context("no source database (internal: generated first)")
    }

    pub fn db_name(&self) -> String {
        format!("bitmig_{}", self.opts.name)
    }

    /// A job name of this run: `NAME` or `NAME_SUFFIX`.
    pub fn job_name(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            self.opts.name.clone()
        } else {
            format!("{}_{suffix}", self.opts.name)
        }
    }

    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open("redis://127.0.0.1:6379/")?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    pub fn rows(&self) -> u64 {
        self.opts.rows
    }
}

/// Runs the selected phases in their order, then prints the table and writes the JSON.
pub async fn run(mut opts: Options) -> Result<()> {
    opts.phases.sort();
    opts.phases.dedup();
    // The programs' logs are read by the benchmark: plain text, whatever the caller's environment says.
    std::env::remove_var("BITMIG_LOG_FORMAT");
    std::env::set_var("BITMIG_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    std::env::set_var("BITMIG_REDIS_URL", "redis://127.0.0.1:6379/");
    preflight(&opts).await?;

    let logs = opts.logs.clone();
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = std::env::temp_dir().join(format!("bitmig-bench.{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut b = Bench {
        opts,
        tmp: tmp.clone(),
        logs,
        db: None,
        source: None,
        mariadb_job: None,
        pg_job: None,
        pg_ready: false,
    };
    let result = run_phases(&mut b).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let finished = match result {
        Ok(mut results) => results.finish(&b),
        Err(e) => Err(e),
    };
    if b.opts.keep {
        println!(
            "kept: databases {} and the jobs {}*",
            b.db_name(),
            b.opts.name
        );
    } else if let Err(e) = clean_up(&b).await {
        eprintln!("bench: cleaning up after the run: {e:#}");
    }
    finished
}

/// Drops what the run made on the shared services: the MariaDB and PostgreSQL databases `bitmig_NAME` and
/// every job `NAME` or `NAME_…` (Redis keys and queues).
async fn clean_up(b: &Bench) -> Result<()> {
    let name = b.db_name();
    if let Some(db) = &b.db {
        db.exec(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .await?;
    }
    if b.pg_ready {
        postgres::Pg::drop_database(&name).await?;
    }
    let mut r = b.redis().await?;
    let mut jobs = std::collections::BTreeSet::new();
    let pattern = format!("bitmig:{{{}*", b.opts.name);
    let mut it: redis::AsyncIter<String> =
        redis::AsyncCommands::scan_match(&mut r, &pattern).await?;
    while let Some(key) = it.next_item().await {
        let key = key?;
        let job = key["bitmig:{".len()..]
            .split(['}', ':'])
            .next()
            .unwrap_or_default()
            .to_owned();
        if job == b.opts.name || job.starts_with(&format!("{}_", b.opts.name)) {
            jobs.insert(job);
        }
    }
    drop(it);
    for job in &jobs {
        b.clear_job(job).await?;
    }
    println!("dropped database {name} and {} jobs", jobs.len());
    Ok(())
}

async fn run_phases(b: &mut Bench) -> Result<results::Results> {
    let mut r = results::Results::new(b).await?;
    if b.opts.phases.iter().any(|p| p.needs_source()) {
        phases::generate_source(b).await?;
        r.source = b.source.clone();
    }
    for phase in b.opts.phases.clone() {
        println!("\n==> phase {}", phase.name());
        match phase {
            Phase::Copy => r.copy = Some(phases::copy::run(b).await?),
            Phase::Pg => r.pg = Some(phases::pg::run(b).await?),
            Phase::PgMariadb => r.pg_mariadb = Some(phases::pg_mariadb::run(b).await?),
            Phase::Verify => r.verify = Some(phases::verify::run(b).await?),
            Phase::Archive => r.archive = Some(phases::archive::run(b).await?),
            Phase::Follow => r.follow = Some(phases::follow::run(b).await?),
            Phase::Ledger => r.ledger = Some(phases::ledger::run_small(b).await?),
            Phase::LedgerScale => r.ledger_scale = Some(phases::ledger::run_scale(b).await?),
        }
    }
    Ok(r)
}

/// Everything a selected phase needs, checked before anything is timed.
async fn preflight(opts: &Options) -> Result<()> {
    let mut missing = Vec::new();
    for program in ["bitmig-producer", "bitmig-consumer", "bitmig-compensator"] {
        if !opts.bin.join(program).is_file() {
            missing.push(format!(
                "{} (cargo build --release --bins)",
                opts.bin.join(program).display()
            ));
        }
    }
    let mut tools = vec!["/usr/bin/time", "timeout", "rabbitmqctl"];
    for p in &opts.phases {
        match p {
            Phase::Copy => tools.push("pt-archiver"),
            Phase::Archive => tools.push("pt-archiver"),
            Phase::Pg => tools.push("pgloader"),
            Phase::PgMariadb => tools.extend(["psql", "mariadb"]),
            Phase::Verify => tools.push("pt-table-checksum"),
            _ => {}
        }
    }
    for t in tools {
        let found = if t.starts_with('/') {
            std::path::Path::new(t).is_file()
        } else {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !found {
            missing.push(format!(
                "{t} (scripts/services --with-pt-archiver --with-pgloader installs the baselines; GNU time is `time`)"
            ));
        }
    }
    if opts.phases.contains(&Phase::Archive) && missing.is_empty() {
        let st = std::process::Command::new(opts.bin.join("bitmig-compensator"))
            .args(["purge", "--help"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        if !st.success() {
            missing.push("`bitmig-compensator purge` (issue 14) for the archive phase".into());
        }
    }
    if !missing.is_empty() {
        bail!("missing before any phase runs:\n  {}", missing.join("\n  "));
    }
    Ok(())
}
