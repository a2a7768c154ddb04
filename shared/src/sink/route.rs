//! Which target table a row goes to (`[target] table` templates and `[target.ranges]`, DESIGN.md §2).
//!
//! A [`Router`] is built from the job's route and the columns the source reads; building it checks that
//! every route column is read and of a type its placeholder can use, so a wrong job stops the consumer at
//! start (exit 2). Resolving a row never fails the batch: a row whose route cannot be computed gets a reason
//! and goes to `failed` on its own.
//!
//! | part | value | table part |
//! | --- | --- | --- |
//! | `{col % N}` | an integer column | `value mod N`, Euclidean: a negative value still yields `0..N-1` (`-1 % 16` → `15`), the same as the Elasticsearch sink |
//! | `{col:FORMAT}` | DATE, DATETIME, TIMESTAMP (MySQL), date, timestamp, timestamptz (PostgreSQL) | the chrono `FORMAT` of the value's own fields, no time zone conversion (TIMESTAMP and timestamptz are read in UTC); a zero date (`0000-00-00`) or an impossible one is a failed row |
//! | `[target.ranges]` | `source.key` | the table of the range holding the key; a key outside every range is a failed row |
//!
//! NULL in a route column is a failed row. The resolved name must be an identifier (optionally qualified
//! by a database or schema, `shard_1.orders_5`) of at most 64 characters, or the row fails.

use std::fmt::Write as _;

use crate::job::{RangeMap, Route, RoutePart, TableName, TableRoute};
use crate::value::{Column, ColumnType, Row, Value};

/// Resolves rows of one column layout to target tables.
#[derive(Debug, Clone)]
pub(crate) enum Router {
    /// Every row to one table.
    Fixed(TableName),
    Template(Template),
    Ranges(RangeMap),
}

/// A route template checked against the columns read: the one resolver of `{col % N}` and
/// `{col:FORMAT}` for SQL tables and Elasticsearch indices alike. [`Template::render`] yields the raw name;
/// the caller checks it is a valid table or index name.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    HashMod {
        at: usize,
        name: String,
        modulus: u64,
    },
    Time {
        at: usize,
        name: String,
        format: String,
    },
}

/// Column types a `{col:FORMAT}` part accepts.
pub(crate) fn is_date(ty: ColumnType) -> bool {
    matches!(
        ty,
        ColumnType::Date | ColumnType::DateTime | ColumnType::Timestamp
    )
}

/// `value mod modulus`, Euclidean: always in `0..modulus`, also for a modulus above `i64::MAX`.
pub(crate) fn bucket_of_int(value: i64, modulus: u64) -> u64 {
    // rem_euclid of a positive modulus is in 0..modulus; a modulus above i64::MAX leaves every i64 but the
    // negative ones as they are, and a negative one becomes value + modulus (still below modulus).
    match i64::try_from(modulus) {
        Ok(m) => value.rem_euclid(m) as u64,
        Err(_) if value >= 0 => value as u64,
        Err(_) => (i128::from(value) + i128::from(modulus)) as u64,
    }
}

impl Template {
    /// Check every part of `route` against `columns`. `what` names the job field in errors
    /// (`target.table`, `target.index`).
    pub fn new(route: &Route, columns: &[Column], what: &str) -> Result<Self, String> {
        let find = |column: &str| {
            columns.iter().position(|c| c.name == column).ok_or_else(|| {
                format!(
                    "{what} `{}`: the route column `{column}` is not among the columns the source reads",
                    route.template
                )
            })
        };
        let mut pieces = Vec::with_capacity(route.parts.len());
        for part in &route.parts {
            pieces.push(match part {
                RoutePart::Literal(l) => Piece::Literal(l.clone()),
                RoutePart::HashMod { column, modulus } => {
                    let at = find(column.as_str())?;
                    if !matches!(columns[at].ty, ColumnType::Int { .. }) {
                        return Err(format!(
                            "{what} `{}`: `{column}` is {}, but {{{column} % {modulus}}} needs an integer \
                             column",
                            route.template, columns[at].type_name
                        ));
                    }
                    Piece::HashMod {
                        at,
                        name: column.to_string(),
                        modulus: *modulus,
                    }
                }
                RoutePart::Time { column, format } => {
                    let at = find(column.as_str())?;
                    if !is_date(columns[at].ty) {
                        return Err(format!(
                            "{what} `{}`: `{column}` is {}, but {{{column}:{format}}} needs a date or \
                             timestamp column (DATE, DATETIME or TIMESTAMP)",
                            route.template, columns[at].type_name
                        ));
                    }
                    Piece::Time {
                        at,
                        name: column.to_string(),
                        format: format.clone(),
                    }
                }
            });
        }
        Ok(Self { pieces })
    }

    /// The name `row` routes to, or why it has none (a NULL, a value of the wrong kind, no calendar date).
    pub fn render(&self, row: &Row) -> Result<String, String> {
        let mut name = String::with_capacity(32);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => name.push_str(l),
                Piece::HashMod {
                    at,
                    name: col,
                    modulus,
                } => {
                    let bucket = match row.values.get(*at) {
                        Some(Value::Int(i)) => bucket_of_int(*i, *modulus),
                        Some(Value::UInt(u)) => u % modulus,
                        Some(Value::Null) | None => {
                            return Err(format!("route column `{col}` is NULL"));
                        }
                        Some(other) => {
                            return Err(format!(
                                "route column `{col}` holds {other:?}, not an integer"
                            ));
                        }
                    };
                    let _ = write!(name, "{bucket}");
                }
                Piece::Time {
                    at,
                    name: col,
                    format,
                } => match row.values.get(*at) {
                    Some(Value::Date(y, mo, d, h, mi, s, us)) => {
                        let Some(t) =
                            chrono::NaiveDate::from_ymd_opt((*y).into(), (*mo).into(), (*d).into())
                                .and_then(|date| {
                                    date.and_hms_micro_opt(
                                        (*h).into(),
                                        (*mi).into(),
                                        (*s).into(),
                                        *us,
                                    )
                                })
                        else {
                            return Err(format!(
                                "route column `{col}` holds {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}, \
                                 which is not a calendar date (a zero date has no route)"
                            ));
                        };
                        write!(name, "{}", t.format(format)).map_err(|_| {
                            format!("route column `{col}`: `{format}` is not a chrono format")
                        })?;
                    }
                    Some(Value::Null) | None => {
                        return Err(format!("route column `{col}` is NULL"))
                    }
                    Some(other) => {
                        return Err(format!("route column `{col}` holds {other:?}, not a date"));
                    }
                },
            }
        }
        Ok(name)
    }
}

impl Router {
    /// Check the route against the columns read. `Err` names the column and says what is wrong.
    pub fn new(route: &TableRoute, columns: &[Column]) -> Result<Self, String> {
        let template = match route {
            TableRoute::Ranges(map) => return Ok(Router::Ranges(map.clone())),
            TableRoute::Template(t) => t,
        };
        if let Some(name) = template.plain() {
            return TableName::parse(name)
                .map(Router::Fixed)
                .map_err(|e| format!("target.table `{name}`: {e}"));
        }
        Template::new(template, columns, "target.table").map(Router::Template)
    }

    /// The one table of every row, for a plain route.
    pub fn fixed(&self) -> Option<&TableName> {
        match self {
            Router::Fixed(t) => Some(t),
            _ => None,
        }
    }

    /// Every table the route can name, when that is a known list (plain names and ranges).
    pub fn known_tables(&self) -> Option<Vec<TableName>> {
        match self {
            Router::Fixed(t) => Some(vec![t.clone()]),
            Router::Ranges(map) => {
                let mut tables: Vec<TableName> = Vec::new();
                for r in &map.ranges {
                    if !tables.contains(&r.table) {
                        tables.push(r.table.clone());
                    }
                }
                Some(tables)
            }
            Router::Template(_) => None,
        }
    }

    /// The table `row` goes to, or why it has none.
    pub fn resolve(&self, row: &Row) -> Result<TableName, String> {
        let template = match self {
            Router::Fixed(t) => return Ok(t.clone()),
            Router::Ranges(map) => {
                return map.table_of(row.key).cloned().ok_or_else(|| {
                    format!(
                        "route: key {} is outside every range of [target.ranges]",
                        row.key
                    )
                })
            }
            Router::Template(template) => template,
        };
        let name = template.render(row).map_err(|e| format!("route: {e}"))?;
        TableName::parse(&name).map_err(|e| format!("route: the table name {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::RangeMap;

    fn columns() -> Vec<Column> {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
            type_name: format!("{ty:?}"),
        };
        vec![
            col("id", ColumnType::Int { unsigned: true }),
            col("user_id", ColumnType::Int { unsigned: false }),
            col("created_at", ColumnType::DateTime),
            col("note", ColumnType::Text),
        ]
    }

    fn row(key: u64, user: Value, created: Value) -> Row {
        Row {
            key,
            values: vec![Value::UInt(key), user, created, Value::Null],
        }
    }

    fn router(template: &str) -> Router {
        Router::new(
            &TableRoute::Template(Route::parse(template).unwrap()),
            &columns(),
        )
        .unwrap()
    }

    const JAN31: Value = Value::Date(2024, 1, 31, 23, 59, 58, 5);

    #[test]
    fn hash_mod_is_euclidean_for_negative_values() {
        let r = router("orders_{user_id % 16}");
        let table = |v| r.resolve(&row(1, v, JAN31)).unwrap().to_string();
        assert_eq!(table(Value::Int(0)), "orders_0");
        assert_eq!(table(Value::Int(17)), "orders_1");
        assert_eq!(table(Value::Int(-1)), "orders_15");
        assert_eq!(table(Value::Int(-16)), "orders_0");
        assert_eq!(table(Value::Int(i64::MIN)), "orders_0");
        assert_eq!(table(Value::UInt(u64::MAX)), "orders_15");
        let huge = router("o_{user_id % 18446744073709551615}");
        assert_eq!(
            huge.resolve(&row(1, Value::Int(-1), JAN31))
                .unwrap()
                .to_string(),
            "o_18446744073709551614"
        );
    }

    #[test]
    fn database_part_and_time_part_resolve() {
        let r = router("shard_{user_id % 4}.orders_{user_id % 16}");
        let t = r.resolve(&row(1, Value::Int(13), JAN31)).unwrap();
        assert_eq!(t.schema.as_ref().unwrap().as_str(), "shard_1");
        assert_eq!(t.table.as_str(), "orders_13");
        let r = router("orders_{created_at:%Y%m}");
        assert_eq!(
            r.resolve(&row(1, Value::Int(1), JAN31))
                .unwrap()
                .to_string(),
            "orders_202401"
        );
        let r = router("orders_{created_at:%Y_%m_%d}");
        assert_eq!(
            r.resolve(&row(1, Value::Int(1), Value::Date(999, 12, 1, 0, 0, 0, 0)))
                .unwrap()
                .to_string(),
            "orders_0999_12_01"
        );
    }

    #[test]
    fn rows_without_a_route_get_a_reason() {
        let r = router("orders_{user_id % 16}");
        let err = r.resolve(&row(1, Value::Null, JAN31)).unwrap_err();
        assert!(err.contains("`user_id` is NULL"), "{err}");
        let r = router("orders_{created_at:%Y%m}");
        let err = r
            .resolve(&row(1, Value::Int(1), Value::Date(0, 0, 0, 0, 0, 0, 0)))
            .unwrap_err();
        assert!(err.contains("not a calendar date"), "{err}");
        let err = r
            .resolve(&row(1, Value::Int(1), Value::Date(2023, 2, 29, 0, 0, 0, 0)))
            .unwrap_err();
        assert!(err.contains("2023-02-29"), "{err}");
        assert!(r.resolve(&row(1, Value::Int(1), Value::Null)).is_err());
        let long = router(
            "a_very_long_table_name_that_is_almost_at_the_limit_of_sixty_four_{user_id % 1000}",
        );
        let err = long.resolve(&row(1, Value::Int(999), JAN31)).unwrap_err();
        assert!(err.contains("not an identifier"), "{err}");
    }

    #[test]
    fn ranges_route_by_key() {
        let map =
            RangeMap::parse(&toml::from_str("\"0..99\" = \"a\"\n\"200..299\" = \"s.b\"").unwrap())
                .unwrap();
        let r = Router::new(&TableRoute::Ranges(map), &columns()).unwrap();
        let at = |key| r.resolve(&row(key, Value::Int(1), JAN31));
        assert_eq!(at(0).unwrap().to_string(), "a");
        assert_eq!(at(99).unwrap().to_string(), "a");
        assert_eq!(at(250).unwrap().to_string(), "s.b");
        let err = at(100).unwrap_err();
        assert!(err.contains("key 100 is outside every range"), "{err}");
        assert!(at(300).is_err());
        assert_eq!(r.known_tables().unwrap().len(), 2);
    }

    #[test]
    fn route_columns_must_be_read_and_fit() {
        let route = |t: &str| TableRoute::Template(Route::parse(t).unwrap());
        let err = Router::new(&route("o_{missing % 2}"), &columns()).unwrap_err();
        assert!(err.contains("`missing` is not among the columns"), "{err}");
        let err = Router::new(&route("o_{note % 2}"), &columns()).unwrap_err();
        assert!(err.contains("needs an integer column"), "{err}");
        let err = Router::new(&route("o_{user_id:%Y}"), &columns()).unwrap_err();
        assert!(err.contains("needs a date"), "{err}");
        assert!(Router::new(&route("plain"), &columns())
            .unwrap()
            .fixed()
            .is_some());
    }
}
