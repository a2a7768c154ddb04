//! The canonical encoding of a row (DESIGN.md §9): what two engines hold for the same logical row encodes
//! to the same bytes, and what differs encodes differently.
//!
//! A [`RowPlan`] is built once from the names of the compared columns and every side's column list (the
//! source and each target table); it picks for each column one [`Canon`] from the types the column has on
//! all sides, so a TINYINT(1) read from MySQL and a `boolean` read from PostgreSQL are both encoded as a
//! boolean. A [`RowEncoder`] (one per side) then finds the columns by name and encodes a row into a reused
//! buffer without allocating (JSON columns excepted: they are parsed).
//!
//! Encoding of a row: the key as 8 bytes little-endian, then per compared column, in the plan's order, one
//! tag byte and its payload. Variable payloads carry a 4-byte little-endian length; fixed ones do not (the
//! tag says their size), so no two different rows concatenate to the same bytes.
//!
//! | canon | payload | equal across engines |
//! | --- | --- | --- |
//! | NULL (tag 0) | none | MySQL zero dates are NULL, as the PostgreSQL sink writes them |
//! | [`Canon::Number`] (1) | decimal text: no `+`, no leading zeros, no trailing fractional zeros, `-0` → `0` | DECIMAL `1.50` = numeric `1.5`; BIGINT UNSIGNED = numeric; integers of any width; YEAR; BIT with an integer |
//! | [`Canon::Float`] (2) | the value as an `f64`'s 8 bytes; `-0.0` → `0.0`, every NaN one NaN | FLOAT = real = double precision holding the same `f32` |
//! | [`Canon::Octets`] (3) | the bytes as they are | text, binary; a trailing space counts |
//! | [`Canon::Bool`] (4) | 1 byte, 0 or 1 (any non-zero integer is true, as the PostgreSQL sink writes it) | TINYINT(1) = boolean |
//! | [`Canon::Instant`] (5) | microseconds since 1970-01-01 UTC, `i64` | DATE, DATETIME = timestamp, TIMESTAMP = timestamptz (all read in UTC) |
//! | [`Canon::Duration`] (6) | signed microseconds, `i64` | TIME = time = interval without months |
//! | [`Canon::Json`] (7) | JSON: object keys sorted, no spacing, numbers by value | MySQL JSON, MariaDB's JSON text, json, jsonb |
//! | [`Canon::Uuid`] (8) | 16 bytes | uuid = its text = 16 bytes of binary |
//! | [`Canon::Native`] (9…) | the value's own form, tagged by its variant | PostgreSQL-only types against the same type |
//!
//! A value that does not fit its column's canon (text that is not a number in a number column, JSON that
//! does not parse) is encoded in its own form under another tag: it never equals a value that fits.

use xxhash_rust::xxh3::xxh3_128;

use super::json::write_canonical_json;
use super::{ChunkDigests, DigestError};
use crate::value::{parse_uuid, Column, ColumnType, Row, Value};

/// How one compared column is encoded; chosen once per column from its types on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    /// Exact numbers by value: integers, DECIMAL/numeric, YEAR, BIT paired with an integer column.
    Number,
    /// FLOAT/real and DOUBLE/double precision, compared as `f64` (an `f32` widens exactly).
    Float,
    /// Text and binary data, byte for byte.
    Octets,
    /// Booleans, where any side is PostgreSQL `boolean` (MySQL's TINYINT(1) and BIT(1) become one).
    Bool,
    /// Points in time: microseconds since the epoch, UTC.
    Instant,
    /// TIME / interval, as signed microseconds.
    Duration,
    /// JSON documents, canonical (sorted keys, no spacing, numbers by value).
    Json,
    /// UUIDs, as 16 bytes, whether held as uuid, text or binary.
    Uuid,
    /// BIT on its own: its unsigned value.
    Bits,
    /// Anything else: the value's own form (PostgreSQL-only types, compared with the same type only).
    Native,
}

const T_NULL: u8 = 0;
const T_NUMBER: u8 = 1;
const T_FLOAT: u8 = 2;
const T_OCTETS: u8 = 3;
const T_BOOL: u8 = 4;
const T_INSTANT: u8 = 5;
const T_DURATION: u8 = 6;
const T_JSON: u8 = 7;
const T_UUID: u8 = 8;
// Native forms, one tag per `Value` variant (also for values that do not fit their column's canon).
const T_RAW_INT: u8 = 0x10;
const T_RAW_UINT: u8 = 0x11;
const T_RAW_FLOAT: u8 = 0x12;
const T_RAW_DOUBLE: u8 = 0x13;
const T_RAW_BYTES: u8 = 0x14;
const T_RAW_DATE: u8 = 0x15;
const T_RAW_TIME: u8 = 0x16;
const T_RAW_BOOL: u8 = 0x17;
const T_RAW_UUID: u8 = 0x18;
const T_RAW_PG: u8 = 0x19;

/// PostgreSQL's `interval` type oid: a TIME column copied into an interval arrives as one.
const INTERVAL_OID: u32 = 1186;

/// The canon for a column that has these types on the sides compared.
pub fn canon_for(types: &[ColumnType]) -> Canon {
    use ColumnType as T;
    let any = |f: &dyn Fn(T) -> bool| types.iter().any(|t| f(*t));
    let all = |f: &dyn Fn(T) -> bool| types.iter().all(|t| f(*t));
    if any(&|t| t == T::Json) {
        Canon::Json
    } else if any(&|t| t == T::Bool) {
        Canon::Bool
    } else if any(&|t| t == T::Uuid) {
        Canon::Uuid
    } else if all(&|t| matches!(t, T::Float | T::Double)) {
        Canon::Float
    } else if all(&|t| matches!(t, T::Int { .. } | T::Decimal | T::Year)) {
        Canon::Number
    } else if all(&|t| t == T::Bit) {
        Canon::Bits
    } else if all(&|t| matches!(t, T::Int { .. } | T::Year | T::Bit)) {
        Canon::Number
    } else if all(&|t| matches!(t, T::Text | T::Bytes | T::Bit | T::Decimal | T::Other)) {
        Canon::Octets
    } else if all(&|t| matches!(t, T::Date | T::DateTime | T::Timestamp)) {
        Canon::Instant
    } else if all(&|t| matches!(t, T::Time | T::PgNative)) && any(&|t| t == T::Time) {
        Canon::Duration
    } else {
        Canon::Native
    }
}

/// The compared columns and how each is encoded: the part of a digest every side shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPlan {
    names: Vec<String>,
    canons: Vec<Canon>,
}

/// Where `name` is in `columns`: the exact name, else the one name equal ignoring ASCII case (MySQL
/// compares column names so, PostgreSQL folds unquoted names to lowercase).
fn position(columns: &[Column], name: &str) -> Option<usize> {
    columns.iter().position(|c| c.name == name).or_else(|| {
        let mut found = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    })
}

impl RowPlan {
    /// A plan comparing `names` (the job's columns; for Elasticsearch without `exclude`) over every side's
    /// columns as its reader describes them (`sides[0]` the source, then each target table). Fails naming
    /// a column that a side lacks.
    pub fn new(names: &[&str], sides: &[&[Column]]) -> Result<Self, DigestError> {
        let mut canons = Vec::with_capacity(names.len());
        let mut types = Vec::with_capacity(sides.len());
        for name in names {
            types.clear();
            for (side, columns) in sides.iter().enumerate() {
                let at = position(columns, name).ok_or_else(|| DigestError::NoColumn {
                    column: (*name).to_owned(),
                    side,
                })?;
                types.push(columns[at].ty);
            }
            canons.push(canon_for(&types));
        }
        Ok(Self {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            canons,
        })
    }

    /// A plan over every column of `source` (by name), each side's types considered.
    pub fn all_columns(source: &[Column], targets: &[&[Column]]) -> Result<Self, DigestError> {
        let names: Vec<&str> = source.iter().map(|c| c.name.as_str()).collect();
        let mut sides = Vec::with_capacity(1 + targets.len());
        sides.push(source);
        sides.extend_from_slice(targets);
        Self::new(&names, &sides)
    }

    /// Compares column `name` as JSON whatever the readers said: MariaDB's JSON is a LONGTEXT with a
    /// `json_valid` check, read as text (find such columns with
    /// [`super::pushdown::mariadb_json_columns`]). `false` if the plan has no such column.
    pub fn compare_as_json(&mut self, name: &str) -> bool {
        match self.names.iter().position(|n| n.eq_ignore_ascii_case(name)) {
            Some(i) => {
                self.canons[i] = Canon::Json;
                true
            }
            None => false,
        }
    }

    /// The compared columns' names, in encoding order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The compared columns' canons, in encoding order.
    pub fn canons(&self) -> &[Canon] {
        &self.canons
    }

    /// An encoder for rows laid out as `columns` (one side's reader).
    pub fn encoder(&self, columns: &[Column]) -> Result<RowEncoder, DigestError> {
        let at = self
            .names
            .iter()
            .map(|n| position(columns, n).ok_or_else(|| DigestError::NotInLayout(n.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        // A BIT column compared as a number arrives as big-endian bytes: read it as bits on this side.
        let canons = self
            .canons
            .iter()
            .zip(&at)
            .map(|(canon, i)| match (canon, columns[*i].ty) {
                (Canon::Number, ColumnType::Bit) => Canon::Bits,
                (c, _) => *c,
            })
            .collect();
        Ok(RowEncoder {
            at,
            canons,
            buf: Vec::with_capacity(256),
            col_a: Vec::new(),
            col_b: Vec::new(),
        })
    }

    /// The names of the compared columns whose values differ between a row of side `a` and one of side `b`
    /// (empty when the rows are equal).
    pub fn differing_columns(
        &self,
        a: &mut RowEncoder,
        a_values: &[Value],
        b: &mut RowEncoder,
        b_values: &[Value],
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            a.col_a.clear();
            b.col_b.clear();
            encode_value(
                a_values.get(a.at[i]).unwrap_or(&Value::Null),
                a.canons[i],
                &mut a.col_a,
            );
            encode_value(
                b_values.get(b.at[i]).unwrap_or(&Value::Null),
                b.canons[i],
                &mut b.col_b,
            );
            if a.col_a != b.col_b {
                out.push(name.clone());
            }
        }
        out
    }
}

/// Encodes and hashes the rows of one side. Keeps its buffers between rows: no allocation per row.
#[derive(Debug, Clone)]
pub struct RowEncoder {
    at: Vec<usize>,
    canons: Vec<Canon>,
    buf: Vec<u8>,
    col_a: Vec<u8>,
    col_b: Vec<u8>,
}

impl RowEncoder {
    /// Appends the canonical encoding of the row (`key`, then the compared columns) to `out`.
    pub fn encode_into(&self, key: u64, values: &[Value], out: &mut Vec<u8>) {
        out.extend_from_slice(&key.to_le_bytes());
        for (at, canon) in self.at.iter().zip(&self.canons) {
            encode_value(values.get(*at).unwrap_or(&Value::Null), *canon, out);
        }
    }

    /// The row's canonical encoding (valid until the next call).
    pub fn encode(&mut self, key: u64, values: &[Value]) -> &[u8] {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.encode_into(key, values, &mut buf);
        self.buf = buf;
        &self.buf
    }

    /// The row's 128-bit hash: xxh3-128 of its canonical encoding.
    pub fn hash(&mut self, key: u64, values: &[Value]) -> u128 {
        xxh3_128(self.encode(key, values))
    }

    /// Adds every row's hash to its chunk of `digests`; returns how many rows fell outside its range (not
    /// added: a reader asked for the wrong keys).
    pub fn digest_rows(&mut self, rows: &[Row], digests: &mut ChunkDigests) -> usize {
        let mut outside = 0;
        for r in rows {
            let h = self.hash(r.key, &r.values);
            if !digests.add(r.key, h) {
                outside += 1;
            }
        }
        outside
    }

    /// `(key, hash)` of every row, in the rows' order (readers return rows ascending by key; rows from
    /// several target tables must be sorted by key before a merge).
    pub fn key_hashes(&mut self, rows: &[Row]) -> Vec<(u64, u128)> {
        rows.iter()
            .map(|r| (r.key, self.hash(r.key, &r.values)))
            .collect()
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Values are far below 4 GiB (MySQL's LONGBLOB limit is 4 GiB - 1, PostgreSQL's 1 GiB).
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

fn put_var(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends one value's tag and payload, encoded for `canon`.
pub fn encode_value(value: &Value, canon: Canon, out: &mut Vec<u8>) {
    if matches!(value, Value::Null) {
        out.push(T_NULL);
        return;
    }
    let done = match canon {
        Canon::Number => number(value, out),
        Canon::Float => float(value, out),
        Canon::Octets => match value {
            Value::Bytes(b) => {
                put_var(out, T_OCTETS, b);
                true
            }
            _ => false,
        },
        Canon::Bool => boolean(value, out),
        Canon::Instant => instant(value, out),
        Canon::Duration => duration(value, out),
        Canon::Json => json(value, out),
        Canon::Uuid => uuid(value, out),
        Canon::Bits => match value {
            Value::Bytes(b) if b.len() <= 16 => {
                let n = b.iter().fold(0u128, |acc, &x| (acc << 8) | u128::from(x));
                put_u128_decimal(out, n);
                true
            }
            _ => false,
        },
        Canon::Native => false,
    };
    if !done {
        native(value, out);
    }
}

/// The value in its own form, tagged by its variant.
fn native(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(T_NULL),
        Value::Int(i) => {
            out.push(T_RAW_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::UInt(u) => {
            out.push(T_RAW_UINT);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(T_RAW_FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Double(d) => {
            out.push(T_RAW_DOUBLE);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
        }
        Value::Bytes(b) => put_var(out, T_RAW_BYTES, b),
        Value::Date(y, mo, d, h, mi, s, us) => {
            out.push(T_RAW_DATE);
            out.extend_from_slice(&y.to_le_bytes());
            out.extend_from_slice(&[*mo, *d, *h, *mi, *s]);
            out.extend_from_slice(&us.to_le_bytes());
        }
        Value::Time(neg, d, h, mi, s, us) => {
            out.push(T_RAW_TIME);
            out.push(u8::from(*neg));
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&[*h, *mi, *s]);
            out.extend_from_slice(&us.to_le_bytes());
        }
        Value::Bool(b) => out.extend_from_slice(&[T_RAW_BOOL, u8::from(*b)]),
        Value::Uuid(u) => {
            out.push(T_RAW_UUID);
            out.extend_from_slice(u);
        }
        Value::PgRaw { oid, bytes } => {
            out.push(T_RAW_PG);
            out.extend_from_slice(&oid.to_le_bytes());
            put_len(out, bytes.len());
            out.extend_from_slice(bytes);
        }
    }
}

/// Writes a decimal text payload with its length, from up to three pieces, without allocating.
fn put_number(out: &mut Vec<u8>, negative: bool, int: &[u8], frac: &[u8]) {
    let int: &[u8] = if int.is_empty() { b"0" } else { int };
    let zero = int == b"0" && frac.is_empty();
    let negative = negative && !zero;
    let len = usize::from(negative) + int.len() + if frac.is_empty() { 0 } else { 1 + frac.len() };
    out.push(T_NUMBER);
    put_len(out, len);
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(int);
    if !frac.is_empty() {
        out.push(b'.');
        out.extend_from_slice(frac);
    }
}

fn put_u128_decimal(out: &mut Vec<u8>, n: u128) {
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put_number(out, false, &digits[i..], b"");
}

fn put_i128_decimal(out: &mut Vec<u8>, v: i128) {
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put_number(out, v < 0, &digits[i..], b"");
}

/// Decimal text in its canonical form: `[-]digits[.digits]`, leading integer zeros and trailing
/// fractional zeros dropped. `None` if the text is not a plain decimal (`NaN`, `Infinity`, exponents).
fn decimal_parts(text: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (negative, rest) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.iter().all(u8::is_ascii_digit)
        || !frac.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let lead = int.iter().take_while(|&&c| c == b'0').count();
    let int = &int[lead..];
    let trail = frac.iter().rev().take_while(|&&c| c == b'0').count();
    let frac = &frac[..frac.len() - trail];
    Some((negative, int, frac))
}

fn number(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::Int(i) => put_i128_decimal(out, i128::from(*i)),
        Value::UInt(u) => put_u128_decimal(out, u128::from(*u)),
        Value::Bytes(b) => match decimal_parts(b) {
            Some((neg, int, frac)) => put_number(out, neg, int, frac),
            // NaN, ±Infinity: PostgreSQL numeric's specials, as their text
            None if matches!(b.as_slice(), b"NaN" | b"Infinity" | b"-Infinity") => {
                put_var(out, T_NUMBER, b)
            }
            None => return false,
        },
        Value::Bool(b) => put_u128_decimal(out, u128::from(*b)),
        _ => return false,
    }
    true
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    let v = if v.is_nan() {
        f64::NAN
    } else if v == 0.0 {
        0.0 // -0.0 = 0.0, as SQL compares them
    } else {
        v
    };
    out.push(T_FLOAT);
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn float(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::Float(f) => put_f64(out, f64::from(*f)),
        Value::Double(d) => put_f64(out, *d),
        _ => return false,
    }
    true
}

fn boolean(value: &Value, out: &mut Vec<u8>) -> bool {
    let b = match value {
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::UInt(u) => *u != 0,
        // BIT(1) and friends: big-endian bits
        Value::Bytes(b) if b.len() <= 8 => b.iter().any(|&x| x != 0),
        _ => return false,
    };
    out.extend_from_slice(&[T_BOOL, u8::from(b)]);
    true
}

/// Days from 1970-01-01 to the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn instant(value: &Value, out: &mut Vec<u8>) -> bool {
    let Value::Date(y, mo, d, h, mi, s, us) = *value else {
        return false;
    };
    if mo == 0 || d == 0 {
        // MySQL's zero dates (and dates with a zero part): NULL, as the PostgreSQL sink writes them
        out.push(T_NULL);
        return true;
    }
    if mo > 12 || d > 31 || h > 23 || mi > 59 || s > 59 || us > 999_999 {
        return false;
    }
    let days = days_from_civil(y.into(), mo.into(), d.into());
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s);
    out.push(T_INSTANT);
    out.extend_from_slice(&(secs * 1_000_000 + i64::from(us)).to_le_bytes());
    true
}

fn duration(value: &Value, out: &mut Vec<u8>) -> bool {
    let micros = match value {
        Value::Time(neg, d, h, mi, s, us) => {
            let m =
                ((i64::from(*d) * 24 + i64::from(*h)) * 3600 + i64::from(*mi) * 60 + i64::from(*s))
                    * 1_000_000
                    + i64::from(*us);
            if *neg {
                -m
            } else {
                m
            }
        }
        // PostgreSQL interval: µs (i64), days (i32), months (i32); months have no fixed length
        Value::PgRaw { oid, bytes } if *oid == INTERVAL_OID && bytes.len() == 16 => {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[..8]);
            let us = i64::from_be_bytes(w);
            let days = i32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            let months = i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
            if months != 0 {
                return false;
            }
            match i64::from(days)
                .checked_mul(86_400_000_000)
                .and_then(|d| d.checked_add(us))
            {
                Some(m) => m,
                None => return false,
            }
        }
        _ => return false,
    };
    out.push(T_DURATION);
    out.extend_from_slice(&micros.to_le_bytes());
    true
}

fn json(value: &Value, out: &mut Vec<u8>) -> bool {
    let Value::Bytes(text) = value else {
        return false;
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(text) else {
        return false; // not JSON: its bytes under another tag
    };
    out.push(T_JSON);
    let len_at = out.len();
    put_len(out, 0);
    let start = out.len();
    write_canonical_json(&doc, out);
    let len = (out.len() - start) as u32;
    out[len_at..start].copy_from_slice(&len.to_le_bytes());
    true
}

fn uuid(value: &Value, out: &mut Vec<u8>) -> bool {
    let u = match value {
        Value::Uuid(u) => *u,
        Value::Bytes(b) if b.len() == 16 => {
            let mut u = [0u8; 16];
            u.copy_from_slice(b);
            u
        }
        Value::Bytes(b) => match std::str::from_utf8(b).ok().and_then(parse_uuid) {
            Some(u) => u,
            None => return false,
        },
        _ => return false,
    };
    out.push(T_UUID);
    out.extend_from_slice(&u);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(value: &Value, canon: Canon) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(value, canon, &mut out);
        out
    }

    fn text(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    fn col(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            type_name: String::new(),
        }
    }

    #[test]
    fn null_differs_from_empty_text_and_from_zero() {
        let null = enc(&Value::Null, Canon::Octets);
        assert_ne!(null, enc(&text(""), Canon::Octets));
        assert_ne!(
            enc(&Value::Null, Canon::Number),
            enc(&Value::Int(0), Canon::Number)
        );
        assert_ne!(enc(&text("N"), Canon::Octets), null);
    }

    #[test]
    fn decimal_scale_does_not_matter_but_the_value_does() {
        let n = |s: &str| enc(&text(s), Canon::Number);
        assert_eq!(n("1.50"), n("1.5"));
        assert_eq!(n("001.500"), n("1.5"));
        assert_eq!(n("-0.00"), n("0"));
        assert_eq!(n("0.000"), enc(&Value::Int(0), Canon::Number));
        assert_eq!(n("12.000"), enc(&Value::Int(12), Canon::Number));
        assert_eq!(n("-7"), enc(&Value::Int(-7), Canon::Number));
        assert_eq!(n(".5"), n("0.5"));
        assert_ne!(n("1.5"), n("1.05"));
        assert_ne!(n("1.5"), n("-1.5"));
        assert_ne!(n("10"), n("1"));
        assert_eq!(
            n("18446744073709551615"),
            enc(&Value::UInt(u64::MAX), Canon::Number),
            "BIGINT UNSIGNED into numeric"
        );
        assert_eq!(
            enc(&Value::Int(i64::MIN), Canon::Number),
            n("-9223372036854775808")
        );
        assert_eq!(n("NaN"), n("NaN"));
        assert_ne!(n("NaN"), n("Infinity"));
        assert_ne!(n("abc"), n("0"), "not a number: its own form");
    }

    #[test]
    fn negative_zero_and_nan_floats() {
        let f = |v: f64| enc(&Value::Double(v), Canon::Float);
        assert_eq!(f(-0.0), f(0.0), "-0.0 = 0.0, as SQL compares them");
        assert_eq!(enc(&Value::Float(-0.0), Canon::Float), f(0.0));
        assert_eq!(f(f64::NAN), f(-f64::NAN), "every NaN is one NaN");
        assert_eq!(enc(&Value::Float(f32::NAN), Canon::Float), f(f64::NAN));
        assert_ne!(f(f64::NAN), f(f64::INFINITY));
        // a FLOAT round-trip: the f32 read back from real, or widened into double precision
        let x = 0.1f32;
        assert_eq!(enc(&Value::Float(x), Canon::Float), f(f64::from(x)));
        assert_ne!(enc(&Value::Float(x), Canon::Float), f(0.1));
        assert_ne!(f(1.0), f(1.0 + f64::EPSILON));
    }

    #[test]
    fn zero_dates_are_null_and_times_count_microseconds() {
        assert_eq!(
            enc(&Value::Date(0, 0, 0, 0, 0, 0, 0), Canon::Instant),
            enc(&Value::Null, Canon::Instant)
        );
        assert_eq!(
            enc(&Value::Date(2024, 0, 15, 0, 0, 0, 0), Canon::Instant),
            enc(&Value::Null, Canon::Instant),
            "a zero month is a zero date too"
        );
        let at = |us| enc(&Value::Date(2024, 2, 29, 23, 59, 59, us), Canon::Instant);
        assert_ne!(at(999_999), at(999_998), "1 µs differs");
        // epoch arithmetic: 1970-01-01 is 0, 2000-01-01 is 946 684 800 s
        let mut e = Vec::new();
        encode_value(&Value::Date(2000, 1, 1, 0, 0, 0, 1), Canon::Instant, &mut e);
        assert_eq!(e[1..], (946_684_800_000_001i64).to_le_bytes());
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(
            days_from_civil(2024, 3, 1) - days_from_civil(2024, 2, 28),
            2
        );
    }

    #[test]
    fn json_key_order_and_spacing_do_not_matter() {
        let j = |s: &str| enc(&text(s), Canon::Json);
        assert_eq!(j(r#"{"b": 1, "a": [1, 2]}"#), j(r#"{"a":[1,2],"b":1}"#));
        assert_eq!(
            j(r#"{"a": {"y": 1.50, "x": 2.0}}"#),
            j(r#"{"a":{"x":2,"y":1.5}}"#)
        );
        assert_ne!(
            j(r#"{"a": [1, 2]}"#),
            j(r#"{"a": [2, 1]}"#),
            "array order counts"
        );
        assert_ne!(j(r#"{"a": "1"}"#), j(r#"{"a": 1}"#));
        assert_ne!(j("{oops"), j("{}"));
        assert_eq!(j("{oops"), j("{oops"), "the same invalid text is equal");
    }

    #[test]
    fn booleans_uuids_bits_and_text_follow_the_type_mapping() {
        assert_eq!(
            canon_for(&[ColumnType::Int { unsigned: false }, ColumnType::Bool]),
            Canon::Bool
        );
        assert_eq!(
            enc(&Value::Int(1), Canon::Bool),
            enc(&Value::Bool(true), Canon::Bool)
        );
        assert_eq!(
            enc(&Value::Int(0), Canon::Bool),
            enc(&Value::Bool(false), Canon::Bool)
        );
        let u = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(
            enc(&text("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), Canon::Uuid),
            enc(&Value::Uuid(u), Canon::Uuid)
        );
        assert_eq!(
            enc(&Value::Bytes(u.to_vec()), Canon::Uuid),
            enc(&Value::Uuid(u), Canon::Uuid)
        );
        assert_eq!(
            canon_for(&[ColumnType::Bit, ColumnType::Int { unsigned: false }]),
            Canon::Number
        );
        assert_eq!(
            enc(&Value::Bytes(vec![0x0f, 0xff]), Canon::Bits),
            enc(&Value::Int(4095), Canon::Number)
        );
        assert_ne!(
            enc(&text("a "), Canon::Octets),
            enc(&text("a"), Canon::Octets),
            "trailing space"
        );
        assert_eq!(
            canon_for(&[ColumnType::Text, ColumnType::Json]),
            Canon::Json
        );
        assert_eq!(
            canon_for(&[ColumnType::Text, ColumnType::Bytes]),
            Canon::Octets
        );
        assert_eq!(
            canon_for(&[ColumnType::Decimal, ColumnType::Decimal]),
            Canon::Number
        );
        assert_eq!(
            canon_for(&[ColumnType::Int { unsigned: true }, ColumnType::Decimal]),
            Canon::Number
        );
        assert_eq!(
            canon_for(&[ColumnType::DateTime, ColumnType::Timestamp]),
            Canon::Instant
        );
        assert_eq!(
            canon_for(&[ColumnType::Array, ColumnType::Array]),
            Canon::Native
        );
    }

    #[test]
    fn time_equals_an_interval_without_months() {
        let t = Value::Time(true, 1, 2, 3, 4, 5);
        let us = -((((24 + 2) * 3600 + 3 * 60 + 4) * 1_000_000i64) + 5);
        let mut raw = us.to_be_bytes().to_vec();
        raw.extend_from_slice(&0i32.to_be_bytes());
        raw.extend_from_slice(&0i32.to_be_bytes());
        let interval = Value::PgRaw {
            oid: INTERVAL_OID,
            bytes: raw.clone(),
        };
        assert_eq!(enc(&t, Canon::Duration), enc(&interval, Canon::Duration));
        raw[15] = 1; // one month
        let month = Value::PgRaw {
            oid: INTERVAL_OID,
            bytes: raw,
        };
        assert_ne!(enc(&t, Canon::Duration), enc(&month, Canon::Duration));
    }

    #[test]
    fn rows_are_matched_by_column_name_and_name_what_differs() {
        let src = [
            col("id", ColumnType::Int { unsigned: false }),
            col("flag", ColumnType::Int { unsigned: false }),
            col("price", ColumnType::Decimal),
            col("name", ColumnType::Text),
        ];
        // the target has its columns in another order, a boolean, and lowercase names
        let tgt = [
            col("name", ColumnType::Text),
            col("id", ColumnType::Int { unsigned: false }),
            col("PRICE", ColumnType::Decimal),
            col("flag", ColumnType::Bool),
        ];
        let plan = RowPlan::all_columns(&src, &[&tgt]).unwrap();
        assert_eq!(plan.canons()[1], Canon::Bool);
        let mut s = plan.encoder(&src).unwrap();
        let mut t = plan.encoder(&tgt).unwrap();
        let srow = vec![Value::Int(7), Value::Int(1), text("1.50"), text("x")];
        let trow = vec![text("x"), Value::Int(7), text("1.5"), Value::Bool(true)];
        assert_eq!(s.hash(7, &srow), t.hash(7, &trow));
        assert_ne!(s.hash(7, &srow), t.hash(8, &trow), "the key is hashed");
        assert!(plan
            .differing_columns(&mut s, &srow, &mut t, &trow)
            .is_empty());
        let trow2 = vec![text("x "), Value::Int(7), text("1.5"), Value::Bool(false)];
        assert_ne!(s.hash(7, &srow), t.hash(7, &trow2));
        assert_eq!(
            plan.differing_columns(&mut s, &srow, &mut t, &trow2),
            ["flag", "name"]
        );
        // BIT(12) in the source, bigint in the target (the PostgreSQL sink's mapping)
        let bits = [col("b", ColumnType::Bit)];
        let big = [col("b", ColumnType::Int { unsigned: false })];
        let plan2 = RowPlan::all_columns(&bits, &[&big]).unwrap();
        let mut b1 = plan2.encoder(&bits).unwrap();
        let mut b2 = plan2.encoder(&big).unwrap();
        assert_eq!(
            b1.hash(1, &[Value::Bytes(vec![0x0f, 0xff])]),
            b2.hash(1, &[Value::Int(4095)])
        );
        assert_ne!(
            b1.hash(1, &[Value::Bytes(vec![0x0f, 0xfe])]),
            b2.hash(1, &[Value::Int(4095)])
        );
        let missing = RowPlan::new(&["id", "nope"], &[&src, &tgt]).unwrap_err();
        assert!(missing.to_string().contains("`nope`"), "{missing}");
        // Elasticsearch: the job's columns without `exclude`; the excluded column is not hashed
        let plan3 = RowPlan::new(&["id", "name"], &[&src]).unwrap();
        let mut e3 = plan3.encoder(&src).unwrap();
        let h = e3.hash(7, &srow);
        let mut other = srow.clone();
        other[2] = text("999");
        assert_eq!(e3.hash(7, &other), h, "price is not compared");
        assert_eq!(
            plan3
                .encoder(&[col("id", ColumnType::Int { unsigned: false })])
                .unwrap_err(),
            DigestError::NotInLayout("name".into())
        );
    }
}
