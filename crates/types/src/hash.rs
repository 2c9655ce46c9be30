//! 32-byte SHA-256 digests, shown as lowercase hex in human-readable formats.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

/// SHA-256 of a byte string.
pub fn sha256(bytes: &[u8]) -> Hash32 {
    Hash32(Sha256::digest(bytes).into())
}

/// SHA-256 over several parts, each prefixed with its length so that boundaries matter.
pub fn sha256_parts(parts: &[&[u8]]) -> Hash32 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    Hash32(h.finalize().into())
}

impl Hash32 {
    pub const ZERO: Hash32 = Hash32([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Hash32(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for Hash32 {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash32::from_hex(s)
    }
}

/// Serde for fixed byte arrays: hex strings when human-readable, raw bytes otherwise.
pub(crate) mod fixed_bytes {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(b: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(b))
        } else {
            // A tuple of N bytes: fixed length, no length prefix in BCS.
            use serde::ser::SerializeTuple;
            let mut t = s.serialize_tuple(N)?;
            for byte in b {
                t.serialize_element(byte)?;
            }
            t.end()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let mut out = [0u8; N];
            hex::decode_to_slice(&s, &mut out)
                .map_err(|e| D::Error::custom(format!("expected {N} hex-encoded bytes: {e}")))?;
            Ok(out)
        } else {
            struct V<const N: usize>;
            impl<'de, const N: usize> serde::de::Visitor<'de> for V<N> {
                type Value = [u8; N];
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{N} bytes")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<[u8; N], A::Error> {
                    let mut out = [0u8; N];
                    for (i, slot) in out.iter_mut().enumerate() {
                        *slot = a
                            .next_element()?
                            .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                    }
                    Ok(out)
                }
            }
            d.deserialize_tuple(N, V::<N>)
        }
    }
}

impl Serialize for Hash32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fixed_bytes::deserialize(d).map(Hash32)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_json_shape() {
        let h = sha256(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        let back: Hash32 = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert_eq!(crate::canonical_bytes(&h).len(), 32);
    }

    #[test]
    fn parts_are_length_delimited() {
        assert_ne!(sha256_parts(&[b"ab", b"c"]), sha256_parts(&[b"a", b"bc"]));
    }
}
