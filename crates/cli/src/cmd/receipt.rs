//! `sortition receipt verify`: checks the receipt in a response against the ledger.

use std::io::Read;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sortition_api::SortitionExt;
use sortition_ledger_client::LedgerClient;

#[derive(Subcommand, Debug)]
pub enum ReceiptCmd {
    /// Read a response (a JSON body, or an SSE stream) on stdin and check its receipt: the
    /// signature against the key the ledger holds for the node, and the response hash against
    /// the text received.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    ledger: String,
    /// The request body that was sent (JSON): needed to check an answer made under a
    /// `response_format` schema, whose digest the response hash includes.
    #[arg(long)]
    request: Option<std::path::PathBuf>,
}

/// The response hash of exactly what `input` delivers (a JSON body or an SSE stream) for the
/// request `body`, the way the gateway computes it: text, finish reason, log-probabilities,
/// the request's constraint, or embeddings' vectors.
fn delivered_hash(input: &str, body: &[u8]) -> Result<sortition_types::Hash32> {
    let trimmed = input.trim_start();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed).context("stdin is not JSON")?;
        return sortition_api::delivered::response_hash(&v, body)
            .map_err(|e| anyhow::anyhow!("{e}"));
    }
    let mut d = sortition_api::delivered::DeliveredText::for_request(body);
    for v in sse_events(input) {
        d.absorb(&v?);
    }
    d.response_hash().map_err(|e| anyhow::anyhow!("{e}"))
}

/// The JSON events of an SSE stream, in order (`[DONE]` and non-data lines left out).
fn sse_events(input: &str) -> impl Iterator<Item = Result<serde_json::Value>> + '_ {
    input
        .lines()
        .filter_map(|line| line.strip_prefix("data:").map(str::trim))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).with_context(|| format!("bad SSE event: {data}")))
}

/// The receipt extension and, when it can be rebuilt, the answer text and finish reason.
pub fn extract(input: &str) -> Result<(SortitionExt, Option<(String, String)>)> {
    let trimmed = input.trim_start();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed).context("stdin is not JSON")?;
        let ext: SortitionExt = serde_json::from_value(
            v.get("sortition")
                .cloned()
                .context("no `sortition` field: not a Sortition response")?,
        )?;
        let choice = &v["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str());
        let finish = choice["finish_reason"].as_str();
        return Ok((
            ext,
            text.zip(finish)
                .map(|(t, f)| (t.to_string(), f.to_string())),
        ));
    }
    let mut text = String::new();
    let mut finish = None;
    let mut ext = None;
    for v in sse_events(input) {
        let v = v?;
        if let Some(e) = v.get("sortition") {
            ext = Some(serde_json::from_value::<SortitionExt>(e.clone())?);
        }
        if let Some(c) = v["choices"].get(0) {
            if let Some(t) = c["delta"]["content"]
                .as_str()
                .or_else(|| c["text"].as_str())
            {
                text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    let ext = ext.context("no event carries a `sortition` receipt")?;
    Ok((ext, finish.map(|f| (text, f))))
}

pub async fn run(cmd: ReceiptCmd) -> Result<()> {
    let ReceiptCmd::Verify(a) = cmd;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(input.trim_start())
        && let Some(list) = v["sortition"]["choices"].as_array()
    {
        return verify_choices(&v, list, &LedgerClient::new(&a.ledger)).await;
    }
    let (ext, answer) = extract(&input)?;
    let body = match &a.request {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => Vec::new(),
    };
    let r = &ext.receipt.receipt;
    let node = LedgerClient::new(&a.ledger)
        .node(r.node)
        .await
        .with_context(|| format!("{} on the ledger", r.node))?;
    if ext.receipt.verify(&node.operator).is_err() {
        bail!(
            "INVALID: the receipt is not signed by the key the ledger holds for {}",
            r.node
        );
    }
    println!("signature  ok ({} key {})", r.node, node.operator);
    match delivered_hash(&input, &body) {
        Ok(h) if h == r.response_hash => {
            println!("response   ok (what was received is what the node committed to)")
        }
        Ok(_) if a.request.is_none() && answer.is_some() => bail!(
            "INVALID: the response does not match the receipt's response hash (an answer made \
             under a response_format schema needs the request: --request FILE)"
        ),
        Ok(_) => bail!("INVALID: the response does not match the receipt's response hash"),
        Err(e) => println!("response   not checked ({e})"),
    }
    println!(
        "receipt    {} seq {} model {} tokens {}+{} class {}",
        r.stack,
        r.sequence,
        r.model,
        r.input_tokens,
        r.output_tokens,
        &r.node_class.to_hex()[..16]
    );
    Ok(())
}

/// An answer of several choices (`n` > 1 or several prompts, split by a gateway): each
/// choice's receipt is checked against the ledger's key for its node, against the body it was
/// made for (its request hash) and against that choice alone (its response hash).
async fn verify_choices(
    answer: &serde_json::Value,
    list: &[serde_json::Value],
    ledger: &LedgerClient,
) -> Result<()> {
    for e in list {
        let index = e["index"]
            .as_u64()
            .context("a choice's receipt has no index")? as usize;
        let signed: sortition_types::SignedReceipt =
            serde_json::from_value(e["receipt"].clone())
                .with_context(|| format!("choice {index}: no receipt"))?;
        let request = e["request"]
            .as_str()
            .with_context(|| format!("choice {index}: no request body"))?;
        let r = &signed.receipt;
        let node = ledger
            .node(r.node)
            .await
            .with_context(|| format!("{} on the ledger", r.node))?;
        if signed.verify(&node.operator).is_err() {
            bail!(
                "INVALID: choice {index}: not signed by the key the ledger holds for {}",
                r.node
            );
        }
        if r.request_hash != sortition_types::sha256(request.as_bytes()) {
            bail!(
                "INVALID: choice {index}: the receipt is for another request than the one listed"
            );
        }
        let alone = sortition_api::delivered::one_choice(answer, index)
            .with_context(|| format!("choice {index} is not in the answer"))?;
        match sortition_api::delivered::response_hash(&alone, request.as_bytes()) {
            Ok(h) if h == r.response_hash => {}
            Ok(_) => bail!("INVALID: choice {index} does not match its receipt's response hash"),
            Err(err) => bail!("INVALID: choice {index}: {err}"),
        }
        println!(
            "choice {index}   ok (signed by {}, request and response match; tokens {}+{})",
            r.node, r.input_tokens, r.output_tokens
        );
    }
    Ok(())
}
