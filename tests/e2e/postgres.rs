//! PostgreSQL as source and target, in every pairing with MariaDB: a table with every mapped type plus NULLs
//! arrives exactly (compared through a text form both sides agree on, floats bit for bit), the ledger is
//! complete, values a column cannot hold fail their row only, and columns that cannot map at all stop the
//! consumer at start with the column named.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;
use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{Bin, Finished, TestJob};

const ROWS: u64 = 1_500;

fn job_file(job: &TestJob, source_url: &str, target_url: &str, extra_source: &str) -> String {
    format!(
        r#"name = "{name}"
group_size = 1000
batch_size = 200

[source]
url = "{source_url}"
table = "src"
key = "id"
{extra_source}

[target]
kind = "sql"
url = "{target_url}"
table = "dst"
"#,
        name = job.name,
    )
}

/// A row: its id, then each compared column as text (`None` for NULL).
type Rows = BTreeMap<u64, Vec<Option<String>>>;

fn by_id(rows: Vec<Vec<Option<String>>>) -> Rows {
    rows.into_iter()
        .map(|mut r| {
            let id = r.remove(0).expect("id").parse().expect("numeric id");
            (id, r)
        })
        .collect()
}

async fn mysql_texts(job: &TestJob, query: &str) -> Rows {
    let mut conn = job.conn().await;
    // TIMESTAMPs print in UTC, as PostgreSQL's are printed AT TIME ZONE 'UTC'.
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let rows: Vec<mysql_async::Row> = conn
        .query(query)
        .await
        .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
    by_id(
        rows.into_iter()
            .map(|r| {
                r.unwrap()
                    .into_iter()
                    .map(|v| match v {
                        mysql_async::Value::NULL => None,
                        mysql_async::Value::Bytes(b) => Some(String::from_utf8(b).expect("text")),
                        other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
                    })
                    .collect()
            })
            .collect(),
    )
}

/// The first `n` differences between two row maps, for an assert message; empty when equal.
fn differences(source: &Rows, target: &Rows, columns: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (id, s) in source {
        match target.get(id) {
            None => out.push(format!("id {id}: no target row")),
            Some(t) => {
                for (i, (a, b)) in s.iter().zip(t).enumerate() {
                    if a != b {
                        out.push(format!(
                            "id {id} {}: source {a:?}, target {b:?}",
                            columns[i]
                        ));
                    }
                }
            }
        }
    }
    for id in target.keys().filter(|id| !source.contains_key(id)) {
        out.push(format!("id {id}: a target row without a source row"));
    }
    out.truncate(10);
    out
}

async fn failed(job: &TestJob) -> BTreeMap<u64, String> {
    let mut redis = job.redis.clone();
    let raw: BTreeMap<String, String> = redis.hgetall(job.job_key("failed")).await.unwrap();
    raw.into_iter()
        .map(|(k, v)| (k.parse().unwrap(), v))
        .collect()
}

/// MariaDB columns of the MySQL side: `(name, MariaDB type, generator over seq, text form)`; the text form
/// is the SQL that prints a value the way PostgreSQL's `text` cast (or the matching `to_char`) prints it.
const MYSQL_COLUMNS: &[(&str, &str, &str, &str)] = &[
    ("c_tinyint", "TINYINT", "CAST(seq % 256 AS SIGNED) - 128", "CAST(c_tinyint AS CHAR)"),
    ("c_bool", "TINYINT(1)", "seq % 2", "IF(c_bool IS NULL, NULL, IF(c_bool, 'true', 'false'))"),
    ("c_int", "INT", "CAST(seq * 7919 AS SIGNED) * IF(seq % 2, 1, -1)", "CAST(c_int AS CHAR)"),
    ("c_int_u", "INT UNSIGNED", "IF(seq % 5 = 0, 4294967295, seq * 3)", "CAST(c_int_u AS CHAR)"),
    (
        "c_bigint",
        "BIGINT",
        "CASE seq % 5 WHEN 0 THEN -9223372036854775808 WHEN 1 THEN 9223372036854775807 ELSE seq END",
        "CAST(c_bigint AS CHAR)",
    ),
    (
        "c_bigint_u",
        "BIGINT UNSIGNED",
        "IF(seq % 5 = 0, 18446744073709551615, seq * 4294967311)",
        "CAST(c_bigint_u AS CHAR)",
    ),
    (
        "c_decimal",
        "DECIMAL(20,6)",
        "IF(seq % 5 = 0, -99999999999999.999999, seq * 1234567.891011)",
        "CAST(c_decimal AS CHAR)",
    ),
    ("c_float", "FLOAT", "seq * PI() / 7 * IF(seq % 2, 1, -1)", "c_float"),
    ("c_double", "DOUBLE", "IF(seq % 7 = 0, 1.7976931348623157e308, seq * PI() / 7e3)", "c_double"),
    (
        "c_varchar",
        "VARCHAR(64)",
        r#"IF(seq % 17 = 0, '', CONCAT('it''s "q" \\ é😀 ', seq))"#,
        "c_varchar",
    ),
    ("c_text", "TEXT", "CONCAT(REPEAT('ä€😀', seq % 20), '\\nline2\\r\\n', seq)", "c_text"),
    ("c_blob", "BLOB", "CONCAT(X'0000', UNHEX(SHA2(seq, 256)), X'00FF')", "LOWER(HEX(c_blob))"),
    (
        "c_date",
        "DATE",
        "DATE'1000-01-01' + INTERVAL (seq * 37) % 3280000 DAY",
        "DATE_FORMAT(c_date, '%Y-%m-%d')",
    ),
    ("c_time", "TIME(6)", "SEC_TO_TIME((seq * 7919) % 86400) + INTERVAL seq MICROSECOND", "TIME_FORMAT(c_time, '%H:%i:%s.%f')"),
    (
        "c_datetime",
        "DATETIME(6)",
        "TIMESTAMP'1001-01-01 00:00:00' + INTERVAL (seq * 1000003) % 280000000000 SECOND + INTERVAL seq MICROSECOND",
        "DATE_FORMAT(c_datetime, '%Y-%m-%d %H:%i:%s.%f')",
    ),
    (
        "c_timestamp",
        "TIMESTAMP(6) NULL",
        "FROM_UNIXTIME(1 + (seq * 7919) % 2147480000) + INTERVAL seq MICROSECOND",
        "DATE_FORMAT(c_timestamp, '%Y-%m-%d %H:%i:%s.%f')",
    ),
    (
        "c_json",
        "JSON",
        r#"JSON_OBJECT('s', seq, 'str', CONCAT('q"\\', seq), 'arr', JSON_ARRAY(1, 2.5, NULL, TRUE), 'o', JSON_OBJECT('k', 'v'))"#,
        "c_json",
    ),
    ("c_uuid", "CHAR(36)", "UUID()", "c_uuid"),
    ("c_year", "YEAR", "1901 + seq % 255", "CAST(c_year AS CHAR)"),
    ("c_bit", "BIT(12)", "seq % 4096", "CAST(c_bit + 0 AS CHAR)"),
];

/// The PostgreSQL column a DBA would give each MariaDB column, and its text form.
const PG_COLUMNS: &[(&str, &str, &str)] = &[
    ("c_tinyint", "smallint", "c_tinyint::text"),
    ("c_bool", "boolean", "c_bool::text"),
    ("c_int", "integer", "c_int::text"),
    ("c_int_u", "bigint", "c_int_u::text"),
    ("c_bigint", "bigint", "c_bigint::text"),
    ("c_bigint_u", "numeric(20)", "c_bigint_u::text"),
    ("c_decimal", "numeric(20,6)", "c_decimal::text"),
    ("c_float", "real", "c_float::text"),
    ("c_double", "double precision", "c_double::text"),
    ("c_varchar", "varchar(64)", "c_varchar"),
    ("c_text", "text", "c_text"),
    ("c_blob", "bytea", "encode(c_blob, 'hex')"),
    ("c_date", "date", "to_char(c_date, 'YYYY-MM-DD')"),
    ("c_time", "time", "to_char(c_time, 'HH24:MI:SS.US')"),
    (
        "c_datetime",
        "timestamp",
        "to_char(c_datetime, 'YYYY-MM-DD HH24:MI:SS.US')",
    ),
    (
        "c_timestamp",
        "timestamptz",
        "to_char(c_timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    ),
    ("c_json", "jsonb", "c_json::text"),
    ("c_uuid", "uuid", "c_uuid::text"),
    ("c_year", "smallint", "c_year::text"),
    ("c_bit", "bigint", "c_bit::text"),
];

fn null_wrapped(k: usize, expr: &str) -> String {
    format!("IF(seq % 101 = 0 OR (seq + {k}) % 13 = 0, NULL, {expr})")
}

async fn create_mysql_source(job: &TestJob) {
    let defs: Vec<String> = MYSQL_COLUMNS
        .iter()
        .map(|(n, t, _, _)| format!("`{n}` {t}"))
        .collect();
    job.sql(&format!(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, {}) DEFAULT CHARSET = utf8mb4",
        defs.join(", ")
    ))
    .await;
    let names: Vec<&str> = MYSQL_COLUMNS.iter().map(|c| c.0).collect();
    let exprs: Vec<String> = MYSQL_COLUMNS
        .iter()
        .enumerate()
        .map(|(k, c)| null_wrapped(k, c.2))
        .collect();
    job.sql(&format!(
        "INSERT INTO src (id, {}) SELECT seq * 7, {} FROM seq_1_to_{ROWS}",
        names.join(", "),
        exprs.join(", ")
    ))
    .await;
}

fn pg_table_ddl(table: &str) -> String {
    let defs: Vec<String> = PG_COLUMNS
        .iter()
        .map(|(n, t, _)| format!("{n} {t}"))
        .collect();
    format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, {})",
        defs.join(", ")
    )
}

/// Floats compare bit for bit: read them typed on both sides.
async fn mysql_floats(job: &TestJob, table: &str) -> Floats {
    job.conn()
        .await
        // The binary protocol: the text one prints a FLOAT with 6 digits only.
        .exec::<(u64, Option<f32>, Option<f64>), _, _>(
            format!("SELECT id, c_float, c_double FROM {table}"),
            (),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(id, f, d)| (id, (f, d)))
        .collect()
}

async fn pg_floats(pg: &crate::helpers::pg::PgDb, table: &str) -> Floats {
    pg.client
        .query(
            &format!("SELECT id::int8, c_float, c_double FROM {table}"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, (r.get(1), r.get(2))))
        .collect()
}

type Floats = BTreeMap<u64, (Option<f32>, Option<f64>)>;

/// Floats bit for bit (so -0.0 differs from 0.0); names the first differences.
fn assert_floats_equal(source: &Floats, target: &Floats) {
    let bits = |f: &Floats| -> BTreeMap<u64, (Option<u32>, Option<u64>)> {
        f.iter()
            .map(|(id, (a, b))| (*id, (a.map(f32::to_bits), b.map(f64::to_bits))))
            .collect()
    };
    let (s, t) = (bits(source), bits(target));
    let diffs: Vec<String> = s
        .iter()
        .filter(|(id, v)| t.get(id) != Some(v))
        .take(5)
        .map(|(id, v)| {
            format!(
                "id {id}: source {v:?} = {:?}, target {:?}",
                source[id],
                target.get(id)
            )
        })
        .collect();
    assert!(
        diffs.is_empty() && s.len() == t.len(),
        "floats differ ({} source rows, {} target rows):\n{}",
        s.len(),
        t.len(),
        diffs.join("\n")
    );
}

fn json_equal(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            serde_json::from_str::<serde_json::Value>(a).ok()
                == serde_json::from_str::<serde_json::Value>(b).ok()
        }
        (a, b) => a == b,
    }
}

/// Compare text forms, JSON columns (`c_json…`) as JSON (jsonb reorders keys and respaces), floats apart.
fn assert_same(source: &Rows, target: &Rows, names: &[&str]) {
    let apart: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("c_json") || matches!(**n, "c_float" | "c_double"))
        .map(|(i, _)| i)
        .collect();
    let strip = |rows: &Rows| -> Rows {
        rows.iter()
            .map(|(id, r)| {
                let r = r
                    .iter()
                    .enumerate()
                    .map(|(i, v)| if apart.contains(&i) { None } else { v.clone() })
                    .collect();
                (*id, r)
            })
            .collect()
    };
    let diffs = differences(&strip(source), &strip(target), names);
    assert!(
        diffs.is_empty(),
        "target differs from source:\n{}",
        diffs.join("\n")
    );
    for (i, name) in names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("c_json"))
    {
        for (id, s) in source {
            assert!(
                json_equal(&s[i], &target[id][i]),
                "id {id} {name}: {:?} vs {:?}",
                s[i],
                target[id][i]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_to_postgres_every_type_and_null_arrives_exactly() {
    let job = TestJob::new(1_000, 200).await;
    let pg = job.pg().await;
    create_mysql_source(&job).await;
    pg.sql(&pg_table_ddl("dst")).await;
    job.write_file("job.toml", &job_file(&job, &job.database_url, &pg.url, ""));

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;

    let names: Vec<&str> = MYSQL_COLUMNS.iter().map(|c| c.0).collect();
    let source = mysql_texts(
        &job,
        &format!(
            "SELECT CAST(id AS CHAR), {} FROM src",
            MYSQL_COLUMNS
                .iter()
                .map(|c| c.3)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await;
    let target = by_id(
        pg.texts(&format!(
            "SELECT id::text, {} FROM dst",
            PG_COLUMNS
                .iter()
                .map(|c| c.2)
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await,
    );
    assert_eq!(source.len() as u64, ROWS);
    assert_same(&source, &target, &names);
    assert_floats_equal(
        &mysql_floats(&job, "src").await,
        &pg_floats(&pg, "dst").await,
    );
    let nulls = pg
        .count(
            "SELECT count(*) FROM dst WHERE c_bool IS NULL AND c_json IS NULL AND c_uuid IS NULL",
        )
        .await;
    assert!(
        nulls >= ROWS / 101,
        "all-NULL rows arrived as NULLs ({nulls})"
    );
    job.assert_job_complete(ROWS, 0).await;
}

/// PostgreSQL → MariaDB: `(name, PostgreSQL type, generator over s, PostgreSQL text form, MariaDB type,
/// MariaDB text form)`.
const PG_TO_MYSQL: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "c_int2",
        "smallint",
        "(s % 65536 - 32768)::int2",
        "c_int2::text",
        "SMALLINT",
        "CAST(c_int2 AS CHAR)",
    ),
    (
        "c_int4",
        "integer",
        "s * 7919 * (CASE WHEN s % 2 = 0 THEN -1 ELSE 1 END)",
        "c_int4::text",
        "INT",
        "CAST(c_int4 AS CHAR)",
    ),
    (
        "c_int8",
        "bigint",
        "CASE s % 5 WHEN 0 THEN -9223372036854775808 WHEN 1 THEN 9223372036854775807 ELSE s END",
        "c_int8::text",
        "BIGINT",
        "CAST(c_int8 AS CHAR)",
    ),
    (
        "c_numeric",
        "numeric(20,6)",
        "s * -1234567.891011",
        "c_numeric::text",
        "DECIMAL(20,6)",
        "CAST(c_numeric AS CHAR)",
    ),
    (
        "c_float",
        "real",
        "(s * pi() / 7)::real",
        "c_float::text",
        "FLOAT",
        "c_float",
    ),
    (
        "c_double",
        "double precision",
        "s * pi() / 7e3",
        "c_double::text",
        "DOUBLE",
        "c_double",
    ),
    (
        "c_bool",
        "boolean",
        "s % 2 = 0",
        "c_bool::text",
        "TINYINT(1)",
        "IF(c_bool IS NULL, NULL, IF(c_bool, 'true', 'false'))",
    ),
    (
        "c_text",
        "text",
        "repeat('ä€😀', (s % 20)::int) || E'\\nline \"q\" ''s'' \\\\ ' || s",
        "c_text",
        "LONGTEXT",
        "c_text",
    ),
    (
        "c_varchar",
        "varchar(20)",
        "CASE WHEN s % 17 = 0 THEN '' ELSE 'v' || s END",
        "c_varchar",
        "VARCHAR(20)",
        "c_varchar",
    ),
    (
        "c_bytea",
        "bytea",
        "'\\x00ff'::bytea || sha256(s::text::bytea)",
        "encode(c_bytea, 'hex')",
        "LONGBLOB",
        "LOWER(HEX(c_bytea))",
    ),
    (
        "c_date",
        "date",
        "'2000-01-01'::date + (s * 37 % 2900000)::int - 700000",
        "to_char(c_date, 'YYYY-MM-DD')",
        "DATE",
        "DATE_FORMAT(c_date, '%Y-%m-%d')",
    ),
    (
        "c_time",
        "time",
        "'00:00:00'::time + s * interval '7919.000013 seconds'",
        "to_char(c_time, 'HH24:MI:SS.US')",
        "TIME(6)",
        "TIME_FORMAT(c_time, '%H:%i:%s.%f')",
    ),
    (
        "c_timestamp",
        "timestamp",
        "'1900-01-01'::timestamp + s * interval '1000003.000007 seconds'",
        "to_char(c_timestamp, 'YYYY-MM-DD HH24:MI:SS.US')",
        "DATETIME(6)",
        "DATE_FORMAT(c_timestamp, '%Y-%m-%d %H:%i:%s.%f')",
    ),
    (
        "c_timestamptz",
        "timestamptz",
        "'1970-01-02 00:00:00+00'::timestamptz + s * interval '7919 minutes 0.000001 seconds'",
        "to_char(c_timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
        "TIMESTAMP(6) NULL",
        "DATE_FORMAT(c_timestamptz, '%Y-%m-%d %H:%i:%s.%f')",
    ),
    (
        "c_json",
        "json",
        "json_build_object('s', s, 'b', json_build_array(1, 2.5, null, true))",
        "c_json::text",
        "JSON",
        "c_json",
    ),
    (
        "c_jsonb",
        "jsonb",
        "jsonb_build_object('s', s, 'nested', jsonb_build_object('k', 'v'))",
        "c_jsonb::text",
        "JSON",
        "c_jsonb",
    ),
    (
        "c_uuid",
        "uuid",
        "md5(s::text)::uuid",
        "c_uuid::text",
        "CHAR(36)",
        "c_uuid",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn postgres_to_mysql_every_type_and_null_arrives_exactly() {
    let job = TestJob::new(1_000, 200).await;
    let pg = job.pg().await;
    let pg_defs: Vec<String> = PG_TO_MYSQL
        .iter()
        .map(|c| format!("{} {}", c.0, c.1))
        .collect();
    pg.sql(&format!(
        "CREATE TABLE src (id bigint PRIMARY KEY, {})",
        pg_defs.join(", ")
    ))
    .await;
    let exprs: Vec<String> = PG_TO_MYSQL
        .iter()
        .enumerate()
        .map(|(k, c)| {
            format!(
                "CASE WHEN s % 101 = 0 OR (s + {k}) % 13 = 0 THEN NULL ELSE {} END",
                c.2
            )
        })
        .collect();
    pg.sql(&format!(
        "INSERT INTO src SELECT s * 5, {} FROM generate_series(1, {ROWS}) AS s",
        exprs.join(", ")
    ))
    .await;
    let my_defs: Vec<String> = PG_TO_MYSQL
        .iter()
        .map(|c| format!("`{}` {}", c.0, c.4))
        .collect();
    job.sql(&format!(
        "CREATE TABLE dst (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, {}) DEFAULT CHARSET = utf8mb4",
        my_defs.join(", ")
    ))
    .await;
    job.write_file("job.toml", &job_file(&job, &pg.url, &job.database_url, ""));

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;

    let names: Vec<&str> = PG_TO_MYSQL.iter().map(|c| c.0).collect();
    let source = by_id(
        pg.texts(&format!(
            "SELECT id::text, {} FROM src",
            PG_TO_MYSQL
                .iter()
                .map(|c| c.3)
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await,
    );
    let target = mysql_texts(
        &job,
        &format!(
            "SELECT CAST(id AS CHAR), {} FROM dst",
            PG_TO_MYSQL
                .iter()
                .map(|c| c.5)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await;
    assert_eq!(source.len() as u64, ROWS);
    assert_same(&source, &target, &names);
    assert_floats_equal(
        &pg_floats(&pg, "src").await,
        &mysql_floats(&job, "dst").await,
    );
    job.assert_job_complete(ROWS, 0).await;
}

/// PostgreSQL's own types, arrays and PostgreSQL-only types included, NULL in every column of some rows.
const PG_NATIVE: &[(&str, &str, &str)] = &[
    ("c_int2", "smallint", "(s % 65536 - 32768)::int2"),
    ("c_int4", "integer", "(s * 7919 * (CASE WHEN s % 2 = 0 THEN -1 ELSE 1 END))::int4"),
    ("c_int8", "bigint", "CASE s % 5 WHEN 0 THEN -9223372036854775808 WHEN 1 THEN 9223372036854775807 ELSE s END"),
    ("c_numeric", "numeric", "CASE s % 4 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 0.000001 * s ELSE s * 123456789.123456789 END"),
    ("c_numeric_s", "numeric(30,10)", "s * -1.5"),
    ("c_real", "real", "(s * pi() / 7)::real"),
    ("c_double", "double precision", "CASE s % 7 WHEN 0 THEN 'Infinity'::float8 WHEN 1 THEN -0.0 ELSE s * pi() / 7e3 END"),
    ("c_bool", "boolean", "s % 2 = 0"),
    ("c_text", "text", "repeat('ä€😀', (s % 20)::int) || E'\\nline \"q\" ''s'' \\\\ ' || s"),
    ("c_varchar", "varchar(20)", "CASE WHEN s % 17 = 0 THEN '' ELSE 'v' || s END"),
    ("c_char", "char(5)", "'c' || (s % 100)"),
    ("c_bytea", "bytea", "'\\x00ff'::bytea || sha256(s::text::bytea)"),
    ("c_date", "date", "CASE s % 9 WHEN 0 THEN 'infinity'::date WHEN 1 THEN '0044-03-15 BC'::date ELSE '2000-01-01'::date + (s * 37 % 3000000)::int - 1500000 END"),
    ("c_time", "time", "CASE WHEN s % 11 = 0 THEN '24:00:00'::time ELSE '00:00:00'::time + s * interval '7919.000013 seconds' END"),
    ("c_timestamp", "timestamp", "CASE s % 9 WHEN 0 THEN '-infinity'::timestamp ELSE '1900-01-01'::timestamp + s * interval '1000003.000007 seconds' END"),
    ("c_timestamptz", "timestamptz", "'1970-01-01 00:00:00+00'::timestamptz + s * interval '7919 minutes 0.000001 seconds'"),
    ("c_json", "json", "json_build_object('s', s, 'b', json_build_array(1, 2.50, null, true), 'big', 18446744073709551616)"),
    ("c_jsonb", "jsonb", "jsonb_build_object('s', s, 'nested', jsonb_build_object('k', 'v'))"),
    ("c_uuid", "uuid", "md5(s::text)::uuid"),
    ("c_int_array", "integer[]", "ARRAY[s::int, NULL, -1]"),
    ("c_text_array", "text[]", "ARRAY[['a', 'b'], ['c' || s, NULL]]"),
    ("c_interval", "interval", "s * interval '1 month 2 days 3.000004 seconds'"),
    ("c_inet", "inet", "('10.0.' || (s % 256) || '.1/24')::inet"),
    ("c_mood", "mood", "(ARRAY['sad', 'ok', 'happy'])[1 + s % 3]::mood"),
];

#[tokio::test(flavor = "multi_thread")]
async fn postgres_to_postgres_every_type_arrays_and_infinity_arrive_exactly() {
    let job = TestJob::new(1_000, 200).await;
    let pg = job.pg().await;
    pg.sql("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        .await;
    let defs: Vec<String> = PG_NATIVE
        .iter()
        .map(|(n, t, _)| format!("{n} {t}"))
        .collect();
    for table in ["src", "dst"] {
        pg.sql(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, {})",
            defs.join(", ")
        ))
        .await;
    }
    let exprs: Vec<String> = PG_NATIVE
        .iter()
        .enumerate()
        .map(|(k, (_, _, e))| {
            format!("CASE WHEN s % 101 = 0 OR (s + {k}) % 13 = 0 THEN NULL ELSE {e} END")
        })
        .collect();
    pg.sql(&format!(
        "INSERT INTO src SELECT s * 3, {} FROM generate_series(1, {ROWS}) AS s",
        exprs.join(", ")
    ))
    .await;
    job.write_file("job.toml", &job_file(&job, &pg.url, &pg.url, ""));

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;

    // A row's text form is exact for every type (floats print their shortest exact form).
    let rows = |table: &str| format!("SELECT id::text, t::text FROM {table} t");
    let source = by_id(pg.texts(&rows("src")).await);
    let target = by_id(pg.texts(&rows("dst")).await);
    assert_eq!(source.len() as u64, ROWS);
    let diffs = differences(&source, &target, &["row"]);
    assert!(
        diffs.is_empty(),
        "target differs from source:\n{}",
        diffs.join("\n")
    );
    let infinite = pg
        .count("SELECT count(*) FROM dst WHERE c_date = 'infinity' OR c_timestamp = '-infinity'")
        .await;
    assert!(infinite > 0, "infinite dates and timestamps arrived");
    job.assert_job_complete(ROWS, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn columns_mysql_cannot_hold_stop_the_consumer_and_values_it_cannot_hold_fail_their_row() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    pg.sql(
        "CREATE TABLE src (id bigint PRIMARY KEY, note text, at timestamp, tags text[]); \
         INSERT INTO src SELECT s, 'n' || s, CASE WHEN s % 50 = 0 THEN 'infinity' ELSE '2024-01-01'::timestamp + s * interval '1 hour' END, \
         ARRAY['a'] FROM generate_series(1, 300) AS s",
    )
    .await;
    job.sql("CREATE TABLE dst (id BIGINT PRIMARY KEY, note TEXT, at DATETIME(6))")
        .await;

    // An array column: refused at start, naming the column.
    job.write_file("job.toml", &job_file(&job, &pg.url, &job.database_url, ""));
    let done = job
        .run(
            Bin::Consumer,
            &["--job", job.job_arg(), "--exit-when-idle", "1"],
        )
        .await;
    done.expect_code(2);
    assert!(
        done.stderr.contains("`tags`") && done.stderr.contains("MySQL cannot hold"),
        "{}",
        done.describe()
    );

    // Without it: every row lands but the infinite timestamps, which fail alone with the column named.
    job.write_file(
        "job.toml",
        &job_file(
            &job,
            &pg.url,
            &job.database_url,
            "columns = [\"id\", \"note\", \"at\"]",
        ),
    );
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    let failed = failed(&job).await;
    let infinite: Vec<u64> = (1..=300).filter(|s| s % 50 == 0).collect();
    assert_eq!(failed.keys().copied().collect::<Vec<_>>(), infinite);
    assert!(failed.values().all(|r| r.contains("`at`")), "{failed:?}");
    assert_eq!(
        job.sql_u64("SELECT COUNT(*) FROM dst").await,
        300 - infinite.len() as u64
    );
    let wrong = job
        .sql_u64("SELECT COUNT(*) FROM dst WHERE note <> CONCAT('n', id) OR at <> TIMESTAMP'2024-01-01 00:00:00' + INTERVAL id HOUR")
        .await;
    assert_eq!(wrong, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_newer_target_row_survives_an_older_redelivery_and_bad_rows_fail_alone() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(32) NOT NULL, \
         t TIME NULL, updated_at DATETIME(6) NULL)",
    )
    .await;
    job.sql(
        "INSERT INTO src SELECT seq, CONCAT('source ', seq), IF(seq % 40 = 0, TIME'-01:00:00', TIME'01:00:00'), \
         IF(seq % 10 = 0, NULL, TIMESTAMP'2024-06-01 12:00:00.000001') FROM seq_1_to_500",
    )
    .await;
    pg.sql(
        "CREATE TABLE dst (id bigint PRIMARY KEY, note text NOT NULL, t time, updated_at timestamp); \
         INSERT INTO dst SELECT s, 'newer target row', NULL, '2024-06-01 12:00:00.000002' FROM generate_series(1, 100) s; \
         INSERT INTO dst SELECT s, 'older target row', NULL, '2024-06-01 12:00:00' FROM generate_series(101, 200) s; \
         INSERT INTO dst SELECT s, 'no version', NULL, NULL FROM generate_series(201, 250) s;",
    )
    .await;
    job.write_file(
        "job.toml",
        &job_file(&job, &job.database_url, &pg.url, "version = \"updated_at\""),
    );

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    assert_eq!(
        pg.count("SELECT count(*) FROM dst WHERE id <= 100 AND note = 'newer target row'")
            .await,
        100,
        "newer target rows survive older or unversioned source rows"
    );
    // Negative TIMEs do not fit a time column: those rows fail alone (ids 40, 80, …).
    let negative: Vec<u64> = (1..=500).filter(|s| s % 40 == 0).collect();
    let failed = failed(&job).await;
    assert_eq!(failed.keys().copied().collect::<Vec<_>>(), negative);
    assert!(failed.values().all(|r| r.contains("`t`")), "{failed:?}");
    // Older and unversioned target rows are replaced, except by a NULL source version (ids 110, 120, …).
    let kept_older = pg
        .count(
            "SELECT count(*) FROM dst WHERE id BETWEEN 101 AND 200 AND note = 'older target row'",
        )
        .await;
    let null_versions_over_older =
        (101..=200).filter(|s| s % 10 == 0 && s % 40 != 0).count() as u64;
    assert_eq!(
        kept_older,
        null_versions_over_older + (101..=200).filter(|s| s % 40 == 0).count() as u64
    );
    let replaced = pg
        .count("SELECT count(*) FROM dst WHERE id > 200 AND note = 'source ' || id")
        .await;
    assert_eq!(
        replaced,
        300 - (201..=500).filter(|s| s % 40 == 0).count() as u64
    );
}

/// The columns of a PostgreSQL table as `name type [not null]`, in order.
async fn pg_columns(pg: &crate::helpers::pg::PgDb, schema: &str, table: &str) -> Vec<String> {
    pg.texts(&format!(
        "SELECT attname || ' ' || format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END \
         FROM pg_attribute WHERE attrelid = '{schema}.{table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ))
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_racing_create_routed_postgres_tables_in_schemas_with_mapped_types() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, user_id INT NULL, created_at DATETIME(6) NULL, \
         amount DECIMAL(12,2) NOT NULL, note VARCHAR(64) NOT NULL, flag TINYINT(1) NULL, n_u INT UNSIGNED NULL, \
         body JSON NULL, at TIMESTAMP(3) NULL)",
    )
    .await;
    job.sql(&format!(
        "INSERT INTO src SELECT seq * 3, IF(seq % 50 = 0, NULL, CAST(seq % 16 AS SIGNED) - 7), \
         TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE + INTERVAL seq MICROSECOND, seq * 1.25 - 999, \
         CONCAT('n', seq), seq % 2, seq * 1000003, JSON_OBJECT('s', seq), FROM_UNIXTIME(seq * 1000) \
         FROM seq_1_to_{ROWS}"
    ))
    .await;
    pg.sql("CREATE SCHEMA s0; CREATE SCHEMA s1").await;
    let toml = job_file(&job, &job.database_url, &pg.url, "").replace(
        "table = \"dst\"",
        "table = \"s{user_id % 2}.orders_{user_id % 4}\"\ncreate = true",
    );
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    // Both start at once: each creates every table on its first batches.
    job.consume_until_idle(2, &["--concurrency", "4"]).await;

    let tables = pg
        .texts("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname IN ('s0', 's1') ORDER BY 1")
        .await;
    let tables: Vec<String> = tables.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        tables,
        ["s0.orders_0", "s0.orders_2", "s1.orders_1", "s1.orders_3"]
    );
    assert_eq!(
        pg_columns(&pg, "s1", "orders_3").await,
        [
            "id numeric(20,0) not null",
            "user_id integer",
            "created_at timestamp(6) without time zone",
            "amount numeric(12,2) not null",
            "note character varying(64) not null",
            "flag boolean",
            "n_u bigint",
            "body jsonb",
            "at timestamp(3) with time zone",
        ],
        "pgloader's casts, NOT NULL kept"
    );
    let pk = pg
        .count(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 's1.orders_3'::regclass AND contype = 'p'",
        )
        .await;
    assert_eq!(pk, 1, "the key is the primary key");
    for table in &tables {
        let (schema, name) = table.split_once('.').unwrap();
        let bucket: i64 = name.trim_start_matches("orders_").parse().unwrap();
        let want = job
            .sql_u64(&format!(
                "SELECT COUNT(*) FROM src WHERE MOD(MOD(user_id, 4) + 4, 4) = {bucket}"
            ))
            .await;
        let got = pg.count(&format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(got, want, "rows in {table}");
        let wrong = pg
            .count(&format!(
                "SELECT count(*) FROM (SELECT *, (id / 3)::bigint AS s FROM {table}) r \
                 WHERE note <> 'n' || s OR flag <> (s % 2 = 1) OR amount <> s * 1.25 - 999 \
                 OR body <> jsonb_build_object('s', s) OR at <> to_timestamp(s * 1000) \
                 OR n_u <> s * 1000003 OR '{schema}' <> 's' || ((user_id % 2 + 2) % 2)"
            ))
            .await;
        assert_eq!(wrong, 0, "{table}: rows that differ from their source row");
    }
    let null_ids = job
        .sql_ids("SELECT id FROM src WHERE user_id IS NULL")
        .await;
    assert_eq!(
        failed(&job).await.keys().copied().collect::<Vec<_>>(),
        null_ids
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_tables_are_created_like_their_source_in_the_same_database() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    pg.sql(
        "CREATE TABLE src (id bigint PRIMARY KEY, n numeric(10,3) NOT NULL DEFAULT 0, t text, tags text[], \
         span interval, u uuid); \
         INSERT INTO src SELECT s, s / 7.0, 't' || s, ARRAY['a', s::text], s * interval '1 hour', md5(s::text)::uuid \
         FROM generate_series(1, 500) s",
    )
    .await;
    let toml = job_file(&job, &pg.url, &pg.url, "").replace(
        "table = \"dst\"",
        "table = \"copy_{id % 3}\"\ncreate = true",
    );
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    let source = pg_columns(&pg, "public", "src").await;
    for t in 0..3 {
        let table = format!("copy_{t}");
        assert_eq!(
            pg_columns(&pg, "public", &table).await,
            source,
            "{table} is LIKE src"
        );
        let wrong = pg
            .count(&format!(
                "SELECT count(*) FROM src s FULL JOIN {table} c USING (id) WHERE s.id % 3 = {t} \
                 AND (c.id IS NULL OR (s.*)::text <> (c.*)::text) OR c.id % 3 <> {t}"
            ))
            .await;
        assert_eq!(wrong, 0, "{table}: missing, changed or misrouted rows");
    }
    job.assert_job_complete(500, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_tables_created_from_a_postgres_source_get_mapped_types() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    pg.sql(
        "CREATE TABLE src (id bigint PRIMARY KEY, n numeric(10,3) NOT NULL, t text, v varchar(20), ok boolean, \
         at timestamptz, day date, u uuid, j jsonb, b bytea); \
         INSERT INTO src SELECT s, s / 7.0, 't' || s, 'v' || s, s % 2 = 0, \
         '2024-01-01 00:00:00+00'::timestamptz + s * interval '1 minute 0.5 seconds', \
         '2024-01-01'::date + s, md5(s::text)::uuid, jsonb_build_object('s', s), '\\x00ff'::bytea \
         FROM generate_series(1, 500) s",
    )
    .await;
    let toml = job_file(&job, &pg.url, &job.database_url, "")
        .replace("table = \"dst\"", "table = \"dst\"\ncreate = true");
    job.write_file("job.toml", &toml);

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    let columns: Vec<String> = job
        .conn()
        .await
        .query(format!(
            "SELECT CONCAT_WS(' ', COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = 'dst' ORDER BY ORDINAL_POSITION",
            job.database
        ))
        .await
        .unwrap();
    assert_eq!(
        columns,
        [
            "id bigint(20) NO PRI",
            "n decimal(10,3) NO ",
            "t longtext YES ",
            "v varchar(20) YES ",
            "ok tinyint(1) YES ",
            "at datetime(6) YES ",
            "day date YES ",
            "u char(36) YES ",
            "j longtext YES ",
            "b longblob YES ",
        ]
    );
    let wrong = job
        .sql_u64(
            "SELECT COUNT(*) FROM dst WHERE t <> CONCAT('t', id) OR ok <> (id % 2 = 0) OR day <> DATE'2024-01-01' + INTERVAL id DAY \
             OR at <> TIMESTAMP'2024-01-01 00:00:00' + INTERVAL id MINUTE + INTERVAL id * 500000 MICROSECOND \
             OR JSON_VALUE(j, '$.s') <> id OR b <> X'00FF' OR n <> ROUND(id / 7.0, 3)",
        )
        .await;
    assert_eq!(wrong, 0);
    job.assert_job_complete(500, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_postgres_bind_limit_is_split_and_lands_in_one_transaction() {
    // 41 columns × 3 000 rows = 123 000 parameters: three statements of at most 65 535.
    let job = TestJob::new(5_000, 5_000).await;
    let pg = job.pg().await;
    let cols: Vec<String> = (1..=40).map(|i| format!("c{i} integer")).collect();
    let exprs: Vec<String> = (1..=40).map(|i| format!("s * {i}")).collect();
    for table in ["src", "dst"] {
        pg.sql(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, {})",
            cols.join(", ")
        ))
        .await;
    }
    pg.sql(&format!(
        "INSERT INTO src SELECT s, {} FROM generate_series(1, 3000) s",
        exprs.join(", ")
    ))
    .await;
    job.write_file("job.toml", &job_file(&job, &pg.url, &pg.url, ""));

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    let differing = pg
        .count("SELECT count(*) FROM src s FULL JOIN dst d USING (id) WHERE (s.*)::text IS DISTINCT FROM (d.*)::text")
        .await;
    assert_eq!(differing, 0);
    assert_eq!(pg.count("SELECT count(*) FROM dst").await, 3000);
    job.assert_job_complete(3000, 0).await;
}

#[tokio::test]
async fn a_produce_batch_copied_in_pieces_falls_back_per_piece_on_existing_keys_and_refused_rows() {
    // 41 columns × 3 000 rows in one batch: two pieces (ids 1–1 598 and 1 599–3 000, 65 535 parameters
    // at most) in one transaction, each tried by COPY first under a savepoint. Piece one meets keys already
    // in the target (some newer, some older), piece two a row the target's CHECK refuses: both fall back
    // to the upsert, which keeps the newer rows and isolates the refused one.
    let job = TestJob::new(5_000, 5_000).await;
    let pg = job.pg().await;
    let cols: Vec<String> = (1..=39).map(|i| format!("c{i} integer")).collect();
    let exprs: Vec<String> = (1..=39).map(|i| format!("s * {i}")).collect();
    for (table, check) in [("src", ""), ("dst", ", CHECK (c1 <> 2500)")] {
        pg.sql(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, v integer, {}{check})",
            cols.join(", ")
        ))
        .await;
    }
    pg.sql(&format!(
        "INSERT INTO src SELECT s, 1, {} FROM generate_series(1, 3000) s",
        exprs.join(", ")
    ))
    .await;
    let zeros = vec!["0"; 39].join(", ");
    pg.sql(&format!(
        "INSERT INTO dst SELECT s, 2, {zeros} FROM generate_series(1501, 1510) s; \
         INSERT INTO dst SELECT s, 0, {zeros} FROM generate_series(1511, 1520) s;"
    ))
    .await;
    let one_batch = job_file(&job, &pg.url, &pg.url, "version = \"v\"")
        .replace("group_size = 1000", "group_size = 5000")
        .replace("batch_size = 200", "batch_size = 5000");
    job.write_file("job.toml", &one_batch);

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    assert_eq!(
        failed(&job).await.keys().copied().collect::<Vec<_>>(),
        [2500],
        "the row the CHECK refuses, alone"
    );
    assert_eq!(
        pg.count("SELECT count(*) FROM dst WHERE id BETWEEN 1501 AND 1510 AND v = 2 AND c1 = 0")
            .await,
        10,
        "newer target rows survive the older source rows"
    );
    let differing = pg
        .count(
            "SELECT count(*) FROM src s FULL JOIN dst d USING (id) \
             WHERE (s.*)::text IS DISTINCT FROM (d.*)::text AND id NOT BETWEEN 1501 AND 1510",
        )
        .await;
    assert_eq!(
        differing, 1,
        "every other row equals its source (2500 is absent)"
    );
    assert_eq!(pg.count("SELECT count(*) FROM dst").await, 2999);
}

/// `bitmig-compensator indexes --job F --json`, whatever its exit code.
async fn indexes(job: &TestJob) -> Finished {
    job.run(
        Bin::Compensator,
        &["indexes", "--job", job.job_arg(), "--json"],
    )
    .await
}

/// `[target] create = true`: the tables bitmig created get the source's secondary indexes after the copy,
/// from `bitmig-compensator indexes`, and only once the job is complete; a table the operator made keeps
/// the indexes it was given.
#[tokio::test(flavor = "multi_thread")]
async fn created_postgres_tables_get_the_source_indexes_after_the_copy() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, user_id INT NOT NULL, \
         created_at DATETIME NOT NULL, code VARCHAR(20) NOT NULL, note TEXT NULL, \
         KEY by_user (user_id, created_at DESC), UNIQUE KEY by_code (code), KEY by_note (note(10)), \
         FULLTEXT KEY ft_note (note))",
    )
    .await;
    job.sql(&format!(
        "INSERT INTO src SELECT seq, seq % 37, TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE, \
         CONCAT('c', seq), CONCAT('note ', seq) FROM seq_1_to_{ROWS}"
    ))
    .await;
    // `own` is the operator's table: routed to, never indexed by bitmig.
    pg.sql("CREATE TABLE own (id numeric(20) PRIMARY KEY, user_id integer NOT NULL, created_at timestamp NOT NULL, code varchar(20) NOT NULL, note text)")
        .await;
    let toml = job_file(&job, &job.database_url, &pg.url, "").replace(
        "table = \"dst\"",
        "create = true\n[target.ranges]\n\"0..299\" = \"own\"\n\"300..999999\" = \"made\"",
    );
    job.write_file("job.toml", &toml);
    let pg_indexes = |table: &'static str| {
        let pg = &pg;
        async move {
            pg.texts(&format!(
                "SELECT indexdef FROM pg_indexes WHERE tablename = '{table}' ORDER BY indexname"
            ))
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect::<Vec<String>>()
        }
    };

    job.produce(&[]).await;
    // Before any consumer ran: not complete, nothing built, exit 3.
    let early = indexes(&job).await;
    early.expect_code(3);
    assert!(
        early.json()["not_complete"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{}",
        early.describe()
    );
    job.consume_until_idle(1, &[]).await;
    let (_, report) = job.report().await;
    assert_eq!(report["tables_created"], 1, "{report}");
    assert_eq!(report["tables_awaiting_indexes"], json!(["made"]));
    assert_eq!(
        pg_indexes("made").await,
        ["CREATE UNIQUE INDEX made_pkey ON public.made USING btree (id)"],
        "no secondary index while rows are copied"
    );

    let done = indexes(&job).await;
    done.expect_code(0);
    let summary = done.json();
    assert_eq!(summary["source_indexes"], 4, "{summary}");
    assert_eq!(summary["created"], 2, "{summary}");
    assert_eq!(summary["skipped"], 2, "{summary}");
    let outcomes: Vec<(String, String)> = summary["tables"][0]["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["index"].as_str().unwrap().to_owned(),
                m["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("by_code".into(), "created".into()),
            ("by_note".into(), "skipped".into()),
            ("by_user".into(), "created".into()),
            ("ft_note".into(), "skipped".into()),
        ]
    );
    assert_eq!(
        pg_indexes("made").await,
        [
            "CREATE UNIQUE INDEX made_by_code ON public.made USING btree (code)",
            "CREATE INDEX made_by_user ON public.made USING btree (user_id, created_at DESC)",
            "CREATE UNIQUE INDEX made_pkey ON public.made USING btree (id)",
        ]
    );
    assert_eq!(
        pg_indexes("own").await,
        ["CREATE UNIQUE INDEX own_pkey ON public.own USING btree (id)"],
        "the operator's table is left as it was"
    );
    let (code, report) = job.report().await;
    assert_eq!(code, 0);
    assert_eq!(report["tables_awaiting_indexes"], json!([]));

    // Again: everything is there already.
    let again = indexes(&job).await;
    again.expect_code(0);
    assert_eq!(again.json()["created"], 0);
    assert_eq!(again.json()["present"], 2);
    assert_eq!(pg_indexes("made").await.len(), 3);
}

/// PostgreSQL → MariaDB with `create = true`: the source's indexes after the copy; one the target cannot
/// make (a UNIQUE index over `v1` and `V1`, one value under MariaDB's case-insensitive collation) is named
/// with the server's reason and exit 1, the others are built all the same — the rows themselves landed, no
/// unique index stood in their way during the copy — and the table stays waiting in `report` until the
/// operator settles it.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_tables_created_from_postgres_get_its_indexes_and_a_refusal_is_named() {
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    pg.sql(
        "CREATE TABLE src (id bigint PRIMARY KEY, v varchar(20) NOT NULL, n integer NOT NULL, t text); \
         CREATE INDEX src_n_v ON src (n DESC, v); CREATE UNIQUE INDEX src_v ON src (v); \
         CREATE INDEX src_t ON src (t); CREATE INDEX src_lower ON src (lower(v)); \
         CREATE INDEX src_part ON src (n) WHERE n > 3; \
         INSERT INTO src SELECT s, CASE WHEN s = 2 THEN 'V1' ELSE 'v' || s END, s % 7, 't' || s \
         FROM generate_series(1, 500) s",
    )
    .await;
    let toml = job_file(&job, &pg.url, &job.database_url, "")
        .replace("table = \"dst\"", "table = \"dst\"\ncreate = true");
    job.write_file("job.toml", &toml);
    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;

    let done = indexes(&job).await;
    done.expect_code(1);
    let summary = done.json();
    assert_eq!(summary["source_indexes"], 5, "{summary}");
    assert_eq!(
        (&summary["created"], &summary["skipped"], &summary["failed"]),
        (&json!(2), &json!(2), &json!(1)),
        "{summary}"
    );
    let failed = summary["tables"][0]["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["outcome"] == "failed")
        .unwrap();
    assert_eq!(failed["index"], "src_v");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("Duplicate entry"),
        "{failed}"
    );
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, 500);
    let keys: Vec<String> = job
        .conn()
        .await
        .query(format!(
            "SELECT CONCAT(INDEX_NAME, ' ', NON_UNIQUE, ' ', GROUP_CONCAT(COLUMN_NAME, ' ', COLLATION ORDER BY SEQ_IN_INDEX)) \
             FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = 'dst' \
             GROUP BY INDEX_NAME, NON_UNIQUE ORDER BY INDEX_NAME",
            job.database
        ))
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["dst_src_n_v 1 n D,v A", "dst_src_t 1 t A", "PRIMARY 0 id A"]
    );
    let (code, report) = job.report().await;
    assert_eq!(code, 0, "the copy itself is complete");
    assert_eq!(report["tables_awaiting_indexes"], json!(["dst"]));
    // Once the operator decides the index is not wanted there, the next run settles the table.
    pg.sql("DROP INDEX src_v").await;
    let again = indexes(&job).await;
    again.expect_code(0);
    assert_eq!(again.json()["present"], 2);
    let (_, report) = job.report().await;
    assert_eq!(report["tables_awaiting_indexes"], json!([]));
}

/// `produce` batches for PostgreSQL are written several at a time (one `COPY` each time, `PRODUCE_MERGE_IDS`):
/// every row lands once, a row PostgreSQL refuses goes to `failed` alone while the rest of its batches land,
/// and the ledger's bits are those of each batch's group.
#[tokio::test(flavor = "multi_thread")]
async fn produce_batches_for_postgres_are_written_together_and_a_bad_row_stays_alone() {
    const N: u64 = 3_000;
    let job = TestJob::new(1_000, 100).await;
    let pg = job.pg().await;
    job.sql(
        "CREATE TABLE src (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, user_id INT NOT NULL, note VARCHAR(40) NOT NULL)",
    )
    .await;
    // Ids with gaps (1 in 4 missing), so that batches are sparse ranges; id 1 234 holds a NUL, which
    // PostgreSQL text cannot.
    job.sql(&format!(
        "INSERT INTO src SELECT seq, seq % 37, IF(seq = 1234, CONCAT('bad', CHAR(0)), CONCAT('n', seq)) \
         FROM seq_1_to_{N} WHERE seq % 4 <> 0"
    ))
    .await;
    pg.sql("CREATE TABLE dst (id numeric(20) PRIMARY KEY, user_id integer NOT NULL, note varchar(40) NOT NULL)")
        .await;
    job.write_file("job.toml", &job_file(&job, &job.database_url, &pg.url, ""));
    job.produce(&[]).await;
    // Every batch is queued before the consumer starts: it takes them several at a time.
    let done = job
        .spawn_consumer(&["--exit-when-idle", "3"])
        .wait(std::time::Duration::from_secs(120))
        .await;
    done.expect_code(0);
    let stopped = done
        .stderr
        .lines()
        .find(|l| l.contains("consumer stopped"))
        .unwrap_or_else(|| panic!("{}", done.describe()));
    let field = |name: &str| -> u64 {
        stopped
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {stopped}"))
    };
    // 750 ids per group of 1 000, in batches of 200: 4 batches per group.
    let batches = field("batches");
    assert_eq!(batches, 12, "{stopped}");
    assert!(
        field("writes") * 4 <= batches,
        "batches were taken together: {stopped}"
    );

    assert_eq!(
        failed(&job).await.keys().copied().collect::<Vec<_>>(),
        [1234]
    );
    let rows = pg.count("SELECT count(*) FROM dst").await;
    assert_eq!(rows, N - N / 4 - 1, "every row but the refused one");
    let wrong = pg
        .count(
            "SELECT count(*) FROM dst WHERE note <> 'n' || id OR user_id <> id % 37 OR id % 4 = 0",
        )
        .await;
    assert_eq!(wrong, 0);
    let (code, report) = job.report().await;
    assert_eq!(
        code, 3,
        "the refused row keeps the job incomplete: {report}"
    );
    assert_eq!(report["source_ids"], N - N / 4);
    assert_eq!(report["target_ids"], N - N / 4 - 1);
    assert_eq!(report["missing_ids"], 0);
    assert_eq!(report["failed_ids"], 1);
}
