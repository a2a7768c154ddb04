//! `bitmig-compensator`: parses the command line and dispatches each subcommand to its module of
//! `bitmig_compensator` (`run` → `redrive`, `report` → `report`, `pause`/`resume` → `control`); exit codes per DESIGN.md §3.

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
        Command::Report { common, json } => {
            let job = cli::load_job(&common);
            match bitmig_compensator::report(&job, &common.redis_url).await {
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
