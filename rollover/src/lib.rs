//! `bitmig-rollover`: the seed-000 monthly hot → cold plan inside Elasticsearch (DESIGN.md §12), as
//! server-side tasks listed in a MySQL task table.
//!
//! - [`config`]: the config file, months and the templates of destination indices and month queries.
//! - [`table`]: the task table and its conditional state changes.
//! - [`plan`]: a month's tasks into the table, idempotently.
//! - [`run`]: a pass that polls started tasks, judges completed ones, and starts pending ones.
//! - [`status`]: the table as an operator reads it, and its exit code.

pub mod config;
pub mod plan;
pub mod run;
pub mod status;
pub mod table;

use std::time::Duration;

use bitmig_shared::cli::BadInput;
use bitmig_shared::es::EsClient;

/// The cluster client of a config (credentials from the URL or `BITMIG_ES_API_KEY`).
pub fn es_client(cfg: &config::Config) -> anyhow::Result<EsClient> {
    EsClient::from_env("elasticsearch.url", &cfg.es_url, Duration::from_secs(60))
        .map_err(|e| BadInput(format!("config file {}: {e}", cfg.path.display())).into())
}

/// The task table of a config, created when missing.
pub async fn open_table(cfg: &config::Config) -> anyhow::Result<table::TaskTable> {
    table::TaskTable::open(cfg.tasks_url.expose(), &cfg.table)
        .await
        .map_err(|e| e.context(format!("task table `{}` at {}", cfg.table, cfg.tasks_url)))
}
