//! Audit duty: following the ledger's events, a node
//! - as **executor** of a sampled receipt, publishes the receipt with its Merkle proof;
//! - as **auditor** or **dispute committee member**, receives the request from its holder
//!   (`POST /sortition/v1/audits/{id}/payload`), re-executes it exactly, and commits then
//!   reveals its verdict before the deadlines.
//!
//! A payload is judged only if its receipt is the one the ledger holds for the audit and the
//! body hashes to that receipt's request hash, so no one can make an auditor judge a
//! different request. Deliveries are checked on arrival too (see [`AuditDesk::deliver`]), so
//! that a flood of decoys cannot crowd the genuine payload out.

mod duties;
mod duty;

pub use crate::desk::{AuditDesk, Expected};
pub use duties::follow;
pub use sortition_api::audit::{Answer, AuditPayload};
