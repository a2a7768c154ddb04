//! Phases `ledger` and `ledger-scale` (issues 6 and 17): the compensator over a synthetic ledger of complete
//! groups written straight into Redis — 1 000 groups (10 M ids), and `--ledger-groups` (default 100 000:
//! 1 000 000 000 ids, ~375 MB of Redis), the cost a billion-row job pays on every scheduled pass.
//!
//! Timed, each with its peak RSS: `report` (groups produced; with no `spec` key it says "no ledger" and exits
//! 3, but still reads every group and bitmap), `run --min-age 0s` (checks every group, marks it complete),
//! `report` again, and a second `run` (nothing left to check). Their JSON must say they did that work (every
//! group checked and complete, every id present) before a figure counts. The keys are removed afterwards,
//! whether the phase succeeded or not.

use anyhow::{ensure, Result};
use serde::Serialize;

use crate::bitmig::{JobSpec, Timed, GROUP_SIZE};
use crate::results::{Section, Target};
use crate::sys::PhaseCpu;
use crate::Bench;

#[derive(Debug, Serialize)]
pub struct Figures {
    pub groups: u64,
    pub ids: u64,
    pub write_seconds: f64,
    pub redis_used_mb: f64,
    pub report_before_run: Timed,
    pub run: Timed,
    pub report: Timed,
    pub run_again: Timed,
    #[serde(flatten)]
    pub cpu: PhaseCpu,
    /// The targets' limits for this size: seconds for run and report.
    pub limit_s: f64,
}

pub async fn run_small(b: &mut Bench) -> Result<Figures> {
    run(b, "ledger", 1000, 1.0).await
}

pub async fn run_scale(b: &mut Bench) -> Result<Figures> {
    run(b, "scale", b.opts.ledger_groups, 10.0).await
}

async fn run(b: &mut Bench, suffix: &str, groups: u64, limit_s: f64) -> Result<Figures> {
    let name = b.job_name(suffix);
    // The URLs are never opened: the compensator's run and report read only the ledger.
    let job = b.job(
        &name,
        &JobSpec {
            source_url: "mysql://root@127.0.0.1:3306/unused",
            source_table: "orders",
            target_url: "mysql://root@127.0.0.1:3306/unused",
            target_table: "t_bitmig",
            extra: "",
        },
    )?;
    b.clear_job(&name).await?;
    let result = async {
        let t0 = std::time::Instant::now();
        b.write_ledger(&name, groups).await?;
        let write_seconds = crate::sys::round3(t0.elapsed().as_secs_f64());
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut b.redis().await?)
            .await?;
        let redis_used_mb = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0.0, |v| crate::sys::round2(v / 1048576.0));
        let mut cpu = PhaseCpu::begin(&name);
        let t = |n: &str| format!("{name}.{n}");
        let report_before_run = b
            .compensator(&t("report_before_run"), &["report", "--json"], &job)
            .await?;
        let run = b
            .compensator(&t("run"), &["run", "--min-age", "0s", "--json"], &job)
            .await?;
        let report = b
            .compensator(&t("report"), &["report", "--json"], &job)
            .await?;
        let run_again = b
            .compensator(&t("run_again"), &["run", "--min-age", "0s", "--json"], &job)
            .await?;
        cpu.end();
        for (what, t) in [
            ("report", &report_before_run),
            ("run", &run),
            ("report", &report),
            ("run", &run_again),
        ] {
            println!(
                "  {what}: {:.3} s, exit {}, peak RSS {:.1} MB: {}",
                t.seconds,
                t.exit,
                t.usage.peak_rss_mb,
                t.stdout.chars().take(200).collect::<String>()
            );
        }
        let ids = groups * GROUP_SIZE;
        ensure!(
            run.exit == 0,
            "compensator run over the ledger failed (see {}/{name}.run.log)",
            b.logs.display()
        );
        let (r1, r2) = (run.json()?, run_again.json()?);
        ensure!(
            r1["groups_checked"] == groups
                && r1["groups_complete"] == groups
                && r1["republished_ids"] == 0,
            "run did not check and complete every group: {r1}"
        );
        ensure!(
            r2["groups_checked"] == 0 && r2["groups_complete"] == groups,
            "the second run found work left: {r2}"
        );
        for r in [report_before_run.json()?, report.json()?] {
            ensure!(
                r["groups"] == groups
                    && r["source_ids"] == ids
                    && r["target_ids"] == ids
                    && r["missing_ids"] == 0,
                "report did not read every group: {r}"
            );
        }
        ensure!(
            report_before_run.json()?["groups_produced"] == groups
                && report.json()?["groups_complete"] == groups,
            "the reports do not show the groups produced, then complete"
        );
        Ok(Figures {
            groups,
            ids,
            write_seconds,
            redis_used_mb,
            report_before_run,
            run,
            report,
            run_again,
            cpu,
            limit_s,
        })
    }
    .await;
    b.clear_job(&name).await?;
    result
}

impl Section for Figures {
    fn lines(&self, out: &mut Vec<String>) {
        out.push(format!(
            "compensator over {} complete groups ({} ids; Redis used_memory {:.0} MB after writing; written in {:.1} s; load avg before {}):",
            self.groups, self.ids, self.redis_used_mb, self.write_seconds, self.cpu.load_before
        ));
        for (t, what) in [
            (
                &self.report_before_run,
                format!(
                    "report, groups produced (no spec key: exit {})",
                    self.report_before_run.exit
                ),
            ),
            (
                &self.run,
                "run --min-age 0s: checks every group, completes it".into(),
            ),
            (
                &self.report,
                format!(
                    "report, groups complete (no spec key: exit {})",
                    self.report.exit
                ),
            ),
            (
                &self.run_again,
                "run --min-age 0s again: nothing left to check".into(),
            ),
        ] {
            out.push(format!(
                "  {what:<58}{:>8.3} s  peak RSS {:>6.1} MB  CPU {:.2} s",
                t.seconds, t.usage.peak_rss_mb, t.usage.cpu_s
            ));
        }
    }

    fn targets(&self) -> Vec<Target> {
        let report_s = self.report_before_run.seconds.max(self.report.seconds);
        let report_rss = self
            .report_before_run
            .usage
            .peak_rss_mb
            .max(self.report.usage.peak_rss_mb);
        let g = self.groups;
        let mut t = vec![
            Target::seconds(
                &format!("compensator run, {g} groups"),
                self.run.seconds,
                self.limit_s,
            ),
            Target::seconds(
                &format!("compensator report, {g} groups (slower)"),
                report_s,
                self.limit_s,
            ),
        ];
        if self.limit_s > 1.0 {
            t.push(Target::rss(
                &format!("compensator run RSS, {g} groups"),
                self.run.usage.peak_rss_mb,
            ));
            t.push(Target::rss(
                &format!("compensator report RSS, {g} groups"),
                report_rss,
            ));
        }
        t
    }
}
