//! The AVX2/FMA/F16C dot routines: the same operations as the scalar reference, in
//! vector registers. The only `unsafe` of the crate: intrinsics and unchecked row reads,
//! each after the CPU features and the row lengths were checked.

use super::{BLOCK, Q8Rows, QMatrix, WeightQuant, hsum8};
use std::arch::x86_64::*;

/// Bytes ahead of the current weight block to prefetch (DRAM-resident matrices).
const PREFETCH: usize = 2048;

/// Safe entry of [`super::panel`]: checks the CPU features here; the caller checked
/// the shapes (`j0 + n` weight rows, `r0 + N` activation rows of one width, `out` holding
/// `N` slices of `n`).
pub fn panel<const N: usize>(
    w: &QMatrix,
    (j0, n): (usize, usize),
    x: &Q8Rows,
    r0: usize,
    out: &mut [&mut [f32]],
) {
    assert!(crate::isa::avx2_available());
    let nb = w.cols / BLOCK;
    let rows = Rows {
        w: std::array::from_fn(|_| std::ptr::null()),
        wd: std::array::from_fn(|_| std::ptr::null()),
        wm: std::array::from_fn(|_| std::ptr::null()),
        xq: std::array::from_fn(|t| x.qs[(r0 + t) * x.cols..].as_ptr()),
        xd: std::array::from_fn(|t| x.d[(r0 + t) * nb..].as_ptr()),
        xs: std::array::from_fn(|t| x.s[(r0 + t) * nb..].as_ptr()),
        nb,
    };
    // SAFETY: the features were just checked; every pointer the panel forms addresses a
    // block of a row the caller checked exists (weight rows `j0..j0 + n`, activation rows
    // `r0..r0 + N`, `nb` blocks each).
    unsafe {
        match w.quant {
            WeightQuant::Q8_0 => panel_impl::<N, Q8_0>(w, j0, n, rows, out),
            WeightQuant::Q4_1 => panel_impl::<N, Q4_1>(w, j0, n, rows, out),
        }
    }
}

/// Row pointers of one tile: `W` weight rows (quants, scales, Q4_1 minimums) and `N`
/// activation rows (quants, scales, block sums), `nb` blocks each.
#[derive(Clone, Copy)]
struct Rows<const W: usize, const N: usize> {
    w: [*const u8; W],
    wd: [*const u16; W],
    wm: [*const u16; W],
    xq: [*const i8; N],
    xd: [*const f32; N],
    xs: [*const f32; N],
    nb: usize,
}

impl<const N: usize> Rows<1, N> {
    /// The same activation rows against weight rows `j..j + W` of `w`.
    fn at<const W: usize>(&self, w: &QMatrix, j: usize) -> Rows<W, N> {
        let (nb, qb) = (self.nb, w.quant.qbytes());
        Rows {
            w: std::array::from_fn(|i| w.qs.as_ptr().wrapping_add((j + i) * nb * qb)),
            wd: std::array::from_fn(|i| w.d.as_ptr().wrapping_add((j + i) * nb)),
            wm: std::array::from_fn(|i| w.m.as_ptr().wrapping_add((j + i) * nb)),
            xq: self.xq,
            xd: self.xd,
            xs: self.xs,
            nb,
        }
    }
}

/// One weight format's tile routine.
trait TileFn {
    /// Dots the `W` weight rows with the `N` activation rows: `out[i][t]`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available, and every row holds `nb` blocks.
    unsafe fn tile<const W: usize, const N: usize>(r: Rows<W, N>) -> [[f32; N]; W];
}

struct Q8_0;
struct Q4_1;

/// Weight rows `j0..j0 + n` in tiles of four (one activation row) or two (more), then one.
///
/// # Safety
/// As [`TileFn::tile`], for weight rows `j0..j0 + n`; `out` holds `N` slices of `n`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_impl<const N: usize, K: TileFn>(
    w: &QMatrix,
    j0: usize,
    n: usize,
    rows: Rows<1, N>,
    out: &mut [&mut [f32]],
) {
    let mut jj = 0;
    while jj < n {
        let j = j0 + jj;
        // SAFETY: rows `j..j + W` lie in `j0..j0 + n` (the caller's contract).
        jj += unsafe {
            if N == 1 && n - jj >= 4 {
                put(out, jj, K::tile::<4, N>(rows.at::<4>(w, j)))
            } else if N > 1 && n - jj >= 2 {
                put(out, jj, K::tile::<2, N>(rows.at::<2>(w, j)))
            } else {
                put(out, jj, K::tile::<1, N>(rows.at::<1>(w, j)))
            }
        };
    }
}

/// Writes a tile's results for weight rows from `at`; returns how many weight rows it held.
#[inline(always)]
fn put<const W: usize, const N: usize>(
    out: &mut [&mut [f32]],
    at: usize,
    vals: [[f32; N]; W],
) -> usize {
    for (i, vals) in vals.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(vals) {
            o[at + i] = v;
        }
    }
    W
}

#[target_feature(enable = "avx2,fma,f16c")]
fn half(h: u16) -> __m256 {
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn finish<const W: usize, const N: usize>(acc: [[__m256; N]; W]) -> [[f32; N]; W] {
    let mut out = [[0f32; N]; W];
    for i in 0..W {
        for t in 0..N {
            let mut l = [0f32; 8];
            // SAFETY: `l` holds eight f32.
            unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc[i][t]) };
            out[i][t] = hsum8(l);
        }
    }
    out
}

impl TileFn for Q8_0 {
    #[inline(always)]
    unsafe fn tile<const W: usize, const N: usize>(r: Rows<W, N>) -> [[f32; N]; W] {
        // SAFETY: the caller's contract.
        unsafe { tile_q8_0(r) }
    }
}

impl TileFn for Q4_1 {
    #[inline(always)]
    unsafe fn tile<const W: usize, const N: usize>(r: Rows<W, N>) -> [[f32; N]; W] {
        // SAFETY: the caller's contract.
        unsafe { tile_q4_1(r) }
    }
}

// `t` and `i` index several arrays of one tile at once.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q8_0<const W: usize, const N: usize>(r: Rows<W, N>) -> [[f32; N]; W] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); N]; W];
    for b in 0..r.nb {
        let mut wv = [_mm256_setzero_si256(); W];
        let mut aw = [_mm256_setzero_si256(); W];
        let mut dw = [_mm256_setzero_ps(); W];
        for i in 0..W {
            let at = r.w[i].wrapping_add(b * BLOCK);
            // A hint only: an address past the matrix is never dereferenced.
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH).cast());
            // SAFETY: block `b < nb` lies inside every row (the caller's contract).
            wv[i] = unsafe { _mm256_loadu_si256(at.cast()) };
            aw[i] = _mm256_sign_epi8(wv[i], wv[i]);
            // SAFETY: as above (one scale per block).
            dw[i] = half(unsafe { *r.wd[i].add(b) });
        }
        for t in 0..N {
            // SAFETY: as above.
            let (xv, dx) = unsafe {
                (
                    _mm256_loadu_si256(r.xq[t].add(b * BLOCK).cast()),
                    _mm256_set1_ps(*r.xd[t].add(b)),
                )
            };
            for i in 0..W {
                // |w| * (x * sign w) = w * x per byte; pairs, then quads, to int32 lanes.
                let sx = _mm256_sign_epi8(xv, wv[i]);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[i], sx), ones);
                let d = _mm256_mul_ps(dw[i], dx);
                acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[i][t]);
            }
        }
    }
    finish(acc)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q4_1<const W: usize, const N: usize>(r: Rows<W, N>) -> [[f32; N]; W] {
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); N]; W];
    let mut msum = [[0f32; N]; W];
    for b in 0..r.nb {
        let mut wv = [_mm256_setzero_si256(); W];
        let mut dw = [_mm256_setzero_ps(); W];
        let mut mw = [0f32; W];
        for i in 0..W {
            let at = r.w[i].wrapping_add(b * BLOCK / 2);
            // A hint only: an address past the matrix is never dereferenced.
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH).cast());
            // SAFETY: block `b < nb` (16 bytes, a scale and a minimum) lies inside every
            // row (the caller's contract).
            let (raw, d, m) =
                unsafe { (_mm_loadu_si128(at.cast()), *r.wd[i].add(b), *r.wm[i].add(b)) };
            // Values 0..16 from the low nibbles, 16..32 from the high ones.
            let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
            wv[i] = _mm256_and_si256(both, low);
            dw[i] = half(d);
            mw[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(m))));
        }
        for t in 0..N {
            // SAFETY: as above (32 bytes of the activation row, its scale and block sum).
            let (xv, dx, sx) = unsafe {
                (
                    _mm256_loadu_si256(r.xq[t].add(b * BLOCK).cast()),
                    _mm256_set1_ps(*r.xd[t].add(b)),
                    *r.xs[t].add(b),
                )
            };
            for i in 0..W {
                // Unsigned 4-bit weights times signed int8: pairs, then quads, to int32.
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv[i], xv), ones);
                let d = _mm256_mul_ps(dw[i], dx);
                acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[i][t]);
                msum[i][t] = mw[i].mul_add(sx, msum[i][t]);
            }
        }
    }
    let mut out = finish(acc);
    for i in 0..W {
        for t in 0..N {
            out[i][t] += msum[i][t];
        }
    }
    out
}
