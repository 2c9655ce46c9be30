//! `cargo run -p sortition-sim --example sim -- --nodes 1000 ...`: the simulator without the
//! whole `sortition` binary (the same arguments as `sortition sim`).

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    sim: sortition_sim::cli::SimArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let stop = std::sync::atomic::AtomicBool::new(false);
    match sortition_sim::cli::run(&args.sim, &stop) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
