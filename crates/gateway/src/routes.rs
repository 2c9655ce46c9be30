//! The gateway's OpenAI-compatible routes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sortition_api::*;

use crate::admission::{Admitted, Asked, admit, authenticate};
use crate::answers::NodeAnswer;
use crate::directory::RouterQueries;
use crate::proxy::{self, Dispatched, Lease};
use crate::relay::{bad_receipt, fail, first_event, relay_stream};
use crate::router::Outcome;
use crate::settle;
use crate::state::GatewayState;
use crate::store::AuthedKey;
use crate::verify;
use crate::verify::check_receipt;

type S = State<Arc<GatewayState>>;

/// `body` (a JSON object) with `"seed": seed` added.
fn with_seed(body: &Bytes, seed: u64) -> Result<Bytes, ApiError> {
    let mut v: serde_json::Value = parse_json(body)?;
    match v.as_object_mut() {
        Some(o) => {
            o.insert("seed".into(), seed.into());
        }
        None => {
            return Err(ApiError::invalid(
                "invalid_body",
                "the request body must be a JSON object",
            ));
        }
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Worst-case units of a generation request: every body byte a prompt token (a token is at
/// least one byte), the chat template's overhead, and the maximum new tokens.
fn generation_units(body: &[u8], messages: usize, s: &SamplingFields) -> u64 {
    let max_new = s
        .max_completion_tokens
        .or(s.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS_CHAT.max(DEFAULT_MAX_TOKENS_COMPLETIONS));
    body.len() as u64 + 64 + 8 * messages as u64 + u64::from(max_new)
}

pub async fn chat_completions(State(g): S, headers: HeaderMap, body: Bytes) -> Response {
    g.metrics.inc("requests_total", "chat", 1);
    generation::<ChatCompletion>(&g, &headers, body, "/v1/chat/completions", |body| {
        let req: ChatCompletionRequest = parse_json(body)?;
        req.sampling.check_supported()?;
        req.sampling.logprobs_for(Endpoint::Chat)?;
        req.sampling.constraint_for(Endpoint::Chat)?;
        Ok((req.model, req.messages.len(), req.sampling))
    })
    .await
    .unwrap_or_else(|e| error(&g, e))
}

pub async fn completions(State(g): S, headers: HeaderMap, body: Bytes) -> Response {
    g.metrics.inc("requests_total", "completions", 1);
    generation::<Completion>(&g, &headers, body, "/v1/completions", |body| {
        let req: CompletionRequest = parse_json(body)?;
        req.single_prompt()?;
        req.sampling.check_supported()?;
        req.sampling.logprobs_for(Endpoint::Completions)?;
        req.sampling.constraint_for(Endpoint::Completions)?;
        Ok((req.model, 1, req.sampling))
    })
    .await
    .unwrap_or_else(|e| error(&g, e))
}

/// Chat and text completions: authenticate, parse (model, message count, sampling) with
/// `parse`, admit with the worst-case units, forward; a whole answer is read as an `A`.
async fn generation<A: NodeAnswer>(
    g: &Arc<GatewayState>,
    headers: &HeaderMap,
    body: Bytes,
    path: &str,
    parse: impl Fn(&[u8]) -> Result<(String, usize, SamplingFields), ApiError>,
) -> Result<Response, ApiError> {
    let key = authenticate(g, headers).await?;
    let fresh_seed = || rand::random::<u64>() >> 12; // exact in a JSON number read as f64
    if let Some(bodies) = crate::fanout::split(&body, fresh_seed)? {
        return fanned(g, key, headers, path, bodies, parse).await;
    }
    let (model, messages, mut sampling) = parse(&body)?;
    // A request without a seed is sampled with a fresh one that the gateway draws and writes
    // into the body it signs: every member of a quorum then samples alike, and no node can try
    // seeds until it likes an answer (the seed is fixed by the stack owner's signature).
    let body = match sampling.seed {
        Some(_) => body,
        None => {
            let seed = fresh_seed();
            sampling.seed = Some(seed);
            with_seed(&body, seed)?
        }
    };
    let units = generation_units(&body, messages, &sampling);
    let mut a = admit(
        g,
        key,
        headers,
        &model,
        sampling.is_stream(),
        units,
        Asked::Generations(1),
    )
    .await?;
    let ended = a.hold.ended();
    let size = a.size;
    let served = if size > 1 {
        crate::quorum::serve(
            g,
            crate::quorum::QuorumRequest {
                key: &a.key,
                model: &a.model,
                units: a.units,
                constraints: &a.constraints,
                stream: a.stream,
                size,
                path,
                body: &body,
            },
            a.hold,
        )
        .await
    } else {
        forward::<A>(g, a, path, body).await
    };
    released_on_error(served, ended).await
}

/// A request for several answers (`n` > 1, several prompts), split into `bodies`, one per
/// answer: each is checked as a request of its own, all are held for at once, and
/// [`crate::fanout::serve`] answers them.
async fn fanned(
    g: &Arc<GatewayState>,
    key: AuthedKey,
    headers: &HeaderMap,
    path: &str,
    bodies: Vec<Bytes>,
    parse: impl Fn(&[u8]) -> Result<(String, usize, SamplingFields), ApiError>,
) -> Result<Response, ApiError> {
    let mut model = String::new();
    let mut units = 0;
    for b in &bodies {
        let (m, messages, sampling) = parse(b)?;
        units = units.max(generation_units(b, messages, &sampling));
        model = m;
    }
    let mut a = admit(
        g,
        key,
        headers,
        &model,
        false,
        units,
        Asked::Generations(bodies.len() as u64),
    )
    .await?;
    if a.size > 1 {
        return Err(ApiError::invalid(
            "unsupported_parameter",
            format!(
                "'{model}' is served by a synchronous quorum, which answers one choice per \
                 request; ask with n=1 and one prompt"
            ),
        )
        .with_param("n"));
    }
    let ended = a.hold.ended();
    let served = crate::fanout::serve(
        g,
        crate::fanout::Fanned {
            key: &a.key,
            model: &a.model,
            units: a.units,
            constraints: &a.constraints,
            path,
            bodies,
        },
        a.hold,
    )
    .await;
    released_on_error(served, ended).await
}

/// How long a failed request waits for its credit hold's release before it answers.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A failed request answers once its hold is released, so that its client sees its credits
/// back as soon as it sees the error (the release itself runs whether or not it waits).
async fn released_on_error(
    served: Result<Response, ApiError>,
    ended: crate::store::HoldEnded,
) -> Result<Response, ApiError> {
    if served.is_err() {
        ended.wait(RELEASE_WAIT).await;
    }
    served
}

pub async fn embeddings(State(g): S, headers: HeaderMap, body: Bytes) -> Response {
    g.metrics.inc("requests_total", "embeddings", 1);
    let result = async {
        let key = authenticate(&g, &headers).await?;
        let req: EmbeddingRequest = parse_json(&body)?;
        req.check_supported()?;
        req.input.check_count()?;
        let units = req.input.token_bound(512);
        let mut a = admit(
            &g,
            key,
            &headers,
            &req.model,
            false,
            units.max(1),
            Asked::Embeddings,
        )
        .await?;
        let ended = a.hold.ended();
        let served = forward::<serde_json::Value>(&g, a, "/v1/embeddings", body).await;
        released_on_error(served, ended).await
    }
    .await;
    result.unwrap_or_else(|e| error(&g, e))
}

/// `GET /v1/models`: like every `/v1` route, for holders of a valid API key only (as OpenAI,
/// vLLM with `--api-key` and LiteLLM do).
pub async fn models(State(g): S, headers: HeaderMap) -> Response {
    match authenticate(&g, &headers).await {
        Ok(_) => model_list(&g).await.into_response(),
        Err(e) => error(&g, e),
    }
}

/// `GET /v1/models/{id}`: one model's card, or 404 `model_not_found` (API key required).
pub async fn model(
    State(g): S,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Err(e) = authenticate(&g, &headers).await {
        return error(&g, e);
    }
    let Json(list) = model_list(&g).await;
    match list.data.into_iter().find(|m| m.id == id) {
        Some(card) => Json(card).into_response(),
        None => error(
            &g,
            ApiError::new(
                ErrorKind::NotFound,
                "model_not_found",
                format!("the model '{id}' does not exist or no node serves it"),
            )
            .with_param("model"),
        ),
    }
}

async fn model_list(g: &GatewayState) -> Json<ModelList> {
    let r = g.router.lock().await;
    let data = r
        .models()
        .into_iter()
        .map(|m| ModelCard {
            id: m.0,
            object: "model".into(),
            created: 0,
            owned_by: "sortition".into(),
        })
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

fn error(g: &GatewayState, e: ApiError) -> Response {
    g.metrics.inc("errors_total", e.code, 1);
    e.into_response()
}

/// Dispatches an admitted request; a whole answer is read as an `A`.
async fn forward<A: NodeAnswer>(
    g: &Arc<GatewayState>,
    a: Admitted,
    path: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    // A stream whose node fails before its first event has delivered nothing: it is retried on
    // another node, as a unary request is, and the client never sees the failure.
    let mut tried: Vec<sortition_types::NodeId> = Vec::new();
    let mut stream_failure: Option<ApiError> = None;
    let d = loop {
        let d = match proxy::dispatch(g, path, &body, &a.model, a.units, &a.constraints, &tried)
            .await
        {
            Ok(d) => d,
            Err(e) => return Err(stream_failure.unwrap_or(e)),
        };
        if !a.stream || !d.response.status().is_success() {
            break d;
        }
        match first_event(g, d).await {
            Ok(started) => return Ok(relay_stream(g.clone(), a, started, body).into_response()),
            Err((node, e)) => {
                tried.push(node);
                stream_failure = Some(e);
                if tried.len() >= proxy::MAX_ATTEMPTS {
                    return Err(stream_failure.unwrap_or_else(|| {
                        ApiError::new(ErrorKind::BadGateway, "upstream_error", "stream failed")
                    }));
                }
            }
        }
    };
    if !d.response.status().is_success() {
        // A client error from the node (bad parameters, too long a prompt): pass it on,
        // return the units, bill nothing.
        let status = d.response.status();
        let Dispatched { lease, response } = d;
        lease.release(Outcome::Cancelled).await;
        let text = response.bytes().await.unwrap_or_default();
        let mut resp = (status, text).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    unary::<A>(g, a, d, body).await
}

/// The node's server-sent events, as the relay reads them.
/// A whole answer: read once as an `A` (or, if that type does not describe it, as any JSON),
/// then checked, billed and returned.
async fn unary<A: NodeAnswer>(
    g: &Arc<GatewayState>,
    a: Admitted,
    d: Dispatched,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ttft = proxy::elapsed(&d);
    let Dispatched { lease: d, response } = d;
    let read = tokio::time::timeout(g.config.upstream_timeout, response.bytes()).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(fail(d, format!("reading the node's answer: {e}")).await),
        Err(_) => return Err(fail(d, "node timed out".into()).await),
    };
    match serde_json::from_slice::<A>(&bytes) {
        Ok(answer) => answered(g, a, d, body, ttft, answer).await,
        Err(_) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(answer) => answered(g, a, d, body, ttft, answer).await,
            Err(e) => Err(fail(d, format!("node sent invalid JSON: {e}")).await),
        },
    }
}

/// Checks the receipt of a node's whole answer, bills the request and returns the answer,
/// marked verified, with the node and receipt headers.
async fn answered(
    g: &Arc<GatewayState>,
    mut a: Admitted,
    d: Lease,
    body: Bytes,
    ttft: std::time::Duration,
    mut answer: impl NodeAnswer,
) -> Result<Response, ApiError> {
    let Some(receipt) = answer.receipt() else {
        return Err(bad_receipt(g, d, verify::ReceiptError::Missing, None).await);
    };
    if let Err(e) = check_receipt(&d, &body, answer.delivered_hash(&body), &receipt) {
        return Err(bad_receipt(g, d, e, Some((&body, &receipt))).await);
    }
    let generated = answer.answer();
    let served = settle::Served::new(&receipt, generated.as_ref());
    // Billed (and the payload kept) before the answer leaves: if that cannot be recorded the
    // client gets the error (503 on a storage fault) instead of an unpaid answer, and the
    // lease returns its units unbilled.
    let bill = settle::receipted_bill(g, &d, &a.key, &a.model, &body, &served);
    let node = d.node.id;
    let outcome = Outcome::Success { ttft, itl: None };
    match settle::record(g, &mut a.hold, &[bill]).await {
        Ok(_) => d.billed(outcome).await,
        Err(e) => {
            d.release(outcome).await;
            return Err(e);
        }
    }
    answer.mark_verified();
    let mut resp = Json(answer).into_response();
    if let Ok(v) = HeaderValue::from_str(&node.to_string()) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    if let Some(Ok(v)) = served.receipt_json.map(HeaderValue::try_from) {
        resp.headers_mut().insert(RECEIPT_HEADER, v);
    }
    Ok(resp)
}
