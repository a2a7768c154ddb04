//! Operating a running job through the real programs (DESIGN.md §11): `bitmig-compensator pause|resume`
//! holding and releasing consumers mid-run, a consumer started while paused, `[throttle] max_rows_per_s`
//! shared by three consumer processes, and the consumers' `/metrics` and `/readyz` agreeing with the target.

use std::time::{Duration, Instant};

use bitmig_shared::queue::{retry_queue_for, MAX_ATTEMPTS};

use crate::helpers::{wait_for, Bin, Proc, TestJob};

/// A loopback address nobody listens on right now, for `--metrics-addr`.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").to_string()
}

async fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let r = reqwest::get(format!("http://{addr}{path}"))
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.map_err(|e| e.to_string())?))
}

/// The value of the sample `name{job="JOB"[,extra]}` in a scrape (0 when absent).
fn sample(text: &str, job: &str, name: &str, extra: &str) -> f64 {
    let want = if extra.is_empty() {
        format!("{name}{{job=\"{job}\"}} ")
    } else {
        format!("{name}{{job=\"{job}\",{extra}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map(|v| v.trim().parse().unwrap_or(f64::NAN))
        .unwrap_or(0.0)
}

/// Waits until the consumer at `addr` answers `/metrics`; returns the text.
async fn scrape(addr: &str) -> String {
    wait_for(
        &format!("/metrics on {addr}"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async move {
            match get(addr, "/metrics").await? {
                (200, text) => Ok(text),
                (s, text) => Err(format!("{s}: {text}")),
            }
        },
    )
    .await
}

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
        let (status, body) = get(addr, "/readyz").await.expect("/readyz");
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
    for c in consumers {
        c.terminate(Duration::from_secs(90)).await.expect_code(0);
    }
}
