//! The `[follow]` section of a job file (DESIGN.md §8), parsed and validated.
//!
//! Contract: [`FollowSpec::from_toml`] takes the section's TOML value and either returns a spec whose every
//! field is usable as it is, or a message naming the offending key (`follow.server_id`, …) and saying what
//! is accepted. Unknown keys and keys of another `from` are refused, so a typo never silently falls back to
//! a default. [`super::JobSpec::follow`] holds the result; only `bitmig-producer --follow` acts on it.

use std::time::Duration;

/// Default `settle`: how long after a change its ids are re-driven once more (§8 point 4).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10);

/// Where the changes come from, with what each source needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowFrom {
    /// MySQL/MariaDB binlog, ROW format; `server_id` is the replica id the follower registers with.
    Binlog { server_id: u32 },
    /// PostgreSQL logical replication (pgoutput) through `slot` and `publication`, created when missing.
    Logical { slot: String, publication: String },
    /// Change events someone else publishes to RabbitMQ `queue`; ids read with the JSON pointers `keys`
    /// (`*` as a segment means "every element of this array").
    Queue { queue: String, keys: Vec<String> },
}

impl FollowFrom {
    /// The name stored as `from` in `bitmig:{JOB}:follow`.
    pub fn name(&self) -> &'static str {
        match self {
            FollowFrom::Binlog { .. } => "binlog",
            FollowFrom::Logical { .. } => "logical",
            FollowFrom::Queue { .. } => "queue",
        }
    }
}

/// A validated `[follow]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowSpec {
    pub from: FollowFrom,
    /// Delay after which every changed id is re-driven once more (closes the late-write race of seed 001).
    pub settle: Duration,
}

fn key_err(key: &str, what: &str) -> String {
    format!("follow.{key}: {what}")
}

fn opt_str(t: &toml::Table, key: &str) -> Result<Option<String>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(toml::Value::String(_)) => Err(key_err(key, "must not be empty")),
        Some(other) => Err(key_err(
            key,
            &format!("must be a string, not {}", other.type_str()),
        )),
    }
}

/// A replication slot / publication name PostgreSQL accepts: lower-case letters, digits, `_`, ≤ 63.
fn pg_name(key: &str, s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(key_err(
            key,
            &format!("`{s}` is not a valid name (lower-case letters, digits and `_`, at most 63)"),
        ))
    }
}

/// Checks one JSON pointer (RFC 6901, plus `*` for "every array element").
fn check_pointer(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(key_err(
            "keys",
            &format!(
                "`{p}` is not a JSON pointer (it must start with `/`, e.g. \"/payload/after/id\")"
            ),
        ));
    }
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.peek(), Some('0') | Some('1')) {
            return Err(key_err(
                "keys",
                &format!("`{p}`: `~` must be followed by 0 or 1 (RFC 6901)"),
            ));
        }
    }
    Ok(())
}

impl FollowSpec {
    /// Parses and validates the `[follow]` section's value. `job_name` makes the default slot and
    /// publication names (`bitmig_<job>`), so they are stable across restarts.
    pub fn from_toml(value: &toml::Value, job_name: &str) -> Result<Self, String> {
        let t = value
            .as_table()
            .ok_or_else(|| "follow: must be a table ([follow])".to_owned())?;
        let from = opt_str(t, "from")?.ok_or_else(|| {
            key_err(
                "from",
                "missing (one of \"binlog\", \"logical\", \"queue\")",
            )
        })?;
        let allowed: &[&str] = match from.as_str() {
            "binlog" => &["from", "settle", "server_id"],
            "logical" => &["from", "settle", "slot", "publication"],
            "queue" => &["from", "settle", "queue", "keys"],
            other => {
                return Err(key_err(
                    "from",
                    &format!("`{other}` is not one of \"binlog\", \"logical\", \"queue\""),
                ))
            }
        };
        if let Some(k) = t.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(key_err(
                k,
                &format!(
                    "unknown key for from = \"{from}\" (accepted: {})",
                    allowed.join(", ")
                ),
            ));
        }
        let settle = match opt_str(t, "settle")? {
            None => DEFAULT_SETTLE,
            Some(s) => humantime::parse_duration(&s).map_err(|e| {
                key_err(
                    "settle",
                    &format!("`{s}` is not a duration like \"10s\" ({e})"),
                )
            })?,
        };
        if settle.is_zero() {
            return Err(key_err(
                "settle",
                "must be longer than a batch can take (e.g. \"10s\"), not 0",
            ));
        }
        let default_name = format!("bitmig_{}", job_name.to_ascii_lowercase().replace('-', "_"));
        let from = match from.as_str() {
            "binlog" => {
                let id = match t.get("server_id") {
                    None => return Err(key_err("server_id", "missing: the replica id the follower registers with; pick one no other replica of this server uses, e.g. 4242")),
                    Some(toml::Value::Integer(i)) => *i,
                    Some(other) => return Err(key_err("server_id", &format!("must be an integer, not {}", other.type_str()))),
                };
                let server_id = u32::try_from(id).ok().filter(|&i| i > 0).ok_or_else(|| {
                    key_err(
                        "server_id",
                        &format!("{id} is out of range (1 ..= 4294967295)"),
                    )
                })?;
                FollowFrom::Binlog { server_id }
            }
            "logical" => FollowFrom::Logical {
                slot: pg_name(
                    "slot",
                    &opt_str(t, "slot")?.unwrap_or_else(|| default_name.clone()),
                )?,
                publication: pg_name(
                    "publication",
                    &opt_str(t, "publication")?.unwrap_or_else(|| default_name.clone()),
                )?,
            },
            _ => {
                let queue = opt_str(t, "queue")?.ok_or_else(|| {
                    key_err(
                        "queue",
                        "missing: the RabbitMQ queue the change events are published to",
                    )
                })?;
                let keys = match t.get("keys") {
                    None => return Err(key_err("keys", "missing: JSON pointers to the changed key, e.g. [\"/payload/after/id\", \"/payload/before/id\"]")),
                    Some(toml::Value::Array(a)) if !a.is_empty() => a
                        .iter()
                        .map(|v| match v {
                            toml::Value::String(s) => check_pointer(s).map(|()| s.clone()),
                            other => Err(key_err("keys", &format!("every entry must be a string, not {}", other.type_str()))),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Some(toml::Value::Array(_)) => return Err(key_err("keys", "must name at least one JSON pointer")),
                    Some(other) => return Err(key_err("keys", &format!("must be an array of JSON pointers, not {}", other.type_str()))),
                };
                FollowFrom::Queue { queue, keys }
            }
        };
        Ok(Self { from, settle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FollowSpec, String> {
        let v: toml::Value = toml::from_str(s).unwrap();
        FollowSpec::from_toml(&v, "Orders-1")
    }

    #[test]
    fn each_source_parses_with_defaults() {
        let b = parse("from = \"binlog\"\nserver_id = 4242").unwrap();
        assert_eq!(b.from, FollowFrom::Binlog { server_id: 4242 });
        assert_eq!(b.settle, DEFAULT_SETTLE);
        let l = parse("from = \"logical\"\nsettle = \"3s\"").unwrap();
        assert_eq!(
            l.from,
            FollowFrom::Logical {
                slot: "bitmig_orders_1".into(),
                publication: "bitmig_orders_1".into()
            }
        );
        assert_eq!(l.settle, Duration::from_secs(3));
        let q =
            parse("from = \"queue\"\nqueue = \"orders.changes\"\nkeys = [\"/data/*/id\"]").unwrap();
        assert_eq!(
            q.from,
            FollowFrom::Queue {
                queue: "orders.changes".into(),
                keys: vec!["/data/*/id".into()]
            }
        );
    }

    #[test]
    fn bad_sections_name_the_key() {
        for (text, needle) in [
            ("server_id = 1", "follow.from: missing"),
            ("from = \"kafka\"", "follow.from: `kafka`"),
            ("from = \"binlog\"", "follow.server_id: missing"),
            (
                "from = \"binlog\"\nserver_id = 0",
                "follow.server_id: 0 is out of range",
            ),
            (
                "from = \"binlog\"\nserver_id = \"x\"",
                "follow.server_id: must be an integer",
            ),
            (
                "from = \"binlog\"\nserver_id = 1\nslot = \"s\"",
                "follow.slot: unknown key",
            ),
            (
                "from = \"logical\"\nslot = \"Bad-Name\"",
                "follow.slot: `Bad-Name`",
            ),
            (
                "from = \"queue\"\nkeys = [\"/id\"]",
                "follow.queue: missing",
            ),
            (
                "from = \"queue\"\nqueue = \"q\"\nkeys = [\"id\"]",
                "follow.keys: `id` is not a JSON pointer",
            ),
            (
                "from = \"queue\"\nqueue = \"q\"\nkeys = []",
                "follow.keys: must name at least one",
            ),
            (
                "from = \"binlog\"\nserver_id = 1\nsettle = \"soon\"",
                "follow.settle: `soon`",
            ),
            (
                "from = \"binlog\"\nserver_id = 1\nsettle = \"0s\"",
                "follow.settle: must be longer",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?} gave {e:?}, wanted {needle:?}");
        }
    }
}
