//! The change-event queue reader (DESIGN.md §8, `from = "queue"`): change events someone else publishes to
//! a RabbitMQ queue (Debezium Server, Canal, …), keys read with JSON pointers.
//!
//! Contract:
//! - The queue is not ours: it must exist (checked with a passive declare; a missing queue is
//!   [`FollowError::Refused`]) and is never declared, purged or deleted here.
//! - Each message is one [`Change`] whose keys are the integers (or integer strings, as Canal writes them)
//!   the pointers find, in pointer order, each key once per message. A pointer segment `*` walks every
//!   element of an array (`/data/*/id` for Canal's `data[*].id`). A pointer that finds nothing or `null`
//!   (Debezium's `before` of an insert, `after` of a delete) contributes nothing.
//! - A message from which no pointer yields a key (an empty tombstone, a non-JSON body, a key that is not an
//!   id) comes out with empty `keys` and [`Change::no_key`] set: the caller dead-letters its body with the
//!   reason, then checkpoints it like any other change.
//! - Positions are `queue:<delivery tag>`; [`ChangeReader::checkpoint`] acks every message up to that tag
//!   (`multiple`), so the caller checkpoints only after its catch-up publish is confirmed. Messages not
//!   acked when the reader goes away are redelivered by the broker: after a restart the reader starts from
//!   whatever the queue holds, and [`position_now`] is only `queue:0`. Redelivered duplicates are harmless
//!   (a catch-up of an id is idempotent).
//! - `committed_at` is the event's own time when it has one (`/payload/source/ts_ms`, `/payload/ts_ms`,
//!   `/source/ts_ms`, `/ts_ms`, Canal's `/es`, in milliseconds), else the time it was received.

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use serde_json::Value;

use super::{Change, ChangeReader, FollowError, NoKey};

/// What the reader consumes.
#[derive(Debug, Clone)]
pub struct QueueSource {
    pub amqp_url: String,
    pub queue: String,
    /// JSON pointers to the changed key (validated by `follow_spec`).
    pub keys: Vec<String>,
    /// Messages in flight before a checkpoint acks them (the broker stops delivering past it).
    pub prefetch: u16,
}

/// The position a fresh queue reader starts from: the queue itself keeps what is not acked.
pub fn position_now() -> String {
    "queue:0".to_owned()
}

/// Consumes the change events of one queue.
pub struct QueueReader {
    _conn: Connection,
    channel: Channel,
    consumer: Consumer,
    pointers: Vec<Vec<String>>,
    /// The highest delivery tag handed out, and the highest acked.
    delivered: u64,
    acked: u64,
}

/// A JSON pointer's reference tokens, unescaped (`~1` → `/`, `~0` → `~`).
fn split_pointer(p: &str) -> Vec<String> {
    p.split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Every value `tokens` reaches from `v` (`*` fans out over an array's elements).
fn resolve<'a>(v: &'a Value, tokens: &[String], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = tokens.split_first() else {
        out.push(v);
        return;
    };
    match v {
        Value::Array(items) if first == "*" => {
            for item in items {
                resolve(item, rest, out);
            }
        }
        Value::Array(items) => {
            if let Some(item) = first.parse::<usize>().ok().and_then(|i| items.get(i)) {
                resolve(item, rest, out);
            }
        }
        Value::Object(map) => {
            if let Some(next) = map.get(first) {
                resolve(next, rest, out);
            }
        }
        _ => {}
    }
}

/// The keys of one message body, or why it has none.
pub fn keys_of(
    body: &[u8],
    pointers: &[Vec<String>],
    names: &[String],
) -> Result<Vec<u64>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty message (a tombstone?): no key".to_owned());
    }
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the message is not JSON: {e}"))?;
    let mut keys: Vec<u64> = Vec::new();
    for (tokens, name) in pointers.iter().zip(names) {
        let mut found = Vec::new();
        resolve(&doc, tokens, &mut found);
        for v in found {
            let id = match v {
                Value::Null => continue,
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            let id = id.ok_or_else(|| format!("{name} is {v}, not an id (an integer ≥ 0)"))?;
            if !keys.contains(&id) {
                keys.push(id);
            }
        }
    }
    if keys.is_empty() {
        return Err(format!("no key at {}", names.join(", ")));
    }
    Ok(keys)
}

fn event_time(body: &[u8]) -> Option<DateTime<Utc>> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    [
        "/payload/source/ts_ms",
        "/payload/ts_ms",
        "/source/ts_ms",
        "/ts_ms",
        "/es",
    ]
    .iter()
    .find_map(|p| doc.pointer(p).and_then(Value::as_i64))
    .and_then(DateTime::<Utc>::from_timestamp_millis)
}

/// The delivery tag in a `queue:<tag>` position.
pub fn parse_position(position: &str) -> Result<u64, FollowError> {
    position
        .strip_prefix("queue:")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            FollowError::bad_position(
                position,
                format!("`{position}` is not a queue position `queue:<n>`"),
            )
        })
}

impl QueueReader {
    /// Connects and starts consuming `src.queue`, which must exist.
    pub async fn start(src: &QueueSource) -> Result<Self, FollowError> {
        let conn = Connection::connect(
            &src.amqp_url,
            ConnectionProperties::default().with_connection_name("bitmig-follow-queue".into()),
        )
        .await
        .context("connecting to RabbitMQ for the change-event queue")?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Err(e) = channel
            .queue_declare(src.queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            return Err(FollowError::refused(format!(
                "the change-event queue `{}` does not exist or cannot be read ({e}): point follow.queue at the \
                 queue your change-data-capture tool publishes to",
                src.queue
            )));
        }
        channel
            .basic_qos(src.prefetch.max(1), BasicQosOptions::default())
            .await
            .context("basic.qos")?;
        let consumer = channel
            .basic_consume(
                src.queue.as_str().into(),
                format!("bitmig-follow-{}", std::process::id())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("basic.consume on the change-event queue")?;
        Ok(Self {
            _conn: conn,
            channel,
            consumer,
            pointers: src.keys.iter().map(|p| split_pointer(p)).collect(),
            delivered: 0,
            acked: 0,
        })
    }

    fn names(&self) -> Vec<String> {
        self.pointers
            .iter()
            .map(|t| {
                t.iter()
                    .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                    .collect::<String>()
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl ChangeReader for QueueReader {
    async fn next(&mut self) -> Result<Change, FollowError> {
        let d = match self.consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                return Err(anyhow::Error::from(e)
                    .context("consuming the change-event queue")
                    .into())
            }
            None => {
                return Err(FollowError::Source(anyhow::anyhow!(
                    "the change-event queue's consumer was cancelled"
                )))
            }
        };
        let tag = d.delivery_tag;
        self.delivered = self.delivered.max(tag);
        let position = format!("queue:{tag}");
        let names = self.names();
        let committed_at = event_time(&d.data).unwrap_or_else(Utc::now);
        Ok(match keys_of(&d.data, &self.pointers, &names) {
            Ok(keys) => Change {
                position,
                committed_at,
                keys,
                no_key: None,
            },
            Err(reason) => Change {
                position,
                committed_at,
                keys: Vec::new(),
                no_key: Some(NoKey {
                    reason,
                    body: d.data,
                }),
            },
        })
    }

    /// Acks every message up to the position's delivery tag.
    async fn checkpoint(&mut self, position: &str) -> Result<(), FollowError> {
        let tag = parse_position(position)?;
        if tag > self.delivered {
            return Err(FollowError::bad_position(
                position,
                format!(
                    "delivery {tag} was never handed out (the last is {})",
                    self.delivered
                ),
            ));
        }
        if tag <= self.acked {
            return Ok(());
        }
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .context("acking the change events")?;
        self.acked = tag;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str, ptrs: &[&str]) -> Result<Vec<u64>, String> {
        let names: Vec<String> = ptrs.iter().map(|s| s.to_string()).collect();
        let p: Vec<Vec<String>> = ptrs.iter().map(|s| split_pointer(s)).collect();
        keys_of(body.as_bytes(), &p, &names)
    }

    #[test]
    fn debezium_and_canal_shapes() {
        let dbz = ["/payload/after/id", "/payload/before/id"];
        assert_eq!(
            keys(r#"{"payload":{"before":null,"after":{"id":5}}}"#, &dbz),
            Ok(vec![5])
        );
        assert_eq!(
            keys(r#"{"payload":{"before":{"id":5},"after":{"id":6}}}"#, &dbz),
            Ok(vec![6, 5])
        );
        assert_eq!(
            keys(r#"{"payload":{"before":{"id":5},"after":{"id":5}}}"#, &dbz),
            Ok(vec![5])
        );
        assert_eq!(
            keys(r#"{"payload":{"before":{"id":7},"after":null}}"#, &dbz),
            Ok(vec![7])
        );
        let canal = ["/data/*/id", "/old/*/id"];
        assert_eq!(
            keys(
                r#"{"data":[{"id":"1"},{"id":"2"}],"old":[{"id":"9"},{"v":"x"}],"type":"UPDATE"}"#,
                &canal
            ),
            Ok(vec![1, 2, 9])
        );
        assert!(keys("", &dbz).unwrap_err().contains("empty"));
        assert!(keys("{", &dbz).unwrap_err().contains("not JSON"));
        assert!(keys(r#"{"payload":{}}"#, &dbz)
            .unwrap_err()
            .contains("no key at /payload/after/id"));
        assert!(keys(r#"{"payload":{"after":{"id":-1}}}"#, &dbz)
            .unwrap_err()
            .contains("not an id"));
        assert_eq!(keys(r#"{"a/b":{"~":3}}"#, &["/a~1b/~0"]), Ok(vec![3]));
    }
}
