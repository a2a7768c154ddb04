//! `/readyz` follows Redis (DESIGN.md §11): a consumer and a `compensator run --every`, both with
//! `--metrics-addr`, keep their ledger in a private `redis-server` this test starts on a free port (never
//! the shared one); the test kills it for real (SIGKILL), both endpoints turn unready (503, naming redis)
//! while `/healthz` stays 200, and once a new `redis-server` answers on the same port both are ready again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::metrics::{free_addr, http_get};
use crate::helpers::{wait_for, Bin, TestJob};

/// A `redis-server` of this test's own, without persistence; killed (SIGKILL) when dropped.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(port: u16, dir: &Path) -> Self {
        let mut r = Self {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        r.restart().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts `redis-server` on the port and waits until it answers PING.
    async fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join(format!("redis-{}.log", self.port)))
            .expect("create the redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            "the private redis-server to answer",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                    let mut con = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| e.to_string())?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut con)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL redis-server");
            child.wait().expect("reap redis-server");
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Polls `/readyz` on every address until each answers `want` (and, when unready, names redis).
async fn wait_readyz(addrs: &[String], want: u16, timeout: Duration) {
    for addr in addrs {
        let body = wait_for(
            &format!("/readyz on {addr} to answer {want}"),
            timeout,
            Duration::from_millis(200),
            || async {
                match http_get(addr, "/readyz").await? {
                    (s, body) if s == want => Ok(body),
                    (s, body) => Err(format!("{s}: {body}")),
                }
            },
        )
        .await;
        if want != 200 {
            assert!(body.contains("fail redis"), "{addr}: {body}");
        }
        let health = http_get(addr, "/healthz").await;
        assert_eq!(health, Ok((200, "ok\n".to_owned())), "/healthz on {addr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_unready_when_redis_is_killed_and_ready_again_once_it_is_back() {
    let mut job = TestJob::new(1_000, 100).await;
    job.create_tables().await;
    let mut redis = PrivateRedis::start(free_port(), &job.dir).await;
    // The programs' Redis is the private one (the consumer gets it as --redis-url from the helpers).
    job.services.redis_url = redis.url();
    let addrs = [free_addr(), free_addr()];
    let consumer = job.spawn_consumer(&["--metrics-addr", &addrs[0]]);
    let every = job.spawn(
        Bin::Compensator,
        &[
            "run",
            "--job",
            job.job_arg(),
            "--every",
            "1s",
            "--min-age",
            "0s",
            "--redis-url",
            &redis.url(),
            "--metrics-addr",
            &addrs[1],
        ],
    );
    wait_readyz(&addrs, 200, Duration::from_secs(60)).await;

    redis.kill();
    wait_readyz(&addrs, 503, Duration::from_secs(30)).await;

    redis.restart().await;
    wait_readyz(&addrs, 200, Duration::from_secs(60)).await;

    consumer
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
    every
        .terminate(Duration::from_secs(60))
        .await
        .expect_code(0);
}
