//! Row kernels in plain Rust with a fixed summation order, so that results never depend on
//! batch size, thread count or which other rows are computed alongside.

/// Dot product with eight fixed partial sums combined in a fixed order (AVX when present:
/// the same operations, so the same bits).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::q8::Kernel::dot_f32(a, b).unwrap_or_else(|| dot_portable(a, b))
}

/// `out[j] = dot(a, &b[j * stride + off..][..a.len()])` for every `j < out.len()` (attention
/// scores of one query over a cache), in one call.
pub fn dots(a: &[f32], b: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    if !crate::q8::Kernel::dots_f32(a, b, stride, off, out) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = dot_portable(a, &b[j * stride + off..j * stride + off + a.len()]);
        }
    }
}

/// `out = Σ_j p[j] · v[j * stride + off..][..out.len()]`, each element summed in `j` order
/// from +0.0 with a multiply then an add (attention's weighted sum of values).
pub fn weighted_sum(p: &[f32], v: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    if !crate::q8::Kernel::weighted_sum_f32(p, v, stride, off, out) {
        weighted_sum_portable(p, v, stride, off, out);
    }
}

fn weighted_sum_portable(p: &[f32], v: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        let row = &v[j * stride + off..j * stride + off + out.len()];
        for (o, x) in out.iter_mut().zip(row) {
            *o += pj * x;
        }
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `x *= scale` for every element, then their maximum (NaNs ignored, as `f32::max` does),
/// taken sixteen lanes at a time and then across the lanes: a maximum does not round, so
/// this is the value of the one-element-at-a-time loop (a serial chain of compares, 4x
/// slower), up to the sign of a zero maximum, which no `e^(x - max)` can tell apart.
pub fn scale_and_max(xs: &mut [f32], scale: f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c.iter_mut()) {
            *x *= scale;
            *l = l.max(*x);
        }
    }
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    for x in chunks.into_remainder() {
        *x *= scale;
        max = max.max(*x);
    }
    max
}

/// RMSNorm of one row into `out`.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = dot(x, x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// `x += y` element-wise.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `g = silu(g) * u` element-wise (SwiGLU).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    if !crate::q8::Kernel::silu_mul_f32(g, u) {
        silu_mul_portable(g, u);
    }
}

pub(crate) fn silu_mul_portable(g: &mut [f32], u: &[f32]) {
    for (a, b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + crate::math::exp_f32(-*a)) * b;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// xorshift32 values uniform in [-1, 1): reproducible inputs without a dependency.
    fn uniform(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// SwiGLU vectorized gives the portable loop's bits, tails and extremes included.
    #[test]
    fn silu_mul_vector_and_portable_agree() {
        let g: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.37).collect();
        let u: Vec<f32> = (0..1003)
            .map(|i| ((i * 7919) % 97) as f32 * 0.01 - 0.5)
            .collect();
        let (mut a, mut b) = (g.clone(), g);
        silu_mul(&mut a, &u);
        silu_mul_portable(&mut b, &u);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert!((a[600] - 37.0 / (1.0 + (-37.0f32).exp()) * u[600]).abs() < 1e-4);
    }

    #[test]
    fn vector_dot_is_bit_identical_to_portable() {
        let mut next = uniform(0x2545_f491_u32);
        for n in [0, 1, 7, 8, 9, 64, 100, 576] {
            let a: Vec<f32> = (0..n).map(|_| next() * 3.0).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            assert_eq!(
                dot(&a, &b).to_bits(),
                dot_portable(&a, &b).to_bits(),
                "n={n}"
            );
        }
    }

    #[test]
    fn batched_attention_kernels_equal_the_per_row_loops_bit_for_bit() {
        let mut next = uniform(0x1234_5678_u32);
        for (hd, heads, n) in [
            (64, 3, 37),
            (8, 2, 5),
            (24, 1, 9),
            (13, 2, 4),
            (64, 3, 1),
            (128, 2, 6),
            (88, 1, 3),
        ] {
            let stride = hd * heads;
            let cache: Vec<f32> = (0..n * stride).map(|_| next() * 2.0).collect();
            let q: Vec<f32> = (0..hd).map(|_| next()).collect();
            for head in 0..heads {
                let off = head * hd;
                let mut got = vec![0f32; n];
                dots(&q, &cache, stride, off, &mut got);
                for (j, g) in got.iter().enumerate() {
                    let want = dot_portable(&q, &cache[j * stride + off..j * stride + off + hd]);
                    assert_eq!(g.to_bits(), want.to_bits(), "dots hd {hd} j {j}");
                }
                let p: Vec<f32> = (0..n).map(|_| next().abs()).collect();
                let (mut fast, mut slow) = (vec![1f32; hd], vec![2f32; hd]);
                weighted_sum(&p, &cache, stride, off, &mut fast);
                weighted_sum_portable(&p, &cache, stride, off, &mut slow);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast), bits(&slow), "weighted_sum hd {hd}");
            }
        }
    }

    /// The lane-wise maximum is the serial loop's, NaNs, infinities and tails included, and
    /// the scaled values are the same bits.
    #[test]
    fn scale_and_max_equals_the_serial_loop() {
        let mut next = uniform(0x9e37_79b9_u32);
        for n in [0, 1, 5, 15, 16, 17, 33, 64, 100, 1001] {
            let mut xs: Vec<f32> = (0..n).map(|_| next() * 50.0).collect();
            if n > 3 {
                xs[1] = f32::NAN;
                xs[n - 1] = f32::NEG_INFINITY;
            }
            let mut serial = xs.clone();
            let mut want = f32::NEG_INFINITY;
            for x in serial.iter_mut() {
                *x *= 0.125;
                want = want.max(*x);
            }
            let got = scale_and_max(&mut xs, 0.125);
            assert_eq!(got.to_bits(), want.to_bits(), "n={n}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&xs), bits(&serial), "n={n}");
        }
        let mut all_nan = vec![f32::NAN; 20];
        assert_eq!(scale_and_max(&mut all_nan, 2.0), f32::NEG_INFINITY);
    }

    #[test]
    fn dot_matches_naive_on_small_ints() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..19).map(|i| (i % 3) as f32).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), naive);
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Nanoseconds per cached position of `f` run `reps` times over caches of `n` positions.
    fn per_position(reps: usize, n: usize, mut f: impl FnMut(usize)) -> f64 {
        let t = std::time::Instant::now();
        for r in 0..reps {
            f(r);
        }
        t.elapsed().as_secs_f64() * 1e9 / (reps * n) as f64
    }

    /// `cargo test -p sortition-engine --lib kernels::speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn attention_kernels_speed() {
        let (hd, reps) = (64, 2000);
        for n in [64usize, 400, 1000] {
            let cache: Vec<f32> = (0..n * hd).map(|i| (i % 97) as f32 * 0.01).collect();
            // Cold: 90 caches in turn (the model's layers and heads), none in L2.
            let caches: Vec<Vec<f32>> = (0..90).map(|_| cache.clone()).collect();
            let q: Vec<f32> = (0..hd).map(|i| i as f32 * 0.001).collect();
            let (mut out, mut o) = (vec![0f32; n], vec![0f32; hd]);
            for (label, pick) in [("hot", 1), ("cold", caches.len())] {
                let d = per_position(reps, n, |r| {
                    dots(&q, &caches[r % pick], hd, 0, &mut out);
                    std::hint::black_box(&out);
                });
                let w = per_position(reps, n, |r| {
                    weighted_sum(&out, &caches[r % pick], hd, 0, &mut o);
                    std::hint::black_box(&o);
                });
                println!("n={n} {label}: dots {d:.2} ns/position, weighted_sum {w:.2} ns/position");
            }
        }
    }
}
