//! A run's start: the ledger's parameters and genesis, the agents' keys and strategies, and
//! the registration block.

use std::collections::BTreeMap;
use std::time::Instant;

use sortition_ledger::beacon::{self};
use sortition_ledger::{Beacon, Genesis, Ledger, ModelSpec, Offer, Params, SealingKey, TxKind};
use sortition_types::{Amount, Keypair, ModelId, sha256};

use crate::config::{BeaconMode, SimConfig, SimError, Strategy};
use crate::rng::Rng;
use crate::serve::{ReceiptShape, UNITS_PER_REQUEST};
use crate::stats::{NodeStats, Stats, Timings};

use super::*;

impl World {
    /// Genesis, keys and the registration block.
    pub fn new(cfg: SimConfig) -> Result<World, SimError> {
        cfg.validate()?;
        let min = s_min(&cfg)?;
        let stake = cfg.stake.unwrap_or(min).max(1);
        if stake < min {
            return Err(SimError::StakeBelowMinimum { stake, min });
        }
        let mut stats = Stats::default();
        let created = Instant::now();
        let t = Instant::now();
        let keys = keys_for(cfg.seed, cfg.nodes as usize);
        let gateways: Vec<Keypair> = (0..GATEWAYS)
            .map(|i| Keypair::from_seed(format!("sim-{}-gateway-{i}", cfg.seed).as_bytes()))
            .collect();
        let admin = Keypair::from_seed(format!("sim-{}-admin", cfg.seed).as_bytes());
        Timings::add(&mut stats.timings.keys, t.elapsed());

        let t = Instant::now();
        let stacks = cfg.requests.div_ceil(cfg.receipts_per_claim);
        let escrow_per_stack = cfg
            .receipts_per_claim
            .checked_mul(UNITS_PER_REQUEST)
            .and_then(|u| stack_cost(u, cfg.price_per_m))
            .ok_or(SimError::StakeOverflow {
                nodes: cfg.nodes,
                stake,
            })?;
        let per_gateway = stacks
            .div_ceil(GATEWAYS as u64)
            .checked_mul(escrow_per_stack.0)
            .ok_or(SimError::StakeOverflow {
                nodes: cfg.nodes,
                stake,
            })?;
        let (beacon_cfg, share) = match cfg.beacon {
            BeaconMode::Threshold => {
                let seed = sha256(format!("sim-beacon-{}", cfg.seed).as_bytes()).0;
                let (c, mut shares) =
                    beacon::deal_from_seed(seed, 1).map_err(|e| SimError::Ledger(e.to_string()))?;
                (c, shares.remove(0))
            }
            BeaconMode::Predictable => (
                beacon::insecure_test_group().0,
                beacon::insecure_test_share().map_err(|e| SimError::Ledger(e.to_string()))?,
            ),
        };
        let shape = ReceiptShape {
            model: ModelId::new("sim-model"),
            model_digest: sha256(b"sim-weights"),
            classes: (0..cfg.classes)
                .map(|i| ReceiptShape::class(i).fingerprint())
                .collect(),
        };
        let mut g = Genesis::devnet(CHAIN, admin.public());
        g.beacon = beacon_cfg;
        g.params = params(&cfg);
        g.models = vec![ModelSpec {
            id: shape.model.clone(),
            weights_digest: shape.model_digest,
            tokenizer_digest: sha256(b"sim-tokenizer"),
            policy: policy(&cfg),
        }];
        // Audit rewards come from the treasury: room for every possible one.
        g.treasury = Amount(
            cfg.requests
                .saturating_mul(u64::from(cfg.k))
                .saturating_mul(cfg.reward)
                .min(u64::MAX / 8),
        );
        let mut supply = u128::from(g.treasury.0);
        for k in &keys {
            g.balances.push((k.public(), Amount(stake)));
            supply += u128::from(stake);
        }
        for k in &gateways {
            g.balances.push((k.public(), Amount(per_gateway)));
            supply += u128::from(per_gateway);
        }
        if supply >= u128::from(u64::MAX) {
            return Err(SimError::StakeOverflow {
                nodes: cfg.nodes,
                stake,
            });
        }
        let ledger = Ledger::new(&g).map_err(|e| SimError::Ledger(e.to_string()))?;
        let (pcfg, _) = beacon::insecure_test_group();
        let predictor = Beacon::new(CHAIN, &pcfg).map_err(|e| SimError::Ledger(e.to_string()))?;
        let predictor_share =
            beacon::insecure_test_share().map_err(|e| SimError::Ledger(e.to_string()))?;
        Timings::add(&mut stats.timings.genesis, t.elapsed());

        let (strategy, class) = assign(&cfg);
        for s in &strategy {
            stats.of(*s).nodes += 1;
        }
        stats.nodes = vec![NodeStats::default(); keys.len()];
        let n = keys.len();
        let mut eligible = vec![BTreeMap::new(); cfg.classes as usize];
        for (i, s) in strategy.iter().enumerate() {
            *eligible[class[i]].entry(*s).or_insert(0u64) += 1;
        }
        let waves = WAVES.min(stacks).max(1);
        let mut w = World {
            rng: Rng::new(cfg.seed, u64::MAX),
            stacks_left: stacks,
            requests_left: cfg.requests,
            stacks_per_wave: stacks.div_ceil(waves),
            cfg,
            ledger,
            share,
            predictor,
            predictor_share,
            shape,
            keys,
            strategy,
            class,
            nonces: vec![0; n],
            gateways,
            gw_nonces: vec![0; GATEWAYS],
            alive: vec![true; n],
            eligible,
            stake,
            min_collateral: min,
            scheduled: BTreeMap::new(),
            pending_claims: vec![],
            claimed: BTreeMap::new(),
            agents: Default::default(),
            slash_cursor: 0,
            created,
            stats,
        };
        let regs: Vec<Action> = (0..n)
            .map(|i| Action {
                signer: Signer::Node(i),
                kind: register(&w, i),
            })
            .collect();
        w.block(regs);
        if w.stats.refused > 0 {
            return Err(SimError::Ledger(format!(
                "registration refused: {:?}",
                w.stats.refusals
            )));
        }
        Ok(w)
    }
}

/// Ledger parameters for a run: short windows (blocks are cheap here), no cap on sampled
/// receipts below the claim size (so the cap does not bias detection; see the README), and
/// claims as large as the run asks.
fn params(cfg: &SimConfig) -> Params {
    Params {
        challenge_window_blocks: 2,
        audit_commit_blocks: 2,
        audit_reveal_blocks: 2,
        dispute_commit_blocks: 2,
        dispute_reveal_blocks: 2,
        epoch_length_blocks: cfg.epoch_blocks.max(1),
        missed_deadline_slash: Amount(1_000),
        wrong_auditor_slash: Amount(5_000),
        max_audits_per_claim: u32::try_from(cfg.receipts_per_claim).unwrap_or(u32::MAX),
        max_receipts_per_claim: cfg.receipts_per_claim,
        ..Params::default()
    }
}

/// The ledger's escrow for `units` at `price_per_m`: `ceil(units * price / 1e6)`.
fn stack_cost(units: u64, price_per_m: u64) -> Option<Amount> {
    let c = (u128::from(units) * u128::from(price_per_m)).div_ceil(1_000_000);
    u64::try_from(c).ok().map(Amount)
}

/// Node keys, derived from the seed (in parallel: ed25519 key expansion is the cost).
fn keys_for(seed: u64, n: usize) -> Vec<Keypair> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = n.div_ceil(threads).max(1);
    let idx: Vec<usize> = (0..n).collect();
    std::thread::scope(|sc| {
        let handles: Vec<_> = idx
            .chunks(chunk)
            .map(|part| {
                sc.spawn(move || {
                    part.iter()
                        .map(|i| Keypair::from_seed(format!("sim-{seed}-node-{i}").as_bytes()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Strategies and classes: nodes dealt to classes round-robin; within each class, each
/// strategy gets its share of the seats (rounded), honest the rest, in a seeded order.
fn assign(cfg: &SimConfig) -> (Vec<Strategy>, Vec<usize>) {
    let n = cfg.nodes as usize;
    let classes = cfg.classes as usize;
    let class: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let mut strategy = vec![Strategy::Honest; n];
    let mut rng = Rng::new(cfg.seed, 0xc1a55);
    for c in 0..classes {
        let mut members: Vec<usize> = (c..n).step_by(classes).collect();
        // Fisher–Yates with the simulator's seed.
        for i in (1..members.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            members.swap(i, j);
        }
        let size = members.len() as f64;
        let mut next = 0;
        let mut acc = 0.0;
        for (s, share) in &cfg.mix.0 {
            acc += share * size;
            let upto = (acc.round() as usize).min(members.len());
            while next < upto {
                strategy[members[next]] = *s;
                next += 1;
            }
        }
    }
    (strategy, class)
}

fn register(w: &World, i: usize) -> TxKind {
    TxKind::RegisterNode {
        endpoint: format!("sim://node-{i}"),
        confidential_key: SealingKey(sha256(format!("sim-ck-{i}").as_bytes())),
        attestation: vec![],
        class: ReceiptShape::class(w.class[i] as u64),
        offers: vec![Offer {
            model: w.shape.model.clone(),
            price_per_m_input: Amount(w.cfg.price_per_m),
            price_per_m_output: Amount(w.cfg.price_per_m),
        }],
        capacity: 64,
        collateral: Amount(w.stake),
    }
}
