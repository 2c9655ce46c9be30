//! `sortition receipt verify`: checks the receipt in a response against the ledger.

use std::io::Read;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sortition_api::SortitionExt;
use sortition_ledger_service::LedgerClient;
use sortition_types::text_response_hash;

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
    for line in input.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(data).with_context(|| format!("bad SSE event: {data}"))?;
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
    let (ext, answer) = extract(&input)?;
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
    match answer {
        Some((text, finish)) if text_response_hash(&text, &finish) == r.response_hash => {
            println!("response   ok (the text received is what the node committed to)")
        }
        Some(_) => bail!("INVALID: the response text does not match the receipt's response hash"),
        None => println!("response   not checked (no text in the input)"),
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
