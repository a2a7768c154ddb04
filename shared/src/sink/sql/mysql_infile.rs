//! The MySQL / MariaDB sink's bulk path for `produce` batches ([`super::WriteHints::fresh`]): the rows as a
//! tab-separated file sent by `LOAD DATA LOCAL INFILE`, the server's own bulk insert, instead of a prepared
//! 1 000-row `INSERT` whose client-side statement (a definition per placeholder) the consumer kept cached.
//! Measured in the benchmark's copy (README, issue 17): consumer RSS 43 → 26 MB; the copy's time and
//! MariaDB's CPU moved less than the machine's run-to-run noise.
//!
//! - The file never touches a disk: it is registered under a name of its own ([`Infile`]) and served by the
//!   pool's handler ([`serve`]), which answers only names this process registered — a server asking for any
//!   other file gets nothing.
//! - `LOCAL` makes the server skip a duplicate key and adjust a bad value with a warning instead of an error.
//!   So the load runs inside a transaction (or under a savepoint of the batch's) and is kept only when every
//!   row was inserted with no warning at all; otherwise it is rolled back and the batch goes the upsert's
//!   way, whose outcome (the version guard, strict mode's refusals, bisection) is then the outcome.
//! - A server that refuses `LOCAL INFILE` (MySQL 8's default `local_infile = OFF`) is asked once per sink.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use mysql_async::{InfileData, LocalInfileError};

use crate::value::{Column, ColumnType, Row, Value};

/// The name prefix of a registered file.
const PREFIX: &str = "bitmig-batch-";

static FILES: LazyLock<Mutex<HashMap<u64, Bytes>>> = LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A file registered for one `LOAD DATA LOCAL INFILE`; unregistered when dropped (after the statement,
/// whether or not the server asked for it).
pub(crate) struct Infile {
    id: u64,
}

impl Infile {
    pub(crate) fn register(data: Vec<u8>) -> Infile {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        FILES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Bytes::from(data));
        Infile { id }
    }

    /// The name to put in the statement (a quoted SQL string needs no escaping: letters, digits, `-`).
    pub(crate) fn name(&self) -> String {
        format!("{PREFIX}{}", self.id)
    }
}

impl Drop for Infile {
    fn drop(&mut self) {
        FILES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The pool's `LOCAL INFILE` handler: the registered file of that name, once; anything else is refused.
pub(crate) fn serve(name: &[u8]) -> BoxFuture<'static, Result<InfileData, LocalInfileError>> {
    let id = std::str::from_utf8(name)
        .ok()
        .and_then(|n| n.strip_prefix(PREFIX))
        .and_then(|n| n.parse::<u64>().ok());
    let data = id.and_then(|id| FILES.lock().unwrap_or_else(|p| p.into_inner()).remove(&id));
    let asked = String::from_utf8_lossy(name).into_owned();
    Box::pin(async move {
        match data {
            Some(bytes) => {
                let stream: InfileData = Box::pin(futures::stream::once(async move { Ok(bytes) }));
                Ok(stream)
            }
            None => Err(LocalInfileError::PathIsNotInTheWhiteList(asked)),
        }
    })
}

/// Whether rows of these columns can go by a text file and come out as the upsert would write them: every
/// type but BIT (text would be read as characters, not bits) and the types MySQL has no form for.
pub(crate) fn loadable(columns: &[Column]) -> bool {
    columns.iter().all(|c| {
        !matches!(
            c.ty,
            ColumnType::Bit | ColumnType::Array | ColumnType::PgNative | ColumnType::Other
        )
    })
}

/// The rows as `LOAD DATA`'s default format: fields ended by a tab, lines by a newline, `\` escapes,
/// `\N` for NULL, the bytes as they are (the statement says `CHARACTER SET utf8mb4`, the connection's).
pub(crate) fn encode(rows: &[&Row]) -> Vec<u8> {
    let width: usize = rows
        .first()
        .map(|r| r.values.iter().map(approx_len).sum())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(rows.len() * (width + 8));
    let mut text = String::new();
    for row in rows {
        for (i, v) in row.values.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            field(&mut out, &mut text, v);
        }
        out.push(b'\n');
    }
    out
}

fn approx_len(v: &Value) -> usize {
    match v {
        Value::Bytes(b) => b.len() + 1,
        _ => 12,
    }
}

fn field(out: &mut Vec<u8>, text: &mut String, v: &Value) {
    text.clear();
    match v {
        Value::Null => {
            out.extend_from_slice(b"\\N");
            return;
        }
        Value::Bytes(b) => {
            escape(out, b);
            return;
        }
        Value::PgRaw { bytes, .. } => {
            // Rows holding one are failed before any statement is built (`pg_only`).
            escape(out, bytes);
            return;
        }
        Value::Int(i) => write!(text, "{i}"),
        Value::UInt(u) => write!(text, "{u}"),
        // The shortest text that reads back as the same number, in exponent form (a DOUBLE of 1e300
        // would otherwise be 301 digits). A FLOAT as the double it is: the server reads the text as a
        // double, and the shortest FLOAT text of the largest FLOAT (3.4028235e38) is a double above it,
        // refused as out of range.
        Value::Float(f) => write!(text, "{:e}", f64::from(*f)),
        Value::Double(d) => write!(text, "{d:e}"),
        Value::Bool(b) => write!(text, "{}", u8::from(*b)),
        Value::Uuid(u) => {
            text.push_str(&crate::value::uuid_text(u));
            Ok(())
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            // A DATE column is read with a zero time: written as a date alone, a DATETIME takes it as
            // midnight and a DATE takes it without a truncation note.
            let r = write!(text, "{y:04}-{mo:02}-{d:02}");
            if (*h, *mi, *s, *us) != (0, 0, 0, 0) {
                let _ = write!(text, " {h:02}:{mi:02}:{s:02}");
                if *us != 0 {
                    let _ = write!(text, ".{us:06}");
                }
            }
            r
        }
        Value::Time(neg, d, h, mi, s, us) => {
            let hours = u32::from(*h) + 24 * *d;
            let sign = if *neg { "-" } else { "" };
            let r = write!(text, "{sign}{hours}:{mi:02}:{s:02}");
            if *us != 0 {
                let _ = write!(text, ".{us:06}");
            }
            r
        }
    }
    .expect("writing to a String");
    out.extend_from_slice(text.as_bytes());
}

/// `\`, tab, newline, carriage return and NUL as `LOAD DATA` reads them back.
fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: Vec<Value>) -> Row {
        Row { key: 1, values }
    }

    #[test]
    fn fields_are_escaped_and_typed_as_load_data_reads_them() {
        let r = row(vec![
            Value::UInt(7),
            Value::Int(-3),
            Value::Null,
            Value::Bytes(b"a\\b\tc\nd\re\0f \\N".to_vec()),
            Value::Double(1e300),
            Value::Float(0.1),
            Value::Float(f32::MAX),
            Value::Date(2024, 2, 29, 0, 0, 0, 0),
            Value::Date(2024, 2, 29, 13, 5, 9, 0),
            Value::Date(2024, 2, 29, 13, 5, 9, 42),
            Value::Time(true, 1, 2, 3, 4, 5),
            Value::Time(false, 34, 22, 59, 59, 0),
            Value::Bool(true),
        ]);
        let text = String::from_utf8(encode(&[&r, &r])).unwrap();
        let line = "7\t-3\t\\N\ta\\\\b\\tc\\nd\\re\\0f \\\\N\t1e300\t1.0000000149011612e-1\t3.4028234663852886e38\t2024-02-29\t\
                    2024-02-29 13:05:09\t2024-02-29 13:05:09.000042\t-26:03:04.000005\t838:59:59\t1\n";
        assert_eq!(text, format!("{line}{line}"));
    }

    #[test]
    fn a_registered_file_is_served_once_and_nothing_else_is() {
        let file = Infile::register(b"1\tx\n".to_vec());
        let name = file.name();
        let served = futures::executor::block_on(serve(name.as_bytes()));
        assert!(served.is_ok());
        assert!(futures::executor::block_on(serve(name.as_bytes())).is_err());
        assert!(futures::executor::block_on(serve(b"/etc/passwd")).is_err());
        drop(file);
        let other = Infile::register(Vec::new());
        let other_name = other.name();
        drop(other);
        assert!(
            futures::executor::block_on(serve(other_name.as_bytes())).is_err(),
            "a dropped registration is gone"
        );
    }

    #[test]
    fn bit_columns_and_types_mysql_cannot_hold_go_by_insert() {
        let col = |ty| Column {
            name: "c".into(),
            ty,
            type_name: String::new(),
        };
        assert!(loadable(&[
            col(ColumnType::Int { unsigned: true }),
            col(ColumnType::Text),
            col(ColumnType::Bytes),
            col(ColumnType::Json),
        ]));
        assert!(!loadable(&[col(ColumnType::Text), col(ColumnType::Bit)]));
    }
}
