//! Row kernels in plain Rust with a fixed summation order, so that results never depend on
//! batch size, thread count or which other rows are computed alongside.

/// Dot product with eight fixed partial sums combined in a fixed order (AVX when present:
/// the same operations, so the same bits).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::rows::dot(a, b).unwrap_or_else(|| dot_portable(a, b))
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
    if !crate::rows::silu_mul(g, u) {
        crate::portable::silu_mul(g, u);
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
        crate::portable::silu_mul(&mut b, &u);
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
