//! RabbitMQ restarts under `bitmig-producer --follow` (DESIGN.md §8): the follower keeps reading the binlog
//! while the broker is away, redoes the catch-up publishes that failed, reconnects by itself and goes on;
//! changes made before, during and after the outage all reach the target, and nobody needed an operator.

use std::time::{Duration, Instant};

use crate::{
    helpers::follow::{
        follow_job, producer_status, spawn_follower, stop_following, wait_caught_up,
        wait_for_position, write_one, Writes,
    },
    helpers::{Proc, TestJob},
    services::{reconnect, start_services, stop_rabbitmq, RestoreServices},
    PROCESS_DEADLINE,
};

const ROWS: u64 = 200_000;

/// `count` changes, one every 10 ms; `n` numbers them across calls.
async fn write_changes(
    job: &TestJob,
    live: &mut Vec<u64>,
    n: &mut u64,
    w: &mut Writes,
    count: u64,
) {
    for _ in 0..count {
        write_one(job, live, *n, w).await;
        *n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_follower_reconnects_and_goes_on_when_rabbitmq_restarts_under_it() {
    let mut job = TestJob::new(10_000, 1_000).await;
    job.create_source_from_fixture(ROWS).await;
    job.write_file("job.toml", &follow_job(&job));
    let mut live = job.ids_of("src").await;
    let _restore = RestoreServices::new();

    let mut follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for_position(&job).await;

    // Changes under the copy, until the walk is done.
    let mut writes = Writes::default();
    let mut n = 0u64;
    let started = Instant::now();
    while !(n >= 200 && producer_status(&job).await.as_deref() == Some("done")) {
        write_changes(&job, &mut live, &mut n, &mut writes, 1).await;
        assert!(
            started.elapsed() < PROCESS_DEADLINE,
            "the walk did not finish while writing"
        );
    }

    // The broker goes away with catch-ups in flight; the source keeps changing.
    stop_rabbitmq().await;
    write_changes(&job, &mut live, &mut n, &mut writes, 100).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        follower.is_running(),
        "the follower gave up while the broker was away:\n{}",
        follower.output_so_far()
    );
    start_services().await;
    reconnect(&mut job).await;
    eprintln!("RabbitMQ restarted after {n} changes ({writes:?})");
    write_changes(&job, &mut live, &mut n, &mut writes, 100).await;

    let report = wait_caught_up(&job).await;
    assert!(
        follower.is_running(),
        "the follower exited:\n{}",
        follower.output_so_far()
    );
    assert_eq!(report["follow"]["from"], "binlog", "{report:#}");
    assert_eq!(
        job.checksum("dst").await,
        job.checksum("src").await,
        "CHECKSUM TABLE"
    );
    job.assert_target_equals_source().await;
    let dead = job.dead_queue();
    assert_eq!(
        job.message_count(&dead).await,
        Some(0),
        "a broker restart sent batches to {dead}"
    );

    stop_following(follower, consumers).await;
}
