//! What simplex and marshal report to the validator: evidence of equivocation (for the
//! ledger) and finalized blocks (for the committer).

use commonware_codec::Encode;
use commonware_consensus::Reporter;
use commonware_consensus::marshal::Update;
use commonware_consensus::simplex;
use commonware_cryptography::{ed25519, sha256::Digest};
use commonware_utils::ordered::Set;

use crate::app::Scheme;
use crate::block::Block;

/// Sees everything simplex reports, records evidence of equivocation (attributable: the
/// ed25519 scheme signs each vote with its validator's own key, so a pair of conflicting votes
/// proves who cast them), and passes everything on to marshal's wrapper.
#[derive(Clone)]
pub(crate) struct Evidence<R> {
    pub(crate) inner: R,
    pub(crate) participants: Set<ed25519::PublicKey>,
    /// The encoded evidence, to the task that reports it to the ledger.
    pub(crate) to_ledger: tokio::sync::mpsc::UnboundedSender<(u32, u64, Vec<u8>)>,
}

impl<R> Reporter for Evidence<R>
where
    R: Reporter<Activity = simplex::types::Activity<Scheme, Digest>>,
{
    type Activity = simplex::types::Activity<Scheme, Digest>;
    fn report(&mut self, activity: Self::Activity) -> commonware_actor::Feedback {
        use commonware_consensus::Viewable as _;
        use commonware_utils::ordered::Quorum as _;
        use simplex::types::{Activity, Attributable};
        let fault = match &activity {
            Activity::ConflictingNotarize(e) => Some(("conflicting notarize votes", e.signer())),
            Activity::ConflictingFinalize(e) => Some(("conflicting finalize votes", e.signer())),
            Activity::NullifyFinalize(e) => Some(("nullify and finalize in one view", e.signer())),
            _ => None,
        };
        if let Some((what, who)) = fault {
            let key = self
                .participants
                .key(who)
                .map(|k| hex::encode(k.encode()))
                .unwrap_or_default();
            tracing::warn!(
                validator = %key,
                view = activity.view().get(),
                "equivocation evidence: {what}"
            );
            let _ =
                self.to_ledger
                    .send((who.get(), activity.view().get(), activity.encode().to_vec()));
        }
        self.inner.report(activity)
    }
}

/// Receives marshal's finalized blocks (in height order) for the committer.
#[derive(Clone)]
pub(crate) struct Finalized {
    pub(crate) tx: tokio::sync::mpsc::UnboundedSender<Update<Block>>,
}

impl Reporter for Finalized {
    type Activity = Update<Block>;
    fn report(&mut self, activity: Self::Activity) -> commonware_actor::Feedback {
        let _ = self.tx.send(activity);
        commonware_actor::Feedback::Ok
    }
}
