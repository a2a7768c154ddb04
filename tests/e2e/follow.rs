//! `bitmig-producer --follow` (DESIGN.md §8) end to end: a writer keeps inserting, updating (some of them
//! the key) and deleting rows of the source while the job is copied by two consumers and the follower
//! tails the binlog; once the writer stops and `report` says `caught_up`, the target equals the source row
//! for row. The same with the follower killed (SIGKILL) mid-stream and restarted: nothing is missed.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::Rng;

use crate::helpers::{wait_for, Bin, Proc, TestJob, TWO_POW_40};

const DEADLINE: Duration = Duration::from_secs(240);

/// The default job plus a binlog `[follow]` section with a short settle.
fn follow_job(job: &TestJob) -> String {
    let server_id = 2_000_000 + rand::rng().random_range(0..1_000_000);
    format!(
        "{}\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\nsettle = \"2s\"\n",
        job.job_toml()
    )
}

fn spawn_follower(job: &TestJob) -> Proc {
    job.spawn(Bin::Producer, &["--job", job.job_arg(), "--follow"])
}

/// What the writer did, for the messages.
#[derive(Debug, Default)]
struct Writes {
    inserts: u64,
    updates: u64,
    key_changes: u64,
    deletes: u64,
}

/// One change of the source, chosen by `n`: inserts above the planned range and into empty stretches of
/// it, updates of a value, updates of the key, deletes.
async fn write_one(job: &TestJob, live: &mut Vec<u64>, n: u64, w: &mut Writes) {
    let pick = rand::rng().random_range(0..live.len());
    let id = live[pick];
    match n % 5 {
        0 => {
            // Above the planned range (groups the follower plans), or inside it where no group exists.
            let new = if n % 2 == 0 {
                TWO_POW_40 + 5_000_000 + n
            } else {
                50_000_000 + n
            };
            job.insert_rows(&format!("SELECT {} AS s, {new} AS id", n % 1000))
                .await;
            live.push(new);
            w.inserts += 1;
        }
        1 | 2 => {
            job.sql(&format!(
                "UPDATE src SET c_text = 'changed {n}', c_int = {n} WHERE id = {id}"
            ))
            .await;
            w.updates += 1;
        }
        3 => {
            let new = 60_000_000 + n;
            job.sql(&format!("UPDATE src SET id = {new} WHERE id = {id}"))
                .await;
            live[pick] = new;
            w.key_changes += 1;
        }
        _ => {
            job.sql(&format!("DELETE FROM src WHERE id = {id}")).await;
            live.swap_remove(pick);
            w.deletes += 1;
        }
    }
}

async fn follow_field(job: &TestJob, field: &str) -> Option<String> {
    let mut redis = job.redis.clone();
    redis::cmd("HGET")
        .arg(format!("bitmig:{{{}}}:follow", job.name))
        .arg(field)
        .query_async(&mut redis)
        .await
        .ok()
        .flatten()
}

async fn producer_status(job: &TestJob) -> Option<String> {
    let mut redis = job.redis.clone();
    redis::cmd("HGET")
        .arg(format!("bitmig:{{{}}}:producer", job.name))
        .arg("status")
        .query_async(&mut redis)
        .await
        .ok()
        .flatten()
}

async fn follow_while_writing(kill_midway: bool) {
    let job = TestJob::new(1_000, 200).await;
    job.create_source(20_000).await;
    job.write_file("job.toml", &follow_job(&job));
    let mut live = job.ids_of("src").await;

    let mut follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    // Every change from here on comes after the follow position (the walk sees what came before).
    wait_for(
        "the follow position",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            match follow_field(&job, "position").await {
                Some(p) => Ok(p),
                None => Err("no position yet".to_owned()),
            }
        },
    )
    .await;

    // The writer: one change every 10 ms, until the walk is done and at least 400 changes were made.
    let mut writes = Writes::default();
    let started = Instant::now();
    let mut n = 0u64;
    let mut killed = false;
    loop {
        write_one(&job, &mut live, n, &mut writes).await;
        n += 1;
        if kill_midway && !killed && n == 200 {
            // Mid-stream: the follower dies without a word, changes go on, a new one resumes.
            assert!(
                follower.is_running(),
                "the follower exited early:\n{}",
                follower.output_so_far()
            );
            follower.kill().await;
            for _ in 0..100 {
                write_one(&job, &mut live, n, &mut writes).await;
                n += 1;
            }
            follower = spawn_follower(&job);
            killed = true;
        }
        if n >= 400 && producer_status(&job).await.as_deref() == Some("done") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the walk did not finish while writing:\n{}",
            follower.output_so_far()
        );
        assert!(
            follower.is_running(),
            "the follower exited:\n{}",
            follower.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The writer stopped: wait until the report says the target may be switched over.
    let report = wait_for(
        "caught_up",
        DEADLINE,
        Duration::from_millis(500),
        || async {
            // Not 0s: a catch-up of an id already in the target may still sit unacked in a consumer, where
            // neither the bits nor the queue's ready count show it; 3 s is far longer than a batch takes.
            job.compensate(Some("3s")).await;
            let (_, report) = job.report().await;
            if report["caught_up"].as_bool() == Some(true) {
                Ok(report)
            } else {
                Err(report.to_string())
            }
        },
    )
    .await;
    job.assert_target_equals_source().await;

    let follow = &report["follow"];
    assert_eq!(follow["from"], "binlog", "{report:#}");
    let changes = writes.inserts + writes.updates + writes.key_changes + writes.deletes;
    assert!(
        follow["events"].as_u64().unwrap_or(0) >= if kill_midway { 1 } else { changes },
        "the follower saw fewer events than the {changes} changes made ({writes:?}): {report:#}"
    );
    assert!(
        report["complete"] == true && report["missing_ids"] == 0 && report["queued"] == 0,
        "{report:#}"
    );
    let position = follow["position"].as_str().unwrap_or("");
    assert!(
        position.contains(':'),
        "a binlog file:pos, not {position:?}"
    );

    follower
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
    for c in consumers {
        c.terminate(Duration::from_secs(60)).await.expect_code(0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_target_equals_the_source_after_following_a_writer() {
    follow_while_writing(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_killed_mid_stream_resumes_and_misses_nothing() {
    follow_while_writing(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_without_a_follow_section_is_refused_with_exit_2() {
    let job = TestJob::new(1_000, 200).await;
    job.create_source(100).await;
    let done = job
        .run(Bin::Producer, &["--job", job.job_arg(), "--follow"])
        .await;
    done.expect_code(2);
    assert!(
        done.stderr.contains("--follow needs a [follow] section"),
        "{}",
        done.describe()
    );
    assert_eq!(
        follow_field(&job, "position").await,
        None,
        "nothing may be stored for a refused follower"
    );
}

/// Drops the test's replication slot when the test ends, whatever its outcome (a slot left behind keeps
/// WAL forever and stops its database from being dropped).
struct DropSlot {
    url: String,
    slot: String,
}

impl Drop for DropSlot {
    fn drop(&mut self) {
        let (url, slot) = (self.url.clone(), self.slot.clone());
        crate::helpers::clean_up(format!("drop slot {slot}"), async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await;
            }
        });
    }
}

/// PostgreSQL → MariaDB with `from = "logical"`: changes made while the copy runs reach the target.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_changes_reach_mariadb_through_logical_replication() {
    let job = TestJob::new(1_000, 200).await;
    let pg = job.pg().await;
    let slot = format!("bitmig_{}", job.name);
    let _slot = DropSlot {
        url: pg.url.clone(),
        slot: slot.clone(),
    };
    pg.sql(
        "CREATE TABLE src (id BIGINT PRIMARY KEY, v TEXT, n INT); \
         INSERT INTO src SELECT g, 'row ' || g, g FROM generate_series(1, 5000) g",
    )
    .await;
    job.sql("CREATE TABLE dst (id BIGINT UNSIGNED PRIMARY KEY, v TEXT, n INT)")
        .await;
    job.write_file(
        "job.toml",
        &format!(
            "name = \"{name}\"\ngroup_size = 1000\nbatch_size = 200\n\n[source]\nurl = \"{pg}\"\n\
             table = \"src\"\nkey = \"id\"\n\n[target]\nkind = \"sql\"\nurl = \"{my}\"\ntable = \"dst\"\n\n\
             [follow]\nfrom = \"logical\"\nsettle = \"2s\"\n",
            name = job.name,
            pg = pg.url,
            my = job.database_url
        ),
    );
    let follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for(
        "the follow position",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            follow_field(&job, "position")
                .await
                .ok_or_else(|| "no position yet".to_owned())
        },
    )
    .await;
    for n in 0..200u64 {
        let id = 1 + (n * 37) % 5000;
        let sql = match n % 5 {
            0 => format!("INSERT INTO src VALUES ({}, 'new {n}', {n})", 1_000_000 + n),
            1 | 2 => format!("UPDATE src SET v = 'changed {n}', n = -{n} WHERE id = {id}"),
            3 => format!("UPDATE src SET id = {} WHERE id = {id}", 2_000_000 + n),
            _ => format!("DELETE FROM src WHERE id = {id}"),
        };
        pg.sql(&sql).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = wait_for(
        "caught_up",
        DEADLINE,
        Duration::from_millis(500),
        || async {
            job.compensate(Some("3s")).await;
            let (_, report) = job.report().await;
            if report["caught_up"].as_bool() == Some(true) {
                Ok(report)
            } else {
                Err(report.to_string())
            }
        },
    )
    .await;
    assert_eq!(report["follow"]["from"], "logical", "{report:#}");
    let source: Vec<String> = pg
        .texts("SELECT id::text || '|' || coalesce(v, '') || '|' || coalesce(n::text, '') FROM src ORDER BY id")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    let mut conn = job.conn().await;
    let target: Vec<String> = conn
        .query("SELECT CONCAT(id, '|', COALESCE(v, ''), '|', COALESCE(n, '')) FROM dst ORDER BY id")
        .await
        .expect("read dst");
    assert_eq!(source.len(), target.len(), "row counts differ");
    let differing: Vec<_> = source
        .iter()
        .zip(&target)
        .filter(|(s, t)| s != t)
        .take(5)
        .collect();
    assert!(differing.is_empty(), "rows differ: {differing:?}");

    follower
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
    for c in consumers {
        c.terminate(Duration::from_secs(60)).await.expect_code(0);
    }
}

/// MariaDB → PostgreSQL with a hash-mod route: a row whose route column changes ends in exactly one
/// table, and every table holds exactly the source rows routed to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_routed_row_moved_by_an_update_lives_in_one_postgres_table() {
    let job = TestJob::new(1_000, 200).await;
    let pg = job.pg().await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED PRIMARY KEY, user_id INT NOT NULL, v TEXT); \
         INSERT INTO src SELECT seq, seq % 97, CONCAT('row ', seq) FROM seq_1_to_5000",
    )
    .await;
    for t in 0..4 {
        pg.sql(&format!(
            "CREATE TABLE dst_{t} (id BIGINT PRIMARY KEY, user_id INT NOT NULL, v TEXT)"
        ))
        .await;
    }
    let server_id = 3_000_000 + rand::rng().random_range(0..1_000_000);
    job.write_file(
        "job.toml",
        &format!(
            "name = \"{name}\"\ngroup_size = 1000\nbatch_size = 200\n\n[source]\nurl = \"{my}\"\n\
             table = \"src\"\nkey = \"id\"\n\n[target]\nkind = \"sql\"\nurl = \"{pg}\"\n\
             table = \"dst_{{user_id % 4}}\"\n\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\nsettle = \"2s\"\n",
            name = job.name,
            pg = pg.url,
            my = job.database_url
        ),
    );
    let follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for(
        "the follow position",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            follow_field(&job, "position")
                .await
                .ok_or_else(|| "no position yet".to_owned())
        },
    )
    .await;
    for n in 0..200u64 {
        let id = 1 + (n * 37) % 5000;
        let sql = match n % 5 {
            0 => format!("INSERT INTO src VALUES ({}, {n}, 'new {n}')", 1_000_000 + n),
            // The route column: the row moves to another table.
            1 | 2 => {
                format!("UPDATE src SET user_id = user_id + 1, v = 'moved {n}' WHERE id = {id}")
            }
            3 => format!("UPDATE src SET id = {} WHERE id = {id}", 2_000_000 + n),
            _ => format!("DELETE FROM src WHERE id = {id}"),
        };
        job.sql(&sql).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_for(
        "caught_up",
        DEADLINE,
        Duration::from_millis(500),
        || async {
            job.compensate(Some("3s")).await;
            let (_, report) = job.report().await;
            if report["caught_up"].as_bool() == Some(true) {
                Ok(report)
            } else {
                Err(report.to_string())
            }
        },
    )
    .await;
    let mut conn = job.conn().await;
    let source: Vec<String> = conn
        .query("SELECT CONCAT(id, '|', user_id, '|', COALESCE(v, ''), '|', user_id % 4) FROM src ORDER BY id")
        .await
        .expect("read src");
    let target: Vec<String> = pg
        .texts(
            "SELECT id::text || '|' || user_id || '|' || coalesce(v, '') || '|' || t FROM ( \
             SELECT *, 0 AS t FROM dst_0 UNION ALL SELECT *, 1 FROM dst_1 UNION ALL \
             SELECT *, 2 FROM dst_2 UNION ALL SELECT *, 3 FROM dst_3) u ORDER BY id, t",
        )
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    assert_eq!(
        source.len(),
        target.len(),
        "every source row must be in exactly one table (no copy left behind in its old table)"
    );
    let differing: Vec<_> = source
        .iter()
        .zip(&target)
        .filter(|(s, t)| s != t)
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "rows differ (id|user_id|v|table): {differing:?}"
    );

    follower
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
    for c in consumers {
        c.terminate(Duration::from_secs(60)).await.expect_code(0);
    }
}
