//! `[target] create = true` across engines: the column definitions of a target table, built from the
//! source table's catalog, the key as primary key.
//!
//! Same engine: MySQL copies `COLUMN_TYPE`, character set and nullability (or `CREATE TABLE … LIKE` on the
//! same server, see [`super::sql::mysql`]); PostgreSQL copies `format_type()` and `NOT NULL` (or
//! `(LIKE src INCLUDING ALL)` in the same database, see [`super::sql::postgres`]).
//!
//! MySQL → PostgreSQL follows pgloader's default casts where they keep every value:
//!
//! | MySQL | PostgreSQL |
//! | --- | --- |
//! | TINYINT(1), BIT(1) | boolean |
//! | TINYINT, SMALLINT, YEAR | smallint (TINYINT UNSIGNED too) |
//! | SMALLINT UNSIGNED, MEDIUMINT, INT | integer |
//! | INT UNSIGNED, BIGINT, BIT(2..64) | bigint |
//! | BIGINT UNSIGNED | numeric(20) |
//! | DECIMAL(p,s) | numeric(p,s) |
//! | FLOAT, DOUBLE | real, double precision |
//! | CHAR(n), VARCHAR(n) | char(n), varchar(n) |
//! | TEXT types, ENUM, SET | text |
//! | BINARY, VARBINARY, BLOB types, anything else | bytea |
//! | JSON (MySQL's type, MariaDB's `json_valid` LONGTEXT) | jsonb |
//! | DATE, TIME(p), DATETIME(p), TIMESTAMP(p) | date, time(p), timestamp(p), timestamptz(p) |
//!
//! PostgreSQL → MySQL: smallint, integer, bigint → SMALLINT, INT, BIGINT; numeric(p,s) → DECIMAL(p,s)
//! (a numeric without precision is refused: no DECIMAL holds every value); real, double precision → FLOAT,
//! DOUBLE; boolean → TINYINT(1); varchar(n), char(n) → VARCHAR(n), CHAR(n); text, enums → LONGTEXT; bytea →
//! LONGBLOB; date, time(p), timestamp(p) → DATE, TIME(p), DATETIME(p); timestamptz(p) → DATETIME(p) holding
//! UTC (a MySQL TIMESTAMP ends in 2038); json, jsonb → JSON; uuid → CHAR(36). Anything else is refused,
//! naming the column.

use mysql_async::prelude::Queryable;

use super::SinkError;
use crate::job::{Engine, Ident, SourceSpec};
use crate::sql::{mysql_error_text, mysql_pool, quote};

/// A source column as its catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceColumn {
    pub name: String,
    /// MySQL: `DATA_TYPE` (`int`, `varchar`, …); PostgreSQL: `udt_name` (`int4`, `varchar`, `_int4`, …).
    pub data_type: String,
    /// MySQL: `COLUMN_TYPE` (`int(10) unsigned`); PostgreSQL: `format_type()` (`character varying(20)`).
    pub full_type: String,
    pub char_len: Option<u64>,
    pub precision: Option<u64>,
    pub scale: Option<u64>,
    pub time_precision: Option<u64>,
    pub nullable: bool,
    /// MySQL: character set and collation of a text column.
    pub charset: Option<(String, String)>,
    /// A JSON column (MariaDB's JSON is a LONGTEXT with a `json_valid` check).
    pub json: bool,
}

fn wanted(source: &SourceSpec, name: &str) -> bool {
    source
        .columns
        .as_ref()
        .is_none_or(|cols| cols.iter().any(|c| c.as_str() == name))
}

fn read_failed(what: &str) -> SinkError {
    SinkError::Transient(format!(
        "target.create: reading the source table's columns: {what}"
    ))
}

/// The database a URL's path names, if any.
pub(crate) fn url_database(raw: &str) -> Option<String> {
    let parsed = url::Url::parse(raw).ok()?;
    let db = parsed.path().trim_start_matches('/');
    (!db.is_empty()).then(|| db.to_owned())
}

/// Host and port of a URL (`default_port` when it names none), lowercased; the loopback's names
/// (`localhost`, `127.0.0.1`, `::1`) are one host, so a server named two ways is one server.
pub(crate) fn server_of(raw: &str, default_port: u16) -> Option<(String, u16)> {
    let u = url::Url::parse(raw).ok()?;
    Some((
        crate::sql::server_host(u.host_str()?),
        u.port().unwrap_or(default_port),
    ))
}

/// A connection to a MySQL source's server for reading its catalog (with its pool, to disconnect), and the
/// database the source table is in: its `schema`, else the URL's. `failed` words a connection error.
pub(crate) async fn mysql_catalog(
    source: &SourceSpec,
    failed: fn(&str) -> SinkError,
) -> Result<(Option<String>, mysql_async::Pool, mysql_async::Conn), SinkError> {
    let database = source
        .table
        .schema
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .or_else(|| url_database(source.url.expose()));
    let pool = mysql_pool(&source.url, 1).map_err(SinkError::Batch)?;
    let conn = pool
        .get_conn()
        .await
        .map_err(|e| failed(&mysql_error_text(&e)))?;
    Ok((database, pool, conn))
}

/// The columns a MySQL source reads, from its `information_schema`.
pub(crate) async fn mysql_source_columns(
    source: &SourceSpec,
) -> Result<Vec<SourceColumn>, SinkError> {
    let (database, pool, mut conn) = mysql_catalog(source, read_failed).await?;
    type ColumnRow = (
        String,
        String,
        String,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        String,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, \
             NUMERIC_SCALE, DATETIME_PRECISION, IS_NULLABLE, CHARACTER_SET_NAME, COLLATION_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (database.as_deref(), source.table.table.as_str()),
        )
        .await
        .map_err(|e| read_failed(&mysql_error_text(&e)))?;
    // MariaDB's JSON columns are LONGTEXT with a json_valid() check; MySQL has no TABLE_NAME there (and a
    // JSON type of its own), so a failing query just means "no such checks".
    let checks: Vec<String> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
            (database.as_deref(), source.table.table.as_str()),
        )
        .await
        .unwrap_or_default();
    drop(conn);
    pool.disconnect().await.ok();
    let columns: Vec<SourceColumn> = rows
        .into_iter()
        .filter(|r| wanted(source, &r.0))
        .map(
            |(
                name,
                data_type,
                full_type,
                char_len,
                precision,
                scale,
                time_precision,
                nullable,
                cs,
                co,
            )| {
                let json = data_type.eq_ignore_ascii_case("json")
                    || checks
                        .iter()
                        .any(|c| c.replace('`', "").contains(&format!("json_valid({name})")));
                SourceColumn {
                    data_type: data_type.to_ascii_lowercase(),
                    full_type,
                    char_len,
                    precision,
                    scale,
                    time_precision,
                    nullable: nullable == "YES",
                    charset: cs.zip(co),
                    json,
                    name,
                }
            },
        )
        .collect();
    if columns.is_empty() {
        return Err(SinkError::Batch(format!(
            "target.create: the source table {} has no columns to copy (does it exist?)",
            source.table
        )));
    }
    Ok(columns)
}

/// The columns a PostgreSQL source reads, from its catalog.
pub(crate) async fn pg_source_columns(source: &SourceSpec) -> Result<Vec<SourceColumn>, SinkError> {
    let pool = crate::pg::pg_pool(&source.url, 1).map_err(SinkError::Batch)?;
    let client = pool.get().await.map_err(|e| read_failed(&e.to_string()))?;
    let schema = source.table.schema.as_ref().map(|s| s.as_str().to_owned());
    let rows = client
        .query(
            "SELECT c.column_name::text, c.udt_name::text, \
             format_type(a.atttypid, a.atttypmod), c.character_maximum_length::int8, \
             c.numeric_precision::int8, c.numeric_scale::int8, c.datetime_precision::int8, \
             c.is_nullable = 'YES' \
             FROM information_schema.columns c \
             JOIN pg_attribute a ON a.attrelid = format('%I.%I', c.table_schema, c.table_name)::regclass \
               AND a.attname = c.column_name \
             WHERE c.table_schema::text = COALESCE($1::text, current_schema()::text) AND c.table_name::text = $2::text \
             ORDER BY c.ordinal_position",
            &[&schema, &source.table.table.as_str()],
        )
        .await
        .map_err(|e| read_failed(&crate::pg::pg_error_text(&e)))?;
    let columns: Vec<SourceColumn> = rows
        .iter()
        .map(|r| {
            let data_type: String = r.get(1);
            let u = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v as u64);
            SourceColumn {
                name: r.get(0),
                json: matches!(data_type.as_str(), "json" | "jsonb"),
                data_type,
                full_type: r.get(2),
                char_len: u(3),
                precision: u(4),
                scale: u(5),
                time_precision: u(6),
                nullable: r.get(7),
                charset: None,
            }
        })
        .filter(|c| wanted(source, &c.name))
        .collect();
    if columns.is_empty() {
        return Err(SinkError::Batch(format!(
            "target.create: the source table {} has no columns to copy (does it exist?)",
            source.table
        )));
    }
    Ok(columns)
}

/// ` (cols…, PRIMARY KEY (key)) …` for a MySQL target.
pub(crate) fn mysql_body(
    columns: &[SourceColumn],
    from: Engine,
    key: &Ident,
) -> Result<String, String> {
    let mut defs = Vec::with_capacity(columns.len() + 1);
    for c in columns {
        let ty = match from {
            Engine::Mysql => {
                let mut ty = c.full_type.clone();
                if let Some((cs, co)) = &c.charset {
                    ty.push_str(&format!(" CHARACTER SET {cs} COLLATE {co}"));
                }
                ty
            }
            Engine::Postgres => mysql_type_for_pg(c)
                .map_err(|why| format!("column `{}` ({}): {why}", c.name, c.full_type))?,
        };
        let null = if c.nullable { "NULL" } else { "NOT NULL" };
        defs.push(format!("`{}` {ty} {null}", c.name.replace('`', "``")));
    }
    defs.push(format!("PRIMARY KEY ({})", quote(Engine::Mysql, key)));
    Ok(format!(" ({}) DEFAULT CHARSET=utf8mb4", defs.join(", ")))
}

/// ` (cols…, PRIMARY KEY (key))` for a PostgreSQL target.
pub(crate) fn pg_body(
    columns: &[SourceColumn],
    from: Engine,
    key: &Ident,
) -> Result<String, String> {
    let mut defs = Vec::with_capacity(columns.len() + 1);
    for c in columns {
        let ty = match from {
            Engine::Postgres => c.full_type.clone(),
            Engine::Mysql => pg_type_for_mysql(c),
        };
        let null = if c.nullable { "" } else { " NOT NULL" };
        defs.push(format!("\"{}\" {ty}{null}", c.name.replace('"', "\"\"")));
    }
    defs.push(format!("PRIMARY KEY ({})", quote(Engine::Postgres, key)));
    Ok(format!(" ({})", defs.join(", ")))
}

fn precision_suffix(p: Option<u64>) -> String {
    match p {
        Some(p) => format!("({p})"),
        None => String::new(),
    }
}

/// The PostgreSQL type for a MySQL column (the table on this module).
pub(crate) fn pg_type_for_mysql(c: &SourceColumn) -> String {
    let unsigned = c.full_type.to_ascii_lowercase().contains("unsigned");
    let full = c.full_type.to_ascii_lowercase();
    if c.json {
        return "jsonb".into();
    }
    match c.data_type.as_str() {
        "tinyint" if full.starts_with("tinyint(1)") && !unsigned => "boolean".into(),
        "tinyint" | "year" => "smallint".into(),
        "smallint" if !unsigned => "smallint".into(),
        "smallint" | "mediumint" => "integer".into(),
        "int" | "integer" if !unsigned => "integer".into(),
        "int" | "integer" => "bigint".into(),
        "bigint" if !unsigned => "bigint".into(),
        "bigint" => "numeric(20)".into(),
        "decimal" | "numeric" => match (c.precision, c.scale) {
            (Some(p), Some(s)) => format!("numeric({p},{s})"),
            _ => "numeric".into(),
        },
        "float" => "real".into(),
        "double" | "real" => "double precision".into(),
        "bit" if c.precision == Some(1) => "boolean".into(),
        "bit" => "bigint".into(),
        "char" => format!("char{}", precision_suffix(c.char_len)),
        "varchar" => format!("varchar{}", precision_suffix(c.char_len)),
        "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => "text".into(),
        "date" => "date".into(),
        "time" => format!("time{}", precision_suffix(c.time_precision)),
        "datetime" => format!("timestamp{}", precision_suffix(c.time_precision)),
        "timestamp" => format!("timestamptz{}", precision_suffix(c.time_precision)),
        _ => "bytea".into(),
    }
}

/// The MySQL type for a PostgreSQL column (the table on this module).
pub(crate) fn mysql_type_for_pg(c: &SourceColumn) -> Result<String, String> {
    let p6 = |p: Option<u64>| format!("({})", p.unwrap_or(6).min(6));
    Ok(match c.data_type.as_str() {
        "int2" => "SMALLINT".into(),
        "int4" => "INT".into(),
        "int8" => "BIGINT".into(),
        "numeric" => {
            match (c.precision, c.scale) {
                (Some(p), Some(s)) if p <= 65 && s <= 30 => format!("DECIMAL({p},{s})"),
                _ => return Err(
                    "MySQL's DECIMAL needs a precision of at most 65 and a scale of at most 30; \
                     create the target table yourself"
                        .into(),
                ),
            }
        }
        "float4" => "FLOAT".into(),
        "float8" => "DOUBLE".into(),
        "bool" => "TINYINT(1)".into(),
        "varchar" => match c.char_len {
            Some(n) => format!("VARCHAR({n})"),
            None => "LONGTEXT".into(),
        },
        "bpchar" => format!("CHAR({})", c.char_len.unwrap_or(1).min(255)),
        "text" | "name" => "LONGTEXT".into(),
        "bytea" => "LONGBLOB".into(),
        "date" => "DATE".into(),
        "time" => format!("TIME{}", p6(c.time_precision)),
        "timestamp" | "timestamptz" => format!("DATETIME{}", p6(c.time_precision)),
        "json" | "jsonb" => "JSON".into(),
        "uuid" => "CHAR(36)".into(),
        _ if c.full_type.contains("[]") => return Err("an array has no MySQL type".into()),
        _ => return Err("no MySQL type maps it".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql(data_type: &str, full: &str) -> SourceColumn {
        SourceColumn {
            name: "c".into(),
            data_type: data_type.into(),
            full_type: full.into(),
            char_len: None,
            precision: None,
            scale: None,
            time_precision: None,
            nullable: true,
            charset: None,
            json: false,
        }
    }

    #[test]
    fn a_server_named_two_ways_is_one_server() {
        let at = |u: &str| server_of(u, 3306);
        assert_eq!(
            at("mysql://root@localhost/a"),
            at("mysql://u:p@127.0.0.1:3306/b")
        );
        assert_eq!(at("mysql://[::1]/a"), at("mysql://LOCALHOST:3306/b"));
        assert_ne!(at("mysql://localhost/a"), at("mysql://127.0.0.1:3307/a"));
        assert_ne!(at("mysql://db1.internal/a"), at("mysql://127.0.0.1/a"));
        assert_eq!(
            at("mysql://DB1.internal/a"),
            at("mysql://db1.internal:3306/b")
        );
    }

    #[test]
    fn mysql_types_map_as_pgloader_would() {
        let cases = [
            (mysql("tinyint", "tinyint(1)"), "boolean"),
            (mysql("tinyint", "tinyint(4)"), "smallint"),
            (mysql("tinyint", "tinyint(3) unsigned"), "smallint"),
            (mysql("smallint", "smallint(5) unsigned"), "integer"),
            (mysql("mediumint", "mediumint(9)"), "integer"),
            (mysql("int", "int(11)"), "integer"),
            (mysql("int", "int(10) unsigned"), "bigint"),
            (mysql("bigint", "bigint(20) unsigned"), "numeric(20)"),
            (mysql("float", "float"), "real"),
            (mysql("double", "double"), "double precision"),
            (mysql("longtext", "longtext"), "text"),
            (mysql("enum", "enum('a','b')"), "text"),
            (mysql("blob", "blob"), "bytea"),
            (mysql("geometry", "geometry"), "bytea"),
            (mysql("year", "year(4)"), "smallint"),
            (mysql("date", "date"), "date"),
        ];
        for (c, want) in cases {
            assert_eq!(pg_type_for_mysql(&c), want, "{}", c.full_type);
        }
        let mut d = mysql("decimal", "decimal(20,6)");
        (d.precision, d.scale) = (Some(20), Some(6));
        assert_eq!(pg_type_for_mysql(&d), "numeric(20,6)");
        let mut t = mysql("timestamp", "timestamp(6)");
        t.time_precision = Some(6);
        assert_eq!(pg_type_for_mysql(&t), "timestamptz(6)");
        let mut v = mysql("varchar", "varchar(64)");
        v.char_len = Some(64);
        assert_eq!(pg_type_for_mysql(&v), "varchar(64)");
        let mut j = mysql("longtext", "longtext");
        j.json = true;
        assert_eq!(pg_type_for_mysql(&j), "jsonb", "MariaDB's JSON");
        let mut b = mysql("bit", "bit(1)");
        b.precision = Some(1);
        assert_eq!(pg_type_for_mysql(&b), "boolean");
    }

    #[test]
    fn postgres_types_map_to_mysql_or_are_named() {
        let pg = |t: &str, full: &str| SourceColumn {
            data_type: t.into(),
            ..mysql(t, full)
        };
        assert_eq!(mysql_type_for_pg(&pg("int8", "bigint")).unwrap(), "BIGINT");
        assert_eq!(
            mysql_type_for_pg(&pg("bool", "boolean")).unwrap(),
            "TINYINT(1)"
        );
        assert_eq!(
            mysql_type_for_pg(&pg("timestamptz", "timestamp with time zone")).unwrap(),
            "DATETIME(6)"
        );
        assert!(mysql_type_for_pg(&pg("numeric", "numeric")).is_err());
        assert!(mysql_type_for_pg(&pg("_int4", "integer[]"))
            .unwrap_err()
            .contains("array"));
        assert!(mysql_type_for_pg(&pg("interval", "interval")).is_err());
        let body = mysql_body(
            &[pg("int8", "bigint"), pg("text", "text")],
            Engine::Postgres,
            &Ident::new("id").unwrap(),
        )
        .unwrap();
        assert!(
            body.contains("`c` BIGINT NULL") && body.contains("PRIMARY KEY (`id`)"),
            "{body}"
        );
        let body = pg_body(
            &[mysql("int", "int(11)")],
            Engine::Mysql,
            &Ident::new("id").unwrap(),
        )
        .unwrap();
        assert_eq!(body, " (\"c\" integer, PRIMARY KEY (\"id\"))");
    }
}

/// Target tables known to exist in this process (`create = true`), shared by the consumer's batches: the
/// per-batch check is a set look-up, and a table is created at most once per process.
#[derive(Debug, Default)]
pub(crate) struct KnownTables(std::sync::Mutex<std::collections::HashSet<crate::job::TableName>>);

impl KnownTables {
    /// Those of `tables` not yet known to exist.
    pub(crate) fn missing<'t>(
        &self,
        tables: &[&'t crate::job::TableName],
    ) -> Vec<&'t crate::job::TableName> {
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tables
            .iter()
            .copied()
            .filter(|t| !known.contains(*t))
            .collect()
    }

    pub(crate) fn insert(&self, table: &crate::job::TableName) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.clone());
    }
}
