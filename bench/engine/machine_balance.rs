//! This machine's balance of compute and memory, and what it allows the default model.
//!
//! Measures the peak rate of 8-lane (and, where the CPU has AVX-512, 16-lane) f32 fused multiply-adds (independent chains, nothing read
//! from memory) and the rate of streaming reads from DRAM (a buffer far larger than the
//! caches), each with 1 and with `THREADS` threads, best of `ROUNDS`. From them and the shapes
//! of SmolLM2-135M in Q8_0 it prints the floors that no engine can beat on this machine:
//!
//! - a decode step of one sequence reads every weight once (memory bound);
//! - a decode step of eight sequences, or a scoring pass, multiplies every weight with each
//!   row (compute bound);
//! - so "8 streams / 1 stream" has a ceiling, and "scoring / regeneration" a floor.
//!
//! `cargo run --release -p sortition-kernels --example machine_balance [-- THREADS ROUNDS]`

// The FMA probe is intrinsics behind a CPU feature check.
#![allow(unsafe_code)]

use std::time::Instant;

/// SmolLM2-135M: hidden 576, FFN 1536, 9 query heads and 3 key/value heads of 64, 30 blocks,
/// 49 152 tokens (output layer tied to the embeddings).
const HIDDEN: u64 = 576;
const FFN: u64 = 1536;
const KV: u64 = 3 * 64;
const LAYERS: u64 = 30;
const VOCAB: u64 = 49_152;
/// Q8_0: 32 int8 and one f16 scale per block of 32 weights.
const Q8_0_BYTES_PER_WEIGHT: f64 = 34.0 / 32.0;

/// Weights of one block's products: q, k, v, o, gate, up, down.
fn block_weights() -> u64 {
    HIDDEN * (HIDDEN + 2 * KV) + HIDDEN * HIDDEN + 3 * HIDDEN * FFN
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains(n: u64) -> f32 {
    use std::arch::x86_64::*;
    // Twelve independent chains: more than the FMA units' latency times their throughput.
    let mut acc = [_mm256_setzero_ps(); 12];
    let (x, w) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4));
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(x, *a, w);
        }
    }
    let mut out = [0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    // SAFETY: `out` holds eight f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_512(n: u64) -> f32 {
    use std::arch::x86_64::*;
    // Sixteen independent chains of sixteen lanes (32 registers).
    let mut acc = [_mm512_setzero_ps(); 16];
    let (x, w) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4));
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(x, *a, w);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
    _mm512_reduce_add_ps(sum)
}

/// Multiply-adds per second with `threads` threads: 8-lane FMAs, or 16-lane (`wide`, where
/// the CPU has AVX-512); NaN where the CPU lacks the instructions (a best-of fold makes it 0).
fn peak_macs(threads: usize, wide: bool) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        let (lanes, chains, n): (u64, u64, u64) = if wide {
            (16, 16, 25_000_000)
        } else {
            (8, 12, 50_000_000)
        };
        let ok = if wide {
            is_x86_feature_detected!("avx512f")
        } else {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        };
        if !ok {
            return f64::NAN;
        }
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: the features were just checked.
                s.spawn(move || {
                    std::hint::black_box(unsafe {
                        if wide {
                            fma_chains_512(n)
                        } else {
                            fma_chains(n)
                        }
                    })
                });
            }
        });
        return (threads as u64 * n * chains * lanes) as f64 / t.elapsed().as_secs_f64();
    }
    #[allow(unreachable_code)]
    f64::NAN
}

/// Bytes per second read from a buffer of `buf.len()` bytes split among `threads` threads.
fn read_bandwidth(buf: &[u64], threads: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for part in buf.chunks(buf.len().div_ceil(threads)) {
            s.spawn(move || {
                // Eight independent sums, one per word of a cache line.
                let mut acc = [0u64; 8];
                for line in part.chunks_exact(8) {
                    for (a, v) in acc.iter_mut().zip(line) {
                        *a = a.wrapping_add(*v);
                    }
                }
                std::hint::black_box(acc);
            });
        }
    });
    (buf.len() * 8) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let threads = args.first().copied().unwrap_or(2);
    let rounds = args.get(1).copied().unwrap_or(5);
    // 512 MiB: far past any cache; touched once before measuring.
    let buf: Vec<u64> = (0..64u64 << 20).collect();
    let best = |f: &dyn Fn() -> f64| (0..rounds).map(|_| f()).fold(0f64, f64::max);
    let (mac1, macn) = (
        best(&|| peak_macs(1, false)),
        best(&|| peak_macs(threads, false)),
    );
    let (wide1, widen) = (
        best(&|| peak_macs(1, true)),
        best(&|| peak_macs(threads, true)),
    );
    let (bw1, bwn) = (
        best(&|| read_bandwidth(&buf, 1)),
        best(&|| read_bandwidth(&buf, threads)),
    );
    println!("machine_balance: best of {rounds} rounds");
    println!(
        "  peak f32 FMA: {:.1} G multiply-adds/s on 1 thread, {:.1} on {threads}",
        mac1 / 1e9,
        macn / 1e9
    );
    if widen > 0.0 {
        println!(
            "  peak f32 FMA, AVX-512: {:.1} G multiply-adds/s on 1 thread, {:.1} on {threads} (the floors below use it)",
            wide1 / 1e9,
            widen / 1e9
        );
    }
    let macn = macn.max(widen);
    println!(
        "  DRAM reads:   {:.1} GB/s on 1 thread, {:.1} on {threads}",
        bw1 / 1e9,
        bwn / 1e9
    );

    let body = LAYERS * block_weights();
    let out = VOCAB * HIDDEN;
    let per_token = (body + out) as f64;
    let bytes = per_token * Q8_0_BYTES_PER_WEIGHT;
    let (compute, memory) = (per_token / macn, bytes / bwn);
    println!(
        "SmolLM2-135M Q8_0: {:.1} M multiply-adds per token ({:.1} M in the 30 blocks), {:.0} MB of weights",
        per_token / 1e6,
        body as f64 / 1e6,
        bytes / 1e6
    );
    let one = compute.max(memory);
    let eight = (8.0 * compute).max(memory);
    println!(
        "  decode step, 1 sequence:  >= {:.2} ms (weights read: {:.2} ms, products: {:.2} ms)",
        one * 1e3,
        memory * 1e3,
        compute * 1e3
    );
    println!(
        "  decode step, 8 sequences: >= {:.2} ms (products)",
        eight * 1e3
    );
    println!(
        "  8 streams / 1 stream: at most {:.2}x with both steps at their floors; 4x needs the 8-row step within {:.0} % of its floor when the 1-row step is at its own",
        8.0 * one / eight,
        100.0 * (8.0 * one / eight / 4.0 - 1.0)
    );
    // Scoring: the 30 blocks at prompt + answer positions and the output layer at the answer
    // positions, every product compute bound; regeneration: the prompt's prefill, then one
    // memory-bound decode step per answer token.
    let (prompt, answer) = (32.0, 128.0);
    let scoring = ((prompt + answer) * body as f64 + answer * out as f64) / macn;
    let regeneration = prompt * body as f64 / macn + answer * one;
    println!(
        "  scoring / regeneration, {prompt:.0}-token prompt, {answer:.0}-token answer: at least {:.3} (scoring >= {:.0} ms, regeneration >= {:.0} ms)",
        scoring / regeneration,
        scoring * 1e3,
        regeneration * 1e3
    );
}
