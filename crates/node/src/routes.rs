//! The node's OpenAI-compatible routes: each reads its request (`crate::request`), runs it
//! through the one generation path (`crate::pipeline`) or the embedder, and shapes the answer.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use sortition_api::*;
use sortition_engine::Prompt;
use sortition_types::{Custody, ModelId, SignedReceipt, embedding_response_hash, sha256};

use crate::auth::authenticate;
use crate::error::NodeError;
use crate::logprobs::Rendered;
use crate::pipeline;
use crate::request::{
    Extras, Kind, chat_messages, chat_model, default_max_tokens, embed_inputs, embed_model,
    sampling_params,
};
use crate::service::{NodeState, Outcome};

type S = State<Arc<NodeState>>;

/// A response id unique to this call (`chatcmpl-…`, `cmpl-…`): 96 random bits, so that two
/// identical requests never share an id.
pub(crate) fn response_id(prefix: &str) -> Result<String, ApiError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::internal(format!("no randomness for an id: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}-{hex}"))
}

fn receipt_header(r: &SignedReceipt) -> Option<HeaderValue> {
    serde_json::to_string(r)
        .ok()
        .and_then(|s| HeaderValue::from_str(&s).ok())
}

pub async fn chat_completions(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "chat", 1);
    generation(&s, &headers, &body, Kind::Chat)
        .await
        .unwrap_or_else(|e| error(&s, e))
}

pub async fn completions(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "completions", 1);
    generation(&s, &headers, &body, Kind::Text)
        .await
        .unwrap_or_else(|e| error(&s, e))
}

/// Chat and text completions: authenticate first (so an unauthenticated caller learns nothing
/// about the body), then parse, admit, and answer as a stream or at once.
async fn generation(
    s: &Arc<NodeState>,
    headers: &HeaderMap,
    body: &Bytes,
    kind: Kind,
) -> Result<Response, ApiError> {
    let path = match kind {
        Kind::Chat => "/v1/chat/completions",
        Kind::Text => "/v1/completions",
    };
    let stack = authenticate(
        s.stacks.as_ref(),
        &s.store,
        "POST",
        path,
        headers,
        body,
        unix_now_ms(),
    )
    .await?;
    let (model, prompt, sampling) = match kind {
        Kind::Chat => {
            let req: ChatCompletionRequest = parse_json(body)?;
            (
                req.model,
                Prompt::Chat(chat_messages(&req.messages, &req.sampling)?),
                req.sampling,
            )
        }
        Kind::Text => {
            let req: CompletionRequest = parse_json(body)?;
            let prompt = req.single_prompt()?;
            (req.model, Prompt::Text(prompt), req.sampling)
        }
    };
    let id = response_id(match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    })?;
    chat_model(s, &model)?;
    let params = sampling_params(&sampling, default_max_tokens(kind))?;
    let extras = Extras::read(kind, &sampling, &prompt)?;
    let request = pipeline::Request {
        model: ModelId::new(&model),
        prompt,
        params,
        extras,
        request_hash: sha256(body),
        keep: pipeline::Keep::Gateway,
    };
    let admitted = pipeline::start(s, &stack, request)?;
    if sampling.is_stream() {
        let sink = pipeline::PlainSink {
            kind,
            id: id.clone(),
            model: model.clone(),
            include_usage: sampling.include_usage(),
        };
        Ok(pipeline::sse(admitted, kind, id, model, sink).into_response())
    } else {
        Ok(unary(s, admitted, id, model, kind).await)
    }
}

fn error(s: &NodeState, e: ApiError) -> Response {
    s.metrics.inc("errors_total", e.code, 1);
    e.into_response()
}

async fn unary(
    s: &NodeState,
    a: pipeline::Admitted,
    id: String,
    model: String,
    kind: Kind,
) -> Response {
    let pipeline::Whole {
        delivery,
        usage: (p, c),
        rendered,
        receipt,
        elapsed,
    } = match pipeline::whole(a, kind).await {
        Ok(w) => w,
        Err(e) => return error(s, e),
    };
    s.metrics.observe("request_seconds", elapsed.as_secs_f64());
    let ext = Some(SortitionExt {
        node: s.id,
        receipt: receipt.clone(),
        verified_by_gateway: None,
    });
    let usage = Usage::new(p, c);
    // Written from the typed answer (never through a `Value`, which would print f32
    // log-probabilities with f64 digits).
    let tool_calls = delivery.tool_calls(&id);
    let body = match kind {
        Kind::Chat => serde_json::to_string(&ChatCompletion {
            id,
            object: "chat.completion".into(),
            created: unix_now(),
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    tool_calls,
                    content: delivery.content,
                },
                finish_reason: delivery.finish,
                logprobs: match rendered {
                    Some(Rendered::Chat(c)) => Some(c),
                    _ => None,
                },
            }],
            usage,
            sortition: ext,
        }),
        Kind::Text => serde_json::to_string(&Completion {
            id,
            object: "text_completion".into(),
            created: unix_now(),
            model,
            choices: vec![CompletionChoice {
                index: 0,
                text: delivery.content.unwrap_or_default(),
                finish_reason: Some(delivery.finish),
                logprobs: match rendered {
                    Some(Rendered::Text(t)) => Some(t),
                    _ => None,
                },
            }],
            usage: Some(usage),
            sortition: ext,
        }),
    };
    let mut resp = match body {
        Ok(v) => ([(axum::http::header::CONTENT_TYPE, "application/json")], v).into_response(),
        Err(e) => return error(s, ApiError::internal(e.to_string())),
    };
    if let Some(h) = receipt_header(&receipt) {
        resp.headers_mut().insert(RECEIPT_HEADER, h);
    }
    resp
}

pub async fn embeddings(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "embeddings", 1);
    match embeddings_inner(&s, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error(&s, e),
    }
}

async fn embeddings_inner(
    s: &Arc<NodeState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let stack = authenticate(
        s.stacks.as_ref(),
        &s.store,
        "POST",
        "/v1/embeddings",
        headers,
        body,
        unix_now_ms(),
    )
    .await?;
    let req: EmbeddingRequest = parse_json(body)?;
    req.check_supported()?;
    let m = embed_model(s, &req.model)?;
    let format = req.encoding_format.clone();
    EmbeddingVector::encode(vec![], format.as_deref())?;
    if req.dimensions.is_some_and(|d| d as usize != m.embedder.dim) {
        return Err(ApiError::invalid(
            "unsupported_dimensions",
            format!("this model returns {} dimensions", m.embedder.dim),
        )
        .with_param("dimensions"));
    }
    req.input.check_count()?;
    let max = sortition_engine::embed::MAX_TOKENS as u64;
    let bound = req.input.token_bound(max);
    let inputs = embed_inputs(req.input);
    // Every input is tokenized and checked (length, ids) before units are reserved: an
    // over-long input is refused by index, never truncated.
    let embedder = m.embedder.clone();
    let ids = tokio::task::spawn_blocking(move || embedder.tokenize(&inputs))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(NodeError::from)?;
    let reservation = s.reserve(&stack, &m.id, bound)?;
    let embedder = m.embedder.clone();
    let result = tokio::task::spawn_blocking(move || embedder.embed_tokens(&ids)).await;
    let (vectors, tokens) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            s.release(reservation);
            return Err(NodeError::from(e).into());
        }
        Err(e) => {
            s.release(reservation);
            return Err(ApiError::internal(e.to_string()));
        }
    };
    let receipt = s.finish(
        reservation,
        Outcome {
            model: m.id.clone(),
            model_digest: m.digest,
            request_hash: sha256(body),
            response_hash: embedding_response_hash(&vectors),
            input_tokens: tokens as u64,
            output_tokens: 0,
            sampling: Default::default(),
            custody: Custody::Gateway,
        },
    )?;
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(EmbeddingData {
                object: "embedding".into(),
                index: i as u32,
                embedding: EmbeddingVector::encode(v, format.as_deref())?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut resp = Json(EmbeddingResponse {
        object: "list".into(),
        data,
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens as u64,
            total_tokens: tokens as u64,
        },
        sortition: Some(SortitionExt {
            node: s.id,
            receipt: receipt.clone(),
            verified_by_gateway: None,
        }),
    })
    .into_response();
    if let Some(h) = receipt_header(&receipt) {
        resp.headers_mut().insert(RECEIPT_HEADER, h);
    }
    Ok(resp)
}

pub async fn models(State(s): S) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: s
            .model_names()
            .into_iter()
            .map(|id| ModelCard {
                id,
                object: "model".into(),
                created: 0,
                owned_by: format!("{}", s.id),
            })
            .collect(),
    })
}

/// `POST /sortition/v1/audits/{id}/payload`: the holder of an audited request delivers it.
pub async fn audit_payload(
    State(s): S,
    axum::extract::Path(id): axum::extract::Path<u64>,
    body: Bytes,
) -> Response {
    let payload: sortition_api::audit::AuditPayload = match parse_json(&body) {
        Ok(p) => p,
        Err(e) => return error(&s, e),
    };
    match s.audits.deliver(sortition_types::AuditId(id), payload) {
        Ok(()) => axum::http::StatusCode::ACCEPTED.into_response(),
        Err(e) => error(&s, e.into()),
    }
}

/// `GET /sortition/v1/stacks/{stack}/receipts/{sequence}/proof`: the receipt and its inclusion
/// proof under the Merkle root of all receipts this node holds for the stack (the root its
/// claim for the stack commits to, once claimed). Receipts carry hashes only, no content.
pub async fn receipt_proof(
    State(s): S,
    axum::extract::Path((stack, sequence)): axum::extract::Path<(u64, u64)>,
) -> Response {
    let all = match s.store.receipts(sortition_types::StackId(stack)) {
        Ok(r) => r,
        Err(e) => return error(&s, NodeError::Store(e).into()),
    };
    // The receipts a claim holds (in position): the proof is under the root it commits to.
    let receipts = crate::claims::in_position(&all);
    let Some(index) = receipts.iter().position(|r| r.receipt.sequence == sequence) else {
        return error(
            &s,
            ApiError::new(
                ErrorKind::NotFound,
                "receipt_not_found",
                format!("no receipt {sequence} for stack {stack} on this node"),
            ),
        );
    };
    let material = crate::claims::claim_material(receipts);
    match crate::claims::receipt_with_proof(receipts, index as u64) {
        Some((receipt, proof)) => Json(ReceiptProof {
            receipt,
            proof,
            receipts_root: material.receipts_root,
            receipt_count: material.receipt_count,
        })
        .into_response(),
        None => error(&s, ApiError::internal("proof construction failed")),
    }
}

/// Answer of the inclusion-proof route.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReceiptProof {
    pub receipt: sortition_types::SignedReceipt,
    pub proof: sortition_types::MerkleProof,
    pub receipts_root: sortition_types::Hash32,
    pub receipt_count: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "routes_tests.rs"]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "logprobs_tests.rs"]
mod logprobs_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "tools_tests.rs"]
mod tools_tests;
