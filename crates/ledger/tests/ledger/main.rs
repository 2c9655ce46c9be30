//! Integration tests of the ledger state machine: scenarios and property tests.

mod beacon;
mod challenges;
mod harness;
mod props;
mod scenarios;
mod validator_faults;
