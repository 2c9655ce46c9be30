//! Issue 21: tool calling as the node serves it: forced calls generated under the function's
//! schema, calls delivered whole or streamed in OpenAI's delta shape, the receipt committing
//! to them, audits re-executing them, the history's calls and results accepted, and what is
//! not served refused by name.

use serde_json::{Value, json};
use sortition_api::delivered::{DeliveredText, response_hash};
use sortition_ledger::AuditMethod;
use sortition_types::SignedReceipt;

use crate::audit::AuditPayload;
use crate::judge::{Judgement, judge};
use crate::testkit::{Fixture, MODEL};

const CHAT: &str = "/v1/chat/completions";

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
         "parameters": {"type": "object", "properties": {
             "city": {"type": "string", "maxLength": 12},
             "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "clock"}}
    ])
}

fn body(extra: Value) -> Value {
    let mut v = json!({"model": MODEL, "messages": [{"role": "user", "content": "weather?"}],
        "max_tokens": 160, "temperature": 0, "tools": tools()});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn receipt_in(v: &Value) -> SignedReceipt {
    serde_json::from_value(v["sortition"]["receipt"].clone()).unwrap()
}

async fn whole(f: &Fixture, body: &Value) -> Value {
    let resp = f.post(CHAT, &body.to_string()).await;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

async fn refused(f: &Fixture, path: &str, body: &Value) -> String {
    let resp = f.post(path, &body.to_string()).await;
    assert_eq!(resp.status(), 400, "{body}");
    let v: Value = resp.json().await.unwrap();
    v["error"]["param"].as_str().unwrap_or_default().to_string()
}

/// The calls of a whole answer as (name, arguments object).
fn calls_of(v: &Value) -> Vec<(String, Value)> {
    v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    assert_eq!(c["type"], "function");
                    assert!(c["id"].as_str().unwrap().starts_with("call_"));
                    let args = c["function"]["arguments"].as_str().unwrap();
                    (
                        c["function"]["name"].as_str().unwrap().to_string(),
                        serde_json::from_str(args).unwrap_or_else(|e| panic!("{e}: {args}")),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A forced call (named, or `required` among two tools) is generated under the function's
/// schema even by a random-weight model: finish `tool_calls`, content null, arguments valid.
/// The receipt commits to the calls: the gateway's reading of the whole answer and of the
/// stream (calls in `delta.tool_calls`, every chunk with `choices[0]`) gives the receipt's
/// hash; an auditor re-executing matches, and a receipt for other calls diverges.
#[tokio::test]
async fn forced_calls_follow_the_schema_and_are_committed_and_audited() {
    let f = Fixture::start(8, 4).await;
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for choice in [named, json!("required")] {
        let req = body(json!({"tool_choice": choice}));
        let v = whole(&f, &req).await;
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        let calls = calls_of(&v);
        assert_eq!(calls.len(), 1, "{v}");
        let (name, args) = &calls[0];
        if choice.is_object() {
            assert_eq!(name, "get_weather");
        }
        if name == "get_weather" {
            assert!(
                args["city"].as_str().unwrap().chars().count() <= 12,
                "{args}"
            );
            assert!(
                ["c", "f"].contains(&args["unit"].as_str().unwrap()),
                "{args}"
            );
            assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
        } else {
            assert_eq!(args, &json!({}));
        }
        let raw = req.to_string();
        let r = receipt_in(&v);
        assert_eq!(
            response_hash(&v, raw.as_bytes()).unwrap(),
            r.receipt.response_hash
        );
        // Streamed: the same calls, in OpenAI's chunk shape.
        let mut s = req.clone();
        s["stream"] = json!(true);
        let text = f.post(CHAT, &s.to_string()).await.text().await.unwrap();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(events.iter().all(|e| e["choices"][0].is_object()), "{text}");
        let mut d = DeliveredText::for_request(raw.as_bytes());
        for e in &events {
            d.absorb(e);
        }
        let last = events.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            d.response_hash().unwrap(),
            receipt_in(last).receipt.response_hash
        );
        let streamed = &events[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(streamed["index"], 0);
        assert_eq!(
            streamed["function"]["arguments"],
            c["message"]["tool_calls"][0]["function"]["arguments"]
        );
        // Audits.
        let payload = |receipt: SignedReceipt| AuditPayload {
            path: CHAT.into(),
            body: raw.clone(),
            receipt,
            answer: None,
        };
        assert_eq!(
            judge(&f.state, &payload(r.clone()), AuditMethod::Reexecute).await,
            Judgement::Match
        );
        let mut lied = r.receipt.clone();
        lied.response_hash = sortition_types::answer_response_hash(
            r#"<tool_calls>[["clock","{}"]]</tool_calls>"#,
            "tool_calls",
            sortition_api::constraint::digest_of_body(raw.as_bytes()),
            None,
        );
        let lied = SignedReceipt::sign(lied, &f.state.key);
        assert!(matches!(
            judge(&f.state, &payload(lied), AuditMethod::Reexecute).await,
            Judgement::Divergence(_)
        ));
    }
}

/// A forced call is the same alone and in a batch with other sequences (and on every run).
#[tokio::test]
async fn forced_calls_are_deterministic_across_batches() {
    let f = Fixture::start(16, 4).await;
    let req = body(json!({"tool_choice": "required", "temperature": 0.9, "seed": 7}));
    let alone = calls_of(&whole(&f, &req).await);
    assert_eq!(alone.len(), 1);
    let others = (0..3).map(|i| {
        let mut b = body(json!({"tool_choice": "none", "max_tokens": 40}));
        b["messages"][0]["content"] = json!(format!("other {i}"));
        b
    });
    let mut all = vec![req.clone()];
    all.extend(others);
    let answers = futures::future::join_all(all.iter().map(|b| whole(&f, b))).await;
    assert_eq!(calls_of(&answers[0]), alone);
    // `none`: no calls, plain text.
    assert!(answers[1]["choices"][0]["message"]["tool_calls"].is_null());
    assert!(answers[1]["choices"][0]["message"]["content"].is_string());
}

/// `auto` leaves the model free (the tiny model writes text, not a call): the answer is its
/// text with a text finish, committed and audited as any other.
#[tokio::test]
async fn auto_answers_without_a_call_are_plain_text() {
    let f = Fixture::start(8, 4).await;
    let req = body(json!({"tool_choice": "auto", "max_tokens": 12}));
    let v = whole(&f, &req).await;
    let c = &v["choices"][0];
    assert!(
        ["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()),
        "{v}"
    );
    assert!(c["message"]["content"].is_string());
    let raw = req.to_string();
    let r = receipt_in(&v);
    assert_eq!(
        response_hash(&v, raw.as_bytes()).unwrap(),
        r.receipt.response_hash
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

/// A conversation that carries calls and their results is served; a tool result for a call
/// nobody made, or without its id, and calls on a user message are refused naming the message;
/// tools on /v1/completions, and tools with logprobs or a response_format, are refused.
#[tokio::test]
async fn histories_with_calls_are_served_and_bad_ones_refused() {
    let f = Fixture::start(8, 4).await;
    let call = json!({"id": "call_9", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"c\"}"}});
    let history = |tool_msg: Value| {
        json!([{"role": "user", "content": "weather in Oslo?"},
               {"role": "assistant", "content": null, "tool_calls": [call]},
               tool_msg])
    };
    let ok = body(json!({"max_tokens": 6,
        "messages": history(json!({"role": "tool", "tool_call_id": "call_9", "content": "4 C"}))}));
    whole(&f, &ok).await;
    for (msgs, param) in [
        (
            history(json!({"role": "tool", "tool_call_id": "call_1", "content": "4 C"})),
            "messages[2].tool_call_id",
        ),
        (
            history(json!({"role": "tool", "content": "4 C"})),
            "messages[2].tool_call_id",
        ),
        (
            json!([{"role": "user", "content": "x", "tool_calls": [call]}]),
            "messages[0].tool_calls",
        ),
        (
            json!([{"role": "user", "content": "x", "tool_calls": [{"id": 3}]}]),
            "messages[0].tool_calls",
        ),
    ] {
        assert_eq!(
            refused(&f, CHAT, &body(json!({"messages": msgs}))).await,
            param
        );
    }
    let text = json!({"model": MODEL, "prompt": "x", "tools": tools()});
    assert_eq!(refused(&f, "/v1/completions", &text).await, "tools");
    for (extra, param) in [
        (json!({"logprobs": true}), "logprobs"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "always"}), "tool_choice"),
        (
            json!({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}),
            "tools",
        ),
        (json!({"tools": "get_weather"}), "tools"),
    ] {
        assert_eq!(
            refused(&f, CHAT, &body(extra.clone())).await,
            param,
            "{extra}"
        );
    }
}

/// The check a `strict` function's `auto` arguments go through (after being written in the
/// schema's key order): the constraint library accepts documents valid under the schema and
/// refuses others.
#[tokio::test]
async fn strict_arguments_are_checked_by_the_constraint_library() {
    let f = Fixture::start(2, 1).await;
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"},
        "b": {"type": "string"}}, "required": ["a", "b"], "additionalProperties": false});
    let e = f.engine();
    assert!(e.accepts_json(&schema, r#"{"a":1,"b":"x"}"#));
    // The library checks keys in the schema's order; calls are written in it.
    assert!(!e.accepts_json(&schema, r#"{"b":"x","a":1}"#));
    for bad in [
        r#"{"a":"1","b":"x"}"#,
        r#"{"a":1}"#,
        r#"{"a":1,"b":"x","c":2}"#,
        "[1]",
    ] {
        assert!(!e.accepts_json(&schema, bad), "{bad}");
    }
}
