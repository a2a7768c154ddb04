//! The parts every bitmig program shares.
//!
//! - [`job`]: the job file (TOML): raw shape, validation, identifiers, redacting URLs, routes, `${VAR}`
//!   expansion, the credential-free spec; one file per concern under `job/`.
//! - [`ids`]: id ranges, groups and the MSB-first bitmap encoding Redis uses.
//! - [`control`]: pause/resume and the throttle's reason (`bitmig:{JOB}:control`), polled by a watch.
//! - [`ledger`]: the Redis ledger — group bitmaps (`src`, `tgt`, `gone`), group meta, `failed`, `tables`,
//!   `spec`.
//! - [`redis_con`]: the Redis connection, one node or a Redis Cluster.
//! - [`queue`]: AMQP topology (exchange, work, retry and dead queues), the message body and its causes,
//!   confirmed publishing.
//! - [`value`]: column descriptions and the engine-neutral row values that travel from source to sink.
//! - [`source`]: reading ids and current rows from the source database (MySQL/MariaDB, PostgreSQL).
//! - [`sink`]: applying batches of changes (upserts and deletes) to the target: SQL tables on MySQL or
//!   PostgreSQL, Elasticsearch indices; one resolver of routes for both, the job's table list.
//! - [`pg`]: the PostgreSQL pool, error classes and binary codec the PostgreSQL source and sink share.
//! - [`sql`]: SQL quoting, the MySQL pool and MySQL error classes the MySQL source and sink share.
//! - [`digest`]: canonical row encoding, row hashes and group digests, diffs by key (verify, purge).
//! - [`es`]: the Elasticsearch client the sink and `bitmig-rollover` share.
//! - [`cli`]: the options and exit codes every binary shares, the stored-spec check.
//! - [`progress`]: progress output of long runs.
//! - [`throttle`]: the waits the job's `[throttle]` section (`job::ThrottleSpec`) imposes on workers.
//! - [`telemetry`]: logging set-up and (`telemetry::metrics`) Prometheus metrics with health and readiness.

pub mod cli;
pub mod control;
pub mod digest;
pub mod es;
pub mod ids;
pub mod job;
pub mod ledger;
pub mod pg;
pub mod progress;
pub mod queue;
pub mod redis_con;
pub mod sink;
pub mod source;
pub mod sql;
pub mod telemetry;
pub mod throttle;
pub mod value;
