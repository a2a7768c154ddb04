//! The compensator finds what never landed (src ∧ ¬tgt ∧ ¬gone) and publishes it again — but leaves groups
//! younger than `--min-age` alone, since their batches may still be in flight.

use crate::helpers::{assert_messages_cover, Bin, Message, TestJob};

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
