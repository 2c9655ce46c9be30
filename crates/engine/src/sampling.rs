//! Sampling parameters and a seeded sampler that is a pure function of (logits row, params,
//! seed, tokens generated so far): nothing here looks at other sequences of a batch.

use std::collections::BTreeMap;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sortition_types::SamplingRecord;

use crate::error::{EngineError, Result};

/// OpenAI-style sampling settings. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    pub seed: u64,
    pub max_tokens: u32,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            max_tokens: 128,
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// Upper bound on stop strings, as in the OpenAI API.
pub const MAX_STOP: usize = 4;

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: u32) -> Self {
        SamplingParams {
            max_tokens,
            ..Default::default()
        }
    }

    /// Checks ranges; every error is `InvalidParams`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidParams(m));
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            return bad(format!("temperature {} not in [0, 2]", self.temperature));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad(format!("top_p {} not in (0, 1]", self.top_p));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} {v} not in [-2, 2]"));
            }
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.stop.len() > MAX_STOP || self.stop.iter().any(|s| s.is_empty()) {
            return bad(format!("at most {MAX_STOP} non-empty stop strings"));
        }
        Ok(())
    }

    /// The canonical integer record that goes into receipts.
    pub fn to_record(&self) -> SamplingRecord {
        let milli = |v: f32| (v as f64 * 1000.0).round() as i64;
        SamplingRecord {
            temperature_milli: milli(self.temperature).max(0) as u32,
            top_p_milli: milli(self.top_p).max(0) as u32,
            top_k: self.top_k,
            seed: self.seed,
            max_tokens: self.max_tokens,
            presence_penalty_milli: milli(self.presence_penalty) as i32,
            frequency_penalty_milli: milli(self.frequency_penalty) as i32,
            stop: self.stop.clone(),
        }
    }
}

/// Per-sequence sampler state: its own ChaCha20 stream and the counts of generated tokens.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha20Rng,
    counts: BTreeMap<u32, u32>,
}

/// Index of the largest value; ties go to the lowest index. NaN never wins.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Sorts `keys` ascending when they arrive sorted by their low 32 bits (packed keys built
/// in token-id order): a stable least-significant-digit radix sort on the high 32 bits only,
/// in digits of 11 bits, skipping a digit that every key shares. Same order as
/// `sort_unstable` for such input (tested), several times faster on a 49 152-token row.
fn sort_by_high_half(keys: &mut Vec<u64>) {
    const BITS: usize = 11;
    const BUCKETS: usize = 1 << BITS;
    debug_assert!(keys.windows(2).all(|p| p[0] as u32 <= p[1] as u32));
    let mut counts = vec![[0usize; BUCKETS]; 3];
    for &k in keys.iter() {
        for (digit, c) in counts.iter_mut().enumerate() {
            c[(k >> (32 + BITS * digit)) as usize & (BUCKETS - 1)] += 1;
        }
    }
    let mut tmp = vec![0u64; keys.len()];
    for (digit, c) in counts.iter().enumerate() {
        if c.contains(&keys.len()) {
            continue; // one bucket holds every key: this pass would not move anything
        }
        let mut start = [0usize; BUCKETS];
        let mut at = 0;
        for (s, &n) in start.iter_mut().zip(c) {
            *s = at;
            at += n;
        }
        for &k in keys.iter() {
            let b = (k >> (32 + BITS * digit)) as usize & (BUCKETS - 1);
            tmp[start[b]] = k;
            start[b] += 1;
        }
        std::mem::swap(keys, &mut tmp);
    }
}

/// The bits of `v` as a u32 whose unsigned order is `f32::total_cmp`'s order.
fn total_order_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha20Rng::seed_from_u64(params.seed);
        Sampler {
            params,
            rng,
            counts: BTreeMap::new(),
        }
    }

    /// Picks the next token from this sequence's logits row and records it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        // A copy only when penalties change it.
        let mut row = std::borrow::Cow::Borrowed(logits);
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let row = row.to_mut();
            for (&id, &n) in &self.counts {
                if let Some(v) = row.get_mut(id as usize) {
                    *v -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
        let id = if p.temperature == 0.0 {
            argmax(&row) as u32
        } else {
            self.draw(&row)
        };
        *self.counts.entry(id).or_insert(0) += 1;
        id
    }

    fn draw(&mut self, row: &[f32]) -> u32 {
        let p = &self.params;
        let t = p.temperature as f64;
        let mut order = Order::new(row, t, p.top_k);
        if order.len == 0 {
            return 0;
        }
        // 53 random bits -> uniform in [0, 1).
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        pick(row, &mut order, t, p.top_p, u)
    }
}

/// The candidates by logit descending, id ascending (a total order, so no tie is
/// ambiguous), as the first `len` of a full sort would list them, but sorted lazily: the
/// head (every logit that can weigh in the sum of probabilities) at once, the tail only if
/// a walk reaches it (almost never). Sorted as packed u64 keys: descending `total_cmp` order
/// of the logit, then the id.
struct Order {
    head: Vec<u32>,
    /// Packed keys of the rest, in id order until sorted.
    tail: Vec<u64>,
    tail_sorted: bool,
    len: usize,
    /// Every tail weight `exp((logit - max) / t)` is below `2^-54`: it cannot change a sum
    /// of at least 1 (the top candidate's weight is exactly 1 when `max` is finite).
    negligible_tail: bool,
}

impl Order {
    /// `(logit - max) / t` below this puts a candidate in the tail: `e^-38.5 < 2^-54`.
    const TAIL: f64 = -38.5;

    fn new(row: &[f32], t: f64, top_k: u32) -> Order {
        let max = row
            .iter()
            .filter(|v| !v.is_nan())
            .copied()
            .max_by(|a, b| a.total_cmp(b))
            .unwrap_or(f32::NAN) as f64;
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        for (i, v) in row.iter().enumerate().filter(|(_, v)| !v.is_nan()) {
            let key = (u64::from(!total_order_bits(*v)) << 32) | i as u64;
            // Monotonic in the logit, so the tail is a suffix of the full order.
            if (*v as f64 - max) / t < Self::TAIL {
                tail.push(key);
            } else {
                head.push(key);
            }
        }
        if head.len() < 1024 {
            head.sort_unstable();
        } else {
            sort_by_high_half(&mut head);
        }
        let total = head.len() + tail.len();
        let len = if top_k > 0 {
            total.min(top_k as usize)
        } else {
            total
        };
        Order {
            head: head.iter().map(|&k| k as u32).collect(),
            tail,
            tail_sorted: false,
            len,
            negligible_tail: max.is_finite() && t > 0.0,
        }
    }

    fn get(&mut self, i: usize) -> u32 {
        if i < self.head.len() {
            return self.head[i];
        }
        if !self.tail_sorted {
            sort_by_high_half(&mut self.tail);
            self.tail_sorted = true;
        }
        self.tail[i - self.head.len()] as u32
    }
}

/// The candidate (of `order`'s first `len`) that uniform `u` falls on, with probabilities
/// `exp((logit - max) / t)` normalized by their sum in that order, then kept to the smallest
/// prefix reaching `top_p` and normalized again.
///
/// Exactly the arithmetic of computing every exponential first (`pick_eager` in the tests,
/// checked), but lazily: the terms only shrink along the order, so once one is below a
/// quarter of the sum's last-place step, neither it nor any later one can change the sum
/// (each addition rounds back to it), and the exponentials of the tail are computed (and
/// the tail sorted) only if a running total actually walks into it.
fn pick(row: &[f32], order: &mut Order, t: f64, top_p: f32, u: f64) -> u32 {
    let max = row[order.get(0) as usize] as f64;
    let weight = |order: &mut Order, i: usize| {
        crate::math::exp_f64((row[order.get(i) as usize] as f64 - max) / t)
    };
    let mut sum = 0.0f64;
    let mut head = Vec::new();
    for i in 0..order.len {
        // The tail's weights would stop the loop below; known without touching them.
        if i >= order.head.len() && order.negligible_tail && sum >= 1.0 {
            break;
        }
        let w = weight(order, i);
        // `ulp / 4` leaves room for an exp that is not exactly monotonic; NaN never stops.
        let step = f64::from_bits(sum.to_bits() + 1) - sum;
        if sum > 0.0 && w < step / 4.0 {
            break;
        }
        head.push(w);
        sum += w;
    }
    let mut probs: Vec<f64> = head.iter().map(|w| w / sum).collect();
    let prob = |i: usize, probs: &mut Vec<f64>, order: &mut Order| {
        while probs.len() <= i {
            probs.push(weight(order, probs.len()) / sum);
        }
        probs[i]
    };
    let mut len = order.len;
    let mut scale = None;
    if top_p < 1.0 {
        let mut acc = 0.0;
        for i in 0..order.len {
            acc += prob(i, &mut probs, order);
            if acc >= top_p as f64 {
                len = i + 1;
                break;
            }
        }
        let s: f64 = (0..len).map(|i| prob(i, &mut probs, order)).sum();
        scale = Some(s);
    }
    let mut acc = 0.0;
    for i in 0..len {
        let x = prob(i, &mut probs, order);
        acc += match scale {
            Some(s) => x / s,
            None => x,
        };
        if u < acc {
            return order.get(i);
        }
    }
    order.get(len - 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn packed_sort_keys_follow_total_cmp() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut row: Vec<f32> = (0..4000)
            .map(|_| ((rng.next_u32() % 200) as f32 - 100.0) / 8.0)
            .collect();
        row.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            -1e-40,
        ]);
        let mut expect: Vec<u32> = (0..row.len() as u32).collect();
        expect.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        let mut keys: Vec<u64> = row
            .iter()
            .enumerate()
            .map(|(i, v)| (u64::from(!total_order_bits(*v)) << 32) | i as u64)
            .collect();
        keys.sort_unstable();
        let got: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn radix_sort_matches_sort_unstable_on_id_ordered_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        for n in [0, 1, 2, 255, 256, 1001, 49_152, 49_153] {
            // Logits with many ties (few distinct values), as packed keys with distinct ids.
            let mut keys: Vec<u64> = (0..n)
                .map(|i| {
                    let v = if n % 2 == 0 {
                        ((rng.next_u32() % 300) as f32 - 150.0) / 16.0
                    } else {
                        ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 40.0
                    };
                    (u64::from(!total_order_bits(v)) << 32) | i as u64
                })
                .collect();
            let mut expect = keys.clone();
            expect.sort_unstable();
            sort_by_high_half(&mut keys);
            assert_eq!(keys, expect, "n={n}");
        }
        let mut same: Vec<u64> = (0..10).map(|i| (7 << 32) | i).collect();
        let expect = same.clone();
        sort_by_high_half(&mut same);
        assert_eq!(same, expect);
    }

    /// The eager arithmetic `pick` must reproduce: every exponential, then the sums.
    pub(super) fn pick_eager(row: &[f32], idx: &[u32], t: f64, top_p: f32, u: f64) -> u32 {
        let max = row[idx[0] as usize] as f64;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| crate::math::exp_f64((row[i as usize] as f64 - max) / t))
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, x) in probs.iter().enumerate() {
                acc += x;
                if acc >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        let mut acc = 0.0;
        for (i, x) in probs.iter().enumerate() {
            acc += x;
            if u < acc {
                return idx[i];
            }
        }
        idx[probs.len() - 1]
    }

    /// The former draw: a full sort, then `pick_eager`.
    fn draw_eager(row: &[f32], t: f64, top_k: u32, top_p: f32, u: f64) -> Option<u32> {
        let mut keys: Vec<u64> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, v)| (u64::from(!total_order_bits(*v)) << 32) | i as u64)
            .collect();
        keys.sort_unstable();
        let mut idx: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
        if top_k > 0 {
            idx.truncate(top_k as usize);
        }
        (!idx.is_empty()).then(|| pick_eager(row, &idx, t, top_p, u))
    }

    #[test]
    fn lazy_pick_equals_eager_pick() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        for case in 0..240 {
            let n = [5, 100, 3000, 49_152][case % 4];
            let spread = [1.0, 8.0, 30.0, 200.0][case / 4 % 4];
            let mut row: Vec<f32> = (0..n)
                .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * spread)
                .collect();
            match case % 11 {
                0 => row[n / 2] = f32::NEG_INFINITY,
                1 => row[n / 3] = f32::NAN,
                2 => row[n / 4] = f32::INFINITY,
                3 => row.iter_mut().for_each(|v| *v = f32::NEG_INFINITY),
                4 => row.iter_mut().for_each(|v| *v = f32::NAN),
                _ => {}
            }
            let t = [0.05, 0.7, 1.0, 2.0][case / 16 % 4];
            let top_k = [0, 1, 40, 2000][case / 64 % 4];
            for top_p in [1.0, 0.95, 0.5, 0.999_999] {
                // Uniform draws, and draws at the very end of [0, 1) that walk into the tail.
                for u in [
                    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64,
                    1.0 - f64::EPSILON / 2.0,
                    1.0 - 1e-12,
                ] {
                    let mut order = Order::new(&row, t, top_k);
                    let lazy = (order.len > 0).then(|| pick(&row, &mut order, t, top_p, u));
                    assert_eq!(
                        lazy,
                        draw_eager(&row, t, top_k, top_p, u),
                        "case {case} t {t} top_k {top_k} top_p {top_p} u {u}"
                    );
                }
            }
        }
    }

    #[test]
    fn validate_rejects_out_of_range() {
        assert!(SamplingParams::default().validate().is_ok());
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                max_tokens: 0,
                ..Default::default()
            },
            SamplingParams {
                presence_penalty: 3.0,
                ..Default::default()
            },
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
        ] {
            assert!(
                matches!(p.validate(), Err(EngineError::InvalidParams(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn record_uses_milli_units() {
        let p = SamplingParams {
            temperature: 0.7,
            top_p: 0.95,
            presence_penalty: -0.5,
            ..Default::default()
        };
        let r = p.to_record();
        assert_eq!(
            (r.temperature_milli, r.top_p_milli, r.presence_penalty_milli),
            (700, 950, -500)
        );
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let row: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 / 4.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed,
                top_k: 50,
                top_p: 0.9,
                ..Default::default()
            });
            (0..32).map(|_| s.sample(&row)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn greedy_ties_go_to_lowest_id_and_penalty_applies() {
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 1.0,
            ..SamplingParams::greedy(4)
        });
        let row = [1.0, 3.0, 3.0, 2.5];
        assert_eq!(s.sample(&row), 1);
        assert_eq!(s.sample(&row), 2);
        assert_eq!(s.sample(&row), 3);
    }
}
