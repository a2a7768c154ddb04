//! Phase `pg-mariadb` (issue 17): PostgreSQL into MariaDB. The source is PostgreSQL `orders`, made with the
//! same ids and values as MariaDB's (checked: equal row hash). No migration tool of the pgloader kind goes
//! this way, so the peer is what a DBA would type: `COPY orders TO STDOUT` piped into
//! `LOAD DATA LOCAL INFILE` (PostgreSQL's text format and LOAD DATA's defaults agree: tab-separated, `\N`
//! for NULL, backslash escapes). bitmig (producer + 2 consumers) writes into `t_from_pg`. Both MariaDB targets
//! must have MariaDB `orders`' COUNT and CHECKSUM TABLE before a figure counts.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::bitmig::{CopyRun, JobSpec};
use crate::mariadb::{check_equal, Db};
use crate::postgres::Pg;
use crate::results::{method_header, method_line, Section, Target};
use crate::sys::{self, PhaseCpu};
use crate::Bench;

#[derive(Debug, Serialize)]
pub struct Figures {
    pub rows: u64,
    pub copy_pipe_seconds: f64,
    pub copy_pipe_rows_per_s: f64,
    pub copy_pipe_phase: PhaseCpu,
    /// psql and the mariadb client together.
    pub copy_pipe_cpu_s: f64,
    pub bitmig: CopyRun,
    pub bitmig_to_copy_pipe: f64,
}

pub async fn run(b: &mut Bench) -> Result<Figures> {
    let rows = b.rows();
    let db = b.db()?.clone();
    let pg = super::pg(b).await?;
    println!("making PostgreSQL orders with the same rows");
    pg.generate_orders(rows).await?;
    check_equal(
        "PostgreSQL source",
        &("orders (MariaDB)".into(), db.row_hash("orders").await?),
        &[("orders (PostgreSQL)".into(), pg.row_hash("orders").await?)],
    )?;
    pg.exec("VACUUM ANALYZE orders").await?;

    println!("a. psql COPY orders TO STDOUT | mariadb LOAD DATA LOCAL INFILE into t_copy_pipe");
    db.fresh_table("t_copy_pipe", "orders").await?;
    db.settle().await?;
    pg.checkpoint().await?;
    let pipe = format!(
        "set -o pipefail; psql -X -q -v ON_ERROR_STOP=1 '{}' -c 'COPY orders TO STDOUT' | \
         mariadb --local-infile=1 --user=root --host=127.0.0.1 --port=3306 --default-character-set=utf8mb4 {} \
         -e \"LOAD DATA LOCAL INFILE '/dev/stdin' INTO TABLE t_copy_pipe CHARACTER SET utf8mb4\"",
        Pg::url(&pg.name),
        db.name
    );
    let mut phase = PhaseCpu::begin("copy_pipe");
    let (code, seconds, pipe_usage) = sys::run_timed(
        "copy-pipe",
        &b.logs,
        &b.tmp,
        b.opts.timeout,
        "bash",
        &["-c".into(), pipe],
    )
    .await?;
    phase.end();
    if code != 0 {
        bail!(
            "COPY | LOAD DATA failed (exit {code}):\n{}",
            sys::tail(&b.logs.join("copy-pipe.log"), 20)
        );
    }
    println!("took {seconds:.3} s");

    let name = b.job_name("pgmy");
    println!("b. bitmig: producer + 2 consumers (job '{name}' from PostgreSQL into t_from_pg)");
    db.fresh_table("t_from_pg", "orders").await?;
    let job = b.job(
        &name,
        &JobSpec {
            source_url: &Pg::url(&pg.name),
            source_table: "orders",
            target_url: &Db::url(&db.name),
            target_table: "t_from_pg",
            extra: "",
        },
    )?;
    db.settle().await?;
    pg.checkpoint().await?;
    let bitmig = b.copy("bitmig_from_pg", &job, rows).await?;

    println!("checking both targets against the source (COUNT(*), CHECKSUM TABLE)");
    check_equal(
        "PostgreSQL → MariaDB",
        &("orders (MariaDB)".into(), db.fingerprint("orders").await?),
        &[
            ("t_copy_pipe".into(), db.fingerprint("t_copy_pipe").await?),
            ("t_from_pg".into(), db.fingerprint("t_from_pg").await?),
        ],
    )?;
    let copy_pipe_rows_per_s = rows as f64 / seconds;
    Ok(Figures {
        rows,
        copy_pipe_seconds: seconds,
        copy_pipe_rows_per_s,
        copy_pipe_phase: phase,
        copy_pipe_cpu_s: pipe_usage.cpu_s,
        bitmig_to_copy_pipe: bitmig.rows_per_s / copy_pipe_rows_per_s,
        bitmig,
    })
}

impl Section for Figures {
    fn lines(&self, out: &mut Vec<String>) {
        out.push(format!("pg-mariadb: PostgreSQL → MariaDB, {} rows (no target in the issues: shown, not judged)", self.rows));
        out.push(method_header("MariaDB"));
        out.push(method_line(
            "COPY | LOAD DATA LOCAL",
            self.copy_pipe_seconds,
            self.rows,
            &self.copy_pipe_phase,
            self.copy_pipe_cpu_s,
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
        out.push(super::copy::bitmig_programs_line(&self.bitmig));
        out.push(format!(
            "  bitmig {:.2}× COPY | LOAD DATA",
            self.bitmig_to_copy_pipe
        ));
    }

    fn targets(&self) -> Vec<Target> {
        vec![Target::rss(
            "pg-mariadb: peak RSS, consumer (max)",
            self.bitmig.max_consumer_rss_mb(),
        )]
    }
}
