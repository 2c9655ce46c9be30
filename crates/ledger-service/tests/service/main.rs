//! Integration tests of the ledger service: real servers on port 0, a real child process
//! killed with SIGKILL, no mocks.

mod crash;
mod http;
mod restart;

use sortition_ledger::{Genesis, SignedTx, Tx, TxKind};
use sortition_types::{Amount, Keypair};

pub fn admin() -> Keypair {
    Keypair::from_seed(b"admin")
}

/// The same genesis as the `ledger-devnode` binary.
pub fn genesis() -> Genesis {
    Genesis::devnet("devnet", admin().public())
}

pub fn faucet(key: &Keypair, nonce: u64, amount: u64) -> SignedTx {
    Tx {
        chain_id: "devnet".into(),
        sender: key.public(),
        nonce,
        expires_at_ms: u64::MAX,
        kind: TxKind::Faucet {
            to: key.public(),
            amount: Amount(amount),
        },
    }
    .sign(key)
}
