//! A consumer gets SIGTERM under load, as Kubernetes sends it before a pod goes away: it stops taking
//! deliveries, finishes and acks the batches it holds, and exits 0 within the grace period. Nothing it
//! committed is delivered again: another consumer finishes exactly the rest.

use std::time::Duration;

use crate::helpers::{wait_while_running, Bits, TestJob, COMMAND_DEADLINE};

/// How long a consumer may take to stop after SIGTERM (Kubernetes' default grace period is 30 s).
const GRACE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_stopped_with_sigterm_finishes_what_it_holds_and_nothing_is_written_twice() {
    let job = TestJob::new(10_000, 500).await;
    let rows = job.create_source(100_000).await;
    job.produce(&[]).await;
    let groups = job.groups().await;

    let mut a = job.spawn_consumer(&["--concurrency", "4"]);
    wait_while_running(
        &mut a,
        "consumer A to be in full swing",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            match job.bitcount_sum(&groups, Bits::Tgt).await {
                n if n >= 5_000 => Ok(n),
                n => Err(format!("{n} tgt bits")),
            }
        },
    )
    .await;
    let a = a.terminate(GRACE).await;
    a.expect_code(0);
    let landed_by_a = job.bitcount_sum(&groups, Bits::Tgt).await;
    assert!(
        landed_by_a < rows,
        "consumer A landed all {rows} rows before SIGTERM: the table must be bigger for this test to mean \
         anything"
    );
    let written_by_a = a.rows_written();
    assert_eq!(
        written_by_a,
        landed_by_a,
        "consumer A says it wrote {written_by_a} rows, but {landed_by_a} tgt bits are set after it exited: a \
         batch it wrote was not recorded, or one it recorded was not counted\n{}",
        a.describe()
    );

    let b = job.spawn_consumer(&["--concurrency", "4", "--exit-when-idle", "3"]);
    let b = b.wait(COMMAND_DEADLINE).await;
    b.expect_code(0);
    let written_by_b = b.rows_written();
    assert_eq!(
        written_by_a + written_by_b,
        rows,
        "A wrote {written_by_a} rows and B {written_by_b}: their sum must be the {rows} source rows exactly \
         (more means B was given batches A had committed)\n{}\n{}",
        a.describe(),
        b.describe()
    );

    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}
