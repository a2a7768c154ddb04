//! SQL table sink for PostgreSQL: one multi-row `INSERT … VALUES … ON CONFLICT (key) DO UPDATE` per target
//! table and batch, in binary format, values encoded for the target column's type ([`crate::pg`]).
//!
//! - At most 65 535 parameters per statement (the protocol's limit): a larger piece is split.
//! - A key twice in one statement would make `ON CONFLICT DO UPDATE` fail ("cannot affect row a second
//!   time"): the last row of a key wins, the key is written once.
//! - Every table's statements of a batch run in one transaction. PostgreSQL aborts a transaction at its
//!   first error, so a statement refused for a row's values (a data exception or constraint, class 22/23,
//!   or a value that does not fit its column) rolls the batch back; then every piece is written on its own
//!   and a refused one is bisected until the bad row is isolated in `failed`.
//! - `source.version`: `DO UPDATE … WHERE t.ver IS NULL OR t.ver <= EXCLUDED.ver`: a late, older row never
//!   replaces a newer one (and still counts as written); an equal version rewrites the row.
//! - `create = true`: a table is created when a row is first routed to it: `(LIKE src INCLUDING ALL)` when
//!   the source table is in the same database and every column is read, otherwise from the source's
//!   catalog ([`crate::sink::create`]: the same types from PostgreSQL, pgloader's casts from MySQL), the key as
//!   primary key. A missing schema is not created (that is the operator's call).
//! - The single-table statement stays prepared on its connection across batches; routed tables' statements
//!   are prepared per batch (one per table and row count would pile up on every connection).

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tokio_postgres::Statement;
use tracing::info;

use super::{bisect, check_version, group, pieces, placed, tables_of, Deletes, Piece, WriteAlone};
use crate::job::{
    Engine, Ident, JobSpec, SourceSpec, TableName, TableRoute, TargetSpec, WriteMode,
};
use crate::pg::{can_encode, pg_error_text, pg_is_row_error, pg_is_transient, pg_pool, PgParam};
use crate::sink::create::{
    mysql_source_columns, pg_body, pg_source_columns, server_of, url_database, KnownTables,
};
use crate::sink::route::Router;
use crate::sink::{
    deletions, sql_tables_to_read, sql_tables_to_visit, Changes, OpenError, Sink, SinkError,
    Tables, WriteOutcome,
};
use crate::sql::{quote, quote_table};
use crate::value::{Column, Row, RowSet, Value};

/// The protocol's limit of parameters in one statement.
const MAX_PARAMS: usize = 65_535;

pub struct PgSink {
    pool: deadpool_postgres::Pool,
    route: TableRoute,
    write: WriteMode,
    /// `source.key`: the conflict target (the target table needs a unique index or primary key on it).
    key: String,
    version: Option<Ident>,
    /// `create = true`: how to create a missing table, and the tables known to exist.
    create: Option<Creator>,
    /// Records each table before the first write to it; lists every table for deletes.
    tables: Tables,
}

/// Creates missing target tables, once per table and process. Consumers racing on one table serialise on a
/// transaction-scoped advisory lock keyed by its name, so `CREATE TABLE IF NOT EXISTS` never meets the
/// catalog race PostgreSQL has between two concurrent ones.
struct Creator {
    source: SourceSpec,
    /// The source table is in the target's database: `LIKE` can copy it as it is.
    same_database: bool,
    /// What follows `CREATE TABLE IF NOT EXISTS t`, worked out once.
    tail: OnceCell<String>,
    created: KnownTables,
}

/// The PostgreSQL type name of a column read from PostgreSQL.
fn pg_type_name(c: &Column) -> Option<&str> {
    c.type_name.strip_suffix(" (PostgreSQL)")
}

impl PgSink {
    /// A sink for the job's `[target]` (`kind = "sql"` on PostgreSQL). Connects to nothing yet.
    pub fn new(job: &JobSpec, max_connections: usize) -> Result<Self, OpenError> {
        let TargetSpec::Sql(t) = &job.target else {
            return Err(OpenError("not a SQL target".into()));
        };
        Ok(Self {
            pool: pg_pool(&t.url, max_connections).map_err(OpenError)?,
            route: t.table.clone(),
            write: t.write,
            key: job.source.key.as_str().to_owned(),
            version: job.source.version.clone(),
            create: t.create.then(|| Creator {
                same_database: job.source.url.engine == Engine::Postgres
                    && server_of(job.source.url.expose(), 5432).is_some()
                    && server_of(job.source.url.expose(), 5432) == server_of(t.url.expose(), 5432)
                    && url_database(job.source.url.expose()) == url_database(t.url.expose()),
                source: job.source.clone(),
                tail: OnceCell::new(),
                created: Default::default(),
            }),
            tables: Tables::default(),
        })
    }

    /// Record tables in, and list them from, `tables` (the consumer's ledger).
    pub(crate) fn with_tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// Run `d`'s deletes in `tx`, the written keys being `placed` (table → keys). Listed tables that do not
    /// exist hold no row and are skipped (checked first: an error would abort the transaction).
    async fn delete_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        key: &str,
        d: &Deletes<'_>,
        placed: &[(TableName, Vec<u64>)],
    ) -> Result<(), SinkError> {
        let todo = deletions(&d.every, d.delete, placed, d.exclusive);
        if todo.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = todo
            .iter()
            .map(|(t, _)| quote_table(Engine::Postgres, t))
            .collect();
        let present = tx
            .query(
                "SELECT n FROM unnest($1::text[]) AS n WHERE to_regclass(n) IS NOT NULL",
                &[&names],
            )
            .await
            .map_err(|e| self.error(&e, None))?;
        let present: std::collections::HashSet<String> =
            present.iter().map(|r| r.get::<_, String>(0)).collect();
        let key = format!("\"{}\"", key.replace('"', "\"\""));
        for ((table, keys), name) in todo.iter().zip(&names) {
            if !present.contains(name) {
                continue;
            }
            // Keys as bigint: a key above i64::MAX cannot be in a PostgreSQL integer column anyway.
            let keys: Vec<i64> = keys.iter().filter_map(|k| i64::try_from(*k).ok()).collect();
            tx.execute(
                &format!("DELETE FROM {name} WHERE {key} = ANY($1::bigint[])"),
                &[&keys],
            )
            .await
            .map_err(|e| self.error(&e, Some(table)))?;
        }
        Ok(())
    }

    /// What follows `CREATE TABLE IF NOT EXISTS t`, from the source.
    async fn create_tail<'c>(&self, creator: &'c Creator) -> Result<&'c String, SinkError> {
        creator
            .tail
            .get_or_try_init(|| async {
                let source = &creator.source;
                if creator.same_database && source.columns.is_none() {
                    return Ok(format!(
                        " (LIKE {} INCLUDING ALL)",
                        quote_table(Engine::Postgres, &source.table)
                    ));
                }
                let columns = match source.url.engine {
                    Engine::Postgres => pg_source_columns(source).await?,
                    Engine::Mysql => mysql_source_columns(source).await?,
                };
                pg_body(&columns, source.url.engine, &source.key)
                    .map_err(|e| SinkError::Batch(format!("target.create: {e}")))
            })
            .await
    }

    /// Create those of `tables` not known to exist, before the batch's transaction.
    async fn ensure_tables(
        &self,
        client: &mut deadpool_postgres::Object,
        tables: &[&TableName],
    ) -> Result<(), SinkError> {
        let Some(creator) = &self.create else {
            return Ok(());
        };
        let missing = creator.created.missing(tables);
        if missing.is_empty() {
            return Ok(());
        }
        let tail = self.create_tail(creator).await?;
        for table in missing {
            let qualified = quote_table(Engine::Postgres, table);
            let result = async {
                let tx = client.transaction().await?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1::text))",
                    &[&format!("bitmig create {table}")],
                )
                .await?;
                tx.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {qualified}{tail}"))
                    .await?;
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => {}
                // Created meanwhile by a session that did not take the lock: it exists.
                Err(e)
                    if e.code()
                        .is_some_and(|c| matches!(c.code(), "42P07" | "23505")) => {}
                Err(e) => {
                    return Err(match self.error(&e, Some(table)) {
                        SinkError::Batch(m) => SinkError::Batch(format!("creating it: {m}")),
                        other => other,
                    })
                }
            }
            info!(table = %table, "target table created (or already there)");
            creator.created.insert(table);
        }
        Ok(())
    }

    fn router(&self, columns: &[Column]) -> Result<Router, SinkError> {
        Router::new(&self.route, columns).map_err(SinkError::Batch)
    }

    fn error(&self, e: &tokio_postgres::Error, table: Option<&TableName>) -> SinkError {
        let text = match table {
            Some(t) => format!("table {t}: {}", pg_error_text(e)),
            None => pg_error_text(e),
        };
        if pg_is_transient(e) {
            SinkError::Transient(text)
        } else {
            SinkError::Batch(text)
        }
    }

    /// Every row of `table` whose `key` is in `first..=last`, all columns, ascending by key; `None` when
    /// the table does not exist (a listed table that holds nothing).
    async fn read_table(
        &self,
        client: &tokio_postgres::Client,
        table: &TableName,
        key: &str,
        first: u64,
        last: u64,
    ) -> Result<Option<RowSet>, SinkError> {
        let k = format!("\"{}\"", key.replace('"', "\"\""));
        let sql = format!(
            "SELECT * FROM {} WHERE {k} BETWEEN $1::int8 AND $2::int8 ORDER BY {k}",
            quote_table(Engine::Postgres, table)
        );
        let stmt = match client.prepare(&sql).await {
            Ok(s) => s,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                return Ok(None)
            }
            Err(e) => return Err(self.error(&e, Some(table))),
        };
        let types: Vec<tokio_postgres::types::Type> =
            stmt.columns().iter().map(|c| c.type_().clone()).collect();
        let columns: Vec<Column> = stmt
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                ty: crate::pg::column_type(c.type_()),
                type_name: format!("{} (PostgreSQL)", c.type_().name()),
            })
            .collect();
        let key_index = columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(key))
            .ok_or_else(|| SinkError::Batch(format!("table {table}: no key column `{key}`")))?;
        let (lo, hi) = (
            i64::try_from(first).unwrap_or(i64::MAX),
            i64::try_from(last).unwrap_or(i64::MAX),
        );
        let raw = client
            .query(&stmt, &[&lo, &hi])
            .await
            .map_err(|e| self.error(&e, Some(table)))?;
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let mut values = Vec::with_capacity(types.len());
            for (i, ty) in types.iter().enumerate() {
                let crate::pg::RawPg(bytes) = r
                    .try_get::<_, crate::pg::RawPg<'_>>(i)
                    .map_err(|e| self.error(&e, Some(table)))?;
                values.push(crate::pg::decode(ty, bytes).map_err(|m| {
                    SinkError::Batch(format!("table {table}, column `{}`: {m}", columns[i].name))
                })?);
            }
            // A BIGINT UNSIGNED key becomes numeric(20,0) in PostgreSQL: its text is the key.
            let key = values[key_index]
                .as_key()
                .or_else(|| match &values[key_index] {
                    Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                    _ => None,
                });
            if let Some(key) = key {
                rows.push(Row { key, values });
            }
        }
        Ok(Some(RowSet {
            columns: columns.into(),
            key_index,
            rows,
        }))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SinkError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.error(&e, None),
            other => SinkError::Transient(format!("PostgreSQL: {other}")),
        })
    }

    /// Prepare the piece's statement and check that every column can go into the target's column.
    async fn statement(
        &self,
        client: &tokio_postgres::Client,
        rs: &RowSet,
        piece: &Piece<'_>,
        cached: Option<&deadpool_postgres::Object>,
    ) -> Result<Statement, SinkError> {
        let sql = insert_sql(
            piece.table,
            &rs.columns,
            piece.rows.len(),
            &self.key,
            self.write,
            self.version.as_ref(),
        );
        let stmt = match cached {
            Some(object) => object.prepare_cached(&sql).await,
            None => client.prepare(&sql).await,
        }
        .map_err(|e| self.error(&e, Some(piece.table)))?;
        for (column, target) in rs.columns.iter().zip(stmt.params()) {
            can_encode(column.ty, pg_type_name(column), target).map_err(|why| {
                SinkError::Batch(format!(
                    "table {}: column `{}` ({}): {why}",
                    piece.table, column.name, column.type_name
                ))
            })?;
        }
        Ok(stmt)
    }

    /// Write every piece in one transaction. `Ok(true)`: all committed; `Ok(false)`: a row was refused
    /// and nothing is committed.
    async fn write_together(
        &self,
        client: &mut deadpool_postgres::Object,
        rs: &RowSet,
        pieces: &[Piece<'_>],
        cache: bool,
        deletes: Option<&Deletes<'_>>,
    ) -> Result<bool, SinkError> {
        if let ([piece], None) = (pieces, deletes) {
            let stmt = self
                .statement(client, rs, piece, cache.then_some(&*client))
                .await?;
            return match client.execute_raw(&stmt, params(rs, &piece.rows)).await {
                Ok(_) => Ok(true),
                Err(e) if pg_is_row_error(&e) => Ok(false),
                Err(e) => Err(self.error(&e, Some(piece.table))),
            };
        }
        let mut stmts = Vec::with_capacity(pieces.len());
        for piece in pieces {
            stmts.push(
                self.statement(client, rs, piece, cache.then_some(&*client))
                    .await?,
            );
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.error(&e, None))?;
        for (piece, stmt) in pieces.iter().zip(&stmts) {
            match tx.execute_raw(stmt, params(rs, &piece.rows)).await {
                Ok(_) => {}
                Err(e) if pg_is_row_error(&e) => {
                    // The transaction is aborted: roll it back (dropping it would too).
                    tx.rollback().await.map_err(|e| self.error(&e, None))?;
                    return Ok(false);
                }
                Err(e) => return Err(self.error(&e, Some(piece.table))),
            }
        }
        if let Some(d) = deletes {
            self.delete_in(&tx, &self.key, d, &placed(pieces)).await?;
        }
        tx.commit().await.map_err(|e| self.error(&e, None))?;
        Ok(true)
    }
}

/// Writes pieces on the batch's connection, one autocommitted statement each, for [`bisect`].
struct Alone<'s> {
    sink: &'s PgSink,
    client: &'s deadpool_postgres::Object,
    rs: &'s RowSet,
}

#[async_trait]
impl WriteAlone for Alone<'_> {
    async fn write_alone(
        &mut self,
        table: &TableName,
        rows: &[&Row],
    ) -> Result<Result<(), String>, SinkError> {
        let part = Piece {
            table,
            rows: rows.to_vec(),
        };
        let stmt = self
            .sink
            .statement(self.client, self.rs, &part, None)
            .await?;
        match self
            .client
            .execute_raw(&stmt, params(self.rs, &part.rows))
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) if pg_is_row_error(&e) => {
                Ok(Err(format!("table {table}: {}", pg_error_text(&e))))
            }
            Err(e) => Err(self.sink.error(&e, Some(table))),
        }
    }
}

/// The multi-row upsert of `rows` rows into `table`: `$1…` numbered row by row, the key the conflict target,
/// the version guard a `WHERE` on the update.
fn insert_sql(
    table: &TableName,
    columns: &[Column],
    rows: usize,
    key: &str,
    write: WriteMode,
    version: Option<&Ident>,
) -> String {
    let q = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let cols: Vec<String> = columns.iter().map(|c| q(&c.name)).collect();
    let mut sql = format!(
        "INSERT INTO {} AS \"t\" ({}) VALUES ",
        quote_table(Engine::Postgres, table),
        cols.join(",")
    );
    let n = columns.len();
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..n {
            if c > 0 {
                sql.push(',');
            }
            sql.push('$');
            sql.push_str(&(r * n + c + 1).to_string());
        }
        sql.push(')');
    }
    let key_q = q(key);
    let updates: Vec<String> = cols
        .iter()
        .filter(|c| **c != key_q)
        .map(|c| format!("{c}=EXCLUDED.{c}"))
        .collect();
    if write == WriteMode::InsertIgnore || updates.is_empty() {
        sql.push_str(&format!(" ON CONFLICT ({key_q}) DO NOTHING"));
        return sql;
    }
    sql.push_str(&format!(
        " ON CONFLICT ({key_q}) DO UPDATE SET {}",
        updates.join(",")
    ));
    if let Some(v) = version {
        let v = quote(Engine::Postgres, v);
        sql.push_str(&format!(
            " WHERE \"t\".{v} IS NULL OR \"t\".{v} <= EXCLUDED.{v}"
        ));
    }
    sql
}

fn params<'a>(rs: &'a RowSet, rows: &[&'a Row]) -> Vec<PgParam<'a>> {
    let mut out = Vec::with_capacity(rows.len() * rs.columns.len());
    for row in rows {
        for (value, column) in row.values.iter().zip(rs.columns.iter()) {
            out.push(PgParam {
                value,
                ty: column.ty,
                column: &column.name,
            });
        }
    }
    out
}

#[async_trait]
impl Sink for PgSink {
    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<(String, RowSet)>, SinkError> {
        let tables = sql_tables_to_read(&self.tables, &self.route).await?;
        let client = self.client().await?;
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            if let Some(rs) = self.read_table(&client, &table, key, first, last).await? {
                out.push((table.to_string(), rs));
            }
        }
        Ok(out)
    }

    async fn prepare(&self, columns: &[Column]) -> Result<(), SinkError> {
        let router = self.router(columns)?;
        check_version(self.version.as_ref(), columns)?;
        if let Some(creator) = &self.create {
            // The tables are created when rows are first routed to them; check now that they can be.
            self.create_tail(creator).await?;
            return Ok(());
        }
        let Some(tables) = router.known_tables() else {
            return Ok(());
        };
        let client = self.client().await?;
        // A one-row statement per table: the server reports every target column's type.
        let probe = RowSet {
            columns: columns.to_vec().into(),
            key_index: 0,
            rows: Vec::new(),
        };
        let row = Row {
            key: 0,
            values: Vec::new(),
        };
        for table in &tables {
            let piece = Piece {
                table,
                rows: vec![&row],
            };
            self.statement(&client, &probe, &piece, None).await?;
        }
        Ok(())
    }

    async fn apply(&self, changes: &Changes<'_>) -> Result<WriteOutcome, SinkError> {
        let rs = changes.rows;
        let router = self.router(&rs.columns)?;
        let mut outcome = WriteOutcome::default();
        let per_stmt = (MAX_PARAMS / rs.columns.len().max(1)).max(1);
        let grouped = group(&router, rs, &mut outcome.failed, true);
        let pieces = pieces(&grouped, per_stmt);
        let deletes = sql_tables_to_visit(&self.tables, changes, &router)
            .await?
            .map(|every| Deletes {
                every,
                delete: changes.delete,
                exclusive: changes.exclusive,
            });
        if pieces.is_empty() && deletes.is_none() {
            return Ok(outcome);
        }
        let mut client = self.client().await?;
        let tables = tables_of(&grouped);
        let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
        self.tables.before_write(&names).await?;
        self.ensure_tables(&mut client, &tables).await?;
        let cache = router.fixed().is_some();
        if self
            .write_together(&mut client, rs, &pieces, cache, deletes.as_ref())
            .await?
        {
            for piece in &pieces {
                outcome.written.extend(piece.rows.iter().map(|r| r.key));
            }
        } else {
            // A row was refused and nothing is committed: write piece by piece, then the deletes of what
            // landed in one transaction of their own.
            let mut landed = Vec::new();
            {
                let mut alone = Alone {
                    sink: self,
                    client: &client,
                    rs,
                };
                for piece in pieces {
                    bisect(&mut alone, piece, false, &mut outcome, &mut landed).await?;
                }
            }
            if let Some(d) = &deletes {
                let placed = placed(&landed);
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| self.error(&e, None))?;
                self.delete_in(&tx, &self.key, d, &placed).await?;
                tx.commit().await.map_err(|e| self.error(&e, None))?;
            }
        }
        outcome.written.sort_unstable();
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::ColumnType;

    fn columns() -> Vec<Column> {
        ["id", "note", "updated_at"]
            .iter()
            .map(|n| Column {
                name: (*n).into(),
                ty: ColumnType::Text,
                type_name: "text".into(),
            })
            .collect()
    }

    #[test]
    fn upserts_number_parameters_row_by_row_and_guard_the_version() {
        let t = TableName::parse("shard_1.orders").unwrap();
        assert_eq!(
            insert_sql(&t, &columns(), 2, "id", WriteMode::Upsert, None),
            "INSERT INTO \"shard_1\".\"orders\" AS \"t\" (\"id\",\"note\",\"updated_at\") VALUES ($1,$2,$3),($4,$5,$6) \
             ON CONFLICT (\"id\") DO UPDATE SET \"note\"=EXCLUDED.\"note\",\"updated_at\"=EXCLUDED.\"updated_at\""
        );
        let v = Ident::new("updated_at").unwrap();
        let sql = insert_sql(&t, &columns(), 1, "id", WriteMode::Upsert, Some(&v));
        assert!(
            sql.ends_with(
                " WHERE \"t\".\"updated_at\" IS NULL OR \"t\".\"updated_at\" <= EXCLUDED.\"updated_at\""
            ),
            "{sql}"
        );
        let sql = insert_sql(&t, &columns(), 1, "id", WriteMode::InsertIgnore, Some(&v));
        assert!(sql.ends_with("ON CONFLICT (\"id\") DO NOTHING"), "{sql}");
    }
}
