//! `bitmig-compensator purge` (DESIGN.md §10): archive old rows — copy them to a history table, prove the
//! copies, then delete them from the source — with nothing deleted that is not proven.
//!
//! - 260 000 rows of which 200 000 are older than the cutoff, archived MariaDB → MariaDB and MariaDB →
//!   PostgreSQL: the source keeps exactly the 60 000 newer rows, the history tables hold the 200 000 old
//!   ones equal column for column to a kept copy of the original; a dry run deletes nothing; rows updated in
//!   the source after the copy and rows damaged in the target are kept and re-driven, then deleted by a
//!   second purge; the largest key survives until `--purge-max-key`; verify (with `--redrive`) and a
//!   re-drive of purged ids leave the history whole.
//! - `purge` killed with SIGKILL mid-run: no row deleted and missing from the target; a rerun finishes, and
//!   the `purged` bits are exactly the rows deleted (ids whose delete committed without their bits are
//!   repaired).
//! - PostgreSQL source → MariaDB history: the lock, compare and delete run in PostgreSQL; a changed row is
//!   kept, re-driven and deleted by the second pass.
//! - Refusals (exit 2): a target that is the source table, a job whose follower is running.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde_json::Value;

use crate::helpers::{wait_for, Bin, Bits, MysqlUser, TestJob};

const CUTOFF: &str = "2024-10-01";
/// The columns of `orig`, `src` and `hist`.
const COLUMNS: [&str; 6] = ["id", "created_at", "user_id", "amount", "note", "flags"];
/// Copying 260 000 rows on a shared machine may take longer than a one-shot command's deadline.
const LONG: Duration = Duration::from_secs(900);

/// `orig`: `rows` rows, ids 1..=rows; an id is old (before [`CUTOFF`]) when `id % 13 < 10`, so old and
/// new rows interleave, and the largest id (a multiple of 13 when `rows` is) is old.
async fn create_original(job: &TestJob, rows: u64) {
    job.sql(
        "CREATE TABLE orig (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         created_at DATETIME(6) NOT NULL, user_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL, \
         note VARCHAR(64) NULL, flags SMALLINT NOT NULL, KEY (created_at))",
    )
    .await;
    job.sql(&format!(
        "INSERT INTO orig SELECT seq, \
         IF(seq % 13 < 10, TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND + INTERVAL seq % 999983 MICROSECOND, \
            TIMESTAMP'{CUTOFF} 00:00:00' + INTERVAL seq SECOND), \
         seq % 977, (seq * 37 % 100000) / 100, IF(seq % 11 = 0, NULL, CONCAT('note ', seq)), seq % 3 \
         FROM seq_1_to_{rows}"
    ))
    .await;
}

fn job_toml(job: &TestJob, source_url: &str, target_url: &str, extra_target: &str) -> String {
    format!(
        r#"name = "{name}"
group_size = {group_size}
batch_size = {batch_size}

[source]
url = "{source_url}"
table = "src"
key = "id"
filter = "created_at < '{CUTOFF}'"

[target]
kind = "sql"
url = "{target_url}"
table = "hist"
{extra_target}
"#,
        name = job.name,
        group_size = job.group_size,
        batch_size = job.batch_size,
    )
}

/// Produce, consume until idle (deadline [`LONG`]), then a compensator pass: every group complete.
async fn copy(job: &TestJob, old: u64) {
    job.produce(&[]).await;
    job.spawn_consumer(&["--exit-when-idle", "3"])
        .wait(LONG)
        .await
        .expect_code(0);
    job.assert_job_complete(old, 0).await;
}

/// `bitmig-compensator purge --job F --json [extra…]`: exit code and summary.
async fn purge(job: &TestJob, extra: &[&str]) -> (i32, Value) {
    let (code, summary, _) = purge_logged(job, extra).await;
    (code, summary)
}

/// [`purge`], its log at debug level too.
async fn purge_logged(job: &TestJob, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["purge", "--job", job.job_arg(), "--json"];
    args.extend(extra);
    let done = job
        .spawn_with_env(
            Bin::Compensator,
            &args,
            &[("RUST_LOG", "info,bitmig_compensator::purge=debug")],
        )
        .wait(LONG)
        .await;
    let code = done.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "purge must exit 0 or 3\n{}",
        done.describe()
    );
    (code, done.json(), done.stderr)
}

/// Batches the server compared and deleted itself, and batches it handed back to be judged row by row.
fn server_batches(log: &str) -> (usize, usize) {
    (
        log.matches("purge batch compared and deleted within the server")
            .count(),
        log.matches("not every row equals its copy").count(),
    )
}

async fn verify(job: &TestJob, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "verify",
        "--job",
        job.job_arg(),
        "--json",
        "--recheck-after",
        "0s",
    ];
    args.extend(extra);
    let done = job.spawn(Bin::Compensator, &args).wait(LONG).await;
    (done.code().unwrap_or(-1), done.json())
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{field}` in {v:#}"))
}

/// Rows of `a` (under `condition`) with an equal row in `b`: every column equal, NULLs included.
async fn equal_rows(job: &TestJob, a: &str, b: &str, condition: &str) -> u64 {
    let on: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("x.`{c}` <=> y.`{c}`"))
        .collect();
    job.sql_u64(&format!(
        "SELECT COUNT(*) FROM {a} x JOIN {b} y ON {} WHERE {condition}",
        on.join(" AND ")
    ))
    .await
}

/// After an archive of `orig`'s old rows: `src` holds exactly the new rows, `history` (checked by the
/// caller) the old ones.
async fn assert_source_holds_only_new_rows(job: &TestJob, new: u64) {
    let old_cond = format!("x.created_at < '{CUTOFF}'");
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM src").await, new);
    assert_eq!(
        equal_rows(job, "src", "orig", &format!("NOT ({old_cond})")).await,
        new,
        "the source's new rows are untouched"
    );
}

/// Every row of `query`, each column as text (NULL as `None`).
async fn mysql_texts(job: &TestJob, query: &str) -> Vec<Vec<Option<String>>> {
    let rows: Vec<mysql_async::Row> = job
        .conn()
        .await
        .query(query)
        .await
        .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
    rows.into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    other => Some(other.as_sql(true)),
                })
                .collect()
        })
        .collect()
}

/// The purged bits of every group, as ids ascending.
async fn purged_ids(job: &TestJob) -> Vec<u64> {
    let mut ids = Vec::new();
    for first in job.groups().await {
        ids.extend(job.bitmap_ids(first, Bits::Purged).await);
    }
    ids
}

/// The ids `orig` has and `src` no longer has: the rows really deleted.
async fn deleted_ids(job: &TestJob) -> Vec<u64> {
    job.sql_ids(
        "SELECT o.id FROM orig o LEFT JOIN src s ON s.id = o.id WHERE s.id IS NULL ORDER BY o.id",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn old_rows_are_archived_to_mariadb_and_postgres_and_only_proven_rows_are_deleted() {
    const ROWS: u64 = 260_000;
    const OLD: u64 = 200_000;
    const NEW: u64 = ROWS - OLD;
    let my = TestJob::new(10_000, 1_000).await;
    let pgj = TestJob::new(10_000, 1_000).await;
    let pg = pgj.pg().await;

    // One original, two identical sources; `orig` is the kept copy compared with at the end.
    create_original(&my, ROWS).await;
    assert_eq!(
        my.sql_u64(&format!(
            "SELECT COUNT(*) FROM orig WHERE created_at < '{CUTOFF}'"
        ))
        .await,
        OLD
    );
    for j in [&my, &pgj] {
        j.sql(&format!("CREATE TABLE src LIKE `{}`.orig", my.database))
            .await;
        j.sql(&format!(
            "INSERT INTO src SELECT * FROM `{}`.orig",
            my.database
        ))
        .await;
    }
    pgj.sql(&format!("CREATE TABLE orig LIKE `{}`.orig", my.database))
        .await;
    pgj.sql(&format!(
        "INSERT INTO orig SELECT * FROM `{}`.orig",
        my.database
    ))
    .await;
    my.sql("CREATE TABLE hist LIKE orig").await;
    pg.sql(
        "CREATE TABLE hist (id bigint PRIMARY KEY, created_at timestamp(6) NOT NULL, \
         user_id integer NOT NULL, amount numeric(12,2) NOT NULL, note varchar(64), flags smallint NOT NULL)",
    )
    .await;
    my.write_file(
        "job.toml",
        &job_toml(&my, &my.database_url, &my.database_url, ""),
    );
    pgj.write_file("job.toml", &job_toml(&pgj, &pgj.database_url, &pg.url, ""));

    tokio::join!(copy(&my, OLD), copy(&pgj, OLD));
    let (code, v) = verify(&my, &[]).await;
    assert_eq!(code, 0, "{v:#}");
    let (code, v) = verify(&pgj, &[]).await;
    assert_eq!(code, 0, "{v:#}");

    // A dry run deletes nothing, sets no bit, and says what it would delete.
    let (code, dry) = purge(&my, &["--dry-run", "--batch", "5000"]).await;
    assert_eq!(code, 0, "{dry:#}");
    assert_eq!(num(&dry, "candidates"), OLD, "{dry:#}");
    assert_eq!(
        num(&dry, "deleted"),
        OLD - 1,
        "all but the largest key: {dry:#}"
    );
    assert_eq!(num(&dry, "kept_max_key"), ROWS, "{dry:#}");
    assert_eq!(dry["dry_run"], Value::Bool(true));
    assert_eq!(my.sql_u64("SELECT COUNT(*) FROM src").await, ROWS);
    assert!(purged_ids(&my).await.is_empty(), "a dry run sets no bit");

    // Rows updated in the source after their copy, and rows damaged (or lost) in the target.
    let updated = [5u64, 1_001, 150_001];
    // the same text in another case and with a trailing space: equal under the table's collation, not
    // equal as archived bytes (each alone in its batch, so that the server's comparison decides it)
    let damaged = [7u64, 2_002, 50_001, 100_002];
    let lost = 9u64;
    for id in updated {
        assert!(id % 13 < 10, "{id} is an old row");
        for t in ["src", "orig"] {
            // `orig` keeps what the source holds: the archive must end up with the update
            my.sql(&format!(
                "UPDATE {t} SET amount = amount + 1 WHERE id = {id}"
            ))
            .await;
        }
    }
    for (id, note) in
        damaged
            .iter()
            .zip(["'damaged'", "'damaged'", "UPPER(note)", "CONCAT(note, ' ')"])
    {
        my.sql(&format!("UPDATE hist SET note = {note} WHERE id = {id}"))
            .await;
        assert_eq!(
            my.sql_u64(&format!(
                "SELECT COUNT(*) FROM hist h JOIN src s USING (id) WHERE id = {id} AND h.note = s.note"
            ))
            .await,
            u64::from(note != "'damaged'"),
            "id {id}"
        );
    }
    my.sql(&format!("DELETE FROM hist WHERE id = {lost}")).await;
    let mut kept: Vec<u64> = updated.iter().chain(&damaged).copied().collect();
    kept.push(lost);
    kept.sort_unstable();

    // MariaDB → MariaDB, first pass: everything proven is deleted; the eight are kept and re-driven.
    // Source and history share a server: the server compares and deletes each batch itself, except the
    // five holding a kept id or the largest key (ids 5–2 002, 50 001, 100 002, 150 001, 260 000): the server
    // hands back the first four, the last is never given to it; all five are judged row by row.
    let (code, first, log) = purge_logged(&my, &["--batch", "5000"]).await;
    assert_eq!(code, 3, "rows were kept: {first:#}");
    assert!(
        log.contains("the source's server compares each batch with the target"),
        "{log}"
    );
    let batches = num(&first, "batches") as usize;
    assert_eq!(server_batches(&log), (batches - 5, 4), "{log}");
    assert_eq!(
        num(&first, "deleted"),
        OLD - 1 - kept.len() as u64,
        "{first:#}"
    );
    assert_eq!(num(&first, "differing"), kept.len() as u64, "{first:#}");
    assert_eq!(
        num(&first, "republished_ids"),
        kept.len() as u64,
        "{first:#}"
    );
    let listed: Vec<u64> = first["differing_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(listed, kept, "{first:#}");
    for id in &kept {
        assert_eq!(
            my.sql_u64(&format!("SELECT COUNT(*) FROM src WHERE id = {id}"))
                .await,
            1,
            "id {id} differs in the target: it must not be deleted"
        );
    }
    assert_eq!(
        my.sql_u64(&format!("SELECT COUNT(*) FROM src WHERE id = {ROWS}"))
            .await,
        1,
        "the largest key survives without --purge-max-key"
    );
    let (_, report) = my.report().await;
    assert_eq!(
        num(&report, "purged_ids"),
        OLD - 1 - kept.len() as u64,
        "{report:#}"
    );
    assert_eq!(
        num(&report, "purge_pending"),
        1 + kept.len() as u64,
        "{report:#}"
    );

    // The re-drive repairs the target; the second pass deletes the eight.
    my.spawn_consumer(&["--exit-when-idle", "3"])
        .wait(LONG)
        .await
        .expect_code(0);
    let (code, second) = purge(&my, &[]).await;
    assert_eq!(code, 0, "{second:#}");
    assert_eq!(num(&second, "deleted"), kept.len() as u64, "{second:#}");
    assert_eq!(num(&second, "kept_max_key"), ROWS, "{second:#}");
    // … and --purge-max-key the last one.
    let (code, last) = purge(&my, &["--purge-max-key"]).await;
    assert_eq!(code, 0, "{last:#}");
    assert_eq!(num(&last, "deleted"), 1, "{last:#}");

    assert_source_holds_only_new_rows(&my, NEW).await;
    assert_eq!(my.sql_u64("SELECT COUNT(*) FROM hist").await, OLD);
    assert_eq!(
        equal_rows(&my, "hist", "orig", "TRUE").await,
        OLD,
        "every archived row equals the original, column for column"
    );
    assert_eq!(purged_ids(&my).await, deleted_ids(&my).await);
    let (_, report) = my.report().await;
    assert_eq!(num(&report, "purged_ids"), OLD, "{report:#}");
    assert_eq!(num(&report, "purge_pending"), 0, "{report:#}");
    assert_eq!(num(&report, "groups_holding_rows"), 0, "{report:#}");

    // Verify after the purge: purged ids are archived, not extra; --redrive re-drives nothing.
    let (code, v) = verify(&my, &["--redrive"]).await;
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(num(&v, "republished_ids"), 0, "{v:#}");
    // A re-drive of purged ids (as a follower or an operator could publish) must not delete the archive.
    my.publish_raw(
        format!(
            r#"{{"job":"{}","group":0,"ids":[[1,2000]],"cause":"redrive","attempt":0}}"#,
            my.name
        )
        .as_bytes(),
    )
    .await;
    my.spawn_consumer(&["--exit-when-idle", "3"])
        .wait(LONG)
        .await
        .expect_code(0);
    assert_eq!(my.sql_u64("SELECT COUNT(*) FROM hist").await, OLD);
    // the new ids of the range are out of `filter`, hence `gone`; no purged id is
    let gone = my.bitmap_ids(0, Bits::Gone).await;
    let purged = my.bitmap_ids(0, Bits::Purged).await;
    assert!(
        gone.iter().all(|id| purged.binary_search(id).is_err()),
        "a purged id was marked gone"
    );
    let (code, v) = verify(&my, &[]).await;
    assert_eq!(code, 0, "{v:#}");

    // MariaDB → PostgreSQL.
    let (code, p1) = purge(&pgj, &["--batch", "5000"]).await;
    assert_eq!(code, 0, "{p1:#}");
    assert_eq!(num(&p1, "deleted"), OLD - 1, "{p1:#}");
    let (code, p2) = purge(&pgj, &["--purge-max-key"]).await;
    assert_eq!(code, 0, "{p2:#}");
    assert_eq!(num(&p2, "deleted"), 1, "{p2:#}");
    assert_source_holds_only_new_rows(&pgj, NEW).await;
    let want = mysql_texts(
        &pgj,
        &format!(
            "SELECT CAST(id AS CHAR), DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), CAST(user_id AS CHAR), \
             CAST(amount AS CHAR), note, CAST(flags AS CHAR) FROM orig WHERE created_at < '{CUTOFF}' ORDER BY id"
        ),
    )
    .await;
    let got = pg
        .texts(
            "SELECT id::text, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::text, amount::text, \
             note, flags::text FROM hist ORDER BY hist.id",
        )
        .await;
    assert_eq!(got.len() as u64, OLD);
    if let Some((g, w)) = got.iter().zip(&want).find(|(g, w)| g != w) {
        panic!("the PostgreSQL history differs from the original's old rows: {g:?} ≠ {w:?}");
    }
    assert_eq!(purged_ids(&pgj).await, deleted_ids(&pgj).await);
    let (code, v) = verify(&pgj, &["--redrive"]).await;
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(pg.count("SELECT count(*) FROM hist").await, OLD);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_killed_mid_run_loses_nothing_and_its_rerun_finishes_with_exact_bits() {
    const ROWS: u64 = 26_000;
    const OLD: u64 = 20_000;
    let job = TestJob::new(10_000, 500).await;
    create_original(&job, ROWS).await;
    job.sql("CREATE TABLE src LIKE orig").await;
    job.sql("INSERT INTO src SELECT * FROM orig").await;
    job.sql("CREATE TABLE hist LIKE orig").await;
    job.write_file(
        "job.toml",
        &job_toml(&job, &job.database_url, &job.database_url, ""),
    );
    copy(&job, OLD).await;

    // Slow enough to be caught mid-run: 100 rows a transaction, 2 000 rows/s.
    let mut running = job.spawn(
        Bin::Compensator,
        &[
            "purge",
            "--job",
            job.job_arg(),
            "--batch",
            "100",
            "--rate",
            "2000",
        ],
    );
    wait_for(
        "purge to delete 3 000 rows",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            let n = job.sql_u64("SELECT COUNT(*) FROM src").await;
            if n <= ROWS - 3_000 {
                Ok(())
            } else {
                Err(format!("{n} rows in src"))
            }
        },
    )
    .await;
    assert!(running.is_running(), "{}", running.output_so_far());
    let killed = running.kill().await;
    assert_eq!(killed.signal(), Some(9), "{}", killed.describe());
    let left = job.sql_u64("SELECT COUNT(*) FROM src").await;
    assert!(
        left > ROWS - OLD,
        "killed before the end ({left} rows left)"
    );

    // No row is both deleted and missing from the target; every deleted row is archived intact.
    let deleted = deleted_ids(&job).await;
    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM orig o LEFT JOIN src s ON s.id = o.id LEFT JOIN hist h ON h.id = o.id \
                     WHERE s.id IS NULL AND h.id IS NULL")
            .await,
        0,
        "a row was deleted from the source and is not in the target"
    );
    let archived_deleted =
        equal_rows(&job, "orig", "hist", "x.id NOT IN (SELECT id FROM src)").await;
    assert_eq!(archived_deleted, deleted.len() as u64);
    // Bits follow commits: every purged bit is a deleted row (a commit may lack its bits).
    let bits = purged_ids(&job).await;
    assert!(bits.iter().all(|id| deleted.binary_search(id).is_ok()));

    // A crash between a COMMIT and its bits, made certain: old rows deleted with no bit set.
    let lost_bits = job
        .sql_ids("SELECT id FROM src WHERE created_at < '2024-10-01' AND id < 26000 ORDER BY id DESC LIMIT 5")
        .await;
    assert_eq!(lost_bits.len(), 5);
    let list: Vec<String> = lost_bits.iter().map(u64::to_string).collect();
    job.sql(&format!("DELETE FROM src WHERE id IN ({})", list.join(",")))
        .await;

    let (code, rerun) = purge(&job, &[]).await;
    assert_eq!(code, 0, "{rerun:#}");
    assert!(num(&rerun, "repaired") >= 5, "{rerun:#}");
    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM src").await,
        ROWS - OLD + 1,
        "the new rows and the largest key are left"
    );
    assert_eq!(
        purged_ids(&job).await,
        deleted_ids(&job).await,
        "purged bits == rows really deleted"
    );
    assert_eq!(
        equal_rows(&job, "hist", "orig", "TRUE").await,
        OLD,
        "the archive holds every old row intact (the five deleted by hand were copied before)"
    );
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM hist").await, OLD);
}

/// The server compares nothing itself when it may not or cannot: a source user who may not read the
/// history table (the server refuses the first batch's statement: said once, then every batch is judged by
/// purge), and a history table whose column types differ from the source's (no byte-for-byte comparison:
/// judged by purge from the start). Either way every old row but the largest is deleted and archived intact.
#[tokio::test(flavor = "multi_thread")]
async fn batches_are_judged_by_purge_when_the_server_may_not_or_cannot_compare_them() {
    const ROWS: u64 = 2_600;
    const OLD: u64 = 2_000;
    let refused = TestJob::new(1_000, 250).await;
    let typed = TestJob::new(1_000, 250).await;
    for (job, hist) in [
        (&refused, "CREATE TABLE hist LIKE orig"),
        (
            &typed,
            "CREATE TABLE hist (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, created_at DATETIME(6) NOT NULL, \
             user_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL, note VARCHAR(80) NULL, flags SMALLINT NOT NULL)",
        ),
    ] {
        create_original(job, ROWS).await;
        job.sql("CREATE TABLE src LIKE orig").await;
        job.sql("INSERT INTO src SELECT * FROM orig").await;
        job.sql(hist).await;
    }
    // The source's user may read and delete `src` and only write `hist`.
    let user = MysqlUser::create(&refused, &format!("{}_s", refused.name), "Pw_source", "").await;
    refused
        .sql(&format!(
            "REVOKE ALL PRIVILEGES ON `{}`.* FROM '{}'@'%'",
            refused.database,
            user.name()
        ))
        .await;
    for (privileges, table) in [("SELECT, DELETE", "src"), ("INSERT", "hist")] {
        refused
            .sql(&format!(
                "GRANT {privileges} ON `{}`.{table} TO '{}'@'%'",
                refused.database,
                user.name()
            ))
            .await;
    }
    refused.write_file(
        "job.toml",
        &job_toml(
            &refused,
            &user.url(&refused.database_url),
            &refused.database_url,
            "",
        ),
    );
    typed.write_file(
        "job.toml",
        &job_toml(&typed, &typed.database_url, &typed.database_url, ""),
    );
    tokio::join!(copy(&refused, OLD), copy(&typed, OLD));

    let (code, summary, log) = purge_logged(&refused, &[]).await;
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(num(&summary, "deleted"), OLD - 1, "{summary:#}");
    assert_eq!(
        log.matches("the server does not compare the rows with the target itself")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("SELECT command denied"), "{log}");
    assert_eq!(server_batches(&log), (0, 0), "{log}");

    let (code, summary, log) = purge_logged(&typed, &[]).await;
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(num(&summary, "deleted"), OLD - 1, "{summary:#}");
    assert!(
        log.contains("each batch's rows are read and compared by purge")
            && log.contains("column `note` is varchar(64)"),
        "{log}"
    );
    assert_eq!(server_batches(&log), (0, 0), "{log}");

    for job in [&refused, &typed] {
        assert_eq!(
            job.sql_u64("SELECT COUNT(*) FROM src").await,
            ROWS - OLD + 1
        );
        assert_eq!(equal_rows(job, "hist", "orig", "TRUE").await, OLD);
        assert_eq!(purged_ids(job).await, deleted_ids(job).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_refuses_a_target_that_is_the_source_and_a_running_follower() {
    let job = TestJob::new(1_000, 200).await;
    create_original(&job, 1_300).await;
    job.sql("CREATE TABLE src LIKE orig").await;
    job.sql("INSERT INTO src SELECT * FROM orig").await;
    job.sql("CREATE TABLE hist LIKE orig").await;

    // The target is the source table: refused before anything is read.
    let same = job.write_file(
        "same.toml",
        &job_toml(&job, &job.database_url, &job.database_url, "")
            .replace("table = \"hist\"", "table = \"src\""),
    );
    let done = job
        .run(
            Bin::Compensator,
            &["purge", "--job", crate::helpers::path_str(&same)],
        )
        .await;
    done.expect_code(2);
    assert!(
        done.stderr.contains("is the source table"),
        "{}",
        done.describe()
    );

    job.write_file(
        "job.toml",
        &job_toml(&job, &job.database_url, &job.database_url, ""),
    );
    copy(&job, 1_000).await;

    // A follower wrote its state a moment ago: refused, nothing deleted.
    let mut redis = job.redis.clone();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let follow = job.job_key("follow");
    redis::cmd("HSET")
        .arg(&follow)
        .arg("from")
        .arg("binlog")
        .arg("started_at")
        .arg(&now)
        .arg("heartbeat_at")
        .arg(&now)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let done = job
        .run(Bin::Compensator, &["purge", "--job", job.job_arg()])
        .await;
    done.expect_code(2);
    assert!(
        done.stderr.contains("being followed"),
        "{}",
        done.describe()
    );
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM src").await, 1_300);

    // Stopped cleanly: the purge runs.
    redis::cmd("HSET")
        .arg(&follow)
        .arg("stopped_at")
        .arg(&now)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let (code, v) = purge(&job, &[]).await;
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(num(&v, "deleted"), 999, "{v:#}");
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM src").await, 301);
}

/// Archiving from a PostgreSQL source into a MariaDB history table: the lock, the compare and the delete
/// run in PostgreSQL. A row updated in the source after its copy is kept and re-driven, then deleted by the
/// second pass; the largest key is kept until `--purge-max-key`; the source ends with exactly its new rows,
/// the history with the old ones, equal column for column to a kept copy, and the `purged` bits are exactly
/// the rows deleted.
#[tokio::test(flavor = "multi_thread")]
async fn old_rows_are_archived_from_postgres_and_only_proven_rows_are_deleted() {
    const ROWS: u64 = 26_000;
    // id % 13 < 10 is old: 10 of every 13 ids, and the largest (26 000 = 13 × 2 000) is old.
    const OLD: u64 = 20_000;
    const NEW: u64 = ROWS - OLD;
    let job = TestJob::new(1_000, 500).await;
    let pg = job.pg().await;
    pg.sql(
        "CREATE TABLE src (id bigint PRIMARY KEY, created_at timestamp(6) NOT NULL, user_id integer NOT NULL, \
         amount numeric(12,2) NOT NULL, note varchar(64), flags smallint NOT NULL)",
    )
    .await;
    pg.sql(&format!(
        "INSERT INTO src SELECT s, \
         CASE WHEN s % 13 < 10 THEN timestamp '2024-01-01' + s * interval '1 second' + (s % 999983) * interval '1 microsecond' \
              ELSE timestamp '{CUTOFF}' + s * interval '1 second' END, \
         s % 977, (s * 37 % 100000) / 100.0, CASE WHEN s % 11 = 0 THEN NULL ELSE 'note ' || s END, s % 3 \
         FROM generate_series(1, {ROWS}) s"
    ))
    .await;
    pg.sql("CREATE TABLE orig AS TABLE src").await;
    let old_in_pg = pg
        .count(&format!(
            "SELECT count(*) FROM src WHERE created_at < '{CUTOFF}'"
        ))
        .await;
    assert_eq!(old_in_pg, OLD);
    job.sql(
        "CREATE TABLE hist (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, created_at DATETIME(6) NOT NULL, \
         user_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL, note VARCHAR(64) NULL, flags SMALLINT NOT NULL)",
    )
    .await;
    job.write_file("job.toml", &job_toml(&job, &pg.url, &job.database_url, ""));
    copy(&job, OLD).await;
    let (code, v) = verify(&job, &[]).await;
    assert_eq!(code, 0, "{v:#}");

    // Changed in the source after its copy: not deleted by the first pass.
    let updated = 5u64;
    for t in ["src", "orig"] {
        pg.sql(&format!(
            "UPDATE {t} SET amount = amount + 1 WHERE id = {updated}"
        ))
        .await;
    }
    let (code, first) = purge(&job, &["--batch", "4000"]).await;
    assert_eq!(code, 3, "a differing row makes the pass exit 3: {first:#}");
    assert_eq!(num(&first, "candidates"), OLD, "{first:#}");
    assert_eq!(num(&first, "deleted"), OLD - 2, "{first:#}");
    assert_eq!(num(&first, "kept_max_key"), ROWS, "{first:#}");
    assert_eq!(
        first["differing_ids"],
        serde_json::json!([updated]),
        "{first:#}"
    );
    assert_eq!(
        pg.count(&format!(
            "SELECT count(*) FROM src WHERE id IN ({updated}, {ROWS})"
        ))
        .await,
        2,
        "the changed row and the largest key are still in the source"
    );

    // The re-drive brings the change to the history; then the second pass and --purge-max-key.
    job.spawn_consumer(&["--exit-when-idle", "3"])
        .wait(LONG)
        .await
        .expect_code(0);
    let (code, second) = purge(&job, &["--purge-max-key"]).await;
    assert_eq!(code, 0, "{second:#}");
    assert_eq!(num(&second, "deleted"), 2, "{second:#}");

    assert_eq!(pg.count("SELECT count(*) FROM src").await, NEW);
    assert_eq!(
        pg.count(&format!(
            "SELECT count(*) FROM src s JOIN orig o USING (id) WHERE s.created_at >= '{CUTOFF}' \
             AND (s.created_at, s.user_id, s.amount, s.note, s.flags) IS NOT DISTINCT FROM \
                 (o.created_at, o.user_id, o.amount, o.note, o.flags)"
        ))
        .await,
        NEW,
        "the source keeps its new rows, untouched"
    );
    let want = pg
        .texts(&format!(
            "SELECT id::text, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::text, amount::text, \
             note, flags::text FROM orig WHERE created_at < '{CUTOFF}' ORDER BY orig.id"
        ))
        .await;
    let got = mysql_texts(
        &job,
        "SELECT CAST(id AS CHAR), DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), CAST(user_id AS CHAR), \
         CAST(amount AS CHAR), note, CAST(flags AS CHAR) FROM hist ORDER BY id",
    )
    .await;
    assert_eq!(got.len() as u64, OLD);
    if let Some((g, w)) = got.iter().zip(&want).find(|(g, w)| g != w) {
        panic!("the MariaDB history differs from the original's old rows: {g:?} ≠ {w:?}");
    }
    let old_ids: Vec<u64> = want
        .iter()
        .map(|r| r[0].as_deref().and_then(|s| s.parse().ok()).expect("an id"))
        .collect();
    assert_eq!(
        purged_ids(&job).await,
        old_ids,
        "the purged bits are the rows deleted"
    );
    let (_, report) = job.report().await;
    assert_eq!(num(&report, "purged_ids"), OLD, "{report:#}");
    assert_eq!(num(&report, "purge_pending"), 0, "{report:#}");
    let (code, v) = verify(&job, &["--redrive"]).await;
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM hist").await, OLD);
}
