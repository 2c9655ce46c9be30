//! Sealed requests, response streams and key rotation.
#![allow(clippy::unwrap_used)]

use sortition_confidential::*;
use sortition_types::{Hash32, NodeId, sha256};

fn key(epoch: u64) -> ConfidentialKey {
    ConfidentialKey::from_seed(NodeId(7), &[9u8; 32], epoch, sha256(&epoch.to_be_bytes()))
}

fn rid(n: u8) -> Hash32 {
    sha256(&[n])
}

#[test]
fn request_roundtrip_and_single_final_chunk() {
    let k = key(1);
    let body = vec![0x5a; 2048];
    let (sealed, opener) = seal_request(&k.recipient(), rid(1), &body, b"model=smollm2").unwrap();
    assert_ne!(sealed.ciphertext[..32], body[..32]);
    let (plain, sealer) = open_request(&k, &sealed).unwrap();
    assert_eq!(&plain[..], &body[..]);
    let chunk = sealer.seal_whole(b"{\"answer\":42}").unwrap();
    assert!(chunk.is_final && chunk.seq == 0);
    assert_eq!(opener.open_all([&chunk]).unwrap(), b"{\"answer\":42}");
}

#[test]
fn request_header_tampering_and_wrong_key_refused() {
    let k = key(1);
    let (sealed, _) = seal_request(&k.recipient(), rid(1), b"secret prompt", b"aad").unwrap();
    let mut s = sealed.clone();
    s.request_id = rid(2);
    assert_eq!(open_request(&k, &s).unwrap_err(), SealError::OpenFailed);
    let mut s = sealed.clone();
    s.aad = b"aaD".to_vec();
    assert_eq!(open_request(&k, &s).unwrap_err(), SealError::OpenFailed);
    let mut s = sealed.clone();
    s.ciphertext[3] ^= 1;
    assert_eq!(open_request(&k, &s).unwrap_err(), SealError::OpenFailed);
    let mut s = sealed.clone();
    s.enc[0] ^= 1;
    assert!(open_request(&k, &s).is_err());
    let mut s = sealed.clone();
    s.node_id = NodeId(8);
    assert!(matches!(
        open_request(&k, &s),
        Err(SealError::WrongNode { .. })
    ));
    // Right node, other epoch's key.
    let k2 = k.rotate(2, sha256(b"e2")).unwrap();
    assert!(matches!(
        open_request(&k2, &sealed),
        Err(SealError::WrongEpoch { .. })
    ));
    let mut s = sealed.clone();
    s.key_epoch = 2;
    assert_eq!(open_request(&k2, &s).unwrap_err(), SealError::OpenFailed);
    // Another node's key with forged header.
    let other = ConfidentialKey::from_seed(NodeId(7), &[1u8; 32], 1, sha256(&1u64.to_be_bytes()));
    assert_eq!(
        open_request(&other, &sealed).unwrap_err(),
        SealError::OpenFailed
    );
}

fn stream(n: usize) -> (Vec<SealedChunk>, ResponseOpener) {
    let k = key(1);
    let (sealed, opener) = seal_request(&k.recipient(), rid(3), b"req", b"").unwrap();
    let (_, mut sealer) = open_request(&k, &sealed).unwrap();
    let mut chunks = Vec::new();
    for i in 0..n {
        chunks.push(
            sealer
                .seal_chunk(format!("tok{i}").as_bytes(), i + 1 == n)
                .unwrap(),
        );
    }
    assert_eq!(
        sealer.seal_chunk(b"more", false).unwrap_err(),
        StreamError::AlreadyFinished
    );
    (chunks, opener)
}

#[test]
fn stream_in_order_opens() {
    let (chunks, mut o) = stream(5);
    let mut text = String::new();
    for c in &chunks {
        text.push_str(std::str::from_utf8(&o.open_chunk(c).unwrap()).unwrap());
    }
    assert_eq!(text, "tok0tok1tok2tok3tok4");
    o.finish().unwrap();
    assert_eq!(
        o.open_chunk(&chunks[4]).unwrap_err(),
        StreamError::AfterFinal { seq: 4 }
    );
}

#[test]
fn stream_attacks_refused() {
    // Reordered.
    let (c, mut o) = stream(4);
    o.open_chunk(&c[0]).unwrap();
    assert_eq!(
        o.open_chunk(&c[2]).unwrap_err(),
        StreamError::OutOfOrder {
            expected: 1,
            got: 2
        }
    );
    assert_eq!(o.open_chunk(&c[1]).unwrap_err(), StreamError::Poisoned);
    // Replayed.
    let (c, mut o) = stream(4);
    o.open_chunk(&c[0]).unwrap();
    o.open_chunk(&c[1]).unwrap();
    assert_eq!(
        o.open_chunk(&c[1]).unwrap_err(),
        StreamError::Replayed {
            expected: 2,
            got: 1
        }
    );
    // Dropped (the final one arrives after a gap).
    let (c, o) = stream(4);
    assert!(matches!(
        o.open_all([&c[0], &c[1], &c[3]]),
        Err(StreamError::OutOfOrder { .. })
    ));
    // Truncated: no final chunk.
    let (c, o) = stream(4);
    assert_eq!(
        o.open_all(&c[..3]).unwrap_err(),
        StreamError::Truncated { received: 3 }
    );
    // Tampered ciphertext.
    let (mut c, mut o) = stream(4);
    c[0].ciphertext[0] ^= 0x80;
    assert_eq!(
        o.open_chunk(&c[0]).unwrap_err(),
        StreamError::Tampered { seq: 0 }
    );
    // Final flag flipped (an attacker ending the stream early).
    let (mut c, mut o) = stream(4);
    o.open_chunk(&c[0]).unwrap();
    c[1].is_final = true;
    assert_eq!(
        o.open_chunk(&c[1]).unwrap_err(),
        StreamError::Tampered { seq: 1 }
    );
    // Sequence number rewritten.
    let (mut c, mut o) = stream(4);
    c[1].seq = 0;
    assert_eq!(
        o.open_chunk(&c[1]).unwrap_err(),
        StreamError::Tampered { seq: 0 }
    );
    // Chunk of another request's stream.
    let (c_other, _) = stream(2);
    let (_, mut o) = stream(2);
    let mut foreign = c_other[0].clone();
    foreign.ciphertext = c_other[0].ciphertext.clone();
    // Same key seed but a different HPKE context => different response key.
    assert_eq!(
        o.open_chunk(&foreign).unwrap_err(),
        StreamError::Tampered { seq: 0 }
    );
}

#[test]
fn wire_types_roundtrip_json() {
    let k = key(1);
    let (sealed, _) = seal_request(&k.recipient(), rid(1), b"hello", b"meta").unwrap();
    let json = serde_json::to_string(&sealed).unwrap();
    assert!(json.contains("\"enc\":\"") && json.contains("\"ciphertext\":\""));
    let back: SealedRequest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, sealed);
    let (chunks, _) = stream(1);
    let j = serde_json::to_string(&chunks[0]).unwrap();
    assert!(j.contains("\"final\":true"));
    assert_eq!(serde_json::from_str::<SealedChunk>(&j).unwrap(), chunks[0]);
    let r = k.recipient();
    assert_eq!(
        serde_json::from_str::<RecipientKey>(&serde_json::to_string(&r).unwrap()).unwrap(),
        r
    );
}

#[test]
fn secrets_not_in_debug() {
    let k = key(1);
    let dbg = format!("{k:?}");
    assert!(dbg.contains("redacted"));
    let (sealed, opener) = seal_request(&k.recipient(), rid(1), b"x", b"").unwrap();
    let (_, sealer) = open_request(&k, &sealed).unwrap();
    assert!(format!("{opener:?}").contains("redacted"));
    assert!(format!("{sealer:?}").contains("redacted"));
}

#[test]
fn rotation_and_binding() {
    let k1 = key(1);
    assert_eq!(
        k1.rotate(1, sha256(b"x")).unwrap_err(),
        KeyError::EpochNotIncreasing {
            current: 1,
            requested: 1
        }
    );
    let k2 = k1.rotate(2, sha256(b"e2")).unwrap();
    assert_ne!(k1.public_key(), k2.public_key());
    assert_eq!(k2.epoch(), 2);
    // Seeded derivation is deterministic.
    assert_eq!(
        k1.rotate(2, sha256(b"e2")).unwrap().public_key(),
        k2.public_key()
    );
    // OS keys are fresh each time.
    let a = ConfidentialKey::generate(NodeId(1), 1, Hash32::ZERO).unwrap();
    let b = a.rotate(2, Hash32::ZERO).unwrap();
    assert_ne!(a.public_key(), b.public_key());
    // Binding: 32-byte SHA-256 then 32 zero bytes, changes with key, nonce and node.
    let rd = k1.report_data();
    assert_eq!(rd[32..], [0u8; 32]);
    assert_ne!(rd, k2.report_data());
    assert_ne!(
        rd,
        report_data(&k1.public_key(), &sha256(b"other"), NodeId(7))
    );
    assert_ne!(
        rd,
        report_data(&k1.public_key(), &k1.epoch_nonce(), NodeId(8))
    );
}
