//! Re-publishing a group's ids as batches of one cause (`run`'s `redrive`, `verify --redrive`'s
//! `verify`, `purge`'s `redrive`), with publisher confirms, on a broker connection opened at first use:
//! a pass with nothing to re-publish never connects to RabbitMQ.

use anyhow::Context;
use bitmig_shared::ids::batches;
use bitmig_shared::job::JobSpec;
use bitmig_shared::queue::{self, Cause, Message, Publisher};

pub(crate) struct Republisher<'a> {
    amqp_url: &'a str,
    job: &'a JobSpec,
    open: Option<(lapin::Connection, Publisher)>,
}

impl<'a> Republisher<'a> {
    pub(crate) fn new(amqp_url: &'a str, job: &'a JobSpec) -> Self {
        Self {
            amqp_url,
            job,
            open: None,
        }
    }

    /// Publishes the `ids` (ascending, distinct) of the group starting at `first` as batches of
    /// `cause` and waits for the broker's confirms; the number of messages.
    pub(crate) async fn group(
        &mut self,
        first: u64,
        ids: &[u64],
        cause: Cause,
    ) -> anyhow::Result<u64> {
        let job = self.job;
        let publisher = match &mut self.open {
            Some((_, p)) => p,
            None => {
                let conn = queue::connect(self.amqp_url, "bitmig-compensator")
                    .await
                    .context("connecting to RabbitMQ")?;
                let p = Publisher::new(&conn).await?;
                queue::declare_topology(p.channel(), &job.name).await?;
                &mut self.open.insert((conn, p)).1
            }
        };
        let mut messages = 0;
        for ranges in batches(ids, job.batch_size as usize) {
            let m = Message {
                job: job.name.clone(),
                group: first,
                ids: ranges,
                cause,
                attempt: 0,
            };
            publisher.publish_message(&job.name, &m).await?;
            messages += 1;
        }
        publisher
            .wait()
            .await
            .with_context(|| format!("re-publishing group {first}"))?;
        Ok(messages)
    }

    /// Closes the connection, if one was opened.
    pub(crate) async fn close(self) {
        if let Some((conn, _)) = self.open {
            let _ = conn.close(200, "done".into()).await;
        }
    }
}
