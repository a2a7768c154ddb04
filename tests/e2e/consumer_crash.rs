//! A consumer dies without warning in the middle of the job: its unacknowledged batches go back to the queue
//! and another consumer finishes them; the idempotent write means nothing is lost and nothing doubled.

use std::time::Duration;

use crate::helpers::{wait_while_running, Bits, TestJob, COMMAND_DEADLINE};

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_killed_with_sigkill_is_finished_by_another() {
    let job = TestJob::new(10_000, 500).await;
    let rows = job.create_source(100_000).await;
    job.produce(&[]).await;
    let groups = job.groups().await;

    let mut a = job.spawn_consumer(&["--concurrency", "2"]);
    let landed = wait_while_running(
        &mut a,
        "consumer A to land its first rows",
        Duration::from_secs(60),
        // often: the consumer must be caught early, long before it is done
        Duration::from_millis(20),
        || async {
            match job.bitcount_sum(&groups, Bits::Tgt).await {
                0 => Err("no tgt bit set".to_owned()),
                n => Ok(n),
            }
        },
    )
    .await;
    let killed = a.kill().await;
    assert_eq!(killed.signal(), Some(9), "{}", killed.describe());
    let at_kill = job.bitcount_sum(&groups, Bits::Tgt).await;
    assert!(
        at_kill < rows,
        "consumer A landed all {rows} rows before it was killed (first seen {landed}): the table must be \
         bigger for this test to mean anything"
    );

    let b = job.spawn_consumer(&["--concurrency", "2", "--exit-when-idle", "3"]);
    b.wait(COMMAND_DEADLINE).await.expect_code(0);

    job.assert_target_equals_source().await;
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, rows);
    job.assert_job_complete(rows, 0).await;
}
