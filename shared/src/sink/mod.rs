//! Writing rows to the target. A sink applies one batch of changes idempotently — rows to upsert and keys
//! to delete, committed together — and says, row by row, what landed and what the target refused for good;
//! the consumer turns that into ledger bits.
//!
//! Every table or index a sink writes to is first recorded through its [`TableLog`] (Redis
//! `bitmig:{JOB}:tables`, DESIGN.md §4), so a table never holds rows without being listed, and a batch that
//! deletes finds every table a key may live in: the route's own list for plain and range routes, the log
//! read fresh for routes by value.

pub(crate) mod create;
pub mod elasticsearch;
pub mod indexes;
mod route;
pub mod sql;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::job::{Engine, JobSpec, TableName, TargetSpec};
use crate::value::{Column, RowSet};

pub use elasticsearch::EsSink;
pub use sql::mysql::MySqlSink;
pub use sql::postgres::PgSink;

/// What became of a batch once the sink returns `Ok`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriteOutcome {
    /// Keys whose rows are committed in the target.
    pub written: Vec<u64>,
    /// Keys the target refused for good, with the target's reason.
    pub failed: Vec<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The connection, a lock or the server's availability: retry the whole batch later.
    #[error("target unavailable: {0}")]
    Transient(String),
    /// The batch as a whole cannot be written (no such table, a column missing): the job or the target
    /// needs an operator.
    #[error("target rejected the batch: {0}")]
    Batch(String),
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient(_))
    }
}

/// One batch of changes for the target (DESIGN.md §8.3).
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    /// Rows to insert or replace by key.
    pub rows: &'a RowSet,
    /// Keys whose rows no longer exist in the source: deleted from every table of the job.
    pub delete: &'a [u64],
    /// Every written key ends in exactly one table: it is deleted from every other table of the job (a row
    /// whose route changed). `false` (produce batches) only writes.
    pub exclusive: bool,
}

impl<'a> Changes<'a> {
    /// Rows to write, nothing to delete.
    pub fn upsert(rows: &'a RowSet) -> Self {
        Self {
            rows,
            delete: &[],
            exclusive: false,
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// Check, before the first batch, that the target can take rows with these columns.
    async fn prepare(&self, columns: &[Column]) -> Result<(), SinkError>;
    /// Apply a batch: upsert its rows and delete its keys, in one transaction per SQL batch (one bulk
    /// request for Elasticsearch). On `Ok`, each row's key is in exactly one of `written` and `failed`, and
    /// every key of `delete` is in no table of the job.
    async fn apply(&self, changes: &Changes<'_>) -> Result<WriteOutcome, SinkError>;
    /// Write every row of the batch (insert or replace by key), deleting nothing.
    async fn write(&self, rows: &RowSet) -> Result<WriteOutcome, SinkError> {
        self.apply(&Changes::upsert(rows)).await
    }

    /// A `produce` batch copied by the target server itself, straight from the source table, when both
    /// live on one server (`INSERT … SELECT`; see `sql/mysql_within.rs`). `Ok(true)`: every id of `ranges`
    /// was copied, as the source holds it now, and committed; `Ok(false)`: nothing was kept — this sink
    /// cannot copy within, or the copy was not clean (an id gone or filtered out, a key already in the
    /// target, a value adjusted) — and the caller reads and writes the batch as usual.
    async fn copy_within(&self, ranges: &[crate::ids::IdRange]) -> Result<bool, SinkError> {
        let _ = ranges;
        Ok(false)
    }

    /// The target rows whose key column `key` lies in `first..=last`, across every table or index of the
    /// job (the route's own list and every name in `bitmig:{JOB}:tables`): one set per table that exists,
    /// each ascending by key, as `(table, rows)`. Verify (DESIGN.md §9) digests them against the source.
    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<(String, RowSet)>, SinkError> {
        let _ = (key, first, last);
        Err(SinkError::Batch(
            "this target cannot be read back for verification yet".into(),
        ))
    }

    /// Whether several `produce` batches written as one gain more than they cost: their rows then go in one
    /// write (one PostgreSQL `COPY`) and one transaction. See [`sql::Dialect::MERGES_PRODUCE`].
    fn merges_produce(&self) -> bool {
        false
    }

    /// A target that holds documents rather than rows (Elasticsearch): verify compares documents through
    /// this instead of [`Sink::read_range`].
    fn documents(&self) -> Option<&dyn DocumentTarget> {
        None
    }
}

/// Verify's view of a document target (DESIGN.md §9): what it holds, and what it should hold.
#[async_trait]
pub trait DocumentTarget: Send + Sync {
    /// Make every write so far visible to [`DocumentTarget::read_documents`] (once, before reading).
    async fn refresh(&self) -> Result<(), SinkError>;
    /// `(key, document)` of every document with a key in `first..=last` across every index of the job,
    /// ascending by key (a key found in two indices comes twice).
    async fn read_documents(
        &self,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, serde_json::Value)>, SinkError>;
    /// `(key, document)` the sink would write for each row, in the rows' order; rows it refuses (which it
    /// records as `failed` when writing) are left out.
    fn documents_of(&self, rows: &RowSet) -> Result<Vec<(u64, serde_json::Value)>, SinkError>;
}

/// Where the job's target tables and indices are listed (`bitmig:{JOB}:tables`); the ledger in production.
#[async_trait]
pub trait TableLog: Send + Sync {
    /// Add names to the list (idempotent).
    async fn record(&self, names: &[String]) -> Result<(), SinkError>;
    /// Every name listed, read fresh.
    async fn members(&self) -> Result<Vec<String>, SinkError>;
    /// Note tables about to be created by the sink (`create = true`), so that their indexes are made
    /// after the copy (see [`indexes`]). Without a ledger there is nothing to note.
    async fn record_created(&self, _names: &[String]) -> Result<(), SinkError> {
        Ok(())
    }
}

#[async_trait]
impl TableLog for crate::ledger::Ledger {
    async fn record(&self, names: &[String]) -> Result<(), SinkError> {
        self.add_tables(names)
            .await
            .map_err(|e| SinkError::Transient(format!("recording target tables in Redis: {e}")))
    }

    async fn members(&self) -> Result<Vec<String>, SinkError> {
        self.tables()
            .await
            .map_err(|e| SinkError::Transient(format!("reading the target tables from Redis: {e}")))
    }

    async fn record_created(&self, names: &[String]) -> Result<(), SinkError> {
        self.add_created_tables(names).await.map_err(|e| {
            SinkError::Transient(format!("recording created target tables in Redis: {e}"))
        })
    }
}

/// A sink's view of the job's tables: records each name once per process before the first write to it,
/// and lists every table a key may live in for a batch that deletes.
#[derive(Default)]
pub(crate) struct Tables {
    log: Option<Arc<dyn TableLog>>,
    recorded: Mutex<HashSet<String>>,
}

impl Tables {
    pub fn new(log: Option<Arc<dyn TableLog>>) -> Self {
        Self {
            log,
            recorded: Mutex::default(),
        }
    }

    /// Record the names not yet recorded by this process. Call before writing to them.
    pub async fn before_write(&self, names: &[String]) -> Result<(), SinkError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let new: Vec<String> = {
            let seen = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            names
                .iter()
                .filter(|n| !seen.contains(*n))
                .cloned()
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        log.record(&new).await?;
        let mut seen = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(new);
        Ok(())
    }

    /// Note tables the sink is about to create (see [`TableLog::record_created`]).
    pub async fn before_create(&self, names: &[String]) -> Result<(), SinkError> {
        match &self.log {
            Some(log) => log.record_created(names).await,
            None => Ok(()),
        }
    }

    /// Every table a key of the job may live in: `known` when the route names a fixed list, otherwise the
    /// log read fresh. Without a log, a route by value cannot delete: an error, never a silent skip.
    pub async fn every(&self, known: Option<Vec<String>>) -> Result<Vec<String>, SinkError> {
        if let Some(known) = known {
            return Ok(known);
        }
        match &self.log {
            Some(log) => log.members().await,
            None => Err(SinkError::Batch(
                "deleting with a route by value needs the job's table list (bitmig:{JOB}:tables), and this \
                 sink was opened without one"
                    .into(),
            )),
        }
    }
}

/// Every table a verification reads: the route's own list (plain names, ranges) and every name the log
/// holds (routes by value, and tables a former route wrote to), once each, parsed.
pub(crate) async fn sql_tables_to_read(
    tables: &Tables,
    route: &crate::job::TableRoute,
) -> Result<Vec<TableName>, SinkError> {
    // A route by value needs its columns to resolve rows, not to be listed: no columns here.
    let mut names: Vec<TableName> = route::Router::new(route, &[])
        .ok()
        .and_then(|r| r.known_tables())
        .unwrap_or_default();
    if let Some(log) = &tables.log {
        for n in log.members().await? {
            let t = TableName::parse(&n).map_err(|e| {
                SinkError::Batch(format!(
                    "bitmig:{{JOB}}:tables lists `{n}`, not a table name: {e}"
                ))
            })?;
            if !names.contains(&t) {
                names.push(t);
            }
        }
    }
    Ok(names)
}

/// Every table a verification of a SQL target reads (the route's own list and every name in `log`), for a
/// caller that reads them itself (verify's MySQL checksum pushdown); tables that do not exist are listed too.
pub async fn sql_tables_of(
    route: &crate::job::TableRoute,
    log: Arc<dyn TableLog>,
) -> Result<Vec<TableName>, SinkError> {
    sql_tables_to_read(&Tables::new(Some(log)), route).await
}

/// The tables a SQL batch that deletes must visit: `every` listed name parsed, the list being the route's
/// own for plain and range routes. `None` when the batch deletes nothing.
pub(crate) async fn sql_tables_to_visit(
    tables: &Tables,
    changes: &Changes<'_>,
    router: &route::Router,
) -> Result<Option<Vec<TableName>>, SinkError> {
    if changes.delete.is_empty() && !changes.exclusive {
        return Ok(None);
    }
    let known = router
        .known_tables()
        .map(|ts| ts.iter().map(ToString::to_string).collect());
    let names = tables.every(known).await?;
    names
        .iter()
        .map(|n| {
            TableName::parse(n).map_err(|e| {
                SinkError::Batch(format!(
                    "bitmig:{{JOB}}:tables lists `{n}`, not a table name: {e}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The deletes of a batch, per table: `delete` from every table, and when `exclusive`, each written key from
/// every table but the one it was written to (`placed`: table → keys written there). Tables with nothing to
/// delete are left out; keys ascending.
pub(crate) fn deletions<T: Ord + Clone>(
    every: &[T],
    delete: &[u64],
    placed: &[(T, Vec<u64>)],
    exclusive: bool,
) -> Vec<(T, Vec<u64>)> {
    let mut out: BTreeMap<T, Vec<u64>> = BTreeMap::new();
    let mut all: Vec<&T> = every.iter().collect();
    // A table written now but missing from the list (a new one) may hold a moved key too.
    all.extend(placed.iter().map(|(t, _)| t));
    all.sort();
    all.dedup();
    for table in all {
        let mut keys: Vec<u64> = delete.to_vec();
        if exclusive {
            for (other, written) in placed {
                if other != table {
                    keys.extend(written);
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        if !keys.is_empty() {
            out.insert(table.clone(), keys);
        }
    }
    out.into_iter().collect()
}

#[derive(Debug, thiserror::Error)]
#[error("target: {0}")]
pub struct OpenError(pub String);

/// Open the sink the job names, without a table log: it writes, and deletes only with a plain or range
/// route (tools and tests; the consumer uses [`open_logged`]).
pub fn open(job: &JobSpec, max_connections: usize) -> Result<Box<dyn Sink>, OpenError> {
    open_with(job, max_connections, None)
}

/// Open the sink the job names, recording its tables in `log` before the first write to each.
pub fn open_logged(
    job: &JobSpec,
    max_connections: usize,
    log: Arc<dyn TableLog>,
) -> Result<Box<dyn Sink>, OpenError> {
    open_with(job, max_connections, Some(log))
}

fn open_with(
    job: &JobSpec,
    max_connections: usize,
    log: Option<Arc<dyn TableLog>>,
) -> Result<Box<dyn Sink>, OpenError> {
    let tables = Tables::new(log);
    match &job.target {
        TargetSpec::Sql(t) => match t.url.engine {
            Engine::Mysql => Ok(Box::new(
                MySqlSink::new(job, max_connections)?.with_tables(tables),
            )),
            Engine::Postgres => Ok(Box::new(
                PgSink::new(job, max_connections)?.with_tables(tables),
            )),
        },
        TargetSpec::Elasticsearch(_) => Ok(Box::new(
            EsSink::new(job, elasticsearch::EsOptions::from_env(), max_connections)?
                .with_tables(tables),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table log in memory that counts its calls.
    #[derive(Default)]
    struct Log {
        names: Mutex<Vec<String>>,
        records: Mutex<u32>,
    }

    #[async_trait]
    impl TableLog for Log {
        async fn record(&self, names: &[String]) -> Result<(), SinkError> {
            *self.records.lock().unwrap() += 1;
            self.names.lock().unwrap().extend(names.iter().cloned());
            Ok(())
        }

        async fn members(&self) -> Result<Vec<String>, SinkError> {
            Ok(self.names.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn each_table_is_recorded_once_before_its_first_write() {
        let log = Arc::new(Log::default());
        let tables = Tables::new(Some(log.clone()));
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        tables.before_write(&names(&["a", "b"])).await.unwrap();
        tables.before_write(&names(&["b", "a"])).await.unwrap();
        assert_eq!(
            *log.records.lock().unwrap(),
            1,
            "nothing new: no second call"
        );
        tables.before_write(&names(&["b", "c"])).await.unwrap();
        assert_eq!(*log.names.lock().unwrap(), names(&["a", "b", "c"]));
        // A route with a fixed list never reads the log; a route by value reads it fresh.
        assert_eq!(
            tables.every(Some(names(&["x"]))).await.unwrap(),
            names(&["x"])
        );
        assert_eq!(tables.every(None).await.unwrap(), names(&["a", "b", "c"]));
        // Without a log, a route by value cannot know where its keys live: an error, not a silent skip.
        let err = Tables::new(None).every(None).await.unwrap_err();
        assert!(matches!(err, SinkError::Batch(_)), "{err}");
    }

    #[test]
    fn deletes_reach_every_table_and_moved_keys_leave_the_others() {
        let every = ["a", "b", "c"];
        let placed = vec![("a", vec![1, 2]), ("d", vec![3])];
        assert_eq!(
            deletions(&every, &[9], &placed, true),
            vec![
                ("a", vec![3, 9]),
                ("b", vec![1, 2, 3, 9]),
                ("c", vec![1, 2, 3, 9]),
                ("d", vec![1, 2, 9]),
            ]
        );
        // Not exclusive (produce): only the keys to delete, and nothing at all without them.
        assert_eq!(
            deletions(&every, &[9], &placed, false),
            vec![
                ("a", vec![9]),
                ("b", vec![9]),
                ("c", vec![9]),
                ("d", vec![9])
            ]
        );
        assert!(deletions(&every, &[], &placed, false).is_empty());
        // One table: a written key is never deleted from the table it was written to.
        assert_eq!(
            deletions(&["a"], &[], &[("a", vec![1])], true),
            Vec::<(&str, Vec<u64>)>::new()
        );
    }
}
