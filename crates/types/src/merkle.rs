//! A binary Merkle tree over receipt digests, with inclusion proofs.
//!
//! Leaves are hashed as `H(0x00 || leaf)` and inner nodes as `H(0x01 || left || right)`, so a
//! leaf can never be passed off as an inner node. An odd node at a level is promoted as is.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Hash32;

fn leaf_hash(leaf: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf.0);
    Hash32(h.finalize().into())
}

fn node_hash(l: &Hash32, r: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l.0);
    h.update(r.0);
    Hash32(h.finalize().into())
}

/// The root over `leaves` in order; `Hash32::ZERO` for no leaves.
pub fn merkle_root(leaves: &[Hash32]) -> Hash32 {
    if leaves.is_empty() {
        return Hash32::ZERO;
    }
    let mut level: Vec<Hash32> = leaves.iter().map(leaf_hash).collect();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

fn next_level(level: &[Hash32]) -> Vec<Hash32> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(l, r),
            [single] => *single,
            _ => unreachable!("chunks(2) yields one or two"),
        })
        .collect()
}

/// Proof that a leaf sits at `index` under a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    pub index: u64,
    pub leaf_count: u64,
    /// Sibling hashes from the bottom up; levels where the node was promoted have none.
    pub siblings: Vec<Hash32>,
}

impl MerkleProof {
    /// The proof for `leaves[index]`, or `None` when out of range.
    pub fn build(leaves: &[Hash32], index: usize) -> Option<MerkleProof> {
        if index >= leaves.len() {
            return None;
        }
        let mut siblings = Vec::new();
        let mut level: Vec<Hash32> = leaves.iter().map(leaf_hash).collect();
        let mut i = index;
        while level.len() > 1 {
            let sib = i ^ 1;
            if sib < level.len() {
                siblings.push(level[sib]);
            }
            level = next_level(&level);
            i /= 2;
        }
        Some(MerkleProof {
            index: index as u64,
            leaf_count: leaves.len() as u64,
            siblings,
        })
    }

    /// Whether `leaf` is at `self.index` under `root`.
    pub fn verify(&self, leaf: &Hash32, root: &Hash32) -> bool {
        if self.index >= self.leaf_count {
            return false;
        }
        let mut acc = leaf_hash(leaf);
        let (mut i, mut width) = (self.index, self.leaf_count);
        let mut sibs = self.siblings.iter();
        while width > 1 {
            let sib = i ^ 1;
            if sib < width {
                let Some(s) = sibs.next() else { return false };
                acc = if i % 2 == 0 {
                    node_hash(&acc, s)
                } else {
                    node_hash(s, &acc)
                };
            }
            i /= 2;
            width = width.div_ceil(2);
        }
        sibs.next().is_none() && acc == *root
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash32> {
        (0..n)
            .map(|i| crate::sha256(&(i as u64).to_le_bytes()))
            .collect()
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(merkle_root(&[]), Hash32::ZERO);
        let l = leaves(1);
        let p = MerkleProof::build(&l, 0).unwrap();
        assert!(p.verify(&l[0], &merkle_root(&l)));
    }

    proptest! {
        #[test]
        fn every_leaf_proves_and_others_do_not(n in 1usize..70, pick in 0usize..70) {
            let l = leaves(n);
            let root = merkle_root(&l);
            let i = pick % n;
            let p = MerkleProof::build(&l, i).unwrap();
            prop_assert!(p.verify(&l[i], &root));
            let wrong = crate::sha256(b"not a leaf");
            prop_assert!(!p.verify(&wrong, &root));
            if n > 1 {
                let mut moved = p.clone();
                moved.index = ((i + 1) % n) as u64;
                prop_assert!(!moved.verify(&l[i], &root) || l[i] == l[(i + 1) % n]);
            }
        }
    }
}
