//! The status line `sortition chat` prints under each answer: is its receipt verified, and
//! has the ledger audited it?
//!
//! "verified" needs the gateway's own check (`verified_by_gateway`) and, when a ledger is
//! given, our own: the signature against the key the ledger holds for the node, and the text
//! received against the receipt's response hash. An audit of the receipt (same stack and
//! sequence) upgrades the word to "audited" / "disputed" with its outcome.

use std::fmt;

use anyhow::{Context, Result};
use sortition_ledger::{Audit, AuditOutcome};
use sortition_ledger_client::LedgerClient;
use sortition_types::text_response_hash;

use super::chat::Answer;

/// What the ledger's audit of a receipt says, if it sampled it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditNote {
    /// e.g. "audited (passed, audit-3)" or "disputed (executor at fault, audit-3)".
    pub word: String,
    /// The audit found the executor cheated (or it never produced the receipt).
    pub against_executor: bool,
}

/// What is known about one answer's receipt.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceiptStatus {
    /// The stream carried no `sortition` receipt.
    NoReceipt,
    /// A receipt was there but a check failed.
    Failed { summary: String, reason: String },
    /// Every requested check passed.
    Verified {
        summary: String,
        by_ledger: bool,
        audit: Option<AuditNote>,
    },
}

impl fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiptStatus::NoReceipt => {
                write!(f, "[receipt: MISSING — the response carried no receipt]")
            }
            ReceiptStatus::Failed { summary, reason } => {
                write!(f, "[receipt: UNVERIFIED ({reason}) | {summary}]")
            }
            ReceiptStatus::Verified {
                summary,
                by_ledger,
                audit,
            } => {
                let how = if *by_ledger {
                    "gateway + ledger key"
                } else {
                    "by gateway"
                };
                match audit {
                    Some(a) => write!(f, "[receipt: {} | verified ({how}) | {summary}]", a.word),
                    None => write!(f, "[receipt: verified ({how}) | {summary}]"),
                }
            }
        }
    }
}

/// Checks an answer's receipt; `ledger` adds the independent checks and the audit lookup.
pub async fn check(answer: &Answer, ledger: Option<&str>) -> ReceiptStatus {
    let Some(ext) = &answer.ext else {
        return ReceiptStatus::NoReceipt;
    };
    let r = &ext.receipt.receipt;
    let summary = format!(
        "node {} | stack {} seq {} | tokens {}+{} | class {}",
        r.node,
        r.stack,
        r.sequence,
        r.input_tokens,
        r.output_tokens,
        r.node_class.to_hex().get(..16).unwrap_or_default()
    );
    let fail = |reason: String| ReceiptStatus::Failed {
        summary: summary.clone(),
        reason,
    };
    if ext.verified_by_gateway != Some(true) {
        return fail("the gateway did not vouch for it".into());
    }
    if ext.node != r.node {
        return fail(format!(
            "served by {} but the receipt names {}",
            ext.node, r.node
        ));
    }
    let Some(ledger) = ledger else {
        return ReceiptStatus::Verified {
            summary,
            by_ledger: false,
            audit: None,
        };
    };
    let client = LedgerClient::new(ledger);
    let node = match client.node(r.node).await {
        Ok(n) => n,
        Err(e) => return fail(format!("{} not readable on the ledger: {e}", r.node)),
    };
    if ext.receipt.verify(&node.operator).is_err() {
        return fail(format!(
            "signature is not by the key the ledger holds for {}",
            r.node
        ));
    }
    let Some(finish) = &answer.finish_reason else {
        return fail("the stream had no finish_reason".into());
    };
    if text_response_hash(&answer.text, finish) != r.response_hash {
        return fail("the text received is not what the node committed to".into());
    }
    let audit = match audits(ledger).await {
        Ok(list) => audit_word(&list, r.stack, r.sequence),
        Err(e) => Some(AuditNote {
            word: format!("audit lookup failed: {e:#}"),
            against_executor: false,
        }),
    };
    ReceiptStatus::Verified {
        summary,
        by_ledger: true,
        audit,
    }
}

/// Every audit the ledger knows (GET /v1/audits).
async fn audits(ledger: &str) -> Result<Vec<Audit>> {
    let url = format!("{ledger}/v1/audits");
    let resp = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.json().await.context("decoding audits")
}

impl ReceiptStatus {
    /// Whether the receipt passed every check asked for and no audit found against it.
    pub fn is_ok(&self) -> bool {
        match self {
            ReceiptStatus::Verified { audit, .. } => {
                !audit.as_ref().is_some_and(|a| a.against_executor)
            }
            _ => false,
        }
    }
}

/// The note for the audit of this receipt (same stack and sequence), if the ledger has one.
pub fn audit_word(
    list: &[Audit],
    stack: sortition_types::StackId,
    sequence: u64,
) -> Option<AuditNote> {
    let a = list
        .iter()
        .find(|a| a.stack == stack && a.receipt_index == sequence)?;
    let against_executor = matches!(
        a.outcome,
        Some(AuditOutcome::ExecutorAtFault | AuditOutcome::ReceiptMissing)
    );
    let word = match &a.outcome {
        None => format!("audit {} open", a.id),
        Some(AuditOutcome::Passed) => format!("audited (passed, {})", a.id),
        Some(AuditOutcome::Disputed { dispute }) => format!("disputed ({dispute} open)"),
        Some(AuditOutcome::ExecutorAtFault) => format!("disputed (executor at fault, {})", a.id),
        Some(AuditOutcome::ExecutorCleared) => format!("disputed (executor cleared, {})", a.id),
        Some(o) => format!("audited ({o:?}, {})", a.id),
    };
    Some(AuditNote {
        word,
        against_executor,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use sortition_types::{AuditId, ClaimId, DisputeId, Keypair, ModelId, NodeId, StackId};

    fn audit(stack: u64, index: u64, outcome: Option<AuditOutcome>) -> Audit {
        Audit {
            id: AuditId(4),
            claim: Some(ClaimId(1)),
            stack: StackId(stack),
            owner: Keypair::from_secret([1; 32]).public(),
            executor: NodeId(0),
            model: ModelId::new("m"),
            receipt_index: index,
            wanted: 2,
            auditors: vec![],
            commits: Default::default(),
            reveals: Default::default(),
            receipt: None,
            opened_height: 1,
            commit_deadline: 2,
            reveal_deadline: 3,
            outcome,
            challenge_bond: None,
        }
    }

    #[test]
    fn audits_are_matched_by_stack_and_sequence() {
        let list = vec![
            audit(1, 0, Some(AuditOutcome::Passed)),
            audit(2, 5, Some(AuditOutcome::ExecutorAtFault)),
        ];
        assert_eq!(audit_word(&list, StackId(1), 1), None);
        let passed = audit_word(&list, StackId(1), 0).expect("audited");
        assert!(
            passed.word.starts_with("audited (passed") && !passed.against_executor,
            "{passed:?}"
        );
        let fault = audit_word(&list, StackId(2), 5).expect("audited");
        assert!(
            fault.word.contains("executor at fault") && fault.against_executor,
            "{fault:?}"
        );
        let disputed = audit_word(
            &[audit(
                3,
                0,
                Some(AuditOutcome::Disputed {
                    dispute: DisputeId(9),
                }),
            )],
            StackId(3),
            0,
        );
        assert!(disputed.is_some_and(|d| d.word.starts_with("disputed")));
        let status = ReceiptStatus::Verified {
            summary: "s".into(),
            by_ledger: true,
            audit: Some(fault),
        };
        assert!(!status.is_ok());
        assert!(
            status.to_string().starts_with("[receipt: disputed"),
            "{status}"
        );
    }

    #[tokio::test]
    async fn no_receipt_is_not_verified() {
        let s = check(&Answer::default(), None).await;
        assert_eq!(s, ReceiptStatus::NoReceipt);
        assert!(!s.is_ok());
        assert!(s.to_string().contains("MISSING"));
    }
}
