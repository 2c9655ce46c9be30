//! A test chain: a genesis with one audited model, funded users, registered nodes of one class,
//! and helpers that sign with the right nonce and drive blocks.

use sortition_ledger::*;
use sortition_types::{
    Amount, Custody, DisputeId, Hash32, Keypair, MerkleProof, ModelId, NodeClass, NodeId,
    PublicKey, Receipt, SamplingRecord, SignedReceipt, StackId, Units, merkle_root, sha256,
};

pub const CHAIN: &str = "test-chain";
pub const COLLATERAL: Amount = Amount(1_000_000_000);

pub fn model() -> ModelId {
    ModelId::new("m")
}

pub fn class() -> NodeClass {
    NodeClass {
        engine_version: "e1".into(),
        model_digest: sha256(b"w"),
        quantization: "q8".into(),
        device: "cpu".into(),
        kernels: "k".into(),
    }
}

pub fn params() -> Params {
    Params {
        challenge_window_blocks: 2,
        unbonding_blocks: 5,
        // One more than before draws were deferred a block: a test that fixes two draws in a
        // row (each sealing its draw block) still has a block left to commit in.
        audit_commit_blocks: 3,
        audit_reveal_blocks: 2,
        dispute_commit_blocks: 2,
        dispute_reveal_blocks: 2,
        epoch_length_blocks: 10,
        missed_deadline_slash: Amount(1_000),
        wrong_auditor_slash: Amount(5_000),
        ..Params::default()
    }
}

/// q = 1 (every receipt audited), k = 1, C = 1000, R = 100, r = 0: S_min = 900.
pub fn spec(q_ppm: u32) -> ModelSpec {
    ModelSpec {
        id: model(),
        weights_digest: sha256(b"w"),
        tokenizer_digest: sha256(b"t"),
        policy: SecurityPolicy {
            audit: Some(AuditPolicy {
                q_ppm,
                k: 1,
                method: Default::default(),
            }),
            quorum: None,
            confidential_required: false,
            slash_bps: 5_000,
            cost_per_request: Amount(1_000),
            audit_reward: Amount(100),
            colluding_share_ppm: 0,
        },
    }
}

pub struct Chain {
    pub ledger: Ledger,
    pub genesis: Genesis,
    /// The only share of the chain's 1-of-1 beacon group, dealt by [`test_group`].
    pub share: SecretShare,
    pub admin: Keypair,
    pub users: Vec<Keypair>,
    pub nodes: Vec<Keypair>,
}

pub fn key(name: &str, i: usize) -> Keypair {
    Keypair::from_seed(format!("{name}-{i}").as_bytes())
}

/// A beacon group for tests, dealt by the trusted dealer from a fixed seed (so that test runs
/// repeat): `n` validators, threshold the BFT quorum of `n`.
pub fn test_group(n: u32) -> (BeaconConfig, Vec<SecretShare>) {
    use rand_core::SeedableRng;
    beacon::deal(rand_chacha::ChaCha20Rng::from_seed([7; 32]), n).expect("deal")
}

impl Chain {
    /// `n_nodes` registered nodes of one class offering the model at 1000 per million.
    pub fn new(n_nodes: usize, q_ppm: u32) -> Chain {
        Chain::new_with(n_nodes, q_ppm, register_kind)
    }

    /// [`Chain::new`] with node `i` registered by `register(i)`.
    pub fn new_with(n_nodes: usize, q_ppm: u32, register: impl Fn(usize) -> TxKind) -> Chain {
        let admin = key("admin", 0);
        let users: Vec<Keypair> = (0..3).map(|i| key("user", i)).collect();
        let nodes: Vec<Keypair> = (0..n_nodes).map(|i| key("node", i)).collect();
        let mut g = Genesis::devnet(CHAIN, admin.public());
        g.params = params();
        g.models = vec![spec(q_ppm)];
        g.treasury = Amount(1_000_000);
        let (beacon, mut shares) = test_group(1);
        g.beacon = beacon;
        for k in users.iter().chain(nodes.iter()) {
            g.balances.push((k.public(), Amount(10_000_000_000)));
        }
        let mut c = Chain {
            ledger: Ledger::new(&g).expect("genesis"),
            genesis: g,
            share: shares.remove(0),
            admin,
            users,
            nodes,
        };
        let regs: Vec<SignedTx> = (0..n_nodes)
            .map(|i| c.sign(&c.nodes[i].clone(), register(i)))
            .collect();
        let out = c.block(&regs);
        assert!(out.results.iter().all(|r| r.is_ok()), "{:?}", out.results);
        c
    }

    pub fn now(&self) -> u64 {
        self.ledger.state().timestamp_ms
    }

    pub fn sign(&self, k: &Keypair, kind: TxKind) -> SignedTx {
        self.sign_nonce(k, kind, self.ledger.state().account(&k.public()).nonce)
    }

    pub fn sign_nonce(&self, k: &Keypair, kind: TxKind, nonce: u64) -> SignedTx {
        Tx {
            chain_id: CHAIN.into(),
            sender: k.public(),
            nonce,
            expires_at_ms: u64::MAX,
            kind,
        }
        .sign(k)
    }

    /// The next block's context at `timestamp_ms`, its beacon signed with the test share.
    pub fn next_context(&self, timestamp_ms: u64) -> BlockContext {
        self.ledger
            .next_context(timestamp_ms, &self.share)
            .expect("beacon")
    }

    /// One block, one second after the previous, and no more.
    pub fn seal(&mut self, txs: &[SignedTx]) -> BlockOutcome {
        let ctx = self.next_context(self.now() + 1_000);
        self.ledger.apply_block(ctx, txs).expect("block")
    }

    /// One block, one second after the previous. Draws it fixed (claim samples, challengers,
    /// committees) happen at the end of the next block, with that block's beacon. When those
    /// draws open something (an audit or a dispute), this seals that next (empty) block at once
    /// — a live sequencer does on its next tick — and returns its end-of-block events with this
    /// block's (and its state root), so a test sees what its transaction led to; a draw that
    /// opens nothing waits for the test's next block, as it would live.
    pub fn block(&mut self, txs: &[SignedTx]) -> BlockOutcome {
        let mut out = self.seal(txs);
        if !self.ledger.state().pending_draws.is_empty() {
            let mut probe = self.ledger.clone();
            let ctx = self.next_context(self.now() + 1_000);
            let next = probe.apply_block(ctx, &[]).expect("block");
            let opened = next
                .end_block_events
                .iter()
                .any(|e| matches!(e, Event::AuditOpened { .. } | Event::DisputeOpened { .. }));
            if opened {
                self.ledger = probe;
                out.end_block_events.extend(next.end_block_events);
                out.state_root = next.state_root;
            }
        }
        out
    }

    /// One transaction in its own block; returns its result and the block's end events.
    pub fn tx(&mut self, k: &Keypair, kind: TxKind) -> (TxResult, Vec<Event>) {
        let t = self.sign(k, kind);
        let mut out = self.block(&[t]);
        (out.results.remove(0), out.end_block_events)
    }

    pub fn ok(&mut self, k: &Keypair, kind: TxKind) -> Vec<Event> {
        let (r, mut end) = self.tx(k, kind);
        let mut ev = r.unwrap_or_else(|e| panic!("tx refused: {e}"));
        ev.append(&mut end);
        ev
    }

    /// Several transactions (distinct senders) in one block, all of which must succeed.
    pub fn all_ok(&mut self, txs: Vec<(Keypair, TxKind)>) -> Vec<Event> {
        let signed: Vec<SignedTx> = txs
            .into_iter()
            .map(|(k, kind)| self.sign(&k, kind))
            .collect();
        let out = self.block(&signed);
        let mut ev = vec![];
        for r in out.results {
            ev.extend(r.unwrap_or_else(|e| panic!("tx refused: {e}")));
        }
        ev.extend(out.end_block_events);
        ev
    }

    /// Empty blocks until `pred` holds (at most 100).
    pub fn run_until(&mut self, mut pred: impl FnMut(&State) -> bool) -> Vec<Event> {
        let mut all = vec![];
        for _ in 0..100 {
            if pred(self.ledger.state()) {
                return all;
            }
            all.extend(self.block(&[]).end_block_events);
        }
        panic!("condition not reached in 100 blocks");
    }

    pub fn balance(&self, pk: &PublicKey) -> Amount {
        self.ledger.state().account(pk).balance
    }

    pub fn node_id(&self, i: usize) -> NodeId {
        *self
            .ledger
            .state()
            .node_by_key
            .get(&self.nodes[i].public())
            .expect("registered")
    }

    pub fn node_key(&self, id: NodeId) -> Keypair {
        let pk = self.ledger.state().nodes[&id].operator;
        self.nodes
            .iter()
            .find(|k| k.public() == pk)
            .expect("known node")
            .clone()
    }
}

/// User 0 buys 1000 units of the model from node 0; returns the stack.
pub fn buy_from_node0(c: &mut Chain) -> StackId {
    let user = c.users[0].clone();
    let n0 = c.node_id(0);
    let ev = c.ok(
        &user,
        TxKind::BuyStack {
            model: model(),
            node: Some(n0),
            max_price_per_m: Amount(1_000_000),
            units: units(1_000),
            expires_at_ms: c.now() + 1_000_000,
        },
    );
    let Event::StackBought { stack, escrow, .. } = ev[0].clone() else {
        panic!("{ev:?}")
    };
    assert_eq!(escrow, Amount(1_000)); // 1000 units * 1_000_000 / 1e6 (max of in/out price)
    stack
}

pub fn register_kind(i: usize) -> TxKind {
    register_with(i, COLLATERAL)
}

pub fn register_with(i: usize, collateral: Amount) -> TxKind {
    TxKind::RegisterNode {
        endpoint: format!("http://node-{i}"),
        confidential_key: SealingKey(sha256(format!("ck{i}").as_bytes())),
        attestation: vec![],
        class: class(),
        offers: vec![Offer {
            model: model(),
            price_per_m_input: Amount(1_000),
            price_per_m_output: Amount(1_000_000),
        }],
        capacity: 8,
        collateral,
    }
}

/// Signed receipts for a stack, their root and a proof builder.
pub struct Receipts {
    pub signed: Vec<SignedReceipt>,
    pub leaves: Vec<Hash32>,
}

impl Receipts {
    /// `n` receipts of plain requests (kept by the gateway).
    pub fn new(node: NodeId, stack: StackId, key: &Keypair, n: u64) -> Receipts {
        Receipts::with_custody(node, stack, key, n, Custody::Gateway)
    }

    /// `n` receipts whose requests are kept by `custody` (the executor: confidential).
    pub fn with_custody(
        node: NodeId,
        stack: StackId,
        key: &Keypair,
        n: u64,
        custody: Custody,
    ) -> Receipts {
        let signed: Vec<SignedReceipt> = (0..n)
            .map(|i| {
                let r = Receipt {
                    node,
                    stack,
                    sequence: i,
                    model: model(),
                    model_digest: sha256(b"w"),
                    node_class: class().fingerprint(),
                    request_hash: sha256(format!("req{i}").as_bytes()),
                    response_hash: sha256(format!("resp{i}").as_bytes()),
                    input_tokens: 10,
                    output_tokens: 10,
                    sampling: SamplingRecord::default(),
                    timestamp_ms: 0,
                    custody,
                };
                SignedReceipt::sign(r, key)
            })
            .collect();
        let leaves = signed.iter().map(|s| s.receipt.digest()).collect();
        Receipts { signed, leaves }
    }
    pub fn root(&self) -> Hash32 {
        merkle_root(&self.leaves)
    }
    pub fn submit(&self, audit: sortition_types::AuditId, index: u64) -> TxKind {
        let proof = MerkleProof::build(&self.leaves, index as usize).expect("index in range");
        TxKind::SubmitReceipt {
            audit,
            receipt: self.signed[index as usize].clone(),
            proof,
        }
    }
}

pub fn salt(i: u64) -> Hash32 {
    sha256(&i.to_le_bytes())
}

pub fn mismatch() -> Verdict {
    Verdict::Mismatch {
        evidence_hash: sha256(b"evidence"),
    }
}

pub fn units(n: u64) -> Units {
    Units(n)
}

/// The dispute opened by `events`, with its committee.
pub fn dispute_opened(events: &[Event]) -> (DisputeId, Vec<NodeId>) {
    events
        .iter()
        .find_map(|e| match e {
            Event::DisputeOpened {
                dispute, committee, ..
            } => Some((*dispute, committee.clone())),
            _ => None,
        })
        .expect("a dispute opened")
}
