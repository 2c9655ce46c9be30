//! Serving, simulated: the requests of one stack, each honest or not as its node's strategy
//! decides, with the receipts the node would sign and the Merkle root it would claim.
//!
//! Inference is not run. A receipt's `response_hash` says whether it is the honest answer, and
//! an over-reported receipt carries inflated output tokens. Receipts are a pure function of
//! (stack, sequence, the request's record), so a sampled one is rebuilt, signed and proven
//! when it is audited, and only its compact record is kept meanwhile.

use sortition_ledger::beacon::{below, draw};
use sortition_ledger::policy::PPM;
use sortition_types::{
    Custody, Hash32, Keypair, MerkleProof, ModelId, NodeClass, NodeId, Receipt, SamplingRecord,
    SignedReceipt, StackId, canonical_bytes, sha256,
};

use crate::config::{SimConfig, Strategy};
use crate::rng::Rng;

pub const CHEAT: u8 = 1;
pub const LONG: u8 = 2;
pub const OVER: u8 = 4;

/// Units bought per request (above any request's input + output, over-reports included).
pub const UNITS_PER_REQUEST: u64 = 2_000;

/// One request as the simulator remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub input: u16,
    pub output: u16,
    pub flags: u8,
}

impl Rec {
    pub fn cheat(&self) -> bool {
        self.flags & CHEAT != 0
    }
}

/// A stack its node has served and not yet had sampled.
#[derive(Debug, Clone)]
pub struct Served {
    pub node: usize,
    pub node_id: NodeId,
    pub stack: StackId,
    pub strategy: Strategy,
    pub custody: Custody,
    pub recs: Vec<Rec>,
    pub root: Hash32,
    /// The Merkle tree over the receipts' digests, level by level from the hashed leaves up:
    /// kept until the claim is sampled, to prove the sampled receipts.
    pub tree: Vec<Vec<Hash32>>,
    pub units_used: u64,
    pub cheats: u64,
    /// Units the receipts over-report (paid, never served).
    pub over_units: u64,
    /// Height the claim was included at, once it was.
    pub claimed_at: Option<u64>,
    /// Blocks a timing dodger has delayed its claim.
    pub delayed: u32,
}

/// What every receipt of the simulation shares.
#[derive(Debug, Clone)]
pub struct ReceiptShape {
    pub model: ModelId,
    pub model_digest: Hash32,
    pub classes: Vec<Hash32>,
}

impl ReceiptShape {
    pub fn class(i: u64) -> NodeClass {
        NodeClass {
            engine_version: "sim-1".into(),
            model_digest: sortition_types::sha256(b"sim-weights"),
            quantization: "q8".into(),
            device: format!("sim-device-{i}"),
            kernels: "sim".into(),
        }
    }
}

fn tag(stack: StackId, seq: u64, what: u8) -> Hash32 {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&stack.0.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16] = what;
    Hash32(b)
}

/// The receipt a node signs for request `seq` of `s`.
pub fn receipt(shape: &ReceiptShape, s: &Served, class: usize, seq: u64) -> Receipt {
    let r = s.recs[seq as usize];
    let output = if r.flags & OVER != 0 {
        over(r.output)
    } else {
        u64::from(r.output)
    };
    Receipt {
        node: s.node_id,
        stack: s.stack,
        sequence: seq,
        model: shape.model.clone(),
        model_digest: shape.model_digest,
        node_class: shape.classes[class],
        request_hash: tag(s.stack, seq, 0),
        // The honest answer, or another one.
        response_hash: tag(s.stack, seq, 1 + (r.flags & CHEAT)),
        input_tokens: u64::from(r.input),
        output_tokens: output,
        sampling: SamplingRecord::default(),
        timestamp_ms: 0,
        custody: s.custody,
    }
}

fn over(output: u16) -> u64 {
    u64::from(output) * 3 / 2
}

/// Serves `count` requests on `stack` for node `node`: records, units and the receipts' root.
///
/// `plan`: a timing dodger's prediction of the randomness its claim will be sampled with and
/// of the claim's id; it cheats only on receipts that prediction leaves unsampled.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    cfg: &SimConfig,
    shape: &ReceiptShape,
    class: usize,
    node: usize,
    node_id: NodeId,
    strategy: Strategy,
    stack: StackId,
    count: u64,
    plan: Option<(Hash32, u64)>,
) -> Served {
    let mut rng = Rng::new(cfg.seed ^ 0x5e27_e000_0000_0000, stack.0);
    let p = (cfg.cheat_p * PPM as f64) as u64;
    let mut s = Served {
        node,
        node_id,
        stack,
        strategy,
        custody: if strategy == Strategy::Withhold {
            Custody::Executor
        } else {
            Custody::Gateway
        },
        recs: Vec::with_capacity(count as usize),
        root: Hash32::ZERO,
        tree: vec![],
        units_used: 0,
        cheats: 0,
        over_units: 0,
        claimed_at: None,
        delayed: 0,
    };
    let q = u64::from(cfg.q_ppm());
    let unsampled =
        |i: u64| plan.is_none_or(|(rand, claim)| below(draw(&rand, "sample", claim, i), PPM) >= q);
    for i in 0..count {
        let input = 20 + rng.below(480) as u16;
        let output = 20 + rng.below(280) as u16;
        let long = u32::from(input) > cfg.long_prompt_tokens;
        let coin = rng.below(PPM) < p;
        let mut flags = if long { LONG } else { 0 };
        flags |= match strategy {
            Strategy::Honest | Strategy::LazyCopy | Strategy::LazySkip => 0,
            Strategy::AlwaysCheat | Strategy::Colluder => CHEAT,
            Strategy::CheatFraction | Strategy::Withhold => {
                if coin {
                    CHEAT
                } else {
                    0
                }
            }
            Strategy::TimingDodger => {
                if coin && unsampled(i) {
                    CHEAT
                } else {
                    0
                }
            }
            Strategy::Selective => {
                if long {
                    CHEAT
                } else {
                    0
                }
            }
            Strategy::OverReport => {
                if coin {
                    CHEAT | OVER
                } else {
                    0
                }
            }
        };
        let out_units = if flags & OVER != 0 {
            s.over_units += over(output) - u64::from(output);
            over(output)
        } else {
            u64::from(output)
        };
        s.units_used += u64::from(input) + out_units;
        s.cheats += u64::from(flags & CHEAT);
        s.recs.push(Rec {
            input,
            output,
            flags,
        });
    }
    s.tree = tree(&leaves(shape, &s, class));
    s.root = s
        .tree
        .last()
        .and_then(|l| l.first())
        .copied()
        .unwrap_or(Hash32::ZERO);
    s
}

/// The receipts' digests: `Receipt::digest` (sha256 of the canonical bytes), computed by
/// patching the fields that vary into one encoded receipt instead of encoding each anew (the
/// tests check both agree).
pub fn leaves(shape: &ReceiptShape, s: &Served, class: usize) -> Vec<Hash32> {
    if s.recs.is_empty() {
        return vec![];
    }
    let mut bytes = canonical_bytes(&receipt(shape, s, class, 0));
    let Some(m) = bytes
        .windows(32)
        .position(|w| w == shape.model_digest.0.as_slice())
    else {
        return (0..s.recs.len() as u64)
            .map(|i| receipt(shape, s, class, i).digest())
            .collect();
    };
    // Layout after the model id: model_digest, node_class, request_hash, response_hash (32
    // bytes each), input_tokens, output_tokens (u64 LE each); the sequence is the third u64.
    (0..s.recs.len())
        .map(|i| {
            let seq = i as u64;
            let r = s.recs[i];
            bytes[16..24].copy_from_slice(&seq.to_le_bytes());
            bytes[m + 64..m + 96].copy_from_slice(&tag(s.stack, seq, 0).0);
            bytes[m + 96..m + 128].copy_from_slice(&tag(s.stack, seq, 1 + (r.flags & CHEAT)).0);
            bytes[m + 128..m + 136].copy_from_slice(&u64::from(r.input).to_le_bytes());
            let out = if r.flags & OVER != 0 {
                over(r.output)
            } else {
                u64::from(r.output)
            };
            bytes[m + 136..m + 144].copy_from_slice(&out.to_le_bytes());
            sha256(&bytes)
        })
        .collect()
}

/// Every level of the receipts' Merkle tree, as `sortition_types::merkle` builds it: leaves
/// hashed as `H(0x00 || leaf)`, inner nodes as `H(0x01 || left || right)`, an odd node
/// promoted as is. The last level holds the root.
pub fn tree(leaves: &[Hash32]) -> Vec<Vec<Hash32>> {
    if leaves.is_empty() {
        return vec![vec![Hash32::ZERO]];
    }
    let mut levels = vec![
        leaves
            .iter()
            .map(|l| {
                let mut b = [0u8; 33];
                b[1..].copy_from_slice(&l.0);
                sha256(&b)
            })
            .collect::<Vec<_>>(),
    ];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let next = levels
            .last()
            .map(|l| {
                l.chunks(2)
                    .map(|pair| match pair {
                        [a, b] => {
                            let mut buf = [1u8; 65];
                            buf[1..33].copy_from_slice(&a.0);
                            buf[33..].copy_from_slice(&b.0);
                            sha256(&buf)
                        }
                        [a] => *a,
                        _ => Hash32::ZERO,
                    })
                    .collect()
            })
            .unwrap_or_default();
        levels.push(next);
    }
    levels
}

/// The inclusion proof of receipt `index` from the tree's levels.
pub fn proof(tree: &[Vec<Hash32>], index: usize) -> Option<MerkleProof> {
    let leaf_count = tree.first()?.len();
    if index >= leaf_count {
        return None;
    }
    let mut siblings = vec![];
    let mut i = index;
    for level in &tree[..tree.len() - 1] {
        if let Some(s) = level.get(i ^ 1) {
            siblings.push(*s);
        }
        i /= 2;
    }
    Some(MerkleProof {
        index: index as u64,
        leaf_count: leaf_count as u64,
        siblings,
    })
}

/// The signed receipt of request `seq`, as the executor submits it when sampled.
pub fn signed(
    shape: &ReceiptShape,
    s: &Served,
    class: usize,
    seq: u64,
    key: &Keypair,
) -> SignedReceipt {
    SignedReceipt::sign(receipt(shape, s, class, seq), key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sortition_types::merkle_root;

    #[test]
    fn patched_digests_trees_and_proofs_match_the_types_crate() {
        let cfg = SimConfig {
            cheat_p: 0.5,
            ..SimConfig::default()
        };
        let shape = ReceiptShape {
            model: ModelId::new("m"),
            model_digest: sha256(b"w"),
            classes: vec![ReceiptShape::class(0).fingerprint()],
        };
        for strategy in [Strategy::OverReport, Strategy::Withhold, Strategy::Honest] {
            let s = serve(
                &cfg,
                &shape,
                0,
                3,
                NodeId(3),
                strategy,
                StackId(9),
                37,
                None,
            );
            let slow: Vec<Hash32> = (0..37)
                .map(|i| receipt(&shape, &s, 0, i).digest())
                .collect();
            assert_eq!(leaves(&shape, &s, 0), slow);
            assert_eq!(s.root, merkle_root(&slow));
            for i in [0usize, 1, 17, 36] {
                let p = proof(&s.tree, i).unwrap();
                assert_eq!(p, MerkleProof::build(&slow, i).unwrap());
                assert!(p.verify(&slow[i], &s.root));
            }
        }
    }
}
