//! Tests both matmul kernels ([`crate::q8`], [`crate::qf`]) share: each kernel's test module
//! runs them on its own matrix type through [`Product`].

use crate::isa::Kernel;
use crate::pool::Pool;
use crate::quant::{BLOCK, WeightQuant, f16_to_f32};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// What the shared tests need of a kernel's matrix.
pub trait Product: Sized + Clone {
    fn from_ggml_bytes(
        quant: WeightQuant,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> crate::Result<Self>;
    fn stack(mats: Vec<Self>) -> crate::Result<Self>;
    /// The f32 values the quants stand for, row-major over all parts.
    fn dequantize(&self) -> Vec<f32>;
    /// `x · Wᵀ` for `rows` rows, one output per part.
    fn product(&self, pool: &Pool, x: &[f32], rows: usize) -> Vec<Vec<f32>>;
    /// Bytes of quants, scales and minimums.
    fn bytes(&self) -> usize;
    /// The weight formats the kernel runs.
    const QUANTS: &'static [WeightQuant] = &QUANTS;
}

pub fn random(rng: &mut ChaCha20Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

pub const QUANTS: [WeightQuant; 2] = [WeightQuant::Q8_0, WeightQuant::Q4_1];

/// A random weight matrix through candle's quantizer and our reader, and its values.
pub fn qmatrix<T: Product>(
    rng: &mut ChaCha20Rng,
    quant: WeightQuant,
    rows: usize,
    cols: usize,
) -> (T, Vec<f32>) {
    let v = random(rng, rows * cols, 0.5);
    let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
    let dtype = match quant {
        WeightQuant::Q8_0 => GgmlDType::Q8_0,
        WeightQuant::Q4_1 => GgmlDType::Q4_1,
    };
    let q = QTensor::quantize(&t, dtype).unwrap();
    let reference = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let m = T::from_ggml_bytes(quant, &q.data().unwrap(), rows, cols).unwrap();
    (m, reference)
}

/// Every kernel this CPU runs, the scalar reference first.
pub fn kernels() -> Vec<Kernel> {
    Kernel::supported()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn reads_candle_blocks_exactly<T: Product>() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for &quant in T::QUANTS {
        let (m, reference) = qmatrix::<T>(&mut rng, quant, 7, 96);
        assert_eq!(bits(&m.dequantize()), bits(&reference), "{quant:?}");
    }
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x8003), -3.0 * 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
}

pub fn vector_and_scalar_kernels_agree_bit_for_bit<T: Product>() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let x = random(&mut rng, 9 * 416, 4.0);
    for &quant in T::QUANTS {
        let (w, _) = qmatrix::<T>(&mut rng, quant, 50, 416);
        let outs: Vec<Vec<u32>> = kernels()
            .into_iter()
            .map(|k| bits(&w.product(&Pool::new(1, k).unwrap(), &x, 9)[0]))
            .collect();
        assert!(outs.windows(2).all(|p| p[0] == p[1]), "{quant:?}");
    }
}

pub fn batched_rows_equal_rows_alone_bit_for_bit<T: Product>() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (rows, cols) = (45, 96);
    for (quant, kernel) in T::QUANTS
        .iter()
        .copied()
        .flat_map(|q| kernels().into_iter().map(move |k| (q, k)))
    {
        let (w, _) = qmatrix::<T>(&mut rng, quant, rows, cols);
        let pool = Pool::new(2, kernel).unwrap();
        for m in [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 25] {
            let x = random(&mut rng, m * cols, 1.5);
            let batched = w.product(&pool, &x, m).remove(0);
            for r in 0..m {
                let alone = w.product(&pool, &x[r * cols..(r + 1) * cols], 1).remove(0);
                assert_eq!(
                    bits(&alone),
                    bits(&batched[r * rows..(r + 1) * rows]),
                    "{quant:?} {kernel:?} batch {m} row {r}"
                );
            }
        }
    }
}

pub fn thread_counts_and_stacking_do_not_change_results<T: Product>() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let x = random(&mut rng, 6 * 64, 1.0);
    for (quant, kernel) in T::QUANTS
        .iter()
        .copied()
        .flat_map(|q| kernels().into_iter().map(move |k| (q, k)))
    {
        let (a, _) = qmatrix::<T>(&mut rng, quant, 70, 64);
        let (b, _) = qmatrix::<T>(&mut rng, quant, 33, 64);
        let stacked = T::stack(vec![a.clone(), b.clone()]).unwrap();
        let one = Pool::new(1, kernel).unwrap();
        let (ya, yb) = (a.product(&one, &x, 6), b.product(&one, &x, 6));
        for threads in [2, 3, 5] {
            let pool = Pool::new(threads, kernel).unwrap();
            assert_eq!(pool.threads(), threads);
            let ys = stacked.product(&pool, &x, 6);
            assert_eq!(ys.len(), 2);
            assert_eq!(bits(&ys[0]), bits(&ya[0]));
            assert_eq!(bits(&ys[1]), bits(&yb[0]));
        }
    }
}

/// `cargo test --release -p sortition-kernels --lib qf::tests::speed -- --ignored --nocapture`
/// (`q8::tests::speed` for the other kernel; `THREADS=2`, `QUANT=q4_1`).
pub fn speed<T: Product>() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let threads: usize = std::env::var("THREADS").map_or(1, |v| v.parse().unwrap());
    let quant = match std::env::var("QUANT").as_deref() {
        Ok("q4_1") => WeightQuant::Q4_1,
        _ => WeightQuant::Q8_0,
    };
    // SmolLM2-135M's products, stacked as the model stacks them: q, k, v; gate, up; down;
    // the output layer.
    let shapes: [(&[usize], usize); 4] = [
        (&[576, 192, 192], 576),
        (&[1536, 1536], 576),
        (&[576], 1536),
        (&[49152], 576),
    ];
    for (parts, cols) in shapes {
        let rows: usize = parts.iter().sum();
        let w = T::stack(
            parts
                .iter()
                .map(|&n| qmatrix::<T>(&mut rng, quant, n, cols).0)
                .collect(),
        )
        .unwrap();
        for kernel in kernels() {
            let pool = Pool::new(threads, kernel).unwrap();
            for m in [1, 8, 145] {
                let x = random(&mut rng, m * cols, 1.0);
                // The fastest call of those in 0.3 s: this machine's speed varies from one
                // moment to the next (other tenants), the fastest call is the kernel's own.
                let t = std::time::Instant::now();
                let mut s = f64::INFINITY;
                while t.elapsed().as_secs_f64() < 0.3 {
                    let call = std::time::Instant::now();
                    std::hint::black_box(w.product(&pool, &x, m));
                    s = s.min(call.elapsed().as_secs_f64());
                }
                let pairs = (rows * cols / BLOCK * m) as f64;
                println!(
                    "{kernel:?} {rows}x{cols} m={m}: {:.3} ms, {:.2} ns per 32 multiply-adds, {:.1} GB/s weights",
                    s * 1e3,
                    s * 1e9 / pairs,
                    w.bytes() as f64 / s / 1e9
                );
            }
        }
    }
}

/// A fixed amount of work for `perf stat -e cycles:u` (robust to a loaded machine):
/// `ROWS=145 perf stat -e cycles:u cargo test --release -p sortition-kernels --lib \
/// qf::tests::fixed_work -- --ignored` (or `q8::tests::fixed_work`)
pub fn fixed_work<T: Product>() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let m: usize = std::env::var("ROWS").map_or(145, |v| v.parse().unwrap());
    let threads: usize = std::env::var("THREADS").map_or(1, |v| v.parse().unwrap());
    let pool = Pool::new(threads, Kernel::detect()).unwrap();
    for (rows, cols, reps) in [(3072, 576, 20), (576, 1536, 20), (49152, 576, 2)] {
        let w = T::stack(
            (0..rows / 48)
                .map(|_| qmatrix::<T>(&mut rng, WeightQuant::Q8_0, 48, cols).0)
                .collect(),
        )
        .unwrap();
        let x = random(&mut rng, m * cols, 1.0);
        let t = std::time::Instant::now();
        let n = (reps * 145 / m).min(200);
        for _ in 0..n {
            std::hint::black_box(w.product(&pool, &x, m));
        }
        let s = t.elapsed().as_secs_f64();
        let bytes = w.bytes() as f64 * n as f64;
        println!("{rows}x{cols} m={m}: {s:.3} s, {:.1} GB/s", bytes / s / 1e9);
    }
}

pub fn rejects_bad_shapes<T: Product>() {
    let q8 = WeightQuant::Q8_0;
    assert!(T::from_ggml_bytes(q8, &[0; 34], 1, 33).is_err());
    assert!(T::from_ggml_bytes(q8, &[0; 33], 1, 32).is_err());
    let a = T::from_ggml_bytes(q8, &[0; 34], 1, 32).unwrap();
    let b = T::from_ggml_bytes(q8, &[0; 68], 1, 64).unwrap();
    assert!(T::stack(vec![a.clone(), b]).is_err());
    if T::QUANTS.contains(&WeightQuant::Q4_1) {
        let c = T::from_ggml_bytes(WeightQuant::Q4_1, &[0; 20], 1, 32).unwrap();
        assert!(T::stack(vec![a, c]).is_err());
    } else {
        assert!(T::from_ggml_bytes(WeightQuant::Q4_1, &[0; 20], 1, 32).is_err());
    }
    assert!(T::stack(vec![]).is_err());
}

/// Implements [`Product`] for a kernel's `QMatrix` (its `product` given as a closure of
/// `(pool, matrix, x, rows)`) and declares the shared tests in the calling module.
macro_rules! shared_tests {
    ($product:expr) => {
        $crate::matmul_tests::shared_tests!($product, &$crate::matmul_tests::QUANTS);
    };
    ($product:expr, $quants:expr) => {
        impl $crate::matmul_tests::Product for QMatrix {
            fn from_ggml_bytes(
                quant: WeightQuant,
                bytes: &[u8],
                rows: usize,
                cols: usize,
            ) -> $crate::Result<Self> {
                QMatrix::from_ggml_bytes(quant, bytes, rows, cols)
            }
            fn stack(mats: Vec<Self>) -> $crate::Result<Self> {
                QMatrix::stack(mats)
            }
            fn dequantize(&self) -> Vec<f32> {
                QMatrix::dequantize(self)
            }
            fn product(&self, pool: &Pool, x: &[f32], rows: usize) -> Vec<Vec<f32>> {
                let f: fn(&Pool, &QMatrix, &[f32], usize) -> Vec<Vec<f32>> = $product;
                f(pool, self, x, rows)
            }
            fn bytes(&self) -> usize {
                self.qs.len() + 2 * self.d.len() + 2 * self.m.len()
            }
            const QUANTS: &'static [WeightQuant] = $quants;
        }

        #[test]
        fn reads_candle_blocks_exactly() {
            $crate::matmul_tests::reads_candle_blocks_exactly::<QMatrix>();
        }

        #[test]
        fn vector_and_scalar_kernels_agree_bit_for_bit() {
            $crate::matmul_tests::vector_and_scalar_kernels_agree_bit_for_bit::<QMatrix>();
        }

        #[test]
        fn batched_rows_equal_rows_alone_bit_for_bit() {
            $crate::matmul_tests::batched_rows_equal_rows_alone_bit_for_bit::<QMatrix>();
        }

        #[test]
        fn thread_counts_and_stacking_do_not_change_results() {
            $crate::matmul_tests::thread_counts_and_stacking_do_not_change_results::<QMatrix>();
        }

        #[test]
        fn rejects_bad_shapes() {
            $crate::matmul_tests::rejects_bad_shapes::<QMatrix>();
        }

        /// See [`crate::matmul_tests::speed`].
        #[test]
        #[ignore]
        fn speed() {
            $crate::matmul_tests::speed::<QMatrix>();
        }

        /// See [`crate::matmul_tests::fixed_work`].
        #[test]
        #[ignore]
        fn fixed_work() {
            $crate::matmul_tests::fixed_work::<QMatrix>();
        }
    };
}
pub(crate) use shared_tests;
