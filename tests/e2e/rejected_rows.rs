//! Rows the target refuses for good (a note too long for its column, in strict mode): they are isolated from
//! their batch, whose other rows land, and recorded in `bitmig:{JOB}:failed` with the database's reason;
//! `report` shows them and exits 3; the compensator leaves them alone until asked (`run --retry-failed`),
//! and once the target is fixed they land like the others.

use std::collections::{BTreeMap, BTreeSet};

use redis::AsyncCommands;
use serde_json::Value;

use crate::helpers::{Bin, TestJob};

const ROWS: u64 = 3_000;

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_target_refuses_are_recorded_as_failed_and_land_after_retry_failed() {
    let job = TestJob::new(1_000, 100).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(64) NOT NULL)",
    )
    .await;
    job.sql("CREATE TABLE dst (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(5) NOT NULL)")
        .await;
    // Every 97th note is too long for dst.note: one or two in most batches of 100.
    job.sql(&format!(
        "INSERT INTO src SELECT seq, IF(seq % 97 = 0, CONCAT('much too long for five ', seq), \
         CONCAT('n', seq % 1000)) FROM seq_1_to_{ROWS}"
    ))
    .await;
    let too_long: BTreeSet<u64> = (1..=ROWS).filter(|id| id % 97 == 0).collect();
    let fitting = ROWS - too_long.len() as u64;

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    // The failed hash: exactly the long ids, each with the database's reason.
    let mut redis = job.redis.clone();
    let failed: BTreeMap<String, String> = redis
        .hgetall(job.job_key("failed"))
        .await
        .expect("HGETALL failed");
    let failed_ids: BTreeSet<u64> = failed
        .keys()
        .map(|k| {
            k.parse()
                .unwrap_or_else(|_| panic!("failed field {k:?} is not an id"))
        })
        .collect();
    assert_eq!(
        failed_ids,
        too_long,
        "HGETALL {} must hold exactly the ids whose note is too long",
        job.job_key("failed")
    );
    for (id, value) in &failed {
        let entry: Value = serde_json::from_str(value)
            .unwrap_or_else(|e| panic!("failed[{id}] is not JSON ({e}): {value}"));
        let reason = entry["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("Data too long") && entry["at"].is_string(),
            "failed[{id}] must carry the database's reason and a time: {value}"
        );
    }

    // The other rows of their batches landed, unchanged; the refused ones did not.
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, fitting);
    assert_eq!(
        job.sql_u64(
            "SELECT COUNT(*) FROM src JOIN dst USING (id) WHERE BINARY src.note = BINARY dst.note"
        )
        .await,
        fitting,
        "every row that fits must land unchanged"
    );
    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM dst WHERE id % 97 = 0")
            .await,
        0
    );

    let (code, report) = job.report().await;
    assert_eq!(
        (
            code,
            report["failed_ids"].as_u64(),
            report["target_ids"].as_u64(),
            report["missing_ids"].as_u64()
        ),
        (3, Some(too_long.len() as u64), Some(fitting), Some(0)),
        "report must exit 3 and count the refused rows as failed, not missing: {report:#}"
    );

    // Failed ids are not re-driven by an ordinary pass: they would only fail again.
    let pass = job.compensate(Some("0s")).await;
    assert_eq!(
        pass["republished_ids"].as_u64(),
        Some(0),
        "the compensator re-drove failed ids without --retry-failed: {pass}"
    );

    // The operator fixes the target, then asks for them.
    job.sql("ALTER TABLE dst MODIFY note VARCHAR(64) NOT NULL")
        .await;
    let retry = job
        .run(
            Bin::Compensator,
            &[
                "run",
                "--job",
                job.job_arg(),
                "--min-age",
                "0s",
                "--retry-failed",
                "--json",
            ],
        )
        .await;
    retry.expect_code(0);
    let retry = retry.json();
    assert_eq!(
        retry["republished_ids"].as_u64(),
        Some(too_long.len() as u64),
        "run --retry-failed must re-drive every failed id: {retry}"
    );
    job.consume_until_idle(1, &[]).await;

    let failed_left: u64 = redis
        .hlen(job.job_key("failed"))
        .await
        .expect("HLEN failed");
    assert_eq!(
        failed_left, 0,
        "the re-driven ids landed, yet are still recorded as failed"
    );
    job.assert_target_equals_source().await;
    job.assert_job_complete(ROWS, 0).await;
}
