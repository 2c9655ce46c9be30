//! Admission: the API key authenticated, the request's worst-case cost held against the key's
//! credits and budget, its route constraints and quorum size read, and a slot of the global
//! in-flight cap taken.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sortition_api::*;
use sortition_types::ModelId;

use crate::directory::RouterQueries;
use crate::directory::cost;
use crate::router::Constraints;
use crate::state::GatewayState;
use crate::store::{AuthedKey, CreditHold};

/// An authenticated, admitted request: its key, the parsed essentials, and the credit held for
/// its worst-case cost (released if it is dropped before its bill settles it).
pub(crate) struct Admitted {
    pub(crate) key: AuthedKey,
    pub(crate) model: ModelId,
    pub(crate) stream: bool,
    pub(crate) units: u64,
    pub(crate) constraints: Constraints,
    /// How many nodes answer it (a synchronous quorum when above 1); each is paid.
    pub(crate) size: u8,
    pub(crate) hold: CreditHold,
    pub(crate) _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What a request asks of the network, for admission.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Asked {
    /// This many generations (several when the gateway splits `n` > 1 or several prompts),
    /// each from a synchronous quorum where policy or the request asks for one.
    Generations(u64),
    /// Embeddings: one node.
    Embeddings,
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// Authenticates the API key and applies its rate limit: the first thing every route does,
/// so an unauthenticated caller learns nothing about the request's validity.
pub(crate) async fn authenticate(
    g: &Arc<GatewayState>,
    headers: &HeaderMap,
) -> Result<AuthedKey, ApiError> {
    let key = g.store.authenticate(bearer(headers)).await?;
    g.limiter.check(key.key_id, key.rpm)?;
    Ok(key)
}

/// Admits a request: parses its constraints, then holds its worst-case cost (`units` at the
/// dearest serving node's price, once per quorum member when `quorum` lets the model's policy
/// or the constraints ask for one) against the key's credits and budget, atomically, before
/// any node is asked. A request that cannot be held for gets the quota error (429
/// `insufficient_credits` or `key_budget_exceeded`), or a 503 when the store cannot write.
pub(crate) async fn admit(
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
