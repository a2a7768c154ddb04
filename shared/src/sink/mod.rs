//! Writing rows to the target. A sink writes one batch idempotently and says, row by row, what landed
//! and what the target refused for good; the consumer turns that into ledger bits.

mod create;
pub mod elasticsearch;
pub mod postgres;
mod route;
pub mod sql;

use async_trait::async_trait;

use crate::job::{Engine, JobSpec, TargetSpec};
use crate::value::{Column, RowSet};

pub use elasticsearch::EsSink;
pub use postgres::PgSink;
pub use sql::MySqlSink;

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

#[async_trait]
pub trait Sink: Send + Sync {
    /// Check, before the first batch, that the target can take rows with these columns.
    async fn prepare(&self, columns: &[Column]) -> Result<(), SinkError>;
    /// Write every row of the batch (insert or replace by key). On `Ok`, each row's key is in exactly one
    /// of `written` and `failed`.
    async fn write(&self, rows: &RowSet) -> Result<WriteOutcome, SinkError>;
}

#[derive(Debug, thiserror::Error)]
#[error("target: {0}")]
pub struct OpenError(pub String);

/// Open the sink the job names.
pub fn open(job: &JobSpec, max_connections: usize) -> Result<Box<dyn Sink>, OpenError> {
    match &job.target {
        TargetSpec::Sql(t) => match t.url.engine {
            Engine::Mysql => Ok(Box::new(MySqlSink::new(job, max_connections)?)),
            Engine::Postgres => Ok(Box::new(PgSink::new(job, max_connections)?)),
        },
        TargetSpec::Elasticsearch(_) => Ok(Box::new(EsSink::new(
            job,
            elasticsearch::EsOptions::from_env(),
            max_connections,
        )?)),
    }
}
