//! Stopping and starting this machine's services under a running job, the way an operator (or a crash) does,
//! and putting everything back afterwards.
//!
//! The commands are those of `scripts/services` (Debian packages, no systemd, run as root); the services must
//! be the local ones on their usual loopback ports.

use std::{
    path::PathBuf,
    process::{Command as StdCommand, Output},
    time::Duration,
};

use tokio::process::Command;

use crate::helpers::{wait_for, Bits, TestJob};

/// How long stopping a service may take.
const STOP_DEADLINE: Duration = Duration::from_secs(120);

/// `scripts/services` of this repository: starts whatever is down and waits until it answers.
fn services_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services")
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Create one before stopping a service: dropping it (at the end of the test, also when it panics) runs
/// `scripts/services`, so the next test finds every service running. Declare it after the [`TestJob`], so it
/// is dropped first and the job's cleanup finds the services up.
pub struct RestoreServices(());

impl RestoreServices {
    pub fn new() -> Self {
        Self(())
    }
}

impl Drop for RestoreServices {
    fn drop(&mut self) {
        match StdCommand::new(services_script()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("{}", describe("scripts/services", &out)),
            Err(e) => eprintln!("cannot run {}: {e}", services_script().display()),
        }
    }
}

/// Runs `scripts/services` now and panics unless every service answers.
pub async fn start_services() {
    let out = Command::new(services_script())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", services_script().display()));
    assert!(
        out.status.success(),
        "{}",
        describe("scripts/services", &out)
    );
}

/// Runs an administration command and returns its output, whatever its exit status.
async fn admin(program: &str, args: &[&str]) -> Output {
    let run = Command::new(program).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(STOP_DEADLINE, run).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("run {program}: {e}")),
        Err(_) => panic!("{program} {args:?} still running after {STOP_DEADLINE:?}"),
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
async fn port_open(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}

async fn wait_until_closed(service: &str, port: u16) {
    wait_for(
        &format!("{service} to stop listening on port {port}"),
        STOP_DEADLINE,
        Duration::from_millis(200),
        || async {
            if port_open(port).await {
                Err("still listening".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await
}

/// `rabbitmqctl stop_app`: the broker closes every connection and stops listening; its Erlang node keeps
/// running, so `scripts/services` brings it back with `start_app`. Durable queues keep their messages.
pub async fn stop_rabbitmq() {
    let out = admin("rabbitmqctl", &["stop_app"]).await;
    assert!(
        out.status.success(),
        "{}",
        describe("rabbitmqctl stop_app", &out)
    );
    wait_until_closed("RabbitMQ", 5672).await;
}

/// `redis-cli shutdown nosave`: Redis exits without writing anything, and runs here without persistence, so
/// when it starts again every key is gone.
pub async fn stop_redis() {
    // redis-cli reports the lost connection of a successful SHUTDOWN as an error: its status says nothing.
    let out = admin(
        "redis-cli",
        &["-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
    )
    .await;
    if port_open(6379).await {
        eprintln!("{}", describe("redis-cli shutdown nosave", &out));
    }
    wait_until_closed("Redis", 6379).await;
}

/// `mysqladmin shutdown`: MariaDB (source and target of the tests' jobs) goes away.
pub async fn stop_mariadb() {
    let out = admin(
        "mysqladmin",
        &["-uroot", "-h127.0.0.1", "-P3306", "shutdown"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        describe("mysqladmin shutdown", &out)
    );
    wait_until_closed("MariaDB", 3306).await;
}

/// New connections for the test's own queries after a restart broke the old ones.
pub async fn reconnect(job: &mut TestJob) {
    job.redis = redis::Client::open(job.services.redis_url.as_str())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("reconnect to Redis");
    job.amqp = lapin::Connection::connect(&job.services.amqp_url, Default::default())
        .await
        .expect("reconnect to RabbitMQ");
    job.mysql = mysql_async::Pool::from_url(job.database_url.as_str()).expect("a MariaDB URL");
}

/// `tgt` bits set over every planned group: how many rows have landed so far.
pub async fn landed(job: &TestJob) -> u64 {
    let groups = job.groups().await;
    if groups.is_empty() {
        return 0;
    }
    job.bitcount_sum(&groups, Bits::Tgt).await
}
