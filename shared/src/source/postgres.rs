//! PostgreSQL source over the binary protocol: values decoded by [`crate::pg`], exactly as stored.
//!
//! The key may be smallint, integer or bigint; it is compared with `bigint` parameters (`key >= $1::int8`),
//! which PostgreSQL's integer operator family serves from the key's index whatever its width.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tokio_postgres::types::Type;

use super::purge::{LockedRows, PurgeSql, PurgeTx};
use super::{row_set, RowsQuery, Source, SourceError};
use crate::ids::IdRange;
use crate::job::{Engine, JobSpec};
use crate::pg::{column_type, decode, pg_error_text, pg_is_transient, pg_pool, RawPg};
use crate::value::{Column, RowSet};

pub struct PgSource {
    pool: deadpool_postgres::Pool,
    sql: super::SourceSql,
    /// `filter` as the job wrote it, for the purge's verdict column.
    raw_filter: Option<String>,
    described: OnceCell<Described>,
}

struct Described {
    columns: Arc<[Column]>,
    types: Vec<Type>,
    select_list: String,
    key_index: usize,
}

/// A key as a `bigint` parameter; keys above `i64::MAX` cannot exist in PostgreSQL.
fn key_param(k: u64) -> i64 {
    i64::try_from(k).unwrap_or(i64::MAX)
}

fn source_err(table: &str, e: &tokio_postgres::Error) -> SourceError {
    let message = pg_error_text(e);
    // undefined table, column, schema or database, or a filter that does not parse: the job does not fit
    if e.code().is_some_and(|c| {
        matches!(
            c.code(),
            "42P01" | "42703" | "3F000" | "3D000" | "42601" | "42883"
        )
    }) {
        return SourceError::Schema {
            table: table.to_owned(),
            message,
        };
    }
    SourceError::Query {
        table: table.to_owned(),
        message,
        transient: pg_is_transient(e),
    }
}

/// A purge transaction on a pooled connection taken out of the pool ([`super::PurgeTx`]): `BEGIN` …
/// `COMMIT` by hand, and a connection dropped uncommitted is closed (the server rolls back), never
/// returned to the pool mid-transaction.
struct PgPurgeTx {
    client: Option<deadpool_postgres::Object>,
    sql: super::SourceSql,
    raw_filter: Option<String>,
    columns: Arc<[Column]>,
    types: Vec<Type>,
    select_list: String,
    key_index: usize,
}

impl PgPurgeTx {
    fn client(&self) -> &deadpool_postgres::Object {
        // Invariant: `client` is only taken by `finish`, which consumes the transaction.
        self.client
            .as_ref()
            .expect("purge transaction used after it ended")
    }

    fn err(&self, e: &tokio_postgres::Error) -> SourceError {
        source_err(&self.sql.table_label, e)
    }

    async fn finish(mut self: Box<Self>, how: &str) -> Result<(), SourceError> {
        let client = self.client.take();
        if let Some(c) = &client {
            c.batch_execute(how).await.map_err(|e| self.err(&e))?;
        }
        Ok(())
    }
}

impl Drop for PgPurgeTx {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // still inside the transaction: close the connection rather than pool it
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

fn params_of(v: &[i64]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    v.iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

#[async_trait]
impl PurgeTx for PgPurgeTx {
    async fn lock_rows(&mut self, ranges: &[IdRange]) -> Result<LockedRows, SourceError> {
        let q = PurgeSql::lock(
            &self.sql,
            self.raw_filter.as_deref(),
            &self.select_list,
            ranges,
            |n| format!("${n}::int8"),
        );
        let bounds: Vec<i64> = PurgeSql::bounds(ranges)
            .into_iter()
            .map(key_param)
            .collect();
        let raw = self
            .client()
            .query(q.lock.as_str(), &params_of(&bounds))
            .await
            .map_err(|e| self.err(&e))?;
        let mut outside_filter = std::collections::BTreeSet::new();
        let mut rows = Vec::with_capacity(raw.len());
        for r in &raw {
            let mut values = Vec::with_capacity(self.types.len());
            for (i, ty) in self.types.iter().enumerate() {
                let RawPg(bytes) = r.try_get::<_, RawPg<'_>>(i).map_err(|e| self.err(&e))?;
                values.push(decode(ty, bytes).map_err(|message| SourceError::Query {
                    table: self.sql.table_label.clone(),
                    message: format!("column `{}`: {message}", self.columns[i].name),
                    transient: false,
                })?);
            }
            let Some(key) = values[self.key_index].as_key() else {
                continue;
            };
            if q.has_filter {
                let matches: Option<bool> =
                    r.try_get(self.types.len()).map_err(|e| self.err(&e))?;
                if matches != Some(true) {
                    outside_filter.insert(key);
                }
            }
            rows.push(crate::value::Row { key, values });
        }
        Ok(LockedRows {
            rows: row_set(self.columns.clone(), self.key_index, rows),
            outside_filter,
        })
    }

    async fn max_key(&mut self) -> Result<Option<u64>, SourceError> {
        let row = self
            .client()
            .query_one(PurgeSql::max_key(&self.sql, "::int8").as_str(), &[])
            .await
            .map_err(|e| self.err(&e))?;
        let max: Option<i64> = row.get(0);
        Ok(max.and_then(|m| u64::try_from(m).ok()))
    }

    async fn delete(&mut self, ranges: &[IdRange]) -> Result<u64, SourceError> {
        let mut deleted = 0;
        for (sql, bounds) in PurgeSql::deletes(&self.sql, ranges, |n| format!("${n}::int8"))? {
            let params: Vec<i64> = bounds.into_iter().map(key_param).collect();
            deleted += self
                .client()
                .execute(sql.as_str(), &params_of(&params))
                .await
                .map_err(|e| self.err(&e))?;
        }
        Ok(deleted)
    }

    async fn commit(self: Box<Self>) -> Result<(), SourceError> {
        self.finish("COMMIT").await
    }

    async fn rollback(self: Box<Self>) -> Result<(), SourceError> {
        self.finish("ROLLBACK").await
    }
}

impl PgSource {
    pub fn new(job: &JobSpec, max_connections: usize) -> Result<Self, SourceError> {
        let s = &job.source;
        let pool = pg_pool(&s.url, max_connections).map_err(|message| SourceError::Schema {
            table: s.table.to_string(),
            message,
        })?;
        Ok(Self {
            pool,
            sql: super::SourceSql::new(job, Engine::Postgres),
            raw_filter: s.filter.clone(),
            described: OnceCell::new(),
        })
    }

    fn err(&self, e: &tokio_postgres::Error) -> SourceError {
        source_err(&self.sql.table_label, e)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SourceError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.err(&e),
            other => SourceError::Query {
                table: self.sql.table_label.clone(),
                message: other.to_string(),
                transient: true,
            },
        })
    }

    async fn described(&self) -> Result<&Described, SourceError> {
        self.described
            .get_or_try_init(|| async {
                let client = self.client().await?;
                let list = match &self.sql.columns {
                    Some(cols) => cols
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => "*".to_owned(),
                };
                let stmt = client
                    .prepare(&format!(
                        "SELECT {list} FROM {} WHERE false",
                        self.sql.from_table
                    ))
                    .await
                    .map_err(|e| self.err(&e))?;
                let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
                let columns: Vec<Column> = stmt
                    .columns()
                    .iter()
                    .map(|c| Column {
                        name: c.name().to_owned(),
                        ty: column_type(c.type_()),
                        type_name: format!("{} (PostgreSQL)", c.type_().name()),
                    })
                    .collect();
                let key_name = self.sql.key.trim_matches('"');
                let key_index = super::key_index(&self.sql.table_label, &columns, key_name)?;
                let select_list = columns
                    .iter()
                    .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok(Described {
                    columns: columns.into(),
                    types,
                    select_list,
                    key_index,
                })
            })
            .await
    }

    async fn keys(&self, sql: &str, params: &[i64]) -> Result<Vec<u64>, SourceError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| self.err(&e))?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = client
            .query(&stmt, &params)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, Option<i64>>(0))
            .filter_map(|k| u64::try_from(k).ok())
            .collect())
    }
}

#[async_trait]
impl Source for PgSource {
    async fn describe(&self) -> Result<Vec<Column>, SourceError> {
        Ok(self.described().await?.columns.to_vec())
    }

    async fn key_bounds(&self) -> Result<Option<(u64, u64)>, SourceError> {
        self.described().await?;
        let client = self.client().await?;
        let sql = format!(
            "SELECT MIN({k})::int8, MAX({k})::int8 FROM {t} WHERE {k} >= 0{f}",
            k = self.sql.key,
            t = self.sql.from_table,
            f = self.sql.filter
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| self.err(&e))?;
        let (lo, hi): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        Ok(match (lo, hi) {
            (Some(lo), Some(hi)) => Some((lo as u64, hi as u64)),
            _ => None,
        })
    }

    async fn next_key(&self, from: u64, to: u64) -> Result<Option<u64>, SourceError> {
        let sql = format!(
            "SELECT {k}::int8 FROM {t} WHERE {k} >= $1::int8 AND {k} <= $2::int8{f} ORDER BY {k} LIMIT 1",
            k = self.sql.key,
            t = self.sql.from_table,
            f = self.sql.filter
        );
        Ok(self
            .keys(&sql, &[key_param(from), key_param(to)])
            .await?
            .first()
            .copied())
    }

    async fn keys_between(&self, first: u64, last: u64) -> Result<Vec<u64>, SourceError> {
        let sql = format!(
            "SELECT {k}::int8 FROM {t} WHERE {k} >= $1::int8 AND {k} <= $2::int8{f} ORDER BY {k}",
            k = self.sql.key,
            t = self.sql.from_table,
            f = self.sql.filter
        );
        self.keys(&sql, &[key_param(first), key_param(last)]).await
    }

    async fn begin_purge(&self) -> Result<Box<dyn PurgeTx>, SourceError> {
        let d = self.described().await?;
        let client = self.client().await?;
        // REPEATABLE READ: the range deletes see only the snapshot the lock read (PurgeTx::delete); a row
        // changed since the snapshot fails the lock with 40001, which is retried.
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| self.err(&e))?;
        Ok(Box::new(PgPurgeTx {
            client: Some(client),
            sql: self.sql.clone(),
            raw_filter: self.raw_filter.clone(),
            columns: d.columns.clone(),
            types: d.types.clone(),
            select_list: d.select_list.clone(),
            key_index: d.key_index,
        }))
    }

    async fn read_rows(&self, ranges: &[IdRange]) -> Result<RowSet, SourceError> {
        let d = self.described().await?;
        let plan = RowsQuery::plan(&self.sql, &d.select_list, ranges, |n| format!("${n}::int8"));
        let mut rows = Vec::new();
        if plan.is_empty() {
            return Ok(row_set(d.columns.clone(), d.key_index, rows));
        }
        let client = self.client().await?;
        for (q, covered) in plan {
            let params: Vec<i64> = q.bounds.iter().map(|&b| key_param(b)).collect();
            // A plan has a handful of statement shapes: each stays prepared on the connection.
            let stmt = client
                .prepare_cached(&q.sql)
                .await
                .map_err(|e| self.err(&e))?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let raw = client.query(&stmt, &refs).await.map_err(|e| self.err(&e))?;
            let decoded = raw.iter().map(|r| {
                d.types
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| {
                        let RawPg(bytes) =
                            r.try_get::<_, RawPg<'_>>(i).map_err(|e| self.err(&e))?;
                        decode(ty, bytes).map_err(|message| SourceError::Query {
                            table: self.sql.table_label.clone(),
                            message: format!("column `{}`: {message}", d.columns[i].name),
                            transient: false,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            });
            rows.extend(q.rows(covered, d.key_index, decoded)?);
        }
        drop(client);
        Ok(row_set(d.columns.clone(), d.key_index, rows))
    }
}
