//! Causal attention of query heads over one sequence's cache, with the key/value heads
//! shared by groups of query heads (grouped-query attention) read once per group.
//!
//! Cache: per layer and key/value head a [`HeadCache`], its keys and values rounded to IEEE
//! half precision (what llama.cpp keeps by default too): half the memory and half the bytes
//! a decode step streams, which at eight sequences of a few hundred positions is a good part
//! of what the step reads. The rounding (to nearest, ties to even) happens once, when a
//! position is appended; reads convert back exactly.
//!
//! Keys are kept in tiles of [`TILE`] positions, dimension-major inside a tile (the tile's
//! 32 values of dimension 0, then of dimension 1, ...), so that the score of every position
//! is its own chain of fused multiply-adds over the dimensions in order:
//! `s_j = fma(q[d], k_j[d], s_j)` for `d = 0, 1, ...` from `+0`. Positions are the vector
//! lanes and never meet, so a vector of 8 (AVX2), 16 (AVX-512) or 1 (portable) lanes gives
//! the same bits, and so does any grouping of heads or rows into work items. Values are kept
//! row by row (a position's `head_dim` values), and every output element is likewise one
//! chain: `o[d] = fma(p_j, v_j[d], o[d])` for `j = 0, 1, ...` from `+0`, over the softmax
//! numerators `p_j = e^(s_j · scale - max)`; the output is divided by their sum
//! ([`lane_sum`]) at the end.
//!
//! Against a dot product per position (a horizontal sum per position and head), the tiled
//! chains need no reduction across lanes and load each key once for the whole group.

use crate::isa::Kernel;
use crate::quant::f16_to_f32;
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Positions per key tile.
pub const TILE: usize = 32;

/// Keys and values of one layer's key/value head for one sequence, in half precision.
#[derive(Clone, Debug, Default)]
pub struct HeadCache {
    /// Tiles of [`TILE`] positions × `head_dim`, dimension-major; the last tile's unused
    /// positions are zero.
    keys: Vec<u16>,
    /// `head_dim` values per position, position after position.
    values: Vec<u16>,
    len: usize,
}

impl HeadCache {
    /// Room for `positions` positions of `head_dim` before the first reallocation.
    pub fn with_capacity(head_dim: usize, positions: usize) -> HeadCache {
        HeadCache {
            keys: Vec::with_capacity(positions.div_ceil(TILE) * TILE * head_dim),
            values: Vec::with_capacity(positions * head_dim),
            len: 0,
        }
    }

    /// Appends one position's key and value (`head_dim` each), rounded to half precision
    /// (to nearest, ties to even; overflow to infinity).
    pub fn push(&mut self, key: &[f32], value: &[f32]) {
        let hd = key.len();
        assert_eq!(value.len(), hd, "a key and a value of one width");
        let lane = self.len % TILE;
        if lane == 0 {
            self.keys.resize(self.keys.len() + TILE * hd, 0);
        }
        let tile = self.keys.len() - TILE * hd;
        // Converted a run at a time (F16C where the CPU has it: the same rounding).
        let mut run = [0u16; 64];
        for (c, part) in key.chunks(run.len()).enumerate() {
            let run = &mut run[..part.len()];
            run.reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(part);
            for (i, &k) in run.iter().enumerate() {
                self.keys[tile + (c * 64 + i) * TILE + lane] = k;
            }
        }
        let at = self.values.len();
        self.values.resize(at + hd, 0);
        self.values[at..]
            .reinterpret_cast_mut::<f16>()
            .convert_from_f32_slice(value);
        self.len += 1;
    }

    /// The stored (rounded) key of position `j`, for tests.
    #[cfg(test)]
    fn key(&self, hd: usize, j: usize) -> Vec<f32> {
        let tile = j / TILE * TILE * hd;
        (0..hd)
            .map(|d| f16_to_f32(self.keys[tile + d * TILE + j % TILE]))
            .collect()
    }
}

/// Attention of a group of `q.len() / head_dim` query heads (side by side in `q`) sharing
/// the key/value head `cache`, over its first `n` positions (`1 <= n <= cache.len()`), into
/// `out` (the heads' outputs side by side). `scale` multiplies the scores before the
/// softmax. `scratch` is reused between calls.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kernel: Kernel,
    q: &[f32],
    cache: &HeadCache,
    head_dim: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let hd = head_dim;
    assert!(hd > 0 && !q.is_empty() && q.len().is_multiple_of(hd) && out.len() == q.len());
    assert!(
        n >= 1 && n <= cache.len,
        "attention over {n} of {} positions",
        cache.len
    );
    let (g, np) = (q.len() / hd, n.div_ceil(TILE) * TILE);
    // The heads' scores, then their softmax sums. Every element is written before it is
    // read (the scores fill whole tiles), so the buffer is only grown, never cleared.
    if scratch.len() < g * np + g {
        scratch.resize(g * np + g, 0.0);
    }
    let (p_all, sums) = scratch[..g * np + g].split_at_mut(g * np);
    scores(kernel, q, &cache.keys, hd, np / TILE, p_all);
    for (p, sum) in p_all.chunks_exact_mut(np).zip(sums.iter_mut()) {
        let max = crate::ops::scale_and_max(&mut p[..n], scale);
        crate::math::exp_sub_in_place(&mut p[..n], max);
        p[n..].fill(0.0);
        *sum = lane_sum(p);
    }
    weighted_sums(kernel, p_all, np, &cache.values, hd, n, out);
    for (o, &sum) in out.chunks_exact_mut(hd).zip(sums.iter()) {
        for x in o {
            *x /= sum;
        }
    }
}

/// Lanes of [`lane_sum`].
const SUM_LANES: usize = 16;

/// The sum of `xs` (a whole number of [`SUM_LANES`]): lane `l` sums the elements at
/// `l, l + 16, ...` in order, then the lanes are added pairwise (`l + 8` into `l`, then
/// `l + 4`, ...). Element-wise on the lanes, so the compiler's vectors give these bits; a
/// serial sum would be a chain of one add per position.
fn lane_sum(xs: &[f32]) -> f32 {
    assert!(xs.len().is_multiple_of(SUM_LANES));
    let mut lanes = [0f32; SUM_LANES];
    for c in xs.chunks_exact(SUM_LANES) {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    let mut w = SUM_LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
    }
    lanes[0]
}

/// Scores of the `q.len() / hd` heads of `q` against every position of the first `tiles`
/// key tiles: `out[h * tiles * TILE + j]`.
pub(crate) fn scores(
    kernel: Kernel,
    q: &[f32],
    keys: &[u16],
    hd: usize,
    tiles: usize,
    out: &mut [f32],
) {
    assert!(keys.len() >= tiles * TILE * hd && out.len() == q.len() / hd * tiles * TILE);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => avx512::scores(q, keys, hd, tiles, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::scores(q, keys, hd, tiles, out),
        _ => scores_portable(q, keys, hd, tiles, out),
    }
}

/// `out[h * hd + d] = Σ_j p[h * stride + j] · v_j[d]` over the first `n` positions (the
/// module's chains), for every head `h < out.len() / hd`.
pub(crate) fn weighted_sums(
    kernel: Kernel,
    p: &[f32],
    stride: usize,
    values: &[u16],
    hd: usize,
    n: usize,
    out: &mut [f32],
) {
    let g = out.len() / hd;
    assert!(values.len() >= n * hd && stride >= n && p.len() >= (g - 1) * stride + n);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => avx512::weighted_sums(p, stride, values, hd, n, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::weighted_sums(p, stride, values, hd, n, out),
        _ => weighted_sums_portable(p, stride, values, hd, n, out, 0),
    }
}

/// The reference: one lane at a time.
fn scores_portable(q: &[f32], keys: &[u16], hd: usize, tiles: usize, out: &mut [f32]) {
    let np = tiles * TILE;
    for (qh, o) in q.chunks_exact(hd).zip(out.chunks_exact_mut(np)) {
        for (j, s) in o.iter_mut().enumerate() {
            let tile = &keys[j / TILE * TILE * hd..];
            let mut acc = 0f32;
            for (d, &qd) in qh.iter().enumerate() {
                acc = qd.mul_add(f16_to_f32(tile[d * TILE + j % TILE]), acc);
            }
            *s = acc;
        }
    }
}

/// The reference for the output columns `from..hd` of every head.
fn weighted_sums_portable(
    p: &[f32],
    stride: usize,
    values: &[u16],
    hd: usize,
    n: usize,
    out: &mut [f32],
    from: usize,
) {
    for (h, o) in out.chunks_exact_mut(hd).enumerate() {
        let ph = &p[h * stride..h * stride + n];
        for (d, od) in o.iter_mut().enumerate().skip(from) {
            let mut acc = 0f32;
            for (j, &pj) in ph.iter().enumerate() {
                acc = pj.mul_add(f16_to_f32(values[j * hd + d]), acc);
            }
            *od = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

/// The vector forms of [`scores`] and [`weighted_sums`], written once over a module's
/// vector type `V` of `L` f32 lanes and its functions `zero`, `splat`, `load_f16` (`L`
/// halves to f32, exact), `fma` (`a * b + c`, one rounding) and `store`, for the target
/// features `$features`; heads are taken `GMAX` at a time (registers).
macro_rules! vector_kernels {
    ($features:literal) => {
        /// Vectors per key tile.
        const TV: usize = super::TILE / L;

        /// Safe entry of [`super::scores`]: checks the CPU features; the caller checked
        /// the shapes.
        pub fn scores(q: &[f32], keys: &[u16], hd: usize, tiles: usize, out: &mut [f32]) {
            assert!(available());
            let np = tiles * super::TILE;
            for (qg, og) in q.chunks(GMAX * hd).zip(out.chunks_mut(GMAX * np)) {
                // SAFETY: the features were checked; `keys` holds `tiles` tiles and `og`
                // the scores of `qg`'s heads.
                unsafe {
                    match qg.len() / hd {
                        1 => scores_g::<1>(qg, keys, hd, tiles, og),
                        2 => scores_g::<2>(qg, keys, hd, tiles, og),
                        3 => scores_g::<3>(qg, keys, hd, tiles, og),
                        _ => scores_g::<GMAX>(qg, keys, hd, tiles, og),
                    }
                }
            }
        }

        /// Every tile's scores for the `G` heads of `q`: per lane, the chain of fused
        /// multiply-adds over the dimensions in order.
        ///
        /// # Safety
        /// The features are available; `q` holds `G` heads, `keys` `tiles` tiles, `out`
        /// `G × tiles × TILE` scores.
        // `h` and `v` index several arrays of registers at once.
        #[allow(clippy::needless_range_loop)]
        #[target_feature(enable = $features)]
        unsafe fn scores_g<const G: usize>(
            q: &[f32],
            keys: &[u16],
            hd: usize,
            tiles: usize,
            out: &mut [f32],
        ) {
            let np = tiles * super::TILE;
            for t in 0..tiles {
                let base = keys.as_ptr().wrapping_add(t * super::TILE * hd);
                let mut acc = [[zero(); TV]; G];
                for d in 0..hd {
                    let mut qb = [zero(); G];
                    for h in 0..G {
                        // SAFETY: `h * hd + d < q.len()`.
                        qb[h] = splat(unsafe { *q.get_unchecked(h * hd + d) });
                    }
                    for v in 0..TV {
                        // SAFETY: inside tile `t`, which `keys` holds.
                        let k = unsafe { load_f16(base.add(d * super::TILE + v * L)) };
                        for h in 0..G {
                            acc[h][v] = fma(qb[h], k, acc[h][v]);
                        }
                    }
                }
                for h in 0..G {
                    for v in 0..TV {
                        // SAFETY: `out` holds `G × np` scores.
                        unsafe {
                            store(
                                out.as_mut_ptr().add(h * np + t * super::TILE + v * L),
                                acc[h][v],
                            )
                        };
                    }
                }
            }
        }

        /// Safe entry of [`super::weighted_sums`]: checks the CPU features; the caller
        /// checked the shapes. Columns past the last whole vector go to the portable loop.
        pub fn weighted_sums(
            p: &[f32],
            stride: usize,
            values: &[u16],
            hd: usize,
            n: usize,
            out: &mut [f32],
        ) {
            assert!(available());
            let (g, full) = (out.len() / hd, hd / L * L);
            let mut h0 = 0;
            while h0 < g {
                let gc = (g - h0).min(GMAX);
                let mut c = 0;
                while c < full {
                    let wide = c + 4 * L <= full;
                    // SAFETY: the features were checked; heads `h0..h0 + gc` and columns
                    // `c..c + 4L` (or `+ L`) exist in `p`, `values` and `out`.
                    unsafe {
                        match (gc, wide) {
                            (1, true) => sums_g::<1, 4>(p, stride, values, hd, n, out, h0, c),
                            (1, false) => sums_g::<1, 1>(p, stride, values, hd, n, out, h0, c),
                            (2, true) => sums_g::<2, 4>(p, stride, values, hd, n, out, h0, c),
                            (2, false) => sums_g::<2, 1>(p, stride, values, hd, n, out, h0, c),
                            (3, true) => sums_g::<3, 4>(p, stride, values, hd, n, out, h0, c),
                            (3, false) => sums_g::<3, 1>(p, stride, values, hd, n, out, h0, c),
                            (_, true) => sums_g::<GMAX, 4>(p, stride, values, hd, n, out, h0, c),
                            (_, false) => sums_g::<GMAX, 1>(p, stride, values, hd, n, out, h0, c),
                        }
                    }
                    c += if wide { 4 * L } else { L };
                }
                h0 += gc;
            }
            super::weighted_sums_portable(p, stride, values, hd, n, out, full);
        }

        /// Columns `c..c + NV × L` of heads `h0..h0 + G`: per element, the chain of fused
        /// multiply-adds over the positions in order.
        ///
        /// # Safety
        /// The features are available; the heads, columns and `n` positions exist.
        #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
        #[target_feature(enable = $features)]
        unsafe fn sums_g<const G: usize, const NV: usize>(
            p: &[f32],
            stride: usize,
            values: &[u16],
            hd: usize,
            n: usize,
            out: &mut [f32],
            h0: usize,
            c: usize,
        ) {
            let mut acc = [[zero(); NV]; G];
            for j in 0..n {
                let mut pb = [zero(); G];
                for h in 0..G {
                    // SAFETY: `(h0 + h) * stride + j < p.len()`.
                    pb[h] = splat(unsafe { *p.get_unchecked((h0 + h) * stride + j) });
                }
                let row = values.as_ptr().wrapping_add(j * hd + c);
                for v in 0..NV {
                    // SAFETY: columns `c..c + NV × L` of position `j` exist.
                    let x = unsafe { load_f16(row.add(v * L)) };
                    for h in 0..G {
                        acc[h][v] = fma(pb[h], x, acc[h][v]);
                    }
                }
            }
            for h in 0..G {
                for v in 0..NV {
                    // SAFETY: `out` holds columns `c..c + NV × L` of head `h0 + h`.
                    unsafe { store(out.as_mut_ptr().add((h0 + h) * hd + c + v * L), acc[h][v]) };
                }
            }
        }
    };
}
use vector_kernels;
