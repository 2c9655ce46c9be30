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

#[cfg(test)]
mod tests {
    use super::*;
    use sortition_types::Keypair;

    fn dealt(n: usize) -> (tempfile::TempDir, Genesis) {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut g = Genesis::devnet("setup-test", Keypair::from_seed(b"a").public());
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("v{i}"))).collect();
        deal(&mut g, &dirs).expect("deal");
        (tmp, g)
    }

    #[test]
    fn a_dealt_genesis_is_consistent_and_inconsistent_ones_say_what_is_wrong() {
        let (_t, g) = dealt(4);
        assert_eq!(g.validators.len(), 4);
        assert_eq!(g.beacon.threshold, 3);
        g.check_validators().expect("consistent");

        let mut unsorted = g.clone();
        unsorted.validators.swap(0, 1);
        assert!(
            unsorted
                .check_validators()
                .unwrap_err()
                .contains("ascending")
        );

        let mut short = g.clone();
        short.validators.pop();
        let e = short.check_validators().unwrap_err();
        assert!(e.contains("3 validators but 4 beacon public shares"), "{e}");

        let mut bad_key = g.clone();
        bad_key.validators[0] = "zz".into();
        assert!(
            bad_key
                .check_validators()
                .unwrap_err()
                .contains("not a hex ed25519")
        );

        let mut threshold = g.clone();
        threshold.beacon.threshold = 2;
        let e = threshold.check_validators().unwrap_err();
        assert!(e.contains("quorum of 3"), "{e}");

        let none = Genesis::devnet("x", Keypair::from_seed(b"a").public());
        assert!(none.check_validators().is_err());
    }
}
