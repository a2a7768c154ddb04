//! Rows → Bulk API NDJSON: the index a row goes to, its external version, and its document, following
//! the value mapping documented on [`super`]. Pure functions: no I/O, every rule unit-tested below.
//!
//! A row that cannot be encoded (a NULL route column, text that is not UTF-8, a JSON column that is not
//! JSON, …) is refused on its own with a reason that names the column; the rest of the batch goes on.

use std::fmt::Write as _;

use base64::Engine as _;
use serde::Serializer as _;

use crate::job::{EsTarget, Ident};
use crate::sink::route::{is_date, Template};
use crate::value::{Column, ColumnType, Row, Value};

/// How to turn a row of a given column layout into a bulk action and a document. Built from the job and
/// the columns the source reads; building it checks that every column the job names is there and of a type
/// that fits its use, so a mistake stops the consumer at start instead of failing every row.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Columns that become document fields: position, name, type.
    fields: Vec<(usize, String, ColumnType)>,
    route: Template,
    /// Position, name and type of the `source.version` column.
    version: Option<(usize, String, ColumnType)>,
}

/// One row, encoded: its action line and its document line, each ending in `\n`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EncodedDoc {
    pub key: u64,
    pub index: String,
    pub lines: Vec<u8>,
    /// A `delete` action (one line, no document) rather than an `index` action.
    pub delete: bool,
}

/// A `delete` action for `key` in `index`: done once the item says 200 or 404 (no such document or index).
pub(crate) fn delete_action(index: &str, key: u64) -> Result<EncodedDoc, String> {
    let mut lines = Vec::with_capacity(48 + index.len());
    let mut out = Json(&mut lines);
    out.raw(b"{\"delete\":{\"_index\":");
    out.str(index)?;
    out.raw(b",\"_id\":\"");
    out.raw(key.to_string().as_bytes());
    out.raw(b"\"}}\n");
    Ok(EncodedDoc {
        key,
        index: index.to_owned(),
        lines,
        delete: true,
    })
}

impl Plan {
    pub fn new(
        target: &EsTarget,
        version: Option<&Ident>,
        columns: &[Column],
    ) -> Result<Self, String> {
        let find = |what: &str, name: &Ident| {
            columns
                .iter()
                .position(|c| c.name == name.as_str())
                .ok_or_else(|| format!("{what} `{name}` is not among the columns the source reads"))
        };
        for name in &target.exclude {
            find("target.exclude: column", name)?;
        }
        let fields: Vec<(usize, String, ColumnType)> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !target.exclude.iter().any(|x| x.as_str() == c.name))
            .map(|(i, c)| (i, c.name.clone(), c.ty))
            .collect();
        if let Some((i, name, _)) = fields
            .iter()
            .find(|(_, _, ty)| matches!(ty, ColumnType::Array | ColumnType::PgNative))
        {
            return Err(format!(
                "column `{name}` is {}, which has no JSON form here: leave it out with target.exclude",
                columns[*i].type_name
            ));
        }
        let route = Template::new(&target.index, columns, "target.index")?;
        let version = match version {
            None => None,
            Some(name) => {
                let at = find("source.version: column", name)?;
                let ty = columns[at].ty;
                if !(is_date(ty) || matches!(ty, ColumnType::Int { .. })) {
                    return Err(format!(
                        "source.version: `{name}` is {}; an Elasticsearch external version needs an integer, \
                         DATE, DATETIME or TIMESTAMP column",
                        columns[at].type_name
                    ));
                }
                Some((at, name.to_string(), ty))
            }
        };
        Ok(Self {
            fields,
            route,
            version,
        })
    }

    pub fn versioned(&self) -> bool {
        self.version.is_some()
    }

    /// The index the row goes to.
    pub fn index_for(&self, row: &Row) -> Result<String, String> {
        let name = self
            .route
            .render(row)
            .map_err(|e| format!("{e}: the row has no index"))?;
        check_index_name(&name)?;
        Ok(name)
    }

    /// The row's external version: the integer itself, or epoch milliseconds (UTC) of a date/time.
    pub fn version_of(&self, row: &Row) -> Result<Option<u64>, String> {
        let Some((at, col, _)) = &self.version else {
            return Ok(None);
        };
        // Elasticsearch accepts external versions in 0..=i64::MAX.
        let v = match row.values.get(*at) {
            Some(Value::Int(i)) => u64::try_from(*i).ok(),
            Some(Value::UInt(u)) => Some(*u).filter(|u| *u <= i64::MAX as u64),
            Some(Value::Date(y, mo, d, h, mi, s, us)) => {
                let t = naive(*y, *mo, *d, *h, *mi, *s, *us).ok_or_else(|| {
                    format!(
                        "version column `{col}` holds {}, which is not a calendar date",
                        date_text(*y, *mo, *d)
                    )
                })?;
                u64::try_from(t.and_utc().timestamp_millis()).ok()
            }
            Some(Value::Null) => {
                return Err(format!(
                    "version column `{col}` is NULL: the document would have no version"
                ))
            }
            other => {
                return Err(format!(
                    "version column `{col}` holds {other:?}, not an integer or a date"
                ))
            }
        };
        v.map(Some).ok_or_else(|| {
            format!(
                "version column `{col}` is out of Elasticsearch's version range (0 ..= 2^63-1, \
                 dates from 1970 on): {:?}",
                row.values[*at]
            )
        })
    }

    /// The row's action and document lines.
    pub fn encode(&self, row: &Row) -> Result<EncodedDoc, String> {
        let index = self.index_for(row)?;
        let version = self.version_of(row)?;
        let mut lines = Vec::with_capacity(64 + 32 * self.fields.len());
        let mut out = Json(&mut lines);
        out.raw(b"{\"index\":{\"_index\":");
        out.str(&index)?;
        out.raw(b",\"_id\":\"");
        out.raw(row.key.to_string().as_bytes());
        out.raw(b"\"");
        if let Some(v) = version {
            out.raw(b",\"version\":");
            out.raw(v.to_string().as_bytes());
            out.raw(b",\"version_type\":\"external\"");
        }
        out.raw(b"}}\n{");
        for (n, (at, name, ty)) in self.fields.iter().enumerate() {
            if n > 0 {
                out.raw(b",");
            }
            out.str(name)?;
            out.raw(b":");
            let value = row.values.get(*at).unwrap_or(&Value::Null);
            encode_value(&mut out, *ty, value).map_err(|e| format!("column `{name}`: {e}"))?;
        }
        out.raw(b"}\n");
        Ok(EncodedDoc {
            key: row.key,
            index,
            lines,
            delete: false,
        })
    }
}

/// Elasticsearch's rules for index names that a route could break: lowercase, no leading `-`, `_`, `+`,
/// not `.` or `..`, at most 255 bytes. (Routes only ever yield letters, digits, `_` and `.`.)
pub(crate) fn check_index_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with(['-', '_', '+'])
        || name.len() > 255
        || name.chars().any(|c| c.is_ascii_uppercase())
    {
        return Err(format!(
            "`{name}` is not a valid Elasticsearch index name (lowercase, not starting with `_`, `-` or `+`, \
             at most 255 bytes)"
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn naive(y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8, us: u32) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())?.and_hms_micro_opt(
        h.into(),
        mi.into(),
        s.into(),
        us,
    )
}

fn date_text(y: u16, mo: u8, d: u8) -> String {
    format!("{y:04}-{mo:02}-{d:02}")
}

/// A JSON writer over a byte buffer; serde_json does the escaping and the number formatting.
pub(crate) struct Json<'a>(pub &'a mut Vec<u8>);

impl Json<'_> {
    fn ser(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
        serde_json::Serializer::new(&mut *self.0)
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn str(&mut self, s: &str) -> Result<(), String> {
        self.ser().serialize_str(s).map_err(|e| e.to_string())
    }
    fn i64(&mut self, v: i64) -> Result<(), String> {
        self.ser().serialize_i64(v).map_err(|e| e.to_string())
    }
    fn u64(&mut self, v: u64) -> Result<(), String> {
        self.ser().serialize_u64(v).map_err(|e| e.to_string())
    }
}

/// One value as JSON, by the rules on [`super`].
pub(crate) fn encode_value(
    out: &mut Json<'_>,
    ty: ColumnType,
    value: &Value,
) -> Result<(), String> {
    match value {
        Value::Null => out.raw(b"null"),
        Value::Int(i) => out.i64(*i)?,
        Value::UInt(u) => out.u64(*u)?,
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(format!("{f} is not a number JSON can hold"));
            }
            // f32 formatting: the shortest text that reads back as the same f32 (`0.1`, not 0.10000000149).
            out.ser().serialize_f32(*f).map_err(|e| e.to_string())?;
        }
        Value::Double(d) => {
            if !d.is_finite() {
                return Err(format!("{d} is not a number JSON can hold"));
            }
            out.ser().serialize_f64(*d).map_err(|e| e.to_string())?;
        }
        Value::Bytes(b) => match ty {
            ColumnType::Bytes => out.str(&base64::engine::general_purpose::STANDARD.encode(b))?,
            ColumnType::Bit => {
                if b.len() > 8 {
                    return Err(format!("a BIT value of {} bytes (at most 8)", b.len()));
                }
                out.u64(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))?;
            }
            ColumnType::Json => {
                // Validate without building a tree (which would round big numbers), then copy the text as
                // it is. A valid JSON text has line breaks only between tokens, where a space means the same.
                serde_json::from_slice::<serde::de::IgnoredAny>(b)
                    .map_err(|e| format!("not valid JSON ({e})"))?;
                out.0.extend(
                    b.iter()
                        .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c }),
                );
            }
            ColumnType::Other => match std::str::from_utf8(b) {
                Ok(s) => out.str(s)?,
                Err(_) => out.str(&base64::engine::general_purpose::STANDARD.encode(b))?,
            },
            _ => {
                let s = std::str::from_utf8(b).map_err(|e| format!("not UTF-8 text ({e})"))?;
                out.str(s)?;
            }
        },
        Value::Date(y, mo, d, h, mi, s, us) => {
            if *mo == 0 || *d == 0 {
                // MySQL's zero dates (`0000-00-00`, `2024-00-00`) mean "no date" and are no calendar date.
                out.raw(b"null");
                return Ok(());
            }
            if naive(*y, *mo, *d, *h, *mi, *s, *us).is_none() {
                return Err(format!("{} is not a calendar date", date_text(*y, *mo, *d)));
            }
            let mut text = date_text(*y, *mo, *d);
            if ty != ColumnType::Date {
                let _ = write!(text, "T{h:02}:{mi:02}:{s:02}");
                if *us != 0 {
                    let _ = write!(text, ".{us:06}");
                }
                if ty == ColumnType::Timestamp {
                    text.push('Z');
                }
            }
            out.str(&text)?;
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let zero = hours == 0 && *mi == 0 && *s == 0 && *us == 0;
            let mut text = String::new();
            if *neg && !zero {
                text.push('-');
            }
            let _ = write!(text, "{hours:02}:{mi:02}:{s:02}");
            if *us != 0 {
                let _ = write!(text, ".{us:06}");
            }
            out.str(&text)?;
        }
        Value::Bool(b) => out.raw(if *b { b"true" } else { b"false" }),
        Value::Uuid(u) => out.str(&crate::value::uuid_text(u))?,
        Value::PgRaw { oid, .. } => {
            return Err(format!(
                "a PostgreSQL value (type oid {oid}) with no JSON form: leave the column out with \
                 target.exclude"
            ))
        }
    }
    Ok(())
}

/// Consecutive runs of `docs` whose bodies stay within `max_bytes` each; a document larger than that on its
/// own is a run of its own.
pub(crate) fn chunks(docs: &[EncodedDoc], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, doc) in docs.iter().enumerate() {
        if i > start && size + doc.lines.len() > max_bytes {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += doc.lines.len();
    }
    if start < docs.len() {
        out.push(start..docs.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Route;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            type_name: format!("{ty:?}").to_lowercase(),
        }
    }

    fn json(ty: ColumnType, v: Value) -> Result<String, String> {
        let mut buf = Vec::new();
        encode_value(&mut Json(&mut buf), ty, &v)?;
        Ok(String::from_utf8(buf).unwrap())
    }

    fn target(index: &str, exclude: &[&str]) -> EsTarget {
        EsTarget {
            url: crate::job::EsUrl::parse("http://127.0.0.1:9200").unwrap(),
            index: Route::parse(index).unwrap(),
            exclude: exclude.iter().map(|c| Ident::new(c).unwrap()).collect(),
        }
    }

    fn orders() -> Vec<Column> {
        vec![
            col("id", ColumnType::Int { unsigned: true }),
            col("user_id", ColumnType::Int { unsigned: false }),
            col("amount", ColumnType::Decimal),
            col("note", ColumnType::Text),
            col("created_at", ColumnType::DateTime),
            col("updated_at", ColumnType::Timestamp),
        ]
    }

    fn order(id: u64, created: Value, updated: Value) -> Row {
        Row {
            key: id,
            values: vec![
                Value::UInt(id),
                Value::Int(-7),
                Value::Bytes(b"12.30".to_vec()),
                Value::Null,
                created,
                updated,
            ],
        }
    }

    const JAN31: Value = Value::Date(2024, 1, 31, 23, 59, 58, 123_456);

    #[test]
    fn integers_are_numbers_exactly_including_u64_max_and_i64_min() {
        use ColumnType::Int;
        assert_eq!(
            json(Int { unsigned: false }, Value::Int(i64::MIN)).unwrap(),
            "-9223372036854775808"
        );
        assert_eq!(
            json(Int { unsigned: true }, Value::UInt(u64::MAX)).unwrap(),
            "18446744073709551615"
        );
        // Above 2^53: still the exact digits (a JavaScript reader would round; Elasticsearch's long does not).
        assert_eq!(
            json(Int { unsigned: true }, Value::UInt((1 << 53) + 1)).unwrap(),
            "9007199254740993"
        );
        assert_eq!(json(ColumnType::Year, Value::Int(2024)).unwrap(), "2024");
    }

    #[test]
    fn decimals_are_strings_with_every_digit() {
        let v = Value::Bytes(b"-12345678901234567890.000001".to_vec());
        assert_eq!(
            json(ColumnType::Decimal, v).unwrap(),
            "\"-12345678901234567890.000001\""
        );
        assert_eq!(
            json(ColumnType::Decimal, Value::Bytes(b"0.10".to_vec())).unwrap(),
            "\"0.10\""
        );
    }

    #[test]
    fn floats_are_the_shortest_numbers_that_read_back_the_same() {
        assert_eq!(json(ColumnType::Float, Value::Float(0.1)).unwrap(), "0.1");
        assert_eq!(
            json(ColumnType::Float, Value::Float(-3.0e38)).unwrap(),
            "-3e+38"
        );
        assert_eq!(json(ColumnType::Double, Value::Double(0.1)).unwrap(), "0.1");
        assert_eq!(
            json(ColumnType::Double, Value::Double(1.5e300)).unwrap(),
            "1.5e+300"
        );
        assert!(json(ColumnType::Double, Value::Double(f64::NAN)).is_err());
        assert!(json(ColumnType::Float, Value::Float(f32::INFINITY)).is_err());
    }

    #[test]
    fn text_is_an_escaped_string_and_must_be_utf8() {
        let v = Value::Bytes("a\"b\\c\nd\u{1}é😀".as_bytes().to_vec());
        assert_eq!(
            json(ColumnType::Text, v).unwrap(),
            r#""a\"b\\c\nd\u0001é😀""#
        );
        assert_eq!(
            json(ColumnType::Text, Value::Bytes(Vec::new())).unwrap(),
            "\"\""
        );
        let err = json(ColumnType::Text, Value::Bytes(vec![0xff, 0xfe])).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn binary_is_base64_and_bit_is_a_big_endian_integer() {
        assert_eq!(
            json(ColumnType::Bytes, Value::Bytes(vec![0, 0xff, 0x10])).unwrap(),
            "\"AP8Q\""
        );
        assert_eq!(
            json(ColumnType::Bytes, Value::Bytes(Vec::new())).unwrap(),
            "\"\""
        );
        assert_eq!(
            json(ColumnType::Bit, Value::Bytes(vec![0x0f, 0xff])).unwrap(),
            "4095"
        );
        assert_eq!(
            json(ColumnType::Bit, Value::Bytes(vec![0xff; 8])).unwrap(),
            "18446744073709551615"
        );
        assert!(json(ColumnType::Bit, Value::Bytes(vec![1; 9])).is_err());
        assert_eq!(
            json(ColumnType::Other, Value::Bytes(b"POINT".to_vec())).unwrap(),
            "\"POINT\""
        );
        assert_eq!(
            json(ColumnType::Other, Value::Bytes(vec![0xff])).unwrap(),
            "\"/w==\""
        );
    }

    #[test]
    fn json_columns_are_embedded_as_they_are_on_one_line() {
        let v =
            Value::Bytes(b"{\"a\": [1, 2.50, 18446744073709551616],\n \"b\": \"x\\ny\"}".to_vec());
        assert_eq!(
            json(ColumnType::Json, v).unwrap(),
            "{\"a\": [1, 2.50, 18446744073709551616],  \"b\": \"x\\ny\"}"
        );
        assert_eq!(
            json(ColumnType::Json, Value::Bytes(b"null".to_vec())).unwrap(),
            "null"
        );
        let err = json(ColumnType::Json, Value::Bytes(b"{\"a\":".to_vec())).unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn dates_are_iso_8601_and_only_timestamps_carry_a_zone() {
        assert_eq!(
            json(ColumnType::Date, Value::Date(2024, 1, 31, 0, 0, 0, 0)).unwrap(),
            "\"2024-01-31\""
        );
        assert_eq!(
            json(ColumnType::DateTime, JAN31).unwrap(),
            "\"2024-01-31T23:59:58.123456\""
        );
        assert_eq!(
            json(ColumnType::DateTime, Value::Date(999, 1, 1, 0, 0, 0, 0)).unwrap(),
            "\"0999-01-01T00:00:00\""
        );
        assert_eq!(
            json(ColumnType::Timestamp, JAN31).unwrap(),
            "\"2024-01-31T23:59:58.123456Z\""
        );
        assert_eq!(
            json(ColumnType::Timestamp, Value::Date(1970, 1, 1, 0, 0, 1, 0)).unwrap(),
            "\"1970-01-01T00:00:01Z\""
        );
        assert_eq!(
            json(ColumnType::DateTime, Value::Date(2024, 1, 31, 1, 2, 3, 5)).unwrap(),
            "\"2024-01-31T01:02:03.000005\""
        );
    }

    #[test]
    fn zero_dates_are_null_and_impossible_dates_refuse_the_row() {
        assert_eq!(
            json(ColumnType::Date, Value::Date(0, 0, 0, 0, 0, 0, 0)).unwrap(),
            "null"
        );
        assert_eq!(
            json(ColumnType::DateTime, Value::Date(2024, 0, 0, 0, 0, 0, 0)).unwrap(),
            "null"
        );
        let err = json(ColumnType::Date, Value::Date(2023, 2, 29, 0, 0, 0, 0)).unwrap_err();
        assert!(err.contains("2023-02-29"), "{err}");
    }

    #[test]
    fn times_are_signed_hours_minutes_seconds() {
        assert_eq!(
            json(ColumnType::Time, Value::Time(false, 0, 1, 2, 3, 0)).unwrap(),
            "\"01:02:03\""
        );
        assert_eq!(
            json(ColumnType::Time, Value::Time(true, 34, 22, 59, 59, 0)).unwrap(),
            "\"-838:59:59\""
        );
        assert_eq!(
            json(ColumnType::Time, Value::Time(false, 0, 0, 0, 0, 250_000)).unwrap(),
            "\"00:00:00.250000\""
        );
        assert_eq!(
            json(ColumnType::Time, Value::Time(true, 0, 0, 0, 0, 0)).unwrap(),
            "\"00:00:00\""
        );
        assert_eq!(json(ColumnType::Text, Value::Null).unwrap(), "null");
    }

    #[test]
    fn a_row_becomes_an_action_line_and_a_document_line() {
        let plan = Plan::new(
            &target("orders_{created_at:%Y%m}", &["note"]),
            None,
            &orders(),
        )
        .unwrap();
        let doc = plan.encode(&order(42, JAN31, Value::Null)).unwrap();
        assert_eq!(doc.index, "orders_202401");
        assert_eq!(
            String::from_utf8(doc.lines).unwrap(),
            "{\"index\":{\"_index\":\"orders_202401\",\"_id\":\"42\"}}\n\
             {\"id\":42,\"user_id\":-7,\"amount\":\"12.30\",\"created_at\":\"2024-01-31T23:59:58.123456\",\
             \"updated_at\":null}\n"
        );
    }

    #[test]
    fn a_version_column_gives_an_external_version_in_epoch_milliseconds() {
        let cols = orders();
        let version = Ident::new("updated_at").unwrap();
        let plan = Plan::new(&target("orders", &[]), Some(&version), &cols).unwrap();
        assert!(plan.versioned());
        let doc = plan.encode(&order(7, JAN31, JAN31)).unwrap();
        let text = String::from_utf8(doc.lines).unwrap();
        // 2024-01-31T23:59:58.123456Z = 1706745598123 ms (microseconds cut).
        assert!(
            text.starts_with(
                "{\"index\":{\"_index\":\"orders\",\"_id\":\"7\",\"version\":1706745598123,\"version_type\":\"external\"}}\n"
            ),
            "{text}"
        );
        assert_eq!(
            plan.version_of(&order(7, JAN31, Value::Date(1970, 1, 1, 0, 0, 0, 0))),
            Ok(Some(0))
        );
        let err = plan.encode(&order(7, JAN31, Value::Null)).unwrap_err();
        assert!(err.contains("version column `updated_at` is NULL"), "{err}");
        let err = plan
            .version_of(&order(7, JAN31, Value::Date(1969, 12, 31, 23, 59, 59, 0)))
            .unwrap_err();
        assert!(
            err.contains("out of Elasticsearch's version range"),
            "{err}"
        );

        let id = Ident::new("user_id").unwrap();
        let plan = Plan::new(&target("orders", &[]), Some(&id), &cols).unwrap();
        let mut row = order(7, JAN31, JAN31);
        row.values[1] = Value::Int(99);
        assert_eq!(plan.version_of(&row), Ok(Some(99)));
        row.values[1] = Value::Int(-1);
        assert!(plan.version_of(&row).is_err());
        let id = Ident::new("id").unwrap();
        let plan = Plan::new(&target("orders", &[]), Some(&id), &cols).unwrap();
        assert!(plan.version_of(&order(u64::MAX, JAN31, JAN31)).is_err());
    }

    #[test]
    fn tables_and_indices_route_alike_for_huge_moduli_and_negative_values() {
        use crate::job::TableRoute;
        use crate::sink::route::Router;
        let cols = orders();
        for template in [
            "o_{user_id % 18446744073709551615}",
            "o_{user_id % 9223372036854775808}",
            "o_{user_id % 9223372036854775807}",
            "o_{user_id % 16}",
            "o_{id % 18446744073709551615}",
        ] {
            let plan = Plan::new(&target(template, &[]), None, &cols).unwrap();
            let router = Router::new(
                &TableRoute::Template(Route::parse(template).unwrap()),
                &cols,
            )
            .unwrap();
            for user in [0, 1, -1, -16, -17, i64::MIN, i64::MIN + 1, i64::MAX] {
                let mut row = order(u64::MAX, JAN31, Value::Null);
                row.values[1] = Value::Int(user);
                let index = plan.index_for(&row).unwrap();
                let table = router.resolve(&row).unwrap().to_string();
                assert_eq!(index, table, "{template} with user_id {user}");
            }
        }
        // A modulus above i64::MAX: a negative value lands at value + modulus, never below 0.
        let plan = Plan::new(
            &target("o_{user_id % 18446744073709551615}", &[]),
            None,
            &cols,
        )
        .unwrap();
        let mut row = order(1, JAN31, Value::Null);
        row.values[1] = Value::Int(-1);
        assert_eq!(plan.index_for(&row).unwrap(), "o_18446744073709551614");
    }

    #[test]
    fn routes_format_dates_and_hash_integers() {
        let cols = orders();
        let plan = Plan::new(&target("orders_{created_at:%Y%m}", &[]), None, &cols).unwrap();
        assert_eq!(
            plan.index_for(&order(1, JAN31, Value::Null)).unwrap(),
            "orders_202401"
        );
        let dec = Value::Date(1999, 12, 31, 0, 0, 0, 0);
        assert_eq!(
            plan.index_for(&order(1, dec, Value::Null)).unwrap(),
            "orders_199912"
        );
        let plan = Plan::new(
            &target("o_{created_at:%Y}_{created_at:%m%d}", &[]),
            None,
            &cols,
        )
        .unwrap();
        assert_eq!(
            plan.index_for(&order(1, JAN31, Value::Null)).unwrap(),
            "o_2024_0131"
        );
        let plan = Plan::new(&target("orders", &[]), None, &cols).unwrap();
        assert_eq!(
            plan.index_for(&order(1, Value::Null, Value::Null)).unwrap(),
            "orders"
        );
        let plan = Plan::new(&target("orders_{user_id % 4}", &[]), None, &cols).unwrap();
        // -7 mod 4 = 1 (Euclidean: never a negative bucket).
        assert_eq!(
            plan.index_for(&order(1, JAN31, Value::Null)).unwrap(),
            "orders_1"
        );
    }

    #[test]
    fn a_null_or_zero_route_date_refuses_that_row_only() {
        let plan = Plan::new(&target("orders_{created_at:%Y%m}", &[]), None, &orders()).unwrap();
        let err = plan
            .encode(&order(1, Value::Null, Value::Null))
            .unwrap_err();
        assert!(err.contains("route column `created_at` is NULL"), "{err}");
        let err = plan
            .encode(&order(1, Value::Date(0, 0, 0, 0, 0, 0, 0), Value::Null))
            .unwrap_err();
        assert!(
            err.contains("0000-00-00") && err.contains("not a calendar date"),
            "{err}"
        );
    }

    #[test]
    fn a_plan_refuses_columns_the_source_does_not_read_or_that_do_not_fit() {
        let cols = orders();
        let err = Plan::new(&target("o_{made:%Y}", &[]), None, &cols).unwrap_err();
        assert!(err.contains("`made`"), "{err}");
        let err = Plan::new(&target("o_{note:%Y}", &[]), None, &cols).unwrap_err();
        assert!(err.contains("DATE, DATETIME or TIMESTAMP"), "{err}");
        let err = Plan::new(&target("o_{amount % 3}", &[]), None, &cols).unwrap_err();
        assert!(err.contains("integer"), "{err}");
        let err = Plan::new(&target("o", &["nope"]), None, &cols).unwrap_err();
        assert!(
            err.contains("target.exclude") && err.contains("nope"),
            "{err}"
        );
        let v = Ident::new("note").unwrap();
        let err = Plan::new(&target("o", &[]), Some(&v), &cols).unwrap_err();
        assert!(err.contains("source.version"), "{err}");
    }

    #[test]
    fn a_delete_is_one_action_line() {
        let d = delete_action("orders_1", 42).unwrap();
        assert_eq!(
            String::from_utf8(d.lines).unwrap(),
            "{\"delete\":{\"_index\":\"orders_1\",\"_id\":\"42\"}}\n"
        );
        assert!(d.delete);
    }

    #[test]
    fn index_names_follow_elasticsearch_rules() {
        assert!(check_index_name("orders_202401").is_ok());
        assert!(check_index_name("Orders").is_err());
        assert!(check_index_name("_orders").is_err());
        assert!(check_index_name("..").is_err());
        assert!(check_index_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn chunks_stay_under_the_byte_limit_and_a_big_document_goes_alone() {
        let doc = |n: usize| EncodedDoc {
            key: n as u64,
            index: "i".into(),
            lines: vec![b'x'; n],
            delete: false,
        };
        let docs = vec![doc(4), doc(4), doc(4), doc(20), doc(1), doc(9)];
        assert_eq!(chunks(&docs, 10), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(chunks(&docs, 1000), vec![0..6]);
        assert!(chunks(&[], 10).is_empty());
    }

    #[test]
    fn postgres_booleans_and_uuids_have_their_json_form() {
        assert_eq!(json(ColumnType::Bool, Value::Bool(true)).unwrap(), "true");
        assert_eq!(
            json(ColumnType::Uuid, Value::Uuid([0xab; 16])).unwrap(),
            "\"abababab-abab-abab-abab-abababababab\""
        );
        let infinity = Value::PgRaw {
            oid: 1082,
            bytes: vec![0x7f, 0xff, 0xff, 0xff],
        };
        assert!(json(ColumnType::Date, infinity).is_err());
    }
}
