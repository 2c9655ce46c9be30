//! A typed client of the ledger's HTTP API (`sortition-ledger-api`), for nodes, gateways, the
//! CLI and tests: failover across the validators of a replicated ledger, transactions signed
//! and sent with the right nonce, and the event stream from a cursor, one follower of that stream
//! ([`follow`], with the cursor where its holder keeps it), and the chain's height to wait on
//! ([`ChainHead`]). Also the one policy for
//! payloads that ledger events call for ([`delivery`]).
//!
//! Does not own: the ledger's rules (`sortition-ledger`) or the service (`sortition-ledger-
//! service`), neither of which a client needs to run.

pub mod client;
pub mod delivery;
pub mod follower;
pub mod head;

pub use client::{ClientError, DEFAULT_TX_TTL, LedgerClient, ReplicaView, TxResult};
pub use follower::{CursorStore, EventHandler, MemoryCursor, follow};
pub use head::{ChainHead, HeadDriver};
pub use sortition_ledger_api::{BlockResponse, Cursor, StatusResponse, TxLocation, records};
