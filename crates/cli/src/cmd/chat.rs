//! `sortition chat`: talk to a model through a gateway, streaming tokens as they arrive, and
//! say for each answer whether its receipt checks out.
//!
//! With `--prompt`, one answer (exit status non-zero on a gateway error or a receipt that
//! fails); without, an interactive loop on stdin that keeps the conversation (`/exit` quits).

use std::io::Write;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use sortition_api::SortitionExt;
use tokio::io::AsyncBufReadExt;

use super::chat_receipt::check;
use super::common::{base_url, describe_api_error, describe_error_value};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Gateway URL, e.g. the `gateway_url` of DATA_DIR/devnet.json.
    #[arg(long, env = "SORTITION_GATEWAY")]
    gateway: String,
    /// API key (sk-sort-…), e.g. the `api_key` of DATA_DIR/devnet.json.
    #[arg(long, env = "SORTITION_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Model id [default: the first model the gateway lists].
    #[arg(long)]
    model: Option<String>,
    /// Ask one question, print the answer and its receipt status, and exit.
    #[arg(long)]
    prompt: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature in [0, 2]; 0 is greedy [default: the node's].
    #[arg(long)]
    temperature: Option<f32>,
    /// Ledger URL: also check the receipt's signature against the ledger's key for the node,
    /// the text against the receipt's response hash, and look for an audit of the receipt.
    #[arg(long, env = "SORTITION_LEDGER")]
    ledger: Option<String>,
    /// Seal the prompt to an attested node (HPKE): the node's key and evidence are read from
    /// the ledger (--ledger is required) and verified here; with no verified node nothing is
    /// sent. The gateway sees only the model, the node and max_tokens.
    #[arg(long)]
    confidential: bool,
    /// With --confidential: accept nodes whose evidence comes from the INSECURE dev attester
    /// (no TEE; it proves nothing). For development networks only.
    #[arg(long, requires = "confidential")]
    allow_insecure_dev: bool,
}

/// Validated chat settings.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub gateway: String,
    pub api_key: String,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub ledger: Option<String>,
    /// Seal requests to attested nodes, with this policy.
    pub confidential: Option<sortition_confidential::Policy>,
}

impl TryFrom<ChatArgs> for ChatConfig {
    type Error = anyhow::Error;
    fn try_from(a: ChatArgs) -> Result<Self> {
        anyhow::ensure!(
            !a.confidential || a.ledger.is_some(),
            "--confidential needs --ledger: the nodes' attested keys are read from the ledger \
             and verified here; refusing instead of sending the prompt in the clear"
        );
        anyhow::ensure!(a.max_tokens > 0, "--max-tokens must be at least 1");
        if let Some(t) = a.temperature {
            anyhow::ensure!(
                t.is_finite() && (0.0..=2.0).contains(&t),
                "--temperature must be within [0, 2]"
            );
        }
        anyhow::ensure!(!a.api_key.trim().is_empty(), "--api-key is empty");
        Ok(ChatConfig {
            gateway: base_url("gateway", &a.gateway)?,
            api_key: a.api_key.trim().to_string(),
            model: a.model,
            prompt: a.prompt,
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            ledger: a.ledger.map(|l| base_url("ledger", &l)).transpose()?,
            confidential: a.confidential.then(|| sortition_confidential::Policy {
                allow_insecure_dev: a.allow_insecure_dev,
                ..Default::default()
            }),
        })
    }
}

/// One streamed answer.
#[derive(Debug, Default)]
pub struct Answer {
    pub text: String,
    pub finish_reason: Option<String>,
    pub ext: Option<SortitionExt>,
}

pub async fn run(a: ChatArgs) -> Result<()> {
    let cfg = ChatConfig::try_from(a)?;
    if cfg.confidential.is_some() {
        return super::chat_confidential::run(&cfg).await;
    }
    let http = reqwest::Client::new();
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => first_model(&http, &cfg).await?,
    };
    let mut history: Vec<Value> = Vec::new();
    if let Some(prompt) = &cfg.prompt {
        history.push(json!({"role": "user", "content": prompt}));
        let answer = ask(&http, &cfg, &model, &history).await?;
        let status = check(&answer, cfg.ledger.as_deref()).await;
        println!("{status}");
        if !status.is_ok() {
            bail!("the answer's receipt did not check out");
        }
        return Ok(());
    }
    eprintln!("chatting with {model} via {} (/exit to quit)", cfg.gateway);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next_line().await.context("reading stdin")? else {
            break;
        };
        let line = line.trim();
        if line == "/exit" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        history.push(json!({"role": "user", "content": line}));
        match ask(&http, &cfg, &model, &history).await {
            Ok(answer) => {
                println!("{}", check(&answer, cfg.ledger.as_deref()).await);
                history.push(json!({"role": "assistant", "content": answer.text}));
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                history.pop();
            }
        }
    }
    Ok(())
}

/// The model to chat with when none is named: the first model the gateway lists that is a chat
/// model. The list names chat and embedding models alike, so each is asked of the embeddings
/// route with an empty input, which costs nothing: a chat model is refused there as one
/// (`wrong_endpoint`), an embedding model for its empty input.
pub async fn first_model(http: &reqwest::Client, cfg: &ChatConfig) -> Result<String> {
    let url = format!("{}/v1/models", cfg.gateway);
    let resp = http
        .get(&url)
        .bearer_auth(&cfg.api_key)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        bail!(
            "listing models: {}",
            describe_api_error(status.as_u16(), &body)
        );
    }
    let v: Value = serde_json::from_str(&body).context("the gateway's model list is not JSON")?;
    let ids: Vec<String> = v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        bail!("the gateway serves no model yet; pass --model");
    }
    let probe = format!("{}/v1/embeddings", cfg.gateway);
    for id in &ids {
        let resp = http
            .post(&probe)
            .bearer_auth(&cfg.api_key)
            .json(&json!({"model": id, "input": []}))
            .send()
            .await
            .with_context(|| format!("POST {probe}"))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if is_chat_model_answer(status, &body) {
            return Ok(id.clone());
        }
    }
    bail!(
        "none of the gateway's models ({}) is a chat model; pass --model",
        ids.join(", ")
    )
}

/// Whether the embeddings route's answer to a model says it is a chat model.
pub fn is_chat_model_answer(status: u16, body: &str) -> bool {
    status == 400
        && serde_json::from_str::<Value>(body)
            .is_ok_and(|v| v["error"]["code"].as_str() == Some("wrong_endpoint"))
}

/// Sends the conversation, prints tokens as they arrive, and returns the answer.
async fn ask(
    http: &reqwest::Client,
    cfg: &ChatConfig,
    model: &str,
    history: &[Value],
) -> Result<Answer> {
    let mut body =
        json!({"model": model, "messages": history, "stream": true, "max_tokens": cfg.max_tokens});
    if let Some(t) = cfg.temperature {
        body["temperature"] = json!(t);
    }
    let url = format!("{}/v1/chat/completions", cfg.gateway);
    let resp = http
        .post(&url)
        .bearer_auth(&cfg.api_key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!(
            "the gateway refused: {}",
            describe_api_error(status.as_u16(), &text)
        );
    }
    let mut answer = Answer::default();
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("the stream broke")?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(piece) = on_line(line.trim_end(), &mut answer)? {
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            }
        }
    }
    if let Some(piece) = on_line(String::from_utf8_lossy(&buf).trim_end(), &mut answer)? {
        print!("{piece}");
    }
    println!();
    Ok(answer)
}

/// Folds one SSE line into the answer; returns new text to print.
pub fn on_line(line: &str, answer: &mut Answer) -> Result<Option<String>> {
    let Some(data) = line.strip_prefix("data:").map(str::trim) else {
        return Ok(None);
    };
    if data.is_empty() || data == "[DONE]" {
        return Ok(None);
    }
    let v: Value =
        serde_json::from_str(data).with_context(|| format!("bad stream event: {data}"))?;
    if let Some(e) = v.get("error") {
        let msg = describe_error_value(e).unwrap_or_else(|| e.to_string());
        bail!("the stream ended with an error: {msg}");
    }
    if let Some(e) = v.get("sortition") {
        answer.ext =
            Some(serde_json::from_value(e.clone()).context("malformed `sortition` receipt field")?);
    }
    let Some(choice) = v["choices"].get(0) else {
        return Ok(None);
    };
    if let Some(f) = choice["finish_reason"].as_str() {
        answer.finish_reason = Some(f.to_string());
    }
    match choice["delta"]["content"].as_str() {
        Some(t) if !t.is_empty() => {
            answer.text.push_str(t);
            Ok(Some(t.to_string()))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stream_lines_build_the_answer() {
        let mut a = Answer::default();
        let ev = |s: &str| format!("data: {s}");
        assert_eq!(
            on_line(&ev(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#), &mut a)
                .ok()
                .flatten()
                .as_deref(),
            Some("Hi")
        );
        assert!(on_line(": keep-alive", &mut a).is_ok_and(|p| p.is_none()));
        assert!(
            on_line(
                &ev(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
                &mut a
            )
            .is_ok()
        );
        assert!(on_line("data: [DONE]", &mut a).is_ok());
        assert_eq!(a.text, "Hi");
        assert_eq!(a.finish_reason.as_deref(), Some("stop"));
        assert!(a.ext.is_none());
    }

    /// A signed receipt extension committing to `text` and `finish`, as JSON.
    pub(crate) fn ext_json(text: &str, finish: &str) -> String {
        use sortition_types::{Keypair, ModelId, NodeId, Receipt, SignedReceipt, StackId, sha256};
        let receipt = Receipt {
            node: NodeId(1),
            stack: StackId(2),
            sequence: 3,
            model: ModelId::new("m"),
            model_digest: sha256(b"w"),
            node_class: sha256(b"c"),
            request_hash: sha256(b"req"),
            response_hash: sortition_types::text_response_hash(text, finish),
            input_tokens: 4,
            output_tokens: 5,
            sampling: Default::default(),
            timestamp_ms: 6,
            custody: Default::default(),
        };
        serde_json::to_string(&SortitionExt {
            node: NodeId(1),
            receipt: SignedReceipt::sign(receipt, &Keypair::from_seed(b"node")),
            verified_by_gateway: Some(true),
        })
        .unwrap()
    }

    /// Issue 21: the receipt rides on the finish chunk (with its choice) now, or on the usage
    /// chunk after it: read from whichever event carries it, with that event's finish reason.
    #[test]
    fn the_receipt_is_read_from_whichever_event_carries_it() {
        let ext = ext_json("Hi", "stop");
        let finish = format!(
            r#"data: {{"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],"sortition":{ext}}}"#
        );
        let mut a = Answer::default();
        on_line(r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#, &mut a).unwrap();
        on_line(&finish, &mut a).unwrap();
        assert_eq!(
            (a.text.as_str(), a.finish_reason.as_deref()),
            ("Hi", Some("stop"))
        );
        let r = a
            .ext
            .expect("receipt read from the finish chunk")
            .receipt
            .receipt;
        assert_eq!(
            r.response_hash,
            sortition_types::text_response_hash("Hi", "stop")
        );
        // `sortition receipt verify` reads a stream of either shape alike.
        let usage = format!(r#"data: {{"choices":[],"usage":{{}},"sortition":{ext}}}"#);
        let head = r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#;
        let plain_finish = r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        for stream in [
            format!("{head}\n{finish}\ndata: [DONE]\n"),
            format!("{head}\n{plain_finish}\n{usage}\ndata: [DONE]\n"),
        ] {
            let (e, answer) = crate::cmd::receipt::extract(&stream).unwrap();
            assert_eq!(answer, Some(("Hi".to_string(), "stop".to_string())));
            assert_eq!(e.receipt.receipt.response_hash, r.response_hash);
        }
    }

    /// Issue 21: `sortition chat` without `--model` picked the first listed model, the
    /// embedding model. The probe's answer tells a chat model apart.
    #[test]
    fn a_chat_model_is_told_apart_by_the_probe() {
        assert!(is_chat_model_answer(
            400,
            r#"{"error":{"code":"wrong_endpoint","message":"'m' is a chat model"}}"#
        ));
        assert!(!is_chat_model_answer(
            400,
            r#"{"error":{"code":"invalid_input","message":"input must hold 1 to 256 strings"}}"#
        ));
        assert!(!is_chat_model_answer(200, "{}"));
    }

    #[test]
    fn an_error_event_is_an_error() {
        let mut a = Answer::default();
        let e = on_line(
            r#"data: {"error":{"message":"node died","type":"server_error","code":"upstream"}}"#,
            &mut a,
        );
        let msg = format!("{:#}", e.err().map(|e| e.to_string()).unwrap_or_default());
        assert!(msg.contains("node died"), "{msg}");
    }
}
