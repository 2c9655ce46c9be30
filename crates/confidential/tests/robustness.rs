//! Fuzz-style robustness: random bytes and mutated sealed messages never panic and always error.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sortition_confidential::*;
use sortition_types::{Hash32, NodeId, sha256};

fn key() -> ConfidentialKey {
    ConfidentialKey::from_seed(NodeId(3), &[5u8; 32], 1, sha256(b"epoch-1"))
}

fn snp_policy() -> PolicyVerifier {
    PolicyVerifier::new(Policy {
        allow_insecure_dev: true,
        accepted_measurements: vec![Measurement {
            tee: TeeKind::AmdSevSnp,
            value: vec![0; 48],
        }],
        accepted_tcb_statuses: vec!["UpToDate".into()],
        max_age_secs: u64::MAX,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutated_sealed_request_always_errors(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        pos in any::<usize>(),
        bit in 0u8..8,
        field in 0u8..4,
    ) {
        let k = key();
        let (sealed, _) = seal_request(&k.recipient(), sha256(b"r"), &body, b"aad").unwrap();
        let mut s = sealed.clone();
        match field {
            0 => { let i = pos % s.ciphertext.len(); s.ciphertext[i] ^= 1 << bit; }
            1 => { let i = pos % 32; s.enc[i] ^= 1 << bit; }
            2 => { let i = pos % 32; s.request_id.0[i] ^= 1 << bit; }
            _ => { s.aad.push(bit); }
        }
        prop_assert!(open_request(&k, &s).is_err());
    }

    #[test]
    fn random_sealed_request_always_errors(
        enc in any::<[u8; 32]>(),
        ct in proptest::collection::vec(any::<u8>(), 0..256),
        aad in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let k = key();
        let s = SealedRequest { node_id: NodeId(3), key_epoch: 1, request_id: Hash32::ZERO, enc, aad, ciphertext: ct };
        prop_assert!(open_request(&k, &s).is_err());
    }

    #[test]
    fn mutated_chunks_always_error(
        n in 1usize..6,
        victim in any::<usize>(),
        pos in any::<usize>(),
        bit in 0u8..8,
        junk in proptest::collection::vec(any::<u8>(), 0..64),
        mode in 0u8..4,
    ) {
        let k = key();
        let (sealed, mut opener) = seal_request(&k.recipient(), sha256(b"s"), b"q", b"").unwrap();
        let (_, mut sealer) = open_request(&k, &sealed).unwrap();
        let mut chunks: Vec<SealedChunk> = (0..n).map(|i| sealer.seal_chunk(&[i as u8; 20], i + 1 == n).unwrap()).collect();
        let v = victim % n;
        match mode {
            0 => { let c = &mut chunks[v].ciphertext; let i = pos % c.len(); c[i] ^= 1 << bit; }
            1 => { chunks[v].ciphertext = junk; }
            2 => { chunks[v].is_final = !chunks[v].is_final; }
            _ => { chunks[v].seq = chunks[v].seq.wrapping_add(1 + (pos as u64 % 1000)); }
        }
        let mut failed = false;
        for c in &chunks {
            if opener.open_chunk(c).is_err() { failed = true; break; }
        }
        prop_assert!(failed || opener.finish().is_err());
    }

    #[test]
    fn random_evidence_never_panics_and_errors(
        report in proptest::collection::vec(any::<u8>(), 0..1300),
        vcek in proptest::collection::vec(any::<u8>(), 0..400),
        quote in proptest::collection::vec(any::<u8>(), 0..1200),
        rd in any::<[u8; 32]>(),
    ) {
        let v = snp_policy();
        let mut expected = [0u8; 64];
        expected[..32].copy_from_slice(&rd);
        let ev = Evidence::SevSnp { report: report.clone(), vcek_der: vcek, product: SnpProduct::Milan };
        prop_assert!(v.verify(&ev, &expected, 1_751_328_000).is_err());
        let mut exact = report;
        exact.resize(1184, 0);
        let ev = Evidence::SevSnp { report: exact, vcek_der: include_bytes!("../testdata/vcek_milan.der").to_vec(), product: SnpProduct::Milan };
        prop_assert!(v.verify(&ev, &expected, 1_751_328_000).is_err());
        let collateral = serde_json::from_str(include_str!("../testdata/tdx_quote_collateral.json")).unwrap();
        let ev = Evidence::Tdx { quote, collateral };
        prop_assert!(v.verify(&ev, &expected, 1_751_328_000).is_err());
    }

    #[test]
    fn random_json_never_panics(s in "\\PC{0,200}") {
        let _ = serde_json::from_str::<Evidence>(&s);
        let _ = serde_json::from_str::<SealedRequest>(&s);
        let _ = serde_json::from_str::<SealedChunk>(&s);
    }
}
