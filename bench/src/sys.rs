//! What the machine did during a phase, and the programs the benchmark runs.
//!
//! Contract: [`PhaseCpu::begin`] prints and keeps the load average (other work on the shared machine skews a
//! figure, so every phase shows it), [`PhaseCpu::end`] turns /proc's tick counters into CPU seconds per service
//! daemon and for the whole machine. [`Measured`] runs a program under GNU time (peak RSS, CPU seconds) and
//! `timeout`, in its own process group, logging to a file; dropping it unwaited sends the group SIGTERM, so
//! a failed benchmark leaves no program behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The service daemons whose CPU a phase records, by the names the figures use.
const DAEMONS: [(&str, &[&str]); 4] = [
    ("mariadb", &["mariadbd", "mysqld"]),
    ("postgres", &["postgres"]),
    ("rabbitmq", &["beam.smp"]),
    ("redis", &["redis-server"]),
];

fn clk_tck() -> f64 {
    // Linux has reported 100 since 2.6 on every architecture the project builds for.
    100.0
}

/// The three load averages, as /proc/loadavg says them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "?".into())
}

/// User + system ticks used so far by every process whose `comm` is one of `names`, and by its reaped children.
fn ticks_of(names: &[&str]) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is inside the first parentheses, which may hold spaces: split at the last `)`.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !names.contains(&&stat[open + 1..close]) {
            continue;
        }
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: state is field 3, utime 14, stime 15, then cutime 16 and cstime 17: the CPU of
        // children already reaped, so PostgreSQL backends that ended during the phase still count (through
        // the postmaster).
        if f.len() > 14 {
            total += f[11..=14]
                .iter()
                .map(|v| v.parse::<u64>().unwrap_or(0))
                .sum::<u64>();
        }
    }
    total
}

/// Busy ticks of the whole machine so far (all but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 8 {
        return 0;
    }
    f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
}

pub fn nproc() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// The CPU a timed phase cost the services and the machine; `load_before` shows what else was running.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCpu {
    pub load_before: String,
    /// CPU seconds per daemon (`mariadb`, `postgres`, `rabbitmq`, `redis`) and `machine` (every process).
    pub cpu_s: BTreeMap<String, f64>,
    #[serde(skip)]
    start: BTreeMap<String, u64>,
}

impl PhaseCpu {
    pub fn begin(name: &str) -> PhaseCpu {
        let load_before = load_average();
        println!("load before {name}: {load_before}");
        let mut start: BTreeMap<String, u64> = DAEMONS
            .iter()
            .map(|(k, names)| (k.to_string(), ticks_of(names)))
            .collect();
        start.insert("machine".into(), machine_busy_ticks());
        PhaseCpu {
            load_before,
            cpu_s: BTreeMap::new(),
            start,
        }
    }

    pub fn end(&mut self) {
        for (k, names) in DAEMONS {
            let used = ticks_of(names).saturating_sub(self.start[k]);
            self.cpu_s.insert(k.into(), round2(used as f64 / clk_tck()));
        }
        let used = machine_busy_ticks().saturating_sub(self.start["machine"]);
        self.cpu_s
            .insert("machine".into(), round2(used as f64 / clk_tck()));
    }

    /// CPU seconds of processes not measured here (other people's builds and tests), given the CPU of the
    /// programs the phase ran; a phase where they took over 10% of the machine is marked skewed.
    pub fn others(&self, programs_cpu_s: f64) -> f64 {
        let daemons: f64 = self
            .cpu_s
            .iter()
            .filter(|(k, _)| *k != "machine")
            .map(|(_, v)| v)
            .sum();
        round2(self.cpu_s.get("machine").copied().unwrap_or(0.0) - daemons - programs_cpu_s)
    }
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Peak RSS and CPU of one program run, from GNU time.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub peak_rss_mb: f64,
    pub cpu_s: f64,
}

/// A program running under `/usr/bin/time -f '%M %U %S'` and `timeout`, its output in a log file.
pub struct Measured {
    pub name: String,
    child: Option<tokio::process::Child>,
    time_file: PathBuf,
    pub log: PathBuf,
    pub started: Instant,
}

impl Measured {
    /// Starts `program args…`; `name` names its log (`LOGS/NAME.log`) and its figures.
    pub fn spawn(
        name: &str,
        logs: &Path,
        tmp: &Path,
        timeout_s: u64,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[String],
    ) -> Result<Measured> {
        let log = logs.join(format!("{name}.log"));
        let time_file = tmp.join(format!("{name}.time"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = tokio::process::Command::new("/usr/bin/time");
        cmd.arg("-o")
            .arg(&time_file)
            .args(["-f", "%M %U %S", "timeout", "--kill-after=60"])
            .arg(timeout_s.to_string())
            .arg(program.as_ref())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} under /usr/bin/time"))?;
        Ok(Measured {
            name: name.into(),
            child: Some(child),
            time_file,
            log,
            started: Instant::now(),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the program is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM to `timeout`, which passes it on to the program; GNU time stays to write the figures.
    pub fn terminate(&self) {
        let Some(pid) = self.pid() else { return };
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-s", "TERM", child])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits for the program; its exit code and usage. Exit 124/137: `timeout` killed it.
    pub async fn wait(mut self) -> Result<(i32, Usage)> {
        let mut child = self.child.take().context("waited twice")?;
        let status = child.wait().await?;
        let code = status.code().unwrap_or(-1);
        let text = std::fs::read_to_string(&self.time_file).unwrap_or_default();
        // GNU time writes "Command exited with non-zero status N" before the figures when it failed.
        let figures = text.lines().last().unwrap_or("");
        let f: Vec<f64> = figures
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let usage = if f.len() == 3 {
            Usage {
                peak_rss_mb: round2(f[0] / 1024.0),
                cpu_s: round2(f[1] + f[2]),
            }
        } else {
            Usage::default()
        };
        Ok((code, usage))
    }

    /// Waits and insists on exit 0, quoting the log's tail otherwise.
    pub async fn wait_ok(self) -> Result<Usage> {
        let name = self.name.clone();
        let log = self.log.clone();
        let (code, usage) = self.wait().await?;
        if code != 0 {
            bail!("{name} exited with {code}:\n{}", tail(&log, 20));
        }
        Ok(usage)
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // `timeout` puts itself in a process group of its own: the group of `time` misses it and the
            // program, so its children get the signal too (a failed phase must not leave programs running).
            self.terminate();
            signal_group(pid, "TERM");
        }
    }
}

fn signal_group(pgid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", sig, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a program to its end, timing it (wall clock) with its usage; output to `LOGS/NAME.log`.
pub async fn run_timed(
    name: &str,
    logs: &Path,
    tmp: &Path,
    timeout_s: u64,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[String],
) -> Result<(i32, f64, Usage)> {
    let m = Measured::spawn(name, logs, tmp, timeout_s, program, args)?;
    let t0 = Instant::now();
    let (code, usage) = m.wait().await?;
    Ok((code, round3(t0.elapsed().as_secs_f64()), usage))
}

/// Polls `check` every `every` until it says yes or `limit` passes.
pub async fn poll_until<F, Fut>(
    what: &str,
    every: Duration,
    limit: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not after {} s", limit.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}
