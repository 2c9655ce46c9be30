//! What the sampling math predicts, and how sure a measurement is.
//!
//! Two predictions per strategy:
//! - `facts`: FACTS.md's `d = q (1 - f^k)`, with `f` the share of drawn nodes that would not
//!   report the cheat (lazy, silent or colluding for this executor).
//! - `ledger`: the same audit stage, then what the ledger actually does with a mismatch: a
//!   committee of `2k + 1` peers decides by majority of revealed votes (and, for a withheld
//!   request, only when nobody judged it and a strict majority says it never got it). This is
//!   the one measurements are compared with; the two agree when nobody covers for cheats.
//!
//! Draws are treated as independent (binomial); the ledger draws without replacement from
//! the executor's class, which matters only for small classes.

use crate::config::Strategy;

/// How a drawn auditor or committee member votes on one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Mismatch,
    Match,
    Unavailable,
    /// Never commits (slashed for the missed deadline).
    Silent,
}

/// The vote of a node of strategy `voter` on a receipt served by an `executor`: `cheat` when
/// the receipt is wrong, `withheld` when the executor keeps the payload from its auditors.
pub fn vote(voter: Strategy, executor: Strategy, cheat: bool, withheld: bool) -> Vote {
    match voter {
        Strategy::LazySkip => Vote::Silent,
        Strategy::LazyCopy => Vote::Match,
        _ if withheld => Vote::Unavailable,
        Strategy::Colluder if executor == Strategy::Colluder => Vote::Match,
        _ if cheat => Vote::Mismatch,
        _ => Vote::Match,
    }
}

/// Probability of each vote for a node drawn from `shares` (strategy, share of nodes).
pub fn vote_probs(
    shares: &[(Strategy, f64)],
    executor: Strategy,
    cheat: bool,
    withheld: bool,
) -> [f64; 4] {
    let mut p = [0.0; 4];
    for (s, share) in shares {
        let i = match vote(*s, executor, cheat, withheld) {
            Vote::Mismatch => 0,
            Vote::Match => 1,
            Vote::Unavailable => 2,
            Vote::Silent => 3,
        };
        p[i] += share;
    }
    let total: f64 = p.iter().sum();
    if total > 0.0 {
        p.iter_mut().for_each(|x| *x /= total);
    }
    p
}

fn choose(n: u32, k: u32) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * f64::from(n - i) / f64::from(i + 1))
}

/// Sum over all ways `n` draws split into (mismatch, match, unavailable, silent) of the
/// probability of that split where `pred` holds.
fn over_splits(n: u32, p: [f64; 4], pred: impl Fn(u32, u32, u32, u32) -> bool) -> f64 {
    let mut total = 0.0;
    for a in 0..=n {
        for b in 0..=n - a {
            for c in 0..=n - a - b {
                let d = n - a - b - c;
                if !pred(a, b, c, d) {
                    continue;
                }
                let ways = choose(n, a) * choose(n - a, b) * choose(n - a - b, c);
                total += ways
                    * p[0].powi(a as i32)
                    * p[1].powi(b as i32)
                    * p[2].powi(c as i32)
                    * p[3].powi(d as i32);
            }
        }
    }
    total
}

/// Detection predictions for one cheat receipt of `executor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub facts: f64,
    pub ledger: f64,
}

/// Per cheat receipt of a node of strategy `executor`, with audit probability `q` and `k`
/// auditors per sampled receipt.
pub fn detection(shares: &[(Strategy, f64)], executor: Strategy, q: f64, k: u8) -> Prediction {
    let k = u32::from(k);
    let committee = 2 * k + 1;
    let withheld = executor == Strategy::Withhold;
    let p = vote_probs(shares, executor, true, withheld);
    if withheld {
        // Nobody judges (no Match, no Mismatch) and a strict majority says Unavailable, at the
        // audit and again in the committee.
        let stage = |n: u32| over_splits(n, p, |a, b, c, _| a == 0 && b == 0 && 2 * c > n);
        let f = 1.0 - p[2];
        return Prediction {
            facts: q * (1.0 - f.powi(k as i32)),
            ledger: q * stage(k) * stage(committee),
        };
    }
    let f = 1.0 - p[0];
    let disputed = 1.0 - f.powi(k as i32);
    let upheld = over_splits(committee, p, |a, b, _, _| a > b);
    Prediction {
        facts: q * disputed,
        ledger: q * disputed * upheld,
    }
}

/// Probability that a dispute over an honest auditor's (true) mismatch on a colluder's cheat
/// is lost to a captured committee (the honest auditor is then slashed for a wrong verdict).
pub fn committee_capture(shares: &[(Strategy, f64)], k: u8) -> f64 {
    let p = vote_probs(shares, Strategy::Colluder, true, false);
    over_splits(2 * u32::from(k) + 1, p, |a, b, _, _| b > a)
}

/// The 95 % Wilson score interval for `hits` out of `n`.
pub fn wilson(hits: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let p = hits as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Expected undetected cheats before the first catch, `(1 - d) / d` (infinite for `d = 0`).
pub fn cheats_before_catch(d: f64) -> f64 {
    if d <= 0.0 {
        f64::INFINITY
    } else {
        (1.0 - d) / d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_honest_detects_at_q() {
        let shares = [(Strategy::Honest, 0.9), (Strategy::AlwaysCheat, 0.1)];
        let p = detection(&shares, Strategy::AlwaysCheat, 0.01, 2);
        assert!((p.facts - 0.01).abs() < 1e-12);
        assert!((p.ledger - 0.01).abs() < 1e-12);
    }

    #[test]
    fn colluders_lower_detection_below_facts() {
        let shares = [(Strategy::Honest, 0.7), (Strategy::Colluder, 0.3)];
        let p = detection(&shares, Strategy::Colluder, 0.01, 2);
        assert!((p.facts - 0.01 * (1.0 - 0.09)).abs() < 1e-12);
        assert!(p.ledger < p.facts);
        assert!(committee_capture(&shares, 2) > 0.1);
    }

    #[test]
    fn wilson_brackets_the_rate() {
        let (lo, hi) = wilson(50, 1000);
        assert!(lo < 0.05 && hi > 0.05 && lo > 0.03 && hi < 0.07);
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
