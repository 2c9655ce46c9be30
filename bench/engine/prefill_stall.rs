//! How long a long prompt stalls the sequences already decoding, by prefill budget.
//!
//! A stream decodes; once it has produced a few tokens a long prompt (about 1,500 tokens)
//! arrives. Printed per budget: the decoding stream's longest gap between two tokens (the
//! stall), its median gap, and the long request's time to its first token.
//!
//! `cargo run --release -p sortition-engine --example prefill_stall -- [BUDGET ...]`
//! (default budgets: 4096, i.e. the whole prompt in one step, then 512, 256 and 128).

use std::time::{Duration, Instant};

use sortition_engine::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, Prompt, SamplingParams, StreamEvent,
};

fn chat(text: String, max_tokens: u32) -> GenerateRequest {
    GenerateRequest::new(
        Prompt::Chat(vec![ChatMessage::new("user", text)]),
        SamplingParams::greedy(max_tokens),
    )
}

async fn run(path: &std::path::Path, budget: usize) -> (Duration, Duration, Duration, usize) {
    let cfg = EngineConfig {
        prefill_budget: budget,
        ..EngineConfig::new(path, "smollm2")
    };
    let e = Engine::load(cfg.honour_env().expect("SORTITION_KERNEL")).expect("load");
    let long_text = "The committee met again to review the budget of each department. ".repeat(110);
    let long_tokens = e
        .prompt_tokens(&Prompt::Chat(vec![ChatMessage::new(
            "user",
            long_text.clone(),
        )]))
        .expect("tokens")
        .len();
    let mut decoding = e
        .generate(chat("Tell me a long story about the sea.".into(), 96))
        .expect("decoding stream");
    let mut gaps = Vec::new();
    let mut last = None;
    let mut long = None;
    let mut long_first = None;
    let mut n = 0;
    while let Some(ev) = decoding.next().await {
        match ev {
            StreamEvent::Token { .. } => {
                let now = Instant::now();
                if let Some(t) = last {
                    gaps.push(now - t);
                }
                last = Some(now);
                n += 1;
                if n == 8 {
                    let started = Instant::now();
                    let mut s = e.generate(chat(long_text.clone(), 1)).expect("long prompt");
                    long = Some(tokio::spawn(async move {
                        while let Some(ev) = s.next().await {
                            if matches!(ev, StreamEvent::Token { .. }) {
                                return started.elapsed();
                            }
                        }
                        started.elapsed()
                    }));
                }
            }
            StreamEvent::Done { .. } => break,
            StreamEvent::Error(err) => panic!("{err}"),
        }
    }
    if let Some(h) = long {
        long_first = Some(h.await.expect("long request"));
    }
    gaps.sort();
    let max = gaps.last().copied().unwrap_or_default();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or_default();
    (max, median, long_first.unwrap_or_default(), long_tokens)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let budgets: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a budget in tokens"))
        .collect();
    let budgets = if budgets.is_empty() {
        vec![4096, 512, 256, 128]
    } else {
        budgets
    };
    let m = sortition_models::pull("smollm2-135m-instruct", true).expect("pull model");
    println!("BUDGET  LONGEST GAP  MEDIAN GAP  LONG PROMPT FIRST TOKEN");
    for b in budgets {
        let (max, median, first, tokens) = run(&m.primary, b).await;
        println!(
            "{b:>6}  {:>9.1} ms  {:>8.1} ms  {:>10.1} ms ({tokens} prompt tokens)",
            max.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3
        );
    }
}
