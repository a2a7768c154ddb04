//! Reading from the source database: the ids of a group (producer) and the current rows of a batch
//! (consumer). One trait, one implementation per engine.

mod mysql;
mod postgres;

use async_trait::async_trait;

use crate::ids::IdRange;
use crate::job::{Engine, JobSpec};
use crate::value::{Column, RowSet};

pub use mysql::MySqlSource;
pub use postgres::PgSource;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The job does not fit the source's schema (no such table or column, a key that is not an integer).
    #[error("source {table}: {message}")]
    Schema { table: String, message: String },
    #[error("source {table}: {message}")]
    Query {
        table: String,
        message: String,
        transient: bool,
    },
    #[error("source: {0}")]
    Unsupported(String),
}

impl SourceError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Query {
                transient: true,
                ..
            }
        )
    }
}

#[async_trait]
pub trait Source: Send + Sync {
    /// The columns a batch read returns, in order; checks the key column is an integer.
    async fn describe(&self) -> Result<Vec<Column>, SourceError>;
    /// `MIN(key)`, `MAX(key)` under the filter; `None` for an empty source.
    async fn key_bounds(&self) -> Result<Option<(u64, u64)>, SourceError>;
    /// The smallest key in `from..=to` under the filter.
    async fn next_key(&self, from: u64, to: u64) -> Result<Option<u64>, SourceError>;
    /// Every key in `first..=last` under the filter, ascending.
    async fn keys_between(&self, first: u64, last: u64) -> Result<Vec<u64>, SourceError>;
    /// The current rows whose keys lie in `ranges` (ascending, non-overlapping), ascending by key.
    async fn read_rows(&self, ranges: &[IdRange]) -> Result<RowSet, SourceError>;
}

/// Open the source the job names.
pub fn open(job: &JobSpec, max_connections: usize) -> Result<Box<dyn Source>, SourceError> {
    match job.source.url.engine {
        Engine::Mysql => Ok(Box::new(MySqlSource::new(job, max_connections)?)),
        Engine::Postgres => Ok(Box::new(PgSource::new(job, max_connections)?)),
    }
}

/// Where the key column is among the columns read; it must be there and hold integers.
pub(crate) fn key_index(table: &str, columns: &[Column], key: &str) -> Result<usize, SourceError> {
    let schema = |message: String| SourceError::Schema {
        table: table.to_owned(),
        message,
    };
    let i = columns.iter().position(|c| c.name == key).ok_or_else(|| {
        schema(format!(
            "the key column `{key}` is not among the columns read"
        ))
    })?;
    if !matches!(columns[i].ty, crate::value::ColumnType::Int { .. }) {
        return Err(schema(format!(
            "the key `{key}` is {}, not an integer",
            columns[i].type_name
        )));
    }
    Ok(i)
}

/// The SQL text a source builds its queries from, quoted for its engine once.
pub(crate) struct SourceSql {
    /// The table as the job names it, for messages.
    pub table_label: String,
    pub from_table: String,
    /// The quoted key column.
    pub key: String,
    /// ` AND (filter)`, or empty.
    pub filter: String,
    /// The job's column list, `None` for every column.
    pub columns: Option<Vec<String>>,
}

impl SourceSql {
    pub fn new(job: &JobSpec, engine: Engine) -> Self {
        let s = &job.source;
        Self {
            table_label: s.table.to_string(),
            from_table: crate::sql::quote_table(engine, &s.table),
            key: crate::sql::quote(engine, &s.key),
            filter: s
                .filter
                .as_ref()
                .map(|f| format!(" AND ({f})"))
                .unwrap_or_default(),
            columns: s
                .columns
                .as_ref()
                .map(|cols| cols.iter().map(|c| c.as_str().to_owned()).collect()),
        }
    }
}
