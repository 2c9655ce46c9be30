//! The Sortition gateway: an OpenAI-compatible proxy over the network of execution nodes.
//!
//! Owns (so far): the durable store of users, credits, API keys, usage, the gateway's stacks
//! and audit payloads ([`store`]); API key format, the server secret and keyed hashing
//! ([`keys`]); admission control, per-key rates and a global in-flight cap ([`limits`]); and
//! the market router that scores nodes and picks one, or a quorum, with circuit breakers
//! ([`router`]).
//!
//! Does not own: the ledger (stacks are bought there; this crate keeps the gateway's view),
//! node execution, or receipt verification. Every error type here maps to an OpenAI-shaped
//! `sortition_api::ApiError` through one `From` impl beside it: 401 for authentication, 429
//! `insufficient_quota` for credits and budgets (as OpenAI), 429 for limits, 503 when no node
//! (or no stack on one) can serve.

pub mod admission;
pub mod answers;
pub mod audits;
pub mod challenge;
pub mod confidential;
pub mod directory;
pub mod fanout;
pub mod health;
pub mod keys;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod proxy;
pub mod quorum;
pub mod relay;
pub mod router;
pub mod routes;
pub mod run;
pub mod server;
pub mod settle;
pub mod state;
pub mod store;
pub mod verify;
