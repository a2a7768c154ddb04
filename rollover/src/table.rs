//! The task table on MySQL/MariaDB, shaped like the seed's `es_word_task`: one row per task, its id
//! `{index}_{YYYYMM}_{kind}`, created when missing. Every change of state is a conditional `UPDATE` on the
//! row's current state (and, once started, its cluster task id), so two runners never both move one task:
//! the one whose `UPDATE` changed a row owns that change.
//!
//! States: `pending` → `running` (claimed; `task_id` empty until the cluster answered the start) → `done` or
//! `failed`; `running` → `pending` again when the cluster forgot the task or its start could not be sent.

use bitmig_shared::job::Ident;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool, Row};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Reindex,
    Delete,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reindex => "reindex",
            Kind::Delete => "delete",
        }
    }
}

/// One row.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub id: String,
    /// `2021-09`.
    pub month: String,
    pub kind: String,
    pub status: String,
    /// The cluster's task id (`node:number`), empty before the start was answered.
    pub task_id: String,
    pub source_index: String,
    pub dest_index: String,
    /// The request body sent to `_reindex` / `_delete_by_query` (JSON text).
    pub body: String,
    /// For a delete: the id of the reindex that must be `done` first.
    pub requires: Option<String>,
    pub total: Option<i64>,
    pub created: Option<i64>,
    pub updated: Option<i64>,
    pub deleted: Option<i64>,
    pub source_count: Option<i64>,
    pub dest_count: Option<i64>,
    pub error: Option<String>,
    pub attempts: i64,
    pub updated_at: Option<String>,
}

/// A new row for [`TaskTable::insert`].
pub struct NewTask {
    pub id: String,
    pub month: String,
    pub start_time: String,
    pub end_time: String,
    pub kind: Kind,
    pub source_index: String,
    pub dest_index: String,
    pub body: serde_json::Value,
    pub requires: Option<String>,
}

/// Counts written while a task runs and when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub total: Option<i64>,
    pub created: Option<i64>,
    pub updated: Option<i64>,
    pub deleted: Option<i64>,
}

pub struct TaskTable {
    pub pool: Pool,
    table: Ident,
}

const COLUMNS: &str =
    "id, month, kind, status, task_id, source_index, dest_index, body, requires, total, \
    created, updated, deleted, source_count, dest_count, error, attempts, CAST(updated_at AS CHAR)";

fn task_of(mut row: Row) -> Task {
    fn s(row: &mut Row, i: usize) -> String {
        row.take_opt::<Option<String>, _>(i)
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default()
    }
    fn o<T: mysql_async::prelude::FromValue>(row: &mut Row, i: usize) -> Option<T> {
        row.take_opt::<Option<T>, _>(i)
            .and_then(Result::ok)
            .flatten()
    }
    Task {
        id: s(&mut row, 0),
        month: s(&mut row, 1),
        kind: s(&mut row, 2),
        status: s(&mut row, 3),
        task_id: s(&mut row, 4),
        source_index: s(&mut row, 5),
        dest_index: s(&mut row, 6),
        body: s(&mut row, 7),
        requires: o(&mut row, 8),
        total: o(&mut row, 9),
        created: o(&mut row, 10),
        updated: o(&mut row, 11),
        deleted: o(&mut row, 12),
        source_count: o(&mut row, 13),
        dest_count: o(&mut row, 14),
        error: o(&mut row, 15),
        attempts: o(&mut row, 16).unwrap_or_default(),
        updated_at: o(&mut row, 17),
    }
}

impl TaskTable {
    /// Connects (lazily: the first query connects) and creates the table when missing.
    pub async fn open(url: &str, table: &Ident) -> anyhow::Result<Self> {
        let pool = Pool::from_url(url)?;
        let t = Self {
            pool,
            table: table.clone(),
        };
        let mut conn = t.pool.get_conn().await?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS `{}` (
  `id` VARCHAR(200) NOT NULL COMMENT '{{index}}_{{YYYYMM}}_{{kind}}',
  `month` CHAR(7) NOT NULL COMMENT '2021-09',
  `start_time` DATETIME NOT NULL COMMENT 'first instant of the month',
  `end_time` DATETIME NOT NULL COMMENT 'first instant of the next month (exclusive)',
  `kind` ENUM('reindex','delete') NOT NULL,
  `status` ENUM('pending','running','done','failed') NOT NULL DEFAULT 'pending',
  `task_id` VARCHAR(200) NOT NULL DEFAULT '' COMMENT 'the cluster task, node:number',
  `source_index` VARCHAR(255) NOT NULL,
  `dest_index` VARCHAR(255) NOT NULL DEFAULT '',
  `body` LONGTEXT NOT NULL COMMENT 'the _reindex / _delete_by_query request body',
  `requires` VARCHAR(200) NULL COMMENT 'a delete waits for this reindex to be done',
  `total` BIGINT NULL,
  `created` BIGINT NULL,
  `updated` BIGINT NULL,
  `deleted` BIGINT NULL,
  `source_count` BIGINT NULL COMMENT 'the month in the hot index, counted after the copy',
  `dest_count` BIGINT NULL COMMENT 'the month in the monthly index, counted after the copy',
  `error` TEXT NULL,
  `attempts` INT NOT NULL DEFAULT 0,
  `claimed_by` VARCHAR(200) NULL,
  `started_at` DATETIME NULL,
  `finished_at` DATETIME NULL,
  `created_at` TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  `updated_at` TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (`id`),
  KEY `kind_status` (`kind`, `status`)
) DEFAULT CHARSET=utf8mb4",
            t.table
        ))
        .await?;
        Ok(t)
    }

    pub fn name(&self) -> &str {
        self.table.as_str()
    }

    /// Inserts the row unless its id exists; whether it was new.
    pub async fn insert(&self, task: &NewTask) -> anyhow::Result<bool> {
        let mut conn = self.pool.get_conn().await?;
        conn.exec_drop(
            format!(
                "INSERT INTO `{}` (id, month, start_time, end_time, kind, source_index, dest_index, body, requires)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id",
                self.table
            ),
            (
                &task.id,
                &task.month,
                &task.start_time,
                &task.end_time,
                task.kind.as_str(),
                &task.source_index,
                &task.dest_index,
                task.body.to_string(),
                &task.requires,
            ),
        )
        .await?;
        Ok(conn.affected_rows() == 1)
    }

    /// Every row, by month, kind and id.
    pub async fn all(&self) -> anyhow::Result<Vec<Task>> {
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<Row> = conn
            .query(format!(
                "SELECT {COLUMNS} FROM `{}` ORDER BY month, kind, id",
                self.table
            ))
            .await?;
        Ok(rows.into_iter().map(task_of).collect())
    }

    /// The started tasks of `kind` (claimed and answered with a cluster task id).
    pub async fn running(&self, kind: Kind) -> anyhow::Result<Vec<Task>> {
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<Row> = conn
            .exec(
                format!(
                    "SELECT {COLUMNS} FROM `{}` WHERE kind = ? AND status = 'running' AND task_id <> '' ORDER BY id",
                    self.table
                ),
                (kind.as_str(),),
            )
            .await?;
        Ok(rows.into_iter().map(task_of).collect())
    }

    /// Takes the table's named lock (`GET_LOCK`) on a connection of its own: while it is held no other runner
    /// claims or starts tasks, so `max_running` holds across runners. `None` when another runner held it for
    /// `wait_secs`. The lock goes with the connection, also when the process dies.
    pub async fn lock(&self, wait_secs: u32) -> anyhow::Result<Option<Locked<'_>>> {
        let mut conn = self.pool.get_conn().await?;
        let got: Option<Option<i64>> = conn
            .exec_first(
                "SELECT GET_LOCK(LEFT(CONCAT('bitmig_rollover.', DATABASE(), '.', ?), 64), ?)",
                (self.table.as_str(), wait_secs),
            )
            .await?;
        Ok((got.flatten() == Some(1)).then_some(Locked { conn, table: self }))
    }

    async fn exec_count(&self, sql: String, params: mysql_async::Params) -> anyhow::Result<u64> {
        let mut conn = self.pool.get_conn().await?;
        conn.exec_drop(sql, params).await?;
        Ok(conn.affected_rows())
    }

    /// Progress of a running task, or a note of why it could not be read.
    pub async fn progress(
        &self,
        id: &str,
        task_id: &str,
        c: Counts,
        note: Option<&str>,
    ) -> anyhow::Result<()> {
        self.exec_count(
            format!(
                "UPDATE `{}` SET total = COALESCE(?, total), created = COALESCE(?, created), updated = COALESCE(?, updated),
                 deleted = COALESCE(?, deleted), error = ? WHERE id = ? AND status = 'running' AND task_id = ?",
                self.table
            ),
            (c.total, c.created, c.updated, c.deleted, note, id, task_id).into(),
        )
        .await?;
        Ok(())
    }

    /// The task ended: `done` or `failed`, with its counts and reason. Whether this runner made the change.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        id: &str,
        task_id: &str,
        done: bool,
        c: Counts,
        source_count: Option<i64>,
        dest_count: Option<i64>,
        error: Option<&str>,
    ) -> anyhow::Result<bool> {
        let n = self
            .exec_count(
                format!(
                    "UPDATE `{}` SET status = ?, total = COALESCE(?, total), created = COALESCE(?, created),
                     updated = COALESCE(?, updated), deleted = COALESCE(?, deleted), source_count = ?, dest_count = ?,
                     error = ?, finished_at = NOW() WHERE id = ? AND status = 'running' AND task_id = ?",
                    self.table
                ),
                (
                    if done { "done" } else { "failed" },
                    c.total,
                    c.created,
                    c.updated,
                    c.deleted,
                    source_count,
                    dest_count,
                    error,
                    id,
                    task_id,
                )
                    .into(),
            )
            .await?;
        Ok(n == 1)
    }

    /// The cluster no longer knows the task: back to `pending`, to be started again.
    pub async fn forgotten(&self, id: &str, task_id: &str, why: &str) -> anyhow::Result<bool> {
        let n = self
            .exec_count(
                format!(
                    "UPDATE `{}` SET status = 'pending', task_id = '', claimed_by = NULL, error = ?
                     WHERE id = ? AND status = 'running' AND task_id = ?",
                    self.table
                ),
                (why, id, task_id).into(),
            )
            .await?;
        Ok(n == 1)
    }
}

/// The table's named lock, held; [`Locked::release`] gives it back (dropping the connection does too).
pub struct Locked<'a> {
    conn: Conn,
    table: &'a TaskTable,
}

impl Locked<'_> {
    /// Rows left `running` without a cluster task id by a runner that died between its claim and the
    /// cluster's answer: back to `pending`. Only under the lock, which that runner held while it started.
    pub async fn reset_orphans(&mut self) -> anyhow::Result<u64> {
        self.conn
            .query_drop(format!(
                "UPDATE `{}` SET status = 'pending', claimed_by = NULL,
                 error = 'its runner stopped before the cluster answered the start; starting it again'
                 WHERE status = 'running' AND task_id = ''",
                self.table.table
            ))
            .await?;
        Ok(self.conn.affected_rows())
    }

    pub async fn count_running(&mut self, kind: Kind) -> anyhow::Result<u64> {
        let n: Option<u64> = self
            .conn
            .exec_first(
                format!(
                    "SELECT COUNT(*) FROM `{}` WHERE kind = ? AND status = 'running'",
                    self.table.table
                ),
                (kind.as_str(),),
            )
            .await?;
        Ok(n.unwrap_or_default())
    }

    /// Up to `limit` pending tasks of `kind` that may start: a delete only once its reindex is done.
    pub async fn startable(&mut self, kind: Kind, limit: u64) -> anyhow::Result<Vec<Task>> {
        let t = &self.table.table;
        let cols = COLUMNS
            .split(", ")
            .map(|c| {
                if c.starts_with("CAST(") {
                    "CAST(d.updated_at AS CHAR)".to_owned()
                } else {
                    format!("d.{c}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows: Vec<Row> = self
            .conn
            .exec(
                format!(
                    "SELECT {cols} FROM `{t}` d WHERE d.kind = ? AND d.status = 'pending'
                     AND (d.requires IS NULL OR EXISTS (SELECT 1 FROM `{t}` r WHERE r.id = d.requires AND r.status = 'done'))
                     ORDER BY d.month, d.id LIMIT ?"
                ),
                (kind.as_str(), limit),
            )
            .await?;
        Ok(rows.into_iter().map(task_of).collect())
    }

    /// Claims a pending row for `runner`: whether this runner got it.
    pub async fn claim(&mut self, id: &str, runner: &str) -> anyhow::Result<bool> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE `{}` SET status = 'running', task_id = '', claimed_by = ?, started_at = NOW(),
                     attempts = attempts + 1, error = NULL WHERE id = ? AND status = 'pending'",
                    self.table.table
                ),
                (runner, id),
            )
            .await?;
        Ok(self.conn.affected_rows() == 1)
    }

    /// The cluster answered the start with `task_id`.
    pub async fn started(&mut self, id: &str, runner: &str, task_id: &str) -> anyhow::Result<bool> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE `{}` SET task_id = ? WHERE id = ? AND status = 'running' AND task_id = '' AND claimed_by = ?",
                    self.table.table
                ),
                (task_id, id, runner),
            )
            .await?;
        Ok(self.conn.affected_rows() == 1)
    }

    /// The start could not be sent (the cluster is busy or away): back to `pending`, with the reason.
    pub async fn unclaim(&mut self, id: &str, runner: &str, why: &str) -> anyhow::Result<()> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE `{}` SET status = 'pending', claimed_by = NULL, error = ?
                     WHERE id = ? AND status = 'running' AND task_id = '' AND claimed_by = ?",
                    self.table.table
                ),
                (why, id, runner),
            )
            .await?;
        Ok(())
    }

    /// The cluster refused the start for good.
    pub async fn refused(&mut self, id: &str, runner: &str, why: &str) -> anyhow::Result<()> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE `{}` SET status = 'failed', error = ?, finished_at = NOW()
                     WHERE id = ? AND status = 'running' AND task_id = '' AND claimed_by = ?",
                    self.table.table
                ),
                (why, id, runner),
            )
            .await?;
        Ok(())
    }

    pub async fn release(mut self) {
        let _ = self
            .conn
            .exec_drop(
                "DO RELEASE_LOCK(LEFT(CONCAT('bitmig_rollover.', DATABASE(), '.', ?), 64))",
                (self.table.table.as_str(),),
            )
            .await;
    }
}
