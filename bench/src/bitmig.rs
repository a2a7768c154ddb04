//! bitmig's programs as the benchmark runs them: job files, a job's ledger and queues cleared, a copy timed
//! from the producer's start until `report` says complete, and compensator commands timed with their RSS.
//!
//! Contract: [`Bench::copy`] starts the consumers, waits until each is subscribed, then starts the producer
//! and polls `bitmig-compensator report` every 100 ms; the time stops at the first report that exits 0
//! (the consumers' idle wait afterwards is not counted). It fails (no figure) when the producer fails, when
//! every consumer has exited before the report said complete, or after the timeout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::sys::{self, round3, Measured, PhaseCpu, Usage};
use crate::Bench;

pub const GROUP_SIZE: u64 = 10_000;
pub const BATCH_SIZE: u64 = 1_000;
pub const CONSUMERS: usize = 2;
/// Seconds of an empty queue after which a benchmark consumer exits.
const IDLE_SECS: u64 = 2;

/// A job file the benchmark wrote.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub file: PathBuf,
}

/// What a job copies: the source and target URLs and tables, and extra TOML (a `[follow]` section).
pub struct JobSpec<'a> {
    pub source_url: &'a str,
    pub source_table: &'a str,
    pub target_url: &'a str,
    pub target_table: &'a str,
    pub extra: &'a str,
}

/// A bitmig copy: seconds until complete, the CPU the phase cost, each program's peak RSS and CPU.
#[derive(Debug, Clone, Serialize)]
pub struct CopyRun {
    pub seconds: f64,
    pub rows_per_s: f64,
    pub report_polls: u64,
    pub report_polls_cpu_s: f64,
    pub producer: Usage,
    pub consumers: Vec<Usage>,
    #[serde(flatten)]
    pub cpu: PhaseCpu,
}

impl CopyRun {
    pub fn programs_cpu_s(&self) -> f64 {
        self.producer.cpu_s
            + self.consumers.iter().map(|c| c.cpu_s).sum::<f64>()
            + self.report_polls_cpu_s
    }

    pub fn max_consumer_rss_mb(&self) -> f64 {
        self.consumers
            .iter()
            .map(|c| c.peak_rss_mb)
            .fold(0.0, f64::max)
    }
}

/// A compensator command's time, exit code, usage and output.
#[derive(Debug, Clone, Serialize)]
pub struct Timed {
    pub seconds: f64,
    pub exit: i32,
    #[serde(flatten)]
    pub usage: Usage,
    #[serde(skip)]
    pub stdout: String,
}

impl Timed {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(self.stdout.trim()).with_context(|| {
            format!(
                "not one JSON object: {}",
                self.stdout.chars().take(300).collect::<String>()
            )
        })
    }
}

impl Bench {
    pub fn program(&self, name: &str) -> PathBuf {
        self.opts.bin.join(name)
    }

    /// Writes `NAME.toml` in the benchmark's temporary directory (URLs without passwords: the local services).
    pub fn job(&self, name: &str, spec: &JobSpec<'_>) -> Result<Job> {
        let file = self.tmp.join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\ngroup_size = {GROUP_SIZE}\nbatch_size = {BATCH_SIZE}\n\n\
             [source]\nurl = \"{}\"\ntable = \"{}\"\nkey = \"id\"\n\n\
             [target]\nkind = \"sql\"\nurl = \"{}\"\ntable = \"{}\"\nwrite = \"upsert\"\n{}",
            spec.source_url, spec.source_table, spec.target_url, spec.target_table, spec.extra
        );
        std::fs::write(&file, text)?;
        Ok(Job {
            name: name.into(),
            file,
        })
    }

    /// Removes job `name`'s ledger (every key of its hash tags) and its queues.
    pub async fn clear_job(&self, name: &str) -> Result<()> {
        let mut r = self.redis().await?;
        let mut removed = 0usize;
        for pattern in [format!("bitmig:{{{name}}}*"), format!("bitmig:{{{name}:*")] {
            let keys: Vec<String> = {
                let mut it: redis::AsyncIter<String> =
                    redis::AsyncCommands::scan_match(&mut r, &pattern).await?;
                let mut v = Vec::new();
                while let Some(k) = it.next_item().await {
                    v.push(k?);
                }
                v
            };
            for chunk in keys.chunks(500) {
                let _: () = redis::cmd("UNLINK").arg(chunk).query_async(&mut r).await?;
                removed += chunk.len();
            }
        }
        let out = tokio::process::Command::new("rabbitmqctl")
            .args(["-q", "list_queues", "--no-table-headers", "name"])
            .output()
            .await
            .context("rabbitmqctl list_queues")?;
        let prefix = format!("bitmig.{name}.");
        let mut queues = 0;
        for q in String::from_utf8_lossy(&out.stdout).lines() {
            let q = q.trim();
            if q.starts_with(&prefix) {
                let st = tokio::process::Command::new("rabbitmqctl")
                    .args(["-q", "delete_queue", q])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .await?;
                if !st.success() {
                    bail!("rabbitmqctl delete_queue {q} failed");
                }
                queues += 1;
            }
        }
        println!("cleared job '{name}': {removed} Redis keys, {queues} queues");
        Ok(())
    }

    /// Starts `n` consumers of `job` and waits until each says it is consuming.
    pub async fn start_consumers(
        &self,
        job: &Job,
        n: usize,
        exit_when_idle: bool,
    ) -> Result<Vec<Measured>> {
        let mut consumers = Vec::new();
        for i in 1..=n {
            let mut args = vec!["--job".to_string(), job.file.display().to_string()];
            if exit_when_idle {
                args.extend(["--exit-when-idle".into(), IDLE_SECS.to_string()]);
            }
            consumers.push(Measured::spawn(
                &format!("{}.consumer{i}", job.name),
                &self.logs,
                &self.tmp,
                self.opts.timeout,
                self.program("bitmig-consumer"),
                &args,
            )?);
        }
        for c in consumers.iter_mut() {
            let log = c.log.clone();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("consuming")
            {
                if !c.running() {
                    bail!(
                        "{} exited before consuming:\n{}",
                        c.name,
                        sys::tail(&log, 20)
                    );
                }
                if Instant::now() > deadline {
                    bail!("{} did not subscribe within 60 s", c.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(consumers)
    }

    /// One `bitmig-compensator report --job F --json`: its exit code, its JSON and its CPU seconds.
    pub async fn report(&self, job: &Job) -> Result<(i32, serde_json::Value, f64)> {
        let t = self
            .compensator("report.poll", &["report", "--json"], job)
            .await?;
        if t.exit != 0 && t.exit != 3 {
            bail!(
                "report exited with {}: {}",
                t.exit,
                sys::tail(&self.logs.join("report.poll.log"), 10)
            );
        }
        Ok((t.exit, t.json()?, t.usage.cpu_s))
    }

    /// The copy of `job` by a producer and [`CONSUMERS`] consumers, timed (see the module's contract).
    pub async fn copy(&self, phase: &str, job: &Job, rows: u64) -> Result<CopyRun> {
        self.clear_job(&job.name).await?;
        let consumers = self.start_consumers(job, CONSUMERS, true).await?;
        let mut cpu = PhaseCpu::begin(phase);
        let t0 = Instant::now();
        let mut producer = Some(Measured::spawn(
            &format!("{}.producer", job.name),
            &self.logs,
            &self.tmp,
            self.opts.timeout,
            self.program("bitmig-producer"),
            &["--job".into(), job.file.display().to_string()],
        )?);
        let mut producer_usage = None;
        let mut consumers = consumers;
        let (mut polls, mut polls_cpu) = (0u64, 0.0);
        loop {
            let (code, _, cpu_s) = self.report(job).await?;
            polls += 1;
            polls_cpu += cpu_s;
            if code == 0 {
                break;
            }
            if let Some(p) = producer.as_mut() {
                if !p.running() {
                    producer_usage = Some(producer.take().context("producer")?.wait_ok().await?);
                }
            }
            if !consumers.iter_mut().any(|c| c.running()) {
                bail!(
                    "every consumer exited (idle {IDLE_SECS}s, or failed: see {}) before the report said complete",
                    self.logs.display()
                );
            }
            if t0.elapsed().as_secs() >= self.opts.timeout {
                bail!("{phase}: not complete after {} s", self.opts.timeout);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seconds = round3(t0.elapsed().as_secs_f64());
        cpu.end();
        if let Some(p) = producer.take() {
            producer_usage = Some(p.wait_ok().await?);
        }
        let mut usages = Vec::new();
        for c in consumers {
            let name = c.name.clone();
            let (code, u) = c.wait().await?;
            if code != 0 {
                eprintln!("bench: {name} exited with {code} (see its log)");
            }
            usages.push(u);
        }
        println!("complete after {seconds:.3} s ({polls} report polls)");
        Ok(CopyRun {
            seconds,
            rows_per_s: rows as f64 / seconds,
            report_polls: polls,
            report_polls_cpu_s: sys::round2(polls_cpu),
            producer: producer_usage.context("no producer figures")?,
            consumers: usages,
            cpu,
        })
    }

    /// `bitmig-compensator ARGS… --job F`, timed, with its usage and stdout (log: `LOGS/NAME.log`).
    pub async fn compensator(&self, name: &str, args: &[&str], job: &Job) -> Result<Timed> {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--job".into(), job.file.display().to_string()]);
        // stdout and stderr go to the log; the JSON is its last line.
        let (exit, seconds, usage) = sys::run_timed(
            name,
            &self.logs,
            &self.tmp,
            self.opts.timeout,
            self.program("bitmig-compensator"),
            &a,
        )
        .await?;
        let log =
            std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
        let stdout = log
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("")
            .to_string();
        Ok(Timed {
            seconds,
            exit,
            usage,
            stdout,
        })
    }
}
