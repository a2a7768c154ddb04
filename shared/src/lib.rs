//! The parts every bitmig program shares.
//!
//! - [`job`]: the job file (TOML): parsing, `${VAR}` expansion, validation, the credential-free spec.
//! - [`ids`]: id ranges, groups and the MSB-first bitmap encoding Redis uses.
//! - [`control`]: pause/resume and the throttle's reason (`bitmig:{JOB}:control`), polled by a watch.
//! - [`ledger`]: the Redis ledger — group bitmaps (`src`, `tgt`, `gone`), group meta, `failed`, `spec`.
//! - [`redis_con`]: the Redis connection, one node or a Redis Cluster.
//! - [`queue`]: AMQP topology (exchange, work, retry and dead queues), the message body, confirmed publishing.
//! - [`value`]: column descriptions and the engine-neutral row values that travel from source to sink.
//! - [`source`]: reading ids and current rows from the source database (MySQL/MariaDB, PostgreSQL).
//! - [`pg`]: the PostgreSQL pool, error classes and binary codec the PostgreSQL source and sink share.
//! - [`sink`]: writing rows to the target (SQL tables); one small trait, one module per target kind.
//! - [`throttle`], [`throttle_spec`]: the `[throttle]` section and the waits it imposes on workers.
//! - [`telemetry`], [`cli`]: logging set-up, the options and exit codes every binary shares, progress output.

pub mod cli;
pub mod control;
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
pub mod throttle_spec;
pub mod value;
