#![allow(clippy::unwrap_used)]
//! Integration tests of sortition-engine, one binary. `tiny` runs on random-weight models
//! written from a seed; `real` on SmolLM2 / MiniLM obtained through the model store.

mod harness;
mod real;
mod tiny;
