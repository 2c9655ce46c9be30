//! Dealing a validator network for a devnet or a test: consensus keys and beacon shares
//! written into each validator's data directory, and the genesis that names them.
//!
//! The beacon shares come from a **trusted dealer** ([`sortition_ledger::beacon::deal`]): fine
//! for a devnet, never for production (see the crate docs).

use std::path::{Path, PathBuf};

use sortition_ledger::Genesis;

/// Where a validator keeps its ledger (and its beacon share) inside its data directory.
pub fn ledger_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger")
}

/// Generates `dirs.len()` validators: a consensus key and a beacon share in each directory,
/// and `genesis` with its `validators` and `beacon` set to match. Returns each directory's
/// validator public key (hex), in the order of `dirs`.
pub fn deal(genesis: &mut Genesis, dirs: &[PathBuf]) -> Result<Vec<String>, String> {
    let n = dirs.len();
    if n == 0 {
        return Err("at least one validator".into());
    }
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(crate::keys::generate().map_err(|e| e.to_string())?);
    }
    // Participant order is ascending public key; share i belongs to participant i.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| crate::keys::public_hex(&keys[i]));
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
    let (beacon, shares) =
        sortition_ledger::beacon::deal_from_seed(seed, n as u32).map_err(|e| e.to_string())?;
    genesis.beacon = beacon;
    genesis.validators = order
        .iter()
        .map(|&i| crate::keys::public_hex(&keys[i]))
        .collect();
    for (participant, &i) in order.iter().enumerate() {
        crate::keys::write(&dirs[i], &keys[i]).map_err(|e| e.to_string())?;
        sortition_ledger_service::store::write_beacon_share(
            &ledger_dir(&dirs[i]),
            &shares[participant],
        )
        .map_err(|e| e.to_string())?;
    }
    genesis.check_validators()?;
    Ok(keys.iter().map(crate::keys::public_hex).collect())
}
