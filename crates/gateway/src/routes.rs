//! The gateway's OpenAI-compatible routes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use sortition_api::*;
use sortition_types::{ModelId, SignedReceipt};
use tokio::sync::mpsc;

use crate::answers::NodeAnswer;
use crate::directory::RouterQueries;
use crate::directory::cost;
use crate::proxy::{self, Dispatched, Lease, check_receipt};
use crate::router::{Constraints, Outcome};
use crate::state::GatewayState;
use crate::store::{AuthedKey, CreditHold};

type S = State<Arc<GatewayState>>;

/// An authenticated, admitted request: its key, the parsed essentials, and the credit held for
/// its worst-case cost (released if it is dropped before its bill settles it).
struct Admitted {
    key: AuthedKey,
    model: ModelId,
    stream: bool,
    units: u64,
    constraints: Constraints,
    /// How many nodes answer it (a synchronous quorum when above 1); each is paid.
    size: u8,
    hold: CreditHold,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What a request asks of the network, for admission.
#[derive(Clone, Copy, Debug)]
enum Asked {
    /// This many generations (several when the gateway splits `n` > 1 or several prompts),
    /// each from a synchronous quorum where policy or the request asks for one.
    Generations(u64),
    /// Embeddings: one node.
    Embeddings,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// Authenticates the API key and applies its rate limit: the first thing every route does,
/// so an unauthenticated caller learns nothing about the request's validity.
async fn authenticate(g: &Arc<GatewayState>, headers: &HeaderMap) -> Result<AuthedKey, ApiError> {
    let key = g.store.authenticate(bearer(headers)).await?;
    g.limiter.check(key.key_id, key.rpm)?;
    Ok(key)
}

/// Admits a request: parses its constraints, then holds its worst-case cost (`units` at the
/// dearest serving node's price, once per quorum member when `quorum` lets the model's policy
/// or the constraints ask for one) against the key's credits and budget, atomically, before
/// any node is asked. A request that cannot be held for gets the quota error (429
/// `insufficient_credits` or `key_budget_exceeded`), or a 503 when the store cannot write.
async fn admit(
    g: &Arc<GatewayState>,
    key: AuthedKey,
    headers: &HeaderMap,
    model: &str,
    stream: bool,
    units: u64,
    asked: Asked,
) -> Result<Admitted, ApiError> {
    let permit = g.in_flight.try_acquire()?;
    let constraints = Constraints::from_header(
        headers
            .get(CONSTRAINTS_HEADER)
            .and_then(|v| v.to_str().ok()),
    )?;
    let model = ModelId::new(model);
    // Refuse up front what the user could not pay for at the dearest serving node, so that a
    // request is never served unpaid.
    let worst = {
        let r = g.router.lock().await;
        r.worst_price(&model)
    };
    let Some(worst) = worst else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "model_not_found",
            format!("no node serves model '{model}'"),
        )
        .with_param("model"));
    };
    let (size, answers) = match asked {
        Asked::Generations(n) => (
            g.policy_quorum(&model)
                .max(constraints.require_quorum.unwrap_or(1)),
            n,
        ),
        Asked::Embeddings => (1, 1),
    };
    // Every quorum member is paid for what it served, each at most `units` at `worst`, for
    // each of the `answers` asked.
    let need = sortition_types::Amount(
        cost(units, worst)
            .0
            .saturating_mul(u64::from(size))
            .saturating_mul(answers),
    );
    // The snapshot read at authentication turns the obviously short away without a write;
    // the hold is what decides, atomically.
    crate::limits::affordable(&key, need)?;
    let hold = g.store.hold(key.key_id, need).await?;
    Ok(Admitted {
        key,
        model,
        stream,
        units,
        constraints,
        size,
        hold,
        _permit: permit,
    })
}

/// Mean time between streamed chunks, from the first and last chunk's arrival, for the
/// router's inter-token latency; `None` with fewer than two chunks.
fn inter_token(
    first: Option<std::time::Duration>,
    last: Option<std::time::Duration>,
    chunks: u64,
) -> Option<std::time::Duration> {
    match (first, last) {
        (Some(f), Some(l)) if chunks >= 2 && l >= f => {
            Some((l - f) / u32::try_from(chunks - 1).unwrap_or(u32::MAX))
        }
        _ => None,
    }
}

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
        g.store.release(d.stack, d.reserved).await.ok();
        g.finish(d.node.id, Outcome::Cancelled).await;
        let text = d.response.bytes().await.unwrap_or_default();
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
type NodeEvents = futures::stream::BoxStream<
    'static,
    Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
>;

/// A stream whose node has delivered its first event.
struct StartedStream {
    d: Lease,
    /// Every event of the node's stream, the first one included.
    events: NodeEvents,
}

/// Waits for a streamed answer's first event. A node that fails before it (connection lost,
/// stream ended, nothing within the upstream timeout) has delivered nothing: its units are
/// returned, the router hears of the failure, and the node's id comes back for the failover.
async fn first_event(
    g: &GatewayState,
    d: Dispatched,
) -> Result<StartedStream, (sortition_types::NodeId, ApiError)> {
    let Dispatched { lease: d, response } = d;
    let mut events = response.bytes_stream().eventsource();
    let why = match tokio::time::timeout(g.config.upstream_timeout, events.next()).await {
        Ok(Some(Ok(first))) => {
            let events = futures::stream::iter([Ok(first)]).chain(events).boxed();
            return Ok(StartedStream { d, events });
        }
        Ok(Some(Err(e))) => format!("the node's stream broke before its first event: {e}"),
        Ok(None) => "the node's stream ended before its first event".to_string(),
        Err(_) => "the node sent no event in time".to_string(),
    };
    tracing::warn!(node = %d.node.id, %why, "stream failed before delivering anything; trying another node");
    Err((d.node.id, fail(g, &d, why).await))
}

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
        Ok(Err(e)) => return Err(fail(g, &d, format!("reading the node's answer: {e}")).await),
        Err(_) => return Err(fail(g, &d, "node timed out".into()).await),
    };
    match serde_json::from_slice::<A>(&bytes) {
        Ok(answer) => answered(g, a, d, body, ttft, answer).await,
        Err(_) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(answer) => answered(g, a, d, body, ttft, answer).await,
            Err(e) => Err(fail(g, &d, format!("node sent invalid JSON: {e}")).await),
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
        return Err(bad_receipt(g, &d, proxy::ReceiptError::Missing, None).await);
    };
    if let Err(e) = check_receipt(&d, &body, answer.delivered_hash(&body), &receipt) {
        return Err(bad_receipt(g, &d, e, Some((&body, &receipt))).await);
    }
    g.finish(d.node.id, Outcome::Success { ttft, itl: None })
        .await;
    let generated = answer.answer();
    let served = proxy::Served::new(&receipt, generated.as_ref());
    // Billed (and the payload kept) before the answer leaves: if that cannot be recorded the
    // client gets the error (503 on a storage fault) instead of an unpaid answer.
    proxy::bill(g, &d, &a.key, &a.model, &body, &served, &mut a.hold).await?;
    answer.mark_verified();
    let mut resp = Json(answer).into_response();
    if let Ok(v) = HeaderValue::from_str(&d.node.id.to_string()) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    if let Some(Ok(v)) = served.receipt_json.map(HeaderValue::try_from) {
        resp.headers_mut().insert(RECEIPT_HEADER, v);
    }
    Ok(resp)
}

/// A dispatch that failed after the node's headers: its units are returned, nothing is billed.
async fn fail(g: &GatewayState, d: &Lease, msg: String) -> ApiError {
    proxy::release(g, d.stack, d.reserved).await;
    g.finish(d.node.id, Outcome::Failure).await;
    ApiError::new(ErrorKind::BadGateway, "upstream_error", msg)
}

/// Refuses a node's answer whose receipt does not check out. A receipt the node did sign for
/// this request (it only over-reports) will still be claimed by the node, so it is challenged
/// ([`proxy::challenge_over_report`]); one whose answer is not what it commits to is disowned
/// ([`proxy::disown_misdelivered`]).
async fn bad_receipt(
    g: &Arc<GatewayState>,
    d: &Lease,
    e: proxy::ReceiptError,
    signed: Option<(&Bytes, &SignedReceipt)>,
) -> ApiError {
    tracing::error!(node = %d.node.id, error = %e, "refused a node's receipt");
    if let Some((body, r)) = signed {
        proxy::challenge_over_report(g, &e, r, Some((d, body))).await;
        proxy::disown_misdelivered(g, &e, r);
    }
    g.metrics.inc("receipts_refused_total", e.code(), 1);
    g.store.release(d.stack, d.reserved).await.ok();
    g.finish(d.node.id, e.outcome()).await;
    ApiError::new(
        ErrorKind::BadGateway,
        "receipt_invalid",
        format!(
            "node {}: {e}; the answer was withheld and nothing was billed",
            d.node.id
        ),
    )
}

/// Relays a node's SSE stream, checking the receipt in its final event. A driver task owns
/// the upstream so billing happens even if the client disconnects.
fn relay_stream(
    g: Arc<GatewayState>,
    a: Admitted,
    started: StartedStream,
    body: Bytes,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    crate::relay::channel_sse(|tx| drive_relay(g, a, started, body, tx))
}

async fn drive_relay(
    g: Arc<GatewayState>,
    a: Admitted,
    started: StartedStream,
    body: Bytes,
    tx: mpsc::Sender<String>,
) {
    let StartedStream { d, mut events } = started;
    let mut delivered_chunks: u64 = 0;
    let mut ttft = None;
    let mut last_chunk = None;
    let mut receipt_ok = None;
    let mut client_gone = false;
    let mut answer = sortition_api::delivered::DeliveredText::for_request(&body);
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(node = %d.node.id, error = %e, "stream from node broke");
                break;
            }
        };
        if ev.data == "[DONE]" {
            break;
        }
        let mut v: serde_json::Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if ttft.is_none() {
            ttft = Some(proxy::elapsed(&d));
        }
        // Everything delivered counts toward what the receipt must cover, the receipt's own
        // event included.
        answer.absorb(&v);
        if v.get("sortition").and_then(|s| s.get("receipt")).is_some() {
            let parsed = v.receipt();
            let checked = match &parsed {
                None => Err(proxy::ReceiptError::Missing),
                Some(r) => check_receipt(&d, &body, answer.response_hash(), r).map(|_| r.clone()),
            };
            match checked {
                Ok(r) => {
                    v.mark_verified();
                    receipt_ok = Some(r);
                }
                Err(e) => {
                    let err = bad_receipt(&g, &d, e, parsed.as_ref().map(|r| (&body, r))).await;
                    let _ = tx
                        .send(serde_json::to_string(&err.body()).unwrap_or_default())
                        .await;
                    let _ = tx.send("[DONE]".into()).await;
                    return;
                }
            }
        } else {
            delivered_chunks += 1;
            last_chunk = Some(proxy::elapsed(&d));
        }
        if tx.send(v.to_string()).await.is_err() {
            client_gone = true;
            break;
        }
        if receipt_ok.is_some() {
            // The receipt closes the answer: nothing the node sends after it is covered by it,
            // so nothing more is relayed.
            break;
        }
    }
    drop(events);
    match receipt_ok {
        Some(r) => {
            let _ = tx.send("[DONE]".into()).await;
            g.finish(
                d.node.id,
                Outcome::Success {
                    ttft: ttft.unwrap_or_default(),
                    itl: inter_token(ttft, last_chunk, delivered_chunks),
                },
            )
            .await;
            let answer = answer.finish_reason.map(|finish_reason| proxy::Answer {
                text: answer.text,
                finish_reason,
            });
            let served = proxy::Served::new(&r, answer.as_ref());
            // Delivered already: settled now, or once the store can (the hold pays meanwhile).
            let bill = proxy::receipted_bill(&g, &d, &a.key, &a.model, &body, &served);
            proxy::record_delivered(&g, a.hold, vec![bill]).await;
        }
        None => {
            // No receipt: the stream ended early (the node failed or the client left). Bill
            // only the chunks actually delivered, one unit each.
            let status = crate::relay::end_interrupted(
                &g,
                d.node.id,
                &tx,
                client_gone,
                "the node's stream ended before its receipt",
            )
            .await;
            let bill = d.account(&a.key, &a.model).unreceipted(
                delivered_chunks,
                status,
                sortition_types::sha256(&body),
            );
            proxy::record_delivered(&g, a.hold, vec![bill]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inter_token;
    use std::time::Duration;

    #[test]
    fn inter_token_latency_is_the_mean_gap_between_chunks() {
        let ms = Duration::from_millis;
        assert_eq!(inter_token(Some(ms(100)), Some(ms(400)), 4), Some(ms(100)));
        assert_eq!(inter_token(Some(ms(100)), Some(ms(100)), 1), None);
        assert_eq!(inter_token(None, Some(ms(100)), 3), None);
        assert_eq!(inter_token(Some(ms(200)), Some(ms(100)), 3), None);
    }
}
