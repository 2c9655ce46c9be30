//! What every weight product shares: the GGML block formats, the storage of a quantized
//! matrix (each product module wraps it as its own `QMatrix`, in its own layout), f16
//! decoding, and the activation quantization to Q8 blocks.

use crate::error::{KernelError, Result};

/// Values per quantization block.
pub const BLOCK: usize = 32;

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
    pub(crate) fn qbytes(self) -> usize {
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
pub(crate) fn round_half_away(v: f32) -> i32 {
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
