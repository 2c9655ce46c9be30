//! Sortition settlement ledger: the pure, deterministic state machine.
//!
//! Owns: accounts, the node registry and collateral, models and their security policy, stacks
//! (prepaid compute in escrow), claims and their settlement, audit sampling, commit–reveal
//! verdicts, disputes, slashing, rewards and epochs. Input is a block (context + signed
//! transactions); output is per-transaction results with events, end-of-block events and a
//! state root.
//!
//! Does not own: I/O, storage, networking, clocks or OS randomness. Time enters only as the
//! block timestamp and randomness only as the block's beacon value (see [`beacon`]), which every
//! block carries as a BLS threshold signature checked against the genesis' group key; draws
//! use the value of a block after the one that fixed what they select for (see `draws`). So
//! the same code runs in the sequencer, in replicas and in the simulator. The sequencer, storage and HTTP
//! API live in `sortition-ledger-service`.
//!
//! Atomicity: every handler validates fully before its first mutation, and the only fallible
//! step after validation is none at all (credits cannot overflow because the total supply fits
//! in `u64`, which the faucet and genesis enforce). A refused transaction leaves the state
//! untouched, nonce included; the property tests check this against the state root.

pub mod beacon;
pub mod error;
pub mod event;
pub mod genesis;
pub mod policy;
pub mod state;
pub mod tx;

mod audits;
mod challenges;
mod disputes;
mod draws;
mod end_block;
mod equivocation;
mod nodes;
mod ops;
mod rulings;
mod stacks;
pub mod validator_faults;

use serde::{Deserialize, Serialize};
use sortition_types::{Hash32, PublicKey};

pub use beacon::{Beacon, BeaconConfig, BeaconError, BeaconSig, PartialSig, SecretShare};
pub use error::{BlockError, LedgerError, Result};
pub use event::Event;
pub use genesis::{Genesis, Params};
pub use policy::{AuditMethod, AuditPolicy, ModelSpec, SecurityPolicy, min_collateral};
pub use stacks::cost as stack_cost;
pub use state::*;
pub use tx::{
    Offer, SealingKey, SignedTx, TX_DOMAIN, Tx, TxKind, Verdict, VerifiedTx, unit_price_per_m,
    verdict_commitment,
};

/// What the sequencer (or consensus) supplies with each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockContext {
    pub height: u64,
    pub timestamp_ms: u64,
    /// `σ_h`: the group's threshold signature of `beacon::message(chain_id, height)`; checked
    /// against the genesis' group key. Its sha256 is the block's randomness.
    ///
    /// `None` in a *bridge* block: one proposed on a parent that was not yet final, when no
    /// `σ_h` could exist (validators release their shares of `σ_h` only once `h − 1` is final,
    /// see `beacon`). A bridge block draws nothing: the draws it would have made wait for the
    /// next block with a beacon, whose value was still unknown when they were fixed.
    pub beacon: Option<BeaconSig>,
}

impl BlockContext {
    /// The context of block `height` with its beacon signature.
    pub fn new(height: u64, timestamp_ms: u64, beacon: BeaconSig) -> Self {
        BlockContext {
            height,
            timestamp_ms,
            beacon: Some(beacon),
        }
    }

    /// A bridge block's context (no beacon; see [`BlockContext::beacon`]).
    pub fn bridge(height: u64, timestamp_ms: u64) -> Self {
        BlockContext {
            height,
            timestamp_ms,
            beacon: None,
        }
    }

    /// `sha256(σ_h)`, or `None` in a bridge block.
    pub fn randomness(&self) -> Option<Hash32> {
        self.beacon.map(|b| b.randomness())
    }
}

/// The result of one transaction: its events, or why it was refused.
pub type TxResult = std::result::Result<Vec<Event>, LedgerError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockOutcome {
    pub results: Vec<TxResult>,
    pub end_block_events: Vec<Event>,
    pub state_root: Hash32,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Ledger {
    state: State,
    beacon: Beacon,
    validators: validator_faults::ValidatorSet,
}

impl Ledger {
    /// Refuses a genesis whose beacon keys are inconsistent ([`LedgerError::BadBeaconKeys`]).
    pub fn new(genesis: &Genesis) -> std::result::Result<Self, LedgerError> {
        let beacon =
            Beacon::new(&genesis.chain_id, &genesis.beacon).map_err(LedgerError::BadBeaconKeys)?;
        let validators = validator_faults::ValidatorSet::new(&genesis.validators)
            .map_err(LedgerError::BadValidators)?;
        Ok(Ledger {
            state: ops::genesis_state(genesis)?,
            beacon,
            validators,
        })
    }

    /// The beacon the genesis defines (verifies `σ_h`; recovers it from partials).
    pub fn beacon(&self) -> &Beacon {
        &self.beacon
    }

    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn height(&self) -> u64 {
        self.state.height
    }
    pub fn state_root(&self) -> Hash32 {
        self.state.root()
    }

    /// The context of the next block, signed by a 1-of-1 group's only share (the embedded
    /// sequencer; a larger group recovers `σ_h` from partials and uses [`BlockContext::new`]).
    pub fn next_context(
        &self,
        timestamp_ms: u64,
        share: &SecretShare,
    ) -> std::result::Result<BlockContext, BeaconError> {
        let height = self.state.height + 1;
        let sig = self.beacon.sign_alone(share, height)?;
        Ok(BlockContext::new(
            height,
            timestamp_ms.max(self.state.timestamp_ms),
            sig,
        ))
    }

    /// Verifies signatures, then applies the block. A transaction with a bad signature is
    /// refused with [`LedgerError::BadSignature`] like any other refusal.
    pub fn apply_block(
        &mut self,
        ctx: BlockContext,
        txs: &[SignedTx],
    ) -> std::result::Result<BlockOutcome, BlockError> {
        let verified: Vec<std::result::Result<VerifiedTx, LedgerError>> =
            txs.iter().map(|t| t.clone().verify()).collect();
        self.apply_verified(ctx, verified)
    }

    /// Applies a block whose signatures were checked already (the sequencer checks them at
    /// submission). Entries that failed verification are recorded as refused.
    pub fn apply_verified(
        &mut self,
        ctx: BlockContext,
        txs: Vec<std::result::Result<VerifiedTx, LedgerError>>,
    ) -> std::result::Result<BlockOutcome, BlockError> {
        self.begin_block(&ctx)?;
        let results = txs
            .iter()
            .map(|t| match t {
                Ok(v) => self.apply_tx(&ctx, v),
                Err(e) => Err(e.clone()),
            })
            .collect();
        let end_block_events = self.end_block(&ctx);
        Ok(BlockOutcome {
            results,
            end_block_events,
            state_root: self.state.root(),
        })
    }

    /// Checks and enters a block; then call [`Ledger::apply_tx`] per transaction and
    /// [`Ledger::end_block`]. Exposed so tests can observe the state after every transaction.
    pub fn begin_block(&mut self, ctx: &BlockContext) -> std::result::Result<(), BlockError> {
        let expected = self.state.height + 1;
        if ctx.height != expected {
            return Err(BlockError::WrongHeight {
                expected,
                got: ctx.height,
            });
        }
        if ctx.timestamp_ms < self.state.timestamp_ms {
            return Err(BlockError::TimeWentBack {
                previous: self.state.timestamp_ms,
                got: ctx.timestamp_ms,
            });
        }
        if let Some(sig) = &ctx.beacon {
            self.beacon
                .verify(ctx.height, sig)
                .map_err(BlockError::Beacon)?;
        }
        self.state.height = ctx.height;
        self.state.timestamp_ms = ctx.timestamp_ms;
        if let Some(r) = ctx.randomness() {
            self.state.randomness = r;
        }
        Ok(())
    }

    /// Applies one verified transaction atomically.
    pub fn apply_tx(&mut self, ctx: &BlockContext, vtx: &VerifiedTx) -> TxResult {
        let tx = vtx.tx();
        let st = &mut self.state;
        if tx.chain_id != st.chain_id {
            return Err(LedgerError::WrongChain {
                expected: st.chain_id.clone(),
                got: tx.chain_id.clone(),
            });
        }
        if ctx.timestamp_ms >= tx.expires_at_ms {
            return Err(LedgerError::Expired {
                expires_at_ms: tx.expires_at_ms,
                now_ms: ctx.timestamp_ms,
            });
        }
        let expected = st.accounts.get(&tx.sender).map_or(0, |a| a.nonce);
        if tx.nonce != expected {
            return Err(LedgerError::WrongNonce {
                expected,
                got: tx.nonce,
            });
        }
        let events = match &tx.kind {
            TxKind::ReportValidatorFault { evidence } => {
                validator_faults::report(st, &self.validators, ctx, &tx.sender, evidence)
            }
            kind => dispatch(st, ctx, &tx.sender, kind),
        }?;
        st.accounts.entry(tx.sender).or_default().nonce = expected + 1;
        Ok(events)
    }

    /// End-of-block processing: audits, disputes, settlement, expiry, unbonding, epochs.
    pub fn end_block(&mut self, ctx: &BlockContext) -> Vec<Event> {
        end_block::run(&mut self.state, ctx)
    }
}

fn dispatch(st: &mut State, ctx: &BlockContext, sender: &PublicKey, kind: &TxKind) -> TxResult {
    use TxKind::*;
    match kind {
        Faucet { to, amount } => ops::faucet(st, sender, to, *amount),
        Transfer { to, amount } => ops::transfer(st, sender, to, *amount),
        RegisterModel { spec } => ops::register_model(st, sender, spec),
        RegisterNode { .. } => nodes::register(st, ctx, sender, kind),
        UpdateNode {
            endpoint,
            offers,
            capacity,
            add_collateral,
            class,
        } => nodes::update(
            st,
            sender,
            endpoint.as_ref(),
            offers.as_ref(),
            *capacity,
            *add_collateral,
            class.as_ref(),
        ),
        PauseNode => nodes::pause(st, sender),
        ResumeNode => nodes::resume(st, sender),
        LeaveNode => nodes::leave(st, ctx, sender),
        WithdrawCollateral => nodes::withdraw(st, sender),
        RotateConfidentialKey {
            key,
            attestation,
            epoch,
        } => nodes::rotate(st, sender, *key, attestation, *epoch),
        BuyStack {
            model,
            node,
            max_price_per_m,
            units,
            expires_at_ms,
        } => stacks::buy(
            st,
            ctx,
            sender,
            model,
            *node,
            *max_price_per_m,
            *units,
            *expires_at_ms,
        ),
        ClaimStack {
            stack,
            units_used,
            receipts_root,
            receipt_count,
        } => stacks::claim(
            st,
            ctx,
            sender,
            *stack,
            *units_used,
            *receipts_root,
            *receipt_count,
        ),
        CommitVerdict { audit, commitment } => audits::commit(st, ctx, sender, *audit, *commitment),
        RevealVerdict {
            audit,
            verdict,
            salt,
        } => audits::reveal(st, ctx, sender, *audit, verdict, salt),
        SubmitReceipt {
            audit,
            receipt,
            proof,
        } => audits::submit_receipt(st, ctx, sender, *audit, receipt, proof),
        CommitVote {
            dispute,
            commitment,
        } => disputes::commit(st, ctx, sender, *dispute, *commitment),
        RevealVote {
            dispute,
            verdict,
            salt,
        } => disputes::reveal(st, ctx, sender, *dispute, verdict, salt),
        ChallengeReceipt { receipt } => challenges::challenge(st, ctx, sender, receipt),
        ReportEquivocation { first, second } => equivocation::report(st, sender, first, second),
        DisownReceipt { receipt } => stacks::disown(st, sender, receipt),
        // Checked against the validator set, which `Ledger::apply_tx` holds.
        ReportValidatorFault { .. } => Err(LedgerError::NotAValidatorFault(
            "checked by the ledger, not here".into(),
        )),
    }
}
