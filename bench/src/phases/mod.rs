//! One module per phase. Each `run` prepares its own tables, times its methods one after the other on the
//! same data, checks every target against the source, and only then returns its figures (a `Section` of the
//! table, with the issues' targets).
//!
//! Shared here: the generated source (`orders` in MariaDB database `bitmig_NAME`, made once per run), and
//! the two finished bitmig copies later phases reuse (verify needs a complete job; it copies untimed when
//! the phase that times the copy was not selected).

pub mod archive;
pub mod copy;
pub mod follow;
pub mod ledger;
pub mod pg;
pub mod pg_mariadb;
pub mod verify;

use std::time::Instant;

use anyhow::{Context, Result};

use crate::bitmig::{Job, JobSpec};
use crate::mariadb::{check_equal, Db};
use crate::postgres::Pg;
use crate::Bench;

/// Drops and refills MariaDB database `bitmig_NAME` with `orders` of `--rows` rows; keeps its fingerprint.
pub async fn generate_source(b: &mut Bench) -> Result<()> {
    let name = b.db_name();
    println!("\n==> generating {} rows in {name}.orders", b.rows());
    let db = Db::recreate(&name).await?;
    let t0 = Instant::now();
    db.generate_orders(b.rows()).await?;
    let range: String = db
        .value("SELECT CONCAT(MIN(id), ' .. ', MAX(id)) FROM orders")
        .await?;
    println!(
        "generated {} rows in {:.1} s; ids {range}",
        b.rows(),
        t0.elapsed().as_secs_f64()
    );
    b.source = Some(db.fingerprint("orders").await?);
    b.db = Some(db);
    Ok(())
}

/// The PostgreSQL database `bitmig_NAME`, made empty the first time a phase of this run asks for it.
pub async fn pg(b: &mut Bench) -> Result<Pg> {
    let name = b.db_name();
    if b.pg_ready {
        Pg::open(&name).await
    } else {
        let pg = Pg::recreate(&name).await?;
        b.pg_ready = true;
        Ok(pg)
    }
}

/// The job copying MariaDB `orders` into MariaDB `t_bitmig`.
pub fn mariadb_job(b: &Bench) -> Result<Job> {
    let url = Db::url(&b.db_name());
    b.job(
        &b.job_name(""),
        &JobSpec {
            source_url: &url,
            source_table: "orders",
            target_url: &url,
            target_table: "t_bitmig",
            extra: "",
        },
    )
}

/// The job copying MariaDB `orders` into PostgreSQL `t_bitmig`.
pub fn pg_job(b: &Bench) -> Result<Job> {
    b.job(
        &b.job_name("pg"),
        &JobSpec {
            source_url: &Db::url(&b.db_name()),
            source_table: "orders",
            target_url: &Pg::url(&b.db_name()),
            target_table: "t_bitmig",
            // As pgloader's `create tables, create indexes`: the table made from the source's columns, its
            // secondary indexes by `compensator indexes` after the copy (the pg phase times both).
            extra: "create = true\n",
        },
    )
}

/// The copy phase's job, finished: reused when the copy phase ran, else copied now (not timed).
pub async fn finished_mariadb_job(b: &mut Bench) -> Result<Job> {
    if let Some(j) = &b.mariadb_job {
        return Ok(j.clone());
    }
    println!("(copying orders → t_bitmig with bitmig first: the copy phase did not run)");
    let db = b.db()?.clone();
    db.fresh_table("t_bitmig", "orders").await?;
    let job = mariadb_job(b)?;
    b.copy("setup_copy", &job, b.rows()).await?;
    check_equal(
        "MariaDB → MariaDB copy",
        &(
            "orders".into(),
            b.source.clone().context("no source fingerprint")?,
        ),
        &[("t_bitmig".into(), db.fingerprint("t_bitmig").await?)],
    )?;
    b.mariadb_job = Some(job.clone());
    Ok(job)
}

/// The pg phase's job, finished: reused when the pg phase ran, else copied now (not timed).
pub async fn finished_pg_job(b: &mut Bench) -> Result<Job> {
    if let Some(j) = &b.pg_job {
        return Ok(j.clone());
    }
    println!("(copying orders → PostgreSQL t_bitmig with bitmig first: the pg phase did not run)");
    let pg = pg(b).await?;
    pg.create_orders_like("t_bitmig").await?;
    let job = pg_job(b)?;
    b.copy("setup_copy_pg", &job, b.rows()).await?;
    let source = b.db()?.row_hash("orders").await?;
    check_equal(
        "MariaDB → PostgreSQL copy",
        &("orders (MariaDB)".into(), source),
        &[(
            "t_bitmig (PostgreSQL)".into(),
            pg.row_hash("t_bitmig").await?,
        )],
    )?;
    b.pg_job = Some(job.clone());
    Ok(job)
}
