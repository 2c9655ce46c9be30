//! Shared helpers: tiny engines, collecting streams, child processes.

use std::path::PathBuf;
use std::process::Command;

use sortition_engine::testutil::write_tiny_llama;
use sortition_engine::{
    Engine, EngineConfig, FinishReason, GenerateRequest, GenerationStream, Prompt, SamplingParams,
    StreamEvent, Usage,
};
use sortition_types::Hash32;

/// A token's log-probability and its alternatives `(id, bits)`, as f32 bits.
pub type LogprobBits = (u32, Vec<(u32, u32)>);

/// Everything a finished stream produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ids: Vec<u32>,
    pub texts: Vec<String>,
    pub logits: Vec<Option<Hash32>>,
    /// Each token's log-probability and top alternatives, as f32 bits (compared exactly).
    pub logprobs: Vec<Option<LogprobBits>>,
    pub finish: FinishReason,
    pub usage: Usage,
    pub tokens: Vec<u32>,
    pub text: String,
}

pub async fn run(mut s: GenerationStream) -> Outcome {
    let (mut ids, mut texts, mut logits, mut lps) = (vec![], vec![], vec![], vec![]);
    while let Some(ev) = s.next().await {
        match ev {
            StreamEvent::Token {
                id,
                text,
                logits_digest,
                logprobs,
            } => {
                lps.push(logprobs.map(|l| {
                    let top = l.top.iter().map(|&(t, v)| (t, v.to_bits())).collect();
                    (l.logprob.to_bits(), top)
                }));
                ids.push(id);
                texts.push(text);
                logits.push(logits_digest);
            }
            StreamEvent::Done {
                finish_reason,
                usage,
                tokens,
                text,
            } => {
                return Outcome {
                    ids,
                    texts,
                    logits,
                    logprobs: lps,
                    finish: finish_reason,
                    usage,
                    tokens,
                    text,
                };
            }
            StreamEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("stream ended without Done");
}

/// A tiny model file for `seed` in a per-process temp dir (kept for the process lifetime).
pub fn tiny_model(seed: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sortition-engine-tests-{}", std::process::id()));
    write_tiny_llama(&dir, seed).expect("write tiny model")
}

/// The tiny model's config, with the kernel and threads a child process is given.
pub fn tiny_config(seed: u64) -> EngineConfig {
    EngineConfig::new(tiny_model(seed), format!("tiny-{seed}"))
        .honour_env()
        .expect("kernel and threads of the environment")
}

pub fn tiny_engine(seed: u64) -> Engine {
    Engine::load(tiny_config(seed)).expect("load tiny engine")
}

pub fn req(prompt: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(prompt.into()),
        params,
        trace_logits: true,
        logprobs: Some(5),
        constraint: None,
    }
}

pub fn sampled(seed: u64, max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
        seed,
        max_tokens,
        ..Default::default()
    }
}

/// Runs one test of this binary in a child process with the given thread count and extra
/// environment; returns the child's stdout line that starts with `RESULT `.
pub fn child(test: &str, threads: usize, env: &[(&str, String)]) -> String {
    let exe = std::env::current_exe().expect("test exe");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SORTITION_CHILD", "1")
        .env("CANDLE_NUM_THREADS", threads.to_string())
        .env("RAYON_NUM_THREADS", threads.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.find("RESULT ").map(|i| l[i + 7..].to_string()))
        .unwrap_or_else(|| panic!("child printed no RESULT: {stdout}"))
}

pub fn is_child() -> bool {
    std::env::var_os("SORTITION_CHILD").is_some()
}
