//! Deliberate misbehaviour for devnet and tests: a node that cheats in one chosen way, so the
//! verification layer can be shown to catch it.
//!
//! Each mode is a [`Behaviour`]: the node asks it wherever a cheater would deviate. A node only
//! accepts an adversary mode when the ledger it joins is a devnet (checked at startup);
//! production ledgers refuse it, and production nodes run [`crate::behaviour::Honest`].

use sortition_types::Receipt;

use crate::behaviour::{AuditConduct, Behaviour};

/// How the adversary cheats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Returns a truncated answer (saves compute) while claiming a full one.
    Truncate,
    /// Returns the answer with its characters scrambled (stands in for random tokens).
    Random,
    /// Reports twice the tokens it actually used.
    OverReport,
    /// Reports more tokens than the request could use at all, past the gateway's reservation
    /// for it: the gateway refuses the answer at once (and challenges the receipt, which the
    /// node still claims).
    OverReportBlatant,
    /// Never performs the audits it is selected for.
    SkipAudits,
    /// As an auditor, copies another auditor's verdict instead of re-executing. Commit-reveal
    /// defeats it: verdicts become visible only after every auditor committed or the commit
    /// phase ended, so there is nothing to copy until its own commit is too late.
    Copy,
    /// Serves a smaller model (the first 8 of the default model's 30 blocks: several times
    /// cheaper, and often fluent) while claiming the full model and its node class.
    SmallerModel,
    /// Truncates its answers like `Truncate`, and never delivers the confidential requests it
    /// keeps in custody to their auditors, hoping that an audit nobody can judge lets it off.
    WithholdCustody,
    /// Gives the user an honest receipt but keeps, and claims, another one for the same
    /// position with twice the output tokens: paid double unless someone compares the two.
    Equivocate,
    /// Truncates its answers like `Truncate`, and times its claims with everything public
    /// (see `crate::dodge`) so that, if it could predict the audit sample, none of its bad
    /// receipts would ever be drawn.
    Dodge,
}

/// Blocks the `smaller-model` adversary keeps.
pub const SMALLER_MODEL_LAYERS: usize = 8;

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "truncate" => Ok(Mode::Truncate),
            "random" => Ok(Mode::Random),
            "over-report" => Ok(Mode::OverReport),
            "over-report-blatant" => Ok(Mode::OverReportBlatant),
            "skip-audits" => Ok(Mode::SkipAudits),
            "copy" => Ok(Mode::Copy),
            "smaller-model" => Ok(Mode::SmallerModel),
            "withhold-custody" => Ok(Mode::WithholdCustody),
            "equivocate" => Ok(Mode::Equivocate),
            "dodge" => Ok(Mode::Dodge),
            other => Err(format!(
                "unknown adversary mode '{other}'; expected truncate, random, over-report, over-report-blatant, skip-audits, copy, smaller-model, withhold-custody, equivocate or dodge"
            )),
        }
    }
}

impl Behaviour for Mode {
    fn answer(&self, text: String) -> String {
        match self {
            Mode::Truncate | Mode::WithholdCustody | Mode::Dodge => {
                text.chars().take(text.chars().count() / 2).collect()
            }
            Mode::Random => text.chars().rev().collect(),
            _ => text,
        }
    }

    fn usage(&self, input: u64, output: u64) -> (u64, u64) {
        match self {
            Mode::OverReport => (input * 2, output * 2),
            // A gateway reserves a request's body bytes plus its `max_tokens` and a margin.
            Mode::OverReportBlatant => (input * 2, output + 1_000_000),
            _ => (input, output),
        }
    }

    fn kept_receipt(&self, given: &Receipt) -> Option<Receipt> {
        (*self == Mode::Equivocate).then(|| Receipt {
            output_tokens: given.output_tokens * 2,
            ..given.clone()
        })
    }

    fn delivers_custody(&self) -> bool {
        *self != Mode::WithholdCustody
    }

    fn audit_conduct(&self) -> AuditConduct {
        match self {
            Mode::SkipAudits => AuditConduct::Skip,
            Mode::Copy => AuditConduct::CopyOthers,
            _ => AuditConduct::Judge,
        }
    }

    fn times_claims(&self) -> bool {
        *self == Mode::Dodge
    }

    fn model_layers(&self) -> Option<usize> {
        (*self == Mode::SmallerModel).then_some(SMALLER_MODEL_LAYERS)
    }
}
