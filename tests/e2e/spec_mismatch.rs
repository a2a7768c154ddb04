//! A program started with a job file that differs from the job recorded in Redis refuses to run, naming the
//! fields that differ: batches cut or written under different settings would make the ledger lie.

use crate::helpers::{gappy_ids, path_str, Bin, TestJob};

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_with_a_job_file_that_differs_from_the_recorded_one_exits_2_naming_the_fields() {
    let job = TestJob::new(1_000, 100).await;
    job.create_tables().await;
    let rows = job.insert_rows(&gappy_ids(2_000, job.group_size)).await;
    job.produce(&[]).await;
    let work = job.work_queue();
    let queued = job.existing_message_count(&work).await;
    let spec_before = job.recorded_spec().await;

    // batch_size changed after the producer ran, and the write mode too.
    let changed = job
        .job_toml()
        .replacen("batch_size = 100", "batch_size = 50", 1);
    let changed = changed.replacen(
        "kind = \"sql\"",
        "kind = \"sql\"\nwrite = \"insert_ignore\"",
        1,
    );
    assert_ne!(changed, job.job_toml());
    let changed = job.write_file("changed.toml", &changed);
    let changed = path_str(&changed);

    let runs: [(Bin, Vec<&str>); 4] = [
        (
            Bin::Consumer,
            vec!["--job", changed, "--exit-when-idle", "1"],
        ),
        (Bin::Producer, vec!["--job", changed]),
        (
            Bin::Compensator,
            vec!["run", "--job", changed, "--min-age", "0s"],
        ),
        (Bin::Compensator, vec!["report", "--job", changed]),
    ];
    for (bin, args) in &runs {
        let done = job.run(*bin, args).await;
        done.expect_code(2);
        for field in ["batch_size", "target.write"] {
            assert!(
                done.stderr.contains(field),
                "{} must name the differing field {field}\n{}",
                bin.file_name(),
                done.describe()
            );
        }
    }

    assert_eq!(
        job.existing_message_count(&work).await,
        queued,
        "a refused program took or added messages"
    );
    assert_eq!(job.sql_u64("SELECT COUNT(*) FROM dst").await, 0);
    assert_eq!(
        job.recorded_spec().await,
        spec_before,
        "a refused program changed the recorded spec"
    );

    // The job file the producer used still works.
    job.consume_until_idle(1, &[]).await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}
