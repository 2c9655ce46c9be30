//! The `dodge` adversary's timing: it cheats like `truncate`, and before claiming a stack it
//! predicts, from everything public, which of the claim's receipts would be sampled for audit,
//! postponing the claim while any would be (until the stack is about to expire).
//!
//! What it uses: the model's audit probability `q` (`/v1/models`), the id the claim will get
//! (the next one after the highest existing claim, found by probing `/v1/claims/{id}`), and the
//! newest block's randomness (`/v1/blocks/{height}`), with the ledger's own draw functions. With
//! the randomness of a hash chain known in advance, this predicts the sample exactly and the
//! dodger is never audited. With the beacon, the sample is drawn with `σ_{h+1}` of the block
//! after the claim's, which nobody knows when the claim is sent: the prediction is a coin
//! flip independent of the real draw, and each of its bad receipts is sampled with probability
//! `q` as for any other node.

use sortition_ledger::beacon::{below, draw};
use sortition_ledger::policy::PPM;
use sortition_ledger_client::LedgerClient;
use sortition_types::{ClaimId, Hash32, ModelId};

/// The receipts a claim `claim` of `count` receipts would have sampled if its draw used
/// `randomness` (the ledger's rule, `audits::open_for_claim`, before the per-claim cap).
pub fn predicted_sample(randomness: &Hash32, claim: ClaimId, count: u64, q_ppm: u32) -> Vec<u64> {
    (0..count)
        .filter(|i| below(draw(randomness, "sample", claim.0, *i), PPM) < u64::from(q_ppm))
        .collect()
}

/// The id the next claim will get: one past the highest that exists.
async fn next_claim_id(client: &LedgerClient) -> u64 {
    let mut id = 0;
    // Bounded: a devnet has far fewer claims.
    while id < 1_000_000 && client.claim(ClaimId(id)).await.is_ok() {
        id += 1;
    }
    id
}

/// Whether claiming now would (by the dodger's best public prediction) get a receipt audited.
pub async fn predicts_audit(
    client: &LedgerClient,
    model: &ModelId,
    count: u64,
) -> Result<bool, String> {
    let entry = client.model(model).await.map_err(|e| e.to_string())?;
    let Some(policy) = entry.spec.policy.audit else {
        return Ok(false);
    };
    let height = client.status().await.map_err(|e| e.to_string())?.height;
    // The newest block with a beacon (a bridge block has none; the ledger keeps the last value).
    let mut randomness = None;
    for h in (height.saturating_sub(64)..=height).rev() {
        let block = client.block(h).await.map_err(|e| e.to_string())?;
        if let Some(r) = block.randomness {
            randomness = Some(r);
            break;
        }
    }
    let Some(randomness) = randomness else {
        return Ok(false);
    };
    let claim = ClaimId(next_claim_id(client).await);
    Ok(!predicted_sample(&randomness, claim, count, policy.q_ppm).is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prediction is the ledger's draw: with the randomness known, it is exact (so the
    /// only thing between a dodger and a perfect dodge is not knowing the randomness).
    #[test]
    fn prediction_matches_the_ledger_rule_for_a_known_randomness() {
        let r = sortition_types::sha256(b"known");
        let picked = predicted_sample(&r, ClaimId(7), 1_000, 100_000);
        assert!(!picked.is_empty() && picked.len() < 200, "{}", picked.len());
        for i in 0..1_000u64 {
            let hit = below(draw(&r, "sample", 7, i), PPM) < 100_000;
            assert_eq!(hit, picked.contains(&i));
        }
        assert!(predicted_sample(&r, ClaimId(7), 1_000, 0).is_empty());
        assert_eq!(predicted_sample(&r, ClaimId(7), 10, PPM as u32).len(), 10);
    }
}
