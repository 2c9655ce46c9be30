//! Admission control: per-key request rates and a global cap on requests in flight.
//!
//! Owns: one GCRA limiter (governor) per API key, sized from the key's requests-per-minute
//! setting and rebuilt when that setting changes, which answers with a Retry-After in whole
//! seconds; and a semaphore that turns overload into an immediate 429 instead of a queue.
//!
//! Does not own: where the rpm setting comes from (the store) or the HTTP response (the
//! server turns [`LimitError`] into `ApiError` through the `From` impl here).
//!
//! Also the credit check every paid request passes before it is sent ([`affordable`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use sortition_api::{ApiError, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::store::KeyId;

/// Why a request was not admitted. Both are 429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit of {rpm} requests per minute reached; retry in {retry_after_secs} s")]
    RateLimited { rpm: u32, retry_after_secs: u64 },
    #[error("the gateway is at capacity ({max} requests in flight); retry shortly")]
    Overloaded { max: usize },
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        let (code, secs) = match &e {
            LimitError::RateLimited {
                retry_after_secs, ..
            } => ("rate_limit_exceeded", *retry_after_secs),
            LimitError::Overloaded { .. } => ("gateway_overloaded", 1),
        };
        ApiError::new(ErrorKind::RateLimited, code, e.to_string()).with_retry_after(secs)
    }
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Each key's limiter, with the rpm it was built for.
type LimiterMap<C> = HashMap<KeyId, (u32, Arc<Limiter<C>>)>;

/// Per-key rate limiters. Cheap to share behind an `Arc`; the clock is injectable for tests
/// (`governor::clock::FakeRelativeClock`).
pub struct KeyRateLimiter<C: Clock = DefaultClock> {
    /// The clock every limiter reads; cloned into each.
    clock: C,
    /// One limiter per key, with the rpm it was built for.
    limiters: Mutex<LimiterMap<C>>,
}

impl KeyRateLimiter<DefaultClock> {
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for KeyRateLimiter<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> KeyRateLimiter<C> {
    pub fn with_clock(clock: C) -> Self {
        KeyRateLimiter {
            clock,
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request for `key` allowed `rpm` requests per minute (burst of `rpm`), or says
    /// how many seconds to wait (at least 1).
    pub fn check(&self, key: KeyId, rpm: u32) -> Result<(), LimitError> {
        let limiter = self.limiter(key, rpm);
        match limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let mut secs = wait.as_secs();
                if wait.subsec_nanos() > 0 || secs == 0 {
                    secs += 1;
                }
                Err(LimitError::RateLimited {
                    rpm,
                    retry_after_secs: secs,
                })
            }
        }
    }

    /// Drops the state of a key (revoked or idle), so the map does not grow forever.
    pub fn forget(&self, key: KeyId) {
        self.lock().remove(&key);
    }

    /// How many keys have live limiters.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterMap<C>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.limiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limiter(&self, key: KeyId, rpm: u32) -> Arc<Limiter<C>> {
        let mut map = self.lock();
        if let Some((r, l)) = map.get(&key)
            && *r == rpm
        {
            return l.clone();
        }
        let burst = NonZeroU32::new(rpm).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(RateLimiter::direct_with_clock(
            Quota::per_minute(burst),
            self.clock.clone(),
        ));
        map.insert(key, (rpm, limiter.clone()));
        limiter
    }
}

/// A global cap on requests in flight. Cloning shares the cap.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit {
    /// Permits left; one per request in flight.
    sem: Arc<Semaphore>,
    /// The cap, for error messages.
    max: usize,
}

impl ConcurrencyLimit {
    pub fn new(max: usize) -> Self {
        ConcurrencyLimit {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Takes a slot without waiting, or fails with [`LimitError::Overloaded`] (a 429). The slot
    /// is given back when the permit drops (the response is finished or abandoned).
    pub fn try_acquire(&self) -> Result<OwnedSemaphorePermit, LimitError> {
        self.sem
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::Overloaded { max: self.max })
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

/// Refuses (429 `insufficient_quota`) a request that may cost `need` when the key's credits or budget cannot
/// cover it, so that a request is never served unpaid.
pub(crate) fn affordable(
    key: &crate::store::AuthedKey,
    need: sortition_types::Amount,
) -> Result<(), ApiError> {
    if key.credits < need {
        return Err(ApiError::new(
            ErrorKind::QuotaExceeded,
            "insufficient_credits",
            format!(
                "this request may cost up to {need}; the balance is {}",
                key.credits
            ),
        ));
    }
    if let Some(budget) = key.budget
        && key.spent.checked_add(need).is_none_or(|s| s > budget)
    {
        return Err(ApiError::new(
            ErrorKind::QuotaExceeded,
            "key_budget_exceeded",
            format!(
                "this key's budget {budget} would be exceeded (spent {})",
                key.spent
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn rate_limit_gives_retry_after_and_recovers() {
        let clock = FakeRelativeClock::default();
        let rl = KeyRateLimiter::with_clock(clock.clone());
        let k = KeyId(1);
        for _ in 0..3 {
            rl.check(k, 3).expect("within burst");
        }
        let err = rl.check(k, 3).expect_err("over the limit");
        // 3 per minute: one cell every 20 s.
        assert_eq!(
            err,
            LimitError::RateLimited {
                rpm: 3,
                retry_after_secs: 20
            }
        );
        let api: ApiError = err.into();
        assert_eq!(api.status().as_u16(), 429);
        assert_eq!(api.retry_after_secs, Some(20));
        clock.advance(Duration::from_secs(20));
        rl.check(k, 3).expect("a cell replenished");
        // Other keys are independent.
        rl.check(KeyId(2), 1).expect("fresh key");
    }

    #[test]
    fn changing_rpm_rebuilds_the_limiter() {
        let rl = KeyRateLimiter::with_clock(FakeRelativeClock::default());
        rl.check(KeyId(1), 1).expect("first");
        assert!(rl.check(KeyId(1), 1).is_err());
        rl.check(KeyId(1), 5).expect("new setting, new bucket");
        rl.forget(KeyId(1));
        assert!(rl.is_empty());
    }

    #[test]
    fn concurrency_limit_turns_overload_into_429() {
        let cap = ConcurrencyLimit::new(2);
        let a = cap.try_acquire().expect("1");
        let _b = cap.try_acquire().expect("2");
        let err = cap.try_acquire().expect_err("full");
        assert_eq!(ApiError::from(err).status().as_u16(), 429);
        drop(a);
        assert_eq!(cap.available(), 1);
        let _c = cap.try_acquire().expect("slot returned");
    }
}
