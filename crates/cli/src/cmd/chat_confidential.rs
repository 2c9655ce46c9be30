//! `sortition chat --confidential`: the prompt is sealed (HPKE) to a node whose attested key
//! this process verified itself, through the SDK in `sortition-confidential` (feature
//! `client`). The gateway sees only routing metadata; the answer is opened chunk by chunk and
//! its receipt checked against the ledger's key for the node, the sealed request and the
//! decrypted text. Any doubt is an error and nothing is sent in the clear.

use std::io::Write;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sortition_confidential::client::{ConfidentialAnswer, ConfidentialClient};
use tokio::io::AsyncBufReadExt;

use super::chat::{ChatConfig, first_model};

fn describe(a: &ConfidentialAnswer) -> String {
    let tee = if a.report.insecure {
        "INSECURE dev attestation (no TEE; proves nothing)".to_string()
    } else {
        format!("{:?} evidence, TCB {}", a.report.tee, a.report.tcb_status)
    };
    format!(
        "[sealed to {} ({tee}); receipt {} #{} verified against the ledger key: request and \
         answer hashes match; {} + {} tokens]",
        a.node,
        a.receipt.receipt.stack,
        a.receipt.receipt.sequence,
        a.receipt.receipt.input_tokens,
        a.receipt.receipt.output_tokens
    )
}

async fn ask(
    client: &ConfidentialClient,
    cfg: &ChatConfig,
    model: &str,
    history: &[Value],
) -> Result<ConfidentialAnswer> {
    let mut body =
        json!({"model": model, "messages": history, "stream": true, "max_tokens": cfg.max_tokens});
    if let Some(t) = cfg.temperature {
        body["temperature"] = json!(t);
    }
    let mut out = std::io::stdout();
    let answer = client
        .chat(&body, |piece| {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        })
        .await
        .context("confidential request")?;
    println!();
    Ok(answer)
}

pub async fn run(cfg: &ChatConfig) -> Result<()> {
    let (Some(policy), Some(ledger)) = (cfg.confidential.clone(), cfg.ledger.as_deref()) else {
        bail!("--confidential needs --ledger");
    };
    if policy.allow_insecure_dev {
        eprintln!(
            "warning: --allow-insecure-dev accepts nodes attested by the INSECURE dev attester, \
             which proves nothing; use it on development networks only"
        );
    }
    let client = ConfidentialClient::new(ledger, &cfg.gateway, &cfg.api_key, policy);
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => first_model(&reqwest::Client::new(), cfg).await?,
    };
    let mut history: Vec<Value> = Vec::new();
    if let Some(prompt) = &cfg.prompt {
        history.push(json!({"role": "user", "content": prompt}));
        let answer = ask(&client, cfg, &model, &history).await?;
        println!("{}", describe(&answer));
        return Ok(());
    }
    eprintln!(
        "confidential chat with {model} via {} (/exit to quit)",
        cfg.gateway
    );
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
        match ask(&client, cfg, &model, &history).await {
            Ok(answer) => {
                println!("{}", describe(&answer));
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
