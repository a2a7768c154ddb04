//! The PostgreSQL dialect of the SQL sink ([`super::SqlSink`], whose batch logic is shared): one multi-row `INSERT … VALUES … ON CONFLICT (key) DO UPDATE` per target
//! table and batch, in binary format, values encoded for the target column's type ([`crate::pg`]).
//!
//! - A `produce` batch ([`super::WriteHints::fresh`]: its keys are expected to be new) is written by a
//!   binary `COPY … FROM STDIN` straight into the table, which the server inserts faster than the
//!   upsert. Before it, the one-row upsert is prepared: its parameters give the column types and its
//!   `ON CONFLICT (key)` proves the unique index, so a `COPY` can never add a second row for a key. A
//!   `COPY` refused for any reason but a transient one (a key already there — a redelivery, a producer
//!   re-run —, a bad value, a constraint, a target `COPY` cannot write) writes nothing; the piece is then
//!   upserted as below, which keeps the version guard, isolates a bad row and reports the rest. Inside a transaction the `COPY` runs under a savepoint, so its refusal does not
//!   abort the batch.
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
use deadpool_postgres::GenericClient;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Statement;
use tracing::debug;

use super::{Dialect, SqlSink, WriteHints};
use crate::job::{Engine, Ident, JobSpec, SourceSpec, SqlTarget, TableName, WriteMode};
use crate::pg::{can_encode, pg_error_text, pg_is_row_error, pg_is_transient, pg_pool, PgParam};
use crate::sink::create::{
    mysql_source_columns, pg_body, pg_source_columns, server_of, url_database,
};
use crate::sink::{OpenError, SinkError};
use crate::sql::{quote, quote_table};
use crate::value::{Column, Row, RowSet, Value};

/// The protocol's limit of parameters in one statement.
const MAX_PARAMS: usize = 65_535;

/// The SQL sink on PostgreSQL.
pub type PgSink = SqlSink<Postgres>;

/// PostgreSQL as a [`Dialect`]: `ON CONFLICT (key) DO UPDATE` upserts in binary format, values encoded for
/// the target column's type; a refused statement aborts the transaction; tables created under an advisory
/// lock.
pub struct Postgres {
    pool: deadpool_postgres::Pool,
    write: WriteMode,
    /// `source.key`: the conflict target (the target table needs a unique index or primary key on it).
    key: String,
    version: Option<Ident>,
}

/// The PostgreSQL type name of a column read from PostgreSQL.
fn pg_type_name(c: &Column) -> Option<&str> {
    c.type_name.strip_suffix(" (PostgreSQL)")
}

fn error(e: &tokio_postgres::Error, table: Option<&TableName>) -> SinkError {
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

impl Postgres {
    /// Prepare the upsert of `rows` rows into `table` (kept prepared on the connection with `cache`) and
    /// check that every column can go into the target's column.
    async fn statement<C: GenericClient>(
        &self,
        client: &C,
        columns: &[Column],
        table: &TableName,
        rows: usize,
        cache: bool,
    ) -> Result<Statement, SinkError> {
        let sql = insert_sql(
            table,
            columns,
            rows,
            &self.key,
            self.write,
            self.version.as_ref(),
        );
        let stmt = if cache {
            client.prepare_cached(&sql).await
        } else {
            client.prepare(&sql).await
        }
        .map_err(|e| error(&e, Some(table)))?;
        for (column, target) in columns.iter().zip(stmt.params()) {
            can_encode(column.ty, pg_type_name(column), target).map_err(|why| {
                SinkError::Batch(format!(
                    "table {table}: column `{}` ({}): {why}",
                    column.name, column.type_name
                ))
            })?;
        }
        Ok(stmt)
    }

    /// Upsert `rows` of `table` on `client` (a connection or a transaction).
    async fn run<C: GenericClient>(
        &self,
        client: &C,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        cache: bool,
    ) -> Result<Result<(), String>, SinkError> {
        let stmt = self
            .statement(client, &rs.columns, table, rows.len(), cache)
            .await?;
        match client.execute_raw(&stmt, params(rs, rows)).await {
            Ok(_) => Ok(Ok(())),
            Err(e) if pg_is_row_error(&e) => {
                Ok(Err(format!("table {table}: {}", pg_error_text(&e))))
            }
            Err(e) => Err(error(&e, Some(table))),
        }
    }
}

impl Postgres {
    /// The types of `table`'s columns to bind (the parameters of its one-row upsert, which proves too that
    /// the key has the unique index `ON CONFLICT` needs, so a `COPY` cannot add a second row of a key).
    async fn copy_types<C: GenericClient>(
        &self,
        client: &C,
        columns: &[Column],
        table: &TableName,
        cache: bool,
    ) -> Result<Vec<Type>, SinkError> {
        let upsert = self.statement(client, columns, table, 1, cache).await?;
        Ok(upsert.params().to_vec())
    }
}

/// The binary `COPY` of `columns` into `table`, prepared (kept on the connection with `cache`).
async fn prepare_copy<C: GenericClient>(
    client: &C,
    table: &TableName,
    columns: &[Column],
    cache: bool,
) -> Result<Statement, tokio_postgres::Error> {
    let sql = copy_sql(table, columns);
    if cache {
        client.prepare_cached(&sql).await
    } else {
        client.prepare(&sql).await
    }
}

/// Stream `rows` into an open binary `COPY` and finish it. An error leaves the `COPY` aborted (nothing of
/// it written) and tells why.
async fn copy_rows(
    sink: tokio_postgres::CopyInSink<bytes::Bytes>,
    types: &[Type],
    rs: &RowSet,
    rows: &[&Row],
) -> Result<(), tokio_postgres::Error> {
    let writer = BinaryCopyInWriter::new(sink, types);
    futures::pin_mut!(writer);
    for row in rows {
        let values = params(rs, std::slice::from_ref(row));
        writer.as_mut().write_raw(values).await?;
    }
    writer.finish().await.map(drop)
}

/// What a bulk `COPY` attempt came to.
enum Copied {
    Written,
    /// A key exists already or a row was refused: nothing of the `COPY` was written; upsert instead.
    Upsert,
}

fn copied(
    result: Result<(), tokio_postgres::Error>,
    table: &TableName,
) -> Result<Copied, SinkError> {
    match result {
        Ok(()) => Ok(Copied::Written),
        // A key already there, a bad value, a constraint — or a target `COPY` cannot write (a view): the
        // upsert finds out which, as it did before `COPY`.
        Err(e) if !pg_is_transient(&e) => {
            debug!(table = %table, reason = %pg_error_text(&e), "COPY refused: upserting the piece instead");
            Ok(Copied::Upsert)
        }
        Err(e) => Err(error(&e, Some(table))),
    }
}

#[async_trait]
impl Dialect for Postgres {
    type Conn = deadpool_postgres::Object;
    type Tx<'c> = deadpool_postgres::Transaction<'c>;
    const MAX_PARAMS: usize = MAX_PARAMS;
    /// `ON CONFLICT DO UPDATE` cannot affect a row twice in one statement.
    const LAST_WINS: bool = true;
    const STATEMENT_ROLLBACK: bool = false;
    /// PostgreSQL 15 pays for each `COPY` into a table a cost that grows with the square of its rows up to
    /// 1 000: every buffered row's slot notes the table's descriptor in the resource owner, whose hash
    /// holds one key a thousand times, and forgets it at the end. By hand (the benchmark's million rows,
    /// producer and two consumers): 1 000-row batches cost PostgreSQL 3.3 CPU-seconds, 4 000-row ones
    /// 2.0–2.4, 8 000-row ones 1.7. pgloader's `COPY`s are 25 000 rows.
    const MERGES_PRODUCE: bool = true;

    fn open(job: &JobSpec, target: &SqlTarget, max_connections: usize) -> Result<Self, OpenError> {
        Ok(Self {
            pool: pg_pool(&target.url, max_connections).map_err(OpenError)?,
            write: target.write,
            key: job.source.key.as_str().to_owned(),
            version: job.source.version.clone(),
        })
    }

    /// The source table is in the target's database.
    fn same_place(source: &SourceSpec, target: &SqlTarget) -> bool {
        source.url.engine == Engine::Postgres
            && server_of(source.url.expose(), 5432).is_some()
            && server_of(source.url.expose(), 5432) == server_of(target.url.expose(), 5432)
            && url_database(source.url.expose()) == url_database(target.url.expose())
    }

    fn key_column<'a>(&'a self, _rs: &'a RowSet) -> &'a str {
        &self.key
    }

    async fn connect(&self) -> Result<Self::Conn, SinkError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => error(&e, None),
            other => SinkError::Transient(format!("PostgreSQL: {other}")),
        })
    }

    async fn begin<'c>(&self, conn: &'c mut Self::Conn) -> Result<Self::Tx<'c>, SinkError> {
        conn.transaction().await.map_err(|e| error(&e, None))
    }

    async fn commit(&self, tx: Self::Tx<'_>) -> Result<(), SinkError> {
        tx.commit().await.map_err(|e| error(&e, None))
    }

    async fn rollback(&self, tx: Self::Tx<'_>) -> Result<(), SinkError> {
        tx.rollback().await.map_err(|e| error(&e, None))
    }

    /// `fresh`: a binary `COPY` straight into the table, autocommitted; the upsert when it is refused.
    async fn upsert(
        &self,
        conn: &mut Self::Conn,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        hints: WriteHints,
    ) -> Result<Result<(), String>, SinkError> {
        if hints.fresh {
            let types = self
                .copy_types(&*conn, &rs.columns, table, hints.cache)
                .await?;
            let attempt = async {
                let copy = prepare_copy(&*conn, table, &rs.columns, hints.cache).await?;
                let sink = conn.copy_in(&copy).await?;
                copy_rows(sink, &types, rs, rows).await
            }
            .await;
            if let Copied::Written = copied(attempt, table)? {
                return Ok(Ok(()));
            }
        }
        self.run(&*conn, rs, table, rows, hints.cache).await
    }

    /// `fresh`: a binary `COPY` straight into the table under a savepoint; when it is refused, back to the
    /// savepoint (the transaction goes on) and the upsert.
    async fn upsert_in(
        &self,
        tx: &mut Self::Tx<'_>,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        hints: WriteHints,
    ) -> Result<Result<(), String>, SinkError> {
        if hints.fresh {
            let types = self
                .copy_types(&*tx, &rs.columns, table, hints.cache)
                .await?;
            tx.batch_execute("SAVEPOINT bitmig_copy")
                .await
                .map_err(|e| error(&e, Some(table)))?;
            let attempt = async {
                let copy = prepare_copy(&*tx, table, &rs.columns, hints.cache).await?;
                let sink = tx.copy_in(&copy).await?;
                copy_rows(sink, &types, rs, rows).await
            }
            .await;
            let done = copied(attempt, table)?;
            let after = match done {
                Copied::Written => "RELEASE SAVEPOINT bitmig_copy",
                Copied::Upsert => {
                    "ROLLBACK TO SAVEPOINT bitmig_copy; RELEASE SAVEPOINT bitmig_copy"
                }
            };
            tx.batch_execute(after)
                .await
                .map_err(|e| error(&e, Some(table)))?;
            if let Copied::Written = done {
                return Ok(Ok(()));
            }
        }
        self.run(&*tx, rs, table, rows, hints.cache).await
    }

    /// Listed tables that do not exist are found first (an error would abort the transaction).
    async fn delete_in(
        &self,
        tx: &mut Self::Tx<'_>,
        key: &str,
        todo: &[(TableName, Vec<u64>)],
    ) -> Result<(), SinkError> {
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
            .map_err(|e| error(&e, None))?;
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
            .map_err(|e| error(&e, Some(table)))?;
        }
        Ok(())
    }

    /// ` (LIKE src INCLUDING ALL)` when the source table is in this database and every column is read,
    /// otherwise the body from the source's catalog.
    async fn create_tail(
        &self,
        source: &SourceSpec,
        same_place: bool,
    ) -> Result<String, SinkError> {
        if same_place && source.columns.is_none() {
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
    }

    /// Consumers racing on one table serialise on a transaction-scoped advisory lock keyed by its name, so
    /// `CREATE TABLE IF NOT EXISTS` never meets the catalog race PostgreSQL has between two concurrent ones.
    async fn table_exists(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
    ) -> Result<bool, SinkError> {
        crate::pg::pg_table_exists(conn, table)
            .await
            .map_err(|e| error(&e, Some(table)))
    }

    async fn create_table(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
        tail: &str,
    ) -> Result<(), SinkError> {
        let qualified = quote_table(Engine::Postgres, table);
        let result = async {
            let tx = conn.transaction().await?;
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
            Ok(()) => Ok(()),
            // Created meanwhile by a session that did not take the lock: it exists.
            Err(e)
                if e.code()
                    .is_some_and(|c| matches!(c.code(), "42P07" | "23505")) =>
            {
                Ok(())
            }
            Err(e) => Err(error(&e, Some(table))),
        }
    }

    /// A one-row statement: the server reports every target column's type.
    async fn read_table(
        &self,
        conn: &mut Self::Conn,
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
        let stmt = match conn.prepare(&sql).await {
            Ok(s) => s,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                return Ok(None)
            }
            Err(e) => return Err(error(&e, Some(table))),
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
        let raw = conn
            .query(&stmt, &[&lo, &hi])
            .await
            .map_err(|e| error(&e, Some(table)))?;
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let mut values = Vec::with_capacity(types.len());
            for (i, ty) in types.iter().enumerate() {
                let crate::pg::RawPg(bytes) = r
                    .try_get::<_, crate::pg::RawPg<'_>>(i)
                    .map_err(|e| error(&e, Some(table)))?;
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

    async fn probe(
        &self,
        conn: &mut Self::Conn,
        columns: &[Column],
        table: &TableName,
    ) -> Result<(), SinkError> {
        self.statement(&*conn, columns, table, 1, false)
            .await
            .map(drop)
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

/// The binary `COPY` of `columns` into `table`, in the order [`copy_rows`] writes them.
fn copy_sql(table: &TableName, columns: &[Column]) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
        .collect();
    format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        quote_table(Engine::Postgres, table),
        cols.join(",")
    )
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
