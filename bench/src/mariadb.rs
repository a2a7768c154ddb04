//! The local MariaDB as the benchmark uses it: its own database, the generated `orders` table, fresh tables
//! of the same schema, the dirty-page flush before each method, and the fingerprints that prove a target
//! holds the source's rows.
//!
//! Contract: [`Db::generate_orders`] makes the data shape every phase copies — ids with gaps (3 missing after
//! every 7, a hole of 25 000 after half the rows), NULL and empty notes, 2- and 3-byte UTF-8, a tab, a
//! backslash and quotes; no 4-byte UTF-8 and no value ending in a newline (pt-archiver 3.2.1's --bulk-insert
//! copies neither: its LOAD DATA file is utf8mb3, and it chomps an escaped trailing newline). [`Db::settle`]
//! returns once InnoDB has written the pages the step before dirtied, and always puts
//! `innodb_max_dirty_pages_pct` back.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mysql_async::prelude::*;
use serde::Serialize;

pub const HOST_URL: &str = "mysql://root@127.0.0.1:3306";

/// The statement that fills `orders` with `@rows` rows from the sequence engine's `seq_0_to_LAST`.
const GENERATE: &str = r#"
INSERT INTO orders (id, user_id, amount, status, note, created_at, updated_at)
SELECT
  1 + seq + 3 * (seq DIV 7) + IF(seq >= @rows DIV 2, 25000, 0),
  1 + (seq * 7919) % 20000,
  CAST(((seq * 7727) % 1000000) / 100 AS DECIMAL(12, 2)) - 1000,
  CAST(seq % 5 AS SIGNED) - 1,
  CASE seq % 10
    WHEN 0 THEN NULL
    WHEN 1 THEN ''
    ELSE CONCAT('order ', seq, ' of user ', 1 + (seq * 7919) % 20000, ' ',
                ELT(1 + seq % 5, 'café', 'Grüße', '東京', 'a\\b "c" it''s', 'tab\there'))
  END,
  TIMESTAMP '2023-01-01 00:00:00' + INTERVAL (seq * 63072000 DIV @rows) SECOND,
  TIMESTAMP '2023-01-01 00:00:00' + INTERVAL (seq * 63072000 DIV @rows) SECOND + INTERVAL (seq % 1000) MINUTE
FROM seq_0_to_LAST
"#;

pub const ORDERS_DDL: &str = "CREATE TABLE orders (
  id         BIGINT UNSIGNED NOT NULL,
  user_id    BIGINT          NOT NULL,
  amount     DECIMAL(12, 2)  NOT NULL,
  status     TINYINT         NOT NULL,
  note       VARCHAR(64)     NULL,
  created_at DATETIME        NOT NULL,
  updated_at DATETIME        NOT NULL,
  PRIMARY KEY (id),
  KEY idx_orders_user_id (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4";

/// `COUNT(*)` and `CHECKSUM TABLE` of one table: equal fingerprints, equal rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub rows: u64,
    pub checksum: String,
}

/// The benchmark's database on the local MariaDB.
#[derive(Clone)]
pub struct Db {
    pub name: String,
    pool: mysql_async::Pool,
}

impl Db {
    pub fn url(name: &str) -> String {
        format!("{HOST_URL}/{name}")
    }

    /// Drops and creates database `name`.
    pub async fn recreate(name: &str) -> Result<Db> {
        let server = mysql_async::Pool::new(HOST_URL);
        let mut c = server
            .get_conn()
            .await
            .context("connecting to MariaDB on 3306")?;
        c.query_drop(format!(
            "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        ))
        .await?;
        drop(c);
        server.disconnect().await?;
        Db::open(name)
    }

    pub fn open(name: &str) -> Result<Db> {
        let opts = mysql_async::Opts::from_url(&Db::url(name))?;
        let opts = mysql_async::OptsBuilder::from_opts(opts)
            .init(vec!["SET NAMES utf8mb4"])
            .into();
        Ok(Db {
            name: name.into(),
            pool: mysql_async::Pool::new::<mysql_async::Opts>(opts),
        })
    }

    pub async fn conn(&self) -> Result<mysql_async::Conn> {
        Ok(self.pool.get_conn().await?)
    }

    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.conn()
            .await?
            .query_drop(sql)
            .await
            .with_context(|| format!("MariaDB: {}", short(sql)))
    }

    pub async fn value<T: FromValue + Send + 'static>(&self, sql: &str) -> Result<T> {
        self.conn()
            .await?
            .query_first::<T, _>(sql)
            .await
            .with_context(|| format!("MariaDB: {}", short(sql)))?
            .with_context(|| format!("MariaDB: no row from {}", short(sql)))
    }

    /// Makes `orders` with `rows` rows; checks the count.
    pub async fn generate_orders(&self, rows: u64) -> Result<()> {
        let mut c = self.conn().await?;
        c.query_drop(ORDERS_DDL).await?;
        c.query_drop(format!("SET @rows = {rows}")).await?;
        c.query_drop(GENERATE.replace("seq_0_to_LAST", &format!("seq_0_to_{}", rows - 1)))
            .await
            .context("generating orders")?;
        let n: u64 = self.value("SELECT COUNT(*) FROM orders").await?;
        if n != rows {
            bail!("generated {n} rows, not {rows}");
        }
        Ok(())
    }

    /// `name`, empty, with the schema of `like` (dropped first when it exists).
    pub async fn fresh_table(&self, name: &str, like: &str) -> Result<()> {
        self.exec(&format!(
            "DROP TABLE IF EXISTS `{name}`; CREATE TABLE `{name}` LIKE `{like}`"
        ))
        .await
    }

    /// `name` as a full copy of `from` (setup, not timed).
    pub async fn copy_table(&self, from: &str, name: &str) -> Result<()> {
        self.fresh_table(name, from).await?;
        self.exec(&format!("INSERT INTO `{name}` SELECT * FROM `{from}`"))
            .await
    }

    pub async fn fingerprint(&self, table: &str) -> Result<Fingerprint> {
        let rows: u64 = self
            .value(&format!("SELECT COUNT(*) FROM `{table}`"))
            .await?;
        let row: Option<(String, Option<u64>)> = self
            .conn()
            .await?
            .query_first(format!("CHECKSUM TABLE `{table}`"))
            .await?;
        let checksum = row
            .and_then(|(_, c)| c)
            .map(|c| c.to_string())
            .unwrap_or_else(|| "NULL".into());
        Ok(Fingerprint { rows, checksum })
    }

    /// The engine-independent fingerprint of an `orders`-shaped table: see [`row_hash_sql`].
    pub async fn row_hash(&self, table: &str) -> Result<Fingerprint> {
        let (rows, sum): (u64, String) = self
            .conn()
            .await?
            .query_first(format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(CAST(CONV(LEFT(MD5(CONCAT_WS('|', id, user_id, amount, \
                 status, IFNULL(CONCAT('s', note), 'n'), DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s'), \
                 DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s'))), 15), 16, 10) AS UNSIGNED)), 0) AS CHAR) \
                 FROM `{table}`"
            ))
            .await?
            .context("no row hash")?;
        Ok(Fingerprint {
            rows,
            checksum: sum,
        })
    }

    /// Waits (at most 120 s) until InnoDB has written the pages the previous step dirtied, so that no method
    /// pays for another's writes: the server's own setting flushes in the background while the next method
    /// runs. `innodb_max_dirty_pages_pct` is 0 meanwhile, then back to what it was.
    pub async fn settle(&self) -> Result<()> {
        let t0 = Instant::now();
        let mut c = self.conn().await?;
        let pct: String = c
            .query_first("SELECT CAST(@@GLOBAL.innodb_max_dirty_pages_pct AS CHAR)")
            .await?
            .context("innodb_max_dirty_pages_pct")?;
        c.query_drop("SET GLOBAL innodb_max_dirty_pages_pct = 0")
            .await?;
        let mut dirty = 0u64;
        let result = async {
            while t0.elapsed() < Duration::from_secs(120) {
                let row: Option<(String, u64)> = c
                    .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
                    .await?;
                dirty = row.map_or(0, |r| r.1);
                if dirty <= 100 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        }
        .await;
        c.query_drop(format!("SET GLOBAL innodb_max_dirty_pages_pct = {pct}"))
            .await?;
        result?;
        println!(
            "settled: {dirty} dirty pages left after {:.3} s",
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    pub async fn disconnect(self) {
        let _ = self.pool.disconnect().await;
    }
}

fn short(sql: &str) -> String {
    let s: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// Refuses to go on unless every table has the reference's fingerprint; prints them all.
pub fn check_equal(
    what: &str,
    reference: &(String, Fingerprint),
    others: &[(String, Fingerprint)],
) -> Result<()> {
    let mut ok = reference.1.checksum != "NULL";
    println!(
        "  {:<22} {:>12} rows  {}",
        reference.0, reference.1.rows, reference.1.checksum
    );
    for (name, fp) in others {
        println!("  {:<22} {:>12} rows  {}", name, fp.rows, fp.checksum);
        ok &= fp == &reference.1;
    }
    if !ok {
        bail!("{what}: the targets do not all hold the source's rows: no figures are printed");
    }
    println!("  identical");
    Ok(())
}
