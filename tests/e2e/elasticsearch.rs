//! The Elasticsearch target.
//!
//! The pipeline tests run the real programs against the cluster of `helpers::es` (osmem-server started by
//! `scripts/services --with-es`, or a real cluster at `BITMIG_TEST_ES_URL`): monthly indices whose counts
//! and documents equal the source, mapping errors isolated into `failed`, external versions that keep a
//! newer document. The sink tests drive `bitmig_shared`'s sink in-process against `helpers::es_double`
//! for what no server produces on demand: 429 items, a 503, a half-failed bulk, a timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitmig_shared::job::JobSpec;
use bitmig_shared::sink::elasticsearch::{EsOptions, EsSink, RetryPolicy};
use bitmig_shared::sink::{self, Sink, SinkError, WriteOutcome};
use bitmig_shared::value::{Column, ColumnType, Row, RowSet, Value};
use mysql_async::prelude::Queryable;
use redis::AsyncCommands;
use serde_json::{json, Value as J};

use crate::helpers::es::Es;
use crate::helpers::es_double::{EsDouble, Reply, Request};
use crate::helpers::{Bin, TestJob};

// ---- the pipeline against a cluster ---------------------------------------------------------------------

/// Rows of the monthly-index test: 1 000 a month. The 100 000 rows would take over a minute
/// here: osmem-server indexes about 1 700 documents/s on the 2-core machines (8 bulk requests of 1 000 in
/// flight), and 30 000 rows took 58 s end to end. Batches, routing and versions take the same path.
const MONTHLY_ROWS: u64 = 12_000;

#[tokio::test(flavor = "multi_thread")]
async fn rows_land_in_monthly_indices_and_each_document_equals_its_row() {
    let job = TestJob::new(10_000, 1_000).await;
    let es = Es::connect(&job.name).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, user_id INT NOT NULL, \
         amount DECIMAL(12,2) NULL, price DOUBLE NULL, weight FLOAT NULL, note VARCHAR(64) NULL, \
         tags JSON NULL, photo VARBINARY(16) NULL, flags BIT(12) NULL, yr YEAR NULL, ship_time TIME(6) NULL, \
         created_at DATETIME NOT NULL, paid_at TIMESTAMP(6) NULL, updated_at DATETIME(3) NOT NULL, \
         secret VARCHAR(32) NULL) DEFAULT CHARSET = utf8mb4",
    )
    .await;
    let mut conn = utc_conn(&job).await;
    conn.query_drop(format!(
        "INSERT INTO src SELECT seq, seq % 1000 - 500, \
           IF(seq % 17 = 0, NULL, (seq * 7919 % 10000000) / 100), \
           IF(seq % 19 = 0, NULL, seq / 7 * 1.37e-3), \
           IF(seq % 23 = 0, NULL, seq / 3), \
           IF(seq % 11 = 0, NULL, CONCAT('note \"', seq, '\" é\\n\\t', REPEAT('x', seq % 5))), \
           IF(seq % 13 = 0, NULL, JSON_OBJECT('seq', seq, 'big', 9007199254740993, 'list', JSON_ARRAY(1, 'two'))), \
           IF(seq % 7 = 0, NULL, LEFT(UNHEX(SHA1(seq)), seq % 17)), \
           IF(seq % 29 = 0, NULL, seq % 4096), \
           IF(seq % 31 = 0, NULL, 1901 + seq % 254), \
           IF(seq % 37 = 0, NULL, SEC_TO_TIME(seq % 3000000 - 1000000) + INTERVAL (seq % 3) * 250000 MICROSECOND), \
           '2023-01-01' + INTERVAL (seq * 7919 % 31536000) SECOND, \
           IF(seq % 41 = 0, NULL, FROM_UNIXTIME(1700000000 + seq) + INTERVAL (seq % 7) * 100001 MICROSECOND), \
           '2024-06-01' + INTERVAL seq SECOND + INTERVAL (seq % 1000) * 1000 MICROSECOND, \
           CONCAT('secret', seq) \
         FROM (SELECT CAST(seq AS SIGNED) AS seq FROM seq_1_to_{MONTHLY_ROWS}) AS g"
    ))
    .await
    .expect("insert the source rows");
    job.write_es_job(
        &es.url,
        &format!("{}_{{created_at:%Y%m}}", job.name),
        "version = \"updated_at\"",
        "exclude = [\"secret\"]",
    );

    let started = Instant::now();
    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;
    eprintln!(
        "{MONTHLY_ROWS} rows produced and indexed in {:?}",
        started.elapsed()
    );
    es.refresh().await;
    // A fresh connection: the pipeline ran long enough for an idle one to be dropped.
    drop(conn);
    let mut conn = utc_conn(&job).await;

    // One index per month of created_at, holding exactly that month's rows.
    let months: Vec<(String, u64)> = conn
        .query("SELECT DATE_FORMAT(created_at, '%Y%m') m, COUNT(*) FROM src GROUP BY m ORDER BY m")
        .await
        .expect("rows per month");
    assert_eq!(months.len(), 12, "the generator spreads rows over 2023");
    let expected_indices: Vec<String> = months
        .iter()
        .map(|(m, _)| format!("{}_{m}", job.name))
        .collect();
    assert_eq!(es.indices().await, expected_indices);
    for (month, rows) in &months {
        let index = format!("{}_{month}", job.name);
        assert_eq!(es.count(&index).await, *rows, "_count of {index}");
    }

    // Every document equals its row, in the index of its month.
    let expected = expected_documents(&job, &mut conn).await;
    assert_eq!(expected.len() as u64, MONTHLY_ROWS);
    let keys: Vec<(String, u64)> = expected
        .iter()
        .map(|(id, (index, _, _))| (index.clone(), *id))
        .collect();
    let found = es.sources(&keys).await;
    let mut wrong = Vec::new();
    for ((id, (index, want, weight)), got) in expected.iter().zip(found) {
        let Some(mut got) = got else {
            wrong.push(format!("id {id}: no document in {index}"));
            continue;
        };
        // FLOAT: the document's number must read back as the very same f32.
        let got_weight = got
            .as_object_mut()
            .and_then(|o| o.remove("weight"))
            .unwrap_or(J::Null);
        let weight_ok = match weight {
            None => got_weight.is_null(),
            Some(w) => got_weight.as_f64().map(|g| g as f32) == Some(*w),
        };
        if got != *want || !weight_ok {
            wrong.push(format!(
                "id {id} in {index}:\n  want {want} weight {weight:?}\n  got  {got} weight {got_weight}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} documents differ from their rows; the first:\n{}",
        wrong.len(),
        expected.len(),
        wrong.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );

    job.assert_job_complete(MONTHLY_ROWS, 0).await;
}

/// A connection whose session reads TIMESTAMPs in UTC, as the source does.
async fn utc_conn(job: &TestJob) -> mysql_async::Conn {
    let mut conn = job.conn().await;
    conn.query_drop("SET time_zone = '+00:00'")
        .await
        .expect("set the session time zone");
    conn
}

/// Each row as the document the value mapping promises, formatted by the database itself; with its
/// index and its FLOAT `weight` aside (compared as an f32).
async fn expected_documents(
    job: &TestJob,
    conn: &mut mysql_async::Conn,
) -> BTreeMap<u64, (String, J, Option<f32>)> {
    let mariadb = conn
        .query_first::<String, _>("SELECT VERSION()")
        .await
        .expect("VERSION()")
        .is_some_and(|v| v.contains("MariaDB"));
    let dt = |c: &str, zone: &str| {
        format!(
            "IF(MICROSECOND({c}) = 0, DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s{zone}'), \
             DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s.%f{zone}'))"
        )
    };
    let query = format!(
        "SELECT id, user_id, CAST(amount AS CHAR), price, weight, note, tags, \
           REPLACE(TO_BASE64(photo), '\\n', ''), CAST(flags AS UNSIGNED), yr, \
           IF(MICROSECOND(ship_time) = 0, TIME_FORMAT(ship_time, '%H:%i:%s'), TIME_FORMAT(ship_time, '%H:%i:%s.%f')), \
           {}, {}, {}, DATE_FORMAT(created_at, '%Y%m') \
         FROM src ORDER BY id",
        dt("created_at", ""),
        dt("paid_at", "Z"),
        dt("updated_at", ""),
    );
    let rows: Vec<mysql_async::Row> = conn.exec(query, ()).await.expect("expected documents");
    let mut out = BTreeMap::new();
    for mut row in rows {
        let text = |row: &mut mysql_async::Row, i: usize| -> J {
            row.take::<Option<String>, _>(i)
                .expect("a column")
                .map_or(J::Null, J::String)
        };
        let id: u64 = row.take(0).expect("id");
        let tags = match row.take::<Option<String>, _>(6).expect("tags") {
            None => J::Null,
            // MariaDB sends JSON columns as LONGTEXT: the source sees text, and a string is indexed.
            Some(t) if mariadb => J::String(t),
            Some(t) => serde_json::from_str(&t).expect("tags is JSON"),
        };
        let doc = json!({
            "id": id,
            "user_id": row.take::<i64, _>(1).expect("user_id"),
            "amount": text(&mut row, 2),
            "price": row.take::<Option<f64>, _>(3).expect("price"),
            "note": text(&mut row, 5),
            "tags": tags,
            "photo": text(&mut row, 7),
            "flags": row.take::<Option<u64>, _>(8).expect("flags"),
            "yr": row.take::<Option<u64>, _>(9).expect("yr"),
            "ship_time": text(&mut row, 10),
            "created_at": text(&mut row, 11),
            "paid_at": text(&mut row, 12),
            "updated_at": text(&mut row, 13),
        });
        let weight: Option<f32> = row.take(4).expect("weight");
        let month: String = row.take(14).expect("month");
        out.insert(id, (format!("{}_{month}", job.name), doc, weight));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_the_mapping_refuses_land_in_failed_and_the_rest_in_the_index() {
    let job = TestJob::new(10_000, 1_000).await;
    let es = Es::connect(&job.name).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, amount VARCHAR(16) NOT NULL, \
         created_at DATETIME NULL)",
    )
    .await;
    // Every 10th amount is not a number; every 97th row has no date to route by.
    job.sql(
        "INSERT INTO src SELECT seq, IF(seq % 10 = 0, 'n/a', seq), \
         IF(seq % 97 = 0, NULL, '2024-01-01' + INTERVAL seq MINUTE) FROM seq_1_to_1000",
    )
    .await;
    let index = format!("{}_202401", job.name);
    es.create_index(
        &index,
        json!({"dynamic": "strict", "properties": {
            "id": {"type": "long"}, "amount": {"type": "integer"}, "created_at": {"type": "date"}}}),
    )
    .await;
    job.write_es_job(
        &es.url,
        &format!("{}_{{created_at:%Y%m}}", job.name),
        "",
        "",
    );

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    es.refresh().await;

    let no_number: BTreeSet<u64> = (1..=1000)
        .filter(|id| id % 10 == 0 && id % 97 != 0)
        .collect();
    let no_date: BTreeSet<u64> = (1..=1000).filter(|id| id % 97 == 0).collect();
    let refused = no_number.len() + no_date.len();
    assert_eq!(es.count(&index).await, 1000 - refused as u64);
    assert_eq!(es.indices().await, vec![index.clone()]);
    assert_eq!(es.get(&index, 10).await, None);
    assert_eq!(
        es.get(&index, 11).await.map(|(doc, _)| doc),
        Some(json!({"id": 11, "amount": "11", "created_at": "2024-01-01T00:11:00"}))
    );

    let mut redis = job.redis.clone();
    let failed: HashMap<u64, String> = redis
        .hgetall(job.job_key("failed"))
        .await
        .expect("HGETALL failed");
    let failed_ids: BTreeSet<u64> = failed.keys().copied().collect();
    assert_eq!(
        failed_ids,
        no_number.union(&no_date).copied().collect::<BTreeSet<_>>()
    );
    for (id, entry) in &failed {
        let entry: J = serde_json::from_str(entry).expect("a failed entry is JSON");
        let reason = entry["reason"].as_str().unwrap_or_default();
        let want = if no_date.contains(id) {
            "route column `created_at` is NULL"
        } else {
            "mapper_parsing_exception: failed to parse field [amount]"
        };
        assert!(
            reason.contains(want),
            "failed[{id}] = {entry}: want {want:?}"
        );
    }

    // Failed ids are not missing: a pass re-drives nothing, and the report says what is wrong.
    let pass = job.compensate(Some("0s")).await;
    assert_eq!(pass["republished_ids"].as_u64(), Some(0), "{pass}");
    let (code, report) = job.report().await;
    assert_eq!(code, 3, "{report}");
    assert_eq!(
        report["failed_ids"].as_u64(),
        Some(refused as u64),
        "{report}"
    );
    assert_eq!(report["missing_ids"].as_u64(), Some(0), "{report}");
    assert_eq!(
        report["target_ids"].as_u64(),
        Some(1000 - refused as u64),
        "{report}"
    );
    let text = job
        .run(Bin::Compensator, &["report", "--job", job.job_arg()])
        .await;
    text.expect_code(3);
    let shown = format!("{}{}", text.stdout, text.stderr);
    assert!(
        shown.contains(&refused.to_string()) && shown.contains(&job.job_key("failed")),
        "the text report names the failed count and where to read them\n{}",
        text.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_version_never_replaces_a_newer_document() {
    let job = TestJob::new(10_000, 1_000).await;
    let es = Es::connect(&job.name).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, name VARCHAR(32) NOT NULL, \
         updated_at DATETIME(3) NOT NULL)",
    )
    .await;
    job.sql(
        "INSERT INTO src SELECT seq, CONCAT('row ', seq), \
         '2024-03-01' + INTERVAL seq SECOND + INTERVAL seq * 1000 MICROSECOND FROM seq_1_to_300",
    )
    .await;
    let index = format!("{}_docs", job.name);
    let mut conn = utc_conn(&job).await;
    let version_of = |id: u64| {
        format!("SELECT CAST(ROUND(UNIX_TIMESTAMP(updated_at) * 1000) AS UNSIGNED) FROM src WHERE id = {id}")
    };
    let v7: u64 = conn.query_first(version_of(7)).await.unwrap().unwrap();
    let v8: u64 = conn.query_first(version_of(8)).await.unwrap().unwrap();
    assert_eq!(
        v7, 1_709_251_207_007,
        "2024-03-01T00:00:07.007Z in epoch ms"
    );
    // A newer write already landed for 7 (as if the source changed and was indexed since the read being
    // redelivered); 8 holds an older version that the pipeline must replace.
    let newer = json!({"id": 7, "name": "newer than the redelivered row", "updated_at": "2024-03-02T00:00:00"});
    es.put_versioned(&index, 7, v7 + 60_000, &newer).await;
    es.put_versioned(&index, 8, v8 - 60_000, &json!({"id": 8, "name": "stale"}))
        .await;
    job.write_es_job(&es.url, &index, "version = \"updated_at\"", "");

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    es.refresh().await;

    assert_eq!(es.get(&index, 7).await, Some((newer, v7 + 60_000)));
    assert_eq!(
        es.get(&index, 8).await,
        Some((
            json!({"id": 8, "name": "row 8", "updated_at": "2024-03-01T00:00:08.008000"}),
            v8
        ))
    );
    assert_eq!(es.count(&index).await, 300);
    // The conflict on 7 is the newer document being there: 7 is landed, not failed or missing.
    job.assert_job_complete(300, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_exits_1_naming_the_url_without_credentials_when_nothing_answers() {
    let job = TestJob::new(10_000, 1_000).await;
    job.sql("CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, created_at DATETIME)")
        .await;
    // Port 9 (discard) on loopback: nothing listens there.
    job.write_es_job("http://elastic:hunter2@127.0.0.1:9", "orders", "", "");
    let done = job
        .run(
            Bin::Consumer,
            &["--job", job.job_arg(), "--exit-when-idle", "1"],
        )
        .await;
    done.expect_code(1);
    assert!(
        done.stderr
            .contains("cannot reach Elasticsearch at http://127.0.0.1:9/")
            && !done.stderr.contains("hunter2")
            && !done.stdout.contains("hunter2"),
        "{}",
        done.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_exits_2_when_the_cluster_refuses_its_credentials() {
    let job = TestJob::new(10_000, 1_000).await;
    job.sql("CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, created_at DATETIME)")
        .await;
    let double = EsDouble::start_with_root(
        Reply::error(
            401,
            "security_exception",
            "unable to authenticate user [elastic]",
        ),
        |_, _| Reply::error(401, "security_exception", "unable to authenticate"),
    )
    .await;
    let url = double.url.replace("http://", "http://elastic:hunter2@");
    job.write_es_job(&url, "orders", "", "");
    let done = job
        .run(
            Bin::Consumer,
            &["--job", job.job_arg(), "--exit-when-idle", "1"],
        )
        .await;
    done.expect_code(2);
    assert!(
        done.stderr.contains(&double.url)
            && done
                .stderr
                .contains("unable to authenticate user [elastic]")
            && !done.stderr.contains("hunter2"),
        "{}",
        done.describe()
    );
    assert_eq!(
        double.requests()[0].header("authorization"),
        Some("Basic ZWxhc3RpYzpodW50ZXIy"),
        "base64(elastic:hunter2)"
    );
}

// ---- the sink against the double ------------------------------------------------------------------------

/// A job for the double at `url`; `source_extra` adds lines to `[source]`. Nothing connects to the source.
fn double_job(url: &str, source_extra: &str) -> JobSpec {
    let text = format!(
        "name = \"es_double\"\n[source]\nurl = \"mysql://root@127.0.0.1:3306/unused\"\ntable = \"orders\"\n\
         key = \"id\"\n{source_extra}\n[target]\nkind = \"elasticsearch\"\nurl = \"{url}\"\nindex = \"orders\"\n"
    );
    JobSpec::parse_str(&text, Path::new("es_double.toml"), &|_| None).expect("a valid job")
}

/// Rows `(id, amount, v)` for ids.
fn batch(ids: impl IntoIterator<Item = u64>) -> RowSet {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        type_name: "integer".into(),
    };
    RowSet {
        columns: Arc::from(vec![
            col("id", ColumnType::Int { unsigned: true }),
            col("amount", ColumnType::Int { unsigned: false }),
            col("v", ColumnType::Int { unsigned: false }),
        ]),
        key_index: 0,
        rows: ids
            .into_iter()
            .map(|id| Row {
                key: id,
                values: vec![Value::UInt(id), Value::Int(id as i64 * 10), Value::Int(5)],
            })
            .collect(),
    }
}

/// Short delays and timeout, so failure paths run in milliseconds.
fn quick() -> EsOptions {
    EsOptions {
        timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            delays: vec![Duration::from_millis(10), Duration::from_millis(20)],
        },
        ..EsOptions::default()
    }
}

async fn quick_sink(job: &JobSpec) -> EsSink {
    let sink = EsSink::new(job, quick(), 2).expect("an Elasticsearch sink");
    sink.prepare(&batch([]).columns)
        .await
        .expect("the double answers GET /");
    sink
}

/// A bulk answer giving each id of `request` the status `status(id)`.
fn answer(request: &Request, status: impl Fn(u64) -> u16) -> Reply {
    let items: Vec<(u64, u16)> = request
        .bulk_ids()
        .into_iter()
        .map(|id| (id, status(id)))
        .collect();
    Reply::bulk(&items)
}

#[tokio::test]
async fn items_answered_429_are_sent_again_until_they_land() {
    let double = EsDouble::start(|req, n| {
        answer(req, |id| {
            if n == 0 && (id == 2 || id == 3) {
                429
            } else {
                201
            }
        })
    })
    .await;
    // Through sink::open: the production defaults (a 250 ms first delay).
    let sink = sink::open(&double_job(&double.url, ""), 2).expect("sink::open");
    sink.prepare(&batch([]).columns).await.expect("prepare");
    let outcome = sink.write(&batch(1..=4)).await.expect("the batch lands");
    assert_eq!(
        outcome,
        WriteOutcome {
            written: vec![1, 2, 3, 4],
            failed: vec![]
        }
    );
    let bulks = double.bulks();
    assert_eq!(bulks.len(), 2);
    assert_eq!(bulks[0].bulk_ids(), vec![1, 2, 3, 4]);
    assert_eq!(
        bulks[1].bulk_ids(),
        vec![2, 3],
        "only the 429 items go again"
    );
    assert_eq!(
        bulks[0].header("content-type"),
        Some("application/x-ndjson")
    );
}

#[tokio::test]
async fn items_still_429_after_every_retry_hand_the_batch_back_as_transient() {
    let double = EsDouble::start(|req, _| answer(req, |id| if id == 3 { 429 } else { 201 })).await;
    let sink = quick_sink(&double_job(&double.url, "")).await;
    let err = sink.write(&batch(1..=4)).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Transient(m) if m.contains("1 documents not accepted after 3 attempts")
            && m.contains("es_rejected_execution_exception")),
        "{err}"
    );
    let bulks = double.bulks();
    assert_eq!(bulks.len(), 3, "one attempt and two retries");
    assert_eq!(bulks[2].bulk_ids(), vec![3]);
}

#[tokio::test]
async fn a_503_for_the_whole_request_is_retried_and_then_lands() {
    let double = EsDouble::start(|req, n| {
        if n == 0 {
            Reply::error(
                503,
                "unavailable_shards_exception",
                "primary shard is not active",
            )
        } else {
            answer(req, |_| 201)
        }
    })
    .await;
    let sink = quick_sink(&double_job(&double.url, "")).await;
    let outcome = sink.write(&batch(1..=3)).await.expect("the batch lands");
    assert_eq!(outcome.written, vec![1, 2, 3]);
    let bulks = double.bulks();
    assert_eq!(bulks.len(), 2);
    assert_eq!(bulks[1].bulk_ids(), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_half_failed_bulk_fails_the_refused_ids_with_their_reason_and_lands_the_rest() {
    let double =
        EsDouble::start(|req, _| answer(req, |id| if id % 2 == 0 { 400 } else { 201 })).await;
    let sink = quick_sink(&double_job(&double.url, "")).await;
    let outcome = sink.write(&batch(1..=6)).await.expect("an outcome");
    assert_eq!(outcome.written, vec![1, 3, 5]);
    let failed_ids: Vec<u64> = outcome.failed.iter().map(|(id, _)| *id).collect();
    assert_eq!(failed_ids, vec![2, 4, 6]);
    for (id, reason) in &outcome.failed {
        assert!(
            reason.starts_with(
                "index orders: mapper_parsing_exception: failed to parse field [amount]"
            ) && reason.contains("number_format_exception"),
            "{id}: {reason}"
        );
    }
    assert_eq!(double.bulks().len(), 1, "a mapping error is not retried");
}

#[tokio::test]
async fn the_start_check_tells_something_else_from_a_cluster_that_is_busy() {
    // A 2xx `GET /` without a version (a proxy's page, another service): an operator must act.
    let other = EsDouble::start_with_root(Reply::json(200, json!({"ok": true})), |req, _| {
        answer(req, |_| 201)
    })
    .await;
    let sink = EsSink::new(&double_job(&other.url, ""), quick(), 2).expect("an Elasticsearch sink");
    let err = sink.prepare(&batch([]).columns).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Batch(m) if m.contains("is it Elasticsearch") && m.contains(&other.url)),
        "{err}"
    );
    // A cluster that answers 503 may be back soon: transient.
    let busy = EsDouble::start_with_root(
        Reply::error(503, "cluster_block_exception", "state not recovered"),
        |req, _| answer(req, |_| 201),
    )
    .await;
    let sink = EsSink::new(&double_job(&busy.url, ""), quick(), 2).expect("an Elasticsearch sink");
    let err = sink.prepare(&batch([]).columns).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Transient(m) if m.contains("HTTP 503") && m.contains("state not recovered")),
        "{err}"
    );
    assert!(other.bulks().is_empty() && busy.bulks().is_empty());
}

#[tokio::test]
async fn a_request_that_times_out_hands_the_batch_back_as_transient_at_once() {
    let double = EsDouble::start(|req, _| answer(req, |_| 201).after(Duration::from_secs(5))).await;
    let sink = quick_sink(&double_job(&double.url, "")).await;
    let started = Instant::now();
    let err = sink.write(&batch(1..=3)).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Transient(m) if m.contains("no answer within 500ms")),
        "{err}"
    );
    // Not sent again by the sink: the consumer's own retries space the next attempts out.
    assert_eq!(double.bulks().len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after {:?}: the timeout is 500 ms",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_refused_is_retried_then_handed_back_as_transient() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let job = double_job(&format!("http://127.0.0.1:{port}"), "");
    let sink = EsSink::new(&job, quick(), 2).expect("an Elasticsearch sink");
    let err = sink.write(&batch(1..=3)).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Transient(m) if m.contains("3 documents not accepted after 3 attempts")
            && m.contains(&format!("http://127.0.0.1:{port}"))),
        "{err}"
    );
}

#[tokio::test]
async fn errors_true_with_the_items_missing_is_never_success() {
    let double =
        EsDouble::start(|_, _| Reply::json(200, json!({"took": 1, "errors": true, "items": []})))
            .await;
    let sink = quick_sink(&double_job(&double.url, "")).await;
    let err = sink.write(&batch(1..=3)).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Transient(m) if m.contains("0 items for 3 documents")),
        "{err}"
    );
}

#[tokio::test]
async fn a_version_conflict_counts_as_written_under_external_versioning() {
    let double = EsDouble::start(|req, _| answer(req, |id| if id == 2 { 409 } else { 201 })).await;
    let sink = quick_sink(&double_job(&double.url, "version = \"v\"")).await;
    let outcome = sink.write(&batch(1..=3)).await.expect("an outcome");
    assert_eq!(outcome.written, vec![1, 2, 3]);
    let body = String::from_utf8(double.bulks()[0].body.clone()).unwrap();
    assert!(
        body.starts_with(
            "{\"index\":{\"_index\":\"orders\",\"_id\":\"1\",\"version\":5,\"version_type\":\"external\"}}\n\
             {\"id\":1,\"amount\":10,\"v\":5}\n"
        ),
        "{body}"
    );
}

#[tokio::test]
async fn a_batch_over_the_byte_limit_goes_in_several_requests() {
    let double = EsDouble::start(|req, _| answer(req, |_| 201)).await;
    let job = double_job(&double.url, "");
    let sink = EsSink::new(
        &job,
        EsOptions {
            max_bulk_bytes: 300,
            ..quick()
        },
        2,
    )
    .unwrap();
    let outcome = sink.write(&batch(1..=20)).await.expect("an outcome");
    assert_eq!(outcome.written, (1..=20).collect::<Vec<_>>());
    let bulks = double.bulks();
    assert!(bulks.len() >= 5, "{} requests", bulks.len());
    assert!(bulks.iter().all(|b| b.body.len() <= 300));
    let sent: Vec<u64> = bulks.iter().flat_map(|b| b.bulk_ids()).collect();
    assert_eq!(sent, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_missing_index_stops_the_batch_instead_of_failing_every_row() {
    let double = EsDouble::start(|req, _| {
        let items: Vec<J> = req
            .bulk_ids()
            .iter()
            .map(|id| json!({"index": {"_index": "orders", "_id": id.to_string(), "status": 404,
                "error": {"type": "index_not_found_exception", "reason": "no such index [orders]"}}}))
            .collect();
        Reply::json(200, json!({"took": 1, "errors": true, "items": items}))
    })
    .await;
    let sink = quick_sink(&double_job(&double.url, "")).await;
    let err = sink.write(&batch(1..=2)).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Batch(m) if m.contains("no such index [orders]")),
        "{err}"
    );
}

#[tokio::test]
async fn an_api_key_goes_in_the_authorization_header() {
    let double = EsDouble::start(|req, _| answer(req, |_| 201)).await;
    let job = double_job(&double.url, "");
    let sink = EsSink::new(
        &job,
        EsOptions {
            api_key: Some("VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAy".into()),
            ..quick()
        },
        2,
    )
    .unwrap();
    sink.write(&batch([1])).await.expect("an outcome");
    assert_eq!(
        double.bulks()[0].header("authorization"),
        Some("ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAy")
    );
}
