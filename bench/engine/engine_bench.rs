//! Engine benchmark: prefill and decode throughput, single stream and 8 concurrent streams,
//! for the shipped Q4_1 weights and the Q8_0 re-encoding; peak RSS.
//!
//! `cargo run --release -p sortition-engine --example engine_bench [-- q8_0|shipped|both] [tokens]`
//! `ROUNDS=N` runs each phase N times and keeps its best (default 1).
//! The model comes from the model store (`SORTITION_MODEL_WHEEL_DIR`, cache, or pip).

use std::time::Instant;

use sortition_engine::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, Prompt, SamplingParams, StreamEvent,
    WeightFormat,
};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn request(prompt: Vec<u32>, max_tokens: u32, seed: u64) -> GenerateRequest {
    // Sampled (seeded) so that streams differ and rarely end early on a repetition loop.
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed,
        max_tokens,
        ..Default::default()
    };
    GenerateRequest::new(Prompt::Tokens(prompt), params)
}

/// Runs one stream; returns (time to first token, tokens, total seconds), times from `t0`.
async fn one(e: &Engine, prompt: Vec<u32>, max_tokens: u32, seed: u64) -> (f64, u32, f64) {
    one_from(Instant::now(), e, prompt, max_tokens, seed).await
}

async fn one_from(
    t0: Instant,
    e: &Engine,
    prompt: Vec<u32>,
    max_tokens: u32,
    seed: u64,
) -> (f64, u32, f64) {
    let mut s = e
        .generate(request(prompt, max_tokens, seed))
        .expect("generate");
    let mut first = None;
    let mut n = 0;
    while let Some(ev) = s.next().await {
        match ev {
            StreamEvent::Token { .. } => {
                n += 1;
                first.get_or_insert(t0.elapsed().as_secs_f64());
            }
            StreamEvent::Done { .. } => break,
            StreamEvent::Error(e) => panic!("{e}"),
        }
    }
    (first.unwrap_or(0.0), n, t0.elapsed().as_secs_f64())
}

async fn bench(format: WeightFormat, tokens: u32) {
    let m = sortition_models::pull("smollm2-135m-instruct", true).expect("pull model");
    let t = Instant::now();
    let cfg = EngineConfig {
        weight_format: format,
        ..EngineConfig::new(&m.primary, "smollm2")
    };
    let e = Engine::load(cfg.honour_env().expect("SORTITION_KERNEL")).expect("load");
    let load_s = t.elapsed().as_secs_f64();
    let q = match format {
        WeightFormat::Q8_0F32 => format!("{} f32 acts", e.info().quantization),
        _ => e.info().quantization.clone(),
    };
    let long: String = "The history of computing is long and full of surprising turns. ".repeat(12);
    let long_prompt = e.tokenizer().encode(&long).expect("encode");
    let chat = |i: usize| {
        e.prompt_tokens(&Prompt::Chat(vec![ChatMessage::new(
            "user",
            format!("Write a long story about dragon number {i}."),
        )]))
        .expect("prompt")
    };
    // Warm-up (thread pool, caches).
    one(&e, chat(0), 4, 0).await;

    // Each phase `ROUNDS` times (default 1), its best kept: the machine's other tenants
    // slow any one run by up to 2x.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (mut prefill_tps, mut single_tps, mut single_e2e) = (0f64, 0f64, 0f64);
    let (mut agg_tps, mut agg_decode) = (0f64, 0f64);
    for _ in 0..rounds.max(1) {
        // Prefill: a long prompt, one generated token.
        let (ttft, _, _) = one(&e, long_prompt.clone(), 1, 0).await;
        prefill_tps = prefill_tps.max(long_prompt.len() as f64 / ttft);
    }
    for _ in 0..rounds.max(1) {
        // Decode, single stream.
        let (first, n, total) = one(&e, chat(1), tokens, 1).await;
        single_tps = single_tps.max((n - 1) as f64 / (total - first));
        single_e2e = single_e2e.max(n as f64 / total);
    }
    for _ in 0..rounds.max(1) {
        // Decode, 8 concurrent streams.
        let t = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let e = e.clone();
                let p = chat(10 + i);
                tokio::spawn(async move { one_from(t, &e, p, tokens, 10 + i as u64).await })
            })
            .collect();
        let (mut total_tokens, mut all_first, mut end) = (0, 0f64, 0f64);
        for task in tasks {
            let (first, n, total) = task.await.expect("join");
            total_tokens += n;
            all_first = all_first.max(first);
            end = end.max(total);
        }
        agg_tps = agg_tps.max(total_tokens as f64 / t.elapsed().as_secs_f64());
        // Decode only: tokens after every stream had its first one, over that window (the
        // streams finish together unless one samples an end of sequence early).
        agg_decode = agg_decode.max((total_tokens - 8) as f64 / (end - all_first));
    }
    println!(
        "{q:>16}: load {load_s:.2}s | prefill {} tok: {prefill_tps:.0} tok/s | decode 1 stream: {single_tps:.1} tok/s ({single_e2e:.1} with prefill) | 8 streams: {agg_decode:.1} tok/s decode aggregate ({:.2}x), {agg_tps:.1} with prefills ({:.2}x) | max batch {} | peak RSS {:.0} MB",
        long_prompt.len(),
        agg_decode / single_tps,
        agg_tps / single_e2e,
        e.stats().max_batch_seen,
        peak_rss_mb()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("both");
    let tokens: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    println!(
        "engine_bench: candle threads {} | kernels {} | {tokens} tokens per stream",
        candle_core::utils::get_num_threads(),
        sortition_engine::kernel_set(sortition_engine::Kernel::select().ok())
    );
    if which == "shipped" || which == "both" {
        bench(WeightFormat::Shipped, tokens).await;
    }
    if which == "q8_0" || which == "both" {
        bench(WeightFormat::Q8_0, tokens).await;
    }
    // Q8_0 weights with f32 activations (engine numerics n3), on request only.
    if which == "q8_0-f32" {
        bench(WeightFormat::Q8_0F32, tokens).await;
    }
}
