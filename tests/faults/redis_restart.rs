//! Redis restarts and loses its data in the middle of a run (it runs without persistence here, as a Redis
//! whose AOF lost its last second would, only worse). The programs reconnect; `report` does not claim a
//! completion the lost ledger cannot prove, and says how to recover; re-running the producer rebuilds the
//! ledger, and the job completes.

use std::time::Duration;

use serde_json::Value;

use crate::{
    helpers::{wait_while_running, Bin, TestJob},
    services::{landed, reconnect, start_services, stop_redis, RestoreServices},
    spawn, wait_for_consumers, PROCESS_DEADLINE,
};

const ROWS: u64 = 200_000;
const RATE: &str = "10000";

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_lost_with_a_redis_restart_is_reported_and_rebuilt_by_the_producer() {
    let mut job = TestJob::new(10_000, 1_000).await;
    let rows = job.create_source(ROWS).await;
    let _restore = RestoreServices::new();
    lose_the_ledger_mid_run(&mut job, rows).await;

    assert_report_says_the_ledger_is_lost(&job, rows).await;
    rebuild_the_ledger(&job, rows).await;
}

/// Kubernetes restarts consumer pods whenever it likes; one that starts after the loss finds no `spec` and
/// stores its own. That must not turn the remains of the lost ledger into a complete job.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_started_after_redis_lost_the_ledger_does_not_make_report_claim_completion() {
    let mut job = TestJob::new(10_000, 1_000).await;
    let rows = job.create_source(ROWS).await;
    let _restore = RestoreServices::new();
    lose_the_ledger_mid_run(&mut job, rows).await;

    job.spawn_consumer(&["--exit-when-idle", "1"])
        .wait(PROCESS_DEADLINE)
        .await
        .expect_code(0);
    assert_report_says_the_ledger_is_lost(&job, rows).await;
    rebuild_the_ledger(&job, rows).await;
}

/// Starts a slow producer and two consumers, restarts Redis empty once a tenth of the rows landed, and waits
/// until the programs, which must carry on by themselves, have finished what they had.
async fn lose_the_ledger_mid_run(job: &mut TestJob, rows: u64) {
    let mut producer = spawn(job, Bin::Producer, &["--rate", RATE]);
    let consumers: Vec<_> = (0..2)
        .map(|_| job.spawn_consumer(&["--concurrency", "2", "--exit-when-idle", "20"]))
        .collect();
    wait_while_running(
        &mut producer,
        "a tenth of the rows to land while the producer still publishes",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            match landed(job).await {
                n if n >= rows / 10 => Ok(n),
                n => Err(format!("{n} tgt bits")),
            }
        },
    )
    .await;
    let at_stop = landed(job).await;
    assert!(
        producer.is_running() && at_stop < rows,
        "the restart must land mid-run: producer running = {}, {at_stop} of {rows} rows landed",
        producer.is_running()
    );

    // The producer goes on (and re-plans the group in hand and those after it) as soon as Redis is back, so
    // the count of groups proves nothing; the first group, produced before the restart, is never planned again.
    let groups_before = job.groups().await;
    stop_redis().await;
    start_services().await;
    reconnect(job).await;
    let groups_after = job.groups().await;
    assert!(
        !groups_before.is_empty() && !groups_after.contains(&groups_before[0]),
        "Redis kept the ledger over a restart without persistence (group {:?} before and after): the \
         test tests nothing",
        groups_before.first()
    );
    eprintln!("Redis restarted empty with {at_stop} of {rows} rows landed");

    producer.wait(PROCESS_DEADLINE).await.expect_code(0);
    wait_for_consumers(consumers).await;
}

/// `report` exits 3, not complete, and says the ledger is missing.
async fn assert_report_says_the_ledger_is_lost(job: &TestJob, rows: u64) -> Value {
    let (code, report) = job.report().await;
    let reasons = report["reasons"].to_string().to_lowercase();
    assert!(
        code == 3
            && report["complete"] == false
            && (report["ledger_present"] == false || reasons.contains("ledger")),
        "after Redis lost the ledger, report must say the job is not complete because the ledger is missing \
         (exit {code}): {report:#}"
    );
    assert!(
        report["source_ids"].as_u64().unwrap_or(0) < rows,
        "the lost ledger cannot know every published id: {report:#}"
    );
    eprintln!("report after the loss (exit {code}): {report}");
    report
}

/// The recovery the report points at: run the producer again, then the consumers; the job completes.
async fn rebuild_the_ledger(job: &TestJob, rows: u64) {
    job.produce(&[]).await;
    job.consume_until_idle(2, &["--concurrency", "2"]).await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}
