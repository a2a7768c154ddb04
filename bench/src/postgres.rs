//! The local PostgreSQL as the benchmark uses it: its own database, the `orders` table made the same way as
//! MariaDB's (same ids, same values), `CHECKPOINT` before each method (PostgreSQL's counterpart of the
//! dirty-page flush), and the engine-independent row hash that proves a PostgreSQL table equals a MariaDB one.
//!
//! Contract: [`Pg::row_hash`] over a table equals [`crate::mariadb::Db::row_hash`] over a table with the same
//! rows: both sum the first 15 hex digits of the MD5 of the same text per row (`id|user_id|amount|status|
//! s<note> or n|created_at|updated_at`, times as `YYYY-MM-DD HH:MM:SS` in UTC).

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::mariadb::Fingerprint;

pub const HOST_URL: &str = "postgres://postgres@127.0.0.1:5432";

pub struct Pg {
    pub name: String,
    pub client: Client,
}

impl Pg {
    pub fn url(name: &str) -> String {
        format!("{HOST_URL}/{name}")
    }

    async fn connect(url: &str) -> Result<Client> {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client.batch_execute("SET TimeZone = 'UTC'").await?;
        Ok(client)
    }

    /// Drops and creates database `name` (no replication slot of the benchmark's may use it by then).
    pub async fn recreate(name: &str) -> Result<Pg> {
        let admin = Pg::connect(&Pg::url("postgres")).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
            ))
            .await?;
        Pg::open(name).await
    }

    pub async fn drop_database(name: &str) -> Result<()> {
        let admin = Pg::connect(&Pg::url("postgres")).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
        Ok(())
    }

    pub async fn open(name: &str) -> Result<Pg> {
        Ok(Pg {
            name: name.into(),
            client: Pg::connect(&Pg::url(name)).await?,
        })
    }

    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .with_context(|| format!("PostgreSQL: {sql}"))
    }

    /// Writes every dirty buffer, so that no method pays for the one before.
    pub async fn checkpoint(&self) -> Result<()> {
        self.exec("CHECKPOINT").await
    }

    /// `table` (`schema.name` allowed) with `orders`' columns as bitmig's PostgreSQL sink writes them.
    pub async fn create_orders_like(&self, table: &str) -> Result<()> {
        self.exec(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (
               id         bigint        NOT NULL PRIMARY KEY,
               user_id    bigint        NOT NULL,
               amount     numeric(12,2) NOT NULL,
               status     smallint      NOT NULL,
               note       varchar(64)   NULL,
               created_at timestamp     NOT NULL,
               updated_at timestamp     NOT NULL
             );
             CREATE INDEX ON {table} (user_id)"
        ))
        .await
    }

    /// `orders` with the same rows as MariaDB's [`crate::mariadb::Db::generate_orders`] makes.
    pub async fn generate_orders(&self, rows: u64) -> Result<()> {
        self.create_orders_like("orders").await?;
        let half = rows / 2;
        self.exec(&format!(
            "INSERT INTO orders
             SELECT 1 + seq + 3 * (seq / 7) + CASE WHEN seq >= {half} THEN 25000 ELSE 0 END,
                    1 + (seq * 7919) % 20000,
                    round(((seq * 7727) % 1000000)::numeric / 100, 2) - 1000,
                    seq % 5 - 1,
                    CASE seq % 10
                      WHEN 0 THEN NULL
                      WHEN 1 THEN ''
                      ELSE 'order ' || seq || ' of user ' || (1 + (seq * 7919) % 20000) || ' ' ||
                           (ARRAY['café', 'Grüße', '東京', E'a\\\\b \"c\" it''s', E'tab\\there'])[1 + seq % 5]
                    END,
                    timestamp '2023-01-01 00:00:00' + make_interval(secs => (seq * 63072000) / {rows}),
                    timestamp '2023-01-01 00:00:00' + make_interval(secs => (seq * 63072000) / {rows})
                      + make_interval(mins => (seq % 1000)::int)
             FROM generate_series(0::bigint, {last}) AS seq",
            last = rows - 1
        ))
        .await?;
        let n = self.count("orders").await?;
        if n != rows {
            bail!("generated {n} rows in PostgreSQL, not {rows}");
        }
        Ok(())
    }

    pub async fn count(&self, table: &str) -> Result<u64> {
        let row = self
            .client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub async fn row_hash(&self, table: &str) -> Result<Fingerprint> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(('x' || left(md5(concat_ws('|', id, user_id, amount, \
                     status, coalesce('s' || note, 'n'), to_char(created_at, 'YYYY-MM-DD HH24:MI:SS'), \
                     to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS'))), 15))::bit(60)::bigint), 0)::text \
                     FROM {table}"
                ),
                &[],
            )
            .await
            .with_context(|| format!("row hash of {table}"))?;
        Ok(Fingerprint {
            rows: row.get::<_, i64>(0) as u64,
            checksum: row.get(1),
        })
    }
}
