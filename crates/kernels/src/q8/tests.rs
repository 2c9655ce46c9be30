use super::*;
use crate::matmul_tests::{QUANTS, kernels, qmatrix, random, shared_tests};
use crate::quant::round_half_away;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

shared_tests!(|pool, w, x, rows| pool.matmul(w, &Q8Rows::quantize(x, rows, w.cols)));

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
        let (w, wf) = qmatrix::<QMatrix>(&mut rng, quant, rows, cols);
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
fn kernel_choice_follows_the_environment_value() {
    assert_eq!(Kernel::named(None).unwrap(), Kernel::detect());
    assert_eq!(Kernel::named(Some("scalar")).unwrap(), Kernel::Scalar);
    for k in Kernel::supported() {
        assert_eq!(Kernel::named(Some(k.name())).unwrap(), k);
    }
    let err = Kernel::named(Some("avx9")).unwrap_err();
    assert!(err.to_string().contains("SORTITION_KERNEL"), "{err}");
    // A kernel this CPU lacks is refused, not silently replaced.
    for k in [Kernel::Avx512, Kernel::Avx2] {
        if !Kernel::supported().contains(&k) {
            assert!(Kernel::named(Some(k.name())).is_err());
        }
    }
}
