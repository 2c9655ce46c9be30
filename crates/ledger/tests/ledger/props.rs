//! Property tests: random transaction sequences, valid and invalid, checked after every
//! transaction for conservation of money, escrow accounting, clamped slashing and atomic
//! refusal; then enough empty blocks must resolve every audit, dispute, claim and stack.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sortition_ledger::*;
use sortition_types::{Amount, AuditId, Custody, Hash32, NodeId, StackId};

use crate::harness::*;

const USERS: usize = 3;
const NODES: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Faucet(usize, u64),
    Transfer(usize, usize, u64),
    Buy(usize, Option<usize>, u64, u64),
    /// (node, stack selector, units, receipt count, requests kept by the executor).
    Claim(usize, usize, u64, u64, bool),
    Commit(usize, usize, u8),
    Reveal(usize, usize),
    Submit(usize, usize),
    Vote(usize, usize, u8),
    /// (sender, stack selector, receipt sequence, kept by the executor): signed by the
    /// stack's node.
    Challenge(usize, usize, u64, bool),
    RevealVote(usize, usize),
    Leave(usize),
    Withdraw(usize),
    Pause(usize),
    Resume(usize),
    BadNonce(usize),
    EndBlock,
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0..USERS + NODES;
    let n = 0..NODES;
    prop_oneof![
        1 => (a.clone(), 0u64..2_000_000).prop_map(|(a, x)| Op::Faucet(a, x)),
        1 => (a.clone(), a.clone(), 0u64..20_000_000_000).prop_map(|(a, b, x)| Op::Transfer(a, b, x)),
        3 => (a.clone(), proptest::option::of(n.clone()), 0u64..50_000, 1u64..40).prop_map(|(a, n, u, e)| Op::Buy(a, n, u, e)),
        3 => (n.clone(), 0usize..50, 0u64..60_000, 0u64..5, any::<bool>()).prop_map(|(n, s, u, c, x)| Op::Claim(n, s, u, c, x)),
        3 => (n.clone(), 0usize..50, 0u8..3).prop_map(|(n, s, m)| Op::Commit(n, s, m)),
        3 => (n.clone(), 0usize..50).prop_map(|(n, s)| Op::Reveal(n, s)),
        2 => (a.clone(), 0usize..50).prop_map(|(a, s)| Op::Submit(a, s)),
        3 => (n.clone(), 0usize..10, 0u8..3).prop_map(|(n, s, m)| Op::Vote(n, s, m)),
        2 => (a.clone(), 0usize..50, 0u64..4, any::<bool>()).prop_map(|(a, s, i, x)| Op::Challenge(a, s, i, x)),
        3 => (n.clone(), 0usize..10).prop_map(|(n, s)| Op::RevealVote(n, s)),
        1 => n.clone().prop_map(Op::Leave),
        1 => n.clone().prop_map(Op::Withdraw),
        1 => n.clone().prop_map(Op::Pause),
        1 => n.clone().prop_map(Op::Resume),
        1 => a.prop_map(Op::BadNonce),
        4 => Just(Op::EndBlock),
    ]
}

struct Runner {
    c: Chain,
    receipts: BTreeMap<StackId, Receipts>,
    secrets: BTreeMap<(usize, u64, bool), (Verdict, Hash32)>,
}

impl Runner {
    fn key(&self, a: usize) -> sortition_types::Keypair {
        if a < USERS {
            self.c.users[a].clone()
        } else {
            self.c.nodes[a - USERS].clone()
        }
    }
    fn nth<T: Copy>(items: impl Iterator<Item = T>, sel: usize) -> Option<T> {
        let v: Vec<T> = items.collect();
        (!v.is_empty()).then(|| v[sel % v.len()])
    }
    fn verdict(m: u8) -> Verdict {
        match m {
            0 => Verdict::Match,
            1 => mismatch(),
            _ => Verdict::Unavailable,
        }
    }

    fn build(&mut self, op: &Op) -> Option<sortition_types::Keypair> {
        None.or(Some(self.key(match op {
            Op::Faucet(a, _)
            | Op::Transfer(a, _, _)
            | Op::Buy(a, ..)
            | Op::Submit(a, _)
            | Op::Challenge(a, ..)
            | Op::BadNonce(a) => *a,
            Op::Claim(n, ..)
            | Op::Commit(n, ..)
            | Op::Reveal(n, _)
            | Op::Vote(n, ..)
            | Op::RevealVote(n, _) => USERS + n,
            Op::Leave(n) | Op::Withdraw(n) | Op::Pause(n) | Op::Resume(n) => USERS + n,
            Op::EndBlock => return None,
        })))
    }

    fn kind(&mut self, op: &Op) -> TxKind {
        let st = self.c.ledger.state();
        let now = st.timestamp_ms;
        let audit = |sel: usize| Self::nth(st.audits.keys().copied(), sel).unwrap_or(AuditId(999));
        let dispute = |sel: usize| {
            Self::nth(st.disputes.keys().copied(), sel).unwrap_or(sortition_types::DisputeId(999))
        };
        match *op {
            Op::Faucet(a, x) => TxKind::Faucet {
                to: self.key(a).public(),
                amount: Amount(x),
            },
            Op::Transfer(_, b, x) => TxKind::Transfer {
                to: self.key(b).public(),
                amount: Amount(x),
            },
            Op::Buy(_, n, u, e) => TxKind::BuyStack {
                model: model(),
                node: n.map(|n| NodeId(n as u64)),
                max_price_per_m: Amount(1_000_000),
                units: units(u),
                expires_at_ms: now + e * 1_000,
            },
            Op::Claim(n, sel, u, count, by_executor) => {
                let stack = Self::nth(st.stacks.keys().copied(), sel).unwrap_or(StackId(999));
                let node = st.stacks.get(&stack).map_or(NodeId(n as u64), |s| s.node);
                let key = self.c.nodes[n].clone();
                let rs = Receipts::with_custody(node, stack, &key, count, custody(by_executor));
                let root = rs.root();
                self.receipts.entry(stack).or_insert(rs);
                TxKind::ClaimStack {
                    stack,
                    units_used: units(u),
                    receipts_root: root,
                    receipt_count: count,
                }
            }
            Op::Commit(n, sel, m) => {
                let a = audit(sel);
                let (v, s) = (Self::verdict(m), salt(sel as u64 * 31 + n as u64));
                self.secrets.insert((n, a.0, false), (v, s));
                TxKind::CommitVerdict {
                    audit: a,
                    commitment: verdict_commitment(&v, &s, &self.c.nodes[n].public()),
                }
            }
            Op::Reveal(n, sel) => {
                let a = audit(sel);
                let (verdict, salt) = self
                    .secrets
                    .get(&(n, a.0, false))
                    .copied()
                    .unwrap_or((Verdict::Match, Hash32::ZERO));
                TxKind::RevealVerdict {
                    audit: a,
                    verdict,
                    salt,
                }
            }
            Op::Submit(_, sel) => {
                let a = audit(sel);
                let (stack, idx) = st
                    .audits
                    .get(&a)
                    .map_or((StackId(999), 0), |x| (x.stack, x.receipt_index));
                match self.receipts.get(&stack) {
                    Some(rs) if (idx as usize) < rs.signed.len() => rs.submit(a, idx),
                    _ => TxKind::PauseNode,
                }
            }
            Op::Vote(n, sel, m) => {
                let d = dispute(sel);
                let (v, s) = (Self::verdict(m), salt(sel as u64 * 17 + n as u64));
                self.secrets.insert((n, d.0, true), (v, s));
                TxKind::CommitVote {
                    dispute: d,
                    commitment: verdict_commitment(&v, &s, &self.c.nodes[n].public()),
                }
            }
            Op::RevealVote(n, sel) => {
                let d = dispute(sel);
                let (verdict, salt) = self
                    .secrets
                    .get(&(n, d.0, true))
                    .copied()
                    .unwrap_or((Verdict::Match, Hash32::ZERO));
                TxKind::RevealVote {
                    dispute: d,
                    verdict,
                    salt,
                }
            }
            Op::Challenge(_, sel, seq, by_executor) => {
                let stack = Self::nth(st.stacks.keys().copied(), sel).unwrap_or(StackId(999));
                let node = st.stacks.get(&stack).map_or(NodeId(0), |s| s.node);
                let key = self.c.nodes[(node.0 as usize) % NODES].clone();
                let rs = Receipts::with_custody(node, stack, &key, seq + 1, custody(by_executor));
                TxKind::ChallengeReceipt {
                    receipt: rs.signed[seq as usize].clone(),
                }
            }
            Op::Leave(_) => TxKind::LeaveNode,
            Op::Withdraw(_) => TxKind::WithdrawCollateral,
            Op::Pause(_) => TxKind::PauseNode,
            Op::Resume(_) => TxKind::ResumeNode,
            Op::BadNonce(_) | Op::EndBlock => TxKind::Transfer {
                to: self.c.users[0].public(),
                amount: Amount(1),
            },
        }
    }
}

fn custody(by_executor: bool) -> Custody {
    if by_executor {
        Custody::Executor
    } else {
        Custody::Gateway
    }
}

/// Money is conserved and escrow is exactly the open stacks' escrow.
fn check(st: &State) {
    let s = st.supply();
    let total =
        s.balances.0 as u128 + s.escrow.0 as u128 + s.collateral.0 as u128 + s.treasury.0 as u128;
    assert_eq!(total, s.minted.0 as u128, "supply {s:?}");
    for stack in st.stacks.values() {
        let live = matches!(
            stack.status,
            StackStatus::Open | StackStatus::Claimed { .. }
        );
        assert!(live || stack.escrow == Amount::ZERO, "{stack:?}");
    }
}

/// Every slash event takes at most what the node held before.
fn check_slashes(before: &State, events: &[Event]) {
    let mut taken: BTreeMap<NodeId, u64> = BTreeMap::new();
    for e in events {
        if let Event::Slashed { node, amount, .. } = e {
            let t = taken.entry(*node).or_default();
            *t += amount.0;
            assert!(*t <= before.nodes[node].collateral.0);
        }
    }
}

fn run(q_ppm: u32, ops: Vec<Op>) -> State {
    let mut r = Runner {
        c: Chain::new(NODES, q_ppm),
        receipts: BTreeMap::new(),
        secrets: BTreeMap::new(),
    };
    let mut ctx: Option<BlockContext> = None;
    for op in &ops {
        let Some(key) = r.build(op) else {
            if let Some(c) = ctx.take() {
                let before = r.c.ledger.state().clone();
                let ev = r.c.ledger.end_block(&c);
                check_slashes(&before, &ev);
                check(r.c.ledger.state());
                // Draws this block fixed are made at the end of the next one: seal it (empty),
                // as a live sequencer does on its next tick.
                if !r.c.ledger.state().pending_draws.is_empty() {
                    let before = r.c.ledger.state().clone();
                    let out = r.c.seal(&[]);
                    check_slashes(&before, &out.end_block_events);
                    check(r.c.ledger.state());
                }
            }
            continue;
        };
        let c = *ctx.get_or_insert_with(|| {
            let c = r.c.next_context(r.c.now() + 1_000);
            r.c.ledger.begin_block(&c).expect("block");
            c
        });
        let kind = r.kind(op);
        let nonce = r.c.ledger.state().account(&key.public()).nonce
            + u64::from(matches!(op, Op::BadNonce(_)));
        let tx = r.c.sign_nonce(&key, kind, nonce).verify().expect("signed");
        let before = r.c.ledger.state().clone();
        let root = r.c.ledger.state_root();
        match r.c.ledger.apply_tx(&c, &tx) {
            Ok(ev) => check_slashes(&before, &ev),
            Err(_) => assert_eq!(
                r.c.ledger.state_root(),
                root,
                "refused {op:?} changed the state"
            ),
        }
        check(r.c.ledger.state());
    }
    if let Some(c) = ctx.take() {
        r.c.ledger.end_block(&c);
    }
    for _ in 0..200 {
        let before = r.c.ledger.state().clone();
        let out = r.c.block(&[]);
        check_slashes(&before, &out.end_block_events);
        check(r.c.ledger.state());
    }
    let st = r.c.ledger.state();
    assert!(
        st.open_audits.is_empty() && st.open_disputes.is_empty(),
        "unresolved audits or disputes"
    );
    assert!(st.claim_queue.is_empty() && st.stack_expiry.is_empty());
    assert!(st.disputes.values().all(|d| d.resolution.is_some()));
    assert!(st.stacks.values().all(|s| s.escrow == Amount::ZERO));
    // Only an executor that kept the request is ever slashed for withholding it.
    for s in st.slashes.iter() {
        if s.reason == SlashReason::PayloadWithheld {
            let a = &st.audits[&s.audit.expect("an audit")];
            assert_eq!(
                a.receipt.as_ref().map(|r| r.custody),
                Some(Custody::Executor)
            );
            assert_eq!(s.node, a.executor);
        }
    }
    st.clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_sequences_keep_the_invariants(q in prop_oneof![Just(1_000_000u32), 200_000u32..1_000_000], ops in proptest::collection::vec(op(), 1..120)) {
        let _ = run(q, ops);
    }
}

#[test]
fn disputes_are_reached_by_the_generator() {
    // A fixed sequence that goes claim → mismatch → dispute, so the property above is not
    // vacuous about disputes.
    let mut ops = vec![
        Op::Buy(0, Some(0), 1_000, 30),
        Op::EndBlock,
        Op::Claim(0, 0, 500, 1, false),
        Op::EndBlock,
    ];
    for n in 1..NODES {
        ops.push(Op::Commit(n, 0, 1));
    }
    ops.push(Op::Submit(3, 0));
    ops.extend([Op::EndBlock, Op::EndBlock, Op::EndBlock]);
    for n in 1..NODES {
        ops.push(Op::Reveal(n, 0));
    }
    ops.push(Op::EndBlock);
    let st = run(1_000_000, ops);
    assert_eq!(st.disputes.len(), 1, "a mismatch opened a dispute");
    assert!(!st.slashes.is_empty());
}

#[test]
fn challenges_are_reached_by_the_generator() {
    // The owner challenges an unclaimed stack's receipt; every auditor says mismatch, the
    // dispute finds the executor at fault and the stack is refunded before any claim.
    let mut ops = vec![Op::Buy(0, Some(0), 1_000, 30), Op::EndBlock];
    ops.extend([Op::Challenge(0, 0, 1, false), Op::EndBlock]);
    for n in 1..NODES {
        ops.push(Op::Commit(n, 0, 1));
    }
    ops.extend([Op::EndBlock, Op::EndBlock, Op::EndBlock]);
    for n in 1..NODES {
        ops.push(Op::Reveal(n, 0));
    }
    ops.push(Op::EndBlock);
    for n in 1..NODES {
        ops.push(Op::Vote(n, 0, 1));
    }
    ops.extend([Op::EndBlock, Op::EndBlock, Op::EndBlock]);
    for n in 1..NODES {
        ops.push(Op::RevealVote(n, 0));
    }
    let st = run(1_000_000, ops);
    assert_eq!(st.challenges.len(), 1);
    let stack = st.stacks.values().next().expect("bought");
    assert_eq!(stack.status, StackStatus::Refunded);
    assert!(
        st.slashes
            .iter()
            .any(|s| s.reason == SlashReason::ExecutorAtFault)
    );
}

#[test]
fn withheld_requests_are_reached_by_the_generator() {
    // A claim of an executor-kept (confidential) request; every auditor says it never got the
    // request, so a dispute opens; every member says so too, and the executor is slashed for
    // withholding it and the stack refunded.
    let mut ops = vec![
        Op::Buy(0, Some(0), 1_000, 30),
        Op::EndBlock,
        Op::Claim(0, 0, 500, 1, true),
        Op::EndBlock,
    ];
    for n in 1..NODES {
        ops.push(Op::Commit(n, 0, 2));
    }
    ops.push(Op::Submit(3, 0));
    ops.extend([Op::EndBlock, Op::EndBlock, Op::EndBlock]);
    for n in 1..NODES {
        ops.push(Op::Reveal(n, 0));
    }
    ops.push(Op::EndBlock);
    for n in 1..NODES {
        ops.push(Op::Vote(n, 0, 2));
    }
    ops.extend([Op::EndBlock, Op::EndBlock, Op::EndBlock]);
    for n in 1..NODES {
        ops.push(Op::RevealVote(n, 0));
    }
    let st = run(1_000_000, ops);
    assert_eq!(st.disputes.len(), 1, "unavailable votes opened a dispute");
    assert_eq!(st.disputes.values().next().unwrap().resolution, Some(true));
    assert!(
        st.slashes
            .iter()
            .any(|s| s.reason == SlashReason::PayloadWithheld)
    );
    let stack = st.stacks.values().next().expect("bought");
    assert_eq!(stack.status, StackStatus::Refunded);
}
