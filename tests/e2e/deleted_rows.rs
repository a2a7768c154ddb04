//! Rows deleted between producing and consuming: the consumer's reverse lookup finds nothing, so the ids are
//! marked gone instead of being written or re-driven forever.

use crate::helpers::{Bits, TestJob, TWO_POW_40};

#[tokio::test(flavor = "multi_thread")]
async fn rows_deleted_after_producing_end_up_gone() {
    let job = TestJob::new(1_000, 100).await;
    let rows = job.create_source(5_000).await;
    job.produce(&[]).await;

    let published = job.ids_of("src").await;
    // Scattered ids, every id of one group's first 150 (a whole batch and then some), and an id above 2^40.
    let first_group = job.group_of(published[0]);
    let doomed = format!(
        "id % 10 = 7 OR id BETWEEN {} AND {} OR id = {}",
        first_group + 1_000,
        first_group + 1_149,
        TWO_POW_40 + 1
    );
    let deleted = job
        .sql_ids(&format!("SELECT id FROM src WHERE {doomed} ORDER BY id"))
        .await;
    assert!(deleted.len() > 500, "only {} rows to delete", deleted.len());
    job.sql(&format!("DELETE FROM src WHERE {doomed}")).await;

    job.consume_until_idle(1, &[]).await;

    job.assert_target_equals_source().await;
    let leaked = job
        .sql_u64(&format!("SELECT COUNT(*) FROM dst WHERE {doomed}"))
        .await;
    assert_eq!(leaked, 0, "deleted rows reached the target");

    let remaining = job.ids_of("src").await;
    assert_eq!(remaining.len() + deleted.len(), rows as usize);
    for first in job.groups().await {
        let in_group = |ids: &[u64]| -> Vec<u64> {
            ids.iter()
                .copied()
                .filter(|&id| job.group_of(id) == first)
                .collect()
        };
        assert_eq!(
            job.bitmap_ids(first, Bits::Gone).await,
            in_group(&deleted),
            "group {first}: the gone bits must be exactly the deleted ids"
        );
        assert_eq!(
            job.bitmap_ids(first, Bits::Tgt).await,
            in_group(&remaining),
            "group {first}: the tgt bits must be exactly the ids still in the source"
        );
        assert_eq!(
            job.bitmap_ids(first, Bits::Src).await,
            in_group(&published),
            "group {first}: the src bits must be the ids published, deleted or not"
        );
    }

    job.assert_job_complete(rows, deleted.len() as u64).await;
}
