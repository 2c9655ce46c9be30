//! [`super`]'s kernels in AVX2 vectors of eight lanes (the lanes never meet, so the bits
//! are the portable loops'); heads three at a time (sixteen registers).

use std::arch::x86_64::*;

type V = __m256;
const L: usize = 8;
const GMAX: usize = 3;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[inline]
#[target_feature(enable = "avx")]
fn zero() -> V {
    _mm256_setzero_ps()
}

#[inline]
#[target_feature(enable = "avx")]
fn splat(x: f32) -> V {
    _mm256_set1_ps(x)
}

#[inline]
#[target_feature(enable = "fma")]
fn fma(a: V, b: V, c: V) -> V {
    _mm256_fmadd_ps(a, b, c)
}

/// # Safety
/// `p..p + 8` is readable.
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn load_f16(p: *const u16) -> V {
    // SAFETY: the caller's contract.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

/// # Safety
/// `p..p + 8` is writable.
#[inline]
#[target_feature(enable = "avx")]
unsafe fn store(p: *mut f32, v: V) {
    // SAFETY: the caller's contract.
    unsafe { _mm256_storeu_ps(p, v) }
}

super::vector_kernels!("avx2,fma,f16c");
