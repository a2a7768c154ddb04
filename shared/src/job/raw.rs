//! The job file's shape as serde reads it: every key optional where it has a default, unknown keys
//! refused. [`super::validate`] turns it into a [`super::JobSpec`].

use serde::Deserialize;

use super::WriteMode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) name: String,
    pub(super) group_size: Option<i64>,
    pub(super) batch_size: Option<i64>,
    pub(super) source: RawSource,
    pub(super) target: RawTarget,
    /// `[follow]` (DESIGN.md §8), checked by [`super::follow::FollowSpec::from_toml`].
    pub(super) follow: Option<toml::Value>,
    /// `[throttle]`, already `${VAR}`-expanded; parsed by [`super::ThrottleSpec::from_toml`].
    pub(super) throttle: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) url: String,
    pub(super) table: String,
    pub(super) key: String,
    pub(super) columns: Option<Vec<String>>,
    pub(super) filter: Option<String>,
    pub(super) version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) kind: String,
    pub(super) url: String,
    pub(super) table: Option<String>,
    pub(super) ranges: Option<toml::Table>,
    pub(super) write: Option<WriteMode>,
    pub(super) create: Option<bool>,
    pub(super) index: Option<String>,
    pub(super) exclude: Option<Vec<String>>,
}
