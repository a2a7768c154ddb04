//! `[target] create = true`, after the copy: the source table's secondary indexes on the target tables
//! bitmig created (`bitmig-compensator indexes`). pgloader builds its indexes after loading, for the same
//! reason: one sorted build per index costs far less than an index entry inserted with every row.
//!
//! The source's indexes come from its catalog: MySQL `information_schema.STATISTICS`, PostgreSQL
//! `pg_index` (plain B-tree indexes on columns). An index is made on a target table unless one of the
//! table's indexes already has its columns in the same order — a table created `LIKE` the source on the
//! same server has them all, and an operator's own index is never doubled. Left out, with the reason:
//! FULLTEXT and SPATIAL indexes, expressions and partial indexes, a column the job does not copy, and a
//! column prefix (`name(10)`) on a PostgreSQL target, which has none.
//!
//! The target's name of an index is `{table}_{source index}` (PostgreSQL names indexes per schema, so
//! routed tables need one each), made an identifier and, past 60 bytes, cut and ended with a hash.

use mysql_async::prelude::Queryable;

use super::SinkError;
use crate::job::{Engine, Ident, SourceSpec, TableName};
use crate::sql::{mysql_error_text, mysql_pool, quote, quote_table};

/// One column of an index, in the index's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexColumn {
    pub name: String,
    pub desc: bool,
    /// MySQL: the prefix length of a partial column (`name(10)`).
    pub prefix: Option<u64>,
}

/// A secondary index of the source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIndex {
    pub name: String,
    pub unique: bool,
    pub columns: Vec<IndexColumn>,
    /// Why it cannot be made on the target, when it cannot (see the module doc).
    pub unusable: Option<String>,
}

impl SourceIndex {
    /// Why this index is not made on a target of `engine` copying `columns`, if so.
    pub fn skip_reason(&self, engine: Engine, source: &SourceSpec) -> Option<String> {
        if let Some(why) = &self.unusable {
            return Some(why.clone());
        }
        if let Some(c) = self.columns.iter().find(|c| !copied(source, &c.name)) {
            return Some(format!("column `{}` is not copied by the job", c.name));
        }
        if engine == Engine::Postgres {
            if let Some(c) = self.columns.iter().find(|c| c.prefix.is_some()) {
                return Some(format!(
                    "column `{}` is indexed by a prefix, which PostgreSQL has not",
                    c.name
                ));
            }
        }
        None
    }

    fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Whether one of `existing` (column lists of the target table's indexes) has this index's columns.
    pub fn present_in(&self, existing: &[Vec<String>]) -> bool {
        let mine = self.column_names();
        existing.contains(&mine)
    }

    /// `CREATE [UNIQUE] INDEX name ON table (columns)` for a target of `engine`.
    pub fn create_sql(
        &self,
        engine: Engine,
        table: &TableName,
        name: &Ident,
    ) -> Result<String, String> {
        let mut cols = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let ident = Ident::new(&c.name)?;
            let mut s = quote(engine, &ident);
            if let (Engine::Mysql, Some(n)) = (engine, c.prefix) {
                s.push_str(&format!("({n})"));
            }
            if c.desc {
                s.push_str(" DESC");
            }
            cols.push(s);
        }
        Ok(format!(
            "CREATE {}INDEX {} ON {} ({})",
            if self.unique { "UNIQUE " } else { "" },
            quote(engine, name),
            quote_table(engine, table),
            cols.join(", ")
        ))
    }
}

fn copied(source: &SourceSpec, name: &str) -> bool {
    source
        .columns
        .as_ref()
        .is_none_or(|cols| cols.iter().any(|c| c.as_str() == name))
}

/// The target's name of source index `index` on `table`: see the module doc.
pub fn target_index_name(table: &Ident, index: &str) -> Result<Ident, String> {
    const MAX: usize = 60;
    let raw = format!("{}_{}", table.as_str(), index);
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() > MAX {
        let hash = xxhash_rust::xxh3::xxh3_64(raw.as_bytes());
        name.truncate(MAX - 9);
        name.push_str(&format!("_{:08x}", hash as u32));
    }
    Ident::new(&name)
}

fn read_failed(what: &str) -> SinkError {
    SinkError::Transient(format!("reading the source table's indexes: {what}"))
}

/// The source table's secondary indexes (every index but the primary key), by name.
pub async fn source_indexes(source: &SourceSpec) -> Result<Vec<SourceIndex>, SinkError> {
    match source.url.engine {
        Engine::Mysql => mysql_source_indexes(source).await,
        Engine::Postgres => pg_source_indexes(source).await,
    }
}

async fn mysql_source_indexes(source: &SourceSpec) -> Result<Vec<SourceIndex>, SinkError> {
    let (database, pool, mut conn) = super::create::mysql_catalog(source, read_failed).await?;
    // (index, non_unique, column (NULL: an expression), prefix, collation ('D': descending), type)
    type Row = (
        String,
        i64,
        Option<String>,
        Option<u64>,
        Option<String>,
        String,
    );
    let rows: Vec<Row> = conn
        .exec(
            "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART, COLLATION, INDEX_TYPE \
             FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND INDEX_NAME <> 'PRIMARY' \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (database.as_deref(), source.table.table.as_str()),
        )
        .await
        .map_err(|e| read_failed(&mysql_error_text(&e)))?;
    drop(conn);
    pool.disconnect().await.ok();
    let mut out: Vec<SourceIndex> = Vec::new();
    for (name, non_unique, column, prefix, collation, kind) in rows {
        if out.last().is_none_or(|i| i.name != name) {
            let unusable = matches!(kind.to_ascii_uppercase().as_str(), "FULLTEXT" | "SPATIAL")
                .then(|| format!("a {kind} index"));
            out.push(SourceIndex {
                name: name.clone(),
                unique: non_unique == 0,
                columns: Vec::new(),
                unusable,
            });
        }
        let index = out.last_mut().expect("pushed above");
        match column {
            Some(c) => index.columns.push(IndexColumn {
                name: c,
                desc: collation.as_deref() == Some("D"),
                prefix,
            }),
            None => {
                index
                    .unusable
                    .get_or_insert_with(|| "an index on an expression".into());
            }
        }
    }
    Ok(out)
}

async fn pg_source_indexes(source: &SourceSpec) -> Result<Vec<SourceIndex>, SinkError> {
    let pool = crate::pg::pg_pool(&source.url, 1).map_err(SinkError::Batch)?;
    let client = pool.get().await.map_err(|e| read_failed(&e.to_string()))?;
    let table = quote_table(Engine::Postgres, &source.table);
    let rows = client
        .query(
            "SELECT i.relname::text, ix.indisunique, am.amname::text, \
               ix.indexprs IS NOT NULL OR ix.indpred IS NOT NULL, \
               ARRAY(SELECT a.attname::text FROM unnest(ix.indkey) WITH ORDINALITY k(n, o) \
                     JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.n ORDER BY k.o), \
               ARRAY(SELECT (o & 1) = 1 FROM unnest(ix.indoption::int2[]) WITH ORDINALITY k(o, p) ORDER BY k.p) \
             FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_am am ON am.oid = i.relam \
             WHERE ix.indrelid = to_regclass($1) AND NOT ix.indisprimary \
             ORDER BY i.relname",
            &[&table],
        )
        .await
        .map_err(|e| read_failed(&crate::pg::pg_error_text(&e)))?;
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let am: String = r.get(2);
            let partial: bool = r.get(3);
            let cols: Vec<String> = r.get(4);
            let desc: Vec<bool> = r.get(5);
            let unusable = if am != "btree" {
                Some(format!("a {am} index"))
            } else if partial {
                Some("an index on an expression or with a WHERE clause".into())
            } else {
                None
            };
            SourceIndex {
                name,
                unique: r.get(1),
                columns: cols
                    .into_iter()
                    .enumerate()
                    .map(|(i, name)| IndexColumn {
                        name,
                        desc: desc.get(i).copied().unwrap_or(false),
                        prefix: None,
                    })
                    .collect(),
                unusable,
            }
        })
        .collect())
}

/// What became of one source index on one target table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Built now, in this many seconds.
    Created { seconds: f64 },
    /// The table already has an index on these columns.
    Present,
    /// Not made, and why (see the module doc).
    Skipped { reason: String },
    /// The server refused it (a UNIQUE index over duplicates, a column type it cannot index).
    Failed { error: String },
}

/// One source index's fate on a table: `index` is the source's name, `name` the target's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Made {
    pub index: String,
    pub name: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One connection to the target's server, kept for every table of an `indexes` run.
pub enum IndexTarget {
    Mysql(mysql_async::Pool, mysql_async::Conn),
    Postgres(deadpool_postgres::Object),
}

impl IndexTarget {
    pub async fn connect(url: &crate::job::DbUrl) -> Result<Self, SinkError> {
        let failed = |e: String| SinkError::Transient(format!("connecting to the target: {e}"));
        Ok(match url.engine {
            Engine::Mysql => {
                let pool = mysql_pool(url, 1).map_err(SinkError::Batch)?;
                let conn = pool
                    .get_conn()
                    .await
                    .map_err(|e| failed(mysql_error_text(&e)))?;
                IndexTarget::Mysql(pool, conn)
            }
            Engine::Postgres => {
                let pool = crate::pg::pg_pool(url, 1).map_err(SinkError::Batch)?;
                IndexTarget::Postgres(pool.get().await.map_err(|e| failed(e.to_string()))?)
            }
        })
    }

    fn engine(&self) -> Engine {
        match self {
            IndexTarget::Mysql(..) => Engine::Mysql,
            IndexTarget::Postgres(_) => Engine::Postgres,
        }
    }

    /// Make on `table` each of `indexes` it lacks, one after the other. `None` when the table does not
    /// exist. A connection lost is an error; a statement the server refuses is that index's
    /// [`Outcome::Failed`], and the others still go.
    pub async fn make_on(
        &mut self,
        source: &SourceSpec,
        table: &TableName,
        indexes: &[SourceIndex],
    ) -> Result<Option<Vec<Made>>, SinkError> {
        let engine = self.engine();
        let Some(existing) = self.index_columns(table).await? else {
            return Ok(None);
        };
        let mut made = Vec::with_capacity(indexes.len());
        for index in indexes {
            let name = target_index_name(&table.table, &index.name);
            let outcome = if let Some(reason) = index.skip_reason(engine, source) {
                Outcome::Skipped { reason }
            } else if index.present_in(&existing) {
                Outcome::Present
            } else {
                match name
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|n| index.create_sql(engine, table, n))
                {
                    Err(reason) => Outcome::Skipped { reason },
                    Ok(sql) => {
                        let started = std::time::Instant::now();
                        match self.execute(&sql).await? {
                            Ok(()) => Outcome::Created {
                                seconds: (started.elapsed().as_secs_f64() * 1000.0).round()
                                    / 1000.0,
                            },
                            Err(error) => Outcome::Failed { error },
                        }
                    }
                }
            };
            made.push(Made {
                index: index.name.clone(),
                name: name.ok().map(|n| n.as_str().to_owned()),
                outcome,
            });
        }
        Ok(Some(made))
    }

    /// The column lists of `table`'s indexes (its primary key included); `None` when it does not exist.
    async fn index_columns(
        &mut self,
        table: &TableName,
    ) -> Result<Option<Vec<Vec<String>>>, SinkError> {
        let failed = |e: String| SinkError::Transient(format!("reading {table}'s indexes: {e}"));
        match self {
            IndexTarget::Mysql(_, conn) => {
                let exists = crate::sql::mysql_table_exists(conn, table)
                    .await
                    .map_err(|e| failed(mysql_error_text(&e)))?;
                if !exists {
                    return Ok(None);
                }
                let rows: Vec<(String, String)> = conn
                    .exec(
                        "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                         AND COLUMN_NAME IS NOT NULL ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                        (
                            table.schema.as_ref().map(|s| s.as_str()),
                            table.table.as_str(),
                        ),
                    )
                    .await
                    .map_err(|e| failed(mysql_error_text(&e)))?;
                let mut out: Vec<(String, Vec<String>)> = Vec::new();
                for (index, column) in rows {
                    match out.last_mut() {
                        Some((name, cols)) if *name == index => cols.push(column),
                        _ => out.push((index, vec![column])),
                    }
                }
                Ok(Some(out.into_iter().map(|(_, cols)| cols).collect()))
            }
            IndexTarget::Postgres(client) => {
                let exists = crate::pg::pg_table_exists(client, table)
                    .await
                    .map_err(|e| failed(crate::pg::pg_error_text(&e)))?;
                if !exists {
                    return Ok(None);
                }
                let rows = client
                    .query(
                        "SELECT ARRAY(SELECT a.attname::text FROM unnest(ix.indkey) WITH ORDINALITY k(n, o) \
                           JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.n ORDER BY k.o) \
                         FROM pg_index ix WHERE ix.indrelid = to_regclass($1::text)",
                        &[&quote_table(Engine::Postgres, table)],
                    )
                    .await
                    .map_err(|e| failed(crate::pg::pg_error_text(&e)))?;
                Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
            }
        }
    }

    /// Run one DDL statement: `Ok(Err(message))` when the server refused it.
    async fn execute(&mut self, sql: &str) -> Result<Result<(), String>, SinkError> {
        match self {
            IndexTarget::Mysql(_, conn) => match conn.query_drop(sql).await {
                Ok(()) => Ok(Ok(())),
                Err(mysql_async::Error::Server(e)) => {
                    Ok(Err(format!("{} ({})", e.message, e.code)))
                }
                Err(e) => Err(SinkError::Transient(mysql_error_text(&e))),
            },
            IndexTarget::Postgres(client) => match client.batch_execute(sql).await {
                Ok(()) => Ok(Ok(())),
                Err(e) if e.as_db_error().is_some() => Ok(Err(crate::pg::pg_error_text(&e))),
                Err(e) => Err(SinkError::Transient(crate::pg::pg_error_text(&e))),
            },
        }
    }

    pub async fn close(self) {
        if let IndexTarget::Mysql(pool, conn) = self {
            drop(conn);
            pool.disconnect().await.ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(cols: &[(&str, bool, Option<u64>)], unique: bool) -> SourceIndex {
        SourceIndex {
            name: "idx_user".into(),
            unique,
            columns: cols
                .iter()
                .map(|(n, d, p)| IndexColumn {
                    name: (*n).into(),
                    desc: *d,
                    prefix: *p,
                })
                .collect(),
            unusable: None,
        }
    }

    #[test]
    fn statements_quote_names_and_keep_order_direction_and_prefix() {
        let t = TableName::parse("shard_1.orders_3").unwrap();
        let i = index(
            &[("user_id", false, None), ("created_at", true, None)],
            false,
        );
        let name = target_index_name(&t.table, &i.name).unwrap();
        assert_eq!(
            i.create_sql(Engine::Postgres, &t, &name).unwrap(),
            r#"CREATE INDEX "orders_3_idx_user" ON "shard_1"."orders_3" ("user_id", "created_at" DESC)"#
        );
        let u = index(&[("note", false, Some(10))], true);
        assert_eq!(
            u.create_sql(Engine::Mysql, &t, &name).unwrap(),
            "CREATE UNIQUE INDEX `orders_3_idx_user` ON `shard_1`.`orders_3` (`note`(10))"
        );
    }

    #[test]
    fn long_or_odd_names_become_distinct_identifiers() {
        let t = Ident::new("orders_2024_01").unwrap();
        assert_eq!(
            target_index_name(&t, "by user-id").unwrap().as_str(),
            "orders_2024_01_by_user_id"
        );
        let a = target_index_name(&t, &"a".repeat(70)).unwrap();
        let b = target_index_name(&t, &format!("{}b", "a".repeat(69))).unwrap();
        assert_eq!(a.as_str().len(), 60);
        assert_ne!(a, b, "two long names cut to one prefix stay apart");
    }

    #[test]
    fn an_index_is_present_only_with_the_same_columns_in_the_same_order() {
        let i = index(&[("user_id", false, None), ("status", false, None)], false);
        let has = |cols: &[&str]| vec![cols.iter().map(|c| c.to_string()).collect::<Vec<_>>()];
        assert!(i.present_in(&has(&["user_id", "status"])));
        assert!(!i.present_in(&has(&["status", "user_id"])));
        assert!(!i.present_in(&has(&["user_id"])));
        assert!(!i.present_in(&[]));
    }
}
