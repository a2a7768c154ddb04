//! Operating a running job through the real programs (DESIGN.md §11): `bitmig-compensator pause|resume`
//! holding and releasing consumers mid-run, a consumer started while paused, `[throttle] max_rows_per_s`
//! shared by three consumer processes, and the consumers' `/metrics` and `/readyz` agreeing with the target;
//! the producer paused mid-walk with its metrics equal to the ledger; `compensator run --every
//! --metrics-addr` whose `bitmig_missing_ids` agrees with `report` and which re-publishes nothing while paused.

use std::time::{Duration, Instant};

use bitmig_shared::queue::{retry_queue_for, MAX_ATTEMPTS};

use crate::helpers::metrics::{free_addr, http_get, sample, scrape, wait_for_sample};
use crate::helpers::{wait_for, Bin, Bits, Proc, TestJob};

async fn target_rows(job: &TestJob) -> u64 {
    job.sql_u64("SELECT COUNT(*) FROM dst").await
}

async fn compensator(job: &TestJob, args: &[&str]) -> String {
    let done = job.run(Bin::Compensator, args).await;
    done.expect_code(0);
    done.stdout.clone()
}

/// Messages in the retry and dead queues (a pause must put nothing there).
async fn retried_or_dead(job: &TestJob) -> u32 {
    let mut n = job.existing_message_count(&job.dead_queue()).await;
    for attempt in 1..=MAX_ATTEMPTS {
        n += job
            .message_count(&retry_queue_for(&job.name, attempt))
            .await
            .unwrap_or(0);
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_every_consumer_within_two_seconds_and_resume_completes_the_job() {
    let job = TestJob::new(10_000, 1_000).await;
    let rows = job.create_source(300_000).await;
    job.produce(&[]).await;

    let addrs = [free_addr(), free_addr()];
    let consumers: Vec<Proc> = addrs
        .iter()
        .map(|a| job.spawn_consumer(&["--metrics-addr", a]))
        .collect();
    wait_for(
        "the first rows to land",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let n = target_rows(&job).await;
            if n >= 5_000 {
                Ok(n)
            } else {
                Err(format!("{n} rows"))
            }
        },
    )
    .await;
    let during = scrape(&addrs[0]).await;
    assert!(
        sample(&during, &job.name, "bitmig_rows_written_total", "") > 0.0,
        "rows written while running\n{during}"
    );

    let out = compensator(
        &job,
        &["pause", "--job", job.job_arg(), "--reason", "db under load"],
    )
    .await;
    assert!(out.contains("paused (db under load)"), "{out}");
    let paused_at = Instant::now();
    // Stopped growing: the count read every 200 ms has not changed for 2 s; when did it last change?
    let mut last = (target_rows(&job).await, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while last.1.elapsed() < Duration::from_secs(2) {
        assert!(
            Instant::now() < deadline,
            "the target kept growing for 60 s after the pause"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = target_rows(&job).await;
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    let (held, stopped_at) = last;
    let took = stopped_at.saturating_duration_since(paused_at);
    assert!(
        took <= Duration::from_millis(2_200),
        "the target still grew {took:?} after the pause (2 s allowed, plus one 200 ms sample)"
    );
    assert!(
        held < rows,
        "the job finished before the pause could be seen ({held} of {rows} rows): nothing was tested"
    );

    let (code, report) = job.report().await;
    assert_eq!(code, 3);
    assert_eq!(report["paused"], true, "{report:#}");
    assert_eq!(report["reason"], "db under load", "{report:#}");

    // A consumer started while paused waits too.
    let late_addr = free_addr();
    let late = job.spawn_consumer(&["--metrics-addr", &late_addr]);
    wait_for(
        "the late consumer to say it is paused",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let text = scrape(&late_addr).await;
            if sample(&text, &job.name, "bitmig_paused", "") == 1.0 {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        target_rows(&job).await,
        held,
        "rows landed while the job was paused"
    );
    assert!(job.existing_message_count(&job.work_queue()).await > 0);
    assert_eq!(
        retried_or_dead(&job).await,
        0,
        "a pause sent batches to retry or dead queues"
    );

    let out = compensator(&job, &["resume", "--job", job.job_arg()]).await;
    assert!(out.contains("resumed"), "{out}");
    wait_for(
        "every row after the resume",
        Duration::from_secs(600),
        Duration::from_millis(500),
        || async {
            let n = target_rows(&job).await;
            if n == rows {
                Ok(())
            } else {
                Err(format!("{n} of {rows} rows"))
            }
        },
    )
    .await;
    let report = job.assert_job_complete(rows, 0).await;
    assert_eq!(report["paused"], false, "{report:#}");
    assert_eq!(retried_or_dead(&job).await, 0);

    // After the run: the consumers' counters add up to the target, and each ledger-stage observation is
    // one batch done.
    let mut all_addrs = addrs.to_vec();
    all_addrs.push(late_addr);
    let (mut written, mut done, mut observed) = (0.0, 0.0, 0.0);
    for addr in &all_addrs {
        let text = scrape(addr).await;
        written += sample(&text, &job.name, "bitmig_rows_written_total", "");
        done += sample(&text, &job.name, "bitmig_batches_total", "outcome=\"done\"");
        observed += sample(
            &text,
            &job.name,
            "bitmig_batch_seconds_count",
            "stage=\"ledger\"",
        );
        assert_eq!(sample(&text, &job.name, "bitmig_paused", ""), 0.0, "{text}");
        let (status, body) = http_get(addr, "/readyz").await.expect("/readyz");
        assert_eq!(
            (status, body.as_str()),
            (200, "ok broker\nok redis\nok source\nok target\n")
        );
    }
    assert_eq!(written as u64, target_rows(&job).await);
    assert_eq!(done, observed, "histogram count ≠ batches done");
    assert!(
        done as u64 >= rows / 1_000,
        "{done} batches done for {rows} rows of batches of 1000"
    );
    for c in consumers.into_iter().chain([late]) {
        c.terminate(Duration::from_secs(90)).await.expect_code(0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_consumers_together_keep_max_rows_per_s() {
    let job = TestJob::new(10_000, 500).await;
    job.create_source(200_000).await;
    // Produced with the plain job file: `[throttle]` is an operating knob, not part of the stored spec.
    job.produce(&[]).await;
    let throttled = job.write_file(
        "throttled.toml",
        &format!("{}\n[throttle]\nmax_rows_per_s = 5000\n", job.job_toml()),
    );
    let throttled = crate::helpers::path_str(&throttled);
    let addr = free_addr();
    let consumers: Vec<Proc> = (0..3)
        .map(|i| {
            let mut args = vec!["--job", throttled];
            if i == 0 {
                args.extend(["--metrics-addr", addr.as_str()]);
            }
            job.spawn(Bin::Consumer, &args)
        })
        .collect();
    wait_for(
        "the first rows to land",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let n = target_rows(&job).await;
            if n >= 5_000 {
                Ok(())
            } else {
                Err(format!("{n} rows"))
            }
        },
    )
    .await;
    let (t0, c0) = (Instant::now(), target_rows(&job).await);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (c1, took) = (target_rows(&job).await, t0.elapsed());
    let rate = (c1 - c0) as f64 / took.as_secs_f64();
    assert!(
        (4_000.0..=6_000.0).contains(&rate),
        "three consumers wrote {rate:.0} rows/s ({} rows in {took:?}); max_rows_per_s = 5000 ± 20 %",
        c1 - c0
    );

    let (_, report) = job.report().await;
    let why = report["throttled"].as_str().unwrap_or_default();
    assert!(why.starts_with("max_rows_per_s"), "{report:#}");
    let text = scrape(&addr).await;
    assert!(
        sample(
            &text,
            &job.name,
            "bitmig_throttled_seconds_total",
            "reason=\"max_rows_per_s\""
        ) > 0.0,
        "{text}"
    );
    // A consumer on its way out takes its reason back; those still held write it again at their next
    // check, and when the last one stops the field is gone.
    let mut consumers = consumers.into_iter();
    for c in consumers.by_ref().take(1) {
        c.terminate(Duration::from_secs(90)).await.expect_code(0);
    }
    wait_for(
        "the consumers still running to say they are throttled",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (_, report) = job.report().await;
            match report["throttled"].as_str() {
                Some(why) if why.starts_with("max_rows_per_s") => Ok(()),
                other => Err(format!("throttled: {other:?}")),
            }
        },
    )
    .await;
    for c in consumers {
        c.terminate(Duration::from_secs(90)).await.expect_code(0);
    }
    let (_, report) = job.report().await;
    assert!(
        report["throttled"].is_null(),
        "no consumer runs: nothing is throttled\n{report:#}"
    );
}

/// `bitmig-producer --metrics-addr` paused mid-walk: within 2 s it says so and produces no further group (the
/// ledger's groups and the work queue stay put for 5 s), its counters equal the ledger's figures (ids
/// published = the `src` bits, groups produced = the planned groups, all `produced`); `resume` lets the walk
/// finish and the job completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_producer_plans_no_group_and_its_metrics_equal_the_ledger() {
    let job = TestJob::new(10_000, 1_000).await;
    let rows = job.create_source(100_000).await;
    let groups_total = job
        .sql_u64("SELECT COUNT(DISTINCT id DIV 10000) FROM src")
        .await;
    let name = job.name.as_str();
    let addr = free_addr();
    let mut producer = job.spawn(
        Bin::Producer,
        &[
            "--job",
            job.job_arg(),
            "--rate",
            "15000",
            "--metrics-addr",
            &addr,
        ],
    );
    wait_for_sample(
        &addr,
        name,
        "bitmig_groups_produced_total",
        "",
        Duration::from_secs(120),
        |v| v >= 2.0,
    )
    .await;
    compensator(&job, &["pause", "--job", job.job_arg()]).await;
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
    eprintln!("producer paused after {:?}", paused_at.elapsed());

    let groups = job.groups().await;
    let queued = job.existing_message_count(&job.work_queue()).await;
    let text = scrape(&addr).await;
    assert!(
        (groups.len() as u64) < groups_total,
        "the walk ended before the pause: nothing was tested ({} of {groups_total} groups)",
        groups.len()
    );
    assert_eq!(
        sample(&text, name, "bitmig_groups_produced_total", ""),
        groups.len() as f64,
        "{text}"
    );
    for &first in &groups {
        let meta = job.meta(first).await;
        assert_eq!(
            meta.get("status").map(String::as_str),
            Some("produced"),
            "group {first}: {meta:?}"
        );
    }
    assert_eq!(
        sample(&text, name, "bitmig_ids_published_total", ""),
        job.bitcount_sum(&groups, Bits::Src).await as f64,
        "{text}"
    );
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            job.groups().await,
            groups,
            "a group was planned while paused"
        );
        assert_eq!(
            job.existing_message_count(&job.work_queue()).await,
            queued,
            "published while paused"
        );
        assert!(
            producer.is_running(),
            "the producer exited while paused:\n{}",
            producer.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    compensator(&job, &["resume", "--job", job.job_arg()]).await;
    producer.wait(Duration::from_secs(120)).await.expect_code(0);
    job.consume_until_idle(1, &[]).await;
    job.assert_job_complete(rows, 0).await;
}

/// `bitmig-compensator run --every --metrics-addr`: after a pass `bitmig_missing_ids` is what `report` says
/// is missing; while the job is paused the passes re-publish nothing (`bitmig_paused` 1), and once the ids
/// landed the gauge falls to 0. `/healthz` and `/readyz` (Redis, broker) answer 200.
#[tokio::test(flavor = "multi_thread")]
async fn compensator_every_serves_the_missing_ids_report_counts() {
    const LOST_PER_GROUP: u64 = 50;
    let job = TestJob::new(1_000, 200).await;
    let rows = job.create_source(10_000).await;
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    // Three groups lose the tgt bits of 50 landed ids each, as if their SETBITs had been lost.
    let groups = job.groups().await;
    let mut redis = job.redis.clone();
    let mut lost = 0;
    for &first in &groups[..3] {
        for id in job
            .bitmap_ids(first, Bits::Tgt)
            .await
            .into_iter()
            .take(LOST_PER_GROUP as usize)
        {
            let _: i64 = redis::cmd("SETBIT")
                .arg(job.group_key(first, "tgt"))
                .arg(id - first)
                .arg(0)
                .query_async(&mut redis)
                .await
                .expect("SETBIT");
            lost += 1;
        }
    }
    assert_eq!(lost, 3 * LOST_PER_GROUP);

    let addr = free_addr();
    let every = job.spawn(
        Bin::Compensator,
        &[
            "run",
            "--job",
            job.job_arg(),
            "--every",
            "2s",
            "--min-age",
            "0s",
            "--json",
            "--metrics-addr",
            &addr,
        ],
    );
    let name = job.name.as_str();
    wait_for_sample(
        &addr,
        name,
        "bitmig_missing_ids",
        "",
        Duration::from_secs(60),
        |v| v == lost as f64,
    )
    .await;
    let (code, report) = job.report().await;
    assert_eq!(
        (code, report["missing_ids"].as_u64()),
        (3, Some(lost)),
        "{report:#}"
    );
    assert_eq!(
        http_get(&addr, "/healthz").await,
        Ok((200, "ok\n".to_owned()))
    );
    assert_eq!(
        http_get(&addr, "/readyz").await,
        Ok((200, "ok redis\nok broker\n".to_owned()))
    );

    // Paused: passes go on but re-publish nothing (without the pause each pass re-publishes the 150 ids,
    // since nobody consumes them).
    compensator(&job, &["pause", "--job", job.job_arg()]).await;
    wait_for_sample(
        &addr,
        name,
        "bitmig_paused",
        "",
        Duration::from_secs(30),
        |v| v == 1.0,
    )
    .await;
    let queued = job.existing_message_count(&job.work_queue()).await;
    let passes = |p: &Proc| {
        std::fs::read_to_string(p.stdout_path())
            .unwrap_or_default()
            .matches("\"paused\":true")
            .count()
    };
    let paused_passes = passes(&every);
    wait_for(
        "two more paused passes",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            match passes(&every) {
                n if n >= paused_passes + 2 => Ok(()),
                n => Err(format!("{n} paused passes")),
            }
        },
    )
    .await;
    assert_eq!(
        job.existing_message_count(&job.work_queue()).await,
        queued,
        "re-published while paused"
    );
    compensator(&job, &["resume", "--job", job.job_arg()]).await;

    job.consume_until_idle(1, &[]).await;
    wait_for_sample(
        &addr,
        name,
        "bitmig_missing_ids",
        "",
        Duration::from_secs(60),
        |v| v == 0.0,
    )
    .await;
    wait_for_sample(
        &addr,
        name,
        "bitmig_paused",
        "",
        Duration::from_secs(30),
        |v| v == 0.0,
    )
    .await;
    job.assert_job_complete(rows, 0).await;
    every
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
}
