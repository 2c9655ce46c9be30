//! The vectorized forms of the row routines of [`crate::ops`] and [`crate::math`], used when
//! the CPU allows; each performs the same operations as its portable form (same bits).

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;

/// [`crate::ops::dot`], vectorized when the CPU allows (same bits either way).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx") {
        return Some(avx2::dot(a, b));
    }
    let _ = (a, b);
    None
}

/// [`crate::math::exp_sub_in_place`] vectorized when the CPU allows (same bits either
/// way); `false` when it does not.
pub(crate) fn exp_sub(xs: &mut [f32], sub: f32) -> bool {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        avx2::exp_sub(xs, sub);
        return true;
    }
    let _ = (xs, sub);
    false
}

/// [`crate::ops::silu_mul`] vectorized when the CPU allows (same bits either way);
/// `false` when it does not.
pub(crate) fn silu_mul(g: &mut [f32], u: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        avx2::silu_mul(g, u);
        return true;
    }
    let _ = (g, u);
    false
}
