//! One simulation run with a progress bar on stderr.

use std::sync::atomic::AtomicBool;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{SimConfig, SimError};
use crate::report::Summary;
use crate::world::World;

/// One run with a progress bar on stderr (hidden with `quiet` or without a terminal).
pub fn simulate(cfg: SimConfig, stop: &AtomicBool, quiet: bool) -> Result<Summary, SimError> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1_000)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("registering nodes");
    let mut world = World::new(cfg)?;
    let interrupted = world.run(stop, |w| {
        bar.set_position((w.progress() * 1_000.0) as u64);
        bar.set_message(format!(
            "block {} · {} txs · {} audits · {} disputes",
            w.stats.blocks, w.stats.txs, w.stats.audits, w.stats.disputes
        ));
    });
    bar.finish_and_clear();
    Ok(Summary::of(&world, interrupted))
}
