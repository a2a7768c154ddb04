//! Sinks that delete (DESIGN.md §8.3), on MariaDB, PostgreSQL and Elasticsearch (osmem-server): one call
//! upserts rows and deletes keys together; a row whose route changed ends in exactly one table; every
//! table written is listed in `bitmig:{JOB}:tables` before the write; a listed table that does not exist
//! holds nothing to delete. The last test runs the whole consumer on a `catchup` message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::Ledger;
use bitmig_shared::sink::{self, Changes, Sink};
use bitmig_shared::value::{Column, ColumnType, Row, RowSet, Value};
use redis::AsyncCommands;

use crate::helpers::es::Es;
use crate::helpers::{Bits, TestJob};

/// Rows `(id, grp, note)`: `grp` routes the row to table `grp % 3`.
fn rows(rows: &[(u64, i64)]) -> RowSet {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        type_name: "test".into(),
    };
    RowSet {
        columns: Arc::from(vec![
            col("id", ColumnType::Int { unsigned: false }),
            col("grp", ColumnType::Int { unsigned: false }),
            col("note", ColumnType::Text),
        ]),
        key_index: 0,
        rows: rows
            .iter()
            .map(|&(id, grp)| Row {
                key: id,
                values: vec![
                    Value::Int(id as i64),
                    Value::Int(grp),
                    Value::Bytes(format!("n{id}").into_bytes()),
                ],
            })
            .collect(),
    }
}

fn job_spec(job: &TestJob, target: &str) -> JobSpec {
    let text = format!(
        "name = \"{}\"\n[source]\nurl = \"{}\"\ntable = \"src\"\nkey = \"id\"\n\n[target]\n{target}\n",
        job.name, job.database_url
    );
    JobSpec::parse_str(&text, Path::new("deletes.toml"), &|_| None).expect("a valid job")
}

async fn open(job: &TestJob, spec: &JobSpec) -> (Box<dyn Sink>, Ledger) {
    let ledger = Ledger::connect(&job.services.redis_url, &job.name)
        .await
        .expect("connect to Redis");
    let sink = sink::open_logged(spec, 2, Arc::new(ledger.clone())).expect("open the sink");
    (sink, ledger)
}

/// The scenario every engine goes through; `holdings` reads table → keys from the target, `names` are the
/// three tables' names as the route renders them.
async fn scenario<F, Fut>(sink: &dyn Sink, ledger: &Ledger, names: [&str; 3], holdings: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = BTreeMap<String, BTreeSet<u64>>>,
{
    let expect = |tables: [&[u64]; 3]| -> BTreeMap<String, BTreeSet<u64>> {
        names
            .iter()
            .zip(tables)
            .map(|(n, keys)| (n.to_string(), keys.iter().copied().collect()))
            .collect()
    };
    // Produce-like: rows 1..=9, each in table id % 3; nothing deleted.
    let first: Vec<(u64, i64)> = (1..=9).map(|id| (id, id as i64 % 3)).collect();
    let out = sink
        .write(&rows(&first))
        .await
        .expect("the first batch lands");
    assert_eq!(out.written, (1..=9).collect::<Vec<_>>());
    assert_eq!(
        holdings().await,
        expect([&[3, 6, 9], &[1, 4, 7], &[2, 5, 8]])
    );
    let mut listed = ledger.tables().await.expect("SMEMBERS tables");
    listed.sort();
    assert_eq!(
        listed,
        names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "every table written is listed"
    );

    // A listed table that was never created holds nothing to delete.
    ledger
        .add_tables(&[format!("{}_missing", names[0].trim_end_matches("_0"))])
        .await
        .expect("SADD");

    // Produce batches never delete: row 5 moved to table 0 is written there and stays in table 2.
    let out = sink
        .apply(&Changes {
            rows: &rows(&[(5, 3)]),
            delete: &[],
            exclusive: false,
        })
        .await
        .expect("a produce batch");
    assert_eq!(out.written, vec![5]);
    assert_eq!(
        holdings().await,
        expect([&[3, 5, 6, 9], &[1, 4, 7], &[2, 5, 8]])
    );

    // A catchup batch: row 1 moved to table 2, row 4 unchanged, 5 back in table 2, rows 2 and 3 gone.
    let out = sink
        .apply(&Changes {
            rows: &rows(&[(1, 2), (4, 1), (5, 2)]),
            delete: &[2, 3],
            exclusive: true,
        })
        .await
        .expect("a catchup batch");
    assert_eq!(out.written, vec![1, 4, 5]);
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert_eq!(
        holdings().await,
        expect([&[6, 9], &[4, 7], &[1, 5, 8]]),
        "each written key in exactly one table, the gone keys in none"
    );

    // Only deletes (every id of the batch gone).
    let out = sink
        .apply(&Changes {
            rows: &rows(&[]),
            delete: &[6, 7, 8],
            exclusive: true,
        })
        .await
        .expect("a batch of deletes");
    assert!(out.written.is_empty());
    assert_eq!(holdings().await, expect([&[9], &[4], &[1, 5]]));
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_deletes_gone_and_moved_keys_across_tables_in_one_call() {
    let job = TestJob::new(1_000, 100).await;
    for t in 0..3 {
        job.sql(&format!(
            "CREATE TABLE dst_{t} (id BIGINT NOT NULL PRIMARY KEY, grp INT NOT NULL, note TEXT)"
        ))
        .await;
    }
    let spec = job_spec(
        &job,
        &format!(
            "kind = \"sql\"\nurl = \"{}\"\ntable = \"dst_{{grp % 3}}\"",
            job.database_url
        ),
    );
    let (sink, ledger) = open(&job, &spec).await;
    let holdings = || async {
        let mut out = BTreeMap::new();
        for t in 0..3 {
            let ids = job
                .sql_ids(&format!("SELECT id FROM dst_{t} ORDER BY id"))
                .await;
            out.insert(format!("dst_{t}"), ids.into_iter().collect());
        }
        out
    };
    scenario(&*sink, &ledger, ["dst_0", "dst_1", "dst_2"], holdings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_deletes_gone_and_moved_keys_across_tables_in_one_call() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    for t in 0..3 {
        pg.sql(&format!(
            "CREATE TABLE dst_{t} (id bigint PRIMARY KEY, grp integer NOT NULL, note text)"
        ))
        .await;
    }
    let spec = job_spec(
        &job,
        &format!(
            "kind = \"sql\"\nurl = \"{}\"\ntable = \"dst_{{grp % 3}}\"",
            pg.url
        ),
    );
    let (sink, ledger) = open(&job, &spec).await;
    let holdings = || async {
        let mut out = BTreeMap::new();
        for t in 0..3 {
            let ids: BTreeSet<u64> = pg
                .texts(&format!("SELECT id::text FROM dst_{t}"))
                .await
                .into_iter()
                .map(|r| r[0].as_deref().expect("an id").parse().expect("an integer"))
                .collect();
            out.insert(format!("dst_{t}"), ids);
        }
        out
    };
    scenario(&*sink, &ledger, ["dst_0", "dst_1", "dst_2"], holdings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_deletes_gone_and_moved_keys_across_indices_in_one_bulk() {
    let job = TestJob::new(1_000, 100).await;
    let es = Es::connect(&job.name).await;
    let spec = job_spec(
        &job,
        &format!(
            "kind = \"elasticsearch\"\nurl = \"{}\"\nindex = \"{}_{{grp % 3}}\"",
            es.url, job.name
        ),
    );
    let (sink, ledger) = open(&job, &spec).await;
    let names: Vec<String> = (0..3).map(|t| format!("{}_{t}", job.name)).collect();
    let holdings = || async {
        es.refresh().await;
        let mut out = BTreeMap::new();
        for name in &names {
            let (status, body) = es
                .call(
                    "POST",
                    &format!("/{name}/_search"),
                    Some(&serde_json::json!({"size": 100, "_source": false})),
                )
                .await;
            let ids: BTreeSet<u64> = if status == 404 {
                BTreeSet::new()
            } else {
                assert_eq!(status, 200, "search {name}: {body}");
                body["hits"]["hits"]
                    .as_array()
                    .expect("hits")
                    .iter()
                    .map(|h| h["_id"].as_str().expect("_id").parse().expect("an id"))
                    .collect()
            };
            out.insert(name.clone(), ids);
        }
        out
    };
    scenario(&*sink, &ledger, [&names[0], &names[1], &names[2]], holdings).await;
}

/// The whole consumer on a `catchup` message: a row whose route changed moves, a deleted row leaves the
/// target, and the ledger follows (`tgt` set and `gone` cleared for the one, the reverse for the other).
#[tokio::test(flavor = "multi_thread")]
async fn a_catchup_batch_moves_a_rerouted_row_and_deletes_a_gone_one() {
    let job = TestJob::new(1_000, 100).await;
    job.sql("CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, grp INT NOT NULL, note TEXT)")
        .await;
    job.sql("INSERT INTO src SELECT seq, seq % 3, CONCAT('n', seq) FROM seq_1_to_30")
        .await;
    for t in 0..3 {
        job.sql(&format!("CREATE TABLE dst_{t} LIKE src")).await;
    }
    job.write_file(
        "job.toml",
        &format!(
            "name = \"{name}\"\ngroup_size = 1000\nbatch_size = 100\n\n[source]\nurl = \"{url}\"\n\
             table = \"src\"\nkey = \"id\"\n\n[target]\nkind = \"sql\"\nurl = \"{url}\"\n\
             table = \"dst_{{grp % 3}}\"\n",
            name = job.name,
            url = job.database_url
        ),
    );
    job.produce(&[]).await.expect_code(0);
    job.consume_until_idle(1, &[]).await;
    let in_table = |t: u8| {
        let job = &job;
        async move {
            job.sql_ids(&format!("SELECT id FROM dst_{t} ORDER BY id"))
                .await
        }
    };
    assert!(in_table(1).await.contains(&4));

    // Row 4 moves from table 1 to table 2; row 5 is deleted at the source.
    job.sql("UPDATE src SET grp = 2 WHERE id = 4").await;
    job.sql("DELETE FROM src WHERE id = 5").await;
    let group = job.group_of(4);
    job.publish_raw(
        format!(
            r#"{{"job":"{}","group":{group},"ids":[[4,5]],"cause":"catchup","attempt":0}}"#,
            job.name
        )
        .as_bytes(),
    )
    .await;
    job.consume_until_idle(1, &[]).await;

    assert!(!in_table(1).await.contains(&4), "row 4 left its old table");
    assert!(in_table(2).await.contains(&4), "row 4 is in its new table");
    for t in 0..3 {
        assert!(
            !in_table(t).await.contains(&5),
            "row 5 deleted from dst_{t}"
        );
    }
    let tgt = job.bitmap_ids(group, Bits::Tgt).await;
    let gone = job.bitmap_ids(group, Bits::Gone).await;
    assert!(tgt.contains(&4) && !gone.contains(&4));
    assert!(
        gone.contains(&5) && !tgt.contains(&5),
        "5: gone set, tgt cleared"
    );
    let mut redis = job.redis.clone();
    let mut listed: Vec<String> = redis
        .smembers(job.job_key("tables"))
        .await
        .expect("SMEMBERS");
    listed.sort();
    assert_eq!(listed, vec!["dst_0", "dst_1", "dst_2"]);
}
