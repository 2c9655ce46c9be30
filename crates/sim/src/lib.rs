//! `sortition sim`: simulated nodes, gateways, users and auditors driving the **real** ledger
//! state machine (`sortition-ledger`) at scale.
//!
//! Owns: the workload (gateways buying stacks, nodes serving and claiming them), the
//! participants' strategies (honest, cheating in several ways, lazy or colluding auditors,
//! timing dodgers, withholders), their reactions to the ledger's events, and the measurements
//! (detection per strategy against theory, catch times, profit against stake, slashes of
//! honest work, throughput) with their JSON, CSV, SVG and markdown outputs.
//!
//! Does not own: any rule. Registration, collateral, stacks, claims, sampling, auditor and
//! committee draws, commit–reveal, disputes, slashing, rewards, refunds and epochs are the
//! ledger's, applied block by block exactly as a validator applies them; inference is not run
//! (a receipt carries whether its answer was honest).

pub mod cli;
pub mod config;
pub mod plot;
pub mod report;
pub mod rng;
pub mod serve;
pub mod simulate;
pub mod stats;
pub mod sweep;
pub mod theory;
pub mod world;

pub use config::{BeaconMode, Mix, SimConfig, SimError, Strategy};
pub use report::Summary;
pub use world::World;
