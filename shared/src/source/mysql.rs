//! MySQL / MariaDB source over the binary protocol, so every value arrives in its exact form.

use std::sync::Arc;

use async_trait::async_trait;
use mysql_async::consts::{ColumnFlags, ColumnType as MyType};
use mysql_async::prelude::Queryable;
use tokio::sync::OnceCell;

use super::purge::{LockedRows, PurgeSql, PurgeTwin, PurgeTx};
use super::{row_set, RowsQuery, Source, SourceError};
use crate::ids::IdRange;
use crate::job::{Engine, JobSpec};
use crate::sql::{mysql_error_text, mysql_is_transient, mysql_pool};
use crate::value::{Column, ColumnType, RowSet, Value};

pub struct MySqlSource {
    pool: mysql_async::Pool,
    sql: super::SourceSql,
    /// `filter` as the job wrote it, for the purge's verdict column.
    raw_filter: Option<String>,
    /// The source table, for catalog look-ups.
    table: crate::job::TableName,
    described: OnceCell<Described>,
}

struct Described {
    columns: Arc<[Column]>,
    select_list: String,
    key_index: usize,
}

impl MySqlSource {
    pub fn new(job: &JobSpec, max_connections: usize) -> Result<Self, SourceError> {
        let s = &job.source;
        let pool = mysql_pool(&s.url, max_connections).map_err(|message| SourceError::Schema {
            table: s.table.to_string(),
            message,
        })?;
        Ok(Self {
            pool,
            sql: super::SourceSql::new(job, Engine::Mysql),
            raw_filter: s.filter.clone(),
            table: s.table.clone(),
            described: OnceCell::new(),
        })
    }

    fn err(&self, e: mysql_async::Error) -> SourceError {
        source_err(&self.sql.table_label, e)
    }

    async fn conn(&self) -> Result<mysql_async::Conn, SourceError> {
        self.pool.get_conn().await.map_err(|e| self.err(e))
    }

    async fn described(&self) -> Result<&Described, SourceError> {
        self.described
            .get_or_try_init(|| async {
                let mut conn = self.conn().await?;
                let list = match &self.sql.columns {
                    Some(cols) => cols
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => "*".to_owned(),
                };
                let stmt = conn
                    .prep(format!(
                        "SELECT {list} FROM {} WHERE 1 = 0",
                        self.sql.from_table
                    ))
                    .await
                    .map_err(|e| self.err(e))?;
                let columns: Vec<Column> = stmt.columns().iter().map(describe_column).collect();
                let key_name = self.sql.key.trim_matches('`');
                let key_index = super::key_index(&self.sql.table_label, &columns, key_name)?;
                let select_list = columns
                    .iter()
                    .map(|c| format!("`{}`", c.name.replace('`', "``")))
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok(Described {
                    columns: columns.into(),
                    select_list,
                    key_index,
                })
            })
            .await
    }
}

fn source_err(table: &str, e: mysql_async::Error) -> SourceError {
    let transient = mysql_is_transient(&e);
    let message = mysql_error_text(&e);
    if let mysql_async::Error::Server(s) = &e {
        // no such table / column / database: the job does not fit the schema
        if matches!(s.code, 1146 | 1054 | 1049) {
            return SourceError::Schema {
                table: table.to_owned(),
                message,
            };
        }
    }
    SourceError::Query {
        table: table.to_owned(),
        message,
        transient,
    }
}

/// A purge transaction on one pooled connection ([`super::PurgeTx`]); mysql_async rolls a transaction
/// back when it is dropped uncommitted.
struct MySqlPurgeTx {
    tx: mysql_async::Transaction<'static>,
    sql: super::SourceSql,
    raw_filter: Option<String>,
    columns: Arc<[Column]>,
    select_list: String,
    key_index: usize,
}

#[async_trait]
impl PurgeTx for MySqlPurgeTx {
    async fn lock_rows(&mut self, ranges: &[IdRange]) -> Result<LockedRows, SourceError> {
        let q = PurgeSql::lock(
            &self.sql,
            self.raw_filter.as_deref(),
            &self.select_list,
            ranges,
            |_| "?".into(),
        );
        let params: Vec<mysql_async::Value> = PurgeSql::bounds(ranges)
            .into_iter()
            .map(mysql_async::Value::from)
            .collect();
        let raw: Vec<mysql_async::Row> = self
            .tx
            .exec(q.lock.as_str(), params)
            .await
            .map_err(|e| source_err(&self.sql.table_label, e))?;
        let mut outside_filter = std::collections::BTreeSet::new();
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let mut values: Vec<Value> = r.unwrap().into_iter().map(from_mysql).collect();
            let matches = if q.has_filter {
                !matches!(
                    values.pop(),
                    Some(Value::Int(0) | Value::UInt(0) | Value::Null)
                )
            } else {
                true
            };
            let Some(key) = values[self.key_index].as_key() else {
                continue;
            };
            if !matches {
                outside_filter.insert(key);
            }
            rows.push(crate::value::Row { key, values });
        }
        Ok(LockedRows {
            rows: row_set(self.columns.clone(), self.key_index, rows),
            outside_filter,
        })
    }

    async fn max_key(&mut self) -> Result<Option<u64>, SourceError> {
        let row: Option<Option<u64>> = self
            .tx
            .exec_first(PurgeSql::max_key(&self.sql, ""), ())
            .await
            .map_err(|e| source_err(&self.sql.table_label, e))?;
        Ok(row.flatten())
    }

    async fn delete(&mut self, ranges: &[IdRange]) -> Result<u64, SourceError> {
        let mut deleted = 0;
        for (sql, bounds) in PurgeSql::deletes(&self.sql, ranges, |_| "?".into())? {
            self.tx
                .exec_drop(sql, bounds)
                .await
                .map_err(|e| source_err(&self.sql.table_label, e))?;
            deleted += self.tx.affected_rows();
        }
        Ok(deleted)
    }

    async fn delete_equal(
        &mut self,
        ranges: &[IdRange],
        twin: &PurgeTwin,
    ) -> Result<u64, SourceError> {
        self.tx
            .query_drop(PurgeSql::delete_equal(&self.sql, ranges, twin))
            .await
            .map_err(|e| source_err(&self.sql.table_label, e))?;
        Ok(self.tx.affected_rows())
    }

    async fn commit(self: Box<Self>) -> Result<(), SourceError> {
        let label = self.sql.table_label.clone();
        self.tx.commit().await.map_err(|e| source_err(&label, e))
    }

    async fn rollback(self: Box<Self>) -> Result<(), SourceError> {
        let label = self.sql.table_label.clone();
        self.tx.rollback().await.map_err(|e| source_err(&label, e))
    }
}

pub(crate) fn describe_column(c: &mysql_async::Column) -> Column {
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let binary = c.character_set() == 63;
    let (ty, type_name) = match c.column_type() {
        MyType::MYSQL_TYPE_TINY
        | MyType::MYSQL_TYPE_SHORT
        | MyType::MYSQL_TYPE_INT24
        | MyType::MYSQL_TYPE_LONG
        | MyType::MYSQL_TYPE_LONGLONG => (ColumnType::Int { unsigned }, "integer"),
        MyType::MYSQL_TYPE_DECIMAL | MyType::MYSQL_TYPE_NEWDECIMAL => {
            (ColumnType::Decimal, "decimal")
        }
        MyType::MYSQL_TYPE_FLOAT => (ColumnType::Float, "float"),
        MyType::MYSQL_TYPE_DOUBLE => (ColumnType::Double, "double"),
        MyType::MYSQL_TYPE_YEAR => (ColumnType::Year, "year"),
        MyType::MYSQL_TYPE_DATE | MyType::MYSQL_TYPE_NEWDATE => (ColumnType::Date, "date"),
        MyType::MYSQL_TYPE_TIME | MyType::MYSQL_TYPE_TIME2 => (ColumnType::Time, "time"),
        MyType::MYSQL_TYPE_DATETIME | MyType::MYSQL_TYPE_DATETIME2 => {
            (ColumnType::DateTime, "datetime")
        }
        MyType::MYSQL_TYPE_TIMESTAMP | MyType::MYSQL_TYPE_TIMESTAMP2 => {
            (ColumnType::Timestamp, "timestamp")
        }
        MyType::MYSQL_TYPE_JSON => (ColumnType::Json, "json"),
        MyType::MYSQL_TYPE_BIT => (ColumnType::Bit, "bit"),
        MyType::MYSQL_TYPE_VARCHAR
        | MyType::MYSQL_TYPE_VAR_STRING
        | MyType::MYSQL_TYPE_STRING
        | MyType::MYSQL_TYPE_ENUM
        | MyType::MYSQL_TYPE_SET
        | MyType::MYSQL_TYPE_TINY_BLOB
        | MyType::MYSQL_TYPE_MEDIUM_BLOB
        | MyType::MYSQL_TYPE_LONG_BLOB
        | MyType::MYSQL_TYPE_BLOB => {
            if binary {
                (ColumnType::Bytes, "binary")
            } else {
                (ColumnType::Text, "text")
            }
        }
        _ => (ColumnType::Other, "other"),
    };
    Column {
        name: c.name_str().into_owned(),
        ty,
        type_name: format!("{type_name} ({:?})", c.column_type()),
    }
}

pub(crate) fn from_mysql(v: mysql_async::Value) -> Value {
    use mysql_async::Value as M;
    match v {
        M::NULL => Value::Null,
        M::Bytes(b) => Value::Bytes(b),
        M::Int(i) => Value::Int(i),
        M::UInt(u) => Value::UInt(u),
        M::Float(f) => Value::Float(f),
        M::Double(d) => Value::Double(d),
        M::Date(y, mo, d, h, mi, s, us) => Value::Date(y, mo, d, h, mi, s, us),
        M::Time(neg, d, h, mi, s, us) => Value::Time(neg, d, h, mi, s, us),
    }
}

#[async_trait]
impl Source for MySqlSource {
    async fn describe(&self) -> Result<Vec<Column>, SourceError> {
        Ok(self.described().await?.columns.to_vec())
    }

    async fn key_bounds(&self) -> Result<Option<(u64, u64)>, SourceError> {
        let mut conn = self.conn().await?;
        let sql = format!(
            "SELECT MIN({k}), MAX({k}) FROM {t} WHERE {k} >= 0{f}",
            k = self.sql.key,
            t = self.sql.from_table,
            f = self.sql.filter
        );
        let row: Option<(Option<u64>, Option<u64>)> =
            conn.exec_first(sql, ()).await.map_err(|e| self.err(e))?;
        Ok(match row {
            Some((Some(lo), Some(hi))) => Some((lo, hi)),
            _ => None,
        })
    }

    async fn next_key(&self, from: u64, to: u64) -> Result<Option<u64>, SourceError> {
        let mut conn = self.conn().await?;
        let sql = format!(
            "SELECT {k} FROM {t} WHERE {k} >= ? AND {k} <= ?{f} ORDER BY {k} LIMIT 1",
            k = self.sql.key,
            t = self.sql.from_table,
            f = self.sql.filter
        );
        conn.exec_first(sql, (from, to))
            .await
            .map_err(|e| self.err(e))
    }

    async fn keys_between(&self, first: u64, last: u64) -> Result<Vec<u64>, SourceError> {
        let mut conn = self.conn().await?;
        let sql = format!(
            "SELECT {k} FROM {t} WHERE {k} >= ? AND {k} <= ?{f} ORDER BY {k}",
            k = self.sql.key,
            t = self.sql.from_table,
            f = self.sql.filter
        );
        conn.exec(sql, (first, last)).await.map_err(|e| self.err(e))
    }

    async fn json_text_columns(&self) -> Result<Vec<String>, SourceError> {
        let mut conn = self.conn().await?;
        let (schema, table) = (self.table.schema.as_ref(), &self.table.table);
        crate::digest::pushdown::mariadb_json_columns(
            &mut conn,
            schema.map(|s| s.as_str()),
            table.as_str(),
        )
        .await
        .map_err(|e| SourceError::Query {
            table: self.sql.table_label.clone(),
            message: e.to_string(),
            transient: matches!(
                e,
                crate::digest::DigestError::Query {
                    transient: true,
                    ..
                }
            ),
        })
    }

    async fn purge_twin(&self, job: &JobSpec) -> Result<PurgeTwin, String> {
        use crate::digest::pushdown::{types_match, MysqlColumnType, MYSQL_COLUMN_TYPES_SQL};
        use crate::job::{Ident, TableName, TargetSpec};
        let TargetSpec::Sql(target) = &job.target else {
            return Err("the target is not a SQL table".into());
        };
        if !crate::sink::sql::mysql::same_mysql_server(&job.source.url, &target.url) {
            return Err("the target is not on the source's MySQL/MariaDB server".into());
        }
        let Some(plain) = target.table.plain() else {
            return Err("the target is routed to several tables".into());
        };
        let named = TableName::parse(plain)?;
        let schema = match named.schema {
            Some(s) => s,
            None => crate::sink::create::url_database(target.url.expose())
                .and_then(|db| Ident::new(&db).ok())
                .ok_or("the target URL names no database")?,
        };
        let table = TableName {
            schema: Some(schema),
            table: named.table,
        };
        if self
            .table
            .table
            .as_str()
            .eq_ignore_ascii_case("bitmig_twin")
        {
            return Err("the source table is named like the twin's alias".into());
        }
        let d = self.described().await.map_err(|e| e.to_string())?;
        let mut conn = self.conn().await.map_err(|e| e.to_string())?;
        let mut sides: Vec<Vec<MysqlColumnType>> = Vec::new();
        for t in [&self.table, &table] {
            let schema = t.schema.as_ref().map(|s| s.as_str().to_owned());
            let cols: Vec<MysqlColumnType> = conn
                .exec(MYSQL_COLUMN_TYPES_SQL, (schema, t.table.as_str()))
                .await
                .map_err(|e| mysql_error_text(&e))?;
            sides.push(cols);
        }
        let (s_types, t_types) = (&sides[0], &sides[1]);
        let names: Vec<&str> = d.columns.iter().map(|c| c.name.as_str()).collect();
        types_match(&names, s_types, t_types)?;
        let typed: Vec<(String, String)> = names
            .iter()
            .map(|n| {
                let ty = s_types.iter().find(|c| c.0.eq_ignore_ascii_case(n));
                (
                    format!("`{}`", n.replace('`', "``")),
                    ty.map(|c| c.1.clone()).unwrap_or_default(),
                )
            })
            .collect();
        Ok(PurgeTwin::mysql(
            &self.sql.from_table,
            &self.sql.key,
            &crate::sql::quote_table(Engine::Mysql, &table),
            &typed,
        ))
    }

    async fn begin_purge(&self) -> Result<Box<dyn PurgeTx>, SourceError> {
        let d = self.described().await?;
        // REPEATABLE READ whatever the server's default: its next-key locks keep rows out of the locked
        // ranges until the commit, which range deletes rely on (PurgeTx::delete).
        let mut opts = mysql_async::TxOpts::default();
        opts.with_isolation_level(mysql_async::IsolationLevel::RepeatableRead);
        let tx = self
            .pool
            .start_transaction(opts)
            .await
            .map_err(|e| self.err(e))?;
        Ok(Box::new(MySqlPurgeTx {
            tx,
            sql: self.sql.clone(),
            raw_filter: self.raw_filter.clone(),
            columns: d.columns.clone(),
            select_list: d.select_list.clone(),
            key_index: d.key_index,
        }))
    }

    async fn read_rows(&self, ranges: &[IdRange]) -> Result<RowSet, SourceError> {
        let d = self.described().await?;
        let plan = RowsQuery::plan(&self.sql, &d.select_list, ranges, |_| "?".into());
        let mut rows = Vec::new();
        if plan.is_empty() {
            return Ok(row_set(d.columns.clone(), d.key_index, rows));
        }
        let mut conn = self.conn().await?;
        for (q, covered) in plan {
            let params: Vec<mysql_async::Value> = q.bounds.iter().map(|&b| b.into()).collect();
            let raw: Vec<mysql_async::Row> = conn
                .exec(q.sql.as_str(), params)
                .await
                .map_err(|e| self.err(e))?;
            rows.extend(q.rows(
                covered,
                d.key_index,
                raw.into_iter().map(|r| {
                    Ok::<_, SourceError>(r.unwrap().into_iter().map(from_mysql).collect())
                }),
            )?);
        }
        drop(conn);
        Ok(row_set(d.columns.clone(), d.key_index, rows))
    }
}
