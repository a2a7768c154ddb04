//! Column descriptions and row values, neutral between engines.
//!
//! Values keep exactly what the source's binary protocol delivered (integers as integers, FLOAT as `f32`,
//! DECIMAL as its digits, dates as their fields), so a row written back to the same engine is bit for bit
//! the row that was read. The column type says how to interpret a value for another engine or for JSON.

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
