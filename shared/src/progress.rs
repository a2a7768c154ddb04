//! Progress of long work: a bar on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known span of the id space (`lo..=hi`), counting groups and ids done.
pub struct Progress {
    /// What the log line says is going on (`producing`, `verifying`, `purging`).
    doing: &'static str,
    bar: Option<ProgressBar>,
    lo: u64,
    hi: u64,
    started: Instant,
    last_log: Instant,
    every: Duration,
    pub groups: u64,
    pub skipped: u64,
    pub ids: u64,
}

impl Progress {
    /// Progress of `doing` (the log line's message) over `lo..=hi`.
    pub fn new(doing: &'static str, lo: u64, hi: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(1000);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        let now = Instant::now();
        Self {
            doing,
            bar,
            lo,
            hi,
            started: now,
            last_log: now,
            every: Duration::from_secs(5),
            groups: 0,
            skipped: 0,
            ids: 0,
        }
    }

    fn fraction(&self, at: u64) -> f64 {
        if self.hi <= self.lo {
            return 1.0;
        }
        ((at.saturating_sub(self.lo)) as f64 / (self.hi - self.lo) as f64).clamp(0.0, 1.0)
    }

    /// Work up to id `at` is done.
    pub fn update(&mut self, at: u64) {
        let frac = self.fraction(at);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = self.ids as f64 / elapsed.max(1e-3);
        let msg = format!(
            "{} groups ({} already done), {} ids, {:.0} ids/s",
            self.groups, self.skipped, self.ids, rate
        );
        if let Some(bar) = &self.bar {
            bar.set_position((frac * 1000.0) as u64);
            bar.set_message(msg);
        } else if self.last_log.elapsed() >= self.every {
            self.last_log = Instant::now();
            let eta = if frac > 0.0 {
                Duration::from_secs_f64(elapsed / frac - elapsed)
            } else {
                Duration::ZERO
            };
            tracing::info!(
                groups = self.groups,
                skipped = self.skipped,
                ids = self.ids,
                ids_per_s = rate as u64,
                percent = (frac * 100.0) as u64,
                eta = %humantime::format_duration(Duration::from_secs(eta.as_secs())),
                "{}",
                self.doing
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
