//! The block consensus orders: a parent, a height, the proposer's timestamp, the beacon signature
//! `σ_h` for its height (absent in a bridge block, see `sortition_ledger::BlockContext::beacon`),
//! and the ledger transactions (their canonical encoding).
//!
//! A block carries no state root: the ledger applies a block only once it is final (execution
//! follows ordering), and every replica's root for each height is served at
//! `GET /v1/blocks/{height}` for anyone to compare.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error as CodecError, RangeCfg, Read, ReadExt, Write};
use commonware_consensus::types::Height;
use commonware_cryptography::{Digestible, Hasher, Sha256, sha256::Digest};
use sortition_ledger::{BeaconSig, BlockContext, SignedTx, beacon::SIGNATURE_LEN};

/// Most bytes of encoded transactions one block may carry.
pub const MAX_TXS_BYTES: usize = 2 * 1024 * 1024;

/// Most transactions one block may carry.
pub const MAX_BLOCK_TXS: usize = 4096;

/// Domain of the block digest.
const DOMAIN: &[u8] = b"sortition/block/v1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub parent: Digest,
    pub height: Height,
    pub timestamp_ms: u64,
    /// `σ_height`; `None` in the genesis block and in bridge blocks (proposed before the
    /// parent was final, when `σ_height` could not exist yet).
    pub beacon: Option<[u8; SIGNATURE_LEN]>,
    /// `canonical_bytes(Vec<SignedTx>)`.
    pub txs: Vec<u8>,
    digest: Digest,
}

impl Block {
    pub fn new(
        parent: Digest,
        height: Height,
        timestamp_ms: u64,
        beacon: Option<[u8; SIGNATURE_LEN]>,
        txs: &[SignedTx],
    ) -> Self {
        let txs = sortition_types::canonical_bytes(&txs.to_vec());
        Self::with_encoded(parent, height, timestamp_ms, beacon, txs)
    }

    fn with_encoded(
        parent: Digest,
        height: Height,
        timestamp_ms: u64,
        beacon: Option<[u8; SIGNATURE_LEN]>,
        txs: Vec<u8>,
    ) -> Self {
        let txs_digest = Sha256::hash(&[txs.as_slice()]);
        let digest = header_digest(
            &parent,
            height.get(),
            timestamp_ms,
            beacon.as_ref(),
            &txs_digest,
        );
        Block {
            parent,
            height,
            timestamp_ms,
            beacon,
            txs,
            digest,
        }
    }

    /// The genesis block every validator starts from (height 0; it commits to the genesis).
    pub fn genesis(genesis_hash: &[u8], genesis_time_ms: u64) -> Self {
        let parent = hash_parts(&[DOMAIN, b"genesis", genesis_hash]);
        Self::with_encoded(
            parent,
            Height::zero(),
            genesis_time_ms,
            None,
            sortition_types::canonical_bytes(&Vec::<SignedTx>::new()),
        )
    }

    /// sha256 of the transactions' bytes (a part of the digest).
    pub fn txs_digest(&self) -> Digest {
        Sha256::hash(&[self.txs.as_slice()])
    }

    /// The transactions, decoded.
    pub fn transactions(&self) -> Result<Vec<SignedTx>, String> {
        sortition_types::encoding::from_canonical_bytes(&self.txs)
            .map_err(|e| format!("transactions do not decode: {e}"))
    }

    /// The ledger's context for this block.
    pub fn context(&self) -> BlockContext {
        BlockContext {
            height: self.height.get(),
            timestamp_ms: self.timestamp_ms,
            beacon: self.beacon.map(BeaconSig),
        }
    }
}

/// A block's digest from its header fields (what consensus votes on; a light client recomputes
/// it from a block's header and its transactions' digest).
pub fn header_digest(
    parent: &Digest,
    height: u64,
    timestamp_ms: u64,
    beacon: Option<&[u8; SIGNATURE_LEN]>,
    txs_digest: &Digest,
) -> Digest {
    // An absent beacon hashes as an empty part, a present one as its 48 bytes.
    hash_parts(&[
        DOMAIN,
        parent.as_ref(),
        &height.to_be_bytes(),
        &timestamp_ms.to_be_bytes(),
        beacon.map_or(&[][..], |b| &b[..]),
        txs_digest.as_ref(),
    ])
}

/// sha256 of the parts, each prefixed with its length (so no two part lists collide).
fn hash_parts(parts: &[&[u8]]) -> Digest {
    let mut buf = Vec::new();
    for p in parts {
        buf.extend_from_slice(&(p.len() as u64).to_be_bytes());
        buf.extend_from_slice(p);
    }
    Sha256::hash(&[buf.as_slice()])
}

impl Write for Block {
    fn write(&self, w: &mut impl BufMut) {
        self.parent.write(w);
        self.height.write(w);
        self.timestamp_ms.write(w);
        match &self.beacon {
            None => w.put_u8(0),
            Some(b) => {
                w.put_u8(1);
                w.put_slice(b);
            }
        }
        self.txs.write(w);
    }
}

impl EncodeSize for Block {
    fn encode_size(&self) -> usize {
        self.parent.encode_size()
            + self.height.encode_size()
            + self.timestamp_ms.encode_size()
            + 1
            + self.beacon.map_or(0, |_| SIGNATURE_LEN)
            + self.txs.encode_size()
    }
}

impl Read for Block {
    type Cfg = ();

    fn read_cfg(r: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let parent = Digest::read(r)?;
        let height = Height::read(r)?;
        let timestamp_ms = u64::read(r)?;
        let beacon = match u8::read(r)? {
            0 => None,
            1 => {
                if r.remaining() < SIGNATURE_LEN {
                    return Err(CodecError::EndOfBuffer);
                }
                let mut b = [0u8; SIGNATURE_LEN];
                r.copy_to_slice(&mut b);
                Some(b)
            }
            t => return Err(CodecError::InvalidEnum(t)),
        };
        let txs = Vec::<u8>::read_cfg(r, &(RangeCfg::new(0..=MAX_TXS_BYTES), ()))?;
        Ok(Self::with_encoded(
            parent,
            height,
            timestamp_ms,
            beacon,
            txs,
        ))
    }
}

impl Digestible for Block {
    type Digest = Digest;
    fn digest(&self) -> Digest {
        self.digest
    }
}

impl commonware_consensus::Heightable for Block {
    fn height(&self) -> Height {
        self.height
    }
}

impl commonware_consensus::Block for Block {
    fn parent(&self) -> Digest {
        self.parent
    }
}

impl commonware_consensus::BoundedBlock for Block {
    fn max_encode_size(_: &()) -> usize {
        // digest, height (varint), timestamp, beacon tag and signature, length prefix (varint)
        // and the bytes.
        32 + 10 + 8 + 1 + SIGNATURE_LEN + 5 + MAX_TXS_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_codec::{DecodeExt, Encode};
    use sortition_ledger::{Tx, TxKind};
    use sortition_types::{Amount, Keypair};

    #[test]
    fn blocks_round_trip_and_malformed_bytes_are_refused() {
        let k = Keypair::from_seed(b"block-test");
        let tx = Tx {
            chain_id: "c".into(),
            sender: k.public(),
            nonce: 0,
            expires_at_ms: 9,
            kind: TxKind::Faucet {
                to: k.public(),
                amount: Amount(5),
            },
        }
        .sign(&k);
        let g = Block::genesis(b"g", 1);
        let b = Block::new(
            g.digest(),
            Height::new(1),
            7,
            Some([1; SIGNATURE_LEN]),
            std::slice::from_ref(&tx),
        );
        let bytes = b.encode();
        let back = Block::decode(bytes.clone()).expect("decodes");
        assert_eq!(back, b);
        assert_eq!(back.digest(), b.digest());
        assert_eq!(back.transactions().expect("txs"), vec![tx.clone()]);
        // Every truncation is refused, never a panic.
        for cut in 0..bytes.len() {
            assert!(Block::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        // A different timestamp is a different block.
        let other = Block::new(g.digest(), Height::new(1), 8, Some([1; SIGNATURE_LEN]), &[]);
        assert_ne!(other.digest(), b.digest());
        // A bridge block (no beacon) round-trips, and differs from the block with one.
        let bridge = Block::new(
            g.digest(),
            Height::new(1),
            7,
            None,
            std::slice::from_ref(&tx),
        );
        let back = Block::decode(bridge.encode()).expect("decodes");
        assert_eq!(back, bridge);
        assert_ne!(bridge.digest(), b.digest());
        assert_eq!(bridge.context().beacon, None);
        // An unknown beacon tag is refused.
        let mut bad = bridge.encode().to_vec();
        let tag_at = bad.len() - bridge.txs.encode_size() - 1;
        bad[tag_at] = 2;
        assert!(Block::decode(bytes::Bytes::from(bad)).is_err());
    }
}
