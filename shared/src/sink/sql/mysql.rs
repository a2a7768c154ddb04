//! The MySQL / MariaDB dialect of the SQL sink ([`super::SqlSink`], whose batch logic is shared): one multi-row `INSERT … ON DUPLICATE KEY UPDATE` per target table
//! and batch over the binary protocol, split only where the 65 535-placeholder limit demands it.
//!
//! - One table, one statement: the batch is written by that one statement (its own transaction), the
//!   statement staying prepared across batches.
//! - A `produce` batch (keys expected new) goes by `LOAD DATA LOCAL INFILE` ([`super::mysql_infile`]) in a
//!   transaction, or under a savepoint of the batch's, kept only when every row was inserted without a
//!   warning; otherwise rolled back and upserted as above.
//! - A `produce` batch whose source table is on the same server is copied by the server itself
//!   (`INSERT … SELECT`, [`super::mysql_within`]), kept only when every id landed without a warning;
//!   otherwise the batch is read and written as below.
//! - Routed tables (`orders_{user_id % 16}`, `[target.ranges]`, a database part): the batch's rows are
//!   grouped by table ([`crate::sink::route`]) and every table's statements run in **one transaction** on one
//!   connection — a transaction spans databases on one server. A row whose route cannot be computed is
//!   `failed` with the reason; the others still land.
//! - `source.version`: `ON DUPLICATE KEY UPDATE c = IF(<stored version is not newer>, VALUES(c), c), …`,
//!   the version column assigned last, so a late redelivery or a slow consumer never replaces a newer row
//!   (the row still counts as written: the target holds that id's newest version).
//! - `create = true`: a table is created when a row is first routed to it, with
//!   `CREATE TABLE IF NOT EXISTS t LIKE src` when the source is on the same server and every column is read,
//!   otherwise with the columns read and their source types from `information_schema` (from a PostgreSQL
//!   source: the mapped types of [`crate::sink::create`]), the key as primary key. A missing database is not
//!   created (that is the operator's call).
//! - A statement the server refuses for a row's values is rolled back on its own (InnoDB's statement
//!   rollback), the rest of the transaction commits, and the refused piece is bisected until the bad row is
//!   isolated in `failed`.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use tracing::{debug, info};

use super::mysql_infile::{self, Infile};
use super::mysql_within::Within;
use super::{Dialect, SqlSink, WriteHints};
use crate::ids::IdRange;
use crate::job::{DbUrl, Engine, Ident, JobSpec, SourceSpec, SqlTarget, TableName, WriteMode};
use crate::sink::create::{
    mysql_body, mysql_source_columns, pg_source_columns, server_of, url_database,
};
use crate::sink::{OpenError, SinkError};
use crate::sql::{
    mysql_error_text, mysql_is_row_error, mysql_is_transient, mysql_pool, quote, quote_table,
};
use crate::value::{Column, ColumnType, Row, RowSet, Value};

/// MySQL's limit of placeholders in one prepared statement.
const MAX_PLACEHOLDERS: usize = 65_535;
/// Statements with at most this many placeholders stay prepared on their connection whatever their shape.
/// A prepared statement keeps a definition per placeholder on the client (hundreds of bytes each), and the
/// connection caches 128 statements: a busy table's catch-ups write every number of rows from 1 to a batch,
/// and a cache of 8 000-placeholder upserts of each size held over 100 MB per consumer. Larger statements
/// stay prepared only in the shape of a full batch (the copy's), and are closed after use otherwise.
const CACHED_PARAMS: usize = 256;

/// The SQL sink on MySQL / MariaDB.
pub type MySqlSink = SqlSink<MySql>;

/// MySQL / MariaDB as a [`Dialect`]: `ON DUPLICATE KEY UPDATE` upserts over the binary protocol (mysql_async
/// keeps each statement prepared on its connection), InnoDB's statement rollback, `CREATE TABLE IF NOT
/// EXISTS` (safe when consumers race, as it is).
pub struct MySql {
    pool: mysql_async::Pool,
    write: WriteMode,
    version: Option<Ident>,
    /// The job's batch size: upserts of this many rows stay prepared ([`CACHED_PARAMS`]).
    full_rows: usize,
    /// `produce` batches go by `LOAD DATA LOCAL INFILE` ([`mysql_infile`]) until the server refuses it.
    infile: AtomicBool,
    /// The source table is on this server: `produce` batches are copied by the server itself
    /// ([`mysql_within`]).
    within: Option<Within>,
}

impl MySql {
    fn insert_sql(&self, table: &TableName, columns: &[Column], key: &str, rows: usize) -> String {
        let cols: Vec<String> = columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "``")))
            .collect();
        let one = format!("({})", vec!["?"; columns.len()].join(","));
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ",
            quote_table(Engine::Mysql, table),
            cols.join(",")
        );
        sql.push_str(&vec![one.as_str(); rows].join(","));
        sql.push_str(" ON DUPLICATE KEY UPDATE ");
        sql.push_str(&update_clause(
            &cols,
            key,
            self.write,
            self.version.as_ref(),
        ));
        sql
    }

    /// Upsert `rows` of `table` on `q` (a connection or a transaction).
    async fn run<Q: Queryable + Send>(
        &self,
        q: &mut Q,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
    ) -> Result<Result<(), String>, SinkError> {
        let key = &rs.columns[rs.key_index].name;
        let sql = self.insert_sql(table, &rs.columns, key, rows.len());
        let per_stmt = (MAX_PLACEHOLDERS / rs.columns.len().max(1)).max(1);
        let keep = rows.len() == self.full_rows.min(per_stmt);
        match exec_shaped(q, sql, params(rows), keep).await {
            Ok(()) => Ok(Ok(())),
            // InnoDB rolled back this statement only.
            Err(e) if mysql_is_row_error(&e) => Ok(Err(mysql_error_text(&e))),
            Err(e) => Err(error(&e, Some(table))),
        }
    }

    /// A `produce` batch's `rows` by `LOAD DATA LOCAL INFILE` inside `tx`: `true` when every row was
    /// inserted without a warning (kept), `false` when it was not — a key that exists, a value the server
    /// adjusted, a server that refuses `LOCAL` — and the caller upserts instead. With `savepoint` the load
    /// is then rolled back to a savepoint taken before it (the transaction goes on); without, the caller
    /// rolls the whole transaction back. Only for rows that [`Self::may_load`].
    async fn load_in(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        savepoint: bool,
    ) -> Result<bool, SinkError> {
        if savepoint {
            tx.query_drop("SAVEPOINT bitmig_load")
                .await
                .map_err(|e| error(&e, Some(table)))?;
        }
        let file = Infile::register(mysql_infile::encode(rows));
        let cols: Vec<String> = rs
            .columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "``")))
            .collect();
        let sql = format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE {} CHARACTER SET utf8mb4 ({})",
            file.name(),
            quote_table(Engine::Mysql, table),
            cols.join(",")
        );
        let loaded = tx.query_drop(sql).await;
        drop(file);
        let kept = match loaded {
            Ok(()) => {
                let (inserted, warnings) = (tx.affected_rows(), tx.get_warnings());
                let kept = inserted == rows.len() as u64 && warnings == 0;
                if !kept && tracing::enabled!(tracing::Level::DEBUG) {
                    let first = first_warnings(tx).await;
                    debug!(
                        table = %table,
                        rows = rows.len(),
                        inserted,
                        warnings,
                        first = %first,
                        "LOAD DATA not clean: rolled back, upserting"
                    );
                }
                kept
            }
            Err(mysql_async::Error::Server(e)) if LOCAL_REFUSED.contains(&e.code) => {
                if self.infile.swap(false, Ordering::Relaxed) {
                    info!(
                        reason = %e.message,
                        "the target refuses LOAD DATA LOCAL INFILE (local_infile = OFF): produce batches \
                         are written by INSERT, which costs the server more"
                    );
                }
                false
            }
            Err(e) if mysql_is_transient(&e) => return Err(error(&e, Some(table))),
            Err(e) => {
                debug!(table = %table, error = %mysql_error_text(&e), "LOAD DATA refused: upserting");
                false
            }
        };
        if savepoint {
            let after = if kept {
                "RELEASE SAVEPOINT bitmig_load"
            } else {
                "ROLLBACK TO SAVEPOINT bitmig_load"
            };
            tx.query_drop(after)
                .await
                .map_err(|e| error(&e, Some(table)))?;
        }
        Ok(kept)
    }

    /// Whether rows of `rs` may go by `LOAD DATA`: the server has not refused it, and every column
    /// round-trips through text.
    fn may_load(&self, rs: &RowSet) -> bool {
        self.infile.load(Ordering::Relaxed) && mysql_infile::loadable(&rs.columns)
    }
}

/// The server's answers to `LOAD DATA LOCAL` when it does not allow it: MySQL's ER_NOT_ALLOWED_COMMAND and
/// ER_CLIENT_LOCAL_FILES_DISABLED, MariaDB's ER_LOAD_INFILE_CAPABILITY_DISABLED.
const LOCAL_REFUSED: [u16; 3] = [1148, 3948, 4166];

/// The server's first words on the statement just run (a duplicate key, a value it adjusted), for a debug
/// line; empty when it cannot say.
pub(super) async fn first_warnings(tx: &mut mysql_async::Transaction<'_>) -> String {
    let said: Vec<(String, u32, String)> =
        tx.query("SHOW WARNINGS LIMIT 3").await.unwrap_or_default();
    said.into_iter()
        .map(|(_, code, m)| format!("{code}: {m}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn error(e: &mysql_async::Error, table: Option<&TableName>) -> SinkError {
    let text = match table {
        Some(t) => format!("table {t}: {}", mysql_error_text(e)),
        None => mysql_error_text(e),
    };
    if mysql_is_transient(e) {
        SinkError::Transient(text)
    } else {
        SinkError::Batch(text)
    }
}

#[async_trait]
impl Dialect for MySql {
    type Conn = mysql_async::Conn;
    type Tx<'c> = mysql_async::Transaction<'c>;
    const MAX_PARAMS: usize = MAX_PLACEHOLDERS;
    const LAST_WINS: bool = false;
    const STATEMENT_ROLLBACK: bool = true;

    fn open(job: &JobSpec, target: &SqlTarget, max_connections: usize) -> Result<Self, OpenError> {
        Ok(Self {
            pool: mysql_pool(&target.url, max_connections).map_err(OpenError)?,
            write: target.write,
            version: job.source.version.clone(),
            full_rows: job.batch_size as usize,
            infile: AtomicBool::new(true),
            within: Within::new(job, target),
        })
    }

    fn same_place(source: &SourceSpec, target: &SqlTarget) -> bool {
        same_mysql_server(&source.url, &target.url)
    }

    fn copies_within(&self) -> bool {
        self.within.as_ref().is_some_and(Within::on)
    }

    async fn copy_within(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
        columns: &[Column],
        ranges: &[IdRange],
    ) -> Result<bool, SinkError> {
        match &self.within {
            Some(w) => w.copy(conn, table, columns, ranges).await,
            None => Ok(false),
        }
    }

    fn unmappable(&self, columns: &[Column]) -> Option<String> {
        unmappable(columns)
    }

    fn refuse_row(&self, rs: &RowSet, row: &Row) -> Option<String> {
        pg_only(rs, row)
    }

    fn key_column<'a>(&'a self, rs: &'a RowSet) -> &'a str {
        &rs.columns[rs.key_index].name
    }

    async fn connect(&self) -> Result<Self::Conn, SinkError> {
        self.pool.get_conn().await.map_err(|e| error(&e, None))
    }

    async fn begin<'c>(&self, conn: &'c mut Self::Conn) -> Result<Self::Tx<'c>, SinkError> {
        conn.start_transaction(TxOpts::default())
            .await
            .map_err(|e| error(&e, None))
    }

    async fn commit(&self, tx: Self::Tx<'_>) -> Result<(), SinkError> {
        tx.commit().await.map_err(|e| error(&e, None))
    }

    async fn rollback(&self, tx: Self::Tx<'_>) -> Result<(), SinkError> {
        tx.rollback().await.map_err(|e| error(&e, None))
    }

    /// `fresh`: `LOAD DATA LOCAL INFILE` in a transaction of its own; the upsert when it is not clean.
    async fn upsert(
        &self,
        conn: &mut Self::Conn,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        hints: WriteHints,
    ) -> Result<Result<(), String>, SinkError> {
        if hints.fresh && self.may_load(rs) {
            let mut tx = self.begin(conn).await?;
            if self.load_in(&mut tx, rs, table, rows, false).await? {
                self.commit(tx).await?;
                return Ok(Ok(()));
            }
            self.rollback(tx).await?;
        }
        self.run(conn, rs, table, rows).await
    }

    /// `fresh`: `LOAD DATA LOCAL INFILE` under a savepoint; the upsert when it is not clean.
    async fn upsert_in(
        &self,
        tx: &mut Self::Tx<'_>,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        hints: WriteHints,
    ) -> Result<Result<(), String>, SinkError> {
        if hints.fresh && self.may_load(rs) && self.load_in(tx, rs, table, rows, true).await? {
            return Ok(Ok(()));
        }
        self.run(tx, rs, table, rows).await
    }

    async fn delete_in(
        &self,
        tx: &mut Self::Tx<'_>,
        key: &str,
        todo: &[(TableName, Vec<u64>)],
    ) -> Result<(), SinkError> {
        let key = quote(Engine::Mysql, &Ident::new(key).map_err(SinkError::Batch)?);
        for (table, keys) in todo {
            for chunk in keys.chunks(MAX_PLACEHOLDERS) {
                let sql = format!(
                    "DELETE FROM {} WHERE {key} IN ({})",
                    quote_table(Engine::Mysql, table),
                    vec!["?"; chunk.len()].join(",")
                );
                match exec_shaped(tx, sql, chunk.to_vec(), false).await {
                    Ok(()) => {}
                    // A listed table that does not exist holds no row: nothing to delete there.
                    Err(mysql_async::Error::Server(e)) if e.code == 1146 => break,
                    Err(e) => return Err(error(&e, Some(table))),
                }
            }
        }
        Ok(())
    }

    /// ` LIKE db.src` (every column, index and option of the source) when the source is on this server and
    /// every column is read; otherwise ` (cols…, PRIMARY KEY (key)) …` with the source's column types.
    async fn create_tail(
        &self,
        source: &SourceSpec,
        same_place: bool,
    ) -> Result<String, SinkError> {
        if source.url.engine == Engine::Postgres {
            let columns = pg_source_columns(source).await?;
            return mysql_body(&columns, Engine::Postgres, &source.key)
                .map_err(|e| SinkError::Batch(format!("target.create: {e}")));
        }
        let database = source
            .table
            .schema
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .or_else(|| url_database(source.url.expose()));
        if same_place && source.columns.is_none() {
            let qualified = match &database {
                Some(db) => format!(
                    "`{}`.{}",
                    db.replace('`', "``"),
                    quote(Engine::Mysql, &source.table.table)
                ),
                None => quote_table(Engine::Mysql, &source.table),
            };
            return Ok(format!(" LIKE {qualified}"));
        }
        let columns = mysql_source_columns(source).await?;
        mysql_body(&columns, Engine::Mysql, &source.key)
            .map_err(|e| SinkError::Batch(format!("target.create: {e}")))
    }

    /// `CREATE TABLE IF NOT EXISTS`: many consumers racing on one table are safe. DDL commits implicitly,
    /// so this never runs inside a batch's transaction.
    async fn table_exists(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
    ) -> Result<bool, SinkError> {
        crate::sql::mysql_table_exists(conn, table)
            .await
            .map_err(|e| error(&e, Some(table)))
    }

    async fn create_table(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
        tail: &str,
    ) -> Result<(), SinkError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {}{tail}",
            quote_table(Engine::Mysql, table)
        );
        conn.query_drop(sql)
            .await
            .map_err(|e| error(&e, Some(table)))
    }

    async fn read_table(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
        key: &str,
        first: u64,
        last: u64,
    ) -> Result<Option<RowSet>, SinkError> {
        let k = format!("`{}`", key.replace('`', "``"));
        let sql = format!(
            "SELECT * FROM {} WHERE {k} BETWEEN ? AND ? ORDER BY {k}",
            quote_table(Engine::Mysql, table)
        );
        let stmt = match conn.prep(sql).await {
            Ok(s) => s,
            // ER_NO_SUCH_TABLE: a listed table that was never created holds nothing.
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => return Ok(None),
            Err(e) => return Err(error(&e, Some(table))),
        };
        let columns: Vec<Column> = stmt
            .columns()
            .iter()
            .map(crate::source::describe_mysql_column)
            .collect();
        let key_index = columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(key))
            .ok_or_else(|| SinkError::Batch(format!("table {table}: no key column `{key}`")))?;
        let raw: Vec<mysql_async::Row> = conn
            .exec(&stmt, (first, last))
            .await
            .map_err(|e| error(&e, Some(table)))?;
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let values: Vec<Value> = r
                .unwrap()
                .into_iter()
                .map(crate::source::from_mysql_value)
                .collect();
            if let Some(key) = values[key_index].as_key() {
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
        let list = columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "``")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {list} FROM {} WHERE 1 = 0",
            quote_table(Engine::Mysql, table)
        );
        conn.prep(sql).await.map_err(|e| {
            SinkError::Batch(format!("target table {table}: {}", mysql_error_text(&e)))
        })?;
        Ok(())
    }
}

/// The `ON DUPLICATE KEY UPDATE` assignments for quoted `cols`.
fn update_clause(cols: &[String], key: &str, write: WriteMode, version: Option<&Ident>) -> String {
    let key_q = format!("`{}`", key.replace('`', "``"));
    let updates: Vec<String> = match (write, version) {
        (WriteMode::Upsert, None) => cols
            .iter()
            .filter(|c| **c != key_q)
            .map(|c| format!("{c}=VALUES({c})"))
            .collect(),
        (WriteMode::Upsert, Some(version)) => {
            // MySQL evaluates these assignments left to right, each seeing the columns already
            // assigned: the version column goes last, so every test before it compares with the
            // stored version. A stored NULL version is older than any; an incoming NULL replaces only
            // a NULL. An equal version rewrites the row, so a redelivery stays idempotent.
            let v = quote(Engine::Mysql, version);
            let newer = format!("({v} IS NULL OR VALUES({v}) >= {v})");
            cols.iter()
                .filter(|c| **c != key_q && **c != v)
                .chain(std::iter::once(&v))
                .map(|c| format!("{c}=IF({newer},VALUES({c}),{c})"))
                .collect()
        }
        (WriteMode::InsertIgnore, _) => Vec::new(),
    };
    // Without updates, a no-op update keeps duplicates harmless while strict mode still refuses bad values
    // (INSERT IGNORE would silently truncate them).
    if updates.is_empty() {
        format!("{key_q}={key_q}")
    } else {
        updates.join(",")
    }
}

/// Why `row` cannot go to MySQL: a PostgreSQL value with no MySQL form (`infinity`, a date before year 1).
fn pg_only(rs: &RowSet, row: &Row) -> Option<String> {
    let at = row
        .values
        .iter()
        .position(|v| matches!(v, Value::PgRaw { .. }))?;
    let column = &rs.columns[at];
    Some(format!(
        "column `{}` ({}): a PostgreSQL value MySQL cannot hold (infinity, or a date before year 1)",
        column.name, column.type_name
    ))
}

/// Columns a MySQL table cannot hold, refused at start with the column named.
fn unmappable(columns: &[Column]) -> Option<String> {
    let c = columns
        .iter()
        .find(|c| matches!(c.ty, ColumnType::Array | ColumnType::PgNative))?;
    Some(format!(
        "column `{}` is {}, which MySQL cannot hold; leave it out with source.columns",
        c.name, c.type_name
    ))
}

/// Whether two MySQL URLs name the same server (host and port; the user may differ).
pub(crate) fn same_mysql_server(a: &DbUrl, b: &DbUrl) -> bool {
    a.engine == Engine::Mysql
        && b.engine == Engine::Mysql
        && server_of(a.expose(), 3306).is_some()
        && server_of(a.expose(), 3306) == server_of(b.expose(), 3306)
}

/// `exec_drop`, leaving the statement prepared on the connection only when it has at most
/// [`CACHED_PARAMS`] placeholders or `keep` (the shape of a full batch); otherwise it is closed after use.
async fn exec_shaped<Q: Queryable + Send, P: Into<mysql_async::Params> + Send>(
    q: &mut Q,
    sql: String,
    params: P,
    keep: bool,
) -> Result<(), mysql_async::Error> {
    let params: mysql_async::Params = params.into();
    let count = match &params {
        mysql_async::Params::Positional(v) => v.len(),
        mysql_async::Params::Named(m) => m.len(),
        mysql_async::Params::Empty => 0,
    };
    if keep || count <= CACHED_PARAMS {
        return q.exec_drop(sql, params).await;
    }
    let stmt = q.prep(sql).await?;
    let done = q.exec_drop(&stmt, params).await;
    let closed = q.close(stmt).await;
    done.and(closed)
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
        // PostgreSQL values: a boolean as TINYINT(1) 0/1, a UUID as its text (CHAR(36), MariaDB's UUID).
        Value::Bool(b) => M::Int(i64::from(*b)),
        Value::Uuid(u) => M::Bytes(crate::value::uuid_text(u).into_bytes()),
        // Rows holding one are failed before any statement is built (`pg_only`).
        Value::PgRaw { bytes, .. } => M::Bytes(bytes.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<String> {
        ["id", "note", "updated_at"]
            .iter()
            .map(|c| format!("`{c}`"))
            .collect()
    }

    #[test]
    fn upsert_replaces_every_column_but_the_key() {
        assert_eq!(
            update_clause(&cols(), "id", WriteMode::Upsert, None),
            "`note`=VALUES(`note`),`updated_at`=VALUES(`updated_at`)"
        );
        assert_eq!(
            update_clause(&cols(), "id", WriteMode::InsertIgnore, None),
            "`id`=`id`"
        );
    }

    #[test]
    fn the_version_guard_assigns_the_version_column_last() {
        let version = Ident::new("updated_at").unwrap();
        let mut reordered = cols();
        reordered.swap(1, 2); // the version column is not last in the table
        let sql = update_clause(&reordered, "id", WriteMode::Upsert, Some(&version));
        let newer = "(`updated_at` IS NULL OR VALUES(`updated_at`) >= `updated_at`)";
        assert_eq!(
            sql,
            format!(
                "`note`=IF({newer},VALUES(`note`),`note`),\
                 `updated_at`=IF({newer},VALUES(`updated_at`),`updated_at`)"
            )
        );
        assert_eq!(
            update_clause(&cols(), "id", WriteMode::InsertIgnore, Some(&version)),
            "`id`=`id`",
            "insert_ignore never replaces, whatever the version"
        );
    }
}
