//! The corpus through a real node under concurrent load: a devnet (a ledger, one node on
//! this worker's kernel and threads, a gateway that checks every receipt) on loopback, and
//! every unconstrained case of the corpus sent over HTTP at once, for several rounds, so the
//! node batches them in compositions no other configuration makes. Each answer's text, finish
//! reason and per-token log-probabilities (as f32 bits, read back from the JSON) are compared
//! with the reference process' answer alone.
//!
//! Constrained cases are left out here: over HTTP they are a `response_format` or a forced
//! tool call, whose answer is read back in another shape (the other configurations replay
//! them bit for bit).

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sortition_api::{ChatCompletion, Completion};
use sortition_devnet::{Devnet, DevnetConfig};
use sortition_engine::{Kernel, Prompt};

use crate::ConformanceError;
use crate::corpus::Case;

/// One answer as the node delivered it over HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAnswer {
    /// The case's index in the corpus.
    pub case: usize,
    pub round: usize,
    pub text: String,
    /// `stop` or `length`.
    pub finish: String,
    pub logprob_bits: Vec<u32>,
}

fn fail(why: impl std::fmt::Display) -> ConformanceError {
    ConformanceError::Invalid(format!("through a node: {why}"))
}

/// The OpenAI request of `case`, asking for each token's log-probability (`None` for a
/// prompt of token ids, which the HTTP API does not take for chat).
fn request(model: &str, case: &Case) -> Option<(&'static str, Value)> {
    let p = &case.params;
    let mut body = json!({
        "model": model,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "seed": p.seed,
        "max_tokens": p.max_tokens,
    });
    if p.top_k != 0 {
        body["top_k"] = json!(p.top_k);
    }
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    if p.presence_penalty != 0.0 {
        body["presence_penalty"] = json!(p.presence_penalty);
    }
    if p.frequency_penalty != 0.0 {
        body["frequency_penalty"] = json!(p.frequency_penalty);
    }
    match &case.prompt {
        Prompt::Chat(messages) => {
            body["messages"] = json!(
                messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect::<Vec<_>>()
            );
            body["logprobs"] = json!(true);
            Some(("/v1/chat/completions", body))
        }
        Prompt::Text(text) => {
            body["prompt"] = json!(text);
            body["logprobs"] = json!(0);
            Some(("/v1/completions", body))
        }
        Prompt::Tokens(_) => None,
    }
}

/// Reads the answer of `case` out of the response body.
fn answer(case: usize, round: usize, chat: bool, body: &[u8]) -> Result<HttpAnswer, String> {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    if chat {
        let c: ChatCompletion = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let choice = c.choices.into_iter().next().ok_or("no choice")?;
        let lps: Vec<f32> = choice
            .logprobs
            .map(|l| l.content.iter().map(|t| t.logprob).collect())
            .unwrap_or_default();
        Ok(HttpAnswer {
            case,
            round,
            text: choice.message.content.unwrap_or_default(),
            finish: choice.finish_reason,
            logprob_bits: bits(&lps),
        })
    } else {
        let c: Completion = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let choice = c.choices.into_iter().next().ok_or("no choice")?;
        let lps: Vec<f32> = choice
            .logprobs
            .map(|l| {
                l.token_logprobs
                    .iter()
                    .map(|t| t.unwrap_or(f32::NAN))
                    .collect()
            })
            .unwrap_or_default();
        Ok(HttpAnswer {
            case,
            round,
            text: choice.text,
            finish: choice.finish_reason.unwrap_or_default(),
            logprob_bits: bits(&lps),
        })
    }
}

/// Starts a devnet whose one node runs `kernel` on `threads` threads and sends every
/// unconstrained case of `cases` at once, `rounds` times.
pub async fn replay(
    model: &str,
    kernel: Kernel,
    threads: usize,
    cases: &[Case],
    rounds: usize,
) -> Result<Vec<HttpAnswer>, ConformanceError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let mut cfg = DevnetConfig::new(dir.path());
    cfg.nodes = 1;
    cfg.chat_model = model.to_string();
    cfg.embed_model = None;
    cfg.kernel = Some(kernel);
    cfg.threads = Some(threads);
    let devnet = Devnet::start(cfg).await.map_err(fail)?;
    let http = reqwest::Client::new();
    let url = devnet.info.gateway_url.clone();
    let key = devnet.info.api_key.clone();
    let ask = |i: usize, round: usize| {
        let req = request(model, &cases[i]).map(|(path, body)| {
            let r = http
                .post(format!("{url}{path}"))
                .bearer_auth(&key)
                .json(&body);
            (path, r)
        });
        async move {
            let (path, req) = req.ok_or("a prompt of token ids")?;
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
            }
            answer(i, round, path.contains("chat"), &bytes)
        }
    };
    let unconstrained: Vec<usize> = (0..cases.len())
        .filter(|&i| cases[i].constraint.is_none() && !matches!(cases[i].prompt, Prompt::Tokens(_)))
        .collect();
    let mut out = Vec::new();
    let mut error = None;
    for round in 0..rounds {
        // Each round in another order, so each request meets other neighbours in its batch.
        let mut order = unconstrained.clone();
        let shift = (round * 7) % order.len().max(1);
        order.rotate_left(shift);
        if round % 2 == 1 {
            order.reverse();
        }
        let answers = join_all(order.iter().map(|&i| ask(i, round))).await;
        for (a, &i) in answers.into_iter().zip(&order) {
            match a {
                Ok(a) => out.push(a),
                Err(e) => {
                    error.get_or_insert(format!("{}: {e}", cases[i].label));
                }
            }
        }
    }
    devnet.shutdown().await;
    match error {
        Some(e) => Err(fail(e)),
        None => Ok(out),
    }
}
