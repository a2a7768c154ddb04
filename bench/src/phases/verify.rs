//! Phase `verify` (issue 13): `bitmig-compensator verify` over the finished MariaDB → MariaDB copy, beside
//! `CHECKSUM TABLE` on source and target (the server-side limit) and `pt-table-checksum
//! --recursion-method=none` run over the source and over the target (its checksums table kept in the
//! benchmark's own database); then verify over the finished MariaDB → PostgreSQL copy, as rows/s. Each
//! verify must exit 0 with every group verified equal before its figure counts (the copies were checked equal
//! to the source by the phase that made them).

use std::time::Instant;

use anyhow::{ensure, Result};
use serde::Serialize;

use crate::bitmig::Timed;
use crate::results::{Section, Target};
use crate::sys::{self, round3, PhaseCpu};
use crate::Bench;

#[derive(Debug, Serialize)]
pub struct Figures {
    pub rows: u64,
    pub verify_mariadb: Timed,
    pub verify_mariadb_rows_per_s: f64,
    pub checksum_table_source_s: f64,
    pub checksum_table_target_s: f64,
    pub pt_table_checksum_source_s: f64,
    pub pt_table_checksum_target_s: f64,
    pub verify_pg: Timed,
    pub verify_pg_rows_per_s: f64,
    #[serde(flatten)]
    pub cpu: PhaseCpu,
}

async fn pt_table_checksum(b: &Bench, table: &str) -> Result<f64> {
    let db = b.db()?.name.clone();
    let args: Vec<String> = vec![
        "--recursion-method=none".into(),
        "--no-check-binlog-format".into(),
        "--no-check-replication-filters".into(),
        "--no-version-check".into(),
        format!("--replicate={db}.checksums"),
        format!("--databases={db}"),
        format!("--tables={table}"),
        "h=127.0.0.1,P=3306,u=root".into(),
    ];
    let name = format!("pt-table-checksum.{table}");
    let (code, seconds, _) = sys::run_timed(
        &name,
        &b.logs,
        &b.tmp,
        b.opts.timeout,
        "pt-table-checksum",
        &args,
    )
    .await?;
    ensure!(
        code == 0,
        "pt-table-checksum over {table} exited with {code}:\n{}",
        sys::tail(&b.logs.join(format!("{name}.log")), 20)
    );
    println!("  pt-table-checksum {table}: {seconds:.3} s");
    Ok(seconds)
}

async fn verify(b: &Bench, name: &str, job: &crate::bitmig::Job) -> Result<Timed> {
    let t = b.compensator(name, &["verify", "--json"], job).await?;
    println!(
        "  verify ({name}): {:.3} s, exit {}, peak RSS {:.1} MB: {}",
        t.seconds,
        t.exit,
        t.usage.peak_rss_mb,
        t.stdout.chars().take(200).collect::<String>()
    );
    ensure!(
        t.exit == 0,
        "verify over job '{}' did not say equal (exit {}; see {}/{name}.log)",
        job.name,
        t.exit,
        b.logs.display()
    );
    let j = t.json()?;
    ensure!(
        j["groups_differing"] == 0
            && j["groups_verified"].as_u64().unwrap_or(0) > 0
            && j["source_rows"] == b.rows(),
        "verify did not verify every row equal: {j}"
    );
    Ok(t)
}

async fn checksum_table(b: &Bench, table: &str) -> Result<f64> {
    let t0 = Instant::now();
    b.db()?.fingerprint(table).await?;
    let s = round3(t0.elapsed().as_secs_f64());
    println!("  CHECKSUM TABLE {table} (and COUNT): {s:.3} s");
    Ok(s)
}

pub async fn run(b: &mut Bench) -> Result<Figures> {
    let rows = b.rows();
    let job = super::finished_mariadb_job(b).await?;
    let pg_job = super::finished_pg_job(b).await?;
    let db = b.db()?.clone();
    db.settle().await?;
    let mut cpu = PhaseCpu::begin("verify");
    let verify_mariadb = verify(b, "verify.mariadb", &job).await?;
    let checksum_table_source_s = checksum_table(b, "orders").await?;
    let checksum_table_target_s = checksum_table(b, "t_bitmig").await?;
    let pt_table_checksum_source_s = pt_table_checksum(b, "orders").await?;
    let pt_table_checksum_target_s = pt_table_checksum(b, "t_bitmig").await?;
    let verify_pg = verify(b, "verify.pg", &pg_job).await?;
    cpu.end();
    Ok(Figures {
        rows,
        verify_mariadb_rows_per_s: rows as f64 / verify_mariadb.seconds,
        verify_pg_rows_per_s: rows as f64 / verify_pg.seconds,
        verify_mariadb,
        checksum_table_source_s,
        checksum_table_target_s,
        pt_table_checksum_source_s,
        pt_table_checksum_target_s,
        verify_pg,
        cpu,
    })
}

impl Section for Figures {
    fn lines(&self, out: &mut Vec<String>) {
        out.push(format!(
            "verify: {} rows, both sides (load avg before {})",
            self.rows, self.cpu.load_before
        ));
        let v = |t: &Timed| {
            format!(
                "{:>8.3} s  peak RSS {:>6.1} MB  CPU {:.1} s",
                t.seconds, t.usage.peak_rss_mb, t.usage.cpu_s
            )
        };
        out.push(format!(
            "  {:<52}{}  {:>9.0} rows/s",
            "bitmig verify, MariaDB → MariaDB",
            v(&self.verify_mariadb),
            self.verify_mariadb_rows_per_s
        ));
        out.push(format!(
            "  {:<52}{}  {:>9.0} rows/s",
            "bitmig verify, MariaDB → PostgreSQL",
            v(&self.verify_pg),
            self.verify_pg_rows_per_s
        ));
        out.push(format!(
            "  {:<52}{:>8.3} s (source {:.3} + target {:.3})",
            "CHECKSUM TABLE, both sides",
            self.checksum_table_source_s + self.checksum_table_target_s,
            self.checksum_table_source_s,
            self.checksum_table_target_s
        ));
        out.push(format!(
            "  {:<52}{:>8.3} s (source {:.3} + target {:.3})",
            "pt-table-checksum --recursion-method=none, both",
            self.pt_table_checksum_source_s + self.pt_table_checksum_target_s,
            self.pt_table_checksum_source_s,
            self.pt_table_checksum_target_s
        ));
    }

    fn targets(&self) -> Vec<Target> {
        let pt = self.pt_table_checksum_source_s + self.pt_table_checksum_target_s;
        vec![
            Target::at_most(
                "verify MariaDB→MariaDB vs pt-table-checksum ×2",
                self.verify_mariadb.seconds,
                pt,
                format!("{:.3} s", self.verify_mariadb.seconds),
                &format!("{pt:.3} s"),
            ),
            Target::at_least(
                "verify MariaDB→PostgreSQL rows/s",
                self.verify_pg_rows_per_s,
                150_000.0,
                format!("{:.0}", self.verify_pg_rows_per_s),
                "150000",
            ),
            Target::rss(
                "verify peak RSS (max)",
                self.verify_mariadb
                    .usage
                    .peak_rss_mb
                    .max(self.verify_pg.usage.peak_rss_mb),
            ),
        ]
    }
}
