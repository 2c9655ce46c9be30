//! A per-node circuit breaker: closed → open after N consecutive failures → half-open after a
//! cooldown, where exactly one probe request is let through; its outcome closes or reopens.
//!
//! Time is passed in (`now: Instant`), never read here, so tests move it by hand.

use std::time::{Duration, Instant};

/// When to open and how long to stay open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses traffic before letting one probe through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows; counts consecutive failures.
    Closed { failures: u32 },
    /// No traffic until `until`.
    Open { until: Instant },
    /// The cooldown is over: one probe may go; `probing` once it has.
    HalfOpen { probing: bool },
}

/// One node's breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    /// Thresholds.
    cfg: BreakerConfig,
    /// Current state.
    state: BreakerState,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        CircuitBreaker {
            cfg,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// The state as of `now` (an open breaker whose cooldown ended reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                BreakerState::HalfOpen { probing: false }
            }
            s => s,
        }
    }

    /// Whether a request may be sent now.
    pub fn allows(&self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing } => !probing,
        }
    }

    /// A request was sent. In half-open, it is the probe; no other goes until it ends.
    pub fn on_dispatch(&mut self, now: Instant) {
        if let BreakerState::HalfOpen { .. } = self.state(now) {
            self.state = BreakerState::HalfOpen { probing: true };
        }
    }

    /// A request succeeded: the breaker closes and the failure count resets.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// A request failed (5xx, timeout, connection error).
    pub fn on_failure(&mut self, now: Instant) {
        let open = BreakerState::Open {
            until: now + self.cfg.cooldown,
        };
        self.state = match self.state(now) {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.cfg.failure_threshold {
                    open
                } else {
                    BreakerState::Closed { failures }
                }
            }
            BreakerState::HalfOpen { .. } => open,
            s @ BreakerState::Open { .. } => s,
        };
    }

    /// The node delivered something its own signed receipt contradicts: not a fault that
    /// retries fix, so the breaker opens at once, whatever the count.
    pub fn trip(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.cfg.cooldown,
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        })
    }

    #[test]
    fn a_contradicted_receipt_opens_the_breaker_at_once() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_success();
        b.trip(t0);
        assert!(!b.allows(t0));
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed { failures: 2 });
        b.on_failure(t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Open {
                until: t0 + Duration::from_secs(10)
            }
        );
        assert!(!b.allows(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn half_open_lets_one_probe_then_closes_or_reopens() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen { probing: false });
        assert!(b.allows(t1));
        b.on_dispatch(t1);
        assert!(!b.allows(t1), "only one probe at a time");
        b.on_failure(t1);
        assert_eq!(
            b.state(t1),
            BreakerState::Open {
                until: t1 + Duration::from_secs(10)
            }
        );

        let t2 = t1 + Duration::from_secs(10);
        b.on_dispatch(t2);
        b.on_success();
        assert_eq!(b.state(t2), BreakerState::Closed { failures: 0 });
        assert!(b.allows(t2));
    }
}
