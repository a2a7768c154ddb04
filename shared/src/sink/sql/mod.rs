//! SQL table sinks: the batch logic once, the SQL text and error classes per dialect ([`mysql`],
//! [`postgres`]).
//!
//! Shared here: grouping a batch's rows by target table ([`group`], through the one route resolver),
//! chunking each table's rows under the dialect's bind limit ([`pieces`]), the keys a batch deletes per
//! table ([`Deletes`], [`placed`]), the version column check, and the bisection that isolates a row the
//! server refuses ([`bisect`], over a dialect's [`WriteAlone`]). Each dialect owns its statements, its
//! transaction handling (MySQL rolls back one statement; PostgreSQL aborts the transaction) and table
//! creation. Further per-engine work (reading target rows by key range for verify, deleting keys in a
//! transaction) belongs in the dialect files, beside their upsert.

pub mod mysql;
pub mod postgres;

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::route::Router;
use super::{SinkError, WriteOutcome};
use crate::job::{Ident, TableName};
use crate::value::{Column, Row, RowSet};

/// Rows of one table, at most one statement's worth.
pub(crate) struct Piece<'a> {
    pub table: &'a TableName,
    pub rows: Vec<&'a Row>,
}

/// What a batch deletes: the tables to visit, the keys gone everywhere, whether written keys leave every
/// other table.
pub(crate) struct Deletes<'a> {
    pub every: Vec<TableName>,
    pub delete: &'a [u64],
    pub exclusive: bool,
}

/// The batch's rows by target table. A row whose route cannot be computed goes to `failed` with the reason.
/// One table keeps the batch's order. With `last_wins`, a key repeated within a table keeps only its last
/// row (PostgreSQL's `ON CONFLICT DO UPDATE` cannot touch a row twice in one statement).
pub(crate) fn group<'a>(
    router: &Router,
    rs: &'a RowSet,
    failed: &mut Vec<(u64, String)>,
    last_wins: bool,
) -> Vec<(TableName, Vec<&'a Row>)> {
    let mut grouped: Vec<(TableName, Vec<&Row>)> = match router.fixed() {
        Some(table) => vec![(table.clone(), rs.rows.iter().collect())],
        None => {
            let mut by_table: BTreeMap<TableName, Vec<&Row>> = BTreeMap::new();
            for row in &rs.rows {
                match router.resolve(row) {
                    Ok(table) => by_table.entry(table).or_default().push(row),
                    Err(reason) => failed.push((row.key, reason)),
                }
            }
            by_table.into_iter().collect()
        }
    };
    if last_wins {
        for (_, rows) in &mut grouped {
            // Rows arrive ascending by key: a repeated key is adjacent. Keep its last row.
            if rows.windows(2).any(|w| w[0].key == w[1].key) {
                rows.reverse();
                rows.dedup_by_key(|r| r.key);
                rows.reverse();
            }
        }
    }
    grouped
}

/// Each table's rows in statements of at most `per_stmt` rows; empty tables left out.
pub(crate) fn pieces<'a>(
    grouped: &'a [(TableName, Vec<&'a Row>)],
    per_stmt: usize,
) -> Vec<Piece<'a>> {
    grouped
        .iter()
        .flat_map(|(table, rows)| {
            rows.chunks(per_stmt.max(1)).map(move |chunk| Piece {
                table,
                rows: chunk.to_vec(),
            })
        })
        .filter(|p| !p.rows.is_empty())
        .collect()
}

/// The tables that receive rows, once each.
pub(crate) fn tables_of<'a>(grouped: &'a [(TableName, Vec<&'a Row>)]) -> Vec<&'a TableName> {
    grouped
        .iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(t, _)| t)
        .collect()
}

/// Keys per table of `pieces`.
pub(crate) fn placed(pieces: &[Piece<'_>]) -> Vec<(TableName, Vec<u64>)> {
    let mut by_table: BTreeMap<TableName, Vec<u64>> = BTreeMap::new();
    for piece in pieces {
        by_table
            .entry(piece.table.clone())
            .or_default()
            .extend(piece.rows.iter().map(|r| r.key));
    }
    by_table.into_iter().collect()
}

/// `source.version` must be among the columns read.
pub(crate) fn check_version(version: Option<&Ident>, columns: &[Column]) -> Result<(), SinkError> {
    match version {
        Some(v) if !columns.iter().any(|c| c.name == v.as_str()) => Err(SinkError::Batch(format!(
            "source.version `{v}` is not among the columns the source reads"
        ))),
        _ => Ok(()),
    }
}

/// A dialect's way to write some rows of one table on their own (outside the batch's transaction).
#[async_trait]
pub(crate) trait WriteAlone: Send {
    /// `Ok(Ok(()))`: written; `Ok(Err(reason))`: the server refused a row's values (the reason as it goes
    /// to `failed`); `Err`: the batch cannot go on.
    async fn write_alone(
        &mut self,
        table: &TableName,
        rows: &[&Row],
    ) -> Result<Result<(), String>, SinkError>;
}

/// Write a refused piece by halves until every row is written (into `outcome.written`, and its piece into
/// `landed`) or isolated with its reason in `outcome.failed`. `refused`: the piece itself was refused
/// already (start with its halves); otherwise it is tried whole first.
pub(crate) async fn bisect<'a, W: WriteAlone>(
    writer: &mut W,
    piece: Piece<'a>,
    refused: bool,
    outcome: &mut WriteOutcome,
    landed: &mut Vec<Piece<'a>>,
) -> Result<(), SinkError> {
    let table = piece.table;
    let mut pending: Vec<Vec<&Row>> = Vec::new();
    let mut rows = piece.rows;
    if refused && rows.len() > 1 {
        let right = rows.split_off(rows.len() / 2);
        pending.push(right);
    }
    pending.push(rows);
    while let Some(rows) = pending.pop() {
        if rows.is_empty() {
            continue;
        }
        match writer.write_alone(table, &rows).await? {
            Ok(()) => {
                outcome.written.extend(rows.iter().map(|r| r.key));
                landed.push(Piece { table, rows });
            }
            Err(reason) => {
                let mut left = rows;
                if left.len() == 1 {
                    outcome.failed.push((left[0].key, reason));
                } else {
                    let right = left.split_off(left.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
            }
        }
    }
    Ok(())
}
