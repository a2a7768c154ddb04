//! The job file's `[throttle]` section (DESIGN.md §11), parsed and validated. Every field is optional; a
//! missing section or field means no such limit.
//!
//! ```toml
//! [throttle]
//! max_rows_per_s = 5000              # all consumers of the job together, rows per second
//! max_threads_running = 30           # the source's and SQL target's running threads / active backends
//! max_replica_lag = "10s"            # a duration ("500ms", "10s", "2m") or a number of seconds
//! replicas = ["${REPLICA_URL}"]      # mysql:// a replica itself; postgres:// a primary, whose standbys' replay lag counts
//! ```
//!
//! [`super::JobSpec::parse_str`] hands the section to [`ThrottleSpec::from_toml`] after `${VAR}` expansion (as
//! the rest of the job file); the error names the field and the loader adds the file. A throttle is an
//! operating knob that may change between runs: it is *not* part of the stored spec
//! ([`super::JobSpec::ledger_spec`]), so changing it never makes a program refuse the job.
//! [`ThrottleSpec::ledger_spec`] is its credential-free form for showing.

use std::time::Duration;

use serde::Deserialize;

use super::DbUrl;

/// The parsed `[throttle]` section.
#[derive(Debug, Clone, Default)]
pub struct ThrottleSpec {
    /// Rows per second for all consumers of the job together (a per-second budget in Redis).
    pub max_rows_per_s: Option<u64>,
    /// Work waits while the source or the SQL target runs more threads (MySQL `Threads_running`) or
    /// active backends (PostgreSQL `pg_stat_activity`, state `active`) than this.
    pub max_threads_running: Option<u64>,
    /// Work waits while a replica lags more than this.
    pub max_replica_lag: Option<Duration>,
    /// Where the lag is read: a MySQL/MariaDB URL is a replica (`SHOW REPLICA STATUS`/`SHOW SLAVE STATUS`);
    /// a PostgreSQL URL is a primary (`pg_stat_replication.replay_lag` of each standby).
    pub replicas: Vec<DbUrl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    max_rows_per_s: Option<i64>,
    max_threads_running: Option<i64>,
    max_replica_lag: Option<RawDuration>,
    replicas: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(f64),
    Text(String),
}

impl ThrottleSpec {
    /// Whether any limit is set (else a worker need not build a throttle at all).
    pub fn is_empty(&self) -> bool {
        self.max_rows_per_s.is_none()
            && self.max_threads_running.is_none()
            && self.max_replica_lag.is_none()
    }

    /// Parse the (already `${VAR}`-expanded) `[throttle]` table. `Err` names the field, e.g.
    /// "`throttle.max_rows_per_s`: 0 must be at least 1".
    pub fn from_toml(value: toml::Value) -> Result<Self, String> {
        let raw: RawThrottle = value.try_into().map_err(|e: toml::de::Error| {
            format!(
                "`throttle`: {}",
                e.to_string().trim_end().replace('\n', " ")
            )
        })?;
        let positive = |field: &str, v: Option<i64>| -> Result<Option<u64>, String> {
            match v {
                Some(n) if n < 1 => Err(format!("`throttle.{field}`: {n} must be at least 1")),
                Some(n) => Ok(Some(n as u64)),
                None => Ok(None),
            }
        };
        let max_rows_per_s = positive("max_rows_per_s", raw.max_rows_per_s)?;
        let max_threads_running = positive("max_threads_running", raw.max_threads_running)?;
        let max_replica_lag = match raw.max_replica_lag {
            None => None,
            Some(RawDuration::Seconds(s)) => {
                if !(s.is_finite() && s > 0.0) {
                    return Err(format!(
                        "`throttle.max_replica_lag`: {s} must be a positive number of seconds"
                    ));
                }
                Some(Duration::from_secs_f64(s))
            }
            Some(RawDuration::Text(t)) => {
                let d = humantime::parse_duration(t.trim()).map_err(|e| {
                    format!(
                        "`throttle.max_replica_lag`: `{t}` is not a duration like \"10s\" ({e})"
                    )
                })?;
                if d.is_zero() {
                    return Err("`throttle.max_replica_lag`: must be above zero".into());
                }
                Some(d)
            }
        };
        let replicas = raw
            .replicas
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, u)| DbUrl::parse(u).map_err(|e| format!("`throttle.replicas[{i}]`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        match (max_replica_lag.is_some(), replicas.is_empty()) {
            (true, true) => {
                return Err(
                    "`throttle.max_replica_lag` is set but `throttle.replicas` lists no replica"
                        .into(),
                )
            }
            (false, false) => {
                return Err(
                    "`throttle.replicas` is set but `throttle.max_replica_lag` is not (the lag allowed)"
                        .into(),
                )
            }
            _ => {}
        }
        Ok(Self {
            max_rows_per_s,
            max_threads_running,
            max_replica_lag,
            replicas,
        })
    }

    /// The section as it may be shown: replicas without credentials. Not part of the stored job spec (a
    /// throttle may change between runs).
    pub fn ledger_spec(&self) -> serde_json::Value {
        serde_json::json!({
            "max_rows_per_s": self.max_rows_per_s,
            "max_threads_running": self.max_threads_running,
            "max_replica_lag_ms": self.max_replica_lag.map(|d| d.as_millis() as u64),
            "replicas": self.replicas.iter().map(DbUrl::redacted).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ThrottleSpec, String> {
        let doc: toml::Table = toml::from_str(text).unwrap();
        ThrottleSpec::from_toml(doc["throttle"].clone())
    }

    #[test]
    fn every_field() {
        let t = parse(
            r#"[throttle]
max_rows_per_s = 5000
max_threads_running = 30
max_replica_lag = "1500ms"
replicas = ["mysql://u:secret@replica:3307/db"]"#,
        )
        .unwrap();
        assert_eq!(t.max_rows_per_s, Some(5000));
        assert_eq!(t.max_threads_running, Some(30));
        assert_eq!(t.max_replica_lag, Some(Duration::from_millis(1500)));
        assert_eq!(t.replicas.len(), 1);
        assert!(!t.is_empty());
        let shown = t.ledger_spec().to_string();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("max_replica_lag_ms\":1500"), "{shown}");
    }

    #[test]
    fn seconds_as_a_number() {
        let t =
            parse("[throttle]\nmax_replica_lag = 2.5\nreplicas = [\"postgres://p/x\"]").unwrap();
        assert_eq!(t.max_replica_lag, Some(Duration::from_millis(2500)));
        assert!(parse("[throttle]\n").unwrap().is_empty());
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("max_rows_per_s = 0", "`throttle.max_rows_per_s`: 0"),
            (
                "max_threads_running = -3",
                "`throttle.max_threads_running`: -3",
            ),
            (
                "max_replica_lag = \"soon\"\nreplicas = [\"mysql://h/\"]",
                "is not a duration",
            ),
            (
                "max_replica_lag = 0\nreplicas = [\"mysql://h/\"]",
                "positive number",
            ),
            ("max_replica_lag = \"5s\"", "lists no replica"),
            (
                "replicas = [\"mysql://h/\"]",
                "`throttle.max_replica_lag` is not",
            ),
            (
                "max_replica_lag = \"5s\"\nreplicas = [\"redis://h/\"]",
                "`throttle.replicas[0]`: unsupported scheme",
            ),
            ("max_rows = 5", "unknown field `max_rows`"),
        ];
        for (body, want) in cases {
            let err = parse(&format!("[throttle]\n{body}")).unwrap_err();
            assert!(err.contains(want), "{body:?}: {err}");
        }
    }
}
