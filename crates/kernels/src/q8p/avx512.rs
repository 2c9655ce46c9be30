//! The AVX-512 VNNI product routines of [`super`]: a group of four columns of a panel's
//! sixteen weight rows is one 512-bit vector, and one `vpdpbusd` adds its 64 byte products
//! with four activation quants (broadcast) into sixteen 32-bit sums. Every lane performs the
//! scalar reference's f32 operations in its order (the integer sums are exact), so the
//! results are those of [`super::scalar_chunk`] and of [`super::avx2`], bit for bit (tested).
//! Intrinsics and unchecked reads, each after the CPU features and the shapes were checked.

use super::{Acts, BLOCK, GROUPS, PANEL, QMatrix};
use crate::qf::prefetch_streams;
use std::arch::x86_64::*;

/// Bytes ahead of the current weight block to prefetch in each panel's stream.
const PREFETCH: usize = 6144;
/// Most rows of one tile in a product of few rows (decode): all of them, so that the
/// weights are read once.
const FEW: usize = 8;
/// Rows per tile in a product of many rows (prefill, scoring): twelve rows of one panel are
/// 24 accumulators (integer and f32), with the weights and broadcasts in 32 registers.
const MANY: usize = 12;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Rows per activation tile for a product of `rows` rows.
pub fn tile_rows(rows: usize) -> usize {
    if rows <= FEW { FEW } else { MANY }
}

/// Safe entry of [`super::chunk`]: checks the CPU features here; the caller checked the
/// shapes (panels `p0..` cover `out[r].len()` weight rows, `out` holds a slice per
/// activation row, the tiles cover the rows).
pub fn chunk(w: &QMatrix, p0: usize, x: &Acts, out: &mut [&mut [f32]]) {
    assert!(available());
    assert!(x.tiles.iter().all(|&(_, t)| (1..=MANY).contains(&t)));
    let n = out.first().map_or(0, |o| o.len());
    let count = n.div_ceil(PANEL);
    // Panels outermost: a panel's weights (at most 24 KiB) stay in L1 while every tile of
    // rows passes over them; the first tile streams them from memory.
    // Panels per pass: tiles of seven rows and more take one (registers).
    let most = match x.tiles.iter().map(|t| t.1).max() {
        Some(1) => 4,
        Some(t) if t <= 6 => 2,
        _ => 1,
    };
    let mut p = 0;
    while p < count {
        let np = most.min(count - p);
        for (i, &(r0, t)) in x.tiles.iter().enumerate() {
            let first = i == 0;
            // SAFETY: the features were checked; panels `p0 + p..p0 + p + np` and rows
            // `r0..r0 + t` exist, and `out` holds the outputs of panels `p..count`.
            unsafe {
                match (t, np) {
                    (1, 4) => run::<1, 4>(w, p0, p, x, r0, out, n, first),
                    (1, 3) => run::<1, 3>(w, p0, p, x, r0, out, n, first),
                    (1, 2) => run::<1, 2>(w, p0, p, x, r0, out, n, first),
                    (1, _) => run::<1, 1>(w, p0, p, x, r0, out, n, first),
                    (2, 2) => run::<2, 2>(w, p0, p, x, r0, out, n, first),
                    (2, _) => run::<2, 1>(w, p0, p, x, r0, out, n, first),
                    (3, 2) => run::<3, 2>(w, p0, p, x, r0, out, n, first),
                    (3, _) => run::<3, 1>(w, p0, p, x, r0, out, n, first),
                    (4, 2) => run::<4, 2>(w, p0, p, x, r0, out, n, first),
                    (4, _) => run::<4, 1>(w, p0, p, x, r0, out, n, first),
                    (5, 2) => run::<5, 2>(w, p0, p, x, r0, out, n, first),
                    (5, _) => run::<5, 1>(w, p0, p, x, r0, out, n, first),
                    (6, 2) => run::<6, 2>(w, p0, p, x, r0, out, n, first),
                    (6, _) => run::<6, 1>(w, p0, p, x, r0, out, n, first),
                    (7, _) => run::<7, 1>(w, p0, p, x, r0, out, n, first),
                    (8, _) => run::<8, 1>(w, p0, p, x, r0, out, n, first),
                    (9, _) => run::<9, 1>(w, p0, p, x, r0, out, n, first),
                    (10, _) => run::<10, 1>(w, p0, p, x, r0, out, n, first),
                    (11, _) => run::<11, 1>(w, p0, p, x, r0, out, n, first),
                    _ => run::<MANY, 1>(w, p0, p, x, r0, out, n, first),
                }
            }
        }
        p += np;
    }
}

/// One tile of `R` rows from `r0` against panels `p0 + p..p0 + p + NP`, stored into
/// `out[r0..r0 + R]` at the panels' outputs (`n` per row; a last panel may hold fewer).
///
/// # Safety
/// AVX-512F, BW and VNNI are available; the panels exist, the tile `(r0, R)` is one of
/// `x`'s, and `out` holds `n` outputs per row.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn run<const R: usize, const NP: usize>(
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
    let acc = unsafe { tile::<R, NP>(w, p0 + p, x, r0, stream) };
    for (i, acc) in acc.iter().enumerate() {
        let at = PANEL * (p + i);
        let valid = (n - at).min(PANEL);
        let mask: __mmask16 = if valid == PANEL { !0 } else { (1 << valid) - 1 };
        for (t, &v) in acc.iter().enumerate() {
            // SAFETY: `out[r0 + t]` holds outputs `at..at + valid`; the mask keeps the store
            // to those.
            unsafe { _mm512_mask_storeu_ps(out[r0 + t].as_mut_ptr().add(at), mask, v) };
        }
    }
}

/// The per-element operations of [`super::scalar_chunk`] for the tile of `R` rows from `r0`
/// and panels `p..p + NP`: per block in order, the exact integer dot product (from the
/// offset correction, sixteen lanes per `vpdpbusd`), then `y = fma(s, d_w d_x, y)`.
///
/// # Safety
/// As [`run`].
// `t` and `i` index several arrays of one tile at once.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const NP: usize>(
    w: &QMatrix,
    p: usize,
    x: &Acts,
    r0: usize,
    stream: bool,
) -> [[__m512; R]; NP] {
    let nb = w.cols / BLOCK;
    let panel = w.cols * PANEL;
    let qs: [*const u8; NP] = std::array::from_fn(|i| w.qs.as_ptr().wrapping_add((p + i) * panel));
    let ds: [*const u16; NP] =
        std::array::from_fn(|i| w.d.as_ptr().wrapping_add((p + i) * nb * PANEL));
    let xq = x.qs.as_ptr().wrapping_add(r0 * x.cols);
    let (xd, xc) = (
        x.d.as_ptr().wrapping_add(r0 * nb),
        x.corr.as_ptr().wrapping_add(r0 * nb),
    );
    let mut acc = [[_mm512_setzero_ps(); R]; NP];
    for b in 0..nb {
        if stream {
            // The weights come from DRAM for most matrices. A hint only: an address past
            // the matrix is never dereferenced.
            prefetch_streams(&qs, panel, BLOCK * PANEL, b, PREFETCH, b == 0);
        }
        // SAFETY (this block): block `b` of the panels and of the tile's rows exists (the
        // caller's contract); the pointers move within it.
        unsafe {
            let mut sums = [[_mm512_setzero_si512(); R]; NP];
            for t in 0..R {
                let c = _mm512_set1_epi32(*xc.add(b * R + t));
                for i in 0..NP {
                    sums[i][t] = c;
                }
            }
            for g in 0..GROUPS {
                let at = (b * GROUPS + g) * 64;
                let wv: [__m512i; NP] =
                    std::array::from_fn(|i| _mm512_loadu_si512(qs[i].add(at).cast()));
                for t in 0..R {
                    let four = xq.add(at * R / 16 + 4 * t).cast::<i32>().read_unaligned();
                    let xb = _mm512_set1_epi32(four);
                    for i in 0..NP {
                        sums[i][t] = _mm512_dpbusd_epi32(sums[i][t], wv[i], xb);
                    }
                }
            }
            let dw: [__m512; NP] = std::array::from_fn(|i| {
                _mm512_cvtph_ps(_mm256_loadu_si256(ds[i].add(b * PANEL).cast()))
            });
            for t in 0..R {
                let dx = _mm512_set1_ps(*xd.add(b * R + t));
                for i in 0..NP {
                    let s = _mm512_cvtepi32_ps(sums[i][t]);
                    acc[i][t] = _mm512_fmadd_ps(s, _mm512_mul_ps(dw[i], dx), acc[i][t]);
                }
            }
        }
    }
    acc
}
