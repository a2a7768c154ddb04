//! A job file with a mistake is refused at start — exit code 2, a message naming the mistake — before
//! anything is read, published or written to the ledger.

use std::path::Path;

use crate::helpers::{path_str, Bin, TestJob};

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_job_file_exits_2_and_publishes_nothing() {
    let job = TestJob::new(10_000, 1_000).await;
    // A source that would be published if the job file were accepted.
    job.create_source(500).await;
    let good = job.job_toml();
    let unset_var = format!("BITMIG_TEST_UNSET_VAR_{}", job.name.to_uppercase());
    assert!(std::env::var_os(&unset_var).is_none());

    // (file, text, what stderr must name, whether it must name the file too)
    let cases = [
        (
            "unknown-top-level-key.toml",
            good.replacen("group_size =", "colour = \"red\"\ngroup_size =", 1),
            "colour".to_owned(),
            true,
        ),
        (
            "unknown-source-key.toml",
            good.replacen("key = \"id\"", "key = \"id\"\ncolur = \"blue\"", 1),
            "colur".to_owned(),
            true,
        ),
        (
            "table-not-an-identifier.toml",
            good.replacen("table = \"src\"", "table = \"orders; drop table x\"", 1),
            "orders; drop table x".to_owned(),
            true,
        ),
        (
            "unset-variable.toml",
            good.replacen(
                &job.database_url,
                &format!("mysql://root@127.0.0.1:3306/${{{unset_var}}}"),
                1,
            ),
            unset_var.clone(),
            false,
        ),
    ];

    for (file, text, named, names_file) in &cases {
        assert_ne!(
            text, &good,
            "{file}: the mistake was not written into the file"
        );
        let path = job.write_file(file, text);
        let path = path_str(&path);
        let runs: [(Bin, Vec<&str>); 4] = [
            (Bin::Producer, vec!["--job", path]),
            (Bin::Consumer, vec!["--job", path, "--exit-when-idle", "1"]),
            (
                Bin::Compensator,
                vec!["run", "--job", path, "--min-age", "0s"],
            ),
            (Bin::Compensator, vec!["report", "--job", path]),
        ];
        for (bin, args) in &runs {
            let done = job.run(*bin, args).await;
            done.expect_code(2);
            assert!(
                done.stderr.contains(named.as_str()),
                "{file}: stderr must name {named:?}\n{}",
                done.describe()
            );
            let file_name = Path::new(path).file_name().unwrap().to_str().unwrap();
            assert!(
                !names_file || done.stderr.contains(file_name),
                "{file}: stderr must name the job file\n{}",
                done.describe()
            );
        }

        let queued = job.message_count(&job.work_queue()).await;
        assert!(
            matches!(queued, None | Some(0)),
            "{file}: {queued:?} messages were published"
        );
        let keys = job.redis_keys().await;
        assert!(keys.is_empty(), "{file}: the ledger was written: {keys:?}");
    }
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, 0);
}
