//! SQL table sink for MySQL / MariaDB: one multi-row `INSERT … ON DUPLICATE KEY UPDATE` per batch over
//! the binary protocol, split only where the 65 535-placeholder limit demands it, in one transaction.
//! A row the server refuses for its values is isolated by bisection; the rest of the batch still lands.

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;

use super::{OpenError, Sink, SinkError, WriteOutcome};
use crate::job::{Engine, SqlTarget, TableName, WriteMode};
use crate::sql::{
    mysql_error_text, mysql_is_row_error, mysql_is_transient, mysql_pool, quote_table,
};
use crate::value::{Column, Row, RowSet, Value};

/// MySQL's limit of placeholders in one prepared statement.
const MAX_PLACEHOLDERS: usize = 65_535;

pub struct MySqlSink {
    pool: mysql_async::Pool,
    table: TableName,
    write: WriteMode,
}

impl MySqlSink {
    pub fn new(t: &SqlTarget, max_connections: usize) -> Result<Self, OpenError> {
        let Some(name) = t.table.plain() else {
            return Err(OpenError(format!(
                "routed target tables (`{}`) are not supported by this build yet",
                t.table.template
            )));
        };
        let table = TableName::parse(name).map_err(OpenError)?;
        Ok(Self {
            pool: mysql_pool(&t.url, max_connections).map_err(OpenError)?,
            table,
            write: t.write,
        })
    }

    fn insert_sql(&self, columns: &[Column], key: &str, rows: usize) -> String {
        let cols: Vec<String> = columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "``")))
            .collect();
        let one = format!("({})", vec!["?"; columns.len()].join(","));
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ",
            quote_table(Engine::Mysql, &self.table),
            cols.join(",")
        );
        sql.push_str(&vec![one.as_str(); rows].join(","));
        let key_q = format!("`{}`", key.replace('`', "``"));
        let updates: Vec<String> = match self.write {
            WriteMode::Upsert => cols
                .iter()
                .filter(|c| **c != key_q)
                .map(|c| format!("{c}=VALUES({c})"))
                .collect(),
            WriteMode::InsertIgnore => Vec::new(),
        };
        // Without updates, a no-op update keeps duplicates harmless while strict mode still refuses bad values
        // (INSERT IGNORE would silently truncate them).
        let updates = if updates.is_empty() {
            format!("{key_q}={key_q}")
        } else {
            updates.join(",")
        };
        sql.push_str(" ON DUPLICATE KEY UPDATE ");
        sql.push_str(&updates);
        sql
    }

    /// Write `rows` in one transaction. Errors are returned as the server gave them.
    async fn write_all(&self, rs: &RowSet, rows: &[&Row]) -> Result<(), mysql_async::Error> {
        let ncols = rs.columns.len();
        let per_stmt = (MAX_PLACEHOLDERS / ncols.max(1)).max(1);
        let key = &rs.columns[rs.key_index].name;
        let mut conn = self.pool.get_conn().await?;
        let chunks: Vec<&[&Row]> = rows.chunks(per_stmt).collect();
        if chunks.len() == 1 {
            let sql = self.insert_sql(&rs.columns, key, rows.len());
            return conn.exec_drop(sql, params(rows)).await;
        }
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        for chunk in chunks {
            let sql = self.insert_sql(&rs.columns, key, chunk.len());
            tx.exec_drop(sql, params(chunk)).await?;
        }
        tx.commit().await
    }
}

fn params(rows: &[&Row]) -> Vec<mysql_async::Value> {
    rows.iter()
        .flat_map(|r| r.values.iter().map(to_mysql))
        .collect()
}

fn to_mysql(v: &Value) -> mysql_async::Value {
    use mysql_async::Value as M;
    match v {
        Value::Null => M::NULL,
        Value::Int(i) => M::Int(*i),
        Value::UInt(u) => M::UInt(*u),
        Value::Float(f) => M::Float(*f),
        Value::Double(d) => M::Double(*d),
        Value::Bytes(b) => M::Bytes(b.clone()),
        Value::Date(y, mo, d, h, mi, s, us) => M::Date(*y, *mo, *d, *h, *mi, *s, *us),
        Value::Time(neg, d, h, mi, s, us) => M::Time(*neg, *d, *h, *mi, *s, *us),
    }
}

#[async_trait]
impl Sink for MySqlSink {
    async fn prepare(&self, columns: &[Column]) -> Result<(), SinkError> {
        let list = columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "``")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {list} FROM {} WHERE 1 = 0",
            quote_table(Engine::Mysql, &self.table)
        );
        let mut conn = self.pool.get_conn().await.map_err(|e| {
            if mysql_is_transient(&e) {
                SinkError::Transient(mysql_error_text(&e))
            } else {
                SinkError::Batch(mysql_error_text(&e))
            }
        })?;
        conn.prep(sql).await.map_err(|e| {
            SinkError::Batch(format!(
                "target table {}: {}",
                self.table,
                mysql_error_text(&e)
            ))
        })?;
        Ok(())
    }

    async fn write(&self, rs: &RowSet) -> Result<WriteOutcome, SinkError> {
        let mut outcome = WriteOutcome::default();
        // Pieces still to write; a piece the server refuses for a row's values is split in two.
        let mut pending: Vec<Vec<&Row>> = vec![rs.rows.iter().collect()];
        while let Some(piece) = pending.pop() {
            if piece.is_empty() {
                continue;
            }
            match self.write_all(rs, &piece).await {
                Ok(()) => outcome.written.extend(piece.iter().map(|r| r.key)),
                Err(e) if mysql_is_transient(&e) => {
                    return Err(SinkError::Transient(mysql_error_text(&e)))
                }
                Err(e) if mysql_is_row_error(&e) => {
                    if piece.len() == 1 {
                        outcome.failed.push((piece[0].key, mysql_error_text(&e)));
                    } else {
                        let mut left = piece;
                        let right = left.split_off(left.len() / 2);
                        pending.push(right);
                        pending.push(left);
                    }
                }
                Err(e) => {
                    return Err(SinkError::Batch(format!(
                        "table {}: {}",
                        self.table,
                        mysql_error_text(&e)
                    )))
                }
            }
        }
        outcome.written.sort_unstable();
        Ok(outcome)
    }
}
