//! Reading from the source database: the ids of a group (producer) and the current rows of a batch
//! (consumer). One trait, one implementation per engine; the batch read's plan ([`RowsQuery`]: one
//! `BETWEEN` for a dense batch, its ranges listed for a sparse one in a few bounded statement shapes, and
//! which rows to keep) is here once, the placeholders, parameters and decoding per engine. [`PurgeTx`] is
//! `purge`'s transaction (lock, delete, commit), its SQL in `purge.rs`.

mod mysql;
mod postgres;
mod purge;

use async_trait::async_trait;

use crate::ids::{count_in, ranges_contain, IdRange};
use crate::job::{Engine, JobSpec};
use crate::value::{Column, Row, RowSet, Value};

pub use mysql::MySqlSource;
pub(crate) use mysql::{describe_column as describe_mysql_column, from_mysql as from_mysql_value};
pub use postgres::PgSource;
pub use purge::{LockedRows, PurgeTwin, PurgeTx};

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
    /// Columns that hold JSON although the reader sees text (MariaDB's JSON is a checked LONGTEXT), so
    /// that verification compares them as JSON (DESIGN.md §9). None by default.
    async fn json_text_columns(&self) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }
    /// The target of `job` as a table the source's server compares a purge batch with itself
    /// ([`PurgeTx::delete_equal`]), or why it cannot.
    async fn purge_twin(&self, _job: &JobSpec) -> Result<PurgeTwin, String> {
        Err("the source cannot compare its rows with the target itself".into())
    }
    /// Open a purge transaction (DESIGN.md §10) on a connection of its own.
    async fn begin_purge(&self) -> Result<Box<dyn PurgeTx>, SourceError> {
        Err(SourceError::Unsupported(
            "this source cannot be purged".into(),
        ))
    }
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
#[derive(Clone)]
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

/// A batch whose span is at most this many times its id count is read with one `BETWEEN` (a statement
/// that stays prepared); sparser batches list their ranges.
const DENSE_SPAN_FACTOR: u64 = 4;

/// A sparse read lists at most this many ranges per statement; a batch with more is read in several.
const MAX_RANGES_PER_READ: usize = 64;

/// How to read the current rows of a batch's ranges.
pub(crate) struct RowsQuery {
    /// The `SELECT`, its parameters being [`RowsQuery::bounds`] in order.
    pub sql: String,
    /// The key bounds to bind, in placeholder order.
    pub bounds: Vec<u64>,
    /// One `BETWEEN` over the whole span: rows in the gaps between ranges come back too.
    pub dense: bool,
}

impl RowsQuery {
    /// The reads of a batch's `ranges` (ascending, non-overlapping; none when empty), each with the
    /// ranges it covers: one `BETWEEN` over the whole span for a dense batch, otherwise the ranges listed
    /// by at most [`MAX_RANGES_PER_READ`] per statement, their number padded up to a power of two by
    /// repeating the last range (a row matches once however often its range is listed). So a source sees
    /// a handful of statement shapes, each prepared once per connection, whatever the batches look like.
    /// `placeholder(n)` is the engine's n-th (1-based) key parameter: `?` or `$n::int8`.
    pub fn plan<'r>(
        sql: &SourceSql,
        select_list: &str,
        ranges: &'r [IdRange],
        placeholder: impl Fn(usize) -> String,
    ) -> Vec<(Self, &'r [IdRange])> {
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Vec::new();
        };
        let dense = ranges.len() == 1
            || last[1] - first[0] < count_in(ranges).saturating_mul(DENSE_SPAN_FACTOR);
        if dense {
            return Self::new(sql, select_list, ranges, true, &placeholder)
                .map(|q| (q, ranges))
                .into_iter()
                .collect();
        }
        ranges
            .chunks(MAX_RANGES_PER_READ)
            .filter_map(|chunk| {
                Self::new(sql, select_list, chunk, chunk.len() == 1, &placeholder)
                    .map(|q| (q, chunk))
            })
            .collect()
    }

    /// The query for `ranges`: one `BETWEEN` over their span (`dense`), or each listed.
    fn new(
        sql: &SourceSql,
        select_list: &str,
        ranges: &[IdRange],
        dense: bool,
        placeholder: impl Fn(usize) -> String,
    ) -> Option<Self> {
        let (lo, hi) = (ranges.first()?[0], ranges.last()?[1]);
        let (t, k, f) = (&sql.from_table, &sql.key, &sql.filter);
        if dense {
            return Some(Self {
                sql: format!(
                    "SELECT {select_list} FROM {t} WHERE {k} BETWEEN {} AND {}{f}",
                    placeholder(1),
                    placeholder(2)
                ),
                bounds: vec![lo, hi],
                dense,
            });
        }
        let listed = ranges.len().next_power_of_two();
        let preds: Vec<String> = (0..listed)
            .map(|i| {
                format!(
                    "{k} BETWEEN {} AND {}",
                    placeholder(2 * i + 1),
                    placeholder(2 * i + 2)
                )
            })
            .collect();
        Some(Self {
            sql: format!(
                "SELECT {select_list} FROM {t} WHERE ({}){f}",
                preds.join(" OR ")
            ),
            bounds: (0..listed)
                .flat_map(|i| {
                    let r = ranges[i.min(ranges.len() - 1)];
                    [r[0], r[1]]
                })
                .collect(),
            dense,
        })
    }

    /// Whether a row read with key `key` belongs to the batch: a dense read also returns rows inserted
    /// into the gaps between the ranges after producing, which are not this batch's ids.
    pub fn keeps(&self, ranges: &[IdRange], key: u64) -> bool {
        !(self.dense && ranges.len() > 1) || ranges_contain(ranges, key)
    }

    /// The rows of the batch among those read (`read`: each row's values in column order, or why it
    /// could not be decoded): a row whose key is NULL or negative cannot have been published and is
    /// skipped, and so is one [`Self::keeps`] leaves out.
    pub fn rows<E>(
        &self,
        ranges: &[IdRange],
        key_index: usize,
        read: impl IntoIterator<Item = Result<Vec<Value>, E>>,
    ) -> Result<Vec<Row>, E> {
        let mut rows = Vec::new();
        for values in read {
            let values = values?;
            let Some(key) = values[key_index].as_key() else {
                continue;
            };
            if self.keeps(ranges, key) {
                rows.push(Row { key, values });
            }
        }
        Ok(rows)
    }
}

/// The batch's rows, ascending by key.
pub(crate) fn row_set(
    columns: std::sync::Arc<[Column]>,
    key_index: usize,
    mut rows: Vec<Row>,
) -> RowSet {
    rows.sort_unstable_by_key(|r| r.key);
    RowSet {
        columns,
        key_index,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql() -> SourceSql {
        SourceSql {
            table_label: "src".into(),
            from_table: "`src`".into(),
            key: "`id`".into(),
            filter: " AND (x > 0)".into(),
            columns: None,
        }
    }

    /// The one query of a plan that must have exactly one.
    fn only(plan: Vec<(RowsQuery, &[IdRange])>) -> RowsQuery {
        assert_eq!(plan.len(), 1, "one statement");
        plan.into_iter().next().unwrap().0
    }

    #[test]
    fn dense_batches_read_one_span_and_sparse_ones_list_their_ranges() {
        let q = only(RowsQuery::plan(&sql(), "*", &[[10, 19], [21, 30]], |_| {
            "?".into()
        }));
        assert!(q.dense);
        assert_eq!(
            q.sql,
            "SELECT * FROM `src` WHERE `id` BETWEEN ? AND ? AND (x > 0)"
        );
        assert_eq!(q.bounds, vec![10, 30]);
        assert!(q.keeps(&[[10, 19], [21, 30]], 19));
        assert!(
            !q.keeps(&[[10, 19], [21, 30]], 20),
            "a row in the gap is not the batch's"
        );
        let q = only(RowsQuery::plan(&sql(), "*", &[[1, 1], [1000, 1000]], |n| {
            format!("${n}::int8")
        }));
        assert!(!q.dense);
        assert_eq!(
            q.sql,
            "SELECT * FROM `src` WHERE (`id` BETWEEN $1::int8 AND $2::int8 OR \
             `id` BETWEEN $3::int8 AND $4::int8) AND (x > 0)"
        );
        assert_eq!(q.bounds, vec![1, 1, 1000, 1000]);
        assert!(RowsQuery::plan(&sql(), "*", &[], |_| "?".into()).is_empty());
    }

    #[test]
    fn sparse_reads_have_a_few_shapes_padded_to_a_power_of_two_and_split_above_64_ranges() {
        // Three far-apart ids: listed as four ranges, the last repeated.
        let q = only(RowsQuery::plan(
            &sql(),
            "*",
            &[[1, 1], [500, 500], [900, 900]],
            |_| "?".into(),
        ));
        assert!(!q.dense);
        assert_eq!(q.sql.matches("BETWEEN").count(), 4, "{}", q.sql);
        assert_eq!(q.bounds, vec![1, 1, 500, 500, 900, 900, 900, 900]);
        // 100 single ids 10 apart: one statement of 64 ranges, one of the other 36 padded to 64.
        let ranges: Vec<IdRange> = (0..100u64).map(|i| [i * 10, i * 10]).collect();
        let plan = RowsQuery::plan(&sql(), "*", &ranges, |_| "?".into());
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].1, &ranges[..64]);
        assert_eq!(plan[1].1, &ranges[64..]);
        assert_eq!(plan[0].0.sql, plan[1].0.sql, "one shape for both");
        assert_eq!(plan[1].0.bounds.len(), 128);
        assert_eq!(plan[1].0.bounds[..2], [640, 640]);
        assert_eq!(plan[1].0.bounds[126..], [990, 990]);
        // A chunk left with one range is one BETWEEN, the dense shape.
        let ranges: Vec<IdRange> = (0..65u64).map(|i| [i * 10, i * 10]).collect();
        let plan = RowsQuery::plan(&sql(), "*", &ranges, |_| "?".into());
        assert_eq!(plan.len(), 2);
        assert!(plan[1].0.dense);
        assert_eq!(plan[1].0.bounds, vec![640, 640]);
    }

    #[test]
    fn the_rows_kept_are_the_batch_ids_with_a_key_and_a_decoding_error_stops_the_read() {
        let ranges = [[10, 19], [21, 30]];
        let q = only(RowsQuery::plan(&sql(), "*", &ranges, |_| "?".into()));
        let read = |k: Value| Ok::<_, String>(vec![Value::Null, k]);
        let rows = q
            .rows(
                &ranges,
                1,
                [
                    read(Value::Int(10)),
                    read(Value::Int(20)), // in the gap: not this batch's
                    read(Value::Null),    // no key: never published
                    read(Value::Int(-1)),
                    read(Value::UInt(30)),
                ],
            )
            .unwrap();
        assert_eq!(rows.iter().map(|r| r.key).collect::<Vec<_>>(), [10, 30]);
        assert_eq!(rows[1].values, vec![Value::Null, Value::UInt(30)]);
        let broken = q.rows(&ranges, 1, [read(Value::Int(10)), Err("bad".into())]);
        assert_eq!(broken.unwrap_err(), "bad");
    }
}
