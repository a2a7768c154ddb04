//! Following (`bitmig-producer --follow`, DESIGN.md §8) as the e2e and fault tests drive it: the job file
//! with a `[follow]` section, the follower as a subprocess, the `follow` hash and `caught_up` polled, and a
//! writer that changes the source the way an application does (inserts above and inside the planned range,
//! updates, key changes, deletes).

use std::time::Duration;

use rand::Rng;

use crate::{wait_for, Bin, Proc, TestJob, TWO_POW_40};

/// How long following may take to reach a state the tests wait for.
pub const FOLLOW_DEADLINE: Duration = Duration::from_secs(420);

/// The default job plus a binlog `[follow]` section with a short settle.
pub fn follow_job(job: &TestJob) -> String {
    let server_id = 2_000_000 + rand::rng().random_range(0..1_000_000);
    format!(
        "{}\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\nsettle = \"2s\"\n",
        job.job_toml()
    )
}

pub fn spawn_follower(job: &TestJob) -> Proc {
    job.spawn(Bin::Producer, &["--job", job.job_arg(), "--follow"])
}

/// SIGTERM to the follower, then to each consumer: every one must stop cleanly (exit 0) within a minute.
pub async fn stop_following(follower: Proc, consumers: Vec<Proc>) {
    follower
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
    for c in consumers {
        c.terminate(Duration::from_secs(60)).await.expect_code(0);
    }
}

/// What the writer did, for the messages.
#[derive(Debug, Default)]
pub struct Writes {
    pub inserts: u64,
    pub updates: u64,
    pub key_changes: u64,
    pub deletes: u64,
}

/// One change of the source, chosen by `n`: inserts above the planned range and into empty stretches of
/// it, updates of a value, updates of the key, deletes.
pub async fn write_one(job: &TestJob, live: &mut Vec<u64>, n: u64, w: &mut Writes) {
    let pick = rand::rng().random_range(0..live.len());
    let id = live[pick];
    match n % 5 {
        0 => {
            // Above the planned range (groups the follower plans), or inside it where no group exists.
            let new = if n % 2 == 0 {
                TWO_POW_40 + 5_000_000 + n
            } else {
                50_000_000 + n
            };
            job.insert_rows(&format!("SELECT {} AS s, {new} AS id", n % 1000))
                .await;
            live.push(new);
            w.inserts += 1;
        }
        1 | 2 => {
            job.sql(&format!(
                "UPDATE src SET c_text = 'changed {n}', c_int = {n} WHERE id = {id}"
            ))
            .await;
            w.updates += 1;
        }
        3 => {
            let new = 60_000_000 + n;
            job.sql(&format!("UPDATE src SET id = {new} WHERE id = {id}"))
                .await;
            live[pick] = new;
            w.key_changes += 1;
        }
        _ => {
            job.sql(&format!("DELETE FROM src WHERE id = {id}")).await;
            live.swap_remove(pick);
            w.deletes += 1;
        }
    }
}

pub async fn follow_field(job: &TestJob, field: &str) -> Option<String> {
    let mut redis = job.redis.clone();
    redis::cmd("HGET")
        .arg(format!("bitmig:{{{}}}:follow", job.name))
        .arg(field)
        .query_async(&mut redis)
        .await
        .ok()
        .flatten()
}

pub async fn producer_status(job: &TestJob) -> Option<String> {
    let mut redis = job.redis.clone();
    redis::cmd("HGET")
        .arg(format!("bitmig:{{{}}}:producer", job.name))
        .arg("status")
        .query_async(&mut redis)
        .await
        .ok()
        .flatten()
}

/// Reports, and compensator passes, until `report` says `caught_up`; returns that report.
///
/// A pass runs only while the work and retry queues are empty: a catch-up still queued is "missing" to a
/// compensator whose `--min-age` it outlived, and re-driving it would feed the very queue the consumers are
/// behind on (on a loaded machine that loop grew a queue of 950 messages from 360 changed ids).
pub async fn wait_caught_up(job: &TestJob) -> serde_json::Value {
    wait_for(
        "caught_up",
        FOLLOW_DEADLINE,
        Duration::from_millis(500),
        || async {
            let (_, report) = job.report().await;
            if report["caught_up"].as_bool() == Some(true) {
                return Ok(report);
            }
            if report["queued"].as_u64() == Some(0) {
                // Not 0s: a catch-up of an id already in the target may still sit unacked in a consumer,
                // where neither the bits nor the queue's ready count show it.
                job.compensate(Some("3s")).await;
            }
            Err(report.to_string())
        },
    )
    .await
}

/// Waits until `bitmig:{JOB}:follow` holds a position: every change from then on is followed.
pub async fn wait_for_position(job: &TestJob) -> String {
    wait_for(
        "the follow position",
        FOLLOW_DEADLINE,
        Duration::from_millis(50),
        || async {
            follow_field(job, "position")
                .await
                .ok_or_else(|| "no position yet".to_owned())
        },
    )
    .await
}
