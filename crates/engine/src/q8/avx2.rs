//! The AVX2/FMA/F16C routines: the same operations as the scalar references, in vector
//! registers. The only `unsafe` of the crate: intrinsics and unchecked reads, each after the
//! CPU features and the shapes were checked.

use super::{Acts, BLOCK, PANEL, QMatrix, ROW_TILE, WeightQuant, row_tiles};
use std::arch::x86_64::*;

/// Bytes ahead of the current weight block to prefetch (DRAM-resident matrices).
const PREFETCH: usize = 2048;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Safe entry of [`super::Kernel::chunk`]: checks the CPU features here; the caller checked
/// the shapes (panels `p0..` cover `out[r].len()` weight rows, `out` holds a slice per
/// activation row, every panel holds `cols` columns).
pub fn chunk(w: &QMatrix, p0: usize, x: &Acts<'_>, out: &mut [&mut [f32]]) {
    assert!(available());
    let n = out.first().map_or(0, |o| o.len());
    let count = n.div_ceil(PANEL);
    if x.rows <= STREAM_ROWS {
        // Few rows (decode): each tile converts the weights it reads on the fly.
        for (r0, t) in row_tiles(x.rows) {
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
    for p in 0..count {
        // SAFETY: as above; `buf` holds a panel.
        unsafe { convert(w, p0 + p, &mut buf) };
        for (r0, t) in row_tiles(x.rows) {
            let o = &mut out[r0..r0 + t];
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
    // SAFETY: the caller's contract.
    unsafe {
        match w.quant {
            WeightQuant::Q8_0 => put(1, out, at, tile::<R, 1, false, true>(w, p, src, x, r0)),
            WeightQuant::Q4_1 => put(1, out, at, tile::<R, 1, true, true>(w, p, src, x, r0)),
        };
    }
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
    let per_col = w.quant.panel_bytes_per_col();
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
    let per_col = w.quant.panel_bytes_per_col();
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
            for i in 0..NP {
                let at = qs[i].wrapping_add(b * BLOCK * per_col + PREFETCH);
                for line in 0..BLOCK * per_col / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64 * line).cast());
                }
            }
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

/// [`crate::math::exp_f32`] on eight lanes: the same multiplies and adds in the same order,
/// then the same special cases, so the same bits.
#[inline]
#[target_feature(enable = "avx2")]
fn exp8(x: __m256) -> __m256 {
    use crate::math::exp_consts::*;
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
        *x = crate::math::exp_f32(*x - s);
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
    crate::kernels::silu_mul_portable(&mut g[whole..], &u[whole..]);
}

/// [`crate::kernels::dot`] with the same eight lanes, multiplies and adds (not fused), so
/// the same bits.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert!(is_x86_feature_detected!("avx"));
    // SAFETY: the feature was just checked; reads stay within the shorter slice.
    unsafe { dot_impl(a, b) }
}

/// `out[j] = dot(a, b[j * stride + off..])` for every `j`, in one call.
pub fn dots(a: &[f32], b: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    assert!(is_x86_feature_detected!("avx"));
    // SAFETY: the feature was just checked; `dot_impl` bounds its reads by the slices.
    unsafe { dots_impl(a, b, stride, off, out) }
}

#[target_feature(enable = "avx")]
unsafe fn dots_impl(a: &[f32], b: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    let n = a.len();
    let mut j = 0;
    // Four positions at once: four independent chains hide the adds' latency, and each
    // chunk of `a` is loaded once for all four. Per position the operations are
    // [`dot_impl`]'s, in its order.
    if n.is_multiple_of(8) {
        while j + 4 <= out.len() {
            let rows: [&[f32]; 4] = std::array::from_fn(|r| {
                let at = (j + r) * stride + off;
                &b[at..at + n]
            });
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: `i + 8 <= n` elements of `a` and of every row.
                unsafe {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i));
                    for r in 0..4 {
                        let y = _mm256_loadu_ps(rows[r].as_ptr().add(i));
                        acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(x, y));
                    }
                }
                i += 8;
            }
            for r in 0..4 {
                let mut l = [0f32; 8];
                // SAFETY: `l` holds eight f32.
                unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc[r]) };
                // `dot_impl`'s tree, plus its tail: empty here, so +0.0.
                out[j + r] =
                    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])) + 0.0;
            }
            j += 4;
        }
    }
    for (jj, o) in out.iter_mut().enumerate().skip(j) {
        let at = jj * stride + off;
        // SAFETY: same features as this function.
        *o = unsafe { dot_impl(a, &b[at..at + n]) };
    }
}

/// `out = Σ_j p[j] · v[j * stride + off..]` (`out.len()` wide), summed in `j` order with
/// separate multiplies and adds from +0.0: what the portable loop computes per element.
pub fn weighted_sum(p: &[f32], v: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    assert!(is_x86_feature_detected!("avx"));
    let w = out.len();
    assert!(p.is_empty() || (p.len() - 1) * stride + off + w <= v.len());
    // SAFETY: the feature was just checked; the last row read ends inside `v`.
    unsafe { weighted_sum_impl(p, v, stride, off, out) }
}

#[target_feature(enable = "avx")]
unsafe fn weighted_sum_impl(p: &[f32], v: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    let w = out.len();
    let mut c = 0;
    // Sixty-four lanes at a time (a head's width: eight independent chains), then sixteen,
    // then eight; every element is the same chain of multiplies and adds in `j` order.
    while c + 64 <= w {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &pj) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pj);
            // SAFETY: `j * stride + off + c + 64 <= v.len()` (checked by the caller).
            let row = unsafe { v.as_ptr().add(j * stride + off + c) };
            for (l, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let x = unsafe { _mm256_loadu_ps(row.add(8 * l)) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, x));
            }
        }
        for (l, a) in acc.iter().enumerate() {
            // SAFETY: `c + 64 <= out.len()`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * l), *a) };
        }
        c += 64;
    }
    while c + 16 <= w {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (j, &pj) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pj);
            // SAFETY: `j * stride + off + c + 16 <= v.len()` (checked by the caller).
            let row = unsafe { v.as_ptr().add(j * stride + off + c) };
            let (x0, x1) = unsafe { (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))) };
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(pv, x0));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(pv, x1));
        }
        // SAFETY: `c + 16 <= out.len()`.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr().add(c), a0);
            _mm256_storeu_ps(out.as_mut_ptr().add(c + 8), a1);
        }
        c += 16;
    }
    while c + 8 <= w {
        let mut a0 = _mm256_setzero_ps();
        for (j, &pj) in p.iter().enumerate() {
            // SAFETY: as above.
            let x0 = unsafe { _mm256_loadu_ps(v.as_ptr().add(j * stride + off + c)) };
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_set1_ps(pj), x0));
        }
        // SAFETY: `c + 8 <= out.len()`.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), a0) };
        c += 8;
    }
    for (e, o) in out.iter_mut().enumerate().skip(c) {
        let mut acc = 0f32;
        for (j, &pj) in p.iter().enumerate() {
            acc += pj * v[j * stride + off + e];
        }
        *o = acc;
    }
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
