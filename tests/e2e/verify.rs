//! `bitmig-compensator verify` (DESIGN.md §9): after a complete copy every group is equal; each kind of
//! damage to the target is found for exactly its id with the right kind and columns; `--redrive` and the
//! consumers repair it; and a row that changes in the source between the two passes is not reported once
//! the re-check sees it repaired.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::es::Es;

use crate::helpers::{wait_for, Bin, TestJob, COMMAND_DEADLINE};

/// `bitmig-compensator verify --job F --json [extra…]`: the exit code and the JSON summary.
async fn verify(job: &TestJob, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "--job", job.job_arg(), "--json"];
    args.extend(extra);
    let done = job.run(Bin::Compensator, &args).await;
    let code = done.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "verify must exit 0 or 3\n{}",
        done.describe()
    );
    (code, done.json())
}

/// The summary's differing ids: id → (kind, columns).
fn diffs_of(summary: &Value) -> BTreeMap<u64, (String, Vec<String>)> {
    summary["diffs"]
        .as_array()
        .unwrap_or_else(|| panic!("no diffs in {summary}"))
        .iter()
        .map(|d| {
            let columns = d["columns"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| c.as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (
                d["key"].as_u64().unwrap_or_else(|| panic!("key in {d}")),
                (d["kind"].as_str().unwrap_or_default().to_owned(), columns),
            )
        })
        .collect()
}

/// One id of `src` matching `condition`, not among `taken`; added to `taken`.
async fn pick(job: &TestJob, condition: &str, taken: &mut Vec<u64>) -> u64 {
    let not_in = if taken.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = taken.iter().map(u64::to_string).collect();
        format!(" AND id NOT IN ({})", list.join(","))
    };
    let id = job
        .sql_u64(&format!(
            "SELECT id FROM src WHERE {condition}{not_in} ORDER BY id LIMIT 1"
        ))
        .await;
    taken.push(id);
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_to_mariadb_verify_finds_each_damage_and_redrive_repairs_it() {
    let job = TestJob::new(1_000, 200).await;
    let rows = job.create_source(3_000).await;
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    job.assert_job_complete(rows, 0).await;
    let groups = job.groups().await;

    // A complete copy is equal, every group of it.
    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(code, 0, "a complete copy must verify equal: {summary:#}");
    assert_eq!(
        summary["digest"].as_str(),
        Some("mysql"),
        "MariaDB → MariaDB with the same types hashes on the servers: {summary:#}"
    );
    assert_eq!(
        summary["groups_verified"].as_u64(),
        Some(groups.len() as u64)
    );
    assert_eq!(summary["source_rows"].as_u64(), Some(rows));
    assert_eq!(summary["target_rows"].as_u64(), Some(rows));
    for &first in &groups {
        let meta = job.meta(first).await;
        assert_eq!(
            meta.get("verify").map(String::as_str),
            Some("equal"),
            "group {first}: {meta:?}"
        );
        assert!(meta.contains_key("verified_at"), "group {first}: {meta:?}");
    }
    let (_, report) = job.report().await;
    assert_eq!(report["verified"], Value::Bool(true), "{report:#}");
    assert_eq!(
        report["groups_verified"].as_u64(),
        Some(groups.len() as u64)
    );

    // Damage the target in every way that must be found.
    let mut taken = Vec::new();
    let changed = pick(&job, "c_int BETWEEN -1000000 AND 1000000", &mut taken).await;
    job.sql(&format!(
        "UPDATE dst SET c_int = c_int + 1 WHERE id = {changed}"
    ))
    .await;
    let null_vs_empty = pick(&job, "c_varchar IS NULL AND c_int IS NOT NULL", &mut taken).await;
    job.sql(&format!(
        "UPDATE dst SET c_varchar = '' WHERE id = {null_vs_empty}"
    ))
    .await;
    let micro = pick(&job, "c_datetime < '9000-01-01'", &mut taken).await;
    job.sql(&format!(
        "UPDATE dst SET c_datetime = c_datetime + INTERVAL 1 MICROSECOND WHERE id = {micro}"
    ))
    .await;
    let space = pick(&job, "c_varchar <> ''", &mut taken).await;
    job.sql(&format!(
        "UPDATE dst SET c_varchar = CONCAT(c_varchar, ' ') WHERE id = {space}"
    ))
    .await;
    // A FLOAT changed past its 6th significant digit: the same text as MariaDB writes a FLOAT (1234.57).
    let float = pick(
        &job,
        "c_float BETWEEN 1000 AND 9999 AND c_float * 100 - FLOOR(c_float * 100) BETWEEN 0.2 AND 0.6",
        &mut taken,
    )
    .await;
    job.sql(&format!(
        "UPDATE dst SET c_float = c_float + 0.001 WHERE id = {float}"
    ))
    .await;
    assert_eq!(
        job.sql_u64(&format!(
            "SELECT COUNT(*) FROM src s JOIN dst d USING (id) WHERE id = {float} \
             AND CAST(s.c_float AS CHAR) = CAST(d.c_float AS CHAR) AND s.c_float <> d.c_float"
        ))
        .await,
        1,
        "the damaged FLOAT reads as the same text"
    );
    let deleted = pick(&job, "TRUE", &mut taken).await;
    job.sql(&format!("DELETE FROM dst WHERE id = {deleted}"))
        .await;
    let extra = pick(&job, "TRUE", &mut taken).await;
    job.sql(&format!("DELETE FROM src WHERE id = {extra}"))
        .await;

    let want: BTreeMap<u64, (String, Vec<String>)> = [
        (changed, ("differs", vec!["c_int"])),
        (null_vs_empty, ("differs", vec!["c_varchar"])),
        (micro, ("differs", vec!["c_datetime"])),
        (space, ("differs", vec!["c_varchar"])),
        (float, ("differs", vec!["c_float"])),
        (deleted, ("missing", vec![])),
        (extra, ("extra", vec![])),
    ]
    .into_iter()
    .map(|(id, (kind, cols))| {
        (
            id,
            (
                kind.to_owned(),
                cols.into_iter().map(str::to_owned).collect(),
            ),
        )
    })
    .collect();

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(
        code, 3,
        "a damaged target must not verify equal: {summary:#}"
    );
    assert_eq!(diffs_of(&summary), want, "{summary:#}");
    assert_eq!(summary["diff_ids"].as_u64(), Some(7));
    // The ledger says the same: diff bitmaps, meta, the sample.
    let mut in_bitmaps = Vec::new();
    for &first in &groups {
        let ids: Vec<u64> = job.diff_ids(first).await;
        let meta = job.meta(first).await;
        let want_here = want.keys().filter(|id| job.group_of(**id) == first).count();
        assert_eq!(
            meta.get("verify").map(String::as_str),
            Some(if want_here == 0 { "equal" } else { "differs" }),
            "group {first}: {meta:?}"
        );
        if want_here > 0 {
            assert_eq!(
                meta.get("differs"),
                Some(&want_here.to_string()),
                "group {first}: {meta:?}"
            );
        }
        in_bitmaps.extend(ids);
    }
    in_bitmaps.sort_unstable();
    assert_eq!(in_bitmaps, want.keys().copied().collect::<Vec<_>>());
    let sample = job.diff_sample().await;
    assert_eq!(sample.len(), 7, "{sample:?}");
    for (id, (kind, _)) in &want {
        let entry: Value = serde_json::from_str(&sample[&id.to_string()]).expect("JSON sample");
        assert_eq!(
            entry["kind"].as_str(),
            Some(kind.as_str()),
            "id {id}: {entry}"
        );
    }
    let (_, report) = job.report().await;
    assert_eq!(report["verified"], Value::Bool(false), "{report:#}");
    assert_eq!(report["diff_ids"].as_u64(), Some(7), "{report:#}");

    // --redrive publishes them as verify batches; the consumers repair them.
    let (code, summary) = verify(&job, &["--recheck-after", "0s", "--redrive"]).await;
    assert_eq!(code, 3, "{summary:#}");
    assert_eq!(summary["republished_ids"].as_u64(), Some(7), "{summary:#}");
    job.consume_until_idle(1, &[]).await;
    job.assert_target_equals_source().await;

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(
        code, 0,
        "after the repair the target must verify equal: {summary:#}"
    );
    assert!(job.diff_sample().await.is_empty());
    for &first in &groups {
        assert!(
            job.diff_ids(first).await.is_empty(),
            "group {first} keeps a diff bitmap"
        );
    }
    let (_, report) = job.report().await;
    assert_eq!(report["verified"], Value::Bool(true), "{report:#}");
    assert_eq!(report["diff_ids"].as_u64(), Some(0), "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_repaired_between_the_two_passes_is_not_reported() {
    let job = TestJob::new(1_000, 200).await;
    let rows = job.create_source(1_500).await;
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    job.assert_job_complete(rows, 0).await;

    // The source changes; the target has not caught up yet when the first pass looks.
    let mut taken = Vec::new();
    let moving = pick(&job, "c_int BETWEEN -1000000 AND 1000000", &mut taken).await;
    let stuck = pick(&job, "c_int BETWEEN -1000000 AND 1000000", &mut taken).await;
    job.sql(&format!(
        "UPDATE src SET c_int = c_int + 1 WHERE id IN ({moving}, {stuck})"
    ))
    .await;
    let proc = job.spawn(
        Bin::Compensator,
        &[
            "verify",
            "--job",
            job.job_arg(),
            "--json",
            "--recheck-after",
            "20s",
        ],
    );
    wait_for(
        "the first pass to finish",
        COMMAND_DEADLINE,
        Duration::from_millis(200),
        || async {
            let out = proc.output_so_far();
            if out.contains("waiting before the re-check") {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;
    // …and catches up with one of the two rows before the re-check.
    job.sql(&format!(
        "UPDATE dst d JOIN src s ON s.id = d.id SET d.c_int = s.c_int WHERE d.id = {moving}"
    ))
    .await;
    let done = proc.wait(COMMAND_DEADLINE).await;
    done.expect_code(3);
    let summary = done.json();
    let want: BTreeMap<u64, (String, Vec<String>)> =
        [(stuck, ("differs".to_owned(), vec!["c_int".to_owned()]))]
            .into_iter()
            .collect();
    assert_eq!(diffs_of(&summary), want, "{summary:#}");
    assert_eq!(
        summary["settled_on_recheck"].as_u64(),
        Some(1),
        "{summary:#}"
    );
    assert!(!job.diff_ids(job.group_of(moving)).await.contains(&moving));
}

/// The four routed PostgreSQL tables of [`mariadb_to_postgres_routed_verify_sees_equal_types_and_each_damage`].
const PG_TABLES: [&str; 4] = ["s0.orders_0", "s1.orders_1", "s0.orders_2", "s1.orders_3"];

/// Runs `statement` (with `{t}` for the table) on every routed table: the row lives in one of them.
async fn on_every_table(pg: &crate::helpers::pg::PgDb, statement: &str) {
    for t in PG_TABLES {
        pg.sql(&statement.replace("{t}", t)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_to_postgres_routed_verify_sees_equal_types_and_each_damage() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    // Types that must compare equal across the engines: DECIMAL/numeric, DATETIME/timestamp,
    // TIMESTAMP/timestamptz, TINYINT(1)/boolean, MariaDB's JSON text/jsonb, FLOAT/real.
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, user_id INT NOT NULL, \
         created_at DATETIME(6) NULL, amount DECIMAL(12,2) NOT NULL, note VARCHAR(64) NULL, \
         flag TINYINT(1) NULL, body JSON NULL, at TIMESTAMP(3) NULL, ratio FLOAT NULL)",
    )
    .await;
    job.sql(
        "INSERT INTO src SELECT seq * 3, CAST(seq % 16 AS SIGNED) - 7, \
         TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE + INTERVAL seq MICROSECOND, \
         seq * 1.25 - 999, IF(seq % 7 = 0, NULL, CONCAT('n', seq)), seq % 2, \
         JSON_OBJECT('s', seq, 'a', JSON_ARRAY(1, 2.50)), FROM_UNIXTIME(seq * 1000), seq / 7 \
         FROM seq_1_to_1500",
    )
    .await;
    pg.sql("CREATE SCHEMA s0; CREATE SCHEMA s1").await;
    let toml = format!(
        r#"name = "{name}"
group_size = 1000
batch_size = 100

[source]
url = "{src}"
table = "src"
key = "id"

[target]
kind = "sql"
url = "{dst}"
table = "s{{user_id % 2}}.orders_{{user_id % 4}}"
create = true
"#,
        name = job.name,
        src = job.database_url,
        dst = pg.url
    );
    job.write_file("job.toml", &toml);
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    let groups = job.groups().await;

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(code, 0, "a complete copy must verify equal: {summary:#}");
    assert_eq!(
        summary["groups_verified"].as_u64(),
        Some(groups.len() as u64)
    );
    assert_eq!(summary["target_rows"].as_u64(), Some(1500), "{summary:#}");

    let mut taken = Vec::new();
    let changed = pick(&job, "TRUE", &mut taken).await;
    on_every_table(
        &pg,
        &format!("UPDATE {{t}} SET amount = amount + 0.01 WHERE id = {changed}"),
    )
    .await;
    let null_vs_empty = pick(&job, "note IS NULL", &mut taken).await;
    on_every_table(
        &pg,
        &format!("UPDATE {{t}} SET note = '' WHERE id = {null_vs_empty}"),
    )
    .await;
    let micro = pick(&job, "TRUE", &mut taken).await;
    on_every_table(
        &pg,
        &format!("UPDATE {{t}} SET created_at = created_at + interval '1 microsecond' WHERE id = {micro}"),
    )
    .await;
    let space = pick(&job, "note IS NOT NULL", &mut taken).await;
    on_every_table(
        &pg,
        &format!("UPDATE {{t}} SET note = note || ' ' WHERE id = {space}"),
    )
    .await;
    let deleted = pick(&job, "TRUE", &mut taken).await;
    on_every_table(&pg, &format!("DELETE FROM {{t}} WHERE id = {deleted}")).await;
    let extra = pick(&job, "TRUE", &mut taken).await;
    job.sql(&format!("DELETE FROM src WHERE id = {extra}"))
        .await;

    let want: BTreeMap<u64, (String, Vec<String>)> = [
        (changed, ("differs", vec!["amount"])),
        (null_vs_empty, ("differs", vec!["note"])),
        (micro, ("differs", vec!["created_at"])),
        (space, ("differs", vec!["note"])),
        (deleted, ("missing", vec![])),
        (extra, ("extra", vec![])),
    ]
    .into_iter()
    .map(|(id, (kind, cols))| {
        (
            id,
            (
                kind.to_owned(),
                cols.into_iter().map(str::to_owned).collect(),
            ),
        )
    })
    .collect();
    let (code, summary) = verify(&job, &["--recheck-after", "0s", "--redrive"]).await;
    assert_eq!(code, 3, "{summary:#}");
    assert_eq!(diffs_of(&summary), want, "{summary:#}");
    assert_eq!(summary["republished_ids"].as_u64(), Some(6), "{summary:#}");
    job.consume_until_idle(1, &[]).await;

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(
        code, 0,
        "after the repair the target must verify equal: {summary:#}"
    );
    let (_, report) = job.report().await;
    assert_eq!(report["verified"], Value::Bool(true), "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_to_mariadb_verify_sees_equal_types_and_each_damage() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    pg.sql(
        "CREATE TABLE src (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, note varchar(64), \
         flag boolean, body jsonb, at timestamptz, created_at timestamp(6));
         INSERT INTO src SELECT s, s * 1.25 - 999, CASE WHEN s % 7 = 0 THEN NULL ELSE 'n' || s END, s % 2 = 1, \
         jsonb_build_object('s', s, 'a', jsonb_build_array(1, 2.50)), to_timestamp(s * 1000), \
         timestamp '2024-01-01' + s * interval '1 minute' + s * interval '1 microsecond' \
         FROM generate_series(1, 1500) s",
    )
    .await;
    let toml = format!(
        r#"name = "{name}"
group_size = 1000
batch_size = 100

[source]
url = "{src}"
table = "src"
key = "id"

[target]
kind = "sql"
url = "{dst}"
table = "dst"
create = true
"#,
        name = job.name,
        src = pg.url,
        dst = job.database_url
    );
    job.write_file("job.toml", &toml);
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(code, 0, "a complete copy must verify equal: {summary:#}");
    assert_eq!(summary["target_rows"].as_u64(), Some(1500), "{summary:#}");

    let changed = 10;
    job.sql(&format!(
        "UPDATE dst SET flag = NOT flag WHERE id = {changed}"
    ))
    .await;
    let null_vs_empty = 14; // 14 % 7 = 0: note is NULL
    job.sql(&format!(
        "UPDATE dst SET note = '' WHERE id = {null_vs_empty}"
    ))
    .await;
    let micro = 20;
    job.sql(&format!(
        "UPDATE dst SET created_at = created_at + INTERVAL 1 MICROSECOND WHERE id = {micro}"
    ))
    .await;
    let space = 22;
    job.sql(&format!(
        "UPDATE dst SET note = CONCAT(note, ' ') WHERE id = {space}"
    ))
    .await;
    let deleted = 1200;
    job.sql(&format!("DELETE FROM dst WHERE id = {deleted}"))
        .await;
    let extra = 1300;
    pg.sql(&format!("DELETE FROM src WHERE id = {extra}")).await;

    let want: BTreeMap<u64, (String, Vec<String>)> = [
        (changed, ("differs", vec!["flag"])),
        (null_vs_empty, ("differs", vec!["note"])),
        (micro, ("differs", vec!["created_at"])),
        (space, ("differs", vec!["note"])),
        (deleted, ("missing", vec![])),
        (extra, ("extra", vec![])),
    ]
    .into_iter()
    .map(|(id, (kind, cols))| {
        (
            id,
            (
                kind.to_owned(),
                cols.into_iter().map(str::to_owned).collect(),
            ),
        )
    })
    .collect();
    let (code, summary) = verify(&job, &["--recheck-after", "0s", "--redrive"]).await;
    assert_eq!(code, 3, "{summary:#}");
    assert_eq!(diffs_of(&summary), want, "{summary:#}");
    job.consume_until_idle(1, &[]).await;

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(
        code, 0,
        "after the repair the target must verify equal: {summary:#}"
    );
}

/// The `_source` of document `id` in `index`, changed by `change` and written back.
async fn rewrite_document(es: &Es, index: &str, id: u64, change: impl FnOnce(&mut Value)) {
    let (mut doc, _) = es
        .get(index, id)
        .await
        .unwrap_or_else(|| panic!("document {id} in {index}"));
    change(&mut doc);
    es.ok("PUT", &format!("/{index}/_doc/{id}"), Some(&doc))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_to_elasticsearch_verify_reads_documents_back_and_redrive_repairs_them() {
    let job = TestJob::new(1_000, 200).await;
    let es = Es::connect(&job.name).await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, c_int INT NULL, \
         c_varchar VARCHAR(40) NULL, c_dt DATETIME(6) NULL, amount DECIMAL(12,2) NULL, \
         tags JSON NULL, secret VARCHAR(32) NULL) DEFAULT CHARSET = utf8mb4",
    )
    .await;
    job.sql(
        "INSERT INTO src SELECT seq, seq * 7 - 5000, IF(seq % 5 = 0, NULL, CONCAT('v', seq)), \
         '2024-01-01' + INTERVAL seq MINUTE + INTERVAL (seq % 3) * 1000 MICROSECOND, (seq % 1000) / 4, \
         JSON_OBJECT('b', seq, 'a', JSON_ARRAY(1, 'two')), CONCAT('secret', seq) FROM (SELECT CAST(seq AS SIGNED) AS seq FROM seq_1_to_2500) AS g",
    )
    .await;
    let index = format!("{}_docs", job.name);
    job.write_es_job(&es.url, &index, "", "exclude = [\"secret\"]");
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    job.assert_job_complete(2_500, 0).await;

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(code, 0, "a complete copy must verify equal: {summary:#}");
    assert_eq!(summary["digest"].as_str(), Some("documents"), "{summary:#}");
    assert_eq!(summary["source_rows"].as_u64(), Some(2_500));
    assert_eq!(summary["target_rows"].as_u64(), Some(2_500));

    // An excluded column may change at will: it is not in the documents.
    job.sql("UPDATE src SET secret = 'changed' WHERE id = 10")
        .await;
    // Damage the index: a changed field, 1 µs, a trailing space, a deleted document; and an extra one.
    rewrite_document(&es, &index, 101, |d| {
        d["c_int"] = json!(d["c_int"].as_i64().unwrap() + 1)
    })
    .await;
    rewrite_document(&es, &index, 1_202, |d| {
        d["c_dt"] = json!("2024-01-01T20:02:00.000001")
    })
    .await;
    rewrite_document(&es, &index, 1_203, |d| {
        d["c_varchar"] = json!(format!("{} ", d["c_varchar"].as_str().unwrap()))
    })
    .await;
    es.ok("DELETE", &format!("/{index}/_doc/2004"), None).await;
    job.sql("DELETE FROM src WHERE id = 2222").await;

    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(
        code, 3,
        "a damaged index must not verify equal: {summary:#}"
    );
    let want: BTreeMap<u64, (String, Vec<String>)> = [
        (101, ("differs", vec!["c_int"])),
        (1_202, ("differs", vec!["c_dt"])),
        (1_203, ("differs", vec!["c_varchar"])),
        (2_004, ("missing", vec![])),
        (2_222, ("extra", vec![])),
    ]
    .into_iter()
    .map(|(id, (kind, cols))| {
        let cols = cols.into_iter().map(str::to_owned).collect();
        (id, (kind.to_owned(), cols))
    })
    .collect();
    assert_eq!(diffs_of(&summary), want, "{summary:#}");
    for id in want.keys() {
        assert!(
            job.diff_ids(job.group_of(*id)).await.contains(id),
            "id {id} in its diff bitmap"
        );
    }

    let (code, summary) = verify(&job, &["--recheck-after", "0s", "--redrive"]).await;
    assert_eq!(code, 3, "{summary:#}");
    assert_eq!(summary["republished_ids"].as_u64(), Some(5), "{summary:#}");
    job.consume_until_idle(1, &[]).await;
    let (code, summary) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(
        code, 0,
        "after the repair the index must verify equal: {summary:#}"
    );
    assert_eq!(summary["target_rows"].as_u64(), Some(2_499), "{summary:#}");
    assert!(
        es.get(&index, 2_222).await.is_none(),
        "the extra document is deleted"
    );
}

/// `run --min-age 0s --verify --recheck-after 0s --json`: the pass's summary (exit 0 expected).
async fn run_verify(job: &TestJob) -> Value {
    let done = job
        .run(
            Bin::Compensator,
            &[
                "run",
                "--job",
                job.job_arg(),
                "--min-age",
                "0s",
                "--verify",
                "--recheck-after",
                "0s",
                "--json",
            ],
        )
        .await;
    done.expect_code(0);
    done.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_verify_verifies_the_groups_not_found_equal_since_they_were_driven() {
    let job = TestJob::new(1_000, 200).await;
    let rows = job.create_source(3_000).await;
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    job.run(
        Bin::Compensator,
        &["run", "--job", job.job_arg(), "--min-age", "0s"],
    )
    .await
    .expect_code(0);
    job.assert_job_complete(rows, 0).await;
    let groups = job.groups().await;

    // Never verified: every group.
    let pass = run_verify(&job).await;
    assert_eq!(
        pass["verify"]["groups_verified"].as_u64(),
        Some(groups.len() as u64),
        "{pass:#}"
    );
    assert_eq!(
        pass["verify"]["groups_equal"].as_u64(),
        Some(groups.len() as u64),
        "{pass:#}"
    );
    // Equal since driven: none.
    let pass = run_verify(&job).await;
    assert_eq!(
        pass["verify"]["groups_verified"].as_u64(),
        Some(0),
        "{pass:#}"
    );

    // A group found differing (by a verify of its own) is verified on every pass until it is equal, and
    // its differing ids are re-driven.
    let mut taken = Vec::new();
    let changed = pick(&job, "c_int BETWEEN -1000000 AND 1000000", &mut taken).await;
    job.sql(&format!(
        "UPDATE dst SET c_int = c_int + 1 WHERE id = {changed}"
    ))
    .await;
    let (code, _) = verify(&job, &["--recheck-after", "0s"]).await;
    assert_eq!(code, 3);
    let pass = run_verify(&job).await;
    assert_eq!(
        pass["verify"]["groups_verified"].as_u64(),
        Some(1),
        "{pass:#}"
    );
    assert_eq!(
        pass["verify"]["republished_ids"].as_u64(),
        Some(1),
        "{pass:#}"
    );
    job.consume_until_idle(1, &[]).await;
    job.assert_target_equals_source().await;
    let pass = run_verify(&job).await;
    assert_eq!(
        pass["verify"]["groups_verified"].as_u64(),
        Some(1),
        "{pass:#}"
    );
    assert_eq!(pass["verify"]["groups_equal"].as_u64(), Some(1), "{pass:#}");
    let pass = run_verify(&job).await;
    assert_eq!(
        pass["verify"]["groups_verified"].as_u64(),
        Some(0),
        "{pass:#}"
    );
    let meta = job.meta(job.group_of(changed)).await;
    assert_eq!(
        meta.get("verify").map(String::as_str),
        Some("equal"),
        "{meta:?}"
    );
}
