//! The market score: a weighted sum of normalized terms, each in `[0, 1]`, lower is better.
//!
//! | term        | normalization                                                        |
//! |-------------|----------------------------------------------------------------------|
//! | price       | premium over the cheapest candidate `p`, as `p / (1 + p)`             |
//! | latency     | EWMA TTFT and inter-token latency, each `x / (x + reference)`        |
//! | load        | in-flight + queued, `q / (q + reference)`                             |
//! | errors      | EWMA error rate                                                      |
//! | uptime      | `1 - ` EWMA of health checks                                         |
//! | reputation  | `1 - reputation/1000`, averaged with `s / (s + 1)` for `s` slashes    |
//! | collateral  | `1 - collateral / largest collateral among candidates`               |
//! | privacy     | 0 for a confidential node, 1 otherwise                               |
//!
//! Scores are `f64` because they rank, never pay: money stays in integer `Amount`s.

use std::time::Duration;

use super::NodeView;

/// Weights of the score's terms and the references that normalize them.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterWeights {
    pub price: f64,
    pub latency: f64,
    pub load: f64,
    pub errors: f64,
    pub uptime: f64,
    pub reputation: f64,
    pub collateral: f64,
    pub privacy: f64,
    /// A time to first token that scores 0.5 on its half of the latency term.
    pub ref_ttft_ms: f64,
    /// An inter-token latency that scores 0.5 on its half of the latency term.
    pub ref_itl_ms: f64,
    /// A queue (in flight + queued) that scores 0.5 on the load term.
    pub ref_queue: f64,
    /// Weight of the newest observation in every EWMA.
    pub ewma_alpha: f64,
    /// Power of two choices draws among this many best-scored candidates.
    pub top_k: usize,
}

impl Default for RouterWeights {
    fn default() -> Self {
        RouterWeights {
            price: 1.0,
            latency: 0.5,
            load: 1.0,
            errors: 1.0,
            uptime: 0.5,
            reputation: 0.3,
            collateral: 0.1,
            privacy: 0.05,
            ref_ttft_ms: 500.0,
            ref_itl_ms: 50.0,
            ref_queue: 4.0,
            ewma_alpha: 0.2,
            top_k: 4,
        }
    }
}

/// What the gateway has observed of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStats {
    /// EWMA of time to first token; `None` until the first success.
    pub ttft_ms: Option<f64>,
    /// EWMA of inter-token latency; `None` until the first success.
    pub itl_ms: Option<f64>,
    /// Requests this gateway has sent and not yet finished.
    pub in_flight: u32,
    /// The node's own queue depth, from its last health report.
    pub queue_depth: u32,
    /// EWMA of failures per request (0 = never fails).
    pub error_rate: f64,
    /// EWMA of health checks passed (1 = always up).
    pub uptime: f64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

impl Default for NodeStats {
    fn default() -> Self {
        NodeStats {
            ttft_ms: None,
            itl_ms: None,
            in_flight: 0,
            queue_depth: 0,
            error_rate: 0.0,
            uptime: 1.0,
            consecutive_failures: 0,
        }
    }
}

fn ewma(old: f64, new: f64, alpha: f64) -> f64 {
    alpha * new + (1.0 - alpha) * old
}

fn saturating(x: f64, reference: f64) -> f64 {
    if x <= 0.0 || reference <= 0.0 {
        0.0
    } else {
        x / (x + reference)
    }
}

impl NodeStats {
    pub(crate) fn record_success(&mut self, ttft: Duration, itl: Option<Duration>, alpha: f64) {
        let ttft = ttft.as_secs_f64() * 1000.0;
        self.ttft_ms = Some(self.ttft_ms.map_or(ttft, |o| ewma(o, ttft, alpha)));
        if let Some(itl) = itl {
            let itl = itl.as_secs_f64() * 1000.0;
            self.itl_ms = Some(self.itl_ms.map_or(itl, |o| ewma(o, itl, alpha)));
        }
        self.error_rate = ewma(self.error_rate, 0.0, alpha);
        self.consecutive_failures = 0;
    }

    pub(crate) fn record_failure(&mut self, alpha: f64) {
        self.error_rate = ewma(self.error_rate, 1.0, alpha);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
    }

    pub(crate) fn record_health(&mut self, healthy: bool, queue_depth: u32, alpha: f64) {
        self.uptime = ewma(self.uptime, if healthy { 1.0 } else { 0.0 }, alpha);
        self.queue_depth = queue_depth;
    }

    /// Requests ahead of a new one on this node.
    pub fn load(&self) -> u32 {
        self.in_flight.saturating_add(self.queue_depth)
    }
}

/// What the score compares against: the best of the candidate set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Baseline {
    /// The lowest blended price among candidates.
    pub cheapest: u64,
    /// The largest collateral among candidates.
    pub max_collateral: u64,
    /// The mean latency term of candidates with observations: what a node not yet observed
    /// scores, so it is neither starved nor flooded.
    pub typical_latency: f64,
}

impl Baseline {
    pub(crate) fn of<'a>(
        nodes: impl Iterator<Item = (&'a NodeView, &'a NodeStats)>,
        w: &RouterWeights,
    ) -> Baseline {
        let mut b = Baseline {
            cheapest: u64::MAX,
            max_collateral: 0,
            typical_latency: 0.5,
        };
        let (mut sum, mut known) = (0.0, 0u32);
        for (n, s) in nodes {
            b.cheapest = b.cheapest.min(blended_price(n));
            b.max_collateral = b.max_collateral.max(n.collateral.0);
            if let Some(l) = latency_term(s, w) {
                sum += l;
                known += 1;
            }
        }
        if known > 0 {
            b.typical_latency = sum / f64::from(known);
        }
        b
    }
}

/// The latency term, once the node has been observed.
fn latency_term(s: &NodeStats, w: &RouterWeights) -> Option<f64> {
    let ttft = saturating(s.ttft_ms?, w.ref_ttft_ms);
    let itl = s.itl_ms.map_or(ttft, |t| saturating(t, w.ref_itl_ms));
    Some(0.5 * ttft + 0.5 * itl)
}

/// Input plus output price per million tokens.
pub fn blended_price(n: &NodeView) -> u64 {
    n.price_in.0.saturating_add(n.price_out.0)
}

/// The node's score against the candidate set's baseline; lower is better.
pub(crate) fn score(view: &NodeView, stats: &NodeStats, base: Baseline, w: &RouterWeights) -> f64 {
    let price = blended_price(view) as f64;
    let premium = if base.cheapest == 0 {
        if price > 0.0 { 1.0 } else { 0.0 }
    } else {
        (price - base.cheapest as f64).max(0.0) / base.cheapest as f64
    };
    let price_term = premium / (1.0 + premium);
    let latency_term = latency_term(stats, w).unwrap_or(base.typical_latency);
    let load_term = saturating(f64::from(stats.load()), w.ref_queue);
    let uptime_term = (1.0 - stats.uptime).clamp(0.0, 1.0);
    let rep = f64::from(view.reputation.min(1000)) / 1000.0;
    let slashes = f64::from(view.slashes);
    let reputation_term = 0.5 * (1.0 - rep) + 0.5 * slashes / (slashes + 1.0);
    let collateral_term = if base.max_collateral == 0 {
        0.0
    } else {
        1.0 - view.collateral.0 as f64 / base.max_collateral as f64
    };
    let privacy_term = if view.confidential { 0.0 } else { 1.0 };
    w.price * price_term
        + w.latency * latency_term
        + w.load * load_term
        + w.errors * stats.error_rate.clamp(0.0, 1.0)
        + w.uptime * uptime_term
        + w.reputation * reputation_term
        + w.collateral * collateral_term
        + w.privacy * privacy_term
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ewma_moves_toward_observations() {
        let mut s = NodeStats::default();
        s.record_success(
            Duration::from_millis(100),
            Some(Duration::from_millis(10)),
            0.5,
        );
        assert_eq!(s.ttft_ms, Some(100.0));
        s.record_success(Duration::from_millis(300), None, 0.5);
        assert_eq!(s.ttft_ms, Some(200.0));
        assert_eq!(s.itl_ms, Some(10.0));
        s.record_failure(0.5);
        s.record_failure(0.5);
        assert_eq!(s.consecutive_failures, 2);
        assert!((s.error_rate - 0.75).abs() < 1e-9);
        s.record_health(false, 7, 0.5);
        assert_eq!((s.uptime, s.load()), (0.5, 7));
    }
}
