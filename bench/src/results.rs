//! The one place figures leave the benchmark: the settings of the run, each phase's typed figures, the
//! issues' targets with PASS/MISS, printed as a table and written as one JSON document.
//!
//! Contract: nothing here is printed until every selected phase has returned, and a phase returns only after
//! it checked its targets hold the source's rows; the JSON holds exactly the table's figures (and the table's
//! lines, so a reader of the JSON sees what the terminal showed).

use std::process::Stdio;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bitmig::{BATCH_SIZE, CONSUMERS, GROUP_SIZE};
use crate::mariadb::Fingerprint;
use crate::phases;
use crate::sys;
use crate::{Bench, Phase};

/// One target of an issue, as measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub value: f64,
    pub op: &'static str,
    pub limit: f64,
    pub pass: bool,
    #[serde(skip)]
    pub shown: String,
    #[serde(skip)]
    pub limit_shown: String,
}

impl Target {
    pub fn at_least(
        target: &str,
        value: f64,
        limit: f64,
        shown: String,
        limit_shown: &str,
    ) -> Target {
        Target {
            target: target.into(),
            value: sys::round3(value),
            op: ">=",
            limit,
            pass: value >= limit,
            shown,
            limit_shown: limit_shown.into(),
        }
    }

    pub fn at_most(
        target: &str,
        value: f64,
        limit: f64,
        shown: String,
        limit_shown: &str,
    ) -> Target {
        Target {
            target: target.into(),
            value: sys::round3(value),
            op: "<=",
            limit,
            pass: value <= limit,
            shown,
            limit_shown: limit_shown.into(),
        }
    }

    pub fn ratio(target: &str, value: f64, limit: f64) -> Target {
        Target::at_least(
            target,
            value,
            limit,
            format!("{value:.2}×"),
            &format!("{limit}×"),
        )
    }

    pub fn rss(target: &str, mb: f64) -> Target {
        Target::at_most(target, mb, 64.0, format!("{mb:.1} MB"), "64 MB")
    }

    pub fn seconds(target: &str, s: f64, limit: f64) -> Target {
        Target::at_most(target, s, limit, format!("{s:.3} s"), &format!("{limit} s"))
    }
}

/// A phase's figures: its lines of the table and its targets.
pub trait Section {
    fn lines(&self, out: &mut Vec<String>);
    fn targets(&self) -> Vec<Target>;
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub name: String,
    pub phases: Vec<Phase>,
    pub rows: u64,
    pub group_size: u64,
    pub batch_size: u64,
    pub consumers: usize,
    pub concurrency: u64,
    pub prefetch: u64,
    pub nproc: u64,
    pub cpu: String,
    pub mariadb: String,
    pub innodb_buffer_pool_mb: u64,
    pub innodb_flush_log_at_trx_commit: u64,
    pub postgres: String,
    pub pt_archiver: String,
    pub pgloader: String,
    pub commit: String,
    pub date: String,
}

#[derive(Serialize)]
pub struct Results {
    pub settings: Settings,
    /// The generated source's fingerprint (`COUNT`, `CHECKSUM TABLE`).
    pub source: Option<Fingerprint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<phases::copy::Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg: Option<phases::pg::Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_mariadb: Option<phases::pg_mariadb::Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<phases::verify::Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<phases::archive::Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow: Option<phases::follow::Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<phases::ledger::Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_scale: Option<phases::ledger::Figures>,
    pub targets: Vec<Target>,
    pub table: Vec<String>,
}

/// The first line a command prints (a version), or "" when it cannot run.
fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

impl Results {
    pub async fn new(b: &Bench) -> Result<Results> {
        let help = first_line_all(&b.program("bitmig-consumer"), &["--help"]);
        let concurrency = help
            .lines()
            .find(|l| l.contains("--concurrency"))
            .and_then(|l| l.split("[default: ").nth(1))
            .and_then(|s| s.split(']').next())
            .and_then(|s| s.parse().ok())
            .context("cannot read the default --concurrency from bitmig-consumer --help")?;
        let server = crate::mariadb::Db::open("mysql")?;
        let mariadb: String = server.value("SELECT VERSION()").await?;
        let pool_mb: u64 = server
            .value("SELECT @@innodb_buffer_pool_size DIV 1048576")
            .await?;
        let flush: u64 = server
            .value("SELECT @@innodb_flush_log_at_trx_commit")
            .await?;
        server.disconnect().await;
        let git = |args: &[&str]| first_line("git", args);
        let dirty = !std::process::Command::new("git")
            .args([
                "diff",
                "--quiet",
                "HEAD",
                "--",
                "shared",
                "producer",
                "consumer",
                "compensator",
            ])
            .status()
            .is_ok_and(|s| s.success());
        Ok(Results {
            settings: Settings {
                name: b.opts.name.clone(),
                phases: b.opts.phases.clone(),
                rows: b.opts.rows,
                group_size: GROUP_SIZE,
                batch_size: BATCH_SIZE,
                consumers: CONSUMERS,
                concurrency,
                // bitmig-consumer's default: room for small catch-up batches taken together.
                prefetch: 2 * concurrency + 16,
                nproc: sys::nproc(),
                cpu: std::fs::read_to_string("/proc/cpuinfo")
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("model name")
                            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                    })
                    .unwrap_or_default(),
                mariadb,
                innodb_buffer_pool_mb: pool_mb,
                innodb_flush_log_at_trx_commit: flush,
                postgres: first_line("psql", &["--version"]),
                pt_archiver: first_line("pt-archiver", &["--version"]),
                pgloader: first_line("pgloader", &["--version"]),
                commit: format!(
                    "{}{}",
                    git(&["rev-parse", "--short", "HEAD"]),
                    if dirty { "+dirty" } else { "" }
                ),
                date: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
            source: None,
            copy: None,
            pg: None,
            pg_mariadb: None,
            verify: None,
            archive: None,
            follow: None,
            ledger: None,
            ledger_scale: None,
            targets: Vec::new(),
            table: Vec::new(),
        })
    }

    fn sections(&self) -> Vec<&dyn Section> {
        let mut v: Vec<&dyn Section> = Vec::new();
        if let Some(s) = &self.copy {
            v.push(s);
        }
        if let Some(s) = &self.pg {
            v.push(s);
        }
        if let Some(s) = &self.pg_mariadb {
            v.push(s);
        }
        if let Some(s) = &self.verify {
            v.push(s);
        }
        if let Some(s) = &self.archive {
            v.push(s);
        }
        if let Some(s) = &self.follow {
            v.push(s);
        }
        if let Some(s) = &self.ledger {
            v.push(s);
        }
        if let Some(s) = &self.ledger_scale {
            v.push(s);
        }
        v
    }

    /// Prints the table and writes the JSON.
    pub fn finish(&mut self, b: &Bench) -> Result<()> {
        let s = &self.settings;
        let mut lines = vec![
            format!(
                "bitmig benchmark: {} rows; group_size {}, batch_size {}, {} consumers × concurrency {} (prefetch {}); nproc {}",
                s.rows, s.group_size, s.batch_size, s.consumers, s.concurrency, s.prefetch, s.nproc
            ),
            format!(
                "MariaDB {} (buffer pool {} MB, flush_log_at_trx_commit {}); {}; {}; {}",
                s.mariadb, s.innodb_buffer_pool_mb, s.innodb_flush_log_at_trx_commit, s.postgres, s.pt_archiver, s.pgloader
            ),
            format!("commit {}; {}; phases {}", s.commit, s.date,
                s.phases.iter().map(|p| p.name()).collect::<Vec<_>>().join(",")),
            "(load avg: before each timed step; CPU s 'others': processes not part of the benchmark — * when they took over 10% of the machine: figure skewed)".into(),
        ];
        let mut targets = Vec::new();
        for section in self.sections() {
            lines.push(String::new());
            section.lines(&mut lines);
            targets.extend(section.targets());
        }
        lines.push(String::new());
        lines.push(format!(
            "{:<46}{:>14}  {:<10}result",
            "target", "measured", "goal"
        ));
        for t in &targets {
            let op = if t.op == ">=" { "≥ " } else { "≤ " };
            lines.push(format!(
                "{:<46}{:>14}  {:<10}{}",
                t.target,
                t.shown,
                format!("{op}{}", t.limit_shown),
                if t.pass { "PASS" } else { "MISS" }
            ));
        }
        if let Some(src) = &self.source {
            lines.push(format!(
                "(every target verified identical to the source before any figure: COUNT {}, CHECKSUM {})",
                src.rows, src.checksum
            ));
        }
        println!("\n==> results\n{}", lines.join("\n"));
        self.targets = targets;
        self.table = lines;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(&b.opts.out, format!("{json}\n"))
            .with_context(|| format!("writing {}", b.opts.out.display()))?;
        println!("\nJSON: {}", b.opts.out.display());
        Ok(())
    }
}

/// Everything a command prints on stdout.
fn first_line_all(program: &std::path::Path, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// One method's line: `label seconds rows/s load-before CPU(MariaDB) others machine`.
pub fn method_line(
    label: &str,
    seconds: f64,
    rows: u64,
    cpu: &sys::PhaseCpu,
    programs_cpu_s: f64,
    daemon: &str,
) -> String {
    let others = cpu.others(programs_cpu_s);
    let capacity = seconds * sys::nproc() as f64;
    let machine = cpu.cpu_s.get("machine").copied().unwrap_or(0.0);
    format!(
        "  {:<30}{:>9.2}{:>11.0}  {:<18}{:>8.1}{:>8.1}{}{:>6.1} of {:.1}",
        label,
        seconds,
        rows as f64 / seconds,
        cpu.load_before,
        cpu.cpu_s.get(daemon).copied().unwrap_or(0.0),
        others,
        if others > 0.1 * capacity { "*" } else { " " },
        machine,
        capacity
    )
}

pub fn method_header(daemon: &str) -> String {
    format!(
        "  {:<30}{:>9}{:>11}  {:<18}{:>8}{:>8} {:>14}",
        "method",
        "seconds",
        "rows/s",
        "load avg before",
        &format!("{daemon} s"),
        "others",
        "machine busy"
    )
}
