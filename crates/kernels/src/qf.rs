//! Our quantized-weight matrix product: `y = x · Wᵀ` with `W` in GGML blocks of 32 (Q8_0:
//! int8 and an f16 scale; Q4_1: 4-bit, an f16 scale and an f16 minimum) and the activations
//! `x` in f32, never quantized.
//!
//! Layout: weight rows are regrouped at load into panels of [`PANEL`] rows, column-major
//! inside a panel, so that a vector of eight weight rows of one column is one small load:
//! a product broadcasts one activation and fused multiply-adds it into eight outputs at once.
//! A worker streams each panel once per call against every activation row (in tiles of up
//! to [`ROW_TILE`] rows), so a decode step with eight sequences reads the weights once.
//!
//! Determinism: every output element `y = Σ_k x_k w_k` is computed by one sequence of
//! operations, whatever the batch, the tile or the thread: from `y = +0`, for each column `k`
//! in order, the weight `w_k = q_k d` (Q8_0: exact in f32) or `w_k = fma(q_k, d, m)` (Q4_1)
//! of its block, then `y = fma(x_k, w_k, y)`. Tiling and threads only decide which elements a
//! worker computes, and whether a panel's weights are converted once into a buffer or on the
//! fly (the same values), never how one element is computed, so results are bit-identical
//! whatever the batch, its other rows or the thread count. The scalar path performs the same
//! operations (`f32::mul_add` is fused), so it reproduces the AVX2 and AVX-512 paths bit for
//! bit (tested), on any CPU: a panel's sixteen rows are two AVX2 vectors or one AVX-512
//! vector, lanes that never meet, so the vector width changes nothing in an element's chain.

use crate::error::Result;
use crate::isa::Kernel;
use crate::pool::Pool;
use crate::quant::{BLOCK, Stored, WeightQuant, f16_to_f32};

/// Weight rows per panel (two vectors of eight).
pub const PANEL: usize = 16;
/// Most activation rows computed together against one panel.
pub const ROW_TILE: usize = 6;
/// Fewest panels per parallel work item.
const MIN_PANELS: usize = 2;

/// Quant bytes of one column of a panel: Q8_0 one int8 per row; Q4_1 byte `i` holds row `i`
/// in its low nibble and row `i + 8` in its high one.
fn panel_bytes_per_col(quant: WeightQuant) -> usize {
    match quant {
        WeightQuant::Q8_0 => PANEL,
        WeightQuant::Q4_1 => PANEL / 2,
    }
}

crate::quant::stored_matrix! {
    /// A quantized weight matrix: `rows` outputs of `cols` inputs, in panels of [`PANEL`] rows:
    /// panel after panel (each part padded with zero rows to whole panels), column after column
    /// ([`panel_bytes_per_col`] bytes each); scales (and Q4_1 minimums) per panel, per block, one
    /// per row of the panel. Several matrices sharing an input can be stacked into one
    /// ([`QMatrix::stack`]); a product then returns one output per part.
}

impl QMatrix {
    /// From GGML `block_q8_0` (f16 d, 32 int8) or `block_q4_1` (f16 d, f16 m, 16 bytes)
    /// bytes, as candle's `QTensor::data` gives them.
    pub fn from_ggml_bytes(
        quant: WeightQuant,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let (size, head) = Stored::block_size(quant, bytes.len(), rows, cols)?;
        let (nb, panels) = (cols / BLOCK, rows.div_ceil(PANEL));
        let per_col = panel_bytes_per_col(quant);
        let mut out = Stored {
            quant,
            rows,
            cols,
            qs: vec![0; panels * cols * per_col],
            d: vec![0; panels * nb * PANEL],
            m: if quant == WeightQuant::Q4_1 {
                vec![0; panels * nb * PANEL]
            } else {
                Vec::new()
            },
            parts: vec![rows],
        };
        for (j, row) in bytes.chunks_exact(nb * size).enumerate() {
            let (p, lane) = (j / PANEL, j % PANEL);
            for (b, blk) in row.chunks_exact(size).enumerate() {
                let at = (p * nb + b) * PANEL + lane;
                out.d[at] = u16::from_le_bytes([blk[0], blk[1]]);
                if quant == WeightQuant::Q4_1 {
                    out.m[at] = u16::from_le_bytes([blk[2], blk[3]]);
                }
                for i in 0..BLOCK {
                    let col = p * cols + b * BLOCK + i;
                    match quant {
                        WeightQuant::Q8_0 => out.qs[col * PANEL + lane] = blk[head + i],
                        WeightQuant::Q4_1 => {
                            // GGML: value `i < 16` in the low nibble of byte `i`, value
                            // `i + 16` in the high nibble of byte `i - 16`.
                            let byte = blk[head + i % 16];
                            let v = if i < 16 { byte & 0x0f } else { byte >> 4 };
                            let (at, shift) = (col * (PANEL / 2) + lane % 8, 4 * (lane / 8));
                            out.qs[at] |= v << shift;
                        }
                    }
                }
            }
        }
        Ok(QMatrix(out))
    }

    /// Integer `q` of row `lane` of panel `p` at column `col`.
    fn value(&self, p: usize, lane: usize, col: usize) -> i16 {
        let per_col = panel_bytes_per_col(self.quant);
        let at = (p * self.cols + col) * per_col;
        match self.quant {
            WeightQuant::Q8_0 => i16::from(self.qs[at + lane] as i8),
            WeightQuant::Q4_1 => i16::from((self.qs[at + lane % 8] >> (4 * (lane / 8))) & 0x0f),
        }
    }

    /// Scale and minimum (0 for Q8_0) of row `lane` of panel `p` in block `b`, as f32.
    fn scale(&self, p: usize, lane: usize, b: usize) -> (f32, f32) {
        let at = (p * (self.cols / BLOCK) + b) * PANEL + lane;
        let m = self.m.get(at).map_or(0.0, |&m| f16_to_f32(m));
        (f16_to_f32(self.d[at]), m)
    }

    /// The f32 values the quants stand for, row-major over all parts (tests and references).
    #[cfg(test)]
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        let mut first = 0;
        for &n in &self.parts {
            for j in 0..n {
                let (p, lane) = (first + j / PANEL, j % PANEL);
                for col in 0..self.cols {
                    let (d, m) = self.scale(p, lane, col / BLOCK);
                    out.push(d * f32::from(self.value(p, lane, col)) + m);
                }
            }
            first += n.div_ceil(PANEL);
        }
        out
    }
}

/// Activation rows of one product: `rows × cols` f32.
pub struct Acts<'a> {
    x: &'a [f32],
    rows: usize,
    cols: usize,
    /// For kernels that want them (AVX-512 with many rows): the rows again, in tiles of
    /// `tile` rows ([`row_tiles`]), each tile column after column (tile `(r0, t)` at
    /// `r0 cols`, its value `(k, j)` at `k t + j`). Packed once per product, not per item.
    packed: Vec<f32>,
    tile: usize,
}

impl<'a> Acts<'a> {
    fn new(pool: &Pool, x: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK) && x.len() == rows * cols,
            "matmul activations: {} values as {rows}x{cols}",
            x.len()
        );
        let tile = match pool.kernel() {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::packed_tile_rows(rows),
            _ => None,
        };
        let Some(tile) = tile else {
            return Acts {
                x,
                rows,
                cols,
                packed: Vec::new(),
                tile: 0,
            };
        };
        // Tile by tile, in parallel (each tile's values are a run of their own).
        let mut packed = vec![0f32; x.len()];
        let mut parts: Vec<((usize, usize), &mut [f32])> = Vec::new();
        let mut left = packed.as_mut_slice();
        for (r0, t) in row_tiles(rows, tile) {
            let (part, rest) = std::mem::take(&mut left).split_at_mut(t * cols);
            parts.push(((r0, t), part));
            left = rest;
        }
        pool.for_each(parts, |((r0, t), dst)| {
            // Column after column: the writes run in order, the reads are `t` streams.
            let rows = &x[r0 * cols..(r0 + t) * cols];
            for (k, col) in dst.chunks_exact_mut(t).enumerate() {
                for (j, d) in col.iter_mut().enumerate() {
                    *d = rows[j * cols + k];
                }
            }
        });
        Acts {
            x,
            rows,
            cols,
            packed,
            tile,
        }
    }
}

/// `x · Wᵀ` for `rows` activation rows `x` (row-major, `w`'s width): per part of `w`, a
/// row-major `[rows × part rows]` output.
pub fn matmul(pool: &Pool, w: &QMatrix, x: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let acts = Acts::new(pool, x, rows, w.cols);
    let m = rows;
    let mut outs: Vec<Vec<f32>> = w.parts.iter().map(|&n| vec![0f32; m * n]).collect();
    if m == 0 {
        return outs;
    }
    let items = panel_items(&mut outs, &w.parts, pool.threads());
    let kernel = pool.kernel();
    pool.for_each(items, |(p0, mut out)| chunk(kernel, w, p0, &acts, &mut out));
    outs
}

/// Panels from `p0` against every activation row of `x`: `out[r][i]` is weight row
/// `16 p0 + i` (of the panels' part) against activation row `r`. The shapes are checked once
/// here; the loops over panels and rows run inside the kernel.
fn chunk(kernel: Kernel, w: &QMatrix, p0: usize, x: &Acts<'_>, out: &mut [&mut [f32]]) {
    let (nb, per_col) = (w.cols / BLOCK, panel_bytes_per_col(w.quant));
    let n = out.first().map_or(0, |o| o.len());
    let total = w.qs.len() / (w.cols * per_col);
    assert!(w.cols == x.cols && x.x.len() == x.rows * x.cols && out.len() == x.rows);
    assert!(out.iter().all(|o| o.len() == n) && p0 + n.div_ceil(PANEL) <= total);
    assert!(w.d.len() == total * nb * PANEL);
    assert!(w.quant != WeightQuant::Q4_1 || w.m.len() == w.d.len());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => avx512::chunk(w, p0, x, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::chunk(w, p0, x, out),
        _ => scalar_chunk(w, p0, x, out),
    }
}

/// The work items of a product over panels of [`PANEL`] rows (also [`crate::q8p`]'s): per
/// part of the weights (`parts[i]` rows, outputs `outs[i]`, row-major per activation row), a
/// run of panels from `p0` and, per activation row, its outputs; about eight items per thread
/// and part, each at least [`MIN_PANELS`] panels.
pub(crate) fn panel_items<'a>(
    outs: &'a mut [Vec<f32>],
    parts: &[usize],
    threads: usize,
) -> Vec<(usize, Vec<&'a mut [f32]>)> {
    let mut items: Vec<(usize, Vec<&mut [f32]>)> = Vec::new();
    let mut p0 = 0;
    for (out, &n) in outs.iter_mut().zip(parts) {
        let panels = n.div_ceil(PANEL);
        let per = (panels / (8 * threads)).clamp(MIN_PANELS, 16) * PANEL;
        let first = items.len();
        items.extend((0..n.div_ceil(per)).map(|c| (p0 + c * per / PANEL, Vec::new())));
        for row in out.chunks_exact_mut(n) {
            for (c, piece) in row.chunks_mut(per).enumerate() {
                items[first + c].1.push(piece);
            }
        }
        p0 += panels;
    }
    items
}

/// Tiles of at most `most` rows covering `rows`, as even as possible: `(first, len)`.
pub(crate) fn row_tiles(rows: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = rows.div_ceil(most);
    (0..tiles).scan(0, move |r0, i| {
        let t = (rows - *r0) / (tiles - i);
        let tile = (*r0, t);
        *r0 += t;
        Some(tile)
    })
}

/// Runs `f` on a scratch copy of a work item's outputs (`count` panels' worth per row), then
/// copies each row out whole. The copy's rows are a little more than the item apart: written
/// in place, a panel's sixteen outputs of every row would be a row length apart, for the
/// widest layers (the output layer, the stacked gate and up) a multiple of 4 KiB, so every
/// row's line falls in the same cache set and each write went out to L3 (up to 20 % slower).
fn through_scratch(out: &mut [&mut [f32]], count: usize, f: impl FnOnce(&mut [&mut [f32]])) {
    let stride = count * PANEL + PANEL;
    with_scratch(&OUT_SCRATCH, out.len() * stride, |scratch| {
        let mut rows: Vec<&mut [f32]> = scratch.chunks_exact_mut(stride).collect();
        f(&mut rows);
        for (o, s) in out.iter_mut().zip(rows) {
            o.copy_from_slice(&s[..o.len()]);
        }
    })
}

thread_local! {
    /// [`through_scratch`]'s space.
    static OUT_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Space for converted weight panels.
    pub(crate) static PANEL_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `n` f32 of this thread's space `slot`, kept from call to call so that the
/// products of many rows neither allocate nor clear it each time: its contents are whatever
/// an earlier call left (zero at first), so `f` writes every value before it reads it.
pub(crate) fn with_scratch<R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    n: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    slot.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.len() < n {
            v.resize(n, 0.0);
        }
        f(&mut v[..n])
    })
}

/// [`chunk`] with the reference operations (see the module docs), one output
/// element at a time.
fn scalar_chunk(w: &QMatrix, p0: usize, x: &Acts<'_>, out: &mut [&mut [f32]]) {
    let nb = w.cols / BLOCK;
    for (r, o) in out.iter_mut().enumerate() {
        let xr = &x.x[r * x.cols..(r + 1) * x.cols];
        for (i, y) in o.iter_mut().enumerate() {
            let (p, lane) = (p0 + i / PANEL, i % PANEL);
            let mut acc = 0f32;
            for b in 0..nb {
                let (d, m) = w.scale(p, lane, b);
                for (k, &xk) in xr.iter().enumerate().skip(b * BLOCK).take(BLOCK) {
                    let q = f32::from(w.value(p, lane, k));
                    let wk = match w.quant {
                        WeightQuant::Q8_0 => q * d,
                        WeightQuant::Q4_1 => q.mul_add(d, m),
                    };
                    acc = xk.mul_add(wk, acc);
                }
            }
            *y = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::prefetch_streams;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
