//! The node side of attestation: producing [`Evidence`] whose report data binds a key.
//!
//! Only the INSECURE dev attester is built. Producing TDX quotes (configfs-tsm / the TDX guest
//! device) and SEV-SNP reports (`/dev/sev-guest`) needs the hardware, which this project has
//! not had to build and test on; [`AttesterKind::build`] says so instead of pretending. The
//! verifiers of such evidence ([`crate::DcapVerifier`], [`crate::SnpVerifier`]) are built and
//! tested on real sample evidence.

use std::fmt;
use std::str::FromStr;

use crate::attest::{DevEvidence, Evidence, INSECURE_DEV_LABEL};

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttesterError {
    #[error("unknown attester {0:?} (known: dev, tdx, sev-snp)")]
    Unknown(String),
    #[error(
        "the {0} attester is not built: producing its evidence needs the TEE's guest device, \
         which this build does not drive; only the verifier of {0} evidence is built"
    )]
    NotBuilt(&'static str),
    #[error("evidence could not be produced: {0}")]
    Failed(String),
}

/// Which attester a node runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttesterKind {
    /// INSECURE: no TEE, evidence proves nothing. Development networks only.
    InsecureDev,
    IntelTdx,
    AmdSevSnp,
}

impl FromStr for AttesterKind {
    type Err = AttesterError;
    fn from_str(s: &str) -> Result<Self, AttesterError> {
        match s {
            "dev" | "insecure-dev" => Ok(AttesterKind::InsecureDev),
            "tdx" => Ok(AttesterKind::IntelTdx),
            "sev-snp" | "snp" => Ok(AttesterKind::AmdSevSnp),
            other => Err(AttesterError::Unknown(other.into())),
        }
    }
}

impl fmt::Display for AttesterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttesterKind::InsecureDev => "dev (INSECURE: no TEE, proves nothing)",
            AttesterKind::IntelTdx => "tdx",
            AttesterKind::AmdSevSnp => "sev-snp",
        })
    }
}

impl AttesterKind {
    /// The attester, or why it cannot run here.
    pub fn build(self) -> Result<Box<dyn Attester>, AttesterError> {
        match self {
            AttesterKind::InsecureDev => Ok(Box::new(DevAttester)),
            AttesterKind::IntelTdx => Err(AttesterError::NotBuilt("Intel TDX")),
            AttesterKind::AmdSevSnp => Err(AttesterError::NotBuilt("AMD SEV-SNP")),
        }
    }

    pub fn is_insecure(self) -> bool {
        self == AttesterKind::InsecureDev
    }
}

/// Produces evidence that carries `report_data` (see [`crate::report_data`]).
pub trait Attester: Send + Sync {
    fn evidence(&self, report_data: &[u8; 64], now_unix: u64) -> Result<Evidence, AttesterError>;
    /// Human label for logs and status; says INSECURE for the dev attester.
    fn label(&self) -> &'static str;
    fn is_insecure(&self) -> bool;
}

/// The INSECURE dev attester: signs nothing, measures nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct DevAttester;

impl Attester for DevAttester {
    fn evidence(&self, report_data: &[u8; 64], now_unix: u64) -> Result<Evidence, AttesterError> {
        Ok(Evidence::Dev(DevEvidence::new(*report_data, now_unix)))
    }
    fn label(&self) -> &'static str {
        INSECURE_DEV_LABEL
    }
    fn is_insecure(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{ConfidentialKey, Policy, PolicyVerifier, RecipientKey};
    use sortition_types::{NodeId, sha256};

    #[test]
    fn dev_evidence_binds_the_key_and_needs_explicit_consent() {
        let key = ConfidentialKey::from_seed(NodeId(3), &[1; 32], 2, sha256(b"n"));
        let ev = DevAttester.evidence(&key.report_data(), 1_000).unwrap();
        let allow = PolicyVerifier::new(Policy {
            allow_insecure_dev: true,
            ..Policy::default()
        });
        let (r, report) = RecipientKey::verify_attested(
            NodeId(3),
            2,
            &sha256(b"n"),
            key.public_key(),
            &ev,
            &allow,
            1_001,
        )
        .unwrap();
        assert_eq!(r, key.recipient());
        assert!(report.insecure);
        // Default policy: refused. Other node / nonce: refused.
        let deny = PolicyVerifier::default();
        assert!(
            RecipientKey::verify_attested(
                NodeId(3),
                2,
                &sha256(b"n"),
                key.public_key(),
                &ev,
                &deny,
                1_001
            )
            .is_err()
        );
        assert!(
            RecipientKey::verify_attested(
                NodeId(4),
                2,
                &sha256(b"n"),
                key.public_key(),
                &ev,
                &allow,
                1_001
            )
            .is_err()
        );
    }

    #[test]
    fn hardware_attesters_say_they_are_not_built() {
        assert!(matches!(
            "tdx".parse::<AttesterKind>().unwrap().build(),
            Err(AttesterError::NotBuilt(_))
        ));
        assert!("dev".parse::<AttesterKind>().unwrap().is_insecure());
        assert!("nope".parse::<AttesterKind>().is_err());
        assert!(AttesterKind::InsecureDev.to_string().contains("INSECURE"));
    }
}
