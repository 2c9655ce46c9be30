//! Sortition validator: the ledger state machine replicated by BFT consensus.
//!
//! # The engine, and why
//!
//! Consensus is [commonware](https://docs.rs/commonware-consensus)'s **simplex** (pinned
//! `=2026.10.0`), with its **marshal** for ordered delivery of finalized blocks, backfill of
//! missing ones from peers and their durable storage, **buffered broadcast** for block
//! dissemination and the **authenticated lookup** p2p network (encrypted, peer-authenticated
//! TCP between the validators the genesis names). Malachite (Tendermint, `arc-malachitebft-*`
//! 0.8) was the other candidate; simplex was chosen because
//! - it finalizes in three network hops with a new block every two, and needs no timeout in
//!   the happy path;
//! - its marshal already does what a crashed or cut-off validator needs to catch up (it fetches
//!   missing finalized blocks with their certificates from peers and delivers them in order), so
//!   we write no state sync;
//! - the threshold BLS primitives our beacon uses come from the same library
//!   (`commonware-cryptography`), and its deterministic runtime can run many validators in
//!   one process for tests;
//! - Malachite leaves the beacon, the codec and the block sync protocol to the application.
//!
//! Its cost: the API is young (calendar versions, "ALPHA" stability on parts we use), so the
//! version is pinned exactly and the integration lives in this one crate.
//!
//! # What a validator does
//!
//! - **Consensus identity**: an ed25519 key (`validator-key` in the data directory, 0600); the
//!   genesis lists every validator's public key (`validators`, ascending). Votes and
//!   certificates use simplex's ed25519 scheme, which is *attributable*: a certificate names who
//!   signed, and evidence of a fault (a conflicting vote) is verifiable by anyone.
//! - **Mempool**: a transaction submitted at any validator is checked, kept, and shared with the
//!   others; the submitter is answered only when it is in a block that is final and persisted
//!   at that validator (see `sortition_ledger_service::replica`).
//! - **Blocks** ([`block::Block`]) carry the transactions, a timestamp, and `σ_h` (but bridge
//!   blocks, below).
//! - **Execution follows finality**: marshal delivers each finalized block, in height order, to
//!   the replica, which applies it to the pure ledger state machine, persists it with its
//!   finality certificate (redb), and only then acknowledges it to marshal.
//!
//! # The beacon
//!
//! `σ_h` is the group's threshold signature over `(chain_id, h)` (see `sortition_ledger::beacon`).
//! Each validator signs its partial for `h` **only after block `h - 1` is final and applied
//! here**, and sends it to the others; the proposer of block `h` gathers `t` partials (`t` = the
//! BFT quorum), recovers `σ_h` and puts it in the block; every validator verifies it against the
//! group key before voting, and every replica verifies it again when it applies the block.
//! Claims in block `h - 1` have their receipts and auditors drawn with `σ_h`: a value nobody —
//! no node, no proposer, no coalition smaller than the quorum — can compute before block `h - 1`
//! is final, and BLS signatures are unique, so the proposer cannot grind it either. (Simplex's
//! own per-view VRF seed is *not* used: its documentation shows a Byzantine leader can learn a
//! view's seed before its block is fixed.)
//!
//! Simplex pipelines: the leader of the next view may build on a block that is only notarized,
//! and a notarized block's own finalization can fail for good (its finalize votes lost when
//! every validator crashed, or a quorum timed out first); it then becomes final only through a
//! final child. A child at `h` cannot carry `σ_h` before `h - 1` is final, so a proposer that
//! does not get `σ_h` within `beacon_wait` proposes a **bridge block** without a beacon
//! (`sortition_ledger::BlockContext::beacon`): it finalizes its parent, draws nothing, and the
//! draws it would have made wait for the next block with a beacon. Requiring `σ_h` in every
//! block instead deadlocks the chain in exactly that case.
//!
//! # What production would still need
//!
//! A distributed key generation instead of the devnet's trusted dealer (commonware has
//! Feldman–Desmedt DKG and resharing), validator set changes across epochs, validators chosen
//! by stake, and light clients that follow the validator set.

mod app;
mod beacon_pool;
pub mod block;
mod committer;
mod engine;
pub mod keys;
pub mod light;
mod reporters;
pub mod setup;

pub use engine::{Timing, ValidatorConfig, ValidatorError, run};
