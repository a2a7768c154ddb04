use bitmig_shared::cli::{self, BadInput, Common};
use clap::Parser;

/// Plan the job's groups and publish their ids to RabbitMQ; resumes groups not yet produced.
#[derive(Debug, Parser)]
#[command(name = "bitmig-producer", version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// First key of the range (default: MIN(key)); widened to its group.
    #[arg(long, value_name = "ID")]
    from: Option<u64>,
    /// Last key of the range (default: MAX(key)); widened to its group.
    #[arg(long, value_name = "ID")]
    to: Option<u64>,
    /// Publish at most this many ids per second.
    #[arg(long, value_name = "ROWS_PER_S")]
    rate: Option<u64>,
    /// Keep following the source's changes (the job's [follow] section) after the walk, until SIGTERM.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    metrics: bitmig_shared::telemetry::metrics::MetricsArgs,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bitmig_shared::telemetry::init();
    let job = cli::load_job(&args.common);
    if let (Some(from), Some(to)) = (args.from, args.to) {
        if from > to {
            cli::exit_with(&BadInput(format!("--from {from} is greater than --to {to}")).into());
        }
    }
    let opts = bitmig_producer::Options {
        amqp_url: args.common.amqp_url,
        redis_url: args.common.redis_url,
        from: args.from,
        to: args.to,
        rate: args.rate,
        follow: args.follow,
        metrics_addr: args.metrics.metrics_addr,
    };
    let cancel = cli::shutdown_token();
    let result = if opts.follow {
        bitmig_producer::follow::run::run(&job, &opts, cancel).await
    } else {
        bitmig_producer::run(&job, &opts, cancel).await
    };
    match result {
        Ok(s) => {
            println!(
                "produced {} groups ({} already done), {} ids in {} messages",
                s.groups_produced, s.groups_skipped, s.ids_published, s.messages
            );
        }
        Err(e) => cli::exit_with(&e),
    }
}
