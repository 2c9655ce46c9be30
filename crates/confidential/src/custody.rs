//! Custody of confidential requests for their audits.
//!
//! Nobody outside the executing node ever sees a confidential request in the clear, so only that
//! node can hand it to the auditors the ledger draws. It keeps each request it receipted sealed
//! at rest under a [`CustodyKey`], and when one is sampled it re-seals it with HPKE to each
//! auditor's attested confidential key ([`audit_aad`] and [`audit_request_id`] bind the sealed
//! copy to one audit and one auditor, so it cannot be replayed to another).
//!
//! At rest: ChaCha20-Poly1305, a random 96-bit nonce per record, AAD = `"sortition/custody/v1"
//! || stack || sequence` (so a record cannot be moved to another receipt). The key lives in a
//! 0600 file of the node's data directory: it stands in for a TEE sealing key, which a hardware
//! attester would provide (not built: only the INSECURE dev attester is).

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sortition_types::{Hash32, NodeId, sha256};
use zeroize::Zeroizing;

const CUSTODY_DOMAIN: &[u8] = b"sortition/custody/v1";
const AUDIT_DOMAIN: &[u8] = b"sortition/audit-payload/v1";

/// Errors of custody; none reveals plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("custody key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("operating system randomness unavailable")]
    Randomness,
    #[error("custody record could not be opened (wrong key, wrong receipt or tampered)")]
    Open,
    #[error("custody record could not be sealed")]
    Seal,
}

/// The key requests are sealed under at rest (see the module docs).
pub struct CustodyKey(Zeroizing<[u8; 32]>);

impl CustodyKey {
    /// Reads the key from `path`, or creates it there (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, CustodyError> {
        let err = |reason: String| CustodyError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        if let Ok(bytes) = std::fs::read(path) {
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| err(format!("holds {} bytes, not 32", bytes.len())))?;
            return Ok(CustodyKey(Zeroizing::new(key)));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|_| CustodyError::Randomness)?;
        write_private(path, key.as_ref()).map_err(|e| err(e.to_string()))?;
        Ok(CustodyKey(key))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(*self.0))
    }

    /// Seals the request behind receipt `sequence` of `stack`: nonce (12 bytes) || ciphertext.
    pub fn seal(
        &self,
        stack: u64,
        sequence: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CustodyError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| CustodyError::Randomness)?;
        let aad = record_aad(stack, sequence);
        let ct = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CustodyError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a record sealed by [`CustodyKey::seal`] for the same receipt.
    pub fn open(
        &self,
        stack: u64,
        sequence: u64,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
        if sealed.len() < 12 {
            return Err(CustodyError::Open);
        }
        let (nonce, ct) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| CustodyError::Open)?;
        let aad = record_aad(stack, sequence);
        self.cipher()
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| CustodyError::Open)
    }
}

fn record_aad(stack: u64, sequence: u64) -> Vec<u8> {
    let mut v = CUSTODY_DOMAIN.to_vec();
    v.extend_from_slice(&stack.to_be_bytes());
    v.extend_from_slice(&sequence.to_be_bytes());
    v
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The authenticated data of a request re-sealed for `auditor` on `audit`.
pub fn audit_aad(audit: u64, auditor: NodeId) -> Vec<u8> {
    let mut v = AUDIT_DOMAIN.to_vec();
    v.extend_from_slice(&audit.to_be_bytes());
    v.extend_from_slice(&auditor.0.to_be_bytes());
    v
}

/// The request id (HPKE `info`) of a request re-sealed for `auditor` on `audit`.
pub fn audit_request_id(audit: u64, auditor: NodeId) -> Hash32 {
    sha256(&audit_aad(audit, auditor))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_open_only_for_their_receipt_and_untampered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custody.key");
        let key = CustodyKey::load_or_create(&path).unwrap();
        let sealed = key.seal(7, 3, b"secret prompt").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(&key.open(7, 3, &sealed).unwrap()[..], b"secret prompt");
        assert!(key.open(7, 4, &sealed).is_err(), "moved to another receipt");
        assert!(key.open(8, 3, &sealed).is_err(), "moved to another stack");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open(7, 3, &tampered).is_err());
        assert!(key.open(7, 3, &sealed[..5]).is_err());
        // The same key comes back after a restart; another key opens nothing.
        let again = CustodyKey::load_or_create(&path).unwrap();
        assert_eq!(&again.open(7, 3, &sealed).unwrap()[..], b"secret prompt");
        let other = CustodyKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(7, 3, &sealed).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custody.key");
        std::fs::write(&path, [1u8; 5]).unwrap();
        assert!(matches!(
            CustodyKey::load_or_create(&path),
            Err(CustodyError::KeyFile { .. })
        ));
    }

    #[test]
    fn audit_bindings_differ_per_audit_and_auditor() {
        let a = audit_request_id(1, NodeId(2));
        assert_ne!(a, audit_request_id(1, NodeId(3)));
        assert_ne!(a, audit_request_id(2, NodeId(2)));
        assert_ne!(audit_aad(1, NodeId(2)), audit_aad(2, NodeId(1)));
    }
}
