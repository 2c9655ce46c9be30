//! The AVX2/FMA/F16C product routines of [`super`]: the same operations as the scalar
//! reference, in vector registers (intrinsics and unchecked reads, each after the CPU
//! features and the shapes were checked).

use super::{
    Acts, BLOCK, PANEL, QMatrix, ROW_TILE, WeightQuant, panel_bytes_per_col, row_tiles,
    through_scratch,
};
use std::arch::x86_64::*;

/// Bytes ahead of the current weight block to prefetch (DRAM-resident matrices).
const PREFETCH: usize = 2048;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Safe entry of [`super::chunk`]: checks the CPU features here; the caller checked
/// the shapes (panels `p0..` cover `out[r].len()` weight rows, `out` holds a slice per
/// activation row, every panel holds `cols` columns).
pub fn chunk(w: &QMatrix, p0: usize, x: &Acts<'_>, out: &mut [&mut [f32]]) {
    assert!(available());
    let n = out.first().map_or(0, |o| o.len());
    let count = n.div_ceil(PANEL);
    if x.rows <= STREAM_ROWS {
        // Few rows (decode): each tile converts the weights it reads on the fly.
        for (r0, t) in row_tiles(x.rows, ROW_TILE) {
            let o = &mut out[r0..r0 + t];
            // SAFETY: the features were just checked; panels `p0..p0 + count` and rows
            // `r0..r0 + t` exist (the caller's contract).
            unsafe {
                match t {
                    1 => streamed::<1>(w, p0, count, x, r0, o),
                    2 => streamed::<2>(w, p0, count, x, r0, o),
                    3 => streamed::<3>(w, p0, count, x, r0, o),
                    4 => streamed::<4>(w, p0, count, x, r0, o),
                    5 => streamed::<5>(w, p0, count, x, r0, o),
                    _ => streamed::<ROW_TILE>(w, p0, count, x, r0, o),
                }
            }
        }
        return;
    }
    // Many rows (prefill, scoring): each panel's weights are converted to f32 once, into a
    // buffer every row tile then reads (the same values, so the same bits).
    let mut buf = vec![0f32; PANEL * w.cols];
    through_scratch(out, count, |rows| {
        for p in 0..count {
            // SAFETY: as above; `buf` holds a panel.
            unsafe { convert(w, p0 + p, &mut buf) };
            for (r0, t) in row_tiles(x.rows, ROW_TILE) {
                let o = &mut rows[r0..r0 + t];
                let src = buf.as_ptr();
                // SAFETY: as above.
                unsafe {
                    match t {
                        1 => buffered::<1>(w, p0 + p, src, x, r0, o, p * PANEL),
                        2 => buffered::<2>(w, p0 + p, src, x, r0, o, p * PANEL),
                        3 => buffered::<3>(w, p0 + p, src, x, r0, o, p * PANEL),
                        4 => buffered::<4>(w, p0 + p, src, x, r0, o, p * PANEL),
                        5 => buffered::<5>(w, p0 + p, src, x, r0, o, p * PANEL),
                        _ => buffered::<ROW_TILE>(w, p0 + p, src, x, r0, o, p * PANEL),
                    }
                }
            }
        }
    });
}

/// Most activation rows converted on the fly (measured faster for a decode step of eight
/// sequences than a buffer); more go through a panel buffer.
const STREAM_ROWS: usize = 8;

/// Panels `p0..p0 + count` against activation rows `r0..r0 + R`, converting on the fly:
/// enough independent sums to hide the latency of the fused multiply-adds (eight vectors
/// per tile: R rows x 2 vectors per panel x NP panels) where registers allow.
///
/// # Safety
/// AVX2, FMA and F16C are available; the panels and rows exist.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn streamed<const R: usize>(
    w: &QMatrix,
    p0: usize,
    count: usize,
    x: &Acts<'_>,
    r0: usize,
    out: &mut [&mut [f32]],
) {
    let mut p = 0;
    while p < count {
        let left = count - p;
        let at = p * PANEL;
        // SAFETY: the caller's contract.
        p += unsafe {
            match w.quant {
                WeightQuant::Q8_0 if R == 1 && left >= 4 => put(
                    4,
                    out,
                    at,
                    tile::<R, 4, false, false>(w, p0 + p, null(), x, r0),
                ),
                WeightQuant::Q4_1 if R == 1 && left >= 4 => put(
                    4,
                    out,
                    at,
                    tile::<R, 4, true, false>(w, p0 + p, null(), x, r0),
                ),
                WeightQuant::Q8_0 if R <= 2 && left >= 2 => put(
                    2,
                    out,
                    at,
                    tile::<R, 2, false, false>(w, p0 + p, null(), x, r0),
                ),
                WeightQuant::Q4_1 if R <= 2 && left >= 2 => put(
                    2,
                    out,
                    at,
                    tile::<R, 2, true, false>(w, p0 + p, null(), x, r0),
                ),
                WeightQuant::Q8_0 => put(
                    1,
                    out,
                    at,
                    tile::<R, 1, false, false>(w, p0 + p, null(), x, r0),
                ),
                WeightQuant::Q4_1 => put(
                    1,
                    out,
                    at,
                    tile::<R, 1, true, false>(w, p0 + p, null(), x, r0),
                ),
            }
        };
    }
}

/// Panel `p`, converted into `src`, against activation rows `r0..r0 + R`.
///
/// # Safety
/// AVX2, FMA and F16C are available; panel `p` and the rows exist; `src` holds panel `p`'s
/// integers as f32 (`PANEL` per column).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn buffered<const R: usize>(
    w: &QMatrix,
    p: usize,
    src: *const f32,
    x: &Acts<'_>,
    r0: usize,
    out: &mut [&mut [f32]],
    at: usize,
) {
    // The converted weights already hold the format's arithmetic: one tile for both.
    // SAFETY: the caller's contract.
    unsafe { put(1, out, at, tile::<R, 1, false, true>(w, p, src, x, r0)) };
}

/// Panel `p`'s weights as f32 ([`weight`]), column after column, into `buf`.
///
/// # Safety
/// AVX2, FMA and F16C are available; panel `p` exists; `buf` holds `PANEL * cols` values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn convert(w: &QMatrix, p: usize, buf: &mut [f32]) {
    assert!(buf.len() >= PANEL * w.cols);
    // SAFETY: the caller's contract, and `buf` holds every column (checked above).
    unsafe {
        match w.quant {
            WeightQuant::Q8_0 => convert_impl::<false>(w, p, buf),
            WeightQuant::Q4_1 => convert_impl::<true>(w, p, buf),
        }
    }
}

/// # Safety
/// As [`convert`], `buf` checked.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn convert_impl<const MIN: bool>(w: &QMatrix, p: usize, buf: &mut [f32]) {
    let per_col = panel_bytes_per_col(w.quant);
    let qs = w.qs.as_ptr().wrapping_add(p * w.cols * per_col);
    for b in 0..w.cols / BLOCK {
        // SAFETY: the caller's contract.
        let (d, m) = unsafe { scales::<1, MIN>(w, p, b) };
        for k in b * BLOCK..(b + 1) * BLOCK {
            // SAFETY: column `k` of panel `p` exists; `buf` holds it.
            unsafe {
                let q = ints::<MIN>(qs.wrapping_add(k * per_col));
                let out = buf.as_mut_ptr().add(k * PANEL);
                _mm256_storeu_ps(out, weight::<MIN>(q[0], d[0], m[0]));
                _mm256_storeu_ps(out.add(8), weight::<MIN>(q[1], d[1], m[1]));
            }
        }
    }
}

fn null() -> *const f32 {
    std::ptr::null()
}

/// Writes a tile's results for `np` panels to `out[t][at..]` (as much as `out` holds);
/// returns `np`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn put<const R: usize>(
    np: usize,
    out: &mut [&mut [f32]],
    at: usize,
    tot: [[__m256; 8]; R],
) -> usize {
    for (t, o) in out.iter_mut().enumerate() {
        if let Some(dst) = o.get_mut(at..at + 16 * np) {
            // Whole vectors: stored as they are (a row's outputs of one tile are adjacent).
            for (v, &vals) in tot[t].iter().enumerate().take(2 * np) {
                // SAFETY: `dst` holds `16 np` f32, so eight from `8 v`.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * v), vals) };
            }
            continue;
        }
        let mut vals = [[0f32; 8]; 8];
        for v in 0..2 * np {
            // SAFETY: `vals[v]` holds eight f32.
            unsafe { _mm256_storeu_ps(vals[v].as_mut_ptr(), tot[t][v]) };
        }
        let flat = vals[..2 * np].iter().flatten();
        for (slot, &v) in o.iter_mut().skip(at).zip(flat) {
            *slot = v;
        }
    }
    np
}

/// The per-element operations of [`super::scalar_chunk`] for `R` rows and `NP` panels
/// (`2 NP` vectors of eight weight rows): per column `k` in order, the weight `w = q d`
/// (Q4_1, `MIN`: `w = fma(q, d, m)`), then `y = fma(x, w, y)`. With `BUF`, the weights come
/// ready from `src` ([`convert`]; `NP` is 1).
///
/// # Safety
/// AVX2, FMA and F16C are available; panels `p..p + NP` and rows `r0..r0 + R` exist; with
/// `BUF`, `src` holds panel `p`'s weights.
// `t` and `v` index several arrays of one tile at once.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const NP: usize, const MIN: bool, const BUF: bool>(
    w: &QMatrix,
    p: usize,
    src: *const f32,
    x: &Acts<'_>,
    r0: usize,
) -> [[__m256; 8]; R] {
    let nb = w.cols / BLOCK;
    let per_col = panel_bytes_per_col(w.quant);
    let qs: [*const u8; NP] =
        std::array::from_fn(|i| w.qs.as_ptr().wrapping_add((p + i) * w.cols * per_col));
    let xs: [*const f32; R] = std::array::from_fn(|t| x.x.as_ptr().wrapping_add((r0 + t) * x.cols));
    let mut acc = [[_mm256_setzero_ps(); 8]; R];
    if BUF {
        for k in 0..w.cols {
            // SAFETY: `src` holds column `k` (the caller's contract).
            let wv = unsafe {
                [
                    _mm256_loadu_ps(src.add(k * PANEL)),
                    _mm256_loadu_ps(src.add(k * PANEL + 8)),
                ]
            };
            for t in 0..R {
                // SAFETY: column `k` of row `r0 + t` exists.
                let xb = unsafe { _mm256_broadcast_ss(&*xs[t].add(k)) };
                acc[t][0] = _mm256_fmadd_ps(xb, wv[0], acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(xb, wv[1], acc[t][1]);
            }
        }
        return acc;
    }
    for b in 0..nb {
        if R <= 2 {
            // Few rows: reading the weights is the bound (DRAM for most matrices). A hint
            // only: an address past the matrix is never dereferenced.
            prefetch_streams(&qs, w.cols * per_col, BLOCK * per_col, b, PREFETCH, b == 0);
        }
        // SAFETY: block `b` of panels `p..p + NP` has PANEL scales (and minimums).
        let (d, m) = unsafe { scales::<NP, MIN>(w, p, b) };
        for k in b * BLOCK..(b + 1) * BLOCK {
            let mut wv = [_mm256_setzero_ps(); 8];
            for i in 0..NP {
                // SAFETY: column `k` of panel `p + i` exists (the caller's contract).
                let q = unsafe { ints::<MIN>(qs[i].wrapping_add(k * per_col)) };
                for h in 0..2 {
                    wv[2 * i + h] = weight::<MIN>(q[h], d[2 * i + h], m[2 * i + h]);
                }
            }
            for t in 0..R {
                // SAFETY: column `k` of row `r0 + t` exists.
                let xb = unsafe { _mm256_broadcast_ss(&*xs[t].add(k)) };
                for v in 0..2 * NP {
                    acc[t][v] = _mm256_fmadd_ps(xb, wv[v], acc[t][v]);
                }
            }
        }
    }
    acc
}

/// Scales (and, `MIN`, minimums) of block `b` of panels `p..p + NP`, eight rows a vector.
///
/// # Safety
/// F16C is available; the panels exist.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales<const NP: usize, const MIN: bool>(
    w: &QMatrix,
    p: usize,
    b: usize,
) -> ([__m256; 8], [__m256; 8]) {
    let nb = w.cols / BLOCK;
    let (mut d, mut m) = ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]);
    for i in 0..NP {
        let at = ((p + i) * nb + b) * PANEL;
        for h in 0..2 {
            // SAFETY: the panel's block has PANEL scales (and minimums).
            unsafe {
                d[2 * i + h] =
                    _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(at + 8 * h).cast()));
                if MIN {
                    m[2 * i + h] =
                        _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(at + 8 * h).cast()));
                }
            }
        }
    }
    (d, m)
}

/// The integers of one column of a panel as f32: rows 0..8, rows 8..16.
///
/// # Safety
/// AVX2 is available; `at` addresses the column's bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ints<const MIN: bool>(at: *const u8) -> [__m256; 2] {
    // SAFETY: the caller's contract.
    unsafe {
        if MIN {
            // Eight bytes: rows 0..8 in the low nibbles, rows 8..16 in the high.
            let raw = _mm256_cvtepu8_epi32(_mm_loadl_epi64(at.cast()));
            let lo = _mm256_and_si256(raw, _mm256_set1_epi32(0x0f));
            [
                _mm256_cvtepi32_ps(lo),
                _mm256_cvtepi32_ps(_mm256_srli_epi32(raw, 4)),
            ]
        } else {
            [
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(at.cast()))),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(at.add(8).cast()))),
            ]
        }
    }
}

/// The weights `q d` (Q8_0) or `fma(q, d, m)` (Q4_1, `MIN`) of eight rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weight<const MIN: bool>(q: __m256, d: __m256, m: __m256) -> __m256 {
    if MIN {
        _mm256_fmadd_ps(q, d, m)
    } else {
        _mm256_mul_ps(q, d)
    }
}

/// Prefetch hints for block `b` of a tile streaming `qs.len()` consecutive panels (`qs[i]` the
/// start of panel `i`'s quants, `panel` bytes each), `ahead` bytes ahead of the block in each
/// panel's stream. Past a panel's end, a stream's next bytes are those of the panel it moves
/// to in the next tile (`qs.len()` panels on), not of its neighbour, which another stream of
/// this tile already reads. With `start`, also the first `ahead` bytes of every stream (the
/// tile's first block: nothing fetched them yet). Hints only: an address past the matrix is
/// never dereferenced. Shared by both kernels (the AVX-512 one imports it); it lives here
/// because `qf` itself has no unsafe code.
#[inline(always)]
pub(crate) fn prefetch_streams<const NP: usize>(
    qs: &[*const u8; NP],
    panel: usize,
    block: usize,
    b: usize,
    ahead: usize,
    start: bool,
) {
    let skip = (NP - 1) * panel;
    let line = |at: usize, i: usize| {
        let at = if at >= panel { at + skip } else { at };
        // SAFETY: SSE is part of x86_64; a prefetch hint never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(qs[i].wrapping_add(at).cast()) };
    };
    for i in 0..NP {
        if start {
            for at in (0..ahead.min(panel)).step_by(64) {
                line(at, i);
            }
        }
        for at in (b * block + ahead..(b + 1) * block + ahead).step_by(64) {
            line(at, i);
        }
    }
}
