//! `bitmig-compensator verify`: prove, group by group, that every target row equals its source row
//! (DESIGN.md §9), and re-drive what differs.
//!
//! Per group of the ledger (or of `--groups FIRST..LAST`): the source's rows of the group's id range (with
//! `filter`) and the target's rows with keys in that range across every table of the job (the route's own
//! list and `bitmig:{JOB}:tables`) are hashed with the canonical encoding of [`bitmig_shared::digest`] into
//! chunk digests. Equal digests: the group is equal. Otherwise both sides' `(key, hash)` are merged by key
//! and each differing id is classified `missing`, `extra` or `differs` (naming the columns).
//!
//! The source is live, so a difference counts only if it is still there after `--recheck-after`: every
//! differing group is compared again then, and only the ids that differ both times are recorded — the
//! group's `diff` bitmap, meta `verify`/`verified_at`/`differs`, a sample of at most 1 000 in
//! `bitmig:{JOB}:diffs` — and, with `--redrive`, re-published as `verify` batches (a consumer writes or
//! deletes them, §8.3). An equal group gets `verify = equal` and its `diff` bitmap is removed.
//!
//! Where the rows are: rows are read by key range, [`READ_KEYS`] ids at a time per side, source and target
//! concurrently, so memory holds one such piece whatever `group_size` is. MySQL/MariaDB → MySQL/MariaDB
//! jobs whose compared columns have the same types on both sides (every target table) push the hashing into
//! SQL ([`bitmig_shared::digest::pushdown`]): per group, one aggregate row per side crosses the network;
//! only when the two differ are per-chunk digests asked for, and only the differing chunks are read row by
//! row and classified as above. Otherwise (other engines, other types) the hashing is client-side.
//!
//! The source side of a piece is read in one place, [`Comparer::read`]: a filter on what the source is
//! expected to hold (purged ids) belongs there.
//!
//! A purged id (DESIGN.md §10) is expected absent from the source and present in the target: its `extra`
//! is dropped ([`without_archived`]) before anything is counted or re-driven.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitmig_shared::cli;
use bitmig_shared::digest::es::{differing_fields, DocHasher};
use bitmig_shared::digest::pushdown::{
    types_match, MysqlChecksum, MysqlColumnType, MYSQL_COLUMN_TYPES_SQL,
};
use bitmig_shared::digest::{merge_keyed, ChunkDigests, DiffKind, KeyDiff, RowEncoder, RowPlan};
use bitmig_shared::ids::group_last;
use bitmig_shared::job::{Engine, Ident, JobSpec, TableName, TargetSpec};
use bitmig_shared::ledger::{now_rfc3339, Ledger};
use bitmig_shared::progress::Progress;
use bitmig_shared::queue::Cause;
use bitmig_shared::sink::{self, DocumentTarget, Sink};
use bitmig_shared::source::{self, Source};
use bitmig_shared::value::RowSet;
use mysql_async::prelude::Queryable;
use serde::Serialize;
use tracing::info;

use crate::republish::Republisher;

/// At most this many differing ids are sampled into `bitmig:{JOB}:diffs`.
pub const SAMPLE_CAP: usize = 1_000;

/// Ids read at a time, per side: the memory bound (a piece of rows, never a whole group).
pub const READ_KEYS: u64 = 4_096;

/// Keys per chunk digest of the MySQL pushdown, asked for only when a group's digests differ: a differing
/// group is read row by row only in its differing chunks.
const PUSH_CHUNK_KEYS: u64 = 1_000;

/// What `verify` needs besides the job.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub amqp_url: String,
    pub redis_url: String,
    /// Only groups whose first id lies in `FIRST..=LAST`.
    pub groups: Option<(u64, u64)>,
    /// Read at most this many rows per second (both sides together); `None`: unthrottled.
    pub rate: Option<u64>,
    /// How long to wait before re-checking the ids found differing.
    pub recheck_after: Duration,
    /// Re-publish the differing ids as `verify` batches.
    pub redrive: bool,
    /// Only the groups that are `complete` and not found equal since they were last driven (never
    /// verified, verified before their last re-drive, or differing at the last verification): what
    /// `run --verify` looks at on each pass.
    pub due_only: bool,
}

/// Whether a group needs verifying under [`VerifyOptions::due_only`], by its meta.
fn verify_due(meta: &std::collections::HashMap<String, String>) -> bool {
    let time = |k: &str| {
        meta.get(k)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    if meta.get("status").map(String::as_str) != Some("complete") {
        return false;
    }
    match (time("verified_at"), time("driven_at")) {
        (None, _) => true,
        _ if meta.get("verify").map(String::as_str) != Some("equal") => true,
        (Some(v), Some(d)) => v < d,
        (Some(_), None) => false,
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifySummary {
    pub job: String,
    pub groups_verified: u64,
    pub groups_equal: u64,
    pub groups_differing: u64,
    pub source_rows: u64,
    pub target_rows: u64,
    pub diff_ids: u64,
    pub missing: u64,
    pub extra: u64,
    pub differs: u64,
    /// Ids that differed at the first pass and no longer at the re-check.
    pub settled_on_recheck: u64,
    pub republished_ids: u64,
    pub messages: u64,
    /// How the digests were computed: `mysql` (pushed into SQL on both servers), `client` (rows hashed
    /// here) or `documents` (Elasticsearch: documents hashed here).
    pub digest: String,
    /// Every differing id of this run (at most [`SAMPLE_CAP`]), ascending.
    pub diffs: Vec<KeyDiff>,
}

impl VerifySummary {
    /// Whether every verified group is equal.
    pub fn equal(&self) -> bool {
        self.groups_differing == 0
    }
}

impl std::fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "job {}: {} — {} groups verified ({} equal, {} differing), {} source rows, {} target rows",
            self.job,
            if self.equal() { "EQUAL" } else { "DIFFERS" },
            self.groups_verified,
            self.groups_equal,
            self.groups_differing,
            self.source_rows,
            self.target_rows
        )?;
        if !self.equal() {
            writeln!(
                f,
                "  differing ids {} ({} missing, {} extra, {} differs); re-published {}",
                self.diff_ids, self.missing, self.extra, self.differs, self.republished_ids
            )?;
            for d in self.diffs.iter().take(20) {
                if d.columns.is_empty() {
                    writeln!(f, "  id {} {}", d.key, d.kind.as_str())?;
                } else {
                    writeln!(
                        f,
                        "  id {} {} ({})",
                        d.key,
                        d.kind.as_str(),
                        d.columns.join(", ")
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Compares one group's rows on both sides; the differing ids ascending, with their kind and columns.
struct Comparer {
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    key: String,
    /// Source columns that hold JSON as text (MariaDB): compared as JSON.
    json_columns: Vec<String>,
    /// The MySQL checksum pushdown, when both sides allow it.
    pushdown: Option<Pushdown>,
}

/// What one look at a key range found.
#[derive(Default)]
struct Found {
    diffs: Vec<KeyDiff>,
    source_rows: u64,
    target_rows: u64,
}

impl Found {
    fn add(&mut self, other: Found) {
        self.diffs.extend(other.diffs);
        self.source_rows += other.source_rows;
        self.target_rows += other.target_rows;
    }
}

/// Digests computed by the servers (MySQL/MariaDB on both sides, the same column types).
struct Pushdown {
    source_pool: mysql_async::Pool,
    target_pool: mysql_async::Pool,
    source: MysqlChecksum,
    /// One per target table that exists.
    targets: Vec<MysqlChecksum>,
}

impl Pushdown {
    /// The pushdown for `job`, or why the digests are computed on the client (`Err`, logged).
    async fn open(
        job: &JobSpec,
        names: &[String],
        log: Arc<dyn sink::TableLog>,
    ) -> anyhow::Result<Result<Pushdown, String>> {
        let TargetSpec::Sql(target) = &job.target else {
            return Ok(Err("the target is Elasticsearch".into()));
        };
        if job.source.url.engine != Engine::Mysql || target.url.engine != Engine::Mysql {
            return Ok(Err("source and target are not both MySQL/MariaDB".into()));
        }
        let source_pool =
            bitmig_shared::sql::mysql_pool(&job.source.url, 2).map_err(cli::BadInput)?;
        let target_pool = bitmig_shared::sql::mysql_pool(&target.url, 2).map_err(cli::BadInput)?;
        let types = |pool: mysql_async::Pool, t: TableName| async move {
            let mut conn = pool.get_conn().await?;
            let schema = t.schema.as_ref().map(|s| s.as_str().to_owned());
            let cols: Vec<MysqlColumnType> = conn
                .exec(MYSQL_COLUMN_TYPES_SQL, (schema, t.table.as_str()))
                .await?;
            anyhow::Ok(cols)
        };
        let s_types = types(source_pool.clone(), job.source.table.clone())
            .await
            .context("reading the source's column types")?;
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut typed: Vec<(Ident, String)> = Vec::new();
        for n in names {
            let ty = s_types
                .iter()
                .find(|c| c.0.eq_ignore_ascii_case(n))
                .map(|c| c.1.clone());
            let (Ok(id), Some(ty)) = (Ident::new(n), ty) else {
                return Ok(Err(format!("column `{n}` has no type in the catalog")));
            };
            typed.push((id, ty));
        }
        let typed_refs: Vec<(Ident, &str)> =
            typed.iter().map(|(c, t)| (c.clone(), t.as_str())).collect();
        let tables = sink::sql_tables_of(&target.table, log)
            .await
            .context("listing the target tables")?;
        let mut targets = Vec::new();
        for t in tables {
            let t_types = types(target_pool.clone(), t.clone())
                .await
                .with_context(|| format!("reading the column types of target table {t}"))?;
            if t_types.is_empty() {
                continue; // not created (yet): holds no rows
            }
            if let Err(why) = types_match(&name_refs, &s_types, &t_types) {
                return Ok(Err(format!("target table {t}: {why}")));
            }
            targets.push(MysqlChecksum::with_types(
                &t,
                &job.source.key,
                &typed_refs,
                None,
            ));
        }
        let source = MysqlChecksum::with_types(
            &job.source.table,
            &job.source.key,
            &typed_refs,
            job.source.filter.as_deref(),
        );
        Ok(Ok(Pushdown {
            source_pool,
            target_pool,
            source,
            targets,
        }))
    }

    /// Both sides' digests of `first..=last`, the two servers working at once: with `chunk`, per chunk of
    /// that many keys; without, one digest for the whole range (the cheapest query).
    async fn digests(
        &self,
        first: u64,
        last: u64,
        chunk: Option<u64>,
    ) -> anyhow::Result<(ChunkDigests, ChunkDigests)> {
        let span = chunk.unwrap_or(last - first + 1);
        let one = |q: &MysqlChecksum, pool: &mysql_async::Pool| {
            let (q, pool) = (q.clone(), pool.clone());
            async move {
                let mut conn = pool.get_conn().await?;
                let d = if chunk.is_some() {
                    q.chunk_digests(&mut conn, first, last, span).await?
                } else {
                    let mut d = ChunkDigests::new(first, last, span);
                    d.merge_chunk(0, &q.range_digest(&mut conn, first, last).await?);
                    d
                };
                anyhow::Ok(d)
            }
        };
        let source = one(&self.source, &self.source_pool);
        let target = async {
            let mut all = ChunkDigests::new(first, last, span);
            for q in &self.targets {
                let d = one(q, &self.target_pool).await?;
                for (i, c) in d.chunks().iter().enumerate() {
                    all.merge_chunk(i, c);
                }
            }
            anyhow::Ok(all)
        };
        let (s, t) = tokio::try_join!(source, target)
            .with_context(|| format!("checksum queries over {first}..={last}"))?;
        Ok((s, t))
    }
}

/// Both sides' rows of one range, as read.
struct Read {
    source: RowSet,
    target: Vec<(String, RowSet)>,
}

impl Read {
    fn target_rows(&self) -> u64 {
        self.target.iter().map(|(_, rs)| rs.rows.len() as u64).sum()
    }
}

impl Comparer {
    /// The source's rows of `first..=last`: the one place where the source side of a range is known.
    async fn read_source(&self, first: u64, last: u64) -> anyhow::Result<RowSet> {
        self.source
            .read_rows(&[[first, last]])
            .await
            .map_err(bitmig_shared::cli::source_error)
            .with_context(|| format!("reading the source rows of {first}..={last}"))
    }

    /// Both sides' rows of `first..=last` (at most [`READ_KEYS`] ids), read at once.
    async fn read(&self, first: u64, last: u64) -> anyhow::Result<Read> {
        let source = self.read_source(first, last);
        let target = async {
            self.sink
                .read_range(&self.key, first, last)
                .await
                .with_context(|| format!("reading the target rows of {first}..={last}"))
        };
        let (source, target) = tokio::try_join!(source, target)?;
        Ok(Read { source, target })
    }

    /// A document target's piece: the source rows encoded as the sink would write them, against the
    /// documents fetched, both hashed as canonical JSON ([`DocHasher`]); differing fields named.
    async fn compare_documents(
        &self,
        docs: &dyn DocumentTarget,
        first: u64,
        last: u64,
    ) -> anyhow::Result<Found> {
        let source = self.read_source(first, last);
        let target = async {
            docs.read_documents(first, last)
                .await
                .with_context(|| format!("reading the target documents of {first}..={last}"))
        };
        let (rows, target) = tokio::try_join!(source, target)?;
        let expected = docs
            .documents_of(&rows)
            .context("encoding the source rows as documents")?;
        let mut h = DocHasher::new();
        let s_hashes: Vec<(u64, u128)> =
            expected.iter().map(|(k, d)| (*k, h.hash(*k, d))).collect();
        let t_hashes: Vec<(u64, u128)> = target.iter().map(|(k, d)| (*k, h.hash(*k, d))).collect();
        let mut found = Found {
            source_rows: rows.rows.len() as u64,
            target_rows: target.len() as u64,
            ..Found::default()
        };
        let mut kinds: Vec<(u64, DiffKind)> = Vec::new();
        merge_keyed(s_hashes, t_hashes, |k, kind| kinds.push((k, kind)))?;
        for (key, kind) in kinds {
            let mut columns = Vec::new();
            if kind == DiffKind::Differs {
                let s_doc = expected.iter().find(|(k, _)| *k == key).map(|(_, d)| d);
                let t_doc = target.iter().find(|(k, _)| *k == key).map(|(_, d)| d);
                if let (Some(a), Some(b)) = (s_doc, t_doc) {
                    columns = differing_fields(a, b);
                }
            }
            found.diffs.push(KeyDiff { key, kind, columns });
        }
        Ok(found)
    }

    /// Reads `first..=last` in pieces of [`READ_KEYS`] ids and compares each (client-side hashing).
    async fn compare_range(&self, first: u64, last: u64, pace: &mut Pace) -> anyhow::Result<Found> {
        let mut found = Found::default();
        let mut lo = first;
        loop {
            let hi = lo.saturating_add(READ_KEYS - 1).min(last);
            let piece = if let Some(docs) = self.sink.documents() {
                self.compare_documents(docs, lo, hi).await?
            } else {
                let read = self.read(lo, hi).await?;
                Found {
                    diffs: self.compare(&read, lo, hi)?,
                    source_rows: read.source.rows.len() as u64,
                    target_rows: read.target_rows(),
                }
            };
            pace.after(piece.source_rows + piece.target_rows).await;
            found.add(piece);
            if hi >= last {
                return Ok(found);
            }
            lo = hi + 1;
        }
    }

    /// The differing ids of a group: through the pushdown's digests when there is one (reading rows only in
    /// differing chunks), otherwise by reading every piece.
    async fn compare_group(&self, first: u64, last: u64, pace: &mut Pace) -> anyhow::Result<Found> {
        let Some(push) = &self.pushdown else {
            return self.compare_range(first, last, pace).await;
        };
        let (s, t) = push.digests(first, last, None).await?;
        let mut found = Found {
            source_rows: s.total().rows,
            target_rows: t.total().rows,
            ..Found::default()
        };
        pace.after(found.source_rows + found.target_rows).await;
        if s == t {
            return Ok(found);
        }
        let (s, t) = push.digests(first, last, Some(PUSH_CHUNK_KEYS)).await?;
        for [lo, hi] in s.differing_ranges(&t) {
            // the rows were counted above; only the differences are kept
            found
                .diffs
                .extend(self.compare_range(lo, hi, pace).await?.diffs);
        }
        Ok(found)
    }

    /// The differing ids of `first..=last` in `read`.
    fn compare(&self, read: &Read, first: u64, last: u64) -> anyhow::Result<Vec<KeyDiff>> {
        let names: Vec<&str> = read
            .source
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let mut sides: Vec<&[bitmig_shared::value::Column]> = vec![&read.source.columns];
        sides.extend(read.target.iter().map(|(_, rs)| &rs.columns[..]));
        let mut plan = RowPlan::new(&names, &sides).map_err(|e| {
            let side = match &e {
                bitmig_shared::digest::DigestError::NoColumn { side, .. } if *side > 0 => {
                    format!(" (target table {})", read.target[*side - 1].0)
                }
                _ => String::new(),
            };
            anyhow::Error::from(bitmig_shared::cli::BadInput(format!(
                "cannot compare the rows: {e}{side}"
            )))
        })?;
        // JSON in the source is compared as JSON whatever the target holds it in (MariaDB: text).
        let json_typed = read
            .source
            .columns
            .iter()
            .filter(|c| c.ty == bitmig_shared::value::ColumnType::Json)
            .map(|c| &c.name);
        for c in self.json_columns.iter().chain(json_typed) {
            plan.compare_as_json(c);
        }
        let mut s_enc = plan.encoder(&read.source.columns)?;
        let mut t_encs: Vec<RowEncoder> = read
            .target
            .iter()
            .map(|(_, rs)| plan.encoder(&rs.columns))
            .collect::<Result<_, _>>()?;

        // 1. chunk digests of both sides: equal → nothing differs.
        let mut s_dig = ChunkDigests::new(first, last, READ_KEYS);
        s_enc.digest_rows(&read.source.rows, &mut s_dig);
        let mut t_dig = ChunkDigests::new(first, last, READ_KEYS);
        for ((_, rs), enc) in read.target.iter().zip(t_encs.iter_mut()) {
            enc.digest_rows(&rs.rows, &mut t_dig);
        }
        if s_dig == t_dig {
            return Ok(Vec::new());
        }

        // 2. per differing chunk: (key, hash) merged by key.
        let mut diffs = Vec::new();
        for [lo, hi] in s_dig.differing_ranges(&t_dig) {
            let in_range = |k: u64| k >= lo && k <= hi;
            let s_hashes: Vec<(u64, u128)> = read
                .source
                .rows
                .iter()
                .filter(|r| in_range(r.key))
                .map(|r| (r.key, s_enc.hash(r.key, &r.values)))
                .collect();
            // target rows of every table, ascending by key: (key, hash, table, row)
            let mut t_rows: Vec<(u64, u128, usize, usize)> = Vec::new();
            for (ti, ((_, rs), enc)) in read.target.iter().zip(t_encs.iter_mut()).enumerate() {
                for (ri, r) in rs.rows.iter().enumerate().filter(|(_, r)| in_range(r.key)) {
                    t_rows.push((r.key, enc.hash(r.key, &r.values), ti, ri));
                }
            }
            t_rows.sort_by_key(|t| (t.0, t.2, t.3));
            let mut found: Vec<(u64, DiffKind)> = Vec::new();
            merge_keyed(
                s_hashes.iter().copied(),
                t_rows.iter().map(|t| (t.0, t.1)),
                |k, kind| found.push((k, kind)),
            )?;
            for (key, kind) in found {
                let mut columns = Vec::new();
                if kind == DiffKind::Differs {
                    let s_row = read
                        .source
                        .rows
                        .binary_search_by_key(&key, |r| r.key)
                        .ok()
                        .map(|i| &read.source.rows[i]);
                    let t_at = t_rows.iter().find(|t| t.0 == key);
                    if let (Some(s_row), Some(&(_, _, ti, ri))) = (s_row, t_at) {
                        let t_row = &read.target[ti].1.rows[ri];
                        columns = plan.differing_columns(
                            &mut s_enc,
                            &s_row.values,
                            &mut t_encs[ti],
                            &t_row.values,
                        );
                    }
                }
                diffs.push(KeyDiff { key, kind, columns });
            }
        }
        Ok(diffs)
    }
}

/// DESIGN.md §10: a purged id is archived — absent from the source and present in the target by design —
/// so its `extra` is expected, neither counted nor re-driven (a re-drive would delete the archived row).
async fn without_archived(
    ledger: &Ledger,
    first: u64,
    last: u64,
    diffs: Vec<KeyDiff>,
) -> anyhow::Result<Vec<KeyDiff>> {
    if !diffs.iter().any(|d| d.kind == DiffKind::Extra) {
        return Ok(diffs);
    }
    let purged = ledger.purged_among(first, &[[first, last]]).await?;
    Ok(diffs
        .into_iter()
        .filter(|d| !(d.kind == DiffKind::Extra && purged.binary_search(&d.key).is_ok()))
        .collect())
}

/// Keeps the read rate under `rate` rows per second.
struct Pace {
    rate: Option<u64>,
    started: Instant,
    rows: u64,
}

impl Pace {
    async fn after(&mut self, rows: u64) {
        self.rows += rows;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.rows as f64 / rate as f64);
            let spent = self.started.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
    }
}

/// Verify the job's groups: compare, re-check, record, and (with `--redrive`) re-publish what differs.
pub async fn verify(job: &JobSpec, opts: &VerifyOptions) -> anyhow::Result<VerifySummary> {
    let ledger = Ledger::connect(&opts.redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    bitmig_shared::cli::check_spec(&ledger, job, false, crate::SPEC_FIELDS_IGNORED).await?;
    let firsts: Vec<u64> = ledger
        .groups()
        .await?
        .into_iter()
        .filter(|f| opts.groups.is_none_or(|(lo, hi)| *f >= lo && *f <= hi))
        .collect();
    let metas = ledger.metas(&firsts).await?;
    let ranges: Vec<(u64, u64)> = firsts
        .iter()
        .zip(&metas)
        .filter(|(_, m)| !opts.due_only || verify_due(m))
        .map(|(f, m)| {
            let last = m
                .get("last")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| group_last(*f, job.group_size));
            (*f, last)
        })
        .collect();
    if ranges.is_empty() {
        return Ok(VerifySummary {
            job: job.name.clone(),
            ..Default::default()
        });
    }
    let source = source::open(job, 2).context("opening the source")?;
    let log: Arc<dyn sink::TableLog> = Arc::new(ledger.clone());
    let sink = sink::open_logged(job, 2, log.clone()).context("opening the target")?;
    let json_columns = source
        .json_text_columns()
        .await
        .map_err(bitmig_shared::cli::source_error)?;
    let names: Vec<String> = source
        .describe()
        .await
        .map_err(bitmig_shared::cli::source_error)?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let pushdown = match Pushdown::open(job, &names, log).await? {
        Ok(p) => Some(p),
        Err(why) => {
            info!(job = %job.name, "digests computed client-side: {why}");
            None
        }
    };
    if let Some(docs) = sink.documents() {
        docs.refresh()
            .await
            .context("refreshing the target indices")?;
    }
    let cmp = Comparer {
        source,
        sink,
        key: job.source.key.as_str().to_owned(),
        json_columns,
        pushdown,
    };

    let mut summary = VerifySummary {
        job: job.name.clone(),
        digest: if cmp.pushdown.is_some() {
            "mysql"
        } else if cmp.sink.documents().is_some() {
            "documents"
        } else {
            "client"
        }
        .into(),
        ..Default::default()
    };
    let mut pace = Pace {
        rate: opts.rate,
        started: Instant::now(),
        rows: 0,
    };
    let (lo, hi) = (
        ranges.first().map_or(0, |r| r.0),
        ranges.last().map_or(0, |r| r.1),
    );
    let mut progress = Progress::new("verifying", lo, hi);

    // Pass 1: every group.
    let mut differing: BTreeMap<u64, (u64, Vec<KeyDiff>)> = BTreeMap::new();
    for &(first, last) in &ranges {
        let mut found = cmp.compare_group(first, last, &mut pace).await?;
        found.diffs =
            without_archived(&ledger, first, last, std::mem::take(&mut found.diffs)).await?;
        summary.source_rows += found.source_rows;
        summary.target_rows += found.target_rows;
        summary.groups_verified += 1;
        if found.diffs.is_empty() {
            ledger.record_verify(first, &[]).await?;
            ledger.sample_diffs(first, last, &[], SAMPLE_CAP).await?;
            summary.groups_equal += 1;
        } else {
            info!(job = %job.name, group = first, ids = found.diffs.len(), "group differs; re-checking later");
            differing.insert(first, (last, found.diffs));
        }
        progress.ids += found.source_rows + found.target_rows;
        progress.groups += 1;
        progress.update(last);
    }
    progress.finish();

    // Pass 2: the source is live — an id counts only if it still differs after the delay. Only the pieces
    // that held a differing id are read again.
    if !differing.is_empty() && !opts.recheck_after.is_zero() {
        info!(job = %job.name, groups = differing.len(), after = ?opts.recheck_after, "waiting before the re-check");
        tokio::time::sleep(opts.recheck_after).await;
    }
    let mut to_publish: Vec<(u64, Vec<u64>)> = Vec::new();
    for (first, (last, before)) in differing {
        let mut pieces: Vec<(u64, u64)> = before
            .iter()
            .map(|d| {
                let lo = first + (d.key - first) / READ_KEYS * READ_KEYS;
                (lo, lo.saturating_add(READ_KEYS - 1).min(last))
            })
            .collect();
        pieces.dedup();
        let mut again = Vec::new();
        for (lo, hi) in pieces {
            again.extend(cmp.compare_range(lo, hi, &mut pace).await?.diffs);
        }
        let again = without_archived(&ledger, first, last, again).await?;
        let still: Vec<KeyDiff> = again
            .into_iter()
            .filter(|d| before.iter().any(|b| b.key == d.key))
            .collect();
        summary.settled_on_recheck += (before.len() - still.len()) as u64;
        let ids: Vec<u64> = still.iter().map(|d| d.key).collect();
        ledger.record_verify(first, &ids).await?;
        let at = now_rfc3339();
        let sample: Vec<(u64, String)> = still
            .iter()
            .map(|d| {
                let v =
                    serde_json::json!({"kind": d.kind.as_str(), "columns": d.columns, "at": at});
                (d.key, v.to_string())
            })
            .collect();
        ledger
            .sample_diffs(first, last, &sample, SAMPLE_CAP)
            .await?;
        if ids.is_empty() {
            summary.groups_equal += 1;
        } else {
            summary.groups_differing += 1;
            summary.diff_ids += ids.len() as u64;
            for d in &still {
                match d.kind {
                    DiffKind::Missing => summary.missing += 1,
                    DiffKind::Extra => summary.extra += 1,
                    DiffKind::Differs => summary.differs += 1,
                }
            }
            let room = SAMPLE_CAP.saturating_sub(summary.diffs.len());
            summary.diffs.extend(still.into_iter().take(room));
            to_publish.push((first, ids));
        }
    }

    if opts.redrive && !to_publish.is_empty() {
        let mut republisher = Republisher::new(&opts.amqp_url, job);
        for (first, mut ids) in to_publish {
            ids.dedup();
            summary.messages += republisher.group(first, &ids, Cause::Verify).await?;
            info!(job = %job.name, group = first, cause = "verify", ids = ids.len(), "re-published differing ids");
            summary.republished_ids += ids.len() as u64;
        }
        republisher.close().await;
    }
    Ok(summary)
}
