//! The AVX-512 product routines of [`super`]: a panel's sixteen weight rows are one 512-bit
//! vector, and the 32 vector registers hold tiles of more rows and panels than AVX2's 16.
//! Every lane performs the operations of the scalar reference in its order, so the results
//! are those of [`super::scalar_chunk`] and of [`super::avx2`], bit for bit (tested).
//! Intrinsics and unchecked reads, each after the CPU features and the shapes were checked.

use super::avx2::prefetch_streams;
use super::{
    Acts, BLOCK, PANEL, PANEL_SCRATCH, QMatrix, WeightQuant, panel_bytes_per_col, row_tiles,
    through_scratch, with_scratch,
};
use std::arch::x86_64::*;

/// Bytes ahead of the current weight block to prefetch (DRAM-resident matrices): more than
/// AVX2's 2 KiB, as these tiles consume a panel's weights faster (measured: single-stream
/// decode 84 -> 91 tok/s, 8-stream products 5-10 % faster, interleaved runs).
const PREFETCH: usize = 6144;
/// Most activation rows converted on the fly, all in one tile: a decode step of eight
/// sequences converts each weight once (AVX2 needs two tiles of four for them).
const STREAM_ROWS: usize = 8;
/// Most activation rows of a tile over converted weights: 12 rows x 2 panels = 24
/// accumulators, the two panels' weights, and the broadcast operand of 32 registers.
const BUF_ROWS: usize = 12;
/// Panels converted together for the buffered tiles.
const BUF_PANELS: usize = 2;
/// Columns of the converted panels kept at a time: two panels' 192 columns are 24 KiB, so
/// they stay in L1 while every row tile passes over them (all 576 or 1536 columns at once
/// did not fit: 73-196 KiB read from L2 by every tile).
const BUF_COLS: usize = 192;

/// Rows per packed tile for a product of `rows` activation rows, `None` for no packing.
pub fn packed_tile_rows(rows: usize) -> Option<usize> {
    (rows > STREAM_ROWS).then_some(BUF_ROWS)
}

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
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
        // Few rows (decode): one tile converts the weights it reads on the fly.
        // SAFETY: the features were just checked; panels `p0..p0 + count` and every row
        // exist (the caller's contract).
        unsafe {
            match x.rows {
                1 => streamed::<1>(w, p0, count, x, out),
                2 => streamed::<2>(w, p0, count, x, out),
                3 => streamed::<3>(w, p0, count, x, out),
                4 => streamed::<4>(w, p0, count, x, out),
                5 => streamed::<5>(w, p0, count, x, out),
                6 => streamed::<6>(w, p0, count, x, out),
                7 => streamed::<7>(w, p0, count, x, out),
                _ => streamed::<STREAM_ROWS>(w, p0, count, x, out),
            }
        }
        return;
    }
    // Many rows (prefill, scoring): two panels' weights are converted to f32 once, into a
    // buffer every row tile then reads (the same values, so the same bits), column after
    // column, the panels side by side. The tiles read the activations packed column after
    // column ([`Acts`]), so that a tile's broadcasts are one pointer's constant offsets (one
    // pointer per row needs more registers than there are).
    assert!(x.tile == BUF_ROWS && x.packed.len() == x.x.len());
    let tiles: Vec<(usize, usize)> = row_tiles(x.rows, BUF_ROWS).collect();
    let packed = &x.packed;
    through_scratch(out, count, |rows| {
        with_scratch(&PANEL_SCRATCH, BUF_PANELS * PANEL * BUF_COLS, |buf| {
            let mut p = 0;
            while p < count {
                let np = (count - p).min(BUF_PANELS);
                // Column block after column block: each element's sum goes on from where the
                // last block left it (stored exactly), so its chain is the same.
                for k0 in (0..w.cols).step_by(BUF_COLS) {
                    let cols = (k0, (k0 + BUF_COLS).min(w.cols));
                    for i in 0..np {
                        // SAFETY: as above; `buf` holds `np` panels' `BUF_COLS` columns.
                        unsafe { convert(w, p0 + p + i, buf, (i, np), cols) };
                    }
                    for &(r0, t) in &tiles {
                        let o = &mut rows[r0..r0 + t];
                        let xs = &packed[r0 * x.cols..(r0 + t) * x.cols];
                        // SAFETY: as above; `buf` holds columns `cols` of panels
                        // `p0 + p..p0 + p + np`; the scratch rows hold whole panels.
                        unsafe {
                            match np {
                                1 => buffered::<1>(t, cols, buf, xs, o, p * PANEL),
                                _ => buffered::<BUF_PANELS>(t, cols, buf, xs, o, p * PANEL),
                            }
                        }
                    }
                }
                p += np;
            }
        })
    });
}

/// Panels `p0..p0 + count` against all `R` activation rows, converting on the fly, in
/// tiles of as many panels as keep enough independent sums in flight (`R x NP`
/// accumulators) where registers allow.
///
/// # Safety
/// AVX-512F, AVX2, FMA and F16C are available; the panels and rows exist.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn streamed<const R: usize>(
    w: &QMatrix,
    p0: usize,
    count: usize,
    x: &Acts<'_>,
    out: &mut [&mut [f32]],
) {
    let mut p = 0;
    while p < count {
        let left = count - p;
        let at = p * PANEL;
        // SAFETY: the caller's contract.
        p += unsafe {
            match w.quant {
                WeightQuant::Q8_0 if R <= 2 && left >= 4 => {
                    put(out, at, tile::<R, 4, false>(w, p0 + p, x, 0))
                }
                WeightQuant::Q4_1 if R <= 2 && left >= 4 => {
                    put(out, at, tile::<R, 4, true>(w, p0 + p, x, 0))
                }
                WeightQuant::Q8_0 if left >= 2 => {
                    put(out, at, tile::<R, 2, false>(w, p0 + p, x, 0))
                }
                WeightQuant::Q4_1 if left >= 2 => put(out, at, tile::<R, 2, true>(w, p0 + p, x, 0)),
                WeightQuant::Q8_0 => put(out, at, tile::<R, 1, false>(w, p0 + p, x, 0)),
                WeightQuant::Q4_1 => put(out, at, tile::<R, 1, true>(w, p0 + p, x, 0)),
            }
        };
    }
}

/// Columns `k0..k1` of `NP` converted panels in `src` against the `t` packed activation rows
/// `xs` (column after column), their sums at `out[..][at..]`: from +0 at column 0, else from
/// what `out` holds there.
///
/// # Safety
/// AVX-512F, AVX2, FMA and F16C are available; `1 <= t <= BUF_ROWS`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn buffered<const NP: usize>(
    t: usize,
    (k0, k1): (usize, usize),
    src: &[f32],
    xs: &[f32],
    out: &mut [&mut [f32]],
    at: usize,
) {
    assert!(k0 < k1 && src.len() >= NP * PANEL * (k1 - k0) && out.len() == t);
    assert!(xs.len() >= t * k1 && out.iter().all(|o| o.len() >= at + NP * PANEL));
    let xs = &xs[t * k0..t * k1];
    // SAFETY: the shapes were just checked.
    unsafe {
        match t {
            1 => packed_tile::<1, NP>(k0 == 0, src, xs, out, at),
            2 => packed_tile::<2, NP>(k0 == 0, src, xs, out, at),
            3 => packed_tile::<3, NP>(k0 == 0, src, xs, out, at),
            4 => packed_tile::<4, NP>(k0 == 0, src, xs, out, at),
            5 => packed_tile::<5, NP>(k0 == 0, src, xs, out, at),
            6 => packed_tile::<6, NP>(k0 == 0, src, xs, out, at),
            7 => packed_tile::<7, NP>(k0 == 0, src, xs, out, at),
            8 => packed_tile::<8, NP>(k0 == 0, src, xs, out, at),
            9 => packed_tile::<9, NP>(k0 == 0, src, xs, out, at),
            10 => packed_tile::<10, NP>(k0 == 0, src, xs, out, at),
            11 => packed_tile::<11, NP>(k0 == 0, src, xs, out, at),
            _ => packed_tile::<BUF_ROWS, NP>(k0 == 0, src, xs, out, at),
        }
    };
}

/// Columns `k0..k1` (whole blocks) of panel `p`'s weights as f32 ([`weight`]), column after
/// column, into slot `i` of `n` panels side by side in `buf` (column `k` of slot `i` at
/// `((k - k0) n + i) PANEL`).
///
/// # Safety
/// AVX-512F, AVX2, FMA and F16C are available; panel `p` exists.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn convert(
    w: &QMatrix,
    p: usize,
    buf: &mut [f32],
    (i, n): (usize, usize),
    cols: (usize, usize),
) {
    let (k0, k1) = cols;
    assert!(i < n && k0 < k1 && k1 <= w.cols && buf.len() >= n * PANEL * (k1 - k0));
    assert!(k0.is_multiple_of(BLOCK) && k1.is_multiple_of(BLOCK));
    // SAFETY: the caller's contract, and `buf` holds every column (checked above).
    unsafe {
        match w.quant {
            WeightQuant::Q8_0 => convert_impl::<false>(w, p, buf, (i, n), cols),
            WeightQuant::Q4_1 => convert_impl::<true>(w, p, buf, (i, n), cols),
        }
    }
}

/// # Safety
/// As [`convert`], `buf` checked.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn convert_impl<const MIN: bool>(
    w: &QMatrix,
    p: usize,
    buf: &mut [f32],
    (i, n): (usize, usize),
    (k0, k1): (usize, usize),
) {
    let per_col = panel_bytes_per_col(w.quant);
    let qs = w.qs.as_ptr().wrapping_add(p * w.cols * per_col);
    for b in k0 / BLOCK..k1 / BLOCK {
        // SAFETY: the caller's contract.
        let (d, m) = unsafe { scales::<1, MIN>(w, p, b) };
        for k in b * BLOCK..(b + 1) * BLOCK {
            // SAFETY: column `k` of panel `p` exists; `buf` holds it.
            unsafe {
                let q = ints::<MIN>(qs.wrapping_add(k * per_col));
                let dst = buf.as_mut_ptr().add(((k - k0) * n + i) * PANEL);
                _mm512_storeu_ps(dst, weight::<MIN>(q, d[0], m[0]));
            }
        }
    }
}

/// Writes a tile's results for `NP` panels to `out[t][at..]` (as much as `out` holds);
/// returns `NP`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn put<const R: usize, const NP: usize>(
    out: &mut [&mut [f32]],
    at: usize,
    tot: [[__m512; NP]; R],
) -> usize {
    for (t, o) in out.iter_mut().enumerate().take(R) {
        if let Some(dst) = o.get_mut(at..at + PANEL * NP) {
            for (i, &vals) in tot[t].iter().enumerate() {
                // SAFETY: `dst` holds `16 NP` f32, so sixteen from `16 i`.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(PANEL * i), vals) };
            }
            continue;
        }
        let mut vals = [[0f32; PANEL]; NP];
        for (i, v) in vals.iter_mut().enumerate() {
            // SAFETY: `v` holds sixteen f32.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), tot[t][i]) };
        }
        for (slot, &v) in o.iter_mut().skip(at).zip(vals.iter().flatten()) {
            *slot = v;
        }
    }
    NP
}

/// [`tile`] over weights converted into `src` (`NP` panels side by side, [`convert`]) and
/// `R` activation rows packed column after column in `xs`: per column in order,
/// `y = fma(x, w, y)`, from +0 (`first`) or from the sums `out[..][at..]` holds, into which
/// it writes them.
///
/// # Safety
/// AVX-512F, AVX2, FMA and F16C are available; `src` holds `NP PANEL` values per column of
/// `xs` (`R` each), every `out[t]` holds `NP PANEL` values from `at`, `out` holds `R` rows.
// `t` and `i` index several arrays of one tile at once.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn packed_tile<const R: usize, const NP: usize>(
    first: bool,
    src: &[f32],
    xs: &[f32],
    out: &mut [&mut [f32]],
    at: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NP]; R];
    if !first {
        for t in 0..R {
            for i in 0..NP {
                // SAFETY: `out[t]` holds these sixteen (the caller's contract).
                acc[t][i] = unsafe { _mm512_loadu_ps(out[t].as_ptr().add(at + PANEL * i)) };
            }
        }
    }
    let (mut ws, mut xp) = (src.as_ptr(), xs.as_ptr());
    for _ in 0..xs.len() / R {
        // SAFETY: `src` holds this column's `NP` panels, `xs` its `R` rows (the caller's
        // contract; both pointers move one column per iteration).
        unsafe {
            let wv: [__m512; NP] = std::array::from_fn(|i| _mm512_loadu_ps(ws.add(i * PANEL)));
            for t in 0..R {
                let xb = _mm512_set1_ps(*xp.add(t));
                for i in 0..NP {
                    acc[t][i] = _mm512_fmadd_ps(xb, wv[i], acc[t][i]);
                }
            }
            ws = ws.add(NP * PANEL);
            xp = xp.add(R);
        }
    }
    for t in 0..R {
        for i in 0..NP {
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(out[t].as_mut_ptr().add(at + PANEL * i), acc[t][i]) };
        }
    }
}

/// The per-element operations of [`super::scalar_chunk`] for `R` rows and `NP` panels (one
/// vector of sixteen weight rows each): per column `k` in order, the weight `w = q d` (Q4_1,
/// `MIN`: `w = fma(q, d, m)`), then `y = fma(x, w, y)`.
///
/// # Safety
/// AVX-512F, AVX2, FMA and F16C are available; panels `p..p + NP` and rows `r0..r0 + R`
/// exist.
// `t` and `i` index several arrays of one tile at once.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn tile<const R: usize, const NP: usize, const MIN: bool>(
    w: &QMatrix,
    p: usize,
    x: &Acts<'_>,
    r0: usize,
) -> [[__m512; NP]; R] {
    let xs: [*const f32; R] = std::array::from_fn(|t| x.x.as_ptr().wrapping_add((r0 + t) * x.cols));
    let mut acc = [[_mm512_setzero_ps(); NP]; R];
    let nb = w.cols / BLOCK;
    let per_col = panel_bytes_per_col(w.quant);
    let qs: [*const u8; NP] =
        std::array::from_fn(|i| w.qs.as_ptr().wrapping_add((p + i) * w.cols * per_col));
    for b in 0..nb {
        // The weights come from DRAM for most matrices, even for eight rows. A hint only:
        // an address past the matrix is never dereferenced.
        prefetch_streams(&qs, w.cols * per_col, BLOCK * per_col, b, PREFETCH, b == 0);
        // SAFETY: block `b` of panels `p..p + NP` has PANEL scales (and minimums).
        let (d, m) = unsafe { scales::<NP, MIN>(w, p, b) };
        for k in b * BLOCK..(b + 1) * BLOCK {
            let mut wv = [_mm512_setzero_ps(); NP];
            for i in 0..NP {
                // SAFETY: column `k` of panel `p + i` exists (the caller's contract).
                let q = unsafe { ints::<MIN>(qs[i].wrapping_add(k * per_col)) };
                wv[i] = weight::<MIN>(q, d[i], m[i]);
            }
            for t in 0..R {
                // SAFETY: column `k` of row `r0 + t` exists.
                let xb = unsafe { _mm512_set1_ps(*xs[t].add(k)) };
                for i in 0..NP {
                    acc[t][i] = _mm512_fmadd_ps(xb, wv[i], acc[t][i]);
                }
            }
        }
    }
    acc
}

/// Scales (and, `MIN`, minimums) of block `b` of panels `p..p + NP`, a panel a vector.
///
/// # Safety
/// AVX-512F is available; the panels exist.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn scales<const NP: usize, const MIN: bool>(
    w: &QMatrix,
    p: usize,
    b: usize,
) -> ([__m512; NP], [__m512; NP]) {
    let nb = w.cols / BLOCK;
    let (mut d, mut m) = ([_mm512_setzero_ps(); NP], [_mm512_setzero_ps(); NP]);
    for i in 0..NP {
        let at = ((p + i) * nb + b) * PANEL;
        // SAFETY: the panel's block has PANEL scales (and minimums); f16 to f32 is exact.
        unsafe {
            d[i] = _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(at).cast()));
            if MIN {
                m[i] = _mm512_cvtph_ps(_mm256_loadu_si256(w.m.as_ptr().add(at).cast()));
            }
        }
    }
    (d, m)
}

/// The integers of one column of a panel as f32, rows 0..16.
///
/// # Safety
/// AVX-512F is available; `at` addresses the column's bytes.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn ints<const MIN: bool>(at: *const u8) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        if MIN {
            // Eight bytes: rows 0..8 in the low nibbles, rows 8..16 in the high. Both
            // halves of the vector get the eight bytes; the upper half shifts by four.
            let b = _mm_loadl_epi64(at.cast());
            let raw = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(b, b));
            let shift = _mm512_set_epi32(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
            let q = _mm512_and_si512(_mm512_srlv_epi32(raw, shift), _mm512_set1_epi32(0x0f));
            _mm512_cvtepi32_ps(q)
        } else {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(at.cast())))
        }
    }
}

/// The weights `q d` (Q8_0) or `fma(q, d, m)` (Q4_1, `MIN`) of sixteen rows.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn weight<const MIN: bool>(q: __m512, d: __m512, m: __m512) -> __m512 {
    if MIN {
        _mm512_fmadd_ps(q, d, m)
    } else {
        _mm512_mul_ps(q, d)
    }
}
