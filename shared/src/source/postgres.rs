//! PostgreSQL source over the binary protocol: values decoded by [`crate::pg`], exactly as stored.
//!
//! The key may be smallint, integer or bigint; it is compared with `bigint` parameters (`key >= $1::int8`),
//! which PostgreSQL's integer operator family serves from the key's index whatever its width.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tokio_postgres::types::Type;

use super::{Source, SourceError};
use crate::ids::{count_in, ranges_contain, IdRange};
use crate::job::{Engine, JobSpec};
use crate::pg::{column_type, decode, pg_error_text, pg_is_transient, pg_pool, RawPg};
use crate::value::{Column, Row, RowSet};

/// As in the MySQL source: a batch whose span is at most this many times its id count is read with one
/// `BETWEEN`.
const DENSE_SPAN_FACTOR: u64 = 4;

pub struct PgSource {
    pool: deadpool_postgres::Pool,
    sql: super::SourceSql,
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
            described: OnceCell::new(),
        })
    }

    fn err(&self, e: &tokio_postgres::Error) -> SourceError {
        let message = pg_error_text(e);
        // undefined table, column, schema or database, or a filter that does not parse: the job does not fit
        if e.code().is_some_and(|c| {
            matches!(
                c.code(),
                "42P01" | "42703" | "3F000" | "3D000" | "42601" | "42883"
            )
        }) {
            return SourceError::Schema {
                table: self.sql.table_label.clone(),
                message,
            };
        }
        SourceError::Query {
            table: self.sql.table_label.clone(),
            message,
            transient: pg_is_transient(e),
        }
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

    async fn read_rows(&self, ranges: &[IdRange]) -> Result<RowSet, SourceError> {
        let d = self.described().await?;
        let (Some(lo), Some(hi)) = (ranges.first().map(|r| r[0]), ranges.last().map(|r| r[1]))
        else {
            return Ok(RowSet {
                columns: d.columns.clone(),
                key_index: d.key_index,
                rows: Vec::new(),
            });
        };
        let count = count_in(ranges);
        let dense = ranges.len() == 1 || hi - lo < count.saturating_mul(DENSE_SPAN_FACTOR);
        let (sql, params): (String, Vec<i64>) = if dense {
            (
                format!(
                    "SELECT {c} FROM {t} WHERE {k} BETWEEN $1::int8 AND $2::int8{f}",
                    c = d.select_list,
                    t = self.sql.from_table,
                    k = self.sql.key,
                    f = self.sql.filter
                ),
                vec![key_param(lo), key_param(hi)],
            )
        } else {
            let preds: Vec<String> = (0..ranges.len())
                .map(|i| {
                    format!(
                        "{k} BETWEEN ${}::int8 AND ${}::int8",
                        2 * i + 1,
                        2 * i + 2,
                        k = self.sql.key
                    )
                })
                .collect();
            (
                format!(
                    "SELECT {c} FROM {t} WHERE ({}){f}",
                    preds.join(" OR "),
                    c = d.select_list,
                    t = self.sql.from_table,
                    f = self.sql.filter
                ),
                ranges
                    .iter()
                    .flat_map(|r| [key_param(r[0]), key_param(r[1])])
                    .collect(),
            )
        };
        let client = self.client().await?;
        // The dense read is one statement for every batch: keep it prepared. A sparse one has as many
        // ranges as the batch: prepare it for this batch only.
        let stmt = if dense {
            client.prepare_cached(&sql).await
        } else {
            client.prepare(&sql).await
        }
        .map_err(|e| self.err(&e))?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let raw = client.query(&stmt, &refs).await.map_err(|e| self.err(&e))?;
        drop(client);
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let mut values = Vec::with_capacity(d.types.len());
            for (i, ty) in d.types.iter().enumerate() {
                let RawPg(bytes) = r.try_get::<_, RawPg<'_>>(i).map_err(|e| self.err(&e))?;
                values.push(decode(ty, bytes).map_err(|message| SourceError::Query {
                    table: self.sql.table_label.clone(),
                    message: format!("column `{}`: {message}", d.columns[i].name),
                    transient: false,
                })?);
            }
            let Some(key) = values[d.key_index].as_key() else {
                continue;
            };
            if dense && ranges.len() > 1 && !ranges_contain(ranges, key) {
                continue;
            }
            rows.push(Row { key, values });
        }
        rows.sort_unstable_by_key(|r| r.key);
        Ok(RowSet {
            columns: d.columns.clone(),
            key_index: d.key_index,
            rows,
        })
    }
}
