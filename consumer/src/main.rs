use std::time::Duration;

use bitmig_shared::cli::{self, Common};
use clap::Parser;

/// Take batches from the job's work queue, copy their rows to the target and record them in the ledger.
#[derive(Debug, Parser)]
#[command(name = "bitmig-consumer", version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Batches processed at once; scale out with more consumers.
    // Two keeps a database busy without crowding it: on the benchmark's 2-core machine (scripts/bench's
    // bitmig phase alone, three runs each), 2 consumers × 4 made MariaDB spend a fifth more CPU per row
    // than 2 × 2, and moved 116k rows/s against 143k.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Unacked deliveries the broker may push ahead (default: 2 × concurrency + 16, room for small
    /// catch-up batches to be taken together).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: Option<u16>,
    /// Exit 0 once the work queue has been empty for SECS seconds and nothing is in flight.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<u64>,
    #[command(flatten)]
    metrics: bitmig_shared::telemetry::metrics::MetricsArgs,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bitmig_shared::telemetry::init();
    let job = cli::load_job(&args.common);
    let opts = bitmig_consumer::Options {
        amqp_url: args.common.amqp_url,
        redis_url: args.common.redis_url,
        concurrency: args.concurrency as usize,
        prefetch: args.prefetch.unwrap_or(
            args.concurrency
                .saturating_mul(2)
                .saturating_add(bitmig_consumer::MERGE_MAX as u16),
        ),
        exit_when_idle: args.exit_when_idle.map(Duration::from_secs),
        metrics_addr: args.metrics.metrics_addr,
    };
    let cancel = cli::shutdown_token();
    if let Err(e) = bitmig_consumer::run(job, &opts, cancel).await {
        cli::exit_with(&e);
    }
}
