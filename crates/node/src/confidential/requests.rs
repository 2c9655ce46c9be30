//! `POST /v1/confidential/chat/completions`: opens the envelope, checks the plaintext against
//! the clear metadata, and runs it through the node's one generation path with a sealed sink.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use sortition_api::*;
use sortition_confidential::wire::{
    CONFIDENTIAL_CHAT_PATH, Envelope, ReceiptExt, SEALED_COMPLETION_OBJECT, SealedCompletion,
    StreamItem,
};
use sortition_confidential::{ResponseSealer, SealError, open_request};
use sortition_engine::Prompt;
use sortition_types::{ModelId, SignedReceipt, sha256};
use zeroize::Zeroizing;

use crate::auth::authenticate;
use crate::pipeline;
use crate::request::Kind;
use crate::service::NodeState;

use super::*;

/// An error about the plaintext, with its message withheld (it could quote the prompt).
fn redact(e: ApiError) -> ApiError {
    let keep = matches!(
        e.code,
        "context_length_exceeded" | "overloaded" | "stack_exhausted" | "stack_closed"
    ) || !matches!(e.kind, ErrorKind::InvalidRequest);
    if keep {
        return e;
    }
    ApiError {
        message: format!(
            "the sealed request is invalid ({}); details withheld because the request is \
             confidential",
            e.code
        ),
        ..e
    }
}

/// `POST /v1/confidential/chat/completions`.
pub async fn chat_completions(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "confidential_chat", 1);
    match handle(&s, &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            s.metrics.inc("errors_total", e.code, 1);
            e.into_response()
        }
    }
}

async fn handle(
    s: &Arc<NodeState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let stack = authenticate(
        s.stacks.as_ref(),
        &s.store,
        "POST",
        CONFIDENTIAL_CHAT_PATH,
        headers,
        body,
        unix_now_ms(),
    )
    .await?;
    let ring = ring_of(s)?;
    let env: Envelope = parse_json(body)?;
    if env.node != s.id || !env.metadata_bound() {
        return Err(sealed_error(
            "metadata_mismatch",
            "the envelope's metadata does not match what was sealed (or the target is another node)",
        ));
    }
    let key = ring.key_or_stale(env.sealed.key_epoch)?;
    let (plaintext, sealer) = open_request(&key, &env.sealed).map_err(|e| match e {
        SealError::OpenFailed => sealed_error("sealed_request_invalid", e),
        other => sealed_error("sealed_request_invalid", other),
    })?;
    let request = read(s, &env, plaintext)?;
    let admitted = pipeline::start(s, &stack, request)?;
    let id = format!("chatcmpl-{}", &env.sealed.request_id.to_hex()[..24]);
    if env.stream {
        let sink = SealedSink { sealer };
        let sse = pipeline::sse(admitted, Kind::Chat, id, env.model.clone(), sink);
        return Ok(sse.into_response());
    }
    unary(s, admitted, sealer, id).await
}

/// Reads the opened request, checked against the envelope's clear metadata, into the
/// pipeline's request (this node keeps the plaintext for audits).
fn read(
    s: &NodeState,
    env: &Envelope,
    plaintext: Zeroizing<Vec<u8>>,
) -> Result<pipeline::Request, ApiError> {
    let req: ChatCompletionRequest = parse_json(&plaintext).map_err(redact)?;
    let wanted_max = req
        .sampling
        .max_completion_tokens
        .or(req.sampling.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS_CHAT);
    if req.model != env.model
        || wanted_max != env.max_tokens
        || req.sampling.is_stream() != env.stream
    {
        return Err(sealed_error(
            "metadata_mismatch",
            "the sealed request's model, max_tokens or stream flag differs from the envelope's",
        ));
    }
    let unsupported = |param: &'static str, what: &str| {
        sealed_error(
            "unsupported_parameter",
            format!("{what} not served for sealed requests"),
        )
        .with_param(param)
    };
    let chat = sortition_api::Endpoint::Chat;
    if req.sampling.logprobs_for(chat).map_err(redact)?.is_some() {
        return Err(unsupported("logprobs", "logprobs are"));
    }
    if req.sampling.tools_for(chat).map_err(redact)?.is_some() {
        return Err(unsupported("tools", "tools are"));
    }
    if req.sampling.constraint_for(chat).map_err(redact)?.is_some() {
        return Err(unsupported("response_format", "response_format is"));
    }
    let prompt =
        Prompt::Chat(crate::request::chat_messages(&req.messages, &req.sampling).map_err(redact)?);
    s.engine(&req.model)?;
    let params =
        crate::request::sampling_params(&req.sampling, DEFAULT_MAX_TOKENS_CHAT).map_err(redact)?;
    Ok(pipeline::Request {
        model: ModelId::new(&req.model),
        prompt,
        params,
        extras: crate::request::Extras::default(),
        request_hash: sha256(&plaintext),
        keep: pipeline::Keep::Executor(plaintext),
    })
}

fn ext(state: &NodeState, receipt: SignedReceipt) -> ReceiptExt {
    ReceiptExt {
        node: state.id,
        receipt,
        verified_by_gateway: None,
    }
}

/// A whole answer, sealed to the client; the receipt in the clear beside it.
async fn unary(
    s: &NodeState,
    a: pipeline::Admitted,
    sealer: ResponseSealer,
    id: String,
) -> Result<Response, ApiError> {
    let model = a.job.model.0.clone();
    let w = pipeline::whole(a, Kind::Chat).await?;
    let completion = ChatCompletion {
        id: id.clone(),
        object: "chat.completion".into(),
        created: unix_now(),
        model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".into(),
                content: w.delivery.content,
                tool_calls: None,
            },
            finish_reason: w.delivery.finish,
            logprobs: None,
        }],
        usage: Usage::new(w.usage.0, w.usage.1),
        sortition: None,
    };
    let plain = Zeroizing::new(
        serde_json::to_vec(&completion).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    let sealed = sealer
        .seal_whole(&plain)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(SealedCompletion {
        id,
        object: SEALED_COMPLETION_OBJECT.into(),
        sealed,
        sortition: ext(s, w.receipt),
    })
    .into_response())
}

fn item_json(item: &StreamItem) -> String {
    serde_json::to_string(item).unwrap_or_default()
}

/// A sealed stream: each chunk sealed to the client under its own nonce, the finish chunk
/// sealed as the last, then the receipt in the clear.
struct SealedSink {
    sealer: ResponseSealer,
}

impl SealedSink {
    fn seal(&mut self, json: String, last: bool) -> Option<String> {
        let plain = Zeroizing::new(json.into_bytes());
        let sealed = self.sealer.seal_chunk(&plain, last).ok()?;
        Some(item_json(&StreamItem::Sealed { sealed }))
    }
}

impl pipeline::Sink for SealedSink {
    fn chunk(&mut self, json: String) -> Option<String> {
        self.seal(json, false)
    }
    fn end(
        &mut self,
        finish: &dyn Fn(Option<SortitionExt>) -> String,
        _usage: Usage,
        receipt: SortitionExt,
    ) -> Vec<String> {
        let sortition = ReceiptExt {
            node: receipt.node,
            receipt: receipt.receipt,
            verified_by_gateway: None,
        };
        let receipt = item_json(&StreamItem::Receipt { sortition });
        self.seal(finish(None), true)
            .into_iter()
            .chain([receipt])
            .collect()
    }
}
