//! The MySQL/MariaDB binlog reader (DESIGN.md §8, `from = "binlog"`).
//!
//! Contract:
//! - [`position_now`] first checks the server can be followed — the binlog on (`log_bin`), `binlog_format`
//!   ROW, the user holding REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: BINLOG MONITOR) — and
//!   refuses with [`FollowError::Refused`] saying what to change; then returns the position now: the
//!   server's GTID state (`@@gtid_binlog_pos`, MariaDB's `domain-server-seq[,…]`) when it has one, else
//!   `SHOW MASTER STATUS`'s `file:pos` ([`file_position_now`]).
//! - [`BinlogReader::start`] registers as a replica with `server_id` and streams from either kind of
//!   position (mysql_async's `binlog` feature; events decoded by `mysql_common::binlog`); from a GTID
//!   state through `@slave_connect_state`, as a MariaDB replica does, so a position survives binlog
//!   rotation, `RESET`-free failover to a replica with the same GTIDs, and renamed files. Changes are
//!   handed out per committed transaction (at its XID or `COMMIT`), with the position just after it, of
//!   the kind the reader started from (a GTID state, or `file:pos`), so resuming from a returned position
//!   never repeats that transaction and never skips the next one. (MySQL's `gtid_executed` is not used:
//!   a MySQL source is followed by `file:pos`.)
//! - The key is found by column position, read from `information_schema.COLUMNS` (ORDINAL_POSITION), so
//!   `binlog_row_image` FULL or MINIMAL and `binlog_row_metadata` FULL or MINIMAL all work; it is read again
//!   after any DDL statement in the stream. (The position read is the table's current one: a DDL that moves
//!   the key column while the reader lags behind it is not supported.)
//! - MariaDB's own events are asked for (`@mariadb_slave_capability = 4`) and handled here, since
//!   `mysql_common` does not decode them: GTID (starts a transaction), ANNOTATE_ROWS, BINLOG_CHECKPOINT and
//!   GTID_LIST (skipped: no data). Compressed (`log_bin_compress`) rows events of the job's table, compressed
//!   queries, encrypted events, statement-format DML on the job's table, LOAD DATA events, INCIDENT and
//!   unknown types stop the reader with [`FollowError::Undecodable`] naming the event: a change is never
//!   skipped silently. (Compressed rows events of other tables are passed over: their table id is readable.)

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use mysql_async::binlog::events::{Event, EventData, QueryEvent, RotateEvent, RowsEventData};
use mysql_async::binlog::EventType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, Value};
use tokio::time::Instant;

use super::{key_as_id, Change, ChangeReader, FollowError};

/// How often an idle source sends a heartbeat on the stream: well under a second, so that an idle follower
/// shows a lag under the second `caught_up` asks for.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// With neither an event nor a heartbeat for this long, the stream is taken for dead (an error).
pub const SILENCE: Duration = Duration::from_secs(30);

/// MySQL 8's HEARTBEAT_LOG_EVENT_V2, which mysql_common does not name.
const MYSQL_HEARTBEAT_V2: u8 = 0x29;

/// What the reader follows.
#[derive(Debug, Clone)]
pub struct BinlogSource {
    /// `mysql://user:pass@host:port/db` (credentials used only to connect).
    pub url: String,
    /// The table's database; `None`: the URL's database.
    pub database: Option<String>,
    pub table: String,
    /// The integer key column.
    pub key: String,
    /// The replica id to register with; unique among the server's replicas.
    pub server_id: u32,
}

// MariaDB event types mysql_common does not know (sql/log_event.h).
const MARIA_ANNOTATE_ROWS: u8 = 160;
const MARIA_BINLOG_CHECKPOINT: u8 = 161;
const MARIA_GTID: u8 = 162;
const MARIA_GTID_LIST: u8 = 163;

fn maria_event_name(t: u8) -> Option<&'static str> {
    Some(match t {
        164 => "START_ENCRYPTION_EVENT",
        165 => "QUERY_COMPRESSED_EVENT",
        166 => "WRITE_ROWS_COMPRESSED_EVENT_V1",
        167 => "UPDATE_ROWS_COMPRESSED_EVENT_V1",
        168 => "DELETE_ROWS_COMPRESSED_EVENT_V1",
        169 => "WRITE_ROWS_COMPRESSED_EVENT",
        170 => "UPDATE_ROWS_COMPRESSED_EVENT",
        171 => "DELETE_ROWS_COMPRESSED_EVENT",
        _ => return None,
    })
}

async fn connect(url: &str) -> Result<Conn, FollowError> {
    let opts = Opts::from_url(url)
        .map_err(|e| FollowError::refused(format!("the source URL is not usable: {e}")))?;
    Conn::new(opts)
        .await
        .context("connecting to the binlog source")
        .map_err(FollowError::Source)
}

/// MariaDB's "could not find GTID state requested by slave in any binlog files" (and its kin).
fn is_gtid_gone(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1236)
}

fn is_access_denied(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1227 || s.code == 1045 || s.code == 1044)
}

/// Checks the server can be followed; `Refused` says what to change.
pub async fn check(conn: &mut Conn) -> Result<(), FollowError> {
    let (log_bin, format): (Option<String>, Option<String>) = conn
        .query_first("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format")
        .await
        .context("reading log_bin and binlog_format")?
        .unwrap_or((None, None));
    if !matches!(log_bin.as_deref(), Some("1") | Some("ON")) {
        return Err(FollowError::refused(
            "the binlog is off on the source (log_bin = OFF): start the server with log_bin (e.g. \
             `log_bin = mysql-bin`), binlog_format = ROW and a server_id, then run again",
        ));
    }
    let format = format.unwrap_or_default();
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(FollowError::refused(format!(
            "binlog_format is {format} on the source; following needs ROW: `SET GLOBAL binlog_format = ROW` \
             (and binlog_format = ROW in the server's config), then run again"
        )));
    }
    // The grants: REPLICATION SLAVE to stream, REPLICATION CLIENT (BINLOG MONITOR) for the position.
    let grants: Vec<String> = conn
        .query("SHOW GRANTS FOR CURRENT_USER()")
        .await
        .context("reading the user's grants")?;
    let global: Vec<String> = grants
        .iter()
        .filter(|g| g.contains(" ON *.* "))
        .map(|g| g.to_ascii_uppercase())
        .collect();
    let has = |p: &str| {
        global
            .iter()
            .any(|g| g.contains("ALL PRIVILEGES") || g.contains(p))
    };
    let mut missing = Vec::new();
    if !has("REPLICATION SLAVE") && !has("REPLICATION REPLICA") {
        missing.push("REPLICATION SLAVE");
    }
    if !has("REPLICATION CLIENT") && !has("BINLOG MONITOR") && !has("SUPER") {
        missing.push("REPLICATION CLIENT");
    }
    if !missing.is_empty() {
        return Err(FollowError::refused(format!(
            "the source user lacks {}: `GRANT {} ON *.* TO <user>`, then run again",
            missing.join(" and "),
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Checks the server, then returns the binlog position now: its GTID state when it has one (MariaDB),
/// else `file:pos`.
pub async fn position_now(src: &BinlogSource) -> Result<String, FollowError> {
    let mut conn = connect(&src.url).await?;
    check(&mut conn).await?;
    // MariaDB only: MySQL has no such variable (an error, and `file:pos` then).
    let gtid: Option<String> = conn
        .query_first::<Option<String>, _>("SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .ok()
        .flatten()
        .flatten();
    if let Some(state) = gtid.and_then(|g| GtidState::parse(&g).ok()) {
        let _ = conn.disconnect().await;
        return Ok(state.to_string());
    }
    file_position(conn).await
}

/// Checks the server, then returns `SHOW MASTER STATUS`'s `file:pos`, GTIDs or not.
pub async fn file_position_now(src: &BinlogSource) -> Result<String, FollowError> {
    let mut conn = connect(&src.url).await?;
    check(&mut conn).await?;
    file_position(conn).await
}

async fn file_position(mut conn: Conn) -> Result<String, FollowError> {
    let row: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(r) => r,
        Err(e) if is_access_denied(&e) => {
            return Err(FollowError::refused(format!(
                "the source user may not read the binlog position ({e}): `GRANT REPLICATION CLIENT ON *.* TO <user>`"
            )))
        }
        Err(e) => return Err(anyhow::Error::from(e).context("SHOW MASTER STATUS").into()),
    };
    let row =
        row.ok_or_else(|| FollowError::refused("SHOW MASTER STATUS is empty: the binlog is off"))?;
    let file: String = row.get(0).context("SHOW MASTER STATUS: no File")?;
    let pos: u64 = row.get(1).context("SHOW MASTER STATUS: no Position")?;
    let _ = conn.disconnect().await;
    Ok(format!("{file}:{pos}"))
}

/// A MariaDB GTID state: per replication domain, the last transaction's server id and sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState(BTreeMap<u32, (u32, u64)>);

impl GtidState {
    /// `domain-server-seq[,domain-server-seq…]` (as `@@gtid_binlog_pos` prints it), one per domain.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut state = BTreeMap::new();
        for gtid in text.split(',').map(str::trim) {
            let parts: Vec<&str> = gtid.split('-').collect();
            let [d, s, n] = parts.as_slice() else {
                return Err(format!("`{gtid}` is not a GTID domain-server-seq"));
            };
            let (Ok(d), Ok(s), Ok(n)) = (d.parse(), s.parse(), n.parse()) else {
                return Err(format!("`{gtid}` is not a GTID domain-server-seq"));
            };
            if state.insert(d, (s, n)).is_some() {
                return Err(format!("domain {d} appears twice"));
            }
        }
        Ok(Self(state))
    }

    /// A transaction of `domain` was written.
    fn apply(&mut self, domain: u32, server: u32, seq: u64) {
        self.0.insert(domain, (server, seq));
    }

    /// Why this state cannot be a point in the history of a server whose state is `server`: a domain it
    /// lacks, or a sequence number beyond its own. `None`: it can.
    pub fn not_within(&self, server: &GtidState) -> Option<String> {
        self.0.iter().find_map(|(d, (_, n))| match server.0.get(d) {
            None => Some(format!("the source has no domain {d}")),
            Some((_, m)) if m < n => Some(format!(
                "the source's domain {d} is at sequence {m}, before {n}"
            )),
            Some(_) => None,
        })
    }
}

impl std::fmt::Display for GtidState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (d, (s, n)) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

/// Where a binlog reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinlogPosition {
    /// `file:pos`.
    File { file: String, pos: u64 },
    /// A GTID state (MariaDB).
    Gtid(GtidState),
}

/// Reads a stored position: `file:pos`, or a GTID state `domain-server-seq[,…]`.
pub fn parse_position(position: &str) -> Result<BinlogPosition, FollowError> {
    let bad = || {
        FollowError::bad_position(
            position,
            format!(
                "`{position}` is not a binlog position: `file:pos` (e.g. mysql-bin.000003:1234) or a GTID \
                 state (e.g. 0-1-4711)"
            ),
        )
    };
    let Some((file, pos)) = position.rsplit_once(':') else {
        return GtidState::parse(position)
            .map(BinlogPosition::Gtid)
            .map_err(|_| bad());
    };
    let pos: u64 = pos.parse().map_err(|_| bad())?;
    if file.is_empty() || pos < 4 {
        return Err(bad());
    }
    Ok(BinlogPosition::File {
        file: file.to_owned(),
        pos,
    })
}

/// How to read the key from a row image.
#[derive(Debug, Clone)]
struct KeyColumn {
    /// 0-based column position in the table.
    index: usize,
    /// `tinyint`, `int`, … for widening a negative value of an unsigned column.
    data_type: String,
    unsigned: bool,
}

/// Streams the job table's changes from a binlog position.
pub struct BinlogReader {
    src: BinlogSource,
    database: String,
    stream: BinlogStream,
    /// For `information_schema` reads while the stream holds the other connection.
    meta: Conn,
    key: Option<KeyColumn>,
    /// Current binlog file.
    file: String,
    /// Started from a GTID state: the state so far (positions handed out are GTID states).
    gtid: Option<GtidState>,
    /// Keys of the open transaction.
    pending: Vec<u64>,
    ready: VecDeque<Change>,
    /// The server checksums events (`binlog_checksum` = CRC32), and no FORMAT_DESCRIPTION_EVENT came yet:
    /// the first (artificial) ROTATE_EVENT then still carries its 4 checksum bytes, which mysql_common
    /// cannot strip before it has seen the FDE.
    checksum_before_fde: bool,
    /// Decoded events (all types), for throughput figures.
    pub events: u64,
    /// How long the stream may stay silent (default [`SILENCE`]), counted from the last event or heartbeat
    /// heard — across calls of `next`, which the follower cancels every window.
    pub silence: Duration,
    last_heard: Instant,
    /// Everything the source wrote to its binlog before this time has been read: a heartbeat (sent only by
    /// a dump thread idle at the end of the binlog) moves it to now, any other event to its own timestamp.
    read_up_to: DateTime<Utc>,
    /// An event taken from the stream whose handling was cancelled at its one await (reading the key
    /// column again after a DDL): handled first by the next call of `next`, so a cancel loses nothing.
    held: Option<Event>,
}

impl BinlogReader {
    /// Checks the server and starts streaming from `position` (`file:pos` or a GTID state, as
    /// [`position_now`] or a [`Change`] gave it).
    pub async fn start(src: BinlogSource, position: &str) -> Result<Self, FollowError> {
        let (file, pos, gtid) = match parse_position(position)? {
            BinlogPosition::File { file, pos } => (file, pos, None),
            // The server finds the file from the GTIDs; the first (fake) ROTATE_EVENT names it.
            BinlogPosition::Gtid(state) => (String::new(), 4, Some(state)),
        };
        let mut meta = connect(&src.url).await?;
        check(&mut meta).await?;
        let database = match &src.database {
            Some(d) => d.clone(),
            None => meta
                .query_first::<Option<String>, _>("SELECT DATABASE()")
                .await
                .context("SELECT DATABASE()")?
                .flatten()
                .ok_or_else(|| {
                    FollowError::refused("the source URL names no database and the table no schema")
                })?,
        };
        let files: Vec<String> = meta
            .query_map("SHOW BINARY LOGS", |row: mysql_async::Row| {
                row.get::<String, _>(0).unwrap_or_default()
            })
            .await
            .context("SHOW BINARY LOGS")?;
        if gtid.is_none() && !files.contains(&file) {
            return Err(FollowError::bad_position(
                position,
                format!(
                    "binlog file {file} is no longer on the source (purged?); the oldest is {}: changes since \
                     the checkpoint are lost, start the job again from a new copy",
                    files.first().map(String::as_str).unwrap_or("none")
                ),
            ));
        }
        let checksum: Option<String> = meta
            .query_first("SELECT @@GLOBAL.binlog_checksum")
            .await
            .context("reading binlog_checksum")?;
        let checksum_before_fde = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        let mut conn = connect(&src.url).await?;
        // MariaDB: send GTID and annotate events as such (not rewritten into dummy queries).
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .context("SET @mariadb_slave_capability")?;
        // An idle server sends a HEARTBEAT_EVENT every HEARTBEAT (in ns), so a stream that went silent
        // (a dead connection, a dump thread killed by another replica with our server_id) is noticed.
        conn.query_drop(format!(
            "SET @master_heartbeat_period = {}",
            HEARTBEAT.as_nanos()
        ))
        .await
        .context("SET @master_heartbeat_period")?;
        if let Some(state) = &gtid {
            // A domain the server never wrote, or a sequence number ahead of it: a position from another
            // server (MariaDB would stream such a domain from its oldest binlog, not refuse it).
            let server: Option<String> = meta
                .query_first::<Option<String>, _>("SELECT @@GLOBAL.gtid_binlog_pos")
                .await
                .context("reading gtid_binlog_pos")?
                .flatten();
            let server = server
                .as_deref()
                .and_then(|g| GtidState::parse(g).ok())
                .unwrap_or_default();
            if let Some(why) = state.not_within(&server) {
                return Err(FollowError::bad_position(
                    position,
                    format!(
                        "GTID state {position} is not in this source's binlog (gtid_binlog_pos = {server}): {why}; \
                         is the job pointed at another server? Start it again from a new copy"
                    ),
                ));
            }
            // As a MariaDB replica connects by GTID: the server ignores the file and offset then.
            conn.exec_drop(
                "SET @slave_connect_state = ?, @slave_gtid_strict_mode = 0, @slave_gtid_ignore_duplicates = 0",
                (state.to_string(),),
            )
            .await
            .context("SET @slave_connect_state")?;
        }
        let request = BinlogStreamRequest::new(src.server_id)
            .with_filename(file.as_bytes())
            .with_pos(pos);
        let stream = conn.get_binlog_stream(request).await.map_err(|e| {
            if gtid.is_some() && is_gtid_gone(&e) {
                FollowError::bad_position(
                    position,
                    format!(
                        "the source no longer has the binlog of GTID state {position} ({e}): changes since the \
                         checkpoint are lost, start the job again from a new copy"
                    ),
                )
            } else if is_access_denied(&e) {
                FollowError::refused(format!(
                    "the source user may not stream the binlog ({e}): `GRANT REPLICATION SLAVE ON *.* TO <user>`"
                ))
            } else {
                anyhow::Error::from(e).context("requesting the binlog stream").into()
            }
        })?;
        let mut me = Self {
            src,
            database,
            stream,
            meta,
            key: None,
            file,
            gtid,
            pending: Vec::new(),
            ready: VecDeque::new(),
            checksum_before_fde,
            events: 0,
            silence: SILENCE,
            last_heard: Instant::now(),
            // Nothing read yet: as old as the position may be, nothing is proven.
            read_up_to: DateTime::<Utc>::UNIX_EPOCH,
            held: None,
        };
        me.key = Some(me.read_key_column().await?);
        Ok(me)
    }

    /// The next event of the stream (cancel-safe: nothing is taken from the stream until it returns), or
    /// why there is none: silence past [`SILENCE`], a GTID state the source lacks, a missing grant, an
    /// error or the end of the stream.
    async fn read_event(&mut self) -> Result<Event, FollowError> {
        let next =
            tokio::time::timeout_at(self.last_heard + self.silence, self.stream.next()).await;
        let Ok(next) = next else {
            return Err(FollowError::Source(anyhow::anyhow!(
                "the binlog stream has been silent for {:?} (not even a heartbeat): is another \
                 replica registered with server_id {}?",
                self.silence,
                self.src.server_id
            )));
        };
        match next {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) if is_gtid_gone(&e) && self.gtid.is_some() => {
                let state = self.gtid.as_ref().map(|g| g.to_string()).unwrap_or_default();
                Err(FollowError::bad_position(
                    &state,
                    format!(
                        "the source cannot stream from GTID state {state} ({e}): its binlog no longer (or \
                         never) had it; changes since the checkpoint are lost, start the job again from a \
                         new copy"
                    ),
                ))
            }
            Some(Err(e)) if is_access_denied(&e) => Err(FollowError::refused(format!(
                "the source user may not stream the binlog ({e}): `GRANT REPLICATION SLAVE ON *.* TO <user>`"
            ))),
            Some(Err(e)) => Err(anyhow::Error::from(e)
                .context("reading the binlog stream")
                .into()),
            None => Err(FollowError::Source(anyhow::anyhow!(
                "the source closed the binlog stream"
            ))),
        }
    }

    async fn read_key_column(&mut self) -> Result<KeyColumn, FollowError> {
        let row: Option<(u64, String, String)> = self
            .meta
            .exec_first(
                "SELECT ORDINAL_POSITION, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                (&self.database, &self.src.table, &self.src.key),
            )
            .await
            .context("reading the key column's position")?;
        let (ordinal, data_type, column_type) = row.ok_or_else(|| {
            FollowError::refused(format!(
                "the source has no column {}.{}.{}",
                self.database, self.src.table, self.src.key
            ))
        })?;
        Ok(KeyColumn {
            index: (ordinal as usize).saturating_sub(1),
            data_type: data_type.to_ascii_lowercase(),
            unsigned: column_type.to_ascii_lowercase().contains("unsigned"),
        })
    }

    /// Where an event is, for messages: always `file:pos`.
    fn position(&self, log_pos: u32) -> String {
        format!("{}:{log_pos}", self.file)
    }

    /// Where to resume after the event at `log_pos`, of the kind the reader started from.
    fn resume_position(&self, log_pos: u32) -> String {
        match &self.gtid {
            Some(state) => state.to_string(),
            None => self.position(log_pos),
        }
    }

    fn undecodable(&self, ev: &Event, event: &str, detail: impl Into<String>) -> FollowError {
        FollowError::Undecodable {
            event: event.to_owned(),
            position: self.position(ev.header().log_pos()),
            detail: detail.into(),
        }
    }

    fn commit(&mut self, ev: &Event) {
        let keys = std::mem::take(&mut self.pending);
        if keys.is_empty() {
            return;
        }
        let ts = ev.header().timestamp();
        self.ready.push_back(Change {
            position: self.resume_position(ev.header().log_pos()),
            committed_at: DateTime::<Utc>::from_timestamp(i64::from(ts), 0).unwrap_or_default(),
            keys,
            no_key: None,
        });
    }

    fn is_our_table(&self, db: &str, table: &str) -> bool {
        db == self.database && table == self.src.table
    }

    /// A rows event (plain or compressed) whose table id, the first 6 bytes of its post-header, maps to
    /// another table than the job's. An id with no table map is not known to be another's: `false`.
    fn is_other_tables_rows(&self, ev: &Event) -> bool {
        let Some(head) = ev.data().get(..6) else {
            return false;
        };
        let mut id = [0u8; 8];
        id[..6].copy_from_slice(head);
        self.stream
            .get_tme(u64::from_le_bytes(id))
            .is_some_and(|tme| !self.is_our_table(&tme.database_name(), &tme.table_name()))
    }

    async fn handle(&mut self, ev: Event) -> Result<(), FollowError> {
        self.events += 1;
        self.last_heard = Instant::now();
        let raw = ev.header().event_type_raw();
        if raw == EventType::HEARTBEAT_EVENT as u8 || raw == MYSQL_HEARTBEAT_V2 {
            self.read_up_to = Utc::now();
            return Ok(());
        } else if let Some(at) =
            DateTime::<Utc>::from_timestamp(i64::from(ev.header().timestamp()), 0)
        {
            // Second precision, and a statement's start rather than its commit: never ahead of the truth.
            self.read_up_to = self.read_up_to.max(at);
        }
        match raw {
            MARIA_ANNOTATE_ROWS | MARIA_BINLOG_CHECKPOINT | MARIA_GTID_LIST => return Ok(()),
            MARIA_GTID => {
                // A transaction starts; its end is an XID or a COMMIT query. Nothing pending can be left
                // from before (a transaction always ends before the next GTID). Its GTID goes into the
                // state now: a position is handed out only at a commit, when this transaction is whole.
                self.pending.clear();
                if let Some(state) = &mut self.gtid {
                    // seq_no (8 bytes), domain_id (4 bytes), flags… (sql/log_event.h); server id in the header.
                    let d = ev.data();
                    let (Some(seq), Some(domain)) = (d.get(..8), d.get(8..12)) else {
                        return Err(self.undecodable(&ev, "GTID_EVENT", "shorter than 12 bytes"));
                    };
                    let mut seq8 = [0u8; 8];
                    seq8.copy_from_slice(seq);
                    let mut domain4 = [0u8; 4];
                    domain4.copy_from_slice(domain);
                    state.apply(
                        u32::from_le_bytes(domain4),
                        ev.header().server_id(),
                        u64::from_le_bytes(seq8),
                    );
                }
                return Ok(());
            }
            t if maria_event_name(t).is_some() => {
                let name = maria_event_name(t).unwrap_or("?");
                // A compressed rows event keeps its post-header (6-byte table id, flags) uncompressed:
                // one for another table is none of ours and is passed over like any other table's rows.
                if (166..=171).contains(&t) && self.is_other_tables_rows(&ev) {
                    return Ok(());
                }
                return Err(self.undecodable(
                    &ev,
                    name,
                    "compressed or encrypted binlog events are not supported: set log_bin_compress = OFF \
                     (or encrypt_binlog = OFF) on the source",
                ));
            }
            _ => {}
        }
        let Ok(ty) = ev.header().event_type() else {
            return Err(self.undecodable(
                &ev,
                &format!("event type {raw}"),
                "unknown binlog event type",
            ));
        };
        match ty {
            EventType::ROTATE_EVENT => {
                let r: RotateEvent<'_> = ev
                    .read_event()
                    .map_err(|e| self.undecodable(&ev, "ROTATE_EVENT", e.to_string()))?;
                let mut name = r.name_raw();
                if self.checksum_before_fde && name.len() > 4 {
                    name = &name[..name.len() - 4];
                }
                self.file = String::from_utf8_lossy(name).into_owned();
            }
            EventType::FORMAT_DESCRIPTION_EVENT => self.checksum_before_fde = false,
            EventType::QUERY_EVENT => {
                let q: QueryEvent<'_> = ev
                    .read_event()
                    .map_err(|e| self.undecodable(&ev, "QUERY_EVENT", e.to_string()))?;
                let text = q.query();
                let head = text.trim_start().to_ascii_uppercase();
                if head.starts_with("BEGIN") || head.starts_with("XA START") {
                    self.pending.clear();
                } else if head.starts_with("COMMIT") || head.starts_with("XA COMMIT") {
                    self.commit(&ev);
                } else if head.starts_with("ROLLBACK") {
                    self.pending.clear();
                } else if ["INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD"]
                    .iter()
                    .any(|w| head.starts_with(w))
                {
                    // Statement-format DML (a session with binlog_format = STATEMENT/MIXED): its keys are
                    // not in the binlog. Only a statement naming the job's table matters.
                    if mentions_table(&text, &q.schema(), &self.database, &self.src.table) {
                        return Err(self.undecodable(
                            &ev,
                            "QUERY_EVENT (statement-format DML)",
                            format!(
                                "a statement on {} was logged as a statement, not as rows: every writer must use \
                                 binlog_format = ROW ({:.120})",
                                self.src.table, text
                            ),
                        ));
                    }
                } else {
                    // DDL (or other statements): the key's column position may have changed.
                    if mentions_table(&text, &q.schema(), &self.database, &self.src.table) {
                        self.key = None;
                    }
                }
            }
            EventType::XID_EVENT => self.commit(&ev),
            EventType::WRITE_ROWS_EVENT_V1
            | EventType::UPDATE_ROWS_EVENT_V1
            | EventType::DELETE_ROWS_EVENT_V1
            | EventType::WRITE_ROWS_EVENT
            | EventType::UPDATE_ROWS_EVENT
            | EventType::DELETE_ROWS_EVENT
            | EventType::PARTIAL_UPDATE_ROWS_EVENT => self.rows(&ev, ty).await?,
            EventType::TABLE_MAP_EVENT
            | EventType::STOP_EVENT
            | EventType::INTVAR_EVENT
            | EventType::RAND_EVENT
            | EventType::USER_VAR_EVENT
            | EventType::ROWS_QUERY_EVENT
            | EventType::GTID_EVENT
            | EventType::ANONYMOUS_GTID_EVENT
            | EventType::PREVIOUS_GTIDS_EVENT
            | EventType::TRANSACTION_PAYLOAD_EVENT
            | EventType::IGNORABLE_EVENT => {}
            other => {
                return Err(self.undecodable(
                    &ev,
                    &format!("{other:?}"),
                    "this binlog event type is not supported by the follower",
                ))
            }
        }
        Ok(())
    }

    async fn rows(&mut self, ev: &Event, ty: EventType) -> Result<(), FollowError> {
        // Another table's rows (most of a shared server's binlog) are passed over by their table id,
        // undecoded: a follower must read a busy server's binlog faster than it is written.
        if self.is_other_tables_rows(ev) {
            return Ok(());
        }
        let name = format!("{ty:?}");
        let data = ev
            .read_data()
            .map_err(|e| self.undecodable(ev, &name, e.to_string()))?;
        let Some(EventData::RowsEvent(rows)) = data else {
            return Err(self.undecodable(ev, &name, "not a rows event"));
        };
        let table_id = rows.table_id();
        let Some(tme) = self.stream.get_tme(table_id) else {
            return Err(self.undecodable(
                ev,
                &name,
                format!("no TABLE_MAP_EVENT for table id {table_id}"),
            ));
        };
        if !self.is_our_table(&tme.database_name(), &tme.table_name()) {
            return Ok(());
        }
        if self.key.is_none() {
            self.key = Some(self.read_key_column().await?);
        }
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| unreachable!("set just above"));
        // Take the table map again (the borrow of self.stream ended at the await).
        let Some(tme) = self.stream.get_tme(table_id) else {
            return Err(self.undecodable(
                ev,
                &name,
                format!("no TABLE_MAP_EVENT for table id {table_id}"),
            ));
        };
        // Where the key sits among an image's values: only the columns whose bit is set are in it.
        let col = key.index;
        let before_idx = rows.columns_before_image().map(|b| {
            b.get(col)
                .is_some_and(|bit| *bit)
                .then(|| b[..col].count_ones())
        });
        let after_idx = rows.columns_after_image().map(|b| {
            b.get(col)
                .is_some_and(|bit| *bit)
                .then(|| b[..col].count_ones())
        });
        let is_update = matches!(
            rows,
            RowsEventData::UpdateRowsEventV1(_)
                | RowsEventData::UpdateRowsEvent(_)
                | RowsEventData::PartialUpdateRowsEvent(_)
        );
        let mut keys = Vec::new();
        for row in rows.rows(tme) {
            let (before, after) = row.map_err(|e| FollowError::Undecodable {
                event: name.clone(),
                position: format!("{}:{}", self.file, ev.header().log_pos()),
                detail: e.to_string(),
            })?;
            let ctx = || format!("{name} on {}.{}", self.database, self.src.table);
            let get = |row: &Option<mysql_async::binlog::row::BinlogRow>,
                       idx: Option<Option<usize>>|
             -> Result<Option<u64>, FollowError> {
                let (Some(row), Some(Some(i))) = (row, idx) else {
                    return Ok(None);
                };
                match row.as_ref(i) {
                    Some(mysql_async::binlog::value::BinlogValue::Value(v)) => {
                        key_value(v, &key, &ctx()).map(Some)
                    }
                    other => Err(FollowError::Source(anyhow::anyhow!(
                        "{}: the key column holds {other:?}, not an integer",
                        ctx()
                    ))),
                }
            };
            let old = get(&before, before_idx)?;
            let new = get(&after, after_idx)?;
            match (old, new) {
                (Some(o), Some(n)) if o != n => keys.extend([n, o]),
                (_, Some(n)) => keys.push(n),
                (Some(o), None) => keys.push(o),
                (None, None) => {
                    return Err(FollowError::Undecodable {
                        event: name.clone(),
                        position: format!("{}:{}", self.file, ev.header().log_pos()),
                        detail: format!(
                            "the row image has no key column {} (position {}; update: {is_update})",
                            self.src.key,
                            key.index + 1,
                        ),
                    })
                }
            }
        }
        self.pending.extend(keys);
        Ok(())
    }
}

/// Whether statement `text`, run with default schema `schema`, names `database`.`table`: as an identifier
/// (quoted or not, qualified or in the default schema), not as any substring — a table called `t` is not
/// in every statement with a `t` in it, and another database's table of the same name is not ours.
fn mentions_table(text: &str, schema: &str, database: &str, table: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$' || c == '`' || c == '.';
    text.split(|c: char| !is_ident(c))
        .filter(|t| !t.is_empty())
        .any(|token| {
            let parts: Vec<String> = token
                .split('.')
                .map(|p| p.trim_matches('`').to_lowercase())
                .collect();
            match parts.as_slice() {
                [t] => t == &table.to_lowercase() && schema.eq_ignore_ascii_case(database),
                [d, t] => d == &database.to_lowercase() && t == &table.to_lowercase(),
                _ => false,
            }
        })
}

fn key_value(v: &Value, key: &KeyColumn, ctx: &str) -> Result<u64, FollowError> {
    let n: i128 = match v {
        Value::Int(i) if *i < 0 && key.unsigned => {
            // Without signedness metadata an unsigned column's high values arrive negative.
            let bits = match key.data_type.as_str() {
                "tinyint" => 8,
                "smallint" => 16,
                "mediumint" => 24,
                "int" | "integer" => 32,
                _ => 64,
            };
            i128::from(*i) & ((1i128 << bits) - 1)
        }
        Value::Int(i) => i128::from(*i),
        Value::UInt(u) => i128::from(*u),
        Value::Bytes(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i128>().ok())
            .ok_or_else(|| {
                FollowError::Source(anyhow::anyhow!("{ctx}: key {b:?} is not an integer"))
            })?,
        other => {
            return Err(FollowError::Source(anyhow::anyhow!(
                "{ctx}: key {other:?} is not an integer"
            )))
        }
    };
    key_as_id(n, ctx)
}

#[async_trait::async_trait]
impl ChangeReader for BinlogReader {
    async fn next(&mut self) -> Result<Change, FollowError> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Ok(c);
            }
            let ev = match self.held.clone() {
                Some(ev) => ev,
                None => {
                    let ev = self.read_event().await?;
                    if self.key.is_none() {
                        // `handle` awaits only to read the key column, and only while it is unknown:
                        // keep the event until it is handled, in case the caller cancels this call there.
                        self.held = Some(ev.clone());
                    }
                    ev
                }
            };
            let r = self.handle(ev).await;
            self.held = None;
            r?;
        }
    }

    /// Nothing to tell the server: the binlog keeps what it keeps (`expire_logs_days`).
    async fn checkpoint(&mut self, _position: &str) -> Result<(), FollowError> {
        Ok(())
    }

    fn read_up_to(&self) -> Option<DateTime<Utc>> {
        Some(self.read_up_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_names_the_table_only_as_an_identifier_of_its_database() {
        let m = |text: &str, schema: &str| mentions_table(text, schema, "shop", "t");
        assert!(m("DELETE FROM t WHERE id = 1", "shop"));
        assert!(m("UPDATE `t` SET a = 1", "shop"));
        assert!(m("insert into shop.t values (1)", "other"));
        assert!(m("ALTER TABLE `shop`.`T` ADD c INT", ""));
        // A substring, another database's t, or t in the default schema of another database: not ours.
        assert!(!m(
            "DELETE FROM `verify_bench`.`checksums` WHERE db = 'verify_bench' AND tbl = 'orders'",
            "shop"
        ));
        assert!(!m("DELETE FROM other.t", "shop"));
        assert!(!m("DELETE FROM t", "other"));
        assert!(!m("UPDATE tt SET t2 = 1", "shop"));
    }

    #[test]
    fn positions_parse_or_say_why() {
        assert_eq!(
            parse_position("mariadb-bin.000002:1234").unwrap(),
            BinlogPosition::File {
                file: "mariadb-bin.000002".to_owned(),
                pos: 1234
            }
        );
        let BinlogPosition::Gtid(g) = parse_position("1-7-99,0-1-4711").unwrap() else {
            panic!("a GTID state")
        };
        // One per domain, printed by domain as MariaDB does; 64-bit sequence numbers.
        assert_eq!(g.to_string(), "0-1-4711,1-7-99");
        let mut g = GtidState::parse("0-1-18446744073709551615").unwrap();
        g.apply(0, 2, 5);
        g.apply(3, 1, 1);
        assert_eq!(g.to_string(), "0-2-5,3-1-1");
        let server = GtidState::parse("0-1-100,1-2-5").unwrap();
        assert_eq!(
            GtidState::parse("0-1-100").unwrap().not_within(&server),
            None
        );
        assert_eq!(
            GtidState::parse("0-3-7,1-2-5").unwrap().not_within(&server),
            None
        );
        assert!(GtidState::parse("0-1-101")
            .unwrap()
            .not_within(&server)
            .is_some());
        assert!(GtidState::parse("2-1-1")
            .unwrap()
            .not_within(&server)
            .is_some());
        for bad in [
            "",
            "mariadb-bin.000002",
            "f:x",
            ":5",
            "f:3",
            "0/16B3748",
            "0-1",
            "0-1-2-3",
            "0-1-x",
            "0-1-2,0-1-3",
            "0-1-2,",
        ] {
            let e = parse_position(bad).unwrap_err();
            assert!(
                matches!(e, FollowError::BadPosition { .. }),
                "{bad:?} gave {e:?}"
            );
        }
    }
}
