//! The job file: one TOML file describes one migration (DESIGN.md §2).
//!
//! Loading is strict and happens before any connection is opened: unknown keys, names that are not
//! identifiers, bad routes, absurd sizes and unset `${VAR}`s are refused with a message that names the
//! key and the file. `${VAR}` is expanded inside string values only, after TOML parsing, so a variable's
//! content can never change the structure of the file.
//!
//! One file per concern; a new section (`[follow]`, `[throttle]`) is one more file here, a field of the
//! raw shape ([`raw`]) and of [`JobSpec`], and its checks in [`validate`]:
//! - this file: the validated job ([`JobSpec`] and its parts) and loading;
//! - [`raw`]: the file's shape as serde reads it (unknown keys refused);
//! - [`validate`]: raw → validated, every check naming the key;
//! - [`ident`]: SQL identifiers and table names;
//! - [`url`]: database and Elasticsearch URLs, whose `Debug`/`Display` never show credentials;
//! - [`route`]: table and index routes (`{col % N}`, `{col:FORMAT}`, `[target.ranges]`);
//! - [`env`]: `${VAR}` expansion;
//! - [`spec`]: the credential-free spec stored in the ledger, and how two specs differ;
//! - [`follow`]: the `[follow]` section (DESIGN.md §8).
//! - [`throttle`]: the `[throttle]` section (DESIGN.md §11), not part of the stored spec.

mod env;
pub mod follow;
mod ident;
mod raw;
mod route;
mod spec;
mod throttle;
mod url;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use ident::{Ident, TableName};
pub use route::{KeyRangeTable, RangeMap, Route, RoutePart, TableRoute};
pub use spec::spec_differences;
pub use throttle::ThrottleSpec;
pub use url::{redact_url, DbUrl, Engine, EsUrl};

pub use env::expand_env;
pub use follow::{FollowFrom, FollowSpec};
use raw::RawJob;

/// Largest `group_size` accepted: one group's bitmap stays at 512 KiB, so three bitmaps per group and a
/// few thousand groups fit comfortably in Redis and in one `GET`.
pub const MAX_GROUP_SIZE: u64 = 1 << 22;
/// Default ids per group (= bits per bitmap).
pub const DEFAULT_GROUP_SIZE: u64 = 10_000;
/// Default ids per message.
pub const DEFAULT_BATCH_SIZE: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A validated job. Credentials live only in `source.url` / `target.url` and never leave the process:
/// [`JobSpec::ledger_spec`] is what may be shown, logged or stored.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub path: PathBuf,
    pub name: String,
    pub group_size: u64,
    pub batch_size: u64,
    pub source: SourceSpec,
    pub target: TargetSpec,
    /// `[follow]`: where `bitmig-producer --follow` reads the source's changes from (DESIGN.md §8). Not
    /// part of the ledger spec: it says how changes are found, not what is copied.
    pub follow: Option<FollowSpec>,
    /// `[throttle]`: the limits work waits for (empty when the section is absent). Not stored in the ledger.
    pub throttle: ThrottleSpec,
}

#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub url: DbUrl,
    pub table: TableName,
    pub key: Ident,
    pub columns: Option<Vec<Ident>>,
    pub filter: Option<String>,
    pub version: Option<Ident>,
}

#[derive(Debug, Clone)]
pub enum TargetSpec {
    Sql(SqlTarget),
    Elasticsearch(EsTarget),
}

#[derive(Debug, Clone)]
pub struct SqlTarget {
    pub url: DbUrl,
    /// Where a row goes: `table` (a name or a template) or `[target.ranges]` (a map of key ranges).
    pub table: TableRoute,
    pub write: WriteMode,
    /// `create = true`: create every target table that does not exist, when a row is first routed to it.
    pub create: bool,
}

#[derive(Debug, Clone)]
pub struct EsTarget {
    pub url: EsUrl,
    pub index: Route,
    pub exclude: Vec<Ident>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Insert, or replace every column of an existing row with the same key.
    Upsert,
    /// Insert; an existing row with the same key is left as it is (still strict about bad values).
    InsertIgnore,
}

impl JobSpec {
    /// Read, expand and validate a job file. Nothing is connected to.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_str(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parse a job from text; `env` resolves `${VAR}`.
    pub fn parse_str(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, JobError> {
        let invalid = |message: String| JobError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut doc: toml::Value = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        expand_env(&mut doc, "", env).map_err(invalid)?;
        let raw: RawJob = doc
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string().trim_end().replace('\n', " ")))?;
        Self::validate(raw, path).map_err(invalid)
    }
}

#[cfg(test)]
mod tests;
