//! `bitmig-producer --follow` from the MariaDB binlog into Elasticsearch (osmem-server) with monthly
//! indices (`{created_at:%Y%m}`), end to end: a writer inserts, updates values, moves rows to another month
//! (the route column), changes keys and deletes while two consumers copy the table. Once `report` says
//! `caught_up`, the indices hold exactly the source: the documents of all indices add up to the source's
//! rows, and every row is a document equal to it in the index of its month — so a deleted row left no
//! document and a row whose month changed is in exactly one index.
//!
//! Size: 10 000 rows, not the 200 000 of the SQL tests: osmem-server indexes a few hundred documents a
//! second on this machine (see `elasticsearch.rs`), and what is tested here is the following, not the copy.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::Rng;
use serde_json::json;

use crate::helpers::es::Es;
use crate::helpers::follow::{
    follow_field, producer_status, spawn_follower, stop_following, wait_caught_up,
    wait_for_position,
};
use crate::helpers::{Proc, TestJob};

const ROWS: u64 = 10_000;
const DEADLINE: Duration = Duration::from_secs(240);

/// What the writer did, for the messages.
#[derive(Debug, Default)]
struct Writes {
    inserts: u64,
    updates: u64,
    moves: u64,
    key_changes: u64,
    deletes: u64,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_followed_table_equals_its_monthly_indices_with_moved_and_deleted_rows() {
    let job = TestJob::new(1_000, 200).await;
    let es = Es::connect(&job.name).await;
    job.sql(&format!(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL, \
         created_at DATETIME NOT NULL) DEFAULT CHARSET = utf8mb4; \
         INSERT INTO src SELECT seq, CONCAT('row ', seq), seq % 1000, \
         '2023-01-01' + INTERVAL (seq * 7919 % 31536000) SECOND FROM seq_1_to_{ROWS}"
    ))
    .await;
    let server_id = 4_000_000 + rand::rng().random_range(0..1_000_000);
    job.write_es_job(
        &es.url,
        &format!("{}_{{created_at:%Y%m}}", job.name),
        "",
        "",
    );
    let text = std::fs::read_to_string(&job.job_file).expect("the job file");
    job.write_file(
        "job.toml",
        &format!("{text}\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\nsettle = \"2s\"\n"),
    );
    let follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for_position(&job).await;

    let mut live: Vec<u64> = (1..=ROWS).collect();
    let mut writes = Writes::default();
    let started = Instant::now();
    for n in 0u64.. {
        if n >= 200 && producer_status(&job).await.as_deref() == Some("done") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the walk did not finish while writing"
        );
        let pick = rand::rng().random_range(0..live.len());
        let id = live[pick];
        match n % 6 {
            0 => {
                let new = 1_000_000 + n;
                job.sql(&format!(
                    "INSERT INTO src VALUES ({new}, 'new {n}', {n}, '2023-{:02}-15 12:00:00')",
                    1 + n % 12
                ))
                .await;
                live.push(new);
                writes.inserts += 1;
            }
            1 => {
                job.sql(&format!(
                    "UPDATE src SET v = 'changed {n}', n = -{n} WHERE id = {id}"
                ))
                .await;
                writes.updates += 1;
            }
            2 | 3 => {
                // The route column: the row's month changes, its document must move index.
                job.sql(&format!(
                    "UPDATE src SET created_at = created_at + INTERVAL {} MONTH, v = 'moved {n}' WHERE id = {id}",
                    1 + n % 5
                ))
                .await;
                writes.moves += 1;
            }
            4 => {
                let new = 2_000_000 + n;
                job.sql(&format!("UPDATE src SET id = {new} WHERE id = {id}"))
                    .await;
                live[pick] = new;
                writes.key_changes += 1;
            }
            _ => {
                job.sql(&format!("DELETE FROM src WHERE id = {id}")).await;
                live.swap_remove(pick);
                writes.deletes += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let report = wait_caught_up(&job).await;
    assert_eq!(report["follow"]["from"], "binlog", "{report:#}");
    es.refresh().await;

    // The source as documents, each with the index of its month.
    let rows: Vec<(u64, String, i64, String, String)> = job
        .conn()
        .await
        .query(
            "SELECT id, v, n, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s'), DATE_FORMAT(created_at, '%Y%m') \
             FROM src ORDER BY id",
        )
        .await
        .expect("read src");
    let mut total = 0;
    for index in es.indices().await {
        total += es.count(&index).await;
    }
    assert_eq!(
        total,
        rows.len() as u64,
        "documents in all indices vs source rows: a deleted row left a document, or a moved row is in two \
         indices ({writes:?})"
    );
    let keys: Vec<(String, u64)> = rows
        .iter()
        .map(|(id, _, _, _, month)| (format!("{}_{month}", job.name), *id))
        .collect();
    let found = es.sources(&keys).await;
    let wrong: Vec<String> = rows
        .iter()
        .zip(&keys)
        .zip(found)
        .filter_map(|(((id, v, n, at, _), (index, _)), got)| {
            let want = json!({"id": id, "v": v, "n": n, "created_at": at});
            match got {
                Some(got) if got == want => None,
                Some(got) => Some(format!("id {id} in {index}: want {want}, got {got}")),
                None => Some(format!("id {id}: no document in {index}")),
            }
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} rows differ from their documents ({writes:?}); the first:\n{}",
        wrong.len(),
        rows.len(),
        wrong.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    let events: u64 = follow_field(&job, "events")
        .await
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    assert!(events > 0, "the follower saw no event: {report:#}");
    eprintln!("{writes:?}; {events} events; {total} documents");

    stop_following(follower, consumers).await;
}
