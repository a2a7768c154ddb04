//! Which ids differ, once digests say something does: both sides' (key, row hash) merged by key in one
//! pass, then the differing columns of the rows whose hashes differ.
//!
//! The merge streams: it takes two iterators ascending by key and never holds more than the current pair,
//! so the caller decides how much it reads at a time (a differing chunk of [`super::ChunkDigests`]). The
//! target side may hold several rows for one key (two routed tables holding the same id): the first is
//! compared with the source row, each further one is `extra`.

use super::canon::{RowEncoder, RowPlan};
use super::DigestError;
use crate::value::Row;

/// How an id differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// A source row with no target row.
    Missing,
    /// A target row with no source row (deleted in the source, or filtered out).
    Extra,
    /// Both rows exist and differ.
    Differs,
}

impl DiffKind {
    /// The word used in reports and the ledger: `missing`, `extra`, `differs`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Differs => "differs",
        }
    }
}

/// One differing id; `columns` names the differing columns of a `Differs` once the rows were compared
/// (empty before, and for `Missing` / `Extra`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyDiff {
    pub key: u64,
    pub kind: DiffKind,
    pub columns: Vec<String>,
}

fn ascending(prev: &mut Option<u64>, key: u64, strict: bool) -> Result<(), DigestError> {
    if let Some(p) = *prev {
        if key < p || (strict && key == p) {
            return Err(DigestError::Unsorted {
                before: p,
                after: key,
            });
        }
    }
    *prev = Some(key);
    Ok(())
}

/// Merges the source's and the target's `(key, row hash)`, each ascending by key (the source's strictly),
/// calling `found` for every differing key in ascending order. Returns how many keys matched.
pub fn merge_keyed<S, T, F>(source: S, target: T, mut found: F) -> Result<u64, DigestError>
where
    S: IntoIterator<Item = (u64, u128)>,
    T: IntoIterator<Item = (u64, u128)>,
    F: FnMut(u64, DiffKind),
{
    let mut s = source.into_iter();
    let mut t = target.into_iter();
    let (mut s_prev, mut t_prev) = (None, None);
    let mut next_s = || -> Result<Option<(u64, u128)>, DigestError> {
        let n = s.next();
        if let Some((k, _)) = n {
            ascending(&mut s_prev, k, true)?;
        }
        Ok(n)
    };
    let mut next_t = || -> Result<Option<(u64, u128)>, DigestError> {
        let n = t.next();
        if let Some((k, _)) = n {
            ascending(&mut t_prev, k, false)?;
        }
        Ok(n)
    };
    let (mut s_cur, mut t_cur) = (next_s()?, next_t()?);
    let mut equal = 0u64;
    let mut last_matched: Option<u64> = None;
    loop {
        match (s_cur, t_cur) {
            (None, None) => return Ok(equal),
            // a further target row for a key already matched
            (_, Some((tk, _))) if last_matched == Some(tk) => {
                found(tk, DiffKind::Extra);
                t_cur = next_t()?;
            }
            (Some((sk, _)), None) => {
                found(sk, DiffKind::Missing);
                s_cur = next_s()?;
            }
            (None, Some((tk, _))) => {
                found(tk, DiffKind::Extra);
                t_cur = next_t()?;
            }
            (Some((sk, sh)), Some((tk, th))) => {
                if sk < tk {
                    found(sk, DiffKind::Missing);
                    s_cur = next_s()?;
                } else if tk < sk {
                    found(tk, DiffKind::Extra);
                    t_cur = next_t()?;
                } else {
                    if sh == th {
                        equal += 1;
                    } else {
                        found(sk, DiffKind::Differs);
                    }
                    last_matched = Some(sk);
                    s_cur = next_s()?;
                    t_cur = next_t()?;
                }
            }
        }
    }
}

/// The source keys proven equal in the target: a target row with the same hash, and no second target row
/// with that key. This is what `purge` may delete; anything else (missing, differing, duplicated in the
/// target, or a key the merge could not place) is left alone. Both sides ascending by key.
pub fn proven_equal(
    source: &[(u64, u128)],
    target: &[(u64, u128)],
) -> Result<Vec<u64>, DigestError> {
    let mut bad = Vec::new();
    merge_keyed(source.iter().copied(), target.iter().copied(), |k, _| {
        bad.push(k)
    })?;
    // `found` is called in ascending key order, so `bad` is sorted
    Ok(source
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| bad.binary_search(k).is_err())
        .collect())
}

/// Compares full rows of both sides (each ascending by key, e.g. the rows of the keys a merge found
/// `Differs`, or every row of a small chunk) and returns every differing id with its kind and, for
/// `Differs`, the differing columns' names.
pub fn compare_rows(
    plan: &RowPlan,
    source: (&mut RowEncoder, &[Row]),
    target: (&mut RowEncoder, &[Row]),
) -> Result<Vec<KeyDiff>, DigestError> {
    let (s_enc, s_rows) = source;
    let (t_enc, t_rows) = target;
    let s_hashes = s_enc.key_hashes(s_rows);
    let t_hashes = t_enc.key_hashes(t_rows);
    let mut diffs = Vec::new();
    merge_keyed(s_hashes, t_hashes, |key, kind| {
        diffs.push(KeyDiff {
            key,
            kind,
            columns: Vec::new(),
        })
    })?;
    for d in diffs.iter_mut().filter(|d| d.kind == DiffKind::Differs) {
        let find = |rows: &[Row]| {
            rows.binary_search_by_key(&d.key, |r| r.key)
                .ok()
                .map(|i| rows[i].values.clone())
        };
        if let (Some(sv), Some(tv)) = (find(s_rows), find(t_rows)) {
            d.columns = plan.differing_columns(s_enc, &sv, t_enc, &tv);
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Column, ColumnType, Value};

    fn merged(s: &[(u64, u128)], t: &[(u64, u128)]) -> (Vec<(u64, DiffKind)>, u64) {
        let mut out = Vec::new();
        let equal = merge_keyed(s.iter().copied(), t.iter().copied(), |k, kind| {
            out.push((k, kind))
        })
        .unwrap();
        (out, equal)
    }

    #[test]
    fn merge_classifies_missing_extra_and_differs() {
        let s = [(1, 10), (2, 20), (4, 40), (5, 50), (9, 90)];
        let t = [(0, 0), (2, 20), (4, 41), (5, 50), (5, 50), (7, 70)];
        let (diffs, equal) = merged(&s, &t);
        assert_eq!(
            diffs,
            [
                (0, DiffKind::Extra),
                (1, DiffKind::Missing),
                (4, DiffKind::Differs),
                (5, DiffKind::Extra),
                (7, DiffKind::Extra),
                (9, DiffKind::Missing),
            ]
        );
        assert_eq!(equal, 2);
        assert_eq!(merged(&[], &[]), (vec![], 0));
        assert_eq!(merged(&[(3, 1)], &[]), (vec![(3, DiffKind::Missing)], 0));
    }

    #[test]
    fn only_a_single_equal_target_row_proves_a_key() {
        let s = [(1, 10), (2, 20), (3, 30), (4, 40), (6, 60)];
        let t = [(1, 10), (2, 21), (4, 40), (4, 40), (5, 50), (6, 60)];
        assert_eq!(proven_equal(&s, &t).unwrap(), [1, 6]);
        assert_eq!(proven_equal(&s, &[]).unwrap(), Vec::<u64>::new());
        assert!(proven_equal(&[(2, 0), (1, 0)], &[]).is_err());
    }

    #[test]
    fn merge_refuses_unsorted_keys() {
        let e = merge_keyed([(2, 0), (1, 0)], [], |_, _| {}).unwrap_err();
        assert_eq!(
            e,
            DigestError::Unsorted {
                before: 2,
                after: 1
            }
        );
        assert!(merge_keyed([(1, 0), (1, 0)], [], |_, _| {}).is_err());
        assert!(merge_keyed([], [(3, 0), (2, 0)], |_, _| {}).is_err());
    }

    #[test]
    fn compared_rows_name_their_columns() {
        let cols = [
            Column {
                name: "id".into(),
                ty: ColumnType::Int { unsigned: false },
                type_name: String::new(),
            },
            Column {
                name: "v".into(),
                ty: ColumnType::Text,
                type_name: String::new(),
            },
        ];
        let plan = RowPlan::all_columns(&cols, &[&cols]).unwrap();
        let (mut a, mut b) = (plan.encoder(&cols).unwrap(), plan.encoder(&cols).unwrap());
        let row = |k: u64, v: &str| Row {
            key: k,
            values: vec![Value::Int(k as i64), Value::Bytes(v.as_bytes().to_vec())],
        };
        let s = [row(1, "a"), row(2, "b"), row(3, "c")];
        let t = [row(1, "a"), row(2, "B"), row(4, "d")];
        let diffs = compare_rows(&plan, (&mut a, &s), (&mut b, &t)).unwrap();
        let got: Vec<(u64, &str, Vec<String>)> = diffs
            .iter()
            .map(|d| (d.key, d.kind.as_str(), d.columns.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "differs", vec!["v".to_owned()]),
                (3, "missing", vec![]),
                (4, "extra", vec![])
            ]
        );
    }
}
