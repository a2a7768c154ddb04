//! Phase `pg` (issue 17): MariaDB `orders` into PostgreSQL, pgloader against bitmig on the same table in the
//! same run. pgloader (Debian's package) loads through a load file limited to the one table, with the
//! settings of issue 17's measurement (create tables, create indexes, 4 workers), into schema `pgloader`;
//! bitmig (producer + 2 consumers) writes into `public.t_bitmig`, which it creates itself (`[target] create =
//! true`: the source's columns with pgloader's casts, the key as primary key), then `bitmig-compensator
//! indexes` builds the source's `user_id` index on it: the same work as pgloader's, both timed.
//! `CHECKPOINT` and the MariaDB flush before each. Both targets must have the source's
//! row hash (an engine-independent fingerprint, see `postgres.rs`) before a figure counts.

use anyhow::{bail, ensure, Result};
use serde::Serialize;

use crate::bitmig::CopyRun;
use crate::mariadb::check_equal;
use crate::results::{method_header, method_line, Section, Target};
use crate::sys::{self, PhaseCpu};
use crate::Bench;

#[derive(Debug, Serialize)]
pub struct Figures {
    pub rows: u64,
    pub pgloader_seconds: f64,
    pub pgloader_rows_per_s: f64,
    pub pgloader_cpu_s: f64,
    pub pgloader_peak_rss_mb: f64,
    pub pgloader_phase: PhaseCpu,
    /// bitmig's copy and `compensator indexes` together (`bitmig.seconds` is their sum).
    pub bitmig: CopyRun,
    pub bitmig_copy_seconds: f64,
    pub bitmig_indexes_seconds: f64,
    pub bitmig_to_pgloader: f64,
}

/// The load file: one table, the target schema renamed so it cannot meet bitmig's table.
fn load_file(db: &str) -> String {
    format!(
        "LOAD DATABASE
  FROM mysql://root@127.0.0.1:3306/{db}
  INTO postgresql://postgres@127.0.0.1:5432/{db}
  WITH include drop, create tables, create indexes, reset sequences, workers = 4, concurrency = 1
  SET PostgreSQL PARAMETERS timezone to 'UTC'
  INCLUDING ONLY TABLE NAMES MATCHING 'orders'
  ALTER SCHEMA '{db}' RENAME TO 'pgloader';
"
    )
}

pub async fn run(b: &mut Bench) -> Result<Figures> {
    let rows = b.rows();
    let db = b.db()?.clone();
    let pg = super::pg(b).await?;
    pg.exec("DROP SCHEMA IF EXISTS pgloader CASCADE").await?;

    let file = b.tmp.join("orders.load");
    std::fs::write(&file, load_file(&db.name))?;
    println!("a. pgloader {} (one table, workers = 4)", file.display());
    db.settle().await?;
    pg.checkpoint().await?;
    let mut pgloader_phase = PhaseCpu::begin("pgloader");
    let (code, pgloader_seconds, usage) = sys::run_timed(
        "pgloader",
        &b.logs,
        &b.tmp,
        b.opts.timeout,
        "pgloader",
        &[file.display().to_string()],
    )
    .await?;
    pgloader_phase.end();
    let log = std::fs::read_to_string(b.logs.join("pgloader.log")).unwrap_or_default();
    if code != 0 || log.contains(" ERROR ") || log.contains("FATAL") {
        bail!(
            "pgloader failed (exit {code}):\n{}",
            sys::tail(&b.logs.join("pgloader.log"), 30)
        );
    }
    println!("took {pgloader_seconds:.3} s");

    println!(
        "b. bitmig: producer + 2 consumers (job '{}' into PostgreSQL t_bitmig)",
        b.job_name("pg")
    );
    pg.exec("DROP TABLE IF EXISTS t_bitmig").await?;
    let job = super::pg_job(b)?;
    db.settle().await?;
    pg.checkpoint().await?;
    let mut bitmig = b.copy("bitmig_pg", &job, rows).await?;
    let indexes = b
        .compensator("pg.indexes", &["indexes", "--json"], &job)
        .await?;
    ensure!(
        indexes.exit == 0,
        "compensator indexes failed (exit {}; see {}/pg.indexes.log)",
        indexes.exit,
        b.logs.display()
    );
    let built = pg
        .client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 't_bitmig' AND indexdef LIKE '%(user_id)'",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    ensure!(
        built == 1,
        "t_bitmig has no user_id index after `compensator indexes`"
    );
    println!(
        "copy {:.3} s, then indexes {:.3} s: {}",
        bitmig.seconds, indexes.seconds, indexes.stdout
    );
    let copy_seconds = bitmig.seconds;
    bitmig.seconds = sys::round3(copy_seconds + indexes.seconds);
    bitmig.rows_per_s = rows as f64 / bitmig.seconds;

    println!("checking both targets against the source (row count and row hash)");
    check_equal(
        "MariaDB → PostgreSQL",
        &("orders (MariaDB)".into(), db.row_hash("orders").await?),
        &[
            (
                "pgloader.orders".into(),
                pg.row_hash("pgloader.orders").await?,
            ),
            (
                "t_bitmig (PostgreSQL)".into(),
                pg.row_hash("t_bitmig").await?,
            ),
        ],
    )?;
    b.pg_job = Some(job);
    let pgloader_rows_per_s = rows as f64 / pgloader_seconds;
    Ok(Figures {
        rows,
        pgloader_seconds,
        pgloader_rows_per_s,
        pgloader_cpu_s: usage.cpu_s,
        pgloader_peak_rss_mb: usage.peak_rss_mb,
        pgloader_phase,
        bitmig_to_pgloader: bitmig.rows_per_s / pgloader_rows_per_s,
        bitmig_copy_seconds: copy_seconds,
        bitmig_indexes_seconds: indexes.seconds,
        bitmig,
    })
}

impl Section for Figures {
    fn lines(&self, out: &mut Vec<String>) {
        out.push(format!("pg: MariaDB → PostgreSQL, {} rows", self.rows));
        out.push(method_header("postgres"));
        out.push(method_line(
            "pgloader (workers 4)",
            self.pgloader_seconds,
            self.rows,
            &self.pgloader_phase,
            self.pgloader_cpu_s,
            "postgres",
        ));
        out.push(method_line(
            "bitmig (copy + indexes)",
            self.bitmig.seconds,
            self.rows,
            &self.bitmig.cpu,
            self.bitmig.programs_cpu_s(),
            "postgres",
        ));
        out.push(super::copy::bitmig_programs_line(&self.bitmig));
        out.push(format!(
            "  pgloader CPU {:.1} s, peak RSS {:.0} MB; bitmig copy {:.2} s + indexes {:.2} s: {:.2}× pgloader",
            self.pgloader_cpu_s,
            self.pgloader_peak_rss_mb,
            self.bitmig_copy_seconds,
            self.bitmig_indexes_seconds,
            self.bitmig_to_pgloader
        ));
    }

    fn targets(&self) -> Vec<Target> {
        vec![
            Target::ratio("pg: bitmig / pgloader", self.bitmig_to_pgloader, 1.5),
            Target::rss(
                "pg: peak RSS, consumer (max)",
                self.bitmig.max_consumer_rss_mb(),
            ),
        ]
    }
}
