//! What structured outputs and log-probabilities cost per generated token, against plain
//! decoding of the same prompt on the same engine (SmolLM2-135M, one stream).
//!
//! `cargo run --release -p sortition-engine --example constrained_bench [-- ROUNDS [TOKENS]]`
//!
//! Modes, interleaved round by round so that machine noise hits them alike:
//! - `plain`: sampled decoding (temperature 0.8, seeded);
//! - `json_schema`: the same under a typical extraction schema (an object with a string, an
//!   integer, an enum and a list of strings), enforced by llguidance;
//! - `tool_call`: the same under a forced tool call's schema (`{"name": const, "arguments":
//!   {...}}`, as the API builds it);
//! - `logprobs_20`: plain decoding with each token's log-probability and 20 alternatives.
//!
//! Per mode: the median over rounds of the decode time per token (first token to the last,
//! over the tokens after the first: prefill excluded), the time to first token (which
//! includes compiling the schema), and the ratio of decode time per token to `plain`'s.

use std::time::Instant;

use sortition_engine::{
    ChatMessage, Constraint, Engine, EngineConfig, GenerateRequest, Prompt, SamplingParams,
    StreamEvent,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (time to first token, decode seconds per token after the first, tokens).
async fn run(e: &Engine, req: GenerateRequest) -> (f64, f64, u32) {
    let t0 = Instant::now();
    let mut s = e.generate(req).expect("generate");
    let (mut first, mut last, mut n) = (None, t0, 0u32);
    while let Some(ev) = s.next().await {
        match ev {
            StreamEvent::Token { .. } => {
                n += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
            StreamEvent::Done { .. } => break,
            StreamEvent::Error(e) => panic!("{e}"),
        }
    }
    let first = first.expect("a token");
    let per = (last - first).as_secs_f64() / f64::from(n.saturating_sub(1).max(1));
    ((first - t0).as_secs_f64(), per, n)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let tokens: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(96);
    let m = sortition_models::pull("smollm2-135m-instruct", true).expect("pull model");
    let cfg = EngineConfig::new(&m.primary, "smollm2").honour_env();
    let e = Engine::load(cfg.expect("SORTITION_KERNEL")).expect("load");
    let prompt = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "Describe a person from a novel: their name, age, mood and a few hobbies.",
    )]);
    let schema = serde_json::json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad", "calm", "angry"]},
        "hobbies": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age", "mood", "hobbies"], "additionalProperties": false});
    let tool = serde_json::json!({"type": "object", "properties": {
        "name": {"const": "describe_person"},
        "arguments": schema.clone()},
        "required": ["name", "arguments"], "additionalProperties": false});
    let request =
        |round: usize, constraint: Option<Constraint>, logprobs: Option<u8>| GenerateRequest {
            constraint,
            logprobs,
            ..GenerateRequest::new(
                prompt.clone(),
                SamplingParams {
                    temperature: 0.8,
                    seed: round as u64,
                    max_tokens: tokens,
                    ..Default::default()
                },
            )
        };
    type Mode = (&'static str, Option<Constraint>, Option<u8>);
    let modes: Vec<Mode> = vec![
        ("plain", None, None),
        ("json_schema", Some(Constraint::JsonSchema(schema)), None),
        ("tool_call", Some(Constraint::JsonSchema(tool)), None),
        ("logprobs_20", None, Some(20)),
    ];
    // Warm-up (first compile of the tokenizer trie, caches).
    for (_, c, lp) in &modes {
        run(&e, request(1000, c.clone(), *lp)).await;
    }
    let mut seen: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); modes.len()];
    for round in 0..rounds {
        for (i, (_, c, lp)) in modes.iter().enumerate() {
            let (ttft, per, n) = run(&e, request(round, c.clone(), *lp)).await;
            seen[i].0.push(ttft);
            seen[i].1.push(per);
            seen[i].2.push(f64::from(n));
        }
    }
    let plain = median(seen[0].1.clone());
    println!(
        "constrained_bench: SmolLM2-135M, 1 stream, {rounds} rounds, up to {tokens} tokens, \
         medians"
    );
    for (i, (name, _, _)) in modes.iter().enumerate() {
        let per = median(seen[i].1.clone());
        println!(
            "{name:<12} decode {:.2} ms/token ({:.2}x plain) | first token {:.1} ms | {:.0} tokens",
            per * 1e3,
            per / plain,
            median(seen[i].0.clone()) * 1e3,
            median(seen[i].2.clone()),
        );
    }
}
