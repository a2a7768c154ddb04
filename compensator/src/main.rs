//! `bitmig-compensator`: parses the command line and dispatches each subcommand to its module of
//! `bitmig_compensator` (`run` → `redrive`, `verify` → `verify`, `report` → `report`); exit codes per DESIGN.md §3.

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
    /// Say what the ledger says: exit 0 when complete, 3 when anything is missing, unproduced or failed.
    Report {
        #[command(flatten)]
        common: Common,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
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
            "job {}: checked {} groups ({} too young, {} complete): republished {} ids in {} groups",
            s.job, s.groups_checked, s.groups_too_young, s.groups_complete, s.republished_ids, s.groups_redriven
        );
    }
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
        } => {
            let job = cli::load_job(&common);
            let opts = bitmig_compensator::RunOptions {
                amqp_url: common.amqp_url.clone(),
                redis_url: common.redis_url.clone(),
                min_age,
                retry_failed,
            };
            let done = match every {
                None => bitmig_compensator::run_once(&job, &opts)
                    .await
                    .map(|s| print_pass(&s, json)),
                Some(every) => {
                    let cancel = cli::shutdown_token();
                    bitmig_compensator::run_every(&job, &opts, every, cancel, |s| {
                        print_pass(s, json)
                    })
                    .await
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
