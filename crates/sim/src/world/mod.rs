//! The simulated network around one real [`Ledger`]: genesis, keys, the block loop (sign,
//! verify, apply, end block) and the workload (gateways buying stacks, nodes serving and
//! claiming them). Reactions to the ledger's events (auditors, committees, executors
//! submitting receipts) are in `agents`.
//!
//! Blocks are applied with the ledger's public `begin_block` / `apply_tx` / `end_block`, the
//! same steps `apply_verified` takes, minus the state root it hashes after every block (the
//! whole state, serialized): the simulator hashes it once, at the end, and reports it.
//! Transactions are signed and verified like any client's and sequencer's (in parallel, as
//! the sequencer does at submission); the ledger only accepts a [`VerifiedTx`].

pub mod agents;
mod setup;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sortition_ledger::beacon::{below, draw};
use sortition_ledger::policy::PPM;
use sortition_ledger::{
    AuditPolicy, Beacon, Event, Ledger, SecretShare, SecurityPolicy, Tx, TxKind, VerifiedTx,
    min_collateral,
};
use sortition_types::{Amount, Hash32, Keypair, NodeId, StackId, Units};

use crate::config::{SimConfig, SimError, Strategy};
use crate::rng::Rng;
use crate::serve::{ReceiptShape, Served, UNITS_PER_REQUEST, serve};
use crate::stats::{Stats, Timings};

pub const CHAIN: &str = "sortition-sim";
const BLOCK_MS: u64 = 1_000;
/// Blocks over which the gateways buy the run's stacks.
const WAVES: u64 = 20;
const GATEWAYS: usize = 8;

/// Who signs a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Node(usize),
    Gateway(usize),
}

/// A transaction to send in a given block.
#[derive(Debug, Clone)]
pub struct Action {
    pub signer: Signer,
    pub kind: TxKind,
}

/// The model's policy from the run's parameters.
pub fn policy(cfg: &SimConfig) -> SecurityPolicy {
    SecurityPolicy {
        audit: Some(AuditPolicy {
            q_ppm: cfg.q_ppm(),
            k: cfg.k,
            method: Default::default(),
        }),
        quorum: None,
        confidential_required: false,
        slash_bps: 10_000,
        cost_per_request: Amount(cfg.cost),
        audit_reward: Amount(cfg.reward),
        colluding_share_ppm: cfg.policy_r_ppm(),
    }
}

/// The ledger's minimum collateral for the run's policy (its `S_min`).
pub fn s_min(cfg: &SimConfig) -> Result<u64, SimError> {
    min_collateral(&policy(cfg))
        .map(|a| a.0)
        .map_err(|e| SimError::Policy(e.to_string()))
}

pub struct World {
    pub cfg: SimConfig,
    pub ledger: Ledger,
    share: SecretShare,
    /// The timing dodger's model of the beacon: the published test group. Right when the
    /// ledger runs that group (predictable), worthless against a freshly dealt one.
    predictor: Beacon,
    predictor_share: SecretShare,
    pub shape: ReceiptShape,
    pub keys: Vec<Keypair>,
    pub strategy: Vec<Strategy>,
    pub class: Vec<usize>,
    nonces: Vec<u64>,
    gateways: Vec<Keypair>,
    gw_nonces: Vec<u64>,
    /// Nodes a gateway may still buy from (not slashed below the minimum).
    pub alive: Vec<bool>,
    /// Per class: eligible nodes by strategy (the pools auditors and committees come from).
    pub eligible: Vec<BTreeMap<Strategy, u64>>,
    pub stake: u64,
    pub min_collateral: u64,
    rng: Rng,
    pub scheduled: BTreeMap<u64, Vec<Action>>,
    /// Served stacks waiting to be claimed (in order).
    pending_claims: Vec<Served>,
    /// Claimed stacks waiting for their sample.
    pub claimed: BTreeMap<StackId, Served>,
    pub agents: agents::Agents,
    stacks_left: u64,
    requests_left: u64,
    stacks_per_wave: u64,
    slash_cursor: usize,
    /// When the world began to be built (keys, genesis, registration count in the total).
    created: Instant,
    pub stats: Stats,
}

impl World {
    pub fn node_id(&self, i: usize) -> NodeId {
        NodeId(i as u64)
    }

    /// Whether the workload is done and the ledger has nothing open.
    pub fn finished(&self) -> bool {
        let st = self.ledger.state();
        self.stacks_left == 0
            && self.pending_claims.is_empty()
            && self.scheduled.is_empty()
            && st.claim_queue.is_empty()
            && st.open_audits.is_empty()
            && st.open_disputes.is_empty()
            && st.pending_draws.is_empty()
    }

    /// Share of the workload bought so far.
    pub fn progress(&self) -> f64 {
        1.0 - self.requests_left as f64 / self.cfg.requests as f64
    }

    /// One step of the run: this block's purchases, claims and scheduled reactions.
    pub fn step(&mut self) {
        let height = self.ledger.height() + 1;
        let mut actions = self.scheduled.remove(&height).unwrap_or_default();
        actions.extend(self.claims(height));
        actions.extend(self.purchases());
        self.block(actions);
    }

    /// Runs to the end, or until `stop` is set (then what was done so far is reported).
    pub fn run(&mut self, stop: &AtomicBool, mut on_block: impl FnMut(&World)) -> bool {
        let mut interrupted = false;
        while !self.finished() {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            self.step();
            on_block(self);
            if self.stats.blocks > 100_000 {
                break;
            }
        }
        let t = Instant::now();
        let _root = self.ledger.state_root();
        Timings::add(&mut self.stats.timings.state_root, t.elapsed());
        self.stats.timings.total = self.created.elapsed().as_secs_f64();
        interrupted
    }

    /// Gateways buy this wave's stacks, each from a node drawn among those still eligible.
    fn purchases(&mut self) -> Vec<Action> {
        let mut out = vec![];
        let wave = self.stacks_per_wave.min(self.stacks_left);
        for j in 0..wave {
            let Some(node) = self.pick_executor() else {
                // Every node was slashed out: nobody left to buy from.
                self.stats.refusals.push(format!(
                    "no eligible node left: {} requests not served",
                    self.requests_left
                ));
                self.stacks_left = 0;
                self.requests_left = 0;
                break;
            };
            let count = self.cfg.receipts_per_claim.min(self.requests_left);
            self.requests_left -= count;
            self.stacks_left -= 1;
            let g = (self.stats.blocks + j) as usize % GATEWAYS;
            out.push(Action {
                signer: Signer::Gateway(g),
                kind: TxKind::BuyStack {
                    model: self.shape.model.clone(),
                    node: Some(self.node_id(node)),
                    max_price_per_m: Amount(self.cfg.price_per_m),
                    units: Units(count * UNITS_PER_REQUEST),
                    expires_at_ms: u64::MAX / 2,
                },
            });
        }
        out
    }

    fn pick_executor(&mut self) -> Option<usize> {
        let n = self.keys.len() as u64;
        for _ in 0..1_000 {
            let i = self.rng.below(n) as usize;
            if self.alive[i] {
                return Some(i);
            }
        }
        self.alive.iter().position(|a| *a)
    }

    /// The claims to include in block `height`. A timing dodger predicts the randomness its
    /// claim will be sampled with (that of `height + 1`) with its model of the beacon, and
    /// waits while that prediction samples one of its cheats.
    fn claims(&mut self, height: u64) -> Vec<Action> {
        // Timing dodgers claim last (see `dodger_plans`).
        let (mut pending, dodgers): (Vec<Served>, Vec<Served>) =
            std::mem::take(&mut self.pending_claims)
                .into_iter()
                .partition(|s| s.strategy != Strategy::TimingDodger);
        pending.extend(dodgers);
        let mut next_claim = self.ledger.state().next_ids.claim;
        let mut predicted = None;
        let mut out = vec![];
        for mut s in pending {
            if s.strategy == Strategy::TimingDodger && s.delayed < self.cfg.dodger_patience {
                let rand = *predicted.get_or_insert_with(|| {
                    self.predictor
                        .sign_alone(&self.predictor_share, height + 1)
                        .map(|sig| sig.randomness())
                        .unwrap_or_default()
                });
                let q = u64::from(self.cfg.q_ppm());
                let hit = s.recs.iter().enumerate().any(|(i, r)| {
                    r.cheat() && below(draw(&rand, "sample", next_claim, i as u64), PPM) < q
                });
                if hit {
                    s.delayed += 1;
                    self.stats.of(s.strategy).dodger_delays += 1;
                    self.pending_claims.push(s);
                    continue;
                }
            }
            next_claim += 1;
            out.push(Action {
                signer: Signer::Node(s.node),
                kind: TxKind::ClaimStack {
                    stack: s.stack,
                    units_used: Units(s.units_used),
                    receipts_root: s.root,
                    receipt_count: s.recs.len() as u64,
                },
            });
            s.claimed_at = Some(height);
            self.claimed.insert(s.stack, s);
        }
        out
    }

    /// Signs, verifies and applies one block; then lets the agents react to its events.
    pub fn block(&mut self, actions: Vec<Action>) {
        let t = Instant::now();
        let txs = self.sign_all(actions);
        Timings::add(&mut self.stats.timings.sign_and_verify, t.elapsed());

        let t = Instant::now();
        let ts = self.ledger.state().timestamp_ms + BLOCK_MS;
        let ctx = match self.ledger.next_context(ts, &self.share) {
            Ok(c) => c,
            Err(e) => {
                self.stats.refusals.push(format!("beacon: {e}"));
                return;
            }
        };
        Timings::add(&mut self.stats.timings.beacon, t.elapsed());

        let t = Instant::now();
        if let Err(e) = self.ledger.begin_block(&ctx) {
            self.stats.refusals.push(format!("block: {e}"));
            return;
        }
        let mut events = Vec::new();
        for tx in &txs {
            match self.ledger.apply_tx(&ctx, tx) {
                Ok(ev) => events.extend(ev),
                Err(e) => {
                    self.stats.refused += 1;
                    if self.stats.refusals.len() < 10 {
                        self.stats.refusals.push(format!("{:?}: {e}", tx.tx().kind));
                    }
                }
            }
        }
        Timings::add(&mut self.stats.timings.ledger_txs, t.elapsed());
        let t = Instant::now();
        events.extend(self.ledger.end_block(&ctx));
        Timings::add(&mut self.stats.timings.ledger_end_block, t.elapsed());
        self.stats.blocks += 1;
        self.stats.txs += txs.len() as u64;

        let t = Instant::now();
        let bought: Vec<(StackId, usize)> = events
            .iter()
            .filter_map(|e| match e {
                Event::StackBought { stack, node, .. } => Some((*stack, node.0 as usize)),
                _ => None,
            })
            .collect();
        if !bought.is_empty() {
            self.serve_all(bought);
        }
        Timings::add(&mut self.stats.timings.serve_and_merkle, t.elapsed());

        let t = Instant::now();
        self.react(&events);
        Timings::add(&mut self.stats.timings.agents, t.elapsed());
    }

    fn react(&mut self, events: &[Event]) {
        let height = self.ledger.height();
        let slashes = self.ledger.state().slashes[self.slash_cursor..].to_vec();
        self.slash_cursor += slashes.len();
        agents::react(self, height, events, &slashes);
    }

    /// Serves the stacks just bought (in parallel; results in stack order).
    fn serve_all(&mut self, bought: Vec<(StackId, usize)>) {
        let mut jobs = vec![];
        for (stack, node) in bought {
            let remaining = self.cfg.requests - self.stats.requests_served;
            let count = self.cfg.receipts_per_claim.min(remaining);
            self.stats.requests_served += count;
            jobs.push((stack, node, count));
        }
        let plans = self.dodger_plans(&jobs);
        let jobs: Vec<_> = jobs.into_iter().zip(plans).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = jobs.len().div_ceil(threads).max(1);
        let (cfg, shape, strategy, class) = (&self.cfg, &self.shape, &self.strategy, &self.class);
        let served: Vec<Served> = std::thread::scope(|sc| {
            let handles: Vec<_> = jobs
                .chunks(chunk)
                .map(|part| {
                    sc.spawn(move || {
                        part.iter()
                            .map(|((stack, node, count), plan)| {
                                serve(
                                    cfg,
                                    shape,
                                    class[*node],
                                    *node,
                                    NodeId(*node as u64),
                                    strategy[*node],
                                    *stack,
                                    *count,
                                    *plan,
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        self.pending_claims.extend(served);
    }

    /// Each timing dodger's plan for the stack it serves now: it will claim in the next
    /// block, after every other claim (so its claim id is the next free one past them), and
    /// that claim is sampled with the randomness of the block after, which it predicts with
    /// its model of the beacon.
    fn dodger_plans(&mut self, jobs: &[(StackId, usize, u64)]) -> Vec<Option<(Hash32, u64)>> {
        let dodger = |s: Strategy| s == Strategy::TimingDodger;
        if !jobs.iter().any(|(_, n, _)| dodger(self.strategy[*n])) {
            return vec![None; jobs.len()];
        }
        let sample_height = self.ledger.height() + 2;
        let rand = self
            .predictor
            .sign_alone(&self.predictor_share, sample_height)
            .map(|sig| sig.randomness())
            .unwrap_or_default();
        let others = self
            .pending_claims
            .iter()
            .filter(|s| !dodger(s.strategy))
            .count()
            + jobs
                .iter()
                .filter(|(_, n, _)| !dodger(self.strategy[*n]))
                .count();
        let earlier = self
            .pending_claims
            .iter()
            .filter(|s| dodger(s.strategy))
            .count();
        let mut next = self.ledger.state().next_ids.claim + (others + earlier) as u64;
        jobs.iter()
            .map(|(_, n, _)| {
                dodger(self.strategy[*n]).then(|| {
                    next += 1;
                    (rand, next - 1)
                })
            })
            .collect()
    }

    /// Nonces in order, then signatures and their verification in parallel.
    fn sign_all(&mut self, actions: Vec<Action>) -> Vec<VerifiedTx> {
        let mut txs = Vec::with_capacity(actions.len());
        for a in actions {
            let (key, nonce) = match a.signer {
                Signer::Node(i) => {
                    self.nonces[i] += 1;
                    (i, self.nonces[i] - 1)
                }
                Signer::Gateway(g) => {
                    self.gw_nonces[g] += 1;
                    (usize::MAX - g, self.gw_nonces[g] - 1)
                }
            };
            txs.push((key, nonce, a.kind));
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = txs.len().div_ceil(threads).max(1);
        let (keys, gateways) = (&self.keys, &self.gateways);
        let out: Vec<Option<VerifiedTx>> = std::thread::scope(|sc| {
            let handles: Vec<_> = txs
                .chunks(chunk)
                .map(|part| {
                    sc.spawn(move || {
                        part.iter()
                            .map(|(who, nonce, kind)| {
                                let key = if *who >= usize::MAX - GATEWAYS {
                                    &gateways[usize::MAX - who]
                                } else {
                                    &keys[*who]
                                };
                                Tx {
                                    chain_id: CHAIN.into(),
                                    sender: key.public(),
                                    nonce: *nonce,
                                    expires_at_ms: u64::MAX,
                                    kind: kind.clone(),
                                }
                                .sign(key)
                                .verify()
                                .ok()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        out.into_iter().flatten().collect()
    }

    /// Schedules `action` for block `height`.
    pub fn at(&mut self, height: u64, action: Action) {
        self.scheduled.entry(height).or_default().push(action);
    }
}
