//! A consumer keeps its database connections from batch to batch. Each new connection costs the server a
//! login, the session settings and a fresh prepare of the batch's statements; a pool that closed every
//! connection it got back (mysql_async's default with an idle TTL of zero) made the consumer reconnect for
//! almost every batch, and MariaDB spent a tenth of its CPU parsing the same INSERT again. Here the job runs
//! as a MariaDB user allowed few connections an hour, so a program that reconnects per batch fails.

use mysql_async::prelude::Queryable;

use crate::helpers::{gappy_ids, TestJob};

/// Connections the user may open in an hour: enough for the producer, two consumers (each holds at most
/// `concurrency + 1` for the source and as many for the target) and the compensator, far fewer than the
/// job's batches.
const CONNECTIONS_PER_HOUR: u32 = 24;

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_write_120_batches_over_a_handful_of_connections() {
    let mut job = TestJob::new(1_000, 50).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(6_000, job.group_size)).await;
    let batches = rows.div_ceil(job.batch_size);
    assert!(
        batches >= 5 * u64::from(CONNECTIONS_PER_HOUR),
        "only {batches} batches: too few to tell reconnecting from keeping"
    );

    let user = format!("bmc_{}", &job.name[2..]);
    let _user = LimitedUser::create(&job, &user).await;
    let limited_url = {
        let mut url = url::Url::parse(&job.database_url).expect("the test's database URL");
        url.set_username(&user).expect("a URL that takes a user");
        url.to_string()
    };
    let limited = job.job_toml().replace(&job.database_url, &limited_url);
    job.job_file = job.write_file("limited.toml", &limited);

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;
    job.compensate(Some("0s")).await;

    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}

/// A MariaDB user with every privilege on the test's database and at most [`CONNECTIONS_PER_HOUR`]
/// connections an hour, dropped with the guard.
struct LimitedUser {
    name: String,
    mysql_url: String,
}

impl LimitedUser {
    async fn create(job: &TestJob, name: &str) -> Self {
        let user = Self {
            name: name.to_owned(),
            mysql_url: job.services.mysql_url.clone(),
        };
        job.sql(&format!(
            "CREATE USER '{name}'@'%' WITH MAX_CONNECTIONS_PER_HOUR {CONNECTIONS_PER_HOUR}"
        ))
        .await;
        job.sql(&format!(
            "GRANT ALL PRIVILEGES ON `{}`.* TO '{name}'@'%'",
            job.database
        ))
        .await;
        user
    }
}

impl Drop for LimitedUser {
    fn drop(&mut self) {
        let (name, mysql_url) = (self.name.clone(), self.mysql_url.clone());
        // A runtime of its own: the test's may be gone (a panic) or busy (this runs inside it).
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a cleanup runtime");
            runtime.block_on(async {
                let mut conn = mysql_async::Conn::from_url(mysql_url.as_str()).await?;
                conn.query_drop(format!("DROP USER IF EXISTS '{name}'@'%'"))
                    .await?;
                conn.disconnect().await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("cleanup: MariaDB user {} not dropped: {done:?}", self.name);
        }
    }
}
