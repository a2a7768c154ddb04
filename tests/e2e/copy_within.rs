//! Source and target on one MariaDB server: a `produce` batch is copied by the server itself
//! (`INSERT … SELECT` over the batch's ids), kept only when every id landed without a warning. Rows of every
//! type arrive bit for bit; a batch with an id deleted after it was planned is rolled back and read the usual
//! way (the id recorded gone); the server named `localhost` on one side and `127.0.0.1` on the other is one; a target user who may not read the source, or a server logging statements
//! (`binlog_format = STATEMENT`), turns the path off, said once, and every row still arrives.

use crate::helpers::{private_server, DatabaseOn, TestJob};

/// The sink's debug line for a batch the server copied.
const COPIED: &str = "batch copied within the server";
/// The sink's debug line for a copy rolled back in favour of the usual read and write.
const NOT_CLEAN: &str = "server-side copy not clean";

/// The two things a job the server must not copy shows: the refusal said once, and no batch copied.
fn assert_copy_turned_off(log: &str) {
    assert_eq!(
        log.matches("does not copy the source's rows itself")
            .count(),
        1,
        "the refusal is said once, then every batch is read and written:\n{log}"
    );
    assert!(
        !log.contains(COPIED),
        "no batch copied by the server:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_copies_each_batch_and_a_batch_with_a_deleted_id_goes_the_usual_way() {
    let job = TestJob::new(1_000, 100).await;
    let rows = job.create_source(3_000).await;
    // The target names the server the other way round (`localhost` for `127.0.0.1`, or back): one server.
    let (a, b) = ("127.0.0.1", "localhost");
    let (from, to) = if job.database_url.contains(a) {
        (a, b)
    } else {
        (b, a)
    };
    job.set_target_url(&job.database_url.replacen(from, to, 1));
    job.produce(&[]).await;
    let batches = job
        .sql_u64(&format!(
            "SELECT SUM(CEIL(n / {})) FROM (SELECT COUNT(*) AS n FROM src GROUP BY id DIV {}) AS g",
            job.batch_size, job.group_size
        ))
        .await;
    // Two ids deleted after the producer planned them, in two different batches (each batch holds 100
    // consecutive source ids).
    let first = job.sql_u64("SELECT MIN(id) FROM src").await;
    let middle = job
        .sql_u64("SELECT id FROM src ORDER BY id LIMIT 1 OFFSET 1500")
        .await;
    job.sql(&format!("DELETE FROM src WHERE id IN ({first}, {middle})"))
        .await;

    let log = job.consume_with_sink_debug().await;

    job.assert_target_equals_source().await;
    assert_eq!(
        (log.matches(COPIED).count(), log.matches(NOT_CLEAN).count()),
        (batches as usize - 2, 2),
        "every batch of {batches} copied by the server but the two whose ids were deleted:\n{log}"
    );
    job.assert_job_complete(rows, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_user_who_may_not_read_the_source_gets_every_row_through_the_consumer() {
    let job = TestJob::new(1_000, 200).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(32) NOT NULL)",
    )
    .await;
    job.sql("CREATE TABLE dst LIKE src").await;
    job.sql("INSERT INTO src SELECT seq, CONCAT('n', seq) FROM seq_1_to_1000")
        .await;
    let _user = job.target_user_without_source().await;

    job.produce(&[]).await;
    let log = job.consume_with_sink_debug().await;

    job.assert_target_equals_source().await;
    assert_copy_turned_off(&log);
    job.assert_job_complete(1_000, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_logging_statements_gets_every_row_through_the_consumer() {
    use mysql_async::prelude::Queryable;
    let job = TestJob::new(1_000, 200).await;
    // The private MariaDB on port 3317 logs statements (binlog_format = STATEMENT), where InnoDB refuses a
    // `READ COMMITTED` `INSERT … SELECT` (error 1665).
    let (server_url, mut server) = private_server(3317).await;
    let database = job.database.clone();
    let _drop = DatabaseOn {
        server_url: server_url.clone(),
        database: database.clone(),
    };
    server
        .query_drop(format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4; \
             CREATE TABLE `{database}`.src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, \
             note VARCHAR(32) NOT NULL); \
             CREATE TABLE `{database}`.dst LIKE `{database}`.src; \
             INSERT INTO `{database}`.src SELECT seq, CONCAT('n', seq) FROM `{database}`.seq_1_to_1000"
        ))
        .await
        .expect("the test's database on 3317");
    let format: String = server
        .query_first("SELECT @@GLOBAL.binlog_format")
        .await
        .expect("binlog_format")
        .expect("a row");
    assert_eq!(
        format, "STATEMENT",
        "the private server on 3317 logs statements"
    );
    let url = format!("{server_url}{database}");
    let toml = job.job_toml().replace(&job.database_url, &url);
    assert_ne!(toml, job.job_toml(), "source and target moved to 3317");
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    let log = job.consume_with_sink_debug().await;

    let sum = |table: &str| {
        format!(
            "SELECT COUNT(*), CAST(SUM(CRC32(CONCAT(id, ':', note))) AS CHAR) FROM `{database}`.{table}"
        )
    };
    let source: Option<(u64, String)> = server.query_first(sum("src")).await.expect("source");
    let target: Option<(u64, String)> = server.query_first(sum("dst")).await.expect("target");
    assert_eq!(target, source, "every row, unchanged");
    assert_copy_turned_off(&log);
    job.assert_job_complete(1_000, 0).await;
}
