//! The RabbitMQ side of DESIGN.md §5: queue names, counts, purge, publishing raw bodies, fetching messages.

use std::time::Duration;

use lapin::{
    message::Delivery,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
        QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Confirmation, ErrorKind,
};
use serde::Deserialize;

use crate::{wait_for, TestJob};

pub const EXCHANGE: &str = "bitmig";
/// The header a dead message carries its reason in.
pub const ERROR_HEADER: &str = "x-bitmig-error";

/// A work message's body (DESIGN.md §5).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub job: String,
    pub group: u64,
    /// Inclusive ranges.
    pub ids: Vec<[u64; 2]>,
    pub cause: String,
    pub attempt: u64,
}

impl Message {
    pub fn parse(delivery: &Delivery) -> Self {
        serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
            panic!(
                "message body is not a work message ({e}): {}",
                String::from_utf8_lossy(&delivery.data)
            )
        })
    }

    /// Every id of every range, in order.
    pub fn id_list(&self) -> Vec<u64> {
        self.ids.iter().flat_map(|&[lo, hi]| lo..=hi).collect()
    }
}

/// A header's value as text, if the delivery has it.
pub fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    let value = headers.inner().get(name)?;
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    })
}

impl TestJob {
    /// `bitmig.JOB.work`.
    pub fn work_queue(&self) -> String {
        format!("bitmig.{}.work", self.name)
    }

    /// `bitmig.JOB.dead`.
    pub fn dead_queue(&self) -> String {
        format!("bitmig.{}.dead", self.name)
    }

    /// A fresh channel (a failed passive declare closes the channel it ran on).
    pub async fn channel(&self) -> Channel {
        self.amqp
            .create_channel()
            .await
            .expect("open an AMQP channel")
    }

    /// `(ready messages, consumers)` of `queue`, or `None` when the queue does not exist. Found with a
    /// passive declare, which creates nothing.
    pub async fn queue_state(&self, queue: &str) -> Option<(u32, u32)> {
        let channel = self.channel().await;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
        {
            Ok(q) => {
                channel.close(200, "done".into()).await.ok();
                Some((q.message_count(), q.consumer_count()))
            }
            Err(e) => match e.kind() {
                ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => None,
                _ => panic!("passive declare of {queue}: {e}"),
            },
        }
    }

    /// Ready messages in `queue`, `None` when it does not exist.
    pub async fn message_count(&self, queue: &str) -> Option<u32> {
        self.queue_state(queue).await.map(|(messages, _)| messages)
    }

    /// Ready messages in `queue`, which must exist.
    pub async fn existing_message_count(&self, queue: &str) -> u32 {
        self.message_count(queue)
            .await
            .unwrap_or_else(|| panic!("queue {queue} does not exist"))
    }

    /// Waits until `queue` exists and has at least one consumer (a consumer has set up its topology).
    pub async fn wait_for_consumer_on(&self, queue: &str, timeout: Duration) {
        wait_for(
            &format!("a consumer on {queue}"),
            timeout,
            Duration::from_millis(100),
            || async {
                match self.queue_state(queue).await {
                    Some((_, consumers)) if consumers > 0 => Ok(()),
                    Some((messages, _)) => {
                        Err(format!("queue exists, {messages} messages, no consumer"))
                    }
                    None => Err("queue does not exist".to_owned()),
                }
            },
        )
        .await
    }

    /// Purges `queue` and returns how many messages it dropped.
    pub async fn purge(&self, queue: &str) -> u32 {
        let channel = self.channel().await;
        let purged = channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .unwrap_or_else(|e| panic!("purge {queue}: {e}"));
        channel.close(200, "done".into()).await.ok();
        purged
    }

    /// Publishes `body` to the `bitmig` exchange with the job's routing key, persistent, as JSON, with
    /// publisher confirms and `mandatory`: the broker must route it to a queue.
    pub async fn publish_raw(&self, body: &[u8]) {
        let channel = self.channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirmation = channel
            .basic_publish(
                EXCHANGE.into(),
                self.name.as_str().into(),
                options,
                body,
                properties,
            )
            .await
            .expect("basic.publish")
            .await
            .expect("publisher confirm");
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "the broker did not route the message to a queue: {confirmation:?}"
        );
        channel.close(200, "done".into()).await.ok();
    }

    /// Every ready message of `queue`, left in the queue: fetched without ack, then returned by closing the
    /// channel; waits until the queue holds them again.
    pub async fn peek_all(&self, queue: &str) -> Vec<Delivery> {
        let before = self.existing_message_count(queue).await;
        let channel = self.channel().await;
        let messages = get_all(&channel, queue, false).await;
        channel
            .close(200, "requeue".into())
            .await
            .expect("close channel");
        assert_eq!(
            messages.len(),
            before as usize,
            "fetched a different number of messages from {queue} than it reported"
        );
        wait_for(
            &format!("the {before} peeked messages to be back in {queue}"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                match self.existing_message_count(queue).await {
                    n if n == before => Ok(()),
                    n => Err(format!("{n} ready")),
                }
            },
        )
        .await;
        messages
    }

    /// Every ready message of `queue`, removed from it.
    pub async fn take_all(&self, queue: &str) -> Vec<Delivery> {
        let channel = self.channel().await;
        let messages = get_all(&channel, queue, true).await;
        channel.close(200, "done".into()).await.ok();
        messages
    }
}

async fn get_all(channel: &Channel, queue: &str, no_ack: bool) -> Vec<Delivery> {
    let mut messages = Vec::new();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack })
        .await
        .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
    {
        messages.push(got.delivery);
    }
    messages
}

/// Cleanup: deletes the job's work, dead and retry queues, ignoring errors (most retry queues never exist).
pub(super) async fn delete_job_queues(amqp_url: &str, job: &str) {
    let connection = match lapin::Connection::connect(amqp_url, Default::default()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cleanup: queues of {job}: {e}");
            return;
        }
    };
    let mut queues = vec![format!("bitmig.{job}.work"), format!("bitmig.{job}.dead")];
    queues.extend((1..=8).map(|n| format!("bitmig.{job}.retry.{n}")));
    for queue in queues {
        // A failed operation closes its channel: one channel per queue.
        if let Ok(channel) = connection.create_channel().await {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .ok();
            channel.close(200, "done".into()).await.ok();
        }
    }
    connection.close(200, "done".into()).await.ok();
}

/// Asserts that `messages` are produce messages of `job` that carry every id of `expected` (ascending)
/// exactly once, each in a message of its own group, at most `batch_size` ids a message, ranges not reversed.
pub fn assert_messages_cover(job: &TestJob, messages: &[Message], cause: &str, expected: &[u64]) {
    let mut ids = Vec::with_capacity(expected.len());
    for m in messages {
        let bad_range = m
            .ids
            .iter()
            .any(|&[lo, hi]| lo > hi || job.group_of(lo) != m.group || job.group_of(hi) != m.group);
        assert!(
            m.job == job.name && m.cause == cause && !bad_range && !m.ids.is_empty(),
            "not a {cause} message of {} with ranges inside its group: {m:?}",
            job.name
        );
        let list = m.id_list();
        assert!(
            list.len() as u64 <= job.batch_size,
            "a message carries {} ids, more than batch_size {}: {m:?}",
            list.len(),
            job.batch_size
        );
        ids.extend(list);
    }
    let published = ids.len();
    ids.sort_unstable();
    ids.dedup();
    let duplicates = published - ids.len();
    let missing: Vec<u64> = expected
        .iter()
        .filter(|id| ids.binary_search(id).is_err())
        .copied()
        .collect();
    let unexpected: Vec<u64> = ids
        .iter()
        .filter(|id| expected.binary_search(id).is_err())
        .copied()
        .collect();
    assert!(
        duplicates == 0 && missing.is_empty() && unexpected.is_empty(),
        "{} messages carry {published} ids: {duplicates} duplicates, {} of the {} expected ids missing \
         (first: {:?}), {} unexpected (first: {:?})",
        messages.len(),
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(10)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)],
    );
}
