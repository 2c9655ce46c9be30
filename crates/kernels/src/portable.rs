//! The portable forms of the element-wise routines that the vector kernels also implement:
//! the engine's own `e^x` and SwiGLU's `silu(g) * u`. They depend on nothing else in the
//! engine, so the vector kernels can finish a slice's tail with them.

/// Constants of [`exp_f32`]: `n = round(x log2 e)` by the 1.5·2^23 trick, `r = x - n ln 2` in
/// two parts (the high part has few bits, so `n · LN2_HI` is exact), then a degree-7 Taylor
/// polynomial of `e^r` on `|r| <= ln 2 / 2` (truncation below 1e-8 relative) and `2^n` from
/// the exponent bits.
pub(crate) mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const MAGIC: f32 = 12_582_912.0;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// Above: `+inf`. Below `LO`: `0` (results under 2^-125 are flushed).
    pub const HI: f32 = 88.0;
    pub const LO: f32 = -87.0;
    /// `1/k!` for `k = 7..=2`, Horner order.
    pub const C: [f32; 6] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
}

/// `e^x` in f32 (SwiGLU, attention softmax), from IEEE multiplies and adds only (no fused
/// multiply-add), in a fixed order: the AVX2 routine (`q8::avx2::exp8`) performs the same
/// operations on eight lanes, so both give the same bits, on any machine. Within 2 ulp of
/// the exact value for `-87 <= x <= 88`; `0` below, `+inf` above, NaN for NaN.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    use exp_consts::*;
    if x.is_nan() {
        return x;
    }
    if x > HI {
        return f32::INFINITY;
    }
    if x < LO {
        return 0.0;
    }
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = C[0];
    for c in &C[1..] {
        p = p * r + c;
    }
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `g = silu(g) * u` element-wise, in portable Rust ([`crate::ops::silu_mul`] runs it
/// where no vector form does, and on the tail of one).
pub(crate) fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (a, b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + exp_f32(-*a)) * b;
    }
}
