//! The rollover config file (DESIGN.md §12): TOML, `${VAR}` expanded like the job file's, unknown keys
//! refused, every value checked before anything is connected to. A bad file is a [`BadInput`] naming the key
//! (exit 2).

use std::fmt;
use std::path::{Path, PathBuf};

use bitmig_shared::cli::BadInput;
use bitmig_shared::job::{DbUrl, Engine, EsUrl, Ident};
use chrono::{Datelike, NaiveDate};
use serde::Deserialize;

/// At most this many tasks of each kind run at once unless `tasks.max_running` says otherwise (the seed's 30).
pub const DEFAULT_MAX_RUNNING: u32 = 30;
pub const DEFAULT_TABLE: &str = "es_task";

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub tasks_url: DbUrl,
    pub table: Ident,
    pub max_running: u32,
    /// With credentials, shown without them; opened only by [`bitmig_shared::es::EsClient::new`].
    pub es_url: EsUrl,
    /// `-1`: unthrottled.
    pub requests_per_second: f64,
    /// `auto` or a number.
    pub slices: String,
    pub moves: Vec<Move>,
}

/// One `[[move]]`.
#[derive(Debug, Clone)]
pub struct Move {
    /// An index name, or a pattern with `*` resolved with `_cat/indices`.
    pub indices: String,
    /// The monthly index: `{index}` and `{month:FMT}` (chrono strftime; `{month}` alone is `%Y%m`).
    pub dest: String,
    pub filter: MonthFilter,
    pub keep_months: Option<u32>,
}

/// Which documents belong to a month.
#[derive(Debug, Clone)]
pub enum MonthFilter {
    /// `date_field` in [first day, first day of the next month).
    DateField(String),
    /// A query template (JSON once `{start}`/`{end}` are filled in).
    Query(String),
}

/// A calendar month, `2021-09` on the command line and in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub first: NaiveDate,
}

impl Month {
    pub fn parse(s: &str) -> Result<Self, String> {
        NaiveDate::parse_from_str(&format!("{}-01", s.trim()), "%Y-%m-%d")
            .map(|first| Self { first })
            .map_err(|_| format!("`{s}` is not a month like 2021-09"))
    }

    /// The month `n` months earlier.
    pub fn minus(self, n: u32) -> Self {
        let total = self.first.year() * 12 + self.first.month0() as i32 - n as i32;
        Self {
            first: NaiveDate::from_ymd_opt(
                total.div_euclid(12),
                total.rem_euclid(12) as u32 + 1,
                1,
            )
            .unwrap_or(self.first),
        }
    }

    /// The first day of the next month (the exclusive end).
    pub fn end(self) -> NaiveDate {
        let total = self.first.year() * 12 + self.first.month0() as i32 + 1;
        NaiveDate::from_ymd_opt(total.div_euclid(12), total.rem_euclid(12) as u32 + 1, 1)
            .unwrap_or(self.first)
    }

    /// `202109`, as in the seed's task ids.
    pub fn compact(self) -> String {
        self.first.format("%Y%m").to_string()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first.format("%Y-%m"))
    }
}

impl Move {
    /// The month's query: `{"range": {field: {"gte": "2021-09-01", "lt": "2021-10-01"}}}` or the template.
    pub fn query(&self, month: Month) -> Result<serde_json::Value, String> {
        let (start, end) = (
            month.first.format("%Y-%m-%d").to_string(),
            month.end().format("%Y-%m-%d").to_string(),
        );
        match &self.filter {
            MonthFilter::DateField(field) => Ok(serde_json::json!({
                "range": { field: { "gte": start, "lt": end } }
            })),
            MonthFilter::Query(template) => {
                let text = template.replace("{start}", &start).replace("{end}", &end);
                serde_json::from_str(&text)
                    .map_err(|e| format!("`move.query` is not JSON once filled in ({e})"))
            }
        }
    }

    /// The monthly index of `index`.
    pub fn dest_index(&self, index: &str, month: Month) -> String {
        render_dest(&self.dest, index, month)
    }

    /// Whether `name` is the monthly index of one of `sources` (a pattern like `google_*` matches them too,
    /// and they are never a move's source).
    pub fn is_dest_of_any(&self, name: &str, sources: &[String]) -> bool {
        let (before, after) = split_month(&self.dest);
        sources.iter().any(|s| {
            if s == name {
                return false;
            }
            let pre = before.replace("{index}", s);
            let post = after.map(|(_, a)| a.replace("{index}", s));
            match post {
                None => pre == name,
                Some(post) => {
                    name.len() > pre.len() + post.len()
                        && name.starts_with(&pre)
                        && name.ends_with(&post)
                        && name[pre.len()..name.len() - post.len()]
                            .chars()
                            .all(|c| c.is_ascii_digit() || c == '-' || c == '_' || c == '.')
                }
            }
        })
    }
}

/// The template split around `{month…}`: the text before it, and (the format, the text after).
fn split_month(template: &str) -> (&str, Option<(&str, &str)>) {
    match template.find("{month") {
        None => (template, None),
        Some(at) => {
            let rest = &template[at..];
            let close = rest.find('}').unwrap_or(rest.len() - 1);
            let fmt = rest[..close].strip_prefix("{month").unwrap_or("");
            let fmt = fmt.strip_prefix(':').unwrap_or("%Y%m");
            let fmt = if fmt.is_empty() { "%Y%m" } else { fmt };
            (&template[..at], Some((fmt, &rest[close + 1..])))
        }
    }
}

fn render_dest(template: &str, index: &str, month: Month) -> String {
    let (before, rest) = split_month(template);
    let mut out = before.replace("{index}", index);
    if let Some((fmt, after)) = rest {
        out.push_str(&month.first.format(fmt).to_string());
        out.push_str(&after.replace("{index}", index));
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tasks: RawTasks,
    elasticsearch: RawEs,
    #[serde(rename = "move")]
    moves: Option<Vec<RawMove>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTasks {
    url: String,
    table: Option<String>,
    max_running: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEs {
    url: String,
    requests_per_second: Option<f64>,
    slices: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMove {
    indices: String,
    dest: String,
    date_field: Option<String>,
    query: Option<String>,
    keep_months: Option<i64>,
}

impl Config {
    /// Read, expand and check a config file; every error is a [`BadInput`] naming the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse_str(&text, path, &|name| std::env::var(name).ok())
            .map_err(|m| BadInput(format!("config file {}: {m}", path.display())).into())
    }

    pub fn parse_str(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut doc: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        bitmig_shared::job::expand_env(&mut doc, "", env)?;
        let raw: RawConfig = doc
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string().trim_end().replace('\n', " "))?;
        let tasks_url = DbUrl::parse(&raw.tasks.url).map_err(|e| format!("`tasks.url`: {e}"))?;
        if tasks_url.engine != Engine::Mysql {
            return Err("`tasks.url`: the task table lives on MySQL/MariaDB (mysql://)".into());
        }
        let names_database = url::Url::parse(tasks_url.expose())
            .is_ok_and(|u| !u.path().trim_matches('/').is_empty());
        if !names_database {
            return Err(format!(
                "`tasks.url`: {tasks_url} names no database (mysql://host:3306/DATABASE)"
            ));
        }
        let table = Ident::new(raw.tasks.table.as_deref().unwrap_or(DEFAULT_TABLE))
            .map_err(|e| format!("`tasks.table`: {e}"))?;
        let max_running = raw.tasks.max_running.unwrap_or(DEFAULT_MAX_RUNNING as i64);
        if !(1..=10_000).contains(&max_running) {
            return Err(format!(
                "`tasks.max_running`: {max_running} is out of range 1..=10000"
            ));
        }
        let es_url = EsUrl::parse(&raw.elasticsearch.url)
            .map_err(|e| format!("`elasticsearch.url`: {e}"))?;
        // Credentials that cannot be sent (a bad %-escape) are refused here, before anything runs.
        bitmig_shared::es::EsClient::new(
            "elasticsearch.url",
            &es_url,
            None,
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
            1,
        )?;
        let requests_per_second = raw.elasticsearch.requests_per_second.unwrap_or(-1.0);
        if !(requests_per_second == -1.0 || requests_per_second > 0.0) {
            return Err(format!(
                "`elasticsearch.requests_per_second`: {requests_per_second} (a positive number, or -1 for unthrottled)"
            ));
        }
        let slices = match raw.elasticsearch.slices {
            None => "auto".to_owned(),
            Some(toml::Value::String(s)) if s == "auto" => s,
            Some(toml::Value::Integer(n)) if n >= 1 => n.to_string(),
            Some(other) => {
                return Err(format!(
                    "`elasticsearch.slices`: {other} (\"auto\" or a number ≥ 1)"
                ))
            }
        };
        let moves = raw.moves.unwrap_or_default();
        if moves.is_empty() {
            return Err("no `[[move]]`: nothing to plan".into());
        }
        let mut out = Vec::new();
        for (i, m) in moves.into_iter().enumerate() {
            let at = |key: &str| format!("`move[{i}].{key}`");
            if m.indices.trim().is_empty() || m.indices.contains([',', ' ', '/']) {
                return Err(format!(
                    "{}: `{}` is not an index name or pattern",
                    at("indices"),
                    m.indices
                ));
            }
            if !m.dest.contains("{month") {
                return Err(format!(
                    "{}: `{}` has no `{{month…}}`: every month would go to one index",
                    at("dest"),
                    m.dest
                ));
            }
            if m.indices.contains('*') && !m.dest.contains("{index}") {
                return Err(format!(
                    "{}: a pattern's indices need `{{index}}` in the destination",
                    at("dest")
                ));
            }
            let filter = match (m.date_field, m.query) {
                (Some(f), None) if !f.trim().is_empty() => MonthFilter::DateField(f),
                (None, Some(q)) => MonthFilter::Query(q),
                _ => {
                    return Err(format!(
                        "{} or {}: give exactly one",
                        at("date_field"),
                        at("query")
                    ))
                }
            };
            let keep_months = match m.keep_months {
                None => None,
                Some(k) if (1..=1200).contains(&k) => Some(k as u32),
                Some(k) => {
                    return Err(format!(
                        "{}: {k} (at least 1: the month being copied is never deleted)",
                        at("keep_months")
                    ))
                }
            };
            let mv = Move {
                indices: m.indices,
                dest: m.dest,
                filter,
                keep_months,
            };
            let probe = Month::parse("2021-09").map_err(|e| e.to_string())?;
            mv.query(probe)
                .map_err(|e| format!("{}: {e}", at("query")))?;
            out.push(mv);
        }
        Ok(Self {
            path: path.to_owned(),
            tasks_url,
            table,
            max_running: max_running as u32,
            es_url,
            requests_per_second,
            slices,
            moves: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[tasks]
url = "${DB}"
max_running = 5
[elasticsearch]
url = "http://elastic:pw@127.0.0.1:9200"
[[move]]
indices = "google_*"
dest = "{index}_{month:%Y%m}"
date_field = "start_date"
keep_months = 1
"#;

    fn env(name: &str) -> Option<String> {
        (name == "DB").then(|| "mysql://root@127.0.0.1/x".into())
    }

    #[test]
    fn a_good_file_and_its_templates() {
        let c = Config::parse_str(GOOD, Path::new("r.toml"), &env).unwrap();
        assert_eq!(c.max_running, 5);
        assert_eq!(c.table.as_str(), "es_task");
        assert_eq!(c.slices, "auto");
        let m = &c.moves[0];
        let sep = Month::parse("2021-09").unwrap();
        assert_eq!(m.dest_index("google_us", sep), "google_us_202109");
        assert_eq!(sep.minus(1).to_string(), "2021-08");
        assert_eq!(
            Month::parse("2021-01").unwrap().minus(1).to_string(),
            "2020-12"
        );
        assert_eq!(
            Month::parse("2021-12").unwrap().end().to_string(),
            "2022-01-01"
        );
        assert_eq!(
            m.query(sep).unwrap(),
            serde_json::json!({"range": {"start_date": {"gte": "2021-09-01", "lt": "2021-10-01"}}})
        );
        let sources = vec!["google_us".to_owned(), "google_us_202109".to_owned()];
        assert!(m.is_dest_of_any("google_us_202109", &sources));
        assert!(!m.is_dest_of_any("google_us", &sources));
    }

    #[test]
    fn bad_files_name_the_key() {
        let bad = |text: &str, key: &str| {
            let e = Config::parse_str(text, Path::new("r.toml"), &env).unwrap_err();
            assert!(e.contains(key), "{key} not in {e}");
        };
        bad(
            &GOOD.replace("max_running = 5", "max_running = 0"),
            "tasks.max_running",
        );
        bad(
            &GOOD.replace("max_running = 5", "max_runing = 5"),
            "max_runing",
        );
        bad(
            &GOOD.replace("keep_months = 1", "keep_months = 0"),
            "move[0].keep_months",
        );
        bad(
            &GOOD.replace("{index}_{month:%Y%m}", "cold"),
            "move[0].dest",
        );
        bad(&GOOD.replace("${DB}", "${NOPE}"), "NOPE");
        bad(
            &GOOD.replace("${DB}", "mysql://root@127.0.0.1:3306/"),
            "tasks.url",
        );
        bad(
            &GOOD.replace("http://elastic:pw@", "ftp://elastic:pw@"),
            "elasticsearch.url",
        );
        bad(
            &GOOD.replace("elastic:pw@", "elastic:p%zz@"),
            "elasticsearch.url",
        );
    }

    #[test]
    fn the_cluster_password_is_never_shown() {
        let c = Config::parse_str(GOOD, Path::new("r.toml"), &env).unwrap();
        assert_eq!(c.es_url.expose(), "http://elastic:pw@127.0.0.1:9200");
        assert_eq!(c.es_url.to_string(), "http://127.0.0.1:9200/");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("127.0.0.1:9200")
                && !shown.contains("pw@")
                && !shown.contains("elastic:"),
            "{shown}"
        );
    }
}

#[cfg(test)]
mod example {
    use super::*;

    #[test]
    fn the_example_config_loads() {
        let text = include_str!("../../examples/rollover.toml");
        let env = |name: &str| match name {
            "TASKS_DATABASE_URL" => Some("mysql://rollover:pw@db:3306/ops".to_owned()),
            "ES_URL" => Some("https://elastic:pw@es:9200".to_owned()),
            _ => None,
        };
        let c = Config::parse_str(text, Path::new("examples/rollover.toml"), &env).unwrap();
        assert_eq!((c.max_running, c.table.as_str()), (30, "es_word_task"));
        let m = &c.moves[0];
        assert_eq!(m.keep_months, Some(1));
        assert_eq!(
            m.dest_index("google_us", Month::parse("2021-09").unwrap()),
            "google_us_202109"
        );
    }
}
