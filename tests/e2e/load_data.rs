//! The MySQL sink's bulk path: a `produce` batch goes to MariaDB by `LOAD DATA LOCAL INFILE`, kept only
//! when every row was inserted without a warning. Rows of every type but BIT arrive bit for bit; a batch over
//! rows the target already holds is rolled back and upserted (the version guard decides); a server that
//! refuses `LOCAL INFILE` gets every row by `INSERT`. (Source and target share a server in these tests; the
//! server would copy a batch itself when it may, see `copy_within.rs`, so the first test's target user may
//! not read the source, and the second test's batches over existing rows are refused that copy first.)

use crate::helpers::{private_server, DatabaseOn, TestJob};

/// The consumer's debug line for a load rolled back in favour of the upsert.
const NOT_CLEAN: &str = "LOAD DATA not clean";

#[tokio::test(flavor = "multi_thread")]
async fn every_type_but_bit_arrives_bit_for_bit_by_load_data() {
    let job = TestJob::new(1_000, 500).await;
    let rows = job.create_source(12_000).await;
    // BIT columns go by INSERT (LOAD DATA would read their text as characters): without one, every batch
    // of this table takes the bulk path.
    job.sql("ALTER TABLE src DROP COLUMN c_bit").await;
    job.sql("ALTER TABLE dst DROP COLUMN c_bit").await;
    // On one server the server would copy the batches itself: a target user who may not read the source
    // makes them go through the consumer, and so by LOAD DATA.
    let _user = job.target_user_without_source().await;

    job.produce(&[]).await;
    let log = job.consume_with_sink_debug().await;

    job.assert_target_equals_source().await;
    assert!(
        !log.contains(NOT_CLEAN),
        "every batch of new rows must load cleanly (no warning, every row inserted):\n{log}"
    );
    job.assert_job_complete(rows, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_rows_the_target_holds_is_upserted_under_the_version_guard() {
    let job = TestJob::new(1_000, 100).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(32) NOT NULL, \
         updated_at DATETIME(6) NOT NULL)",
    )
    .await;
    job.sql("CREATE TABLE dst LIKE src").await;
    job.sql(
        "INSERT INTO src SELECT seq, CONCAT('source ', seq), TIMESTAMP'2024-06-01 12:00:00.000001' \
         FROM seq_1_to_500",
    )
    .await;
    // Ids 1–100 newer in the target than in the source, 101–150 older; 151–500 absent.
    job.sql(
        "INSERT INTO dst SELECT seq, 'newer target row', TIMESTAMP'2024-06-01 12:00:00.000002' \
         FROM seq_1_to_100",
    )
    .await;
    job.sql(
        "INSERT INTO dst SELECT seq, 'older target row', TIMESTAMP'2024-06-01 12:00:00' \
         FROM seq_101_to_150",
    )
    .await;
    let toml = job
        .job_toml()
        .replace("key = \"id\"\n", "key = \"id\"\nversion = \"updated_at\"\n");
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    let log = job.consume_with_sink_debug().await;

    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM dst WHERE id <= 100 AND note = 'newer target row'")
            .await,
        100,
        "a newer target row survives the produce batch's older read"
    );
    assert_eq!(
        job.sql_u64(
            "SELECT COUNT(*) FROM src JOIN dst USING (id) WHERE src.id > 100 \
             AND BINARY src.note = BINARY dst.note AND src.updated_at = dst.updated_at"
        )
        .await,
        400,
        "older target rows are replaced and absent ones inserted"
    );
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, 500);
    // The first two batches (ids 1–200) met existing keys; the loads of the others were clean.
    assert_eq!(
        log.matches(NOT_CLEAN).count(),
        2,
        "the batches over existing rows are rolled back and upserted, the others kept:\n{log}"
    );
    job.assert_job_complete(500, 0).await;
}

/// The private MariaDB on port 3316 gets `local_infile` switched off for the test (nothing else there
/// depends on it), and back on at its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_refuses_local_infile_gets_every_row_by_insert() {
    let job = TestJob::new(1_000, 200).await;
    let (server_url, mut server) = private_server(3316).await;
    use mysql_async::prelude::Queryable;
    server
        .query_drop("SET GLOBAL local_infile = OFF")
        .await
        .expect("SET GLOBAL local_infile");
    let _restore = LocalInfileBackOn(server_url.clone());
    let database = job.database.clone();
    let _drop = DatabaseOn {
        server_url: server_url.clone(),
        database: database.clone(),
    };
    server
        .query_drop(format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4; \
             CREATE TABLE `{database}`.dst (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, \
             note VARCHAR(32) NOT NULL)"
        ))
        .await
        .expect("the target database on 3316");
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(32) NOT NULL)",
    )
    .await;
    job.sql("INSERT INTO src SELECT seq, CONCAT('n\\t', seq) FROM seq_1_to_1000")
        .await;
    let toml = format!(
        "name = \"{name}\"\ngroup_size = 1000\nbatch_size = 200\n\n\
         [source]\nurl = \"{source}\"\ntable = \"src\"\nkey = \"id\"\n\n\
         [target]\nkind = \"sql\"\nurl = \"{server_url}{database}\"\ntable = \"dst\"\n",
        name = job.name,
        source = job.database_url,
    );
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    let log = job.consume_with_sink_debug().await;

    let (count, sum): (u64, String) = server
        .query_first(format!(
            "SELECT COUNT(*), CAST(SUM(CRC32(CONCAT(id, ':', note))) AS CHAR) FROM `{database}`.dst"
        ))
        .await
        .expect("count the target")
        .expect("a row");
    let source_sum: String = job
        .conn()
        .await
        .query_first("SELECT CAST(SUM(CRC32(CONCAT(id, ':', note))) AS CHAR) FROM src")
        .await
        .expect("sum the source")
        .expect("a row");
    assert_eq!((count, sum), (1000, source_sum), "every row, unchanged");
    assert_eq!(
        log.matches("refuses LOAD DATA LOCAL INFILE").count(),
        1,
        "the refusal is said once, then every batch goes by INSERT:\n{log}"
    );
    job.assert_job_complete(1000, 0).await;
}

/// Switches `local_infile` back on on the server of its URL, whatever the outcome.
struct LocalInfileBackOn(String);

impl Drop for LocalInfileBackOn {
    fn drop(&mut self) {
        let server_url = self.0.clone();
        crate::helpers::clean_up(format!("local_infile on {server_url}"), async move {
            let restored = async {
                use mysql_async::prelude::Queryable;
                let mut c = mysql_async::Conn::from_url(server_url.as_str()).await?;
                c.query_drop("SET GLOBAL local_infile = ON").await?;
                c.disconnect().await
            };
            if let Err(e) = restored.await {
                eprintln!("cleanup: local_infile on {server_url}: {e}");
            }
        });
    }
}
