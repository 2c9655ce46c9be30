use super::*;
use crate::matmul_tests::{bits, kernels, qmatrix, random, shared_tests};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

shared_tests!(
    |pool, w, x, rows| matmul(pool, w, x, rows),
    &[WeightQuant::Q8_0]
);

/// The reference value of one output in f64: the weights' values times the activations'
/// quantized values (what the kernel multiplies), and the sum of the terms' magnitudes.
fn reference(w: &[f32], x: &Acts, r: usize, j: usize, cols: usize) -> (f64, f64) {
    let tile = x.tile_of(r);
    let terms = (0..cols).map(|k| {
        let (q, d) = x.value(tile, r, k);
        f64::from(w[j * cols + k]) * f64::from(q) * f64::from(d)
    });
    (terms.clone().sum(), terms.map(f64::abs).sum())
}

#[test]
fn products_match_a_dequantized_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (rows, cols, m) = (37, 128, 5);
    let x = random(&mut rng, m * cols, 2.0);
    for kernel in kernels() {
        let (w, wf) = qmatrix::<QMatrix>(&mut rng, WeightQuant::Q8_0, rows, cols);
        let pool = Pool::new(1, kernel).unwrap();
        let y = matmul(&pool, &w, &x, m).remove(0);
        let acts = Acts::new(&pool, &x, m, cols, m);
        for r in 0..m {
            for j in 0..rows {
                let (exact, size) = reference(&wf, &acts, r, j, cols);
                let got = f64::from(y[r * rows + j]);
                // Exact block sums, f32 scale products and accumulation: a few units in the
                // last place of the sum of magnitudes.
                assert!(
                    (got - exact).abs() <= 1e-5 * (1e-3 + size),
                    "{kernel:?} ({r},{j}): {got} vs {exact}"
                );
                // And against the unquantized activations: within the 8-bit rounding (at
                // most half a step `d` per value).
                let tile = acts.tile_of(r);
                let (mut unquantized, mut rounding) = (0f64, 0f64);
                for k in 0..cols {
                    let wk = f64::from(wf[j * cols + k]);
                    unquantized += wk * f64::from(x[r * cols + k]);
                    rounding += wk.abs() * f64::from(acts.value(tile, r, k).1) / 2.0;
                }
                assert!(
                    (got - unquantized).abs() <= rounding * 1.001 + 1e-5 * (1e-3 + size),
                    "{kernel:?} ({r},{j}): {got} vs unquantized {unquantized}"
                );
            }
        }
    }
}

/// The integer sums' extremes: weights of -128 and 127 (GGUF files may hold -128, our
/// quantizer never writes it) against activations at ±127 in every pattern of signs, so
/// that AVX2's 16-bit pair sums sit at their largest. Every kernel gives the scalar bits,
/// and those are the exact products.
#[test]
fn extreme_quants_are_exact_in_every_kernel() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let (rows, cols, m) = (19, 96, 3);
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / BLOCK {
        bytes.extend_from_slice(&0x3c00u16.to_le_bytes()); // d = 1
        for _ in 0..BLOCK {
            bytes.push(match rng.next_u32() % 3 {
                0 => 0x80, // -128
                1 => 0x7f, // 127
                _ => (rng.next_u32() & 0xff) as u8,
            });
        }
    }
    let w = QMatrix::from_ggml_bytes(WeightQuant::Q8_0, &bytes, rows, cols).unwrap();
    // Values whose blocks quantize to ±127 exactly: every block's maximum is 127.
    let x: Vec<f32> = (0..m * cols)
        .map(|_| {
            if rng.next_u32() % 2 == 0 {
                127.0
            } else {
                -127.0
            }
        })
        .collect();
    let outs: Vec<Vec<f32>> = kernels()
        .into_iter()
        .map(|k| matmul(&Pool::new(1, k).unwrap(), &w, &x, m).remove(0))
        .collect();
    for o in &outs {
        assert_eq!(bits(o), bits(&outs[0]));
    }
    let wf = w.dequantize();
    for r in 0..m {
        for j in 0..rows {
            let exact: f64 = (0..cols)
                .map(|k| f64::from(wf[j * cols + k]) * f64::from(x[r * cols + k]))
                .sum();
            assert_eq!(f64::from(outs[0][r * rows + j]), exact, "({r},{j})");
        }
    }
}

#[test]
fn rejects_other_formats() {
    let err = QMatrix::from_ggml_bytes(WeightQuant::Q4_1, &[0; 20], 1, 32).unwrap_err();
    assert!(err.to_string().contains("Q8_0"), "{err}");
}

#[test]
fn zero_and_padded_rows_give_zero() {
    // A zero activation row (scale 0) and a matrix whose rows do not fill the last panel.
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let (w, _) = qmatrix::<QMatrix>(&mut rng, WeightQuant::Q8_0, 21, 64);
    let x = vec![0f32; 2 * 64];
    for kernel in kernels() {
        let y = matmul(&Pool::new(2, kernel).unwrap(), &w, &x, 2).remove(0);
        assert_eq!(y.len(), 2 * 21);
        assert!(y.iter().all(|v| v.to_bits() == 0), "{kernel:?}");
    }
}

/// The AVX2 activation quantizer gives the scalar one's bits: random blocks, blocks of
/// ties (values at half steps), zeros, subnormals, and blocks with infinities and NaNs
/// (which it hands to the scalar routine).
#[cfg(target_arch = "x86_64")]
#[test]
fn vector_quantizer_matches_the_scalar_one() {
    if !avx2::available() {
        return;
    }
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut x = random(&mut rng, 64 * BLOCK, 3.0);
    // Ties: a block whose maximum is 127 holds k + 0.5 exactly.
    for (i, v) in x[..BLOCK].iter_mut().enumerate() {
        *v = if i == 0 {
            127.0
        } else {
            (i as f32 - 16.0) * 4.0 + 0.5
        };
    }
    x[BLOCK..2 * BLOCK].fill(0.0);
    x[2 * BLOCK..3 * BLOCK].fill(f32::from_bits(3));
    x[3 * BLOCK + 5] = f32::INFINITY;
    x[4 * BLOCK + 7] = f32::NAN;
    x[5 * BLOCK + 1] = f32::NEG_INFINITY;
    x[6 * BLOCK..7 * BLOCK].iter_mut().for_each(|v| *v *= 1e30);
    let nb = x.len() / BLOCK;
    let (mut q1, mut d1, mut s1) = (vec![0i8; x.len()], vec![0f32; nb], vec![0f32; nb]);
    crate::quant::quantize_blocks(&x, &mut q1, &mut d1, &mut s1);
    let (mut q2, mut d2) = (vec![0i8; x.len()], vec![0f32; nb]);
    avx2::quantize_blocks(&x, &mut q2, &mut d2);
    assert_eq!(q1, q2);
    assert_eq!(bits(&d1), bits(&d2));
}
