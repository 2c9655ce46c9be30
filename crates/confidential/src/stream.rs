//! Sealed response streams.
//!
//! Each chunk is sealed with ChaCha20-Poly1305 under the response key exported from the HPKE
//! context. Nonce (12 bytes) = direction byte `0x01` (node→client) || `00 00 00` || sequence
//! number as u64 big-endian; the sealer's counter only moves forward, so a nonce is never
//! reused under one key. AAD = `"sortition/chunk/v1" || request_id[32] || "node->client" ||
//! seq (u64 BE) || final flag (1 byte)`. A non-streamed response is a single final chunk.
//!
//! The opener expects sequence numbers 0, 1, 2, ... and exactly one final chunk, and refuses a
//! replayed, reordered, dropped (gap), tampered or post-final chunk, and a stream that ends
//! without its final chunk. After any error the opener is poisoned and refuses everything.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use sortition_types::Hash32;

use crate::encoding::b64;

const CHUNK_DOMAIN: &[u8] = b"sortition/chunk/v1";
/// Direction label bound into every chunk's AAD.
pub const DIRECTION_NODE_TO_CLIENT: &[u8] = b"node->client";
const DIRECTION_BYTE_NODE_TO_CLIENT: u8 = 0x01;

/// Stream errors (typed; none reveals plaintext).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("chunk {got} replayed (expected {expected})")]
    Replayed { expected: u64, got: u64 },
    #[error("chunk {got} out of order or a chunk was dropped (expected {expected})")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("chunk {seq} failed authentication (tampered, wrong key or wrong request)")]
    Tampered { seq: u64 },
    #[error("chunk {seq} arrived after the final chunk")]
    AfterFinal { seq: u64 },
    #[error("stream ended after {received} chunks without a final chunk (truncated)")]
    Truncated { received: u64 },
    #[error("the stream already failed; refusing further chunks")]
    Poisoned,
    #[error("the response was already finished")]
    AlreadyFinished,
    #[error("sequence numbers exhausted")]
    SequenceExhausted,
    #[error("encryption failed")]
    Encrypt,
}

/// One sealed response chunk as it travels (JSON/SSE friendly: ciphertext in base64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedChunk {
    pub seq: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = DIRECTION_BYTE_NODE_TO_CLIENT;
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::from(n)
}

fn aad(request_id: &Hash32, seq: u64, is_final: bool) -> [u8; 71] {
    let mut a = [0u8; 71];
    let mut i = 0;
    for part in [
        CHUNK_DOMAIN,
        &request_id.0[..],
        DIRECTION_NODE_TO_CLIENT,
        &seq.to_be_bytes()[..],
    ] {
        a[i..i + part.len()].copy_from_slice(part);
        i += part.len();
    }
    a[i] = u8::from(is_final);
    a
}

fn cipher(key: &[u8; 32]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&Key::from(*key))
}

/// Node side: seals the response, chunk by chunk. Secrets never appear in `Debug`.
pub struct ResponseSealer {
    cipher: ChaCha20Poly1305,
    request_id: Hash32,
    next_seq: u64,
    finished: bool,
}

impl ResponseSealer {
    pub(crate) fn new(key: &[u8; 32], request_id: Hash32) -> Self {
        ResponseSealer {
            cipher: cipher(key),
            request_id,
            next_seq: 0,
            finished: false,
        }
    }

    /// Seal the next chunk; `is_final` closes the stream.
    pub fn seal_chunk(
        &mut self,
        plaintext: &[u8],
        is_final: bool,
    ) -> Result<SealedChunk, StreamError> {
        if self.finished {
            return Err(StreamError::AlreadyFinished);
        }
        let seq = self.next_seq;
        // The last sequence number is reserved so the counter can never wrap.
        if seq == u64::MAX {
            return Err(StreamError::SequenceExhausted);
        }
        let ad = aad(&self.request_id, seq, is_final);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce(seq),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| StreamError::Encrypt)?;
        self.next_seq = seq + 1;
        self.finished = is_final;
        Ok(SealedChunk {
            seq,
            is_final,
            ciphertext,
        })
    }

    /// A non-streamed response: a single final chunk.
    pub fn seal_whole(mut self, plaintext: &[u8]) -> Result<SealedChunk, StreamError> {
        self.seal_chunk(plaintext, true)
    }

    pub fn request_id(&self) -> Hash32 {
        self.request_id
    }
}

impl fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseSealer")
            .field("request_id", &self.request_id)
            .field("next_seq", &self.next_seq)
            .field("finished", &self.finished)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Client side: opens the response chunks in order.
pub struct ResponseOpener {
    cipher: ChaCha20Poly1305,
    request_id: Hash32,
    next_seq: u64,
    finished: bool,
    poisoned: bool,
}

impl ResponseOpener {
    pub(crate) fn new(key: &[u8; 32], request_id: Hash32) -> Self {
        ResponseOpener {
            cipher: cipher(key),
            request_id,
            next_seq: 0,
            finished: false,
            poisoned: false,
        }
    }

    /// Open the next chunk. Any error poisons the opener.
    pub fn open_chunk(&mut self, chunk: &SealedChunk) -> Result<Vec<u8>, StreamError> {
        let r = self.open_inner(chunk);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn open_inner(&mut self, chunk: &SealedChunk) -> Result<Vec<u8>, StreamError> {
        if self.poisoned {
            return Err(StreamError::Poisoned);
        }
        if self.finished {
            return Err(StreamError::AfterFinal { seq: chunk.seq });
        }
        let expected = self.next_seq;
        if chunk.seq < expected {
            return Err(StreamError::Replayed {
                expected,
                got: chunk.seq,
            });
        }
        if chunk.seq > expected {
            return Err(StreamError::OutOfOrder {
                expected,
                got: chunk.seq,
            });
        }
        let ad = aad(&self.request_id, chunk.seq, chunk.is_final);
        let plaintext = self
            .cipher
            .decrypt(
                &nonce(chunk.seq),
                Payload {
                    msg: &chunk.ciphertext,
                    aad: &ad,
                },
            )
            .map_err(|_| StreamError::Tampered { seq: chunk.seq })?;
        self.next_seq = expected.saturating_add(1);
        self.finished = chunk.is_final;
        Ok(plaintext)
    }

    /// Whether the final chunk was received.
    pub fn is_finished(&self) -> bool {
        self.finished && !self.poisoned
    }

    /// Call when the transport ends: refuses a stream without its final chunk.
    pub fn finish(&self) -> Result<(), StreamError> {
        if self.poisoned {
            Err(StreamError::Poisoned)
        } else if self.finished {
            Ok(())
        } else {
            Err(StreamError::Truncated {
                received: self.next_seq,
            })
        }
    }

    /// Open a whole response (all chunks, the last one final) and concatenate it.
    pub fn open_all<'a>(
        mut self,
        chunks: impl IntoIterator<Item = &'a SealedChunk>,
    ) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&self.open_chunk(c)?);
        }
        self.finish()?;
        Ok(out)
    }

    pub fn request_id(&self) -> Hash32 {
        self.request_id
    }
}

impl fmt::Debug for ResponseOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseOpener")
            .field("request_id", &self.request_id)
            .field("next_seq", &self.next_seq)
            .field("finished", &self.finished)
            .field("poisoned", &self.poisoned)
            .field("key", &"<redacted>")
            .finish()
    }
}
