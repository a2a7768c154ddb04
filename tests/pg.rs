//! PostgreSQL for the tests: a database of the test's own (`bmt_<suffix>`, the same name as its MariaDB
//! database), created empty and dropped when the test ends, whatever its outcome.

use crate::TestJob;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/";

/// The server URL without a database: `BITMIG_TEST_PG_URL` or the loopback default.
pub fn server_url() -> String {
    std::env::var("BITMIG_TEST_PG_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_owned())
}

fn url_for(database: &str) -> String {
    let mut url = url::Url::parse(&server_url()).expect("BITMIG_TEST_PG_URL is a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL at {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A test's PostgreSQL database and a connection to it.
pub struct PgDb {
    /// `postgres://…/bmt_<suffix>`, for job files.
    pub url: String,
    pub client: tokio_postgres::Client,
    _drop: DropDatabase,
}

impl TestJob {
    /// Creates the test's PostgreSQL database (named like its MariaDB one).
    pub async fn pg(&self) -> PgDb {
        let name = self.database.clone();
        let server = connect(&url_for("postgres")).await;
        server
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
            ))
            .await
            .unwrap_or_else(|e| panic!("create PostgreSQL database {name}: {e}"));
        let guard = DropDatabase { name: name.clone() };
        let url = url_for(&name);
        let client = connect(&url).await;
        PgDb {
            url,
            client,
            _drop: guard,
        }
    }
}

impl PgDb {
    pub async fn sql(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}\n→ {e:?}"));
    }

    /// The first column of every row of `query`, as text (NULL as `None`).
    pub async fn texts(&self, query: &str) -> Vec<Vec<Option<String>>> {
        let rows = self
            .client
            .query(query, &[])
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e:?}"));
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect()
    }

    pub async fn count(&self, query: &str) -> u64 {
        let row = self
            .client
            .query_one(query, &[])
            .await
            .unwrap_or_else(|e| panic!("{query}\n→ {e:?}"));
        row.get::<_, i64>(0) as u64
    }
}

/// Drops the database from a thread of its own (also while a panic unwinds), ending its sessions first.
struct DropDatabase {
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        crate::clean_up(format!("PostgreSQL database {name}"), async move {
            let server = connect(&url_for("postgres")).await;
            if let Err(e) = server
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
            {
                eprintln!("cleanup: PostgreSQL database {name}: {e}");
            }
        });
    }
}
