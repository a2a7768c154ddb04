//! Re-running the producer resumes: groups already `produced` are skipped, a group a crash left
//! `producing` is done again in full, and nothing else is published twice.

use crate::helpers::{assert_messages_cover, Message, TestJob};

#[tokio::test(flavor = "multi_thread")]
async fn the_producer_resumes_and_never_publishes_twice() {
    let job = TestJob::new(1_000, 100).await;
    let rows = job.create_source(5_000).await;
    let work = job.work_queue();

    job.produce(&[]).await;
    let queued = job.existing_message_count(&work).await;
    let messages: Vec<Message> = job
        .peek_all(&work)
        .await
        .iter()
        .map(Message::parse)
        .collect();
    assert_messages_cover(&job, &messages, "produce", &job.ids_of("src").await);
    let groups = job.groups().await;
    assert!(groups.len() >= 3, "too few groups: {groups:?}");
    let mut produced_at = Vec::new();
    for &first in &groups {
        let meta = job.meta(first).await;
        assert_eq!(
            meta.get("status").map(String::as_str),
            Some("produced"),
            "group {first}: {meta:?}"
        );
        produced_at.push(meta.get("produced_at").cloned());
    }

    // Everything is produced: a second run publishes nothing.
    job.produce(&[]).await;
    assert_eq!(
        job.existing_message_count(&work).await,
        queued,
        "a second run of the producer published again"
    );
    for (&first, before) in groups.iter().zip(&produced_at) {
        let meta = job.meta(first).await;
        assert_eq!(
            &meta.get("produced_at").cloned(),
            before,
            "group {first} was produced again: {meta:?}"
        );
    }

    job.consume_until_idle(1, &[]).await;

    // A crash in the middle of a group leaves it `producing`, without `produced_at`.
    let crashed = groups[1];
    let meta_key = job.group_key(crashed, "meta");
    let mut redis = job.redis.clone();
    redis::cmd("HSET")
        .arg(&meta_key)
        .arg("status")
        .arg("producing")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    redis::cmd("HDEL")
        .arg(&meta_key)
        .arg("produced_at")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    job.purge(&work).await;

    job.produce(&[]).await;
    let messages: Vec<Message> = job
        .peek_all(&work)
        .await
        .iter()
        .map(Message::parse)
        .collect();
    assert_messages_cover(
        &job,
        &messages,
        "produce",
        &job.source_ids_in_group(crashed).await,
    );
    let meta = job.meta(crashed).await;
    assert!(
        meta.get("status").map(String::as_str) == Some("produced")
            && meta.contains_key("produced_at"),
        "the re-run must finish group {crashed}: {meta:?}"
    );
    for (&first, before) in groups.iter().zip(&produced_at) {
        if first != crashed {
            let meta = job.meta(first).await;
            assert_eq!(
                &meta.get("produced_at").cloned(),
                before,
                "group {first} was produced again: {meta:?}"
            );
        }
    }

    job.consume_until_idle(1, &[]).await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}
