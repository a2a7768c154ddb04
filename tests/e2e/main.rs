//! End-to-end tests of bitmig: the real `bitmig-producer`, `bitmig-consumer` and `bitmig-compensator` run as
//! subprocesses against real MariaDB, Redis and RabbitMQ (loopback by default; see `helpers::Services`).
//! Build the binaries first: `cargo build --workspace --bins`.
//!
//! One file per topic; each test has its own job, database, queues and ledger keys, so they run in parallel.

mod helpers;

mod bad_job_file;
mod broker_nodes;
mod compensator_redrive;
mod connections;
mod consumer_crash;
mod consumer_sigterm;
mod copy;
mod dead_letters;
mod deleted_rows;
mod elasticsearch;
mod hostile;
mod operating;
mod postgres;
mod producer_resume;
mod redis_cluster;
mod rejected_rows;
mod routes;
mod secrets;
mod spec_mismatch;
