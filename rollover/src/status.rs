//! `status`: every task with its state and progress (`created + updated + deleted` of `total`), and the
//! exit code a scheduler can act on: 0 when all are done, 3 while some are pending or running, 1 when one
//! failed.

use std::fmt;

use bitmig_shared::cli::exit;
use serde::Serialize;

use crate::table::{Task, TaskTable};

#[derive(Debug, Serialize)]
pub struct Status {
    pub table: String,
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    /// Pending deletes whose month's reindex failed: they never start (an operator re-plans or fixes it).
    pub blocked: u64,
    pub tasks: Vec<TaskStatus>,
}

#[derive(Debug, Serialize)]
pub struct TaskStatus {
    #[serde(flatten)]
    pub task: Task,
    /// `created + updated + deleted`.
    pub progress: i64,
}

impl Status {
    /// Whether nothing is left that a runner could move: nothing running, and every pending task blocked.
    pub fn settled(&self) -> bool {
        self.running == 0 && self.pending == self.blocked
    }

    /// 1 when a task failed, else 3 while any is pending or running, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.failed > 0 {
            exit::FAILED
        } else if self.pending + self.running > 0 {
            exit::INCOMPLETE
        } else {
            exit::OK
        }
    }
}

pub async fn status(table: &TaskTable) -> anyhow::Result<Status> {
    let tasks = table.all().await?;
    let count = |s: &str| tasks.iter().filter(|t| t.status == s).count() as u64;
    let failed: std::collections::HashSet<&str> = tasks
        .iter()
        .filter(|t| t.status == "failed")
        .map(|t| t.id.as_str())
        .collect();
    let blocked = tasks
        .iter()
        .filter(|t| {
            t.status == "pending" && t.requires.as_deref().is_some_and(|r| failed.contains(r))
        })
        .count() as u64;
    Ok(Status {
        table: table.name().to_owned(),
        pending: count("pending"),
        running: count("running"),
        done: count("done"),
        failed: count("failed"),
        blocked,
        tasks: tasks
            .into_iter()
            .map(|task| TaskStatus {
                progress: task.created.unwrap_or(0)
                    + task.updated.unwrap_or(0)
                    + task.deleted.unwrap_or(0),
                task,
            })
            .collect(),
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tasks {
            let task = &t.task;
            let total = task
                .total
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into());
            write!(
                f,
                "{:<50} {:<8} {:<8} {}/{}",
                task.id, task.kind, task.status, t.progress, total
            )?;
            if !task.task_id.is_empty() {
                write!(f, " task {}", task.task_id)?;
            }
            if let (Some(s), Some(d)) = (task.source_count, task.dest_count) {
                write!(f, " counted {s}/{d}")?;
            }
            if task.status == "pending" && task.requires.is_some() && self.blocked > 0 {
                if let Some(r) = self
                    .tasks
                    .iter()
                    .find(|o| Some(&o.task.id) == task.requires.as_ref())
                {
                    if r.task.status == "failed" {
                        write!(f, " — blocked: {} failed", r.task.id)?;
                    }
                }
            }
            if let Some(e) = &task.error {
                write!(f, " — {e}")?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "table {}: {} pending ({} blocked by a failed reindex), {} running, {} done, {} failed",
            self.table, self.pending, self.blocked, self.running, self.done, self.failed
        )
    }
}
