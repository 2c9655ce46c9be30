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
        let mut row = logits.to_vec();
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
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
        // Candidates by logit descending, id ascending: a total order, so no tie is ambiguous.
        // Sorted as packed u64 keys (descending `total_cmp` order of the logit, then the id).
        let mut keys: Vec<u64> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, v)| (u64::from(!total_order_bits(*v)) << 32) | i as u64)
            .collect();
        keys.sort_unstable();
        let mut idx: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
        if p.top_k > 0 {
            idx.truncate(p.top_k as usize);
        }
        if idx.is_empty() {
            return 0;
        }
        let t = p.temperature as f64;
        let max = row[idx[0] as usize] as f64;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((row[i as usize] as f64 - max) / t).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, x) in probs.iter().enumerate() {
                acc += x;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        // 53 random bits -> uniform in [0, 1).
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for (i, x) in probs.iter().enumerate() {
            acc += x;
            if u < acc {
                return idx[i];
            }
        }
        idx[probs.len() - 1]
    }
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
