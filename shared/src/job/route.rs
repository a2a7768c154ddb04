//! Where rows go: a target name template (`{col % N}`, `{col:FORMAT}`) or `[target.ranges]` (DESIGN.md §2).
//! Parsed and checked here; resolved against rows by [`crate::sink`]'s one resolver.

use super::{Ident, TableName};

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
