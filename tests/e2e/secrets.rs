//! Credentials never leave the process: a job run with passwords for MariaDB, RabbitMQ and Redis, and runs
//! with wrong passwords, print none of them, store none in Redis and put none in a message. TLS URLs
//! (`ssl-mode=REQUIRED`, `amqps://`, `rediss://`) are accepted; here, where the servers speak no TLS, they
//! fail when connecting, as a connection error.

use std::process::Command as StdCommand;

use rand::Rng;

use crate::helpers::{
    clean_up, gappy_ids, path_str, with_credentials, Bin, Finished, MysqlUser, TestJob,
    COMMAND_DEADLINE,
};

#[tokio::test(flavor = "multi_thread")]
async fn passwords_appear_in_no_log_no_ledger_key_and_no_message() {
    let mut job = TestJob::new(1_000, 100).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(2_000, job.group_size)).await;

    let secret = format!("Pw_{}", random_word(20));
    let wrong = format!("Wrong_{}", random_word(20));
    let user = format!("bm_{}", &job.name[2..]);
    let users = Users::create(&job, &user, &secret).await;

    let db_url = with_credentials(&job.database_url, &user, &secret);
    let amqp_url = with_credentials(&job.services.amqp_url, &user, &secret);
    let redis_url = with_credentials(&job.services.redis_url, &user, &secret);
    let secret_job = job.job_toml().replace(&job.database_url, &db_url);
    assert!(secret_job.contains(&secret));
    job.job_file = job.write_file("secret.toml", &secret_job);
    job.services.amqp_url = amqp_url.clone();
    job.services.redis_url = redis_url.clone();

    // The whole job, as the password users, logging everything they can.
    run_traced(&job, Bin::Producer, &["--job", job.job_arg()])
        .await
        .expect_code(0);
    let messages = job.peek_all(&job.work_queue()).await;
    assert!(!messages.is_empty(), "the producer published nothing");
    for m in &messages {
        let seen = format!("{} {:?}", String::from_utf8_lossy(&m.data), m.properties);
        assert_no_secret("a work message", &seen, &[&secret]);
    }
    let consume = ["--job", job.job_arg(), "--exit-when-idle", "3"];
    run_traced(&job, Bin::Consumer, &consume)
        .await
        .expect_code(0);
    job.assert_target_equals_source().await;
    run_traced(
        &job,
        Bin::Compensator,
        &["run", "--job", job.job_arg(), "--min-age", "0s"],
    )
    .await
    .expect_code(0);
    run_traced(&job, Bin::Compensator, &["report", "--job", job.job_arg()])
        .await
        .expect_code(0);
    job.assert_job_complete(rows, 0).await;

    // The same programs with one wrong password each: each fails, and says which connection.
    let wrong_db = job.write_file(
        "wrong-db.toml",
        &job.job_toml().replace(
            &job.database_url,
            &with_credentials(&job.database_url, &user, &wrong),
        ),
    );
    let wrong_db = path_str(&wrong_db).to_owned();
    let mut failures: Vec<(&str, Finished)> = Vec::new();
    let producer = run_traced(&job, Bin::Producer, &["--job", &wrong_db]).await;
    failures.push(("MariaDB", producer));
    let consumer = ["--job", &wrong_db, "--exit-when-idle", "1"];
    failures.push(("MariaDB", run_traced(&job, Bin::Consumer, &consumer).await));
    job.services.amqp_url = with_credentials(&amqp_url, &user, &wrong);
    let consumer = ["--job", job.job_arg(), "--exit-when-idle", "1"];
    failures.push(("RabbitMQ", run_traced(&job, Bin::Consumer, &consumer).await));
    job.services.amqp_url = amqp_url.clone();
    job.services.redis_url = with_credentials(&redis_url, &user, &wrong);
    let report = ["report", "--job", job.job_arg()];
    failures.push(("Redis", run_traced(&job, Bin::Compensator, &report).await));
    let producer = run_traced(&job, Bin::Producer, &["--job", job.job_arg()]).await;
    failures.push(("Redis", producer));
    job.services.redis_url = redis_url.clone();
    for (service, done) in &failures {
        assert_eq!(
            done.code(),
            Some(1),
            "with a wrong {service} password the program must fail at run time\n{}",
            done.describe()
        );
        let text = done.stderr.to_lowercase();
        let says = match *service {
            "MariaDB" => text.contains("access denied"),
            "RabbitMQ" => text.contains("rabbitmq") || text.contains("amqp"),
            _ => text.contains("redis"),
        };
        assert!(
            says,
            "the error must name the {service} connection\n{}",
            done.describe()
        );
    }

    // Every program's stdout and stderr.
    let mut logs = 0;
    for entry in std::fs::read_dir(&job.dir).expect("read the test's dir") {
        let path = entry.expect("a dir entry").path();
        if path
            .extension()
            .is_some_and(|e| e == "stdout" || e == "stderr")
        {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert_no_secret(&path.display().to_string(), &text, &[&secret, &wrong]);
            logs += 1;
        }
    }
    assert!(logs >= 16, "only {logs} program outputs were captured");

    // Every key and value of the job in Redis, the spec first.
    let spec = redis_values(&job, &job.job_key("spec")).await;
    assert!(
        spec.contains("127.0.0.1"),
        "the spec does not show the database's host: {spec}"
    );
    assert_no_secret("bitmig:{JOB}:spec", &spec, &[&secret, &wrong]);
    for key in job.redis_keys().await {
        let values = redis_values(&job, &key).await;
        assert_no_secret(&key, &format!("{key} {values}"), &[&secret, &wrong]);
    }

    // What is left in the queues (the dead queue, should anything be there).
    for queue in [job.work_queue(), job.dead_queue()] {
        for m in job.peek_all(&queue).await {
            let seen = format!("{} {:?}", String::from_utf8_lossy(&m.data), m.properties);
            assert_no_secret(&queue, &seen, &[&secret, &wrong]);
        }
    }
    drop(users);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_urls_are_accepted_and_fail_only_when_connecting() {
    let mut job = TestJob::new(1_000, 100).await;
    job.create_tables().await;
    job.insert_rows(&gappy_ids(500, job.group_size)).await;

    // ssl-mode=REQUIRED, as MySQL's clients write it. This MariaDB has no TLS: connecting fails, as a TLS or
    // connection error (a server with TLS would simply run the job).
    let tls_url = format!("{}?ssl-mode=REQUIRED", job.database_url);
    let tls_job = job.write_file(
        "tls.toml",
        &job.job_toml().replace(&job.database_url, &tls_url),
    );
    let report = job
        .run(Bin::Compensator, &["report", "--job", path_str(&tls_job)])
        .await;
    assert_eq!(
        report.code(),
        Some(3),
        "report must accept the job file\n{}",
        report.describe()
    );
    let produced = job.run(Bin::Producer, &["--job", path_str(&tls_job)]).await;
    let text = produced.stderr.to_lowercase();
    assert!(
        produced.code() == Some(0)
            || (produced.code() == Some(1)
                && (text.contains("tls") || text.contains("ssl"))
                && !text.contains("parameter")),
        "ssl-mode=REQUIRED must be understood: the producer connects, or fails with a TLS error (exit 1)\n{}",
        produced.describe()
    );

    // amqps:// and rediss:// to the plain ports: accepted, then a failed TLS connection.
    let plain_amqp = job.services.amqp_url.clone();
    let plain_redis = job.services.redis_url.clone();
    let amqps = plain_amqp.replacen("amqp://", "amqps://", 1);
    let rediss = plain_redis.replacen("redis://", "rediss://", 1);
    assert!(amqps.starts_with("amqps://") && rediss.starts_with("rediss://"));

    // Started side by side: a TLS client facing plain Redis waits for the connection timeout.
    job.services.amqp_url = amqps;
    let consumer = job.spawn_consumer(&["--exit-when-idle", "1"]);
    let producer = job.spawn(Bin::Producer, &["--job", job.job_arg()]);
    job.services.amqp_url = plain_amqp;
    job.services.redis_url = rediss;
    let report = job.spawn(Bin::Compensator, &["report", "--job", job.job_arg()]);
    let producer_redis = job.spawn(Bin::Producer, &["--job", job.job_arg()]);
    job.services.redis_url = plain_redis;
    let consumer = consumer.wait(COMMAND_DEADLINE).await;
    let producer = producer.wait(COMMAND_DEADLINE).await;
    let report = report.wait(COMMAND_DEADLINE).await;
    let producer_redis = producer_redis.wait(COMMAND_DEADLINE).await;

    for (service, done) in [
        ("RabbitMQ", &consumer),
        ("RabbitMQ", &producer),
        ("Redis", &report),
        ("Redis", &producer_redis),
    ] {
        let text = done.stderr.to_lowercase();
        assert!(
            done.code() == Some(1) && text.contains(&service.to_lowercase()),
            "a TLS URL for {service} must be accepted and fail when connecting, naming {service} (exit 1)\n{}",
            done.describe()
        );
    }
}

/// Runs `bin` to its end with every log line on (`RUST_LOG=trace`, JSON): the most a program would ever
/// print.
async fn run_traced(job: &TestJob, bin: Bin, args: &[&str]) -> Finished {
    let env = [("RUST_LOG", "trace"), ("BITMIG_LOG_FORMAT", "json")];
    job.spawn_with_env(bin, args, &env)
        .wait(COMMAND_DEADLINE)
        .await
}

/// The MariaDB, RabbitMQ and Redis users of a test, with one password. Dropping the guard deletes them.
struct Users {
    name: String,
    redis_url: String,
    _mysql: MysqlUser,
}

impl Users {
    async fn create(job: &TestJob, name: &str, password: &str) -> Self {
        let users = Self {
            name: name.to_owned(),
            redis_url: job.services.redis_url.clone(),
            _mysql: MysqlUser::create(job, name, password, "").await,
        };
        rabbitmqctl(&["add_user", name, password]);
        rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        let mut redis = job.redis.clone();
        redis::cmd("ACL")
            .arg(
                &[
                    "SETUSER",
                    name,
                    "on",
                    &format!(">{password}"),
                    "~*",
                    "&*",
                    "+@all",
                ][..],
            )
            .query_async::<()>(&mut redis)
            .await
            .expect("ACL SETUSER");
        users
    }
}

/// Deletes the Redis and RabbitMQ users; the MariaDB user goes with its own guard.
impl Drop for Users {
    fn drop(&mut self) {
        let (name, redis_url) = (self.name.clone(), self.redis_url.clone());
        clean_up(format!("Redis user {name}"), async move {
            let deleted = async {
                let mut redis = redis::Client::open(redis_url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("ACL")
                    .arg(&["DELUSER", name.as_str()][..])
                    .query_async::<()>(&mut redis)
                    .await
            };
            if let Err(e) = deleted.await {
                eprintln!("cleanup: Redis user {name}: {e}");
            }
        });
        let out = StdCommand::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("cleanup: RabbitMQ user {} not deleted", self.name);
        }
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = StdCommand::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run rabbitmqctl (the broker must be local): {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {}: {}\n{}",
        args[0],
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn random_word(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn assert_no_secret(where_: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        if let Some(at) = text.find(secret) {
            let from = text[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            panic!(
                "a password appears in {where_}: …{}…",
                &text[from..(at + secret.len()).min(text.len())]
            );
        }
    }
}

/// Everything a key holds, as text: a string's value, a hash's fields and values, a sorted set's members and
/// scores, a set's or a list's members.
async fn redis_values(job: &TestJob, key: &str) -> String {
    let mut redis = job.redis.clone();
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(&mut redis)
        .await
        .expect("TYPE");
    let mut cmd = match kind.as_str() {
        "string" => redis::cmd("GET"),
        "hash" => redis::cmd("HGETALL"),
        "zset" => {
            let mut c = redis::cmd("ZRANGE");
            c.arg(key).arg(0).arg(-1).arg("WITHSCORES");
            c
        }
        "set" => redis::cmd("SMEMBERS"),
        "list" => {
            let mut c = redis::cmd("LRANGE");
            c.arg(key).arg(0).arg(-1);
            c
        }
        "none" => return String::new(),
        other => panic!("{key} has the unexpected type {other}"),
    };
    if matches!(kind.as_str(), "string" | "hash" | "set") {
        cmd.arg(key);
    }
    let values: Vec<Vec<u8>> = match kind.as_str() {
        "string" => vec![cmd.query_async::<Vec<u8>>(&mut redis).await.expect("GET")],
        _ => cmd.query_async(&mut redis).await.expect("read a key"),
    };
    values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
