//! `sortition sim`: the simulator (crate `sortition-sim`) with Ctrl-C wired to its stop flag,
//! so an interrupted run still prints and writes what it measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
pub use sortition_sim::cli::SimArgs;

pub async fn run(args: SimArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: finishing the current block and writing what was measured");
            flag.store(true, Ordering::Relaxed);
        }
    });
    tokio::task::spawn_blocking(move || sortition_sim::cli::run(&args, &stop)).await??;
    Ok(())
}
