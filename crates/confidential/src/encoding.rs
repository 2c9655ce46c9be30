//! Serde helpers: byte strings travel as base64 (standard alphabet, padded) or hex in
//! human-readable formats (JSON/SSE) and as raw bytes otherwise.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serializer};

/// `Vec<u8>` as base64.
pub(crate) mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(b))
        } else {
            s.serialize_bytes(b)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            STANDARD
                .decode(s.as_bytes())
                .map_err(|e| D::Error::custom(format!("bad base64: {e}")))
        } else {
            Vec::<u8>::deserialize(d)
        }
    }
}

/// `[u8; N]` as hex.
pub(crate) mod hex_array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(b: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(b))
        } else {
            s.serialize_bytes(b)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        use serde::de::Error;
        let v: Vec<u8> = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s.as_bytes()).map_err(|e| D::Error::custom(format!("bad hex: {e}")))?
        } else {
            Vec::<u8>::deserialize(d)?
        };
        v.try_into()
            .map_err(|v: Vec<u8>| D::Error::custom(format!("expected {N} bytes, got {}", v.len())))
    }
}

/// `Vec<u8>` as hex.
pub(crate) mod hex_vec {
    use super::*;

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(b))
        } else {
            s.serialize_bytes(b)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s.as_bytes()).map_err(|e| D::Error::custom(format!("bad hex: {e}")))
        } else {
            Vec::<u8>::deserialize(d)
        }
    }
}
