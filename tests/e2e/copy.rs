//! The whole pipeline on a table with every column type: nothing lost, nothing changed, the ledger exact.

use std::collections::BTreeMap;

use crate::helpers::{Bits, TestJob};

#[tokio::test(flavor = "multi_thread")]
async fn every_row_arrives_bit_for_bit_with_two_consumers() {
    let job = TestJob::new(10_000, 1_000).await;
    let rows = job.create_source(200_000).await;

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;

    job.assert_target_equals_source().await;

    let source_ids = job.ids_of("src").await;
    let mut by_group: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &id in &source_ids {
        by_group.entry(job.group_of(id)).or_default().push(id);
    }
    let groups = job.groups().await;
    assert_eq!(
        groups,
        by_group.keys().copied().collect::<Vec<_>>(),
        "the groups sorted set must hold exactly the groups that have source rows (no empty group)"
    );

    let first_pass = job.compensate(Some("0s")).await;
    assert_eq!(
        (
            first_pass["groups_checked"].as_u64(),
            first_pass["groups_complete"].as_u64()
        ),
        (Some(groups.len() as u64), Some(groups.len() as u64)),
        "the first compensator pass after the consumers must check every group and find it complete: \
         {first_pass}"
    );
    job.assert_job_complete(rows, 0).await;

    for (&first, ids) in &by_group {
        let src_count = job.bitcount(first, Bits::Src).await;
        let tgt_count = job.bitcount(first, Bits::Tgt).await;
        assert_eq!(
            (src_count, tgt_count),
            (ids.len() as u64, ids.len() as u64),
            "group {first}: BITCOUNT src and tgt must equal its {} source rows",
            ids.len()
        );
        assert_eq!(
            &job.bitmap_ids(first, Bits::Src).await,
            ids,
            "group {first}: src bits"
        );
        assert_eq!(
            &job.bitmap_ids(first, Bits::Tgt).await,
            ids,
            "group {first}: tgt bits"
        );
        assert_eq!(
            job.bitcount(first, Bits::Gone).await,
            0,
            "group {first}: gone bits"
        );
        let meta = job.meta(first).await;
        assert_eq!(
            meta.get("status").map(String::as_str),
            Some("complete"),
            "group {first} meta: {meta:?}"
        );
        assert_eq!(
            meta.get("source_count").map(String::as_str),
            Some(ids.len().to_string().as_str()),
            "group {first} meta: {meta:?}"
        );
    }
}

/// The comparison the other tests rely on notices a single changed value of any kind; without this, a
/// comparison that always passes would make every test pass.
#[tokio::test(flavor = "multi_thread")]
async fn the_row_comparison_notices_one_changed_value_in_any_column() {
    let job = TestJob::new(10_000, 1_000).await;
    job.create_source(300).await;
    job.sql("INSERT INTO dst SELECT * FROM src").await;
    job.assert_target_equals_source().await;

    let id = job
        .sql_u64(
            "SELECT id FROM src WHERE ABS(c_float) BETWEEN 1 AND 1e6 AND c_varchar <> '' \
             AND c_text IS NOT NULL AND c_blob IS NOT NULL AND c_time IS NOT NULL AND c_json IS NOT NULL \
             AND c_datetime IS NOT NULL AND c_decimal IS NOT NULL AND c_bit IS NOT NULL \
             AND c_bigint_u IS NOT NULL ORDER BY id LIMIT 1",
        )
        .await;
    let changes = [
        // two ulps of a FLOAT: the same text with 6 significant digits, another value
        "c_float = c_float * (1 + 2.4e-7)",
        // equal under the case-insensitive collation
        "c_text = UPPER(c_text)",
        // equal under a PAD SPACE collation
        "c_varchar = CONCAT(c_varchar, ' ')",
        "c_blob = CONCAT(c_blob, X'00')",
        "c_time = c_time + INTERVAL 1 SECOND",
        "c_datetime = c_datetime + INTERVAL 1 MICROSECOND",
        "c_decimal = c_decimal + 0.000001",
        "c_json = REPLACE(c_json, ', ', ',')",
        "c_bit = c_bit ^ 1",
        "c_bigint_u = NULL",
    ];
    for change in changes {
        job.sql("DELETE FROM dst").await;
        job.sql("INSERT INTO dst SELECT * FROM src").await;
        let changed = job
            .sql_affected(&format!("UPDATE dst SET {change} WHERE id = {id}"))
            .await;
        assert_eq!(changed, 1, "`{change}` did not change row {id}");
        let column = change.split_whitespace().next().unwrap();
        match job.target_differences().await {
            Some(found) => assert!(
                found.contains(&format!("id {id}: {column}")),
                "`{change}` was noticed, but not as a difference in {column} of row {id}: {found}"
            ),
            None => panic!("the comparison missed `{change}` on row {id}"),
        }
    }

    job.sql("DELETE FROM dst WHERE id = (SELECT MAX(id) FROM src)")
        .await;
    let found = job.target_differences().await;
    assert!(
        found
            .as_deref()
            .is_some_and(|f| f.contains("no target row")),
        "the comparison missed a missing row: {found:?}"
    );
}
