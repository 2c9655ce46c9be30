use super::*;
use crate::matmul_tests::{QUANTS, kernels, qmatrix, random, shared_tests};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

shared_tests!(|pool, w, x, rows| matmul(pool, w, x, rows));

#[test]
fn products_match_a_dequantized_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (rows, cols, m) = (37, 128, 5);
    let x = random(&mut rng, m * cols, 2.0);
    for (quant, kernel) in QUANTS
        .into_iter()
        .flat_map(|q| kernels().into_iter().map(move |k| (q, k)))
    {
        let (w, wf) = qmatrix::<QMatrix>(&mut rng, quant, rows, cols);
        let y = matmul(&Pool::new(1, kernel).unwrap(), &w, &x, m).remove(0);
        for r in 0..m {
            for j in 0..rows {
                let terms =
                    (0..cols).map(|i| f64::from(wf[j * cols + i]) * f64::from(x[r * cols + i]));
                let exact: f64 = terms.clone().sum();
                let size: f64 = terms.map(f64::abs).sum();
                let got = y[r * rows + j];
                // f32 accumulation of exact weights and unquantized activations: within a
                // few units in the last place of the sum of magnitudes.
                assert!(
                    (f64::from(got) - exact).abs() <= 1e-5 * (1e-3 + size),
                    "{quant:?} {kernel:?} ({r},{j}): {got} vs {exact}"
                );
            }
        }
    }
}
