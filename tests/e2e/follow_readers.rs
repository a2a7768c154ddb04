//! The change-stream readers of `producer/src/follow` against the real servers (DESIGN.md §8): every change
//! committed after the position was taken comes out with the right keys, nothing else does, resuming from a
//! stored position repeats nothing checkpointed and misses nothing after it, and a source that cannot be
//! followed is refused with a message saying what to change.
//!
//! The negatives need servers configured otherwise than the shared ones; `scripts/services
//! --with-follow-negatives` starts them (ports below), and the tests that need them fail with that hint when
//! they are not up.

use std::time::{Duration, Instant};

use bitmig_producer::follow::binlog::{self, BinlogReader, BinlogSource};
use bitmig_producer::follow::{Change, ChangeReader, FollowError};
use mysql_async::prelude::Queryable;
use rand::Rng;

/// How long a test waits for a change it expects; generous: the machine is shared.
const DEADLINE: Duration = Duration::from_secs(60);

fn mysql_server_url() -> String {
    std::env::var("BITMIG_TEST_MYSQL_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306/".to_owned())
}

fn url_with_db(server: &str, db: &str) -> String {
    let mut u = url::Url::parse(server).expect("a MySQL URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

fn suffix() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

/// A database of its own on a MariaDB server, dropped on drop (also when the test fails).
struct MyDb {
    server: String,
    name: String,
    url: String,
}

impl MyDb {
    async fn new(server: &str) -> Self {
        let name = format!("bmf_{}", suffix());
        let mut c = mysql_async::Conn::from_url(server).await.expect("connect");
        c.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create db");
        c.disconnect().await.ok();
        Self {
            server: server.to_owned(),
            url: url_with_db(server, &name),
            name,
        }
    }

    async fn conn(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(self.url.as_str())
            .await
            .expect("connect to test db")
    }

    fn source(&self, table: &str, key: &str) -> BinlogSource {
        BinlogSource {
            url: self.url.clone(),
            database: Some(self.name.clone()),
            table: table.to_owned(),
            key: key.to_owned(),
            server_id: 100_000 + rand::rng().random_range(0..1_000_000),
        }
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs outside the test's runtime when the test panics: a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut c) = mysql_async::Conn::from_url(server.as_str()).await {
                    let _ = c
                        .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await;
                    let _ = c.disconnect().await;
                }
            });
        })
        .join();
    }
}

/// Reads changes until `want` keys have come, or fails at the deadline saying what came.
async fn read_keys(reader: &mut dyn ChangeReader, want: usize) -> Vec<Change> {
    let mut got: Vec<Change> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.iter().map(|c| c.keys.len()).sum::<usize>() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.next()).await {
            Ok(Ok(c)) => got.push(c),
            Ok(Err(e)) => panic!("reader failed after {got:?}: {e:#}"),
            Err(_) => panic!("only {got:?} within {DEADLINE:?}, wanted {want} keys"),
        }
    }
    got
}

/// Asserts nothing more comes: writes a marker row to `table` and expects only its key next.
async fn assert_next_is_marker(reader: &mut dyn ChangeReader, db: &MyDb, table: &str, marker: u64) {
    let mut c = db.conn().await;
    c.query_drop(format!(
        "INSERT INTO `{table}` (id, a, v) VALUES ({marker}, 0, 'marker')"
    ))
    .await
    .unwrap();
    let got = read_keys(reader, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].keys,
        vec![marker],
        "something came before the marker: {got:?}"
    );
}

fn all_keys(changes: &[Change]) -> Vec<u64> {
    changes
        .iter()
        .flat_map(|c| c.keys.iter().copied())
        .collect()
}

/// The job's key is not the first column (so its position matters) and is unsigned: ids above 2^63 and
/// above 2^31 come out right whatever metadata the binlog carries.
const TABLE_DDL: &str = "(a INT NOT NULL, id BIGINT UNSIGNED NOT NULL PRIMARY KEY, v VARCHAR(40))";

/// `gtid`: from the GTID state `position_now` takes on MariaDB; else from `file:pos`.
async fn binlog_changes_come_out_with_their_keys(image: &str, gtid: bool) {
    let db = MyDb::new(&mysql_server_url()).await;
    let mut c = db.conn().await;
    c.query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    c.query_drop(format!("CREATE TABLE other {TABLE_DDL}"))
        .await
        .unwrap();
    // Rows written before the position was taken never come out.
    c.query_drop(
        "INSERT INTO t (id, a, v) VALUES (1, 1, 'before'), (2, 2, 'before'), (3, 3, 'before')",
    )
    .await
    .unwrap();
    let src = db.source("t", "id");
    let position = if gtid {
        binlog::position_now(&src).await.expect("position")
    } else {
        binlog::file_position_now(&src).await.expect("position")
    };
    assert!(
        matches!(
            (gtid, binlog::parse_position(&position)),
            (true, Ok(binlog::BinlogPosition::Gtid(_)))
                | (false, Ok(binlog::BinlogPosition::File { .. }))
        ),
        "{position}: GTID wanted: {gtid}"
    );

    c.query_drop(format!("SET SESSION binlog_row_image = {image}"))
        .await
        .unwrap();
    let big = (1u64 << 63) + 5;
    c.query_drop(format!(
        "INSERT INTO t (id, a, v) VALUES (10, 1, 'x'), ({big}, 2, 'y')"
    ))
    .await
    .unwrap();
    c.query_drop("INSERT INTO other (id, a, v) VALUES (500, 1, 'other table')")
        .await
        .unwrap();
    c.query_drop("UPDATE t SET v = 'changed' WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("UPDATE t SET id = 20 WHERE id = 2")
        .await
        .unwrap();
    c.query_drop("UPDATE other SET id = 501 WHERE id = 500")
        .await
        .unwrap();
    c.query_drop("DELETE FROM t WHERE id = 3").await.unwrap();
    // A transaction of two statements comes as one change; a rolled back one does not come.
    c.query_drop("START TRANSACTION").await.unwrap();
    c.query_drop("INSERT INTO t (id, a, v) VALUES (30, 1, 'tx')")
        .await
        .unwrap();
    c.query_drop("UPDATE t SET a = 9 WHERE id = 10")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop("START TRANSACTION").await.unwrap();
    c.query_drop("INSERT INTO t (id, a, v) VALUES (40, 1, 'rolled back')")
        .await
        .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();

    let mut reader = BinlogReader::start(src.clone(), &position)
        .await
        .expect("start");
    let got = read_keys(&mut reader, 8).await;
    assert_eq!(
        got.iter().map(|c| c.keys.clone()).collect::<Vec<_>>(),
        vec![vec![10, big], vec![1], vec![20, 2], vec![3], vec![30, 10]],
        "row image {image}"
    );
    let now = chrono::Utc::now();
    for c in &got {
        assert!(
            (now - c.committed_at).num_seconds().abs() < 600,
            "commit time {c:?}"
        );
    }
    assert_next_is_marker(&mut reader, &db, "t", 99).await;

    // Resuming from the position of the third change gives exactly what followed it. The first stream goes
    // first, as a restarted follower's does: the server lets one dump thread per server_id live, and kills
    // the old one before the new one starts — which takes as long as the old one is stuck writing to a
    // socket nobody reads (30 s and more while other tests fill the binlog).
    drop(reader);
    let mut resumed = BinlogReader::start(src, &got[2].position)
        .await
        .expect("resume");
    let again = read_keys(&mut resumed, 4).await;
    assert_eq!(
        all_keys(&again),
        vec![3, 30, 10, 99],
        "resumed from {}",
        got[2].position
    );
}

#[tokio::test]
async fn binlog_reader_full_row_image() {
    binlog_changes_come_out_with_their_keys("FULL", true).await;
}

#[tokio::test]
async fn binlog_reader_minimal_row_image() {
    binlog_changes_come_out_with_their_keys("MINIMAL", true).await;
}

#[tokio::test]
async fn binlog_reader_resumes_from_a_file_position() {
    binlog_changes_come_out_with_their_keys("FULL", false).await;
}

/// A GTID state the server no longer has (a sequence number far ahead in a domain of its own) is refused
/// as a bad position, never read from somewhere else.
#[tokio::test]
async fn binlog_reader_refuses_a_gtid_state_the_server_does_not_have() {
    let db = MyDb::new(&mysql_server_url()).await;
    let mut c = db.conn().await;
    c.query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    let src = db.source("t", "id");
    let e = match BinlogReader::start(src, "4000000-1-99").await {
        Ok(mut reader) => tokio::time::timeout(DEADLINE, reader.next())
            .await
            .expect("an answer in time")
            .expect_err("a GTID the server never wrote"),
        Err(e) => e,
    };
    assert!(
        matches!(&e, FollowError::BadPosition { position, .. } if position == "4000000-1-99"),
        "{e:?}"
    );
}

/// A DDL that moves the key column: the reader reads its position again.
#[tokio::test]
async fn binlog_reader_follows_the_key_column_after_ddl() {
    let db = MyDb::new(&mysql_server_url()).await;
    let mut c = db.conn().await;
    c.query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    let src = db.source("t", "id");
    let position = binlog::position_now(&src).await.unwrap();
    let mut reader = BinlogReader::start(src, &position).await.unwrap();
    c.query_drop("INSERT INTO t (id, a, v) VALUES (5, 1, 'x')")
        .await
        .unwrap();
    assert_eq!(all_keys(&read_keys(&mut reader, 1).await), vec![5]);
    c.query_drop("ALTER TABLE t ADD COLUMN first_col INT NOT NULL DEFAULT 7 FIRST")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t (id, a, v) VALUES (6, 123456, 'y')")
        .await
        .unwrap();
    c.query_drop("DELETE FROM t WHERE id = 5").await.unwrap();
    assert_eq!(all_keys(&read_keys(&mut reader, 2).await), vec![6, 5]);
}

/// A writer whose session logs statements instead of rows stops the reader naming the event.
#[tokio::test]
async fn binlog_reader_stops_on_statement_format_dml() {
    let db = MyDb::new(&mysql_server_url()).await;
    let mut c = db.conn().await;
    c.query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    let src = db.source("t", "id");
    let position = binlog::position_now(&src).await.unwrap();
    let mut reader = BinlogReader::start(src, &position).await.unwrap();
    c.query_drop("SET SESSION binlog_format = STATEMENT")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t (id, a, v) VALUES (7, 1, 'statement')")
        .await
        .unwrap();
    let e = tokio::time::timeout(DEADLINE, reader.next())
        .await
        .expect("an answer in time");
    match e {
        Err(FollowError::Undecodable { event, detail, .. }) => {
            assert!(event.contains("QUERY_EVENT"), "{event}");
            assert!(detail.contains("binlog_format = ROW"), "{detail}");
        }
        other => panic!("expected Undecodable, got {other:?}"),
    }
}

/// A user without REPLICATION SLAVE / REPLICATION CLIENT is refused at start with what to grant.
#[tokio::test]
async fn binlog_reader_refuses_a_user_without_replication_grants() {
    let db = MyDb::new(&mysql_server_url()).await;
    let user = format!("bmf_u_{}", suffix());
    let mut root = db.conn().await;
    root.query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    root.query_drop(format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
        .await
        .unwrap();
    struct DropUser(String, String);
    impl Drop for DropUser {
        fn drop(&mut self) {
            let (server, user) = (self.0.clone(), self.1.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut c) = mysql_async::Conn::from_url(server.as_str()).await {
                        let _ = c
                            .query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
                            .await;
                    }
                });
            })
            .join();
        }
    }
    let _drop_user = DropUser(mysql_server_url(), user.clone());
    root.query_drop(format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.name))
        .await
        .unwrap();
    let mut u = url::Url::parse(&db.url).unwrap();
    u.set_username(&user).unwrap();
    u.set_password(Some("pw")).unwrap();
    let mut src = db.source("t", "id");
    src.url = u.to_string();
    let e = binlog::position_now(&src).await.expect_err("refused");
    let msg = match &e {
        FollowError::Refused(m) => m.0.clone(),
        other => panic!("expected Refused, got {other:?}"),
    };
    assert!(
        msg.contains("REPLICATION SLAVE") && msg.contains("REPLICATION CLIENT"),
        "{msg}"
    );
    assert!(msg.contains("GRANT"), "{msg}");
    // Maps to exit 2 through BadInput.
    assert_eq!(
        bitmig_shared::cli::exit_code_for(&anyhow::Error::from(e)),
        2
    );

    // With REPLICATION CLIENT only, REPLICATION SLAVE is still asked for.
    root.query_drop(format!("GRANT REPLICATION CLIENT ON *.* TO '{user}'@'%'"))
        .await
        .unwrap();
    let e = binlog::position_now(&src).await.expect_err("refused");
    let msg = format!("{:#}", anyhow::Error::from(e));
    assert!(
        msg.contains("REPLICATION SLAVE") && !msg.contains("REPLICATION CLIENT"),
        "{msg}"
    );
}

// --- negatives on the private servers of `scripts/services --with-follow-negatives` ------------------------------

const NEGATIVES_HINT: &str =
    "start the private servers with `scripts/services --with-follow-negatives`";

async fn refusal_on_private_mariadb(port: u16) -> String {
    let server = format!("mysql://root@127.0.0.1:{port}/");
    if mysql_async::Conn::from_url(server.as_str()).await.is_err() {
        panic!("no MariaDB on 127.0.0.1:{port}: {NEGATIVES_HINT}");
    }
    let db = MyDb::new(&server).await;
    db.conn()
        .await
        .query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    let e = binlog::position_now(&db.source("t", "id"))
        .await
        .expect_err("refused");
    let FollowError::Refused(ref m) = e else {
        panic!("expected Refused, got {e:?}")
    };
    let msg = m.0.clone();
    assert_eq!(
        bitmig_shared::cli::exit_code_for(&anyhow::Error::from(e)),
        2
    );
    msg
}

#[tokio::test]
async fn binlog_reader_refuses_a_server_with_the_binlog_off() {
    let msg = refusal_on_private_mariadb(3316).await;
    assert!(
        msg.contains("binlog is off") && msg.contains("log_bin"),
        "{msg}"
    );
}

#[tokio::test]
async fn binlog_reader_refuses_statement_format() {
    let msg = refusal_on_private_mariadb(3317).await;
    assert!(
        msg.contains("binlog_format is STATEMENT") && msg.contains("ROW"),
        "{msg}"
    );
}

/// binlog_row_metadata = FULL (global only, so on the private server of port 3318), both row images.
#[tokio::test]
async fn binlog_reader_with_full_row_metadata() {
    let server = "mysql://root@127.0.0.1:3318/";
    if mysql_async::Conn::from_url(server).await.is_err() {
        panic!("no MariaDB on 127.0.0.1:3318: {NEGATIVES_HINT}");
    }
    let db = MyDb::new(server).await;
    let mut c = db.conn().await;
    c.query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    c.query_drop("INSERT INTO t (id, a, v) VALUES (1, 1, 'a'), (2, 2, 'b')")
        .await
        .unwrap();
    let src = db.source("t", "id");
    let position = binlog::position_now(&src).await.unwrap();
    let mut reader = BinlogReader::start(src, &position).await.unwrap();
    c.query_drop("SET SESSION binlog_row_image = MINIMAL")
        .await
        .unwrap();
    c.query_drop("UPDATE t SET id = 12 WHERE id = 2")
        .await
        .unwrap();
    c.query_drop("SET SESSION binlog_row_image = FULL")
        .await
        .unwrap();
    c.query_drop("UPDATE t SET id = 11 WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("DELETE FROM t WHERE id = 12").await.unwrap();
    let got = read_keys(&mut reader, 5).await;
    assert_eq!(all_keys(&got), vec![12, 2, 11, 1, 12]);
}

// --- logical ----------------------------------------------------------------------------------------------------

use bitmig_producer::follow::logical::{self, LogicalReader, LogicalSource};

fn pg_server_url() -> String {
    std::env::var("BITMIG_TEST_PG_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/".to_owned())
}

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own, with the slot and publication the test names: all dropped on drop (slot first:
/// a leaked slot pins WAL on disk).
struct PgDb {
    server: String,
    name: String,
    url: String,
    slot: String,
}

impl PgDb {
    async fn new(server: &str) -> Self {
        let name = format!("bmf_{}", suffix());
        let admin = pg_connect(&url_with_db(server, "postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Self {
            server: server.to_owned(),
            url: url_with_db(server, &name),
            slot: format!("{name}_slot"),
            name,
        }
    }

    fn source(&self, table: &str) -> LogicalSource {
        LogicalSource {
            url: self.url.clone(),
            schema: None,
            table: table.to_owned(),
            key: "id".to_owned(),
            slot: self.slot.clone(),
            publication: format!("{}_pub", self.name),
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (server, name, slot) = (self.server.clone(), self.name.clone(), self.slot.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let admin = pg_connect(&url_with_db(&server, "postgres")).await;
                // The publication lives in the database and goes with it.
                let _ = admin
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await;
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            });
        })
        .join();
    }
}

#[tokio::test]
async fn logical_reader_changes_checkpoint_and_resume() {
    let db = PgDb::new(&pg_server_url()).await;
    let c = pg_connect(&db.url).await;
    c.batch_execute(
        "CREATE TABLE t (a int NOT NULL, id bigint PRIMARY KEY, v text);
         CREATE TABLE other (id bigint PRIMARY KEY, v text);
         INSERT INTO t VALUES (1, 1, 'before'), (2, 2, 'before'), (3, 3, 'before');",
    )
    .await
    .unwrap();
    let src = db.source("t");
    let position = logical::position_now(&src).await.expect("position");
    assert!(logical::parse_lsn(&position).is_some(), "{position}");
    // Idempotent: the slot and publication exist now; the position is the slot's.
    assert_eq!(logical::position_now(&src).await.unwrap(), position);
    // One statement per call: a multi-statement simple query would be one transaction.
    for sql in [
        "INSERT INTO t VALUES (1, 10, 'x'), (2, 9223372036854775807, 'y')",
        "INSERT INTO other VALUES (500, 'other table')",
        "UPDATE t SET v = 'changed' WHERE id = 1",
        "UPDATE t SET id = 20 WHERE id = 2",
        "DELETE FROM t WHERE id = 3",
        "BEGIN; INSERT INTO t VALUES (1, 30, 'tx'); UPDATE t SET a = 9 WHERE id = 10; COMMIT",
        "BEGIN; INSERT INTO t VALUES (1, 40, 'rolled back'); ROLLBACK",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let mut reader = LogicalReader::start(src.clone(), &position)
        .await
        .expect("start");
    let got = read_keys(&mut reader, 8).await;
    assert_eq!(
        got.iter().map(|c| c.keys.clone()).collect::<Vec<_>>(),
        vec![
            vec![10, 9223372036854775807],
            vec![1],
            vec![20, 2],
            vec![3],
            vec![30, 10]
        ]
    );
    for c in &got {
        assert!(
            (chrono::Utc::now() - c.committed_at).num_seconds().abs() < 600,
            "{c:?}"
        );
    }
    // Checkpoint the second change: the slot's confirmed LSN is it, and a new reader from it (a restart)
    // gives exactly what followed.
    reader.checkpoint(&got[1].position).await.unwrap();
    let confirmed: String = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        logical::parse_lsn(&confirmed),
        logical::parse_lsn(&got[1].position)
    );
    drop(reader);
    let mut resumed = LogicalReader::start(src.clone(), &got[1].position)
        .await
        .expect("resume");
    c.batch_execute("INSERT INTO t VALUES (0, 99, 'marker')")
        .await
        .unwrap();
    let again = read_keys(&mut resumed, 6).await;
    assert_eq!(all_keys(&again), vec![20, 2, 3, 30, 10, 99]);
    // A position before the checkpoint is refused: what lay between is gone from the slot.
    let e = LogicalReader::start(src, &position)
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, FollowError::BadPosition { .. }), "{e:?}");
}

#[tokio::test]
async fn logical_reader_refuses_wal_level_replica() {
    let server = "postgres://postgres@127.0.0.1:5442/";
    if tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .is_err()
    {
        panic!("no PostgreSQL on 127.0.0.1:5442: {NEGATIVES_HINT}");
    }
    let db = PgDb::new(server).await;
    pg_connect(&db.url)
        .await
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let e = logical::position_now(&db.source("t"))
        .await
        .expect_err("refused");
    let FollowError::Refused(ref m) = e else {
        panic!("expected Refused, got {e:?}")
    };
    assert!(
        m.0.contains("wal_level is replica") && m.0.contains("wal_level = logical"),
        "{}",
        m.0
    );
    assert_eq!(
        bitmig_shared::cli::exit_code_for(&anyhow::Error::from(e)),
        2
    );
}

#[tokio::test]
async fn logical_reader_refuses_a_key_outside_the_replica_identity() {
    let db = PgDb::new(&pg_server_url()).await;
    pg_connect(&db.url)
        .await
        .batch_execute("CREATE TABLE t (pk int PRIMARY KEY, id bigint)")
        .await
        .unwrap();
    let e = logical::position_now(&db.source("t"))
        .await
        .expect_err("refused");
    let FollowError::Refused(ref m) = e else {
        panic!("expected Refused, got {e:?}")
    };
    assert!(m.0.contains("REPLICA IDENTITY FULL"), "{}", m.0);
}

// --- queue ------------------------------------------------------------------------------------------------------

use bitmig_producer::follow::queue::{QueueReader, QueueSource};

pub(crate) fn amqp_url() -> String {
    std::env::var("BITMIG_AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue of the test's own that some CDC tool would publish to; deleted on drop.
pub(crate) struct ChangeQueue {
    pub(crate) name: String,
    channel: lapin::Channel,
    _conn: lapin::Connection,
}

impl ChangeQueue {
    pub(crate) async fn new() -> Self {
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let name = format!("bmf.changes.{}", suffix());
        channel
            .queue_declare(name.as_str().into(), Default::default(), Default::default())
            .await
            .unwrap();
        Self {
            name,
            channel,
            _conn: conn,
        }
    }

    pub(crate) async fn publish(&self, body: &str) {
        self.channel
            .basic_publish(
                "".into(),
                self.name.as_str().into(),
                Default::default(),
                body.as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
    }

    /// `(ready messages, consumers)`.
    pub(crate) async fn counts(&self) -> (u32, u32) {
        let q = self
            .channel
            .queue_declare(
                self.name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        (q.message_count(), q.consumer_count())
    }
}

impl Drop for ChangeQueue {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(conn) = lapin::Connection::connect(&amqp_url(), Default::default()).await
                {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(name.as_str().into(), Default::default())
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn queue_reader_debezium_and_canal_messages_acked_only_at_checkpoint() {
    let q = ChangeQueue::new().await;
    let debezium = |before: &str, after: &str| {
        format!(
            r#"{{"schema":{{}},"payload":{{"before":{before},"after":{after},"source":{{"ts_ms":1700000000123}},"op":"u"}}}}"#
        )
    };
    q.publish(&debezium("null", r#"{"id":5,"v":"x"}"#)).await;
    q.publish(&debezium(r#"{"id":5}"#, r#"{"id":6}"#)).await;
    q.publish(&debezium(r#"{"id":6}"#, r#"{"id":6}"#)).await;
    q.publish(&debezium(r#"{"id":6}"#, r#"{"id":6}"#)).await; // a duplicate
    q.publish(&debezium(r#"{"id":7}"#, "null")).await;
    q.publish("").await; // a tombstone: no key
    q.publish(r#"{"payload":{"after":{"name":"no id"}}}"#).await;
    let src = QueueSource {
        amqp_url: amqp_url(),
        queue: q.name.clone(),
        keys: vec!["/payload/after/id".into(), "/payload/before/id".into()],
        prefetch: 100,
    };
    let mut reader = QueueReader::start(&src).await.expect("start");
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(
            tokio::time::timeout(DEADLINE, reader.next())
                .await
                .expect("in time")
                .expect("a change"),
        );
    }
    let keys: Vec<Vec<u64>> = got.iter().map(|c| c.keys.clone()).collect();
    assert_eq!(
        keys,
        vec![
            vec![5],
            vec![6, 5],
            vec![6],
            vec![6],
            vec![7],
            vec![],
            vec![]
        ]
    );
    assert_eq!(got[0].committed_at.timestamp_millis(), 1_700_000_000_123);
    assert!(got[..5].iter().all(|c| c.no_key.is_none()));
    let nk = got[5].no_key.as_ref().expect("tombstone reported");
    assert!(nk.reason.contains("empty"), "{}", nk.reason);
    let nk = got[6].no_key.as_ref().expect("no key reported");
    assert!(
        nk.reason.contains("no key at /payload/after/id"),
        "{}",
        nk.reason
    );
    assert_eq!(
        nk.body,
        br#"{"payload":{"after":{"name":"no id"}}}"#.to_vec()
    );

    // Checkpoint the first three; drop the reader: the other four come again to the next one.
    reader.checkpoint(&got[2].position).await.unwrap();
    drop(reader);
    let deadline = Instant::now() + DEADLINE;
    while q.counts().await != (4, 0) {
        assert!(
            Instant::now() < deadline,
            "queue holds {:?}, wanted 4 messages and no consumer",
            q.counts().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reader = QueueReader::start(&src).await.expect("restart");
    let mut again = Vec::new();
    for _ in 0..4 {
        again.push(
            tokio::time::timeout(DEADLINE, reader.next())
                .await
                .expect("in time")
                .expect("a change"),
        );
    }
    assert_eq!(
        again.iter().map(|c| c.keys.clone()).collect::<Vec<_>>(),
        vec![vec![6], vec![7], vec![], vec![]]
    );
    reader.checkpoint(&again[3].position).await.unwrap();
    drop(reader);
    let deadline = Instant::now() + DEADLINE;
    while q.counts().await != (0, 0) {
        assert!(
            Instant::now() < deadline,
            "queue holds {:?}",
            q.counts().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Canal: data[*].id (strings), with old[*].id for a changed key.
    q.publish(r#"{"data":[{"id":"1","v":"a"},{"id":"2","v":"b"}],"old":[{"id":"9"},{"v":"x"}],"type":"UPDATE","es":1700000000000,"table":"t"}"#).await;
    let src = QueueSource {
        keys: vec!["/data/*/id".into(), "/old/*/id".into()],
        ..src
    };
    let mut reader = QueueReader::start(&src).await.unwrap();
    let c = tokio::time::timeout(DEADLINE, reader.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.keys, vec![1, 2, 9]);
    reader.checkpoint(&c.position).await.unwrap();
}

#[tokio::test]
async fn queue_reader_refuses_a_missing_queue() {
    let src = QueueSource {
        amqp_url: amqp_url(),
        queue: format!("bmf.missing.{}", suffix()),
        keys: vec!["/id".into()],
        prefetch: 10,
    };
    let e = QueueReader::start(&src).await.err().expect("refused");
    let FollowError::Refused(ref m) = e else {
        panic!("expected Refused, got {e:?}")
    };
    assert!(m.0.contains("does not exist"), "{}", m.0);
}

// --- throughput (not part of the suite: `--run-ignored only follow_readers::throughput`) ---------------------------

/// Reads a backlog of `n` changed keys and returns keys/s and transactions/s.
async fn drain(reader: &mut dyn ChangeReader, n: usize) -> (f64, f64, Duration) {
    let t = Instant::now();
    let got = read_keys(reader, n).await;
    let s = t.elapsed().as_secs_f64();
    (n as f64 / s, got.len() as f64 / s, t.elapsed())
}

/// The decode rate of the binlog and logical readers on a backlog: 50 000 rows in one transaction, then
/// 5 000 single-row transactions (the follower's target is 2 000 changes/s).
#[tokio::test]
#[ignore = "a measurement, not a test: run it alone"]
async fn throughput_binlog_and_logical() {
    const ROWS: u64 = 50_000;
    const TXS: u64 = 5_000;
    let db = MyDb::new(&mysql_server_url()).await;
    let mut c = db.conn().await;
    c.query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    let src = db.source("t", "id");
    let position = binlog::position_now(&src).await.unwrap();
    c.query_drop(format!(
        "INSERT INTO t (id, a, v) SELECT seq, seq, 'payload payload' FROM seq_1_to_{ROWS}"
    ))
    .await
    .unwrap();
    let mid = binlog::position_now(&src).await.unwrap();
    for i in 0..TXS {
        c.exec_drop("UPDATE t SET a = a + 1 WHERE id = ?", (i + 1,))
            .await
            .unwrap();
    }
    let mut reader = BinlogReader::start(src.clone(), &position).await.unwrap();
    let (k, _, el) = drain(&mut reader, ROWS as usize).await;
    eprintln!("binlog: {ROWS} rows in one transaction: {k:.0} keys/s ({el:?})");
    drop(reader);
    let mut reader = BinlogReader::start(src, &mid).await.unwrap();
    let (k, tx, el) = drain(&mut reader, TXS as usize).await;
    eprintln!("binlog: {TXS} one-row transactions: {k:.0} keys/s, {tx:.0} transactions/s ({el:?})");

    let pg = PgDb::new(&pg_server_url()).await;
    let p = pg_connect(&pg.url).await;
    p.batch_execute("CREATE TABLE t (a int NOT NULL, id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let lsrc = pg.source("t");
    let position = logical::position_now(&lsrc).await.unwrap();
    p.batch_execute(&format!(
        "INSERT INTO t SELECT g, g, 'payload payload' FROM generate_series(1, {ROWS}) g"
    ))
    .await
    .unwrap();
    let upd = p
        .prepare("UPDATE t SET a = a + 1 WHERE id = $1")
        .await
        .unwrap();
    for i in 0..TXS as i64 {
        p.execute(&upd, &[&(i + 1)]).await.unwrap();
    }
    let mut reader = LogicalReader::start(lsrc.clone(), &position).await.unwrap();
    let t = Instant::now();
    let first = read_keys(&mut reader, ROWS as usize).await;
    eprintln!(
        "logical: {ROWS} rows in one transaction: {:.0} keys/s ({:?})",
        ROWS as f64 / t.elapsed().as_secs_f64(),
        t.elapsed()
    );
    // Checkpoint as the producer would, then the small transactions.
    reader
        .checkpoint(&first.last().unwrap().position)
        .await
        .unwrap();
    let (k, tx, el) = drain(&mut reader, TXS as usize).await;
    eprintln!(
        "logical: {TXS} one-row transactions: {k:.0} keys/s, {tx:.0} transactions/s ({el:?})"
    );
}

/// An idle source keeps the stream alive with heartbeats: a reader allowed 3 s of silence is still
/// waiting, not failed, after 6 s without a change (the private server of port 3318 is idle).
#[tokio::test]
async fn binlog_reader_idle_stream_lives_on_heartbeats() {
    let server = "mysql://root@127.0.0.1:3318/";
    if mysql_async::Conn::from_url(server).await.is_err() {
        panic!("no MariaDB on 127.0.0.1:3318: {NEGATIVES_HINT}");
    }
    let db = MyDb::new(server).await;
    db.conn()
        .await
        .query_drop(format!("CREATE TABLE t {TABLE_DDL}"))
        .await
        .unwrap();
    let src = db.source("t", "id");
    let position = binlog::position_now(&src).await.unwrap();
    let mut reader = BinlogReader::start(src, &position).await.unwrap();
    reader.silence = Duration::from_secs(3);
    match tokio::time::timeout(Duration::from_secs(6), reader.next()).await {
        Err(_) => {}
        Ok(r) => panic!("expected no change and no error, got {r:?}"),
    }
    // The heartbeats vouch that everything the server wrote until a moment ago was read.
    let up_to = ChangeReader::read_up_to(&reader).expect("a binlog reader vouches");
    let behind = chrono::Utc::now() - up_to;
    assert!(
        behind < chrono::TimeDelta::seconds(3),
        "read up to {up_to}, {behind} behind on an idle server"
    );
    db.conn()
        .await
        .query_drop("INSERT INTO t (id, a, v) VALUES (8, 1, 'after the wait')")
        .await
        .unwrap();
    assert_eq!(all_keys(&read_keys(&mut reader, 1).await), vec![8]);
}

/// A compressed rows event (log_bin_compress, on the private server of port 3318, for events over 1 KiB)
/// stops the reader with an error naming the event; a small one before it still comes out.
#[tokio::test]
async fn binlog_reader_stops_on_a_compressed_event() {
    let server = "mysql://root@127.0.0.1:3318/";
    let Ok(mut probe) = mysql_async::Conn::from_url(server).await else {
        panic!("no MariaDB on 127.0.0.1:3318: {NEGATIVES_HINT}");
    };
    let compress: Option<u8> = probe
        .query_first("SELECT @@log_bin_compress")
        .await
        .unwrap();
    assert_eq!(
        compress,
        Some(1),
        "3318 runs without log_bin_compress: restart it with {NEGATIVES_HINT}"
    );
    let db = MyDb::new(server).await;
    let mut c = db.conn().await;
    c.query_drop("CREATE TABLE t (id BIGINT PRIMARY KEY, a INT NOT NULL, v TEXT)")
        .await
        .unwrap();
    let src = db.source("t", "id");
    let position = binlog::position_now(&src).await.unwrap();
    let mut reader = BinlogReader::start(src, &position).await.unwrap();
    c.query_drop("INSERT INTO t VALUES (1, 1, 'small')")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t VALUES (2, 1, REPEAT('large ', 2000))")
        .await
        .unwrap();
    assert_eq!(all_keys(&read_keys(&mut reader, 1).await), vec![1]);
    match tokio::time::timeout(DEADLINE, reader.next())
        .await
        .expect("an answer in time")
    {
        Err(FollowError::Undecodable { event, detail, .. }) => {
            assert!(event.contains("COMPRESSED"), "{event}");
            assert!(detail.contains("log_bin_compress"), "{detail}");
        }
        other => panic!("expected Undecodable, got {other:?}"),
    }
}
