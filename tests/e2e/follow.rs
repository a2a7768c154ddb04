//! `bitmig-producer --follow` (DESIGN.md §8) end to end: a writer keeps inserting, updating (some of them
//! the key) and deleting rows of a 200 000-row source while the job is copied by two consumers and the
//! follower tails the binlog; once the writer stops and `report` says `caught_up`, the target equals the
//! source (COUNT, CHECKSUM TABLE, row for row). The same with the follower killed (SIGKILL) mid-stream and
//! restarted: nothing is missed. Seed 001's A/B race forced on purpose: a consumer's write of an older read
//! held back behind a row lock until a newer delete has reached the target, then undone by the settle
//! re-drive.

use std::time::{Duration, Instant};

use bitmig_producer::follow::binlog::{parse_position, BinlogPosition};
use mysql_async::prelude::Queryable;
use rand::Rng;

use crate::helpers::follow::{
    follow_field, follow_job, producer_status, spawn_follower, stop_following, wait_caught_up,
    wait_for_position, write_one, Writes,
};
use crate::helpers::{wait_for, Bin, Bits, Proc, TestJob};

const DEADLINE: Duration = Duration::from_secs(240);
/// The size: the copy runs long enough for the writer to change rows under it.
const ROWS: u64 = 200_000;

async fn follow_while_writing(kill_midway: bool) {
    let job = TestJob::new(10_000, 1_000).await;
    job.create_source_from_fixture(ROWS).await;
    job.write_file("job.toml", &follow_job(&job));
    let mut live = job.ids_of("src").await;

    let mut follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    // Every change from here on comes after the follow position (the walk sees what came before).
    wait_for_position(&job).await;

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
            // The checkpoint it will resume from is a GTID state (MariaDB).
            let stored = follow_field(&job, "position").await.unwrap_or_default();
            assert!(
                matches!(parse_position(&stored), Ok(BinlogPosition::Gtid(_))),
                "a GTID state, not {stored:?}"
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The writer stopped: wait until the report says the target may be switched over.
    let report = wait_caught_up(&job).await;
    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM dst").await,
        job.sql_u64("SELECT COUNT(*) FROM src").await,
        "COUNT(*) of dst and src"
    );
    let checksum = job.checksum("src").await;
    assert!(checksum.is_some(), "CHECKSUM TABLE src gave NULL");
    assert_eq!(
        job.checksum("dst").await,
        checksum,
        "CHECKSUM TABLE of dst and src"
    );
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
    // MariaDB has GTIDs: the position is a GTID state, not a file:pos.
    let position = follow["position"].as_str().unwrap_or("");
    assert!(
        matches!(parse_position(position), Ok(BinlogPosition::Gtid(_))),
        "a GTID state, not {position:?}"
    );

    stop_following(follower, consumers).await;
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
    let job = TestJob::new(10_000, 1_000).await;
    let pg = job.pg().await;
    let slot = format!("bitmig_{}", job.name);
    let _slot = DropSlot {
        url: pg.url.clone(),
        slot: slot.clone(),
    };
    pg.sql(
        "CREATE TABLE src (id BIGINT PRIMARY KEY, v TEXT, n INT); \
         INSERT INTO src SELECT g, 'row ' || g, g FROM generate_series(1, 200000) g",
    )
    .await;
    job.sql("CREATE TABLE dst (id BIGINT UNSIGNED PRIMARY KEY, v TEXT, n INT)")
        .await;
    job.write_file(
        "job.toml",
        &format!(
            "name = \"{name}\"\ngroup_size = 10000\nbatch_size = 1000\n\n[source]\nurl = \"{pg}\"\n\
             table = \"src\"\nkey = \"id\"\n\n[target]\nkind = \"sql\"\nurl = \"{my}\"\ntable = \"dst\"\n\n\
             [follow]\nfrom = \"logical\"\nsettle = \"2s\"\n",
            name = job.name,
            pg = pg.url,
            my = job.database_url
        ),
    );
    let follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for_position(&job).await;
    // The writer: until the walk is done and at least 200 changes were made, so it writes under the copy.
    let started = Instant::now();
    for n in 0u64.. {
        if n >= 200 && producer_status(&job).await.as_deref() == Some("done") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the walk did not finish while writing"
        );
        let id = 1 + (n * 37) % 200_000;
        let sql = match n % 5 {
            0 => format!("INSERT INTO src VALUES ({}, 'new {n}', {n})", 1_000_000 + n),
            1 | 2 => format!("UPDATE src SET v = 'changed {n}', n = -{n} WHERE id = {id}"),
            3 => format!("UPDATE src SET id = {} WHERE id = {id}", 2_000_000 + n),
            _ => format!("DELETE FROM src WHERE id = {id}"),
        };
        pg.sql(&sql).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = wait_caught_up(&job).await;
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

    stop_following(follower, consumers).await;
}

/// MariaDB → PostgreSQL with a hash-mod route: a row whose route column changes ends in exactly one
/// table, and every table holds exactly the source rows routed to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_routed_row_moved_by_an_update_lives_in_one_postgres_table() {
    let job = TestJob::new(10_000, 1_000).await;
    let pg = job.pg().await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED PRIMARY KEY, user_id INT NOT NULL, v TEXT); \
         SET SESSION sql_log_bin = 0; \
         INSERT INTO src SELECT seq, seq % 97, CONCAT('row ', seq) FROM seq_1_to_200000; \
         SET SESSION sql_log_bin = 1",
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
            "name = \"{name}\"\ngroup_size = 10000\nbatch_size = 1000\n\n[source]\nurl = \"{my}\"\n\
             table = \"src\"\nkey = \"id\"\n\n[target]\nkind = \"sql\"\nurl = \"{pg}\"\n\
             table = \"dst_{{user_id % 4}}\"\n\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\nsettle = \"2s\"\n",
            name = job.name,
            pg = pg.url,
            my = job.database_url
        ),
    );
    let follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for_position(&job).await;
    // The writer: until the walk is done and at least 200 changes were made, so it writes under the copy.
    let started = Instant::now();
    for n in 0u64.. {
        if n >= 200 && producer_status(&job).await.as_deref() == Some("done") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the walk did not finish while writing"
        );
        let id = 1 + (n * 37) % 200_000;
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
    wait_caught_up(&job).await;
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

    stop_following(follower, consumers).await;
}

/// Seed 001's A/B race, forced: a consumer reads rows S and R (S < R, one `catchup` batch) and its write is
/// held back by a row lock the test keeps on S in the target; meanwhile R is deleted from the source and
/// another consumer's `catchup` deletes it from the target. Then the lock goes: the held write lands R's
/// older read late, so the target holds a row the source no longer has (the test sees it). The settle
/// re-drive — no compensator runs until it did — deletes it again, and the target equals the source.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_write_of_an_older_read_is_undone_by_the_settle_redrive() {
    let job = TestJob::new(1_000, 200).await;
    job.create_source(5_000).await;
    let server_id = 2_000_000 + rand::rng().random_range(0..1_000_000);
    // settle far longer than the lock is held (seconds; tens on a loaded two-core machine, over 30 when the
    // follower has to open a stalled stream again): the re-drive comes after the late write.
    let settle_s = 60;
    job.write_file(
        "job.toml",
        &format!(
            "{}\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\nsettle = \"{settle_s}s\"\n",
            job.job_toml()
        ),
    );
    let follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for_position(&job).await;
    wait_caught_up(&job).await;
    job.assert_target_equals_source().await;

    // Two neighbours of one group.
    let ids = job.ids_of("src").await;
    let (s, r) = ids
        .windows(2)
        .map(|w| (w[0], w[1]))
        .find(|(s, r)| job.group_of(*s) == job.group_of(*r))
        .expect("two ids in one group");
    let group = job.group_of(r);

    // The target row S locked by the test: a consumer's upsert of S (then R) waits for it.
    let mut holder = job.conn().await;
    holder.query_drop("START TRANSACTION").await.expect("BEGIN");
    holder
        .query_drop(format!("SELECT id FROM dst WHERE id = {s} FOR UPDATE"))
        .await
        .expect("lock S in the target");
    let started = Instant::now();
    job.sql(&format!(
        "UPDATE src SET c_text = 'older read', c_int = 1 WHERE id IN ({s}, {r})"
    ))
    .await;
    // A consumer's upsert into dst running for half a second or more: a two-row write waits for the lock.
    // Not INNODB_TRX's LOCK WAIT: MariaDB 10.11 was seen leaving prepared-statement transactions out of
    // it while SHOW ENGINE INNODB STATUS showed them waiting (that made this test time out in CI).
    let waits = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{}' \
         AND INFO LIKE 'INSERT INTO `dst`%' AND TIME_MS >= 500",
        job.database
    );
    wait_for(
        "a consumer's write of S and R to wait for the lock",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            match job.sql_u64(&waits).await {
                // What the follower said last, should it be the one stuck.
                0 => Err(format!(
                    "no lock wait; the follower's last words:\n{}",
                    tail(&follower.output_so_far(), 8)
                )),
                n => Ok(n),
            }
        },
    )
    .await;

    eprintln!(
        "{:?}: a consumer's write of S and R waits for the lock",
        started.elapsed()
    );
    // The newer change: R deleted, and that delete reaches the target while the older write waits.
    job.sql(&format!("DELETE FROM src WHERE id = {r}")).await;
    wait_for(
        "R's delete to reach the target",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            let in_dst = job
                .sql_u64(&format!("SELECT COUNT(*) FROM dst WHERE id = {r}"))
                .await;
            let gone = job.bitmap_ids(group, Bits::Gone).await.contains(&r);
            if in_dst == 0 && gone {
                Ok(())
            } else {
                Err(format!("R in dst: {in_dst}, gone bit: {gone}"))
            }
        },
    )
    .await;
    let held = started.elapsed();
    eprintln!("{held:?}: R's delete is in the target");
    assert!(
        held < Duration::from_secs(settle_s - 2),
        "the lock was held {held:?}: too close to the settle re-drive for the test to mean anything"
    );

    // The older read lands late: R is back in the target, with the value read before the delete.
    holder.query_drop("COMMIT").await.expect("release S");
    drop(holder);
    let late = wait_for(
        "the held write to land R late",
        Duration::from_secs(settle_s - 2),
        Duration::from_millis(20),
        || async {
            match job
                .sql_u64(&format!(
                    "SELECT COUNT(*) FROM dst WHERE id = {r} AND c_text = 'older read'"
                ))
                .await
            {
                1 => Ok(started.elapsed()),
                _ => Err("R not in dst".to_owned()),
            }
        },
    )
    .await;
    assert_eq!(
        job.sql_u64(&format!("SELECT COUNT(*) FROM src WHERE id = {r}"))
            .await,
        0
    );

    // No compensator, no writer: only the settle re-drive can take R out again.
    wait_for(
        "the settle re-drive to delete R again",
        Duration::from_secs(settle_s * 3),
        Duration::from_millis(100),
        || async {
            match job
                .sql_u64(&format!("SELECT COUNT(*) FROM dst WHERE id = {r}"))
                .await
            {
                0 => Ok(()),
                _ => Err("R still in dst".to_owned()),
            }
        },
    )
    .await;
    let undone = started.elapsed();
    eprintln!("R written late at {late:?}, deleted again by the settle re-drive at {undone:?}");
    assert!(
        undone >= Duration::from_secs(settle_s),
        "R left the target at {undone:?}, before the settle delay: not the re-drive's doing"
    );
    wait_caught_up(&job).await;
    job.assert_target_equals_source().await;
    assert!(job.bitmap_ids(group, Bits::Gone).await.contains(&r));
    assert!(!job.bitmap_ids(group, Bits::Tgt).await.contains(&r));

    stop_following(follower, consumers).await;
}

/// The follower's binlog connection dies under it (the server kills the dump thread, as a failover or a
/// network cut would end it): the follower opens the stream again from the last change it took, and what
/// changes meanwhile still reaches the target. The source user is the test's own, so the test kills only
/// this follower's dump thread among the other tests' followers.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_binlog_connection_is_opened_again_and_misses_nothing() {
    let job = TestJob::new(1_000, 200).await;
    job.create_source(3_000).await;
    let user = format!("{}_f", job.name);
    job.sql(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
        .await;
    struct DropUser(mysql_async::Pool, String);
    impl Drop for DropUser {
        fn drop(&mut self) {
            let (pool, user) = (self.0.clone(), self.1.clone());
            crate::helpers::clean_up(format!("user {user}"), async move {
                if let Ok(mut c) = pool.get_conn().await {
                    let _ = c
                        .query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
                        .await;
                }
            });
        }
    }
    let _drop_user = DropUser(job.mysql.clone(), user.clone());
    job.sql(&format!(
        "GRANT SELECT ON `{}`.* TO '{user}'@'%'",
        job.database
    ))
    .await;
    job.sql(&format!(
        "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'"
    ))
    .await;
    let source_url = crate::helpers::with_credentials(&job.database_url, &user, "pw");
    let text = follow_job(&job).replacen(
        &format!("url = \"{}\"", job.database_url),
        &format!("url = \"{source_url}\""),
        1,
    );
    assert!(text.contains(&source_url), "{text}");
    job.write_file("job.toml", &text);

    let mut follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for_position(&job).await;
    wait_caught_up(&job).await;

    let dumps = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}' AND COMMAND LIKE 'Binlog Dump%'"
    );
    assert_eq!(
        job.sql_u64(&dumps).await,
        1,
        "one dump thread of the follower"
    );
    let mut admin = job.conn().await;
    let ids: Vec<u64> = admin
        .query(format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}' AND COMMAND LIKE 'Binlog Dump%'"
        ))
        .await
        .expect("the dump threads");
    for id in &ids {
        admin
            .query_drop(format!("KILL {id}"))
            .await
            .expect("kill the dump thread");
    }
    // Changes made while the stream is down: an update, a delete, an insert above the planned range.
    let live = job.ids_of("src").await;
    job.sql(&format!(
        "UPDATE src SET c_text = 'while the stream was down' WHERE id = {}",
        live[10]
    ))
    .await;
    job.sql(&format!("DELETE FROM src WHERE id = {}", live[20]))
        .await;
    job.insert_rows(&format!(
        "SELECT 7 AS s, {} AS id",
        live[live.len() - 1] + 5_000
    ))
    .await;

    let killed: Vec<String> = ids.iter().map(u64::to_string).collect();
    let new_dumps = format!("{dumps} AND ID NOT IN ({})", killed.join(","));
    wait_for(
        "the follower to open the stream again",
        DEADLINE,
        Duration::from_millis(200),
        || async {
            match job.sql_u64(&new_dumps).await {
                1 => Ok(()),
                n => Err(format!("{n} new dump threads")),
            }
        },
    )
    .await;
    assert!(
        follower.is_running(),
        "the follower exited:\n{}",
        follower.output_so_far()
    );
    wait_caught_up(&job).await;
    job.assert_target_equals_source().await;
    assert_eq!(
        job.sql_u64(&format!(
            "SELECT COUNT(*) FROM dst WHERE c_text = 'while the stream was down' AND id = {}",
            live[10]
        ))
        .await,
        1
    );
    let out = follower.output_so_far();
    assert!(out.contains("reading the change stream again"), "{out}");
    stop_following(follower, consumers).await;
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
