//! [`super`]'s kernels in AVX-512 vectors of sixteen lanes (the lanes never meet, so the
//! bits are the portable loops'); heads four at a time.

use std::arch::x86_64::*;

type V = __m512;
const L: usize = 16;
const GMAX: usize = 4;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[inline]
#[target_feature(enable = "avx512f")]
fn zero() -> V {
    _mm512_setzero_ps()
}

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(x: f32) -> V {
    _mm512_set1_ps(x)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn fma(a: V, b: V, c: V) -> V {
    _mm512_fmadd_ps(a, b, c)
}

/// # Safety
/// `p..p + 16` is readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_f16(p: *const u16) -> V {
    // SAFETY: the caller's contract.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
}

/// # Safety
/// `p..p + 16` is writable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store(p: *mut f32, v: V) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_storeu_ps(p, v) }
}

super::vector_kernels!("avx512f,fma,f16c");
