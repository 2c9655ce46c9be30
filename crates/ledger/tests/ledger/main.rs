//! Integration tests of the ledger state machine: scenarios and property tests.

mod harness;
mod props;
mod scenarios;
