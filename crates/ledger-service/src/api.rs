//! The HTTP JSON API (axum). Routes are listed in [`router`]; errors map in `error.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sortition_ledger::SignedTx;
use sortition_types::{AuditId, ClaimId, DisputeId, Hash32, ModelId, NodeId, PublicKey, StackId};

use sortition_ledger_api::{
    BlockResponse, MAX_TX_BATCH, StatusResponse, TxBatchItem, TxLocation, TxResponse, records,
};

use crate::error::ApiError;
use crate::sequencer::{Handle, Included, SubmitError};

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(h: Handle) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/tx", post(submit))
        .route("/v1/tx/batch", post(submit_batch))
        .route("/v1/txs/{hash}", get(find_tx))
        .route("/v1/status", get(status))
        .route("/v1/genesis", get(genesis))
        .route("/v1/blocks/{height}", get(block))
        .route("/v1/accounts/{pk}", get(account))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", get(node))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/stacks", get(stacks))
        .route("/v1/stacks/{id}", get(stack))
        .route("/v1/claims/{id}", get(claim))
        .route("/v1/audits", get(audits))
        .route("/v1/audits/{id}", get(audit))
        .route("/v1/disputes", get(disputes))
        .route("/v1/disputes/{id}", get(dispute))
        .route("/v1/slashes", get(slashes))
        .route("/v1/validator-faults", get(validator_faults))
        .route("/v1/supply", get(supply))
        .route("/v1/events", get(crate::sse::events))
        .route("/v1/heads", get(crate::sse::heads))
        .with_state(h)
}

async fn submit(
    State(h): State<Handle>,
    body: Result<Json<SignedTx>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<TxResponse> {
    let Json(tx) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(answer(h.submit(tx).await)?))
}

/// What a submission's outcome is answered with.
fn answer(r: Result<Included, SubmitError>) -> Result<TxResponse, ApiError> {
    let inc = r.map_err(|e| match e {
        SubmitError::Refused(l) => ApiError::Ledger(l),
        SubmitError::Service(s) => ApiError::Service(s),
    })?;
    let events = inc.result?;
    Ok(TxResponse {
        height: inc.height,
        index: inc.index,
        tx_hash: inc.tx_hash,
        events,
    })
}

/// `POST /v1/tx/batch`: several transactions sequenced in the order sent (one sender's
/// pipelined nonces), each answered as `POST /v1/tx` would answer it alone.
async fn submit_batch(
    State(h): State<Handle>,
    body: Result<Json<Vec<SignedTx>>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Vec<TxBatchItem>> {
    let Json(txs) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if txs.is_empty() || txs.len() > MAX_TX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1 to {MAX_TX_BATCH} transactions, not {}",
            txs.len()
        )));
    }
    let items = h
        .submit_many(txs)
        .await
        .into_iter()
        .map(|r| match answer(r) {
            Ok(t) => TxBatchItem::Included(t),
            Err(e) => {
                let (status, body) = e.parts();
                TxBatchItem::Refused {
                    status: status.as_u16(),
                    body,
                }
            }
        })
        .collect();
    Ok(Json(items))
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("malformed {what}: {s}")))
}

fn found<T>(v: Option<T>, what: String) -> ApiResult<T> {
    v.map(Json).ok_or(ApiError::NotFound(what))
}

async fn find_tx(State(h): State<Handle>, Path(hash): Path<String>) -> ApiResult<TxLocation> {
    let hash: Hash32 = parse(&hash, "tx hash")?;
    found(
        h.find_tx(&hash)
            .map(|(height, index)| TxLocation { height, index }),
        format!("tx {hash}"),
    )
}

async fn status(State(h): State<Handle>) -> Json<StatusResponse> {
    Json(h.with_ledger(|l| StatusResponse {
        chain_id: l.state().chain_id.clone(),
        height: l.height(),
        state_root: l.state_root(),
        timestamp: l.state().timestamp_ms,
        epoch: l.state().epoch,
        epoch_nonce: l.state().epoch_nonce,
        validators: h.shared().genesis.validators.clone(),
    }))
}

async fn genesis(State(h): State<Handle>) -> Json<Value> {
    Json(serde_json::to_value(&h.shared().genesis).unwrap_or_default())
}

async fn block(State(h): State<Handle>, Path(height): Path<String>) -> ApiResult<BlockResponse> {
    let height: u64 = height
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{height:?} is not a block height")))?;
    let b = h
        .shared()
        .store
        .block(height)?
        .ok_or_else(|| ApiError::NotFound(format!("block {height}")))?;
    Ok(Json(BlockResponse {
        height: b.ctx.height,
        timestamp_ms: b.ctx.timestamp_ms,
        state_root: b.state_root,
        randomness: b.ctx.randomness(),
        beacon: b.ctx.beacon,
        tx_count: b.txs.len(),
        certificate: h.shared().store.certificate(height)?.map(hex::encode),
    }))
}

async fn account(State(h): State<Handle>, Path(pk): Path<String>) -> ApiResult<records::Account> {
    let pk: PublicKey = parse(&pk, "public key")?;
    Ok(Json(h.with_ledger(|l| {
        records::Account::from(&l.state().account(&pk))
    })))
}

/// The records of `items`, as the API serves them.
fn list<'a, S: 'a, R: From<&'a S>>(items: impl IntoIterator<Item = &'a S>) -> Vec<R> {
    items.into_iter().map(R::from).collect()
}

async fn nodes(State(h): State<Handle>) -> Json<Value> {
    Json(h.with_ledger(|l| json!(list::<_, records::Node>(l.state().nodes.values()))))
}

async fn node(State(h): State<Handle>, Path(id): Path<String>) -> ApiResult<Value> {
    let id: NodeId = parse(&id, "node id")?;
    found(
        h.with_ledger(|l| l.state().node(id).map(|n| json!(records::Node::from(n)))),
        id.to_string(),
    )
}

async fn models(State(h): State<Handle>) -> Json<Value> {
    Json(h.with_ledger(|l| json!(list::<_, records::ModelEntry>(l.state().models.values()))))
}

async fn model(State(h): State<Handle>, Path(id): Path<String>) -> ApiResult<Value> {
    let id = ModelId::new(id);
    found(
        h.with_ledger(|l| {
            l.state()
                .model(&id)
                .map(|m| json!(records::ModelEntry::from(m)))
        }),
        id.to_string(),
    )
}

#[derive(Deserialize)]
struct StackQuery {
    owner: Option<String>,
}

async fn stacks(State(h): State<Handle>, Query(q): Query<StackQuery>) -> ApiResult<Value> {
    let owner: Option<PublicKey> = q.owner.as_deref().map(|o| parse(o, "owner")).transpose()?;
    Ok(Json(h.with_ledger(|l| {
        let st = l.state();
        json!(list::<_, records::Stack>(
            st.stacks
                .values()
                .filter(|s| owner.is_none_or(|o| s.owner == o))
        ))
    })))
}

async fn stack(State(h): State<Handle>, Path(id): Path<String>) -> ApiResult<Value> {
    let id: StackId = parse(&id, "stack id")?;
    found(
        h.with_ledger(|l| l.state().stack(id).map(|s| json!(records::Stack::from(s)))),
        id.to_string(),
    )
}

async fn claim(State(h): State<Handle>, Path(id): Path<String>) -> ApiResult<Value> {
    let id: ClaimId = parse(&id, "claim id")?;
    found(
        h.with_ledger(|l| l.state().claim(id).map(|c| json!(records::Claim::from(c)))),
        id.to_string(),
    )
}

#[derive(Deserialize)]
struct AuditQuery {
    auditor: Option<String>,
    open: Option<bool>,
}

async fn audits(State(h): State<Handle>, Query(q): Query<AuditQuery>) -> ApiResult<Value> {
    let auditor: Option<NodeId> = q
        .auditor
        .as_deref()
        .map(|a| parse(a, "auditor"))
        .transpose()?;
    let open = q.open.unwrap_or(false);
    Ok(Json(h.with_ledger(|l| {
        let st = l.state();
        let found: Vec<_> = match auditor {
            Some(a) => st.audits_of(a, open),
            None if open => st
                .open_audits
                .iter()
                .filter_map(|id| st.audit(*id))
                .collect(),
            None => st.audits.values().collect(),
        };
        json!(list::<_, records::Audit>(found))
    })))
}

async fn audit(State(h): State<Handle>, Path(id): Path<String>) -> ApiResult<Value> {
    let id: AuditId = parse(&id, "audit id")?;
    found(
        h.with_ledger(|l| l.state().audit(id).map(|a| json!(records::Audit::from(a)))),
        id.to_string(),
    )
}

async fn disputes(State(h): State<Handle>) -> Json<Value> {
    Json(h.with_ledger(|l| json!(list::<_, records::Dispute>(l.state().disputes.values()))))
}

async fn dispute(State(h): State<Handle>, Path(id): Path<String>) -> ApiResult<Value> {
    let id: DisputeId = parse(&id, "dispute id")?;
    found(
        h.with_ledger(|l| {
            l.state()
                .disputes
                .get(&id)
                .map(|d| json!(records::Dispute::from(d)))
        }),
        id.to_string(),
    )
}

async fn slashes(State(h): State<Handle>) -> Json<Value> {
    Json(h.with_ledger(|l| json!(list::<_, records::SlashRecord>(&l.state().slashes))))
}

/// Validators proven to have signed conflicting consensus votes (see
/// `sortition_ledger::validator_faults`), by validator key, then view.
async fn validator_faults(State(h): State<Handle>) -> Json<Value> {
    Json(h.with_ledger(|l| json!(l.state().validator_faults.values().collect::<Vec<_>>())))
}

async fn supply(State(h): State<Handle>) -> Json<Value> {
    Json(h.with_ledger(|l| json!(l.state().supply())))
}

async fn metrics(State(h): State<Handle>) -> impl IntoResponse {
    let m = &h.shared().metrics;
    let mut v = BTreeMap::new();
    v.insert("sortition_ledger_height", m.height.load(Ordering::Relaxed));
    v.insert(
        "sortition_ledger_txs_applied_total",
        m.txs_applied.load(Ordering::Relaxed),
    );
    v.insert(
        "sortition_ledger_tx_errors_total",
        m.tx_errors.load(Ordering::Relaxed),
    );
    v.insert(
        "sortition_ledger_blocks_total",
        m.blocks.load(Ordering::Relaxed),
    );
    v.insert(
        "sortition_ledger_block_apply_microseconds_total",
        m.block_apply_us_total.load(Ordering::Relaxed),
    );
    v.insert(
        "sortition_ledger_block_persist_microseconds_total",
        m.block_persist_us_total.load(Ordering::Relaxed),
    );
    let body: String = v
        .iter()
        .map(|(k, x)| {
            format!(
                "# TYPE {k} {}\n{k} {x}\n",
                if k.ends_with("total") {
                    "counter"
                } else {
                    "gauge"
                }
            )
        })
        .collect();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}
