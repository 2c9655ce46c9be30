//! The configfs-tsm attester (TDX quotes, SEV-SNP reports) driven through emulated devices
//! that return the public sample evidence of `testdata/` (see its README): no TDX or SEV-SNP
//! machine was available. What is real: the evidence assembly, the certificate-table parser,
//! and the verifiers the evidence then goes through.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sortition_confidential::attester::tsm::vcek_from_cert_table;
use sortition_confidential::attester::{ConfigFsTsm, TsmAttester, TsmDevice, TsmReport, TsmTee};
use sortition_confidential::{
    AttestationError, Attester, AttesterConfig, AttesterError, AttesterKind, Evidence, Measurement,
    Policy, PolicyVerifier, SnpProduct, TeeKind, Verifier,
};

const TDX_QUOTE: &[u8] = include_bytes!("../testdata/tdx_quote");
const TDX_COLLATERAL: &str = include_str!("../testdata/tdx_quote_collateral.json");
const SNP_REPORT_HEX: &str = include_str!("../testdata/report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("../testdata/vcek_milan.der");
/// Inside both samples' validity windows (see attest.rs).
const NOW: u64 = 1_751_328_000;

/// A device that answers with one fixed sample, whatever report data it is given (as a
/// broken or lying device would): the verifier's binding check must catch the difference.
struct Sample(TsmReport);

impl TsmDevice for Sample {
    fn report(&self, _report_data: &[u8; 64]) -> Result<TsmReport, AttesterError> {
        Ok(self.0.clone())
    }
}

fn tdx_sample() -> (Sample, Vec<u8>, [u8; 64]) {
    let q = dcap_qvl::quote::Quote::parse(TDX_QUOTE).unwrap();
    let dcap_qvl::quote::Report::TD10(r) = q.report else {
        panic!("sample is a TD 1.0 quote")
    };
    let dev = Sample(TsmReport {
        provider: "tdx_guest".into(),
        outblob: TDX_QUOTE.to_vec(),
        auxblob: None,
    });
    (dev, r.mr_td.to_vec(), r.report_data)
}

fn snp_sample(auxblob: Option<Vec<u8>>) -> (Sample, Vec<u8>, [u8; 64]) {
    let report = hex::decode(SNP_REPORT_HEX.trim()).unwrap();
    let (m, rd) = (
        report[0x90..0xC0].to_vec(),
        report[0x50..0x90].try_into().unwrap(),
    );
    let dev = Sample(TsmReport {
        provider: "sev_guest".into(),
        outblob: report,
        auxblob,
    });
    (dev, m, rd)
}

fn verifier(tee: TeeKind, m: Vec<u8>) -> PolicyVerifier {
    PolicyVerifier::new(Policy {
        accepted_measurements: vec![Measurement { tee, value: m }],
        accepted_tcb_statuses: vec!["UpToDate".into()],
        max_age_secs: 60 * 24 * 3600,
        ..Policy::default()
    })
}

/// A certificate table holding `cert` under `guid`, laid out as the host's `auxblob`.
fn table(guid: [u8; 16], cert: &[u8]) -> Vec<u8> {
    let mut t = guid.to_vec();
    t.extend_from_slice(&48u32.to_le_bytes());
    t.extend_from_slice(&(cert.len() as u32).to_le_bytes());
    t.extend_from_slice(&[0; 24]);
    t.extend_from_slice(cert);
    t
}

const VCEK_GUID: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];

#[test]
fn tdx_quote_from_the_device_verifies_and_stays_bound() {
    let (dev, mrtd, rd) = tdx_sample();
    let tee = TsmTee::Tdx {
        collateral: Box::new(serde_json::from_str(TDX_COLLATERAL).unwrap()),
    };
    let att = TsmAttester::new(dev, tee);
    assert!(!att.is_insecure());
    let ev = att.evidence(&rd, NOW).unwrap();
    assert_eq!(ev.kind(), TeeKind::IntelTdx);
    let v = verifier(TeeKind::IntelTdx, mrtd);
    assert_eq!(v.verify(&ev, &rd, NOW).unwrap().tee, TeeKind::IntelTdx);
    // The device ignored other report data: the quote does not bind it.
    let other = [7u8; 64];
    let ev = att.evidence(&other, NOW).unwrap();
    assert_eq!(
        v.verify(&ev, &other, NOW).unwrap_err(),
        AttestationError::ReportDataMismatch
    );
}

#[test]
fn snp_report_takes_the_vcek_from_the_host_table_or_the_operator() {
    let product = SnpProduct::Milan;
    // From the host's certificate table.
    let (dev, m, rd) = snp_sample(Some(table(VCEK_GUID, SNP_VCEK)));
    let att = TsmAttester::new(
        dev,
        TsmTee::SevSnp {
            product,
            vcek_der: None,
        },
    );
    let ev = att.evidence(&rd, NOW).unwrap();
    let v = verifier(TeeKind::AmdSevSnp, m.clone());
    assert_eq!(v.verify(&ev, &rd, NOW).unwrap().measurement, m);
    // No table, no configured VCEK: a clear error, no evidence.
    let (dev, _, _) = snp_sample(None);
    let att = TsmAttester::new(
        dev,
        TsmTee::SevSnp {
            product,
            vcek_der: None,
        },
    );
    let err = att.evidence(&rd, NOW).unwrap_err();
    assert!(err.to_string().contains("no VCEK"), "{err}");
    // The operator's VCEK.
    let (dev, _, _) = snp_sample(Some(table([9; 16], b"other cert")));
    let att = TsmAttester::new(
        dev,
        TsmTee::SevSnp {
            product,
            vcek_der: Some(SNP_VCEK.to_vec()),
        },
    );
    let ev = att.evidence(&rd, NOW).unwrap();
    assert!(v.verify(&ev, &rd, NOW).is_ok());
    // A wrong certificate in the table is refused by the verifier.
    let (dev, _, _) = snp_sample(Some(table(VCEK_GUID, b"not a certificate")));
    let att = TsmAttester::new(
        dev,
        TsmTee::SevSnp {
            product,
            vcek_der: None,
        },
    );
    assert!(
        v.verify(&att.evidence(&rd, NOW).unwrap(), &rd, NOW)
            .is_err()
    );
}

#[test]
fn wrong_provider_or_report_size_is_refused() {
    let (dev, _, rd) = tdx_sample();
    let att = TsmAttester::new(
        dev,
        TsmTee::SevSnp {
            product: SnpProduct::Milan,
            vcek_der: Some(SNP_VCEK.to_vec()),
        },
    );
    let err = att.evidence(&rd, NOW).unwrap_err();
    assert!(err.to_string().contains("provider"), "{err}");
    let mut short = snp_sample(None).0;
    short.0.outblob.truncate(1000);
    let att = TsmAttester::new(
        short,
        TsmTee::SevSnp {
            product: SnpProduct::Milan,
            vcek_der: Some(SNP_VCEK.to_vec()),
        },
    );
    assert!(
        att.evidence(&rd, NOW)
            .unwrap_err()
            .to_string()
            .contains("1184")
    );
}

#[test]
fn certificate_tables_are_parsed_with_bounds() {
    assert_eq!(
        vcek_from_cert_table(&table(VCEK_GUID, b"abc")).unwrap(),
        Some(b"abc".to_vec())
    );
    // Kernel guid_t byte order of the same GUID.
    let mut le = VCEK_GUID;
    le[..4].reverse();
    le[4..6].reverse();
    le[6..8].reverse();
    assert_eq!(
        vcek_from_cert_table(&table(le, b"x")).unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(vcek_from_cert_table(&[0; 24]).unwrap(), None);
    // Out of bounds, truncated, unterminated.
    let mut t = table(VCEK_GUID, b"abc");
    t[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(vcek_from_cert_table(&t).is_err());
    assert!(vcek_from_cert_table(&VCEK_GUID).is_err());
    assert!(vcek_from_cert_table(&[1; 24]).is_err());
    assert!(vcek_from_cert_table(&[]).is_err());
}

proptest! {
    #[test]
    fn certificate_table_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = vcek_from_cert_table(&bytes);
    }

    #[test]
    fn a_vcek_entry_is_found_wherever_it_sits(
        before in 0usize..4,
        cert in proptest::collection::vec(any::<u8>(), 1..100),
    ) {
        let entries = before + 2;
        let mut t = Vec::new();
        for i in 0..before {
            t.extend_from_slice(&[i as u8 + 1; 16]);
            t.extend_from_slice(&[0; 8]);
        }
        t.extend_from_slice(&VCEK_GUID);
        t.extend_from_slice(&((entries * 24) as u32).to_le_bytes());
        t.extend_from_slice(&(cert.len() as u32).to_le_bytes());
        t.extend_from_slice(&[0; 24]);
        t.extend_from_slice(&cert);
        prop_assert_eq!(vcek_from_cert_table(&t).unwrap(), Some(cert));
    }
}

#[test]
fn configfs_outside_a_guest_fails_with_a_clear_error() {
    // No configfs-tsm here: the root is missing.
    let dir = tempfile::tempdir().unwrap();
    let dev = ConfigFsTsm::new(dir.path().join("tsm/report"));
    let err = dev.report(&[0; 64]).unwrap_err();
    assert!(err.to_string().contains("Linux 6.7+"), "{err}");
    // A plain directory is not configfs: the entry has no report attributes.
    let dev = ConfigFsTsm::new(dir.path());
    let err = dev.report(&[0; 64]).unwrap_err();
    assert!(err.to_string().contains("generation"), "{err}");
}

#[test]
fn hardware_kinds_read_their_operator_files() {
    let dir = tempfile::tempdir().unwrap();
    let coll = dir.path().join("collateral.json");
    std::fs::write(&coll, TDX_COLLATERAL).unwrap();
    let cfg = AttesterConfig {
        tsm_root: Some(dir.path().join("absent")),
        tdx_collateral: Some(coll.clone()),
        ..AttesterConfig::default()
    };
    let att = AttesterKind::IntelTdx.build(&cfg).unwrap();
    assert!(!att.is_insecure());
    // Built, but this machine has no configfs-tsm: evidence fails closed.
    assert!(att.evidence(&[0; 64], NOW).is_err());
    std::fs::write(&coll, "{}").unwrap();
    assert!(matches!(
        AttesterKind::IntelTdx.build(&cfg).err().unwrap(),
        AttesterError::Config(..)
    ));
    let snp = AttesterConfig {
        snp_product: Some(SnpProduct::Genoa),
        snp_vcek: Some(dir.path().join("missing.der")),
        ..AttesterConfig::default()
    };
    assert!(AttesterKind::AmdSevSnp.build(&snp).is_err());
    assert!(matches!(
        "genoa".parse::<SnpProduct>(),
        Ok(SnpProduct::Genoa)
    ));
    let _: Evidence = AttesterKind::InsecureDev
        .build(&AttesterConfig::default())
        .unwrap()
        .evidence(&[0; 64], NOW)
        .unwrap();
}
