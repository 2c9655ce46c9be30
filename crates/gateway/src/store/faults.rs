//! What the store knows about its own health: which kinds of write are failing, since when and
//! why, for `/health`; and a log that says each failure once, then how often it repeated at
//! most once per [`REPEAT_LOG_EVERY`], then that it recovered — never once per failed request
//! or per checkpoint tick (a full disk used to write thousands of identical lines a minute).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a failure that keeps happening is logged again, with its count.
pub const REPEAT_LOG_EVERY: Duration = Duration::from_secs(30);

/// A kind of storage work whose failures are tracked apart.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Work {
    /// Writes that requests depend on: credit holds, bills, payloads.
    Writes,
    /// SQLite's background WAL checkpoints (what makes commits reach the disk).
    Checkpoints,
    /// Releasing a credit hold after its request failed (retried until it succeeds).
    Releases,
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Work::Writes => "writes",
            Work::Checkpoints => "WAL checkpoints",
            Work::Releases => "credit hold releases",
        })
    }
}

/// One kind of work that is failing.
#[derive(Debug)]
struct Failing {
    since: Instant,
    last_logged: Instant,
    /// Failures since the last log line.
    unlogged: u64,
    /// Failures since it began.
    total: u64,
    last_error: String,
}

/// The store's failing kinds of work. Shared by every clone of the store.
#[derive(Debug, Default)]
pub struct Faults {
    failing: Mutex<BTreeMap<Work, Failing>>,
}

impl Faults {
    /// Records a failure of `work`; logs it if it is the first, or if the last line about it
    /// is older than [`REPEAT_LOG_EVERY`].
    pub fn failed(&self, work: Work, error: &dyn fmt::Display) {
        let now = Instant::now();
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let f = failing.entry(work).or_insert_with(|| {
            tracing::error!(%work, %error, "gateway store: {work} failing");
            Failing {
                since: now,
                last_logged: now,
                unlogged: 0,
                total: 0,
                last_error: String::new(),
            }
        });
        f.total += 1;
        if f.total > 1 {
            f.unlogged += 1;
        }
        f.last_error = error.to_string();
        if f.unlogged > 0 && now.duration_since(f.last_logged) >= REPEAT_LOG_EVERY {
            tracing::error!(
                %work,
                error = %f.last_error,
                repeated = f.unlogged,
                failing_for_s = now.duration_since(f.since).as_secs(),
                "gateway store: {work} still failing"
            );
            f.last_logged = now;
            f.unlogged = 0;
        }
    }

    /// Records a success of `work`: if it was failing, logs the recovery.
    pub fn ok(&self, work: Work) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = failing.remove(&work) {
            tracing::warn!(
                %work,
                failures = f.total,
                failed_for_ms = f.since.elapsed().as_millis() as u64,
                "gateway store: {work} recovered"
            );
        }
    }

    /// Why the store is degraded, if it is: each failing kind of work, for how long, and its
    /// last error.
    pub fn degraded(&self) -> Option<String> {
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing.is_empty() {
            return None;
        }
        let why: Vec<String> = failing
            .iter()
            .map(|(work, f)| {
                format!(
                    "{work} failing for {}s ({} times): {}",
                    f.since.elapsed().as_secs(),
                    f.total,
                    f.last_error
                )
            })
            .collect();
        Some(why.join("; "))
    }

    /// Whether `work` is failing now.
    pub fn is_failing(&self, work: Work) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&work)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_reported_until_a_success() {
        let f = Faults::default();
        assert_eq!(f.degraded(), None);
        for _ in 0..1000 {
            f.failed(Work::Writes, &"database or disk is full");
        }
        f.failed(Work::Checkpoints, &"database or disk is full");
        let why = f.degraded().unwrap();
        assert!(
            why.contains("writes failing") && why.contains("(1000 times)"),
            "{why}"
        );
        assert!(why.contains("WAL checkpoints failing"), "{why}");
        f.ok(Work::Writes);
        assert!(!f.is_failing(Work::Writes));
        f.ok(Work::Checkpoints);
        assert_eq!(f.degraded(), None);
    }
}
