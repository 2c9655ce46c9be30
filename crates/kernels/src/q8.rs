//! Our quantized matrix product: `y = x · Wᵀ` with `W` in GGML blocks of 32 (Q8_0: int8 and
//! an f16 scale; Q4_1: 4-bit, an f16 scale and an f16 minimum) and each activation row
//! quantized once to Q8 blocks with f32 scales, like llama.cpp's q8_0 × q8_0 and q4_1 × q8_1.
//! The engine runs Q4_1 weights here (4-bit × int8 products are cheap in AVX2's integer
//! units, which made single-stream decode 15-35 % faster than with f32 activations) and Q8_0
//! weights on [`crate::q8p`] or [`crate::qf`]; what all products share is in [`crate::quant`],
//! [`crate::isa`] and [`crate::pool`].
//!
//! Batching: a worker streams each weight row once per call and dots it against every
//! activation row (in tiles of up to [`ROW_TILE`] rows), so a decode step with eight
//! sequences reads the weights once, not eight times.
//!
//! Determinism: every output element comes from one dot routine per weight format: for each
//! block in order, eight int32 lane sums (values `4k..4k+4` in lane `k`) converted to f32 and
//! fused multiply-added with `d_w * d_x` into eight f32 lanes (Q4_1 also fused multiply-adds
//! `m_w * s_x` into one f32, `s_x` being the activation block's sum); then the lanes are summed
//! in a fixed tree ([`hsum8`]). Tiling and threads only decide which elements a worker
//! computes, never how one is reduced, so results are bit-identical whatever the batch, its
//! other rows or the thread count. The scalar path performs the same operations
//! (`f32::mul_add` is fused), so it reproduces the AVX2 path bit for bit (tested), on any CPU.

use crate::error::Result;
use crate::isa::Kernel;
use crate::pool::Pool;
use crate::quant::{BLOCK, Stored, WeightQuant, f16_to_f32, quantize_blocks};

/// Activation rows computed together against one weight row.
pub const ROW_TILE: usize = 4;
/// Fewest weight rows per parallel work item.
const MIN_CHUNK: usize = 16;

crate::quant::stored_matrix! {
    /// A quantized weight matrix, row-major: row `j` is `cols / 32` blocks (quants: Q8_0 one int8
    /// per value; Q4_1 GGML's nibble order, value `i < 16` in the low nibble of byte `i`, value
    /// `i + 16` in its high nibble). Several matrices sharing an input can be stacked into one
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
        let blocks = rows * cols / BLOCK;
        let mut out = Stored {
            quant,
            rows,
            cols,
            qs: Vec::with_capacity(blocks * quant.qbytes()),
            d: Vec::with_capacity(blocks),
            m: Vec::new(),
            parts: vec![rows],
        };
        for b in bytes.chunks_exact(size) {
            out.d.push(u16::from_le_bytes([b[0], b[1]]));
            if quant == WeightQuant::Q4_1 {
                out.m.push(u16::from_le_bytes([b[2], b[3]]));
            }
            out.qs.extend_from_slice(&b[head..]);
        }
        Ok(QMatrix(out))
    }

    /// Weight row `j`.
    fn row(&self, j: usize) -> WRow<'_> {
        let (nb, qb) = (self.cols / BLOCK, self.cols / BLOCK * self.quant.qbytes());
        WRow {
            q: &self.qs[j * qb..(j + 1) * qb],
            d: &self.d[j * nb..(j + 1) * nb],
            m: if self.m.is_empty() {
                &[]
            } else {
                &self.m[j * nb..(j + 1) * nb]
            },
        }
    }

    /// The f32 values the quants stand for (tests and references).
    #[cfg(test)]
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows)
            .flat_map(|j| {
                let r = self.row(j);
                (0..self.cols / BLOCK).flat_map(move |b| {
                    let (d, m) = (
                        f16_to_f32(r.d[b]),
                        r.m.get(b).map_or(0.0, |&m| f16_to_f32(m)),
                    );
                    (0..BLOCK).map(move |i| d * f32::from(r.value(self.quant, b, i)) + m)
                })
            })
            .collect()
    }
}

/// One weight row: quant bytes, f16 scales and (Q4_1) minimums.
#[derive(Clone, Copy)]
struct WRow<'a> {
    q: &'a [u8],
    d: &'a [u16],
    m: &'a [u16],
}

impl WRow<'_> {
    /// Value `i` of block `b`, as an integer.
    fn value(&self, quant: WeightQuant, b: usize, i: usize) -> i16 {
        match quant {
            WeightQuant::Q8_0 => i16::from(self.q[b * BLOCK + i] as i8),
            WeightQuant::Q4_1 => {
                let byte = self.q[b * BLOCK / 2 + i % 16];
                i16::from(if i < 16 { byte & 0x0f } else { byte >> 4 })
            }
        }
    }
}

/// One activation row: int8 quants, f32 scales, and per block `d * Σ q`.
#[derive(Clone, Copy)]
struct XRow<'a> {
    q: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
}

/// Activation rows quantized to Q8 blocks with f32 scales, once per product.
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Rows {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    /// Per block `d * Σ q` (for Q4_1's minimum term).
    s: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes `rows` rows of `cols` values, each block to `round(x / d)` with
    /// `d = max|x| / 127` (llama.cpp's `quantize_row_q8_0`, keeping `d` in f32).
    /// Each row's blocks depend only on that row.
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        let mut out = Q8Rows::zeroed(x, rows, cols);
        quantize_blocks(x, &mut out.qs, &mut out.d, &mut out.s);
        out
    }

    /// Room for `x` as `rows × cols` (checked), all zero.
    fn zeroed(x: &[f32], rows: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK) && x.len() == rows * cols,
            "q8 rows: {} values as {rows}x{cols}",
            x.len()
        );
        let nb = x.len() / BLOCK;
        Q8Rows {
            rows,
            cols,
            qs: vec![0i8; x.len()],
            d: vec![0f32; nb],
            s: vec![0f32; nb],
        }
    }

    /// [`Q8Rows::quantize`] with the blocks split among `pool`'s threads (each block depends
    /// only on its own values, so the result is the same).
    pub fn quantize_on(pool: &Pool, x: &[f32], rows: usize, cols: usize) -> Self {
        const PER: usize = 64;
        if pool.threads() == 1 || x.len() < 4 * PER * BLOCK {
            return Q8Rows::quantize(x, rows, cols);
        }
        let mut out = Q8Rows::zeroed(x, rows, cols);
        let items: Vec<_> = x
            .chunks(PER * BLOCK)
            .zip(out.qs.chunks_mut(PER * BLOCK))
            .zip(out.d.chunks_mut(PER).zip(out.s.chunks_mut(PER)))
            .collect();
        pool.for_each(items, |((x, q), (d, s))| quantize_blocks(x, q, d, s));
        out
    }

    fn row(&self, r: usize) -> XRow<'_> {
        let (k, nb) = (self.cols, self.cols / BLOCK);
        XRow {
            q: &self.qs[r * k..(r + 1) * k],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }

    /// The f32 values the quants stand for (tests and references).
    #[cfg(test)]
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(BLOCK)
            .zip(&self.d)
            .flat_map(|(q, &d)| q.iter().map(move |&v| v as f32 * d))
            .collect()
    }
}

/// Sums eight lanes in a fixed tree: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
fn hsum8(l: [f32; 8]) -> f32 {
    let s = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// [`Kernel::panel`] with the reference routines, one weight row at a time.
fn scalar_panel<const N: usize>(
    w: &QMatrix,
    (j0, n): (usize, usize),
    x: &Q8Rows,
    r0: usize,
    out: &mut [&mut [f32]],
) {
    let xs: [XRow<'_>; N] = std::array::from_fn(|t| x.row(r0 + t));
    for i in 0..n {
        let [vals] = scalar_tile(w.quant, [w.row(j0 + i)], xs);
        for (o, v) in out.iter_mut().zip(vals) {
            o[i] = v;
        }
    }
}

/// The reference dot routines (see the module docs).
fn scalar_tile<const W: usize, const N: usize>(
    quant: WeightQuant,
    w: [WRow<'_>; W],
    x: [XRow<'_>; N],
) -> [[f32; N]; W] {
    let mut out = [[0f32; N]; W];
    for (wr, out_w) in w.iter().zip(out.iter_mut()) {
        for (xr, o) in x.iter().zip(out_w.iter_mut()) {
            let mut lanes = [0f32; 8];
            let mut msum = 0f32;
            for b in 0..xr.d.len() {
                let d = f16_to_f32(wr.d[b]) * xr.d[b];
                for (k, lane) in lanes.iter_mut().enumerate() {
                    let s: i32 = (4 * k..4 * k + 4)
                        .map(|i| i32::from(wr.value(quant, b, i)) * i32::from(xr.q[b * BLOCK + i]))
                        .sum();
                    *lane = (s as f32).mul_add(d, *lane);
                }
                if quant == WeightQuant::Q4_1 {
                    msum = f16_to_f32(wr.m[b]).mul_add(xr.s[b], msum);
                }
            }
            *o = match quant {
                WeightQuant::Q8_0 => hsum8(lanes),
                WeightQuant::Q4_1 => hsum8(lanes) + msum,
            };
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;

/// Weight rows `j0..j0 + n` of `w` against activation rows `r0..r0 + N` of `x`:
/// `out[t][i]` is weight row `j0 + i` against activation row `r0 + t`. The shapes are
/// checked once here; the loop over weight rows runs inside the kernel.
fn panel<const N: usize>(
    kernel: Kernel,
    w: &QMatrix,
    (j0, n): (usize, usize),
    x: &Q8Rows,
    r0: usize,
    out: &mut [&mut [f32]],
) {
    let nb = w.cols / BLOCK;
    assert!(w.cols == x.cols && j0 + n <= w.rows && r0 + N <= x.rows && out.len() == N);
    assert!(w.qs.len() == w.rows * nb * w.quant.qbytes() && w.d.len() == w.rows * nb);
    assert!(w.quant != WeightQuant::Q4_1 || w.m.len() == w.d.len());
    assert!(x.qs.len() == x.rows * x.cols && x.d.len() == x.rows * nb && x.s.len() == x.d.len());
    assert!(out.iter().all(|o| o.len() == n));
    match kernel.integer() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::panel::<N>(w, (j0, n), x, r0, out),
        _ => scalar_panel::<N>(w, (j0, n), x, r0, out),
    }
}

/// The products of this module on a [`Pool`].
impl Pool {
    /// `x · Wᵀ`: per part of `w`, a row-major `[x.rows × part rows]` output.
    pub fn matmul(&self, w: &QMatrix, x: &Q8Rows) -> Vec<Vec<f32>> {
        assert_eq!(w.cols, x.cols, "matmul widths");
        let m = x.rows;
        let mut outs: Vec<Vec<f32>> = w.parts.iter().map(|&n| vec![0f32; m * n]).collect();
        if m == 0 {
            return outs;
        }
        // A work item: a run of weight rows from `j0` and, per activation row, its outputs.
        // About eight items per thread and part, in multiples of four weight rows.
        let mut items: Vec<(usize, Vec<&mut [f32]>)> = Vec::new();
        let mut j0 = 0;
        for (out, &n) in outs.iter_mut().zip(&w.parts) {
            let per = (n / (8 * self.threads()))
                .next_multiple_of(4)
                .clamp(MIN_CHUNK, 256);
            let first = items.len();
            items.extend((0..n.div_ceil(per)).map(|c| (j0 + c * per, Vec::with_capacity(m))));
            for row in out.chunks_exact_mut(n) {
                for (c, piece) in row.chunks_mut(per).enumerate() {
                    items[first + c].1.push(piece);
                }
            }
            j0 += n;
        }
        let kernel = self.kernel();
        self.for_each(items, |(j0, mut out)| chunk(kernel, w, x, j0, &mut out));
        outs
    }
}

/// Weight rows `j0..` against every activation row `r`, into `out[r]` (as many weight rows
/// as it holds): tiles of up to [`ROW_TILE`] activation rows outermost, so that one tile
/// stays in L1 while the chunk's weight rows (in L1/L2 after the first tile) stream past it.
fn chunk(kernel: Kernel, w: &QMatrix, x: &Q8Rows, j0: usize, out: &mut [&mut [f32]]) {
    let n = out.first().map_or(0, |o| o.len());
    let mut r0 = 0;
    while r0 < x.rows {
        let t = ROW_TILE.min(x.rows - r0);
        let o = &mut out[r0..r0 + t];
        match t {
            1 => panel::<1>(kernel, w, (j0, n), x, r0, o),
            2 => panel::<2>(kernel, w, (j0, n), x, r0, o),
            3 => panel::<3>(kernel, w, (j0, n), x, r0, o),
            _ => panel::<ROW_TILE>(kernel, w, (j0, n), x, r0, o),
        }
        r0 += t;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
