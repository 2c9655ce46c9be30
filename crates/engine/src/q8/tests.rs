use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

fn random(rng: &mut ChaCha20Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

const QUANTS: [WeightQuant; 2] = [WeightQuant::Q8_0, WeightQuant::Q4_1];

/// A random weight matrix through candle's quantizer and our reader, and its values.
fn qmatrix(
    rng: &mut ChaCha20Rng,
    quant: WeightQuant,
    rows: usize,
    cols: usize,
) -> (QMatrix, Vec<f32>) {
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
    let m = QMatrix::from_ggml_bytes(quant, &q.data().unwrap(), rows, cols).unwrap();
    (m, reference)
}

fn kernels() -> Vec<Kernel> {
    let mut k = vec![Kernel::Scalar];
    if Kernel::detect() != Kernel::Scalar {
        k.push(Kernel::detect());
    }
    k
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn reads_candle_blocks_exactly() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for quant in QUANTS {
        let (m, reference) = qmatrix(&mut rng, quant, 7, 96);
        assert_eq!(bits(&m.dequantize()), bits(&reference), "{quant:?}");
    }
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x8003), -3.0 * 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
}

#[test]
fn rounding_matches_f32_round() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut vals = random(&mut rng, 10_000, 130.0);
    vals.extend([
        0.5,
        -0.5,
        1.5,
        -2.5,
        0.499_999_97,
        -0.499_999_97,
        126.5,
        0.0,
        -0.0,
    ]);
    for v in vals {
        assert_eq!(round_half_away(v), v.round() as i32, "{v}");
    }
}

#[test]
fn parallel_quantization_equals_serial() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    for (rows, cols) in [(1, 64), (3, 576), (40, 1536)] {
        let x = random(&mut rng, rows * cols, 5.0);
        let serial = Q8Rows::quantize(&x, rows, cols);
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads, Kernel::detect()).unwrap();
            assert_eq!(Q8Rows::quantize_on(&pool, &x, rows, cols), serial);
        }
    }
}

#[test]
fn activation_quantization_is_close_and_bounded() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut x = random(&mut rng, 3 * 64, 3.0);
    x[5] = 0.0;
    x[64..96].fill(0.0);
    let q = Q8Rows::quantize(&x, 3, 64);
    assert!(q.qs.iter().all(|&v| v != i8::MIN));
    for (a, b) in q.dequantize().iter().zip(&x) {
        assert!((a - b).abs() <= 3.0 / 127.0 / 2.0 + 1e-6, "{a} vs {b}");
    }
    assert!(q.dequantize()[64..96].iter().all(|&v| v == 0.0));
}

#[test]
fn products_match_a_dequantized_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (rows, cols, m) = (37, 128, 5);
    let x = random(&mut rng, m * cols, 2.0);
    let xq = Q8Rows::quantize(&x, m, cols);
    let xf = xq.dequantize();
    for (quant, kernel) in QUANTS
        .into_iter()
        .flat_map(|q| kernels().into_iter().map(move |k| (q, k)))
    {
        let (w, wf) = qmatrix(&mut rng, quant, rows, cols);
        let y = Pool::new(1, kernel).unwrap().matmul(&w, &xq).remove(0);
        for r in 0..m {
            for j in 0..rows {
                let exact: f64 = (0..cols)
                    .map(|i| f64::from(wf[j * cols + i]) * f64::from(xf[r * cols + i]))
                    .sum();
                let got = y[r * rows + j];
                assert!(
                    (f64::from(got) - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                    "{quant:?} {kernel:?} ({r},{j}): {got} vs {exact}"
                );
                // And close to the unquantized-activation product.
                let f32_ref: f32 = (0..cols).map(|i| wf[j * cols + i] * x[r * cols + i]).sum();
                assert!((got - f32_ref).abs() < 0.05 * (1.0 + f32_ref.abs()));
            }
        }
    }
}

#[test]
fn avx2_and_scalar_agree_bit_for_bit() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let xq = Q8Rows::quantize(&random(&mut rng, 9 * 192, 4.0), 9, 192);
    for quant in QUANTS {
        let (w, _) = qmatrix(&mut rng, quant, 50, 192);
        let outs: Vec<Vec<u32>> = kernels()
            .into_iter()
            .map(|k| bits(&Pool::new(1, k).unwrap().matmul(&w, &xq)[0]))
            .collect();
        assert!(outs.windows(2).all(|p| p[0] == p[1]), "{quant:?}");
    }
}

#[test]
fn batched_rows_equal_rows_alone_bit_for_bit() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (rows, cols) = (45, 96);
    for (quant, kernel) in QUANTS
        .into_iter()
        .flat_map(|q| kernels().into_iter().map(move |k| (q, k)))
    {
        let (w, _) = qmatrix(&mut rng, quant, rows, cols);
        let pool = Pool::new(2, kernel).unwrap();
        for m in [1, 2, 3, 4, 5, 8, 13] {
            let x = random(&mut rng, m * cols, 1.5);
            let batched = pool.matmul(&w, &Q8Rows::quantize(&x, m, cols)).remove(0);
            for r in 0..m {
                let one = Q8Rows::quantize(&x[r * cols..(r + 1) * cols], 1, cols);
                let alone = pool.matmul(&w, &one).remove(0);
                assert_eq!(
                    bits(&alone),
                    bits(&batched[r * rows..(r + 1) * rows]),
                    "{quant:?} {kernel:?} batch {m} row {r}"
                );
            }
        }
    }
}

#[test]
fn thread_counts_and_stacking_do_not_change_results() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let xq = Q8Rows::quantize(&random(&mut rng, 6 * 64, 1.0), 6, 64);
    for (quant, kernel) in QUANTS
        .into_iter()
        .flat_map(|q| kernels().into_iter().map(move |k| (q, k)))
    {
        let (a, _) = qmatrix(&mut rng, quant, 70, 64);
        let (b, _) = qmatrix(&mut rng, quant, 33, 64);
        let stacked = QMatrix::stack(vec![a.clone(), b.clone()]).unwrap();
        let one = Pool::new(1, kernel).unwrap();
        let (ya, yb) = (one.matmul(&a, &xq), one.matmul(&b, &xq));
        for threads in [2, 3, 5] {
            let pool = Pool::new(threads, kernel).unwrap();
            assert_eq!(pool.threads(), threads);
            let ys = pool.matmul(&stacked, &xq);
            assert_eq!(ys.len(), 2);
            assert_eq!(bits(&ys[0]), bits(&ya[0]));
            assert_eq!(bits(&ys[1]), bits(&yb[0]));
        }
    }
}

/// `cargo test --release -p sortition-engine --lib q8::tests::speed -- --ignored --nocapture`
#[test]
#[ignore]
fn speed() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let threads: usize = std::env::var("THREADS").map_or(1, |v| v.parse().unwrap());
    let quant = match std::env::var("QUANT").as_deref() {
        Ok("q4_1") => WeightQuant::Q4_1,
        _ => WeightQuant::Q8_0,
    };
    for (rows, cols) in [(960, 576), (3072, 576), (576, 1536), (49152, 576)] {
        let w = QMatrix::stack(
            (0..rows / 48)
                .map(|_| qmatrix(&mut rng, quant, 48, cols).0)
                .collect(),
        )
        .unwrap();
        for kernel in kernels() {
            let pool = Pool::new(threads, kernel).unwrap();
            for m in [1, 8, 145] {
                let xq = Q8Rows::quantize(&random(&mut rng, m * cols, 1.0), m, cols);
                let t = std::time::Instant::now();
                let mut n = 0;
                while t.elapsed().as_secs_f64() < 0.3 {
                    std::hint::black_box(pool.matmul(&w, &xq));
                    n += 1;
                }
                let s = t.elapsed().as_secs_f64() / n as f64;
                let pairs = (rows * cols / BLOCK * m) as f64;
                println!(
                    "{kernel:?} {rows}x{cols} m={m}: {:.3} ms, {:.2} ns/block-pair, {:.1} GB/s weights",
                    s * 1e3,
                    s * 1e9 / pairs,
                    (w.qs.len() + 2 * w.d.len() + 2 * w.m.len()) as f64 / s / 1e9
                );
            }
        }
    }
}

/// A fixed amount of work for `perf stat -e cycles:u` (robust to a loaded machine):
/// `ROWS=145 perf stat -e cycles:u cargo test --release -p sortition-engine --lib \
/// q8::tests::fixed_work -- --ignored`
#[test]
#[ignore]
fn fixed_work() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let m: usize = std::env::var("ROWS").map_or(145, |v| v.parse().unwrap());
    let threads: usize = std::env::var("THREADS").map_or(1, |v| v.parse().unwrap());
    let pool = Pool::new(threads, Kernel::detect()).unwrap();
    for (rows, cols, reps) in [(3072, 576, 20), (576, 1536, 20), (49152, 576, 2)] {
        let w = QMatrix::stack(
            (0..rows / 48)
                .map(|_| qmatrix(&mut rng, WeightQuant::Q8_0, 48, cols).0)
                .collect(),
        )
        .unwrap();
        let xq = Q8Rows::quantize(&random(&mut rng, m * cols, 1.0), m, cols);
        let t = std::time::Instant::now();
        let n = (reps * 145 / m).min(200);
        for _ in 0..n {
            std::hint::black_box(pool.matmul(&w, &xq));
        }
        let s = t.elapsed().as_secs_f64();
        let bytes = (w.qs.len() + 2 * w.d.len()) as f64 * n as f64;
        println!("{rows}x{cols} m={m}: {s:.3} s, {:.1} GB/s", bytes / s / 1e9);
    }
}

#[test]
fn rejects_bad_shapes() {
    let q8 = WeightQuant::Q8_0;
    assert!(QMatrix::from_ggml_bytes(q8, &[0; 34], 1, 33).is_err());
    assert!(QMatrix::from_ggml_bytes(q8, &[0; 33], 1, 32).is_err());
    let a = QMatrix::from_ggml_bytes(q8, &[0; 34], 1, 32).unwrap();
    let b = QMatrix::from_ggml_bytes(q8, &[0; 68], 1, 64).unwrap();
    let c = QMatrix::from_ggml_bytes(WeightQuant::Q4_1, &[0; 20], 1, 32).unwrap();
    assert!(QMatrix::stack(vec![a.clone(), b]).is_err());
    assert!(QMatrix::stack(vec![a, c]).is_err());
    assert!(QMatrix::stack(vec![]).is_err());
}
