//! Column descriptions and row values, neutral between engines.
//!
//! Values keep exactly what the source's binary protocol delivered (integers as integers, FLOAT as `f32`,
//! DECIMAL as its digits, dates as their fields), so a row written back to the same engine is bit for bit
//! the row that was read. The column type says how to interpret a value for another engine or for JSON.
//! PostgreSQL's values map onto the same variants where they mean the same (integers, floats, numeric as
//! its digits, text, bytea, dates and timestamps as their fields, timestamptz in UTC); `Bool`, `Uuid` and
//! `PgRaw` hold what MySQL has no equal for.

use std::sync::Arc;

/// What a source column holds, as far as a sink needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Int {
        unsigned: bool,
    },
    Decimal,
    Float,
    Double,
    /// Character data (CHAR, VARCHAR, TEXT, ENUM, SET) in UTF-8.
    Text,
    /// Binary data (BINARY, VARBINARY, BLOB).
    Bytes,
    Bit,
    Year,
    Date,
    Time,
    DateTime,
    /// TIMESTAMP: a point in time, read and written in UTC.
    Timestamp,
    Json,
    /// PostgreSQL `boolean` (MySQL has none: its BOOLEAN is a TINYINT(1), read as `Int`).
    Bool,
    /// PostgreSQL `uuid`.
    Uuid,
    /// A PostgreSQL array (`int4[]`, `text[]`, …), carried as [`Value::PgRaw`]: only a PostgreSQL column
    /// of the same type can hold it.
    Array,
    /// Another PostgreSQL type with no engine-neutral form (interval, inet, ranges, money, extension
    /// types, …), carried as [`Value::PgRaw`] for a PostgreSQL column of the same type.
    PgNative,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The engine's own type name, for messages.
    pub type_name: String,
}

/// One value of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    /// Strings, decimals (as digits), JSON text, BIT and binary data: the bytes as the source sent them.
    Bytes(Vec<u8>),
    /// DATE, DATETIME, TIMESTAMP: year, month, day, hour, minute, second, microsecond.
    Date(u16, u8, u8, u8, u8, u8, u32),
    /// TIME: negative, days, hours, minutes, seconds, microseconds.
    Time(bool, u32, u8, u8, u8, u32),
    /// PostgreSQL `boolean`.
    Bool(bool),
    /// PostgreSQL `uuid`: its 16 bytes.
    Uuid([u8; 16]),
    /// A PostgreSQL value in its binary wire format, for types no other variant holds (arrays, intervals,
    /// …) and for values the others cannot (`infinity`, dates before year 1): written only to a PostgreSQL
    /// column of the type `oid`; any other target refuses the row.
    PgRaw {
        oid: u32,
        bytes: Vec<u8>,
    },
}

/// A UUID in its usual text form, `8-4-4-4-12` lowercase hex digits.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A UUID from its text form (hyphens optional, any case, braces allowed), if it is one.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text
        .trim_start_matches('{')
        .trim_end_matches('}')
        .bytes()
        .filter(|&c| c != b'-')
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl Value {
    /// The value as a non-negative integer key, if it is one.
    pub fn as_key(&self) -> Option<u64> {
        match *self {
            Value::UInt(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// Rows read for one batch: the columns once, then the values, row by row in column order.
#[derive(Debug, Clone)]
pub struct RowSet {
    pub columns: Arc<[Column]>,
    /// Position of the key column in `columns`.
    pub key_index: usize,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: u64,
    pub values: Vec<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_read_and_print_in_their_text_form() {
        let text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let u = parse_uuid(text).unwrap();
        assert_eq!(u[0], 0xa0);
        assert_eq!(uuid_text(&u), text);
        assert_eq!(parse_uuid("{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"), Some(u));
        assert_eq!(parse_uuid("a0eebc99"), None);
        assert_eq!(parse_uuid("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), None);
    }
}
