//! The source side of `purge` (DESIGN.md §10): one transaction per batch that locks the batch's rows
//! (`SELECT … FOR UPDATE`), says which of them still match `filter`, deletes the proven ones by key and
//! commits. The SQL text is built here once; each engine's source runs it on one connection it holds for
//! the transaction.
//!
//! Contract for the caller: [`PurgeTx::lock_rows`] first (the rows read are locked until the end of the
//! transaction, so nobody changes them between the comparison and the delete), then [`PurgeTx::delete`]
//! of keys among those locked, then [`PurgeTx::commit`]. Dropping a transaction without committing rolls
//! it back (the connection is discarded), so a crash or an error deletes nothing of the batch.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::{SourceError, SourceSql};
use crate::ids::IdRange;
use crate::value::RowSet;

/// The rows of a batch, locked, as read **without** `filter`.
#[derive(Debug)]
pub struct LockedRows {
    /// Every row whose key lies in the batch's ranges, ascending by key.
    pub rows: RowSet,
    /// Keys of rows that no longer match `filter` (or for which it is NULL): not in the archive's scope.
    pub outside_filter: BTreeSet<u64>,
}

/// One open purge transaction on the source.
#[async_trait]
pub trait PurgeTx: Send {
    /// Lock and read the rows whose keys lie in `ranges` (ascending, non-overlapping).
    async fn lock_rows(&mut self, ranges: &[IdRange]) -> Result<LockedRows, SourceError>;
    /// The table's largest key, whatever `filter` says (MySQL's AUTO_INCREMENT restarts above it).
    async fn max_key(&mut self) -> Result<Option<u64>, SourceError>;
    /// Delete the rows in `ranges` (ascending, apart); how many were deleted. Each range must lie inside
    /// ranges read by [`PurgeTx::lock_rows`] and hold only rows to delete: the transaction is REPEATABLE
    /// READ, so no row can appear in a locked range before it ends (MySQL: next-key locks; PostgreSQL:
    /// the `DELETE` sees the snapshot the lock read).
    async fn delete(&mut self, ranges: &[IdRange]) -> Result<u64, SourceError>;
    /// Delete, in one statement, the rows whose keys are exactly those of `ranges` (the batch's candidates,
    /// ascending, apart) and that still match `filter` and equal their row in `twin` column for column, the
    /// server comparing them itself; how many were deleted. Every candidate was deleted when that is their
    /// count; otherwise the caller rolls back and judges the batch row by row.
    async fn delete_equal(
        &mut self,
        _ranges: &[IdRange],
        _twin: &PurgeTwin,
    ) -> Result<u64, SourceError> {
        Err(SourceError::Unsupported(
            "this source cannot compare rows with the target itself".into(),
        ))
    }
    /// Make the deletes durable.
    async fn commit(self: Box<Self>) -> Result<(), SourceError>;
    /// Undo the transaction (a dry run, or a batch that cannot go on).
    async fn rollback(self: Box<Self>) -> Result<(), SourceError>;
}

/// The target table seen from the source's own server, which then compares a batch's rows with it itself
/// ([`PurgeTx::delete_equal`]): no row leaves the server, as no row does in the server copy of `produce`
/// batches. Built by [`super::Source::purge_twin`] only for a target that is one fixed table on the same
/// MySQL/MariaDB server whose compared columns have the source's types and character sets.
#[derive(Debug, Clone)]
pub struct PurgeTwin {
    /// The target table as the source's connection names it.
    pub table: String,
    /// `EXISTS (SELECT 1 FROM target AS bitmig_twin WHERE <key and every column equal>)`.
    equal: String,
}

/// The target's alias in [`PurgeTwin`]'s condition; a source table of that name gets no twin.
const TWIN_ALIAS: &str = "`bitmig_twin`";

impl PurgeTwin {
    /// The twin for MySQL: `from` is the source table as its `DELETE` names it, `table` the target
    /// qualified with its database, `columns` the compared columns (quoted) with their type as the catalog
    /// writes it (`bigint(20) unsigned`, `varchar(40)`). Numbers, dates and times are compared as values
    /// (`<=>`; the types are equal, so equal values are the same value: only a float's `-0` equals `0`);
    /// not as text, which would call two floats equal that differ past the 6th digit (MariaDB writes a
    /// FLOAT with 6). Everything else is compared as the bytes of its text (`CAST(… AS BINARY)`), so that no
    /// collation calls `a` and `A`, or `a` and `a `, equal.
    pub fn mysql(from: &str, key: &str, table: &str, columns: &[(String, String)]) -> Self {
        let mut preds = vec![format!("{TWIN_ALIAS}.{key} = {from}.{key}")];
        for (name, ty) in columns.iter().filter(|(name, _)| name != key) {
            let (t, s) = (format!("{TWIN_ALIAS}.{name}"), format!("{from}.{name}"));
            preds.push(if crate::digest::pushdown::is_number_or_time(ty) {
                format!("{t} <=> {s}")
            } else {
                format!("CAST({t} AS BINARY) <=> CAST({s} AS BINARY)")
            });
        }
        Self {
            table: table.to_owned(),
            equal: format!(
                "EXISTS (SELECT 1 FROM {table} AS {TWIN_ALIAS} WHERE {})",
                preds.join(" AND ")
            ),
        }
    }
}

/// The SQL of a purge transaction, for one engine's placeholders.
pub(crate) struct PurgeSql {
    /// `SELECT cols[, (filter) IS TRUE] FROM t WHERE (ranges) ORDER BY key FOR UPDATE`, parameters
    /// being the ranges' bounds in order.
    pub lock: String,
    /// Whether the lock query's last column is the filter's verdict.
    pub has_filter: bool,
}

impl PurgeSql {
    /// The lock query for `ranges` (non-empty), selecting `select_list`; `placeholder(n)` is the n-th
    /// (1-based) key parameter.
    pub fn lock(
        sql: &SourceSql,
        raw_filter: Option<&str>,
        select_list: &str,
        ranges: &[IdRange],
        placeholder: impl Fn(usize) -> String,
    ) -> Self {
        let k = &sql.key;
        let verdict = raw_filter
            .map(|f| format!(", (({f}) IS TRUE)"))
            .unwrap_or_default();
        Self {
            lock: format!(
                "SELECT {select_list}{verdict} FROM {t} WHERE {where_} ORDER BY {k} FOR UPDATE",
                t = sql.from_table,
                where_ = Self::ranges_where(&sql.key, ranges, placeholder),
            ),
            has_filter: raw_filter.is_some(),
        }
    }

    /// The parameters of [`PurgeSql::lock`] for `ranges`, in placeholder order: a single key once, a
    /// range's two bounds.
    pub fn bounds(ranges: &[IdRange]) -> Vec<u64> {
        ranges
            .iter()
            .flat_map(|r| {
                if r[0] == r[1] {
                    vec![r[0]]
                } else {
                    vec![r[0], r[1]]
                }
            })
            .collect()
    }

    /// `key = ? OR key BETWEEN ? AND ? …` for `ranges` (`1 = 0` for none), parameters being
    /// [`PurgeSql::bounds`].
    fn ranges_where(k: &str, ranges: &[IdRange], placeholder: impl Fn(usize) -> String) -> String {
        let mut n = 0;
        let mut next = || {
            n += 1;
            placeholder(n)
        };
        let preds: Vec<String> = ranges
            .iter()
            .map(|r| {
                if r[0] == r[1] {
                    format!("{k} = {}", next())
                } else {
                    format!("{k} BETWEEN {} AND {}", next(), next())
                }
            })
            .collect();
        if preds.is_empty() {
            "1 = 0".to_owned()
        } else {
            preds.join(" OR ")
        }
    }

    /// `DELETE FROM t WHERE (ranges)`, parameters being [`PurgeSql::bounds`]. The ranges hold only rows
    /// to delete ([`PurgeTx::delete`]): a proven batch is mostly one or a few runs, one `BETWEEN` where a
    /// key list would send and parse 10 000 keys.
    fn delete(
        sql: &SourceSql,
        ranges: &[IdRange],
        placeholder: impl Fn(usize) -> String,
    ) -> String {
        format!(
            "DELETE FROM {} WHERE {}",
            sql.from_table,
            Self::ranges_where(&sql.key, ranges, placeholder)
        )
    }

    /// `ranges` checked for [`PurgeSql::delete`]: ascending and apart; refused otherwise (nothing deleted).
    fn check_delete_ranges(ranges: &[IdRange]) -> Result<(), String> {
        let bad =
            ranges.iter().any(|r| r[0] > r[1]) || ranges.windows(2).any(|w| w[0][1] >= w[1][0]);
        if bad {
            return Err(format!(
                "the ranges to delete are not ascending and apart ({} ranges): nothing deleted",
                ranges.len()
            ));
        }
        Ok(())
    }

    /// At most this many ranges per `DELETE` (two parameters each, under every engine's limit).
    const DELETE_RANGES: usize = 10_000;

    /// The `DELETE` statements of [`PurgeTx::delete`] for `ranges`, each with its parameters (the bounds,
    /// for the engine to convert); an error naming `sql`'s table, before any statement, unless the ranges
    /// are ascending and apart.
    pub fn deletes(
        sql: &SourceSql,
        ranges: &[IdRange],
        placeholder: impl Fn(usize) -> String + Copy,
    ) -> Result<Vec<(String, Vec<u64>)>, SourceError> {
        Self::check_delete_ranges(ranges).map_err(|message| SourceError::Query {
            table: sql.table_label.clone(),
            message,
            transient: false,
        })?;
        Ok(ranges
            .chunks(Self::DELETE_RANGES)
            .map(|chunk| (Self::delete(sql, chunk, placeholder), Self::bounds(chunk)))
            .collect())
    }

    /// `DELETE FROM t WHERE (exactly the keys of ranges) AND (filter) AND <equal in twin>`, without
    /// parameters ([`PurgeTx::delete_equal`]).
    pub fn delete_equal(sql: &SourceSql, ranges: &[IdRange], twin: &PurgeTwin) -> String {
        format!(
            "DELETE FROM {} WHERE ({}){} AND {}",
            sql.from_table,
            crate::sql::batch_keys(&sql.key, ranges),
            sql.filter,
            twin.equal
        )
    }

    /// `SELECT MAX(key)` over the whole table (no filter).
    pub fn max_key(sql: &SourceSql, cast: &str) -> String {
        format!(
            "SELECT MAX({k}){cast} FROM {t}",
            k = sql.key,
            t = sql.from_table
        )
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

    #[test]
    fn the_lock_reads_exactly_the_ranges_without_filter_and_reports_its_verdict() {
        let q = PurgeSql::lock(
            &sql(),
            Some("x > 0"),
            "`id`, `x`",
            &[[1, 5], [9, 9]],
            |_| "?".into(),
        );
        assert_eq!(
            q.lock,
            "SELECT `id`, `x`, ((x > 0) IS TRUE) FROM `src` WHERE `id` BETWEEN ? AND ? OR `id` = ? \
             ORDER BY `id` FOR UPDATE"
        );
        assert!(q.has_filter);
        assert_eq!(PurgeSql::bounds(&[[1, 5], [9, 9]]), vec![1, 5, 9]);
        let pg = PurgeSql::lock(&sql(), None, "*", &[[1, 1], [3, 4]], |n| format!("${n}"));
        assert!(
            pg.lock.contains("`id` = $1 OR `id` BETWEEN $2 AND $3"),
            "{}",
            pg.lock
        );
        let q = PurgeSql::lock(&sql(), None, "*", &[[3, 4]], |n| format!("${n}::int8"));
        assert_eq!(
            q.lock,
            "SELECT * FROM `src` WHERE `id` BETWEEN $1::int8 AND $2::int8 ORDER BY `id` FOR UPDATE"
        );
        assert!(!q.has_filter);
        assert_eq!(PurgeSql::check_delete_ranges(&[[1, 3], [7, 7]]), Ok(()));
        assert!(PurgeSql::check_delete_ranges(&[[1, 3], [3, 7]]).is_err());
        assert!(PurgeSql::check_delete_ranges(&[[5, 9], [1, 2]]).is_err());
        assert!(PurgeSql::check_delete_ranges(&[[5, 4]]).is_err());
        let d = PurgeSql::deletes(&sql(), &[[1, 3], [5, 5]], |_| "?".into()).expect("apart");
        assert_eq!(
            d,
            vec![(
                "DELETE FROM `src` WHERE `id` BETWEEN ? AND ? OR `id` = ?".to_owned(),
                vec![1, 3, 5]
            )]
        );
        let refused = PurgeSql::deletes(&sql(), &[[1, 3], [2, 5]], |_| "?".into());
        assert!(
            matches!(&refused, Err(SourceError::Query { table, transient: false, .. }) if table == "src"),
            "{refused:?}"
        );
        let none = PurgeSql::lock(&sql(), None, "*", &[], |_| "?".into());
        assert!(none.lock.contains("WHERE 1 = 0"));
    }

    #[test]
    fn the_server_deletes_exactly_the_batch_keys_under_the_filter_that_equal_their_twin() {
        let twin = PurgeTwin::mysql(
            "`src`",
            "`id`",
            "`arch`.`src_hist`",
            &[
                ("`id`".into(), "bigint(20) unsigned".into()),
                ("`name`".into(), "varchar(40)".into()),
                ("`amount`".into(), "decimal(10,2)".into()),
                ("`ratio`".into(), "double".into()),
                ("`at`".into(), "datetime(6)".into()),
            ],
        );
        assert_eq!(
            PurgeSql::delete_equal(&sql(), &[[1, 7], [9, 9]], &twin),
            "DELETE FROM `src` WHERE (`id` BETWEEN 1 AND 9 AND `id` NOT IN (8)) AND (x > 0) AND \
             EXISTS (SELECT 1 FROM `arch`.`src_hist` AS `bitmig_twin` WHERE `bitmig_twin`.`id` = `src`.`id` \
             AND CAST(`bitmig_twin`.`name` AS BINARY) <=> CAST(`src`.`name` AS BINARY) \
             AND `bitmig_twin`.`amount` <=> `src`.`amount` \
             AND `bitmig_twin`.`ratio` <=> `src`.`ratio` \
             AND `bitmig_twin`.`at` <=> `src`.`at`)"
        );
    }

    #[test]
    fn deletes_go_by_key_and_the_max_key_ignores_the_filter() {
        assert_eq!(
            PurgeSql::delete(&sql(), &[[3, 3], [5, 9]], |_| "?".into()),
            "DELETE FROM `src` WHERE `id` = ? OR `id` BETWEEN ? AND ?"
        );
        assert_eq!(
            PurgeSql::delete(&sql(), &[[1, 10_000]], |n| format!("${n}::int8")),
            "DELETE FROM `src` WHERE `id` BETWEEN $1::int8 AND $2::int8"
        );
        assert_eq!(PurgeSql::max_key(&sql(), ""), "SELECT MAX(`id`) FROM `src`");
    }
}
