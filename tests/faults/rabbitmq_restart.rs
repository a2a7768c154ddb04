//! RabbitMQ restarts in the middle of a run. The producer and the consumers reconnect by themselves: a publish
//! whose confirm was lost is published again, an ack that could not be sent leads to an idempotent
//! redelivery. Nothing is lost, and nothing needs an operator.

use std::time::Duration;

use crate::{
    helpers::{wait_while_running, Bin, TestJob},
    redrive_until_nothing_is_missing,
    services::{landed, reconnect, start_services, stop_rabbitmq, RestoreServices},
    spawn, wait_for_consumers, PROCESS_DEADLINE,
};

/// Big enough, and published slowly enough, that the restart lands while the producer is still publishing
/// and the consumers are consuming.
const ROWS: u64 = 300_000;
const RATE: &str = "10000";

#[tokio::test(flavor = "multi_thread")]
async fn producer_and_consumers_carry_on_by_themselves_when_rabbitmq_restarts_mid_run() {
    let mut job = TestJob::new(10_000, 1_000).await;
    let rows = job.create_source(ROWS).await;
    let _restore = RestoreServices::new();

    let mut producer = spawn(&job, Bin::Producer, &["--rate", RATE]);
    // Idle for longer than the outage: a consumer must wait for the broker, not leave.
    let consumers: Vec<_> = (0..2)
        .map(|_| job.spawn_consumer(&["--concurrency", "2", "--exit-when-idle", "20"]))
        .collect();

    wait_while_running(
        &mut producer,
        "a tenth of the rows to land while the producer still publishes",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            match landed(&job).await {
                n if n >= rows / 10 => Ok(n),
                n => Err(format!("{n} tgt bits")),
            }
        },
    )
    .await;
    let at_stop = landed(&job).await;
    assert!(
        producer.is_running() && at_stop < rows,
        "the restart must land mid-run: producer running = {}, {at_stop} of {rows} rows landed",
        producer.is_running()
    );

    stop_rabbitmq().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    start_services().await;
    reconnect(&mut job).await;
    eprintln!("RabbitMQ restarted with {at_stop} of {rows} rows landed");

    producer.wait(PROCESS_DEADLINE).await.expect_code(0);
    wait_for_consumers(consumers).await;
    let redriven = redrive_until_nothing_is_missing(&job).await;

    let dead = job.dead_queue();
    assert_eq!(
        job.message_count(&dead).await,
        Some(0),
        "a broker restart sent batches to {dead}"
    );
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
    eprintln!("rows equal and the job complete; the compensator re-drove {redriven} ids");
}
