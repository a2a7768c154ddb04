//! Readers of the source's changes (DESIGN.md §8): one interface over the MySQL/MariaDB binlog
//! ([`binlog`]), PostgreSQL logical replication ([`logical`]) and change events in a RabbitMQ queue
//! ([`queue`]); [`run`] drives one of them beside the walk (`bitmig-producer --follow`).
//!
//! Contract, the same for the three:
//! 1. the position is taken **before** the walk reads anything (`position_now` on each reader type);
//! 2. [`ChangeReader::next`] waits for the next committed change of the job's table, from a given position,
//!    and returns its keys (INSERT: the after-image key; DELETE: the before-image key; UPDATE: the new key,
//!    and the old one too when the key changed), its commit time and the position to store once it is
//!    done with: resuming from that position yields only what comes after it;
//! 3. [`ChangeReader::checkpoint`] tells the reader that everything up to a position is safely published:
//!    logical advances the slot's confirmed LSN, queue acks the messages; binlog needs nothing.
//!
//! Positions are the strings `bitmig:{JOB}:follow` stores: binlog a MariaDB GTID state (`0-1-4711`) or
//! `file:pos` (e.g. `mysql-bin.000003:1234`),
//! PostgreSQL an LSN (`0/16B3748`), queue the reader's own ack counter (`queue:<n>`, meaningful only to the
//! reader that handed it out: unacked messages are redelivered after a restart).

pub mod binlog;
pub mod logical;
pub mod queue;
pub mod run;

use chrono::{DateTime, Utc};

/// One committed change (for binlog and logical, one transaction's changes to the job's table) and where
/// to resume after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The position after this change; store it, checkpoint it, resume from it.
    pub position: String,
    /// When the source committed it (second precision for binlog, microseconds for logical; for queue the
    /// event's own time when it carries one, else when it was received).
    pub committed_at: DateTime<Utc>,
    /// The changed keys, in the order the source wrote them; may repeat a key.
    pub keys: Vec<u64>,
    /// Set only by the queue reader: a message in which no key pointer matched; `keys` is empty and the
    /// caller dead-letters `body` with this reason, then checkpoints `position` as for any change.
    pub no_key: Option<NoKey>,
}

/// A change event that carried no key the job could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoKey {
    pub reason: String,
    pub body: Vec<u8>,
}

/// Why a reader stopped or refused to start.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The source is not set up for following (binlog off, not ROW, missing grant, `wal_level` not
    /// `logical`, …): the message says what to change. The binaries exit 2 (the source carries
    /// [`bitmig_shared::cli::BadInput`], which `exit_code_for` finds).
    #[error("the source cannot be followed")]
    Refused(#[source] bitmig_shared::cli::BadInput),
    /// An event the reader cannot decode (a compressed or encrypted binlog event, an unknown type, a
    /// pgoutput message it does not know): it stops rather than skip it. Exit 1.
    #[error("cannot decode {event} at {position}: {detail}")]
    Undecodable {
        event: String,
        position: String,
        detail: String,
    },
    /// A stored position this reader cannot use (malformed, or purged from the source). Exit 2.
    #[error("bad follow position `{position}`")]
    BadPosition {
        position: String,
        #[source]
        reason: bitmig_shared::cli::BadInput,
    },
    /// Anything else: connection lost, a query failed. Exit 1; the caller may retry from its checkpoint.
    #[error(transparent)]
    Source(#[from] anyhow::Error),
}

impl FollowError {
    pub(crate) fn refused(msg: impl Into<String>) -> Self {
        FollowError::Refused(bitmig_shared::cli::BadInput(msg.into()))
    }

    pub(crate) fn bad_position(position: &str, msg: impl Into<String>) -> Self {
        FollowError::BadPosition {
            position: position.to_owned(),
            reason: bitmig_shared::cli::BadInput(msg.into()),
        }
    }
}

/// A reader of the job table's changes from a position. `next` is cancel-safe (it keeps its state in
/// `self`), so the caller can `select!` it against shutdown.
#[async_trait::async_trait]
pub trait ChangeReader: Send {
    /// Waits for the next committed change of the job's table.
    async fn next(&mut self) -> Result<Change, FollowError>;
    /// Everything up to and including `position` (a [`Change::position`] this reader returned) is
    /// published and confirmed.
    async fn checkpoint(&mut self, position: &str) -> Result<(), FollowError>;
    /// Everything the source committed before this time has been read, when the reader can vouch for it
    /// (binlog: heartbeats and event times); `None` when it cannot. An idle window proves nothing by
    /// itself: a stalled stream is idle too, and must not read as caught up.
    fn read_up_to(&self) -> Option<DateTime<Utc>> {
        None
    }
}

/// A key value as an id: ids are unsigned 64-bit.
pub(crate) fn key_as_id(v: i128, ctx: &str) -> Result<u64, FollowError> {
    u64::try_from(v).map_err(|_| {
        FollowError::Source(anyhow::anyhow!(
            "{ctx}: key {v} is not a bitmig id (0 ..= 2^64-1)"
        ))
    })
}
