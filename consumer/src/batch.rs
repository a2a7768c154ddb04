//! The consumer's decision for one batch, as pure functions (DESIGN.md §6 step 2 and §8.3): given the
//! message, the rows read and what the ledger says, what to write, what to delete and what to record.
//!
//! - `produce`: the rows read are upserted; ids with no row are recorded `gone`; nothing is deleted (the
//!   producer just read those ids, so the target never held a row of this job for them).
//! - `catchup`, `redrive`, `verify`: the batch is *exclusive*. Ids whose rows exist are upserted and each
//!   lands in exactly one table (the sink deletes its key from every other table of the job); ids whose rows
//!   are gone (or no longer match `filter`: the source reads with the filter) are deleted from every table.
//!   Landed ids get `tgt` set and `gone` cleared; gone ids get `gone` set and `tgt` cleared.
//! - Ids the ledger says must be left alone ([`LedgerFacts::skip`], the seam for `purged`, DESIGN.md §10)
//!   are neither written, deleted nor recorded.
//!
//! - Several exclusive batches taken together ([`mergeable`], [`union`]) are one batch over the union of
//!   their ids: one read, one write transaction; the record is split back by group ([`split_by_group`]).
//!   A busy table's catch-ups come as many small batches (a few ids per group per follower window), and
//!   their transactions, not their rows, would bound the consumer.
//!
//! I/O lives in [`crate::session`]: it reads, calls [`plan`], hands [`Plan::rows`] and [`Plan::delete`] to the
//! sink, and records [`Plan::record`] of the sink's outcome.

use std::collections::BTreeSet;

use bitmig_shared::ids::{count_in, expand, group_of, to_ranges, IdRange};
use bitmig_shared::ledger::BatchRecord;
use bitmig_shared::queue::Cause;
use bitmig_shared::sink::WriteOutcome;
use bitmig_shared::value::RowSet;

/// What the ledger says about a batch's ids before it is written.
#[derive(Debug, Clone, Default)]
pub struct LedgerFacts {
    /// Ids to leave alone entirely: the batch's ids in the group's `purged` bitmap (DESIGN.md §10), so a
    /// re-drive never resurrects or deletes an archived row. Filled for exclusive batches only.
    pub skip: BTreeSet<u64>,
}

/// What to do with one batch.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rows to upsert (ascending by key).
    pub rows: RowSet,
    /// Keys to delete from every table of the job (empty unless [`Plan::exclusive`]).
    pub delete: Vec<u64>,
    /// Ids with no row in the source.
    pub gone: Vec<u64>,
    /// Whether the batch may delete (see the module doc).
    pub exclusive: bool,
}

/// Whether batches of `cause` follow §8.3 (write and delete) rather than §6 (write only).
pub fn is_exclusive(cause: Cause) -> bool {
    match cause {
        Cause::Produce => false,
        Cause::Catchup | Cause::Redrive | Cause::Verify => true,
    }
}

/// Whether a batch of `cause` with `ids` may be taken together with others: exclusive batches smaller than
/// `limit` ids (a full batch gains nothing from company).
pub fn mergeable(cause: Cause, ids: &[IdRange], limit: u64) -> bool {
    is_exclusive(cause) && count_in(ids) < limit
}

/// The ids of several batches as one ascending list of ranges, each id once.
pub fn union<'a>(batches: impl IntoIterator<Item = &'a [IdRange]>) -> Vec<IdRange> {
    let mut ids: Vec<u64> = batches.into_iter().flat_map(expand).collect();
    ids.sort_unstable();
    ids.dedup();
    to_ranges(&ids)
}

/// A record of ids from several groups as one record per group (`first`, ascending), for the ledger's
/// per-group bitmaps; `groups` (each batch's group) all get one, even when none of their ids is left.
pub fn split_by_group(
    record: BatchRecord,
    group_size: u64,
    groups: &[u64],
) -> Vec<(u64, BatchRecord)> {
    let empty = || BatchRecord {
        landed: Vec::new(),
        gone: Vec::new(),
        failed: Vec::new(),
        exclusive: record.exclusive,
    };
    let mut out: std::collections::BTreeMap<u64, BatchRecord> =
        groups.iter().map(|&g| (g, empty())).collect();
    for id in record.landed {
        out.entry(group_of(id, group_size))
            .or_insert_with(empty)
            .landed
            .push(id);
    }
    for id in record.gone {
        out.entry(group_of(id, group_size))
            .or_insert_with(empty)
            .gone
            .push(id);
    }
    for (id, reason) in record.failed {
        out.entry(group_of(id, group_size))
            .or_insert_with(empty)
            .failed
            .push((id, reason));
    }
    out.into_iter().collect()
}

/// Decide what a batch of `ids` (inclusive ranges) does, given the `rows` read for them (ascending by key).
pub fn plan(cause: Cause, ids: &[IdRange], mut rows: RowSet, facts: &LedgerFacts) -> Plan {
    if !facts.skip.is_empty() {
        rows.rows.retain(|r| !facts.skip.contains(&r.key));
    }
    let gone: Vec<u64> = gone_ids(ids, &rows)
        .filter(|id| !facts.skip.contains(id))
        .collect();
    let exclusive = is_exclusive(cause);
    Plan {
        rows,
        delete: if exclusive { gone.clone() } else { Vec::new() },
        gone,
        exclusive,
    }
}

impl Plan {
    /// The ledger's record once the sink returned `outcome` for this plan.
    pub fn record(&self, outcome: WriteOutcome) -> BatchRecord {
        BatchRecord {
            landed: outcome.written,
            gone: self.gone.clone(),
            failed: outcome.failed,
            exclusive: self.exclusive,
        }
    }
}

/// The ledger's record of a `produce` batch the target server copied whole from the source
/// ([`bitmig_shared::sink::Sink::copy_within`]): every id landed, none gone, none failed.
pub fn copied_whole(ids: &[IdRange]) -> BatchRecord {
    BatchRecord {
        landed: expand(ids).collect(),
        gone: Vec::new(),
        failed: Vec::new(),
        exclusive: false,
    }
}

/// Ids of the ranges with no row among `rows` (both ascending).
fn gone_ids<'a>(ranges: &'a [IdRange], rows: &'a RowSet) -> impl Iterator<Item = u64> + 'a {
    let rows = &rows.rows;
    let mut i = 0;
    expand(ranges).filter(move |&id| {
        while i < rows.len() && rows[i].key < id {
            i += 1;
        }
        !(i < rows.len() && rows[i].key == id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitmig_shared::value::Row;

    fn rows(keys: &[u64]) -> RowSet {
        RowSet {
            columns: Vec::new().into(),
            key_index: 0,
            rows: keys
                .iter()
                .map(|&key| Row {
                    key,
                    values: Vec::new(),
                })
                .collect(),
        }
    }

    fn keys(rs: &RowSet) -> Vec<u64> {
        rs.rows.iter().map(|r| r.key).collect()
    }

    #[test]
    fn ids_without_a_row_are_gone() {
        let none = LedgerFacts::default();
        let p = plan(Cause::Produce, &[[1, 3], [6, 8]], rows(&[2, 3, 7]), &none);
        assert_eq!(p.gone, vec![1, 6, 8]);
        assert_eq!(
            plan(Cause::Produce, &[[1, 3]], rows(&[]), &none).gone,
            vec![1, 2, 3]
        );
        assert!(plan(Cause::Produce, &[[2, 3]], rows(&[2, 3]), &none)
            .gone
            .is_empty());
    }

    #[test]
    fn produce_writes_and_never_deletes() {
        let p = plan(
            Cause::Produce,
            &[[1, 4]],
            rows(&[1, 3]),
            &LedgerFacts::default(),
        );
        assert_eq!(keys(&p.rows), vec![1, 3]);
        assert!(p.delete.is_empty());
        assert!(!p.exclusive);
        let r = p.record(WriteOutcome {
            written: vec![1],
            failed: vec![(3, "bad".into())],
        });
        assert_eq!(
            r,
            BatchRecord {
                landed: vec![1],
                gone: vec![2, 4],
                failed: vec![(3, "bad".into())],
                exclusive: false,
            }
        );
    }

    #[test]
    fn catchup_redrive_and_verify_delete_what_is_gone_and_clear_the_opposite_bits() {
        for cause in [Cause::Catchup, Cause::Redrive, Cause::Verify] {
            let p = plan(cause, &[[10, 14]], rows(&[10, 12]), &LedgerFacts::default());
            assert_eq!(keys(&p.rows), vec![10, 12], "{cause:?}");
            assert_eq!(p.delete, vec![11, 13, 14], "{cause:?}");
            assert!(p.exclusive, "{cause:?}");
            let r = p.record(WriteOutcome {
                written: vec![10, 12],
                failed: Vec::new(),
            });
            assert_eq!(r.landed, vec![10, 12]);
            assert_eq!(r.gone, vec![11, 13, 14]);
            assert!(r.exclusive, "landed ids clear `gone`, gone ids clear `tgt`");
        }
        // Every row still there: nothing to delete, but the batch still keeps rows in one table.
        let p = plan(
            Cause::Catchup,
            &[[1, 2]],
            rows(&[1, 2]),
            &LedgerFacts::default(),
        );
        assert!(p.delete.is_empty() && p.exclusive);
    }

    #[test]
    fn a_batch_copied_whole_lands_every_id_and_deletes_nothing() {
        let r = copied_whole(&[[1, 3], [7, 7]]);
        assert_eq!(r.landed, vec![1, 2, 3, 7]);
        assert!(r.gone.is_empty() && r.failed.is_empty() && !r.exclusive);
    }

    #[test]
    fn batches_taken_together_are_one_batch_split_back_by_group() {
        assert!(mergeable(Cause::Catchup, &[[1, 9]], 1_000));
        assert!(!mergeable(Cause::Catchup, &[[1, 1_000]], 1_000));
        assert!(!mergeable(Cause::Produce, &[[1, 1]], 1_000));
        let a: &[IdRange] = &[[10, 12], [20, 20]];
        let b: &[IdRange] = &[[11, 13], [10_005, 10_006]];
        assert_eq!(union([a, b]), vec![[10, 13], [20, 20], [10_005, 10_006]]);
        let r = BatchRecord {
            landed: vec![10, 11, 10_005],
            gone: vec![12, 13, 10_006],
            failed: vec![(20, "bad".into())],
            exclusive: true,
        };
        let split = split_by_group(r, 10_000, &[0, 10_000, 30_000]);
        assert_eq!(split.len(), 3);
        assert_eq!(split[0].0, 0);
        assert_eq!(split[0].1.landed, vec![10, 11]);
        assert_eq!(split[0].1.gone, vec![12, 13]);
        assert_eq!(split[0].1.failed, vec![(20, "bad".to_string())]);
        assert_eq!(
            (split[1].1.landed.clone(), split[1].1.gone.clone()),
            (vec![10_005], vec![10_006])
        );
        assert!(split[2].1.landed.is_empty() && split[2].1.exclusive);
    }

    #[test]
    fn skipped_ids_are_neither_written_deleted_nor_recorded() {
        let facts = LedgerFacts {
            skip: [2, 3].into_iter().collect(),
        };
        let p = plan(Cause::Redrive, &[[1, 4]], rows(&[1, 2]), &facts);
        assert_eq!(keys(&p.rows), vec![1]);
        assert_eq!(p.delete, vec![4]);
        assert_eq!(p.gone, vec![4]);
    }
}
