//! The AVX2 product routines of [`super`], for CPUs without AVX-512 VNNI: a group of four
//! columns of eight weight rows is one 256-bit vector. AVX2 has no unsigned-by-signed dot
//! product into 32 bits, so a group's products go through `maddubs` (pairs into 16 bits) and
//! `madd` (into 32): with the weights' magnitudes (at most 128) times the activations with
//! the weights' signs (at most 127 in magnitude), a pair is at most 32 512, below the 16-bit
//! limit, so the sums are exact, as are those of the other paths. Every lane performs the
//! scalar reference's f32 operations in its order: the results are those of
//! [`super::scalar_chunk`] and of [`super::avx512`], bit for bit (tested).

use super::{Acts, BLOCK, GROUPS, PANEL, QMatrix};
use crate::qf::prefetch_streams;
use std::arch::x86_64::*;

/// Rows per activation tile: two rows of a panel's two halves are eight accumulators
/// (integer and f32), with the weights and their magnitudes in sixteen registers.
pub const TILE: usize = 2;
/// Bytes ahead of the current weight block to prefetch.
const PREFETCH: usize = 2048;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Safe entry of [`super::chunk`]: checks the CPU features here; the caller checked the
/// shapes (as for [`super::avx512::chunk`]).
pub fn chunk(w: &QMatrix, p0: usize, x: &Acts, out: &mut [&mut [f32]]) {
    assert!(available());
    assert!(x.tiles.iter().all(|&(_, t)| (1..=TILE).contains(&t)));
    let n = out.first().map_or(0, |o| o.len());
    for p in 0..n.div_ceil(PANEL) {
        for (i, &(r0, t)) in x.tiles.iter().enumerate() {
            // SAFETY: the features were checked; panel `p0 + p` and rows `r0..r0 + t` exist,
            // and `out` holds the outputs of panels `..n / 16`.
            unsafe {
                match t {
                    1 => run::<1>(w, p0, p, x, r0, out, n, i == 0),
                    _ => run::<TILE>(w, p0, p, x, r0, out, n, i == 0),
                }
            }
        }
    }
}

/// One tile of `R` rows from `r0` against panel `p0 + p`, stored into `out[r0..r0 + R]` at
/// the panel's outputs (`n` per row; a last panel may hold fewer).
///
/// # Safety
/// AVX2, FMA and F16C are available; the panel exists, the tile `(r0, R)` is one of `x`'s,
/// and `out` holds `n` outputs per row.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<const R: usize>(
    w: &QMatrix,
    p0: usize,
    p: usize,
    x: &Acts,
    r0: usize,
    out: &mut [&mut [f32]],
    n: usize,
    stream: bool,
) {
    // SAFETY: the caller's contract.
    let acc = unsafe { tile::<R>(w, p0 + p, x, r0, stream) };
    let at = PANEL * p;
    let valid = (n - at).min(PANEL);
    for (t, halves) in acc.iter().enumerate() {
        let dst = &mut out[r0 + t][at..at + valid];
        if valid == PANEL {
            // SAFETY: `dst` holds sixteen outputs.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), halves[0]);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8), halves[1]);
            }
        } else {
            let mut all = [0f32; PANEL];
            // SAFETY: `all` holds sixteen values.
            unsafe {
                _mm256_storeu_ps(all.as_mut_ptr(), halves[0]);
                _mm256_storeu_ps(all.as_mut_ptr().add(8), halves[1]);
            }
            dst.copy_from_slice(&all[..valid]);
        }
    }
}

/// The per-element operations of [`super::scalar_chunk`] for the tile of `R` rows from `r0`
/// and panel `p` (two halves of eight rows): per block in order, the exact integer dot
/// product, then `y = fma(s, d_w d_x, y)`.
///
/// # Safety
/// As [`run`].
// `t` and `h` index several arrays of one tile at once.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize>(
    w: &QMatrix,
    p: usize,
    x: &Acts,
    r0: usize,
    stream: bool,
) -> [[__m256; 2]; R] {
    let nb = w.cols / BLOCK;
    let panel = w.cols * PANEL;
    let qs = w.qs.as_ptr().wrapping_add(p * panel);
    let ds = w.d.as_ptr().wrapping_add(p * nb * PANEL);
    let xq = x.qs.as_ptr().wrapping_add(r0 * x.cols);
    let xd = x.d.as_ptr().wrapping_add(r0 * nb);
    let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        if stream {
            prefetch_streams(&[qs], panel, BLOCK * PANEL, b, PREFETCH, b == 0);
        }
        // SAFETY (this block): block `b` of the panel and of the tile's rows exists (the
        // caller's contract); the pointers move within it.
        unsafe {
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for g in 0..GROUPS {
                let at = (b * GROUPS + g) * 64;
                for h in 0..2 {
                    let q = _mm256_xor_si256(_mm256_loadu_si256(qs.add(at + 32 * h).cast()), flip);
                    let mag = _mm256_abs_epi8(q);
                    for t in 0..R {
                        let four = xq.add(at * R / 16 + 4 * t).cast::<i32>().read_unaligned();
                        let signed = _mm256_sign_epi8(_mm256_set1_epi32(four), q);
                        let pairs = _mm256_maddubs_epi16(mag, signed);
                        sums[t][h] = _mm256_add_epi32(sums[t][h], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for h in 0..2 {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(ds.add(b * PANEL + 8 * h).cast()));
                for t in 0..R {
                    let dx = _mm256_set1_ps(*xd.add(b * R + t));
                    let s = _mm256_cvtepi32_ps(sums[t][h]);
                    acc[t][h] = _mm256_fmadd_ps(s, _mm256_mul_ps(dw, dx), acc[t][h]);
                }
            }
        }
    }
    acc
}

/// [`crate::quant::quantize_blocks`] (without its `d Σ q`), eight values at a time: the same
/// operations (an exact maximum, `d = max / 127`, `1 / d`, a rounded product, halves away
/// from zero by truncation and an exact remainder, the clamp), so the same bits (tested).
/// A block holding an infinity or a NaN goes through the scalar routine, whose `max` and
/// float-to-int conversion treat them differently from the vector instructions.
pub fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    assert!(available() && x.len() == qs.len() && x.len() == d.len() * BLOCK);
    for ((src, dst), d) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)).zip(d) {
        // SAFETY: AVX2 was checked; `src` holds 32 values.
        let ints = unsafe { quantize_block(src) };
        match ints {
            Some((scale, ints)) => {
                *d = scale;
                for (q, v) in dst.iter_mut().zip(ints) {
                    *q = v as i8;
                }
            }
            None => {
                let mut s = [0f32];
                crate::quant::quantize_blocks(src, dst, std::slice::from_mut(d), &mut s);
            }
        }
    }
}

/// One block of [`quantize_blocks`]: its scale and quants, `None` when it holds a value that
/// is not finite.
///
/// # Safety
/// AVX2 is available; `src` holds [`BLOCK`] values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block(src: &[f32]) -> Option<(f32, [i32; BLOCK])> {
    let p = src.as_ptr();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let inf = _mm256_set1_ps(f32::INFINITY);
    // SAFETY: `src` holds four vectors (the caller's contract).
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(p.add(8 * i)) });
    let mut amax = _mm256_setzero_ps();
    for &v in &v {
        let a = _mm256_and_ps(v, abs_mask);
        // Not finite: |v| not below infinity (NaN compares unordered).
        if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf)) != 0 {
            return None;
        }
        amax = _mm256_max_ps(amax, a);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds eight values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), amax) };
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let scale = amax / 127.0;
    let inv = _mm256_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
    let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    let mut out = [0i32; BLOCK];
    for (i, &v) in v.iter().enumerate() {
        let r = _mm256_mul_ps(v, inv);
        let t = _mm256_cvttps_epi32(r);
        let frac = _mm256_sub_ps(r, _mm256_cvtepi32_ps(t));
        // A true comparison is all ones (-1): subtracting it adds one.
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, neg_half));
        let q = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
        let q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
        // SAFETY: `out` holds four vectors.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * i).cast(), q) };
    }
    Some((scale, out))
}
