//! Where a node's conduct could deviate from the protocol, as one seam: every place on the
//! request, receipt, audit and claim paths that a cheater would change asks the node's
//! [`Behaviour`]. Production nodes run [`Honest`], whose every answer is the protocol's; the
//! devnet and the tests plug in the adversaries of [`crate::adversary`] (accepted only on a
//! devnet ledger), so the verification layer can be shown to catch each one.

use sortition_engine::Prompt;
use sortition_types::Receipt;

/// How a node takes part in the audits it is drawn for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditConduct {
    /// Re-executes and commits its own verdict (the protocol).
    Judge,
    /// Never shows up.
    Skip,
    /// Waits for another auditor's verdict and copies it.
    CopyOthers,
}

/// A node's conduct where it could cheat. Every method's default is the protocol's.
pub trait Behaviour: Send + Sync + std::fmt::Debug {
    /// The prompt actually run for a request.
    fn prompt(&self, prompt: Prompt) -> Prompt {
        prompt
    }
    /// The text actually returned for a generated answer.
    fn answer(&self, text: String) -> String {
        text
    }
    /// The (input, output) token counts written into the receipt for what was used.
    fn usage(&self, input: u64, output: u64) -> (u64, u64) {
        (input, output)
    }
    /// Another receipt to keep (and claim) for the position instead of the one given.
    fn kept_receipt(&self, _given: &Receipt) -> Option<Receipt> {
        None
    }
    /// Whether confidential requests kept in custody are delivered to their auditors.
    fn delivers_custody(&self) -> bool {
        true
    }
    fn audit_conduct(&self) -> AuditConduct {
        AuditConduct::Judge
    }
    /// Whether claims are timed against a predicted audit sample.
    fn times_claims(&self) -> bool {
        false
    }
    /// Serve only the first blocks of the model (while claiming all of it).
    fn model_layers(&self) -> Option<usize> {
        None
    }
}

/// The protocol, everywhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct Honest;

impl Behaviour for Honest {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honest_changes_nothing() {
        let h = Honest;
        assert_eq!(h.answer("abc".into()), "abc");
        assert_eq!(h.usage(3, 4), (3, 4));
        assert!(h.delivers_custody());
        assert_eq!(h.audit_conduct(), AuditConduct::Judge);
        assert!(!h.times_claims());
        assert_eq!(h.model_layers(), None);
        assert!(matches!(
            h.prompt(Prompt::Tokens(vec![1, 2])),
            Prompt::Tokens(t) if t == [1, 2]
        ));
    }
}
