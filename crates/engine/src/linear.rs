//! A linear layer (or several stacked ones sharing their input) on the kernel its weight format
//! runs on: Q8_0 weights with Q8 activations ([`crate::q8p`], integer panel products) or with
//! f32 activations ([`crate::qf`]); Q4_1 weights with Q8 activations ([`crate::q8`]); any
//! other shipped quantization on candle's quantized matmul.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use sortition_kernels::quant::WeightQuant;
use sortition_kernels::{Kernel, Pool};

use crate::error::{EngineError, Result};
use crate::q8::Q8Rows;

/// A linear layer, or several stacked ones that share their input.
pub(crate) enum Linear {
    /// Q8_0 weights on our kernel with activations quantized to Q8 blocks ([`crate::q8p`]);
    /// stacked parts are computed in one pass over the weights.
    Q8_0ByQ8(crate::q8p::QMatrix),
    /// Q8_0 weights on our kernel with f32 activations ([`crate::qf`]); stacked parts are
    /// computed in one pass over the weights.
    Q8_0ByF32(crate::qf::QMatrix),
    /// Q4_1 weights on our kernel with activations quantized to Q8 blocks ([`crate::q8`]:
    /// u4 x i8 products are cheap in AVX2 integer units, so single-stream decode is faster).
    Q4_1ByQ8(crate::q8::QMatrix),
    /// candle's quantized matmul, one per part (other shipped quantizations).
    Candle(Vec<QMatMul>),
}

impl Linear {
    /// The layer of `parts`; Q8_0 weights multiply f32 activations when `f32_acts`.
    pub(crate) fn new(parts: Vec<QTensor>, f32_acts: bool) -> Result<Linear> {
        let dtype = parts.first().map(|t| t.dtype());
        let all = |d: GgmlDType| parts.iter().all(|t| t.dtype() == d);
        // Every part read by `from` (its GGML block bytes and shape), then stacked.
        fn stacked<T>(
            parts: &[QTensor],
            from: impl Fn(&[u8], usize, usize) -> sortition_kernels::Result<T>,
            stack: impl Fn(Vec<T>) -> sortition_kernels::Result<T>,
        ) -> Result<T> {
            let mats = parts
                .iter()
                .map(|t| {
                    let (r, c) = t.shape().dims2()?;
                    Ok(from(&t.data()?, r, c)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(stack(mats)?)
        }
        match dtype {
            Some(GgmlDType::Q8_0) if all(GgmlDType::Q8_0) && !f32_acts => {
                Ok(Linear::Q8_0ByQ8(stacked(
                    &parts,
                    |b, r, c| crate::q8p::QMatrix::from_ggml_bytes(WeightQuant::Q8_0, b, r, c),
                    crate::q8p::QMatrix::stack,
                )?))
            }
            Some(GgmlDType::Q8_0) if all(GgmlDType::Q8_0) => Ok(Linear::Q8_0ByF32(stacked(
                &parts,
                |b, r, c| crate::qf::QMatrix::from_ggml_bytes(WeightQuant::Q8_0, b, r, c),
                crate::qf::QMatrix::stack,
            )?)),
            Some(GgmlDType::Q4_1) if all(GgmlDType::Q4_1) => Ok(Linear::Q4_1ByQ8(stacked(
                &parts,
                |b, r, c| crate::q8::QMatrix::from_ggml_bytes(WeightQuant::Q4_1, b, r, c),
                crate::q8::QMatrix::stack,
            )?)),
            // Built directly (not `from_qtensor`) so CANDLE_DEQUANTIZE_ALL cannot change kernels.
            _ => Ok(Linear::Candle(
                parts
                    .into_iter()
                    .map(|t| QMatMul::QTensor(std::sync::Arc::new(t)))
                    .collect(),
            )),
        }
    }

    /// Name of the kernel this layer runs on (part of the node class).
    pub(crate) fn kernel_name(&self, kernel: Kernel) -> String {
        match self {
            Linear::Q8_0ByQ8(_) => crate::q8p::kernel_name(kernel),
            Linear::Q8_0ByF32(_) => format!("sortition-qf32/{}", kernel.name()),
            Linear::Q4_1ByQ8(_) => format!("sortition-q8/{}", kernel.integer().name()),
            Linear::Candle(_) => "candle-0.11.1".into(),
        }
    }

    /// `x · Wᵀ` for each of the `N` parts; `x` is `rows × cols`.
    pub(crate) fn forward<const N: usize>(
        &self,
        pool: &Pool,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<[Vec<f32>; N]> {
        let outs = match self {
            Linear::Q8_0ByQ8(w) => crate::q8p::matmul(pool, w, x, rows),
            Linear::Q8_0ByF32(w) => crate::qf::matmul(pool, w, x, rows),
            Linear::Q4_1ByQ8(w) => pool.matmul(w, &Q8Rows::quantize_on(pool, x, rows, cols)),
            Linear::Candle(parts) => {
                let t = Tensor::from_slice(x, (rows, cols), &Device::Cpu)?;
                parts
                    .iter()
                    .map(|w| Ok(w.forward(&t)?.flatten_all()?.to_vec1::<f32>()?))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        outs.try_into()
            .map_err(|_| EngineError::Internal("linear layer part count".into()))
    }
}
