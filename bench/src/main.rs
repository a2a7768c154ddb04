//! `bitmig-bench`: parses the command line and runs the selected phases (`bitmig_bench::run`); exit 0 when
//! every phase ran and its targets held the source's rows, 1 when anything failed (no figures then), 2 for a
//! bad command line. `scripts/bench` starts the services, builds the release binaries and execs this.

use clap::Parser;

#[tokio::main]
async fn main() {
    let opts = bitmig_bench::Options::parse();
    if let Err(e) = bitmig_bench::run(opts).await {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}
