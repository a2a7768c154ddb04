//! `BITMIG_AMQP_URL` listing the nodes of a RabbitMQ cluster (DESIGN.md §11): the programs connect to the
//! first node that answers, so a list whose first node is down still moves the whole job.

use crate::helpers::TestJob;

#[tokio::test(flavor = "multi_thread")]
async fn a_node_list_whose_first_node_is_down_still_works() {
    let mut job = TestJob::new(1_000, 100).await;
    let rows = job.create_source(3_000).await;
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let real = job.services.amqp_url.clone();
    job.services.amqp_url = format!("amqp://guest:guest@127.0.0.1:1/%2f,{real}");

    job.produce(&[]).await;
    job.consume_until_idle(1, &[]).await;
    job.assert_target_equals_source().await;
    job.assert_job_complete(rows, 0).await;
}
