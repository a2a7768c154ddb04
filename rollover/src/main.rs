use std::path::PathBuf;
use std::time::Duration;

use bitmig_rollover::config::{Config, Month};
use bitmig_rollover::{es_client, open_table, plan, run, status};
use bitmig_shared::cli::{self, exit};
use clap::{Parser, Subcommand};

/// Monthly hot → cold moves inside Elasticsearch, as server-side tasks listed in a MySQL task table.
#[derive(Debug, Parser)]
#[command(name = "bitmig-rollover", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Insert a month's reindex tasks (and, with keep_months, the delete tasks that fall due), idempotently.
    Plan {
        /// The config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The month to copy, like 2021-09.
        #[arg(long, value_parser = Month::parse)]
        month: Month,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Poll started tasks and start pending ones, at most max_running of each kind.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Run a pass every DUR until SIGTERM/SIGINT, instead of once.
        #[arg(long, value_parser = cli::parse_duration)]
        every: Option<Duration>,
        /// With --every: stop once nothing is running and every pending task is blocked (or none is), with the
        /// exit code of `status`.
        #[arg(long, requires = "every")]
        until_done: bool,
        /// Print each pass's summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Each task's state and progress: exit 0 when all are done, 3 while some are pending or running, 1 when one failed.
    Status {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn fail(e: anyhow::Error) -> ! {
    cli::print_error(&e);
    std::process::exit(cli::exit_code_for(&e));
}

fn load(path: &std::path::Path) -> Config {
    Config::load(path).unwrap_or_else(|e| fail(e))
}

fn print<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bitmig_shared::telemetry::init();
    let code = match args.command {
        Command::Plan {
            config,
            month,
            json,
        } => {
            let cfg = load(&config);
            let result = async {
                let es = es_client(&cfg)?;
                let table = open_table(&cfg).await?;
                plan::plan(&cfg, &es, &table, month).await
            }
            .await;
            match result {
                Ok(s) if json => {
                    print(&s);
                    exit::OK
                }
                Ok(s) => {
                    println!(
                        "month {}: {} indices, planned {} tasks ({} already planned)",
                        s.month,
                        s.indices.len(),
                        s.planned.len(),
                        s.already_planned.len()
                    );
                    exit::OK
                }
                Err(e) => fail(e),
            }
        }
        Command::Run {
            config,
            every,
            until_done,
            json,
        } => {
            let cfg = load(&config);
            let es = es_client(&cfg).unwrap_or_else(|e| fail(e));
            match es.check().await {
                Ok(version) => tracing::info!(cluster = %es.label(), %version, "cluster answers"),
                Err(e) if every.is_some() => {
                    tracing::warn!(cluster = %es.label(), error = %e, "cluster does not answer yet")
                }
                Err(e) => fail(anyhow::anyhow!("Elasticsearch at {}: {e}", es.label())),
            }
            let table = open_table(&cfg).await.unwrap_or_else(|e| fail(e));
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            let runner = run::Runner {
                cfg: &cfg,
                es: &es,
                table: &table,
                // Host and pid tell an operator whose claim a row is; the clock's nanoseconds keep two
                // containers that are both pid 1 on one node apart.
                name: format!(
                    "{host}:{}:{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or_default()
                ),
            };
            let cancel = cli::shutdown_token();
            let mut code = exit::OK;
            loop {
                match runner.pass().await {
                    Ok(s) => {
                        if json {
                            print(&s);
                        } else {
                            tracing::info!(
                                started = s.started,
                                done = s.done,
                                failed = s.failed,
                                forgotten = s.forgotten,
                                poll_errors = s.poll_errors,
                                "pass"
                            );
                        }
                    }
                    Err(e) if every.is_some() && cli::exit_code_for(&e) == exit::FAILED => {
                        tracing::error!(error = %format!("{e:#}"), "pass failed; next pass as scheduled");
                    }
                    Err(e) => fail(e),
                }
                let Some(every) = every else { break };
                // Every pass says where the table stands: a log line an operator can follow.
                match status::status(&table).await {
                    Ok(st) => {
                        let progress: i64 = st.tasks.iter().map(|t| t.progress).sum();
                        let total: i64 = st.tasks.iter().filter_map(|t| t.task.total).sum();
                        tracing::info!(
                            pending = st.pending,
                            blocked = st.blocked,
                            running = st.running,
                            done = st.done,
                            failed = st.failed,
                            documents = progress,
                            of = total,
                            "tasks"
                        );
                        if until_done && st.settled() {
                            code = st.exit_code();
                            break;
                        }
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reading the task table"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = cancel.cancelled() => break,
                }
            }
            code
        }
        Command::Status { config, json } => {
            let cfg = load(&config);
            let st = async {
                let table = open_table(&cfg).await?;
                status::status(&table).await
            }
            .await
            .unwrap_or_else(|e| fail(e));
            if json {
                print(&st);
            } else {
                print!("{st}");
            }
            st.exit_code()
        }
    };
    std::process::exit(code);
}
