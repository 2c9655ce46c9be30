//! Attestation verifiers on real evidence: Intel's TDX/SGX sample quotes shipped with dcap-qvl
//! and AMD's Milan SEV-SNP report + VCEK shipped with the sev crate (see testdata/README.md).
#![allow(clippy::unwrap_used)]

use sortition_confidential::*;
use sortition_types::{NodeId, sha256};

const TDX_QUOTE: &[u8] = include_bytes!("../testdata/tdx_quote");
const TDX_COLLATERAL: &str = include_str!("../testdata/tdx_quote_collateral.json");
const SGX_QUOTE: &[u8] = include_bytes!("../testdata/sgx_quote");
const SGX_COLLATERAL: &str = include_str!("../testdata/sgx_quote_collateral.json");
const SNP_REPORT_HEX: &str = include_str!("../testdata/report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("../testdata/vcek_milan.der");

/// 2025-07-01T00:00:00Z: inside the sample collateral's validity (2025-06-19 .. 2025-07-19).
const INSIDE: u64 = 1_751_328_000;
/// 2025-08-01T00:00:00Z: after the collateral's nextUpdate.
const AFTER: u64 = 1_754_006_400;

fn tdx() -> Evidence {
    Evidence::Tdx {
        quote: TDX_QUOTE.to_vec(),
        collateral: serde_json::from_str(TDX_COLLATERAL).unwrap(),
    }
}

/// (measurement, report data) read from a quote without verifying it (test setup only).
fn dcap_fields(quote: &[u8]) -> (Vec<u8>, [u8; 64]) {
    let q = dcap_qvl::quote::Quote::parse(quote).unwrap();
    match q.report {
        dcap_qvl::quote::Report::TD10(r) => (r.mr_td.to_vec(), r.report_data),
        dcap_qvl::quote::Report::SgxEnclave(r) => (r.mr_enclave.to_vec(), r.report_data),
        _ => panic!("unexpected sample"),
    }
}

fn policy_for(tee: TeeKind, m: Vec<u8>, statuses: &[&str]) -> Policy {
    Policy {
        allow_insecure_dev: false,
        accepted_measurements: vec![Measurement { tee, value: m }],
        accepted_tcb_statuses: statuses.iter().map(|s| s.to_string()).collect(),
        max_age_secs: 60 * 24 * 3600,
    }
}

#[test]
fn tdx_sample_verifies_and_binding_is_enforced() {
    let (mrtd, rd) = dcap_fields(TDX_QUOTE);
    let v = PolicyVerifier::new(policy_for(TeeKind::IntelTdx, mrtd.clone(), &["UpToDate"]));
    let ok = v.verify(&tdx(), &rd, INSIDE).unwrap();
    assert_eq!(
        (
            ok.tee,
            ok.measurement.clone(),
            ok.tcb_status.as_str(),
            ok.insecure
        ),
        (TeeKind::IntelTdx, mrtd, "UpToDate", false)
    );
    // Our key's binding is not what the sample quote carries: signature and collateral are
    // fine, but the binding check refuses (this is how a re-bound key is caught).
    let key = ConfidentialKey::from_seed(NodeId(1), &[3; 32], 1, sha256(b"nonce"));
    assert_eq!(
        v.verify(&tdx(), &key.report_data(), INSIDE).unwrap_err(),
        AttestationError::ReportDataMismatch
    );
    // And through the client-side entry point.
    let r = RecipientKey::verify_attested(
        NodeId(1),
        1,
        &sha256(b"nonce"),
        key.public_key(),
        &tdx(),
        &v,
        INSIDE,
    );
    assert_eq!(r.unwrap_err(), AttestationError::ReportDataMismatch);
}

#[test]
fn tdx_flipped_bits_refused() {
    let (mrtd, rd) = dcap_fields(TDX_QUOTE);
    let v = PolicyVerifier::new(policy_for(TeeKind::IntelTdx, mrtd, &["UpToDate"]));
    // Header, TD body (MRTD, report data), quote signature, attestation key, QE report and
    // QE report signature. (A flip inside the trailing root CA PEM of the embedded chain is
    // harmless: dcap-qvl uses Intel's pinned root, not the one in the quote.)
    for idx in [10usize, 200, 568 + 10, 640, 700, 800, 1000, 1200] {
        let mut q = TDX_QUOTE.to_vec();
        q[idx] ^= 0x01;
        let ev = Evidence::Tdx {
            quote: q,
            collateral: serde_json::from_str(TDX_COLLATERAL).unwrap(),
        };
        let Err(e) = v.verify(&ev, &rd, INSIDE) else {
            panic!("flip at {idx} of {} verified", TDX_QUOTE.len())
        };
        assert!(
            matches!(
                e,
                AttestationError::SignatureOrCollateral(_) | AttestationError::Parse(_)
            ),
            "bit {idx}: {e:?}"
        );
    }
    // Truncated quote.
    let ev = Evidence::Tdx {
        quote: TDX_QUOTE[..600].to_vec(),
        collateral: serde_json::from_str(TDX_COLLATERAL).unwrap(),
    };
    assert!(v.verify(&ev, &rd, INSIDE).is_err());
}

#[test]
fn tdx_expired_or_premature_collateral_refused() {
    let (mrtd, rd) = dcap_fields(TDX_QUOTE);
    let v = PolicyVerifier::new(policy_for(TeeKind::IntelTdx, mrtd, &["UpToDate"]));
    assert!(matches!(
        v.verify(&tdx(), &rd, AFTER),
        Err(AttestationError::CollateralExpired { .. })
    ));
    assert!(matches!(
        v.verify(&tdx(), &rd, 1_700_000_000),
        Err(AttestationError::CollateralNotYetValid { .. })
    ));
    // Stale beyond max_age even if nextUpdate has not passed.
    let mut p = v.policy.clone();
    p.max_age_secs = 3600;
    assert!(matches!(
        PolicyVerifier::new(p).verify(&tdx(), &rd, INSIDE),
        Err(AttestationError::TooOld { .. })
    ));
}

#[test]
fn tdx_measurement_and_status_policy() {
    let (mrtd, rd) = dcap_fields(TDX_QUOTE);
    let v = PolicyVerifier::new(policy_for(TeeKind::IntelTdx, vec![0u8; 48], &["UpToDate"]));
    assert!(matches!(
        v.verify(&tdx(), &rd, INSIDE),
        Err(AttestationError::MeasurementNotAccepted { .. })
    ));
    // The MRTD accepted only for SGX does not count for TDX.
    let v = PolicyVerifier::new(policy_for(TeeKind::IntelSgx, mrtd.clone(), &["UpToDate"]));
    assert!(matches!(
        v.verify(&tdx(), &rd, INSIDE),
        Err(AttestationError::MeasurementNotAccepted { .. })
    ));
    let v = PolicyVerifier::new(policy_for(TeeKind::IntelTdx, mrtd, &[]));
    assert_eq!(
        v.verify(&tdx(), &rd, INSIDE).unwrap_err(),
        AttestationError::TcbStatusNotAccepted("UpToDate".into())
    );
    // Default policy accepts nothing.
    assert!(
        PolicyVerifier::default()
            .verify(&tdx(), &rd, INSIDE)
            .is_err()
    );
    // A TDX quote presented as SGX evidence is refused.
    let ev = Evidence::Sgx {
        quote: TDX_QUOTE.to_vec(),
        collateral: serde_json::from_str(TDX_COLLATERAL).unwrap(),
    };
    assert!(PolicyVerifier::default().verify(&ev, &rd, INSIDE).is_err());
}

#[test]
fn sgx_sample_verifies_with_its_status() {
    let (mre, rd) = dcap_fields(SGX_QUOTE);
    let ev = Evidence::Sgx {
        quote: SGX_QUOTE.to_vec(),
        collateral: serde_json::from_str(SGX_COLLATERAL).unwrap(),
    };
    let strict = PolicyVerifier::new(policy_for(TeeKind::IntelSgx, mre.clone(), &["UpToDate"]));
    assert!(matches!(
        strict.verify(&ev, &rd, INSIDE),
        Err(AttestationError::TcbStatusNotAccepted(_))
    ));
    let lax = PolicyVerifier::new(policy_for(
        TeeKind::IntelSgx,
        mre,
        &["ConfigurationAndSWHardeningNeeded"],
    ));
    let ok = lax.verify(&ev, &rd, INSIDE).unwrap();
    assert_eq!(ok.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
}

fn snp(report: Vec<u8>) -> Evidence {
    Evidence::SevSnp {
        report,
        vcek_der: SNP_VCEK.to_vec(),
        product: SnpProduct::Milan,
    }
}

fn snp_fields() -> (Vec<u8>, Vec<u8>, [u8; 64]) {
    let bytes = hex::decode(SNP_REPORT_HEX.trim()).unwrap();
    let measurement = bytes[0x90..0xC0].to_vec();
    let rd: [u8; 64] = bytes[0x50..0x90].try_into().unwrap();
    (bytes, measurement, rd)
}

#[test]
fn snp_milan_report_verifies_and_binding_enforced() {
    let (bytes, m, rd) = snp_fields();
    let v = PolicyVerifier::new(policy_for(TeeKind::AmdSevSnp, m.clone(), &[]));
    let now = 1_751_328_000; // VCEK valid 2023-04-03 .. 2030-04-03
    let ok = v.verify(&snp(bytes.clone()), &rd, now).unwrap();
    assert_eq!((ok.tee, ok.measurement), (TeeKind::AmdSevSnp, m.clone()));
    let key = ConfidentialKey::from_seed(NodeId(1), &[3; 32], 1, sha256(b"nonce"));
    assert_eq!(
        v.verify(&snp(bytes.clone()), &key.report_data(), now)
            .unwrap_err(),
        AttestationError::ReportDataMismatch
    );
    // Measurement not in policy.
    let v2 = PolicyVerifier::new(policy_for(TeeKind::AmdSevSnp, vec![1; 48], &[]));
    assert!(matches!(
        v2.verify(&snp(bytes.clone()), &rd, now),
        Err(AttestationError::MeasurementNotAccepted { .. })
    ));
    // VCEK outside its validity.
    assert_eq!(
        v.verify(&snp(bytes.clone()), &rd, 1_600_000_000)
            .unwrap_err(),
        AttestationError::CertificateNotValidNow { now: 1_600_000_000 }
    );
    // Wrong product: Genoa's pinned ARK/ASK did not sign this VCEK.
    let ev = Evidence::SevSnp {
        report: bytes.clone(),
        vcek_der: SNP_VCEK.to_vec(),
        product: SnpProduct::Genoa,
    };
    assert!(matches!(
        v.verify(&ev, &rd, now),
        Err(AttestationError::SignatureOrCollateral(_))
    ));
}

#[test]
fn snp_forged_or_truncated_refused() {
    let (bytes, m, rd) = snp_fields();
    let v = PolicyVerifier::new(policy_for(TeeKind::AmdSevSnp, m, &[]));
    let now = 1_751_328_000;
    for idx in [21usize, 0x50, 0x90, 0x2A0 - 1, 0x2A0 + 5] {
        let mut b = bytes.clone();
        b[idx] ^= 0x80;
        assert!(v.verify(&snp(b), &rd, now).is_err(), "flip at {idx}");
    }
    assert!(matches!(
        v.verify(&snp(bytes[..1000].to_vec()), &rd, now),
        Err(AttestationError::Parse(_))
    ));
    let mut vcek = SNP_VCEK.to_vec();
    vcek[40] ^= 0xff;
    let ev = Evidence::SevSnp {
        report: bytes.clone(),
        vcek_der: vcek,
        product: SnpProduct::Milan,
    };
    assert!(v.verify(&ev, &rd, now).is_err());
    let ev = Evidence::SevSnp {
        report: bytes,
        vcek_der: vec![0x30, 0x03, 0x01],
        product: SnpProduct::Milan,
    };
    assert!(matches!(
        v.verify(&ev, &rd, now),
        Err(AttestationError::Parse(_))
    ));
}

#[test]
fn dev_evidence_policy_and_labels() {
    let key = ConfidentialKey::from_seed(NodeId(1), &[3; 32], 1, sha256(b"nonce"));
    let dev = DevEvidence::new(key.report_data(), 1000);
    assert!(format!("{dev}").contains("INSECURE") && format!("{dev:?}").contains("INSECURE"));
    let ev = Evidence::Dev(dev.clone());
    assert_eq!(
        PolicyVerifier::default()
            .verify(&ev, &key.report_data(), 1000)
            .unwrap_err(),
        AttestationError::InsecureDevRefused
    );
    let p = Policy {
        allow_insecure_dev: true,
        ..Policy::default()
    };
    let v = PolicyVerifier::new(p);
    let ok = v.verify(&ev, &key.report_data(), 1000).unwrap();
    assert!(ok.insecure && ok.tcb_status == "INSECURE");
    let (rk, _) = RecipientKey::verify_attested(
        NodeId(1),
        1,
        &sha256(b"nonce"),
        key.public_key(),
        &ev,
        &v,
        1000,
    )
    .unwrap();
    assert_eq!(rk, key.recipient());
    // Re-bound key (other key, same evidence) refused.
    let other = key.rotate(2, sha256(b"nonce2")).unwrap();
    assert_eq!(
        v.verify(&ev, &other.report_data(), 1000).unwrap_err(),
        AttestationError::ReportDataMismatch
    );
    let mut bad = dev.clone();
    bad.label = "SECURE".into();
    assert_eq!(
        v.verify(&Evidence::Dev(bad), &key.report_data(), 1000)
            .unwrap_err(),
        AttestationError::BadDevLabel
    );
    assert!(matches!(
        v.verify(&ev, &key.report_data(), 1000 + 31 * 24 * 3600),
        Err(AttestationError::TooOld { .. })
    ));
    // Kind-specific verifiers refuse other kinds.
    assert!(matches!(
        DcapVerifier::new(Policy::default()).verify(&ev, &key.report_data(), 1000),
        Err(AttestationError::UnsupportedEvidence(_))
    ));
}

#[test]
fn evidence_json_roundtrip_and_unknown_kind_refused() {
    let ev = tdx();
    let json = serde_json::to_string(&ev).unwrap();
    assert!(json.starts_with("{\"kind\":\"tdx\""));
    assert_eq!(serde_json::from_str::<Evidence>(&json).unwrap(), ev);
    let (bytes, _, _) = snp_fields();
    let s = snp(bytes);
    assert_eq!(
        serde_json::from_str::<Evidence>(&serde_json::to_string(&s).unwrap()).unwrap(),
        s
    );
    assert!(serde_json::from_str::<Evidence>(r#"{"kind":"nitro","doc":"AAAA"}"#).is_err());
    assert!(serde_json::from_str::<Evidence>(r#"{"kind":"dev","label":"INSECURE-DEV-ATTESTATION","report_data":"00","issued_at_unix":1}"#).is_err());
}
