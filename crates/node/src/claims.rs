//! Settlement claims: what a node asks the ledger to pay for a stack, and inclusion proofs of
//! single receipts under a claim's Merkle root.

use sortition_types::{Hash32, MerkleProof, SignedReceipt, Units, merkle_root};

/// The figures of a claim over a stack's receipts (in sequence order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMaterial {
    pub units_used: Units,
    pub receipts_root: Hash32,
    pub receipt_count: u64,
}

/// The receipts a claim may hold: the longest prefix of `receipts` (in sequence order) in
/// which receipt `i` has sequence `i`. A receipt's position in the claim is its sequence: the
/// ledger samples positions, and auditors and holders find the request by sequence, so a
/// claim past a gap would send every audit after it to the wrong request. The node allocates
/// sequences in the write that persists the receipt, so no gap arises; a store that holds one
/// anyway (written by an older version) is claimed up to it, and the rest is left unclaimed.
pub fn in_position(receipts: &[SignedReceipt]) -> &[SignedReceipt] {
    let n = receipts
        .iter()
        .zip(0u64..)
        .take_while(|(r, i)| r.receipt.sequence == *i)
        .count();
    &receipts[..n]
}

/// Sums the units and builds the Merkle root of the receipts' digests.
pub fn claim_material(receipts: &[SignedReceipt]) -> ClaimMaterial {
    let leaves: Vec<Hash32> = receipts.iter().map(|r| r.receipt.digest()).collect();
    let units = receipts
        .iter()
        .fold(0u64, |acc, r| acc.saturating_add(r.receipt.units().0));
    ClaimMaterial {
        units_used: Units(units),
        receipts_root: merkle_root(&leaves),
        receipt_count: receipts.len() as u64,
    }
}

/// The receipt at `index` of a claim with its inclusion proof.
pub fn receipt_with_proof(
    receipts: &[SignedReceipt],
    index: u64,
) -> Option<(SignedReceipt, MerkleProof)> {
    let leaves: Vec<Hash32> = receipts.iter().map(|r| r.receipt.digest()).collect();
    let i = usize::try_from(index).ok()?;
    let proof = MerkleProof::build(&leaves, i)?;
    Some((receipts.get(i)?.clone(), proof))
}

/// Whether a stack should be claimed now.
#[derive(Debug, Clone, Copy)]
pub struct ClaimPolicy {
    /// Claim this long before the stack expires (the claim must land while it is open).
    pub before_expiry_ms: u64,
    /// Claim once this share (per mille) of the units is used.
    pub used_permille: u64,
    /// Claim once the oldest unclaimed receipt is this old.
    pub max_age_ms: u64,
}

impl Default for ClaimPolicy {
    fn default() -> Self {
        ClaimPolicy {
            before_expiry_ms: 120_000,
            used_permille: 900,
            max_age_ms: 15 * 60_000,
        }
    }
}

impl ClaimPolicy {
    pub fn due(
        &self,
        receipts: &[SignedReceipt],
        stack_units: u64,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> bool {
        let Some(first) = receipts.first() else {
            return false;
        };
        let used: u64 = receipts.iter().map(|r| r.receipt.units().0).sum();
        now_ms + self.before_expiry_ms >= expires_at_ms
            || used.saturating_mul(1000) >= stack_units.saturating_mul(self.used_permille)
            || now_ms.saturating_sub(first.receipt.timestamp_ms) >= self.max_age_ms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sortition_types::*;

    fn receipts(n: u64) -> Vec<SignedReceipt> {
        let k = Keypair::from_seed(b"node");
        (0..n)
            .map(|i| {
                SignedReceipt::sign(
                    Receipt {
                        node: NodeId(1),
                        stack: StackId(1),
                        sequence: i,
                        model: ModelId::new("m"),
                        model_digest: Hash32::ZERO,
                        node_class: Hash32::ZERO,
                        request_hash: sha256(&i.to_le_bytes()),
                        response_hash: Hash32::ZERO,
                        input_tokens: 10,
                        output_tokens: 5,
                        sampling: Default::default(),
                        timestamp_ms: 1_000 + i,
                        custody: Custody::Gateway,
                    },
                    &k,
                )
            })
            .collect()
    }

    #[test]
    fn material_and_proofs_agree() {
        let rs = receipts(5);
        let m = claim_material(&rs);
        assert_eq!(m.units_used, Units(75));
        assert_eq!(m.receipt_count, 5);
        for i in 0..5 {
            let (r, p) = receipt_with_proof(&rs, i).unwrap();
            assert!(p.verify(&r.receipt.digest(), &m.receipts_root));
        }
        assert!(receipt_with_proof(&rs, 5).is_none());
    }

    /// A gap in the sequences (a receipt handed out and then lost) ends what a claim may
    /// hold: past it, position and sequence would disagree.
    #[test]
    fn receipt_sequence_gap_ends_the_claimable_prefix() {
        let rs = receipts(5);
        assert_eq!(in_position(&rs).len(), 5);
        let gapped: Vec<SignedReceipt> = rs
            .iter()
            .filter(|r| r.receipt.sequence != 2)
            .cloned()
            .collect();
        assert_eq!(in_position(&gapped).len(), 2);
        assert_eq!(in_position(&rs[1..]).len(), 0);
    }

    #[test]
    fn claim_is_due_near_expiry_when_full_or_old() {
        let p = ClaimPolicy {
            before_expiry_ms: 100,
            used_permille: 900,
            max_age_ms: 1_000,
        };
        let rs = receipts(2);
        assert!(!p.due(&[], 100, 0, 0));
        assert!(!p.due(&rs, 1_000, 10_000, 1_500));
        assert!(p.due(&rs, 1_000, 1_550, 1_500));
        assert!(p.due(&rs, 33, 10_000, 1_500));
        assert!(p.due(&rs, 1_000, 10_000, 2_000));
    }
}
