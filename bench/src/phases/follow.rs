//! Phase `follow` (issue 12): the copy of a table the application keeps writing, with `bitmig-producer
//! --follow` (binlog) and 2 consumers, against the same copy without the writer.
//!
//! The source is `follow_src`: `orders` plus a `stamp` column (indexed). The writer makes `--follow-rate`
//! changes/s for `--follow-secs` s from 16 connections (autocommit; per 10 changes: 2 inserts above the copied
//! range, 1 delete, 7 updates of random ids), starting with the producer; every insert and update writes
//! `stamp` = its wall-clock time in µs just before the statement, i.e. its commit time within the statement's
//! latency. The lag is measured from outside, on a heartbeat row of its own (id `MAX(id) + 500`, which the
//! writer never touches): every 100 ms the poller stamps it in the source with the time, then reads its stamp
//! in the target: `lag = now − the stamp applied` (issue 12's "now − commit time of the last applied change";
//! before the row is applied, now − the writer's start). Any batch reads a row as it is then, so the newest
//! stamp of the whole target (a re-drive of an older change reads the newest) would hide a backlog; one row
//! changed ten times a second shows the pipeline's delay: the follower's window, the work queue, the write.
//! Samples are split at the moment the copy is done: while copying (catch-up waits behind the walk's batches)
//! and after (steady following, the p99 ≤ 1 s).
//!
//! The copy is done when the producer's walk is `done` (`report --json`) and every id published up to the
//! start's `MAX(id)` has landed or been found gone (`src ∧ ¬(tgt ∨ gone)` empty there,
//! [`Bench::not_landed`]): the ids the walk read, and the changes to them. The writer's inserts go above
//! that id and are not counted: at 2 000 changes/s, one second of latency keeps 2 000 ids in flight all the
//! time, so "nothing missing" anywhere would say when the writer stops, not when the copy is done. Rows/s of the
//! copy = the source's rows / that time; the baseline is the same copy of the same table without the writer
//! and without `--follow`. After the writer stops: the time until the target holds the newest stamp
//! (`drain_s`), then `report` must say `caught_up`, then the programs get SIGTERM and the target must have the
//! source's COUNT and CHECKSUM TABLE before any figure counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mysql_async::prelude::*;
use rand::Rng;
use serde::Serialize;

use crate::bitmig::{CopyRun, JobSpec, CONSUMERS};
use crate::mariadb::{check_equal, Db};
use crate::results::{Section, Target};
use crate::sys::{self, round3, Measured, PhaseCpu, Usage};
use crate::Bench;

/// Connections of the writer: each change is its own autocommit transaction (a log flush each), so one
/// connection cannot make 2 000/s.
const WRITERS: u64 = 16;

/// Lag percentiles over a set of samples, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lag {
    pub samples: usize,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

impl Lag {
    fn of(samples: &[f64]) -> Lag {
        if samples.is_empty() {
            return Lag::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Lag {
            samples: v.len(),
            p50_s: round3(at(0.50)),
            p99_s: round3(at(0.99)),
            max_s: round3(v[v.len() - 1]),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} samples)",
            self.p50_s, self.p99_s, self.max_s, self.samples
        )
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterStats {
    pub changes: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    /// Changes that found no row (an update or delete of an id in a gap or already deleted).
    pub no_row: u64,
    pub seconds: f64,
    pub changes_per_s: f64,
}

/// Seconds the writer runs alone at the end of the phase.
const ALONE_SECS: u64 = 15;

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterAlone {
    pub writer: WriterStats,
    /// CPU seconds per second of the writer's run: MariaDB's, and the whole machine's (the writer program
    /// included), out of `nproc`.
    pub mariadb_cores: f64,
    pub machine_cores: f64,
    pub nproc: u64,
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub rows: u64,
    pub target_rate: u64,
    pub writer: WriterStats,
    pub baseline: CopyRun,
    pub copy_with_writer_seconds: f64,
    pub copy_with_writer_rows_per_s: f64,
    pub with_to_without: f64,
    pub lag_all: Lag,
    pub lag_while_copying: Lag,
    pub lag_after_copy: Lag,
    pub drain_s: f64,
    pub caught_up_s: f64,
    /// The writer alone (no bitmig program running) for [`ALONE_SECS`]: the share of the machine its
    /// changes cost, which the copy cannot have.
    pub writer_alone: WriterAlone,
    pub producer: Usage,
    pub consumers: Vec<Usage>,
    #[serde(flatten)]
    pub cpu: PhaseCpu,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The id of the generated row number `seq` (see `mariadb::GENERATE`).
fn id_of(seq: u64, rows: u64) -> u64 {
    1 + seq + 3 * (seq / 7) + if seq >= rows / 2 { 25_000 } else { 0 }
}

async fn writer(
    db: Db,
    rows: u64,
    rate: u64,
    secs: u64,
    first_new_id: u64,
    stop: Arc<AtomicBool>,
) -> Result<WriterStats> {
    let total = rate * secs;
    let start = Instant::now();
    let no_row = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let db = db.clone();
        let stop = stop.clone();
        let no_row = no_row.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = db.conn().await?;
            let (mut ins, mut upd, mut del) = (0u64, 0u64, 0u64);
            let mut k = w;
            while k < total && !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let seq = rand::rng().random_range(0..rows);
                let stamp = now_us();
                let affected = match k % 10 {
                    0 | 1 => {
                        ins += 1;
                        c.exec_drop(
                            "INSERT INTO follow_src (id, user_id, amount, status, note, created_at, updated_at, stamp) \
                             VALUES (?, 1, 1.00, 1, 'follow', NOW(), NOW(), ?)",
                            (first_new_id + k, stamp),
                        )
                        .await?;
                        c.affected_rows()
                    }
                    2 => {
                        del += 1;
                        c.exec_drop("DELETE FROM follow_src WHERE id = ?", (id_of(seq, rows),)).await?;
                        c.affected_rows()
                    }
                    _ => {
                        upd += 1;
                        c.exec_drop(
                            "UPDATE follow_src SET amount = amount + 1, updated_at = NOW(), stamp = ? WHERE id = ?",
                            (stamp, id_of(seq, rows)),
                        )
                        .await?;
                        c.affected_rows()
                    }
                };
                if affected == 0 {
                    no_row.fetch_add(1, Ordering::Relaxed);
                }
                k += WRITERS;
            }
            anyhow::Ok((ins, upd, del))
        }));
    }
    let mut s = WriterStats::default();
    for t in tasks {
        let (i, u, d) = t.await??;
        s.inserts += i;
        s.updates += u;
        s.deletes += d;
    }
    s.changes = s.inserts + s.updates + s.deletes;
    s.no_row = no_row.load(Ordering::Relaxed);
    s.seconds = round3(start.elapsed().as_secs_f64());
    s.changes_per_s = sys::round2(s.changes as f64 / s.seconds);
    Ok(s)
}

pub async fn run(b: &mut Bench) -> Result<Figures> {
    let rows = b.rows();
    let db: Db = b.db()?.clone();
    println!("making follow_src (orders + an indexed stamp column)");
    db.exec(
        "DROP TABLE IF EXISTS follow_src; CREATE TABLE follow_src LIKE orders;
         ALTER TABLE follow_src ADD COLUMN stamp BIGINT NULL, ADD KEY idx_follow_src_stamp (stamp);
         INSERT INTO follow_src (id, user_id, amount, status, note, created_at, updated_at) SELECT * FROM orders",
    )
    .await?;
    let max_id: u64 = db.value("SELECT MAX(id) FROM follow_src").await?;
    let url = Db::url(&db.name);

    println!("a. without the writer: bitmig copy of follow_src into t_follow_base");
    db.fresh_table("t_follow_base", "follow_src").await?;
    let base_job = b.job(
        &b.job_name("fbase"),
        &JobSpec {
            source_url: &url,
            source_table: "follow_src",
            target_url: &url,
            target_table: "t_follow_base",
            extra: "",
        },
    )?;
    db.settle().await?;
    let baseline = b.copy("follow_baseline", &base_job, rows).await?;
    check_equal(
        "follow baseline",
        &("follow_src".into(), db.fingerprint("follow_src").await?),
        &[(
            "t_follow_base".into(),
            db.fingerprint("t_follow_base").await?,
        )],
    )?;
    b.clear_job(&base_job.name).await?;

    let name = b.job_name("follow");
    let server_id: u32 = rand::rng().random_range(100_000..900_000);
    println!(
        "b. with the writer ({} changes/s for {} s): bitmig-producer --follow (binlog, server_id {server_id}) + {CONSUMERS} consumers into t_follow",
        b.opts.follow_rate, b.opts.follow_secs
    );
    db.fresh_table("t_follow", "follow_src").await?;
    // The lag's heartbeat row: above the copied range, below the writer's inserts.
    let heartbeat = max_id + 500;
    db.exec(&format!(
        "INSERT INTO follow_src (id, user_id, amount, status, note, created_at, updated_at, stamp) \
         VALUES ({heartbeat}, 1, 1.00, 1, 'heartbeat', NOW(), NOW(), 0)"
    ))
    .await?;
    let job = b.job(
        &name,
        &JobSpec {
            source_url: &url,
            source_table: "follow_src",
            target_url: &url,
            target_table: "t_follow",
            extra: &format!("\n[follow]\nfrom = \"binlog\"\nserver_id = {server_id}\n"),
        },
    )?;
    b.clear_job(&name).await?;
    db.settle().await?;
    let mut consumers = b.start_consumers(&job, CONSUMERS, false).await?;
    let mut cpu = PhaseCpu::begin("follow");
    let t0 = Instant::now();
    let start_us = now_us();
    let mut producer = Measured::spawn(
        &format!("{name}.producer"),
        &b.logs,
        &b.tmp,
        b.opts.timeout,
        b.program("bitmig-producer"),
        &[
            "--job".into(),
            job.file.display().to_string(),
            "--follow".into(),
        ],
    )?;
    let stop_writer = Arc::new(AtomicBool::new(false));
    let writer_at = t0.elapsed().as_secs_f64();
    let writer_task = tokio::spawn(writer(
        db.clone(),
        rows,
        b.opts.follow_rate,
        b.opts.follow_secs,
        max_id + 1_000,
        stop_writer.clone(),
    ));
    // The poller: (seconds since start, lag) every 100 ms until told to stop.
    let stop_poller = Arc::new(AtomicBool::new(false));
    let poller_task = {
        let db = db.clone();
        let stop = stop_poller.clone();
        tokio::spawn(async move {
            let mut c = db.conn().await?;
            let mut samples: Vec<(f64, f64, i64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                c.exec_drop(
                    "UPDATE follow_src SET stamp = ? WHERE id = ?",
                    (now_us(), heartbeat),
                )
                .await?;
                let applied: i64 = c
                    .exec_first(
                        "SELECT COALESCE(stamp, 0) FROM t_follow WHERE id = ?",
                        (heartbeat,),
                    )
                    .await?
                    .unwrap_or(0);
                let now = now_us();
                let lag = (now - applied.max(start_us)) as f64 / 1e6;
                samples.push((t0.elapsed().as_secs_f64(), lag, applied));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(samples)
        })
    };

    let outcome = async {
        // The copy is done: the walk is done and every id it published has landed or is gone.
        let mut copy_seconds = None;
        while copy_seconds.is_none() {
            ensure!(
                producer.running(),
                "the producer exited:\n{}",
                sys::tail(&producer.log, 20)
            );
            let (_, r, _) = b.report(&job).await?;
            if r["producer"] == "done" && b.not_landed(&job.name, max_id).await? == 0 {
                copy_seconds = Some(round3(t0.elapsed().as_secs_f64()));
            } else {
                if t0.elapsed().as_secs() >= b.opts.timeout {
                    bail!(
                        "the copy with the writer was not done after {} s",
                        b.opts.timeout
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let copy_seconds = copy_seconds.context("copy time")?;
        println!("copy done after {copy_seconds:.3} s (the writer goes on)");
        anyhow::Ok(copy_seconds)
    }
    .await;
    let copy_seconds = match outcome {
        Ok(s) => s,
        Err(e) => {
            stop_writer.store(true, Ordering::Relaxed);
            stop_poller.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    let writer_stats = writer_task.await.context("writer task")??;
    // When the writer stopped (the copy may have been done after that).
    let writer_end = writer_at + writer_stats.seconds;
    println!(
        "writer: {} changes in {:.1} s = {:.0}/s ({} inserts, {} updates, {} deletes; {} found no row)",
        writer_stats.changes, writer_stats.seconds, writer_stats.changes_per_s,
        writer_stats.inserts, writer_stats.updates, writer_stats.deletes, writer_stats.no_row
    );
    let (_, r, _) = b.report(&job).await?;
    println!(
        "when the writer stopped: follower lag_s {}, work queue {}, missing ids {}",
        r["follow"]["lag_s"], r["queued"], r["missing_ids"]
    );
    // Drain: the target holds the newest stamp of the source.
    let newest_source: i64 = db
        .value("SELECT COALESCE(MAX(stamp), 0) FROM follow_src")
        .await?;
    sys::poll_until(
        "the target holding the writer's last change",
        Duration::from_millis(100),
        Duration::from_secs(300),
        || {
            let db = db.clone();
            async move {
                let t: i64 = db
                    .value("SELECT COALESCE(MAX(stamp), 0) FROM t_follow")
                    .await?;
                Ok(t >= newest_source)
            }
        },
    )
    .await?;
    let drain_s = round3(t0.elapsed().as_secs_f64() - writer_end);
    stop_poller.store(true, Ordering::Relaxed);
    let samples = poller_task.await.context("poller task")??;
    // caught_up: every group complete (the compensator marks them), queues empty, lag under a second.
    let caught_t0 = Instant::now();
    let limit = Duration::from_secs(300);
    loop {
        let run = b
            .compensator(
                &format!("{name}.run"),
                &["run", "--min-age", "0s", "--json"],
                &job,
            )
            .await?;
        ensure!(run.exit == 0, "compensator run failed (see its log)");
        let (_, r, _) = b.report(&job).await?;
        if r["caught_up"] == true {
            break;
        }
        if caught_t0.elapsed() > limit {
            bail!("report never said caught_up: {r}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let caught_up_s = round3(t0.elapsed().as_secs_f64() - writer_end);
    cpu.end();
    producer.terminate();
    for c in &consumers {
        c.terminate();
    }
    let producer_usage = producer.wait().await?.1;
    let mut consumer_usage = Vec::new();
    for c in consumers.drain(..) {
        consumer_usage.push(c.wait().await?.1);
    }
    println!("checking the target against the source (COUNT(*), CHECKSUM TABLE)");
    check_equal(
        "follow",
        &("follow_src".into(), db.fingerprint("follow_src").await?),
        &[("t_follow".into(), db.fingerprint("t_follow").await?)],
    )?;
    b.clear_job(&name).await?;

    // The writer alone, on the same table and rate: what its changes cost the machine.
    println!("c. the writer alone for {ALONE_SECS} s (no bitmig program running)");
    db.settle().await?;
    let mut alone_cpu = PhaseCpu::begin("follow_writer_alone");
    let alone = writer(
        db.clone(),
        rows,
        b.opts.follow_rate,
        ALONE_SECS,
        max_id + 1_000 + b.opts.follow_rate * b.opts.follow_secs + 1_000,
        Arc::new(AtomicBool::new(false)),
    )
    .await?;
    alone_cpu.end();
    let per_s = |k: &str| round3(alone_cpu.cpu_s.get(k).copied().unwrap_or(0.0) / alone.seconds);
    let writer_alone = WriterAlone {
        mariadb_cores: per_s("mariadb"),
        machine_cores: per_s("machine"),
        nproc: sys::nproc(),
        writer: alone,
    };

    let during = |from: f64, to: f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.0 >= from && s.0 < to)
            .map(|s| s.1)
            .collect()
    };
    let copy_with_writer_rows_per_s = rows as f64 / copy_seconds;
    Ok(Figures {
        rows,
        target_rate: b.opts.follow_rate,
        lag_all: Lag::of(&during(0.0, writer_end)),
        lag_while_copying: Lag::of(&during(0.0, copy_seconds.min(writer_end))),
        lag_after_copy: Lag::of(&during(copy_seconds, writer_end)),
        writer: writer_stats,
        with_to_without: copy_with_writer_rows_per_s / baseline.rows_per_s,
        baseline,
        copy_with_writer_seconds: copy_seconds,
        copy_with_writer_rows_per_s,
        drain_s,
        caught_up_s,
        writer_alone,
        producer: producer_usage,
        consumers: consumer_usage,
        cpu,
    })
}

impl Section for Figures {
    fn lines(&self, out: &mut Vec<String>) {
        out.push(format!(
            "follow: {} rows copied while a writer made {} changes in {:.1} s ({:.0}/s of {}/s asked; load avg before {})",
            self.rows, self.writer.changes, self.writer.seconds, self.writer.changes_per_s, self.target_rate, self.cpu.load_before
        ));
        out.push(format!(
            "  copy without the writer {:.2} s = {:.0} rows/s; with it (and --follow) {:.2} s = {:.0} rows/s: {:.2}×",
            self.baseline.seconds, self.baseline.rows_per_s, self.copy_with_writer_seconds,
            self.copy_with_writer_rows_per_s, self.with_to_without
        ));
        out.push(format!(
            "  lag while copying: {}",
            self.lag_while_copying.line()
        ));
        out.push(format!(
            "  lag after the copy: {}",
            self.lag_after_copy.line()
        ));
        out.push(format!("  lag, whole run:     {}", self.lag_all.line()));
        out.push(format!(
            "  after the writer stopped: last change applied in {:.2} s, report caught_up in {:.2} s; peak RSS producer {:.1} MB, consumers {}",
            self.drain_s,
            self.caught_up_s,
            self.producer.peak_rss_mb,
            self.consumers.iter().map(|c| format!("{:.1} MB", c.peak_rss_mb)).collect::<Vec<_>>().join(", ")
        ));
        let a = &self.writer_alone;
        out.push(format!(
            "  the writer alone: {:.0} changes/s cost MariaDB {:.2} cores and the machine {:.2} of its {} cores",
            a.writer.changes_per_s, a.mariadb_cores, a.machine_cores, a.nproc
        ));
    }

    fn targets(&self) -> Vec<Target> {
        let mut lag = Target::seconds(
            "follow: p99 lag after the copy",
            self.lag_after_copy.p99_s,
            1.0,
        );
        if self.lag_after_copy.samples == 0 {
            // The copy ended only after the writer stopped: nothing was measured, nothing passes.
            lag.pass = false;
            lag.shown = "no samples".into();
        }
        vec![
            lag,
            Target::ratio(
                "follow: copy rows/s with / without writer",
                self.with_to_without,
                0.8,
            ),
            Target::rss(
                "follow: peak RSS, producer --follow",
                self.producer.peak_rss_mb,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_sample_at_or_above_the_rank() {
        let v: Vec<f64> = (1..=100).map(|i| i as f64 / 100.0).collect();
        let l = Lag::of(&v);
        assert_eq!(
            (l.samples, l.p50_s, l.p99_s, l.max_s),
            (100, 0.5, 0.99, 1.0)
        );
        let one = Lag::of(&[0.25]);
        assert_eq!((one.p50_s, one.p99_s, one.max_s), (0.25, 0.25, 0.25));
        assert_eq!(Lag::of(&[]).samples, 0);
    }

    #[test]
    fn ids_follow_the_generated_gaps_and_the_hole_after_half_the_rows() {
        // 7 ids, then 3 missing: seq 0..6 → 1..7, seq 7 → 11.
        assert_eq!(id_of(0, 100), 1);
        assert_eq!(id_of(6, 100), 7);
        assert_eq!(id_of(7, 100), 11);
        // From seq rows/2 on, 25 000 higher.
        assert_eq!(id_of(49, 100), 1 + 49 + 3 * 7);
        assert_eq!(id_of(50, 100), 1 + 50 + 3 * 7 + 25_000);
    }
}
