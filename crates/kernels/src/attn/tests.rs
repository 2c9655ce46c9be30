use super::*;
use crate::matmul_tests::{bits, kernels, random};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// (head_dim, heads in the group, positions): SmolLM2's shape, short and tile-edge lengths,
/// head widths that are not whole vectors, and groups wider than one pass of registers.
const SHAPES: [(usize, usize, usize); 11] = [
    (64, 3, 37),
    (64, 3, 1),
    (64, 3, 32),
    (64, 3, 33),
    (8, 2, 5),
    (24, 1, 9),
    (13, 2, 4),
    (128, 2, 65),
    (88, 5, 3),
    (64, 4, 70),
    (64, 7, 100),
];

fn cache(rng: &mut ChaCha20Rng, hd: usize, n: usize) -> HeadCache {
    let mut c = HeadCache::with_capacity(hd, 4);
    for _ in 0..n {
        c.push(&random(rng, hd, 3.0), &random(rng, hd, 2.0));
    }
    c
}

#[test]
fn every_kernel_gives_the_portable_bits() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    for (hd, g, n) in SHAPES {
        let c = cache(&mut rng, hd, n);
        let q = random(&mut rng, g * hd, 1.5);
        let tiles = n.div_ceil(TILE);
        let mut want = vec![0f32; g * tiles * TILE];
        scores_portable(&q, &c.keys, hd, tiles, &mut want);
        let p: Vec<f32> = random(&mut rng, g * tiles * TILE, 1.0);
        let mut want_o = vec![0f32; g * hd];
        weighted_sums_portable(&p, tiles * TILE, &c.values, hd, n, &mut want_o, 0);
        for kernel in kernels() {
            let mut got = vec![f32::NAN; want.len()];
            scores(kernel, &q, &c.keys, hd, tiles, &mut got);
            assert_eq!(bits(&got), bits(&want), "{kernel:?} scores {hd} {g} {n}");
            let mut got_o = vec![f32::NAN; g * hd];
            weighted_sums(kernel, &p, tiles * TILE, &c.values, hd, n, &mut got_o);
            assert_eq!(bits(&got_o), bits(&want_o), "{kernel:?} sums {hd} {g} {n}");
        }
    }
}

/// A group attends as its heads do one by one (a work item's grouping cannot change a
/// bit), on every kernel, and every prefix length gives what a cache of that length gives.
#[test]
fn a_group_attends_as_its_heads_alone_and_prefixes_as_shorter_caches() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut scratch = Vec::new();
    for (hd, g, n) in SHAPES {
        let c = cache(&mut rng, hd, n);
        let q = random(&mut rng, g * hd, 1.5);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut all = Vec::new();
        for kernel in kernels() {
            let mut group = vec![0f32; g * hd];
            attend(kernel, &q, &c, hd, n, scale, &mut group, &mut scratch);
            for h in 0..g {
                let mut alone = vec![0f32; hd];
                let qh = &q[h * hd..(h + 1) * hd];
                attend(kernel, qh, &c, hd, n, scale, &mut alone, &mut scratch);
                assert_eq!(
                    bits(&alone),
                    bits(&group[h * hd..(h + 1) * hd]),
                    "{kernel:?}"
                );
            }
            all.push(bits(&group));
        }
        assert!(
            all.windows(2).all(|w| w[0] == w[1]),
            "kernels disagree: {hd} {g} {n}"
        );
        // The first positions of this cache against a cache holding only those.
        let m = n.div_ceil(2);
        let mut short = HeadCache::default();
        for j in 0..m {
            short.push(
                &c.key(hd, j),
                &c.values[j * hd..(j + 1) * hd]
                    .iter()
                    .map(|&v| f16_to_f32(v))
                    .collect::<Vec<_>>(),
            );
        }
        let (mut a, mut b) = (vec![0f32; g * hd], vec![0f32; g * hd]);
        attend(Kernel::detect(), &q, &c, hd, m, scale, &mut a, &mut scratch);
        attend(
            Kernel::detect(),
            &q,
            &short,
            hd,
            m,
            scale,
            &mut b,
            &mut scratch,
        );
        assert_eq!(bits(&a), bits(&b), "prefix {m} of {n}");
    }
}

/// The result is attention: against softmax(q·k / √d)·v in f64 over the stored (rounded)
/// keys and values, within f32 rounding.
#[test]
fn attention_matches_an_f64_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut scratch = Vec::new();
    for (hd, g, n) in SHAPES {
        let c = cache(&mut rng, hd, n);
        let q = random(&mut rng, g * hd, 1.5);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut got = vec![0f32; g * hd];
        attend(
            Kernel::detect(),
            &q,
            &c,
            hd,
            n,
            scale,
            &mut got,
            &mut scratch,
        );
        for h in 0..g {
            let qh = &q[h * hd..(h + 1) * hd];
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    let k = c.key(hd, j);
                    qh.iter()
                        .zip(&k)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        * f64::from(scale)
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let want: f64 = (0..n)
                    .map(|j| e[j] / sum * f64::from(f16_to_f32(c.values[j * hd + d])))
                    .sum();
                let g = f64::from(got[h * hd + d]);
                assert!(
                    (g - want).abs() < 1e-4,
                    "{hd} {n} head {h} dim {d}: {g} vs {want}"
                );
            }
        }
    }
}

#[test]
fn the_cache_rounds_to_nearest_half_and_pads_tiles_with_zeros() {
    let mut c = HeadCache::default();
    // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: to even, 1. 70000 overflows half.
    let key = [
        1.0 + f32::powi(2.0, -11),
        1.0 + 3.0 * f32::powi(2.0, -11),
        70000.0,
        -0.0,
    ];
    c.push(&key, &[0.5; 4]);
    assert_eq!(c.len, 1);
    assert_eq!(
        bits(&c.key(4, 0)),
        bits(&[1.0, 1.0 + 2.0 * f32::powi(2.0, -10), f32::INFINITY, -0.0])
    );
    assert_eq!(c.keys.len(), TILE * 4);
    assert!(
        c.keys
            .iter()
            .enumerate()
            .all(|(i, &k)| i % TILE == 0 || k == 0)
    );
    for _ in 1..TILE + 1 {
        c.push(&[0.25; 4], &[0.5; 4]);
    }
    assert_eq!(
        (c.len, c.keys.len(), c.values.len()),
        (TILE + 1, 2 * TILE * 4, (TILE + 1) * 4)
    );
}

#[test]
#[should_panic(expected = "attention over 3 of 2 positions")]
fn attending_past_the_cache_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let c = cache(&mut rng, 8, 2);
    let (q, mut out) = (vec![0.5f32; 8], vec![0f32; 8]);
    attend(Kernel::Scalar, &q, &c, 8, 3, 1.0, &mut out, &mut Vec::new());
}

/// `cargo test -p sortition-kernels --lib attn::tests::speed -- --ignored --nocapture`:
/// nanoseconds per position and query head, hot (one cache) and cold (90 caches in turn,
/// the model's layers and key/value heads: none in L2).
#[test]
#[ignore]
fn speed() {
    let (hd, g, reps) = (64, 3, 2000);
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let mut scratch = Vec::new();
    for n in [64usize, 400, 1000] {
        let caches: Vec<HeadCache> = (0..90).map(|_| cache(&mut rng, hd, n)).collect();
        let q = random(&mut rng, g * hd, 1.0);
        let mut out = vec![0f32; g * hd];
        for kernel in kernels() {
            for (label, pick) in [("hot", 1), ("cold", caches.len())] {
                let t = std::time::Instant::now();
                for r in 0..reps {
                    let c = &caches[r % pick];
                    attend(kernel, &q, c, hd, n, 0.125, &mut out, &mut scratch);
                    std::hint::black_box(&out);
                }
                let ns = t.elapsed().as_secs_f64() * 1e9 / (reps * n * g) as f64;
                println!("n={n} {kernel:?} {label}: {ns:.2} ns per position and head");
            }
        }
    }
}

#[test]
fn lane_sums_add_lanes_in_order_then_pairwise() {
    let xs: Vec<f32> = (0..48)
        .map(|i| if i == 5 { 1e8 } else { 1.0 + i as f32 })
        .collect();
    let mut lanes = [0f32; 16];
    for (i, x) in xs.iter().enumerate() {
        lanes[i % 16] += x;
    }
    let want = (((lanes[0] + lanes[8]) + (lanes[4] + lanes[12]))
        + ((lanes[2] + lanes[10]) + (lanes[6] + lanes[14])))
        + (((lanes[1] + lanes[9]) + (lanes[5] + lanes[13]))
            + ((lanes[3] + lanes[11]) + (lanes[7] + lanes[15])));
    assert_eq!(lane_sum(&xs).to_bits(), want.to_bits());
    assert_eq!(lane_sum(&[]), 0.0);
}
