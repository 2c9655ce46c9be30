//! AMD SEV-SNP attestation reports, verified with the `sev` crate (pure-Rust crypto):
//! the chain ARK → ASK → VCEK, with ARK and ASK pinned to AMD's roots built into `sev` for the
//! declared product, then the report's ECDSA P-384 signature under the VCEK.
//!
//! Not checked (documented gap): the VCEK's TCB and hardware-id X.509 extensions against the
//! report's `reported_tcb` / `chip_id`, a minimum-TCB policy, VLEK-signed reports, and AMD's
//! CRL. A genuine VCEK's key is derived from the chip and its TCB, so a valid signature already
//! ties the report to that chip and TCB.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};
use sev::certs::snp::{Certificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use super::{AttestationError, Evidence, Policy, TeeKind, VerifiedReport, Verifier, check_binding};

/// Size of an SEV-SNP attestation report.
pub const SNP_REPORT_LEN: usize = 1184;

/// The AMD EPYC generation whose pinned ARK/ASK sign the VCEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnpProduct {
    Milan,
    Genoa,
    Turin,
}

impl std::str::FromStr for SnpProduct {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "milan" => Ok(SnpProduct::Milan),
            "genoa" => Ok(SnpProduct::Genoa),
            "turin" => Ok(SnpProduct::Turin),
            other => Err(format!(
                "unknown SEV-SNP product {other:?} (milan, genoa, turin)"
            )),
        }
    }
}

impl SnpProduct {
    fn ca_chain(self) -> Result<ca::Chain, AttestationError> {
        let pair = match self {
            SnpProduct::Milan => (builtin::milan::ark(), builtin::milan::ask()),
            SnpProduct::Genoa => (builtin::genoa::ark(), builtin::genoa::ask()),
            SnpProduct::Turin => (builtin::turin::ark(), builtin::turin::ask()),
        };
        match pair {
            (Ok(ark), Ok(ask)) => Ok(ca::Chain { ark, ask }),
            _ => Err(AttestationError::Parse(
                "built-in AMD root certificates unreadable".into(),
            )),
        }
    }
}

/// Verifies [`Evidence::SevSnp`] under a policy.
#[derive(Clone, Debug)]
pub struct SnpVerifier {
    policy: Policy,
}

impl SnpVerifier {
    pub fn new(policy: Policy) -> Self {
        SnpVerifier { policy }
    }
}

fn vcek_validity(vcek: &Certificate) -> (u64, u64) {
    let x: x509_cert::Certificate = vcek.clone().into();
    let v = &x.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    )
}

fn verify_chain_and_signature(
    report_bytes: &[u8],
    vcek_der: &[u8],
    product: SnpProduct,
    now_unix: u64,
) -> Result<AttestationReport, AttestationError> {
    if report_bytes.len() != SNP_REPORT_LEN {
        return Err(AttestationError::Parse(format!(
            "SEV-SNP report must be {SNP_REPORT_LEN} bytes, got {}",
            report_bytes.len()
        )));
    }
    let report = AttestationReport::from_bytes(report_bytes)
        .map_err(|e| AttestationError::Parse(format!("SEV-SNP report: {e}")))?;
    let vcek = Certificate::from_der(vcek_der)
        .map_err(|e| AttestationError::Parse(format!("VCEK: {e}")))?;
    let (not_before, not_after) = vcek_validity(&vcek);
    if now_unix < not_before || now_unix > not_after {
        return Err(AttestationError::CertificateNotValidNow { now: now_unix });
    }
    let chain = Chain {
        ca: product.ca_chain()?,
        vek: vcek,
    };
    chain
        .verify()
        .map_err(|e| AttestationError::SignatureOrCollateral(format!("ARK→ASK→VCEK chain: {e}")))?;
    (&chain, &report)
        .verify()
        .map_err(|e| AttestationError::SignatureOrCollateral(format!("report signature: {e}")))?;
    Ok(report)
}

impl Verifier for SnpVerifier {
    fn verify(
        &self,
        evidence: &Evidence,
        expected: &[u8; 64],
        now_unix: u64,
    ) -> Result<VerifiedReport, AttestationError> {
        let Evidence::SevSnp {
            report,
            vcek_der,
            product,
        } = evidence
        else {
            return Err(AttestationError::UnsupportedEvidence(evidence.kind()));
        };
        let report = catch_unwind(AssertUnwindSafe(|| {
            verify_chain_and_signature(report, vcek_der, *product, now_unix)
        }))
        .map_err(|_| AttestationError::Parse("SEV-SNP verifier panicked".into()))??;
        if report.policy.debug_allowed() {
            return Err(AttestationError::DebugEnabled);
        }
        self.policy
            .check_measurement(TeeKind::AmdSevSnp, &report.measurement)?;
        check_binding(&report.report_data, expected)?;
        Ok(VerifiedReport {
            tee: TeeKind::AmdSevSnp,
            measurement: report.measurement.to_vec(),
            report_data: report.report_data,
            tcb_status: "SevSnpSignatureValid".to_string(),
            advisory_ids: Vec::new(),
            insecure: false,
        })
    }
}
