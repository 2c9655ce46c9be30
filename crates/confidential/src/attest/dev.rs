//! The INSECURE development attester: no hardware, no signature, proves nothing. It exists so
//! the whole confidential flow runs on machines without a TEE. A [`Policy`] refuses it unless
//! `allow_insecure_dev` is set, and its `Display`/`Debug` always say INSECURE.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{AttestationError, Evidence, Policy, TeeKind, VerifiedReport, Verifier, check_binding};
use crate::encoding::hex_array;

/// The label every dev evidence must carry, verbatim.
pub const INSECURE_DEV_LABEL: &str = "INSECURE-DEV-ATTESTATION";

/// Dev evidence: the report data the node claims, a label and a creation time.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevEvidence {
    pub label: String,
    #[serde(with = "hex_array")]
    pub report_data: [u8; 64],
    pub issued_at_unix: u64,
}

impl DevEvidence {
    pub fn new(report_data: [u8; 64], issued_at_unix: u64) -> Self {
        DevEvidence {
            label: INSECURE_DEV_LABEL.to_string(),
            report_data,
            issued_at_unix,
        }
    }
}

impl fmt::Debug for DevEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DevEvidence(INSECURE, report_data={}, issued_at={})",
            hex::encode(&self.report_data[..8]),
            self.issued_at_unix
        )
    }
}

impl fmt::Display for DevEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INSECURE dev attestation (no TEE; proves nothing)")
    }
}

/// Verifies [`Evidence::Dev`] under a policy.
#[derive(Clone, Debug)]
pub struct DevVerifier {
    policy: Policy,
}

impl DevVerifier {
    pub fn new(policy: Policy) -> Self {
        DevVerifier { policy }
    }
}

impl Verifier for DevVerifier {
    fn verify(
        &self,
        evidence: &Evidence,
        expected: &[u8; 64],
        now_unix: u64,
    ) -> Result<VerifiedReport, AttestationError> {
        let Evidence::Dev(dev) = evidence else {
            return Err(AttestationError::UnsupportedEvidence(evidence.kind()));
        };
        if !self.policy.allow_insecure_dev {
            return Err(AttestationError::InsecureDevRefused);
        }
        if dev.label != INSECURE_DEV_LABEL {
            return Err(AttestationError::BadDevLabel);
        }
        if dev.issued_at_unix > now_unix.saturating_add(300) {
            return Err(AttestationError::CollateralNotYetValid {
                valid_from: dev.issued_at_unix,
                now: now_unix,
            });
        }
        self.policy.check_age(dev.issued_at_unix, now_unix)?;
        check_binding(&dev.report_data, expected)?;
        Ok(VerifiedReport {
            tee: TeeKind::InsecureDev,
            measurement: Vec::new(),
            report_data: dev.report_data,
            tcb_status: "INSECURE".to_string(),
            advisory_ids: Vec::new(),
            insecure: true,
        })
    }
}
