//! The application simplex (through marshal) calls: proposing blocks (waiting for the
//! height's beacon, pacing, bounding the block) and verifying a peer's proposal.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use commonware_consensus::Application;
use commonware_consensus::marshal::ancestry::Ancestry;
use commonware_cryptography::{Digested, Digestible};
use futures::StreamExt;
use sortition_ledger::BeaconSig;
use sortition_ledger_service::Replica;

use crate::beacon_pool::BeaconPool;
use crate::block::{Block, MAX_BLOCK_TXS, MAX_TXS_BYTES};

pub(crate) type Scheme = commonware_consensus::simplex::scheme::ed25519::Scheme;
pub(crate) type Ctx = commonware_consensus::simplex::types::Context<
    commonware_cryptography::sha256::Digest,
    commonware_cryptography::ed25519::PublicKey,
>;

/// Wall-clock milliseconds (block timestamps).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The application simplex (through marshal) asks to propose and verify blocks.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) replica: Replica,
    pub(crate) beacon: Arc<BeaconPool>,
    pub(crate) beacon_wait: Duration,
    pub(crate) block_interval: Duration,
}

impl<E: Send + Sync + 'static> Application<E> for App {
    type SigningScheme = Scheme;
    type Context = Ctx;
    type Block = Block;
    type Input = ();

    async fn propose(
        &mut self,
        _context: (E, Ctx),
        mut ancestry: impl Ancestry<Block>,
        _input: (),
    ) -> Option<Digested<Block>> {
        let parent = ancestry.next().await?;
        let parent = parent.inner();
        let height = parent.height.next();
        // σ_h exists only once a quorum has block h-1 final. Simplex lets a leader build on a
        // parent that is only notarized, and that parent's own finalization may never complete
        // (its finalize votes lost in a crash, or a quorum timed out first): it becomes final
        // only through a final child. So, when σ_h does not come in time, the block goes out
        // as a bridge block, without a beacon; its draws wait for the next block with one.
        let sig = self.beacon.wait_for(height.get(), self.beacon_wait).await;
        if sig.is_none() {
            tracing::info!(
                height = height.get(),
                applied = self.replica.height(),
                "no beacon for this height yet (parent not final here): proposing a bridge block"
            );
        }
        // Pace blocks: not before the parent's time plus the interval.
        let due = parent.timestamp_ms + self.block_interval.as_millis() as u64;
        let now = now_ms();
        if due > now {
            tokio::time::sleep(Duration::from_millis(due - now)).await;
        }
        let mut txs = self.replica.proposal(MAX_BLOCK_TXS, &HashSet::new());
        // Keep the block under its byte bound.
        let mut bytes = 0usize;
        let mut keep = 0;
        for t in &txs {
            let n = sortition_types::canonical_bytes(t).len() + 8;
            if bytes + n > MAX_TXS_BYTES - 64 {
                break;
            }
            bytes += n;
            keep += 1;
        }
        txs.truncate(keep);
        let block = Block::new(
            parent.digest(),
            height,
            now_ms().max(parent.timestamp_ms),
            sig.map(|s| s.0),
            &txs,
        );
        let digest = block.digest();
        Some(Digested::precomputed(block, digest))
    }

    async fn verify(&mut self, _context: (E, Ctx), mut ancestry: impl Ancestry<Block>) -> bool {
        let Some(block) = ancestry.next().await else {
            return false;
        };
        let Some(parent) = ancestry.next().await else {
            return false;
        };
        match check_block(&self.replica, block.inner(), parent.inner()) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    height = block.inner().height.get(),
                    "refused a proposal: {why}"
                );
                false
            }
        }
    }
}

/// What every validator checks before voting for a block (deterministic, but for the clock
/// bound on the timestamp, which only delays a vote for a block from the future).
fn check_block(replica: &Replica, b: &Block, parent: &Block) -> Result<(), String> {
    if b.height.get() != parent.height.get() + 1 || b.parent != parent.digest() {
        return Err("not a child of its parent".into());
    }
    if b.timestamp_ms < parent.timestamp_ms {
        return Err("timestamp before its parent's".into());
    }
    if b.timestamp_ms > now_ms() + 10_000 {
        return Err("timestamp more than 10 s in the future".into());
    }
    if let Some(sig) = b.beacon {
        replica
            .verify_beacon(b.height.get(), &BeaconSig(sig))
            .map_err(|e| e.to_string())?;
    }
    let txs = b.transactions()?;
    if txs.len() > MAX_BLOCK_TXS {
        return Err(format!(
            "{} transactions (at most {MAX_BLOCK_TXS})",
            txs.len()
        ));
    }
    // Transaction signatures are not a validity condition of the block: the ledger refuses a
    // transaction whose signature fails (`bad_signature`, deterministically on every replica)
    // when it applies the block, as it refuses any other invalid transaction. Honest
    // proposers only take transactions that verified on entering the mempool.
    Ok(())
}
