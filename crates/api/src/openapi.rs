//! The OpenAPI 3.1 document of the OpenAI-compatible surface, served at `/openapi.json` by
//! nodes and gateways. Written by hand from the wire types in [`crate::openai`], so it states
//! exactly what Sortition accepts, including its extensions (`top_k`, the `sortition` receipt
//! field, the auth and constraints headers).

use serde_json::{Value, json};

/// Who serves the document: decides the security scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Requests carry the stack owner's signature (`x-sortition-auth`).
    Node,
    /// Requests carry an API key (`Authorization: Bearer sk-sort-…`).
    Gateway,
}

fn error_responses() -> Value {
    let e = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut m = serde_json::Map::new();
    for (code, what) in [
        ("400", "malformed JSON or invalid parameters"),
        (
            "401",
            "missing, invalid or revoked credentials, or a bad signature",
        ),
        ("402", "out of credits, over budget, or an exhausted stack"),
        ("403", "the stack belongs to another node"),
        ("404", "unknown model"),
        ("409", "a replayed request"),
        ("413", "body too large"),
        ("429", "rate limited or overloaded (see Retry-After)"),
        ("502", "a node failed or sent an invalid receipt"),
        ("503", "no node can serve now"),
    ] {
        let mut r = e.clone();
        r["description"] = json!(what);
        m.insert(code.into(), r);
    }
    Value::Object(m)
}

fn post(summary: &str, request: &str, response: &str, streams: bool) -> Value {
    let mut responses = error_responses();
    let mut ok = json!({
        "description": "the answer, with the node's signed receipt in the `sortition` field and the x-sortition-receipt header",
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{response}")}}}
    });
    if streams {
        ok["content"]["text/event-stream"] = json!({
            "schema": {"type": "string", "description": "SSE chunks, each with `choices[0]` but OpenAI's usage chunk (empty `choices`, sent only with stream_options.include_usage); the last data event before [DONE] carries `sortition` with the receipt: the finish chunk, or the usage chunk when asked for"}
        });
    }
    responses["200"] = ok;
    json!({
        "summary": summary,
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{request}")}}}},
        "responses": responses
    })
}

/// The document for `surface`.
pub fn document(surface: Surface) -> Value {
    let (title, security) = match surface {
        Surface::Node => (
            "Sortition node",
            json!({"stackAuth": {"type": "apiKey", "in": "header", "name": "x-sortition-auth",
                "description": "stack=N,nonce=N,exp=UNIX_MS,sig=HEX: the stack owner's ed25519 signature over (method, path, body digest, stack, nonce, expiry)"}}),
        ),
        Surface::Gateway => (
            "Sortition gateway",
            json!({"apiKey": {"type": "http", "scheme": "bearer", "description": "an API key issued by this gateway (sk-sort-…)"}}),
        ),
    };
    let scheme = security
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default();
    // The gateway's model list needs an API key like every other `/v1` route; a node's is
    // open (what it serves is public on the ledger anyway).
    let mut models = json!({"summary": "Models served", "responses": {"200": {"description": "model list",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}}}}});
    if matches!(surface, Surface::Node) {
        models["security"] = json!([]);
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION"),
            "description": "OpenAI-compatible inference with signed receipts. Errors use {\"error\": {message, type, code, param}}."},
        "security": [{scheme: []}],
        "paths": {
            "/v1/chat/completions": {"post": post("Chat completion (set stream=true for SSE)", "ChatCompletionRequest", "ChatCompletion", true)},
            "/v1/completions": {"post": post("Text completion (set stream=true for SSE)", "CompletionRequest", "Completion", true)},
            "/v1/embeddings": {"post": post("Embeddings (encoding_format float or base64)", "EmbeddingRequest", "EmbeddingResponse", false)},
            "/v1/models": {"get": models},
            "/health": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text exposition"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "components": {"securitySchemes": security, "schemas": schemas()}
    });
    if matches!(surface, Surface::Gateway) {
        // Gateways serve several answers per request (one receipted request per answer).
        let several = "a gateway serves up to 16 answers per request (n times the prompts), one receipted node request per answer, listed in sortition.choices; not with stream";
        for req in ["ChatCompletionRequest", "CompletionRequest"] {
            doc["components"]["schemas"][req]["properties"]["n"] =
                json!({"type": "integer", "minimum": 1, "maximum": 16, "description": several});
        }
        doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"] = json!({"oneOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 16}],
            "description": several});
        doc["paths"]["/v1/models/{id}"] = json!({"get": {"summary": "One model served",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "the model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelCard"}}}},
                "404": {"description": "no node serves this model"}}}});
    }
    doc
}

fn schemas() -> Value {
    let sampling = json!({
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0, "description": "extension: top-k sampling"},
        "max_tokens": {"type": "integer", "minimum": 1, "description": "default 256 on chat, 16 on completions"}, "max_completion_tokens": {"type": "integer", "minimum": 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "seed": {"type": "integer", "minimum": 0}, "presence_penalty": {"type": "number"}, "frequency_penalty": {"type": "number"},
        "n": {"type": "integer", "enum": [1]}, "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}, "user": {"type": "string"}
    });
    let with = |extra: Value, required: &[&str]| {
        let mut props = sampling.clone();
        if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({"type": "object", "required": required, "properties": props})
    };
    let usage = json!({"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}});
    let ext = json!({"$ref": "#/components/schemas/SortitionExt"});
    json!({
        "ChatCompletionRequest": with(json!({
            "logprobs": {"type": "boolean", "description": "each generated token's log-probability (log-softmax of the model's raw logits, before penalties and temperature) in choices[].logprobs.content; the receipt commits to them"},
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20, "description": "alternatives per token; needs logprobs: true"},
            "response_format": {"description": "text, json_object, or json_schema (enforced by constrained decoding with llguidance 1.9.1; compact JSON; strict accepted, the schema is always enforced; a schema feature the library cannot enforce: 400 naming response_format). The receipt's response_hash names the schema's digest",
                "oneOf": [{"type": "object", "properties": {"type": {"enum": ["text", "json_object"]}}, "required": ["type"]},
                    {"type": "object", "required": ["type", "json_schema"], "properties": {"type": {"const": "json_schema"},
                        "json_schema": {"type": "object", "required": ["name", "schema"], "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                            "schema": {"type": "object"}, "strict": {"type": "boolean"}}}}}]},
            "tools": {"type": "array", "description": "functions the model may call: listed to the model in a system message; not with logprobs or a response_format, not for sealed requests",
                "items": {"type": "object", "required": ["type", "function"], "properties": {"type": {"const": "function"},
                    "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                        "description": {"type": "string"}, "parameters": {"type": "object"}, "strict": {"type": "boolean", "description": "auto calls whose arguments break the schema are delivered as text; forced calls always satisfy it"}}}}}},
            "tool_choice": {"description": "none, auto (default with tools: calls are read from the model's <tool_call> blocks), required or a named function (the call is generated under the function's schema by constrained decoding; the receipt's response_hash names that schema's digest)",
                "oneOf": [{"enum": ["none", "auto", "required"]}, {"type": "object", "required": ["type", "function"], "properties": {"type": {"const": "function"},
                    "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}]},
            "parallel_tool_calls": {"type": "boolean", "description": "false: at most one call per answer (forced calls are always one)"},
            "model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": {"type": "object",
            "required": ["role"], "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool"]}, "content": {"oneOf": [{"type": "string"},
            {"type": "array", "items": {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}, {"type": "null"}]},
            "tool_calls": {"type": "array", "description": "an assistant message's calls", "items": {"type": "object", "required": ["id", "function"]}},
            "tool_call_id": {"type": "string", "description": "a tool message: the id of the earlier call it answers"}}}}}), &["model", "messages"]),
        "CompletionRequest": with(json!({
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 5, "description": "alternatives per token; choices[].logprobs has tokens, token_logprobs, top_logprobs, text_offset"},
            "echo": {"type": "boolean", "description": "the text starts with the prompt (not with logprobs)"},
            "model": {"type": "string"}, "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 1}]}}), &["model", "prompt"]),
        "EmbeddingRequest": {"type": "object", "required": ["model", "input"], "properties": {"model": {"type": "string"},
            "input": {"description": "at most 2048 inputs, each at most 512 tokens (longer: 400 context_length_exceeded); token ids are the model's own vocabulary",
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 2048},
                {"type": "array", "items": {"type": "integer", "minimum": 0}}, {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}}, "maxItems": 2048}]},
            "encoding_format": {"enum": ["float", "base64"]}, "dimensions": {"type": "integer"}}},
        "ChatCompletion": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
            "model": {"type": "string"}, "choices": {"type": "array"}, "usage": usage, "sortition": ext}},
        "Completion": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "text_completion"}, "choices": {"type": "array"}, "usage": usage, "sortition": ext}},
        "EmbeddingResponse": {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array"}, "model": {"type": "string"}, "usage": {"type": "object"}, "sortition": ext}},
        "ModelList": {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/ModelCard"}}}},
        "ModelCard": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"}, "owned_by": {"type": "string"}}},
        "SortitionExt": {"type": "object", "description": "the node's signed receipt; check it against the key the ledger holds for `node`",
            "properties": {"node": {"type": "integer"}, "receipt": {"type": "object", "properties": {"receipt": {"type": "object"}, "signature": {"type": "string"}}},
            "verified_by_gateway": {"type": "boolean"}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}}}
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_route_and_resolves_every_reference() {
        for surface in [Surface::Node, Surface::Gateway] {
            let doc = document(surface);
            for route in [
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/embeddings",
                "/v1/models",
                "/health",
                "/metrics",
            ] {
                assert!(doc["paths"].get(route).is_some(), "{route} missing");
            }
            let text = doc.to_string();
            for piece in text.split("#/components/schemas/").skip(1) {
                let name: String = piece.chars().take_while(|c| c.is_alphanumeric()).collect();
                assert!(
                    doc["components"]["schemas"].get(&name).is_some(),
                    "dangling reference {name}"
                );
            }
        }
        assert!(
            document(Surface::Node)["components"]["securitySchemes"]
                .get("stackAuth")
                .is_some()
        );
        assert!(
            document(Surface::Gateway)["components"]["securitySchemes"]
                .get("apiKey")
                .is_some()
        );
    }
}
