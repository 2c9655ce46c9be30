//! The committer: finalized blocks, in height order, into the replicated ledger.

use std::sync::Arc;
use std::time::Duration;

use commonware_codec::Encode;
use commonware_consensus::Heightable;
use commonware_consensus::marshal::{Update, core::Mailbox as MarshalMailbox, standard::Standard};
use commonware_utils::Acknowledgement;
use sortition_ledger_service::Replica;

use crate::app::Scheme;
use crate::beacon_pool::BeaconPool;
use crate::block::Block;

/// Applies each finalized block marshal delivers, then acknowledges it and releases this
/// validator's beacon partial for the next height. A block that cannot be persisted is retried
/// (the replica rolled back), with a bounded backoff; nothing is acknowledged before it is
/// durable.
pub(crate) async fn commit_loop(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Update<Block>>,
    replica: Replica,
    beacon: Arc<BeaconPool>,
    mailbox: MarshalMailbox<Scheme, Standard<Block>>,
    release: tokio::sync::watch::Sender<u64>,
) {
    while let Some(update) = rx.recv().await {
        let Update::Block(block, ack) = update else {
            continue;
        };
        let block = block.inner();
        let height = block.height();
        if height.get() == 0 || height.get() <= replica.height() {
            ack.acknowledge();
            continue;
        }
        let txs = match block.transactions() {
            Ok(t) => t,
            Err(e) => {
                // Verified before any honest vote: a quorum finalized something undecodable.
                tracing::error!(
                    height = height.get(),
                    "a final block does not decode: {e}; stopping"
                );
                return;
            }
        };
        // What a light client needs to check this block (see `light`).
        let proof = crate::light::Proof {
            parent: block.parent,
            txs_digest: block.txs_digest(),
            finalization: mailbox
                .get_finalization(height)
                .await
                .map(|f| f.encode().to_vec()),
        }
        .encode()
        .to_vec();
        let certificate = Some(proof);
        let mut backoff = Duration::from_millis(50);
        loop {
            let r = replica.commit(block.context(), txs.clone(), certificate.as_deref());
            match r {
                Ok(_) => break,
                Err(sortition_ledger_service::ServiceError::Storage(e)) => {
                    tracing::error!(
                        height = height.get(),
                        "final block not persisted ({e}); retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(
                        height = height.get(),
                        "final block cannot be applied: {e}; stopping"
                    );
                    return;
                }
            }
        }
        ack.acknowledge();
        beacon.prune(height.get());
        let _ = release.send(height.get() + 1);
    }
}
