//! Cost of confidential requests: seal+open of a ~2 KB request (HPKE X25519/HKDF-SHA256/
//! ChaCha20-Poly1305 incl. response-key export) and per-chunk cost of a sealed response stream
//! (20-byte chunks, 256 per response), as microseconds and as a fraction of a 15 ms/token decode.
//!
//! Run: `cargo run --release -p sortition-confidential --example seal_bench`

use std::time::Instant;

use sortition_confidential::{ConfidentialKey, open_request, seal_request};
use sortition_types::{NodeId, sha256};

const DECODE_US_PER_TOKEN: f64 = 15_000.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = ConfidentialKey::from_seed(NodeId(1), &[7u8; 32], 1, sha256(b"bench-epoch"));
    let recipient = key.recipient();
    let body: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();

    // Request: seal (client) + open (node), both sides deriving the response key.
    let iters = 2000u32;
    let (mut seal_ns, mut open_ns) = (0u128, 0u128);
    for i in 0..iters {
        let rid = sha256(&i.to_be_bytes());
        let t = Instant::now();
        let (sealed, _opener) = seal_request(&recipient, rid, &body, b"route")?;
        seal_ns += t.elapsed().as_nanos();
        let t = Instant::now();
        let (plain, _sealer) = open_request(&key, &sealed)?;
        open_ns += t.elapsed().as_nanos();
        assert_eq!(plain.len(), body.len());
    }
    let seal_us = seal_ns as f64 / f64::from(iters) / 1000.0;
    let open_us = open_ns as f64 / f64::from(iters) / 1000.0;
    println!(
        "request 2048 B: seal {seal_us:.1} µs, open {open_us:.1} µs, total {:.1} µs ({:.2}% of one 15 ms token)",
        seal_us + open_us,
        (seal_us + open_us) / DECODE_US_PER_TOKEN * 100.0
    );

    // Streaming: 256 chunks of 20 bytes, sealed by the node and opened by the client.
    let chunk = [b'x'; 20];
    let streams = 200u32;
    let (mut s_ns, mut o_ns) = (0u128, 0u128);
    for i in 0..streams {
        let (sealed, mut opener) =
            seal_request(&recipient, sha256(&(i + iters).to_be_bytes()), b"q", b"")?;
        let (_, mut sealer) = open_request(&key, &sealed)?;
        let mut chunks = Vec::with_capacity(256);
        let t = Instant::now();
        for n in 0..256 {
            chunks.push(sealer.seal_chunk(&chunk, n == 255)?);
        }
        s_ns += t.elapsed().as_nanos();
        let t = Instant::now();
        for c in &chunks {
            let p = opener.open_chunk(c)?;
            assert_eq!(p.len(), 20);
        }
        opener.finish()?;
        o_ns += t.elapsed().as_nanos();
    }
    let per = f64::from(streams) * 256.0 * 1000.0;
    let (cs, co) = (s_ns as f64 / per, o_ns as f64 / per);
    println!(
        "stream chunk 20 B (256/response): seal {cs:.2} µs, open {co:.2} µs, total {:.2} µs per chunk ({:.4}% of a 15 ms token)",
        cs + co,
        (cs + co) / DECODE_US_PER_TOKEN * 100.0
    );
    println!(
        "whole 256-chunk response: {:.1} µs ({:.3}% of 256 × 15 ms decode)",
        (cs + co) * 256.0,
        (cs + co) / DECODE_US_PER_TOKEN * 100.0
    );
    Ok(())
}
