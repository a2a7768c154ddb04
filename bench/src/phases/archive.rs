//! Phase `archive` (issue 14): the whole archive of a table — copy into a history table, then delete from the
//! source — by pt-archiver `--bulk-insert --bulk-delete --limit 10000 --commit-each` (which deletes as it
//! goes, with nothing but the destination's commit as proof) and by bitmig: copy (producer + 2 consumers until
//! `report` says complete), `compensator run --min-age 0s` (groups complete), `verify`, then `purge
//! --purge-max-key` (every row, as pt-archiver deletes every row of a table without AUTO_INCREMENT). Each
//! works on its own identical copy of `orders`; timed from the first step to the last. Before a figure
//! counts, both sources must be empty and both history tables must have `orders`' COUNT and CHECKSUM TABLE.

use anyhow::{ensure, Result};
use serde::Serialize;

use crate::bitmig::{CopyRun, JobSpec, Timed};
use crate::mariadb::{check_equal, Db};
use crate::results::{method_header, method_line, Section, Target};
use crate::sys::{self, round3, PhaseCpu};
use crate::Bench;

#[derive(Debug, Serialize)]
pub struct Figures {
    pub rows: u64,
    pub pt_archiver_seconds: f64,
    pub pt_archiver_rows_per_s: f64,
    pub pt_archiver_cpu_s: f64,
    pub pt_archiver_phase: PhaseCpu,
    /// Copy, run, verify and purge together.
    pub bitmig_seconds: f64,
    pub bitmig_rows_per_s: f64,
    pub bitmig_copy: CopyRun,
    pub bitmig_run: Timed,
    pub bitmig_verify: Timed,
    pub bitmig_purge: Timed,
    pub bitmig_to_pt_archiver: f64,
}

pub async fn run(b: &mut Bench) -> Result<Figures> {
    let rows = b.rows();
    let db: Db = b.db()?.clone();
    println!(
        "making two identical copies of orders (a_src_pt, a_src_bitmig) and empty history tables"
    );
    for (src, hist) in [("a_src_pt", "a_hist_pt"), ("a_src_bitmig", "a_hist_bitmig")] {
        db.copy_table("orders", src).await?;
        db.fresh_table(hist, "orders").await?;
    }

    let args = super::copy::pt_archiver_args(&db.name, "a_src_pt", "a_hist_pt", true);
    println!("a. pt-archiver {}", args.join(" "));
    db.settle().await?;
    let mut pt_phase = PhaseCpu::begin("archive_pt_archiver");
    let (code, pt_seconds, usage) = sys::run_timed(
        "archive.pt-archiver",
        &b.logs,
        &b.tmp,
        b.opts.timeout,
        "pt-archiver",
        &args,
    )
    .await?;
    pt_phase.end();
    ensure!(
        code == 0,
        "pt-archiver exited with {code}:\n{}",
        sys::tail(&b.logs.join("archive.pt-archiver.log"), 20)
    );
    println!("took {pt_seconds:.3} s");

    let name = b.job_name("arch");
    println!("b. bitmig: copy, compensator run, verify, purge (job '{name}', a_src_bitmig → a_hist_bitmig)");
    let url = Db::url(&db.name);
    let job = b.job(
        &name,
        &JobSpec {
            source_url: &url,
            source_table: "a_src_bitmig",
            target_url: &url,
            target_table: "a_hist_bitmig",
            extra: "",
        },
    )?;
    b.clear_job(&name).await?;
    db.settle().await?;
    let copy = b.copy("archive_bitmig", &job, rows).await?;
    let step = |t: &Timed, what: &str| {
        println!(
            "  {what}: {:.3} s, exit {}, peak RSS {:.1} MB: {}",
            t.seconds,
            t.exit,
            t.usage.peak_rss_mb,
            t.stdout.chars().take(200).collect::<String>()
        )
    };
    let run = b
        .compensator("archive.run", &["run", "--min-age", "0s", "--json"], &job)
        .await?;
    step(&run, "compensator run");
    ensure!(
        run.exit == 0,
        "compensator run failed (see {}/archive.run.log)",
        b.logs.display()
    );
    let verify = b
        .compensator("archive.verify", &["verify", "--json"], &job)
        .await?;
    step(&verify, "verify");
    ensure!(
        verify.exit == 0,
        "verify did not say equal (see {}/archive.verify.log)",
        b.logs.display()
    );
    let purge = b
        .compensator(
            "archive.purge",
            &["purge", "--purge-max-key", "--batch", "10000", "--json"],
            &job,
        )
        .await?;
    // The steps' own times: clearing the job and starting the consumers before the copy are not counted.
    let bitmig_seconds = round3(copy.seconds + run.seconds + verify.seconds + purge.seconds);
    step(&purge, "purge");
    ensure!(
        purge.exit == 0,
        "purge failed (exit {}; see {}/archive.purge.log)",
        purge.exit,
        b.logs.display()
    );
    println!("took {bitmig_seconds:.3} s");

    println!("checking: both sources empty, both history tables equal to orders");
    for src in ["a_src_pt", "a_src_bitmig"] {
        let left: u64 = db.value(&format!("SELECT COUNT(*) FROM `{src}`")).await?;
        ensure!(
            left == 0,
            "{src} still holds {left} rows after the archive: no figures are printed"
        );
    }
    check_equal(
        "archive",
        &("orders".into(), db.fingerprint("orders").await?),
        &[
            ("a_hist_pt".into(), db.fingerprint("a_hist_pt").await?),
            (
                "a_hist_bitmig".into(),
                db.fingerprint("a_hist_bitmig").await?,
            ),
        ],
    )?;
    b.clear_job(&name).await?;
    let pt_archiver_rows_per_s = rows as f64 / pt_seconds;
    let bitmig_rows_per_s = rows as f64 / bitmig_seconds;
    Ok(Figures {
        rows,
        pt_archiver_seconds: pt_seconds,
        pt_archiver_rows_per_s,
        pt_archiver_cpu_s: usage.cpu_s,
        pt_archiver_phase: pt_phase,
        bitmig_seconds,
        bitmig_rows_per_s,
        bitmig_copy: copy,
        bitmig_run: run,
        bitmig_verify: verify,
        bitmig_purge: purge,
        bitmig_to_pt_archiver: bitmig_rows_per_s / pt_archiver_rows_per_s,
    })
}

impl Section for Figures {
    fn lines(&self, out: &mut Vec<String>) {
        out.push(format!(
            "archive: copy to a history table, then delete from the source, {} rows",
            self.rows
        ));
        out.push(method_header("MariaDB"));
        out.push(method_line(
            "pt-archiver --bulk-delete",
            self.pt_archiver_seconds,
            self.rows,
            &self.pt_archiver_phase,
            self.pt_archiver_cpu_s,
            "mariadb",
        ));
        out.push(format!(
            "  {:<30}{:>9.2}{:>11.0}  (copy {:.2} s, run {:.2} s, verify {:.2} s, purge {:.2} s)",
            "bitmig copy+verify+purge",
            self.bitmig_seconds,
            self.bitmig_rows_per_s,
            self.bitmig_copy.seconds,
            self.bitmig_run.seconds,
            self.bitmig_verify.seconds,
            self.bitmig_purge.seconds
        ));
        out.push(format!(
            "  purge peak RSS {:.1} MB, CPU {:.1} s; verify peak RSS {:.1} MB; bitmig {:.2}× pt-archiver",
            self.bitmig_purge.usage.peak_rss_mb,
            self.bitmig_purge.usage.cpu_s,
            self.bitmig_verify.usage.peak_rss_mb,
            self.bitmig_to_pt_archiver
        ));
    }

    fn targets(&self) -> Vec<Target> {
        vec![
            Target::ratio(
                "archive: bitmig / pt-archiver",
                self.bitmig_to_pt_archiver,
                2.0,
            ),
            Target::rss(
                "archive: purge peak RSS",
                self.bitmig_purge.usage.peak_rss_mb,
            ),
        ]
    }
}
