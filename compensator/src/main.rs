use std::time::Duration;

use bitmig_shared::cli::{self, exit, Common};
use bitmig_shared::job::JobSpec;
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
}

fn load(common: &Common) -> JobSpec {
    match JobSpec::load(&common.job) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(exit::BAD_INPUT);
        }
    }
}

fn fail(e: anyhow::Error) -> ! {
    cli::print_error(&e);
    std::process::exit(cli::exit_code_for(&e));
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
            let job = load(&common);
            let opts = bitmig_compensator::RunOptions {
                amqp_url: common.amqp_url.clone(),
                redis_url: common.redis_url.clone(),
                min_age,
                retry_failed,
            };
            let cancel = cli::shutdown_token();
            loop {
                match bitmig_compensator::run_once(&job, &opts).await {
                    Ok(s) if json => println!("{}", serde_json::to_string(&s).unwrap_or_default()),
                    Ok(s) => println!(
                        "job {}: checked {} groups ({} too young, {} complete): republished {} ids in {} groups",
                        s.job, s.groups_checked, s.groups_too_young, s.groups_complete, s.republished_ids, s.groups_redriven
                    ),
                    Err(e) if every.is_some() && cli::exit_code_for(&e) == exit::FAILED => {
                        tracing::error!(error = %format!("{e:#}"), "compensator pass failed; next pass as scheduled");
                    }
                    Err(e) => fail(e),
                }
                let Some(every) = every else { break };
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = cancel.cancelled() => break,
                }
            }
        }
        Command::Report { common, json } => {
            let job = load(&common);
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
                Err(e) => fail(e),
            }
        }
    }
}
