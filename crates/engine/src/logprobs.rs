//! Log-probabilities of generated tokens, from the very logits row the sampler drew from.
//!
//! They are the model's distribution: the log-softmax of the raw logits of the forward pass,
//! *before* presence/frequency penalties, temperature, top-k and top-p (what OpenAI and vLLM
//! report). Computed in a fixed order from [`crate::math`]'s `exp` and the `libm` crate's
//! `log` (compiled in, no platform C library), from one row at a time: bit-identical on every
//! node of a class, alone or in any batch, with any thread count.

use crate::math::exp_sub_in_place;

/// The most alternatives a token's entry lists (OpenAI's bound on `top_logprobs`).
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// The value given to a log-probability that is not finite (a `-inf` or NaN logit), as
/// OpenAI reports impossible tokens: JSON has no `-inf`.
pub const FLOOR: f32 = -9999.0;

/// One generated token's log-probability and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The token generated.
    pub token: u32,
    /// Its log-probability under the model's distribution.
    pub logprob: f32,
    /// The `top` most likely tokens (logit descending, ties by id ascending) with theirs.
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax normalizer of a row: its largest non-NaN logit and `ln Σ e^(v - max)`
/// (summed in f64 in id order). `None` for a row without a finite maximum.
fn normalizer(row: &[f32]) -> Option<(f32, f64)> {
    let max = row
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .max_by(f32::total_cmp)?;
    if !max.is_finite() {
        return None;
    }
    let mut w: Vec<f32> = row
        .iter()
        .map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v })
        .collect();
    exp_sub_in_place(&mut w, max);
    let sum: f64 = w.iter().map(|&x| f64::from(x)).sum();
    Some((max, libm::log(sum)))
}

/// `token`'s log-probability in `row` and the `top` best tokens' (at most
/// [`MAX_TOP_LOGPROBS`]); non-finite values are reported as [`FLOOR`].
pub fn token_logprobs(row: &[f32], token: u32, top: u8) -> TokenLogprobs {
    let norm = normalizer(row);
    let lp = |id: u32| -> f32 {
        let v = row.get(id as usize).copied().unwrap_or(f32::NAN);
        let x = match norm {
            Some((max, ln_sum)) => (f64::from(v - max) - ln_sum) as f32,
            // +inf maxima: the +inf tokens share the mass; a row without any finite
            // maximum (all -inf or NaN) gives nothing a probability.
            None if v == f32::INFINITY => 0.0,
            None => f32::NEG_INFINITY,
        };
        if x.is_finite() { x } else { FLOOR }
    };
    let k = usize::from(top.min(MAX_TOP_LOGPROBS));
    let mut best: Vec<u64> = Vec::new();
    if k > 0 {
        best = crate::sampling::candidates_keys(row);
        if best.len() > k {
            best.select_nth_unstable(k - 1);
            best.truncate(k);
        }
        best.sort_unstable();
    }
    TokenLogprobs {
        token,
        logprob: lp(token),
        top: best
            .iter()
            .map(|&key| (key as u32, lp(key as u32)))
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_and_sum_to_one() {
        let row = [2.0f32, 1.0, 0.5, -1.0, f32::NEG_INFINITY, f32::NAN];
        let z: f64 = row[..4].iter().map(|&v| f64::from(v - 2.0).exp()).sum();
        let t = token_logprobs(&row, 1, 3);
        assert!((f64::from(t.logprob) - ((1.0f64 - 2.0) - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = t.top.iter().map(|p| p.0).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        let total: f64 = (0..4)
            .map(|i| f64::from(token_logprobs(&row, i, 0).logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        // Impossible tokens are floored, never -inf or NaN (JSON has neither).
        assert_eq!(token_logprobs(&row, 4, 0).logprob, FLOOR);
        assert_eq!(token_logprobs(&row, 5, 0).logprob, FLOOR);
        assert_eq!(token_logprobs(&row, 99, 0).logprob, FLOOR);
    }

    #[test]
    fn top_is_bounded_ordered_and_ties_go_to_the_lower_id() {
        let row: Vec<f32> = (0..100).map(|i| ((i * 7) % 10) as f32).collect();
        let t = token_logprobs(&row, 0, 50);
        assert_eq!(t.top.len(), usize::from(MAX_TOP_LOGPROBS));
        for w in t.top.windows(2) {
            assert!(w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0));
        }
        assert_eq!(token_logprobs(&row, 0, 0).top, vec![]);
        assert_eq!(token_logprobs(&[1.0, 2.0], 1, 5).top.len(), 2);
        // A row of -inf: nothing has a probability.
        let dead = token_logprobs(&[f32::NEG_INFINITY; 3], 0, 2);
        assert_eq!((dead.logprob, dead.top.len()), (FLOOR, 2));
    }

    /// `cargo test -p sortition-engine --release --lib logprobs::tests::logprobs_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn logprobs_speed() {
        let row: Vec<f32> = (0..49_152)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        for top in [0u8, 5, 20] {
            let reps = 200;
            let start = std::time::Instant::now();
            let mut acc = 0.0;
            for r in 0..reps {
                acc += token_logprobs(&row, r, top).logprob;
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(reps);
            println!("top_logprobs={top}: {us:.1} us per token ({acc})");
        }
    }
}
