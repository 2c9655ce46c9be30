//! Verification cost: what a scoring audit costs next to regenerating the answer, how often
//! scoring can decide (the decoded answer re-tokenizes to the generated ids), and the
//! tolerance honest answers need — for the default model, on this machine.
//!
//! `cargo run --release -p sortition-node --example verify_bench [-- TOKENS [Q_PPM K]]`
//!
//! Prints one line per prompt, then the totals: scoring time / regeneration time, and the
//! verification compute as a fraction of serving compute at audit probability q with k
//! auditors (each audit = k scorings, plus a regeneration whenever scoring is inconclusive).

use std::time::Instant;

use sortition_engine::{
    ChatMessage, Engine, EngineConfig, FinishReason, GenerateRequest, Lane, Prompt, SamplingParams,
};

const PROMPTS: [&str; 8] = [
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about a lighthouse.",
    "List three uses of a paperclip.",
    "What is the capital of France, and what river runs through it?",
    "Give me a short recipe for pancakes.",
    "Describe a cat to someone who has never seen one.",
    "Why do we need sleep?",
    "Tell me a fun fact about octopuses.",
];

struct Row {
    regen_s: f64,
    score_s: f64,
    roundtrip: bool,
    worst_gap: f32,
    worst_rank: u32,
    /// Sampled answers: the farthest a token's interval lay from its seeded draw's uniform
    /// (0: every token is the draw's pick).
    worst_miss: f32,
}

async fn measure(e: &Engine, prompt: &str, params: SamplingParams) -> Row {
    let p = Prompt::Chat(vec![ChatMessage::new("user", prompt)]);
    let t = Instant::now();
    let (finish, usage, ids, text) = e
        .generate(GenerateRequest::new(p.clone(), params.clone()))
        .expect("generate")
        .collect()
        .await
        .expect("generation");
    let regen_s = t.elapsed().as_secs_f64();
    // What an auditor has: the prompt and the answer's text (not the ids).
    let prompt_ids = e.prompt_tokens(&p).expect("prompt");
    let mut claimed = e.tokenizer().encode(&text).expect("encode");
    if finish == FinishReason::Stop {
        claimed.push(e.tokenizer().stop_ids()[0]);
    }
    let roundtrip = claimed.len() == usage.completion_tokens as usize && claimed == ids;
    let t = Instant::now();
    // As a node's judge scores it: with the request's parameters (the seeded draw).
    let scores = e
        .score_in(prompt_ids, claimed, Some(&params), Lane::Audit)
        .await
        .expect("score");
    let score_s = t.elapsed().as_secs_f64();
    let n = scores.len();
    let (mut worst_gap, mut worst_rank, mut worst_miss) = (0f32, 0u32, 0f32);
    for (i, s) in scores.iter().enumerate() {
        if finish == FinishReason::Stop && i + 1 == n {
            continue; // the end is checked by the stop set, not one id
        }
        worst_gap = worst_gap.max(s.max_logit - s.logit);
        worst_rank = worst_rank.max(s.rank);
        worst_miss = worst_miss.max(s.draw.map_or(0.0, |d| d.miss));
    }
    Row {
        regen_s,
        score_s,
        roundtrip,
        worst_gap,
        worst_rank,
        worst_miss,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tokens: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let q_ppm: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000.0);
    let k: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let m = sortition_models::pull("smollm2-135m-instruct", true).expect("pull model");
    let cfg = EngineConfig::new(m.primary, "smollm2-135m-instruct").honour_env();
    let e = Engine::load(cfg.expect("SORTITION_KERNEL")).expect("load");
    println!(
        "verify_bench: {} | kernels {} | up to {tokens} tokens per answer",
        e.info().quantization,
        e.info().node_class.kernels
    );
    for (label, temperature) in [("greedy", 0.0f32), ("sampled t=0.7", 0.7)] {
        let (mut regen, mut score, mut decided) = (0.0, 0.0, 0usize);
        let (mut gap, mut rank, mut miss) = (0f32, 0u32, 0f32);
        for (i, prompt) in PROMPTS.iter().enumerate() {
            let params = SamplingParams {
                temperature,
                seed: i as u64,
                max_tokens: tokens,
                ..Default::default()
            };
            let r = measure(&e, prompt, params).await;
            println!(
                "  {label:<14} prompt {i}: regenerate {:>7.1} ms | score {:>6.1} ms | {:.3}x | re-tokenizes exactly: {} | worst gap {:.3} rank {}",
                r.regen_s * 1e3,
                r.score_s * 1e3,
                r.score_s / r.regen_s,
                r.roundtrip,
                r.worst_gap,
                r.worst_rank
            );
            regen += r.regen_s;
            score += r.score_s;
            decided += usize::from(r.roundtrip);
            gap = gap.max(r.worst_gap);
            rank = rank.max(r.worst_rank);
            if r.roundtrip {
                // An answer that does not re-tokenize is scored on other ids than it was
                // drawn as: the judge leaves it to re-execution, unscored.
                miss = miss.max(r.worst_miss);
            }
        }
        let ratio = score / regen;
        let undecided = 1.0 - decided as f64 / PROMPTS.len() as f64;
        // Per served request: q * k auditors each score, and regenerate when undecided.
        let per_audit = ratio + undecided;
        let fraction = q_ppm / 1e6 * k * per_audit;
        println!(
            "{label}: scoring / regeneration = {ratio:.3} (goal <= 0.20) | decided by scoring {decided}/{} | worst honest gap {gap:.3} logits, worst rank {rank}, worst draw miss {miss:.1e}",
            PROMPTS.len()
        );
        println!(
            "{label}: verification compute / serving compute at q={:.3}, k={k}: {:.4} ({:.2}%) scoring vs {:.4} ({:.2}%) by re-execution only",
            q_ppm / 1e6,
            fraction,
            fraction * 100.0,
            q_ppm / 1e6 * k,
            q_ppm / 1e6 * k * 100.0
        );
    }
}
