//! `bitmig-rollover` (DESIGN.md §12) as a user runs it: the real binary against a task table in the test's
//! own MariaDB database. The task lifecycle (running, completed, failures, a forgotten task, 429/5xx while
//! polling) runs against the in-repo cluster double (`helpers::es_tasks_double`); what osmem-server supports
//! (`_cat/indices`, `_reindex?wait_for_completion=false` copying documents) runs against the test cluster
//! (`BITMIG_TEST_ES_URL` or osmem-server on 9200).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use crate::helpers::es::Es;
use crate::helpers::es_tasks_double::{TaskKind, TasksDouble};
use crate::helpers::{wait_for, wait_while_running, Bin, Finished, TestJob, COMMAND_DEADLINE};

const MONTHS: [&str; 3] = ["2021-08", "2021-09", "2021-10"];

/// A config for the test's database and `es_url`, one move over `indices`.
fn config(
    job: &TestJob,
    es_url: &str,
    max_running: u32,
    indices: &str,
    keep_months: Option<u32>,
) -> String {
    let keep = keep_months
        .map(|k| format!("keep_months = {k}\n"))
        .unwrap_or_default();
    let text = format!(
        r#"[tasks]
url = "${{ROLLOVER_TEST_DB}}"
max_running = {max_running}

[elasticsearch]
url = "{es_url}"
requests_per_second = -1
slices = "auto"

[[move]]
indices = "{indices}"
dest = "{{index}}_{{month:%Y%m}}"
date_field = "start_date"
{keep}"#
    );
    let path = job.write_file("rollover.toml", &text);
    path.to_str().expect("UTF-8 temp path").to_owned()
}

async fn rollover(job: &TestJob, args: &[&str]) -> Finished {
    job.spawn_with_env(
        Bin::Rollover,
        args,
        &[("ROLLOVER_TEST_DB", &job.database_url)],
    )
    .wait(COMMAND_DEADLINE)
    .await
}

/// `n` documents of each month of [`MONTHS`] for `index` in the double.
fn seed(double: &TasksDouble, index: &str, n: usize) {
    let docs = MONTHS.iter().flat_map(|m| {
        (0..n).map(move |k| {
            (
                format!("{m}-{k}"),
                json!({"start_date": format!("{m}-1{k}"), "word": k}),
            )
        })
    });
    double.state().seed(index, docs);
}

fn month_query(month: &str) -> Value {
    let end = match month {
        "2021-08" => "2021-09-01",
        "2021-09" => "2021-10-01",
        _ => "2021-11-01",
    };
    json!({"range": {"start_date": {"gte": format!("{month}-01"), "lt": end}}})
}

/// `(id, status, error, attempts)` of every task.
async fn rows(job: &TestJob) -> Vec<(String, String, Option<String>, i64)> {
    let mut conn = job.mysql.get_conn().await.expect("MariaDB");
    conn.query("SELECT id, status, error, attempts FROM es_task ORDER BY id")
        .await
        .expect("read es_task")
}

async fn status_of(job: &TestJob, id: &str) -> (String, Option<String>, i64) {
    rows(job)
        .await
        .into_iter()
        .find(|r| r.0 == id)
        .map(|r| (r.1, r.2, r.3))
        .unwrap_or_else(|| panic!("no task {id}"))
}

fn plan_json(done: &Finished) -> (Vec<String>, Vec<String>) {
    done.expect_code(0);
    let j = done.json();
    let list = |k: &str| -> Vec<String> {
        j[k].as_array()
            .unwrap_or_else(|| panic!("plan --json without {k}: {j}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    (list("planned"), list("already_planned"))
}

#[tokio::test]
async fn forty_indices_never_more_than_thirty_running_and_no_month_deleted_before_its_copy() {
    let job = TestJob::new(1000, 100).await;
    let double = TasksDouble::start(2).await;
    let names: Vec<String> = (0..40).map(|i| format!("google_{i:02}")).collect();
    for name in &names {
        seed(&double, name, 2);
    }
    // An older monthly index matches the pattern too; it is never a source.
    double.state().seed(
        "google_00_202107",
        [("x".to_owned(), json!({"start_date": "2021-07-01"}))],
    );
    let cfg = config(&job, &double.url, 30, "google_*", Some(1));

    let (planned, already) = plan_json(
        &rollover(
            &job,
            &["plan", "--config", &cfg, "--month", "2021-09", "--json"],
        )
        .await,
    );
    assert_eq!((planned.len(), already.len()), (120, 0), "{planned:?}");
    for id in [
        "google_07_202109_reindex",
        "google_07_202108_reindex",
        "google_07_202108_delete",
    ] {
        assert!(
            planned.iter().any(|p| p == id),
            "{id} not planned: {planned:?}"
        );
    }
    assert!(
        !planned.iter().any(|p| p.starts_with("google_00_202107_")),
        "{planned:?}"
    );
    let (planned, already) = plan_json(
        &rollover(
            &job,
            &["plan", "--config", &cfg, "--month", "2021-09", "--json"],
        )
        .await,
    );
    assert_eq!(
        (planned.len(), already.len()),
        (0, 120),
        "a second plan inserted {planned:?}"
    );
    let st = rollover(&job, &["status", "--config", &cfg, "--json"]).await;
    st.expect_code(3);
    assert_eq!(st.json()["pending"], 120);

    rollover(
        &job,
        &[
            "run",
            "--config",
            &cfg,
            "--every",
            "10ms",
            "--until-done",
            "--json",
        ],
    )
    .await
    .expect_code(0);

    {
        let cluster = double.state();
        for (kind, limit) in [(TaskKind::Reindex, 30), (TaskKind::Delete, 30)] {
            let over: Vec<_> = cluster
                .running_at_polls
                .iter()
                .filter(|m| m.get(&kind).copied().unwrap_or(0) > limit)
                .collect();
            assert!(
                over.is_empty(),
                "more than {limit} {kind:?} tasks running at some polls: {over:?}"
            );
        }
        assert_eq!(
            cluster.max_running(TaskKind::Reindex),
            30,
            "the limit was never reached: the test proves nothing"
        );
        assert!(
            cluster.unproven_deletes.is_empty(),
            "deletes before their copy: {:?}",
            cluster.unproven_deletes
        );
        for name in &names {
            assert_eq!(cluster.starts(TaskKind::Reindex, name), 2, "{name}");
            assert_eq!(cluster.starts(TaskKind::Delete, name), 1, "{name}");
            assert_eq!(
                cluster.count(name, &month_query("2021-08")),
                0,
                "{name} still holds 2021-08"
            );
            assert_eq!(
                cluster.count(name, &month_query("2021-09")),
                2,
                "{name} lost 2021-09"
            );
            assert_eq!(
                cluster.count(name, &month_query("2021-10")),
                2,
                "{name} lost 2021-10"
            );
            for month in ["2021-08", "2021-09"] {
                let dest = format!("{name}_{}", month.replace('-', ""));
                assert_eq!(cluster.count(&dest, &month_query(month)), 2, "{dest}");
            }
        }
    }
    let st = rollover(&job, &["status", "--config", &cfg, "--json"]).await;
    st.expect_code(0);
    assert_eq!(st.json()["done"], 120);
}

#[tokio::test]
async fn a_failed_reindex_or_a_count_mismatch_blocks_the_months_delete() {
    let job = TestJob::new(1000, 100).await;
    let double = TasksDouble::start(1).await;
    for name in ["hot_a", "hot_b", "hot_c"] {
        seed(&double, name, 3);
    }
    double.state().fail_reindex.insert("hot_b".into());
    double.state().lose_one.insert("hot_c".into());
    let cfg = config(&job, &double.url, 30, "hot_*", Some(1));
    rollover(&job, &["plan", "--config", &cfg, "--month", "2021-09"])
        .await
        .expect_code(0);

    let run = rollover(
        &job,
        &["run", "--config", &cfg, "--every", "10ms", "--until-done"],
    )
    .await;
    run.expect_code(1);

    let (s, error, _) = status_of(&job, "hot_b_202108_reindex").await;
    let error = error.unwrap_or_default();
    assert!(
        s == "failed" && error.contains("failures") && error.contains("mapper_parsing_exception"),
        "{s}: {error}"
    );
    let (s, error, _) = status_of(&job, "hot_c_202108_reindex").await;
    let error = error.unwrap_or_default();
    assert!(
        s == "failed"
            && error.contains("count mismatch")
            && error.contains("3")
            && error.contains("2"),
        "{s}: {error}"
    );
    for blocked in ["hot_b_202108_delete", "hot_c_202108_delete"] {
        assert_eq!(status_of(&job, blocked).await.0, "pending", "{blocked}");
    }
    assert_eq!(status_of(&job, "hot_a_202108_delete").await.0, "done");
    {
        let cluster = double.state();
        for name in ["hot_b", "hot_c"] {
            assert_eq!(
                cluster.starts(TaskKind::Delete, name),
                0,
                "{name}'s delete started"
            );
            assert_eq!(
                cluster.count(name, &month_query("2021-08")),
                3,
                "{name} lost 2021-08"
            );
        }
        assert_eq!(cluster.count("hot_a", &month_query("2021-08")), 0);
        assert_eq!(cluster.count("hot_a_202108", &month_query("2021-08")), 3);
    }
    let st = rollover(&job, &["status", "--config", &cfg]).await;
    st.expect_code(1);
    assert!(
        st.stdout.contains("count mismatch")
            && st.stdout.contains("2 blocked")
            && st.stdout.contains("4 failed"),
        "{}",
        st.describe()
    );
}

#[tokio::test]
async fn a_document_arriving_after_the_copy_was_proven_stops_the_delete() {
    let job = TestJob::new(1000, 100).await;
    let double = TasksDouble::start(1).await;
    seed(&double, "hot_a", 2);
    // Right after the copy of 2021-08 is counted, one more August document reaches the hot index.
    double.state().late_write = Some((
        "hot_a_202108".into(),
        "hot_a".into(),
        "late".into(),
        json!({"start_date": "2021-08-20"}),
    ));
    let cfg = config(&job, &double.url, 30, "hot_a", Some(1));
    rollover(&job, &["plan", "--config", &cfg, "--month", "2021-09"])
        .await
        .expect_code(0);
    rollover(
        &job,
        &["run", "--config", &cfg, "--every", "10ms", "--until-done"],
    )
    .await
    .expect_code(1);
    assert_eq!(status_of(&job, "hot_a_202108_reindex").await.0, "done");
    let (s, error, _) = status_of(&job, "hot_a_202108_delete").await;
    let error = error.unwrap_or_default();
    assert!(
        s == "failed" && error.contains("holds 3 documents") && error.contains("holds 2"),
        "{s}: {error}"
    );
    let cluster = double.state();
    assert!(
        cluster.late_write.is_none(),
        "the late write never happened: the test proves nothing"
    );
    assert_eq!(cluster.starts(TaskKind::Delete, "hot_a"), 0);
    assert_eq!(cluster.count("hot_a", &month_query("2021-08")), 3);
}

#[tokio::test]
async fn a_forgotten_task_starts_again_and_busy_polls_are_asked_again() {
    let job = TestJob::new(1000, 100).await;
    let double = TasksDouble::start(2).await;
    seed(&double, "hot_a", 2);
    seed(&double, "hot_b", 2);
    // A month without documents: its reindex copies nothing and creates no monthly index.
    double.state().seed(
        "hot_c",
        [("x".to_owned(), json!({"start_date": "2021-10-05"}))],
    );
    {
        let mut c = double.state();
        c.forget_once.insert("hot_a".into());
        c.poll_faults.extend([429, 503, 502]);
    }
    let cfg = config(&job, &double.url, 30, "hot_*", None);
    rollover(&job, &["plan", "--config", &cfg, "--month", "2021-08"])
        .await
        .expect_code(0);
    let run = rollover(
        &job,
        &[
            "run",
            "--config",
            &cfg,
            "--every",
            "10ms",
            "--until-done",
            "--json",
        ],
    )
    .await;
    run.expect_code(0);
    let passes: Vec<Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let sum = |k: &str| {
        passes
            .iter()
            .map(|p| p[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(sum("forgotten"), 1, "{}", run.describe());
    assert!(sum("poll_errors") >= 3, "{}", run.describe());
    assert_eq!(
        status_of(&job, "hot_a_202108_reindex").await.2,
        2,
        "the forgotten task started twice"
    );
    assert_eq!(status_of(&job, "hot_b_202108_reindex").await.2, 1);
    assert_eq!(status_of(&job, "hot_c_202108_reindex").await.0, "done");
    let cluster = double.state();
    assert_eq!(cluster.starts(TaskKind::Reindex, "hot_a"), 2);
    assert_eq!(cluster.starts(TaskKind::Reindex, "hot_b"), 1);
    assert!(cluster.poll_faults.is_empty());
    for name in ["hot_a", "hot_b"] {
        assert_eq!(
            cluster.count(&format!("{name}_202108"), &month_query("2021-08")),
            2,
            "{name}"
        );
    }
}

#[tokio::test]
async fn two_runners_racing_never_start_a_task_twice_nor_exceed_the_limit() {
    let job = TestJob::new(1000, 100).await;
    let double = TasksDouble::start(3).await;
    let names: Vec<String> = (0..20).map(|i| format!("hot_{i:02}")).collect();
    for name in &names {
        seed(&double, name, 1);
    }
    let cfg = config(&job, &double.url, 8, "hot_*", None);
    rollover(&job, &["plan", "--config", &cfg, "--month", "2021-09"])
        .await
        .expect_code(0);
    let args = [
        "run",
        "--config",
        cfg.as_str(),
        "--every",
        "10ms",
        "--until-done",
    ];
    let env = [("ROLLOVER_TEST_DB", job.database_url.as_str())];
    let a = job.spawn_with_env(Bin::Rollover, &args, &env);
    let b = job.spawn_with_env(Bin::Rollover, &args, &env);
    a.wait(COMMAND_DEADLINE).await.expect_code(0);
    b.wait(COMMAND_DEADLINE).await.expect_code(0);
    {
        let cluster = double.state();
        for name in &names {
            assert_eq!(
                cluster.starts(TaskKind::Reindex, name),
                1,
                "{name} started {} times",
                cluster.starts(TaskKind::Reindex, name)
            );
        }
        assert!(
            cluster.max_running(TaskKind::Reindex) <= 8,
            "{} running at once",
            cluster.max_running(TaskKind::Reindex)
        );
    }
    assert!(rows(&job).await.iter().all(|r| r.1 == "done"));
}

#[tokio::test]
async fn a_runner_killed_mid_way_is_restarted_and_finishes_without_starting_tasks_again() {
    let job = TestJob::new(1000, 100).await;
    let double = TasksDouble::start(u32::MAX).await;
    let names: Vec<String> = (0..10).map(|i| format!("hot_{i}")).collect();
    for name in &names {
        seed(&double, name, 2);
    }
    let cfg = config(&job, &double.url, 4, "hot_*", None);
    rollover(&job, &["plan", "--config", &cfg, "--month", "2021-09"])
        .await
        .expect_code(0);
    let env = [("ROLLOVER_TEST_DB", job.database_url.as_str())];
    let mut runner = job.spawn_with_env(
        Bin::Rollover,
        &["run", "--config", &cfg, "--every", "10ms"],
        &env,
    );
    wait_while_running(
        &mut runner,
        "4 tasks running and polled twice",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let polls = double.state().running_at_polls.len();
            let job = &job;
            async move {
                let running = rows(job).await.iter().filter(|r| r.1 == "running").count();
                if running == 4 && polls >= 8 {
                    Ok(())
                } else {
                    Err(format!("{running} running, {polls} polls"))
                }
            }
        },
    )
    .await;
    runner.kill().await;
    // A runner that died between its claim and the cluster's answer leaves a row running without a task id.
    let mut conn = job.mysql.get_conn().await.expect("MariaDB");
    conn.query_drop(
        "UPDATE es_task SET status = 'running', task_id = '', claimed_by = 'dead:1' WHERE status = 'pending' ORDER BY id LIMIT 1",
    )
    .await
    .expect("orphan a row");
    assert_eq!(conn.affected_rows(), 1);
    drop(conn);
    double.state().polls_to_complete = 2;

    rollover(
        &job,
        &["run", "--config", &cfg, "--every", "10ms", "--until-done"],
    )
    .await
    .expect_code(0);
    {
        let cluster = double.state();
        for name in &names {
            assert_eq!(cluster.starts(TaskKind::Reindex, name), 1, "{name}");
            assert_eq!(
                cluster.count(&format!("{name}_202109"), &month_query("2021-09")),
                2,
                "{name}"
            );
        }
        assert!(cluster.max_running(TaskKind::Reindex) <= 4);
    }
    assert!(rows(&job).await.iter().all(|r| r.1 == "done"));
}

#[tokio::test]
async fn a_bad_config_exits_2_naming_the_key_and_touches_nothing() {
    let job = TestJob::new(1000, 100).await;
    let good = config(&job, "http://127.0.0.1:9", 30, "hot_*", Some(1));
    let text = std::fs::read_to_string(&good).expect("read config");
    for (bad, key) in [
        (
            text.replace("max_running = 30", "max_runing = 30"),
            "max_runing",
        ),
        (
            text.replace("keep_months = 1", "keep_months = 0"),
            "move[0].keep_months",
        ),
        (
            text.replace("slices = \"auto\"", "slices = \"many\""),
            "elasticsearch.slices",
        ),
        (
            text.replace("${ROLLOVER_TEST_DB}", "${ROLLOVER_UNSET_VARIABLE}"),
            "ROLLOVER_UNSET_VARIABLE",
        ),
    ] {
        let path = job.write_file("bad.toml", &bad);
        let path = path.to_str().expect("UTF-8");
        for args in [
            vec!["plan", "--config", path, "--month", "2021-09"],
            vec!["run", "--config", path],
            vec!["status", "--config", path],
        ] {
            let done = rollover(&job, &args).await;
            done.expect_code(2);
            assert!(
                done.stderr.contains(key),
                "stderr does not name {key}\n{}",
                done.describe()
            );
        }
    }
    let done = rollover(&job, &["plan", "--config", &good, "--month", "2021-13"]).await;
    done.expect_code(2);
    let mut conn = job.mysql.get_conn().await.expect("MariaDB");
    let tables: Vec<String> = conn.query("SHOW TABLES").await.expect("SHOW TABLES");
    assert!(tables.is_empty(), "a bad config created {tables:?}");
}

#[tokio::test]
async fn against_the_test_cluster_plan_resolves_the_pattern_and_a_pass_starts_the_copy() {
    let job = TestJob::new(1000, 100).await;
    let es = Es::connect(&job.name).await;
    let (us, de) = (format!("{}_us", job.name), format!("{}_de", job.name));
    let old = format!("{us}_202107");
    for index in [&us, &de, &old] {
        es.create_index(
            index,
            json!({"properties": {"start_date": {"type": "date"}}}),
        )
        .await;
    }
    for index in [&us, &de] {
        for (id, date) in [(1, "2021-08-03"), (2, "2021-08-30"), (3, "2021-09-01")] {
            es.ok(
                "PUT",
                &format!("/{index}/_doc/{id}?refresh=true"),
                Some(&json!({"start_date": date})),
            )
            .await;
        }
    }
    let cfg = config(&job, &es.url, 30, &format!("{}_*", job.name), None);
    let (planned, _) = plan_json(
        &rollover(
            &job,
            &["plan", "--config", &cfg, "--month", "2021-08", "--json"],
        )
        .await,
    );
    let mut want = vec![
        format!("{de}_202108_reindex"),
        format!("{us}_202108_reindex"),
    ];
    want.sort();
    let mut planned = planned;
    planned.sort();
    assert_eq!(
        planned, want,
        "the pattern resolves to the hot indices only"
    );

    rollover(&job, &["run", "--config", &cfg])
        .await
        .expect_code(0);
    for r in rows(&job).await {
        assert!(r.1 == "running" || r.1 == "done", "{r:?}");
    }
    for index in [&us, &de] {
        let dest = format!("{index}_202108");
        wait_for(
            &format!("2 documents in {dest}"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let (es, dest) = (&es, dest.clone());
                async move {
                    es.call("POST", &format!("/{dest}/_refresh"), None).await;
                    let (status, answer) = es.call("GET", &format!("/{dest}/_count"), None).await;
                    match answer["count"].as_u64() {
                        Some(2) => Ok(()),
                        _ => Err(format!("{status}: {answer}")),
                    }
                }
            },
        )
        .await;
    }
    rollover(&job, &["status", "--config", &cfg])
        .await
        .expect_code(3);
}
