//! Several answers in one request: `n` > 1 (chat and text completions) and a list of prompts
//! (text completions).
//!
//! A receipt commits to exactly one answer, so the gateway splits such a request into one
//! request per answer — prompt `i` and draw `j` — each sent to a node, receipted, checked and
//! audited on its own like any other: the body of answer `(i, j)` is the request's body with
//! `prompt` set to prompt `i`, without `n`, and with `seed` set to the request's seed plus
//! `j` (a seed the gateway draws when the request names none), so the draws differ and each
//! can be re-executed exactly. All answers are held for at admission, asked at once (the
//! engine batches them), and billed together in one transaction; if any cannot be answered,
//! none is charged and the request fails (a request the node refuses as invalid is refused
//! as such). The answer lists the choices in OpenAI's order (`index = i * n + j`) and, in
//! `sortition.choices`, each one's node, receipt and the exact body its receipt commits to.
//!
//! Not served: streaming several answers (400 naming `stream`), and several answers from a
//! synchronous quorum (400 naming `n`).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sortition_api::{ApiError, ErrorKind};
use sortition_types::{ModelId, NodeId};

use crate::answers::NodeAnswer;
use crate::proxy;
use crate::quorum::{Member, MemberFailure, QuorumRequest, ask, settle_unbilled};
use crate::router::Constraints;
use crate::settle;
use crate::state::GatewayState;
use crate::store::{AuthedKey, CreditHold};

/// Most answers one request may ask for (`n` times the number of prompts).
pub const MAX_CHOICES: usize = 16;

/// The bodies of the answers `body` asks for, when it asks for more than one; `None` for a
/// request of one answer (served as it is). `seed` draws a seed for a request without one.
pub fn split(body: &[u8], seed: impl FnOnce() -> u64) -> Result<Option<Vec<Bytes>>, ApiError> {
    let v: Value = sortition_api::parse_json(body)?;
    let n = match v.get("n") {
        None | Some(Value::Null) => 1,
        Some(x) => match x.as_u64() {
            Some(n @ 1..) => n as usize,
            _ => {
                return Err(ApiError::invalid(
                    "invalid_value",
                    format!("'n' must be a whole number from 1 to {MAX_CHOICES}"),
                )
                .with_param("n"));
            }
        },
    };
    let prompts: Option<Vec<Value>> = match v.get("prompt") {
        Some(Value::Array(list)) if list.len() > 1 && list.iter().all(Value::is_string) => {
            Some(list.clone())
        }
        _ => None,
    };
    let count = prompts.as_ref().map_or(1, Vec::len);
    if n == 1 && count == 1 {
        return Ok(None);
    }
    if n.saturating_mul(count) > MAX_CHOICES {
        return Err(ApiError::invalid(
            "invalid_value",
            format!(
                "this request asks for {} answers ({count} prompts, n={n}); at most \
                 {MAX_CHOICES} per request",
                n.saturating_mul(count)
            ),
        )
        .with_param(if count > 1 { "prompt" } else { "n" }));
    }
    if v.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid(
            "unsupported_parameter",
            "streaming several answers (n > 1 or several prompts) is not served; ask without \
             stream, or stream one answer per request",
        )
        .with_param("stream"));
    }
    let base = match v.get("seed").and_then(Value::as_u64) {
        Some(s) => s,
        None => seed(),
    };
    let mut out = Vec::with_capacity(n * count);
    for i in 0..count {
        for j in 0..n {
            let mut one = v.clone();
            let Some(o) = one.as_object_mut() else {
                return Err(ApiError::invalid(
                    "invalid_body",
                    "the request body must be a JSON object",
                ));
            };
            o.remove("n");
            if let Some(p) = &prompts {
                o.insert("prompt".into(), p[i].clone());
            }
            o.insert("seed".into(), base.wrapping_add(j as u64).into());
            let bytes = serde_json::to_vec(&one).map_err(|e| ApiError::internal(e.to_string()))?;
            out.push(Bytes::from(bytes));
        }
    }
    Ok(Some(out))
}

/// What a split request asks of the network.
pub struct Fanned<'a> {
    pub key: &'a AuthedKey,
    pub model: &'a ModelId,
    /// The worst-case units of each answer (the same bound is held for each).
    pub units: u64,
    pub constraints: &'a Constraints,
    pub path: &'a str,
    pub bodies: Vec<Bytes>,
}

/// Serves every answer of a split request (see the module's documentation) from `hold`,
/// held for all of them at admission.
pub async fn serve(
    g: &Arc<GatewayState>,
    f: Fanned<'_>,
    mut hold: CreditHold,
) -> Result<Response, ApiError> {
    let asked = futures::future::join_all(f.bodies.iter().map(|b| answer_one(g, &f, b))).await;
    let (mut members, mut refused, mut failures) = (Vec::new(), None, Vec::new());
    for (i, a) in asked.into_iter().enumerate() {
        match a {
            Ok(m) => members.push((i, m)),
            Err(e) if e.refused.is_some() => refused = refused.or(e.refused),
            Err(e) => failures.push(format!("answer {i}: {} ({})", e.why, e.node)),
        }
    }
    if refused.is_some() || !failures.is_empty() {
        // Nothing is delivered, so nothing is charged: what the nodes did is settled on their
        // stacks (they claim it) and kept for the auditors.
        for (i, m) in members {
            settle_unbilled(g, &m, &f.bodies[i]).await;
            m.end(false).await;
        }
        return Err(refused.unwrap_or_else(|| {
            ApiError::new(
                ErrorKind::BadGateway,
                "upstream_error",
                format!(
                    "{} of the {} answers could not be served; nothing was charged: {}",
                    failures.len(),
                    f.bodies.len(),
                    failures.join("; ")
                ),
            )
        }));
    }
    let bills: Vec<_> = members
        .iter()
        .map(|(i, m)| {
            let answer = m.value.answer();
            let served = settle::Served::new(&m.receipt, answer.as_ref());
            settle::receipted_bill(g, &m.d, f.key, f.model, &f.bodies[*i], &served)
        })
        .collect();
    // Billed in one transaction before the answer leaves (503 on a storage fault; the
    // leases then return their units).
    if let Err(e) = settle::record(g, &mut hold, &bills).await {
        for (_, m) in members {
            m.end(true).await;
        }
        return Err(e);
    }
    let answer = assemble(f.path, &members, &f.bodies);
    g.metrics
        .inc("fanned_answers_total", "", members.len() as u64);
    for (_, m) in members {
        m.end(false).await;
    }
    Ok(Json(answer).into_response())
}

/// One answer: asked of the best node, then of others (up to [`proxy::MAX_ATTEMPTS`]) when
/// a node fails; a node's refusal of the request ends it.
async fn answer_one(
    g: &Arc<GatewayState>,
    f: &Fanned<'_>,
    body: &Bytes,
) -> Result<Member, MemberFailure> {
    let q = QuorumRequest {
        key: f.key,
        model: f.model,
        units: f.units,
        constraints: f.constraints,
        stream: false,
        size: 1,
        path: f.path,
        body,
    };
    let mut tried: Vec<NodeId> = Vec::new();
    let mut last = None;
    while tried.len() < proxy::MAX_ATTEMPTS {
        let node = {
            let mut r = g.router.lock().await;
            r.choose_quorum(f.model, f.constraints, 1, &tried, Instant::now())
                .ok()
                .and_then(|ids| ids.first().and_then(|id| r.node(*id).cloned()))
        };
        let Some(node) = node else { break };
        match ask(g, node, &q).await {
            Ok(m) => return Ok(m),
            Err(e) if e.refused.is_some() => return Err(e),
            Err(e) => {
                tried.push(e.node);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(MemberFailure {
        node: NodeId(0),
        why: format!("no node could serve {}", f.model),
        refused: None,
    }))
}

/// The answer of a split request: every member's choice at its index, the summed usage, and
/// each choice's node, receipt and body under `sortition.choices`.
fn assemble(path: &str, members: &[(usize, Member)], bodies: &[Bytes]) -> Value {
    let chat = path == "/v1/chat/completions";
    let mut choices = Vec::with_capacity(members.len());
    let mut ext = Vec::with_capacity(members.len());
    let (mut prompt, mut completion) = (0u64, 0u64);
    for (i, m) in members {
        let mut c = m.value["choices"][0].clone();
        c["index"] = json!(i);
        choices.push(c);
        prompt += m.value["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        completion += m.value["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        ext.push(json!({
            "index": i,
            "node": m.d.node.id,
            "receipt": m.receipt,
            "request": String::from_utf8_lossy(&bodies[*i]),
            "verified_by_gateway": true,
        }));
    }
    let first = members.first().map(|(_, m)| &m.value);
    let id = first
        .and_then(|v| v["id"].as_str())
        .unwrap_or(if chat { "chatcmpl" } else { "cmpl" })
        .to_string();
    json!({
        "id": id,
        "object": if chat { "chat.completion" } else { "text_completion" },
        "created": sortition_api::unix_now(),
        "model": first.map(|v| v["model"].clone()).unwrap_or(Value::Null),
        "choices": choices,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
        "sortition": {"choices": ext},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parts(body: Value) -> Result<Option<Vec<Value>>, ApiError> {
        split(body.to_string().as_bytes(), || 100).map(|o| {
            o.map(|v| {
                v.iter()
                    .map(|b| serde_json::from_slice(b).unwrap())
                    .collect()
            })
        })
    }

    #[test]
    fn requests_split_into_one_body_per_answer() {
        assert!(
            parts(json!({"model": "m", "prompt": "a"}))
                .unwrap()
                .is_none()
        );
        assert!(
            parts(json!({"model": "m", "prompt": ["a"], "n": 1}))
                .unwrap()
                .is_none()
        );
        let p = parts(json!({"model": "m", "prompt": ["a", "b"], "n": 2, "seed": 7}))
            .unwrap()
            .unwrap();
        let got: Vec<(String, u64)> = p
            .iter()
            .map(|b| {
                (
                    b["prompt"].as_str().unwrap().into(),
                    b["seed"].as_u64().unwrap(),
                )
            })
            .collect();
        let want = [("a", 7), ("a", 8), ("b", 7), ("b", 8)];
        assert_eq!(got, want.map(|(p, s)| (p.to_string(), s)));
        assert!(p.iter().all(|b| b.get("n").is_none()));
        // No seed: the drawn one, plus j.
        let chat = parts(json!({"model": "m", "messages": [], "n": 3}))
            .unwrap()
            .unwrap();
        let seeds: Vec<u64> = chat.iter().map(|b| b["seed"].as_u64().unwrap()).collect();
        assert_eq!(seeds, [100, 101, 102]);
        for (body, param) in [
            (json!({"model": "m", "messages": [], "n": 0}), "n"),
            (json!({"model": "m", "messages": [], "n": 17}), "n"),
            (
                json!({"model": "m", "prompt": vec!["x"; 9], "n": 2}),
                "prompt",
            ),
            (
                json!({"model": "m", "messages": [], "n": 2, "stream": true}),
                "stream",
            ),
        ] {
            let e = parts(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status().as_u16(), 400);
        }
    }
}
