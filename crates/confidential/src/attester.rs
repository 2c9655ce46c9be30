//! The node side of attestation: producing [`Evidence`] whose report data binds a key.
//!
//! - the INSECURE dev attester (no TEE, development networks only);
//! - TDX quotes and SEV-SNP reports through the kernel's configfs-tsm ([`tsm`]), with the
//!   collateral or VCEK the operator supplies ([`AttesterConfig`]). This project has no TDX or
//!   SEV-SNP machine: that path is tested against emulated devices returning public sample
//!   evidence, not on hardware. The verifiers of such evidence ([`crate::DcapVerifier`],
//!   [`crate::SnpVerifier`]) are tested on the real samples.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::attest::{DevEvidence, Evidence, INSECURE_DEV_LABEL, SnpProduct};

pub mod tsm;

pub use tsm::{ConfigFsTsm, TsmAttester, TsmDevice, TsmReport, TsmTee};

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttesterError {
    #[error("unknown attester {0:?} (known: dev, tdx, sev-snp)")]
    Unknown(String),
    #[error("the {0} attester needs {1}")]
    Config(&'static str, String),
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

/// What the hardware attesters need from the operator; files are read when the attester is
/// built.
#[derive(Clone, Debug, Default)]
pub struct AttesterConfig {
    /// The configfs-tsm report directory [default: [`tsm::DEFAULT_TSM_ROOT`]].
    pub tsm_root: Option<PathBuf>,
    /// TDX: the platform's DCAP collateral, as JSON (dcap-qvl's `QuoteCollateralV3`).
    pub tdx_collateral: Option<PathBuf>,
    /// SEV-SNP: the EPYC generation whose AMD roots sign the VCEK.
    pub snp_product: Option<SnpProduct>,
    /// SEV-SNP: the VCEK certificate (DER), for hosts that put none in the certificate table.
    pub snp_vcek: Option<PathBuf>,
}

impl AttesterKind {
    /// The attester, or why it cannot run with `cfg`.
    pub fn build(self, cfg: &AttesterConfig) -> Result<Box<dyn Attester>, AttesterError> {
        let read = |what: &'static str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| AttesterError::Config(what, format!("{}: {e}", path.display())))
        };
        let device = ConfigFsTsm::new(
            cfg.tsm_root
                .clone()
                .unwrap_or_else(|| tsm::DEFAULT_TSM_ROOT.into()),
        );
        let tee = match self {
            AttesterKind::InsecureDev => return Ok(Box::new(DevAttester)),
            AttesterKind::IntelTdx => {
                let path = cfg.tdx_collateral.as_ref().ok_or_else(|| {
                    AttesterError::Config(
                        "tdx",
                        "the platform's DCAP collateral (a JSON file)".into(),
                    )
                })?;
                let collateral = serde_json::from_slice(&read("tdx", path)?).map_err(|e| {
                    AttesterError::Config(
                        "tdx",
                        format!("{}: not DCAP collateral: {e}", path.display()),
                    )
                })?;
                TsmTee::Tdx {
                    collateral: Box::new(collateral),
                }
            }
            AttesterKind::AmdSevSnp => TsmTee::SevSnp {
                product: cfg.snp_product.ok_or_else(|| {
                    AttesterError::Config(
                        "sev-snp",
                        "the EPYC product (milan, genoa or turin)".into(),
                    )
                })?,
                vcek_der: cfg
                    .snp_vcek
                    .as_ref()
                    .map(|p| read("sev-snp", p))
                    .transpose()?,
            },
        };
        Ok(Box::new(TsmAttester::new(device, tee)))
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
    fn hardware_attesters_say_what_they_need() {
        let none = AttesterConfig::default();
        for kind in ["tdx", "sev-snp"] {
            let err = kind
                .parse::<AttesterKind>()
                .unwrap()
                .build(&none)
                .err()
                .unwrap();
            assert!(matches!(err, AttesterError::Config(..)), "{err}");
        }
        assert!("dev".parse::<AttesterKind>().unwrap().is_insecure());
        assert!("nope".parse::<AttesterKind>().is_err());
        assert!(AttesterKind::InsecureDev.to_string().contains("INSECURE"));
    }
}
