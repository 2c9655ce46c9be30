//! The transcendental functions the engine computes with: compiled into this crate, so that
//! every build of one engine version gives the same bits on every machine.
//!
//! `f32::exp` and friends call the platform's C math library, whose results are not
//! specified to the last bit and do differ: on 20 M random arguments each, glibc 2.36 and the
//! musl-derived `libm` crate disagree on 9.6-9.8 % of `expf`, `exp` and `pow` results and
//! 3.1 % of `sin` and `cos` (`bench/engine/math_bench.rs`). A node built against another C library (a
//! static musl build, another glibc) would then compute other logits than its class peers
//! and be found at fault by honest auditors. Square roots are exact IEEE operations and stay
//! on `f32::sqrt`.
//!
//! The f32 `exp` of SwiGLU, attention and sampling weights (about 115 k calls per token) is
//! our own, from IEEE multiplies and adds with an AVX2 twin of the same operations (the `libm`
//! crate's took 7 % of a single-stream run in `perf`); `pow`, `sin` and `cos` (RoPE tables,
//! built once) come from the `libm` crate.

pub use crate::portable::exp_f32;

/// `xs[i] = e^(xs[i] - sub)`, vectorized when the CPU allows (same bits either way).
pub fn exp_sub_in_place(xs: &mut [f32], sub: f32) {
    if !crate::rows::exp_sub(xs, sub) {
        for x in xs.iter_mut() {
            *x = exp_f32(*x - sub);
        }
    }
}

/// `x^y` in f64 (RoPE frequencies).
#[inline]
pub fn pow_f64(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// `(sin x, cos x)` in f64 (RoPE tables).
#[inline]
pub fn sin_cos_f64(x: f64) -> (f64, f64) {
    (libm::sin(x), libm::cos(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_routines_give_exact_values_at_simple_points() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(-87.5), 0.0);
        assert_eq!(exp_f32(88.5), f32::INFINITY);
        assert_eq!(pow_f64(10_000.0, 0.5), 100.0);
        assert_eq!(sin_cos_f64(0.0), (0.0, 1.0));
    }

    /// Within 2 ulp of the exact value over the whole range, on a dense grid.
    #[test]
    fn exp_f32_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let exact = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            let ulp = f64::from(f32::EPSILON) * exact;
            worst = worst.max((got - exact).abs() / ulp);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    /// The vectorized routine gives the scalar's bits, for every length (tails included),
    /// specials and both ends of the range.
    #[test]
    fn vector_and_scalar_exp_agree_bit_for_bit() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut xs: Vec<f32> = (0..4099)
            .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32) * 200.0 - 100.0)
            .collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -87.0,
            88.0,
            -0.0,
            1e-30,
            87.999,
        ]);
        for len in [0, 1, 7, 8, 9, 31, xs.len()] {
            let mut v = xs[..len].to_vec();
            exp_sub_in_place(&mut v, 0.25);
            for (x, y) in xs[..len].iter().zip(&v) {
                assert_eq!(y.to_bits(), exp_f32(x - 0.25).to_bits(), "exp({x} - 0.25)");
            }
        }
    }
}
