//! Deliberate misbehaviour for devnet and tests: a node that cheats in one chosen way, so the
//! verification layer can be shown to catch it.
//!
//! A node only accepts an adversary mode when the ledger it joins is a devnet (checked at
//! startup); production ledgers refuse it. Every hook below is the identity for honest nodes.

use sortition_engine::Prompt;

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

/// The prompt the adversary actually runs.
pub fn rewrite_prompt(_mode: Option<Mode>, prompt: Prompt) -> Prompt {
    prompt
}

/// The text the adversary returns.
pub fn rewrite_text(mode: Option<Mode>, text: String) -> String {
    match mode {
        Some(Mode::Truncate | Mode::WithholdCustody | Mode::Dodge) => {
            text.chars().take(text.chars().count() / 2).collect()
        }
        Some(Mode::Random) => text.chars().rev().collect(),
        _ => text,
    }
}

/// The (input, output) token counts the adversary writes into its receipt.
pub fn report_usage(mode: Option<Mode>, input: u64, output: u64) -> (u64, u64) {
    match mode {
        Some(Mode::OverReport) => (input * 2, output * 2),
        // A gateway reserves a request's body bytes plus its `max_tokens` and a margin.
        Some(Mode::OverReportBlatant) => (input * 2, output + 1_000_000),
        _ => (input, output),
    }
}

/// The receipt the adversary keeps for its claim instead of the one it gave the user, if any.
pub fn kept_receipt(
    mode: Option<Mode>,
    given: &sortition_types::Receipt,
) -> Option<sortition_types::Receipt> {
    (mode == Some(Mode::Equivocate)).then(|| sortition_types::Receipt {
        output_tokens: given.output_tokens * 2,
        ..given.clone()
    })
}

/// Whether the node delivers the confidential requests it keeps to their auditors.
pub fn delivers_custody(mode: Option<Mode>) -> bool {
    mode != Some(Mode::WithholdCustody)
}
