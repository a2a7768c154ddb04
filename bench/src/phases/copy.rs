//! Phase `copy` (issues 6 and 17): MariaDB `orders` copied three times into fresh tables of its schema, one
//! after the other, each after the dirty-page flush: `INSERT … SELECT` (the physical limit), pt-archiver
//! `--no-delete --bulk-insert --limit 10000 --commit-each` (what a DBA would use), bitmig (producer + 2
//! consumers, the defaults, timed until `report` says complete); then one `compensator run --min-age 0s` and
//! one `report` over the finished job. All three targets must have the source's COUNT and CHECKSUM TABLE.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::bitmig::{CopyRun, Timed};
use crate::mariadb::{check_equal, Db};
use crate::results::{method_header, method_line, Section, Target};
use crate::sys::{self, round3, PhaseCpu};
use crate::Bench;

/// A method other than bitmig: its time, the CPU the phase cost, the CPU of its own program (if any).
#[derive(Debug, Clone, Serialize)]
pub struct Method {
    pub seconds: f64,
    pub rows_per_s: f64,
    #[serde(flatten)]
    pub cpu: PhaseCpu,
    pub program_cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub rows: u64,
    pub insert_select: Method,
    pub pt_archiver: Method,
    pub bitmig: CopyRun,
    pub bitmig_to_insert_select: f64,
    pub bitmig_to_pt_archiver: f64,
    pub compensator_run: Timed,
    pub compensator_report: Timed,
    pub groups: u64,
}

/// pt-archiver's flags for a copy of `source` into `dest` of database `db` (nothing deleted unless `delete`).
/// --where 1=1: every row (pt-archiver requires a --where). --charset utf8 with --no-check-charset: without
/// it the bulk file is written byte-wise and non-ASCII text arrives as '?' (or shifts columns); `utf8mb4` is
/// no charset pt-archiver 3.2.1 knows. The id is no AUTO_INCREMENT, so --safe-auto-increment keeps no row back.
pub fn pt_archiver_args(db: &str, source: &str, dest: &str, delete: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--source".into(),
        format!("h=127.0.0.1,P=3306,u=root,D={db},t={source}"),
        "--dest".into(),
        format!("t={dest}"),
        "--where".into(),
        "1=1".into(),
    ];
    if delete {
        a.push("--bulk-delete".into());
    } else {
        a.push("--no-delete".into());
    }
    a.extend(
        [
            "--bulk-insert",
            "--limit",
            "10000",
            "--commit-each",
            "--charset",
            "utf8",
            "--no-check-charset",
            "--why-quit",
            "--statistics",
        ]
        .map(String::from),
    );
    a
}

pub async fn run(b: &mut Bench) -> Result<Figures> {
    let db: Db = b.db()?.clone();
    let rows = b.rows();

    println!("a. INSERT INTO t_insert_select SELECT * FROM orders");
    db.fresh_table("t_insert_select", "orders").await?;
    db.settle().await?;
    let mut cpu = PhaseCpu::begin("insert_select");
    let t0 = Instant::now();
    db.exec("INSERT INTO t_insert_select SELECT * FROM orders")
        .await?;
    let seconds = round3(t0.elapsed().as_secs_f64());
    cpu.end();
    println!("took {seconds:.3} s");
    let insert_select = Method {
        seconds,
        rows_per_s: rows as f64 / seconds,
        cpu,
        program_cpu_s: 0.0,
    };

    let args = pt_archiver_args(&db.name, "orders", "t_pt_archiver", false);
    println!("b. pt-archiver {}", args.join(" "));
    db.fresh_table("t_pt_archiver", "orders").await?;
    db.settle().await?;
    let mut cpu = PhaseCpu::begin("pt_archiver");
    let (code, seconds, usage) = sys::run_timed(
        "pt-archiver",
        &b.logs,
        &b.tmp,
        b.opts.timeout,
        "pt-archiver",
        &args,
    )
    .await?;
    cpu.end();
    if code != 0 {
        bail!(
            "pt-archiver exited with {code}:\n{}",
            sys::tail(&b.logs.join("pt-archiver.log"), 20)
        );
    }
    println!("took {seconds:.3} s");
    let pt_archiver = Method {
        seconds,
        rows_per_s: rows as f64 / seconds,
        cpu,
        program_cpu_s: usage.cpu_s,
    };

    println!(
        "c. bitmig: producer + 2 consumers (job '{}' into t_bitmig), until report says complete",
        b.job_name("")
    );
    db.fresh_table("t_bitmig", "orders").await?;
    let job = super::mariadb_job(b)?;
    db.settle().await?;
    let bitmig = b.copy("bitmig", &job, rows).await?;

    println!(
        "d. bitmig-compensator run --min-age 0s, then report, over job '{}'",
        job.name
    );
    let compensator_run = b
        .compensator("job.run", &["run", "--min-age", "0s", "--json"], &job)
        .await?;
    if compensator_run.exit != 0 {
        bail!(
            "compensator run failed (see {}/job.run.log)",
            b.logs.display()
        );
    }
    let compensator_report = b
        .compensator("job.report", &["report", "--json"], &job)
        .await?;
    if compensator_report.exit != 0 {
        bail!("report says the finished job is incomplete");
    }
    let groups = compensator_report.json()?["groups"].as_u64().unwrap_or(0);

    println!("checking the three targets against the source (COUNT(*), CHECKSUM TABLE)");
    let source = db.fingerprint("orders").await?;
    check_equal(
        "copy",
        &("orders".into(), source),
        &[
            (
                "t_insert_select".into(),
                db.fingerprint("t_insert_select").await?,
            ),
            (
                "t_pt_archiver".into(),
                db.fingerprint("t_pt_archiver").await?,
            ),
            ("t_bitmig".into(), db.fingerprint("t_bitmig").await?),
        ],
    )?;
    b.mariadb_job = Some(job);
    Ok(Figures {
        rows,
        bitmig_to_insert_select: bitmig.rows_per_s / insert_select.rows_per_s,
        bitmig_to_pt_archiver: bitmig.rows_per_s / pt_archiver.rows_per_s,
        insert_select,
        pt_archiver,
        bitmig,
        compensator_run,
        compensator_report,
        groups,
    })
}

/// bitmig's own programs in one line: CPU seconds and peak RSS.
pub fn bitmig_programs_line(run: &CopyRun) -> String {
    let mut parts = vec![format!(
        "producer {:.1} s / {:.1} MB",
        run.producer.cpu_s, run.producer.peak_rss_mb
    )];
    for (i, c) in run.consumers.iter().enumerate() {
        parts.push(format!(
            "consumer{} {:.1} s / {:.1} MB",
            i + 1,
            c.cpu_s,
            c.peak_rss_mb
        ));
    }
    parts.push(format!(
        "{} report polls {:.1} s",
        run.report_polls, run.report_polls_cpu_s
    ));
    let d = |k: &str| run.cpu.cpu_s.get(k).copied().unwrap_or(0.0);
    format!(
        "  bitmig CPU / peak RSS: {}; mariadb {:.1} s, postgres {:.1} s, rabbitmq {:.1} s, redis {:.1} s",
        parts.join(", "),
        d("mariadb"),
        d("postgres"),
        d("rabbitmq"),
        d("redis")
    )
}

impl Section for Figures {
    fn lines(&self, out: &mut Vec<String>) {
        out.push(format!("copy: MariaDB → MariaDB, {} rows", self.rows));
        out.push(method_header("MariaDB"));
        out.push(method_line(
            "INSERT … SELECT",
            self.insert_select.seconds,
            self.rows,
            &self.insert_select.cpu,
            0.0,
            "mariadb",
        ));
        out.push(method_line(
            "pt-archiver",
            self.pt_archiver.seconds,
            self.rows,
            &self.pt_archiver.cpu,
            self.pt_archiver.program_cpu_s,
            "mariadb",
        ));
        out.push(method_line(
            "bitmig",
            self.bitmig.seconds,
            self.rows,
            &self.bitmig.cpu,
            self.bitmig.programs_cpu_s(),
            "mariadb",
        ));
        out.push(bitmig_programs_line(&self.bitmig));
        out.push(format!(
            "  pt-archiver CPU: {:.1} s",
            self.pt_archiver.program_cpu_s
        ));
        out.push(format!(
            "  bitmig {:.2}× pt-archiver, {:.2}× INSERT … SELECT; compensator over the job ({} groups): run {:.3} s, report {:.3} s",
            self.bitmig_to_pt_archiver, self.bitmig_to_insert_select, self.groups,
            self.compensator_run.seconds, self.compensator_report.seconds
        ));
    }

    fn targets(&self) -> Vec<Target> {
        vec![
            Target::ratio(
                "copy: bitmig / pt-archiver",
                self.bitmig_to_pt_archiver,
                2.5,
            ),
            Target::ratio(
                "copy: bitmig / INSERT … SELECT",
                self.bitmig_to_insert_select,
                0.9,
            ),
            Target::rss(
                "copy: peak RSS, consumer (max)",
                self.bitmig.max_consumer_rss_mb(),
            ),
            Target::rss("copy: peak RSS, producer", self.bitmig.producer.peak_rss_mb),
        ]
    }
}
