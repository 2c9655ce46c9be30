//! The market router: which node serves a request.
//!
//! Owns: the gateway's view of nodes ([`NodeView`], from the ledger) and what it has observed
//! of them ([`NodeStats`]); the market [`score`](score) over price, latency, load, errors,
//! uptime, reputation, collateral and privacy; request [`Constraints`]; power of two choices
//! among the best candidates; quorum selection (one class, distinct operators); and a
//! [`CircuitBreaker`] per node.
//!
//! Time and randomness come in from outside (`now: Instant`, an injectable RNG), so every
//! decision is reproducible in tests. The router is plain state behind `&mut self`; the server
//! wraps it in a mutex (every call is a few microseconds).
//!
//! Does not own: talking to nodes, retries (the caller re-calls [`Router::choose`] with the
//! failed node in `exclude`), or where node views come from.

mod breaker;
mod constraints;
mod score;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use sortition_api::{ApiError, ErrorKind};
use sortition_types::{Amount, Hash32, ModelId, NodeId, PublicKey};

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker};
pub use constraints::{CONSTRAINTS_HEADER, ConstraintError, Constraints, MAX_QUORUM};
pub use score::{NodeStats, RouterWeights, blended_price};

/// A node as the ledger describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    /// Base URL of the node's API.
    pub url: String,
    /// The operator's account key; a quorum never has two nodes of one operator.
    pub operator: PublicKey,
    /// Price per million input tokens.
    pub price_in: Amount,
    /// Price per million output tokens.
    pub price_out: Amount,
    /// Collateral at stake (slashable).
    pub collateral: Amount,
    /// The node class fingerprint: nodes of one class produce identical tokens.
    pub class: Hash32,
    /// Runs in an attested confidential environment.
    pub confidential: bool,
    /// Reputation in thousandths (1000 = perfect).
    pub reputation: u16,
    /// Times slashed.
    pub slashes: u32,
    /// Models the node serves.
    pub models: Vec<ModelId>,
}

/// How a dispatched request ended, reported through [`Router::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered; latencies feed the EWMAs.
    Success {
        ttft: Duration,
        itl: Option<Duration>,
    },
    /// 5xx, timeout, connection failure or an unusable receipt: counts toward the breaker.
    Failure,
    /// The node signed a receipt that its own delivery contradicts (another text, or a part
    /// of the answer no receipt covers): counted as a failure, and the breaker opens at once.
    Misbehaved,
    /// The client went away; neither success nor failure.
    Cancelled,
}

/// Why no node could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("no node serves model {0}")]
    UnknownModel(ModelId),
    #[error("no node serving {0} meets the request's constraints")]
    Unsatisfiable(ModelId),
    #[error("every node serving {0} is unavailable right now")]
    AllUnavailable(ModelId),
    #[error(
        "no class serving {model} has {wanted} available nodes of distinct operators (best: {have})"
    )]
    NoQuorum {
        model: ModelId,
        wanted: u8,
        have: usize,
    },
}

impl From<NoRoute> for ApiError {
    fn from(e: NoRoute) -> Self {
        match &e {
            NoRoute::UnknownModel(_) => {
                ApiError::new(ErrorKind::NotFound, "model_not_found", e.to_string())
            }
            NoRoute::Unsatisfiable(_) | NoRoute::NoQuorum { .. } => {
                ApiError::new(ErrorKind::Unavailable, "no_route", e.to_string())
            }
            NoRoute::AllUnavailable(_) => {
                ApiError::new(ErrorKind::Unavailable, "no_route", e.to_string()).with_retry_after(1)
            }
        }
    }
}

/// One node's entry: the ledger's view, the gateway's observations and its breaker.
#[derive(Clone, Debug)]
struct Entry {
    view: NodeView,
    stats: NodeStats,
    breaker: CircuitBreaker,
}

/// The router's state. `R` is the RNG for power of two choices (seed it in tests).
#[derive(Debug)]
pub struct Router<R = StdRng> {
    /// Score weights and normalization references.
    weights: RouterWeights,
    /// Breaker thresholds for new nodes.
    breaker_cfg: BreakerConfig,
    /// Nodes by id; ordered so iteration (and so every decision) is deterministic.
    nodes: BTreeMap<NodeId, Entry>,
    /// Draws the two choices.
    rng: R,
}

impl Router<StdRng> {
    /// A router seeded from the operating system.
    pub fn new(weights: RouterWeights, breaker_cfg: BreakerConfig) -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Self::with_rng(weights, breaker_cfg, StdRng::seed_from_u64(seed))
    }
}

impl<R: Rng> Router<R> {
    pub fn with_rng(weights: RouterWeights, breaker_cfg: BreakerConfig, rng: R) -> Self {
        Router {
            weights,
            breaker_cfg,
            nodes: BTreeMap::new(),
            rng,
        }
    }

    /// Adds a node or replaces its view, keeping what has been observed of it.
    pub fn upsert_node(&mut self, view: NodeView) {
        match self.nodes.get_mut(&view.id) {
            Some(e) => e.view = view,
            None => {
                let breaker = CircuitBreaker::new(self.breaker_cfg);
                self.nodes.insert(
                    view.id,
                    Entry {
                        view,
                        stats: NodeStats::default(),
                        breaker,
                    },
                );
            }
        }
    }

    /// Forgets a node (deregistered or slashed out).
    pub fn remove_node(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeView> {
        self.nodes.get(&id).map(|e| &e.view)
    }

    pub fn stats(&self, id: NodeId) -> Option<&NodeStats> {
        self.nodes.get(&id).map(|e| &e.stats)
    }

    pub fn breaker_state(&self, id: NodeId, now: Instant) -> Option<BreakerState> {
        self.nodes.get(&id).map(|e| e.breaker.state(now))
    }

    /// Records a health report (`GET /health`): up or down, and the node's queue depth.
    pub fn record_health(&mut self, id: NodeId, healthy: bool, queue_depth: u32) {
        let alpha = self.weights.ewma_alpha;
        if let Some(e) = self.nodes.get_mut(&id) {
            e.stats.record_health(healthy, queue_depth, alpha);
        }
    }

    /// Ends a request that [`choose`](Self::choose) or [`choose_quorum`](Self::choose_quorum)
    /// dispatched to `id`.
    pub fn finish(&mut self, id: NodeId, outcome: Outcome, now: Instant) {
        let alpha = self.weights.ewma_alpha;
        let Some(e) = self.nodes.get_mut(&id) else {
            return;
        };
        e.stats.in_flight = e.stats.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Success { ttft, itl } => {
                e.stats.record_success(ttft, itl, alpha);
                e.breaker.on_success();
            }
            Outcome::Failure => {
                e.stats.record_failure(alpha);
                e.breaker.on_failure(now);
            }
            Outcome::Misbehaved => {
                e.stats.record_failure(alpha);
                e.breaker.trip(now);
            }
            Outcome::Cancelled => {}
        }
    }

    /// Eligible nodes with their scores, best first (ties by node id).
    fn candidates(
        &self,
        model: &ModelId,
        c: &Constraints,
        exclude: &[NodeId],
        now: Instant,
    ) -> Result<Vec<(NodeId, f64)>, NoRoute> {
        let serving: Vec<&Entry> = self
            .nodes
            .values()
            .filter(|e| e.view.models.contains(model))
            .collect();
        if serving.is_empty() {
            return Err(NoRoute::UnknownModel(model.clone()));
        }
        let admitted: Vec<&Entry> = serving.into_iter().filter(|e| c.admits(&e.view)).collect();
        if admitted.is_empty() {
            return Err(NoRoute::Unsatisfiable(model.clone()));
        }
        let live: Vec<&Entry> = admitted
            .into_iter()
            .filter(|e| !exclude.contains(&e.view.id) && e.breaker.allows(now))
            .collect();
        if live.is_empty() {
            return Err(NoRoute::AllUnavailable(model.clone()));
        }
        let base = score::Baseline::of(live.iter().map(|e| (&e.view, &e.stats)), &self.weights);
        let mut scored: Vec<(NodeId, f64)> = live
            .iter()
            .map(|e| {
                (
                    e.view.id,
                    score::score(&e.view, &e.stats, base, &self.weights),
                )
            })
            .collect();
        scored.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        Ok(scored)
    }

    /// Counts a request sent to `id` that the router did not choose (a client named the node):
    /// its end is reported with [`finish`](Self::finish) like any other.
    pub fn engage(&mut self, id: NodeId, now: Instant) {
        self.dispatch(id, now);
    }

    fn dispatch(&mut self, id: NodeId, now: Instant) {
        if let Some(e) = self.nodes.get_mut(&id) {
            e.stats.in_flight = e.stats.in_flight.saturating_add(1);
            e.breaker.on_dispatch(now);
        }
    }

    /// Picks one node for `model`: power of two choices among the `top_k` best-scored eligible
    /// nodes, skipping `exclude` (nodes that already failed this request) and open breakers.
    /// The choice counts as dispatched; report its end with [`finish`](Self::finish).
    pub fn choose(
        &mut self,
        model: &ModelId,
        c: &Constraints,
        exclude: &[NodeId],
        now: Instant,
    ) -> Result<NodeId, NoRoute> {
        let scored = self.candidates(model, c, exclude, now)?;
        let top = &scored[..scored.len().min(self.weights.top_k.max(1))];
        let pick = if top.len() == 1 {
            top[0].0
        } else {
            let i = self.rng.random_range(0..top.len());
            let mut j = self.rng.random_range(0..top.len() - 1);
            if j >= i {
                j += 1;
            }
            // Ties go to the first draw, so equal nodes share load evenly.
            if top[j].1 < top[i].1 {
                top[j].0
            } else {
                top[i].0
            }
        };
        self.dispatch(pick, now);
        Ok(pick)
    }

    /// Picks `n` nodes of one class with distinct operators, from the class whose best `n`
    /// (one per operator) have the lowest total score. All count as dispatched.
    pub fn choose_quorum(
        &mut self,
        model: &ModelId,
        c: &Constraints,
        n: u8,
        exclude: &[NodeId],
        now: Instant,
    ) -> Result<Vec<NodeId>, NoRoute> {
        let wanted = usize::from(n);
        let scored = self.candidates(model, c, exclude, now)?;
        // Per class, best first, one node per operator.
        let mut classes: BTreeMap<Hash32, ClassPick> = BTreeMap::new();
        for (id, s) in scored {
            let Some(e) = self.nodes.get(&id) else {
                continue;
            };
            let (ops, picked) = classes.entry(e.view.class).or_default();
            if picked.len() < wanted && !ops.contains(&e.view.operator) {
                ops.push(e.view.operator);
                picked.push((id, s));
            }
        }
        let have = classes.values().map(|(_, p)| p.len()).max().unwrap_or(0);
        let best = classes
            .into_values()
            .map(|(_, p)| p)
            .filter(|p| p.len() == wanted)
            .min_by(|a, b| total(a).total_cmp(&total(b)))
            .ok_or_else(|| NoRoute::NoQuorum {
                model: model.clone(),
                wanted: n,
                have,
            })?;
        let ids: Vec<NodeId> = best.into_iter().map(|(id, _)| id).collect();
        for id in &ids {
            self.dispatch(*id, now);
        }
        Ok(ids)
    }

    /// How many requests this gateway has in flight per node (for metrics).
    pub fn in_flight(&self) -> HashMap<NodeId, u32> {
        self.nodes
            .iter()
            .map(|(id, e)| (*id, e.stats.in_flight))
            .collect()
    }
}

/// Per class: the operators already picked and the picks (node, score), best first.
type ClassPick = (Vec<PublicKey>, Vec<(NodeId, f64)>);

fn total(p: &[(NodeId, f64)]) -> f64 {
    p.iter().map(|(_, s)| s).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
