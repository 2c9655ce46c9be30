//! A validator's consensus identity: an ed25519 key in its data directory.

use std::path::Path;

use commonware_codec::{DecodeExt, Encode};
use commonware_cryptography::{Signer, ed25519};

/// The file holding a validator's consensus key (hex, 0600).
pub const KEY_FILE: &str = "validator-key";

/// A fresh key from the OS's randomness.
pub fn generate() -> std::io::Result<ed25519::PrivateKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    ed25519::PrivateKey::decode(seed.to_vec()).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Hex of a public key, as the genesis lists validators.
pub fn public_hex(key: &ed25519::PrivateKey) -> String {
    hex::encode(key.public_key().encode())
}

/// Parses a validator's public key from the genesis.
pub fn parse_public(hex_key: &str) -> Result<ed25519::PublicKey, String> {
    let bytes = hex::decode(hex_key).map_err(|_| format!("{hex_key:?} is not hex"))?;
    ed25519::PublicKey::decode(bytes.to_vec())
        .map_err(|e| format!("{hex_key:?} is not an ed25519 public key: {e}"))
}

/// Writes `key` to `dir`, private from the first byte.
pub fn write(dir: &Path, key: &ed25519::PrivateKey) -> std::io::Result<()> {
    sortition_api::private_fs::private_dir(dir)?;
    sortition_api::private_fs::write_private(&dir.join(KEY_FILE), hex::encode(key.encode()))
}

/// Reads the key `write` wrote.
pub fn load(dir: &Path) -> Result<ed25519::PrivateKey, String> {
    let path = dir.join(KEY_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("no validator key at {}: {e}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .map_err(|_| format!("{} does not hold a hex key", path.display()))?;
    ed25519::PrivateKey::decode(bytes.to_vec())
        .map_err(|e| format!("{} does not hold an ed25519 key: {e}", path.display()))
}
