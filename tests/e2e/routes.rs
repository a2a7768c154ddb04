//! Sharded targets on MariaDB: `{col % N}` with a database part, `{col:FORMAT}` and `[target.ranges]`. Rows
//! land in the table their route names, each table holds exactly the source's rows of its shard, rows
//! without a route (NULL, outside every range) or refused by their shard table are `failed` with the reason,
//! and the ledger stays per source id.

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::Queryable;
use redis::AsyncCommands;

use crate::helpers::{clean_up, drop_database, Bits, TestJob};

const ROWS: u64 = 4_000;

/// `src(id, user_id, created_at, amount, note)`: `user_id` from -7 to 8 with NULL on every 50th row,
/// `created_at` over six months of 2024 with NULL on every 61st row, a note too long for one shard table on
/// every 97th row.
async fn create_orders(job: &TestJob) {
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, user_id INT NULL, \
         created_at DATETIME(6) NULL, amount DECIMAL(12,2) NOT NULL, note VARCHAR(64) NOT NULL)",
    )
    .await;
    job.sql(&format!(
        "INSERT INTO src SELECT seq * 3, IF(seq % 50 = 0, NULL, CAST(seq % 16 AS SIGNED) - 7), \
         IF(seq % 61 = 0, NULL, TIMESTAMP'2024-01-01 00:00:00' + INTERVAL (seq * 3779) % 15638400 SECOND \
         + INTERVAL seq MICROSECOND), seq * 1.25 - 999, \
         IF(seq % 97 = 0, CONCAT('a note much too long for shard three ', seq), CONCAT('n', seq)) \
         FROM seq_1_to_{ROWS}"
    ))
    .await;
}

/// The ledger's `failed` hash: id → reason.
async fn failed(job: &TestJob) -> BTreeMap<u64, String> {
    let mut redis = job.redis.clone();
    let raw: BTreeMap<String, String> = redis
        .hgetall(job.job_key("failed"))
        .await
        .expect("HGETALL failed");
    raw.into_iter()
        .map(|(id, v)| {
            let v: serde_json::Value = serde_json::from_str(&v).expect("failed entry is JSON");
            (
                id.parse().expect("failed field is an id"),
                v["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every group's `tgt` bits, as ids.
async fn target_bits(job: &TestJob) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for first in job.groups().await {
        ids.extend(job.bitmap_ids(first, Bits::Tgt).await);
    }
    ids
}

/// Extra databases of a test (the shards' own), dropped at the end.
struct Databases {
    url: String,
    names: Vec<String>,
}

impl Databases {
    async fn create(job: &TestJob, names: Vec<String>) -> Self {
        for name in &names {
            job.sql(&format!("CREATE DATABASE `{name}`")).await;
        }
        Self {
            url: job.services.mysql_url.clone(),
            names,
        }
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        let (url, names) = (self.url.clone(), self.names.clone());
        clean_up("the shards' databases", async move {
            for name in names {
                drop_database(&url, &name).await;
            }
        });
    }
}

fn job_file(job: &TestJob, target: &str) -> String {
    format!(
        r#"name = "{name}"
group_size = 1000
batch_size = 250

[source]
url = "{url}"
table = "src"
key = "id"

[target]
kind = "sql"
url = "{url}"
{target}
"#,
        name = job.name,
        url = job.database_url,
    )
}

/// Rows per table as `(table, count)` from `query` (a `SELECT name, COUNT(*) … GROUP BY 1`).
async fn counts(job: &TestJob, query: &str) -> BTreeMap<String, u64> {
    job.conn()
        .await
        .query::<(String, u64), _>(query)
        .await
        .unwrap_or_else(|e| panic!("{query}\n→ {e}"))
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_mod_routes_fan_a_batch_out_to_tables_in_two_databases() {
    let job = TestJob::new(1_000, 250).await;
    create_orders(&job).await;
    let shards = Databases::create(
        &job,
        vec![
            format!("{}_s0", job.database),
            format!("{}_s1", job.database),
        ],
    )
    .await;
    for db in &shards.names {
        for t in 0..4 {
            job.sql(&format!("CREATE TABLE `{db}`.orders_{t} LIKE src"))
                .await;
        }
    }
    // One shard table refuses long notes: its bad rows fail, the rest of its rows land.
    job.sql(&format!(
        "ALTER TABLE `{}_s1`.orders_3 MODIFY note VARCHAR(8) NOT NULL",
        job.database
    ))
    .await;
    job.write_file(
        "job.toml",
        &job_file(
            &job,
            &format!(
                "table = \"{}_s{{user_id % 2}}.orders_{{user_id % 4}}\"",
                job.database
            ),
        ),
    );

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;

    // Negative user ids go where rem_euclid sends them: -7 % 4 → 1, -7 % 2 → 1.
    let expected = counts(
        &job,
        &format!(
            "SELECT CONCAT('{db}_s', MOD(MOD(user_id, 2) + 2, 2), '.orders_', MOD(MOD(user_id, 4) + 4, 4)), \
             COUNT(*) FROM src WHERE user_id IS NOT NULL \
             AND NOT (MOD(MOD(user_id, 4) + 4, 4) = 3 AND CHAR_LENGTH(note) > 8) GROUP BY 1",
            db = job.database
        ),
    )
    .await;
    let mut landed = BTreeMap::new();
    for db in &shards.names {
        for t in 0..4 {
            let table = format!("{db}.orders_{t}");
            let n = job
                .sql_u64(&format!("SELECT COUNT(*) FROM `{db}`.orders_{t}"))
                .await;
            if n > 0 {
                landed.insert(table, n);
            }
        }
    }
    assert_eq!(landed, expected, "rows per shard table");
    assert_eq!(expected.len(), 4, "user_id % 2 and % 4 agree: four tables");

    // Every landed row is its source row, in the table its user_id names.
    for table in expected.keys() {
        let (db, t) = table.split_once('.').unwrap();
        let differing = job
            .sql_u64(&format!(
                "SELECT COUNT(*) FROM `{db}`.`{t}` d LEFT JOIN src s ON s.id = d.id \
                 WHERE NOT (s.user_id <=> d.user_id AND s.created_at <=> d.created_at \
                 AND s.amount <=> d.amount AND BINARY s.note <=> BINARY d.note) \
                 OR CONCAT('{db}.orders_', MOD(MOD(d.user_id, 4) + 4, 4)) <> '{table}'"
            ))
            .await;
        assert_eq!(
            differing, 0,
            "{table}: rows that differ from their source row or are misrouted"
        );
    }

    // The ledger per source id: NULL user ids and long notes on shard 3 failed with their reasons, the
    // rest landed.
    let failed = failed(&job).await;
    let null_ids: BTreeSet<u64> = job
        .sql_ids("SELECT id FROM src WHERE user_id IS NULL")
        .await
        .into_iter()
        .collect();
    let long_ids: BTreeSet<u64> = job
        .sql_ids(
            "SELECT id FROM src WHERE MOD(MOD(user_id, 4) + 4, 4) = 3 AND CHAR_LENGTH(note) > 8",
        )
        .await
        .into_iter()
        .collect();
    assert!(!null_ids.is_empty() && !long_ids.is_empty());
    for id in &null_ids {
        assert!(
            failed
                .get(id)
                .is_some_and(|r| r.contains("`user_id` is NULL")),
            "id {id} (NULL user_id): {:?}",
            failed.get(id)
        );
    }
    for id in &long_ids {
        assert!(
            failed.get(id).is_some_and(|r| r.contains("Data too long")),
            "id {id} (long note on shard 3): {:?}",
            failed.get(id)
        );
    }
    assert_eq!(failed.len(), null_ids.len() + long_ids.len(), "{failed:?}");
    let all: BTreeSet<u64> = job.ids_of("src").await.into_iter().collect();
    let landed_ids: BTreeSet<u64> = all
        .difference(&null_ids)
        .copied()
        .collect::<BTreeSet<_>>()
        .difference(&long_ids)
        .copied()
        .collect();
    assert_eq!(
        target_bits(&job).await,
        landed_ids,
        "tgt bits = the ids that landed"
    );
    let (code, report) = job.report().await;
    assert_eq!(code, 3, "failed rows make the job incomplete: {report}");
    assert_eq!(report["failed_ids"].as_u64(), Some(failed.len() as u64));
    assert_eq!(report["missing_ids"].as_u64(), Some(0), "{report}");
    assert_eq!(report["target_ids"].as_u64(), Some(landed_ids.len() as u64));
}

#[tokio::test(flavor = "multi_thread")]
async fn time_routes_put_each_row_in_its_month_table() {
    let job = TestJob::new(1_000, 250).await;
    create_orders(&job).await;
    for month in 1..=6 {
        job.sql(&format!("CREATE TABLE orders_2024{month:02} LIKE src"))
            .await;
    }
    job.write_file(
        "job.toml",
        &job_file(&job, "table = \"orders_{created_at:%Y%m}\""),
    );

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    let expected = counts(
        &job,
        "SELECT CONCAT('orders_', DATE_FORMAT(created_at, '%Y%m')), COUNT(*) FROM src \
         WHERE created_at IS NOT NULL GROUP BY 1",
    )
    .await;
    assert_eq!(expected.len(), 6, "six months of rows: {expected:?}");
    for (table, want) in &expected {
        let got = job
            .sql_u64(&format!("SELECT COUNT(*) FROM `{table}`"))
            .await;
        assert_eq!(got, *want, "rows in {table}");
        let misplaced = job
            .sql_u64(&format!(
                "SELECT COUNT(*) FROM `{table}` d JOIN src s ON s.id = d.id \
                 WHERE CONCAT('orders_', DATE_FORMAT(s.created_at, '%Y%m')) <> '{table}' \
                 OR NOT (s.created_at <=> d.created_at AND s.note <=> d.note)"
            ))
            .await;
        assert_eq!(misplaced, 0, "{table}: misrouted or changed rows");
    }
    let null_ids: BTreeSet<u64> = job
        .sql_ids("SELECT id FROM src WHERE created_at IS NULL")
        .await
        .into_iter()
        .collect();
    let failed = failed(&job).await;
    assert_eq!(failed.keys().copied().collect::<BTreeSet<_>>(), null_ids);
    assert!(
        failed.values().all(|r| r.contains("`created_at` is NULL")),
        "{failed:?}"
    );
    assert_eq!(
        target_bits(&job).await.len() as u64,
        ROWS - null_ids.len() as u64,
        "tgt bits: every row with a date"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn id_ranges_send_each_key_to_its_table_and_a_key_outside_every_range_stops_the_plan() {
    let job = TestJob::new(1_000, 250).await;
    create_orders(&job).await;
    for t in ["r_low", "r_mid", "r_high"] {
        job.sql(&format!("CREATE TABLE {t} LIKE src")).await;
    }
    // Source ids are 3..=12000; 5001..=5999 are in no range: known at plan time, so the producer refuses
    // the job (the issue's rule) before it stores or publishes anything.
    job.write_file(
        "job.toml",
        &job_file(
            &job,
            "[target.ranges]\n\"6000..99999\" = \"r_high\"\n\"0..2999\" = \"r_low\"\n\"3000..5000\" = \"r_mid\"",
        ),
    );
    let first_gap_id = job
        .sql_u64("SELECT MIN(id) FROM src WHERE id BETWEEN 5001 AND 5999")
        .await;
    let refused = job
        .run(crate::helpers::Bin::Producer, &["--job", job.job_arg()])
        .await;
    refused.expect_code(2);
    assert!(
        refused
            .stderr
            .contains(&format!("no table for key {first_gap_id}")),
        "the error names the first key without a table\n{}",
        refused.describe()
    );
    assert!(job.groups().await.is_empty(), "nothing planned");
    assert_eq!(
        job.message_count(&format!("bitmig.{}.work", job.name))
            .await
            .unwrap_or(0),
        0,
        "nothing published"
    );

    // The operator closes the gap; the same job name now runs (no spec was stored by the refused run).
    job.write_file(
        "job.toml",
        &job_file(
            &job,
            "[target.ranges]\n\"6000..99999\" = \"r_high\"\n\"0..2999\" = \"r_low\"\n\"3000..5999\" = \"r_mid\"",
        ),
    );
    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;

    for (table, lo, hi) in [
        ("r_low", 0, 2999),
        ("r_mid", 3000, 5999),
        ("r_high", 6000, 99999),
    ] {
        let want = job
            .sql_u64(&format!(
                "SELECT COUNT(*) FROM src WHERE id BETWEEN {lo} AND {hi}"
            ))
            .await;
        let got = job.sql_u64(&format!("SELECT COUNT(*) FROM {table}")).await;
        let outside = job
            .sql_u64(&format!(
                "SELECT COUNT(*) FROM {table} WHERE id NOT BETWEEN {lo} AND {hi}"
            ))
            .await;
        assert!(want > 0);
        assert_eq!(
            (got, outside),
            (want, 0),
            "{table}: rows, rows outside its range"
        );
    }
    assert!(failed(&job).await.is_empty());
    let all: BTreeSet<u64> = job.ids_of("src").await.into_iter().collect();
    assert_eq!(target_bits(&job).await, all);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_column_the_source_does_not_read_stops_the_consumer_with_exit_2() {
    let job = TestJob::new(1_000, 250).await;
    create_orders(&job).await;
    job.write_file(
        "job.toml",
        &job_file(&job, "table = \"orders_{customer_id % 4}\""),
    );
    let done = job
        .run(
            crate::helpers::Bin::Consumer,
            &["--job", job.job_arg(), "--exit-when-idle", "1"],
        )
        .await;
    done.expect_code(2);
    assert!(
        done.stderr
            .contains("`customer_id` is not among the columns"),
        "{}",
        done.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_version_column_a_newer_target_row_survives_an_older_redelivery() {
    let job = TestJob::new(1_000, 100).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(32) NULL, \
         amount INT NULL, updated_at DATETIME(6) NULL)",
    )
    .await;
    job.sql("CREATE TABLE dst LIKE src").await;
    job.sql(
        "INSERT INTO src SELECT seq, CONCAT('source ', seq), seq, \
         IF(seq % 10 = 0, NULL, TIMESTAMP'2024-06-01 12:00:00.000001') FROM seq_1_to_500",
    )
    .await;
    // Already in the target: newer rows (1..=100), older ones (101..=200), equal versions (201..=250) and
    // rows without a version (251..=300).
    job.sql(
        "INSERT INTO dst SELECT seq, 'newer target row', -1, TIMESTAMP'2024-06-01 12:00:00.000002' \
         FROM seq_1_to_100",
    )
    .await;
    job.sql(
        "INSERT INTO dst SELECT seq, 'older target row', -2, TIMESTAMP'2024-06-01 12:00:00' \
         FROM seq_101_to_200",
    )
    .await;
    job.sql("INSERT INTO dst SELECT seq, 'same version', -3, TIMESTAMP'2024-06-01 12:00:00.000001' FROM seq_201_to_250")
        .await;
    job.sql("INSERT INTO dst SELECT seq, 'no version', -4, NULL FROM seq_251_to_300")
        .await;
    let toml = job
        .job_toml()
        .replace("key = \"id\"", "key = \"id\"\nversion = \"updated_at\"");
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    // Ids 1..=100 whose source version is older keep the target's row whole; ids 10, 20, …, 100 have a
    // NULL source version, which never replaces a versioned row.
    let kept = job
        .sql_u64(
            "SELECT COUNT(*) FROM dst WHERE id <= 100 AND note = 'newer target row' AND amount = -1 \
             AND updated_at = TIMESTAMP'2024-06-01 12:00:00.000002'",
        )
        .await;
    assert_eq!(
        kept, 100,
        "newer target rows must survive the older source rows"
    );
    // Every other id holds its source row, except versioned target rows facing a NULL source version.
    let differing = job
        .sql_ids(
            "SELECT s.id FROM src s JOIN dst d ON d.id = s.id WHERE s.id > 100 \
             AND NOT (s.note <=> d.note AND s.amount <=> d.amount AND s.updated_at <=> d.updated_at) \
             ORDER BY s.id",
        )
        .await;
    let expected: Vec<u64> = (101..=250).filter(|id| id % 10 == 0).collect();
    assert_eq!(
        differing, expected,
        "older, equal and unversioned target rows are replaced; a NULL source version replaces none"
    );
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, 500);
    // Kept rows count as landed: the target holds their newest version.
    job.assert_job_complete(500, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_racing_to_create_the_same_routed_tables_create_each_once() {
    let job = TestJob::new(1_000, 100).await;
    create_orders(&job).await;
    job.write_file(
        "job.toml",
        &job_file(&job, "table = \"orders_{user_id % 8}\"\ncreate = true"),
    );

    job.produce(&[]).await;
    // Both start at once and take their first batches together: every table is created by both.
    job.consume_until_idle(2, &["--concurrency", "4"]).await;

    let tables = job
        .sql_ids(&format!(
            "SELECT CAST(SUBSTRING(TABLE_NAME, 8) AS UNSIGNED) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME LIKE 'orders\\_%' ORDER BY 1",
            job.database
        ))
        .await;
    assert_eq!(tables, (0..8).collect::<Vec<u64>>(), "one table per bucket");
    let expected = counts(
        &job,
        "SELECT CONCAT('orders_', MOD(MOD(user_id, 8) + 8, 8)), COUNT(*) FROM src \
         WHERE user_id IS NOT NULL GROUP BY 1",
    )
    .await;
    for (table, want) in &expected {
        let got = job
            .sql_u64(&format!("SELECT COUNT(*) FROM `{table}`"))
            .await;
        assert_eq!(got, *want, "rows in {table}");
        let differing = job
            .sql_u64(&format!(
                "SELECT COUNT(*) FROM `{table}` d JOIN src s ON s.id = d.id WHERE NOT (s.user_id <=> d.user_id \
                 AND s.created_at <=> d.created_at AND s.amount <=> d.amount AND BINARY s.note <=> BINARY d.note)"
            ))
            .await;
        assert_eq!(differing, 0, "{table}: rows that differ from the source");
    }
    // LIKE copied the source's definition, primary key included.
    let (_, ddl): (String, String) = job
        .conn()
        .await
        .query_first("SHOW CREATE TABLE orders_3")
        .await
        .unwrap()
        .unwrap();
    assert!(
        ddl.contains("PRIMARY KEY (`id`)") && ddl.contains("decimal(12,2)"),
        "{ddl}"
    );
    let null_ids = job
        .sql_ids("SELECT id FROM src WHERE user_id IS NULL")
        .await;
    assert_eq!(
        failed(&job).await.keys().copied().collect::<Vec<_>>(),
        null_ids,
        "only rows without a user_id failed"
    );
    assert_eq!(
        target_bits(&job).await.len() as u64,
        ROWS - null_ids.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_created_for_some_columns_keep_their_source_types_and_the_key() {
    let job = TestJob::new(1_000, 250).await;
    create_orders(&job).await;
    let mut toml = job_file(&job, "table = \"archive_{created_at:%Y%m}\"\ncreate = true");
    toml = toml.replace(
        "key = \"id\"",
        "key = \"id\"\ncolumns = [\"id\", \"created_at\", \"amount\", \"note\"]",
    );
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    let column_types = |table: &str| {
        format!(
            "SELECT CONCAT_WS(' ', COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, IFNULL(COLLATION_NAME, '-'), COLUMN_KEY) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = '{table}' \
             AND COLUMN_NAME <> 'user_id' ORDER BY ORDINAL_POSITION",
            job.database
        )
    };
    let source: Vec<String> = job.conn().await.query(column_types("src")).await.unwrap();
    for month in 1..=6 {
        let table = format!("archive_2024{month:02}");
        let created: Vec<String> = job.conn().await.query(column_types(&table)).await.unwrap();
        assert_eq!(
            created, source,
            "{table}: the columns read, as the source has them, id the primary key"
        );
        let want = job
            .sql_u64(&format!(
                "SELECT COUNT(*) FROM src WHERE DATE_FORMAT(created_at, '%Y%m') = '2024{month:02}'"
            ))
            .await;
        let got = job.sql_u64(&format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!(got, want, "rows in {table}");
    }
}
