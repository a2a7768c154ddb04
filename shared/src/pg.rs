//! PostgreSQL access shared by the source and the sink: the connection pool, error classes, and the codec
//! between PostgreSQL's binary wire format and [`Value`].
//!
//! bitmig decodes and encodes the binary format itself (no `with-*` driver features): every value arrives
//! exactly (numeric as its digits, timestamps to the microsecond), and a value is encoded for the type of
//! the **target column** the server reports, so MySQL values land the way a DBA expects (pgloader's MySQL →
//! PostgreSQL table is the reference):
//!
//! | source value | PostgreSQL column | note |
//! | --- | --- | --- |
//! | integers (signed, unsigned), YEAR | smallint, integer, bigint, numeric; boolean | out of the column's range: the row fails. To boolean (MySQL's TINYINT(1)): 0 is false, anything else true |
//! | DECIMAL / numeric (digits) | numeric, text | exact |
//! | FLOAT / real, DOUBLE / double precision | real, double precision | FLOAT also into double precision (exact) |
//! | CHAR, VARCHAR, TEXT, ENUM, SET | text, varchar, char, name, enum types, json, jsonb, uuid | must be UTF-8 without NUL (PostgreSQL text cannot hold `\0`) |
//! | BINARY, VARBINARY, BLOB | bytea; uuid when 16 bytes | |
//! | BIT(n) | bytea, bigint, boolean | big-endian bits |
//! | JSON | json, jsonb, text | text as is (jsonb normalises it) |
//! | DATE | date, timestamp | MySQL's zero dates become NULL, as pgloader does |
//! | DATETIME | timestamp; timestamptz (read as UTC) | zero dates → NULL |
//! | TIMESTAMP | timestamptz; timestamp (UTC) | read in UTC on both sides |
//! | TIME | time (0 to 24:00), interval (any, negative too) | a TIME outside a day fails its row for a `time` column |
//! | boolean | boolean; smallint, integer, bigint (0/1) | |
//! | uuid | uuid; text; bytea (16 bytes) | |
//! | arrays and other PostgreSQL-only types | the same type only | refused at start elsewhere |
//!
//! PostgreSQL → MySQL is the reverse: MySQL converts each value to its column (the MySQL sink sends a
//! boolean as 0/1, a uuid as its text, timestamptz as a UTC DATETIME/TIMESTAMP); arrays and
//! PostgreSQL-only types are refused at start, `infinity` and dates before year 1 fail their row.

use std::error::Error as StdError;
use std::fmt;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type};

use crate::job::{DbUrl, Engine, TableName};
use crate::value::{parse_uuid, ColumnType, Value};

/// A PostgreSQL pool. Connections keep their prepared statements (`prepare_cached`) while pooled.
pub fn pg_pool(url: &DbUrl, max_connections: usize) -> Result<deadpool_postgres::Pool, String> {
    let config: tokio_postgres::Config = url
        .expose()
        .parse()
        .map_err(|_| format!("{}: not a usable PostgreSQL URL", url.redacted()))?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(format!(
            "{}: sslmode=require: PostgreSQL over TLS is not supported by this build yet",
            url.redacted()
        ));
    }
    let mut config = config;
    config.application_name("bitmig");
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_connections.max(1))
        .build()
        .map_err(|e| format!("{}: {e}", url.redacted()))
}

/// Whether a PostgreSQL error is worth retrying: the connection, the server's availability, a lock, a
/// serialization failure or a deadlock.
pub fn pg_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.is_closed() || e.as_db_error().is_none() && encode_error(e).is_none(),
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || matches!(
                    c,
                    "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "58000"
                )
        }
    }
}

/// Whether a PostgreSQL error is about the values of a row: a data exception (class 22), an integrity
/// constraint (class 23), or a value bitmig could not encode for its column.
pub fn pg_is_row_error(e: &tokio_postgres::Error) -> bool {
    if encode_error(e).is_some() {
        return true;
    }
    e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("22") || c.starts_with("23") || c == "54000"
    })
}

fn encode_error(e: &tokio_postgres::Error) -> Option<&EncodeError> {
    e.source()?.downcast_ref::<EncodeError>()
}

/// A PostgreSQL error as text, with the server's detail when it gives one.
/// Whether `table` exists (`to_regclass` of its quoted name): used by the sink before it creates a table
/// and by `indexes` before it reads one.
pub async fn pg_table_exists(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<bool, tokio_postgres::Error> {
    let qualified = crate::sql::quote_table(Engine::Postgres, table);
    let row = client
        .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&qualified])
        .await?;
    Ok(row.get(0))
}

pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(enc) = encode_error(e) {
        return enc.0.clone();
    }
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "PostgreSQL error {} ({}): {}",
                db.code().code(),
                db.severity(),
                db.message()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!(" — {d}"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// A value that cannot be encoded for its column; names the column.
#[derive(Debug)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for EncodeError {}

// ---- reading ----------------------------------------------------------------------------------------

/// Any column, as the bytes the server sent in binary format (`None` for NULL).
pub struct RawPg<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawPg<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(RawPg(Some(raw)))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(RawPg(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Domains are read and written as their base type.
fn base(ty: &Type) -> &Type {
    match ty.kind() {
        Kind::Domain(inner) => base(inner),
        _ => ty,
    }
}

/// What a PostgreSQL column is, for sinks, routes and messages.
pub fn column_type(ty: &Type) -> ColumnType {
    let ty = base(ty);
    if matches!(ty.kind(), Kind::Enum(_)) {
        return ColumnType::Text;
    }
    if matches!(ty.kind(), Kind::Array(_)) {
        return ColumnType::Array;
    }
    match *ty {
        Type::BOOL => ColumnType::Bool,
        Type::INT2 | Type::INT4 | Type::INT8 => ColumnType::Int { unsigned: false },
        Type::NUMERIC => ColumnType::Decimal,
        Type::FLOAT4 => ColumnType::Float,
        Type::FLOAT8 => ColumnType::Double,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ColumnType::Text,
        Type::BYTEA => ColumnType::Bytes,
        Type::DATE => ColumnType::Date,
        Type::TIME => ColumnType::Time,
        Type::TIMESTAMP => ColumnType::DateTime,
        Type::TIMESTAMPTZ => ColumnType::Timestamp,
        Type::JSON | Type::JSONB => ColumnType::Json,
        Type::UUID => ColumnType::Uuid,
        _ => ColumnType::PgNative,
    }
}

/// Days from 0001-01-01 (chrono's day 1 of the common era) to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS_CE: i32 = 730_120;
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn pg_epoch() -> chrono::NaiveDate {
    chrono::NaiveDate::from_num_days_from_ce_opt(PG_EPOCH_DAYS_CE).expect("2000-01-01 is a date")
}

fn read_be<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("{} bytes where {N} were expected", raw.len()))
}

/// Decode one binary value of type `ty`.
pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Result<Value, String> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let base_ty = base(ty);
    let raw_value = || Value::PgRaw {
        oid: base_ty.oid(),
        bytes: raw.to_vec(),
    };
    Ok(match column_type(ty) {
        ColumnType::Bool => Value::Bool(read_be::<1>(raw)?[0] != 0),
        ColumnType::Int { .. } => Value::Int(match raw.len() {
            2 => i16::from_be_bytes(read_be(raw)?).into(),
            4 => i32::from_be_bytes(read_be(raw)?).into(),
            _ => i64::from_be_bytes(read_be(raw)?),
        }),
        ColumnType::Decimal => Value::Bytes(numeric_to_text(raw)?.into_bytes()),
        ColumnType::Float => Value::Float(f32::from_be_bytes(read_be(raw)?)),
        ColumnType::Double => Value::Double(f64::from_be_bytes(read_be(raw)?)),
        ColumnType::Text | ColumnType::Bytes => Value::Bytes(raw.to_vec()),
        ColumnType::Json => match (*base_ty == Type::JSONB, raw.split_first()) {
            (true, Some((1, text))) => Value::Bytes(text.to_vec()),
            (true, _) => return Err("jsonb in an unknown binary version".into()),
            (false, _) => Value::Bytes(raw.to_vec()),
        },
        ColumnType::Uuid => Value::Uuid(read_be::<16>(raw)?),
        ColumnType::Date => {
            let days = i32::from_be_bytes(read_be(raw)?);
            match days
                .checked_add(PG_EPOCH_DAYS_CE)
                .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)
                .and_then(|d| date_fields(d.and_hms_opt(0, 0, 0)?))
            {
                Some((y, mo, d, ..)) => Value::Date(y, mo, d, 0, 0, 0, 0),
                None => raw_value(), // infinity, or before year 1
            }
        }
        ColumnType::DateTime | ColumnType::Timestamp => {
            let micros = i64::from_be_bytes(read_be(raw)?);
            match pg_epoch()
                .and_hms_opt(0, 0, 0)
                .and_then(|e| e.checked_add_signed(chrono::TimeDelta::microseconds(micros)))
                .and_then(date_fields)
            {
                Some((y, mo, d, h, mi, s, us)) => Value::Date(y, mo, d, h, mi, s, us),
                None => raw_value(),
            }
        }
        ColumnType::Time => {
            let micros = i64::from_be_bytes(read_be(raw)?);
            if !(0..=MICROS_PER_DAY).contains(&micros) {
                return Err(format!("time of {micros} µs is outside a day"));
            }
            let (days, rest) = (micros / MICROS_PER_DAY, micros % MICROS_PER_DAY);
            let secs = rest / 1_000_000;
            Value::Time(
                false,
                days as u32,
                (secs / 3600) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
                (rest % 1_000_000) as u32,
            )
        }
        _ => raw_value(),
    })
}

/// The fields of a timestamp whose year is 1..=65535.
fn date_fields(t: chrono::NaiveDateTime) -> Option<(u16, u8, u8, u8, u8, u8, u32)> {
    use chrono::{Datelike, Timelike};
    let y = u16::try_from(t.year()).ok().filter(|y| *y >= 1)?;
    Some((
        y,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.nanosecond() / 1000,
    ))
}

/// PostgreSQL's binary numeric as its text: `-12.340`, `NaN`, `Infinity`, `-Infinity`.
pub fn numeric_to_text(raw: &[u8]) -> Result<String, String> {
    if raw.len() < 8 || (raw.len() - 8) % 2 != 0 {
        return Err(format!("a numeric of {} bytes", raw.len()));
    }
    let word = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
    let ndigits = word(0) as usize;
    let weight = word(2) as i16 as i32;
    let sign = word(4);
    let dscale = word(6) as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("a numeric with sign word {other:#x}")),
    }
    if raw.len() != 8 + 2 * ndigits {
        return Err("a numeric whose digit count does not match its length".into());
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| word(8 + 2 * i)).collect();
    if digits.iter().any(|&d| d >= 10_000) {
        return Err("a numeric digit above 9999".into());
    }
    let digit = |pos: i32| -> u16 {
        // pos: the base-10000 position, `weight` being the most significant
        let i = weight - pos;
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for pos in (0..=weight).rev() {
            let d = digit(pos);
            if pos == weight {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut pos = -1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(pos)));
            pos -= 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    if out == "-0" || (out.starts_with("-0") && out[1..].chars().all(|c| c == '0' || c == '.')) {
        out.remove(0);
    }
    Ok(out)
}

/// Decimal text (`-12.340`, `1e3` is refused, `NaN`, `Infinity`) as PostgreSQL's binary numeric.
pub fn text_to_numeric(text: &str) -> Result<Vec<u8>, String> {
    let special = |sign: u16| {
        let mut v = vec![0, 0, 0, 0];
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    };
    match text {
        "NaN" => return Ok(special(0xC000)),
        "Infinity" | "+Infinity" => return Ok(special(0xD000)),
        "-Infinity" => return Ok(special(0xF000)),
        _ => {}
    }
    let bad = || format!("`{text}` is not a decimal number");
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let dscale = frac.len();
    if dscale > 0x3FFF {
        return Err(bad());
    }
    let int = int.trim_start_matches('0');
    // Integer part: pad on the left to a multiple of 4; fraction: on the right.
    let int_pad = (4 - int.len() % 4) % 4;
    let int_digits = format!("{}{int}", "0".repeat(int_pad));
    let frac_pad = (4 - frac.len() % 4) % 4;
    let frac_digits = format!("{frac}{}", "0".repeat(frac_pad));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or("0").parse().unwrap_or(0))
            .collect()
    };
    let mut digits = group(&int_digits);
    let mut weight = digits.len() as i32 - 1;
    digits.extend(group(&frac_digits));
    // Strip leading zero groups (each lowers the weight) and trailing ones.
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(dscale as u16).to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Ok(out)
}

// ---- writing ----------------------------------------------------------------------------------------

/// One value bound to a parameter; encoded for the parameter's (the target column's) type.
#[derive(Debug)]
pub struct PgParam<'a> {
    pub value: &'a Value,
    pub ty: ColumnType,
    pub column: &'a str,
}

impl ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        target: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        encode(self.value, self.ty, target, out).map_err(|e| {
            Box::new(EncodeError(format!(
                "column `{}` into {}: {e}",
                self.column,
                target.name()
            ))) as _
        })
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Whether a source column of type `source` can go into a PostgreSQL column of type `target` at all (the
/// values are checked one by one when written). `source_pg` is the source column's own type name when it
/// was read from PostgreSQL (arrays and PostgreSQL-only types go only into the same type). `Err` says why
/// not.
pub fn can_encode(
    source: ColumnType,
    source_pg: Option<&str>,
    target: &Type,
) -> Result<(), String> {
    let t = base(target);
    let textual = matches!(*t, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME)
        || matches!(t.kind(), Kind::Enum(_));
    let ints = matches!(*t, Type::INT2 | Type::INT4 | Type::INT8);
    let ok = match source {
        ColumnType::Int { .. } | ColumnType::Year => {
            ints || *t == Type::NUMERIC || *t == Type::BOOL
        }
        ColumnType::Decimal => *t == Type::NUMERIC || textual,
        ColumnType::Float => matches!(*t, Type::FLOAT4 | Type::FLOAT8),
        ColumnType::Double => *t == Type::FLOAT8,
        ColumnType::Text => textual || matches!(*t, Type::JSON | Type::JSONB | Type::UUID),
        ColumnType::Bytes => *t == Type::BYTEA || *t == Type::UUID,
        ColumnType::Bit => matches!(*t, Type::BYTEA | Type::INT8 | Type::BOOL),
        ColumnType::Json => matches!(*t, Type::JSON | Type::JSONB) || textual,
        ColumnType::Date | ColumnType::DateTime | ColumnType::Timestamp => {
            matches!(*t, Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ)
        }
        ColumnType::Time => matches!(*t, Type::TIME | Type::INTERVAL),
        ColumnType::Bool => *t == Type::BOOL || ints,
        ColumnType::Uuid => matches!(*t, Type::UUID | Type::BYTEA) || textual,
        ColumnType::Array | ColumnType::PgNative => source_pg == Some(t.name()),
        ColumnType::Other => *t == Type::BYTEA,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("cannot hold it (column type {})", t.name()))
    }
}

fn encode(
    value: &Value,
    ty: ColumnType,
    target: &Type,
    out: &mut BytesMut,
) -> Result<IsNull, String> {
    let t = base(target);
    let int = |v: i128, out: &mut BytesMut| -> Result<(), String> {
        let range = || format!("{v} is out of range");
        match *t {
            Type::INT2 => {
                out.extend_from_slice(&i16::try_from(v).map_err(|_| range())?.to_be_bytes())
            }
            Type::INT4 => {
                out.extend_from_slice(&i32::try_from(v).map_err(|_| range())?.to_be_bytes())
            }
            Type::INT8 => {
                out.extend_from_slice(&i64::try_from(v).map_err(|_| range())?.to_be_bytes())
            }
            Type::NUMERIC => out.extend_from_slice(&text_to_numeric(&v.to_string())?),
            Type::BOOL => out.extend_from_slice(&[u8::from(v != 0)]),
            _ => return Err("not an integer column".into()),
        }
        Ok(())
    };
    let text = |b: &[u8], out: &mut BytesMut| -> Result<(), String> {
        let s = std::str::from_utf8(b).map_err(|e| format!("not UTF-8 text ({e})"))?;
        if s.contains('\0') {
            return Err("PostgreSQL text cannot hold the NUL character (0x00)".into());
        }
        match *t {
            Type::JSONB => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(b);
            }
            Type::UUID => {
                out.extend_from_slice(&parse_uuid(s).ok_or_else(|| format!("`{s}` is not a UUID"))?)
            }
            Type::NUMERIC => out.extend_from_slice(&text_to_numeric(s)?),
            _ => out.extend_from_slice(b),
        }
        Ok(())
    };
    match value {
        Value::Null => return Ok(IsNull::Yes),
        Value::Int(i) => int((*i).into(), out)?,
        Value::UInt(u) => int((*u).into(), out)?,
        Value::Bool(b) => match *t {
            Type::BOOL => out.extend_from_slice(&[u8::from(*b)]),
            _ => int(i128::from(*b), out)?,
        },
        Value::Float(f) => match *t {
            Type::FLOAT4 => out.extend_from_slice(&f.to_be_bytes()),
            Type::FLOAT8 => out.extend_from_slice(&f64::from(*f).to_be_bytes()),
            _ => return Err("not a float column".into()),
        },
        Value::Double(d) => match *t {
            Type::FLOAT8 => out.extend_from_slice(&d.to_be_bytes()),
            _ => return Err("not a double precision column".into()),
        },
        Value::Bytes(b) => match ty {
            ColumnType::Bytes | ColumnType::Other => match *t {
                Type::UUID => out.extend_from_slice(
                    &<[u8; 16]>::try_from(b.as_slice())
                        .map_err(|_| format!("{} bytes are not a UUID", b.len()))?,
                ),
                _ => out.extend_from_slice(b),
            },
            ColumnType::Bit => {
                if b.len() > 8 && *t != Type::BYTEA {
                    return Err(format!("a BIT value of {} bytes", b.len()));
                }
                let n = b.iter().fold(0u128, |acc, &x| (acc << 8) | u128::from(x));
                match *t {
                    Type::BYTEA => out.extend_from_slice(b),
                    Type::BOOL => out.extend_from_slice(&[u8::from(n != 0)]),
                    _ => int(n as i128, out)?,
                }
            }
            _ => text(b, out)?,
        },
        Value::Uuid(u) => match *t {
            Type::UUID | Type::BYTEA => out.extend_from_slice(u),
            _ => out.extend_from_slice(crate::value::uuid_text(u).as_bytes()),
        },
        Value::Date(y, mo, d, h, mi, s, us) => {
            if *mo == 0 || *d == 0 {
                // MySQL's zero dates mean "no date": NULL, as pgloader's zero-dates-to-null does.
                return Ok(IsNull::Yes);
            }
            let when = chrono::NaiveDate::from_ymd_opt((*y).into(), (*mo).into(), (*d).into())
                .and_then(|date| {
                    date.and_hms_micro_opt((*h).into(), (*mi).into(), (*s).into(), *us)
                })
                .ok_or_else(|| format!("{y:04}-{mo:02}-{d:02} is not a calendar date"))?;
            let since = when - pg_epoch().and_hms_opt(0, 0, 0).expect("midnight");
            match *t {
                Type::DATE => {
                    if (*h, *mi, *s, *us) != (0, 0, 0, 0) {
                        return Err("a date with a time of day".into());
                    }
                    out.extend_from_slice(&(since.num_days() as i32).to_be_bytes())
                }
                Type::TIMESTAMP | Type::TIMESTAMPTZ => out.extend_from_slice(
                    &since
                        .num_microseconds()
                        .ok_or("a timestamp out of range")?
                        .to_be_bytes(),
                ),
                _ => return Err("not a date or timestamp column".into()),
            }
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let micros = ((i64::from(*days) * 24 + i64::from(*h)) * 3600
                + i64::from(*mi) * 60
                + i64::from(*s))
                * 1_000_000
                + i64::from(*us);
            let micros = if *neg { -micros } else { micros };
            match *t {
                Type::TIME => {
                    if !(0..=MICROS_PER_DAY).contains(&micros) {
                        return Err(
                            "a TIME outside 00:00–24:00 (an interval column can hold it)".into(),
                        );
                    }
                    out.extend_from_slice(&micros.to_be_bytes());
                }
                Type::INTERVAL => {
                    out.extend_from_slice(&micros.to_be_bytes());
                    out.extend_from_slice(&0i32.to_be_bytes()); // days
                    out.extend_from_slice(&0i32.to_be_bytes()); // months
                }
                _ => return Err("not a time or interval column".into()),
            }
        }
        Value::PgRaw { oid, bytes } => {
            if *oid != t.oid() {
                return Err(format!(
                    "a PostgreSQL value of type oid {oid} into a column of another type"
                ));
            }
            out.extend_from_slice(bytes);
        }
    }
    Ok(IsNull::No)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        numeric_to_text(&text_to_numeric(text).unwrap()).unwrap()
    }

    #[test]
    fn numerics_keep_every_digit_and_their_scale() {
        for t in [
            "0",
            "1",
            "-1",
            "12.340",
            "0.0001",
            "-0.000001",
            "99999999999999.999999",
            "-99999999999999.999999",
            "10000",
            "100000000.00000000",
            "18446744073709551615",
            "0.10",
            "123456789012345678901234567890.123456789",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(roundtrip(t), t, "{t}");
        }
        assert_eq!(roundtrip("-0.00"), "0.00", "no negative zero");
        assert_eq!(roundtrip("007.5"), "7.5");
        assert_eq!(roundtrip(".5"), "0.5");
        for bad in ["", "-", "1e3", "1.2.3", "abc", " 1"] {
            assert!(text_to_numeric(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numeric_binary_is_postgres_own() {
        // 12.340 as PostgreSQL sends it: 2 digits, weight 0, positive, dscale 3, [12, 3400]
        let wire = [0, 2, 0, 0, 0, 0, 0, 3, 0, 12, 0x0d, 0x48];
        assert_eq!(numeric_to_text(&wire).unwrap(), "12.340");
        assert_eq!(text_to_numeric("12.340").unwrap(), wire);
        // 0.0001: 1 digit, weight -1, dscale 4, [1]
        let wire = [0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1];
        assert_eq!(numeric_to_text(&wire).unwrap(), "0.0001");
        assert_eq!(text_to_numeric("0.0001").unwrap(), wire);
    }

    fn encoded(value: &Value, ty: ColumnType, target: &Type) -> Result<Vec<u8>, String> {
        let mut out = BytesMut::new();
        match encode(value, ty, target, &mut out)? {
            IsNull::Yes => Ok(Vec::new()),
            IsNull::No => Ok(out.to_vec()),
        }
    }

    #[test]
    fn dates_and_times_count_from_2000() {
        let d = Value::Date(2000, 1, 2, 0, 0, 0, 0);
        assert_eq!(
            encoded(&d, ColumnType::Date, &Type::DATE).unwrap(),
            1i32.to_be_bytes()
        );
        let t = Value::Date(1999, 12, 31, 23, 59, 59, 999_999);
        assert_eq!(
            encoded(&t, ColumnType::DateTime, &Type::TIMESTAMP).unwrap(),
            (-1i64).to_be_bytes()
        );
        assert_eq!(
            decode(&Type::TIMESTAMPTZ, Some(&(-1i64).to_be_bytes())).unwrap(),
            t
        );
        assert_eq!(
            decode(&Type::DATE, Some(&1i32.to_be_bytes())).unwrap(),
            d,
            "a date decodes to midnight fields"
        );
        let zero = Value::Date(0, 0, 0, 0, 0, 0, 0);
        assert!(
            encoded(&zero, ColumnType::Date, &Type::DATE)
                .unwrap()
                .is_empty(),
            "zero date → NULL"
        );
        let infinity = decode(&Type::DATE, Some(&i32::MAX.to_be_bytes())).unwrap();
        assert!(matches!(infinity, Value::PgRaw { oid: 1082, .. }));
        assert_eq!(
            encoded(&infinity, ColumnType::Date, &Type::DATE).unwrap(),
            i32::MAX.to_be_bytes(),
            "infinity passes through to the same type"
        );
        assert!(encoded(&infinity, ColumnType::Date, &Type::TIMESTAMP).is_err());
        let noon = Value::Time(false, 0, 12, 0, 0, 5);
        let wire = encoded(&noon, ColumnType::Time, &Type::TIME).unwrap();
        assert_eq!(wire, (43_200_000_005i64).to_be_bytes());
        assert_eq!(decode(&Type::TIME, Some(&wire)).unwrap(), noon);
        let negative = Value::Time(true, 0, 1, 0, 0, 0);
        assert!(encoded(&negative, ColumnType::Time, &Type::TIME).is_err());
        let interval = encoded(&negative, ColumnType::Time, &Type::INTERVAL).unwrap();
        assert_eq!(&interval[..8], (-3_600_000_000i64).to_be_bytes());
    }

    #[test]
    fn integers_booleans_text_and_uuids_fit_their_columns() {
        let big = Value::UInt(u64::MAX);
        assert!(encoded(&big, ColumnType::Int { unsigned: true }, &Type::INT8).is_err());
        assert_eq!(
            numeric_to_text(
                &encoded(&big, ColumnType::Int { unsigned: true }, &Type::NUMERIC).unwrap()
            )
            .unwrap(),
            "18446744073709551615"
        );
        assert!(encoded(
            &Value::Int(40_000),
            ColumnType::Int { unsigned: false },
            &Type::INT2
        )
        .is_err());
        assert_eq!(
            encoded(
                &Value::Int(2),
                ColumnType::Int { unsigned: false },
                &Type::BOOL
            )
            .unwrap(),
            [1]
        );
        assert_eq!(
            encoded(&Value::Bool(true), ColumnType::Bool, &Type::INT4).unwrap(),
            1i32.to_be_bytes()
        );
        let nul = Value::Bytes(b"a\0b".to_vec());
        assert!(encoded(&nul, ColumnType::Text, &Type::TEXT)
            .unwrap_err()
            .contains("NUL"));
        let json = Value::Bytes(b"{\"a\": 1}".to_vec());
        assert_eq!(
            encoded(&json, ColumnType::Json, &Type::JSONB).unwrap()[0],
            1,
            "jsonb version byte"
        );
        let u = Value::Bytes(b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_vec());
        assert_eq!(encoded(&u, ColumnType::Text, &Type::UUID).unwrap()[0], 0xa0);
        assert_eq!(
            decode(&Type::UUID, Some(&[0xa0; 16])).unwrap(),
            Value::Uuid([0xa0; 16])
        );
        assert_eq!(
            decode(&Type::JSONB, Some(b"\x01[1]")).unwrap(),
            Value::Bytes(b"[1]".to_vec())
        );
        let bits = Value::Bytes(vec![0x0f, 0xff]);
        assert_eq!(
            encoded(&bits, ColumnType::Bit, &Type::INT8).unwrap(),
            4095i64.to_be_bytes()
        );
    }

    #[test]
    fn what_cannot_map_is_named_at_start() {
        assert!(can_encode(ColumnType::Double, None, &Type::FLOAT4).is_err());
        assert!(can_encode(ColumnType::Int { unsigned: true }, None, &Type::NUMERIC).is_ok());
        assert!(can_encode(ColumnType::Array, Some("_int4"), &Type::INT4_ARRAY).is_ok());
        assert!(can_encode(ColumnType::Array, Some("_int4"), &Type::TEXT_ARRAY).is_err());
        assert!(can_encode(ColumnType::Time, None, &Type::TIMESTAMP).is_err());
        assert_eq!(column_type(&Type::TIMESTAMPTZ), ColumnType::Timestamp);
        assert_eq!(column_type(&Type::INT4_ARRAY), ColumnType::Array);
        assert_eq!(column_type(&Type::INTERVAL), ColumnType::PgNative);
    }
}
