//! Elasticsearch (and OpenSearch) target: one Bulk API request per batch, read item by item.
//!
//! Split the way vector splits its sink: [`encoder`] turns rows into NDJSON (index route, external
//! version, document), the shared [`EsClient`] sends requests (transport, credentials, `GET /`, what a
//! status means), [`retry`] reads the bulk items and holds the sink's retry policy.
//! [`EsSink::apply`](Sink::apply) ties them: encode, add the batch's `delete` actions (its gone keys from
//! every index of the job; a moved document's key from every other index) → send in requests of at most
//! [`EsOptions::max_bulk_bytes`] → sort every item into written / failed / again → send the "again" ones
//! after a growing delay → hand the batch back as transient if some still have not landed.
//!
//! # Guarantees
//! - `_id` is the row's key, so a redelivered batch rewrites the same documents.
//! - A key is in `written` only when its item said 200/201, or 409 (version conflict) under
//!   `source.version` — the index already holds that version or a newer one.
//! - 4xx items (mapping and parse errors) go to `failed` with Elasticsearch's `type: reason`; rows the
//!   encoder cannot turn into a document (a NULL route date, invalid JSON, …) too, with the column named.
//! - 429 and 5xx items, and whole requests that fail to connect or answer 429/5xx, are sent again after
//!   [`RetryPolicy`]'s delays; what is still not in after the last is [`SinkError::Transient`].
//! - A request that times out is not sent again here: the batch is [`SinkError::Transient`] at once. The
//!   cluster may still be working on it, and the consumer retries the batch with its own growing delays
//!   and then through the retry queues; retrying here too would multiply the waits (4 × 4 × the timeout).
//! - Credentials, no index, no permission (401/403/404): [`SinkError::Batch`], nothing guessed.
//! - `"errors": false` is never a shortcut: every item is read, and a response whose items do not match
//!   the documents sent counts as a failed request.
//!
//! # Values as JSON
//! | column | JSON | why |
//! | --- | --- | --- |
//! | integers (all sizes, signed and unsigned), YEAR | number, exact digits | `long` holds all but `BIGINT UNSIGNED` above 2^63-1: map such a field as `unsigned_long`, or those documents are refused (to `failed`, with Elasticsearch's reason). Numbers above 2^53 stay exact in the JSON; readers in JavaScript would round them |
//! | DECIMAL | string of its digits, `"12.30"` | exact; Elasticsearch coerces numeric strings into `scaled_float`/`double` fields when the mapping says so, while a number would go through a double on the way |
//! | FLOAT, DOUBLE | number, the shortest text that reads back as the same `f32`/`f64` (`0.1`) | MySQL cannot hold NaN or infinity (a row with one is refused). Dynamic mapping makes a `float`: map DOUBLE fields as `double` |
//! | CHAR, VARCHAR, TEXT, ENUM, SET | string | must be UTF-8 (the source reads in utf8mb4) |
//! | BINARY, VARBINARY, BLOB | base64 string (standard, padded) | what a `binary` field takes |
//! | BIT(n) | number, the bits as a big-endian unsigned integer | |
//! | JSON | embedded as the JSON it is (object, array, …), text copied as is, line breaks as spaces | an object stays queryable; copying keeps big numbers exact. (MariaDB sends JSON columns as LONGTEXT: they arrive as strings) |
//! | boolean (PostgreSQL) | `true` / `false` | |
//! | uuid (PostgreSQL) | `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"` | |
//! | arrays, interval and other PostgreSQL-only types | refused at start, naming the column | no JSON form is defined yet: leave them out with `target.exclude`. A PostgreSQL `infinity` date refuses its row |
//! | DATE | `"2024-01-31"` | ISO 8601 |
//! | DATETIME | `"2024-01-31T23:59:58.123456"`, no zone, fraction only when non-zero | a DATETIME has no zone; Elasticsearch reads a zoneless date as UTC |
//! | TIMESTAMP | `"2024-01-31T23:59:58Z"` | the source reads TIMESTAMPs in UTC |
//! | TIME | `"-838:59:59"`, `"01:02:03.250000"` | a duration, not a time of day: hours may pass 24, sign kept |
//! | zero dates (`0000-00-00`, a zero month or day) | `null` | MySQL's "no date"; no calendar date to give. Any other impossible date refuses the row |
//! | NULL | `null` | |
//!
//! # Routes and versions
//! `index = "orders_{created_at:%Y%m}"` formats the DATE/DATETIME/TIMESTAMP value's own fields with
//! chrono (no time zone conversion); `{col % N}` takes an integer column modulo N (Euclidean); a plain name
//! sends every row to one index. A row whose route column is NULL or a zero date goes to `failed`.
//! With `source.version`, every action carries `version_type=external` and the version: the integer
//! itself, or epoch milliseconds of a date/time (a DATETIME read as UTC). Elasticsearch keeps a
//! document only when the version is higher than the stored one, so a late, older write cannot replace a
//! newer document. Two changes within the same millisecond carry the same version: the first to arrive
//! stays, so use a version column with millisecond precision or better (`DATETIME(3)`) or a counter.

mod encoder;
mod retry;

use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, info, instrument, warn};

pub use retry::RetryPolicy;

use super::{deletions, Changes, DocumentTarget, OpenError, Sink, SinkError, Tables, WriteOutcome};
use crate::es::{classify, EsClient, EsError, API_KEY_ENV};
use crate::job::{EsTarget, Ident, JobSpec, RoutePart, TargetSpec};
use crate::value::Column;
use encoder::{chunks, delete_action, EncodedDoc, Plan};
use retry::{classify_bulk, ItemVerdict};

/// Knobs with defaults that suit a production cluster; tests shorten them.
#[derive(Debug, Clone)]
pub struct EsOptions {
    /// Largest bulk request body; a batch above it is sent as several requests. Elasticsearch's own
    /// limit (`http.max_content_length`) defaults to 100 MB; its guidance is a few MB to tens of MB.
    pub max_bulk_bytes: usize,
    /// Whole-request timeout (connect, send, Elasticsearch's work, answer).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// An API key (`Authorization: ApiKey …`), normally from `BITMIG_ES_API_KEY`.
    pub api_key: Option<String>,
}

impl Default for EsOptions {
    fn default() -> Self {
        Self {
            max_bulk_bytes: 10 << 20,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            api_key: None,
        }
    }
}

impl EsOptions {
    /// The defaults, with the API key from `BITMIG_ES_API_KEY` when it is set.
    pub fn from_env() -> Self {
        Self {
            api_key: std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
            ..Self::default()
        }
    }
}

/// Writes batches into Elasticsearch indices through the Bulk API.
pub struct EsSink {
    client: EsClient,
    target: EsTarget,
    version: Option<Ident>,
    options: EsOptions,
    /// Records each index before the first write to it; lists every index for deletes.
    tables: Tables,
}

impl EsSink {
    /// A sink for the job's `[target]` (which must be `kind = "elasticsearch"`). Connects to nothing yet.
    pub fn new(
        job: &JobSpec,
        options: EsOptions,
        max_connections: usize,
    ) -> Result<Self, OpenError> {
        let TargetSpec::Elasticsearch(target) = &job.target else {
            return Err(OpenError("not an Elasticsearch target".into()));
        };
        check_route(target).map_err(OpenError)?;
        let client = EsClient::new(
            "target.url",
            &target.url,
            options.api_key.as_deref(),
            options.timeout,
            options.connect_timeout,
            max_connections,
        )
        .map_err(OpenError)?;
        Ok(Self {
            client,
            target: target.clone(),
            version: job.source.version.clone(),
            options,
            tables: Tables::default(),
        })
    }

    /// Record indices in, and list them from, `tables` (the consumer's ledger).
    pub(crate) fn with_tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// The `delete` actions of a batch: its gone keys from every index of the job and, when exclusive,
    /// each document's key from every index but its own.
    async fn delete_actions(
        &self,
        changes: &Changes<'_>,
        docs: &[EncodedDoc],
    ) -> Result<Vec<EncodedDoc>, SinkError> {
        if changes.delete.is_empty() && !changes.exclusive {
            return Ok(Vec::new());
        }
        let known = self.target.index.plain().map(|name| vec![name.to_owned()]);
        let every = self.tables.every(known).await?;
        let mut placed: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for doc in docs {
            placed.entry(doc.index.clone()).or_default().push(doc.key);
        }
        let placed: Vec<(String, Vec<u64>)> = placed.into_iter().collect();
        let mut out = Vec::new();
        for (index, keys) in deletions(&every, changes.delete, &placed, changes.exclusive) {
            for key in keys {
                out.push(delete_action(&index, key).map_err(SinkError::Batch)?);
            }
        }
        Ok(out)
    }

    /// Every index of the job: the route's one name, or every name the ledger lists.
    async fn indices(&self) -> Result<Vec<String>, SinkError> {
        let known = self.target.index.plain().map(|name| vec![name.to_owned()]);
        self.tables.every(known).await
    }

    /// An error of a read-back request, as a sink error.
    fn read_error(what: &str, e: EsError) -> SinkError {
        match e {
            e @ EsError::Permanent { .. } => SinkError::Batch(format!("{what}: {e}")),
            e => SinkError::Transient(format!("{what}: {e}")),
        }
    }

    fn plan(&self, columns: &[Column]) -> Result<Plan, SinkError> {
        Plan::new(&self.target, self.version.as_ref(), columns).map_err(SinkError::Batch)
    }
}

/// Index names must be lowercase and may not start with `_`: refuse a route that could make one, at start.
fn check_route(target: &EsTarget) -> Result<(), String> {
    let probe =
        chrono::NaiveDate::from_ymd_opt(2024, 1, 31).and_then(|d| d.and_hms_opt(23, 59, 58));
    let mut name = String::new();
    for part in &target.index.parts {
        match part {
            RoutePart::Literal(l) => name.push_str(l),
            RoutePart::HashMod { .. } => name.push('0'),
            RoutePart::Time { format, .. } => {
                use std::fmt::Write as _;
                if let Some(t) = probe {
                    let _ = write!(name, "{}", t.format(format));
                }
            }
        }
    }
    encoder::check_index_name(&name)
        .map_err(|e| format!("target.index `{}`: {e}", target.index.template))
}

#[async_trait]
impl DocumentTarget for EsSink {
    async fn refresh(&self) -> Result<(), SinkError> {
        let indices = self.indices().await?;
        if indices.is_empty() {
            return Ok(());
        }
        let path = format!(
            "/{}/_refresh?ignore_unavailable=true&allow_no_indices=true",
            indices.join(",")
        );
        self.client
            .json(reqwest::Method::POST, &path, None)
            .await
            .map(|_| ())
            .map_err(|e| Self::read_error("refreshing the indices", e))
    }

    /// One search per call: an `ids` query over every index of the job (indices that do not exist are
    /// skipped), `size` the whole range, so the range must stay within the cluster's result window
    /// (10 000 by default; verify asks for 4 096 ids at a time).
    async fn read_documents(
        &self,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, serde_json::Value)>, SinkError> {
        let indices = self.indices().await?;
        if indices.is_empty() || last < first {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = (first..=last).map(|k| k.to_string()).collect();
        let body = serde_json::json!({
            "size": ids.len(),
            "query": {"ids": {"values": ids}},
            "_source": true,
        });
        let path = format!(
            "/{}/_search?ignore_unavailable=true&allow_no_indices=true",
            indices.join(",")
        );
        let what = format!("reading documents {first}..={last}");
        let answer = self
            .client
            .json(reqwest::Method::POST, &path, Some(&body))
            .await
            .map_err(|e| Self::read_error(&what, e))?;
        let hits = answer["hits"]["hits"]
            .as_array()
            .ok_or_else(|| SinkError::Transient(format!("{what}: the answer has no hits")))?;
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            let key = hit["_id"]
                .as_str()
                .and_then(|id| id.parse::<u64>().ok())
                .filter(|k| (first..=last).contains(k));
            if let Some(key) = key {
                out.push((key, hit["_source"].clone()));
            }
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    fn documents_of(
        &self,
        rows: &crate::value::RowSet,
    ) -> Result<Vec<(u64, serde_json::Value)>, SinkError> {
        let plan = self.plan(&rows.columns)?;
        let mut out = Vec::with_capacity(rows.rows.len());
        for row in &rows.rows {
            let Ok(doc) = plan.encode(row) else {
                continue; // refused when written too: recorded in `failed`, not in the index
            };
            let text = crate::digest::es::bulk_document(&doc.lines).unwrap_or_default();
            let json = serde_json::from_slice(text).map_err(|e| {
                SinkError::Batch(format!("id {}: the encoder's document: {e}", row.key))
            })?;
            out.push((row.key, json));
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for EsSink {
    fn documents(&self) -> Option<&dyn DocumentTarget> {
        Some(self)
    }

    /// Check the job against the columns, then `GET /`. An unreachable cluster is transient (the consumer
    /// exits 1 naming the URL); refused credentials or something that is not Elasticsearch is a batch
    /// error (the consumer exits 2).
    #[instrument(skip_all, fields(url = %self.client.label()))]
    async fn prepare(&self, columns: &[Column]) -> Result<(), SinkError> {
        self.plan(columns)?;
        let url = self.client.label();
        match self.client.check().await {
            Ok(cluster) => {
                info!(
                    cluster = %cluster.name,
                    version = %cluster.version,
                    distribution = %cluster.distribution,
                    index = %self.target.index.template,
                    versioned = self.version.is_some(),
                    "Elasticsearch target ready"
                );
                Ok(())
            }
            Err(e @ EsError::Permanent { .. }) => Err(SinkError::Batch(format!(
                "Elasticsearch at {url}, GET /: {e}"
            ))),
            Err(e) => Err(SinkError::Transient(format!(
                "cannot reach Elasticsearch at {url}: {e}"
            ))),
        }
    }

    #[instrument(skip_all, fields(rows = changes.rows.rows.len(), delete = changes.delete.len()))]
    async fn apply(&self, changes: &Changes<'_>) -> Result<WriteOutcome, SinkError> {
        let rows = changes.rows;
        let plan = self.plan(&rows.columns)?;
        let mut outcome = WriteOutcome::default();
        let mut pending: Vec<EncodedDoc> = Vec::with_capacity(rows.rows.len());
        for row in &rows.rows {
            match plan.encode(row) {
                Ok(doc) => pending.push(doc),
                Err(reason) => outcome.failed.push((row.key, reason)),
            }
        }
        let mut indices: Vec<String> = pending.iter().map(|d| d.index.clone()).collect();
        indices.sort_unstable();
        indices.dedup();
        self.tables.before_write(&indices).await?;
        // Deletes travel in the same bulk request as the documents.
        let deletes = self.delete_actions(changes, &pending).await?;
        pending.extend(deletes);
        let mut delays = self.options.retry.delays.iter();
        let mut attempt = 0u32;
        while !pending.is_empty() {
            attempt += 1;
            let (again, why, timed_out) = self.send_all(&plan, pending, &mut outcome).await?;
            if again.is_empty() {
                break;
            }
            let delay = if timed_out { None } else { delays.next() };
            let Some(delay) = delay else {
                return Err(SinkError::Transient(format!(
                    "Elasticsearch at {}: {} documents not accepted after {attempt} attempts; last: {why}",
                    self.client.label(),
                    again.len()
                )));
            };
            warn!(documents = again.len(), attempt, delay_ms = delay.as_millis() as u64, reason = %why, "bulk items to send again");
            tokio::time::sleep(*delay).await;
            pending = again;
        }
        debug!(
            written = outcome.written.len(),
            failed = outcome.failed.len(),
            attempts = attempt,
            "bulk batch done"
        );
        outcome.written.sort_unstable();
        Ok(outcome)
    }
}

impl EsSink {
    /// Send `docs` in requests within the byte limit; record what landed or was refused in `outcome`.
    /// Returns the documents to send again, the last reason why, and whether a request timed out.
    async fn send_all(
        &self,
        plan: &Plan,
        docs: Vec<EncodedDoc>,
        outcome: &mut WriteOutcome,
    ) -> Result<(Vec<EncodedDoc>, String, bool), SinkError> {
        let url = self.client.label();
        let mut again = Vec::new();
        let mut why = String::new();
        let mut timed_out = false;
        let mut queue: std::collections::VecDeque<Vec<EncodedDoc>> = {
            let mut docs = docs;
            let mut out = std::collections::VecDeque::new();
            for range in chunks(&docs, self.options.max_bulk_bytes).into_iter().rev() {
                out.push_front(docs.split_off(range.start));
            }
            out
        };
        while let Some(chunk) = queue.pop_front() {
            let body: Vec<u8> = chunk.iter().flat_map(|d| d.lines.iter().copied()).collect();
            let bytes = body.len();
            let (status, reply) = match self.client.bulk(body).await {
                Ok(r) => r,
                Err(e) => {
                    why = match &e {
                        EsError::Timeout(_) => {
                            timed_out = true;
                            format!("bulk request of {bytes} bytes: {e}")
                        }
                        _ => e.to_string(),
                    };
                    again.extend(chunk);
                    continue;
                }
            };
            match classify(status, &reply) {
                Ok(()) => {}
                Err(EsError::Permanent { status: 413, .. }) if chunk.len() > 1 => {
                    let mut left = chunk;
                    let right = left.split_off(left.len() / 2);
                    queue.push_front(right);
                    queue.push_front(left);
                    continue;
                }
                Err(EsError::Permanent { status: 413, .. }) => {
                    let doc = &chunk[0];
                    outcome.failed.push((
                        doc.key,
                        format!(
                            "document of {} bytes is larger than the cluster accepts (HTTP 413, \
                             http.max_content_length)",
                            doc.lines.len()
                        ),
                    ));
                    continue;
                }
                Err(e @ EsError::Permanent { .. }) => {
                    return Err(SinkError::Batch(format!(
                        "Elasticsearch at {url} refused the bulk request: {e}"
                    )))
                }
                Err(e) => {
                    why = e.to_string();
                    again.extend(chunk);
                    continue;
                }
            }
            let keys: Vec<u64> = chunk.iter().map(|d| d.key).collect();
            let verdicts = match classify_bulk(&reply, &keys, plan.versioned()) {
                Ok(v) => v,
                Err(reason) => {
                    why = reason;
                    again.extend(chunk);
                    continue;
                }
            };
            for (doc, verdict) in chunk.into_iter().zip(verdicts) {
                match verdict {
                    ItemVerdict::Written if doc.delete => {}
                    ItemVerdict::Rejected(reason) if doc.delete => {
                        return Err(SinkError::Batch(format!(
                            "Elasticsearch at {url}, index {}: deleting {}: {reason}",
                            doc.index, doc.key
                        )))
                    }
                    ItemVerdict::Written => outcome.written.push(doc.key),
                    ItemVerdict::Rejected(reason) => outcome
                        .failed
                        .push((doc.key, format!("index {}: {reason}", doc.index))),
                    ItemVerdict::Retry(reason) => {
                        why = reason;
                        again.push(doc);
                    }
                    ItemVerdict::Stop(reason) => {
                        return Err(SinkError::Batch(format!(
                            "Elasticsearch at {url}, index {}: {reason}",
                            doc.index
                        )))
                    }
                }
            }
        }
        Ok((again, why, timed_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(index: &str) -> JobSpec {
        let text = format!(
            "name = \"orders\"\n[source]\nurl = \"mysql://root@127.0.0.1/shop\"\ntable = \"orders\"\nkey = \"id\"\n\
             [target]\nkind = \"elasticsearch\"\nurl = \"http://u:secret@127.0.0.1:9200\"\nindex = \"{index}\"\n"
        );
        JobSpec::parse_str(&text, std::path::Path::new("job.toml"), &|_| None).unwrap()
    }

    #[test]
    fn routes_that_cannot_name_an_index_are_refused_at_start() {
        assert!(EsSink::new(&job("orders_{created_at:%Y%m}"), EsOptions::default(), 1).is_ok());
        assert!(EsSink::new(&job("orders_{user_id % 8}"), EsOptions::default(), 1).is_ok());
        for bad in ["Orders", "_orders", "orders_{created_at:%b}"] {
            let err = EsSink::new(&job(bad), EsOptions::default(), 1)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                err.0.contains("not a valid Elasticsearch index name") && !err.0.contains("secret"),
                "{bad}: {err}"
            );
        }
    }
}
