//! Attestation evidence and its verifiers. Everything fails closed.
//!
//! A client that fetched a node's confidential key from the ledger calls a [`Verifier`] with the
//! published [`Evidence`] and the report data it *expects* (computed from the key, the epoch
//! nonce and the node id, see [`crate::keys::report_data`]). The verifier checks, in order:
//! the evidence's signatures and certificate chain / collateral, freshness, the TCB status and
//! debug flags, the measurement against the [`Policy`], and finally the report-data binding.
//! Each failure has its own [`AttestationError`] variant.

mod dcap;
mod dev;
mod snp;

use serde::{Deserialize, Serialize};

pub use dcap::DcapVerifier;
pub use dev::{DevEvidence, DevVerifier, INSECURE_DEV_LABEL};
pub use snp::{SNP_REPORT_LEN, SnpProduct, SnpVerifier};

use crate::encoding::{b64, hex_array, hex_vec};

/// The kind of trusted execution environment behind a piece of evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeeKind {
    /// No TEE at all: the insecure development attester.
    InsecureDev,
    IntelTdx,
    IntelSgx,
    AmdSevSnp,
}

/// Attestation evidence as published next to a confidential key. Deserializing an unknown
/// `kind` fails (fail closed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// INSECURE development evidence: no hardware, proves nothing.
    Dev(DevEvidence),
    /// An Intel TDX DCAP quote (v4/v5) with its collateral (verified offline).
    Tdx {
        #[serde(with = "b64")]
        quote: Vec<u8>,
        collateral: dcap_qvl::QuoteCollateralV3,
    },
    /// An Intel SGX DCAP quote (v3) with its collateral (verified offline).
    Sgx {
        #[serde(with = "b64")]
        quote: Vec<u8>,
        collateral: dcap_qvl::QuoteCollateralV3,
    },
    /// An AMD SEV-SNP attestation report with the chip's VCEK certificate (DER). ARK and ASK
    /// are pinned in the verifier (the `sev` crate's built-in AMD roots for `product`), never
    /// taken from the evidence.
    SevSnp {
        #[serde(with = "b64")]
        report: Vec<u8>,
        #[serde(with = "b64")]
        vcek_der: Vec<u8>,
        product: SnpProduct,
    },
}

impl Evidence {
    pub fn kind(&self) -> TeeKind {
        match self {
            Evidence::Dev(_) => TeeKind::InsecureDev,
            Evidence::Tdx { .. } => TeeKind::IntelTdx,
            Evidence::Sgx { .. } => TeeKind::IntelSgx,
            Evidence::SevSnp { .. } => TeeKind::AmdSevSnp,
        }
    }
}

/// An accepted measurement: TDX MRTD (48 bytes), SGX MRENCLAVE (32 bytes) or SEV-SNP
/// MEASUREMENT (48 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    pub tee: TeeKind,
    #[serde(with = "hex_vec")]
    pub value: Vec<u8>,
}

/// What a verifier accepts. The default accepts nothing (fail closed); fields left out of a
/// policy file take their defaults, unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Accept the INSECURE dev attester. Never set this outside development networks.
    pub allow_insecure_dev: bool,
    /// Accepted measurements; evidence whose measurement is not listed is refused. Empty means
    /// no hardware evidence is accepted.
    pub accepted_measurements: Vec<Measurement>,
    /// Accepted Intel TCB statuses (e.g. `"UpToDate"`). Empty means none.
    pub accepted_tcb_statuses: Vec<String>,
    /// Maximum age in seconds: of the Intel collateral (TCB info issue date) and of dev
    /// evidence. SEV-SNP reports carry no time; their freshness comes from the epoch nonce in
    /// the report data.
    pub max_age_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_insecure_dev: false,
            accepted_measurements: Vec::new(),
            accepted_tcb_statuses: vec!["UpToDate".to_string()],
            max_age_secs: 30 * 24 * 3600,
        }
    }
}

impl Policy {
    pub(crate) fn check_measurement(
        &self,
        tee: TeeKind,
        value: &[u8],
    ) -> Result<(), AttestationError> {
        if self
            .accepted_measurements
            .iter()
            .any(|m| m.tee == tee && m.value == value)
        {
            Ok(())
        } else {
            Err(AttestationError::MeasurementNotAccepted {
                tee,
                measurement: hex::encode(value),
            })
        }
    }

    pub(crate) fn check_age(
        &self,
        issued_unix: u64,
        now_unix: u64,
    ) -> Result<(), AttestationError> {
        let age = now_unix.saturating_sub(issued_unix);
        if age > self.max_age_secs {
            Err(AttestationError::TooOld {
                age_secs: age,
                max_age_secs: self.max_age_secs,
            })
        } else {
            Ok(())
        }
    }
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedReport {
    pub tee: TeeKind,
    /// MRTD / MRENCLAVE / SNP MEASUREMENT; empty for dev evidence.
    #[serde(with = "hex_vec")]
    pub measurement: Vec<u8>,
    #[serde(with = "hex_array")]
    pub report_data: [u8; 64],
    /// Intel TCB status, `"SevSnpSignatureValid"` for SEV-SNP, `"INSECURE"` for dev evidence.
    pub tcb_status: String,
    pub advisory_ids: Vec<String>,
    /// True only for dev evidence.
    pub insecure: bool,
}

/// Attestation failures. Distinct variants so callers and tests can tell *why*.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestationError {
    #[error("INSECURE dev attestation refused by policy")]
    InsecureDevRefused,
    #[error("dev evidence has a wrong label (expected {INSECURE_DEV_LABEL:?})")]
    BadDevLabel,
    #[error("this verifier does not handle {0:?} evidence")]
    UnsupportedEvidence(TeeKind),
    #[error("could not parse evidence: {0}")]
    Parse(String),
    #[error("quote/report signature, certificate chain or collateral invalid: {0}")]
    SignatureOrCollateral(String),
    #[error("collateral expired at {expired_at} (now {now})")]
    CollateralExpired { expired_at: u64, now: u64 },
    #[error("collateral not valid before {valid_from} (now {now})")]
    CollateralNotYetValid { valid_from: u64, now: u64 },
    #[error("certificate not valid at {now}")]
    CertificateNotValidNow { now: u64 },
    #[error("evidence is {age_secs}s old, policy allows {max_age_secs}s")]
    TooOld { age_secs: u64, max_age_secs: u64 },
    #[error("TCB status {0:?} not accepted by policy")]
    TcbStatusNotAccepted(String),
    #[error("debug mode enabled in the TEE")]
    DebugEnabled,
    #[error("{tee:?} measurement {measurement} not accepted by policy")]
    MeasurementNotAccepted { tee: TeeKind, measurement: String },
    #[error("report data does not bind the expected key/epoch/node")]
    ReportDataMismatch,
}

/// Verifies evidence against an expected report-data binding at time `now_unix`.
pub trait Verifier {
    fn verify(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
        now_unix: u64,
    ) -> Result<VerifiedReport, AttestationError>;
}

pub(crate) fn check_binding(
    actual: &[u8; 64],
    expected: &[u8; 64],
) -> Result<(), AttestationError> {
    if actual == expected {
        Ok(())
    } else {
        Err(AttestationError::ReportDataMismatch)
    }
}

/// Dispatches on the evidence kind to the dev, DCAP and SEV-SNP verifiers under one policy.
#[derive(Clone, Debug, Default)]
pub struct PolicyVerifier {
    pub policy: Policy,
}

impl PolicyVerifier {
    pub fn new(policy: Policy) -> Self {
        PolicyVerifier { policy }
    }
}

impl Verifier for PolicyVerifier {
    fn verify(
        &self,
        evidence: &Evidence,
        expected: &[u8; 64],
        now_unix: u64,
    ) -> Result<VerifiedReport, AttestationError> {
        match evidence {
            Evidence::Dev(_) => {
                DevVerifier::new(self.policy.clone()).verify(evidence, expected, now_unix)
            }
            Evidence::Tdx { .. } | Evidence::Sgx { .. } => {
                DcapVerifier::new(self.policy.clone()).verify(evidence, expected, now_unix)
            }
            Evidence::SevSnp { .. } => {
                SnpVerifier::new(self.policy.clone()).verify(evidence, expected, now_unix)
            }
        }
    }
}
