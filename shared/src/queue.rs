//! AMQP topology and messages (DESIGN.md §5).
//!
//! Exchange `bitmig` (direct, durable). Work queue `bitmig.JOB.work`: a durable quorum queue bound with
//! routing key `JOB`. Retry queues `bitmig.JOB.retry.N` hold a message for their TTL and dead-letter it
//! back to the exchange with key `JOB`; the dead queue `bitmig.JOB.dead` keeps what cannot be processed,
//! the reason in header `x-bitmig-error`. Retry and dead queues are bound under their own names.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use serde::{Deserialize, Serialize};

use crate::ids::IdRange;

pub const EXCHANGE: &str = "bitmig";
pub const ERROR_HEADER: &str = "x-bitmig-error";
pub const CONTENT_TYPE: &str = "application/json";
/// Delays of the retry queues, in order; attempt `n` waits in queue `min(n, len)`.
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// After this many attempts a batch goes to the dead queue.
pub const MAX_ATTEMPTS: u32 = 12;

pub fn work_queue(job: &str) -> String {
    format!("bitmig.{job}.work")
}

pub fn dead_queue(job: &str) -> String {
    format!("bitmig.{job}.dead")
}

/// Retry queue number `n` (1-based).
pub fn retry_queue(job: &str, n: usize) -> String {
    format!("bitmig.{job}.retry.{n}")
}

/// The retry queue for a message's next attempt (`attempt` already incremented, so ≥ 1).
pub fn retry_queue_for(job: &str, attempt: u32) -> String {
    let n = (attempt as usize).clamp(1, RETRY_DELAYS.len());
    retry_queue(job, n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The producer's first publication of a group's ids (DESIGN.md §6).
    Produce,
    /// The compensator re-publishing missing ids (§6 step 4).
    Redrive,
    /// A change seen by the follower (§8).
    Catchup,
    /// An id verification found different in the target (§9).
    Verify,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Produce => "produce",
            Cause::Redrive => "redrive",
            Cause::Catchup => "catchup",
            Cause::Verify => "verify",
        }
    }
}

/// The message body: one batch of ids of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub job: String,
    pub group: u64,
    pub ids: Vec<IdRange>,
    pub cause: Cause,
    pub attempt: u32,
}

impl Message {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain integers and strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and check a body against the consumer's job. `Err` is the reason for the dead queue.
    pub fn parse(body: &[u8], job: &str, group_size: u64) -> Result<Self, String> {
        let m: Message = serde_json::from_slice(body).map_err(|e| {
            let shown: String = String::from_utf8_lossy(&body[..body.len().min(120)]).into();
            format!(
                "body is not a bitmig message (invalid JSON or wrong field types: {e}): {shown:?}"
            )
        })?;
        if m.job != job {
            return Err(format!(
                "message for job `{}` arrived at job `{job}`'s queue",
                m.job
            ));
        }
        if m.group % group_size != 0 {
            return Err(format!(
                "group {} is not a multiple of group_size {group_size}",
                m.group
            ));
        }
        if m.ids.is_empty() {
            return Err("ids: no id range".into());
        }
        let last = m.group.saturating_add(group_size - 1);
        let mut prev: Option<u64> = None;
        for r in &m.ids {
            if r[0] > r[1] {
                return Err(format!("ids: range [{}, {}] is reversed", r[0], r[1]));
            }
            if r[0] < m.group || r[1] > last {
                return Err(format!(
                    "ids: range [{}, {}] lies outside group {}..={last}",
                    r[0], r[1], m.group
                ));
            }
            if prev.is_some_and(|p| r[0] <= p) {
                return Err(format!(
                    "ids: range [{}, {}] overlaps or is out of order",
                    r[0], r[1]
                ));
            }
            prev = Some(r[1]);
        }
        if m.attempt > MAX_ATTEMPTS {
            return Err(format!("attempt {} exceeds {MAX_ATTEMPTS}", m.attempt));
        }
        Ok(m)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused message for {routing_key}: {why}")]
    NotConfirmed { routing_key: String, why: String },
}

/// Open an AMQP connection. The URL is never logged; errors are about the connection, not the URL.
///
/// `url` may list the nodes of a cluster, comma-separated ([`split_urls`]): the first that answers is used.
/// The next call (a reconnection after a lost connection) starts with the node after the one that answered
/// last, so a node that went away is tried last, not first.
pub async fn connect(url: &str, name: &str) -> Result<Connection, QueueError> {
    let urls = split_urls(url);
    let start = NEXT_NODE.load(std::sync::atomic::Ordering::Relaxed);
    let mut last_err = None;
    for i in (0..urls.len()).map(|k| (start + k) % urls.len()) {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(urls[i], props).await {
            Ok(conn) => {
                NEXT_NODE.store((i + 1) % urls.len(), std::sync::atomic::Ordering::Relaxed);
                return Ok(conn);
            }
            Err(e) => {
                if urls.len() > 1 {
                    tracing::warn!(
                        node = %crate::job::redact_url(urls[i]),
                        error = %e,
                        "RabbitMQ node does not answer; trying the next"
                    );
                }
                last_err = Some(e);
            }
        }
    }
    // Invariant: `split_urls` never returns an empty list, so the loop ran and failed at least once.
    Err(QueueError::Amqp(
        last_err.expect("split_urls returns at least one URL"),
    ))
}

/// Where the next [`connect`] starts in the URL list (one list per process: its `--amqp-url`).
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The node URLs of `BITMIG_AMQP_URL`: split at commas, blanks trimmed, empty items dropped; never empty
/// (an empty setting yields one empty URL, which fails to connect with the driver's own error).
pub fn split_urls(urls: &str) -> Vec<&str> {
    let v: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if v.is_empty() {
        vec![urls.trim()]
    } else {
        v
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Declare the exchange and every queue of `job` (idempotent; every program does it at start).
pub async fn declare_topology(ch: &Channel, job: &str) -> Result<(), QueueError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let work = work_queue(job);
    ch.queue_declare(work.as_str().into(), durable, quorum_args())
        .await?;
    ch.queue_bind(
        work.as_str().into(),
        EXCHANGE.into(),
        job.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for (i, delay) in RETRY_DELAYS.iter().enumerate() {
        let q = retry_queue(job, i + 1);
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(EXCHANGE.into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(job.into()),
        );
        ch.queue_declare(q.as_str().into(), durable, args).await?;
        ch.queue_bind(
            q.as_str().into(),
            EXCHANGE.into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let dead = dead_queue(job);
    ch.queue_declare(dead.as_str().into(), durable, quorum_args())
        .await?;
    ch.queue_bind(
        dead.as_str().into(),
        EXCHANGE.into(),
        dead.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// A channel in confirm mode. Every publish is `mandatory` and persistent; [`Publisher::wait`] turns
/// nacks and returned (unroutable) messages into errors.
pub struct Publisher {
    ch: Channel,
    pending: Vec<(String, PublisherConfirm)>,
}

impl Publisher {
    pub async fn new(conn: &Connection) -> Result<Self, QueueError> {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            ch,
            pending: Vec::new(),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.ch
    }

    /// Publish without waiting for the confirm; call [`Publisher::wait`] before relying on it.
    pub async fn publish(
        &mut self,
        routing_key: &str,
        body: &[u8],
        error: Option<&str>,
    ) -> Result<(), QueueError> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into());
        if let Some(reason) = error {
            let mut headers = FieldTable::default();
            headers.insert(
                ERROR_HEADER.into(),
                AMQPValue::LongString(LongString::from(reason)),
            );
            props = props.with_headers(headers);
        }
        let confirm = self
            .ch
            .basic_publish(
                ShortString::from(EXCHANGE),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?;
        self.pending.push((routing_key.to_owned(), confirm));
        Ok(())
    }

    pub async fn publish_message(
        &mut self,
        routing_key: &str,
        m: &Message,
    ) -> Result<(), QueueError> {
        self.publish(routing_key, &m.to_json(), None).await
    }

    /// Wait for every outstanding confirm. `Ok` means the broker took responsibility for each message.
    pub async fn wait(&mut self) -> Result<(), QueueError> {
        let mut first_err = None;
        for (routing_key, confirm) in self.pending.drain(..) {
            let why = match confirm.await {
                Ok(Confirmation::Ack(None)) => continue,
                Ok(Confirmation::Ack(Some(ret))) => format!(
                    "returned as unroutable ({} {})",
                    ret.reply_code, ret.reply_text
                ),
                Ok(Confirmation::Nack(_)) => "nacked by the broker".to_owned(),
                Ok(Confirmation::NotRequested) => "confirms were not enabled".to_owned(),
                Err(e) => format!("confirm lost: {e}"),
            };
            first_err.get_or_insert(QueueError::NotConfirmed { routing_key, why });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Publish and wait.
    pub async fn publish_confirmed(
        &mut self,
        routing_key: &str,
        body: &[u8],
        error: Option<&str>,
    ) -> Result<(), QueueError> {
        self.publish(routing_key, body, error).await?;
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_lists() {
        assert_eq!(split_urls("amqp://a/%2f"), vec!["amqp://a/%2f"]);
        assert_eq!(
            split_urls("amqp://a:5672/%2f, amqp://b:5672/%2f,,amqp://c/%2f "),
            vec!["amqp://a:5672/%2f", "amqp://b:5672/%2f", "amqp://c/%2f"]
        );
        assert_eq!(split_urls(" "), vec![""]);
    }

    fn parse(body: &str) -> Result<Message, String> {
        Message::parse(body.as_bytes(), "orders", 10_000)
    }

    #[test]
    fn a_valid_message_parses() {
        let m = parse(r#"{"job":"orders","group":20000,"ids":[[20000,20499],[20501,29999]],"cause":"produce","attempt":0}"#).unwrap();
        assert_eq!(m.ids.len(), 2);
        assert_eq!(m.cause, Cause::Produce);
        for (text, cause) in [
            ("produce", Cause::Produce),
            ("redrive", Cause::Redrive),
            ("catchup", Cause::Catchup),
            ("verify", Cause::Verify),
        ] {
            let body = format!(
                r#"{{"job":"orders","group":0,"ids":[[0,1]],"cause":"{text}","attempt":0}}"#
            );
            let m = parse(&body).unwrap();
            assert_eq!(m.cause, cause);
            assert_eq!(m.cause.as_str(), text);
        }
        assert_eq!(Message::parse(&m.to_json(), "orders", 10_000).unwrap(), m);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let cases = [
            ("not json", "invalid JSON"),
            (
                r#"{"job":"orders","group":0,"ids":[[0,1]],"cause":"produce","attempt":"x"}"#,
                "invalid JSON",
            ),
            (
                r#"{"job":"other","group":0,"ids":[[0,1]],"cause":"produce","attempt":0}"#,
                "job `other`",
            ),
            (
                r#"{"job":"orders","group":5,"ids":[[5,6]],"cause":"produce","attempt":0}"#,
                "not a multiple",
            ),
            (
                r#"{"job":"orders","group":0,"ids":[[50000,50010]],"cause":"produce","attempt":0}"#,
                "outside group",
            ),
            (
                r#"{"job":"orders","group":0,"ids":[[9,3]],"cause":"produce","attempt":0}"#,
                "reversed",
            ),
            (
                r#"{"job":"orders","group":0,"ids":[[0,5],[3,8]],"cause":"produce","attempt":0}"#,
                "overlaps",
            ),
            (
                r#"{"job":"orders","group":0,"ids":[],"cause":"produce","attempt":0}"#,
                "no id range",
            ),
            (
                r#"{"job":"orders","group":0,"ids":[[0,18446744073709551615]],"cause":"produce","attempt":0}"#,
                "outside group",
            ),
            (
                r#"{"job":"orders","group":0,"ids":[[0,1]],"cause":"nope","attempt":0}"#,
                "invalid JSON",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn retries_use_growing_delays_then_stay_at_the_longest() {
        assert_eq!(retry_queue_for("j", 1), "bitmig.j.retry.1");
        assert_eq!(retry_queue_for("j", 2), "bitmig.j.retry.2");
        assert_eq!(retry_queue_for("j", 40), "bitmig.j.retry.5");
        assert!(RETRY_DELAYS.windows(2).all(|w| w[0] < w[1]));
    }
}
