//! `indexes`: once the copy is complete, give every target table bitmig created (`[target] create =
//! true`, listed in `bitmig:{JOB}:created`) the source table's secondary indexes, as pgloader does after
//! loading: one sorted build per index instead of an index entry written with every row. What is made,
//! found present, left out (and why) and refused is said per table and index (see
//! [`bitmig_shared::sink::indexes`]); a table whose indexes are all settled is added to
//! `bitmig:{JOB}:indexed`, which `report` reads.
//!
//! The job must be complete (`report`'s rule): an index built while rows still arrive would cost every
//! later row its entry again. A following job stays complete while it catches up, so its indexes are built
//! while changes still land; PostgreSQL's `CREATE INDEX` holds writes to the table for its duration.

use anyhow::Context;
use bitmig_shared::cli::BadInput;
use bitmig_shared::job::{JobSpec, TableName, TargetSpec};
use bitmig_shared::ledger::Ledger;
use bitmig_shared::sink::indexes::{source_indexes, IndexTarget, Made, Outcome};
use serde::Serialize;
use tracing::{info, warn};

/// What `indexes` did, table by table.
#[derive(Debug, Default, Serialize)]
pub struct IndexesSummary {
    pub job: String,
    /// The source table's secondary indexes.
    pub source_indexes: u64,
    pub tables: Vec<TableIndexes>,
    pub created: u64,
    pub present: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Why nothing was built (the job is not complete yet), if so.
    pub not_complete: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TableIndexes {
    pub table: String,
    /// The table was listed as created but is not there (dropped since).
    pub missing: bool,
    pub indexes: Vec<Made>,
}

impl IndexesSummary {
    /// Every index that could be made is there.
    pub fn clean(&self) -> bool {
        self.not_complete.is_none() && self.failed == 0
    }
}

impl std::fmt::Display for IndexesSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(why) = &self.not_complete {
            return writeln!(
                f,
                "job {}: no index built, the copy is not complete: {why}",
                self.job
            );
        }
        writeln!(
            f,
            "job {}: {} secondary indexes on the source, {} tables created by bitmig: {} built, {} present, {} skipped, {} failed",
            self.job,
            self.source_indexes,
            self.tables.len(),
            self.created,
            self.present,
            self.skipped,
            self.failed
        )?;
        for t in &self.tables {
            if t.missing {
                writeln!(f, "  {}: not there any more", t.table)?;
                continue;
            }
            for m in &t.indexes {
                let name = m.name.as_deref().unwrap_or("-");
                match &m.outcome {
                    Outcome::Created { seconds } => writeln!(
                        f,
                        "  {}: {} built as {name} in {seconds:.2} s",
                        t.table, m.index
                    )?,
                    Outcome::Present => writeln!(
                        f,
                        "  {}: {} present (an index on the same columns)",
                        t.table, m.index
                    )?,
                    Outcome::Skipped { reason } => {
                        writeln!(f, "  {}: {} skipped: {reason}", t.table, m.index)?
                    }
                    Outcome::Failed { error } => {
                        writeln!(f, "  {}: {} FAILED: {error}", t.table, m.index)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// Build the source's secondary indexes on the tables bitmig created, once the job is complete.
pub async fn indexes(job: &JobSpec, redis_url: &str) -> anyhow::Result<IndexesSummary> {
    let TargetSpec::Sql(target) = &job.target else {
        return Err(BadInput(format!(
            "job `{}` writes to Elasticsearch: `indexes` builds SQL indexes on the tables bitmig created",
            job.name
        ))
        .into());
    };
    if !target.create {
        return Err(BadInput(format!(
            "job `{}` has no `[target] create = true`: bitmig created no table, so it adds no index (the \
             operator's own tables keep the indexes they were given)",
            job.name
        ))
        .into());
    }
    let mut summary = IndexesSummary {
        job: job.name.clone(),
        ..Default::default()
    };
    let report = crate::report(job, redis_url).await?;
    if !report.complete {
        summary.not_complete = Some(report.reasons.join("; "));
        return Ok(summary);
    }
    let ledger = Ledger::connect(redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    let source = source_indexes(&job.source)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    summary.source_indexes = source.len() as u64;
    let (created, _indexed) = ledger.created_tables().await?;
    let mut target_db = IndexTarget::connect(&target.url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for name in created {
        let table = TableName::parse(&name)
            .map_err(|e| anyhow::anyhow!("{} lists `{name}`: {e}", ledger.job_key("created")))?;
        let made = target_db
            .make_on(&job.source, &table, &source)
            .await
            .map_err(|e| anyhow::anyhow!("{table}: {e}"))?;
        let Some(made) = made else {
            warn!(table = %table, "listed as created by bitmig, but not there: no index made");
            summary.tables.push(TableIndexes {
                table: name,
                missing: true,
                indexes: Vec::new(),
            });
            continue;
        };
        let mut failed = false;
        for m in &made {
            match &m.outcome {
                Outcome::Created { seconds } => {
                    summary.created += 1;
                    info!(table = %table, index = %m.index, seconds, "index built");
                }
                Outcome::Present => summary.present += 1,
                Outcome::Skipped { reason } => {
                    summary.skipped += 1;
                    info!(table = %table, index = %m.index, reason = %reason, "index skipped");
                }
                Outcome::Failed { error } => {
                    summary.failed += 1;
                    failed = true;
                    warn!(table = %table, index = %m.index, error = %error, "index refused by the target");
                }
            }
        }
        if !failed {
            ledger.mark_indexed(&name).await?;
        }
        summary.tables.push(TableIndexes {
            table: name,
            missing: false,
            indexes: made,
        });
    }
    target_db.close().await;
    Ok(summary)
}
