//! `sortition keys new|show`: ed25519 account keys in files (hex secret, mode 0600).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sortition_types::Keypair;

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a new key file (refuses to overwrite one).
    New {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key (the account id) of a key file.
    Show { file: PathBuf },
}

pub fn run(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::New { out } => {
            if out.exists() {
                bail!(
                    "{} already exists; refusing to overwrite a key",
                    out.display()
                );
            }
            let k = new_key_file(&out)?;
            println!("{}", k.public());
        }
        KeysCmd::Show { file } => println!("{}", load_key(&file)?.public()),
    }
    Ok(())
}

/// Fresh key from the OS RNG.
pub fn random_key() -> Result<Keypair> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("OS randomness: {e}"))?;
    Ok(Keypair::from_secret(secret))
}

pub fn new_key_file(path: &Path) -> Result<Keypair> {
    let k = random_key()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_secret(path, &hex::encode(k.secret_bytes()))?;
    Ok(k)
}

/// Writes a secret file readable only by its owner.
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub fn load_key(path: &Path) -> Result<Keypair> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .with_context(|| format!("{} does not hold a 32-byte hex secret", path.display()))?;
    Ok(Keypair::from_secret(secret))
}

/// Loads the key at `path`, creating it first if missing.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    if path.exists() {
        load_key(path)
    } else {
        new_key_file(path)
    }
}
