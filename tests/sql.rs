//! The source table with every MySQL column type, rows generated on the server, and the exact comparison of
//! target rows with source rows.

use mysql_async::prelude::Queryable;

use crate::TestJob;

/// 2⁴⁰: ids above it must survive every conversion (they do not fit in 32 bits, nor in an f32).
pub const TWO_POW_40: u64 = 1 << 40;

/// `(name, type, generator)` of every column of `src` after `id`. A generator is an SQL expression over `s`
/// (a sequence number) and `id`; NULL is added by [`null_wrapped`].
const COLUMNS: &[(&str, &str, &str)] = &[
    (
        "c_bigint",
        "BIGINT",
        "CASE s % 5 WHEN 0 THEN -9223372036854775808 WHEN 1 THEN 9223372036854775807 \
         ELSE s * 1000003 * IF(s % 2, 1, -1) END",
    ),
    (
        "c_bigint_u",
        "BIGINT UNSIGNED",
        "CASE s % 5 WHEN 0 THEN 18446744073709551615 WHEN 1 THEN 0 ELSE s * 4294967311 END",
    ),
    (
        "c_int",
        "INT",
        "CASE s % 5 WHEN 0 THEN -2147483648 WHEN 1 THEN 2147483647 ELSE s * 7919 % 2147483647 * IF(s % 2, 1, -1) END",
    ),
    (
        "c_int_u",
        "INT UNSIGNED",
        "CASE s % 5 WHEN 0 THEN 4294967295 WHEN 1 THEN 0 ELSE s * 3 END",
    ),
    (
        "c_mediumint",
        "MEDIUMINT",
        "CASE s % 5 WHEN 0 THEN -8388608 WHEN 1 THEN 8388607 ELSE s % 8388607 - 4000000 END",
    ),
    (
        "c_mediumint_u",
        "MEDIUMINT UNSIGNED",
        "CASE s % 5 WHEN 0 THEN 16777215 WHEN 1 THEN 0 ELSE s % 16777215 END",
    ),
    (
        "c_smallint",
        "SMALLINT",
        "CASE s % 5 WHEN 0 THEN -32768 WHEN 1 THEN 32767 ELSE s % 32767 - 16000 END",
    ),
    (
        "c_smallint_u",
        "SMALLINT UNSIGNED",
        "CASE s % 5 WHEN 0 THEN 65535 WHEN 1 THEN 0 ELSE s % 65535 END",
    ),
    (
        "c_tinyint",
        "TINYINT",
        "CASE s % 5 WHEN 0 THEN -128 WHEN 1 THEN 127 ELSE s % 256 - 128 END",
    ),
    (
        "c_tinyint_u",
        "TINYINT UNSIGNED",
        "CASE s % 5 WHEN 0 THEN 255 WHEN 1 THEN 0 ELSE s % 256 END",
    ),
    (
        "c_decimal",
        "DECIMAL(20,6)",
        "CASE s % 5 WHEN 0 THEN 99999999999999.999999 WHEN 1 THEN -99999999999999.999999 \
         ELSE s * 1234567.891011 * IF(s % 2, 1, -1) END",
    ),
    (
        "c_float",
        "FLOAT",
        "CASE s % 11 WHEN 0 THEN 3.4028234e38 WHEN 1 THEN -1.1754944e-38 WHEN 2 THEN 0 \
         ELSE s * PI() / 7 * IF(s % 2, 1, -1) END",
    ),
    (
        "c_double",
        "DOUBLE",
        "CASE s % 11 WHEN 0 THEN 1.7976931348623157e308 WHEN 1 THEN -2.2250738585072014e-308 WHEN 2 THEN 0 \
         ELSE s * PI() / 7e3 * IF(s % 2, 1, -1) END",
    ),
    ("c_char", "CHAR(10)", "CONCAT(' é', s % 10000000)"),
    (
        "c_varchar",
        "VARCHAR(255)",
        r#"IF(s % 17 = 0, '', CONCAT('it''s "quoted" \\ back\\slash ', s, ' 😀 tab\tnl\nnul\0', IF(s % 3 = 0, '   ', '')))"#,
    ),
    (
        "c_text",
        "TEXT",
        r#"CONCAT(REPEAT('ä€😀🏳️‍🌈', s % 40), 'line1\nline2\r\n', s, ' ''single'' "double" \\back\\ \0nul')"#,
    ),
    (
        "c_blob",
        "BLOB",
        "CONCAT(X'0000', REPEAT(UNHEX(SHA2(s, 256)), s % 5), X'00FF00')",
    ),
    (
        "c_varbinary",
        "VARBINARY(64)",
        "IF(s % 17 = 0, '', CONCAT(X'00', UNHEX(MD5(s)), X'0000'))",
    ),
    (
        "c_date",
        "DATE",
        "CASE s % 9 WHEN 0 THEN DATE'1000-01-01' WHEN 1 THEN DATE'9999-12-31' \
         ELSE DATE'1000-01-01' + INTERVAL (s * 37) % 3280000 DAY END",
    ),
    (
        "c_time",
        "TIME",
        "CASE s % 9 WHEN 0 THEN TIME'-838:59:59' WHEN 1 THEN TIME'838:59:59' WHEN 2 THEN TIME'00:00:00' \
         ELSE SEC_TO_TIME((s * 7919) % 6040799 - 3020399) END",
    ),
    (
        "c_datetime",
        "DATETIME(6)",
        "CASE s % 9 WHEN 0 THEN TIMESTAMP'1000-01-01 00:00:00' WHEN 1 THEN TIMESTAMP'9999-12-31 23:59:59.999999' \
         ELSE TIMESTAMP'1001-01-01 00:00:00' + INTERVAL (s * 1000003) % 280000000000 SECOND \
         + INTERVAL (s * 7) % 1000000 MICROSECOND END",
    ),
    (
        "c_timestamp",
        "TIMESTAMP NULL DEFAULT NULL",
        "FROM_UNIXTIME(1 + (s * 7919) % 2147480000)",
    ),
    ("c_year", "YEAR", "IF(s % 9 = 0, 2155, 1901 + s % 255)"),
    (
        "c_json",
        "JSON",
        r#"JSON_OBJECT('s', s, 'neg', -s, 'f', s / 3, 'str', CONCAT('q"\\', s, ' 😀'), 'arr', JSON_ARRAY(1, 2.5, NULL, TRUE, 'x'), 'obj', JSON_OBJECT('k', 'v'))"#,
    ),
    ("c_enum", "ENUM('a','b','c')", "ELT(1 + s % 3, 'a', 'b', 'c')"),
    (
        "c_set",
        "SET('x','y','z')",
        "ELT(1 + s % 8, '', 'x', 'y', 'x,y', 'z', 'x,z', 'y,z', 'x,y,z')",
    ),
    ("c_bit", "BIT(12)", "s % 4096"),
    ("order", "INT", "s"),
    ("key", "VARCHAR(32)", "CONCAT('k', s)"),
    ("group", "VARCHAR(32)", "CONCAT('g', s % 10)"),
];

/// The generator of column number `k`, NULL on every 101st row (all-NULL rows) and on every 13th row of
/// its own (offset by `k`, so every column has NULLs in different rows).
fn null_wrapped(k: usize, expr: &str) -> String {
    format!("IF(s % 101 = 0 OR (s + {k}) % 13 = 0, NULL, {expr})")
}

/// `CREATE TABLE name` with `id BIGINT UNSIGNED PRIMARY KEY` and a column of every type.
fn create_table_sql(name: &str) -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|(name, ty, _)| format!("`{name}` {ty} NULL"))
        .collect();
    format!(
        "CREATE TABLE {name} (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, {}) \
         DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci",
        columns.join(", ")
    )
}

/// `INSERT INTO src` one generated row per row of `ids` (a `SELECT s, id`).
fn insert_query(ids: &str) -> String {
    let names: Vec<String> = COLUMNS
        .iter()
        .map(|(name, _, _)| format!("`{name}`"))
        .collect();
    let exprs: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(k, (_, _, expr))| null_wrapped(k, expr))
        .collect();
    format!(
        "INSERT INTO src (id, {}) SELECT id, {} FROM ({ids}) AS g",
        names.join(", "),
        exprs.join(", ")
    )
}

/// A `SELECT s, id` of `rows` ids with gaps: starting at `3 * group_size + 3` (not 0, not a group's first),
/// skipping every id whose sequence number is 3 mod 7, with one whole group missing in the middle, ending
/// inside a group.
pub fn gappy_ids(rows: u64, group_size: u64) -> String {
    let start = 3 * group_size + 3;
    // The group about halfway through the ids, never the first one.
    let hole = start / group_size * group_size + group_size * (rows * 7 / 12 / group_size).max(1);
    let raw = rows * 2 + 2 * group_size;
    format!(
        "SELECT CAST(seq AS SIGNED) AS s, {start} + seq AS id FROM seq_1_to_{raw} \
         WHERE seq % 7 <> 3 AND NOT ({start} + seq BETWEEN {hole} AND {hole_last}) \
         ORDER BY seq LIMIT {rows}",
        hole_last = hole + group_size - 1
    )
}

/// A `SELECT s, id` of six ids above 2⁴⁰, in a few groups of their own.
pub fn high_ids() -> String {
    format!(
        "SELECT CAST(1000 + seq AS SIGNED) AS s, {TWO_POW_40} + ELT(seq, 0, 1, 2223, 2224, 12345, 999999) AS id \
         FROM seq_1_to_6"
    )
}

impl TestJob {
    /// Rewrites the job file so that the target connects as a new user who may write `dst` but not read
    /// `src`: the server cannot copy a batch itself (`INSERT … SELECT`), and every batch is read and written
    /// through the consumer. The user is dropped with the guard.
    pub async fn target_user_without_source(&self) -> MysqlUser {
        let name = format!("{}_w", self.name);
        let user = MysqlUser::create(self, &name, "Pw_target_only", "").await;
        self.sql(&format!(
            "REVOKE ALL PRIVILEGES ON `{}`.* FROM '{name}'@'%'",
            self.database
        ))
        .await;
        self.sql(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON `{}`.dst TO '{name}'@'%'",
            self.database
        ))
        .await;
        self.set_target_url(&user.url(&self.database_url));
        user
    }

    /// Rewrites the job file so that its SQL target, the test database, is reached at `url`.
    pub fn set_target_url(&self, url: &str) {
        let target = |url: &str| format!("[target]\nkind = \"sql\"\nurl = \"{url}\"");
        let toml = std::fs::read_to_string(&self.job_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.job_file.display()));
        let rewritten = toml.replace(&target(&self.database_url), &target(url));
        assert_ne!(
            rewritten, toml,
            "the job file names the test database as its target"
        );
        self.write_file("job.toml", &rewritten);
    }

    pub async fn conn(&self) -> mysql_async::Conn {
        self.mysql.get_conn().await.expect("a MariaDB connection")
    }

    pub async fn sql(&self, query: &str) {
        self.conn()
            .await
            .query_drop(query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
    }

    /// Runs `query` and returns the number of rows it changed.
    pub async fn sql_affected(&self, query: &str) -> u64 {
        let mut conn = self.conn().await;
        conn.query_drop(query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
        conn.affected_rows()
    }

    /// The first column of the first row of `query`, as a number.
    pub async fn sql_u64(&self, query: &str) -> u64 {
        self.conn()
            .await
            .query_first::<u64, _>(query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"))
            .unwrap_or_else(|| panic!("{query}\n→ no row"))
    }

    /// The first column of every row of `query`, as numbers.
    pub async fn sql_ids(&self, query: &str) -> Vec<u64> {
        self.conn()
            .await
            .query::<u64, _>(query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"))
    }

    /// Creates `src` with `id BIGINT UNSIGNED PRIMARY KEY` and a column of every type, and `dst LIKE src`.
    pub async fn create_tables(&self) {
        self.sql(&create_table_sql("src")).await;
        self.sql("CREATE TABLE dst LIKE src").await;
    }

    /// Inserts one generated row into `src` per row of `ids` (a `SELECT s, id`); returns how many.
    pub async fn insert_rows(&self, ids: &str) -> u64 {
        self.sql_affected(&insert_query(ids)).await
    }

    /// `src` and `dst` plus [`gappy_ids`]`(rows)` and [`high_ids`]; returns the number of source rows.
    pub async fn create_source(&self, rows: u64) -> u64 {
        self.create_tables().await;
        let inserted = self.insert_rows(&gappy_ids(rows, self.group_size)).await;
        assert_eq!(inserted, rows, "generated fewer rows than asked");
        inserted + self.insert_rows(&high_ids()).await
    }

    /// As [`Self::create_source`]`(rows)`, but copied (`CREATE TABLE … LIKE`, `INSERT … SELECT`, with the
    /// session's binlog off: nobody follows the copy) from a fixture database that the first test to ask
    /// generates under a server lock and every later test, in any process, reuses: generating 200 000 rows
    /// of every type takes far longer than copying them. The fixture's name carries the CRC32 of the
    /// generating SQL, so a changed generator makes a new one; it is kept on purpose (a cache, like
    /// `target/`), `DROP DATABASE bmt_fixture_…` removes it. Returns the number of source rows.
    pub async fn create_source_from_fixture(&self, rows: u64) -> u64 {
        let server = &self.services.mysql_url;
        let mut conn = mysql_async::Conn::from_url(server.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect to MariaDB at {server}: {e}"));
        let inserts = [
            insert_query(&gappy_ids(rows, self.group_size)),
            insert_query(&high_ids()),
        ];
        let generate = format!("{}\n{}", create_table_sql("src"), inserts.join("\n"));
        let crc: u64 = conn
            .exec_first("SELECT CRC32(?)", (generate.as_str(),))
            .await
            .expect("CRC32 of the generator")
            .expect("a CRC32");
        let fixture = format!("bmt_fixture_{rows}_{crc:08x}");
        exec(&mut conn, "SET SESSION sql_log_bin = 0").await;
        let locked: Option<i64> = conn
            .exec_first("SELECT GET_LOCK(?, 600)", (fixture.as_str(),))
            .await
            .expect("GET_LOCK")
            .flatten();
        assert_eq!(locked, Some(1), "the fixture lock {fixture}");
        let ready: Option<u64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'src'",
                (fixture.as_str(),),
            )
            .await
            .expect("look for the fixture");
        if ready != Some(1) {
            // Generated under another name and renamed when whole: a test killed mid-way leaves no half.
            exec(
                &mut conn,
                &format!("CREATE DATABASE IF NOT EXISTS `{fixture}`"),
            )
            .await;
            exec(&mut conn, &format!("USE `{fixture}`")).await;
            exec(&mut conn, "DROP TABLE IF EXISTS src_partial").await;
            exec(&mut conn, &create_table_sql("src_partial")).await;
            for insert in &inserts {
                let insert = insert.replacen("INSERT INTO src ", "INSERT INTO src_partial ", 1);
                exec(&mut conn, &insert).await;
            }
            exec(&mut conn, "RENAME TABLE src_partial TO src").await;
        }
        let _: Option<i64> = conn
            .exec_first("SELECT RELEASE_LOCK(?)", (fixture.as_str(),))
            .await
            .expect("RELEASE_LOCK")
            .flatten();
        let db = &self.database;
        exec(
            &mut conn,
            &format!("CREATE TABLE `{db}`.src LIKE `{fixture}`.src"),
        )
        .await;
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.src SELECT * FROM `{fixture}`.src"),
        )
        .await;
        exec(
            &mut conn,
            &format!("CREATE TABLE `{db}`.dst LIKE `{db}`.src"),
        )
        .await;
        let copied: u64 = conn
            .query_first(format!("SELECT COUNT(*) FROM `{db}`.src"))
            .await
            .expect("count the copy")
            .expect("a count");
        conn.disconnect().await.ok();
        assert_eq!(
            copied,
            rows + 6,
            "the fixture {fixture} holds {copied} rows"
        );
        copied
    }

    /// Every id of `table`, ascending.
    pub async fn ids_of(&self, table: &str) -> Vec<u64> {
        self.sql_ids(&format!("SELECT id FROM `{table}` ORDER BY id"))
            .await
    }

    /// Source ids of the group starting at `first`, ascending.
    pub async fn source_ids_in_group(&self, first: u64) -> Vec<u64> {
        self.sql_ids(&format!(
            "SELECT id FROM src WHERE id BETWEEN {first} AND {} ORDER BY id",
            first + self.group_size - 1
        ))
        .await
    }

    /// Asserts that `dst` holds exactly the rows of `src` (see [`Self::target_differences`]).
    pub async fn assert_target_equals_source(&self) {
        if let Some(differences) = self.target_differences().await {
            panic!("{differences}");
        }
    }

    /// `None` when `dst` holds exactly the rows of `src`: the same number, and for every source row a target
    /// row with its id whose every column is equal both as a value (`<=>`, exact for FLOAT and DOUBLE) and
    /// as bytes (`BINARY`, blind to collations and padding). Otherwise a description that names the
    /// differing columns of a few rows and shows the first one on both sides in hex.
    pub async fn target_differences(&self) -> Option<String> {
        let source = self.sql_u64("SELECT COUNT(*) FROM src").await;
        let target = self.sql_u64("SELECT COUNT(*) FROM dst").await;
        let columns = self.sql_columns("src").await;
        let equal: Vec<String> = columns
            .iter()
            .map(|c| format!("(s.`{c}` <=> d.`{c}` AND BINARY s.`{c}` <=> BINARY d.`{c}`)"))
            .collect();
        let differing: Vec<String> = columns
            .iter()
            .zip(&equal)
            .map(|(c, eq)| format!("IF({eq}, NULL, '{c}')"))
            .collect();
        let query = format!(
            "SELECT s.id, IF(d.id IS NULL, 'no target row', CONCAT_WS(', ', {})) \
             FROM src s LEFT JOIN dst d ON d.id = s.id \
             WHERE d.id IS NULL OR NOT ({}) ORDER BY s.id",
            differing.join(", "),
            equal.join(" AND ")
        );
        let bad: Vec<(u64, String)> = self
            .conn()
            .await
            .query(&query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
        if bad.is_empty() && source == target {
            return None;
        }
        let mut message = format!(
            "target differs from source: {source} source rows, {target} target rows, {} source rows \
             without an equal target row",
            bad.len()
        );
        for (id, what) in bad.iter().take(5) {
            message.push_str(&format!("\n  id {id}: {what}"));
        }
        if let Some((id, _)) = bad.first() {
            for table in ["src", "dst"] {
                message.push_str(&format!(
                    "\n  {table} row {id}: {}",
                    self.row_hex(table, *id).await
                ));
            }
        }
        Some(message)
    }

    /// `CHECKSUM TABLE table` (MariaDB's live checksum over every row and column).
    pub async fn checksum(&self, table: &str) -> Option<u64> {
        let query = format!("CHECKSUM TABLE `{table}`");
        let row: Option<(String, Option<u64>)> = self
            .conn()
            .await
            .query_first(&query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
        row.and_then(|(_, c)| c)
    }

    /// `table`'s column names in order.
    pub async fn sql_columns(&self, table: &str) -> Vec<String> {
        let query = format!(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION",
            self.database
        );
        let columns: Vec<String> = self
            .conn()
            .await
            .query(&query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
        assert!(!columns.is_empty(), "table {table} has no columns");
        columns
    }

    /// One row as `col=HEX` pairs (NULL shown as NULL), for failure messages.
    pub async fn row_hex(&self, table: &str, id: u64) -> String {
        let columns = self.sql_columns(table).await;
        let parts: Vec<String> = columns
            .iter()
            .map(|c| format!("CONCAT('{c}=', IFNULL(HEX(`{c}`), 'NULL'))"))
            .collect();
        let query = format!(
            "SELECT CONCAT_WS(' ', {}) FROM `{table}` WHERE id = {id}",
            parts.join(", ")
        );
        self.conn()
            .await
            .query_first::<String, _>(&query)
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e}"))
            .unwrap_or_else(|| "no such row".to_owned())
    }
}

/// Runs `query` on `conn`, panicking with it on failure.
async fn exec(conn: &mut mysql_async::Conn, query: &str) {
    conn.query_drop(query)
        .await
        .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
}

/// Runs one statement on the server at `server_url` over a connection of its own (for cleanups).
async fn on_server(server_url: &str, query: String) -> Result<(), mysql_async::Error> {
    let mut conn = mysql_async::Conn::from_url(server_url).await?;
    conn.query_drop(query).await?;
    conn.disconnect().await
}

/// Cleanup: drops a database, reporting (not failing on) errors.
pub async fn drop_database(server_url: &str, database: &str) {
    let dropped = on_server(server_url, format!("DROP DATABASE IF EXISTS `{database}`")).await;
    if let Err(e) = dropped {
        eprintln!("cleanup: database {database}: {e}");
    }
}

/// A connection to the private MariaDB on `port` (`scripts/services --with-follow-negatives` starts them:
/// 3316 binlog off, 3317 binlog in STATEMENT format, 3318 full row metadata); panics saying how to start it.
pub async fn private_server(port: u16) -> (String, mysql_async::Conn) {
    let url = format!("mysql://root@127.0.0.1:{port}/");
    match mysql_async::Conn::from_url(url.as_str()).await {
        Ok(conn) => (url, conn),
        Err(e) => panic!(
            "no MariaDB on 127.0.0.1:{port} ({e}): start the private servers with \
             `scripts/services --with-follow-negatives`"
        ),
    }
}

/// Drops `database` on the server of `server_url` when dropped, whatever the test's outcome.
pub struct DatabaseOn {
    pub server_url: String,
    pub database: String,
}

impl Drop for DatabaseOn {
    fn drop(&mut self) {
        let (server_url, database) = (self.server_url.clone(), self.database.clone());
        crate::clean_up(format!("database {database} on {server_url}"), async move {
            drop_database(&server_url, &database).await;
        });
    }
}

/// A MariaDB user with every privilege on the test's database, dropped with the guard.
pub struct MysqlUser {
    name: String,
    password: String,
    server_url: String,
}

impl MysqlUser {
    /// `CREATE USER name IDENTIFIED BY password {with}`: `with` is empty or resource limits
    /// (`WITH MAX_CONNECTIONS_PER_HOUR 24`).
    pub async fn create(job: &TestJob, name: &str, password: &str, with: &str) -> Self {
        let user = Self {
            name: name.to_owned(),
            password: password.to_owned(),
            server_url: job.services.mysql_url.clone(),
        };
        job.sql(&format!(
            "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}' {with}"
        ))
        .await;
        job.sql(&format!(
            "GRANT ALL PRIVILEGES ON `{}`.* TO '{name}'@'%'",
            job.database
        ))
        .await;
        user
    }

    /// The user's name (without its host).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `url` as this user.
    pub fn url(&self, url: &str) -> String {
        crate::with_credentials(url, &self.name, &self.password)
    }
}

impl Drop for MysqlUser {
    fn drop(&mut self) {
        let (name, server_url) = (self.name.clone(), self.server_url.clone());
        crate::clean_up(format!("MariaDB user {name}"), async move {
            let dropped = on_server(&server_url, format!("DROP USER IF EXISTS '{name}'@'%'")).await;
            if let Err(e) = dropped {
                eprintln!("cleanup: MariaDB user {name}: {e}");
            }
        });
    }
}
