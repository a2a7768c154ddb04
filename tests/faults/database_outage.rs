//! The database goes away for about ten seconds while consumers write (the tests' source and target share one
//! MariaDB, so both go). Consumers retry in-process and then through the retry queues with growing delays;
//! no batch reaches the dead queue for it, and everything lands once the database is back.

use std::time::{Duration, Instant};

use crate::{
    helpers::TestJob,
    services::{landed, reconnect, start_services, stop_mariadb, RestoreServices},
};

/// The outage, and how long after it every row must have landed (the retry queues wait 1 s, 5 s, 30 s…).
const OUTAGE: Duration = Duration::from_secs(10);
const RECOVERY: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn every_row_lands_after_the_database_was_away_for_ten_seconds() {
    let mut job = TestJob::new(10_000, 500).await;
    let rows = job.create_source(100_000).await;
    job.produce(&[]).await;
    let _restore = RestoreServices::new();

    // No --exit-when-idle: while batches wait in a retry queue the work queue is empty.
    let mut consumers: Vec<_> = (0..2)
        .map(|_| job.spawn_consumer(&["--concurrency", "2"]))
        .collect();
    let started = Instant::now();
    loop {
        let n = landed(&job).await;
        if n >= rows / 10 {
            break;
        }
        for consumer in &mut consumers {
            assert!(
                consumer.is_running(),
                "a consumer exited before the outage\n{}",
                consumer.output_so_far()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {n} rows landed in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_stop = landed(&job).await;
    assert!(
        at_stop < rows,
        "the consumers landed all {rows} rows before the outage: the table must be bigger"
    );

    stop_mariadb().await;
    tokio::time::sleep(OUTAGE).await;
    start_services().await;
    reconnect(&mut job).await;
    let back = Instant::now();
    eprintln!("MariaDB restarted with {at_stop} of {rows} rows landed");

    loop {
        let (_, report) = job.report().await;
        if report["source_ids"].as_u64() == Some(rows) && report["missing_ids"].as_u64() == Some(0)
        {
            break;
        }
        for consumer in &mut consumers {
            assert!(
                consumer.is_running(),
                "a consumer exited after the outage\n{}",
                consumer.output_so_far()
            );
        }
        assert!(
            back.elapsed() < RECOVERY,
            "{RECOVERY:?} after the database came back, rows are still missing: {report}\n{}",
            consumers
                .iter()
                .map(|c| c.output_so_far())
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "every row landed {:?} after MariaDB was back",
        back.elapsed()
    );

    let dead = job.dead_queue();
    let dead_letters = job.take_all(&dead).await;
    assert!(
        dead_letters.is_empty(),
        "{} batches went to {dead} for a database outage: {:?}",
        dead_letters.len(),
        dead_letters
            .iter()
            .map(|d| crate::helpers::header_text(d, crate::helpers::ERROR_HEADER))
            .collect::<Vec<_>>()
    );
    for consumer in consumers {
        consumer
            .terminate(Duration::from_secs(30))
            .await
            .expect_code(0);
    }
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}
