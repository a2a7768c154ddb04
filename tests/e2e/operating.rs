//! The building blocks of operating a job (DESIGN.md §11), against the real Redis and MariaDB: the `control`
//! hash and its watch, the shared rate budget, the `max_threads_running` hold, the replica-lag reading, and
//! the `/metrics`, `/healthz`, `/readyz` endpoint. (The programs are wired to them later; these tests drive
//! the library the way a worker will.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitmig_shared::control::{Control, WATCH_EVERY};
use bitmig_shared::job::DbUrl;
use bitmig_shared::redis_con::RedisCon;
use bitmig_shared::telemetry::metrics::{self, BatchOutcome, Metrics, Readiness, Stage};
use bitmig_shared::throttle::{LoadCheck, Reason, ReplicaLag, ThreadsRunning, Throttle};
use mysql_async::prelude::Queryable;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::helpers::{wait_for, TestJob};

async fn redis_con(job: &TestJob) -> RedisCon {
    RedisCon::connect(&job.services.redis_url)
        .await
        .expect("connect to Redis")
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_reach_a_watching_worker_within_two_seconds() {
    let job = TestJob::new(1_000, 100).await;
    let control = Control::new(redis_con(&job).await, &job.name);
    let state = control.state().await.expect("read control");
    assert!(!state.paused && state.throttled.is_none(), "{state:?}");

    let watch = control.watch(WATCH_EVERY).await.expect("watch");
    assert!(!watch.is_paused());

    control.pause("reindexing orders").await.expect("pause");
    let paused_at = Instant::now();
    wait_for(
        "the watch to see the pause",
        Duration::from_secs(2),
        Duration::from_millis(20),
        || async {
            if watch.is_paused() {
                Ok(())
            } else {
                Err("running".to_owned())
            }
        },
    )
    .await;
    eprintln!("pause seen after {:?}", paused_at.elapsed());

    // What an operator sees with redis-cli.
    let mut redis = job.redis.clone();
    let fields: std::collections::HashMap<String, String> = redis
        .hgetall(job.job_key("control"))
        .await
        .expect("HGETALL control");
    assert_eq!(
        fields.get("paused").map(String::as_str),
        Some("1"),
        "{fields:?}"
    );
    assert_eq!(
        fields.get("reason").map(String::as_str),
        Some("reindexing orders"),
        "{fields:?}"
    );
    assert!(
        fields.get("at").is_some_and(|at| at.ends_with('Z')),
        "{fields:?}"
    );

    // A worker started while paused waits; resume releases it.
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
        let released = released.clone();
        let mut rx = watch.subscribe();
        tokio::spawn(async move {
            let _ = rx.wait_for(|paused| !paused).await;
            released.store(true, Ordering::SeqCst);
        })
    };
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!released.load(Ordering::SeqCst), "a paused worker went on");

    control.resume().await.expect("resume");
    tokio::time::timeout(Duration::from_secs(2), watch.wait_running())
        .await
        .expect("the watch must see resume within 2 s");
    tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("waiter released")
        .unwrap();
    let state = control.state().await.expect("read control");
    assert!(!state.paused && state.reason.is_empty(), "{state:?}");

    control
        .set_throttled(Some("max_rows_per_s: 10 rows per second"))
        .await
        .unwrap();
    assert_eq!(
        control.state().await.unwrap().throttled.as_deref(),
        Some("max_rows_per_s: 10 rows per second")
    );
    control.set_throttled(None).await.unwrap();
    assert_eq!(control.state().await.unwrap().throttled, None);
}

/// Three workers, each with a throttle of its own (as three consumer processes would have), share one
/// budget of 1 000 rows per second: over ~10 s they move 10 000 rows, ±20 %.
#[tokio::test(flavor = "multi_thread")]
async fn workers_share_one_rate_budget() {
    const RATE: u64 = 1_000;
    const RUN: Duration = Duration::from_secs(10);
    let job = TestJob::new(1_000, 100).await;
    let moved = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut throttles = Vec::new();
    for batch in [40u64, 50, 70] {
        let throttle = Arc::new(Throttle::with_checks(
            redis_con(&job).await,
            &job.name,
            Some(RATE),
            vec![],
        ));
        throttles.push(throttle.clone());
        let moved = moved.clone();
        workers.push(tokio::spawn(async move {
            loop {
                throttle.wait_for_budget(batch).await.expect("budget");
                if started.elapsed() >= RUN {
                    break;
                }
                moved.fetch_add(batch, Ordering::SeqCst);
            }
        }));
    }
    let control = Control::new(redis_con(&job).await, &job.name);
    tokio::time::sleep(RUN / 2).await;
    let throttled = control.state().await.unwrap().throttled;
    for w in workers {
        w.await.expect("worker");
    }
    let moved = moved.load(Ordering::SeqCst);
    let want = RATE * RUN.as_secs();
    eprintln!("moved {moved} rows in {RUN:?} (want {want} ±20 %)");
    assert!(
        moved as f64 >= want as f64 * 0.8 && moved as f64 <= want as f64 * 1.2,
        "three workers moved {moved} rows in {RUN:?} under max_rows_per_s = {RATE}"
    );
    assert!(
        throttled
            .as_deref()
            .is_some_and(|t| t.starts_with("max_rows_per_s")),
        "control.throttled during the run: {throttled:?}"
    );
    let waited: f64 = throttles
        .iter()
        .map(|t| t.throttled_seconds(Reason::RowsPerSecond))
        .sum();
    assert!(
        waited > 5.0,
        "three workers sharing the budget waited only {waited:.1} s in all"
    );
}

/// `max_threads_running`: while the test holds sleeping queries on the source, a worker waits and
/// `control.throttled` says why; when they end, it goes on.
#[tokio::test(flavor = "multi_thread")]
async fn threads_running_holds_work_until_the_load_goes() {
    const SLEEPERS: u64 = 16;
    let job = TestJob::new(1_000, 100).await;
    let url = DbUrl::parse(&job.database_url).unwrap();
    let probe = ThreadsRunning::new("source", &url, u64::MAX).unwrap();
    let mut baseline = u64::MAX;
    for _ in 0..3 {
        baseline = baseline.min(probe.read().await.expect("Threads_running"));
    }
    let limit = baseline + SLEEPERS / 4;
    let throttle = Arc::new(
        Throttle::with_checks(
            redis_con(&job).await,
            &job.name,
            None,
            vec![
                Box::new(ThreadsRunning::new("source", &url, limit).unwrap()) as Box<dyn LoadCheck>,
            ],
        )
        .with_metrics(Metrics::new(&job.name)),
    );

    let mut sleeper_ids = Vec::new();
    let mut sleepers = Vec::new();
    for _ in 0..SLEEPERS {
        let mut conn = job.conn().await;
        let id: u64 = conn
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
        sleeper_ids.push(id);
        // Ended by KILL QUERY below; SLEEP returns 1 when interrupted.
        sleepers.push(tokio::spawn(async move {
            let _: Option<u64> = conn.query_first("SELECT SLEEP(120)").await.ok().flatten();
        }));
    }
    wait_for(
        "the sleepers to run",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let n = probe.read().await?;
            if n > limit {
                Ok(())
            } else {
                Err(format!("Threads_running {n} ≤ {limit}"))
            }
        },
    )
    .await;

    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let (throttle, done) = (throttle.clone(), done.clone());
        tokio::spawn(async move {
            throttle.wait_for_budget(100).await.expect("wait");
            done.store(true, Ordering::SeqCst);
        })
    };
    let control = Control::new(redis_con(&job).await, &job.name);
    let why = wait_for(
        "control.throttled",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            match control.state().await.map_err(|e| e.to_string())?.throttled {
                Some(t) => Ok(t),
                None => Err("not throttled".into()),
            }
        },
    )
    .await;
    assert!(why.starts_with("max_threads_running: source runs"), "{why}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!done.load(Ordering::SeqCst), "work went on while {why}");

    let mut killer = job.conn().await;
    for id in &sleeper_ids {
        killer.query_drop(format!("KILL QUERY {id}")).await.ok();
    }
    for s in sleepers {
        s.await.ok();
    }
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("work must resume once the sleeping queries end")
        .unwrap();
    assert!(throttle.throttled_seconds(Reason::ThreadsRunning) >= 2.0);
    assert_eq!(
        control.state().await.unwrap().throttled,
        None,
        "released, control.throttled must go"
    );
}

/// Misplaced or idle replicas: the local MariaDB primary is no replica (`SHOW REPLICA STATUS` is empty), so its
/// check fails and holds work (the lag is unknown); the local PostgreSQL has no standby, so
/// `pg_stat_replication` yields no lag and the check passes.
#[tokio::test(flavor = "multi_thread")]
async fn replica_lag_of_a_primary() {
    let job = TestJob::new(1_000, 100).await;
    let mysql = ReplicaLag::new(
        &DbUrl::parse(&job.database_url).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = mysql
        .read()
        .await
        .expect_err("the local MariaDB is no replica");
    assert!(err.contains("not a replica"), "{err}");
    let held = mysql.over().await.expect_err("an unknown lag is an error");
    assert!(held.contains("not a replica"), "{held}");

    let pg = ReplicaLag::new(
        &DbUrl::parse(&crate::helpers::pg::server_url()).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        pg.read().await.expect("pg_stat_replication"),
        Some(Duration::ZERO)
    );
    assert_eq!(pg.over().await.expect("pg lag"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_serves_text_health_and_readiness() {
    let job = TestJob::new(1_000, 100).await;
    let m = Metrics::new(&job.name);
    m.rows(700, 20, 3);
    m.batch(BatchOutcome::Done);
    m.batch(BatchOutcome::Retried);
    m.stage(Stage::SourceRead, Duration::from_millis(4));
    m.stage(Stage::Ledger, Duration::from_millis(2));
    m.ids_published(723);
    m.set_paused(false);

    // The "broker" check connects to a port the test holds open, then closes.
    let broker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_addr = broker.local_addr().unwrap();
    let readiness = Readiness::default();
    readiness.register_redis(redis_con(&job).await);
    readiness.register("broker", move || async move {
        tokio::net::TcpStream::connect(broker_addr)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    readiness
        .register_sql("source", &DbUrl::parse(&job.database_url).unwrap())
        .unwrap();
    readiness
        .register_sql(
            "target",
            &DbUrl::parse(&crate::helpers::pg::server_url()).unwrap(),
        )
        .unwrap();
    let stop = CancellationToken::new();
    let server = metrics::serve("127.0.0.1:0", m.clone(), readiness, stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(url).send().await.expect("GET");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };

    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    let label = format!("job=\"{}\"", job.name);
    for want in [
        format!("bitmig_rows_written_total{{{label}}} 700"),
        format!("bitmig_rows_gone_total{{{label}}} 20"),
        format!("bitmig_rows_failed_total{{{label}}} 3"),
        format!("bitmig_batches_total{{{label},outcome=\"done\"}} 1"),
        format!("bitmig_batches_total{{{label},outcome=\"retried\"}} 1"),
        format!("bitmig_batch_seconds_count{{{label},stage=\"source_read\"}} 1"),
        format!("bitmig_ids_published_total{{{label}}} 723"),
        format!("bitmig_paused{{{label}}} 0"),
        format!("bitmig_follow_lag_seconds{{{label}}} 0.0"),
        format!("bitmig_batches_total{{{label},outcome=\"dead_lettered\"}} 0"),
        format!("bitmig_throttled_seconds_total{{{label},reason=\"max_replica_lag\"}} 0.0"),
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "no line {want:?} in\n{text}"
        );
    }
    for name in [
        "bitmig_groups_produced",
        "bitmig_missing_ids",
        "bitmig_throttled_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no {name} in\n{text}"
        );
    }
    assert_eq!(get("/healthz").await.0, 200);
    let (status, body) = get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok redis\nok broker\nok source\nok target\n")
    );

    drop(broker);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("ok redis\nfail broker: "), "{body}");
    assert!(body.ends_with("ok source\nok target\n"), "{body}");

    let _broker = tokio::net::TcpListener::bind(broker_addr).await.unwrap();
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(get("/nothing").await.0, 404);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server stops")
        .unwrap();
}

/// The replica's URL (`scripts/services --with-replica`): `BITMIG_TEST_REPLICA_URL` or the loopback default.
fn replica_url() -> String {
    std::env::var("BITMIG_TEST_REPLICA_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3307/".to_owned())
}

/// `max_replica_lag` on a real MariaDB replica: the test holds a lock on the replica's copy of a table, so the
/// replica cannot apply a row written on the primary and falls behind; work waits and `control.throttled`
/// names the replica; the lock goes, the replica catches up, work goes on.
#[tokio::test(flavor = "multi_thread")]
async fn replica_lag_holds_work_while_the_replica_falls_behind() {
    let job = TestJob::new(1_000, 100).await;
    // Only databases named bitmig_lag% are replicated (scripts/services).
    let db = format!("bitmig_lag_{}", job.name);
    let replica_url = DbUrl::parse(&replica_url()).unwrap();
    let mut replica = mysql_async::Conn::from_url(replica_url.expose()).await.unwrap_or_else(|e| {
        panic!("connect to the MariaDB replica {replica_url} (scripts/services --with-replica): {e}")
    });
    let mut primary = mysql_async::Conn::from_url(&job.services.mysql_url)
        .await
        .unwrap();
    struct DropDb(String, String);
    impl Drop for DropDb {
        fn drop(&mut self) {
            let (url, db) = (self.0.clone(), self.1.clone());
            crate::helpers::clean_up(format!("database {db}"), async move {
                crate::helpers::drop_database(&url, &db).await;
            });
        }
    }
    let _drop = DropDb(job.services.mysql_url.clone(), db.clone());
    primary
        .query_drop(format!("CREATE DATABASE `{db}`"))
        .await
        .unwrap();
    primary
        .query_drop(format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY)"))
        .await
        .unwrap();
    let lag = ReplicaLag::new(&replica_url, Duration::from_secs(1)).unwrap();
    wait_for("the table on the replica", Duration::from_secs(30), Duration::from_millis(200), || {
        let url = replica_url.clone();
        let db = db.clone();
        async move {
            let mut c = mysql_async::Conn::from_url(url.expose()).await.map_err(|e| e.to_string())?;
            let n: Option<u64> = c
                .query_first(format!("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{db}'"))
                .await
                .map_err(|e| e.to_string())?;
            if n == Some(1) { Ok(()) } else { Err("not yet".into()) }
        }
    })
    .await;
    assert_eq!(
        lag.over().await.expect("lag"),
        None,
        "the replica lags before the test made it"
    );

    replica
        .query_drop(format!("LOCK TABLES `{db}`.t WRITE"))
        .await
        .unwrap();
    primary
        .query_drop(format!("INSERT INTO `{db}`.t VALUES (1)"))
        .await
        .unwrap();
    let throttle = Arc::new(Throttle::with_checks(
        redis_con(&job).await,
        &job.name,
        None,
        vec![
            Box::new(ReplicaLag::new(&replica_url, Duration::from_secs(1)).unwrap())
                as Box<dyn LoadCheck>,
        ],
    ));
    let why = wait_for(
        "the replica to lag over 1 s",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            match lag.over().await? {
                Some(why) => Ok(why),
                None => Err(format!("lag {:?}", lag.read().await)),
            }
        },
    )
    .await;
    assert!(
        why.starts_with("max_replica_lag: replica mysql://127.0.0.1:3307/ lags "),
        "{why}"
    );
    let worker = {
        let throttle = throttle.clone();
        tokio::spawn(async move { throttle.wait_for_budget(10).await.expect("wait") })
    };
    let control = Control::new(redis_con(&job).await, &job.name);
    wait_for(
        "control.throttled",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            match control.state().await.map_err(|e| e.to_string())?.throttled {
                Some(t) if t.starts_with("max_replica_lag") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        !worker.is_finished(),
        "work went on while the replica lagged"
    );

    replica.query_drop("UNLOCK TABLES").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("work must resume once the replica catches up")
        .unwrap();
    let n: Option<u64> = replica
        .query_first(format!("SELECT COUNT(*) FROM `{db}`.t"))
        .await
        .unwrap();
    assert_eq!(n, Some(1), "the replica applied the row");
    assert!(throttle.throttled_seconds(Reason::ReplicaLag) >= 1.0);
}

/// `max_threads_running` on PostgreSQL counts active client backends: sessions the test keeps busy in
/// `pg_sleep` push the count over the limit, and it falls back when they are cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn threads_running_counts_active_postgres_backends() {
    const SLEEPERS: u64 = 6;
    let url = DbUrl::parse(&crate::helpers::pg::server_url()).unwrap();
    let probe = ThreadsRunning::new("target", &url, u64::MAX).unwrap();
    let mut baseline = u64::MAX;
    for _ in 0..3 {
        baseline = baseline.min(probe.read().await.expect("pg_stat_activity"));
    }
    assert!(baseline >= 1, "the check's own query is an active backend");
    let limit = baseline + SLEEPERS / 2;
    let check = ThreadsRunning::new("target", &url, limit).unwrap();

    let mut cancels = Vec::new();
    let mut sleepers = Vec::new();
    for _ in 0..SLEEPERS {
        let (client, conn) = tokio_postgres::connect(url.expose(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(conn);
        cancels.push(client.cancel_token());
        sleepers.push(tokio::spawn(async move {
            // Cancelled below; the error is the cancellation.
            let _ = client.simple_query("SELECT pg_sleep(120)").await;
        }));
    }
    let why = wait_for(
        "the sleepers to be active",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            check
                .over()
                .await?
                .ok_or_else(|| "under the limit".to_owned())
        },
    )
    .await;
    assert!(why.starts_with("max_threads_running: target runs"), "{why}");
    for c in cancels {
        c.cancel_query(tokio_postgres::NoTls).await.ok();
    }
    for s in sleepers {
        s.await.ok();
    }
    wait_for(
        "the load to go",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            match check.over().await? {
                None => Ok(()),
                Some(why) => Err(why),
            }
        },
    )
    .await;
}
