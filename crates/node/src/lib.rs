//! The Sortition execution node.
//!
//! Owns: the OpenAI-compatible HTTP API offered to stack holders, stack authentication and
//! atomic unit reservation, signed receipts (persisted before a response completes), claims
//! with Merkle roots, and audit duty.
//!
//! Does not own: model execution (`sortition-engine`), the ledger's rules
//! (`sortition-ledger`), user accounts or routing (`sortition-gateway`).

pub mod accounts;
pub mod adversary;
pub mod audit;
pub mod auth;
pub mod behaviour;
mod chunks;
pub mod claims;
pub mod confidential;
pub mod desk;
pub mod dodge;
pub mod error;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod fault_tests;
pub mod judge;
pub mod keyring;
pub mod ledger;
pub mod logprobs;
mod pipeline;
pub mod request;
pub mod routes;
pub mod run;
pub mod server;
pub mod service;
pub mod store;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod testkit;
