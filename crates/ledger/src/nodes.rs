//! The node registry: registration with policy-derived collateral, updates, pause/resume,
//! leaving (unbonding), withdrawal and confidential key rotation.

use sortition_types::{Amount, ModelId, NodeClass, NodeId, PublicKey};

use crate::error::LedgerError;
use crate::event::Event;
use crate::ops::{credit, debit, require_balance};
use crate::state::{Node, NodeStatus, StackStatus, State};
use crate::tx::{Offer, SealingKey, TxKind};
use crate::{BlockContext, TxResult};

const MAX_ENDPOINT: usize = 512;
const MAX_ATTESTATION: usize = 64 * 1024;
const MAX_OFFERS: usize = 64;

/// The collateral the offers require: the largest policy minimum among their models.
pub(crate) fn required_collateral(st: &State, offers: &[Offer]) -> Result<Amount, LedgerError> {
    if offers.is_empty() || offers.len() > MAX_OFFERS {
        return Err(LedgerError::InvalidNode(format!(
            "between 1 and {MAX_OFFERS} offers required"
        )));
    }
    let mut need = Amount::ZERO;
    for (i, o) in offers.iter().enumerate() {
        if offers[..i].iter().any(|p| p.model == o.model) {
            return Err(LedgerError::InvalidNode(format!(
                "model {} offered twice",
                o.model
            )));
        }
        let m = st
            .models
            .get(&o.model)
            .ok_or_else(|| LedgerError::UnknownModel(o.model.clone()))?;
        need = need.max(m.min_collateral);
    }
    Ok(need)
}

/// Whether `node` may be sold or drawn for `model`: active, offering it, and still holding
/// the model's minimum collateral (a slashed node drops out until it tops up).
pub(crate) fn eligible(st: &State, node: &Node, model: &ModelId) -> bool {
    node.status == NodeStatus::Active
        && node.offer(model).is_some()
        && st
            .models
            .get(model)
            .is_some_and(|m| node.collateral >= m.min_collateral)
}

fn own_node<'a>(st: &'a State, sender: &PublicKey) -> Result<&'a Node, LedgerError> {
    st.node_by_key(sender).ok_or(LedgerError::NotANode)
}

fn status_name(s: NodeStatus) -> String {
    match s {
        NodeStatus::Active => "active",
        NodeStatus::Paused => "paused",
        NodeStatus::Unbonding { .. } => "unbonding",
        NodeStatus::Unbonded => "unbonded",
        NodeStatus::Withdrawn => "withdrawn",
    }
    .into()
}

fn wrong_status(n: &Node, wanted: &str) -> LedgerError {
    LedgerError::WrongNodeStatus {
        node: n.id,
        status: status_name(n.status),
        wanted: wanted.into(),
    }
}

pub(crate) fn register(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    kind: &TxKind,
) -> TxResult {
    let TxKind::RegisterNode {
        endpoint,
        confidential_key,
        attestation,
        class,
        offers,
        capacity,
        collateral,
    } = kind
    else {
        return Err(LedgerError::InvalidNode("not a registration".into()));
    };
    if let Some(id) = st.node_by_key.get(sender) {
        return Err(LedgerError::NodeExists(*id));
    }
    if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT || attestation.len() > MAX_ATTESTATION {
        return Err(LedgerError::InvalidNode(
            "endpoint or attestation size out of range".into(),
        ));
    }
    let need = required_collateral(st, offers)?;
    if *collateral < need {
        return Err(LedgerError::CollateralBelowMinimum {
            need,
            have: *collateral,
        });
    }
    require_balance(st, sender, *collateral)?;
    debit(st, sender, *collateral);
    let id = NodeId(st.next_ids.node);
    st.next_ids.node += 1;
    st.nodes.insert(
        id,
        Node {
            id,
            operator: *sender,
            endpoint: endpoint.clone(),
            confidential_key: *confidential_key,
            attestation: attestation.clone(),
            key_epoch: st.epoch,
            key_nonce: st.epoch_nonce,
            class_fingerprint: class.fingerprint(),
            class: class.clone(),
            offers: offers.clone(),
            capacity: *capacity,
            collateral: *collateral,
            status: NodeStatus::Active,
            rotations_this_epoch: 0,
            pending_work: 0,
            registered_height: ctx.height,
        },
    );
    st.node_by_key.insert(*sender, id);
    Ok(vec![Event::NodeRegistered {
        node: id,
        operator: *sender,
        collateral: *collateral,
    }])
}

pub(crate) fn update(
    st: &mut State,
    sender: &PublicKey,
    endpoint: Option<&String>,
    offers: Option<&Vec<Offer>>,
    capacity: Option<u32>,
    add_collateral: Amount,
    class: Option<&NodeClass>,
) -> TxResult {
    let n = own_node(st, sender)?;
    if matches!(n.status, NodeStatus::Unbonded | NodeStatus::Withdrawn) {
        return Err(wrong_status(n, "registered"));
    }
    let id = n.id;
    let new_class = class.filter(|c| c.fingerprint() != n.class_fingerprint);
    if new_class.is_some() {
        idle_for_class_change(st, id, n.pending_work)?;
    }
    let new_collateral = n
        .collateral
        .checked_add(add_collateral)
        .ok_or(LedgerError::Overflow)?;
    let offers_now = offers.unwrap_or(&n.offers);
    let need = required_collateral(st, offers_now)?;
    if new_collateral < need {
        return Err(LedgerError::CollateralBelowMinimum {
            need,
            have: new_collateral,
        });
    }
    if endpoint.is_some_and(|e| e.is_empty() || e.len() > MAX_ENDPOINT) {
        return Err(LedgerError::InvalidNode(
            "endpoint size out of range".into(),
        ));
    }
    require_balance(st, sender, add_collateral)?;
    debit(st, sender, add_collateral);
    let Some(n) = st.nodes.get_mut(&id) else {
        return Err(LedgerError::UnknownNode(id));
    };
    if let Some(e) = endpoint {
        n.endpoint = e.clone();
    }
    if let Some(o) = offers {
        n.offers = o.clone();
    }
    if let Some(c) = capacity {
        n.capacity = c;
    }
    if let Some(c) = new_class {
        n.class_fingerprint = c.fingerprint();
        n.class = c.clone();
    }
    n.collateral = new_collateral;
    Ok(vec![Event::NodeUpdated {
        node: id,
        collateral: new_collateral,
    }])
}

/// A node may change class only when no claim of receipts it signed under the old one can
/// still be sampled or judged (every claim settled, no audit or dispute of its receipts
/// open) and it owes no verdict or vote as a peer of the old class. Receipts on stacks it has
/// not claimed yet are the node's to claim and settle first (it claims at every shutdown, and
/// refuses to take a new class while its store holds unclaimed ones): the ledger does not
/// know of them.
fn idle_for_class_change(st: &State, node: NodeId, pending_work: u32) -> Result<(), LedgerError> {
    let unsettled_claims = st
        .stacks
        .values()
        .filter(|s| s.node == node && matches!(s.status, StackStatus::Claimed { .. }))
        .count() as u64;
    let open_audits = st
        .open_audits
        .iter()
        .filter_map(|a| st.audits.get(a))
        .filter(|a| a.executor == node)
        .count() as u64
        + st.open_disputes
            .iter()
            .filter_map(|d| st.disputes.get(d))
            .filter(|d| d.executor == node)
            .count() as u64;
    if unsettled_claims + open_audits + u64::from(pending_work) == 0 {
        return Ok(());
    }
    Err(LedgerError::ClassChangeWhileBusy {
        node,
        unsettled_claims,
        open_audits,
        pending_work: u64::from(pending_work),
    })
}

fn set_status(
    st: &mut State,
    sender: &PublicKey,
    from: NodeStatus,
    to: NodeStatus,
    ev: fn(NodeId) -> Event,
) -> TxResult {
    let n = own_node(st, sender)?;
    if n.status != from {
        return Err(wrong_status(n, &status_name(from)));
    }
    let id = n.id;
    if let Some(n) = st.nodes.get_mut(&id) {
        n.status = to;
    }
    Ok(vec![ev(id)])
}

pub(crate) fn pause(st: &mut State, sender: &PublicKey) -> TxResult {
    set_status(st, sender, NodeStatus::Active, NodeStatus::Paused, |node| {
        Event::NodePaused { node }
    })
}

pub(crate) fn resume(st: &mut State, sender: &PublicKey) -> TxResult {
    set_status(st, sender, NodeStatus::Paused, NodeStatus::Active, |node| {
        Event::NodeResumed { node }
    })
}

pub(crate) fn leave(st: &mut State, ctx: &BlockContext, sender: &PublicKey) -> TxResult {
    let n = own_node(st, sender)?;
    if !matches!(n.status, NodeStatus::Active | NodeStatus::Paused) {
        return Err(wrong_status(n, "active or paused"));
    }
    let id = n.id;
    let until = ctx.height.saturating_add(st.params.unbonding_blocks);
    if let Some(n) = st.nodes.get_mut(&id) {
        n.status = NodeStatus::Unbonding {
            until_height: until,
        };
    }
    st.unbonding.insert((until, id));
    Ok(vec![Event::NodeLeaving {
        node: id,
        unbonded_at_height: until,
    }])
}

pub(crate) fn withdraw(st: &mut State, sender: &PublicKey) -> TxResult {
    let n = own_node(st, sender)?;
    if n.status != NodeStatus::Unbonded {
        return Err(wrong_status(n, "unbonded"));
    }
    if n.pending_work > 0 {
        return Err(LedgerError::NodeHasPendingWork(n.id));
    }
    let (id, amount, operator) = (n.id, n.collateral, n.operator);
    if let Some(n) = st.nodes.get_mut(&id) {
        n.collateral = Amount::ZERO;
        n.status = NodeStatus::Withdrawn;
    }
    credit(st, &operator, amount);
    Ok(vec![Event::CollateralWithdrawn { node: id, amount }])
}

pub(crate) fn rotate(
    st: &mut State,
    sender: &PublicKey,
    key: SealingKey,
    attestation: &[u8],
    epoch: u64,
) -> TxResult {
    let n = own_node(st, sender)?;
    if epoch != st.epoch {
        return Err(LedgerError::StaleEpoch {
            current: st.epoch,
            got: epoch,
        });
    }
    let limit = st.params.max_key_rotations_per_epoch;
    if n.rotations_this_epoch >= limit {
        return Err(LedgerError::RotationLimit { limit });
    }
    if attestation.len() > MAX_ATTESTATION {
        return Err(LedgerError::InvalidNode("attestation too large".into()));
    }
    let id = n.id;
    let nonce = st.epoch_nonce;
    if let Some(n) = st.nodes.get_mut(&id) {
        n.confidential_key = key;
        n.attestation = attestation.to_vec();
        n.key_epoch = epoch;
        n.key_nonce = nonce;
        n.rotations_this_epoch += 1;
    }
    Ok(vec![Event::KeyRotated {
        node: id,
        epoch,
        key: key.0,
    }])
}
