//! How fast the canonical row digest hashes rows of the benchmark's shape (`scripts/bench`'s `orders`:
//! BIGINT UNSIGNED id, BIGINT, DECIMAL(12,2), TINYINT, VARCHAR(64) with NULLs and empty strings, two
//! DATETIMEs), as the MySQL reader delivers them. One batch of 10 000 rows is built once and hashed under
//! fresh keys until 1 000 000 rows were hashed, each into a group digest cut in chunks: the per-row cost of
//! `RowEncoder::hash` + `ChunkDigests::add`, with no allocation per row.
//!
//! `cargo run -p bitmig-shared --example digest_throughput [ROWS]` (a debug build is slower than a release one
//! by several times; say which when quoting the figure).

use std::time::Instant;

use bitmig_shared::digest::{ChunkDigests, RowPlan};
use bitmig_shared::value::{Column, ColumnType, Value};

fn column(name: &str, ty: ColumnType) -> Column {
    Column {
        name: name.into(),
        ty,
        type_name: String::new(),
    }
}

fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let columns = [
        column("id", ColumnType::Int { unsigned: true }),
        column("user_id", ColumnType::Int { unsigned: false }),
        column("amount", ColumnType::Decimal),
        column("status", ColumnType::Int { unsigned: false }),
        column("note", ColumnType::Text),
        column("created_at", ColumnType::DateTime),
        column("updated_at", ColumnType::DateTime),
    ];
    const BATCH: u64 = 10_000;
    let batch: Vec<Vec<Value>> = (0..BATCH)
        .map(|s| {
            let note = match s % 10 {
                0 => Value::Null,
                1 => Value::Bytes(Vec::new()),
                _ => Value::Bytes(
                    format!("order {s} of user {} café", 1 + s * 7919 % 20_000).into_bytes(),
                ),
            };
            vec![
                Value::UInt(s + 1),
                Value::Int((1 + s * 7919 % 20_000) as i64),
                Value::Bytes(format!("{}.{:02}", s * 7727 % 1_000_000 / 100, s % 100).into_bytes()),
                Value::Int((s % 5) as i64 - 1),
                note,
                Value::Date(2023, 1 + (s % 12) as u8, 1 + (s % 28) as u8, 10, 20, 30, 0),
                Value::Date(2024, 1 + (s % 12) as u8, 1 + (s % 28) as u8, 11, 21, 31, 0),
            ]
        })
        .collect();
    let plan = RowPlan::all_columns(&columns, &[&columns]).expect("one layout on both sides");
    let mut encoder = plan.encoder(&columns).expect("the plan's own columns");
    let mut digests = ChunkDigests::new(1, total, 65_536);
    let started = Instant::now();
    let mut key = 0u64;
    while key < total {
        for values in &batch {
            key += 1;
            if key > total {
                break;
            }
            digests.add(key, encoder.hash(key, values));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let digest = digests.total();
    println!(
        "hashed {} rows in {secs:.3} s: {:.0} rows/s ({} build); digest {digest}",
        digest.rows,
        digest.rows as f64 / secs,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}
