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

/// Index of the largest value; ties go to the lowest index (`-0` and `+0` tie). NaN never
/// wins (a row of NaN gives its last index, an empty row 0).
pub fn argmax(row: &[f32]) -> usize {
    // The maximum sixteen lanes at a time (a compare per element, no branch: the serial
    // loop's compare-and-branch chain is several times slower on a 49 152-token row), then
    // its first position.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        max = if x > max { x } else { max };
    }
    // No element equals the maximum only when every one is NaN.
    row.iter()
        .position(|&v| v == max)
        .unwrap_or(row.len().saturating_sub(1))
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
        let u = uniform(&mut self.rng);
        draw(row, p.temperature, p.top_k, p.top_p, u)
    }
}

/// The next uniform in [0, 1) of a sampler's stream: 53 random bits. A sampled token takes
/// exactly one, so the `i`-th sampled token of a sequence is drawn with the `i`-th uniform of
/// `ChaCha20Rng::seed_from_u64(seed)`.
pub(crate) fn uniform(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The uniforms of the first `n` sampled tokens of a sequence seeded with `seed`.
pub(crate) fn uniforms(seed: u64, n: usize) -> Vec<f64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| uniform(&mut rng)).collect()
}

/// A claimed token checked against the seeded draw: the token the sampler picks from this row
/// with the sequence's uniform for this position, and how far that uniform falls from the
/// claimed token's interval of the walk (0 when it is inside: the claimed token is the one
/// drawn). Intervals are probabilities, so `miss` is in [0, 1]; 1 also stands for a token
/// the draw cannot pick at all (outside `top_k`, outside the nucleus, or of weight 0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Draw {
    pub drawn: u32,
    pub miss: f32,
}

/// [`Draw`] of `token` in `row` under `params` (temperature > 0) with uniform `u`.
pub(crate) fn check_draw(row: &[f32], params: &SamplingParams, u: f64, token: u32) -> Draw {
    let (t, k, p) = (params.temperature, params.top_k, params.top_p);
    let drawn = draw(row, t, k, p, u);
    let miss = if drawn == token {
        0.0
    } else {
        match token_interval(row, t, k, p, token) {
            Some((lo, _)) if u < lo => (lo - u) as f32,
            Some((_, hi)) if u >= hi => (u - hi) as f32,
            // Inside by this sum's rounding while the draw's walk picked a neighbour: a miss
            // smaller than any tolerance.
            Some(_) => f32::MIN_POSITIVE,
            None => 1.0,
        }
    };
    Draw { drawn, miss }
}

/// The interval of uniforms for which [`draw`] picks `token` (its walk, in the same order
/// and with the same weights, over a full sort); `None` when no uniform picks it.
fn token_interval(
    row: &[f32],
    t: f32,
    top_k_count: u32,
    top_p: f32,
    token: u32,
) -> Option<(f64, f64)> {
    if row.get(token as usize)?.is_nan() {
        return None;
    }
    let max = top_logit(row)?;
    if !max.is_finite() {
        return None;
    }
    let candidates = row.iter().filter(|v| !v.is_nan()).count();
    let top_k = top_k_count > 0 && (top_k_count as usize) < candidates;
    let mut w: Vec<f32> = row
        .iter()
        .map(|&v| {
            if v.is_nan() {
                f32::NEG_INFINITY
            } else {
                (v - max) / t
            }
        })
        .collect();
    crate::math::exp_sub_in_place(&mut w, 0.0);
    if top_k {
        let (ids, z) = top_k_order(row, top_k_count, &w);
        return nucleus_interval(&ids, &w, z, top_p, token);
    }
    let z: f64 = w.iter().map(|&x| f64::from(x)).sum();
    if top_p >= 1.0 {
        let mut acc = 0.0f64;
        for (i, &x) in w.iter().enumerate().filter(|(_, x)| **x > 0.0) {
            let next = acc + f64::from(x);
            if i == token as usize {
                return Some((acc / z, next / z));
            }
            acc = next;
        }
        return None;
    }
    let mut keys = candidates_keys(row);
    sort_keys(&mut keys);
    let ids: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    nucleus_interval(&ids, &w, z, top_p, token)
}

/// `token`'s interval in [`nucleus`]'s walk over the whole order `ids`.
fn nucleus_interval(ids: &[u32], w: &[f32], z: f64, top_p: f32, token: u32) -> Option<(f64, f64)> {
    let prob = |i: u32| f64::from(w[i as usize]) / z;
    let mut len = ids.len();
    let mut acc = 0.0;
    for (n, &i) in ids.iter().enumerate() {
        acc += prob(i);
        if acc >= f64::from(top_p) {
            len = n + 1;
            break;
        }
    }
    let s: f64 = ids[..len].iter().map(|&i| prob(i)).sum();
    let mut acc = 0.0;
    for &i in &ids[..len] {
        let next = acc + prob(i) / s;
        if i == token {
            return Some((acc, next));
        }
        acc = next;
    }
    None
}

/// Packed sort key of logit `v` of token `i`: ascending keys list logits descending
/// (`total_cmp` order), ties by id ascending.
fn key(i: usize, v: f32) -> u64 {
    (u64::from(!total_order_bits(v)) << 32) | i as u64
}

/// Width of a weight class in [`draw`]'s nucleus search, in units of `(max - logit) / t`.
const CLASS_WIDTH: f32 = 0.25;
/// Weight classes; the last takes every weight below `e^-40`.
const CLASSES: usize = 160;
// A class fits a byte, with `u8::MAX` left for "no class".
const _: () = assert!(CLASSES < u8::MAX as usize);

/// The token uniform `u` falls on, for temperature `t > 0`. The candidates are the non-NaN
/// logits, weighted `w = e^((logit - max) / t)` ([`crate::math::exp_f32`], vectorized).
///
/// - `top_k > 0` keeps the `top_k` best (logit descending, id ascending); the weights are
///   normalized by their sum in that order.
/// - Otherwise the weights are normalized by their sum in id order.
/// - `top_p < 1` then keeps the smallest prefix of the order (logit descending, id
///   ascending) whose normalized weights, added in that order, reach `top_p`; `u` walks the
///   prefix, renormalized by its sum. With `top_p = 1`, `u` walks every candidate in the
///   order (`top_k`) or in id order (no `top_k`: no sort at all).
///
/// Only the part of the order a nucleus needs is sorted: the weights' mass is first summed
/// per class of `(max - logit) / t` (monotonic in the logit, so every class is a run of the
/// order), and only the classes that reach `top_p` (one more for rounding) are sorted; in the
/// rare case their walk falls short, the whole row is. Either way the result is the one a
/// full sort gives (tested against one).
fn draw(row: &[f32], t: f32, top_k_count: u32, top_p: f32, u: f64) -> u32 {
    let Some(max) = top_logit(row) else {
        return 0;
    };
    if !max.is_finite() {
        // +inf beats every finite logit; a row of -inf has no weights: the first wins.
        return argmax(row) as u32;
    }
    let candidates = row.iter().filter(|v| !v.is_nan()).count();
    let top_k = top_k_count > 0 && (top_k_count as usize) < candidates;
    // The exponents `(v - max) / t`, and when a nucleus is searched without `top_k`, each
    // token's class: `(max - v) / t / CLASS_WIDTH` (the same value: a negation and a
    // division by a power of two are exact), NaN none (`u8::MAX`).
    let with_classes = !top_k && top_p < 1.0;
    let mut classes = vec![u8::MAX; if with_classes { row.len() } else { 0 }];
    let mut w = vec![f32::NEG_INFINITY; row.len()];
    for (i, (&v, e)) in row.iter().zip(w.iter_mut()).enumerate() {
        if !v.is_nan() {
            *e = (v - max) / t;
            if with_classes {
                classes[i] = ((-*e / CLASS_WIDTH) as usize).min(CLASSES - 1) as u8;
            }
        }
    }
    crate::math::exp_sub_in_place(&mut w, 0.0);
    if top_k {
        let (ids, z) = top_k_order(row, top_k_count, &w);
        return nucleus(&ids, &w, z, top_p, u, true).unwrap_or(ids[0]);
    }
    let z: f64 = w.iter().map(|&x| f64::from(x)).sum();
    if top_p >= 1.0 {
        let target = u * z;
        let (mut acc, mut last) = (0.0f64, argmax(row));
        for (i, &x) in w.iter().enumerate().filter(|(_, x)| **x > 0.0) {
            acc += f64::from(x);
            last = i;
            if target < acc {
                return i as u32;
            }
        }
        return last as u32;
    }
    // The mass per class, summed in four banks (interleaved tokens: a class's running sum
    // is not one chain through memory). The masses only choose how much to sort; the walk decides, so
    // their rounding does not matter.
    let mut banks = [[0f64; CLASSES]; 4];
    for (i, (&c, &x)) in classes.iter().zip(&w).enumerate() {
        if c != u8::MAX {
            banks[i % 4][usize::from(c)] += f64::from(x);
        }
    }
    let mut acc = 0.0;
    let mut last = CLASSES - 1;
    let [b0, b1, b2, b3] = &banks;
    for (c, (((m0, m1), m2), m3)) in b0.iter().zip(b1).zip(b2).zip(b3).enumerate() {
        acc += (m0 + m1) + (m2 + m3);
        if acc >= f64::from(top_p) * z {
            last = (c + 1).min(CLASSES - 1);
            break;
        }
    }
    let mut keys: Vec<u64> = row
        .iter()
        .zip(&classes)
        .enumerate()
        .filter(|(_, (_, c))| usize::from(**c) <= last)
        .map(|(i, (&v, _))| key(i, v))
        .collect();
    sort_keys(&mut keys);
    let ids: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    let complete = ids.len() == candidates;
    if let Some(id) = nucleus(&ids, &w, z, top_p, u, complete) {
        return id;
    }
    let mut keys = candidates_keys(row);
    sort_keys(&mut keys);
    let ids: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    nucleus(&ids, &w, z, top_p, u, true).unwrap_or(ids[0])
}

/// The `k` best candidates in the order (logit descending, id ascending), and the sum of
/// their weights `w` in that order (`0 < k <` the number of candidates).
fn top_k_order(row: &[f32], k: u32, w: &[f32]) -> (Vec<u32>, f64) {
    let mut keys: Vec<u64> = candidates_keys(row);
    let k = k as usize;
    keys.select_nth_unstable(k - 1);
    keys.truncate(k);
    keys.sort_unstable();
    let ids: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    let z: f64 = ids.iter().map(|&i| f64::from(w[i as usize])).sum();
    (ids, z)
}

/// The largest non-NaN logit in `total_cmp` order (`None` when every one is NaN): the
/// largest [`total_order_bits`], sixteen lanes at a time (NaN counts as 0, below every
/// other value's bits).
fn top_logit(row: &[f32]) -> Option<f32> {
    const LANES: usize = 16;
    let bits = |v: f32| if v.is_nan() { 0 } else { total_order_bits(v) };
    let mut lanes = [0u32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = (*l).max(bits(x));
        }
    }
    let best = lanes
        .into_iter()
        .chain(chunks.remainder().iter().map(|&x| bits(x)))
        .max()
        .unwrap_or(0);
    (best != 0).then(|| {
        f32::from_bits(if best >> 31 == 1 {
            best & 0x7fff_ffff
        } else {
            !best
        })
    })
}

/// Packed keys of every non-NaN logit, in id order.
pub(crate) fn candidates_keys(row: &[f32]) -> Vec<u64> {
    row.iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .map(|(i, &v)| key(i, v))
        .collect()
}

fn sort_keys(keys: &mut Vec<u64>) {
    if keys.len() < 1024 {
        keys.sort_unstable();
    } else {
        sort_by_high_half(keys);
    }
}

/// The nucleus walk over `ids` (a prefix of the order; `complete` when it is all of it):
/// normalized weights `w / z` added in order until they reach `top_p` (all of them if they
/// never do and `ids` is complete; `None` if they do not and it is not), then `u` walks that
/// prefix renormalized by its sum.
fn nucleus(ids: &[u32], w: &[f32], z: f64, top_p: f32, u: f64, complete: bool) -> Option<u32> {
    let prob = |i: u32| f64::from(w[i as usize]) / z;
    let mut len = None;
    let mut acc = 0.0;
    for (n, &i) in ids.iter().enumerate() {
        acc += prob(i);
        if acc >= f64::from(top_p) {
            len = Some(n + 1);
            break;
        }
    }
    let len = match len {
        Some(l) => l,
        None if complete => ids.len(),
        None => return None,
    };
    let s: f64 = ids[..len].iter().map(|&i| prob(i)).sum();
    let mut acc = 0.0;
    for &i in &ids[..len] {
        acc += prob(i) / s;
        if u < acc {
            return Some(i);
        }
    }
    ids[..len].last().copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every uniform falls in the interval of the token the draw picks with it, the intervals
    /// of a row tile [0, 1) in walk order, and another token misses by its distance.
    #[test]
    fn the_seeded_draw_is_checked_by_the_drawn_tokens_interval() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let row: Vec<f32> = (0..3000)
            .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32) * 12.0)
            .collect();
        for (t, top_k, top_p) in [
            (0.7, 0, 0.95),
            (1.0, 0, 1.0),
            (1.3, 40, 1.0),
            (0.5, 40, 0.9),
        ] {
            let params = SamplingParams {
                temperature: t,
                top_k,
                top_p,
                ..Default::default()
            };
            for n in 0..200 {
                let u = uniform(&mut rng);
                let token = draw(&row, t, top_k, top_p, u);
                let d = check_draw(&row, &params, u, token);
                assert_eq!(
                    (d.drawn, d.miss),
                    (token, 0.0),
                    "t={t} k={top_k} p={top_p} n={n}"
                );
                let (lo, hi) = token_interval(&row, t, top_k, top_p, token).unwrap();
                assert!(lo - 1e-9 <= u && u < hi + 1e-9, "{lo} {u} {hi}");
                // Another uniform's token, checked with this one, misses by its distance.
                let v = (u + 0.5) % 1.0;
                let other = draw(&row, t, top_k, top_p, v);
                if other != token {
                    let (lo, hi) = token_interval(&row, t, top_k, top_p, other).unwrap();
                    let miss = check_draw(&row, &params, u, other).miss;
                    let expect = if u < lo { lo - u } else { u - hi };
                    assert!(
                        (f64::from(miss) - expect).abs() < 1e-6,
                        "{miss} vs {expect}"
                    );
                    assert!(miss > 0.0);
                }
            }
            // The lowest logit is outside top-k and the nucleus: no uniform draws it.
            let worst = row
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            if top_k > 0 || top_p < 1.0 {
                assert_eq!(check_draw(&row, &params, 0.3, worst).miss, 1.0);
            }
        }
    }

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

    /// The definition [`draw`] must reproduce: every weight by the scalar `exp`, a full sort,
    /// then the sums.
    fn draw_eager(row: &[f32], t: f32, top_k: u32, top_p: f32, u: f64) -> u32 {
        let Some(max) = top_logit(row) else {
            return 0;
        };
        if !max.is_finite() {
            return argmax(row) as u32;
        }
        let w: Vec<f64> = row
            .iter()
            .map(|&v| match v.is_nan() {
                true => 0.0,
                false => f64::from(crate::math::exp_f32((v - max) / t)),
            })
            .collect();
        let mut keys = candidates_keys(row);
        keys.sort_unstable();
        let mut ids: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
        let by_top_k = top_k > 0 && (top_k as usize) < ids.len();
        let z: f64 = if by_top_k {
            ids.truncate(top_k as usize);
            ids.iter().map(|&i| w[i as usize]).sum()
        } else {
            w.iter().sum()
        };
        if top_p >= 1.0 && !by_top_k {
            let mut acc = 0.0;
            let mut last = argmax(row);
            for (i, &x) in w.iter().enumerate().filter(|(_, x)| **x > 0.0) {
                acc += x;
                last = i;
                if u * z < acc {
                    return i as u32;
                }
            }
            return last as u32;
        }
        let probs: Vec<f64> = ids.iter().map(|&i| w[i as usize] / z).collect();
        let mut keep = probs.len();
        let mut acc = 0.0;
        for (n, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= f64::from(top_p) {
                keep = n + 1;
                break;
            }
        }
        let s: f64 = probs[..keep].iter().sum();
        let mut acc = 0.0;
        for (n, p) in probs[..keep].iter().enumerate() {
            acc += p / s;
            if u < acc {
                return ids[n];
            }
        }
        ids[keep - 1]
    }

    #[test]
    fn draw_equals_the_full_sort_definition() {
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
                // Ties: few distinct logits.
                5 => row.iter_mut().for_each(|v| *v = (*v * 2.0).round()),
                _ => {}
            }
            let t = [0.05, 0.7, 1.0, 2.0][case / 16 % 4];
            let top_k = [0, 1, 40, 2000][case / 64 % 4];
            for top_p in [1.0, 0.95, 0.5, 0.999_999, 1e-6] {
                // Uniform draws, and draws at the very end of [0, 1).
                for u in [
                    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64,
                    0.0,
                    1.0 - f64::EPSILON / 2.0,
                    1.0 - 1e-12,
                ] {
                    assert_eq!(
                        draw(&row, t, top_k, top_p, u),
                        draw_eager(&row, t, top_k, top_p, u),
                        "case {case} t {t} top_k {top_k} top_p {top_p} u {u}"
                    );
                }
            }
        }
    }

    /// Seeded draws follow the softmax of the logits at the temperature.
    #[test]
    fn draws_follow_the_softmax() {
        let row = [2.0f32, 1.0, 0.5, -1.0, f32::NEG_INFINITY, f32::NAN];
        let t = 0.8f32;
        let w: Vec<f64> = row[..4]
            .iter()
            .map(|&v| f64::from((v - 2.0) / t).exp())
            .collect();
        let z: f64 = w.iter().sum();
        for (top_k, top_p) in [(0, 1.0), (3, 1.0), (0, 0.9)] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_k,
                top_p,
                seed: 5,
                ..SamplingParams::default()
            });
            let mut counts = [0u32; 6];
            let n = 40_000;
            for _ in 0..n {
                counts[s.draw(&row) as usize] += 1;
            }
            // top_k = 3 drops token 3; top_p = 0.9 keeps 0, 1, 2 (cumulative 0.68, 0.88, 0.98).
            let keep = if top_k == 3 || top_p < 1.0 { 3 } else { 4 };
            let zk: f64 = w[..keep].iter().sum();
            for (i, &c) in counts.iter().enumerate() {
                let want = if i < keep { w[i] / zk } else { 0.0 };
                let got = f64::from(c) / f64::from(n);
                assert!(
                    (got - want).abs() < 0.01,
                    "top_k {top_k} top_p {top_p} token {i}: {got} vs {want} (z {z})"
                );
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

    /// The lane-wise maximum and search give the serial loops' answers: NaN anywhere (first,
    /// last, everywhere), infinities, signed zeros, ties, tails.
    #[test]
    fn argmax_and_top_logit_equal_the_serial_loops() {
        fn serial_argmax(row: &[f32]) -> usize {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] || row[best].is_nan() {
                    best = i;
                }
            }
            best
        }
        fn serial_top(row: &[f32]) -> Option<f32> {
            row.iter()
                .copied()
                .filter(|v| !v.is_nan())
                .max_by(f32::total_cmp)
        }
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let mut rows: Vec<Vec<f32>> = vec![
            vec![],
            vec![nan],
            vec![nan; 40],
            vec![-inf; 3],
            vec![nan, -inf, -inf],
            vec![-inf, nan],
            vec![-0.0, 0.0],
            vec![0.0, -0.0],
            vec![nan, 1.0, 3.0, 3.0, nan],
            vec![-inf, inf, nan, inf],
        ];
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        for n in [1, 15, 16, 17, 33, 100, 1000] {
            let mut row: Vec<f32> = (0..n)
                .map(|_| (rng.next_u32() % 50) as f32 - 25.0)
                .collect();
            rows.push(row.clone());
            row[0] = nan;
            row[n - 1] = nan;
            rows.push(row.clone());
            row[n / 2] = -0.0;
            rows.push(row.iter().map(|&v| if v > 0.0 { -v } else { v }).collect());
        }
        for row in &rows {
            assert_eq!(argmax(row), serial_argmax(row), "{row:?}");
            let bits = |v: Option<f32>| v.map(f32::to_bits);
            assert_eq!(bits(top_logit(row)), bits(serial_top(row)), "{row:?}");
        }
    }

    /// `cargo test -p sortition-engine --lib sampling::tests::draw_speed -- --ignored --nocapture`:
    /// microseconds per draw on a 49 152-token row shaped like a model's (a few strong
    /// candidates over a broad tail).
    #[test]
    #[ignore]
    fn draw_speed() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let row: Vec<f32> = (0..49_152)
            .map(|i| {
                let u = (0..4)
                    .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32)
                    .sum::<f32>();
                (u - 2.0) * 4.0 + if i % 4000 == 7 { 12.0 } else { 0.0 }
            })
            .collect();
        for (t, k, p) in [(0.8, 0, 0.95), (0.8, 0, 1.0), (0.7, 40, 0.9)] {
            // The best of five batches: the machine's other tenants slow any one.
            let (reps, mut us, mut acc) = (40, f64::INFINITY, 0u64);
            for _ in 0..5 {
                let start = std::time::Instant::now();
                acc = 0;
                for r in 0..reps {
                    acc += u64::from(draw(&row, t, k, p, r as f64 / reps as f64));
                }
                us = us.min(start.elapsed().as_secs_f64() * 1e6 / reps as f64);
            }
            println!("t={t} top_k={k} top_p={p}: {us:.1} us per draw ({acc})");
        }
    }
}
