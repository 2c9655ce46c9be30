//! The ledger's HTTP contract, shared by the service that serves it and every client that
//! reads it: the paths ([`paths`]), the bodies of the answers that are not ledger records
//! ([`TxResponse`], [`StatusResponse`], [`TxLocation`], [`BlockResponse`]), the event stream's
//! [`Cursor`] and the error body ([`ErrorBody`]).
//!
//! Ledger records (`Node`, `Stack`, `Claim`, `Audit`, `Dispute`, `Account`, ...) are the
//! [`records`] of this crate, built from the state machine's `State` (which stays private to
//! the ledger); the protocol's transactions, events and value types are re-exported there, so
//! a client names everything it reads through this crate.
//!
//! Depends on nothing with I/O: no HTTP server, no storage, no runtime.

use std::fmt;

use serde::{Deserialize, Serialize};
use sortition_ledger::Event;
use sortition_types::Hash32;

pub mod records;

/// The API's paths. Path parameters are the ids' and keys' `Display` forms.
pub mod paths {
    use std::fmt::Display;

    pub const HEALTH: &str = "/health";
    pub const METRICS: &str = "/metrics";
    pub const TX: &str = "/v1/tx";
    /// Several transactions, sequenced in the order sent (see [`super::TxBatchItem`]).
    pub const TX_BATCH: &str = "/v1/tx/batch";
    pub const STATUS: &str = "/v1/status";
    pub const GENESIS: &str = "/v1/genesis";
    pub const NODES: &str = "/v1/nodes";
    pub const MODELS: &str = "/v1/models";
    pub const STACKS: &str = "/v1/stacks";
    pub const AUDITS: &str = "/v1/audits";
    pub const DISPUTES: &str = "/v1/disputes";
    pub const SLASHES: &str = "/v1/slashes";
    pub const VALIDATOR_FAULTS: &str = "/v1/validator-faults";
    pub const SUPPLY: &str = "/v1/supply";
    pub const EVENTS: &str = "/v1/events";
    /// The height of each new block as it becomes final and durable (Server-Sent Events; the
    /// current height first), empty blocks included.
    pub const HEADS: &str = "/v1/heads";

    pub fn tx(hash: impl Display) -> String {
        format!("/v1/txs/{hash}")
    }
    pub fn block(height: u64) -> String {
        format!("/v1/blocks/{height}")
    }
    pub fn account(pk: impl Display) -> String {
        format!("/v1/accounts/{pk}")
    }
    pub fn node(id: u64) -> String {
        format!("{NODES}/{id}")
    }
    pub fn model(id: impl Display) -> String {
        format!("{MODELS}/{id}")
    }
    pub fn stack(id: u64) -> String {
        format!("{STACKS}/{id}")
    }
    /// The stacks `owner` holds.
    pub fn stacks_of(owner: impl Display) -> String {
        format!("{STACKS}?owner={owner}")
    }
    pub fn claim(id: u64) -> String {
        format!("/v1/claims/{id}")
    }
    pub fn audit(id: u64) -> String {
        format!("{AUDITS}/{id}")
    }
    /// The audits `auditor` is drawn for; only open ones when `open`.
    pub fn audits_of(auditor: u64, open: bool) -> String {
        format!("{AUDITS}?auditor={auditor}&open={open}")
    }
    pub fn dispute(id: u64) -> String {
        format!("{DISPUTES}/{id}")
    }
    /// The event stream from `from` on (inclusive).
    pub fn events_from(from: super::Cursor) -> String {
        format!("{EVENTS}?from={from}")
    }
}

/// How every refusal is written: `{"error": {"message", "type", "code"}}`, OpenAI's shape.
/// `code` is the ledger error's variant in snake_case (e.g. `wrong_nonce`) for refused
/// transactions, else `bad_request`, `not_found` or `unavailable`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ErrorDetail {
    #[serde(default)]
    pub message: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: String,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>, kind: &str, code: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                code: code.into(),
            },
        }
    }
}

/// Most transactions one `POST /v1/tx/batch` may carry.
pub const MAX_TX_BATCH: usize = 256;

/// One transaction's fate in the answer of `POST /v1/tx/batch` (a list in the order sent).
/// The batch is sequenced in that order, so one sender's consecutive nonces can go in one
/// request and land in one block; each transaction still succeeds or fails on its own (a
/// refused one does not use its nonce, so the sender's later ones then fail `wrong_nonce`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxBatchItem {
    /// Applied, in a durable block.
    Included(TxResponse),
    /// Refused (before sequencing or by the state machine in its block), with the status and
    /// body a single `POST /v1/tx` would have answered.
    Refused {
        status: u16,
        #[serde(flatten)]
        body: ErrorBody,
    },
}

/// Answer of `POST /v1/tx` when the transaction was applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TxResponse {
    pub height: u64,
    pub index: u32,
    pub tx_hash: Hash32,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusResponse {
    pub chain_id: String,
    pub height: u64,
    pub state_root: Hash32,
    pub timestamp: u64,
    /// The current epoch: clients seal only to keys published in it.
    #[serde(default)]
    pub epoch: u64,
    /// The current epoch's nonce, which TEE evidence of this epoch's keys binds.
    #[serde(default)]
    pub epoch_nonce: Hash32,
    /// The validator set (consensus keys, hex, in participant order); empty for the embedded
    /// single sequencer.
    #[serde(default)]
    pub validators: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TxLocation {
    pub height: u64,
    pub index: u32,
}

/// A block's header as anyone can check it: `beacon` (`σ_h`) verifies against the group key in
/// `/v1/genesis` (`beacon.group_key`) over `sortition_ledger::beacon::message(chain_id,
/// height)`, and `randomness` is its sha256. Both are `null` in a bridge block (one that
/// consensus finalized before its parent was final here; see
/// `sortition_ledger::BlockContext::beacon`), which draws nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockResponse {
    pub height: u64,
    pub timestamp_ms: u64,
    pub state_root: Hash32,
    pub randomness: Option<Hash32>,
    pub beacon: Option<records::BeaconSig>,
    pub tx_count: usize,
    /// Under consensus: the validator's proof for this block, hex (`sortition_validator::light::
    /// Proof`: the consensus parent's digest, the digest of the transactions' bytes and, when the
    /// block was finalized by a certificate of its own, commonware simplex's `Finalization`: the
    /// proposal and the validators' ed25519 signatures). A light client recomputes the block's
    /// digest from this header and verifies the certificate against the genesis' validators
    /// (`sortition_validator::light::verify_headers`). `None` for the embedded sequencer.
    #[serde(default)]
    pub certificate: Option<String>,
}

/// A position in the event stream: the `index`-th event of block `height`; written
/// `HEIGHT:INDEX` (the SSE id of each event and the `from` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub height: u64,
    pub index: u32,
}

impl Cursor {
    pub const START: Cursor = Cursor {
        height: 1,
        index: 0,
    };
    /// The cursor right after this one.
    pub fn next(self) -> Cursor {
        Cursor {
            height: self.height,
            index: self.index + 1,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.height, self.index)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (h, i) = s
            .split_once(':')
            .ok_or_else(|| format!("cursor {s:?} is not HEIGHT:INDEX"))?;
        Ok(Cursor {
            height: h.parse().map_err(|_| "bad height".to_string())?,
            index: i.parse().map_err(|_| "bad index".to_string())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let c: Cursor = "12:3".parse().unwrap();
        assert_eq!(
            c,
            Cursor {
                height: 12,
                index: 3
            }
        );
        assert_eq!(c.to_string(), "12:3");
        assert_eq!(
            c.next(),
            Cursor {
                height: 12,
                index: 4
            }
        );
        for bad in ["", "12", "a:1", "1:b", "1:2:3", "-1:0"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn error_body_reads_partial_bodies() {
        let b: ErrorBody =
            serde_json::from_str(r#"{"error":{"message":"m","code":"wrong_nonce"}}"#).unwrap();
        assert_eq!(b.error.code, "wrong_nonce");
        assert_eq!(b.error.kind, "");
        let json =
            serde_json::to_value(ErrorBody::new("x", "not_found_error", "not_found")).unwrap();
        assert_eq!(json["error"]["type"], "not_found_error");
    }

    #[test]
    fn paths_name_ids() {
        assert_eq!(paths::audits_of(4, true), "/v1/audits?auditor=4&open=true");
        assert_eq!(paths::events_from(Cursor::START), "/v1/events?from=1:0");
    }
}
