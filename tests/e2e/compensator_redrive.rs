//! The compensator finds what never landed (src ∧ ¬tgt ∧ ¬gone) and publishes it again — but leaves groups
//! younger than `--min-age` alone, since their batches may still be in flight.

use std::time::Duration;

use crate::helpers::{assert_messages_cover, wait_while_running, Bin, Message, TestJob};

#[tokio::test(flavor = "multi_thread")]
async fn purged_messages_are_redriven_by_the_compensator() {
    let job = TestJob::new(1_000, 200).await;
    let rows = job.create_source(5_000).await;
    job.produce(&[]).await;
    let work = job.work_queue();
    let queued = job.existing_message_count(&work).await;
    assert!(queued > 0, "the producer left no message in {work}");

    // Default --min-age is 1h: the groups were just produced, so their batches count as in flight.
    let fresh = job
        .run(Bin::Compensator, &["run", "--job", job.job_arg()])
        .await;
    fresh.expect_code(0);
    assert_eq!(
        fresh.republished_from_text(),
        0,
        "a fresh group must be left alone\n{}",
        fresh.describe()
    );
    assert_eq!(
        job.existing_message_count(&work).await,
        queued,
        "the compensator published into {work} with the default --min-age"
    );

    // Every message is lost.
    assert_eq!(job.purge(&work).await, queued);
    let (code, report) = job.report().await;
    assert_eq!(
        (code, report["missing_ids"].as_u64()),
        (3, Some(rows)),
        "with every message purged, every id is missing: {report:#}"
    );

    let pass = job.compensate(Some("0s")).await;
    assert_eq!(
        pass["republished_ids"].as_u64(),
        Some(rows),
        "the compensator must re-drive every one of the {rows} source ids: {pass}"
    );
    let messages: Vec<Message> = job
        .peek_all(&work)
        .await
        .iter()
        .map(Message::parse)
        .collect();
    assert_messages_cover(&job, &messages, "redrive", &job.ids_of("src").await);
    for first in job.groups().await {
        let meta = job.meta(first).await;
        assert_eq!(
            meta.get("redrives").map(String::as_str),
            Some("1"),
            "group {first} was re-driven once: {meta:?}"
        );
    }

    job.consume_until_idle(1, &[]).await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_the_compensator_runs_pass_after_pass_until_sigterm() {
    let job = TestJob::new(1_000, 200).await;
    let rows = job.create_source(2_000).await;
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    let groups = job.groups().await.len() as u64;

    let mut compensator = job.spawn(
        Bin::Compensator,
        &[
            "run",
            "--job",
            job.job_arg(),
            "--min-age",
            "0s",
            "--every",
            "1s",
            "--json",
        ],
    );
    let stdout = compensator.stdout_path();
    let passes = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    };
    wait_while_running(
        &mut compensator,
        "the compensator to print two passes",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            match passes(&text).len() {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} passes: {text}")),
            }
        },
    )
    .await;
    let stopped = compensator.terminate(Duration::from_secs(30)).await;
    stopped.expect_code(0);

    let passes = passes(&stopped.stdout);
    assert!(passes.len() >= 2, "{}", stopped.describe());
    // The first pass finds every group landed and marks it complete; later passes find nothing to check.
    assert_eq!(
        (
            passes[0]["groups_checked"].as_u64(),
            passes[0]["groups_complete"].as_u64()
        ),
        (Some(groups), Some(groups)),
        "first pass: {}",
        passes[0]
    );
    for pass in &passes {
        assert_eq!(
            (
                pass["republished_ids"].as_u64(),
                pass["groups_complete"].as_u64()
            ),
            (Some(0), Some(groups)),
            "nothing is missing, so no pass re-drives anything: {pass}"
        );
    }
    for pass in &passes[1..] {
        assert_eq!(pass["groups_checked"].as_u64(), Some(0), "{pass}");
    }
    job.assert_job_complete(rows, 0).await;
}
