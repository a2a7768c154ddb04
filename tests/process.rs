//! The three programs as subprocesses: command lines of DESIGN.md §3, exit codes, output, JSON.

use std::{
    fmt::Write as _,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{path_str, wait_for, TestJob, COMMAND_DEADLINE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin {
    Producer,
    Consumer,
    Compensator,
    Rollover,
}

impl Bin {
    pub fn file_name(self) -> &'static str {
        match self {
            Bin::Producer => "bitmig-producer",
            Bin::Consumer => "bitmig-consumer",
            Bin::Compensator => "bitmig-compensator",
            Bin::Rollover => "bitmig-rollover",
        }
    }
}

/// The cargo profile dir holding the binaries: `BITMIG_BIN_DIR`, or two levels above this test executable
/// (`…/target/debug/deps/e2e-…` → `…/target/debug`).
pub fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("BITMIG_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            let deps = exe.parent().expect("the test executable is in a deps dir");
            deps.parent()
                .expect("deps is inside a profile dir")
                .to_path_buf()
        }
    };
    for bin in [Bin::Producer, Bin::Consumer, Bin::Compensator] {
        let path = dir.join(bin.file_name());
        assert!(
            path.is_file(),
            "{} not found: run `cargo build --workspace --bins` first (or set BITMIG_BIN_DIR)",
            path.display()
        );
    }
    dir
}

/// A running program. Dropping it kills the process.
pub struct Proc {
    pub child: Child,
    pub cmdline: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

/// A program that has exited, with everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl TestJob {
    /// Starts `bin` with `args`. The service URLs go in the environment (`BITMIG_AMQP_URL`,
    /// `BITMIG_REDIS_URL`) and, for the producer and the consumer, also as `--amqp-url`/`--redis-url`;
    /// stdout and stderr go to files in the test's temp dir.
    pub fn spawn(&self, bin: Bin, args: &[&str]) -> Proc {
        self.spawn_with_env(bin, args, &[])
    }

    /// [`Self::spawn`] with extra environment variables (`RUST_LOG`, `BITMIG_LOG_FORMAT`, …).
    pub fn spawn_with_env(&self, bin: Bin, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let stdout = self.dir.join(format!("{n:02}-{}.stdout", bin.file_name()));
        let stderr = self.dir.join(format!("{n:02}-{}.stderr", bin.file_name()));
        let mut all_args: Vec<&str> = args.to_vec();
        if matches!(bin, Bin::Producer | Bin::Consumer) {
            all_args.extend(["--amqp-url", &self.services.amqp_url]);
            all_args.extend(["--redis-url", &self.services.redis_url]);
        }
        let program = self.bin_dir.join(bin.file_name());
        let cmdline = format!("{} {}", bin.file_name(), all_args.join(" "));
        let create = |path: &Path| {
            std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        let child = Command::new(&program)
            .args(&all_args)
            .env("BITMIG_AMQP_URL", &self.services.amqp_url)
            .env("BITMIG_REDIS_URL", &self.services.redis_url)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Proc {
            child,
            cmdline,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// Runs `bin` to its end (at most [`COMMAND_DEADLINE`]), whatever its exit code.
    pub async fn run(&self, bin: Bin, args: &[&str]) -> Finished {
        self.spawn(bin, args).wait(COMMAND_DEADLINE).await
    }

    /// `bitmig-producer --job F [extra…]`, which must exit 0.
    pub async fn produce(&self, extra: &[&str]) -> Finished {
        let mut args = vec!["--job", self.job_arg()];
        args.extend(extra);
        let done = self.run(Bin::Producer, &args).await;
        done.expect_code(0);
        done
    }

    /// Starts a consumer of the default job file with `extra` arguments.
    pub fn spawn_consumer(&self, extra: &[&str]) -> Proc {
        let mut args = vec!["--job", self.job_arg()];
        args.extend(extra);
        self.spawn(Bin::Consumer, &args)
    }

    /// Runs one consumer of the default job file with the SQL sink's debug lines until the queue is idle;
    /// it must exit 0. Returns its stderr, for tests that count which write path each batch took.
    pub async fn consume_with_sink_debug(&self) -> String {
        let consumer = self.spawn_with_env(
            Bin::Consumer,
            &["--job", self.job_arg(), "--exit-when-idle", "3"],
            &[("RUST_LOG", "info,bitmig_shared::sink=debug")],
        );
        let done = consumer.wait(COMMAND_DEADLINE).await;
        done.expect_code(0);
        done.stderr
    }

    /// Runs `count` consumers side by side with `--exit-when-idle 3` and waits until each has exited 0.
    pub async fn consume_until_idle(&self, count: usize, extra: &[&str]) {
        let mut args = vec!["--exit-when-idle", "3"];
        args.extend(extra);
        let consumers: Vec<Proc> = (0..count).map(|_| self.spawn_consumer(&args)).collect();
        for consumer in consumers {
            consumer.wait(COMMAND_DEADLINE).await.expect_code(0);
        }
    }

    /// `bitmig-compensator run --job F [--min-age AGE] --json`, which must exit 0; returns its JSON.
    pub async fn compensate(&self, min_age: Option<&str>) -> Value {
        let mut args = vec!["run", "--job", self.job_arg()];
        if let Some(age) = min_age {
            args.extend(["--min-age", age]);
        }
        args.push("--json");
        let done = self.run(Bin::Compensator, &args).await;
        done.expect_code(0);
        done.json()
    }

    /// `bitmig-compensator report --job F --json`: the exit code (0 complete, 3 not) and the JSON.
    pub async fn report(&self) -> (i32, Value) {
        let done = self
            .run(
                Bin::Compensator,
                &["report", "--job", self.job_arg(), "--json"],
            )
            .await;
        let code = done.code();
        assert!(
            code == Some(0) || code == Some(3),
            "report must exit 0 (complete) or 3 (incomplete)\n{}",
            done.describe()
        );
        let json = done.json();
        assert_eq!(
            json["complete"].as_bool(),
            Some(code == Some(0)),
            "report's `complete` disagrees with its exit code\n{}",
            done.describe()
        );
        (code.unwrap_or_default(), json)
    }
}

impl Proc {
    pub fn id(&self) -> u32 {
        self.child.id().expect("the process has not been reaped")
    }

    /// Whether the process is still running (it is not reaped by asking).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the process exits; after `deadline` it is killed and the test panics with its output.
    pub async fn wait(mut self, deadline: Duration) -> Finished {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => {
                let status = status.unwrap_or_else(|e| panic!("wait for {}: {e}", self.cmdline));
                self.finished(status)
            }
            Err(_) => {
                self.child.start_kill().ok();
                let status = self.child.wait().await.expect("reap a killed child");
                panic!(
                    "still running after {deadline:?}, killed\n{}",
                    self.finished(status).describe()
                )
            }
        }
    }

    /// SIGKILL, then reap: a crash as the operating system does it.
    pub async fn kill(mut self) -> Finished {
        self.child.start_kill().expect("send SIGKILL");
        let status = self.child.wait().await.expect("reap a killed child");
        self.finished(status)
    }

    /// SIGTERM (with `kill -TERM`, as an operator or Kubernetes would), then wait up to `deadline`.
    pub async fn terminate(self, deadline: Duration) -> Finished {
        let pid = self.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        self.wait(deadline).await
    }

    /// The file the process's stdout goes to: read it while the process runs to see what it has said.
    pub fn stdout_path(&self) -> PathBuf {
        self.stdout.clone()
    }

    /// What the process has printed so far, for messages about a process that is still running.
    pub fn output_so_far(&self) -> String {
        format!(
            "{} (running for {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.started.elapsed(),
            tail(&read_lossy(&self.stdout)),
            tail(&read_lossy(&self.stderr)),
        )
    }

    fn finished(&self, status: ExitStatus) -> Finished {
        Finished {
            cmdline: self.cmdline.clone(),
            status,
            stdout: read_lossy(&self.stdout),
            stderr: read_lossy(&self.stderr),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit code {code}\n{}",
            self.describe()
        );
        self
    }

    /// The one JSON object the program printed on stdout.
    pub fn json(&self) -> Value {
        let whole = serde_json::from_str::<Value>(self.stdout.trim()).ok();
        let value = whole.or_else(|| {
            self.stdout
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
                .find(Value::is_object)
        });
        match value {
            Some(value) if value.is_object() => value,
            _ => panic!("expected one JSON object on stdout\n{}", self.describe()),
        }
    }

    /// The number N in the first line (stdout, then stderr) containing `republished N ids`.
    pub fn republished_from_text(&self) -> u64 {
        let found = self
            .stdout
            .lines()
            .chain(self.stderr.lines())
            .find_map(|line| {
                let (_, rest) = line.split_once("republished ")?;
                let mut words = rest.split_whitespace();
                let n = words.next()?.parse::<u64>().ok()?;
                words.next()?.starts_with("id").then_some(n)
            });
        found.unwrap_or_else(|| panic!("no line says `republished N ids`\n{}", self.describe()))
    }

    /// A consumer's count of rows it wrote: N of `rows_written=N` in its last `consumer stopped …` log line.
    pub fn rows_written(&self) -> u64 {
        self.stderr
            .lines()
            .rev()
            .find(|line| line.contains("consumer stopped"))
            .and_then(|line| {
                let (_, rest) = line.split_once("rows_written=")?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no `consumer stopped … rows_written=N` line in the consumer's log\n{}",
                    self.describe()
                )
            })
    }

    /// Command, exit status, time, and the end of both outputs: what a failing assert shows.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "$ {}\nexit: {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            self.elapsed,
            tail(&self.stdout),
            tail(&self.stderr)
        );
        out
    }
}

/// [`wait_for`] while `proc` must keep running: the test panics, with the process's output, if it exits
/// before `probe` says the wait is over.
pub async fn wait_while_running<T, F, Fut>(
    proc: &mut Proc,
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    wait_for(what, timeout, interval, || {
        let exited = proc.child.try_wait().ok().flatten();
        let seen = probe();
        let report = exited.map(|status| (status, proc.output_so_far()));
        async move {
            if let Some((status, output)) = report {
                panic!("process exited ({status}) while waiting for {what}\n{output}");
            }
            seen.await
        }
    })
    .await
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path_str(path)))
}

/// The last 6000 bytes of `text` (cut on a char boundary).
fn tail(text: &str) -> &str {
    const KEEP: usize = 6000;
    if text.len() <= KEEP {
        return text;
    }
    let mut start = text.len() - KEEP;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
