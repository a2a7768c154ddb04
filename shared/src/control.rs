//! Pause, resume and the throttle's reason: the hash `bitmig:{JOB}:control` (DESIGN.md §4, §11).
//!
//! Fields: `paused` (`0`/`1`), `reason` (the operator's words, empty when none), `at` (RFC 3339, UTC, when
//! paused or resumed), `throttled` (why work waits for a throttle, e.g. `max_threads_running: source 31 > 30`;
//! absent while no throttle holds). A missing hash means running, unthrottled.
//!
//! A long-running program does not read the hash per row or per batch: it starts one [`PauseWatch`], a task
//! that polls `paused` every [`WATCH_EVERY`] (one HGET) and publishes it on a `tokio::sync::watch`; workers
//! check [`PauseWatch::is_paused`] (no I/O) before taking new work and [`PauseWatch::wait_running`] to wait.
//! With the default interval a pause is seen within a second, so workers stop taking work within 2 s.
//! While Redis cannot be read the watch keeps the last state it saw (and logs once per outage).

use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::watch;

use crate::ledger::{now_rfc3339, LedgerError};
use crate::redis_con::RedisCon;

/// How often a [`PauseWatch`] reads `paused`.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The `control` hash as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlState {
    pub paused: bool,
    /// The reason given to `pause` (empty when none was given).
    pub reason: String,
    /// When the last `pause` or `resume` happened (RFC 3339).
    pub at: Option<String>,
    /// Why work waits for a throttle, while one holds.
    pub throttled: Option<String>,
}

/// The job's `control` hash. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    con: RedisCon,
    key: String,
}

/// `bitmig:{JOB}:control`.
pub fn control_key(job: &str) -> String {
    format!("bitmig:{{{job}}}:control")
}

impl Control {
    /// The control of `job` over an open connection (usually [`crate::ledger::Ledger::connection`]).
    pub fn new(con: RedisCon, job: &str) -> Self {
        Self {
            con,
            key: control_key(job),
        }
    }

    /// `bitmig-compensator pause`: `paused = 1`, the reason and the time.
    pub async fn pause(&self, reason: &str) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let _: () = con
            .hset_multiple(
                &self.key,
                &[("paused", "1"), ("reason", reason), ("at", &now_rfc3339())],
            )
            .await?;
        Ok(())
    }

    /// `bitmig-compensator resume`: `paused = 0`, the reason cleared, the time.
    pub async fn resume(&self) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let _: () = con
            .hset_multiple(
                &self.key,
                &[("paused", "0"), ("reason", ""), ("at", &now_rfc3339())],
            )
            .await?;
        Ok(())
    }

    pub async fn state(&self) -> Result<ControlState, LedgerError> {
        let mut con = self.con.clone();
        let (paused, reason, at, throttled): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(&self.key)
            .arg(&["paused", "reason", "at", "throttled"])
            .query_async(&mut con)
            .await?;
        Ok(ControlState {
            paused: paused.as_deref() == Some("1"),
            reason: reason.unwrap_or_default(),
            at,
            throttled: throttled.filter(|t| !t.is_empty()),
        })
    }

    /// Whether the job is paused now (one HGET; for a watch, not for every row).
    pub async fn is_paused(&self) -> Result<bool, LedgerError> {
        let mut con = self.con.clone();
        let v: Option<String> = con.hget(&self.key, "paused").await?;
        Ok(v.as_deref() == Some("1"))
    }

    /// Record why work waits (`Some`) or that no throttle holds any more (`None`, the field is removed).
    pub async fn set_throttled(&self, why: Option<&str>) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        match why {
            Some(why) => {
                let _: () = con.hset(&self.key, "throttled", why).await?;
            }
            None => {
                let _: () = con.hdel(&self.key, "throttled").await?;
            }
        }
        Ok(())
    }

    /// Delete `throttled` when it still says `why` (what the caller wrote): a program on its way out takes
    /// back its own reason, never another program's newer one.
    pub async fn clear_throttled_if(&self, why: &str) -> Result<(), LedgerError> {
        let mut con = self.con.clone();
        let script = redis::Script::new(
            "if redis.call('HGET', KEYS[1], 'throttled') == ARGV[1] then \
             return redis.call('HDEL', KEYS[1], 'throttled') end return 0",
        );
        let _: i64 = script
            .key(&self.key)
            .arg(why)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    /// Start polling `paused` every `every` (use [`WATCH_EVERY`]); the first read happens before this returns,
    /// so a program started while paused sees it at once. Errors of that first read are returned.
    pub async fn watch(&self, every: Duration) -> Result<PauseWatch, LedgerError> {
        let initial = self.is_paused().await?;
        let (tx, rx) = watch::channel(initial);
        let control = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match control.is_paused().await {
                    Ok(paused) => {
                        if failing {
                            tracing::info!("control: reading {} again", control.key);
                            failing = false;
                        }
                        tx.send_if_modified(|p| std::mem::replace(p, paused) != paused);
                    }
                    Err(e) if !failing => {
                        tracing::warn!(
                            "control: cannot read {} ({e}); keeping the last state",
                            control.key
                        );
                        failing = true;
                    }
                    Err(_) => {}
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(PauseWatch { rx, task })
    }
}

/// The paused flag as last polled. Dropping it stops the polling task. Clone the receiver with
/// [`PauseWatch::subscribe`] to hand it to several workers.
pub struct PauseWatch {
    rx: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PauseWatch {
    /// Paused as of the last poll (no I/O).
    pub fn is_paused(&self) -> bool {
        *self.rx.borrow()
    }

    /// A receiver for another worker: `*rx.borrow()` is the flag; `rx.changed()` wakes on a change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Return at once when running, else when a poll sees `resume`.
    pub async fn wait_running(&self) {
        let mut rx = self.rx.clone();
        // Err only when the polling task ended, which it does only after this watch is dropped.
        let _ = rx.wait_for(|paused| !paused).await;
    }
}

impl Drop for PauseWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
