//! Our quantized matrix product: `y = x · Wᵀ` with `W` in GGML blocks of 32 (Q8_0: int8 and
//! an f16 scale; Q4_1: 4-bit, an f16 scale and an f16 minimum) and each activation row
//! quantized once to Q8 blocks with f32 scales, like llama.cpp's q8_0 × q8_0 and q4_1 × q8_1.
//! The engine runs Q4_1 weights here (4-bit × int8 products are cheap in AVX2's integer
//! units, which made single-stream decode 15-35 % faster than with f32 activations) and Q8_0
//! weights on [`crate::qf`] (f32 activations). This module also holds what both share: the
//! [`Kernel`] choice, the thread [`Pool`], and the vectorized row routines.
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

use rayon::prelude::*;

use crate::error::{KernelError, Result};

/// Values per quantization block.
pub const BLOCK: usize = 32;
/// Activation rows computed together against one weight row.
pub const ROW_TILE: usize = 4;
/// Fewest weight rows per parallel work item.
const MIN_CHUNK: usize = 16;

/// Weight block formats the kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightQuant {
    /// 32 int8 and an f16 scale: `w = d * q`.
    Q8_0,
    /// 32 4-bit values and f16 scale and minimum: `w = d * q + m`.
    Q4_1,
}

impl WeightQuant {
    /// Quant bytes per block in our layout.
    fn qbytes(self) -> usize {
        match self {
            WeightQuant::Q8_0 => BLOCK,
            WeightQuant::Q4_1 => BLOCK / 2,
        }
    }
}

/// A kernel module's weight matrix: `pub struct QMatrix(Stored)`, read as its [`Stored`],
/// with `QMatrix::stack` (matrices of one format and input width; a product then returns one
/// output per part; each kernel's layout keeps a part's rows together, so parts simply follow
/// each other). The doc comment before the call documents the layout.
macro_rules! stored_matrix {
    ($(#[$doc:meta])*) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct QMatrix(Stored);

        impl std::ops::Deref for QMatrix {
            type Target = Stored;
            fn deref(&self) -> &Stored {
                &self.0
            }
        }

        impl QMatrix {
            /// Stacks matrices of one format and input width; a product returns one output
            /// per part.
            pub fn stack(mats: Vec<QMatrix>) -> Result<Self> {
                Ok(QMatrix(Stored::stack(
                    mats.into_iter().map(|m| m.0).collect(),
                )?))
            }
        }
    };
}
pub(crate) use stored_matrix;

/// The storage of a quantized weight matrix, whatever the layout of its quants: `rows`
/// outputs of `cols` inputs, possibly several stacked parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub quant: WeightQuant,
    pub rows: usize,
    pub cols: usize,
    /// Quant bytes, in the owning kernel's layout.
    pub qs: Vec<u8>,
    /// f16 scales (bits), one per block.
    pub d: Vec<u16>,
    /// f16 minimums (bits), one per block (Q4_1 only).
    pub m: Vec<u16>,
    /// Row counts of the stacked parts (one entry when not stacked).
    pub parts: Vec<usize>,
}

impl Stored {
    /// Checks a GGML tensor's byte count for `rows × cols`; returns the bytes of one block
    /// and where its quants start.
    pub fn block_size(
        quant: WeightQuant,
        bytes: usize,
        rows: usize,
        cols: usize,
    ) -> Result<(usize, usize)> {
        let head = match quant {
            WeightQuant::Q8_0 => 2,
            WeightQuant::Q4_1 => 4,
        };
        let size = head + quant.qbytes();
        if !cols.is_multiple_of(BLOCK) || bytes != rows * cols / BLOCK * size {
            return Err(KernelError::CorruptWeights(format!(
                "{quant:?} matrix {rows}x{cols}: {bytes} bytes"
            )));
        }
        Ok((size, head))
    }

    /// Stacks matrices of one format and input width (their quants one after the other).
    pub fn stack(mats: Vec<Stored>) -> Result<Stored> {
        let Some(first) = mats.first() else {
            return Err(KernelError::CorruptWeights("nothing to stack".into()));
        };
        let (quant, cols) = (first.quant, first.cols);
        if mats.iter().any(|m| m.cols != cols || m.quant != quant) {
            return Err(KernelError::CorruptWeights(
                "stacked matrices differ in width or format".into(),
            ));
        }
        let mut out = Stored {
            quant,
            rows: 0,
            cols,
            qs: Vec::new(),
            d: Vec::new(),
            m: Vec::new(),
            parts: Vec::new(),
        };
        for m in mats {
            out.rows += m.rows;
            out.qs.extend_from_slice(&m.qs);
            out.d.extend_from_slice(&m.d);
            out.m.extend_from_slice(&m.m);
            out.parts.extend(m.parts);
        }
        Ok(out)
    }
}

crate::q8::stored_matrix! {
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

/// Quantizes whole blocks of `x` into `qs`, with per block the scale into `d` and `d * Σ q`
/// into `s` (see [`Q8Rows::quantize`]).
pub(crate) fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let blocks = x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK));
    for ((src, dst), (d, s)) in blocks.zip(d.iter_mut().zip(s.iter_mut())) {
        let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in dst.iter_mut().zip(src) {
            let r = round_half_away(v * inv).clamp(-127, 127);
            sum += r;
            *q = r as i8;
        }
        *d = scale;
        *s = scale * sum as f32;
    }
}

/// `v.round() as i32` (halves away from zero) for `|v| < 2^23`, without a libm call.
fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    // Exact: `v` and its truncation share the exponent range.
    let frac = v - t as f32;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// IEEE half to single precision (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        // Subnormal: man * 2^-24, exact in f32.
        (0, _) => {
            let v = (man as f32) * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (31, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Which implementation of the dot routines runs (part of the node class). Every one
/// performs the same operations per output element, so all give the same bits (tested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F (with AVX2, FMA, F16C) for the f32-activation products of [`crate::qf`]
    /// and attention ([`crate::attn`]), and with BW and VNNI for the integer panel products
    /// of [`crate::q8p`] (their AVX2 form without them: the same bits); the integer products
    /// of this module and the row routines run their AVX2 forms.
    Avx512,
    /// AVX2 + FMA + F16C intrinsics, chosen at run time.
    Avx2,
    /// Portable Rust performing the same operations.
    Scalar,
}

impl Kernel {
    /// The environment variable that names the kernel to run instead of the fastest.
    pub const ENV: &'static str = "SORTITION_KERNEL";

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if crate::qf::avx512_available() {
            return Kernel::Avx512;
        }
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    /// Every kernel this CPU supports, slowest first.
    pub fn supported() -> Vec<Kernel> {
        [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|&k| k.runs_here())
            .collect()
    }

    fn runs_here(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => crate::qf::avx512_available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernel to run: the one [`Kernel::ENV`] names (`avx512`, `avx2`, `scalar`), e.g.
    /// to join a node class of CPUs without AVX-512, else the fastest this CPU supports.
    pub fn select() -> Result<Kernel> {
        Kernel::named(std::env::var(Self::ENV).ok().as_deref())
    }

    /// The kernel [`Kernel::ENV`] names, if it is set (an invalid name is an error); for
    /// binaries, tests and benchmarks that honour it.
    pub fn from_env() -> Result<Option<Kernel>> {
        match std::env::var(Self::ENV) {
            Ok(name) => Kernel::named(Some(&name)).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// [`Kernel::select`] for the value `name` of [`Kernel::ENV`] (`None`: unset).
    pub fn named(name: Option<&str>) -> Result<Kernel> {
        let Some(name) = name else {
            return Ok(Kernel::detect());
        };
        let known = [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar];
        let Some(k) = known.into_iter().find(|k| k.name() == name.trim()) else {
            return Err(KernelError::InvalidParams(format!(
                "{}={name:?}: not a kernel (avx512, avx2 or scalar)",
                Self::ENV
            )));
        };
        if !k.runs_here() {
            return Err(KernelError::InvalidParams(format!(
                "{}={name}: this CPU does not support that kernel",
                Self::ENV
            )));
        }
        Ok(k)
    }

    /// The implementation this module's integer products run for this choice.
    pub fn integer(self) -> Kernel {
        match self {
            Kernel::Avx512 => Kernel::Avx2,
            k => k,
        }
    }

    /// [`crate::ops::dot`], vectorized when the CPU allows (same bits either way).
    pub fn dot_f32(a: &[f32], b: &[f32]) -> Option<f32> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") {
            return Some(avx2::dot(a, b));
        }
        let _ = (a, b);
        None
    }

    /// [`crate::math::exp_sub_in_place`] vectorized when the CPU allows (same bits either
    /// way); `false` when it does not.
    pub fn exp_sub_f32(xs: &mut [f32], sub: f32) -> bool {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            avx2::exp_sub(xs, sub);
            return true;
        }
        let _ = (xs, sub);
        false
    }

    /// [`crate::ops::silu_mul`] vectorized when the CPU allows (same bits either way);
    /// `false` when it does not.
    pub fn silu_mul_f32(g: &mut [f32], u: &[f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            avx2::silu_mul(g, u);
            return true;
        }
        let _ = (g, u);
        false
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }

    /// Weight rows `j0..j0 + n` of `w` against activation rows `r0..r0 + N` of `x`:
    /// `out[t][i]` is weight row `j0 + i` against activation row `r0 + t`. The shapes are
    /// checked once here; the loop over weight rows runs inside the kernel.
    fn panel<const N: usize>(
        self,
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
        assert!(
            x.qs.len() == x.rows * x.cols && x.d.len() == x.rows * nb && x.s.len() == x.d.len()
        );
        assert!(out.iter().all(|o| o.len() == n));
        match self.integer() {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::panel::<N>(w, (j0, n), x, r0, out),
            _ => scalar_panel::<N>(w, (j0, n), x, r0, out),
        }
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

/// Runs products on a fixed number of threads.
pub struct Pool {
    /// `None` for one thread: products run on the caller's thread.
    pool: Option<rayon::ThreadPool>,
    kernel: Kernel,
}

impl Pool {
    pub fn new(threads: usize, kernel: Kernel) -> Result<Pool> {
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("sortition-q8-{i}"))
                    .build()
                    .map_err(|e| KernelError::Internal(format!("thread pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(Pool { pool, kernel })
    }

    /// The dot-routine implementation the products use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Runs `f` on one of the pool's threads, so that the parallel products and loops inside
    /// it split their work by stealing between threads already awake instead of each waking
    /// the pool from outside (a forward pass runs ~150 of them per token).
    pub fn install<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// Runs `f` on every item, in parallel when the pool has threads.
    pub fn for_each<T: Send, F: Fn(T) + Sync + Send>(&self, items: Vec<T>, f: F) {
        match &self.pool {
            Some(p) => p.install(|| items.into_par_iter().for_each(f)),
            None => items.into_iter().for_each(f),
        }
    }

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
        let kernel = self.kernel;
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
            1 => kernel.panel::<1>(w, (j0, n), x, r0, o),
            2 => kernel.panel::<2>(w, (j0, n), x, r0, o),
            3 => kernel.panel::<3>(w, (j0, n), x, r0, o),
            _ => kernel.panel::<ROW_TILE>(w, (j0, n), x, r0, o),
        }
        r0 += t;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
