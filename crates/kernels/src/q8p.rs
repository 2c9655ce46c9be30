//! Q8_0 weights times activations quantized to Q8 blocks, in panels for integer
//! multiply-accumulate units (AVX-512 VNNI's `vpdpbusd`: 64 byte products per instruction).
//!
//! Numerics: each activation row is quantized once per product, block by block, exactly as
//! [`crate::q8::Q8Rows`] does (`d = max|x| / 127`, `q = round(x / d)` in `[-127, 127]`,
//! each row on its own). An output element is then, from `y = +0`, for each block `b` in
//! order: the block's exact integer dot product `s = Σ q_w q_x` (32 products of int8
//! values: `|s| < 2^24`, so exact in f32 too), then `y = fma(s, d_w d_x, y)` with the scale
//! product `d_w d_x` rounded to f32 first. The integer part has no order to keep, so every
//! implementation may sum it its own way; the f32 part is one chain per element, whatever the
//! batch, the tile or the thread. The scalar path performs these operations one element at
//! a time, the AVX2 and AVX-512 paths sixteen weight rows at once (lanes that never meet),
//! so all three give the same bits (tested), on any CPU.
//!
//! Layout: weight rows are regrouped at load into panels of [`PANEL`] rows; inside a panel,
//! block after block, the block's 32 columns as [`GROUPS`] groups of four, a group holding
//! four consecutive quants of each of the sixteen rows (64 bytes: one AVX-512 vector, each
//! 32-bit lane one row). The quants are stored offset to unsigned (`q + 128`), the operand
//! `vpdpbusd` wants unsigned; the offset's contribution `128 Σ q_x` is taken off by starting
//! each block's integer sum at `-128 Σ q_x`. Activations are laid out in tiles of rows
//! ([`Acts`]), so a tile's broadcasts are constant offsets of one pointer.
//!
//! Against [`crate::qf`] (f32 activations): the integer products need no conversion of the
//! weights to f32 and do four times the multiply-adds per instruction, so an eight-row decode
//! step or a scoring pass is several times cheaper in arithmetic; the price is the
//! activations' 8-bit rounding (llama.cpp's own CPU path for these weights).

use crate::error::{KernelError, Result};
use crate::isa::Kernel;
use crate::pool::Pool;
use crate::quant::{BLOCK, Stored, WeightQuant, f16_to_f32, quantize_blocks};

/// Weight rows per panel.
pub const PANEL: usize = 16;
/// Column groups of four per block.
pub const GROUPS: usize = BLOCK / 4;

crate::quant::stored_matrix! {
    /// A Q8_0 weight matrix: `rows` outputs of `cols` inputs, in panels (see the module docs):
    /// panel after panel (each part padded with zero rows to whole panels), `cols × 16` quant
    /// bytes each, and per panel, per block, one f16 scale per row. Several matrices sharing an
    /// input can be stacked into one ([`QMatrix::stack`]); a product then returns one output per
    /// part.
}

impl QMatrix {
    /// From GGML `block_q8_0` bytes (f16 d, 32 int8), as candle's `QTensor::data` gives them.
    /// Only Q8_0: other formats run on [`crate::q8`].
    pub fn from_ggml_bytes(
        quant: WeightQuant,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        if quant != WeightQuant::Q8_0 {
            return Err(KernelError::Internal(format!(
                "the Q8 panel kernel runs Q8_0 weights only, not {quant:?}"
            )));
        }
        let (size, head) = Stored::block_size(quant, bytes.len(), rows, cols)?;
        let (nb, panels) = (cols / BLOCK, rows.div_ceil(PANEL));
        // Padding rows: quant 0, stored as 128.
        let mut out = Stored {
            quant,
            rows,
            cols,
            qs: vec![0x80; panels * cols * PANEL],
            d: vec![0; panels * nb * PANEL],
            m: Vec::new(),
            parts: vec![rows],
        };
        for (j, row) in bytes.chunks_exact(nb * size).enumerate() {
            let (p, lane) = (j / PANEL, j % PANEL);
            for (b, blk) in row.chunks_exact(size).enumerate() {
                out.d[(p * nb + b) * PANEL + lane] = u16::from_le_bytes([blk[0], blk[1]]);
                for (i, &q) in blk[head..].iter().enumerate() {
                    out.qs[QMatrix::at(p, cols, b * BLOCK + i, lane)] = q ^ 0x80;
                }
            }
        }
        Ok(QMatrix(out))
    }

    /// Index in `qs` of row `lane` of panel `p` at column `col` (`cols` columns).
    fn at(p: usize, cols: usize, col: usize, lane: usize) -> usize {
        let (b, i) = (col / BLOCK, col % BLOCK);
        p * cols * PANEL + ((b * GROUPS + i / 4) * PANEL + lane) * 4 + i % 4
    }

    /// Integer quant of row `lane` of panel `p` at column `col`.
    fn value(&self, p: usize, lane: usize, col: usize) -> i32 {
        i32::from((self.qs[QMatrix::at(p, self.cols, col, lane)] ^ 0x80) as i8)
    }

    /// Scale of row `lane` of panel `p` in block `b`, as f32.
    fn scale(&self, p: usize, lane: usize, b: usize) -> f32 {
        f16_to_f32(self.d[(p * (self.cols / BLOCK) + b) * PANEL + lane])
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
                    out.push(self.scale(p, lane, col / BLOCK) * self.value(p, lane, col) as f32);
                }
            }
            first += n.div_ceil(PANEL);
        }
        out
    }
}

/// Activation rows of one product, quantized and laid out in tiles of rows
/// ([`crate::qf::row_tiles`] of at most `tile`): tile `(r0, t)` holds its quants at
/// `qs[r0 cols..]`, block after block, group after group, the group's four quants of each of
/// its rows (`((b GROUPS + c) t + j) 4 + i`), and its scales and offset corrections
/// `-128 Σ q` at `d[r0 nb..]`, `corr[r0 nb..]`, block after block, row after row (`b t + j`).
pub struct Acts {
    rows: usize,
    cols: usize,
    tiles: Vec<(usize, usize)>,
    qs: Vec<i8>,
    d: Vec<f32>,
    corr: Vec<i32>,
}

impl Acts {
    /// Quantizes `rows × cols` values `x` (row-major) into tiles of at most `tile` rows, the
    /// tiles in parallel on `pool` (each row's blocks depend only on that row).
    fn new(pool: &Pool, x: &[f32], rows: usize, cols: usize, tile: usize) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK) && x.len() == rows * cols,
            "matmul activations: {} values as {rows}x{cols}",
            x.len()
        );
        let nb = cols / BLOCK;
        let tiles: Vec<(usize, usize)> = crate::qf::row_tiles(rows, tile.max(1)).collect();
        let mut acts = Acts {
            rows,
            cols,
            tiles: tiles.clone(),
            qs: vec![0; x.len()],
            d: vec![0.0; rows * nb],
            corr: vec![0; rows * nb],
        };
        let mut parts = Vec::with_capacity(tiles.len());
        let (mut qs, mut d, mut corr) = (&mut acts.qs[..], &mut acts.d[..], &mut acts.corr[..]);
        for &(r0, t) in &tiles {
            let (q, q_rest) = std::mem::take(&mut qs).split_at_mut(t * cols);
            let (dd, d_rest) = std::mem::take(&mut d).split_at_mut(t * nb);
            let (c, c_rest) = std::mem::take(&mut corr).split_at_mut(t * nb);
            parts.push((&x[r0 * cols..(r0 + t) * cols], t, q, dd, c));
            (qs, d, corr) = (q_rest, d_rest, c_rest);
        }
        let vector = Imp::of(pool.kernel()).vector_quantize();
        let quantize = |(x, t, qs, d, corr): (&[f32], usize, &mut [i8], &mut [f32], &mut [i32])| {
            let (mut rq, mut rd, mut rs) = (vec![0i8; cols], vec![0f32; nb], vec![0f32; nb]);
            for (j, row) in x.chunks_exact(cols).enumerate() {
                match vector {
                    #[cfg(target_arch = "x86_64")]
                    true => avx2::quantize_blocks(row, &mut rq, &mut rd),
                    _ => quantize_blocks(row, &mut rq, &mut rd, &mut rs),
                }
                for b in 0..nb {
                    let blk = &rq[b * BLOCK..(b + 1) * BLOCK];
                    d[b * t + j] = rd[b];
                    corr[b * t + j] = -128 * blk.iter().map(|&q| i32::from(q)).sum::<i32>();
                    for (c, four) in blk.chunks_exact(4).enumerate() {
                        let at = ((b * GROUPS + c) * t + j) * 4;
                        qs[at..at + 4].copy_from_slice(four);
                    }
                }
            }
        };
        if rows > 1 {
            pool.for_each(parts, quantize);
        } else {
            parts.into_iter().for_each(quantize);
        }
        acts
    }

    /// The tile `(first row, rows)` that holds row `r`.
    fn tile_of(&self, r: usize) -> (usize, usize) {
        let at = self.tiles.partition_point(|&(r0, t)| r0 + t <= r);
        self.tiles[at]
    }

    /// Quant `k` of activation row `r` (of tile `(r0, t)`) and its block's scale.
    fn value(&self, (r0, t): (usize, usize), r: usize, k: usize) -> (i32, f32) {
        let nb = self.cols / BLOCK;
        let (j, b, c, i) = (r - r0, k / BLOCK, k % BLOCK / 4, k % 4);
        let q = self.qs[r0 * self.cols + ((b * GROUPS + c) * t + j) * 4 + i];
        (i32::from(q), self.d[r0 * nb + b * t + j])
    }
}

/// Which implementation runs the products for a kernel choice: VNNI where the AVX-512
/// choice finds it, else the AVX2 form (same bits), or the scalar reference.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Imp {
    #[cfg(target_arch = "x86_64")]
    Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Imp {
    fn of(kernel: Kernel) -> Imp {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if avx512::available() => Imp::Vnni,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx2 => Imp::Avx2,
            _ => Imp::Scalar,
        }
    }

    /// Whether activations are quantized with the AVX2 routine (the same bits as the scalar
    /// one, which the scalar kernel keeps).
    fn vector_quantize(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self != Imp::Scalar {
            return avx2::available();
        }
        false
    }
}

/// `x · Wᵀ` for `rows` activation rows `x` (row-major, `w`'s width): per part of `w`, a
/// row-major `[rows × part rows]` output.
pub fn matmul(pool: &Pool, w: &QMatrix, x: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let kernel = pool.kernel();
    let acts = Acts::new(pool, x, rows, w.cols, tile_rows(kernel, rows));
    let m = rows;
    let mut outs: Vec<Vec<f32>> = w.parts.iter().map(|&n| vec![0f32; m * n]).collect();
    if m == 0 {
        return outs;
    }
    // Work items as the f32 kernel's (same panel height).
    const { assert!(PANEL == crate::qf::PANEL) };
    let items = crate::qf::panel_items(&mut outs, &w.parts, pool.threads());
    pool.for_each(items, |(p0, mut out)| chunk(kernel, w, p0, &acts, &mut out));
    outs
}

/// Rows per activation tile for `kernel` and a product of `rows` rows.
fn tile_rows(kernel: Kernel, rows: usize) -> usize {
    match Imp::of(kernel) {
        #[cfg(target_arch = "x86_64")]
        Imp::Vnni => avx512::tile_rows(rows),
        #[cfg(target_arch = "x86_64")]
        Imp::Avx2 => avx2::TILE,
        Imp::Scalar => rows,
    }
}

/// Name of this kernel's implementation for `kernel` (part of the node class), e.g.
/// `sortition-q8p/avx512vnni`.
pub fn kernel_name(kernel: Kernel) -> String {
    let imp = match Imp::of(kernel) {
        #[cfg(target_arch = "x86_64")]
        Imp::Vnni => "avx512vnni",
        #[cfg(target_arch = "x86_64")]
        Imp::Avx2 => "avx2",
        Imp::Scalar => "scalar",
    };
    format!("sortition-q8p/{imp}")
}

/// Panels from `p0` against every activation row: `out[r][i]` is weight row `16 p0 + i` (of
/// the panels' part) against activation row `r`. The shapes are checked once here; the
/// loops over panels and rows run inside the kernel.
fn chunk(kernel: Kernel, w: &QMatrix, p0: usize, x: &Acts, out: &mut [&mut [f32]]) {
    let nb = w.cols / BLOCK;
    let n = out.first().map_or(0, |o| o.len());
    let total = w.qs.len() / (w.cols * PANEL);
    assert!(w.cols == x.cols && x.qs.len() == x.rows * x.cols && out.len() == x.rows);
    assert!(x.d.len() == x.rows * nb && x.corr.len() == x.d.len());
    assert!(out.iter().all(|o| o.len() == n) && p0 + n.div_ceil(PANEL) <= total);
    assert!(w.d.len() == total * nb * PANEL);
    assert!(x.tiles.iter().map(|t| t.1).sum::<usize>() == x.rows);
    match Imp::of(kernel) {
        #[cfg(target_arch = "x86_64")]
        Imp::Vnni => avx512::chunk(w, p0, x, out),
        #[cfg(target_arch = "x86_64")]
        Imp::Avx2 => avx2::chunk(w, p0, x, out),
        Imp::Scalar => scalar_chunk(w, p0, x, out),
    }
}

/// [`chunk`] with the reference operations (see the module docs), one output element at a
/// time.
fn scalar_chunk(w: &QMatrix, p0: usize, x: &Acts, out: &mut [&mut [f32]]) {
    let nb = w.cols / BLOCK;
    for (r, o) in out.iter_mut().enumerate() {
        let tile = x.tile_of(r);
        for (i, y) in o.iter_mut().enumerate() {
            let (p, lane) = (p0 + i / PANEL, i % PANEL);
            let mut acc = 0f32;
            for b in 0..nb {
                let s: i32 = (b * BLOCK..(b + 1) * BLOCK)
                    .map(|k| x.value(tile, r, k).0 * w.value(p, lane, k))
                    .sum();
                let dx = x.value(tile, r, b * BLOCK).1;
                acc = (s as f32).mul_add(w.scale(p, lane, b) * dx, acc);
            }
            *y = acc;
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
