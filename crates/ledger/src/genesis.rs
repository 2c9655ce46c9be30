//! The chain's starting point and its parameters. Durations are in blocks; times in block ms.

use serde::{Deserialize, Serialize};
use sortition_types::{Amount, Hash32, PublicKey, canonical_bytes, sha256};

use crate::beacon::BeaconConfig;

use crate::policy::ModelSpec;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Blocks after a claim before it may settle (audits must also have finished).
    pub challenge_window_blocks: u64,
    /// Blocks between LeaveNode and the collateral becoming withdrawable.
    pub unbonding_blocks: u64,
    /// Blocks auditors have to commit a verdict after an audit opens.
    pub audit_commit_blocks: u64,
    /// Further blocks to reveal it; the executor's receipt is due by the same deadline.
    pub audit_reveal_blocks: u64,
    pub dispute_commit_blocks: u64,
    pub dispute_reveal_blocks: u64,
    /// Treasury's cut of every settled payment.
    pub treasury_fee_bps: u16,
    /// Blocks per epoch.
    pub epoch_length_blocks: u64,
    /// Slash for an auditor or committee member that misses its commit or reveal deadline.
    pub missed_deadline_slash: Amount,
    /// Slash for an auditor whose verdict the dispute proved wrong.
    pub wrong_auditor_slash: Amount,
    /// Share of an executor's slash paid to the honest auditors and committee (rest: treasury).
    pub dispute_reward_bps: u16,
    /// Cap on sampled receipts per claim (bounds per-claim work and auditor load).
    pub max_audits_per_claim: u32,
    /// Cap on receipts per claim (sampling costs one draw per receipt); nodes claim more often.
    pub max_receipts_per_claim: u64,
    pub max_key_rotations_per_epoch: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            challenge_window_blocks: 20,
            unbonding_blocks: 200,
            audit_commit_blocks: 20,
            audit_reveal_blocks: 20,
            dispute_commit_blocks: 20,
            dispute_reveal_blocks: 20,
            treasury_fee_bps: 100,
            epoch_length_blocks: 1_000,
            missed_deadline_slash: Amount(1_000_000),
            wrong_auditor_slash: Amount(5_000_000),
            dispute_reward_bps: 5_000,
            max_audits_per_claim: 16,
            max_receipts_per_claim: 10_000,
            max_key_rotations_per_epoch: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub chain_id: String,
    /// Enables the Faucet transaction.
    pub devnet: bool,
    /// May register models.
    pub admin: PublicKey,
    pub balances: Vec<(PublicKey, Amount)>,
    pub treasury: Amount,
    pub models: Vec<ModelSpec>,
    pub params: Params,
    /// Block time of height 0.
    pub genesis_time_ms: u64,
    /// The randomness beacon's public keys (group key, threshold, public shares). Secret
    /// shares are never here: each validator keeps its own in its data directory.
    pub beacon: BeaconConfig,
    /// The validator set under BFT consensus: each validator's consensus identity (hex ed25519
    /// public key), in participant order, which is also the beacon's: validator `i` holds
    /// beacon share `i`. Empty for the embedded single sequencer. See [`Genesis::check_validators`].
    #[serde(default)]
    pub validators: Vec<String>,
}

impl Genesis {
    /// A devnet genesis with the faucet on and default parameters, and the **insecure test
    /// beacon** ([`crate::beacon::insecure_test_group`]: a 1-of-1 group whose secret is public,
    /// so its randomness is predictable). Tests use it as is; anything facing a node must
    /// replace `beacon` with a freshly dealt group (as `sortition devnet` does).
    pub fn devnet(chain_id: &str, admin: PublicKey) -> Self {
        Genesis {
            chain_id: chain_id.into(),
            devnet: true,
            admin,
            balances: vec![],
            treasury: Amount::ZERO,
            models: vec![],
            params: Params::default(),
            genesis_time_ms: 0,
            beacon: crate::beacon::insecure_test_group().0,
            validators: vec![],
        }
    }

    /// Checks that the validator set and the beacon agree: one public share per validator,
    /// identities distinct, well-formed (64 hex digits) and in ascending order (the order
    /// consensus numbers participants in), and a beacon threshold equal to the BFT quorum
    /// `n - (n - 1) / 3`, so that exactly the coalitions that could finalize a block can make
    /// its randomness. Says what is wrong.
    pub fn check_validators(&self) -> std::result::Result<(), String> {
        let n = self.validators.len();
        if n == 0 {
            return Err("the genesis names no validators".into());
        }
        for (i, v) in self.validators.iter().enumerate() {
            let ok = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(format!(
                    "validator {i}'s key {v:?} is not a hex ed25519 public key (64 hex digits)"
                ));
            }
        }
        let lower: Vec<String> = self.validators.iter().map(|v| v.to_lowercase()).collect();
        if lower.windows(2).any(|w| w[0] >= w[1]) {
            return Err("validators must be listed once each, in ascending order of key".into());
        }
        if self.beacon.public_shares.len() != n {
            return Err(format!(
                "the genesis names {n} validators but {} beacon public shares",
                self.beacon.public_shares.len()
            ));
        }
        let quorum = n - (n - 1) / 3;
        if self.beacon.threshold as usize != quorum {
            return Err(format!(
                "the beacon threshold is {} but {n} validators finalize with a quorum of {quorum}: \
                 they must be equal",
                self.beacon.threshold
            ));
        }
        Ok(())
    }

    pub fn hash(&self) -> Hash32 {
        sha256(&canonical_bytes(self))
    }
}
