//! Fault tests of bitmig: the real programs run against real RabbitMQ, Redis and MariaDB while a test stops and
//! starts one of those services under them, then checks that every source row landed.
//!
//! Restarting a service breaks whatever else talks to it, so these tests live in their own binary and run one
//! at a time, after the main suite (`scripts/test` does both):
//!
//! ```text
//! cargo nextest run -p bitmig-tests --test faults --test-threads 1
//! cargo test -p bitmig-tests --test faults -- --test-threads 1
//! ```
//!
//! They control the services of this machine (`scripts/services`, as root): a test that stopped one starts
//! it again when it ends, pass or fail ([`services::RestoreServices`]).

// The helpers are the `bitmig-tests` library, as in the e2e tests.
use bitmig_tests as helpers;
mod services;

mod database_outage;
mod follower_broker_restart;
mod rabbitmq_restart;
mod readyz;
mod redis_restart;

use std::time::Duration;

use helpers::{Bin, Proc, TestJob};

/// How long a program that lives through a fault may take to finish its work.
const PROCESS_DEADLINE: Duration = Duration::from_secs(300);

/// Waits until each consumer has exited 0 (they run with `--exit-when-idle`).
async fn wait_for_consumers(consumers: Vec<Proc>) {
    for consumer in consumers {
        consumer.wait(PROCESS_DEADLINE).await.expect_code(0);
    }
}

/// Compensator passes (`--min-age 0s`), each followed by a consumer until the queue is idle, until a pass finds
/// nothing to re-drive; returns how many ids were re-driven in all. A fault may leave a few ids for the
/// compensator (a confirm or an ack lost with the connection); it must never leave them for good.
async fn redrive_until_nothing_is_missing(job: &TestJob) -> u64 {
    let mut redriven = 0;
    for _ in 0..3 {
        let pass = job.compensate(Some("0s")).await;
        let republished = pass["republished_ids"]
            .as_u64()
            .unwrap_or_else(|| panic!("compensator pass without republished_ids: {pass}"));
        if republished == 0 {
            return redriven;
        }
        eprintln!("the compensator re-drove {republished} ids: {pass}");
        redriven += republished;
        job.consume_until_idle(1, &[]).await;
    }
    panic!("three compensator passes still found ids to re-drive ({redriven} in all)")
}

/// Spawns `bin` with the default job file and `extra` arguments.
fn spawn(job: &TestJob, bin: Bin, extra: &[&str]) -> Proc {
    let mut args = vec!["--job", job.job_arg()];
    args.extend(extra);
    job.spawn(bin, &args)
}
