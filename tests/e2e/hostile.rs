//! Hostile input: job files that try to smuggle SQL or absurd sizes in, and messages that are broken, forged
//! or replayed. Job files are refused before anything is read; messages a consumer cannot process go to the
//! dead queue, once, unchanged, with their reason. Nothing crashes the consumer, nothing loops, nothing stops
//! it from doing real work, and no bit is set that a real row does not back.

use std::{path::Path, time::Duration};

use serde_json::json;

use crate::helpers::{
    gappy_ids, header_text, path_str, wait_while_running, Bin, Bits, TestJob, COMMAND_DEADLINE,
    ERROR_HEADER,
};

#[tokio::test(flavor = "multi_thread")]
async fn job_files_with_sql_in_names_absurd_sizes_or_unknown_keys_exit_2_naming_the_field() {
    let job = TestJob::new(10_000, 1_000).await;
    // A source that would be read and published if a job file were accepted.
    job.create_source(500).await;
    let good = job.job_toml();
    let sizes = "group_size = 10000\nbatch_size = 1000";

    // (what is wrong, the job file, what stderr must name)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a quote in the source table",
            good.replacen("table = \"src\"", r#"table = "src' OR '1'='1""#, 1),
            "source.table",
        ),
        (
            "a semicolon in the key",
            good.replacen("key = \"id\"", r#"key = "id; DROP TABLE src""#, 1),
            "source.key",
        ),
        (
            "a backtick in a column",
            good.replacen(
                "key = \"id\"",
                "key = \"id\"\ncolumns = [\"id\", \"c`; DROP TABLE src; -- \"]",
                1,
            ),
            "source.columns",
        ),
        (
            "a line comment in the target table",
            good.replacen("table = \"dst\"", r#"table = "dst -- x""#, 1),
            "target.table",
        ),
        (
            "a block comment in the target table",
            good.replacen("table = \"dst\"", r#"table = "dst/**/""#, 1),
            "target.table",
        ),
        (
            "a backtick after a route",
            good.replacen("table = \"dst\"", r#"table = "dst_{id % 4}`""#, 1),
            "target.table",
        ),
        (
            "a quoted schema",
            good.replacen("table = \"src\"", r#"table = "`bmt`.src""#, 1),
            "source.table",
        ),
        (
            "a quote and a comment in the version column",
            good.replacen("key = \"id\"", "key = \"id\"\nversion = \"v' -- \"", 1),
            "source.version",
        ),
        (
            "a quote in the job name",
            good.replacen(&format!("name = \"{}\"", job.name), r#"name = "t'; --""#, 1),
            "name",
        ),
        (
            "group_size = 0",
            good.replacen(sizes, "group_size = 0\nbatch_size = 1", 1),
            "group_size",
        ),
        (
            "a negative group_size",
            good.replacen(sizes, "group_size = -10000\nbatch_size = 1000", 1),
            "group_size",
        ),
        (
            "group_size = 100000000",
            good.replacen(sizes, "group_size = 100000000\nbatch_size = 1000", 1),
            "group_size",
        ),
        (
            "batch_size > group_size",
            good.replacen(sizes, "group_size = 100\nbatch_size = 101", 1),
            "batch_size",
        ),
        (
            "batch_size = 0",
            good.replacen(sizes, "group_size = 100\nbatch_size = 0", 1),
            "batch_size",
        ),
        (
            "group_size as a string",
            good.replacen(sizes, "group_size = \"10000\"\nbatch_size = 1000", 1),
            "group_size",
        ),
        (
            "an unknown top-level key",
            good.replacen(sizes, &format!("{sizes}\nparallelism = 8"), 1),
            "parallelism",
        ),
        (
            "an unknown target key",
            good.replacen("kind = \"sql\"", "kind = \"sql\"\nshards = 4", 1),
            "shards",
        ),
        (
            "an unknown table",
            format!("{good}\n[extras]\nfoo = 1\n"),
            "extras",
        ),
    ];

    for (what, text, field) in &cases {
        assert_ne!(
            text, &good,
            "{what}: the mistake was not written into the file"
        );
        let file_name = format!(
            "hostile-{}.toml",
            what.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        );
        let path = job.write_file(&file_name, text);
        let path = path_str(&path);
        let runs: [(Bin, Vec<&str>); 4] = [
            (Bin::Producer, vec!["--job", path]),
            (Bin::Consumer, vec!["--job", path, "--exit-when-idle", "1"]),
            (
                Bin::Compensator,
                vec!["run", "--job", path, "--min-age", "0s"],
            ),
            (Bin::Compensator, vec!["report", "--job", path]),
        ];
        for (bin, args) in &runs {
            let done = job.run(*bin, args).await;
            assert_eq!(
                done.code(),
                Some(2),
                "{what}: {} must exit 2\n{}",
                bin.file_name(),
                done.describe()
            );
            assert!(
                done.stderr.contains(field)
                    && done
                        .stderr
                        .contains(Path::new(path).file_name().unwrap().to_str().unwrap()),
                "{what}: stderr must name `{field}` and the job file\n{}",
                done.describe()
            );
        }
    }

    let keys = job.redis_keys().await;
    assert!(
        keys.is_empty(),
        "a refused job file wrote to the ledger: {keys:?}"
    );
    assert_eq!(
        job.message_count(&job.work_queue()).await,
        None,
        "a refused job file declared the job's queues"
    );
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, 0);
    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM src").await,
        506,
        "the source was changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_forged_and_replayed_messages_never_crash_loop_or_set_a_wrong_bit() {
    let job = TestJob::new(1_000, 100).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(3_000, job.group_size)).await;
    // The first group with rows; every hostile message aims at it or near it.
    let first = job.group_of(job.sql_u64("SELECT MIN(id) FROM src").await);
    let last = first + job.group_size - 1;

    let mut consumer = job.spawn_consumer(&[]);
    let work = job.work_queue();
    let dead = job.dead_queue();
    job.wait_for_consumer_on(&work, Duration::from_secs(30))
        .await;

    let name = job.name.as_str();
    let valid = json!({"job": name, "group": first, "ids": [[first, first + 9]], "cause": "produce", "attempt": 0})
        .to_string();
    let with = |field: &str, value: serde_json::Value| {
        let mut m: serde_json::Value = serde_json::from_str(&valid).unwrap();
        m[field] = value;
        m.to_string().into_bytes()
    };
    // A range outside the group: its reason must name the group and the range's first id.
    let past = (last + 1).to_string();
    let outside_naming_the_id = ["outside", "group", past.as_str()];
    // (what is wrong, body, words its x-bitmig-error must contain, lower case)
    let garbage: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("not JSON", b"{\"job\": not json at all".to_vec(), &["json"]),
        (
            "truncated JSON",
            valid.as_bytes()[..valid.len() / 2].to_vec(),
            &["json"],
        ),
        ("an empty body", Vec::new(), &["json"]),
        (
            "bytes that are not UTF-8",
            vec![0xff, 0xfe, 0x00, 0x81],
            &["json"],
        ),
        ("a JSON array", b"[1, 2, 3]".to_vec(), &["json"]),
        (
            "a group that is a string",
            with("group", json!("x")),
            &["type"],
        ),
        (
            "ids that are a string",
            with("ids", json!("1-5")),
            &["type"],
        ),
        (
            "a negative id",
            with("ids", json!([[-1, first + 5]])),
            &["invalid"],
        ),
        (
            "an unknown cause",
            with("cause", json!("rm -rf")),
            &["variant"],
        ),
        (
            "the whole id space in one range",
            with("ids", json!([[0u64, u64::MAX]])),
            &["outside"],
        ),
        (
            "a range from the group to the last id",
            with("ids", json!([[first, u64::MAX]])),
            &["outside"],
        ),
        (
            "a range outside its group",
            with("ids", json!([[last + 1, last + 10]])),
            &outside_naming_the_id,
        ),
        (
            "a group that is not a group's first id",
            with("group", json!(first + 1)),
            &["multiple"],
        ),
        (
            "a reversed range",
            with("ids", json!([[first + 9, first]])),
            &["range", "reversed"],
        ),
        (
            "overlapping ranges",
            with("ids", json!([[first, first + 5], [first + 3, first + 9]])),
            &["overlap"],
        ),
        ("no ranges", with("ids", json!([])), &["no id range"]),
        (
            "an absurd attempt",
            with("attempt", json!(1_000_000)),
            &["attempt"],
        ),
        (
            "another job's message",
            with("job", json!("t_someone_else")),
            &["job", "t_someone_else"],
        ),
    ];
    for (_, body, _) in &garbage {
        job.publish_raw(body).await;
    }
    wait_while_running(
        &mut consumer,
        "every hostile message to reach the dead queue",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            match job.message_count(&dead).await {
                Some(n) if n >= garbage.len() as u32 => Ok(()),
                seen => Err(format!("{dead}: {seen:?} messages")),
            }
        },
    )
    .await;

    // The same consumer still does a real job.
    job.produce(&[]).await;
    wait_while_running(
        &mut consumer,
        "the consumer to land every row",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let (_, report) = job.report().await;
            if report["source_ids"].as_u64() == Some(rows)
                && report["missing_ids"].as_u64() == Some(0)
            {
                Ok(())
            } else {
                Err(report.to_string())
            }
        },
    )
    .await;

    // A replayed message, twice: it rewrites the same rows and sets the bits they already have. Before each
    // replay the target rows are altered, so "the replay was processed" is the rows being equal again: an
    // empty work queue only says the message was delivered, and a delivery not yet started when the
    // consumer stops is rightly handed back.
    let replayed: Vec<u64> = job
        .source_ids_in_group(first)
        .await
        .into_iter()
        .take(40)
        .collect();
    let replay = json!({"job": name, "group": first, "ids": ranges(&replayed), "cause": "produce", "attempt": 0})
        .to_string();
    let listed: Vec<String> = replayed.iter().map(u64::to_string).collect();
    let alter = format!(
        "UPDATE dst SET c_bigint = IF(c_bigint <=> 7, 8, 7) WHERE id IN ({})",
        listed.join(", ")
    );
    for round in 1..=2 {
        assert_eq!(
            job.sql_affected(&alter).await,
            replayed.len() as u64,
            "altering the target rows before replay {round}"
        );
        job.publish_raw(replay.as_bytes()).await;
        wait_while_running(
            &mut consumer,
            &format!("replay {round} to rewrite its rows"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                match job.target_differences().await {
                    None => Ok(()),
                    Some(differences) => Err(differences),
                }
            },
        )
        .await;
    }
    assert!(
        consumer.is_running(),
        "the consumer stopped\n{}",
        consumer.output_so_far()
    );
    let stopped = consumer.terminate(Duration::from_secs(30)).await;
    stopped.expect_code(0);
    assert_eq!(
        job.existing_message_count(&work).await,
        0,
        "the consumer handed messages back instead of processing them"
    );
    assert_eq!(
        stopped.rows_written(),
        rows + 2 * replayed.len() as u64,
        "the consumer must have written every row once and the replayed rows twice more"
    );

    // Every hostile message is in the dead queue once, unchanged, with its reason.
    let dead_letters = job.take_all(&dead).await;
    let bodies: Vec<String> = dead_letters
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    assert_eq!(
        dead_letters.len(),
        garbage.len(),
        "{dead} must hold each hostile message exactly once: {bodies:#?}"
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
            "the {ERROR_HEADER} of the message with {what} must say why (mention {words:?}): {reason:?}"
        );
    }

    // No wrong bit: tgt is exactly the source rows, nothing is gone, and only planned groups have keys.
    let groups = job.groups().await;
    for &group in &groups {
        assert_eq!(
            job.bitmap_ids(group, Bits::Tgt).await,
            job.source_ids_in_group(group).await,
            "group {group}: tgt bits must be exactly its source rows"
        );
        assert_eq!(
            job.bitcount(group, Bits::Gone).await,
            0,
            "group {group}: gone bits"
        );
    }
    assert_only_planned_groups_have_keys(&job).await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_for_a_group_never_planned_sets_no_bit() {
    let job = TestJob::new(1_000, 100).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(1_000, job.group_size)).await;
    job.produce(&[]).await;

    // Well formed, but for a group no producer planned, at the very top of the id space: no row there to
    // write, and no published id to record as gone. A `gone` bit there would be a bit no published id backs.
    let top = u64::MAX / job.group_size * job.group_size;
    let forged = json!({"job": job.name, "group": top, "ids": [[top, u64::MAX]], "cause": "redrive", "attempt": 0});
    job.publish_raw(forged.to_string().as_bytes()).await;
    let consumer = job.spawn_consumer(&["--exit-when-idle", "3"]);
    let done = consumer.wait(COMMAND_DEADLINE).await;
    done.expect_code(0);

    // The forged message is in the dead queue, unchanged, saying the group was never planned.
    let dead = job.dead_queue();
    let dead_letters = job.take_all(&dead).await;
    let bodies: Vec<String> = dead_letters
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    assert_eq!(
        bodies,
        vec![forged.to_string()],
        "{dead} must hold the forged message, once and unchanged\n{}",
        done.describe()
    );
    let reason = header_text(&dead_letters[0], ERROR_HEADER).unwrap_or_default();
    assert!(
        reason.contains("never planned") && reason.contains(&top.to_string()),
        "the {ERROR_HEADER} of the forged message must say group {top} was never planned: {reason:?}"
    );

    assert_only_planned_groups_have_keys(&job).await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}

/// Small catch-up batches already waiting when a consumer starts are taken together (one read, one
/// transaction); each still lands or fails on its own: the forged and the broken one among them go to the
/// dead queue alone, and every other one's updates, deletes and bits land.
#[tokio::test(flavor = "multi_thread")]
async fn small_batches_taken_together_land_each_and_a_bad_one_among_them_goes_alone() {
    let job = TestJob::new(1_000, 100).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(6_000, job.group_size)).await;
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    job.assert_target_equals_source().await;

    // In every group: three rows updated, two deleted, then one catch-up batch per group with those five
    // ids, and each group's first changed id again in a second batch (the same id twice in one read).
    let name = job.name.as_str();
    let mut bodies = Vec::new();
    let mut deleted = 0;
    for first in job.groups().await {
        let ids: Vec<u64> = job
            .source_ids_in_group(first)
            .await
            .into_iter()
            .step_by(7)
            .take(5)
            .collect();
        if ids.len() < 5 {
            continue; // a sparse group: too few rows for the five changes
        }
        let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        job.sql(&format!(
            "UPDATE src SET c_bigint = c_bigint DIV 3 + 7 WHERE id IN ({})",
            list(&ids[..3])
        ))
        .await;
        deleted += job
            .sql_affected(&format!(
                "DELETE FROM src WHERE id IN ({})",
                list(&ids[3..])
            ))
            .await;
        bodies.push(json!({"job": name, "group": first, "ids": ranges(&ids), "cause": "catchup", "attempt": 0}).to_string());
        bodies.push(json!({"job": name, "group": first, "ids": [[ids[0], ids[0]]], "cause": "catchup", "attempt": 0}).to_string());
    }
    assert!(
        bodies.len() >= 8,
        "the test needs several groups: {}",
        bodies.len()
    );
    let top = u64::MAX / job.group_size * job.group_size;
    let forged = json!({"job": name, "group": top, "ids": [[top, top + 3]], "cause": "catchup", "attempt": 0}).to_string();
    let broken = b"{\"job\": \"half a".to_vec();
    // The bad ones in the middle: they arrive among good ones.
    let middle = bodies.len() / 2;
    for (i, body) in bodies.iter().enumerate() {
        if i == middle {
            job.publish_raw(forged.as_bytes()).await;
            job.publish_raw(&broken).await;
        }
        job.publish_raw(body.as_bytes()).await;
    }

    let done = job
        .spawn_consumer(&["--exit-when-idle", "3"])
        .wait(COMMAND_DEADLINE)
        .await;
    done.expect_code(0);
    let dead_letters = job.take_all(&job.dead_queue()).await;
    let dead: Vec<(Vec<u8>, String)> = dead_letters
        .iter()
        .map(|d| {
            (
                d.data.clone(),
                header_text(d, ERROR_HEADER).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        dead.len(),
        2,
        "exactly the forged and the broken message are dead: {dead:?}\n{}",
        done.describe()
    );
    // Each one dead once, unchanged, with its own reason.
    let reason_of = |body: &[u8]| -> String {
        dead.iter()
            .find(|(b, _)| b == body)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{body:?} is not in the dead queue: {dead:?}"))
    };
    let (forged_reason, broken_reason) = (reason_of(forged.as_bytes()), reason_of(&broken));
    assert!(forged_reason.contains("never planned"), "{forged_reason:?}");
    assert!(
        broken_reason.to_lowercase().contains("json"),
        "{broken_reason:?}"
    );

    job.assert_target_equals_source().await;
    assert_only_planned_groups_have_keys(&job).await;
    job.assert_job_complete(rows, deleted).await;
}

/// Every `bitmig:{JOB:FIRST}:…` key belongs to a group in `bitmig:{JOB}:groups`.
async fn assert_only_planned_groups_have_keys(job: &TestJob) {
    let prefixes: Vec<String> = job
        .groups()
        .await
        .iter()
        .map(|g| format!("bitmig:{{{}:{g}}}:", job.name))
        .collect();
    let stray: Vec<String> = job
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with(&format!("bitmig:{{{}:", job.name)))
        .filter(|k| !prefixes.iter().any(|p| k.starts_with(p)))
        .collect();
    assert!(
        stray.is_empty(),
        "keys of groups that were never planned: {stray:?}"
    );
}

/// Ascending ids as inclusive ranges.
fn ranges(ids: &[u64]) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some(r) if r[1] + 1 == id => r[1] = id,
            _ => out.push([id, id]),
        }
    }
    out
}
