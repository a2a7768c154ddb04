//! Raw job → [`JobSpec`]: every check of the job file, each error naming the key (DESIGN.md §2).

use std::path::Path;

use super::raw::RawJob;
use super::*;

impl JobSpec {
    pub(super) fn validate(raw: RawJob, path: &Path) -> Result<Self, String> {
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
                let url = EsUrl::parse(&t.url).map_err(|e| {
                    if e.starts_with("unsupported scheme") {
                        "`target.url`: Elasticsearch needs http:// or https://".to_owned()
                    } else {
                        format!("`target.url`: {e}")
                    }
                })?;
                let index = t.index.ok_or("`target.index`: missing")?;
                let index = Route::parse(&index).map_err(|e| format!("`target.index`: {e}"))?;
                let exclude = t
                    .exclude
                    .unwrap_or_default()
                    .iter()
                    .map(|c| field("target.exclude", Ident::new(c)))
                    .collect::<Result<_, _>>()?;
                TargetSpec::Elasticsearch(EsTarget {
                    url,
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

        let follow = raw
            .follow
            .map(|v| FollowSpec::from_toml(&v, &name))
            .transpose()?;
        let throttle = match raw.throttle {
            Some(t) => ThrottleSpec::from_toml(t)?,
            None => ThrottleSpec::default(),
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
            follow,
            throttle,
        })
    }
}
