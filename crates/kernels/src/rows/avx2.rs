//! The AVX2 forms of the row routines: `exp` of eight lanes, `exp(x - sub)` in place, SwiGLU
//! and the f32 dot product; the same operations as the portable forms, in vector registers.

use std::arch::x86_64::*;

/// [`crate::math::exp_f32`] on eight lanes: the same multiplies and adds in the same order,
/// then the same special cases, so the same bits.
#[inline]
#[target_feature(enable = "avx2")]
fn exp8(x: __m256) -> __m256 {
    use crate::portable::exp_consts::*;
    let mul = _mm256_mul_ps;
    let add = _mm256_add_ps;
    let sub = _mm256_sub_ps;
    let set = _mm256_set1_ps;
    let n = sub(add(mul(x, set(LOG2E)), set(MAGIC)), set(MAGIC));
    let r = sub(sub(x, mul(n, set(LN2_HI))), mul(n, set(LN2_LO)));
    let mut p = set(C[0]);
    for c in &C[1..] {
        p = add(mul(p, r), set(*c));
    }
    p = add(mul(p, r), set(1.0));
    p = add(mul(p, r), set(1.0));
    // n is integral and within [-126, 127] wherever the result is kept.
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let mut y = mul(p, _mm256_castsi256_ps(bits));
    y = _mm256_blendv_ps(
        y,
        set(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, set(HI)),
    );
    y = _mm256_blendv_ps(
        y,
        _mm256_setzero_ps(),
        _mm256_cmp_ps::<_CMP_LT_OQ>(x, set(LO)),
    );
    _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

/// `xs[i] = exp(xs[i] - sub)`: eight lanes at a time, the tail by the scalar routine.
pub fn exp_sub(xs: &mut [f32], sub: f32) {
    assert!(is_x86_feature_detected!("avx2"));
    // SAFETY: the feature was just checked; reads and writes stay inside `xs`.
    unsafe { exp_sub_impl(xs, sub) }
}

#[target_feature(enable = "avx2")]
unsafe fn exp_sub_impl(xs: &mut [f32], s: f32) {
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds eight floats.
        unsafe {
            let v = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), _mm256_set1_ps(s));
            _mm256_storeu_ps(c.as_mut_ptr(), exp8(v));
        }
    }
    for x in chunks.into_remainder() {
        *x = crate::portable::exp_f32(*x - s);
    }
}

/// SwiGLU `g = g / (1 + exp(-g)) * u`: eight lanes at a time, the tail by the portable loop.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert!(is_x86_feature_detected!("avx2"));
    // SAFETY: the feature was just checked; only the common length of both is touched.
    unsafe { silu_mul_impl(g, u) }
}

#[target_feature(enable = "avx2")]
unsafe fn silu_mul_impl(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let (g, u) = (&mut g[..n], &u[..n]);
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= n` for both slices.
        unsafe {
            let a = _mm256_loadu_ps(g.as_ptr().add(i));
            let b = _mm256_loadu_ps(u.as_ptr().add(i));
            let e = exp8(_mm256_xor_ps(a, _mm256_set1_ps(-0.0)));
            let t = _mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(g.as_mut_ptr().add(i), _mm256_mul_ps(t, b));
        }
    }
    crate::portable::silu_mul(&mut g[whole..], &u[whole..]);
}

/// [`crate::ops::dot`] with the same eight lanes, multiplies and adds (not fused), so
/// the same bits.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert!(is_x86_feature_detected!("avx"));
    // SAFETY: the feature was just checked; reads stay within the shorter slice.
    unsafe { dot_impl(a, b) }
}

#[target_feature(enable = "avx")]
unsafe fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` elements of both slices.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            )
        };
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        i += 8;
    }
    let mut l = [0f32; 8];
    // SAFETY: `l` holds eight f32.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    let mut tail = 0f32;
    for j in i..n {
        tail += a[j] * b[j];
    }
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])) + tail
}
