//! `bitmig-producer --follow` with `from = "queue"` (DESIGN.md §8) end to end: the test plays the CDC tool.
//! While a 200 000-row job is copied by two consumers, it changes rows of the source (inserts, updates,
//! key changes, deletes) and publishes each change to a queue of its own as Debezium Server or Canal would
//! shape it, some of them twice; plus a message with no key and an empty tombstone. Once `report` says
//! `caught_up`, the target equals the source (COUNT, CHECKSUM TABLE, row for row), the two keyless
//! messages are in the job's dead queue unchanged with their reason, and the follower, stopped, leaves
//! nothing unacked in the change queue.

use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use super::follow_readers::ChangeQueue;
use crate::helpers::follow::{
    follow_field, producer_status, spawn_follower, stop_following, wait_caught_up,
    wait_for_position,
};
use crate::helpers::{header_text, wait_for, Proc, TestJob, ERROR_HEADER};

const ROWS: u64 = 200_000;
const DEADLINE: Duration = Duration::from_secs(240);

/// One change, as the tool saw it: the key before (`None`: an insert) and after (`None`: a delete).
struct Event {
    before: Option<u64>,
    after: Option<u64>,
}

/// Debezium Server's envelope (`payload.before` / `payload.after`, `payload.source.ts_ms`).
fn debezium(e: &Event) -> String {
    let image = |id: Option<u64>| id.map_or(json!(null), |id| json!({"id": id, "c_text": "…"}));
    let op = match (e.before, e.after) {
        (None, _) => "c",
        (_, None) => "d",
        _ => "u",
    };
    json!({
        "schema": {"type": "struct"},
        "payload": {
            "before": image(e.before),
            "after": image(e.after),
            "source": {"connector": "mysql", "ts_ms": chrono::Utc::now().timestamp_millis()},
            "op": op,
        }
    })
    .to_string()
}

/// Canal's flat message: `data[*]` the rows (after, or the deleted row), `old[*]` the changed columns'
/// old values, ids as strings.
fn canal(e: &Event) -> String {
    let (kind, data, old) = match (e.before, e.after) {
        (None, Some(a)) => ("INSERT", json!([{"id": a.to_string()}]), json!(null)),
        (Some(b), None) => ("DELETE", json!([{"id": b.to_string()}]), json!(null)),
        (Some(b), Some(a)) if a != b => (
            "UPDATE",
            json!([{"id": a.to_string()}]),
            json!([{"id": b.to_string()}]),
        ),
        (_, Some(a)) => (
            "UPDATE",
            json!([{"id": a.to_string(), "c_int": "1"}]),
            json!([{"c_int": "0"}]),
        ),
        (None, None) => unreachable!("a change has a key"),
    };
    json!({
        "data": data, "old": old, "type": kind, "isDdl": false,
        "database": "shop", "table": "src", "pkNames": ["id"],
        "es": chrono::Utc::now().timestamp_millis(),
    })
    .to_string()
}

/// One change of the source, chosen by `n`, and the event describing it.
async fn change(job: &TestJob, live: &mut Vec<u64>, n: u64) -> Event {
    let pick = rand::rng().random_range(0..live.len());
    let id = live[pick];
    match n % 5 {
        0 => {
            let new = 70_000_000 + n;
            job.insert_rows(&format!("SELECT {} AS s, {new} AS id", n % 1000))
                .await;
            live.push(new);
            Event {
                before: None,
                after: Some(new),
            }
        }
        1 | 2 => {
            job.sql(&format!(
                "UPDATE src SET c_text = 'queued {n}', c_int = {n} WHERE id = {id}"
            ))
            .await;
            Event {
                before: Some(id),
                after: Some(id),
            }
        }
        3 => {
            let new = 80_000_000 + n;
            job.sql(&format!("UPDATE src SET id = {new} WHERE id = {id}"))
                .await;
            live[pick] = new;
            Event {
                before: Some(id),
                after: Some(new),
            }
        }
        _ => {
            job.sql(&format!("DELETE FROM src WHERE id = {id}")).await;
            live.swap_remove(pick);
            Event {
                before: Some(id),
                after: None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn debezium_and_canal_events_in_a_queue_bring_the_target_to_the_source() {
    let job = TestJob::new(10_000, 1_000).await;
    job.create_source_from_fixture(ROWS).await;
    let q = ChangeQueue::new().await;
    job.write_file(
        "job.toml",
        &format!(
            "{}\n[follow]\nfrom = \"queue\"\nqueue = \"{}\"\n\
             keys = [\"/payload/after/id\", \"/payload/before/id\", \"/data/*/id\", \"/old/*/id\"]\n\
             settle = \"2s\"\n",
            job.job_toml(),
            q.name
        ),
    );
    let mut live = job.ids_of("src").await;
    let mut follower = spawn_follower(&job);
    let consumers: Vec<Proc> = (0..2).map(|_| job.spawn_consumer(&[])).collect();
    wait_for_position(&job).await;

    // The CDC tool: until the walk is done and 300 changes were made, every change published once, every
    // seventh twice (tools deliver at least once), half of them as Debezium, half as Canal.
    let started = Instant::now();
    let mut published = 0u64;
    let mut n = 0u64;
    let no_key = r#"{"payload":{"op":"c","after":{"name":"a row without its id"}}}"#;
    loop {
        let e = change(&job, &mut live, n).await;
        let body = if n % 2 == 0 { debezium(&e) } else { canal(&e) };
        q.publish(&body).await;
        published += 1;
        if n % 7 == 0 {
            q.publish(&body).await;
            published += 1;
        }
        if n == 100 {
            q.publish(no_key).await;
            q.publish("").await;
            published += 2;
        }
        n += 1;
        if n >= 300 && producer_status(&job).await.as_deref() == Some("done") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the walk did not finish while writing"
        );
        assert!(
            follower.is_running(),
            "the follower exited:\n{}",
            follower.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let report = wait_caught_up(&job).await;
    assert_eq!(report["follow"]["from"], "queue", "{report:#}");
    // Every message was taken (duplicates and keyless ones included) before caught_up could be true.
    wait_for(
        "the follower to count every message",
        DEADLINE,
        Duration::from_millis(200),
        || async {
            let events: u64 = follow_field(&job, "events")
                .await
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            if events >= published {
                Ok(())
            } else {
                Err(format!("{events} of {published} events"))
            }
        },
    )
    .await;
    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM dst").await,
        job.sql_u64("SELECT COUNT(*) FROM src").await,
        "COUNT(*) of dst and src"
    );
    assert_eq!(
        job.checksum("dst").await,
        job.checksum("src").await,
        "CHECKSUM TABLE"
    );
    job.assert_target_equals_source().await;

    // The two keyless messages: in the dead queue, unchanged, with the reason.
    let dead = job.take_all(&job.dead_queue()).await;
    let mut bodies: Vec<(Vec<u8>, String)> = dead
        .iter()
        .map(|d| {
            (
                d.data.clone(),
                header_text(d, ERROR_HEADER).unwrap_or_default(),
            )
        })
        .collect();
    bodies.sort();
    assert_eq!(
        bodies.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
        vec![Vec::new(), no_key.as_bytes().to_vec()],
        "the dead queue holds {bodies:?}"
    );
    assert!(
        bodies.iter().all(|(_, why)| why.contains("no key")),
        "each dead message says why: {bodies:?}"
    );

    stop_following(follower, consumers).await;
    // Acked, every one: nothing comes back to the queue once the follower is gone.
    wait_for(
        "the change queue without a consumer",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            match q.counts().await {
                (0, 0) => Ok(()),
                other => Err(format!("(ready, consumers) = {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(q.counts().await, (0, 0), "messages left unacked");
}
