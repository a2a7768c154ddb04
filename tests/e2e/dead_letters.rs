//! Messages a consumer cannot process go to the dead queue with their reason; they never crash a consumer,
//! never loop, and never stop it from doing real work.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{gappy_ids, header_text, wait_while_running, TestJob, ERROR_HEADER};

#[tokio::test(flavor = "multi_thread")]
async fn garbage_messages_go_to_the_dead_queue_and_the_consumer_keeps_working() {
    let job = TestJob::new(10_000, 1_000).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(2_000, job.group_size)).await;

    let mut consumer = job.spawn_consumer(&[]);
    let work = job.work_queue();
    let dead = job.dead_queue();
    job.wait_for_consumer_on(&work, Duration::from_secs(30))
        .await;

    let message = |job_name: &str, group: u64, ids: serde_json::Value| {
        json!({"job": job_name, "group": group, "ids": ids, "cause": "produce", "attempt": 0})
            .to_string()
            .into_bytes()
    };
    // (what is wrong, body, words the reason must contain, case-insensitive)
    let garbage: [(&str, Vec<u8>, &[&str]); 4] = [
        ("not JSON", b"{\"job\": not json at all".to_vec(), &["json"]),
        (
            "another job",
            message("someone_else", 0, json!([[1, 2]])),
            &["job", "someone_else"],
        ),
        (
            "ids outside the group",
            message(&job.name, 0, json!([[50_000, 50_010]])),
            &["group", "50000"],
        ),
        (
            "a reversed range",
            message(&job.name, 0, json!([[20, 10]])),
            &["range", "reversed"],
        ),
    ];
    for (_, body, _) in &garbage {
        job.publish_raw(body).await;
    }
    wait_while_running(
        &mut consumer,
        "the garbage to reach the dead queue",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            match job.message_count(&dead).await {
                Some(n) if n >= garbage.len() as u32 => Ok(()),
                seen => Err(format!("{dead}: {seen:?} messages")),
            }
        },
    )
    .await;

    // The same consumer still does real work.
    job.produce(&[]).await;
    wait_while_running(
        &mut consumer,
        "the consumer to land every row",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let (_, report) = job.report().await;
            let landed = report["complete"] == true
                || (report["source_ids"].as_u64() == Some(rows)
                    && report["missing_ids"].as_u64() == Some(0));
            if landed {
                Ok(())
            } else {
                Err(report.to_string())
            }
        },
    )
    .await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;

    // Exactly the four, each with its reason: nothing looped through the dead queue twice.
    let dead_letters = job.take_all(&dead).await;
    let bodies: Vec<String> = dead_letters
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    assert_eq!(
        dead_letters.len(),
        garbage.len(),
        "{dead} must hold exactly the garbage messages: {bodies:#?}"
    );
    for (what, body, words) in &garbage {
        let letter = dead_letters
            .iter()
            .find(|d| &d.data == body)
            .unwrap_or_else(|| {
                panic!(
                    "the message with {what} is not in {dead} with its body unchanged: {}\nthere: {bodies:#?}",
                    String::from_utf8_lossy(body)
                )
            });
        let reason = header_text(letter, ERROR_HEADER).unwrap_or_default();
        let lower = reason.to_lowercase();
        assert!(
            words.iter().all(|w| lower.contains(w)),
            "the {ERROR_HEADER} of the message with {what} must say so (mention {words:?}): {reason:?}"
        );
    }
    assert_eq!(
        job.message_count(&work).await,
        Some(0),
        "{work} is not empty"
    );

    assert!(
        consumer.is_running(),
        "the consumer stopped\n{}",
        consumer.output_so_far()
    );
    let stopped = consumer.terminate(Duration::from_secs(30)).await;
    stopped.expect_code(0);
}
