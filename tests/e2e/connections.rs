//! A consumer keeps its database connections from batch to batch. Each new connection costs the server a
//! login, the session settings and a fresh prepare of the batch's statements; a pool that closed every
//! connection it got back (mysql_async's default with an idle TTL of zero) made the consumer reconnect for
//! almost every batch, and MariaDB spent a tenth of its CPU parsing the same INSERT again. Here the job runs
//! as a MariaDB user allowed few connections an hour, so a program that reconnects per batch fails.

use crate::helpers::{gappy_ids, MysqlUser, TestJob};

/// Connections the user may open in an hour: enough for the producer, two consumers (each holds at most
/// `concurrency + 1` for the source and as many for the target) and the compensator, far fewer than the
/// job's batches.
const CONNECTIONS_PER_HOUR: u32 = 24;

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_write_120_batches_over_a_handful_of_connections() {
    let mut job = TestJob::new(1_000, 50).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(6_000, job.group_size)).await;
    let batches = rows.div_ceil(job.batch_size);
    assert!(
        batches >= 5 * u64::from(CONNECTIONS_PER_HOUR),
        "only {batches} batches: too few to tell reconnecting from keeping"
    );

    let name = format!("bmc_{}", &job.name[2..]);
    let limits = format!("WITH MAX_CONNECTIONS_PER_HOUR {CONNECTIONS_PER_HOUR}");
    let user = MysqlUser::create(&job, &name, "Pw_connections", &limits).await;
    let limited = job
        .job_toml()
        .replace(&job.database_url, &user.url(&job.database_url));
    job.job_file = job.write_file("limited.toml", &limited);

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;
    job.compensate(Some("0s")).await;

    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}
