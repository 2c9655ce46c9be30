//! Synchronous quorum (sampling consensus at request time): the request goes to `n` nodes of
//! one class, each of a different operator, and is answered only from a response that a
//! strict majority of them signed alike (same response hash and token counts).
//!
//! Every member's receipt is checked against the key the ledger holds for it, exactly as for
//! a single node. Members that disagree with the majority are counted and logged, their
//! requests are kept for the auditors, and their receipts are challenged on the ledger
//! (`ChallengeReceipt`): peers of their class audit them at once, whatever the sampling rate,
//! and a lost dispute slashes them. Without a majority the user gets a 502, is not charged,
//! and every member's receipt is challenged. A streamed request is asked of the members
//! unstreamed (a quorum cannot answer before it agrees) and the majority's answer is then sent
//! as a stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sortition_api::{ApiError, ErrorKind};
use sortition_types::{Hash32, ModelId, NodeId, SignedReceipt};

use crate::answers::NodeAnswer;
use crate::challenge;
use crate::proxy::{self, Dispatched, Lease};
use crate::router::{Constraints, NodeView, Outcome};
use crate::settle;
use crate::state::GatewayState;
use crate::store::{AuthedKey, CreditHold};
use crate::verify::check_receipt;

/// What one member of the quorum returned, with a verified receipt.
pub(crate) struct Member {
    pub d: Lease,
    pub value: Value,
    pub receipt: SignedReceipt,
    pub ttft: std::time::Duration,
}

impl Member {
    /// What the router hears of the member's node: it answered (a receipted answer, whatever
    /// the request then makes of it).
    fn outcome(&self) -> Outcome {
        Outcome::Success {
            ttft: self.ttft,
            itl: None,
        }
    }

    /// Ends the member's lease: its units are settled (in a bill, or by
    /// [`settle_unbilled`]), or, when `returned`, given back (its bill could not be recorded).
    pub(crate) async fn end(self, returned: bool) {
        let outcome = self.outcome();
        if returned {
            self.d.release(outcome).await;
        } else {
            self.d.billed(outcome).await;
        }
    }
}

/// Why a member gave no answer; `refused` when the node refused the request itself (a 4xx:
/// the request's fault, not the node's), as the error to pass on.
pub(crate) struct MemberFailure {
    pub node: NodeId,
    pub why: String,
    pub refused: Option<ApiError>,
}

/// What a request asks of the quorum.
pub struct QuorumRequest<'a> {
    pub key: &'a AuthedKey,
    pub model: &'a ModelId,
    pub units: u64,
    pub constraints: &'a Constraints,
    pub stream: bool,
    pub size: u8,
    pub path: &'a str,
    pub body: &'a Bytes,
}

/// Runs the request on a quorum and answers from its majority.
/// `hold` is the credit held for the request at admission: `size` answers at the dearest
/// price, since every agreeing member is paid. The majority's bills settle it, in one
/// transaction, before the answer is returned; any other end releases it.
pub async fn serve(
    g: &Arc<GatewayState>,
    q: QuorumRequest<'_>,
    mut hold: CreditHold,
) -> Result<Response, ApiError> {
    // A quorum cannot answer before it agrees: members are asked unstreamed (their receipts
    // and the kept payloads commit to that body), and the majority's answer is then streamed.
    let unstreamed;
    let q = if q.stream {
        unstreamed = unstreamed_body(q.body)?;
        QuorumRequest {
            body: &unstreamed,
            ..q
        }
    } else {
        q
    };
    let nodes: Vec<NodeView> = {
        let mut r = g.router.lock().await;
        let ids = r.choose_quorum(q.model, q.constraints, q.size, &[], Instant::now())?;
        ids.iter().filter_map(|id| r.node(*id).cloned()).collect()
    };
    let asked = futures::future::join_all(nodes.into_iter().map(|n| ask(g, n, &q))).await;
    let (mut members, mut failed) = (Vec::new(), Vec::new());
    for a in asked {
        match a {
            Ok(m) => members.push(m),
            Err(MemberFailure { node, why, .. }) => {
                tracing::warn!(%node, %why, "quorum member failed");
                failed.push(json!({"node": node, "error": why}));
            }
        }
    }
    // Group by what was signed: response hash and token counts.
    let mut groups: BTreeMap<(Hash32, u64, u64), Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        let r = &m.receipt.receipt;
        groups
            .entry((r.response_hash, r.input_tokens, r.output_tokens))
            .or_default()
            .push(i);
    }
    let majority = groups
        .values()
        .find(|v| v.len() * 2 > usize::from(q.size))
        .cloned();
    let Some(majority) = majority else {
        // No answer: settle what the nodes did (they will claim it) and keep the requests
        // for the audits; the user is not charged.
        for m in &members {
            settle_unbilled(g, m, q.body).await;
        }
        let votes: Vec<Value> = members
            .iter()
            .map(|m| json!({"node": m.d.node.id, "response_hash": m.receipt.receipt.response_hash}))
            .collect();
        // At most one of them is right: have every answer audited.
        challenge::challenge(
            g,
            members.iter().map(|m| m.receipt.clone()).collect(),
            "quorum",
        );
        g.metrics.inc("quorum_total", "no_majority", 1);
        tracing::warn!(model = %q.model, ?votes, "quorum without a majority");
        let answered = members.len();
        for m in members {
            m.end(false).await;
        }
        return Err(ApiError::new(
            ErrorKind::BadGateway,
            "quorum_disagreement",
            format!(
                "no {} of the {} quorum members agreed ({} answered); nothing was charged",
                usize::from(q.size) / 2 + 1,
                q.size,
                answered
            ),
        ));
    };
    let agreeing: Vec<NodeId> = majority.iter().map(|&i| members[i].d.node.id).collect();
    let mut dissenting = Vec::new();
    let mut bills = Vec::new();
    for (i, m) in members.iter().enumerate() {
        if majority.contains(&i) {
            let answer = m.value.answer();
            let served = settle::Served::new(&m.receipt, answer.as_ref());
            bills.push(settle::receipted_bill(
                g, &m.d, q.key, q.model, q.body, &served,
            ));
        } else {
            tracing::warn!(node = %m.d.node.id, agreeing = ?agreeing, "quorum member disagreed with the majority");
            g.metrics.inc("quorum_dissent_total", "", 1);
            dissenting.push(m.d.node.id);
            settle_unbilled(g, m, q.body).await;
        }
    }
    challenge::challenge(
        g,
        members
            .iter()
            .enumerate()
            .filter(|(i, _)| !majority.contains(i))
            .map(|(_, m)| m.receipt.clone())
            .collect(),
        "quorum",
    );
    g.metrics.inc(
        "quorum_total",
        if dissenting.is_empty() && failed.is_empty() {
            "unanimous"
        } else {
            "majority"
        },
        1,
    );
    // Every agreeing member billed, in one transaction, before the answer leaves; if that
    // cannot be recorded the client gets the error (503 on a storage fault), not the answer,
    // and the agreeing members' leases return their units.
    if let Err(e) = settle::record(g, &mut hold, &bills).await {
        for (i, m) in members.into_iter().enumerate() {
            m.end(majority.contains(&i)).await;
        }
        return Err(e);
    }
    let first = &members[majority[0]];
    let mut value = first.value.clone();
    value.mark_verified();
    if let Some(ext) = value.get_mut("sortition").and_then(|s| s.as_object_mut()) {
        ext.insert(
            "quorum".into(),
            json!({"size": q.size, "agreeing": agreeing, "dissenting": dissenting, "failed": failed}),
        );
    }
    let mut resp = if q.stream {
        as_event_stream(&value)
    } else {
        Json(value).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&first.d.node.id.to_string()) {
        resp.headers_mut().insert(sortition_api::NODE_HEADER, v);
    }
    if let Ok(s) = serde_json::to_string(&first.receipt)
        && let Ok(v) = HeaderValue::try_from(s)
    {
        resp.headers_mut().insert(sortition_api::RECEIPT_HEADER, v);
    }
    for m in members {
        m.end(false).await;
    }
    Ok(resp)
}

/// The request body with `"stream": false` (and no `stream_options`).
fn unstreamed_body(body: &Bytes) -> Result<Bytes, ApiError> {
    let mut v: Value = sortition_api::parse_json(body)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("stream".into(), Value::Bool(false));
        o.remove("stream_options");
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A whole chat or text completion as the server-sent events of a stream: the content in one
/// chunk, then the finish reason with the usage and the `sortition` extension, then `[DONE]`.
fn as_event_stream(whole: &Value) -> Response {
    use axum::response::sse::Event;
    let chat = whole["object"] == "chat.completion";
    let choice = &whole["choices"][0];
    let base = |choice: Value| {
        json!({
            "id": whole["id"],
            "object": if chat { "chat.completion.chunk" } else { "text_completion" },
            "created": whole["created"],
            "model": whole["model"],
            "choices": [choice],
        })
    };
    let content = if chat {
        let mut delta = json!({"role": "assistant", "content": choice["message"]["content"]});
        if let Some(calls) = choice["message"]["tool_calls"].as_array() {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut c = c.clone();
                    c["index"] = json!(i);
                    c
                })
                .collect();
            delta["tool_calls"] = Value::Array(calls);
        }
        base(json!({"index": 0, "delta": delta, "finish_reason": null}))
    } else {
        base(json!({"index": 0, "text": choice["text"], "finish_reason": null}))
    };
    let mut last = if chat {
        base(json!({"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}))
    } else {
        base(json!({"index": 0, "text": "", "finish_reason": choice["finish_reason"]}))
    };
    last["usage"] = whole["usage"].clone();
    last["sortition"] = whole["sortition"].clone();
    let events = [content.to_string(), last.to_string(), "[DONE]".to_string()]
        .map(|d| Ok::<_, std::convert::Infallible>(Event::default().data(d)));
    axum::response::Sse::new(futures::stream::iter(events)).into_response()
}

/// A member's work that is not charged to the user: the stack's units are settled (the node
/// will claim them) and the request is kept for the auditors.
pub(crate) async fn settle_unbilled(g: &GatewayState, m: &Member, body: &Bytes) {
    let units = m.receipt.receipt.units().0.min(m.d.reserved);
    if let Err(e) = g
        .store
        .settle_stack_units(m.d.stack, m.d.reserved, units)
        .await
    {
        tracing::error!(stack = %m.d.stack, error = %e, "stack settlement failed");
    }
    settle::keep_payload(g, &m.d, body, &settle::Served::new(&m.receipt, None)).await;
}

/// Sends the request to one member and checks its receipt.
pub(crate) async fn ask(
    g: &Arc<GatewayState>,
    node: NodeView,
    q: &QuorumRequest<'_>,
) -> Result<Member, MemberFailure> {
    let id = node.id;
    let Dispatched {
        lease: d,
        response: resp,
    } = match proxy::on_node(g, &node, q.path, q.body, q.model, q.units).await {
        Ok(answered) => answered,
        Err(e) => {
            return Err(MemberFailure {
                node: id,
                why: e.message,
                refused: None,
            });
        }
    };
    let failed = |d: Lease, why: String| async move {
        d.release(Outcome::Failure).await;
        Err(MemberFailure {
            node: id,
            why,
            refused: None,
        })
    };
    let ttft = d.started.elapsed();
    let status = resp.status();
    let bytes = match tokio::time::timeout(g.config.upstream_timeout, resp.bytes()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return failed(d, format!("reading the answer: {e}")).await,
        Err(_) => return failed(d, "timed out".into()).await,
    };
    if status.is_client_error() {
        // The request's fault (bad parameters, too long a prompt): the node is not to blame.
        d.release(Outcome::Cancelled).await;
        let detail = serde_json::from_slice::<sortition_api::ErrorBody>(&bytes)
            .map(|b| b.error)
            .ok();
        let refused = match detail {
            Some(e) => {
                const KNOWN: &[&str] = &[
                    "context_length_exceeded",
                    "unsupported_parameter",
                    "unknown_parameter",
                    "invalid_value",
                    "invalid_type",
                    "invalid_message",
                    "invalid_role",
                ];
                let code = KNOWN
                    .iter()
                    .find(|k| e.code.as_deref() == Some(**k))
                    .copied()
                    .unwrap_or("invalid_request");
                let err = ApiError::invalid(code, e.message);
                match e.param {
                    Some(p) => err.with_param(p),
                    None => err,
                }
            }
            None => ApiError::invalid("invalid_request", String::from_utf8_lossy(&bytes)),
        };
        return Err(MemberFailure {
            node: id,
            why: format!("refused the request ({status})"),
            refused: Some(refused),
        });
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        return failed(d, format!("answered {status}: {text}")).await;
    }
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return failed(d, format!("invalid JSON: {e}")).await,
    };
    let Some(receipt) = value.receipt() else {
        return failed(d, "no receipt".into()).await;
    };
    // Each member's answer must be what its receipt commits to: the majority is counted by
    // response hash, so the answer sent on is then one the agreeing receipts all cover.
    if let Err(e) = check_receipt(&d, q.body, value.delivered_hash(q.body), &receipt) {
        g.metrics.inc("receipts_refused_total", e.code(), 1);
        challenge::challenge_over_report(g, &e, &receipt, Some((&d, q.body))).await;
        challenge::disown_misdelivered(g, &e, &receipt);
        return failed(d, format!("receipt refused: {e}")).await;
    }
    Ok(Member {
        d,
        value,
        receipt,
        ttft,
    })
}
