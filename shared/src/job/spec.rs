//! The job as stored in `bitmig:{JOB}:spec` (DESIGN.md §4): every setting, URLs without credentials, so a
//! program whose job differs from the stored one refuses to run and names the fields.

use super::*;

impl JobSpec {
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
                "url": t.url.redacted(),
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
