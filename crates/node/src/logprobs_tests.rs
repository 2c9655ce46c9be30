//! Issue 21: log-probabilities, `echo`, the completions default `max_tokens` and structured
//! outputs (`response_format`), as the node serves them and as its receipts and audits cover
//! them.

use serde_json::{Value, json};
use sortition_api::delivered::{DeliveredText, response_hash};
use sortition_ledger::AuditMethod;
use sortition_types::{SignedReceipt, text_response_hash};

use crate::audit::AuditPayload;
use crate::judge::{Judgement, judge};
use crate::testkit::{Fixture, MODEL};

const CHAT: &str = "/v1/chat/completions";
const TEXT: &str = "/v1/completions";

fn chat(extra: Value) -> Value {
    let mut v = json!({"model": MODEL, "messages": [{"role": "user", "content": "say a thing"}],
        "max_tokens": 8, "temperature": 0});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn text(extra: Value) -> Value {
    let mut v = json!({"model": MODEL, "prompt": "once upon", "temperature": 0});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn receipt_in(v: &Value) -> SignedReceipt {
    serde_json::from_value(v["sortition"]["receipt"].clone()).unwrap()
}

async fn whole(f: &Fixture, path: &str, body: &Value) -> Value {
    let resp = f.post(path, &body.to_string()).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// The stream's events and what they deliver, read as a gateway reads them.
async fn streamed(f: &Fixture, path: &str, body: &Value) -> (Vec<Value>, DeliveredText) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let resp = f.post(path, &body.to_string()).await;
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await.unwrap();
    let events: Vec<Value> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut d = DeliveredText::default();
    for e in &events {
        d.absorb(e);
    }
    (events, d)
}

async fn refused(f: &Fixture, path: &str, body: &Value) -> (String, String) {
    let resp = f.post(path, &body.to_string()).await;
    assert_eq!(resp.status(), 400, "{body}");
    let v: Value = resp.json().await.unwrap();
    (
        v["error"]["param"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Chat `logprobs` + `top_logprobs`: one entry per generated token in OpenAI's shape, the
/// greedy token first among its alternatives; the stream delivers the same entries over its
/// chunks; the receipt commits to them (a text-only hash no longer matches), and the gateway's
/// reading of the delivery gives the receipt's hash, streamed or whole.
#[tokio::test]
async fn chat_logprobs_are_served_streamed_or_whole_and_committed() {
    let f = Fixture::start(8, 4).await;
    let body = chat(json!({"logprobs": true, "top_logprobs": 3}));
    let v = whole(&f, CHAT, &body).await;
    let c = &v["choices"][0];
    let content = c["logprobs"]["content"].as_array().unwrap();
    let r = receipt_in(&v);
    assert!(!content.is_empty());
    assert!(content.len() as u64 <= r.receipt.output_tokens);
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        assert_eq!(
            top[0]["token"], e["token"],
            "greedy picks the likeliest: {e}"
        );
        assert_eq!(top[0]["logprob"], e["logprob"]);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone()).unwrap();
        assert!(!bytes.is_empty());
    }
    let text = c["message"]["content"].as_str().unwrap();
    let finish = c["finish_reason"].as_str().unwrap();
    assert_ne!(r.receipt.response_hash, text_response_hash(text, finish));
    assert_eq!(response_hash(&v, b"{}").unwrap(), r.receipt.response_hash);

    let (events, d) = streamed(&f, CHAT, &body).await;
    let streamed_content: Vec<Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(&streamed_content, content);
    let last = receipt_in(events.last().unwrap());
    assert_eq!(d.response_hash().unwrap(), last.receipt.response_hash);
    assert_eq!(last.receipt.response_hash, r.receipt.response_hash);

    // Without logprobs the answer has none and keeps the text-only hash.
    let plain = whole(&f, CHAT, &chat(json!({}))).await;
    assert!(plain["choices"][0]["logprobs"].is_null());
    let r = receipt_in(&plain);
    let c = &plain["choices"][0];
    assert_eq!(
        r.receipt.response_hash,
        text_response_hash(
            c["message"]["content"].as_str().unwrap(),
            c["finish_reason"].as_str().unwrap()
        )
    );
}

/// Out-of-range and misplaced log-probability fields are refused naming them.
#[tokio::test]
async fn logprobs_fields_out_of_range_are_refused_by_name() {
    let f = Fixture::start(8, 4).await;
    for (path, body, param) in [
        (
            CHAT,
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (CHAT, chat(json!({"top_logprobs": 2})), "top_logprobs"),
        (CHAT, chat(json!({"logprobs": 2})), "logprobs"),
        (CHAT, chat(json!({"echo": true})), "echo"),
        (TEXT, text(json!({"logprobs": 6})), "logprobs"),
        (TEXT, text(json!({"logprobs": true})), "logprobs"),
        (TEXT, text(json!({"echo": true, "logprobs": 1})), "echo"),
        (TEXT, text(json!({"suffix": "end"})), "suffix"),
        (TEXT, text(json!({"best_of": 2})), "best_of"),
    ] {
        let (got, msg) = refused(&f, path, &body).await;
        assert_eq!(got, param, "{body}: {msg}");
    }
}

/// Text completions: `logprobs: 2` gives the four parallel lists with text offsets; the
/// stream delivers the same positions; `echo` starts the text with the prompt (streamed too);
/// `max_tokens` defaults to 16 as OpenAI's does.
#[tokio::test]
async fn completions_logprobs_echo_and_default_max_tokens() {
    let f = Fixture::start(8, 4).await;
    let body = text(json!({"logprobs": 2, "max_tokens": 6}));
    let v = whole(&f, TEXT, &body).await;
    let lp = &v["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert!(n > 0);
    for list in ["token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[list].as_array().unwrap().len(), n, "{lp}");
    }
    assert_eq!(lp["text_offset"][0], 0);
    assert!(
        lp["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.as_object().is_some_and(|m| !m.is_empty() && m.len() <= 2))
    );
    assert_eq!(
        response_hash(&v, b"{}").unwrap(),
        receipt_in(&v).receipt.response_hash
    );
    let (events, d) = streamed(&f, TEXT, &body).await;
    let mut tokens = Vec::new();
    for e in &events {
        if let Some(t) = e["choices"][0]["logprobs"]["tokens"].as_array() {
            tokens.extend(t.iter().cloned());
        }
    }
    assert_eq!(&tokens, lp["tokens"].as_array().unwrap());
    assert_eq!(
        d.response_hash().unwrap(),
        receipt_in(events.last().unwrap()).receipt.response_hash
    );

    // echo: the prompt first, covered by the receipt, streamed alike.
    let echo = text(json!({"echo": true, "max_tokens": 4}));
    let v = whole(&f, TEXT, &echo).await;
    let t = v["choices"][0]["text"].as_str().unwrap();
    assert!(
        t.starts_with("once upon") && t.len() > "once upon".len(),
        "{t}"
    );
    assert_eq!(
        response_hash(&v, b"{}").unwrap(),
        receipt_in(&v).receipt.response_hash
    );
    let (events, d) = streamed(&f, TEXT, &echo).await;
    assert_eq!(d.text, t);
    assert_eq!(
        d.response_hash().unwrap(),
        receipt_in(events.last().unwrap()).receipt.response_hash
    );

    // No max_tokens: at most 16 tokens (OpenAI's default for completions).
    let v = whole(&f, TEXT, &text(json!({}))).await;
    let r = receipt_in(&v);
    assert_eq!(r.receipt.sampling.max_tokens, 16);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
}

/// An auditor re-executes with the request's log-probabilities and echo, so an honest answer
/// matches, and a receipt that commits to the text alone (log-probabilities made up, or left
/// out of the commitment) is a divergence.
#[tokio::test]
async fn audits_re_execute_logprobs_and_echo() {
    let f = Fixture::start(8, 4).await;
    for (path, body) in [
        (CHAT, chat(json!({"logprobs": true, "top_logprobs": 2}))),
        (TEXT, text(json!({"logprobs": 1, "max_tokens": 5}))),
        (TEXT, text(json!({"echo": true, "max_tokens": 5}))),
    ] {
        let v = whole(&f, path, &body).await;
        let r = receipt_in(&v);
        let payload = |receipt: SignedReceipt| AuditPayload {
            path: path.into(),
            body: body.to_string(),
            receipt,
            answer: None,
        };
        for method in [
            AuditMethod::Reexecute,
            AuditMethod::Score {
                max_rank: 0,
                logit_slack_milli: 0,
                draw_slack_ppm: Some(0),
            },
        ] {
            assert_eq!(
                judge(&f.state, &payload(r.clone()), method).await,
                Judgement::Match,
                "{body}"
            );
        }
        let mut lied = r.receipt.clone();
        lied.response_hash = sortition_types::sha256(b"another answer");
        let lied = SignedReceipt::sign(lied, &f.state.key);
        assert!(matches!(
            judge(&f.state, &payload(lied), AuditMethod::Reexecute).await,
            Judgement::Divergence(_)
        ));
    }
}

/// Issue 21: `response_format` constrains the text (a tiny random-weight model still answers a
/// document valid under the schema), the receipt names the constraint's digest through the
/// response hash (the gateway's reading of the delivery, given the request, matches; the
/// text-only hash does not), the stream is the same, and an auditor re-executes under the
/// constraint (an honest answer matches).
#[tokio::test]
async fn response_format_constrains_and_is_committed() {
    let f = Fixture::start(8, 4).await;
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"},
        "n": {"enum": [1, 2, 3]}}, "required": ["ok", "n"], "additionalProperties": false});
    for format in [
        json!({"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": schema}}),
        json!({"type": "json_object"}),
    ] {
        let body = chat(json!({"response_format": format, "max_tokens": 64}));
        let v = whole(&f, CHAT, &body).await;
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().unwrap();
        let r = receipt_in(&v);
        if c["finish_reason"] == "stop" {
            let doc: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(doc.is_object(), "{text}");
            if format["type"] == "json_schema" {
                assert!(doc["ok"].is_boolean() && doc["n"].is_i64(), "{text}");
            }
        }
        assert_ne!(
            r.receipt.response_hash,
            text_response_hash(text, c["finish_reason"].as_str().unwrap())
        );
        let raw = body.to_string();
        assert_eq!(
            response_hash(&v, raw.as_bytes()).unwrap(),
            r.receipt.response_hash
        );
        let (events, mut d) = streamed(&f, CHAT, &body).await;
        d.constraint = sortition_api::constraint::digest_of_body(raw.as_bytes());
        assert_eq!(d.text, text);
        assert_eq!(
            d.response_hash().unwrap(),
            receipt_in(events.last().unwrap()).receipt.response_hash
        );
        let payload = AuditPayload {
            path: CHAT.into(),
            body: raw,
            receipt: r,
            answer: None,
        };
        assert_eq!(
            judge(&f.state, &payload, AuditMethod::Reexecute).await,
            Judgement::Match
        );
    }
    // A node that ignores the constraint answers another text: its receipt is a divergence.
    let body = chat(json!({"response_format": {"type": "json_object"}, "max_tokens": 12}));
    let free = whole(&f, CHAT, &chat(json!({"max_tokens": 12}))).await;
    let mut lied = receipt_in(&free).receipt;
    let c = &free["choices"][0];
    let text = c["message"]["content"].as_str().unwrap();
    let finish = c["finish_reason"].as_str().unwrap();
    lied.response_hash = sortition_types::answer_response_hash(
        text,
        finish,
        sortition_api::constraint::digest_of_body(body.to_string().as_bytes()),
        None,
    );
    let payload = AuditPayload {
        path: CHAT.into(),
        body: body.to_string(),
        receipt: SignedReceipt::sign(lied, &f.state.key),
        answer: None,
    };
    assert!(matches!(
        judge(&f.state, &payload, AuditMethod::Reexecute).await,
        Judgement::Divergence(_)
    ));
}

/// The library named in constraint digests is the one the engine enforces them with.
#[test]
fn the_constraint_library_is_named_alike() {
    assert_eq!(
        sortition_api::constraint::CONSTRAINT_LIBRARY,
        sortition_engine::CONSTRAINT_LIBRARY
    );
}

/// Unsupported schemas and misplaced `response_format` are refused naming the field.
#[tokio::test]
async fn unsupported_response_formats_are_refused_by_name() {
    let f = Fixture::start(8, 4).await;
    for (path, body) in [
        (
            CHAT,
            chat(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "r", "schema": {"type": "string", "format": "no-such-format"}}}})),
        ),
        (
            CHAT,
            chat(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "r"}}})),
        ),
        (CHAT, chat(json!({"response_format": {"type": "yaml"}}))),
        (
            TEXT,
            text(json!({"response_format": {"type": "json_object"}})),
        ),
    ] {
        let (param, msg) = refused(&f, path, &body).await;
        assert_eq!(param, "response_format", "{body}: {msg}");
    }
    let (_, msg) = refused(
        &f,
        CHAT,
        &chat(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "string", "format": "no-such-format"}}}})),
    )
    .await;
    assert!(msg.contains("no-such-format"), "{msg}");
}
