//! API keys and the server secret that hashes them.
//!
//! Owns: the key format (`sk-sort-` + 64 hex characters of 32 random bytes), the redacting
//! [`ApiKey`] newtype that keeps a plaintext key out of logs and `Debug` output, the
//! [`ServerSecret`] (32 random bytes kept in a 0600 file in the data directory), the keyed hash
//! HMAC-SHA256(secret, key) that is the only thing the store keeps, and constant-time
//! comparison of those hashes.
//!
//! Does not own: where keys are stored or looked up (see [`crate::store`]).

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "sk-sort-";
/// Random bytes in a key; hex-encoded after the prefix.
pub const KEY_RANDOM_BYTES: usize = 32;
/// How many characters of a key are kept for display (`sk-sort-` and 8 hex digits).
pub const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
/// The file in the data directory that holds the server secret.
pub const SECRET_FILE: &str = "gateway-secret.key";

/// Errors while creating keys or loading the server secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("server secret file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server secret file {0} is corrupt: expected {len} hex-encoded bytes", len = KEY_RANDOM_BYTES)]
    CorruptSecret(PathBuf),
    #[error("server secret file {0} is readable by group or others; chmod 600 it")]
    InsecurePermissions(PathBuf),
}

/// A plaintext API key. Shown to its owner once, at creation; never logged.
///
/// `Debug` prints only the display prefix; there is deliberately no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Result<ApiKey, KeyError> {
        let mut bytes = [0u8; KEY_RANDOM_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(ApiKey(format!("{KEY_PREFIX}{}", hex::encode(bytes))))
    }

    /// Wraps a presented key if it has the right shape; `None` otherwise.
    pub fn parse(s: &str) -> Option<ApiKey> {
        let rest = s.strip_prefix(KEY_PREFIX)?;
        let ok = rest.len() == 2 * KEY_RANDOM_BYTES
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| ApiKey(s.to_string()))
    }

    /// The plaintext; call only to hand it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The part that is safe to show in listings, e.g. `sk-sort-1a2b3c4d`.
    pub fn display_prefix(&self) -> &str {
        self.0.get(..DISPLAY_PREFIX_LEN).unwrap_or(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

/// HMAC-SHA256 of a key under the server secret: what the store keeps and looks up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Compares in constant time, so timing reveals nothing about where two hashes differ.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The gateway's 32-byte secret for keyed hashes of API keys.
#[derive(Clone)]
pub struct ServerSecret([u8; 32]);

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}

impl ServerSecret {
    /// A secret from known bytes (tests, or a secret supplied by a secret manager).
    pub fn from_bytes(bytes: [u8; 32]) -> ServerSecret {
        ServerSecret(bytes)
    }

    /// A fresh random secret.
    pub fn generate() -> Result<ServerSecret, KeyError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(ServerSecret(bytes))
    }

    /// Loads `<dir>/gateway-secret.key`, creating it (mode 0600, hex) on first start.
    /// Refuses a file that group or others can read.
    pub fn load_or_create(dir: &Path) -> Result<ServerSecret, KeyError> {
        let path = dir.join(SECRET_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        match open_new_private(&path) {
            Ok(mut file) => {
                let secret = ServerSecret::generate()?;
                file.write_all(hex::encode(secret.0).as_bytes())
                    .map_err(io)?;
                file.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "created a new gateway server secret");
                Ok(secret)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(e) => Err(io(e)),
        }
    }

    fn load(path: &Path) -> Result<ServerSecret, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        check_private(path, &file)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::CorruptSecret(path.into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::CorruptSecret(path.to_path_buf()))?;
        Ok(ServerSecret(arr))
    }

    /// HMAC-SHA256(secret, key).
    pub fn hash_key(&self, key: &ApiKey) -> KeyHash {
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) {
            Ok(m) => m,
            // HMAC accepts keys of any length; 32 bytes can never be rejected.
            Err(_) => unreachable!("HMAC accepts any key length"),
        };
        mac.update(key.expose().as_bytes());
        KeyHash(mac.finalize().into_bytes().into())
    }
}

#[cfg(unix)]
fn open_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn check_private(path: &Path, file: &std::fs::File) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = file.metadata().map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions(path.into()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: &std::fs::File) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_debug_redacts() {
        let k = ApiKey::generate().expect("random");
        assert_eq!(k.expose().len(), KEY_PREFIX.len() + 64);
        assert_eq!(ApiKey::parse(k.expose()), Some(k.clone()));
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.expose()[DISPLAY_PREFIX_LEN..]), "{dbg}");
        assert!(dbg.contains(k.display_prefix()));
        assert_ne!(ApiKey::generate().expect("random"), k);
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "sk-sort-",
            "sk-other-00",
            &format!("sk-sort-{}", "G".repeat(64)),
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad}");
        }
        assert!(ApiKey::parse(&format!("sk-sort-{}", "0".repeat(63))).is_none());
    }

    #[test]
    fn hash_depends_on_secret_and_compares_in_constant_time() {
        let k = ApiKey::generate().expect("random");
        let a = ServerSecret::from_bytes([1; 32]).hash_key(&k);
        let b = ServerSecret::from_bytes([2; 32]).hash_key(&k);
        assert!(a.ct_eq(&a) && !a.ct_eq(&b));
        assert!(!ct_eq(b"ab", b"abc"));
        assert_eq!(
            format!("{:?}", ServerSecret::from_bytes([7; 32])),
            "ServerSecret(<redacted>)"
        );
    }

    #[test]
    fn secret_is_created_once_with_private_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = ApiKey::generate().expect("random");
        let s1 = ServerSecret::load_or_create(dir.path()).expect("create");
        let s2 = ServerSecret::load_or_create(dir.path()).expect("load");
        assert_eq!(s1.hash_key(&k), s2.hash_key(&k));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(SECRET_FILE);
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                ServerSecret::load_or_create(dir.path()),
                Err(KeyError::InsecurePermissions(_))
            ));
        }
    }
}
