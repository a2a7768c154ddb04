//! The PostgreSQL logical-replication reader (DESIGN.md §8, `from = "logical"`), pgoutput protocol 1.
//!
//! Contract:
//! - [`position_now`] refuses a server whose `wal_level` is not `logical`, and a table whose replica
//!   identity does not carry the key (then a delete's or a key change's old key would be missing), saying
//!   what to change; creates the publication (for the job's table only) and the slot when missing, and
//!   returns the slot's LSN: the consistent point of a new slot (so call it **before** the copy reads
//!   anything), the confirmed LSN of an existing one.
//! - [`LogicalReader::start`] reads the slot from a stored position; changes are handed out per committed
//!   transaction with the transaction's end LSN as position, so resuming from it repeats nothing.
//! - The slot's confirmed LSN advances only in [`ChangeReader::checkpoint`] (`pg_replication_slot_advance`):
//!   what is not checkpointed is decoded again after a restart, never lost.
//! - A `TRUNCATE` of the table, or a pgoutput message this reader does not know, stops it with
//!   [`FollowError::Undecodable`].
//!
//! Why SQL and not the streaming replication protocol: the reader uses the kept `tokio-postgres` driver the
//! project already has, through the logical decoding SQL functions (`pg_logical_slot_peek_binary_changes`
//! with the pgoutput plugin, `pg_replication_slot_advance`). tokio-postgres has no replication-mode
//! connections, and a peek never moves the slot, which is exactly the "advances only with the checkpoint"
//! contract. The cost: it polls (every [`POLL`] when idle), and each poll decodes again what was handed out
//! but not yet checkpointed, so the caller should checkpoint often (every second or so).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_postgres::{Client, NoTls};

use super::{key_as_id, Change, ChangeReader, FollowError};

/// How long an idle reader waits before asking the slot again.
pub const POLL: Duration = Duration::from_millis(100);
/// Decoded rows asked for per poll beyond those already handed out.
const ROWS_PER_POLL: i64 = 20_000;

/// What the reader follows.
#[derive(Debug, Clone)]
pub struct LogicalSource {
    /// `postgres://user@host:port/db` (credentials used only to connect).
    pub url: String,
    /// `None`: `public`.
    pub schema: Option<String>,
    pub table: String,
    pub key: String,
    pub slot: String,
    pub publication: String,
}

impl LogicalSource {
    fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }
}

/// `X/Y` (hex) → u64.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// u64 → `X/Y`, as PostgreSQL writes it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

async fn connect(url: &str) -> Result<Client, FollowError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to the PostgreSQL source")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "logical follower connection ended");
        }
    });
    Ok(client)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Refuses a server or table that cannot be followed.
async fn check(client: &Client, src: &LogicalSource) -> Result<(), FollowError> {
    let level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .context("SHOW wal_level")?
        .get(0);
    if level != "logical" {
        return Err(FollowError::refused(format!(
            "wal_level is {level} on the source; following needs logical: set `wal_level = logical` in \
             postgresql.conf (and max_replication_slots ≥ 1) and restart the server"
        )));
    }
    let row = client
        .query_opt(
            "SELECT c.relreplident::text, EXISTS (
                 SELECT 1 FROM pg_index i JOIN pg_attribute a
                   ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                  WHERE i.indrelid = c.oid AND a.attname = $3
                    AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&src.schema(), &src.table, &src.key],
        )
        .await
        .context("reading the table's replica identity")?
        .ok_or_else(|| {
            FollowError::refused(format!("the source has no table {}.{}", src.schema(), src.table))
        })?;
    let ident: String = row.get(0);
    let key_in_identity: bool = row.get(1);
    if ident != "f" && !key_in_identity {
        return Err(FollowError::refused(format!(
            "the replica identity of {}.{} does not hold the key {}: a delete's key would not be in the WAL; \
             make {} the primary key, or `ALTER TABLE {}.{} REPLICA IDENTITY FULL`",
            src.schema(),
            src.table,
            src.key,
            src.key,
            quote_ident(src.schema()),
            quote_ident(&src.table)
        )));
    }
    Ok(())
}

/// Checks the server, creates the publication and the slot when missing, and returns the position to
/// follow from (the new slot's consistent point, or an existing slot's confirmed LSN).
pub async fn position_now(src: &LogicalSource) -> Result<String, FollowError> {
    let client = connect(&src.url).await?;
    check(&client, src).await?;
    let has_pub = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&src.publication],
        )
        .await
        .context("reading pg_publication")?
        .is_some();
    if !has_pub {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}.{}",
                quote_ident(&src.publication),
                quote_ident(src.schema()),
                quote_ident(&src.table)
            ))
            .await
            .context("CREATE PUBLICATION")?;
    } else {
        let covers = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&src.publication, &src.schema(), &src.table],
            )
            .await
            .context("reading pg_publication_tables")?
            .is_some();
        if !covers {
            return Err(FollowError::refused(format!(
                "publication {} exists but does not publish {}.{}: drop it or name another in follow.publication",
                src.publication,
                src.schema(),
                src.table
            )));
        }
    }
    let existing = client
        .query_opt(
            "SELECT plugin, confirmed_flush_lsn::text, database = current_database()
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&src.slot],
        )
        .await
        .context("reading pg_replication_slots")?;
    if let Some(row) = existing {
        let plugin: Option<String> = row.get(0);
        let same_db: Option<bool> = row.get(2);
        if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
            return Err(FollowError::refused(format!(
                "replication slot {} exists but is not a pgoutput slot of this database: drop it or name another \
                 in follow.slot",
                src.slot
            )));
        }
        let lsn: Option<String> = row.get(1);
        return lsn.ok_or_else(|| {
            FollowError::Source(anyhow::anyhow!("slot {} has no confirmed LSN", src.slot))
        });
    }
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&src.slot],
        )
        .await
        .context("creating the replication slot")?;
    Ok(row.get(0))
}

/// Streams the job table's changes from a slot.
pub struct LogicalReader {
    src: LogicalSource,
    client: Client,
    /// Transactions ending at or before this LSN were handed out (or checkpointed): skipped.
    from: u64,
    checkpointed: u64,
    ready: VecDeque<Change>,
    /// Relation id → the key's column index (only the job's table is published).
    relations: HashMap<u32, Option<usize>>,
    /// Decoded rows seen by the last poll that were already handed out: asked for again next time.
    rows_behind: i64,
    /// pgoutput messages decoded, for throughput figures.
    pub events: u64,
}

struct Buf<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Buf<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("{} message cut short", self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().map_err(|_| "len")?,
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| "len")?,
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| "len")?,
        ))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| format!("{}: unterminated string", self.what))?;
        let s = String::from_utf8_lossy(&self.b[..end]).into_owned();
        self.b = &self.b[end + 1..];
        Ok(s)
    }
    /// TupleData: the text of column `col` (None for null / unchanged TOAST / absent).
    fn tuple(&mut self, col: Option<usize>) -> Result<Option<String>, String> {
        let n = self.u16()? as usize;
        let mut out = None;
        for i in 0..n {
            match self.u8()? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    let v = self.take(len)?;
                    if Some(i) == col {
                        out = Some(String::from_utf8_lossy(v).into_owned());
                    }
                }
                k => {
                    return Err(format!(
                        "{}: unknown tuple column kind {:?}",
                        self.what, k as char
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl LogicalReader {
    /// Starts reading the slot from `position` (an LSN from [`position_now`] or a [`Change`]).
    pub async fn start(src: LogicalSource, position: &str) -> Result<Self, FollowError> {
        let from = parse_lsn(position).ok_or_else(|| {
            FollowError::bad_position(
                position,
                format!("`{position}` is not an LSN like 0/16B3748"),
            )
        })?;
        let client = connect(&src.url).await?;
        check(&client, &src).await?;
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&src.slot],
            )
            .await
            .context("reading pg_replication_slots")?;
        let confirmed = match row {
            None => {
                return Err(FollowError::bad_position(
                    position,
                    format!(
                        "replication slot {} is gone: the changes since {position} cannot be read; start the job \
                         again from a new copy",
                        src.slot
                    ),
                ))
            }
            Some(r) => r.get::<_, Option<String>>(0).as_deref().and_then(parse_lsn).unwrap_or(0),
        };
        if confirmed > from {
            return Err(FollowError::bad_position(
                position,
                format!(
                    "slot {} is already confirmed up to {}, past {position}: the changes in between are lost",
                    src.slot,
                    format_lsn(confirmed)
                ),
            ));
        }
        Ok(Self {
            src,
            client,
            from,
            checkpointed: confirmed,
            ready: VecDeque::new(),
            relations: HashMap::new(),
            rows_behind: 0,
            events: 0,
        })
    }

    fn undecodable(&self, event: &str, lsn: &str, detail: impl Into<String>) -> FollowError {
        FollowError::Undecodable {
            event: event.to_owned(),
            position: lsn.to_owned(),
            detail: detail.into(),
        }
    }

    /// Decodes what the slot holds past `from`; true when something new came.
    async fn poll(&mut self) -> Result<bool, FollowError> {
        // The function takes an int4; what is asked for is bounded by it.
        let upto = i32::try_from(self.rows_behind + ROWS_PER_POLL).unwrap_or(i32::MAX);
        let rows = self
            .client
            .query(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2::int,
                     'proto_version', '1', 'publication_names', $3)",
                &[&self.src.slot, &upto, &self.src.publication],
            )
            .await
            .context("reading the replication slot")?;
        let mut keys: Vec<u64> = Vec::new();
        let mut behind = 0i64;
        let mut skipping = false;
        let mut new = false;
        for row in &rows {
            let lsn: String = row.get(0);
            let data: &[u8] = row.get(1);
            self.events += 1;
            let mut b = Buf {
                b: data,
                what: "pgoutput",
            };
            let tag = b.u8().map_err(|e| self.undecodable("pgoutput", &lsn, e))?;
            let res: Result<(), String> = (|| {
                match tag {
                    b'B' => {
                        b.what = "BEGIN";
                        let final_lsn = b.u64()?;
                        skipping = final_lsn <= self.from;
                        keys.clear();
                    }
                    b'C' => {
                        b.what = "COMMIT";
                        let _flags = b.u8()?;
                        let _commit_lsn = b.u64()?;
                        let end_lsn = b.u64()?;
                        let ts = b.u64()? as i64;
                        if skipping || end_lsn <= self.from {
                            behind += 1;
                        } else {
                            if !keys.is_empty() {
                                self.ready.push_back(Change {
                                    position: format_lsn(end_lsn),
                                    committed_at: DateTime::<Utc>::from_timestamp_micros(PG_EPOCH_US + ts)
                                        .unwrap_or_default(),
                                    keys: std::mem::take(&mut keys),
                                    no_key: None,
                                });
                            }
                            self.from = end_lsn;
                            new = true;
                        }
                    }
                    b'R' => {
                        b.what = "RELATION";
                        let id = b.u32()?;
                        let _ns = b.cstr()?;
                        let _name = b.cstr()?;
                        let _ident = b.u8()?;
                        let n = b.u16()?;
                        let mut idx = None;
                        for i in 0..n as usize {
                            let _flags = b.u8()?;
                            let name = b.cstr()?;
                            let _type = b.u32()?;
                            let _typmod = b.u32()?;
                            if name == self.src.key {
                                idx = Some(i);
                            }
                        }
                        self.relations.insert(id, idx);
                    }
                    b'Y' | b'O' | b'M' => {}
                    b'I' | b'U' | b'D' => {
                        b.what = match tag {
                            b'I' => "INSERT",
                            b'U' => "UPDATE",
                            _ => "DELETE",
                        };
                        let rel = b.u32()?;
                        let col = *self
                            .relations
                            .get(&rel)
                            .ok_or_else(|| format!("{}: no RELATION message for relation {rel}", b.what))?;
                        let col = col.ok_or_else(|| format!("{}: the table has no column {}", b.what, self.src.key))?;
                        let mut found = Vec::new();
                        loop {
                            if b.b.is_empty() {
                                break;
                            }
                            match b.u8()? {
                                b'K' | b'O' | b'N' => {
                                    if let Some(v) = b.tuple(Some(col))? {
                                        found.push(v);
                                    }
                                }
                                k => return Err(format!("{}: unknown tuple kind {:?}", b.what, k as char)),
                            }
                        }
                        // Update: [old] new → new key first, then the old one when it differs.
                        found.reverse();
                        found.dedup();
                        if found.is_empty() {
                            return Err(format!("{}: no key value in the row", b.what));
                        }
                        if !skipping {
                            for v in found {
                                let n: i128 = v.parse().map_err(|_| format!("{}: key {v:?} is not an integer", b.what))?;
                                keys.push(key_as_id(n, b.what).map_err(|e| e.to_string())?);
                            }
                        }
                    }
                    b'T' => {
                        return Err(
                            "TRUNCATE of the followed table: its keys are not in the WAL; re-run the copy".to_owned(),
                        )
                    }
                    other => return Err(format!("unknown pgoutput message {:?}", other as char)),
                }
                Ok(())
            })();
            if let Err(detail) = res {
                let event = match tag {
                    b'T' => "TRUNCATE".to_owned(),
                    t => format!("pgoutput '{}'", t as char),
                };
                return Err(self.undecodable(&event, &lsn, detail));
            }
        }
        self.rows_behind = behind;
        Ok(new)
    }
}

#[async_trait::async_trait]
impl ChangeReader for LogicalReader {
    async fn next(&mut self) -> Result<Change, FollowError> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Ok(c);
            }
            if !self.poll().await? && self.ready.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Advances the slot's confirmed LSN to `position`.
    async fn checkpoint(&mut self, position: &str) -> Result<(), FollowError> {
        let lsn = parse_lsn(position).ok_or_else(|| {
            FollowError::bad_position(position, format!("`{position}` is not an LSN"))
        })?;
        if lsn <= self.checkpointed {
            return Ok(());
        }
        if lsn > self.from {
            return Err(FollowError::bad_position(
                position,
                format!(
                    "{position} was never handed out (the last is {})",
                    format_lsn(self.from)
                ),
            ));
        }
        self.client
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&self.src.slot, &position],
            )
            .await
            .context("advancing the replication slot")?;
        self.checkpointed = lsn;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1A/0"), Some(0x1A << 32));
        assert_eq!(format_lsn(0x1A_0000_00FF), "1A/FF");
        assert_eq!(parse_lsn(&format_lsn(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_lsn("16B3748"), None);
        assert_eq!(parse_lsn("x/1"), None);
    }
}
