//! Intel TDX and SGX DCAP quotes, verified offline with `dcap-qvl` against Intel's pinned
//! production root CA, using the collateral carried in the evidence (PCK CRL, root CA CRL,
//! TCB info, QE identity and their issuer chains).

use std::panic::{AssertUnwindSafe, catch_unwind};

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Report;

use super::{AttestationError, Evidence, Policy, TeeKind, VerifiedReport, Verifier, check_binding};

/// Verifies [`Evidence::Tdx`] and [`Evidence::Sgx`] under a policy.
#[derive(Clone, Debug)]
pub struct DcapVerifier {
    policy: Policy,
}

impl DcapVerifier {
    pub fn new(policy: Policy) -> Self {
        DcapVerifier { policy }
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
pub(crate) fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse::<i64>().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &b[19..b.len() - 1];
    if !(frac.is_empty()
        || (frac[0] == b'.' && frac.len() > 1 && frac[1..].iter().all(u8::is_ascii_digit)))
    {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// (issueDate, nextUpdate) of a signed collateral JSON body (TCB info or QE identity).
fn issue_and_next(json: &str, what: &str) -> Result<(u64, u64), AttestationError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| AttestationError::Parse(format!("{what}: {e}")))?;
    let field = |name: &str| -> Result<u64, AttestationError> {
        v.get(name)
            .and_then(|x| x.as_str())
            .and_then(parse_rfc3339_utc)
            .ok_or_else(|| AttestationError::Parse(format!("{what}: missing or bad {name}")))
    };
    Ok((field("issueDate")?, field("nextUpdate")?))
}

/// Validity window of the collateral: the latest issue date and the earliest next update of
/// the TCB info and QE identity. (CRL windows are checked inside `dcap-qvl`.)
fn collateral_window(c: &QuoteCollateralV3) -> Result<(u64, u64, u64), AttestationError> {
    let (tcb_issue, tcb_next) = issue_and_next(&c.tcb_info, "tcb_info")?;
    let (qe_issue, qe_next) = issue_and_next(&c.qe_identity, "qe_identity")?;
    Ok((tcb_issue.max(qe_issue), tcb_next.min(qe_next), tcb_issue))
}

impl Verifier for DcapVerifier {
    fn verify(
        &self,
        evidence: &Evidence,
        expected: &[u8; 64],
        now_unix: u64,
    ) -> Result<VerifiedReport, AttestationError> {
        let (quote, collateral, tee) = match evidence {
            Evidence::Tdx { quote, collateral } => (quote, collateral, TeeKind::IntelTdx),
            Evidence::Sgx { quote, collateral } => (quote, collateral, TeeKind::IntelSgx),
            other => return Err(AttestationError::UnsupportedEvidence(other.kind())),
        };
        // 1. Collateral time window and age (distinct errors for expired / not yet valid).
        let (valid_from, valid_until, tcb_issued) = collateral_window(collateral)?;
        if now_unix >= valid_until {
            return Err(AttestationError::CollateralExpired {
                expired_at: valid_until,
                now: now_unix,
            });
        }
        if now_unix < valid_from {
            return Err(AttestationError::CollateralNotYetValid {
                valid_from,
                now: now_unix,
            });
        }
        self.policy.check_age(tcb_issued, now_unix)?;

        // 2. Quote signature, QE report, PCK chain to Intel's root, CRLs, TCB info and QE
        //    identity signatures; debug TDs/enclaves are refused by dcap-qvl's defaults.
        let result = catch_unwind(AssertUnwindSafe(|| {
            dcap_qvl::verify::verify(quote, collateral, now_unix)
        }))
        .map_err(|_| AttestationError::Parse("quote verifier panicked".into()))?;
        let verified =
            result.map_err(|e| AttestationError::SignatureOrCollateral(format!("{e:#}")))?;

        // 3. Evidence kind must match the quote's body.
        let (measurement, report_data) = match (&verified.report, tee) {
            (Report::SgxEnclave(r), TeeKind::IntelSgx) => (r.mr_enclave.to_vec(), r.report_data),
            (Report::TD10(r), TeeKind::IntelTdx) => (r.mr_td.to_vec(), r.report_data),
            (Report::TD15(r), TeeKind::IntelTdx) => (r.base.mr_td.to_vec(), r.base.report_data),
            (Report::TD15Ex(r), TeeKind::IntelTdx) => {
                (r.base.base.mr_td.to_vec(), r.base.base.report_data)
            }
            _ => {
                return Err(AttestationError::Parse(format!(
                    "quote body does not match evidence kind {tee:?}"
                )));
            }
        };

        // 4. TCB status, 5. measurement, 6. binding.
        if !self.policy.accepted_tcb_statuses.contains(&verified.status) {
            return Err(AttestationError::TcbStatusNotAccepted(verified.status));
        }
        self.policy.check_measurement(tee, &measurement)?;
        check_binding(&report_data, expected)?;
        Ok(VerifiedReport {
            tee,
            measurement,
            report_data,
            tcb_status: verified.status,
            advisory_ids: verified.advisory_ids,
            insecure: false,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_rfc3339_utc;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2025-07-01T00:00:00Z"),
            Some(1_751_328_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2025-07-01T00:00:00.123Z"),
            Some(1_751_328_000)
        );
        assert_eq!(parse_rfc3339_utc("2025-07-01T00:00:00+01:00"), None);
        assert_eq!(parse_rfc3339_utc("2025-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("garbage"), None);
    }
}
