//! The simulated participants' reactions to the ledger's events, the way the real node and
//! gateway react: an executor submits its sampled receipt with its Merkle proof, auditors and
//! committee members commit a verdict and reveal it once everyone committed (or the commit
//! deadline passed), nodes rotate their confidential key at each epoch. Verdicts follow each
//! voter's strategy ([`crate::theory::vote`]); the ledger decides everything else.
//!
//! Also the bookkeeping: what each strategy was paid, rewarded, slashed and refunded, which
//! cheats were caught and when, and whether any slash hit something done right.

use std::collections::BTreeMap;

use sortition_ledger::{AuditOutcome, Event, SlashReason, SlashRecord, TxKind, Verdict};
use sortition_types::{AuditId, DisputeId, Hash32, NodeId, StackId, sha256};

use super::{Action, Signer, World};
use crate::config::Strategy;
use crate::serve::signed;
use crate::theory::{Vote, vote};

#[derive(Debug, Clone)]
struct AuditTrack {
    executor: usize,
    cheat: bool,
    withheld: bool,
    /// Undetected cheats of the executor before this receipt.
    cheats_before: u64,
    votes: BTreeMap<NodeId, Vote>,
}

#[derive(Debug, Default)]
pub struct Agents {
    audits: BTreeMap<AuditId, AuditTrack>,
    /// Each dispute's audit and its members' votes.
    disputes: BTreeMap<DisputeId, (AuditId, BTreeMap<NodeId, Vote>)>,
    /// Per claimed stack: the executor's cheats claimed before it.
    cheat_base: BTreeMap<StackId, u64>,
}

fn verdict(v: Vote, audit: u64) -> Option<Verdict> {
    match v {
        Vote::Mismatch => Some(Verdict::Mismatch {
            evidence_hash: sha256(&audit.to_le_bytes()),
        }),
        Vote::Match => Some(Verdict::Match),
        Vote::Unavailable => Some(Verdict::Unavailable),
        Vote::Silent => None,
    }
}

fn salt(seed: u64, what: &str, id: u64, node: NodeId) -> Hash32 {
    sha256(format!("{seed}/{what}/{id}/{}", node.0).as_bytes())
}

/// Whether `v` tells the truth about a receipt.
fn truthful(v: Vote, cheat: bool, withheld: bool) -> bool {
    match v {
        Vote::Mismatch => cheat && !withheld,
        Vote::Match => !cheat && !withheld,
        Vote::Unavailable => withheld,
        Vote::Silent => false,
    }
}

/// Whether a voter of `voter`'s strategy re-executed to reach `v` (and paid `C` for it).
fn re_executed(voter: Strategy, executor: Strategy, v: Vote) -> bool {
    matches!(v, Vote::Mismatch | Vote::Match)
        && voter != Strategy::LazyCopy
        && !(voter == Strategy::Colluder && executor == Strategy::Colluder)
}

pub(crate) fn react(w: &mut World, height: u64, events: &[Event], slashes: &[SlashRecord]) {
    predict_sampled(w, height);
    for s in slashes {
        on_slash(w, s);
    }
    for e in events {
        match e {
            Event::ClaimCommitted { stack, node, .. } => on_claim(w, height, *stack, *node),
            Event::AuditOpened {
                audit,
                stack,
                receipt_index,
                auditors,
                commit_deadline,
                ..
            } => on_audit(
                w,
                height,
                *audit,
                *stack,
                *receipt_index,
                auditors,
                *commit_deadline,
            ),
            Event::DisputeOpened {
                dispute,
                audit,
                committee,
                commit_deadline,
                ..
            } => on_dispute(w, height, *dispute, *audit, committee, *commit_deadline),
            Event::AuditClosed { audit, outcome } => on_closed(w, height, *audit, *outcome),
            Event::Settled { node, paid, .. } => {
                let s = w.strategy[node.0 as usize];
                w.stats.of(s).paid += paid.0;
                w.stats.settled_claims += 1;
            }
            Event::Refunded { stack, .. } => {
                if let Some(st) = w.ledger.state().stacks.get(stack) {
                    let s = w.strategy[st.node.0 as usize];
                    w.stats.of(s).refunded_claims += 1;
                }
            }
            Event::Rewarded { node, amount, .. } => {
                let s = w.strategy[node.0 as usize];
                w.stats.of(s).rewards += amount.0;
            }
            Event::EpochTurned { epoch, .. } => on_epoch(w, height, *epoch),
            _ => {}
        }
    }
    // Sampled at the end of the block after the claim's: the records are no longer needed.
    w.claimed
        .retain(|_, s| s.claimed_at.is_none_or(|h| h + 1 > height));
}

/// Claims sampled at the end of this block: what theory predicts for their cheats, given the
/// peers still eligible in the executor's class when the draw was made (before this block's
/// slashes, which come after the draws).
fn predict_sampled(w: &mut World, height: u64) {
    let mut add: Vec<(Strategy, f64)> = vec![];
    for s in w.claimed.values() {
        if s.claimed_at != Some(height.saturating_sub(1)) || s.cheats == 0 {
            continue;
        }
        let class = w.class[s.node];
        let shares: Vec<(Strategy, f64)> = w.eligible[class]
            .iter()
            .map(|(st, n)| (*st, *n as f64))
            .collect();
        let p = crate::theory::detection(&shares, s.strategy, 1.0, w.cfg.k).ledger;
        add.push((s.strategy, p * s.cheats as f64));
    }
    for (st, x) in add {
        w.stats.of(st).predicted_caught_given_sampled += x;
    }
}

fn on_claim(w: &mut World, height: u64, stack: StackId, node: NodeId) {
    let Some(s) = w.claimed.get(&stack) else {
        return;
    };
    let (strategy, reqs, cheats, over) = (s.strategy, s.recs.len() as u64, s.cheats, s.over_units);
    let i = node.0 as usize;
    let n = &mut w.stats.nodes[i];
    w.agents.cheat_base.insert(stack, n.cheats_claimed);
    n.cheats_claimed += cheats;
    n.first_claim_height.get_or_insert(height);
    let honest = reqs - cheats;
    let cost = w.cfg.cost;
    let st = w.stats.of(strategy);
    st.claims += 1;
    st.requests += reqs;
    st.cheats += cheats;
    st.over_units += over;
    st.costs += honest.saturating_mul(cost);
}

#[allow(clippy::too_many_arguments)]
fn on_audit(
    w: &mut World,
    height: u64,
    audit: AuditId,
    stack: StackId,
    index: u64,
    auditors: &[NodeId],
    commit_deadline: u64,
) {
    let Some(s) = w.claimed.get(&stack) else {
        return;
    };
    let exec = s.node;
    let class = w.class[exec];
    let ex_strategy = s.strategy;
    let rec = s.recs[index as usize];
    let cheat = rec.cheat();
    let withheld = cheat && ex_strategy == Strategy::Withhold;
    let prefix = s.recs[..index as usize]
        .iter()
        .filter(|r| r.cheat())
        .count() as u64;
    let cheats_before = w.agents.cheat_base.get(&stack).copied().unwrap_or(0) + prefix;
    let receipt = signed(&w.shape, s, class, index, &w.keys[exec]);
    let Some(proof) = crate::serve::proof(&s.tree, index as usize) else {
        return;
    };
    w.stats.audits += 1;
    let st = w.stats.of(ex_strategy);
    if cheat {
        st.cheats_sampled += 1;
    } else {
        st.honest_sampled += 1;
    }
    w.at(
        height + 1,
        Action {
            signer: Signer::Node(exec),
            kind: TxKind::SubmitReceipt {
                audit,
                receipt,
                proof,
            },
        },
    );
    let mut votes = BTreeMap::new();
    for a in auditors {
        let voter = w.strategy[a.0 as usize];
        votes.insert(*a, vote(voter, ex_strategy, cheat, withheld));
    }
    let (commit, reveal) = vote_txs(w, height, commit_deadline, audit.0, &votes, true);
    for (h, action) in commit.into_iter().chain(reveal) {
        w.at(h, action);
    }
    for (a, v) in &votes {
        let voter = w.strategy[a.0 as usize];
        if re_executed(voter, ex_strategy, *v) {
            let c = w.cfg.cost;
            w.stats.of(voter).costs += c;
        }
    }
    w.agents.audits.insert(
        audit,
        AuditTrack {
            executor: exec,
            cheat,
            withheld,
            cheats_before,
            votes,
        },
    );
}

type Scheduled = Vec<(u64, Action)>;

/// Commit transactions for the next block and reveals for the block after (or after the
/// commit deadline, when someone stays silent and the ledger must wait for it).
fn vote_txs(
    w: &World,
    height: u64,
    commit_deadline: u64,
    id: u64,
    votes: &BTreeMap<NodeId, Vote>,
    audit: bool,
) -> (Scheduled, Scheduled) {
    let silent = votes.values().any(|v| *v == Vote::Silent);
    let reveal_at = if silent {
        commit_deadline + 1
    } else {
        height + 2
    };
    let (mut commits, mut reveals) = (vec![], vec![]);
    let what = if audit { "audit" } else { "dispute" };
    for (node, v) in votes {
        let Some(verdict) = verdict(*v, id) else {
            continue;
        };
        let i = node.0 as usize;
        let salt = salt(w.cfg.seed, what, id, *node);
        let commitment = sortition_ledger::verdict_commitment(&verdict, &salt, &w.keys[i].public());
        let (c, r) = if audit {
            (
                TxKind::CommitVerdict {
                    audit: AuditId(id),
                    commitment,
                },
                TxKind::RevealVerdict {
                    audit: AuditId(id),
                    verdict,
                    salt,
                },
            )
        } else {
            (
                TxKind::CommitVote {
                    dispute: DisputeId(id),
                    commitment,
                },
                TxKind::RevealVote {
                    dispute: DisputeId(id),
                    verdict,
                    salt,
                },
            )
        };
        let signer = Signer::Node(i);
        commits.push((height + 1, Action { signer, kind: c }));
        reveals.push((reveal_at, Action { signer, kind: r }));
    }
    (commits, reveals)
}

fn on_dispute(
    w: &mut World,
    height: u64,
    dispute: DisputeId,
    audit: AuditId,
    committee: &[NodeId],
    commit_deadline: u64,
) {
    let Some(a) = w.agents.audits.get(&audit) else {
        return;
    };
    w.stats.disputes += 1;
    let ex_strategy = w.strategy[a.executor];
    let (cheat, withheld) = (a.cheat, a.withheld);
    let mut votes = BTreeMap::new();
    for m in committee {
        let voter = w.strategy[m.0 as usize];
        let v = vote(voter, ex_strategy, cheat, withheld);
        if re_executed(voter, ex_strategy, v) {
            let c = w.cfg.cost;
            w.stats.of(voter).costs += c;
        }
        votes.insert(*m, v);
    }
    let (commit, reveal) = vote_txs(w, height, commit_deadline, dispute.0, &votes, false);
    for (h, action) in commit.into_iter().chain(reveal) {
        w.at(h, action);
    }
    w.agents.disputes.insert(dispute, (audit, votes));
}

fn on_closed(w: &mut World, height: u64, audit: AuditId, outcome: AuditOutcome) {
    if matches!(outcome, AuditOutcome::Disputed { .. }) {
        return;
    }
    let Some(a) = w.agents.audits.get(&audit).cloned() else {
        return;
    };
    let caught = matches!(
        outcome,
        AuditOutcome::ExecutorAtFault | AuditOutcome::ReceiptMissing
    );
    let strategy = w.strategy[a.executor];
    if !caught {
        return;
    }
    if !a.cheat {
        w.stats.of(strategy).honest_caught += 1;
        return;
    }
    w.stats.of(strategy).cheats_caught += 1;
    let n = &mut w.stats.nodes[a.executor];
    let earlier = n.first_catch.is_some_and(|(c, _)| c <= a.cheats_before);
    if !earlier {
        n.first_catch = Some((a.cheats_before, height));
    }
}

fn on_slash(w: &mut World, s: &SlashRecord) {
    let i = s.node.0 as usize;
    let strategy = w.strategy[i];
    w.stats.of(strategy).slashed += s.amount.0;
    if matches!(
        s.reason,
        SlashReason::ExecutorAtFault | SlashReason::ReceiptMissing | SlashReason::PayloadWithheld
    ) {
        w.stats.of(strategy).slashed_as_executor += s.amount.0;
    }
    let reason = format!("{:?}", s.reason);
    *w.stats.slashes_by_reason.entry(reason.clone()).or_default() += 1;
    if strategy == Strategy::Honest {
        w.stats.honest_slashes += 1;
    }
    let track = s.audit.and_then(|a| w.agents.audits.get(&a));
    let wrongful = match s.reason {
        SlashReason::ExecutorAtFault
        | SlashReason::ReceiptMissing
        | SlashReason::PayloadWithheld => track.is_some_and(|t| !t.cheat),
        SlashReason::WrongVerdict => track.is_some_and(|t| {
            let mine = t.votes.get(&s.node).copied().or_else(|| {
                w.agents
                    .disputes
                    .values()
                    .filter(|(a, _)| Some(*a) == s.audit)
                    .find_map(|(_, v)| v.get(&s.node).copied())
            });
            mine.is_some_and(|v| truthful(v, t.cheat, t.withheld))
        }),
        SlashReason::MissedDeadline => strategy != Strategy::LazySkip,
        SlashReason::Equivocation => true,
    };
    if wrongful {
        w.stats.wrongful_slashes += 1;
        *w.stats.wrongful_by_reason.entry(reason).or_default() += 1;
    }
    let below_min = w
        .ledger
        .state()
        .nodes
        .get(&s.node)
        .is_none_or(|n| n.collateral.0 < w.min_collateral);
    if below_min && w.alive[i] {
        w.alive[i] = false;
        let class = w.class[i];
        if let Some(n) = w.eligible[class].get_mut(&strategy) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Every node still serving publishes a fresh confidential key in the new epoch (a key stays
/// current for its epoch and the next, which the committees of withheld requests rely on).
fn on_epoch(w: &mut World, height: u64, epoch: u64) {
    w.stats.epochs += 1;
    for i in 0..w.keys.len() {
        if !w.alive[i] {
            continue;
        }
        w.at(
            height + 1,
            Action {
                signer: Signer::Node(i),
                kind: TxKind::RotateConfidentialKey {
                    key: sortition_ledger::SealingKey(sha256(
                        format!("sim-ck-{i}-{epoch}").as_bytes(),
                    )),
                    attestation: vec![],
                    epoch,
                },
            },
        );
    }
}
