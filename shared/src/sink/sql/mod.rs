//! SQL table sinks: the batch logic once ([`SqlSink`]), the SQL text, parameter encoding, error classes,
//! transactions and table creation per dialect ([`Dialect`]: [`mysql::MySql`], [`postgres::Postgres`]).
//!
//! Shared here, for every dialect: grouping a batch's rows by target table ([`group`], through the one route
//! resolver), chunking each table's rows under the dialect's bind limit ([`pieces`]), the tables a batch's
//! deletes visit (`bitmig:{JOB}:tables`), recording each table before the first write to it, creating
//! missing tables once per process (`create = true`), the version column check, the single-statement fast
//! path (one piece, no deletes: no transaction), writing every piece and the deletes in one transaction,
//! the bisection that isolates a row the server refuses ([`bisect`]) and the deletes of keys that moved
//! table meanwhile. A dialect says whether a refused statement leaves its transaction going (MySQL rolls
//! back one statement; PostgreSQL aborts the transaction, so everything is then written piece by piece).
//! A `produce` batch's pieces are written with [`WriteHints::fresh`]: a dialect may insert them by its
//! bulk path (PostgreSQL's binary `COPY`, MySQL's `LOAD DATA LOCAL INFILE`) and falls back to its upsert
//! by itself; bisection always upserts.
//! Further per-engine work (reading target rows by key range for verify) belongs in the dialect files.

pub mod mysql;
mod mysql_infile;
mod mysql_within;
pub mod postgres;

pub(crate) use mysql_infile::serve as serve_infile;

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tracing::info;

use super::create::KnownTables;
use super::route::Router;
use super::{
    deletions, sql_tables_to_visit, Changes, OpenError, Sink, SinkError, Tables, WriteOutcome,
};
use crate::job::{Ident, JobSpec, SourceSpec, SqlTarget, TableName, TableRoute, TargetSpec};
use crate::value::{Column, Row, RowSet};

/// Rows of one table, at most one statement's worth.
pub(crate) struct Piece<'a> {
    pub table: &'a TableName,
    pub rows: Vec<&'a Row>,
}

/// What a batch deletes: the tables to visit, the keys gone everywhere, whether written keys leave every
/// other table.
pub(crate) struct Deletes<'a> {
    pub every: Vec<TableName>,
    pub delete: &'a [u64],
    pub exclusive: bool,
}

/// The batch's rows by target table. A row whose route cannot be computed goes to `failed` with the reason.
/// One table keeps the batch's order. With `last_wins`, a key repeated within a table keeps only its last
/// row (PostgreSQL's `ON CONFLICT DO UPDATE` cannot touch a row twice in one statement).
pub(crate) fn group<'a>(
    router: &Router,
    rs: &'a RowSet,
    failed: &mut Vec<(u64, String)>,
    last_wins: bool,
) -> Vec<(TableName, Vec<&'a Row>)> {
    let mut grouped: Vec<(TableName, Vec<&Row>)> = match router.fixed() {
        Some(table) => vec![(table.clone(), rs.rows.iter().collect())],
        None => {
            let mut by_table: BTreeMap<TableName, Vec<&Row>> = BTreeMap::new();
            for row in &rs.rows {
                match router.resolve(row) {
                    Ok(table) => by_table.entry(table).or_default().push(row),
                    Err(reason) => failed.push((row.key, reason)),
                }
            }
            by_table.into_iter().collect()
        }
    };
    if last_wins {
        for (_, rows) in &mut grouped {
            // Rows arrive ascending by key: a repeated key is adjacent. Keep its last row.
            if rows.windows(2).any(|w| w[0].key == w[1].key) {
                rows.reverse();
                rows.dedup_by_key(|r| r.key);
                rows.reverse();
            }
        }
    }
    grouped
}

/// Each table's rows in statements of at most `per_stmt` rows; empty tables left out.
pub(crate) fn pieces<'a>(
    grouped: &'a [(TableName, Vec<&'a Row>)],
    per_stmt: usize,
) -> Vec<Piece<'a>> {
    grouped
        .iter()
        .flat_map(|(table, rows)| {
            rows.chunks(per_stmt.max(1)).map(move |chunk| Piece {
                table,
                rows: chunk.to_vec(),
            })
        })
        .filter(|p| !p.rows.is_empty())
        .collect()
}

/// The tables that receive rows, once each.
pub(crate) fn tables_of<'a>(grouped: &'a [(TableName, Vec<&'a Row>)]) -> Vec<&'a TableName> {
    grouped
        .iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(t, _)| t)
        .collect()
}

/// Keys per table of `pieces`.
pub(crate) fn placed(pieces: &[Piece<'_>]) -> Vec<(TableName, Vec<u64>)> {
    let mut by_table: BTreeMap<TableName, Vec<u64>> = BTreeMap::new();
    for piece in pieces {
        by_table
            .entry(piece.table.clone())
            .or_default()
            .extend(piece.rows.iter().map(|r| r.key));
    }
    by_table.into_iter().collect()
}

/// `source.version` must be among the columns read.
pub(crate) fn check_version(version: Option<&Ident>, columns: &[Column]) -> Result<(), SinkError> {
    match version {
        Some(v) if !columns.iter().any(|c| c.name == v.as_str()) => Err(SinkError::Batch(format!(
            "source.version `{v}` is not among the columns the source reads"
        ))),
        _ => Ok(()),
    }
}

/// How a dialect may write a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteHints {
    /// The statement may stay prepared on the connection (one fixed table).
    pub cache: bool,
    /// The keys are expected to be new to the target (a `produce` batch, which only writes): the dialect
    /// may take a bulk path that only inserts, provided it falls back to its upsert when a key exists or
    /// a row is refused, so the outcome is the upsert's.
    pub fresh: bool,
}

/// A dialect's way to write some rows of one table on their own (outside the batch's transaction).
#[async_trait]
pub(crate) trait WriteAlone: Send {
    /// `Ok(Ok(()))`: written; `Ok(Err(reason))`: the server refused a row's values (the reason as it goes
    /// to `failed`); `Err`: the batch cannot go on.
    async fn write_alone(
        &mut self,
        table: &TableName,
        rows: &[&Row],
    ) -> Result<Result<(), String>, SinkError>;
}

/// Write a refused piece by halves until every row is written (into `outcome.written`, and its piece into
/// `landed`) or isolated with its reason in `outcome.failed`. `refused`: the piece itself was refused
/// already (start with its halves); otherwise it is tried whole first.
pub(crate) async fn bisect<'a, W: WriteAlone>(
    writer: &mut W,
    piece: Piece<'a>,
    refused: bool,
    outcome: &mut WriteOutcome,
    landed: &mut Vec<Piece<'a>>,
) -> Result<(), SinkError> {
    let table = piece.table;
    let mut pending: Vec<Vec<&Row>> = Vec::new();
    let mut rows = piece.rows;
    if refused && rows.len() > 1 {
        let right = rows.split_off(rows.len() / 2);
        pending.push(right);
    }
    pending.push(rows);
    while let Some(rows) = pending.pop() {
        if rows.is_empty() {
            continue;
        }
        match writer.write_alone(table, &rows).await? {
            Ok(()) => {
                outcome.written.extend(rows.iter().map(|r| r.key));
                landed.push(Piece { table, rows });
            }
            Err(reason) => {
                let mut left = rows;
                if left.len() == 1 {
                    outcome.failed.push((left[0].key, reason));
                } else {
                    let right = left.split_off(left.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
            }
        }
    }
    Ok(())
}

/// What one SQL engine brings to [`SqlSink`]: its statements and parameter encoding, how it classifies
/// errors, its connections and transactions, and how it creates a table.
///
/// Row-level answers are `Result<Result<(), String>, SinkError>`: `Ok(Ok(()))` written, `Ok(Err(reason))`
/// the server refused a row's values (the reason as it goes to `failed`), `Err` the batch cannot go on.
#[async_trait]
pub trait Dialect: Send + Sync + Sized + 'static {
    /// A connection from the dialect's pool.
    type Conn: Send;
    /// A transaction open on a connection; dropped without commit, it rolls back.
    type Tx<'c>: Send
    where
        Self: 'c;
    /// Parameters one statement may bind.
    const MAX_PARAMS: usize;
    /// A key twice in one table's rows of a batch keeps only its last row (one statement may not touch a
    /// row twice).
    const LAST_WINS: bool;
    /// A statement refused for a row's values is rolled back alone and its transaction goes on; otherwise
    /// the whole transaction is aborted.
    const STATEMENT_ROLLBACK: bool;
    /// Consumers write several `produce` batches together ([`super::Sink::merges_produce`]).
    const MERGES_PRODUCE: bool = false;

    /// The dialect for the job's `[target]`, with its pool. Connects to nothing yet.
    fn open(job: &JobSpec, target: &SqlTarget, max_connections: usize) -> Result<Self, OpenError>;
    /// Whether `LIKE` can copy the source table as it is (`create = true`).
    fn same_place(source: &SourceSpec, target: &SqlTarget) -> bool;
    /// Whether [`Self::copy_within`] may copy a batch (the source is on the target's server, and the server
    /// has not refused it).
    fn copies_within(&self) -> bool {
        false
    }
    /// Copy the source rows of `ranges` (every column of `columns`) into `table` on the server itself, in
    /// a transaction of its own: `true` when every id landed and is committed, `false` when nothing was
    /// kept (see [`super::Sink::copy_within`]).
    async fn copy_within(
        &self,
        _conn: &mut Self::Conn,
        _table: &TableName,
        _columns: &[Column],
        _ranges: &[crate::ids::IdRange],
    ) -> Result<bool, SinkError> {
        Ok(false)
    }
    /// Why the target cannot hold these columns at all, if so.
    fn unmappable(&self, _columns: &[Column]) -> Option<String> {
        None
    }
    /// Why this row cannot go to the target at all (it goes to `failed` before any statement), if so.
    fn refuse_row(&self, _rs: &RowSet, _row: &Row) -> Option<String> {
        None
    }
    /// The key column's name, for deletes.
    fn key_column<'a>(&'a self, rs: &'a RowSet) -> &'a str;

    /// A connection from the pool (`SinkError::Transient` when the server is away).
    async fn connect(&self) -> Result<Self::Conn, SinkError>;
    /// Open a transaction on `conn`.
    async fn begin<'c>(&self, conn: &'c mut Self::Conn) -> Result<Self::Tx<'c>, SinkError>;
    /// Commit `tx`.
    async fn commit(&self, tx: Self::Tx<'_>) -> Result<(), SinkError>;
    /// Roll `tx` back (after a refused statement aborted it).
    async fn rollback(&self, tx: Self::Tx<'_>) -> Result<(), SinkError>;
    /// Upsert `rows` of `table`, autocommitted, as `hints` allow.
    async fn upsert(
        &self,
        conn: &mut Self::Conn,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        hints: WriteHints,
    ) -> Result<Result<(), String>, SinkError>;
    /// Upsert `rows` of `table` inside `tx`, as `hints` allow; a refused bulk path leaves `tx` going.
    async fn upsert_in(
        &self,
        tx: &mut Self::Tx<'_>,
        rs: &RowSet,
        table: &TableName,
        rows: &[&Row],
        hints: WriteHints,
    ) -> Result<Result<(), String>, SinkError>;
    /// Delete the keys of each table (`key` names the key column) inside `tx`; a table that does not exist
    /// holds no row and is skipped.
    async fn delete_in(
        &self,
        tx: &mut Self::Tx<'_>,
        key: &str,
        todo: &[(TableName, Vec<u64>)],
    ) -> Result<(), SinkError>;
    /// What follows `CREATE TABLE IF NOT EXISTS t`, from the source (`same_place`: see [`Self::same_place`]).
    async fn create_tail(&self, source: &SourceSpec, same_place: bool)
        -> Result<String, SinkError>;
    /// Whether `table` exists.
    async fn table_exists(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
    ) -> Result<bool, SinkError>;
    /// Create `table` if it does not exist, safe against other consumers doing the same, outside any
    /// batch transaction.
    async fn create_table(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
        tail: &str,
    ) -> Result<(), SinkError>;
    /// Check that `table` exists and can take rows with these columns.
    /// Every row of `table` whose `key` lies in `first..=last`, all columns, ascending by key; `None` when
    /// the table does not exist (a listed table that holds nothing). Verify (DESIGN.md §9) digests them.
    async fn read_table(
        &self,
        conn: &mut Self::Conn,
        table: &TableName,
        key: &str,
        first: u64,
        last: u64,
    ) -> Result<Option<RowSet>, SinkError>;

    async fn probe(
        &self,
        conn: &mut Self::Conn,
        columns: &[Column],
        table: &TableName,
    ) -> Result<(), SinkError>;
}

/// A SQL table sink over a [`Dialect`]: the batch logic of this module's doc, once for every engine.
pub struct SqlSink<D: Dialect> {
    dialect: D,
    route: TableRoute,
    /// `source.version`: an existing row is replaced only by a row whose version is not older.
    version: Option<Ident>,
    /// `create = true`: how to create a missing table, and the tables known to exist.
    create: Option<Creator>,
    /// Records each table before the first write to it; lists every table for deletes.
    tables: Tables,
    /// The columns the source reads, once [`Sink::prepare`] has seen them: what a copy within the server
    /// copies.
    columns: std::sync::OnceLock<Vec<Column>>,
}

/// Creates missing target tables (`[target] create = true`), once per table and process.
struct Creator {
    source: SourceSpec,
    /// `LIKE` can copy the source table as it is.
    same_place: bool,
    /// What follows `CREATE TABLE IF NOT EXISTS t`, worked out once.
    tail: OnceCell<String>,
    created: KnownTables,
}

/// What the batch's transaction did: the pieces committed, the pieces to write again on their own (with
/// whether each was refused already), and whether the deletes were committed with them.
struct Written<'a> {
    ok: Vec<Piece<'a>>,
    retry: Vec<(Piece<'a>, bool)>,
    deletes_done: bool,
}

impl<D: Dialect> SqlSink<D> {
    /// A sink for the job's `[target]` (which must be `kind = "sql"` on the dialect's engine). Connects to
    /// nothing yet.
    pub fn new(job: &JobSpec, max_connections: usize) -> Result<Self, OpenError> {
        let TargetSpec::Sql(t) = &job.target else {
            return Err(OpenError("not a SQL target".into()));
        };
        Ok(Self {
            dialect: D::open(job, t, max_connections)?,
            route: t.table.clone(),
            version: job.source.version.clone(),
            create: t.create.then(|| Creator {
                same_place: D::same_place(&job.source, t),
                source: job.source.clone(),
                tail: OnceCell::new(),
                created: Default::default(),
            }),
            tables: Tables::default(),
            columns: std::sync::OnceLock::new(),
        })
    }

    /// Record tables in, and list them from, `tables` (the consumer's ledger).
    pub(crate) fn with_tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    fn router(&self, columns: &[Column]) -> Result<Router, SinkError> {
        Router::new(&self.route, columns).map_err(SinkError::Batch)
    }

    /// What follows `CREATE TABLE IF NOT EXISTS t`, worked out once from the source.
    async fn create_tail<'c>(&self, creator: &'c Creator) -> Result<&'c String, SinkError> {
        creator
            .tail
            .get_or_try_init(|| {
                self.dialect
                    .create_tail(&creator.source, creator.same_place)
            })
            .await
    }

    /// Create those of `tables` not known to exist, before the batch's transaction (DDL commits
    /// implicitly in MySQL), never inside it.
    async fn ensure_tables(
        &self,
        conn: &mut D::Conn,
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
            // Noted before it is created, so that a crash in between cannot leave a table bitmig made
            // without its indexes; a table that was there already (the operator's) is left as it is.
            if !self.dialect.table_exists(conn, table).await? {
                self.tables.before_create(&[table.to_string()]).await?;
            }
            self.dialect
                .create_table(conn, table, tail)
                .await
                .map_err(|e| match e {
                    SinkError::Batch(m) => SinkError::Batch(format!("creating it: {m}")),
                    other => other,
                })?;
            info!(table = %table, "target table created (or already there)");
            creator.created.insert(table);
        }
        Ok(())
    }

    /// Write every piece and the batch's deletes (of the keys written) in one transaction; one piece and
    /// no deletes is one autocommitted statement.
    async fn write_pieces<'a>(
        &self,
        conn: &mut D::Conn,
        rs: &RowSet,
        pieces: Vec<Piece<'a>>,
        deletes: Option<&Deletes<'_>>,
        hints: WriteHints,
    ) -> Result<Written<'a>, SinkError> {
        let mut w = Written {
            ok: Vec::new(),
            retry: Vec::new(),
            deletes_done: false,
        };
        if pieces.len() == 1 && deletes.is_none() {
            for piece in pieces {
                match self
                    .dialect
                    .upsert(conn, rs, piece.table, &piece.rows, hints)
                    .await?
                {
                    Ok(()) => w.ok.push(piece),
                    Err(_) => w.retry.push((piece, true)),
                }
            }
            return Ok(w);
        }
        let mut tx = self.dialect.begin(conn).await?;
        let mut pieces = pieces.into_iter();
        while let Some(piece) = pieces.next() {
            match self
                .dialect
                .upsert_in(&mut tx, rs, piece.table, &piece.rows, hints)
                .await?
            {
                Ok(()) => w.ok.push(piece),
                // The statement alone was rolled back: the transaction goes on without it.
                Err(_) if D::STATEMENT_ROLLBACK => w.retry.push((piece, true)),
                Err(_) => {
                    // The transaction is aborted: nothing of it commits; every piece goes again alone.
                    self.dialect.rollback(tx).await?;
                    w.retry = std::mem::take(&mut w.ok)
                        .into_iter()
                        .map(|p| (p, false))
                        .collect();
                    w.retry.push((piece, true));
                    w.retry.extend(pieces.map(|p| (p, false)));
                    return Ok(w);
                }
            }
        }
        if let Some(d) = deletes {
            let todo = deletions(&d.every, d.delete, &placed(&w.ok), d.exclusive);
            if !todo.is_empty() {
                let key = self.dialect.key_column(rs);
                self.dialect.delete_in(&mut tx, key, &todo).await?;
            }
        }
        self.dialect.commit(tx).await?;
        w.deletes_done = true;
        Ok(w)
    }

    /// Run `d`'s deletes in a transaction of their own, the written keys being those of `written`.
    async fn delete_alone(
        &self,
        conn: &mut D::Conn,
        rs: &RowSet,
        d: &Deletes<'_>,
        written: &[Piece<'_>],
    ) -> Result<(), SinkError> {
        let todo = deletions(&d.every, d.delete, &placed(written), d.exclusive);
        let mut tx = self.dialect.begin(conn).await?;
        if !todo.is_empty() {
            let key = self.dialect.key_column(rs);
            self.dialect.delete_in(&mut tx, key, &todo).await?;
        }
        self.dialect.commit(tx).await
    }
}

/// Writes pieces on one connection, one autocommitted statement each, for [`bisect`].
struct Alone<'s, D: Dialect> {
    dialect: &'s D,
    conn: &'s mut D::Conn,
    rs: &'s RowSet,
}

#[async_trait]
impl<D: Dialect> WriteAlone for Alone<'_, D> {
    async fn write_alone(
        &mut self,
        table: &TableName,
        rows: &[&Row],
    ) -> Result<Result<(), String>, SinkError> {
        self.dialect
            .upsert(
                self.conn,
                self.rs,
                table,
                rows,
                WriteHints {
                    cache: false,
                    fresh: false,
                },
            )
            .await
    }
}

#[async_trait]
impl<D: Dialect> Sink for SqlSink<D> {
    fn merges_produce(&self) -> bool {
        D::MERGES_PRODUCE
    }

    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<(String, RowSet)>, SinkError> {
        let tables = crate::sink::sql_tables_to_read(&self.tables, &self.route).await?;
        let mut conn = self.dialect.connect().await?;
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            if let Some(rs) = self
                .dialect
                .read_table(&mut conn, &table, key, first, last)
                .await?
            {
                out.push((table.to_string(), rs));
            }
        }
        Ok(out)
    }

    async fn prepare(&self, columns: &[Column]) -> Result<(), SinkError> {
        let router = self.router(columns)?;
        if let Some(why) = self.dialect.unmappable(columns) {
            return Err(SinkError::Batch(why));
        }
        check_version(self.version.as_ref(), columns)?;
        let _ = self.columns.set(columns.to_vec());
        if let Some(creator) = &self.create {
            // The tables are created when rows are first routed to them; check now that they can be.
            self.create_tail(creator).await?;
            return Ok(());
        }
        let Some(tables) = router.known_tables() else {
            // Routed by value: the tables are known only when rows are routed to them.
            return Ok(());
        };
        let mut conn = self.dialect.connect().await?;
        for table in &tables {
            self.dialect.probe(&mut conn, columns, table).await?;
        }
        Ok(())
    }

    async fn copy_within(&self, ranges: &[crate::ids::IdRange]) -> Result<bool, SinkError> {
        let Some(columns) = self.columns.get() else {
            return Ok(false);
        };
        if !self.dialect.copies_within() {
            return Ok(false);
        }
        let router = self.router(columns)?;
        let Some(table) = router.fixed() else {
            return Ok(false);
        };
        self.tables.before_write(&[table.to_string()]).await?;
        let mut conn = self.dialect.connect().await?;
        self.ensure_tables(&mut conn, &[table]).await?;
        self.dialect
            .copy_within(&mut conn, table, columns, ranges)
            .await
    }

    async fn apply(&self, changes: &Changes<'_>) -> Result<WriteOutcome, SinkError> {
        let rs = changes.rows;
        let router = self.router(&rs.columns)?;
        let mut outcome = WriteOutcome::default();
        let screened: Vec<Row>;
        let rs = if rs
            .rows
            .iter()
            .any(|r| self.dialect.refuse_row(rs, r).is_some())
        {
            screened = rs
                .rows
                .iter()
                .filter(|r| match self.dialect.refuse_row(rs, r) {
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
                rows: screened,
            }
        } else {
            rs
        };
        let per_stmt = (D::MAX_PARAMS / rs.columns.len().max(1)).max(1);
        let grouped = group(&router, rs, &mut outcome.failed, D::LAST_WINS);
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
        let mut conn = self.dialect.connect().await?;
        self.ensure_tables(&mut conn, &tables).await?;
        let hints = WriteHints {
            cache: router.fixed().is_some(),
            fresh: !changes.exclusive && changes.delete.is_empty(),
        };
        let w = self
            .write_pieces(&mut conn, rs, pieces, deletes.as_ref(), hints)
            .await?;
        for piece in &w.ok {
            outcome.written.extend(piece.rows.iter().map(|r| r.key));
        }
        let mut landed = Vec::new();
        if !w.retry.is_empty() {
            let mut alone = Alone {
                dialect: &self.dialect,
                conn: &mut conn,
                rs,
            };
            for (piece, refused) in w.retry {
                bisect(&mut alone, piece, refused, &mut outcome, &mut landed).await?;
            }
        }
        if let Some(d) = &deletes {
            if !w.deletes_done {
                // Nothing of the batch's transaction committed: its deletes, of what landed since.
                self.delete_alone(&mut conn, rs, d, &landed).await?;
            } else if d.exclusive && !landed.is_empty() {
                // Bisection wrote `landed` outside the batch's transaction: remove those keys from every
                // other table.
                let moved = Deletes {
                    every: d.every.clone(),
                    delete: &[],
                    exclusive: true,
                };
                self.delete_alone(&mut conn, rs, &moved, &landed).await?;
            }
        }
        outcome.written.sort_unstable();
        Ok(outcome)
    }
}
