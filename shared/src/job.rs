//! The job file: one TOML file describes one migration (DESIGN.md §2).
//!
//! Loading is strict and happens before any connection is opened: unknown keys, names that are not
//! identifiers, bad routes, absurd sizes and unset `${VAR}`s are refused with a message that names the
//! key and the file. `${VAR}` is expanded inside string values only, after TOML parsing, so a variable's
//! content can never change the structure of the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Where a SQL target's rows go. A job names either `table` (a plain name or a template of `{col % N}` and
/// `{col:FORMAT}` parts) or `[target.ranges]`, never both: a range names whole tables, so a template inside
/// a range would be a second, competing rule for the same row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableRoute {
    Template(Route),
    Ranges(RangeMap),
}

impl TableRoute {
    /// The one table every row goes to, when there is one.
    pub fn plain(&self) -> Option<&str> {
        match self {
            TableRoute::Template(r) => r.plain(),
            TableRoute::Ranges(_) => None,
        }
    }

    /// The route as the job file wrote it, for messages and the stored spec.
    pub fn describe(&self) -> String {
        match self {
            TableRoute::Template(r) => r.template.clone(),
            TableRoute::Ranges(m) => m.describe(),
        }
    }
}

/// `[target.ranges]`: inclusive ranges of `source.key`, each sent to one table. Sorted by `first`,
/// non-overlapping (validated at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMap {
    pub ranges: Vec<KeyRangeTable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRangeTable {
    pub first: u64,
    pub last: u64,
    pub table: TableName,
}

impl RangeMap {
    /// Parse `"first..last" = "table"` pairs: numbers, `first <= last`, no two ranges overlapping, table
    /// names that are (optionally qualified) identifiers.
    pub fn parse(pairs: &toml::Table) -> Result<Self, String> {
        if pairs.is_empty() {
            return Err("no ranges (write `\"0..999999\" = \"orders_a\"` pairs)".into());
        }
        let mut ranges = Vec::with_capacity(pairs.len());
        for (range, table) in pairs {
            let (first, last) = range
                .split_once("..")
                .ok_or_else(|| format!("`{range}` is not `first..last`"))?;
            let number = |s: &str| -> Result<u64, String> {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("`{range}`: `{}` is not a non-negative integer", s.trim()))
            };
            let (first, last) = (
                number(first)?,
                number(last.strip_prefix('=').unwrap_or(last))?,
            );
            if first > last {
                return Err(format!("`{range}`: first is greater than last"));
            }
            let table = table
                .as_str()
                .ok_or_else(|| format!("`{range}`: the table must be a string"))?;
            let table = TableName::parse(table).map_err(|e| format!("`{range}`: {e}"))?;
            ranges.push(KeyRangeTable { first, last, table });
        }
        ranges.sort_by_key(|r| r.first);
        for w in ranges.windows(2) {
            if w[1].first <= w[0].last {
                return Err(format!(
                    "`{}..{}` and `{}..{}` overlap",
                    w[0].first, w[0].last, w[1].first, w[1].last
                ));
            }
        }
        Ok(Self { ranges })
    }

    /// The table of `key`, if a range holds it.
    pub fn table_of(&self, key: u64) -> Option<&TableName> {
        let i = self.ranges.partition_point(|r| r.last < key);
        self.ranges
            .get(i)
            .filter(|r| r.first <= key)
            .map(|r| &r.table)
    }

    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|r| format!("{}..{} = {}", r.first, r.last, r.table))
            .collect();
        format!("ranges {{{}}}", parts.join(", "))
    }
}

#[derive(Debug, Clone)]
pub struct EsTarget {
    pub url: String,
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

/// The database engine a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Mysql,
    Postgres,
}

/// A database URL. `Debug` and `Display` show it without user and password.
#[derive(Clone)]
pub struct DbUrl {
    raw: String,
    pub engine: Engine,
}

impl DbUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
        let engine = match parsed.scheme() {
            "mysql" | "mariadb" => Engine::Mysql,
            "postgres" | "postgresql" => Engine::Postgres,
            other => {
                return Err(format!(
                    "unsupported scheme `{other}://` (use mysql:// or postgres://)"
                ))
            }
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        Ok(Self {
            raw: raw.to_owned(),
            engine,
        })
    }

    /// The URL with credentials; only for opening a connection.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with user, password and password-like query parameters removed.
    pub fn redacted(&self) -> String {
        redact_url(&self.raw)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Strip user, password and secret-looking query parameters from any URL (AMQP, Redis, database).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .filter(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    !(k.contains("pass") || k.contains("secret") || k.contains("token"))
                })
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparsable url>".to_owned(),
    }
}

/// A SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters. Reserved words are fine: every
/// identifier is quoted when it is put into SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    pub fn new(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        let ok = s.len() <= 64
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not an identifier (letters, digits and `_`, not starting with a digit, at most 64)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table name, optionally qualified by a database (MySQL) or schema (PostgreSQL): `orders` or `shop.orders`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TableName {
    pub schema: Option<Ident>,
    pub table: Ident,
}

impl TableName {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once('.') {
            Some((schema, table)) => Ok(Self {
                schema: Some(Ident::new(schema)?),
                table: Ident::new(table)?,
            }),
            None => Ok(Self {
                schema: None,
                table: Ident::new(s)?,
            }),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.table),
            None => write!(f, "{}", self.table),
        }
    }
}

/// A target name template: a plain name, or literal parts mixed with `{col % N}` (hash-mod on an integer
/// column) and `{col:FORMAT}` (a chrono format of a date/time column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub template: String,
    pub parts: Vec<RoutePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePart {
    Literal(String),
    HashMod { column: Ident, modulus: u64 },
    Time { column: Ident, format: String },
}

impl Route {
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("route `{template}`: `{{` without `}}`"))?;
                parts.push(Self::parse_placeholder(template, &after[..end])?);
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let lit = &rest[..end];
                if lit.contains('}') {
                    return Err(format!("route `{template}`: `}}` without `{{`"));
                }
                if !lit
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                {
                    return Err(format!(
                        "route `{template}`: `{lit}` is not part of an identifier"
                    ));
                }
                parts.push(RoutePart::Literal(lit.to_owned()));
                rest = &rest[end..];
            }
        }
        let route = Self {
            template: template.to_owned(),
            parts,
        };
        if let Some(name) = route.plain() {
            TableName::parse(name).map_err(|e| format!("route `{template}`: {e}"))?;
        } else if !matches!(route.parts.first(), Some(RoutePart::Literal(l)) if l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        {
            return Err(format!(
                "route `{template}`: must start with a literal name part"
            ));
        }
        Ok(route)
    }

    fn parse_placeholder(template: &str, inner: &str) -> Result<RoutePart, String> {
        if let Some((col, format)) = inner.split_once(':') {
            let column = Ident::new(col.trim()).map_err(|e| format!("route `{template}`: {e}"))?;
            let probe = chrono::NaiveDate::from_ymd_opt(2024, 1, 31)
                .and_then(|d| d.and_hms_opt(23, 59, 58))
                .map(|t| {
                    use std::fmt::Write;
                    let mut s = String::new();
                    write!(s, "{}", t.format(format)).map(|_| s)
                });
            match probe {
                Some(Ok(s))
                    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {}
                _ => {
                    return Err(format!(
                        "route `{template}`: `{format}` is not a chrono format that yields identifier characters"
                    ))
                }
            }
            Ok(RoutePart::Time {
                column,
                format: format.to_owned(),
            })
        } else if let Some((col, modulus)) = inner.split_once('%') {
            let column = Ident::new(col.trim()).map_err(|e| format!("route `{template}`: {e}"))?;
            let modulus: u64 = modulus.trim().parse().map_err(|_| {
                format!(
                    "route `{template}`: `{}` is not a positive integer",
                    modulus.trim()
                )
            })?;
            if modulus == 0 {
                return Err(format!("route `{template}`: modulus 0"));
            }
            Ok(RoutePart::HashMod { column, modulus })
        } else {
            Err(format!(
                "route `{template}`: `{{{inner}}}` is neither {{col % N}} nor {{col:FORMAT}}"
            ))
        }
    }

    /// The name when the route has no placeholder.
    pub fn plain(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [RoutePart::Literal(l)] => Some(l),
            _ => None,
        }
    }

    /// Columns the route reads.
    pub fn columns(&self) -> impl Iterator<Item = &Ident> {
        self.parts.iter().filter_map(|p| match p {
            RoutePart::Literal(_) => None,
            RoutePart::HashMod { column, .. } | RoutePart::Time { column, .. } => Some(column),
        })
    }
}

// ---- raw file shape -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    group_size: Option<i64>,
    batch_size: Option<i64>,
    source: RawSource,
    target: RawTarget,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: String,
    table: String,
    key: String,
    columns: Option<Vec<String>>,
    filter: Option<String>,
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: String,
    url: String,
    table: Option<String>,
    ranges: Option<toml::Table>,
    write: Option<WriteMode>,
    create: Option<bool>,
    index: Option<String>,
    exclude: Option<Vec<String>>,
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

    fn validate(raw: RawJob, path: &Path) -> Result<Self, String> {
        let name = raw.name;
        if name.is_empty()
            || name.len() > 40
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "`name`: `{name}` must match [a-z0-9_]{{1,40}} (it names Redis keys and queues)"
            ));
        }
        let group_size = raw.group_size.unwrap_or(DEFAULT_GROUP_SIZE as i64);
        if group_size < 1 || group_size as u64 > MAX_GROUP_SIZE {
            return Err(format!(
                "`group_size`: {group_size} is out of range 1..={MAX_GROUP_SIZE} (bits per bitmap)"
            ));
        }
        let batch_size = raw
            .batch_size
            .unwrap_or(DEFAULT_BATCH_SIZE.min(group_size as u64) as i64);
        if batch_size < 1 || batch_size > group_size {
            return Err(format!(
                "`batch_size`: {batch_size} is out of range 1..={group_size} (a batch never spans groups)"
            ));
        }

        let s = raw.source;
        let field = |key: &str, r: Result<Ident, String>| r.map_err(|e| format!("`{key}`: {e}"));
        let source_url = DbUrl::parse(&s.url).map_err(|e| format!("`source.url`: {e}"))?;
        let table = TableName::parse(&s.table).map_err(|e| format!("`source.table`: {e}"))?;
        let key = field("source.key", Ident::new(&s.key))?;
        let columns = match s.columns {
            None => None,
            Some(cols) => {
                if cols.is_empty() {
                    return Err(
                        "`source.columns`: empty list (leave it out for every column)".into(),
                    );
                }
                let cols = cols
                    .iter()
                    .map(|c| field("source.columns", Ident::new(c)))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = cols.iter().find(|c| !seen.insert(c.as_str())) {
                    return Err(format!("`source.columns`: `{dup}` is listed twice"));
                }
                if !cols.contains(&key) {
                    return Err(format!("`source.columns`: must include the key `{key}`"));
                }
                Some(cols)
            }
        };
        let filter = match s.filter {
            Some(f) if f.trim().is_empty() => {
                return Err("`source.filter`: empty (leave it out for no filter)".into())
            }
            other => other,
        };
        let version = s
            .version
            .map(|v| field("source.version", Ident::new(&v)))
            .transpose()?;
        if let Some(v) = &version {
            if *v == key {
                return Err(format!(
                    "`source.version`: `{v}` is the key; the version must be another, orderable column"
                ));
            }
            if columns.as_ref().is_some_and(|cols| !cols.contains(v)) {
                return Err(format!(
                    "`source.version`: `{v}` is not in `source.columns` (the version is compared on write)"
                ));
            }
        }

        let t = raw.target;
        let target = match t.kind.as_str() {
            "sql" => {
                if t.index.is_some() || t.exclude.is_some() {
                    return Err(
                        "`target.index` and `target.exclude` belong to kind = \"elasticsearch\""
                            .into(),
                    );
                }
                let url = DbUrl::parse(&t.url).map_err(|e| format!("`target.url`: {e}"))?;
                let table = match (t.table, t.ranges) {
                    (Some(_), Some(_)) => {
                        return Err(
                            "`target.table` and `[target.ranges]`: give one or the other \
                                    (ranges name whole tables; they do not mix with a template)"
                                .into(),
                        )
                    }
                    (None, None) => {
                        return Err(
                            "`target.table`: missing (kind = \"sql\" needs a table, a route or \
                                    `[target.ranges]`)"
                                .into(),
                        )
                    }
                    (Some(table), None) => TableRoute::Template(
                        Route::parse(&table).map_err(|e| format!("`target.table`: {e}"))?,
                    ),
                    (None, Some(ranges)) => TableRoute::Ranges(
                        RangeMap::parse(&ranges).map_err(|e| format!("`target.ranges`: {e}"))?,
                    ),
                };
                let routed: Vec<&Ident> = match &table {
                    TableRoute::Template(r) => r.columns().collect(),
                    TableRoute::Ranges(_) => Vec::new(),
                };
                for column in routed {
                    if columns.as_ref().is_some_and(|cols| !cols.contains(column)) {
                        return Err(format!(
                            "`target.table`: the route column `{column}` is not in `source.columns`"
                        ));
                    }
                }
                TargetSpec::Sql(SqlTarget {
                    url,
                    table,
                    write: t.write.unwrap_or(WriteMode::Upsert),
                    create: t.create.unwrap_or(false),
                })
            }
            "elasticsearch" => {
                if t.table.is_some()
                    || t.write.is_some()
                    || t.ranges.is_some()
                    || t.create.is_some()
                {
                    return Err(
                        "`target.table`, `target.ranges`, `target.write` and `target.create` \
                                belong to kind = \"sql\""
                            .into(),
                    );
                }
                let u = url::Url::parse(&t.url)
                    .map_err(|e| format!("`target.url`: not a URL ({e})"))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err("`target.url`: Elasticsearch needs http:// or https://".into());
                }
                let index = t.index.ok_or("`target.index`: missing")?;
                let index = Route::parse(&index).map_err(|e| format!("`target.index`: {e}"))?;
                let exclude = t
                    .exclude
                    .unwrap_or_default()
                    .iter()
                    .map(|c| field("target.exclude", Ident::new(c)))
                    .collect::<Result<_, _>>()?;
                TargetSpec::Elasticsearch(EsTarget {
                    url: t.url,
                    index,
                    exclude,
                })
            }
            other => {
                return Err(format!(
                    "`target.kind`: `{other}` is not one of \"sql\", \"elasticsearch\""
                ))
            }
        };

        Ok(Self {
            path: path.to_owned(),
            name,
            group_size: group_size as u64,
            batch_size: batch_size as u64,
            source: SourceSpec {
                url: source_url,
                table,
                key,
                columns,
                filter,
                version,
            },
            target,
        })
    }

    /// The job as stored in `bitmig:{JOB}:spec`: every setting, URLs without credentials.
    pub fn ledger_spec(&self) -> serde_json::Value {
        let target = match &self.target {
            TargetSpec::Sql(t) => serde_json::json!({
                "kind": "sql",
                "url": t.url.redacted(),
                "table": t.table.describe(),
                "write": t.write,
            }),
            TargetSpec::Elasticsearch(t) => serde_json::json!({
                "kind": "elasticsearch",
                "url": redact_url(&t.url),
                "index": t.index.template,
                "exclude": t.exclude,
            }),
        };
        let mut target = target;
        if let TargetSpec::Sql(SqlTarget { create: true, .. }) = &self.target {
            // Only when set, so the spec of a job stored before `create` existed still matches.
            target["create"] = true.into();
        }
        serde_json::json!({
            "name": self.name,
            "group_size": self.group_size,
            "batch_size": self.batch_size,
            "source": {
                "url": self.source.url.redacted(),
                "table": self.source.table.to_string(),
                "key": self.source.key,
                "columns": self.source.columns,
                "filter": self.source.filter,
                "version": self.source.version,
            },
            "target": target,
        })
    }
}

/// Fields (dotted paths) whose values differ between two specs, for "which fields differ" messages.
pub fn spec_differences(stored: &serde_json::Value, ours: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &path,
                        a.get(k).unwrap_or(&null),
                        b.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{prefix}: stored {a}, this job {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", stored, ours, &mut out);
    out
}

/// Replace `${VAR}` in every string value. An unset variable is an error naming it and the key (`at`: the
/// key path of `v`, "" for a whole document). Public for the other TOML files (bitmig-rollover's config).
pub fn expand_env(
    v: &mut toml::Value,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand_str(s, env).map_err(|e| format!("`{at}`: {e}"))?;
        }
        toml::Value::Array(items) => {
            for item in items {
                expand_env(item, at, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                expand_env(item, &path, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`".to_owned())?;
        let var = &after[..end];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{var}}}` is not a variable name"));
        }
        let value = env(var).ok_or_else(|| format!("environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "orders"
[source]
url = "mysql://app:s3cret@db:3306/shop"
table = "orders"
key = "id"
[target]
kind = "sql"
url = "${TARGET_URL}"
table = "orders_archive"
"#;

    fn env(name: &str) -> Option<String> {
        (name == "TARGET_URL")
            .then(|| "mysql://u:topsecret@db2/shop?password=x&ssl-mode=REQUIRED".into())
    }

    fn parse(text: &str) -> Result<JobSpec, String> {
        JobSpec::parse_str(text, Path::new("job.toml"), &env).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_job_gets_defaults_and_expands_variables() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.group_size, 10_000);
        assert_eq!(job.batch_size, 1_000);
        let TargetSpec::Sql(t) = &job.target else {
            panic!()
        };
        assert_eq!(t.write, WriteMode::Upsert);
        assert!(t.url.expose().contains("topsecret"));
    }

    #[test]
    fn the_ledger_spec_carries_no_credentials() {
        let spec = parse(GOOD).unwrap().ledger_spec().to_string();
        assert!(
            !spec.contains("s3cret") && !spec.contains("topsecret") && !spec.contains("app"),
            "{spec}"
        );
        assert!(!spec.contains("password"), "{spec}");
        assert!(spec.contains("ssl-mode=REQUIRED"), "{spec}");
        assert!(!format!("{:?}", parse(GOOD).unwrap()).contains("s3cret"));
    }

    #[test]
    fn bad_jobs_are_refused_naming_the_problem() {
        let cases = [
            (
                GOOD.replace("name = \"orders\"", "name = \"orders\"\ncolour = \"red\""),
                "colour",
            ),
            (
                GOOD.replace("key = \"id\"", "key = \"id\"\ncolour = 1"),
                "colour",
            ),
            (
                GOOD.replace("table = \"orders\"", "table = \"orders; drop table x\""),
                "orders; drop table x",
            ),
            (
                GOOD.replace("table = \"orders\"", "table = \"ord`ers\""),
                "ord`ers",
            ),
            (
                GOOD.replace("${TARGET_URL}", "${NOT_SET_ANYWHERE}"),
                "NOT_SET_ANYWHERE",
            ),
            (
                GOOD.replace("name = \"orders\"", "name = \"Orders!\""),
                "name",
            ),
            (
                GOOD.replace("name = \"orders\"", "name = \"orders\"\ngroup_size = 0"),
                "group_size",
            ),
            (
                GOOD.replace(
                    "name = \"orders\"",
                    "name = \"orders\"\ngroup_size = 100\nbatch_size = 101",
                ),
                "batch_size",
            ),
            (
                GOOD.replace(
                    "name = \"orders\"",
                    "name = \"orders\"\ngroup_size = 100000000",
                ),
                "group_size",
            ),
            (
                GOOD.replace("kind = \"sql\"", "kind = \"csv\""),
                "target.kind",
            ),
            (
                GOOD.replace("table = \"orders_archive\"", "table = \"a_{id % 0}\""),
                "modulus 0",
            ),
            (
                GOOD.replace("table = \"orders_archive\"", "table = \"a_{id\""),
                "without",
            ),
            (
                GOOD.replace("key = \"id\"", "key = \"id\"\ncolumns = [\"a\"]"),
                "must include the key",
            ),
            (GOOD.replace("mysql://app", "oracle://app"), "source.url"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "want {want:?} in: {err}");
            assert!(err.contains("job.toml"), "the file is named: {err}");
        }
    }

    #[test]
    fn routes_parse_each_kind() {
        let r = Route::parse("orders_{user_id % 16}").unwrap();
        assert_eq!(
            r.parts[1],
            RoutePart::HashMod {
                column: Ident::new("user_id").unwrap(),
                modulus: 16
            }
        );
        let r = Route::parse("orders_{created_at:%Y%m}").unwrap();
        assert!(matches!(&r.parts[1], RoutePart::Time { format, .. } if format == "%Y%m"));
        assert_eq!(
            Route::parse("shop.orders").unwrap().plain(),
            Some("shop.orders")
        );
        assert!(Route::parse("orders_{created_at:%Y-%m}").is_err());
        assert!(Route::parse("{id % 4}").is_err());
    }

    fn with_target(target_lines: &str) -> String {
        GOOD.replace("table = \"orders_archive\"\n", target_lines)
    }

    #[test]
    fn id_ranges_parse_sorted_and_find_their_table() {
        let job = parse(&with_target(
            "create = true\n[target.ranges]\n\"1000..1999\" = \"shard_b.orders\"\n\"0..999\" = \"orders_a\"\n",
        ))
        .unwrap();
        let TargetSpec::Sql(t) = &job.target else {
            panic!()
        };
        assert!(t.create);
        let TableRoute::Ranges(map) = &t.table else {
            panic!("{:?}", t.table)
        };
        assert_eq!(map.ranges[0].first, 0, "sorted by first");
        assert_eq!(map.table_of(0).unwrap().to_string(), "orders_a");
        assert_eq!(map.table_of(999).unwrap().to_string(), "orders_a");
        assert_eq!(map.table_of(1000).unwrap().to_string(), "shard_b.orders");
        assert_eq!(map.table_of(1999).unwrap().to_string(), "shard_b.orders");
        assert_eq!(map.table_of(2000), None, "past the last range");
        let gap = RangeMap::parse(&toml::from_str("\"5..5\" = \"a\"\n\"10..20\" = \"b\"").unwrap())
            .unwrap();
        assert_eq!(gap.table_of(4), None, "before the first range");
        assert_eq!(gap.table_of(5).unwrap().to_string(), "a", "a one-id range");
        assert_eq!(gap.table_of(7), None, "between ranges");
        let spec = job.ledger_spec();
        assert_eq!(spec["target"]["create"], true);
        assert!(
            spec["target"]["table"]
                .as_str()
                .unwrap()
                .contains("0..999 = orders_a"),
            "{spec}"
        );
        let plain = parse(GOOD).unwrap().ledger_spec();
        assert!(
            plain["target"].get("create").is_none(),
            "create = false leaves the stored spec as before: {plain}"
        );
    }

    #[test]
    fn bad_ranges_routes_and_versions_are_refused() {
        let cases = [
            (
                "[target.ranges]\n\"0..9\" = \"a\"\n\"9..20\" = \"b\"\n",
                "overlap",
            ),
            ("[target.ranges]\n\"10..9\" = \"a\"\n", "first is greater"),
            (
                "[target.ranges]\n\"-1..9\" = \"a\"\n",
                "not a non-negative integer",
            ),
            ("[target.ranges]\n\"0-9\" = \"a\"\n", "is not `first..last`"),
            ("[target.ranges]\n\"0..9\" = \"a b\"\n", "not an identifier"),
            ("[target.ranges]\n\"0..9\" = 3\n", "must be a string"),
            ("[target.ranges]\n", "no ranges"),
            (
                "table = \"t_{id % 2}\"\n[target.ranges]\n\"0..9\" = \"a\"\n",
                "one or the other",
            ),
            ("write = \"upsert\"\n", "`target.table`: missing"),
            ("table = \"t\"\ncreate = \"yes\"\n", "create"),
        ];
        for (lines, want) in cases {
            let err = parse(&with_target(lines)).unwrap_err();
            assert!(err.contains(want), "want {want:?} in: {err}");
            assert!(err.contains("target.") || err.contains("create"), "{err}");
        }
        let cols = |extra: &str| {
            GOOD.replace(
                "key = \"id\"",
                &format!("key = \"id\"\ncolumns = [\"id\", \"amount\"]\n{extra}"),
            )
        };
        let err = parse(&cols("").replace("orders_archive", "o_{user_id % 4}")).unwrap_err();
        assert!(
            err.contains("`user_id` is not in `source.columns`"),
            "{err}"
        );
        let err = parse(&cols("version = \"updated_at\"")).unwrap_err();
        assert!(
            err.contains("source.version") && err.contains("updated_at"),
            "{err}"
        );
        let err =
            parse(&GOOD.replace("key = \"id\"", "key = \"id\"\nversion = \"id\"")).unwrap_err();
        assert!(err.contains("is the key"), "{err}");
        assert!(parse(&cols("version = \"amount\"")).is_ok());
        let es = "[target]\nkind = \"elasticsearch\"\nurl = \"http://es:9200\"\nindex = \"o\"\ncreate = true\n";
        let err = parse(&format!("{}{es}", GOOD.split("[target]").next().unwrap())).unwrap_err();
        assert!(err.contains("belong to kind = \"sql\""), "{err}");
    }

    #[test]
    fn spec_differences_name_the_fields() {
        let a = serde_json::json!({"name": "x", "source": {"table": "a", "key": "id"}});
        let b = serde_json::json!({"name": "x", "source": {"table": "b", "key": "id"}});
        let d = spec_differences(&a, &b);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("source.table:"), "{d:?}");
    }
}
