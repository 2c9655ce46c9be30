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

/// `e^x` in f32 (SwiGLU, attention softmax).
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    libm::expf(x)
}

/// `e^x` in f64 (sampling weights).
#[inline]
pub fn exp_f64(x: f64) -> f64 {
    libm::exp(x)
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

    /// Spot values, exact bits: what any build of this engine version computes.
    #[test]
    fn results_are_the_compiled_routines() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f64(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(-800.0), 0.0);
        assert_eq!(pow_f64(10_000.0, 0.5), 100.0);
        assert_eq!(sin_cos_f64(0.0), (0.0, 1.0));
        for x in [-87.5f32, -10.25, -1.0, -1e-3, 0.5, 3.0, 20.0] {
            assert_eq!(exp_f32(x).to_bits(), libm::expf(x).to_bits());
            let rel = (f64::from(exp_f32(x)) - f64::from(x).exp()).abs() / f64::from(x).exp();
            assert!(rel < 2e-7, "expf({x}) off by {rel}");
        }
    }
}
