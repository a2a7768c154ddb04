//! End-to-end tests of bitmig: the real `bitmig-producer`, `bitmig-consumer` and `bitmig-compensator` run as
//! subprocesses against real MariaDB, Redis and RabbitMQ (loopback by default; see `bitmig_tests::Services`).
//! Build the binaries first: `cargo build --workspace --bins`.
//!
//! One file per topic; each test has its own job, database, queues and ledger keys, so they run in parallel.

// The helpers are the `bitmig-tests` library; test files reach them as `crate::helpers::…`.
use bitmig_tests as helpers;

mod bad_job_file;
mod broker_nodes;
mod compensator_redrive;
mod connections;
mod consumer_crash;
mod consumer_sigterm;
mod copy;
mod copy_within;
mod deleted_rows;
mod deletes;
mod digest;
mod elasticsearch;
mod follow;
mod follow_elasticsearch;
mod follow_queue;
mod follow_readers;
mod hostile;
mod load_data;
mod operating;
mod operating_follow;
mod operating_wired;
mod postgres;
mod producer_resume;
mod purge;
mod redis_cluster;
mod rejected_rows;
mod rollover;
mod routes;
mod secrets;
mod spec_mismatch;
mod verify;
