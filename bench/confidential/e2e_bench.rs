//! Confidential vs plain mode against the same node, end to end: a devnet with ONE node (dev
//! attester) running the default model, a gateway, and the client SDK. The same prompts at
//! temperature 0 are sent in both modes, interleaved (plain, confidential, plain, …) so that
//! machine noise falls on both alike.
//!
//! - latency: one request at a time, non-streamed, `max_tokens` 32; mean and median per mode;
//! - throughput: `CONCURRENCY` requests in flight, completion tokens per second per mode.
//!
//! The confidential client verifies the node's evidence once (as it would once per epoch) and
//! then seals each request; the per-request cost (seal, gateway relay of the envelope, node
//! open, per-chunk sealing, client open and receipt check) is what the ratio shows.
//!
//! Run: `cargo run --release -p sortition-devnet --example confidential_bench [ROUNDS]`

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sortition_confidential::client::ConfidentialClient;
use sortition_confidential::{AttesterKind, Policy};
use sortition_devnet::{Devnet, DevnetConfig};

const MODEL: &str = "smollm2-135m-instruct";
const MAX_TOKENS: u32 = 32;
const CONCURRENCY: usize = 4;
const PROMPTS: [&str; 6] = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Give a synonym for happy.",
    "Why is the sky blue? Answer briefly.",
];

fn body(prompt: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}],
           "max_tokens": MAX_TOKENS, "temperature": 0})
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

async fn plain(http: &reqwest::Client, url: &str, key: &str, prompt: &str) -> Res<(String, u64)> {
    let v: Value = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body(prompt))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((text, v["usage"]["completion_tokens"].as_u64().unwrap_or(0)))
}

async fn sealed(
    c: &ConfidentialClient,
    node: &sortition_confidential::client::AttestedNode,
    prompt: &str,
) -> Res<(String, u64)> {
    let a = c.chat_to(node, &body(prompt), &mut |_| {}).await?;
    Ok((a.text, a.receipt.receipt.output_tokens))
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let mean = v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64;
    (mean * 1e3, v[v.len() / 2].as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Res<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let mut cfg = DevnetConfig::new(dir.path());
    cfg.nodes = 1;
    cfg.embed_model = None;
    cfg.attester = Some(AttesterKind::InsecureDev);
    let net = Devnet::start(cfg).await?;
    let i = net.info.clone();
    let http = reqwest::Client::new();
    let policy = Policy {
        allow_insecure_dev: true,
        ..Policy::default()
    };
    let client = ConfidentialClient::new(&i.ledger_url, &i.gateway_url, &i.api_key, policy);
    let t = Instant::now();
    let node = client.choose(MODEL).await?;
    let select_ms = t.elapsed().as_secs_f64() * 1e3;

    // Warm up both paths (stack purchase, caches) and check the answers agree.
    for p in PROMPTS {
        let a = plain(&http, &i.gateway_url, &i.api_key, p).await?;
        let b = sealed(&client, &node, p).await?;
        if a.0 != b.0 {
            return Err(format!("answers differ for {p:?}: {:?} vs {:?}", a.0, b.0).into());
        }
    }

    let (mut lp, mut lc) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        for (k, p) in PROMPTS.iter().enumerate() {
            // Alternate which mode goes first, so neither always runs on a warmer machine.
            let order = (r + k) % 2 == 0;
            for mode in [order, !order] {
                let t = Instant::now();
                if mode {
                    plain(&http, &i.gateway_url, &i.api_key, p).await?;
                    lp.push(t.elapsed());
                } else {
                    sealed(&client, &node, p).await?;
                    lc.push(t.elapsed());
                }
            }
        }
    }
    let (pm, p50) = stats(lp);
    let (cm, c50) = stats(lc);

    // Throughput: batches of CONCURRENCY requests, alternating which mode goes first.
    let mut secs = [0f64; 2];
    let mut toks = [0f64; 2];
    for r in 0..rounds {
        for mode in if r % 2 == 0 { [0usize, 1] } else { [1, 0] } {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for k in 0..CONCURRENCY {
                let p = PROMPTS[(k + r) % PROMPTS.len()];
                let (http, client, node, i) =
                    (http.clone(), client.clone(), node.clone(), i.clone());
                tasks.push(tokio::spawn(async move {
                    if mode == 0 {
                        plain(&http, &i.gateway_url, &i.api_key, p)
                            .await
                            .map(|x| x.1)
                            .map_err(|e| e.to_string())
                    } else {
                        sealed(&client, &node, p)
                            .await
                            .map(|x| x.1)
                            .map_err(|e| e.to_string())
                    }
                }));
            }
            for t in tasks {
                toks[mode] += t.await?? as f64;
            }
            secs[mode] += t.elapsed().as_secs_f64();
        }
    }
    let (tpp, tpc) = (toks[0] / secs[0], toks[1] / secs[1]);
    println!("node selection + evidence check (once per epoch): {select_ms:.1} ms");
    println!(
        "latency, 1 in flight, {n} requests/mode, max_tokens {MAX_TOKENS}: plain mean {pm:.1} ms (p50 {p50:.1}), confidential mean {cm:.1} ms (p50 {c50:.1}); ratio mean {:.4}, p50 {:.4} ({:+.2}% / {:+.2}%)",
        cm / pm,
        c50 / p50,
        (cm / pm - 1.0) * 100.0,
        (c50 / p50 - 1.0) * 100.0,
        n = rounds * PROMPTS.len(),
    );
    println!(
        "throughput, {CONCURRENCY} in flight, {rounds} batches/mode: plain {tpp:.1} tok/s, confidential {tpc:.1} tok/s; ratio {:.4} ({:+.2}%)",
        tpc / tpp,
        (tpc / tpp - 1.0) * 100.0
    );
    net.shutdown().await;
    Ok(())
}
