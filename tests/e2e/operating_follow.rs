//! Operating a followed job (DESIGN.md §8, §11) through the real programs: `bitmig-producer --follow
//! --metrics-addr` serves the walk's and the follower's metrics (`bitmig_follow_lag_seconds` among them),
//! and `bitmig-compensator pause` stops the follower reading and publishing within 2 s — changes made
//! during the pause are neither read, published nor checkpointed — while `resume` brings them to the target.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::Rng;

use crate::helpers::metrics::{free_addr, http_get, sample, scrape, wait_for_sample};
use crate::helpers::{wait_for, Bin, Bits, TestJob, TWO_POW_40};

const DEADLINE: Duration = Duration::from_secs(240);

/// The default job plus a binlog `[follow]` section with a short settle.
fn follow_job(job: &TestJob) -> String {
    let server_id = 3_000_000 + rand::rng().random_range(0..1_000_000);
    format!(
        "{}\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\nsettle = \"2s\"\n",
        job.job_toml()
    )
}

async fn hget(job: &TestJob, what: &str, field: &str) -> Option<String> {
    let mut redis = job.redis.clone();
    redis::cmd("HGET")
        .arg(job.job_key(what))
        .arg(field)
        .query_async(&mut redis)
        .await
        .ok()
        .flatten()
}

/// Compensator passes (`--min-age 3s`: a catch-up may sit unacked in a consumer) until `report` says
/// `caught_up`; returns that report.
async fn wait_caught_up(job: &TestJob) -> serde_json::Value {
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
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_follower_reads_and_publishes_nothing_and_resume_brings_the_changes() {
    let job = TestJob::new(1_000, 200).await;
    let rows = job.create_source(20_000).await;
    let walk_groups = job
        .sql_u64("SELECT COUNT(DISTINCT id DIV 1000) FROM src")
        .await;
    job.write_file("job.toml", &follow_job(&job));
    let addr = free_addr();
    let mut follower = job.spawn(
        Bin::Producer,
        &["--job", job.job_arg(), "--follow", "--metrics-addr", &addr],
    );
    let consumer = job.spawn_consumer(&[]);

    // The walk is done and every row landed: the producer's own figures, before any change.
    wait_for(
        "the walk and the copy",
        DEADLINE,
        Duration::from_millis(200),
        || async {
            let status = hget(&job, "producer", "status").await;
            let landed = job.sql_u64("SELECT COUNT(*) FROM dst").await;
            if status.as_deref() == Some("done") && landed == rows {
                Ok(())
            } else {
                Err(format!("producer {status:?}, {landed} of {rows} rows"))
            }
        },
    )
    .await;
    let text = scrape(&addr).await;
    let name = job.name.as_str();
    assert_eq!(
        sample(&text, name, "bitmig_ids_published_total", ""),
        rows as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, name, "bitmig_groups_produced_total", ""),
        walk_groups as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, name, "bitmig_follow_events_total", ""),
        0.0,
        "{text}"
    );
    assert_eq!(sample(&text, name, "bitmig_paused", ""), 0.0, "{text}");
    let (status, body) = http_get(&addr, "/readyz").await.expect("/readyz");
    assert_eq!(
        (status, body.as_str()),
        (200, "ok broker\nok redis\nok source\n")
    );

    // Lag: changes committed with a timestamp an hour old (SET timestamp) are an hour behind.
    let mut writer = job.conn().await;
    writer
        .query_drop("SET timestamp = UNIX_TIMESTAMP() - 3600")
        .await
        .unwrap();
    let live = job.ids_of("src").await;
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        let id = live[(n as usize * 37) % live.len()];
        writer
            .query_drop(format!("UPDATE src SET c_int = {n} WHERE id = {id}"))
            .await
            .unwrap();
        n += 1;
        let (_, text) = http_get(&addr, "/metrics").await.expect("/metrics");
        let lag = sample(&text, name, "bitmig_follow_lag_seconds", "");
        if (3_500.0..3_700.0).contains(&lag) {
            eprintln!("follow lag {lag} s after {n} old-stamped changes");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "bitmig_follow_lag_seconds is {lag} after {n} changes stamped an hour ago\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.query_drop("SET timestamp = DEFAULT").await.unwrap();
    drop(writer);
    // No more changes: back under a second once the stream vouches it is at the end (a heartbeat).
    wait_for_sample(
        &addr,
        name,
        "bitmig_follow_lag_seconds",
        "",
        Duration::from_secs(30),
        |v| v < 1.0,
    )
    .await;
    // The follower's counters are those it stores in bitmig:{JOB}:follow (written about once a second).
    wait_for(
        "the follow state to match the metrics",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let text = scrape(&addr).await;
            let events = sample(&text, name, "bitmig_follow_events_total", "");
            let published = sample(&text, name, "bitmig_ids_published_total", "") - rows as f64;
            let stored = (
                hget(&job, "follow", "events").await.unwrap_or_default(),
                hget(&job, "follow", "ids_published")
                    .await
                    .unwrap_or_default(),
            );
            if events >= n as f64 && (events.to_string(), published.to_string()) == stored {
                Ok(())
            } else {
                Err(format!(
                    "metrics events {events}, ids {published}; stored {stored:?}; {n} changes"
                ))
            }
        },
    )
    .await;
    wait_caught_up(&job).await;

    // Pause: the follower says so within 2 s of the command.
    let out = job
        .run(
            Bin::Compensator,
            &[
                "pause",
                "--job",
                job.job_arg(),
                "--reason",
                "cut-over rehearsal",
            ],
        )
        .await;
    out.expect_code(0);
    let paused_at = Instant::now();
    wait_for_sample(
        &addr,
        name,
        "bitmig_paused",
        "",
        Duration::from_secs(2),
        |v| v == 1.0,
    )
    .await;
    eprintln!("follower paused after {:?}", paused_at.elapsed());
    let before = scrape(&addr).await;
    let events0 = sample(&before, name, "bitmig_follow_events_total", "");
    let published0 = sample(&before, name, "bitmig_ids_published_total", "");
    let position0 = hget(&job, "follow", "position")
        .await
        .expect("a stored position");

    // Changes during the pause: inserts above the range, updates, a key change, deletes.
    let mut live = job.ids_of("src").await;
    let mut inserted = Vec::new();
    for k in 0..5u64 {
        let id = TWO_POW_40 + 7_000_000 + k * 3_001;
        job.insert_rows(&format!("SELECT {k} AS s, {id} AS id"))
            .await;
        inserted.push(id);
    }
    for k in 0..10 {
        let id = live[k * 101];
        job.sql(&format!(
            "UPDATE src SET c_text = 'paused {k}' WHERE id = {id}"
        ))
        .await;
    }
    let moved = live[5_000];
    job.sql(&format!("UPDATE src SET id = 70000001 WHERE id = {moved}"))
        .await;
    inserted.push(70_000_001);
    for _ in 0..5 {
        let id = live.swap_remove(7_000);
        job.sql(&format!("DELETE FROM src WHERE id = {id}")).await;
    }

    // For 5 s: nothing read, nothing published (the consumers are paused too, so a catch-up would wait
    // in the work queue), no src bit for the new ids, the checkpoint where it was.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(5) {
        let text = scrape(&addr).await;
        assert_eq!(
            sample(&text, name, "bitmig_follow_events_total", ""),
            events0,
            "read while paused\n{text}"
        );
        assert_eq!(
            sample(&text, name, "bitmig_ids_published_total", ""),
            published0,
            "published while paused\n{text}"
        );
        assert_eq!(
            job.existing_message_count(&job.work_queue()).await,
            0,
            "a batch published while paused"
        );
        assert_eq!(
            hget(&job, "follow", "position").await.as_deref(),
            Some(position0.as_str())
        );
        for &id in &inserted {
            let first = job.group_of(id);
            assert!(
                !job.bitmap_ids(first, Bits::Src).await.contains(&id),
                "src bit of {id} set while paused"
            );
        }
        assert!(
            follower.is_running(),
            "the follower exited:\n{}",
            follower.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, report) = job.report().await;
    assert_eq!(report["paused"], true, "{report:#}");
    assert_eq!(report["reason"], "cut-over rehearsal", "{report:#}");
    assert_eq!(
        report["caught_up"], false,
        "a paused follower cannot be caught up: {report:#}"
    );

    job.run(Bin::Compensator, &["resume", "--job", job.job_arg()])
        .await
        .expect_code(0);
    let report = wait_caught_up(&job).await;
    job.assert_target_equals_source().await;
    assert_eq!(report["paused"], false, "{report:#}");
    let after = scrape(&addr).await;
    assert!(
        sample(&after, name, "bitmig_follow_events_total", "") >= events0 + 21.0,
        "{after}"
    );
    assert!(
        sample(&after, name, "bitmig_ids_published_total", "") > published0,
        "{after}"
    );
    assert_eq!(sample(&after, name, "bitmig_paused", ""), 0.0, "{after}");

    follower
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
    consumer
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
}
