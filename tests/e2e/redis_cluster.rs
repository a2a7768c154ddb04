//! A whole job with its ledger on a Redis Cluster (DESIGN.md §11): `BITMIG_REDIS_URL` lists the nodes; the
//! groups' hash tags spread over the cluster's slots; the report agrees with the bits read from the nodes.

use std::collections::BTreeMap;

use crate::helpers::{Bits, TestJob};

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_job_on_a_redis_cluster() {
    let mut job = TestJob::new(10_000, 1_000).await;
    let cluster = job.use_redis_cluster().await;
    let rows = job.create_source(200_000).await;

    job.produce(&[]).await;
    job.consume_until_idle(2, &[]).await;
    job.assert_target_equals_source().await;

    let mut by_group: BTreeMap<u64, u64> = BTreeMap::new();
    for id in job.ids_of("src").await {
        *by_group.entry(job.group_of(id)).or_default() += 1;
    }
    let groups = cluster.groups().await;
    assert_eq!(groups, by_group.keys().copied().collect::<Vec<_>>());

    let pass = job.compensate(Some("0s")).await;
    assert_eq!(pass["republished_ids"].as_u64(), Some(0), "{pass}");
    assert_eq!(
        pass["groups_complete"].as_u64(),
        Some(groups.len() as u64),
        "{pass}"
    );

    let (mut src, mut tgt) = (0, 0);
    for (&first, &count) in &by_group {
        let (s, t) = (
            cluster.bitcount(first, Bits::Src).await,
            cluster.bitcount(first, Bits::Tgt).await,
        );
        assert_eq!(
            (s, t),
            (count, count),
            "group {first}: BITCOUNT src, tgt on the cluster"
        );
        assert_eq!(
            (
                cluster.redis_cli_bitcount(first, Bits::Src).await,
                cluster.redis_cli_bitcount(first, Bits::Tgt).await
            ),
            (s, t),
            "group {first}: redis-cli -c BITCOUNT"
        );
        src += s;
        tgt += t;
    }
    let (code, report) = job.report().await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        (
            report["source_ids"].as_u64(),
            report["target_ids"].as_u64(),
            report["missing_ids"].as_u64(),
            report["groups_complete"].as_u64(),
        ),
        (Some(src), Some(tgt), Some(0), Some(groups.len() as u64)),
        "the report must agree with the cluster's bitcounts ({src} src, {tgt} tgt): {report:#}"
    );
    assert_eq!(src, rows);
}
