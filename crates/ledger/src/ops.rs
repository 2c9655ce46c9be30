//! Accounts, models, genesis, and the money primitives every handler uses.
//!
//! Money moves only through these helpers. Debits are checked by the caller before the first
//! mutation; credits saturate but cannot overflow because every amount is part of a total
//! supply that fits in `u64` (enforced when minting).

use std::collections::{BTreeMap, BTreeSet};

use sortition_types::{Amount, AuditId, NodeId, PublicKey};

use crate::TxResult;
use crate::error::LedgerError;
use crate::event::Event;
use crate::genesis::Genesis;
use crate::policy::{BPS, ModelSpec, min_collateral};
use crate::state::{ModelEntry, NextIds, SlashReason, SlashRecord, State};

pub(crate) fn genesis_state(g: &Genesis) -> Result<State, LedgerError> {
    let mut st = State {
        chain_id: g.chain_id.clone(),
        devnet: g.devnet,
        admin: g.admin,
        params: g.params.clone(),
        height: 0,
        timestamp_ms: g.genesis_time_ms,
        // No draw ever uses it: the first draws happen at the end of block 2 with its beacon.
        randomness: g.hash(),
        epoch: 0,
        epoch_nonce: crate::state::epoch_nonce(&g.hash(), 0),
        fees_this_epoch: Amount::ZERO,
        treasury: g.treasury,
        minted: g.treasury,
        accounts: BTreeMap::new(),
        models: BTreeMap::new(),
        nodes: BTreeMap::new(),
        node_by_key: BTreeMap::new(),
        stacks: BTreeMap::new(),
        stack_expiry: BTreeSet::new(),
        claims: BTreeMap::new(),
        claim_queue: BTreeSet::new(),
        audits: BTreeMap::new(),
        open_audits: BTreeSet::new(),
        challenges: BTreeMap::new(),
        equivocations: Default::default(),
        disputes: BTreeMap::new(),
        open_disputes: BTreeSet::new(),
        unbonding: BTreeSet::new(),
        slashes: Vec::new(),
        next_ids: NextIds::default(),
        pending_draws: Vec::new(),
        validator_faults: Default::default(),
    };
    for (pk, amount) in &g.balances {
        st.minted = st
            .minted
            .checked_add(*amount)
            .ok_or(LedgerError::Overflow)?;
        credit(&mut st, pk, *amount);
    }
    for spec in &g.models {
        add_model(&mut st, spec)?;
    }
    if g.params.epoch_length_blocks == 0 {
        return Err(LedgerError::InvalidPolicy(
            "epoch length must be positive".into(),
        ));
    }
    Ok(st)
}

pub(crate) fn balance(st: &State, pk: &PublicKey) -> Amount {
    st.accounts.get(pk).map_or(Amount::ZERO, |a| a.balance)
}

pub(crate) fn require_balance(st: &State, pk: &PublicKey, need: Amount) -> Result<(), LedgerError> {
    let have = balance(st, pk);
    if have < need {
        return Err(LedgerError::InsufficientFunds { need, have });
    }
    Ok(())
}

/// Debit after [`require_balance`] succeeded.
pub(crate) fn debit(st: &mut State, pk: &PublicKey, amount: Amount) {
    if let Some(a) = st.accounts.get_mut(pk) {
        a.balance = a.balance.saturating_sub(amount);
    }
}

pub(crate) fn credit(st: &mut State, pk: &PublicKey, amount: Amount) {
    if amount == Amount::ZERO {
        return;
    }
    let a = st.accounts.entry(*pk).or_default();
    a.balance = Amount(a.balance.0.saturating_add(amount.0));
}

pub(crate) fn to_treasury(st: &mut State, amount: Amount) {
    st.treasury = Amount(st.treasury.0.saturating_add(amount.0));
}

pub(crate) fn bps(amount: Amount, bps: u16) -> Amount {
    amount.mul_div(u64::from(bps), BPS).unwrap_or(Amount::ZERO)
}

/// Takes up to `amount` from a node's collateral (never more than it holds) and records it.
/// Returns what was actually taken; the caller decides where it goes.
pub(crate) fn slash(
    st: &mut State,
    node: NodeId,
    amount: Amount,
    reason: SlashReason,
    audit: Option<AuditId>,
    events: &mut Vec<Event>,
) -> Amount {
    let Some(n) = st.nodes.get_mut(&node) else {
        return Amount::ZERO;
    };
    let taken = amount.min(n.collateral);
    if taken == Amount::ZERO {
        return taken;
    }
    n.collateral = n.collateral.saturating_sub(taken);
    st.slashes.push(SlashRecord {
        height: st.height,
        node,
        amount: taken,
        reason,
        audit,
    });
    events.push(Event::Slashed {
        node,
        amount: taken,
        reason,
    });
    taken
}

/// Pays `amount` to a node's operator account.
pub(crate) fn reward(st: &mut State, node: NodeId, amount: Amount, events: &mut Vec<Event>) {
    if amount == Amount::ZERO {
        return;
    }
    if let Some(to) = st.nodes.get(&node).map(|n| n.operator) {
        credit(st, &to, amount);
        events.push(Event::Rewarded { node, to, amount });
    } else {
        to_treasury(st, amount);
    }
}

pub(crate) fn add_work(st: &mut State, node: NodeId) {
    if let Some(n) = st.nodes.get_mut(&node) {
        n.pending_work = n.pending_work.saturating_add(1);
    }
}

pub(crate) fn done_work(st: &mut State, node: NodeId) {
    if let Some(n) = st.nodes.get_mut(&node) {
        n.pending_work = n.pending_work.saturating_sub(1);
    }
}

/// Mints `amount` to `to`: devnet chains only, and only when the genesis admin signs it.
pub(crate) fn faucet(
    st: &mut State,
    sender: &PublicKey,
    to: &PublicKey,
    amount: Amount,
) -> TxResult {
    if !st.devnet {
        return Err(LedgerError::FaucetDisabled);
    }
    if *sender != st.admin {
        return Err(LedgerError::NotAdmin);
    }
    if amount == Amount::ZERO {
        return Err(LedgerError::ZeroAmount);
    }
    st.minted = st.minted.checked_add(amount).ok_or(LedgerError::Overflow)?;
    credit(st, to, amount);
    Ok(vec![Event::Minted { to: *to, amount }])
}

pub(crate) fn transfer(
    st: &mut State,
    from: &PublicKey,
    to: &PublicKey,
    amount: Amount,
) -> TxResult {
    if amount == Amount::ZERO {
        return Err(LedgerError::ZeroAmount);
    }
    require_balance(st, from, amount)?;
    debit(st, from, amount);
    credit(st, to, amount);
    Ok(vec![Event::Transferred {
        from: *from,
        to: *to,
        amount,
    }])
}

pub(crate) fn register_model(st: &mut State, sender: &PublicKey, spec: &ModelSpec) -> TxResult {
    if *sender != st.admin {
        return Err(LedgerError::NotAdmin);
    }
    add_model(st, spec)
}

fn add_model(st: &mut State, spec: &ModelSpec) -> TxResult {
    if st.models.contains_key(&spec.id) {
        return Err(LedgerError::ModelExists(spec.id.clone()));
    }
    let min = min_collateral(&spec.policy)?;
    st.models.insert(
        spec.id.clone(),
        ModelEntry {
            spec: spec.clone(),
            min_collateral: min,
        },
    );
    Ok(vec![Event::ModelRegistered {
        model: spec.id.clone(),
        min_collateral: min,
    }])
}
