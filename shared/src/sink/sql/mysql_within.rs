//! A `produce` batch copied by the server itself when the source table and the target live on one MySQL /
//! MariaDB server: `INSERT INTO target (columns) SELECT columns FROM source WHERE key in the batch's ranges
//! [AND (filter)]` — the rows never leave the server, as in gh-ost's and pt-online-schema-change's row copy.
//! The rows go through no client, so the server spends no time sending them and parsing them back.
//!
//! - Only the batch's ids are copied (a key between two of its ranges is not the job's yet, and must not
//!   land): a dense batch as its span less its gaps, a sparse one by its ranges ([`batch_keys`]); each id
//!   is one row at most (the key is the source's primary key). So the
//!   copy is kept only when it inserted exactly as many rows as the batch has ids, with no warning: every
//!   id landed, as the source holds it at the statement's start, like the read of the usual path.
//! - Anything else is rolled back and the batch goes the usual way (read, then `LOAD DATA` or upsert),
//!   which decides as before: an id gone or filtered out is recorded `gone`, a key already in the target
//!   meets the version guard, a row the target refuses is bisected into `failed`.
//! - `READ COMMITTED`: the source rows are read as a consistent read, not locked, so the application's
//!   writes never wait for the copy. With `binlog_format = STATEMENT` the server refuses that (error
//!   1665), and a target user without `SELECT` on the source is refused too: such a refusal turns the
//!   path off for the process, said once in the log, and every batch is read and written as before.
//! - Only a target with one fixed table (a route needs each row's values) and a source that can be named
//!   from the target's connection (its database in the table name or the source URL).

use std::sync::atomic::{AtomicBool, Ordering};

use mysql_async::prelude::Queryable;
use mysql_async::{IsolationLevel, TxOpts};
use tracing::{debug, info};

use super::mysql::{error, first_warnings};
use crate::ids::{count_in, IdRange};
use crate::job::{Engine, Ident, JobSpec, SqlTarget, TableName};
use crate::sink::create::url_database;
use crate::sink::SinkError;
use crate::source::SourceSql;
use crate::sql::batch_keys;
use crate::sql::{mysql_error_text, mysql_is_row_error, mysql_is_transient, quote_table};
use crate::value::Column;

/// The source as the target's connection names it, and whether the server still copies.
pub(crate) struct Within {
    /// The source table, qualified with its database.
    from: String,
    key: String,
    /// ` AND (filter)`, or empty.
    filter: String,
    on: AtomicBool,
}

impl Within {
    /// The server-side copy of `job`, when its source is a table on the target's server.
    pub fn new(job: &JobSpec, target: &SqlTarget) -> Option<Self> {
        let s = &job.source;
        if !super::mysql::same_mysql_server(&s.url, &target.url) {
            return None;
        }
        let schema = match &s.table.schema {
            Some(db) => db.clone(),
            None => Ident::new(&url_database(s.url.expose())?).ok()?,
        };
        let from = TableName {
            schema: Some(schema),
            table: s.table.table.clone(),
        };
        // The key and filter as the source's own reads write them.
        let SourceSql { key, filter, .. } = SourceSql::new(job, Engine::Mysql);
        Some(Self {
            from: quote_table(Engine::Mysql, &from),
            key,
            filter,
            on: AtomicBool::new(true),
        })
    }

    /// Whether the server has not refused the copy yet.
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The statement copying the rows of `ranges` into `table`, every column of `columns` by name.
    pub fn sql(&self, table: &TableName, columns: &[Column], ranges: &[IdRange]) -> String {
        let list = columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "``")))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = batch_keys(&self.key, ranges);
        format!(
            "INSERT INTO {} ({list}) SELECT {list} FROM {} WHERE ({keys}){}",
            quote_table(Engine::Mysql, table),
            self.from,
            self.filter
        )
    }

    /// Copy the rows of `ranges` into `table` on `conn` in a transaction of its own, kept only when every
    /// id landed without a warning: `true` when kept (and committed), `false` when nothing was kept.
    pub async fn copy(
        &self,
        conn: &mut mysql_async::Conn,
        table: &TableName,
        columns: &[Column],
        ranges: &[IdRange],
    ) -> Result<bool, SinkError> {
        let ids = count_in(ranges);
        if ids == 0 || !self.on() {
            return Ok(false);
        }
        let err = |e: mysql_async::Error| error(&e, Some(table));
        let mut opts = TxOpts::default();
        opts.with_isolation_level(IsolationLevel::ReadCommitted);
        let mut tx = conn.start_transaction(opts).await.map_err(err)?;
        match tx.query_drop(self.sql(table, columns, ranges)).await {
            Ok(()) => {
                let (inserted, warnings) = (tx.affected_rows(), tx.get_warnings());
                if inserted == ids && warnings == 0 {
                    tx.commit().await.map_err(err)?;
                    debug!(table = %table, ids, "batch copied within the server");
                    return Ok(true);
                }
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let first = first_warnings(&mut tx).await;
                    debug!(
                        table = %table,
                        ids,
                        inserted,
                        warnings,
                        first = %first,
                        "server-side copy not clean: rolled back, reading the batch"
                    );
                }
            }
            Err(e) if mysql_is_transient(&e) => return Err(err(e)),
            // A key already in the target, a value the target refuses: this batch goes the usual way,
            // which finds out which row.
            Err(e) if mysql_is_row_error(&e) => {
                debug!(table = %table, error = %mysql_error_text(&e), "server-side copy refused: reading the batch");
            }
            Err(e) => {
                if self.on.swap(false, Ordering::Relaxed) {
                    info!(
                        reason = %mysql_error_text(&e),
                        "the server does not copy the source's rows itself (INSERT … SELECT refused): \
                         produce batches are read and written through the consumer"
                    );
                }
            }
        }
        tx.rollback().await.map_err(err)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::ColumnType;

    fn within(filter: &str) -> Within {
        Within {
            from: "`shop`.`orders`".into(),
            key: "`id`".into(),
            filter: filter.into(),
            on: AtomicBool::new(true),
        }
    }

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            ty: ColumnType::Int { unsigned: true },
            type_name: "bigint".into(),
        }
    }

    #[test]
    fn copies_exactly_the_batch_ids_under_the_filter() {
        let table = TableName::parse("orders_archive").unwrap();
        let sql = within(" AND (created_at < '2024-10-01')").sql(
            &table,
            &[column("id"), column("we`ird")],
            &[[1, 7], [9, 9], [12, 20]],
        );
        assert_eq!(
            sql,
            "INSERT INTO `orders_archive` (`id`, `we``ird`) SELECT `id`, `we``ird` FROM `shop`.`orders` \
             WHERE (`id` BETWEEN 1 AND 20 AND `id` NOT IN (8,10,11)) \
             AND (created_at < '2024-10-01')"
        );
    }
}
