//! Digests computed by MySQL/MariaDB itself, for MySQL/MariaDB → MySQL/MariaDB jobs whose compared columns
//! have the same types on both sides (pt-table-checksum style): only one row per chunk crosses the network.
//!
//! Each row is reduced in SQL to `SHA1(CONCAT_WS(',', QUOTE(CAST(k AS BINARY)), QUOTE(CAST(c₁ AS BINARY)),
//! …))`. `QUOTE` makes each value NULL-safe and unambiguous (NULL is the bare word `NULL`, a value is quoted
//! with `\`, `'`, NUL and ^Z escaped, so no separator inside a value can shift the others); `CAST(… AS
//! BINARY)` makes it type-exact (the bytes of the value's own text form: `1.50` stays `1.50`, a DATETIME(6)
//! keeps its microseconds, a trailing space stays) and avoids collation mixes. That is why both sides must
//! have the same column types (and character sets): the text forms are then the same for the same values.
//! TIMESTAMP's text depends on the session time zone: use connections from [`crate::sql::mysql_pool`] (UTC)
//! on both sides. SHA1, not MD5: MariaDB computes it about 1.5× faster here; not CRC32: 32 bits is too
//! narrow to prove millions of rows.
//!
//! [`MysqlChecksum::with_types`] (what verify uses) writes numbers and times bare instead (`IFNULL(c,
//! 'NULL')`: their text never holds `,` or `'`, and no number or time reads `NULL`), which the server
//! computes about 15 % faster, and a FLOAT as the DOUBLE it is (a FLOAT's own text has only 6 significant
//! digits: two FLOATs differing past them would hash the same, which [`MysqlChecksum::new`] still does).
//!
//! Per range ([`MysqlChecksum::range_digest`], no `GROUP BY`, the cheapest) or per chunk of keys
//! ([`MysqlChecksum::chunk_digests`], a `GROUP BY` and so a temporary table), the server returns
//! `COUNT(*)` and the exact `SUM` of the first 16 hex digits (64 bits) of each row's hash, as DECIMAL text,
//! so it cannot overflow (4 M rows × 2⁶⁴ < 2⁸⁶); the sum lands in [`GroupDigest::sum`] (its `xor` stays 0).
//! A per-key query returns `(key, SHA1)`, its first 128 bits as the hash for [`super::diff::merge_keyed`].
//! These hashes are comparable only with each other, not with the client-side xxh3 digests of
//! [`super::canon`]. Most of the server's time goes into building each row's text, not the hash: two
//! CRC32s summed as 64 bits cost about what SHA1 does, MD5 about twice (see README, "Verifying content").
//!
//! SQL text is built only from identifiers validated by [`Ident`] and quoted by [`crate::sql::quote`]; the
//! job's `filter` is appended as the sources append it.

use mysql_async::prelude::Queryable;

use super::{ChunkDigests, DigestError, GroupDigest};
use crate::job::{Engine, Ident, TableName};
use crate::sql::{mysql_error_text, mysql_is_transient, quote, quote_table};

/// `(COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME)` of a table's columns; parameters: the schema (NULL for
/// the connection's database) and the table. Feed both sides' answers to [`types_match`].
pub const MYSQL_COLUMN_TYPES_SQL: &str = "SELECT COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME \
     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?";

/// One column as [`MYSQL_COLUMN_TYPES_SQL`] describes it.
pub type MysqlColumnType = (String, String, Option<String>);

/// Whether the pushdown may compare `names` between two tables: every name present on both sides with the
/// same full type (`decimal(10,2)`, `bigint(20) unsigned`, `varchar(40)`) and character set. `Err` names
/// the first column that prevents it (then digest on the client).
pub fn types_match(
    names: &[&str],
    source: &[MysqlColumnType],
    target: &[MysqlColumnType],
) -> Result<(), String> {
    let find = |side: &[MysqlColumnType], name: &str| {
        side.iter()
            .find(|c| c.0.eq_ignore_ascii_case(name))
            .map(|c| (c.1.to_ascii_lowercase(), c.2.clone()))
    };
    for name in names {
        match (find(source, name), find(target, name)) {
            (Some(s), Some(t)) if s == t => {}
            (Some(s), Some(t)) => {
                return Err(format!(
                    "column `{name}` is {} {:?} in the source and {} {:?} in the target",
                    s.0, s.1, t.0, t.1
                ))
            }
            _ => return Err(format!("column `{name}` is missing on one side")),
        }
    }
    Ok(())
}

/// MariaDB's JSON columns of a table (a JSON column there is a LONGTEXT whose check constraint, named
/// after the column, is `json_valid(col)`), to mark with [`super::RowPlan::compare_as_json`]. Empty on
/// MySQL, whose JSON is a type of its own that the readers see (its catalog has no such table column).
pub async fn mariadb_json_columns(
    conn: &mut mysql_async::Conn,
    schema: Option<&str>,
    table: &str,
) -> Result<Vec<String>, DigestError> {
    let sql = "SELECT CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS \
               WHERE CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
               AND CHECK_CLAUSE = CONCAT('json_valid(`', CONSTRAINT_NAME, '`)')";
    match conn.exec(sql, (schema, table)).await {
        Ok(names) => Ok(names),
        // MySQL: no TABLE_NAME in CHECK_CONSTRAINTS, and no need for it
        Err(mysql_async::Error::Server(e)) if e.code == 1054 => Ok(Vec::new()),
        Err(e) => Err(query_error(e)),
    }
}

/// A query failed.
fn query_error(e: mysql_async::Error) -> DigestError {
    DigestError::Query {
        transient: mysql_is_transient(&e),
        message: mysql_error_text(&e),
    }
}

/// Whether a column of this MySQL type (`COLUMN_TYPE`, as [`MYSQL_COLUMN_TYPES_SQL`] gives it) needs
/// `QUOTE` in the row expression: everything but numbers and times ([`is_number_or_time`]), whose text
/// never holds a `,` or a `'` and which are written bare (cheaper: about 15 % of the query's time on the
/// benchmark's table), with NULL as the bare word `NULL` that no number or time is.
pub fn needs_quote(column_type: &str) -> bool {
    !is_number_or_time(column_type)
}

/// Whether a column of this MySQL type (`COLUMN_TYPE`) holds a number, a date or a time.
pub fn is_number_or_time(column_type: &str) -> bool {
    matches!(
        base_type(column_type).as_str(),
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "integer"
            | "bigint"
            | "decimal"
            | "numeric"
            | "float"
            | "double"
            | "real"
            | "date"
            | "datetime"
            | "timestamp"
            | "time"
            | "year"
    )
}

/// A `COLUMN_TYPE`'s base type, lowercased: `decimal` for `decimal(10,2)`, `bigint` for `bigint(20) unsigned`.
fn base_type(column_type: &str) -> String {
    column_type
        .split(['(', ' '])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The checksum queries of one table.
#[derive(Debug, Clone)]
pub struct MysqlChecksum {
    chunks_sql: String,
    range_sql: String,
    keys_sql: String,
}

impl MysqlChecksum {
    /// Queries over `table`, keyed by `key`, comparing `columns` (the same list, in the same order, on both
    /// sides), restricted by the job's `filter` (`None` on the target side). Every value is quoted.
    pub fn new(table: &TableName, key: &Ident, columns: &[Ident], filter: Option<&str>) -> Self {
        let values: Vec<String> = columns.iter().map(Self::quoted).collect();
        Self::build(table, key, &values, filter, true)
    }

    /// As [`MysqlChecksum::new`], with each column's `COLUMN_TYPE` (the same on both sides, see
    /// [`types_match`]): numbers and times are written bare ([`needs_quote`]), which the server computes
    /// faster. A FLOAT is written as the DOUBLE it is: MariaDB writes a FLOAT's text with 6 significant
    /// digits, so two FLOATs that differ past the 6th would hash the same; a DOUBLE's text has 17, enough
    /// to tell any two apart.
    pub fn with_types(
        table: &TableName,
        key: &Ident,
        columns: &[(Ident, &str)],
        filter: Option<&str>,
    ) -> Self {
        let values: Vec<String> = columns
            .iter()
            .map(|(c, ty)| {
                let q = quote(Engine::Mysql, c);
                if needs_quote(ty) {
                    Self::quoted(c)
                } else if base_type(ty) == "float" {
                    format!("IFNULL(CAST({q} AS DOUBLE), 'NULL')")
                } else {
                    format!("IFNULL({q}, 'NULL')")
                }
            })
            .collect();
        Self::build(table, key, &values, filter, false)
    }

    /// A column's value in the row expression, quoted: NULL-safe, unambiguous and type-exact.
    fn quoted(c: &Ident) -> String {
        format!("QUOTE(CAST({} AS BINARY))", quote(Engine::Mysql, c))
    }

    /// `values`: each compared column's expression ([`MysqlChecksum::quoted`] or bare), in order.
    fn build(
        table: &TableName,
        key: &Ident,
        values: &[String],
        filter: Option<&str>,
        quote_key: bool,
    ) -> Self {
        let k = quote(Engine::Mysql, key);
        let t = quote_table(Engine::Mysql, table);
        let mut row = if quote_key {
            format!("CONCAT_WS(',', QUOTE(CAST({k} AS BINARY))")
        } else {
            format!("CONCAT_WS(',', {k}")
        };
        for v in values {
            row.push_str(", ");
            row.push_str(v);
        }
        row.push(')');
        let filter = filter.map(|f| format!(" AND ({f})")).unwrap_or_default();
        let sum = format!(
            "CAST(COALESCE(SUM(CAST(CONV(LEFT(SHA1({row}), 16), 16, 10) AS UNSIGNED)), 0) AS CHAR)"
        );
        let chunks_sql = format!(
            "SELECT ({k} - ?) DIV ? AS bitmig_chunk, COUNT(*), {sum} \
             FROM {t} WHERE {k} BETWEEN ? AND ?{filter} GROUP BY bitmig_chunk"
        );
        let range_sql =
            format!("SELECT COUNT(*), {sum} FROM {t} WHERE {k} BETWEEN ? AND ?{filter}");
        let keys_sql = format!(
            "SELECT {k}, LEFT(SHA1({row}), 32) FROM {t} WHERE {k} BETWEEN ? AND ?{filter} ORDER BY {k}"
        );
        Self {
            chunks_sql,
            range_sql,
            keys_sql,
        }
    }

    /// The whole-range query; parameters `(first, last)`; one row `(count, sum)`. No `GROUP BY`, so no
    /// temporary table: the cheapest form, for the first look at a group.
    pub fn range_sql(&self) -> &str {
        &self.range_sql
    }

    /// The digest of every row in `first..=last`, computed by the server (its `xor` is 0).
    pub async fn range_digest(
        &self,
        conn: &mut mysql_async::Conn,
        first: u64,
        last: u64,
    ) -> Result<GroupDigest, DigestError> {
        let row: Option<(u64, String)> = conn
            .exec_first(&self.range_sql, (first, last))
            .await
            .map_err(query_error)?;
        let (rows, sum) = row.ok_or_else(|| DigestError::BadResult("no row".into()))?;
        let sum: u128 = sum
            .parse()
            .map_err(|_| DigestError::BadResult(format!("a sum of `{sum}`")))?;
        Ok(GroupDigest { rows, sum, xor: 0 })
    }

    /// The per-chunk query; parameters `(first, chunk, first, last)`; rows `(chunk number, count, sum)`.
    pub fn chunks_sql(&self) -> &str {
        &self.chunks_sql
    }

    /// The per-key query; parameters `(first, last)`; rows `(key, 32 hex digits of SHA1)` ascending by key.
    pub fn keys_sql(&self) -> &str {
        &self.keys_sql
    }

    /// The digests of `first..=last` in chunks of `chunk` keys, computed by the server.
    pub async fn chunk_digests(
        &self,
        conn: &mut mysql_async::Conn,
        first: u64,
        last: u64,
        chunk: u64,
    ) -> Result<ChunkDigests, DigestError> {
        let chunk = chunk.max(1);
        let rows: Vec<(u64, u64, String)> = conn
            .exec(&self.chunks_sql, (first, chunk, first, last))
            .await
            .map_err(query_error)?;
        let mut out = ChunkDigests::new(first, last, chunk);
        for (i, count, sum) in rows {
            let sum: u128 = sum
                .parse()
                .map_err(|_| DigestError::BadResult(format!("a sum of `{sum}`")))?;
            let d = GroupDigest {
                rows: count,
                sum,
                xor: 0,
            };
            if !out.merge_chunk(i as usize, &d) {
                return Err(DigestError::BadResult(format!("chunk {i} out of range")));
            }
        }
        Ok(out)
    }

    /// `(key, first 128 bits of the row's SHA1)` of every row in `first..=last`, ascending by key.
    pub async fn key_hashes(
        &self,
        conn: &mut mysql_async::Conn,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, u128)>, DigestError> {
        let rows: Vec<(u64, String)> = conn
            .exec(&self.keys_sql, (first, last))
            .await
            .map_err(query_error)?;
        rows.into_iter()
            .map(|(k, hex)| {
                u128::from_str_radix(&hex, 16)
                    .map(|h| (k, h))
                    .map_err(|_| DigestError::BadResult(format!("a hash of `{hex}`")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sql_quotes_every_name_and_appends_the_filter() {
        let t = TableName::parse("shop.orders").unwrap();
        let k = Ident::new("id").unwrap();
        let cols = [Ident::new("id").unwrap(), Ident::new("note").unwrap()];
        let q = MysqlChecksum::new(&t, &k, &cols, Some("created_at < '2024-10-01'"));
        assert_eq!(
            q.keys_sql(),
            "SELECT `id`, LEFT(SHA1(CONCAT_WS(',', QUOTE(CAST(`id` AS BINARY)), \
             QUOTE(CAST(`id` AS BINARY)), QUOTE(CAST(`note` AS BINARY)))), 32) \
             FROM `shop`.`orders` WHERE `id` BETWEEN ? AND ? AND (created_at < '2024-10-01') ORDER BY `id`"
        );
        assert!(q
            .chunks_sql()
            .starts_with("SELECT (`id` - ?) DIV ? AS bitmig_chunk, COUNT(*), "));
        assert!(q.chunks_sql().ends_with(
            "FROM `shop`.`orders` WHERE `id` BETWEEN ? AND ? AND (created_at < '2024-10-01') \
             GROUP BY bitmig_chunk"
        ));
        let plain = MysqlChecksum::new(&t, &k, &cols, None);
        assert!(plain.keys_sql().contains("BETWEEN ? AND ? ORDER BY"));
    }

    #[test]
    fn numbers_and_times_are_written_bare_and_everything_else_quoted() {
        for bare in [
            "bigint(20) unsigned",
            "INT",
            "decimal(12,2)",
            "double",
            "datetime(6)",
            "year(4)",
        ] {
            assert!(!needs_quote(bare), "{bare}");
        }
        for quoted in [
            "varchar(64)",
            "longtext",
            "varbinary(16)",
            "bit(12)",
            "enum('a','b')",
            "json",
        ] {
            assert!(needs_quote(quoted), "{quoted}");
        }
        let t = TableName::parse("orders").unwrap();
        let k = Ident::new("id").unwrap();
        let cols = [
            (Ident::new("amount").unwrap(), "decimal(12,2)"),
            (Ident::new("note").unwrap(), "varchar(64)"),
            (Ident::new("ratio").unwrap(), "float"),
        ];
        let q = MysqlChecksum::with_types(&t, &k, &cols, None);
        assert_eq!(
            q.range_sql(),
            "SELECT COUNT(*), CAST(COALESCE(SUM(CAST(CONV(LEFT(SHA1(CONCAT_WS(',', `id`, \
             IFNULL(`amount`, 'NULL'), QUOTE(CAST(`note` AS BINARY)), IFNULL(CAST(`ratio` AS DOUBLE), 'NULL'))), \
             16), 16, 10) AS UNSIGNED)), 0) AS CHAR) FROM `orders` WHERE `id` BETWEEN ? AND ?"
        );
    }

    #[test]
    fn types_must_match_column_for_column() {
        let side = |ty: &str| {
            vec![
                ("id".to_owned(), "bigint(20)".to_owned(), None),
                ("v".to_owned(), ty.to_owned(), Some("utf8mb4".to_owned())),
            ]
        };
        assert!(types_match(&["id", "v"], &side("varchar(10)"), &side("VARCHAR(10)")).is_ok());
        let e = types_match(&["id", "v"], &side("varchar(10)"), &side("text")).unwrap_err();
        assert!(e.contains("`v`"), "{e}");
        assert!(types_match(&["w"], &side("text"), &side("text")).is_err());
    }
}
