#![allow(clippy::unwrap_used)]
//! Issue 21, end to end: the OpenAI features served beyond plain text (log-probabilities,
//! `echo`, the completions default `max_tokens`, token-id embeddings, structured outputs,
//! tool calls, HTTP/2),
//! through a real devnet's gateway with the real models, each answer vouched for by the
//! gateway (its receipt checked against what was delivered).

use serde_json::{Value, json};
use sortition_api::delivered::{DeliveredText, response_hash};
use sortition_devnet::{Devnet, DevnetConfig};
use sortition_types::SignedReceipt;

const CHAT: &str = "smollm2-135m-instruct";

async fn post(url: &str, key: &str, body: &Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn receipt_of(v: &Value) -> SignedReceipt {
    serde_json::from_value(v["sortition"]["receipt"].clone()).expect("a receipt")
}

/// The data events of an SSE body, `[DONE]` excluded.
fn events(raw: &str) -> Vec<Value> {
    raw.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logprobs_echo_and_defaults_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let net = Devnet::start(DevnetConfig::new(dir.path()))
        .await
        .expect("devnet starts");
    let (gw, key) = (net.info.gateway_url.clone(), net.info.api_key.clone());
    let chat_url = format!("{gw}/v1/chat/completions");
    let text_url = format!("{gw}/v1/completions");

    // Chat logprobs, whole: OpenAI's shape, vouched for by the gateway.
    let body = json!({"model": CHAT, "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8, "temperature": 0, "seed": 1, "logprobs": true, "top_logprobs": 3});
    let (status, raw) = post(&chat_url, &key, &body).await;
    assert_eq!(status, 200, "{raw}");
    let whole: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(whole["sortition"]["verified_by_gateway"], true, "{whole}");
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert!(!content.is_empty());
    let text: String = content
        .iter()
        .map(|e| e["token"].as_str().unwrap().to_string())
        .collect();
    assert!(
        whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with(text.trim_end()),
        "tokens spell the text: {text:?} / {whole}"
    );
    for e in content {
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 3);
        assert_eq!(e["top_logprobs"][0]["token"], e["token"], "greedy: {e}");
    }
    assert_eq!(
        response_hash(&whole, body.to_string().as_bytes()).unwrap(),
        receipt_of(&whole).receipt.response_hash
    );

    // The same streamed: the same entries spread over the chunks, the receipt on the last.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, raw) = post(&chat_url, &key, &streamed).await;
    assert_eq!(status, 200, "{raw}");
    let ev = events(&raw);
    let mut d = DeliveredText::default();
    let mut entries = Vec::new();
    for e in &ev {
        d.absorb(e);
        if let Some(c) = e["choices"][0]["logprobs"]["content"].as_array() {
            entries.extend(c.iter().cloned());
        }
    }
    assert_eq!(&entries, content);
    let last = ev.last().unwrap();
    assert_eq!(last["sortition"]["verified_by_gateway"], true, "{last}");
    assert_eq!(
        d.response_hash().unwrap(),
        receipt_of(last).receipt.response_hash
    );

    // Completions: logprobs as four lists, echo, and OpenAI's default of 16 new tokens.
    let (status, raw) = post(
        &text_url,
        &key,
        &json!({"model": CHAT, "prompt": "The sky is", "temperature": 0, "logprobs": 2,
            "max_tokens": 5}),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["sortition"]["verified_by_gateway"], true);
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5, "{lp}");
    assert_eq!(lp["text_offset"][0], 0);
    let (status, raw) = post(
        &text_url,
        &key,
        &json!({"model": CHAT, "prompt": "The sky is", "temperature": 0, "echo": true}),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["sortition"]["verified_by_gateway"], true);
    assert!(
        v["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("The sky is")
    );
    assert_eq!(receipt_of(&v).receipt.sampling.max_tokens, 16);

    // Refusals name the field, at the gateway.
    for (url, body, param) in [
        (
            &chat_url,
            json!({"model": CHAT, "messages": [{"role": "user", "content": "x"}],
                "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            &text_url,
            json!({"model": CHAT, "prompt": "x", "logprobs": 9}),
            "logprobs",
        ),
        (
            &text_url,
            json!({"model": CHAT, "prompt": "x", "best_of": 3}),
            "best_of",
        ),
    ] {
        let (status, raw) = post(url, &key, &body).await;
        assert_eq!(status, 400, "{raw}");
        let v: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    embeddings(&gw, &key).await;
    structured(&gw, &key).await;
    tools(&gw, &key).await;
    several_answers(&gw, &key).await;
    http2(&gw, &key).await;
    net.shutdown().await;
}

/// Structured outputs with the real model: a JSON schema enforced by constrained decoding
/// (what `client.chat.completions.parse` sends), plain and streamed, vouched for by the
/// gateway (which hashes the delivery with the request's constraint).
async fn structured(gw: &str, key: &str) {
    let url = format!("{gw}/v1/chat/completions");
    let body = json!({"model": CHAT, "temperature": 0, "max_tokens": 96,
        "messages": [{"role": "user", "content": "Give the capital of France and its population."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "strict": true,
            "schema": {"type": "object", "additionalProperties": false, "required": ["city", "population"],
                "properties": {"city": {"type": "string", "maxLength": 40},
                    "population": {"type": "integer", "minimum": 0, "maximum": 99999999}}}}}});
    let (status, raw) = post(&url, key, &body).await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["sortition"]["verified_by_gateway"], true, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let doc: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(
        doc["city"].is_string() && doc["population"].is_u64(),
        "{doc}"
    );
    assert_eq!(doc.as_object().unwrap().len(), 2);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, raw) = post(&url, key, &streamed).await;
    assert_eq!(status, 200, "{raw}");
    let ev = events(&raw);
    assert_eq!(ev.last().unwrap()["sortition"]["verified_by_gateway"], true);
    let streamed_text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed_text, text);

    let (status, raw) = post(
        &url,
        key,
        &json!({"model": CHAT, "max_tokens": 48, "temperature": 0,
            "messages": [{"role": "user", "content": "A JSON object about cats."}],
            "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["sortition"]["verified_by_gateway"], true);
    if v["choices"][0]["finish_reason"] == "stop" {
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
    }
}

/// Embeddings: token-id inputs (what LangChain's `OpenAIEmbeddings` sends by default, here in
/// the model's own vocabulary), more than the old bound of 256 inputs, and an over-long input
/// refused as `context_length_exceeded` instead of silently truncated.
async fn embeddings(gw: &str, key: &str) {
    const EMBED: &str = "all-minilm-l6-v2";
    let url = format!("{gw}/v1/embeddings");
    // "hello world" in MiniLM's vocabulary, with [CLS] and [SEP].
    let ids = json!([101, 7592, 2088, 102]);
    let (status, raw) = post(
        &url,
        key,
        &json!({"model": EMBED, "input": ["hello world", ids.clone()]}),
    )
    .await;
    assert_eq!(status, 400, "a mixed list is not an OpenAI input: {raw}");
    let (status, raw) = post(&url, key, &json!({"model": EMBED, "input": "hello world"})).await;
    assert_eq!(status, 200, "{raw}");
    let text: Value = serde_json::from_str(&raw).unwrap();
    let (status, raw) = post(
        &url,
        key,
        &json!({"model": EMBED, "input": [ids.clone(), ids]}),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    let tokens: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(tokens["sortition"]["verified_by_gateway"], true);
    assert_eq!(tokens["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        tokens["data"][0]["embedding"], text["data"][0]["embedding"],
        "the ids of a text embed as the text"
    );
    assert_eq!(tokens["usage"]["prompt_tokens"], 8);

    let many: Vec<String> = (0..300).map(|i| format!("sentence {i}")).collect();
    let (status, raw) = post(&url, key, &json!({"model": EMBED, "input": many})).await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 300);
    assert_eq!(v["data"][299]["index"], 299);

    let (status, raw) = post(
        &url,
        key,
        &json!({"model": EMBED, "input": ["short", "word ".repeat(600)]}),
    )
    .await;
    assert_eq!(status, 400, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(v["error"]["param"], "input");
    assert!(v["error"]["message"].as_str().unwrap().contains("input[1]"));
    let too_many = vec!["x"; 2049];
    let (status, raw) = post(&url, key, &json!({"model": EMBED, "input": too_many})).await;
    assert_eq!(status, 400, "{raw}");
}

/// Tool calling with the real model through the gateway: a forced call (named) has arguments
/// valid under the function's schema, the gateway vouches for it (the receipt commits to the
/// calls it delivered), streamed and whole alike; the call and its result go back in the
/// history.
async fn tools(gw: &str, key: &str) {
    let url = format!("{gw}/v1/chat/completions");
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
          "required": ["city", "unit"], "additionalProperties": false}}}]);
    let body = json!({"model": CHAT, "max_tokens": 64, "temperature": 0, "tools": tools,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let (status, raw) = post(&url, key, &body).await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["sortition"]["verified_by_gateway"], true, "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{v}");
    assert!(c["message"]["content"].is_null(), "{v}");
    let call = &c["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    assert!(
        ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()),
        "{args}"
    );
    assert_eq!(
        response_hash(&v, body.to_string().as_bytes()).unwrap(),
        receipt_of(&v).receipt.response_hash
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, raw) = post(&url, key, &streamed).await;
    assert_eq!(status, 200, "{raw}");
    let evs = events(&raw);
    let mut d = DeliveredText::for_request(streamed.to_string().as_bytes());
    for e in &evs {
        assert!(e["choices"][0].is_object(), "{e}");
        d.absorb(e);
    }
    let last = evs.last().unwrap();
    assert_eq!(last["sortition"]["verified_by_gateway"], true, "{last}");
    assert_eq!(
        d.response_hash().unwrap(),
        receipt_of(last).receipt.response_hash
    );
    assert_eq!(
        evs[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        call["function"]["arguments"]
    );

    let mut history = body.clone();
    history["messages"] = json!([
        body["messages"][0],
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"}]);
    history["tool_choice"] = json!("auto");
    history["max_tokens"] = json!(16);
    let (status, raw) = post(&url, key, &history).await;
    assert_eq!(status, 200, "{raw}");
}

/// HTTP/2 with prior knowledge (h2c) is served, as HTTP/1.1 is.
async fn http2(gw: &str, key: &str) {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .get(format!("{gw}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .expect("an h2c request is answered");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["data"].as_array().is_some_and(|d| !d.is_empty()), "{v}");
}

/// `n` > 1 and several prompts: the gateway serves one receipted request per answer; each
/// choice's receipt commits to the body listed with it (its request hash) and to exactly that
/// choice (its response hash); the draws differ by seed; streaming several answers is refused.
async fn several_answers(gw: &str, key: &str) {
    let check = |v: &Value, want: usize| {
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), want, "{v}");
        let ext = v["sortition"]["choices"].as_array().unwrap();
        let mut seeds = Vec::new();
        let mut completion = 0;
        for (i, (c, e)) in choices.iter().zip(ext).enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(e["index"], i);
            assert_eq!(e["verified_by_gateway"], true);
            let r: SignedReceipt = serde_json::from_value(e["receipt"].clone()).unwrap();
            let request = e["request"].as_str().unwrap();
            assert_eq!(
                r.receipt.request_hash,
                sortition_types::sha256(request.as_bytes())
            );
            let alone = sortition_api::delivered::one_choice(v, i).unwrap();
            assert_eq!(alone["choices"][0]["text"], c["text"]);
            assert_eq!(
                response_hash(&alone, request.as_bytes()).unwrap(),
                r.receipt.response_hash
            );
            seeds.push(r.receipt.sampling.seed);
            completion += r.receipt.output_tokens;
        }
        assert_eq!(v["usage"]["completion_tokens"], completion);
        seeds
    };
    let (status, raw) = post(
        &format!("{gw}/v1/completions"),
        key,
        &json!({"model": CHAT, "prompt": ["The sky is", "Grass is"], "n": 2, "max_tokens": 4,
                "temperature": 1, "seed": 5}),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(check(&v, 4), [5, 6, 5, 6]);
    let ext = &v["sortition"]["choices"];
    assert!(ext[0]["request"].as_str().unwrap().contains("The sky is"));
    assert!(ext[3]["request"].as_str().unwrap().contains("Grass is"));

    let chat = json!({"model": CHAT, "messages": [{"role": "user", "content": "Name a colour."}],
        "n": 3, "max_tokens": 6, "temperature": 1});
    let (status, raw) = post(&format!("{gw}/v1/chat/completions"), key, &chat).await;
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    let seeds = check(&v, 3);
    assert_eq!(
        [seeds[1] - seeds[0], seeds[2] - seeds[0]],
        [1, 2],
        "{seeds:?}"
    );

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (status, raw) = post(&format!("{gw}/v1/chat/completions"), key, &streamed).await;
    assert_eq!(status, 400, "{raw}");
    assert_eq!(
        serde_json::from_str::<Value>(&raw).unwrap()["error"]["param"],
        "stream"
    );
}
