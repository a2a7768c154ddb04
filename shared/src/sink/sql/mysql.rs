//! SQL table sink for MySQL / MariaDB: one multi-row `INSERT … ON DUPLICATE KEY UPDATE` per target table
//! and batch over the binary protocol, split only where the 65 535-placeholder limit demands it.
//!
//! - One table, one statement: the batch is written by that one statement (its own transaction), the
//!   statement staying prepared across batches.
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

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use tokio::sync::OnceCell;
use tracing::info;

use super::{bisect, check_version, group, pieces, placed, tables_of, Deletes, Piece, WriteAlone};
use crate::job::{
    DbUrl, Engine, Ident, JobSpec, SourceSpec, TableName, TableRoute, TargetSpec, WriteMode,
};
use crate::sink::create::{
    mysql_body, mysql_source_columns, pg_source_columns, server_of, url_database, KnownTables,
};
use crate::sink::route::Router;
use crate::sink::{
    deletions, sql_tables_to_read, sql_tables_to_visit, Changes, OpenError, Sink, SinkError,
    Tables, WriteOutcome,
};
use crate::sql::{
    mysql_error_text, mysql_is_row_error, mysql_is_transient, mysql_pool, quote, quote_table,
};
use crate::value::{Column, ColumnType, Row, RowSet, Value};

/// MySQL's limit of placeholders in one prepared statement.
const MAX_PLACEHOLDERS: usize = 65_535;

pub struct MySqlSink {
    pool: mysql_async::Pool,
    route: TableRoute,
    write: WriteMode,
    /// `source.version`: an existing row is replaced only by a row whose version is not older.
    version: Option<Ident>,
    /// `create = true`: how to create a missing table, and the tables known to exist.
    create: Option<Creator>,
    /// Records each table before the first write to it; lists every table for deletes.
    tables: Tables,
}

/// Creates missing target tables (`[target] create = true`), once per table and process; many consumers
/// racing on one table are safe because the statement is `CREATE TABLE IF NOT EXISTS`.
struct Creator {
    source: SourceSpec,
    /// The source is on the target's server: `LIKE` can copy the table as it is.
    same_server: bool,
    how: OnceCell<CreateHow>,
    created: KnownTables,
}

/// What follows `CREATE TABLE IF NOT EXISTS t`.
enum CreateHow {
    /// ` LIKE db.src`: every column, index and option of the source (same server, every column read).
    Like(String),
    /// ` (cols…, PRIMARY KEY (key)) …`: the columns read, with the source's own column types.
    Columns(String),
}

impl MySqlSink {
    /// A sink for the job's `[target]` (which must be `kind = "sql"` on MySQL). Connects to nothing yet.
    pub fn new(job: &JobSpec, max_connections: usize) -> Result<Self, OpenError> {
        let TargetSpec::Sql(t) = &job.target else {
            return Err(OpenError("not a SQL target".into()));
        };
        Ok(Self {
            pool: mysql_pool(&t.url, max_connections).map_err(OpenError)?,
            route: t.table.clone(),
            write: t.write,
            version: job.source.version.clone(),
            create: t.create.then(|| Creator {
                same_server: same_mysql_server(&job.source.url, &t.url),
                source: job.source.clone(),
                how: OnceCell::new(),
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

    /// How to create a missing table, worked out once from the source.
    async fn create_how<'c>(&self, creator: &'c Creator) -> Result<&'c CreateHow, SinkError> {
        creator
            .how
            .get_or_try_init(|| async {
                let source = &creator.source;
                if source.url.engine == Engine::Postgres {
                    let columns = pg_source_columns(source).await?;
                    return mysql_body(&columns, Engine::Postgres, &source.key)
                        .map(CreateHow::Columns)
                        .map_err(|e| SinkError::Batch(format!("target.create: {e}")));
                }
                let database = source
                    .table
                    .schema
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .or_else(|| url_database(source.url.expose()));
                if creator.same_server && source.columns.is_none() {
                    let qualified = match &database {
                        Some(db) => format!(
                            "`{}`.{}",
                            db.replace('`', "``"),
                            quote(Engine::Mysql, &source.table.table)
                        ),
                        None => quote_table(Engine::Mysql, &source.table),
                    };
                    return Ok(CreateHow::Like(format!(" LIKE {qualified}")));
                }
                let columns = mysql_source_columns(source).await?;
                mysql_body(&columns, Engine::Mysql, &source.key)
                    .map(CreateHow::Columns)
                    .map_err(|e| SinkError::Batch(format!("target.create: {e}")))
            })
            .await
    }

    /// Create those of `tables` not known to exist. DDL commits implicitly in MySQL, so this runs before
    /// the batch's transaction, never inside it.
    async fn ensure_tables(&self, tables: &[&TableName]) -> Result<(), SinkError> {
        let Some(creator) = &self.create else {
            return Ok(());
        };
        let missing = creator.created.missing(tables);
        if missing.is_empty() {
            return Ok(());
        }
        let how = self.create_how(creator).await?;
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| self.error(&e, None))?;
        for table in missing {
            let sql = match how {
                CreateHow::Like(tail) | CreateHow::Columns(tail) => format!(
                    "CREATE TABLE IF NOT EXISTS {}{tail}",
                    quote_table(Engine::Mysql, table)
                ),
            };
            conn.query_drop(sql).await.map_err(|e| {
                let e = self.error(&e, Some(table));
                match e {
                    SinkError::Batch(m) => SinkError::Batch(format!("creating it: {m}")),
                    other => other,
                }
            })?;
            info!(table = %table, "target table created (or already there)");
            creator.created.insert(table);
        }
        Ok(())
    }

    fn router(&self, columns: &[Column]) -> Result<Router, SinkError> {
        Router::new(&self.route, columns).map_err(SinkError::Batch)
    }

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

    fn piece_sql(&self, rs: &RowSet, piece: &Piece<'_>) -> String {
        let key = &rs.columns[rs.key_index].name;
        self.insert_sql(piece.table, &rs.columns, key, piece.rows.len())
    }

    /// Write every piece and run the batch's deletes, all in one transaction (one statement alone needs
    /// none). Returns the pieces written and those the server refused for a row's values; the others and
    /// the deletes (of the written keys only) are committed when this returns `Ok`.
    async fn write_pieces<'a>(
        &self,
        rs: &RowSet,
        pieces: Vec<Piece<'a>>,
        deletes: Option<&Deletes<'_>>,
    ) -> Result<(Vec<Piece<'a>>, Vec<Piece<'a>>), SinkError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| self.error(&e, None))?;
        let (mut ok, mut refused) = (Vec::new(), Vec::new());
        if pieces.len() == 1 && deletes.is_none() {
            let piece = pieces.into_iter().next().expect("one piece");
            match conn
                .exec_drop(self.piece_sql(rs, &piece), params(&piece.rows))
                .await
            {
                Ok(()) => ok.push(piece),
                Err(e) if mysql_is_row_error(&e) => refused.push(piece),
                Err(e) => return Err(self.error(&e, Some(piece.table))),
            }
            return Ok((ok, refused));
        }
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| self.error(&e, None))?;
        for piece in pieces {
            match tx
                .exec_drop(self.piece_sql(rs, &piece), params(&piece.rows))
                .await
            {
                Ok(()) => ok.push(piece),
                // InnoDB rolled back this statement only: the transaction goes on without it.
                Err(e) if mysql_is_row_error(&e) => refused.push(piece),
                Err(e) => return Err(self.error(&e, Some(piece.table))),
            }
        }
        if let Some(d) = deletes {
            self.delete_in(&mut tx, rs, d, &ok).await?;
        }
        tx.commit().await.map_err(|e| self.error(&e, None))?;
        Ok((ok, refused))
    }

    /// Run `d`'s deletes in `tx`, the written keys being those of `written`.
    async fn delete_in(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        rs: &RowSet,
        d: &Deletes<'_>,
        written: &[Piece<'_>],
    ) -> Result<(), SinkError> {
        let placed = placed(written);
        let key = quote(
            Engine::Mysql,
            &Ident::new(&rs.columns[rs.key_index].name).map_err(SinkError::Batch)?,
        );
        for (table, keys) in deletions(&d.every, d.delete, &placed, d.exclusive) {
            for chunk in keys.chunks(MAX_PLACEHOLDERS) {
                let sql = format!(
                    "DELETE FROM {} WHERE {key} IN ({})",
                    quote_table(Engine::Mysql, &table),
                    vec!["?"; chunk.len()].join(",")
                );
                match tx.exec_drop(sql, chunk.to_vec()).await {
                    Ok(()) => {}
                    // A listed table that does not exist holds no row: nothing to delete there.
                    Err(mysql_async::Error::Server(e)) if e.code == 1146 => break,
                    Err(e) => return Err(self.error(&e, Some(&table))),
                }
            }
        }
        Ok(())
    }

    /// After bisection wrote `written` outside the batch's transaction: remove those keys from every other
    /// table, in a transaction of its own.
    async fn delete_moved(
        &self,
        rs: &RowSet,
        d: &Deletes<'_>,
        written: &[Piece<'_>],
    ) -> Result<(), SinkError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| self.error(&e, None))?;
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| self.error(&e, None))?;
        let moved = Deletes {
            every: d.every.clone(),
            delete: &[],
            exclusive: true,
        };
        self.delete_in(&mut tx, rs, &moved, written).await?;
        tx.commit().await.map_err(|e| self.error(&e, None))
    }

    /// Every row of `table` whose `key` is in `first..=last`, all columns, ascending by key; `None` when
    /// the table does not exist (a listed table that holds nothing).
    async fn read_table(
        &self,
        conn: &mut mysql_async::Conn,
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
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => return Ok(None),
            Err(e) => return Err(self.error(&e, Some(table))),
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
            .map_err(|e| self.error(&e, Some(table)))?;
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

    fn error(&self, e: &mysql_async::Error, table: Option<&TableName>) -> SinkError {
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
}

/// Writes pieces on their own connection, one autocommitted statement each, for [`bisect`].
struct Alone<'s> {
    sink: &'s MySqlSink,
    conn: mysql_async::Conn,
    rs: &'s RowSet,
}

#[async_trait]
impl WriteAlone for Alone<'_> {
    async fn write_alone(
        &mut self,
        table: &TableName,
        rows: &[&Row],
    ) -> Result<Result<(), String>, SinkError> {
        let key = &self.rs.columns[self.rs.key_index].name;
        let sql = self
            .sink
            .insert_sql(table, &self.rs.columns, key, rows.len());
        match self.conn.exec_drop(sql, params(rows)).await {
            Ok(()) => Ok(Ok(())),
            Err(e) if mysql_is_row_error(&e) => Ok(Err(mysql_error_text(&e))),
            Err(e) => Err(self.sink.error(&e, Some(table))),
        }
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
fn same_mysql_server(a: &DbUrl, b: &DbUrl) -> bool {
    a.engine == Engine::Mysql
        && b.engine == Engine::Mysql
        && server_of(a.expose(), 3306).is_some()
        && server_of(a.expose(), 3306) == server_of(b.expose(), 3306)
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

#[async_trait]
impl Sink for MySqlSink {
    async fn prepare(&self, columns: &[Column]) -> Result<(), SinkError> {
        let router = self.router(columns)?;
        if let Some(why) = unmappable(columns) {
            return Err(SinkError::Batch(why));
        }
        check_version(self.version.as_ref(), columns)?;
        if let Some(creator) = &self.create {
            // The tables are created when rows are first routed to them; check now that they can be.
            self.create_how(creator).await?;
            return Ok(());
        }
        let Some(tables) = router.known_tables() else {
            // Routed by value: the tables are known only when rows are routed to them.
            return Ok(());
        };
        let list = columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "``")))
            .collect::<Vec<_>>()
            .join(", ");
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| self.error(&e, None))?;
        for table in &tables {
            let sql = format!(
                "SELECT {list} FROM {} WHERE 1 = 0",
                quote_table(Engine::Mysql, table)
            );
            conn.prep(sql).await.map_err(|e| {
                SinkError::Batch(format!("target table {table}: {}", mysql_error_text(&e)))
            })?;
        }
        Ok(())
    }

    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<(String, RowSet)>, SinkError> {
        let tables = sql_tables_to_read(&self.tables, &self.route).await?;
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| self.error(&e, None))?;
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            if let Some(rs) = self.read_table(&mut conn, &table, key, first, last).await? {
                out.push((table.to_string(), rs));
            }
        }
        Ok(out)
    }

    async fn apply(&self, changes: &Changes<'_>) -> Result<WriteOutcome, SinkError> {
        let rs = changes.rows;
        let router = self.router(&rs.columns)?;
        let mut outcome = WriteOutcome::default();
        let pg_free: Vec<Row>;
        let rs = if rs.rows.iter().any(|r| pg_only(rs, r).is_some()) {
            pg_free = rs
                .rows
                .iter()
                .filter(|r| match pg_only(rs, r) {
                    Some(reason) => {
                        outcome.failed.push((r.key, reason));
                        false
                    }
                    None => true,
                })
                .cloned()
                .collect();
            &RowSet {
                columns: rs.columns.clone(),
                key_index: rs.key_index,
                rows: pg_free,
            }
        } else {
            rs
        };
        let per_stmt = (MAX_PLACEHOLDERS / rs.columns.len().max(1)).max(1);
        let grouped = group(&router, rs, &mut outcome.failed, false);
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
        let tables = tables_of(&grouped);
        let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
        self.tables.before_write(&names).await?;
        self.ensure_tables(&tables).await?;
        let (ok, refused) = self.write_pieces(rs, pieces, deletes.as_ref()).await?;
        for piece in &ok {
            outcome.written.extend(piece.rows.iter().map(|r| r.key));
        }
        let mut landed = Vec::new();
        if !refused.is_empty() {
            let conn = self
                .pool
                .get_conn()
                .await
                .map_err(|e| self.error(&e, None))?;
            let mut alone = Alone {
                sink: self,
                conn,
                rs,
            };
            for piece in refused {
                bisect(&mut alone, piece, true, &mut outcome, &mut landed).await?;
            }
        }
        if let Some(d) = deletes
            .as_ref()
            .filter(|d| d.exclusive && !landed.is_empty())
        {
            self.delete_moved(rs, d, &landed).await?;
        }
        outcome.written.sort_unstable();
        Ok(outcome)
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
