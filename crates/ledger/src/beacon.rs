//! Deterministic randomness.
//!
//! The devnet sequencer derives each block's value as a hash chain:
//! `r_h = sha256("sortition/beacon" || r_{h-1} || h)`, seeded by the genesis. It is
//! unpredictable to nobody who knows the seed, so it only keeps honest parties honest: a
//! production deployment must take `BlockContext::randomness` from a VRF or threshold beacon
//! whose value is unknown until the block is final. The ledger only consumes the value; it does
//! not check how it was made, so either source plugs in unchanged.

use sortition_types::{Hash32, hash::sha256_parts};

/// The devnet beacon: the next value of the hash chain.
pub fn next_beacon(previous: &Hash32, height: u64) -> Hash32 {
    sha256_parts(&[b"sortition/beacon", &previous.0, &height.to_le_bytes()])
}

/// A 64-bit draw bound to a purpose, an object and an index.
pub fn draw(seed: &Hash32, purpose: &str, object: u64, index: u64) -> u64 {
    let h = sha256_parts(&[
        &seed.0,
        purpose.as_bytes(),
        &object.to_le_bytes(),
        &index.to_le_bytes(),
    ]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.0[..8]);
    u64::from_le_bytes(b)
}

/// Uniform in `0..n` (n > 0) with negligible bias (64-bit draw, 128-bit multiply-shift).
pub fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Picks up to `k` distinct items from `pool` (in its order) by a partial Fisher–Yates shuffle.
pub fn choose<T: Copy>(pool: &[T], k: usize, seed: &Hash32, purpose: &str, object: u64) -> Vec<T> {
    let mut pool = pool.to_vec();
    let take = k.min(pool.len());
    for i in 0..take {
        let span = (pool.len() - i) as u64;
        let j = i + below(draw(seed, purpose, object, i as u64), span) as usize;
        pool.swap(i, j);
    }
    pool.truncate(take);
    pool
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn choose_is_distinct_and_deterministic() {
        let seed = next_beacon(&Hash32::ZERO, 1);
        let pool: Vec<u64> = (0..10).collect();
        let a = choose(&pool, 4, &seed, "t", 7);
        assert_eq!(a, choose(&pool, 4, &seed, "t", 7));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 4);
        assert_eq!(choose(&pool, 40, &seed, "t", 7).len(), 10);
        assert!(choose::<u64>(&[], 3, &seed, "t", 7).is_empty());
    }
}
