//! `run`: one pass polls every started task through `GET _tasks/{id}` and records what it finds, then, under
//! the table's named lock, starts pending tasks (`wait_for_completion=false`) until `max_running` of each
//! kind run. Nothing is taken on trust:
//!
//! - a reindex is `done` only when the task completed without `error` or `failures`, its counts add up
//!   (`created + updated + noops = total`, no version conflicts), its destination was refreshed, and `_count`
//!   of the month's query gives the same number on the hot index and the monthly one; otherwise `failed`
//!   with the reason, and its month's delete never starts;
//! - a delete starts only after its month's reindex is `done`, and only if the month still counts the same
//!   on both indices right before it starts (else it is `failed`: documents arrived after the copy);
//! - a task the cluster forgot (`_tasks` answers 404) goes back to `pending` and starts again (a reindex
//!   with the same ids is idempotent, so is a delete);
//! - 429, 5xx and no answer while polling leave the task running for the next pass.

use std::time::Duration;

use bitmig_shared::es::{error_text, EsClient, EsError};
use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value as J;

use crate::config::Config;
use crate::table::{Counts, Kind, Task, TaskTable};

/// What one pass did.
#[derive(Debug, Default, Serialize)]
pub struct PassSummary {
    pub started: u64,
    pub done: u64,
    pub failed: u64,
    pub forgotten: u64,
    /// Polls that got no usable answer (the task stays running).
    pub poll_errors: u64,
}

pub struct Runner<'a> {
    pub cfg: &'a Config,
    pub es: &'a EsClient,
    pub table: &'a TaskTable,
    /// Who claims rows: `host:pid`.
    pub name: String,
}

fn counts_of(j: &J) -> Counts {
    Counts {
        total: j["total"].as_i64(),
        created: j["created"].as_i64(),
        updated: j["updated"].as_i64(),
        deleted: j["deleted"].as_i64(),
    }
}

enum Verdict {
    Running(Counts),
    Done(Counts, Option<i64>, Option<i64>),
    Failed(Counts, Option<i64>, Option<i64>, String),
    Forgotten(String),
    /// No usable answer now; try at the next pass.
    Later(String),
}

impl Runner<'_> {
    /// One pass: poll, then start.
    pub async fn pass(&self) -> anyhow::Result<PassSummary> {
        let mut s = PassSummary::default();
        for kind in [Kind::Reindex, Kind::Delete] {
            let tasks = self.table.running(kind).await?;
            let polled: Vec<PassSummary> = stream::iter(tasks)
                .map(|task| async move {
                    let mut one = PassSummary::default();
                    self.poll(&task, kind, &mut one).await.map(|()| one)
                })
                .buffer_unordered(POLL_CONCURRENCY)
                .try_collect()
                .await?;
            for one in polled {
                s.done += one.done;
                s.failed += one.failed;
                s.forgotten += one.forgotten;
                s.poll_errors += one.poll_errors;
            }
        }
        self.start(&mut s).await?;
        Ok(s)
    }

    async fn poll(&self, task: &Task, kind: Kind, s: &mut PassSummary) -> anyhow::Result<()> {
        let verdict = self.judge(task, kind).await;
        match verdict {
            Verdict::Running(c) => {
                self.table
                    .progress(&task.id, &task.task_id, c, None)
                    .await?
            }
            Verdict::Later(why) => {
                s.poll_errors += 1;
                tracing::warn!(id = %task.id, task = %task.task_id, error = %why, "no usable answer about the task; asking again next pass");
                let note = format!("polling: {why}");
                self.table
                    .progress(&task.id, &task.task_id, Counts::default(), Some(&note))
                    .await?;
            }
            Verdict::Forgotten(why) => {
                if self.table.forgotten(&task.id, &task.task_id, &why).await? {
                    s.forgotten += 1;
                    tracing::warn!(id = %task.id, task = %task.task_id, "the cluster forgot the task; it starts again");
                }
            }
            Verdict::Done(c, src, dst) => {
                if self
                    .table
                    .finish(&task.id, &task.task_id, true, c, src, dst, None)
                    .await?
                {
                    s.done += 1;
                    tracing::info!(id = %task.id, source_count = ?src, dest_count = ?dst, "done");
                }
            }
            Verdict::Failed(c, src, dst, why) => {
                if self
                    .table
                    .finish(&task.id, &task.task_id, false, c, src, dst, Some(&why))
                    .await?
                {
                    s.failed += 1;
                    tracing::error!(id = %task.id, reason = %why, "failed");
                }
            }
        }
        Ok(())
    }

    async fn judge(&self, task: &Task, kind: Kind) -> Verdict {
        let answer = match self
            .es
            .json(Method::GET, &format!("/_tasks/{}", task.task_id), None)
            .await
        {
            Ok(a) => a,
            Err(EsError::Permanent {
                status: 404,
                message,
            }) => {
                return Verdict::Forgotten(format!(
                    "the cluster forgot task {} ({message}); started again",
                    task.task_id
                ))
            }
            Err(e) => return Verdict::Later(e.to_string()),
        };
        let status = &answer["task"]["status"];
        if answer["completed"].as_bool() != Some(true) {
            return Verdict::Running(counts_of(status));
        }
        let response = &answer["response"];
        let c = if response.is_object() {
            counts_of(response)
        } else {
            counts_of(status)
        };
        let fail = |why: String| Verdict::Failed(c, None, None, why);
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            return fail(format!(
                "the task ended with an error: {}",
                error_text(error)
            ));
        }
        if !response.is_object() {
            return fail("the completed task has no response".into());
        }
        if let Some(failures) = response["failures"].as_array().filter(|f| !f.is_empty()) {
            let first = failures[0]
                .get("cause")
                .map(error_text)
                .unwrap_or_else(|| failures[0].to_string());
            return fail(format!("{} failures, the first: {first}", failures.len()));
        }
        if let Some(why) = response["canceled"].as_str() {
            return fail(format!("canceled: {why}"));
        }
        let n = |k: &str| response[k].as_i64().unwrap_or(0);
        if n("version_conflicts") != 0 {
            return fail(format!("{} version conflicts", n("version_conflicts")));
        }
        let total = response["total"].as_i64();
        let accounted = match kind {
            Kind::Reindex => n("created") + n("updated") + n("noops"),
            Kind::Delete => n("deleted"),
        };
        if total != Some(accounted) {
            return fail(format!(
                "the counts do not add up: total {}, but {accounted} {}",
                total
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "missing".into()),
                match kind {
                    Kind::Reindex => "created + updated + noops",
                    Kind::Delete => "deleted",
                }
            ));
        }
        let (index_to_refresh, query) = match kind {
            Kind::Reindex => (&task.dest_index, self.body(task, &["source", "query"])),
            Kind::Delete => (&task.source_index, self.body(task, &["query"])),
        };
        if let Err(e) = self.refresh(index_to_refresh).await {
            return Verdict::Later(format!("refreshing {index_to_refresh}: {e}"));
        }
        if kind == Kind::Delete {
            return Verdict::Done(c, None, None);
        }
        let Some(query) = query else {
            return fail("the stored request body has no source.query".into());
        };
        let src = match self.count(&task.source_index, &query).await {
            Ok(n) => n,
            Err(e) => return Verdict::Later(format!("counting {}: {e}", task.source_index)),
        };
        let dst = match self.count(&task.dest_index, &query).await {
            Ok(n) => n,
            Err(e) => return Verdict::Later(format!("counting {}: {e}", task.dest_index)),
        };
        if src == dst {
            Verdict::Done(c, Some(src), Some(dst))
        } else {
            Verdict::Failed(
                c,
                Some(src),
                Some(dst),
                format!(
                    "count mismatch for {}: {} holds {src} documents of the month, {} holds {dst}",
                    task.month, task.source_index, task.dest_index
                ),
            )
        }
    }

    fn body(&self, task: &Task, path: &[&str]) -> Option<J> {
        let mut j: J = serde_json::from_str(&task.body).ok()?;
        for key in path {
            j = j.get_mut(*key)?.take();
        }
        Some(j)
    }

    /// `_refresh`; a missing index has nothing to refresh (a reindex that copied nothing creates no index).
    async fn refresh(&self, index: &str) -> Result<(), EsError> {
        match self
            .es
            .json(Method::POST, &format!("/{index}/_refresh"), None)
            .await
        {
            Ok(_) | Err(EsError::Permanent { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `_count` of the month's query; a missing index holds no documents.
    async fn count(&self, index: &str, query: &J) -> Result<i64, EsError> {
        let answer = match self
            .es
            .json(
                Method::POST,
                &format!("/{index}/_count"),
                Some(&serde_json::json!({ "query": query })),
            )
            .await
        {
            Err(EsError::Permanent { status: 404, .. }) => return Ok(0),
            other => other?,
        };
        answer["count"]
            .as_i64()
            .ok_or_else(|| EsError::Transient(format!("_count answered without a count: {answer}")))
    }

    /// Right before a delete starts, the month is counted again on both indices: documents that reached the
    /// hot index after its copy was proven would be deleted without a copy. `Some(reason)` when the counts
    /// differ. (What arrives between this count and the delete's own snapshot is not covered.)
    async fn still_proven(&self, task: &Task) -> Result<Option<String>, EsError> {
        let Some(query) = self.body(task, &["query"]) else {
            return Ok(Some("the stored request body has no query".into()));
        };
        self.refresh(&task.source_index).await?;
        let hot = self.count(&task.source_index, &query).await?;
        let cold = self.count(&task.dest_index, &query).await?;
        Ok((hot != cold).then(|| {
            format!(
                "{} now holds {hot} documents of {} but {} holds {cold}: documents arrived or changed after the \
                 copy was proven; nothing deleted (set {} back to pending to copy again, then this task)",
                task.source_index,
                task.month,
                task.dest_index,
                task.requires.as_deref().unwrap_or("its reindex")
            )
        }))
    }

    async fn start(&self, s: &mut PassSummary) -> anyhow::Result<()> {
        let Some(mut lock) = self.table.lock(LOCK_WAIT.as_secs() as u32).await? else {
            tracing::info!("another runner is starting tasks; none started in this pass");
            return Ok(());
        };
        let orphans = lock.reset_orphans().await?;
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "tasks claimed by a runner that stopped before starting them go back to pending"
            );
        }
        let params = format!(
            "wait_for_completion=false&requests_per_second={}&slices={}",
            self.cfg.requests_per_second, self.cfg.slices
        );
        'kinds: for kind in [Kind::Reindex, Kind::Delete] {
            let running = lock.count_running(kind).await?;
            let free = u64::from(self.cfg.max_running).saturating_sub(running);
            if free == 0 {
                continue;
            }
            for task in lock.startable(kind, free).await? {
                if !lock.claim(&task.id, &self.name).await? {
                    continue;
                }
                if kind == Kind::Delete {
                    match self.still_proven(&task).await {
                        Ok(None) => {}
                        Ok(Some(why)) => {
                            tracing::error!(id = %task.id, reason = %why, "not deleting");
                            lock.refused(&task.id, &self.name, &why).await?;
                            s.failed += 1;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(id = %task.id, error = %e, "could not recount the month; trying again next pass");
                            lock.unclaim(&task.id, &self.name, &format!("recounting: {e}"))
                                .await?;
                            break 'kinds;
                        }
                    }
                }
                let body: J = serde_json::from_str(&task.body).unwrap_or(J::Null);
                let path = match kind {
                    Kind::Reindex => format!("/_reindex?{params}"),
                    Kind::Delete => format!("/{}/_delete_by_query?{params}", task.source_index),
                };
                match self.es.json(Method::POST, &path, Some(&body)).await {
                    Ok(answer) => match answer["task"].as_str() {
                        Some(task_id) => {
                            lock.started(&task.id, &self.name, task_id).await?;
                            s.started += 1;
                            tracing::info!(id = %task.id, task = task_id, "started");
                        }
                        None => {
                            let why = format!(
                                "the cluster answered the start without a task id: {answer}"
                            );
                            lock.refused(&task.id, &self.name, &why).await?;
                            s.failed += 1;
                        }
                    },
                    Err(e) if e.is_transient() => {
                        tracing::warn!(id = %task.id, error = %e, "could not start the task; trying again next pass");
                        lock.unclaim(&task.id, &self.name, &format!("starting: {e}"))
                            .await?;
                        break 'kinds;
                    }
                    Err(e) => {
                        tracing::error!(id = %task.id, error = %e, "the cluster refused the task");
                        lock.refused(&task.id, &self.name, &format!("starting: {e}"))
                            .await?;
                        s.failed += 1;
                    }
                }
            }
        }
        lock.release().await;
        Ok(())
    }
}

/// How many started tasks a pass polls at once.
pub const POLL_CONCURRENCY: usize = 16;

/// How long a pass waits for the lock before it leaves starting to the runner that holds it.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
