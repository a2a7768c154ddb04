//! `bitmig-compensator`: parses the command line and dispatches each subcommand to its module of
//! `bitmig_compensator` (`run` → `redrive`, `verify` → `verify`, `purge` → `purge`, `indexes` → `indexes`, `report` → `report`,
//! `pause`/`resume` → `control`); exit codes per DESIGN.md §3.

use std::time::Duration;

use bitmig_shared::cli::{self, exit, Common};
use clap::{Parser, Subcommand};

/// Re-drive missing ids and report on a job's ledger.
#[derive(Debug, Parser)]
#[command(name = "bitmig-compensator", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-publish the ids each produced group is missing; mark groups with nothing missing complete.
    Run {
        #[command(flatten)]
        common: Common,
        /// Leave groups driven more recently than this alone (their batches may be in flight).
        #[arg(long, default_value = "1h", value_parser = cli::parse_duration)]
        min_age: Duration,
        /// Run a pass every DUR until SIGTERM/SIGINT, instead of once.
        #[arg(long, value_parser = cli::parse_duration)]
        every: Option<Duration>,
        /// Also re-drive ids recorded in `failed`.
        #[arg(long)]
        retry_failed: bool,
        /// Print each pass's summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also verify content (DESIGN.md §9) after each pass: the complete groups not found equal since
        /// they were last driven; differing ids are re-driven.
        #[arg(long)]
        verify: bool,
        /// With `--verify`: re-check differing ids after this long before counting them.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration, requires = "verify")]
        recheck_after: Duration,
        /// With `--every`: serve /metrics (`bitmig_missing_ids`), /healthz, /readyz.
        #[command(flatten)]
        metrics: bitmig_shared::telemetry::metrics::MetricsArgs,
    },
    /// Compare every target row with its source row, group by group: exit 0 when every group is equal,
    /// 3 when not (DESIGN.md §9).
    Verify {
        #[command(flatten)]
        common: Common,
        /// Only the groups whose first id is in FIRST..LAST (inclusive).
        #[arg(long, value_parser = parse_groups, value_name = "FIRST..LAST")]
        groups: Option<(u64, u64)>,
        /// Read at most this many rows per second (both sides together).
        #[arg(long, value_name = "ROWS_PER_S")]
        rate: Option<u64>,
        /// Re-check differing ids after this long before counting them (the source is live).
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        recheck_after: Duration,
        /// Re-publish the differing ids as `verify` batches, which consumers repair.
        #[arg(long)]
        redrive: bool,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete from the source the rows proven equal in the target (DESIGN.md §10): exit 0 when every
    /// candidate was deleted, 3 when some were kept (differing, re-driven) or the run was interrupted.
    Purge {
        #[command(flatten)]
        common: Common,
        /// Delete at most this many rows per second (instead of `[throttle] max_rows_per_s`).
        #[arg(long, value_name = "ROWS_PER_S")]
        rate: Option<u64>,
        /// Rows per source transaction.
        #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch: u64,
        /// Compare and report what would be deleted; delete nothing, set no bit, re-drive nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the row holding the table's largest key (MySQL may then reuse its id after a restart).
        #[arg(long)]
        purge_max_key: bool,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Once the copy is complete, build the source table's secondary indexes on the target tables bitmig
    /// created (`[target] create = true`): exit 0 when every index that can be made is there, 3 when the
    /// copy is not complete (nothing built), 1 when the target refused one.
    Indexes {
        #[command(flatten)]
        common: Common,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Say what the ledger says: exit 0 when complete, 3 when anything is missing, unproduced or failed.
    Report {
        #[command(flatten)]
        common: Common,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop every program of the job taking new work (within 2 s; in-flight batches finish).
    Pause {
        #[command(flatten)]
        common: Common,
        /// Why, for the other operators (shown by `report`).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let the programs of a paused job go on.
    Resume {
        #[command(flatten)]
        common: Common,
    },
}

/// `FIRST..LAST`, both inclusive, `FIRST <= LAST`.
fn parse_groups(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{s}` is not a group range like 0..99999");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(format!("`{s}`: FIRST is after LAST"));
    }
    Ok((a, b))
}

/// One pass's summary on stdout: one JSON object with `--json`, one line otherwise.
fn print_pass(s: &bitmig_compensator::PassSummary, json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
    } else {
        println!(
            "job {}: checked {} groups ({} too young, {} complete): republished {} ids in {} groups{}",
            s.job,
            s.groups_checked,
            s.groups_too_young,
            s.groups_complete,
            s.republished_ids,
            s.groups_redriven,
            if s.paused { " (paused: nothing re-published)" } else { "" }
        );
        if let Some(v) = &s.verify {
            print!("{v}");
        }
    }
}

/// `--metrics-addr` of `run --every`: the registry, with `/readyz` checking Redis and the broker.
async fn serve_metrics(
    args: &bitmig_shared::telemetry::metrics::MetricsArgs,
    metrics: &bitmig_shared::telemetry::metrics::Metrics,
    common: &Common,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<bitmig_shared::telemetry::metrics::MetricsServer>> {
    use bitmig_shared::telemetry::metrics::{serve, Readiness};
    let Some(addr) = &args.metrics_addr else {
        return Ok(None);
    };
    let readiness = Readiness::default();
    let redis = bitmig_shared::redis_con::RedisCon::connect(&common.redis_url).await?;
    readiness.register_redis(redis);
    let url = common.amqp_url.clone();
    readiness.register("broker", move || {
        let url = url.clone();
        async move {
            let conn = bitmig_shared::queue::connect(&url, "bitmig-compensator-readyz")
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.close(200, "ready".into()).await;
            Ok(())
        }
    });
    let server = serve(addr, metrics.clone(), readiness, cancel)
        .await
        .map_err(cli::BadInput)?;
    tracing::info!(addr = %server.addr, "serving /metrics, /healthz, /readyz");
    Ok(Some(server))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bitmig_shared::telemetry::init();
    match args.command {
        Command::Run {
            common,
            min_age,
            every,
            retry_failed,
            json,
            verify,
            recheck_after,
            metrics,
        } => {
            let job = cli::load_job(&common);
            let opts = bitmig_compensator::RunOptions {
                amqp_url: common.amqp_url.clone(),
                redis_url: common.redis_url.clone(),
                min_age,
                retry_failed,
                verify: verify.then_some(recheck_after),
            };
            let done = match every {
                None => bitmig_compensator::run_pass(&job, &opts)
                    .await
                    .map(|s| print_pass(&s, json)),
                Some(every) => {
                    let cancel = cli::shutdown_token();
                    let gauge = bitmig_shared::telemetry::metrics::Metrics::new(&job.name);
                    match serve_metrics(&metrics, &gauge, &common, cancel.clone()).await {
                        Ok(_server) => {
                            bitmig_compensator::run_every(
                                &job,
                                &opts,
                                every,
                                cancel,
                                Some(&gauge),
                                |s| print_pass(s, json),
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = done {
                cli::exit_with(&e);
            }
        }
        Command::Verify {
            common,
            groups,
            rate,
            recheck_after,
            redrive,
            json,
        } => {
            let job = cli::load_job(&common);
            let opts = bitmig_compensator::VerifyOptions {
                amqp_url: common.amqp_url.clone(),
                redis_url: common.redis_url.clone(),
                groups,
                rate,
                recheck_after,
                redrive,
                due_only: false,
            };
            match bitmig_compensator::verify(&job, &opts).await {
                Ok(s) => {
                    if json {
                        println!("{}", serde_json::to_string(&s).unwrap_or_default());
                    } else {
                        print!("{s}");
                    }
                    if !s.equal() {
                        std::process::exit(exit::INCOMPLETE);
                    }
                }
                Err(e) => cli::exit_with(&e),
            }
        }
        Command::Purge {
            common,
            rate,
            batch,
            dry_run,
            purge_max_key,
            json,
        } => {
            let job = cli::load_job(&common);
            let opts = bitmig_compensator::PurgeOptions {
                amqp_url: common.amqp_url.clone(),
                redis_url: common.redis_url.clone(),
                rate,
                batch: batch as usize,
                dry_run,
                purge_max_key,
            };
            match bitmig_compensator::purge(&job, &opts, cli::shutdown_token()).await {
                Ok(s) => {
                    if json {
                        println!("{}", serde_json::to_string(&s).unwrap_or_default());
                    } else {
                        print!("{s}");
                    }
                    if !s.clean() {
                        std::process::exit(exit::INCOMPLETE);
                    }
                }
                Err(e) => cli::exit_with(&e),
            }
        }
        Command::Indexes { common, json } => {
            let job = cli::load_job(&common);
            match bitmig_compensator::indexes(&job, &common.redis_url).await {
                Ok(s) => {
                    if json {
                        println!("{}", serde_json::to_string(&s).unwrap_or_default());
                    } else {
                        print!("{s}");
                    }
                    if s.not_complete.is_some() {
                        std::process::exit(exit::INCOMPLETE);
                    }
                    if !s.clean() {
                        std::process::exit(exit::FAILED);
                    }
                }
                Err(e) => cli::exit_with(&e),
            }
        }
        Command::Report { common, json } => {
            let job = cli::load_job(&common);
            let result = async {
                let mut r = bitmig_compensator::report(&job, &common.redis_url).await?;
                if r.follow.is_some() {
                    bitmig_compensator::report::check_queues(&mut r, &common.amqp_url).await?;
                }
                anyhow::Ok(r)
            }
            .await;
            match result {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        print!("{r}");
                    }
                    if !r.complete {
                        std::process::exit(exit::INCOMPLETE);
                    }
                }
                Err(e) => cli::exit_with(&e),
            }
        }
        Command::Pause { common, reason } => {
            let job = cli::load_job(&common);
            match bitmig_compensator::set_paused(&job, &common.redis_url, Some(&reason)).await {
                Ok(_) if reason.is_empty() => println!("job {}: paused", job.name),
                Ok(_) => println!("job {}: paused ({reason})", job.name),
                Err(e) => cli::exit_with(&e),
            }
        }
        Command::Resume { common } => {
            let job = cli::load_job(&common);
            match bitmig_compensator::set_paused(&job, &common.redis_url, None).await {
                Ok(_) => println!("job {}: resumed", job.name),
                Err(e) => cli::exit_with(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_groups;

    #[test]
    fn group_ranges_are_first_dot_dot_last_inclusive() {
        assert_eq!(parse_groups("0..99999"), Ok((0, 99_999)));
        assert_eq!(parse_groups(" 5 .. 5 "), Ok((5, 5)));
        assert!(parse_groups("9..1")
            .unwrap_err()
            .contains("FIRST is after LAST"));
        for bad in ["", "5", "a..b", "1...2", "-1..3"] {
            assert!(parse_groups(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
