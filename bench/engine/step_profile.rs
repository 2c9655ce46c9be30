//! Decode-step anatomy: times the model's forward pass alone (no scheduler, no sampling) for
//! one sequence and for eight, at a realistic context, so that the 8-row/1-row step ratio (the
//! ceiling of the 8-stream goal) can be read, and profiled, without the rest of the engine.
//!
//! `cargo run --release -p sortition-engine --example step_profile [-- CONTEXT [STEPS]]`
//! (defaults: 200 cached positions, 64 steps). Prints per batch size the median step time.
//! `ONLY=1` or `ONLY=8` runs one batch size (for `perf record`); `SCORE=1` times instead a
//! teacher-forced scoring pass of 160 positions (logits for the last 129), best of five.

use std::time::Instant;

use sortition_engine::WeightFormat;
use sortition_engine::llama::{Llama, Segment};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let context: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let m = sortition_models::pull("smollm2-135m-instruct", true).expect("pull model");
    // F32=1: Q8_0 weights with f32 activations (engine numerics n3).
    let format = if std::env::var("F32").is_ok() {
        WeightFormat::Q8_0F32
    } else {
        WeightFormat::Q8_0
    };
    let kernel = sortition_engine::Kernel::select().expect("SORTITION_KERNEL");
    let (model, _) = Llama::load(&m.primary, format, threads, kernel).expect("load");
    if std::env::var("SCORE").is_ok() {
        let prompt: Vec<u32> = (0..160u32).map(|i| 100 + i * 7 % 5000).collect();
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let mut cache = model.new_cache();
            let t = Instant::now();
            model.forward_from(&mut cache, &prompt, 31).expect("score");
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("scoring pass, 160 positions (logits for 129): {best:.1} ms, best of 5");
        return;
    }
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    for batch in [1usize, 8] {
        if only.is_some_and(|o| o != batch) {
            continue;
        }
        let prompt: Vec<u32> = (0..context as u32).map(|i| 100 + i * 7 % 5000).collect();
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
        for c in caches.iter_mut() {
            let mut segs = [Segment {
                cache: c,
                tokens: &prompt,
                all_logits: false,
            }];
            model.forward(&mut segs).expect("prefill");
        }
        let mut times = Vec::with_capacity(steps);
        for s in 0..steps {
            let tokens: Vec<[u32; 1]> = (0..batch).map(|b| [(300 + 13 * s + b) as u32]).collect();
            let mut segs: Vec<Segment<'_>> = caches
                .iter_mut()
                .zip(&tokens)
                .map(|(cache, t)| Segment {
                    cache,
                    tokens: t,
                    all_logits: false,
                })
                .collect();
            let t = Instant::now();
            model.forward(&mut segs).expect("step");
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let med = median(times);
        println!(
            "batch {batch}: step {med:.2} ms median over {steps} steps at context {context}..{} | {:.0} rows/s",
            context + steps,
            batch as f64 / med * 1e3
        );
    }
}
