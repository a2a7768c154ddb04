//! `bitmig-compensator purge`: delete from the source the rows proven equal in the target (DESIGN.md §10),
//! the dangerous half of archiving, done so that **no row is deleted unless its copy is proven**.
//!
//! Candidates are the ids with `tgt` set, not `gone`, not `purged`, not in `failed`, in groups `complete`.
//! Per batch of at most `--batch` candidates of one group, one source transaction:
//!
//! 1. `SELECT … FOR UPDATE` the candidates' rows (their ranges, or the batch's span when those are many),
//!    read without `filter` (with its verdict as a column), and the table's largest key;
//! 2. read the target rows of the batch's span across every table of the job (routes included) and hash
//!    both sides with the canonical encoding of §9 ([`bitmig_shared::digest`]); a key is proven by
//!    [`proven_equal`]: exactly one target row, with the source row's hash;
//! 3. `DELETE` the proven rows, a run of proven rows with no other row between them as one key range
//!    ([`delete_runs`]; the transaction is REPEATABLE READ, so no row enters a locked range before it
//!    ends), and the number deleted must be the number proven, or the transaction is rolled back; `COMMIT`;
//! 4. **then** set their `purged` bits.
//!
//! **On one server.** When the target is one fixed table on the source's MySQL/MariaDB server and its
//! compared columns have the source's types ([`bitmig_shared::source::PurgeTwin`]), the server does steps
//! 1–3 itself in one statement: `DELETE` exactly the batch's keys that still match `filter` `AND EXISTS` a
//! target row equal column for column (numbers and times by value, the rest byte for byte:
//! [`PurgeTwin::mysql`]). The batch is kept only when that deleted every candidate (each key is one row),
//! so it proves as much as the hashes do, and no row crosses the network. Anything else (a row that
//! differs, left the filter, is gone; the largest key) is rolled back and the batch goes the steps above,
//! which sort it out. A refusal (a source user without `SELECT` on the target) turns it off for the run,
//! said once in the log. The target rows it reads stay share-locked until the batch commits.
//!
//! Three batches run at once ([`PURGE_WORKERS`]), each in its own transaction, taken from far-apart parts
//! of the key space ([`interleave`]) so that neither waits on the other's locks.
//!
//! A candidate whose row differs, or no longer matches `filter`, is not deleted: it is re-published as a
//! `redrive` batch (a consumer rewrites the target row, or deletes it when the row left the filter) and a
//! later purge deletes it once proven. The row holding the table's largest key is kept unless
//! `--purge-max-key` (MySQL's AUTO_INCREMENT restarts above the largest key after a restart).
//!
//! **Crash between COMMIT and the bits.** The rerun finds those ids still candidates, and their source
//! rows absent: a candidate whose source row does not exist while its target row does gets its `purged`
//! bit (*repaired*). Only purge, or the application, deletes a row the ledger holds as landed and not
//! `gone` (a consumer that sees a row vanish sets `gone`, which makes the id no candidate); either way the
//! target row is the archived copy, so `purged` is the truth for it. A candidate absent from both sides is
//! left alone and reported (`vanished`): the ledger says it landed and it did not, which purge cannot fix.
//! So after a rerun the `purged` bits are exactly the rows purge deleted (plus rows the application deleted
//! itself, archived by the same rule).
//!
//! Refused with exit 2 and the reason: a target table that is the source table (same server, database and
//! table), and a job whose follower is running (`bitmig:{JOB}:follow` written within [`FOLLOW_ALIVE`] and
//! not stopped since: it would copy the deletions into the history table as deletes).
//!
//! Between batches purge stops while the job is paused (`control`) and waits for the throttle (§11):
//! `--rate` (else `[throttle] max_rows_per_s`, the job's shared budget), the source's and target's running
//! threads, the replicas' lag; what it waits for is logged and written to `control.throttled`. SIGTERM or
//! SIGINT stops it between batches (the batch in flight commits or rolls back whole).
//!
//! `--dry-run` runs every step but rolls each transaction back: it deletes nothing, sets no bit, re-drives
//! nothing, and reports what it would have deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use bitmig_shared::cli::BadInput;
use bitmig_shared::digest::{proven_equal, RowPlan};
use bitmig_shared::ids::{and_not, group_last, ids_of, to_ranges, IdRange};
use bitmig_shared::job::{Engine, JobSpec, TableName, TargetSpec};
use bitmig_shared::ledger::{GroupStatus, Ledger};
use bitmig_shared::progress::Progress;
use bitmig_shared::queue::Cause;
use bitmig_shared::sink::{self, Sink};
use bitmig_shared::source::{self, LockedRows, PurgeTwin, PurgeTx, Source};
use bitmig_shared::throttle::Throttle;
use bitmig_shared::value::RowSet;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::republish::Republisher;

/// A follower whose state in `bitmig:{JOB}:follow` is younger than this is taken as running. It writes
/// its state every second while it runs.
pub const FOLLOW_ALIVE: Duration = Duration::from_secs(30);

/// At most this many ids are listed in a summary (differing, would-delete ranges).
const LIST_CAP: usize = 1_000;

/// Transient source errors (deadlock, lock wait timeout, connection lost) retry a batch this many times.
const BATCH_ATTEMPTS: u32 = 5;

/// What `purge` needs besides the job.
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    pub amqp_url: String,
    pub redis_url: String,
    /// Delete at most this many rows per second (overrides `[throttle] max_rows_per_s`).
    pub rate: Option<u64>,
    /// Candidates per transaction.
    pub batch: usize,
    /// Delete nothing, set no bit, re-drive nothing: say what would be deleted.
    pub dry_run: bool,
    /// Allow deleting the row holding the table's largest key.
    pub purge_max_key: bool,
}

/// What a purge did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PurgeSummary {
    pub job: String,
    pub dry_run: bool,
    /// Groups not `complete`: not purged yet.
    pub groups_not_complete: u64,
    /// Groups that had candidates.
    pub groups_purged: u64,
    pub candidates: u64,
    pub batches: u64,
    /// Rows deleted from the source (with `--dry-run`: that would be).
    pub deleted: u64,
    /// Candidates whose source row was already gone and whose target row exists: `purged` set (a rerun
    /// after a crash between a commit and its bits).
    pub repaired: u64,
    /// Candidates whose target row differs (or is missing, or duplicated): kept, re-driven.
    pub differing: u64,
    /// Candidates whose source row no longer matches `filter`: kept, re-driven.
    pub outside_filter: u64,
    /// Candidates absent from both the source and the target: left alone.
    pub vanished: u64,
    /// Candidates recorded in `failed`: left alone.
    pub failed_skipped: u64,
    /// The largest key, kept (without `--purge-max-key`).
    pub kept_max_key: Option<u64>,
    pub republished_ids: u64,
    pub messages: u64,
    /// Stopped by SIGTERM/SIGINT before the end.
    pub interrupted: bool,
    /// The differing and out-of-filter ids (at most 1 000), ascending per group.
    pub differing_ids: Vec<u64>,
    /// With `--dry-run`: the ranges that would be deleted (at most 1 000 ranges).
    pub would_delete: Vec<IdRange>,
}

impl PurgeSummary {
    /// Whether every candidate was deleted (or nothing was left to delete).
    pub fn clean(&self) -> bool {
        self.differing == 0 && self.outside_filter == 0 && self.vanished == 0 && !self.interrupted
    }
}

impl std::fmt::Display for PurgeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "job {}: {}{} rows of {} candidates in {} batches ({} groups; {} groups not complete yet)",
            self.job,
            if self.dry_run {
                "dry run, would delete "
            } else {
                "deleted "
            },
            self.deleted,
            self.candidates,
            self.batches,
            self.groups_purged,
            self.groups_not_complete,
        )?;
        if self.repaired > 0 {
            writeln!(
                f,
                "  {} ids already deleted from the source: purged bits set",
                self.repaired
            )?;
        }
        if let Some(k) = self.kept_max_key {
            writeln!(
                f,
                "  kept id {k}, the table's largest key (--purge-max-key to delete it)"
            )?;
        }
        if self.differing + self.outside_filter > 0 {
            writeln!(
                f,
                "  kept {} differing and {} no longer matching filter; re-published {} ids{}",
                self.differing,
                self.outside_filter,
                self.republished_ids,
                if self.dry_run {
                    " (not in a dry run)"
                } else {
                    ""
                }
            )?;
            let ids: Vec<String> = self
                .differing_ids
                .iter()
                .take(20)
                .map(u64::to_string)
                .collect();
            writeln!(f, "  ids: {}", ids.join(", "))?;
        }
        if self.vanished > 0 {
            writeln!(
                f,
                "  {} ids are in neither the source nor the target although the ledger says they landed",
                self.vanished
            )?;
        }
        if self.failed_skipped > 0 {
            writeln!(f, "  {} failed ids left alone", self.failed_skipped)?;
        }
        if self.dry_run && !self.would_delete.is_empty() {
            let shown: Vec<String> = self
                .would_delete
                .iter()
                .take(50)
                .map(|r| {
                    if r[0] == r[1] {
                        r[0].to_string()
                    } else {
                        format!("{}..{}", r[0], r[1])
                    }
                })
                .collect();
            writeln!(f, "  would delete ids {}", shown.join(", "))?;
        }
        if self.interrupted {
            writeln!(f, "  interrupted: run it again to go on")?;
        }
        Ok(())
    }
}

/// Where a SQL table lives, for the same-table refusal: engine, host, port, database, schema, table.
#[derive(Debug, PartialEq, Eq)]
struct TablePlace {
    engine: Engine,
    host: String,
    port: u16,
    database: String,
    schema: String,
    table: String,
}

fn place(url: &bitmig_shared::job::DbUrl, table: &TableName) -> Option<TablePlace> {
    let u = url::Url::parse(url.expose()).ok()?;
    let host = bitmig_shared::sql::server_host(u.host_str()?);
    let database = u.path().trim_start_matches('/').to_owned();
    let (port, schema) = match url.engine {
        Engine::Mysql => (
            u.port().unwrap_or(3306),
            // MySQL: `db.table` names the database
            table
                .schema
                .as_ref()
                .map_or(database.clone(), |s| s.to_string()),
        ),
        Engine::Postgres => (
            u.port().unwrap_or(5432),
            table
                .schema
                .as_ref()
                .map_or("public".to_owned(), |s| s.to_string()),
        ),
    };
    Some(TablePlace {
        engine: url.engine,
        host,
        port,
        database: if url.engine == Engine::Mysql {
            schema.clone()
        } else {
            database
        },
        schema,
        table: table.table.to_string(),
    })
}

/// The refusal for a job whose target is the source table itself: `Some(reason)`. `tables` are the
/// target's table names the job may write (the route's plain name or ranges, and `bitmig:{JOB}:tables`).
fn same_table_refusal(job: &JobSpec, tables: &[String]) -> Option<String> {
    let TargetSpec::Sql(t) = &job.target else {
        return None;
    };
    let src = place(&job.source.url, &job.source.table)?;
    let mut names: Vec<String> = tables.to_vec();
    if let Some(p) = t.table.plain() {
        names.push(p.to_owned());
    }
    if let bitmig_shared::job::TableRoute::Ranges(m) = &t.table {
        names.extend(m.ranges.iter().map(|r| r.table.to_string()));
    }
    names.into_iter().find_map(|n| {
        let name = TableName::parse(&n).ok()?;
        (place(&t.url, &name)? == src).then(|| {
            format!(
                "job `{}`: the target table `{n}` is the source table `{}` on the same server and \
                 database; purging would delete the only copy",
                job.name, job.source.table
            )
        })
    })
}

fn parse_time(s: Option<&String>) -> Option<chrono::DateTime<chrono::Utc>> {
    s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The refusal for a job whose follower runs: its state (`bitmig:{JOB}:follow`) was written less than
/// [`FOLLOW_ALIVE`] before `now` and it has not written `stopped_at` since.
fn follow_refusal(
    job: &str,
    state: &std::collections::HashMap<String, String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let latest = ["heartbeat_at", "checkpoint_at", "started_at"]
        .iter()
        .filter_map(|k| parse_time(state.get(*k)))
        .max()?;
    if parse_time(state.get("stopped_at")).is_some_and(|s| s >= latest) {
        return None;
    }
    let age = (now - latest).to_std().unwrap_or_default();
    (age < FOLLOW_ALIVE).then(|| {
        format!(
            "job `{job}` is being followed (bitmig:{{{job}}}:follow was written {:.0}s ago): a follower \
             would copy the purge's deletions into the target as deletes; stop `bitmig-producer --follow` \
             first (purge runs {}s after its last write)",
            age.as_secs_f64(),
            FOLLOW_ALIVE.as_secs()
        )
    })
}

/// How one batch's candidates were judged.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdict {
    /// Proven equal: delete.
    delete: Vec<u64>,
    /// Source row already gone, target row present: set `purged`.
    repaired: Vec<u64>,
    /// Target row missing, different or duplicated: re-drive.
    differing: Vec<u64>,
    /// Source row no longer matches `filter`: re-drive.
    outside_filter: Vec<u64>,
    /// In neither side.
    vanished: Vec<u64>,
    /// The largest key, kept.
    kept_max: Option<u64>,
}

/// The comparison of §9 for purge: the source's column names, and the columns compared as JSON.
struct Judge {
    json_columns: Vec<String>,
}

impl Judge {
    /// Judge the `candidates` (ascending) given their locked source rows, the target rows of their span
    /// (one set per table) and the table's largest key to keep (`None`: keep none).
    fn judge(
        &self,
        candidates: &[u64],
        locked: &LockedRows,
        target: &[(String, RowSet)],
        keep: Option<u64>,
    ) -> anyhow::Result<Verdict> {
        let mut v = Verdict::default();
        let src = &locked.rows;
        let in_target: BTreeSet<u64> = target
            .iter()
            .flat_map(|(_, rs)| rs.rows.iter().map(|r| r.key))
            .collect();
        let mut compare = Vec::new();
        for &id in candidates {
            match src.rows.binary_search_by_key(&id, |r| r.key) {
                Err(_) if in_target.contains(&id) => v.repaired.push(id),
                Err(_) => v.vanished.push(id),
                Ok(_) if locked.outside_filter.contains(&id) => v.outside_filter.push(id),
                Ok(_) if keep == Some(id) => v.kept_max = Some(id),
                Ok(i) => compare.push(i),
            }
        }
        if compare.is_empty() {
            return Ok(v);
        }
        let names: Vec<&str> = src.columns.iter().map(|c| c.name.as_str()).collect();
        let mut sides: Vec<&[bitmig_shared::value::Column]> = vec![&src.columns];
        sides.extend(target.iter().map(|(_, rs)| &rs.columns[..]));
        let mut plan = RowPlan::new(&names, &sides).map_err(|e| {
            BadInput(format!(
                "cannot compare the source rows with the target's: {e}"
            ))
        })?;
        let json_typed = src
            .columns
            .iter()
            .filter(|c| c.ty == bitmig_shared::value::ColumnType::Json)
            .map(|c| &c.name);
        for c in self.json_columns.iter().chain(json_typed) {
            plan.compare_as_json(c);
        }
        let mut s_enc = plan.encoder(&src.columns)?;
        let s_hashes: Vec<(u64, u128)> = compare
            .iter()
            .map(|&i| {
                let r = &src.rows[i];
                (r.key, s_enc.hash(r.key, &r.values))
            })
            .collect();
        let wanted: HashSet<u64> = s_hashes.iter().map(|(k, _)| *k).collect();
        let mut t_hashes: Vec<(u64, u128)> = Vec::new();
        for (_, rs) in target {
            let mut enc = plan.encoder(&rs.columns)?;
            t_hashes.extend(
                rs.rows
                    .iter()
                    .filter(|r| wanted.contains(&r.key))
                    .map(|r| (r.key, enc.hash(r.key, &r.values))),
            );
        }
        t_hashes.sort_unstable();
        v.delete = proven_equal(&s_hashes, &t_hashes)?;
        v.differing = s_hashes
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| v.delete.binary_search(k).is_err())
            .collect();
        Ok(v)
    }
}

/// A batch whose candidates form more ranges than this is locked as its whole span, when the span is at
/// most [`SPAN_PER_CANDIDATE`] keys per candidate: a statement of thousands of `OR`ed ranges (a table
/// with gaps in its keys) costs the server more than reading the few rows in the span that are not
/// candidates (judged by key, they are neither compared nor deleted).
const LOCK_RANGES_MAX: usize = 64;
/// The widest span locked whole, in keys per candidate: scattered candidates in a big group keep their
/// ranges rather than lock and read a group's worth of other rows.
const SPAN_PER_CANDIDATE: u64 = 4;

/// The ranges a batch locks: its candidates' ranges, or its span when they are many and dense enough.
fn lock_ranges(ids: &[u64]) -> Vec<IdRange> {
    let ranges = to_ranges(ids);
    let (lo, hi) = (ids[0], ids[ids.len() - 1]);
    let span = hi - lo + 1;
    if ranges.len() <= LOCK_RANGES_MAX || span > SPAN_PER_CANDIDATE * ids.len() as u64 {
        ranges
    } else {
        vec![[lo, hi]]
    }
}

/// The ranges to `DELETE` for the `proven` keys (ascending): within each locked range, every run of
/// locked rows (ascending by key) that are all proven becomes one range from its first key to its last.
/// No other row lies in such a range: the lock read every row of the locked range, and the transaction
/// keeps new ones out until it ends (REPEATABLE READ, [`bitmig_shared::source::PurgeTx::delete`]). A
/// table with gaps in its keys thus deletes a batch with one `BETWEEN` rather than thousands.
fn delete_runs(
    locked_ranges: &[IdRange],
    locked: &[bitmig_shared::value::Row],
    proven: &[u64],
) -> Vec<IdRange> {
    let mut runs: Vec<IdRange> = Vec::new();
    for r in locked_ranges {
        let mut open: Option<IdRange> = None;
        let from = locked.partition_point(|row| row.key < r[0]);
        for row in locked[from..].iter().take_while(|row| row.key <= r[1]) {
            if proven.binary_search(&row.key).is_ok() {
                match &mut open {
                    Some(run) => run[1] = row.key,
                    None => open = Some([row.key, row.key]),
                }
            } else if let Some(run) = open.take() {
                runs.push(run);
            }
        }
        runs.extend(open);
    }
    runs
}

/// What one committed (or, dry, rolled back) batch did.
struct BatchDone {
    verdict: Verdict,
    deleted: u64,
}

/// The parts a purge runs with.
struct Purger<'a> {
    job: &'a JobSpec,
    opts: &'a PurgeOptions,
    ledger: Ledger,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    judge: Judge,
    /// The target as the source's server sees it, while the server compares and deletes batches itself.
    twin: Option<PurgeTwin>,
    twin_on: std::sync::atomic::AtomicBool,
}

impl Purger<'_> {
    /// Open a batch's source transaction, with the table's largest key to keep (`None` with
    /// `--purge-max-key`).
    async fn begin(&self) -> anyhow::Result<(Box<dyn PurgeTx>, Option<u64>)> {
        let mut tx = self
            .source
            .begin_purge()
            .await
            .map_err(bitmig_shared::cli::source_error)?;
        let keep = if self.opts.purge_max_key {
            None
        } else {
            tx.max_key().await.context("reading the largest key")?
        };
        Ok((tx, keep))
    }

    /// The batch deleted by the server itself, compared with the twin in the same statement (module
    /// documentation, "On one server"): `Some` when every candidate was deleted and committed, `None`
    /// when nothing was kept and the batch is to be judged row by row.
    async fn batch_within(&self, ids: &[u64]) -> anyhow::Result<Option<BatchDone>> {
        use std::sync::atomic::Ordering;
        let Some(twin) = self
            .twin
            .as_ref()
            .filter(|_| self.twin_on.load(Ordering::Relaxed))
        else {
            return Ok(None);
        };
        let (lo, hi) = (ids[0], ids[ids.len() - 1]);
        let t0 = Instant::now();
        let (mut tx, keep) = self.begin().await?;
        if keep.is_some_and(|k| ids.binary_search(&k).is_ok()) {
            tx.rollback().await.context("rolling back")?;
            return Ok(None);
        }
        match tx.delete_equal(&to_ranges(ids), twin).await {
            Ok(deleted) if deleted == ids.len() as u64 => {
                tx.commit()
                    .await
                    .with_context(|| format!("committing the delete of {lo}..={hi}"))?;
                debug!(
                    lo,
                    hi,
                    deleted,
                    ms = t0.elapsed().as_millis() as u64,
                    "purge batch compared and deleted within the server"
                );
                let verdict = Verdict {
                    delete: ids.to_vec(),
                    ..Default::default()
                };
                return Ok(Some(BatchDone { verdict, deleted }));
            }
            Ok(deleted) => {
                debug!(
                    lo,
                    hi,
                    deleted,
                    candidates = ids.len(),
                    "not every row equals its copy: rolled back, judging the batch row by row"
                );
            }
            Err(e) if e.is_transient() => {
                return Err(e).with_context(|| format!("deleting the proven rows of {lo}..={hi}"));
            }
            Err(e) => {
                if self.twin_on.swap(false, Ordering::Relaxed) {
                    info!(job = %self.job.name, reason = %e, "the server does not compare the rows with the target itself: each batch is read and compared by purge");
                }
            }
        }
        tx.rollback().await.context("rolling back")?;
        Ok(None)
    }

    /// One batch: [`Purger::batch_within`], else one transaction that locks, reads the target, judges,
    /// deletes and commits. Nothing is recorded here.
    async fn batch(&self, ids: &[u64]) -> anyhow::Result<BatchDone> {
        if let Some(done) = self.batch_within(ids).await? {
            return Ok(done);
        }
        let (lo, hi) = (ids[0], ids[ids.len() - 1]);
        let ranges = lock_ranges(ids);
        let t0 = Instant::now();
        let (mut tx, keep) = self.begin().await?;
        let locked = tx
            .lock_rows(&ranges)
            .await
            .with_context(|| format!("locking the source rows of {lo}..={hi}"))?;
        let t_lock = t0.elapsed();
        let target = self
            .sink
            .read_range(self.job.source.key.as_str(), lo, hi)
            .await
            .with_context(|| format!("reading the target rows of {lo}..={hi}"))?;
        let t_target = t0.elapsed();
        let verdict = self.judge.judge(ids, &locked, &target, keep)?;
        let t_judge = t0.elapsed();
        drop(target);
        if self.opts.dry_run {
            tx.rollback().await.context("rolling back a dry run")?;
            return Ok(BatchDone {
                deleted: verdict.delete.len() as u64,
                verdict,
            });
        }
        let mut deleted = 0;
        if !verdict.delete.is_empty() {
            let runs = delete_runs(&ranges, &locked.rows.rows, &verdict.delete);
            deleted = tx
                .delete(&runs)
                .await
                .with_context(|| format!("deleting the proven rows of {lo}..={hi}"))?;
            if deleted != verdict.delete.len() as u64 {
                // the rows are locked: this cannot happen unless something is very wrong — delete nothing
                let _ = tx.rollback().await;
                anyhow::bail!(
                    "deleting {} proven rows of {lo}..={hi} deleted {deleted}: rolled back",
                    verdict.delete.len()
                );
            }
        }
        let t_delete = t0.elapsed();
        tx.commit()
            .await
            .with_context(|| format!("committing the delete of {lo}..={hi}"))?;
        let ms = |d: Duration| d.as_millis() as u64;
        debug!(
            lo,
            hi,
            deleted,
            lock_ms = ms(t_lock),
            target_ms = ms(t_target - t_lock),
            judge_ms = ms(t_judge - t_target),
            delete_ms = ms(t_delete - t_judge),
            commit_ms = ms(t0.elapsed() - t_delete),
            "purge batch"
        );
        Ok(BatchDone { verdict, deleted })
    }

    /// [`Purger::batch`], again while its error is transient (deadlock, lock wait timeout, lost
    /// connection): the failed transaction rolled back, so retrying deletes nothing twice.
    async fn batch_with_retries(&self, ids: &[u64]) -> anyhow::Result<BatchDone> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.batch(ids).await {
                Ok(done) => return Ok(done),
                Err(e) if attempt < BATCH_ATTEMPTS && is_transient(&e) => {
                    warn!(job = %self.job.name, error = %format!("{e:#}"), attempt, "purge batch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Set the `purged` bits after a commit: the rows are deleted, so the bits must follow. Redis errors
    /// are retried (a rerun would repair them, but not leaving the work to it is cheaper).
    async fn record_purged(&self, first: u64, ids: &[u64]) -> anyhow::Result<()> {
        let mut wait = Duration::from_millis(200);
        for _ in 0..10 {
            match self.ledger.add_purged(first, ids).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!(job = %self.job.name, group = first, error = %e, "cannot set purged bits; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.ledger.add_purged(first, ids).await.with_context(|| {
            format!(
                "setting the purged bits of {} deleted ids of group {first} (a rerun of purge repairs them)",
                ids.len()
            )
        })
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<bitmig_shared::source::SourceError>()
            .is_some_and(|s| s.is_transient())
            || c.downcast_ref::<bitmig_shared::sink::SinkError>()
                .is_some_and(|s| s.is_transient())
    })
}

/// The candidates of each `complete` group: `tgt ∧ ¬gone ∧ ¬purged`, minus `failed`. Also counts the
/// groups not complete and the failed ids left out.
pub(crate) struct Candidates {
    pub groups: Vec<(u64, Vec<u64>)>,
    pub groups_not_complete: u64,
    pub failed_skipped: u64,
}

pub(crate) async fn candidates(job: &JobSpec, ledger: &Ledger) -> anyhow::Result<Candidates> {
    let firsts = ledger.groups().await?;
    let metas = ledger.metas(&firsts).await?;
    let complete: Vec<u64> = firsts
        .iter()
        .zip(&metas)
        .filter(|(_, m)| {
            m.get("status").and_then(|s| GroupStatus::parse(s)) == Some(GroupStatus::Complete)
        })
        .map(|(f, _)| *f)
        .collect();
    let failed: HashSet<u64> = ledger.failed_ids().await?.into_iter().collect();
    let bits = ledger
        .bitmaps(&complete, &["tgt", "gone", "purged"])
        .await?;
    let mut out = Candidates {
        groups: Vec::new(),
        groups_not_complete: (firsts.len() - complete.len()) as u64,
        failed_skipped: 0,
    };
    for (first, b) in complete.into_iter().zip(bits) {
        let last = group_last(first, job.group_size);
        let mut ids: Vec<u64> = ids_of(first, &and_not(&b[0], &[&b[1], &b[2]]))
            .into_iter()
            .filter(|id| *id <= last)
            .collect();
        let before = ids.len();
        ids.retain(|id| !failed.contains(id));
        out.failed_skipped += (before - ids.len()) as u64;
        if !ids.is_empty() {
            out.groups.push((first, ids));
        }
    }
    Ok(out)
}

/// Batches of a purge in flight at once, each in its own source transaction: some read and judge while
/// another's `DELETE` runs. Measured on the 2-core benchmark machine (1 M rows, batches of 10 000): two
/// at once 8.1–10.6 s, three 7.5–8.7 s.
const PURGE_WORKERS: usize = 3;

/// The order to run `n` batches (ascending in key order) with `strands` in flight: round-robin over
/// `strands` equal runs, so the batches in flight together are far apart in the key space. Adjacent
/// batches would wait on each other: a range locked `FOR UPDATE` also locks the next key after it
/// (InnoDB's next-key lock), which is the first row of the next batch.
fn interleave(n: usize, strands: usize) -> impl Iterator<Item = usize> {
    let strands = strands.clamp(1, n.max(1));
    let bounds: Vec<usize> = (0..=strands).map(|s| s * n / strands).collect();
    let longest = (0..strands)
        .map(|s| bounds[s + 1] - bounds[s])
        .max()
        .unwrap_or(0);
    (0..longest).flat_map(move |round| {
        let bounds = bounds.clone();
        (0..strands).filter_map(move |s| {
            let i = bounds[s] + round;
            (i < bounds[s + 1]).then_some(i)
        })
    })
}

/// Re-publish a group's kept ids as `redrive` batches.
async fn republish(
    job: &JobSpec,
    republisher: &mut Republisher<'_>,
    first: u64,
    mut ids: Vec<u64>,
    summary: &mut PurgeSummary,
) -> anyhow::Result<()> {
    ids.sort_unstable();
    summary.messages += republisher.group(first, &ids, Cause::Redrive).await?;
    info!(job = %job.name, group = first, cause = "redrive", ids = ids.len(), "kept and re-published rows that differ");
    summary.republished_ids += ids.len() as u64;
    Ok(())
}

/// Purge the job: see the module documentation. Refusals are [`BadInput`] (exit 2).
pub async fn purge(
    job: &JobSpec,
    opts: &PurgeOptions,
    cancel: CancellationToken,
) -> anyhow::Result<PurgeSummary> {
    let ledger = Ledger::connect(&opts.redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    bitmig_shared::cli::check_spec(&ledger, job, false, crate::SPEC_FIELDS_IGNORED).await?;
    if let Some(why) = same_table_refusal(job, &ledger.tables().await?) {
        return Err(BadInput(why).into());
    }
    if let Some(why) = follow_refusal(&job.name, &ledger.follow_state().await?, chrono::Utc::now())
    {
        return Err(BadInput(why).into());
    }
    let source = source::open(job, PURGE_WORKERS).map_err(bitmig_shared::cli::source_error)?;
    let log: std::sync::Arc<dyn sink::TableLog> = std::sync::Arc::new(ledger.clone());
    let sink =
        sink::open_logged(job, 2 * PURGE_WORKERS, log).map_err(|e| BadInput(e.to_string()))?;
    let json_columns = source
        .json_text_columns()
        .await
        .map_err(bitmig_shared::cli::source_error)?;
    // A dry run rolls every batch back: the row-by-row judgement says what it would delete and why not.
    let twin = if opts.dry_run {
        None
    } else {
        match source.purge_twin(job).await {
            Ok(t) => {
                info!(job = %job.name, target = %t.table, "the source's server compares each batch with the target and deletes it itself");
                Some(t)
            }
            Err(why) => {
                debug!(job = %job.name, why = %why, "each batch's rows are read and compared by purge");
                None
            }
        }
    };

    let mut spec = job.throttle.clone();
    if opts.rate.is_some() {
        spec.max_rows_per_s = opts.rate;
    }
    let mut loads = vec![("source", &job.source.url)];
    if let TargetSpec::Sql(t) = &job.target {
        loads.push(("target", &t.url));
    }
    let throttle = Throttle::new(ledger.connection(), &job.name, &spec, &loads)
        .map_err(|e| BadInput(format!("`throttle`: {e}")))?;
    let pause = bitmig_shared::control::Control::new(ledger.connection(), &job.name)
        .watch(bitmig_shared::control::WATCH_EVERY)
        .await
        .context("reading the job's control hash")?;

    let found = candidates(job, &ledger).await?;
    let mut summary = PurgeSummary {
        job: job.name.clone(),
        dry_run: opts.dry_run,
        groups_not_complete: found.groups_not_complete,
        failed_skipped: found.failed_skipped,
        candidates: found.groups.iter().map(|(_, ids)| ids.len() as u64).sum(),
        ..Default::default()
    };
    info!(job = %job.name, candidates = summary.candidates, groups = found.groups.len(), dry_run = opts.dry_run, "purging");
    let purger = Purger {
        job,
        opts,
        ledger,
        source,
        sink,
        judge: Judge { json_columns },
        twin,
        twin_on: std::sync::atomic::AtomicBool::new(true),
    };
    let batch = opts.batch.max(1);
    let work: Vec<(u64, &[u64])> = found
        .groups
        .iter()
        .flat_map(|(first, ids)| ids.chunks(batch).map(move |c| (*first, c)))
        .collect();
    let mut chunks_left: HashMap<u64, usize> = HashMap::new();
    for (first, _) in &work {
        *chunks_left.entry(*first).or_default() += 1;
    }
    let mut progress = Progress::new("purging", 0, summary.candidates);
    let mut republisher = Republisher::new(&opts.amqp_url, job);
    let mut redrive: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut begun: HashSet<u64> = HashSet::new();
    let started = Instant::now();
    // After an error no batch starts; those in flight commit or roll back whole before it is returned.
    let stop = cancel.child_token();
    let mut failure: Option<anyhow::Error> = None;
    let mut done_candidates = 0u64;

    let purger = &purger;
    let (pause, throttle, stop_ref) = (&pause, &throttle, &stop);
    let mut results = futures::stream::iter(interleave(work.len(), PURGE_WORKERS).map(|i| work[i]))
        .map(|(first, chunk)| async move {
            if pause.is_paused() && !stop_ref.is_cancelled() {
                info!(job = %job.name, "paused: waiting for `resume` before the next batch");
                tokio::select! {
                    _ = pause.wait_running() => info!(job = %job.name, "resumed"),
                    _ = stop_ref.cancelled() => {}
                }
            }
            if stop_ref.is_cancelled() {
                return Ok(None);
            }
            throttle
                .wait_for_budget(chunk.len() as u64)
                .await
                .context("waiting for the throttle's budget")?;
            let done = purger.batch_with_retries(chunk).await?;
            if !opts.dry_run {
                let v = &done.verdict;
                let mut bits: Vec<u64> = v.delete.iter().chain(&v.repaired).copied().collect();
                bits.sort_unstable();
                purger.record_purged(first, &bits).await?;
            }
            anyhow::Ok(Some((first, chunk, done)))
        })
        .buffered(PURGE_WORKERS);

    while let Some(r) = results.next().await {
        let (first, chunk, done) = match r {
            Ok(Some(d)) => d,
            Ok(None) => {
                summary.interrupted |= failure.is_none();
                continue;
            }
            Err(e) => {
                stop.cancel();
                failure.get_or_insert(e);
                continue;
            }
        };
        if begun.insert(first) {
            summary.groups_purged += 1;
        }
        let v = &done.verdict;
        summary.batches += 1;
        summary.deleted += done.deleted;
        summary.repaired += v.repaired.len() as u64;
        summary.differing += v.differing.len() as u64;
        summary.outside_filter += v.outside_filter.len() as u64;
        summary.vanished += v.vanished.len() as u64;
        if v.kept_max.is_some() {
            summary.kept_max_key = v.kept_max;
        }
        if !v.vanished.is_empty() {
            warn!(job = %job.name, group = first, ids = ?v.vanished, "ids the ledger says landed are in neither the source nor the target");
        }
        let mut kept: Vec<u64> = v
            .differing
            .iter()
            .chain(&v.outside_filter)
            .copied()
            .collect();
        kept.sort_unstable();
        if !kept.is_empty() {
            // The LIST_CAP smallest, whatever order the interleaved batches finish in.
            summary.differing_ids.extend(&kept);
            if summary.differing_ids.len() > 2 * LIST_CAP {
                summary.differing_ids.sort_unstable();
                summary.differing_ids.truncate(LIST_CAP);
            }
            redrive.entry(first).or_default().extend(&kept);
        }
        if opts.dry_run {
            summary.would_delete.extend(to_ranges(&v.delete));
        }
        done_candidates += chunk.len() as u64;
        progress.ids += done.deleted;
        progress.update(done_candidates);
        let left = chunks_left.entry(first).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            progress.groups += 1;
            if let Some(ids) = redrive.remove(&first) {
                if !opts.dry_run {
                    if let Err(e) = republish(job, &mut republisher, first, ids, &mut summary).await
                    {
                        stop.cancel();
                        failure.get_or_insert(e);
                    }
                }
            }
        }
    }
    drop(results);
    // A group left part-way (interrupted) re-drives what its finished batches kept.
    if failure.is_none() && !opts.dry_run {
        let mut rest: Vec<(u64, Vec<u64>)> = redrive.into_iter().collect();
        rest.sort_unstable_by_key(|(first, _)| *first);
        for (first, ids) in rest {
            if let Err(e) = republish(job, &mut republisher, first, ids, &mut summary).await {
                failure = Some(e);
                break;
            }
        }
    }
    // Interleaved batches finish out of key order: the lists are put back in order, then capped.
    summary.differing_ids.sort_unstable();
    summary.differing_ids.truncate(LIST_CAP);
    if opts.dry_run {
        summary.would_delete.sort_unstable();
        let mut merged: Vec<IdRange> = Vec::new();
        for r in summary.would_delete.drain(..) {
            match merged.last_mut() {
                Some(prev) if prev[1] + 1 == r[0] => prev[1] = r[1],
                _ => merged.push(r),
            }
        }
        merged.truncate(LIST_CAP);
        summary.would_delete = merged;
    }
    progress.finish();
    throttle.release().await;
    republisher.close().await;
    if let Some(e) = failure {
        return Err(e);
    }
    info!(
        job = %job.name,
        deleted = summary.deleted,
        differing = summary.differing + summary.outside_filter,
        secs = started.elapsed().as_secs_f64(),
        "purge done"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitmig_shared::value::{Column, ColumnType, Row, Value};
    use std::collections::HashMap;

    fn cols() -> std::sync::Arc<[Column]> {
        vec![
            Column {
                name: "id".into(),
                ty: ColumnType::Int { unsigned: false },
                type_name: String::new(),
            },
            Column {
                name: "v".into(),
                ty: ColumnType::Text,
                type_name: String::new(),
            },
        ]
        .into()
    }

    fn rows(kv: &[(u64, &str)]) -> RowSet {
        RowSet {
            columns: cols(),
            key_index: 0,
            rows: kv
                .iter()
                .map(|(k, v)| Row {
                    key: *k,
                    values: vec![Value::Int(*k as i64), Value::Bytes(v.as_bytes().to_vec())],
                })
                .collect(),
        }
    }

    fn keyed(keys: &[u64]) -> Vec<Row> {
        keys.iter()
            .map(|&key| Row {
                key,
                values: vec![Value::Int(key as i64)],
            })
            .collect()
    }

    #[test]
    fn a_run_of_proven_locked_rows_is_deleted_as_one_range_and_nothing_else_is_in_it() {
        // locked span 1..=20 holds rows 2 3 5 8 9 10 14; 9 differs, 14 is the kept max key
        let locked = keyed(&[2, 3, 5, 8, 9, 10, 14]);
        let runs = delete_runs(&[[1, 20]], &locked, &[2, 3, 5, 8, 10]);
        assert_eq!(runs, vec![[2, 8], [10, 10]]);
        // two locked ranges: a run never bridges the unlocked gap between them (6 and 7 were not read)
        let locked = keyed(&[4, 5, 8, 9]);
        assert_eq!(
            delete_runs(&[[4, 5], [8, 9]], &locked, &[4, 5, 8, 9]),
            vec![[4, 5], [8, 9]]
        );
        assert!(delete_runs(&[[1, 9]], &locked, &[]).is_empty());
    }

    #[test]
    fn a_batch_of_many_ranges_locks_its_span_and_batches_in_flight_are_far_apart() {
        assert_eq!(lock_ranges(&[1, 2, 3, 7]), vec![[1, 3], [7, 7]]);
        let gaps: Vec<u64> = (0..1000).map(|i| i * 2).collect();
        assert_eq!(lock_ranges(&gaps), vec![[0, 1998]]);
        // scattered over a span 10 times their number: their own ranges
        let scattered: Vec<u64> = (0..1000).map(|i| i * 10).collect();
        assert_eq!(lock_ranges(&scattered).len(), 1000);
        assert_eq!(interleave(5, 2).collect::<Vec<_>>(), vec![0, 2, 1, 3, 4]);
        assert_eq!(interleave(6, 3).collect::<Vec<_>>(), vec![0, 2, 4, 1, 3, 5]);
        assert_eq!(interleave(1, 2).collect::<Vec<_>>(), vec![0]);
        assert_eq!(interleave(0, 2).count(), 0);
        let mut all: Vec<usize> = interleave(145, 2).collect();
        all.sort_unstable();
        assert_eq!(all, (0..145).collect::<Vec<_>>());
    }

    #[test]
    fn only_proven_rows_are_deleted_and_the_rest_is_sorted_out() {
        let judge = Judge {
            json_columns: vec![],
        };
        let locked = LockedRows {
            rows: rows(&[
                (1, "a"),
                (2, "b"),
                (3, "c"),
                (5, "e"),
                (6, "f"),
                (8, "h"),
                (9, "i"),
            ]),
            outside_filter: [6].into_iter().collect(),
        };
        let target = vec![
            (
                "t_0".to_owned(),
                rows(&[(1, "a"), (2, "B"), (4, "d"), (8, "h")]),
            ),
            ("t_1".to_owned(), rows(&[(5, "e"), (8, "h"), (9, "i")])),
        ];
        // 1 equal; 2 differs; 3 missing in the target; 4 gone from the source (purged before a crash);
        // 5 equal in another table; 6 outside the filter; 7 nowhere; 8 twice in the target; 9 the max key
        let v = judge
            .judge(&[1, 2, 3, 4, 5, 6, 7, 8, 9], &locked, &target, Some(9))
            .unwrap();
        assert_eq!(v.delete, [1, 5]);
        assert_eq!(v.differing, [2, 3, 8]);
        assert_eq!(v.repaired, [4]);
        assert_eq!(v.outside_filter, [6]);
        assert_eq!(v.vanished, [7]);
        assert_eq!(v.kept_max, Some(9));
        let all = judge.judge(&[9], &locked, &target, None).unwrap();
        assert_eq!(all.delete, [9], "--purge-max-key");
        let none = judge.judge(&[], &locked, &target, None).unwrap();
        assert_eq!(none, Verdict::default());
    }

    fn job(src_url: &str, src_table: &str, tgt_url: &str, tgt_table: &str) -> JobSpec {
        JobSpec::parse_str(
            &format!(
                "name = \"p\"\n[source]\nurl = \"{src_url}\"\ntable = \"{src_table}\"\nkey = \"id\"\n\
                 [target]\nkind = \"sql\"\nurl = \"{tgt_url}\"\ntable = \"{tgt_table}\"\n"
            ),
            std::path::Path::new("job.toml"),
            &|_| None,
        )
        .unwrap()
    }

    #[test]
    fn a_target_that_is_the_source_table_is_refused() {
        let m = "mysql://root@127.0.0.1:3306/shop";
        let same = job(m, "orders", "mysql://u:p@localhost/shop", "orders");
        assert!(same_table_refusal(&same, &[])
            .unwrap()
            .contains("is the source table"));
        let qualified = job(
            m,
            "orders",
            "mysql://root@127.0.0.1:3306/other",
            "shop.orders",
        );
        assert!(same_table_refusal(&qualified, &[]).is_some());
        assert!(same_table_refusal(&job(m, "orders", m, "orders_history"), &[]).is_none());
        assert!(same_table_refusal(
            &job(m, "orders", "mysql://root@127.0.0.1:3307/shop", "orders"),
            &[]
        )
        .is_none());
        assert!(same_table_refusal(
            &job(m, "orders", "mysql://root@127.0.0.1/archive", "orders"),
            &[]
        )
        .is_none());
        let routed = job(m, "orders", m, "orders_h");
        assert!(
            same_table_refusal(&routed, &["orders".to_owned()]).is_some(),
            "a table written before"
        );
        let pg = "postgres://postgres@127.0.0.1/shop";
        assert!(same_table_refusal(&job(pg, "orders", pg, "public.orders"), &[]).is_some());
        assert!(same_table_refusal(&job(pg, "orders", pg, "archive.orders"), &[]).is_none());
    }

    #[test]
    fn a_follower_written_lately_and_not_stopped_refuses_the_purge() {
        let now = chrono::Utc::now();
        let at = |secs: i64| {
            (now - chrono::Duration::seconds(secs))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let state = |pairs: &[(&str, String)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        assert!(
            follow_refusal("j", &HashMap::new(), now).is_none(),
            "never followed"
        );
        let running = state(&[("started_at", at(600)), ("heartbeat_at", at(1))]);
        assert!(follow_refusal("j", &running, now)
            .unwrap()
            .contains("being followed"));
        let quiet_old = state(&[("started_at", at(600)), ("checkpoint_at", at(3))]);
        assert!(
            follow_refusal("j", &quiet_old, now).is_some(),
            "a follower without heartbeat_at"
        );
        let dead = state(&[("started_at", at(600)), ("heartbeat_at", at(120))]);
        assert!(
            follow_refusal("j", &dead, now).is_none(),
            "silent for 2 min"
        );
        let stopped = state(&[("heartbeat_at", at(2)), ("stopped_at", at(2))]);
        assert!(
            follow_refusal("j", &stopped, now).is_none(),
            "stopped cleanly"
        );
        let restarted = state(&[("heartbeat_at", at(1)), ("stopped_at", at(50))]);
        assert!(
            follow_refusal("j", &restarted, now).is_some(),
            "started again"
        );
    }
}
