//! Integration tests of the ledger service: real servers on port 0, a real child process
//! killed with SIGKILL, no mocks.

mod crash;
mod follower;
mod http;
mod restart;
mod sender;

use sortition_ledger::{Genesis, SignedTx, Tx, TxKind};
use sortition_types::{Amount, Keypair};

pub fn admin() -> Keypair {
    Keypair::from_seed(b"admin")
}

/// The funded accounts of [`genesis`].
pub fn writer(i: usize) -> Keypair {
    Keypair::from_seed(format!("writer-{i}").as_bytes())
}

/// The same genesis as the `ledger-devnode` binary.
pub fn genesis() -> Genesis {
    let mut g = Genesis::devnet("devnet", admin().public());
    g.balances = (0..8)
        .map(|i| (writer(i).public(), Amount(1_000_000_000)))
        .collect();
    g
}

/// A transfer of `amount` from `key` to itself: a valid, distinct transaction per nonce that
/// any funded account can send.
pub fn self_transfer(key: &Keypair, nonce: u64, amount: u64) -> SignedTx {
    Tx {
        chain_id: "devnet".into(),
        sender: key.public(),
        nonce,
        expires_at_ms: u64::MAX,
        kind: TxKind::Transfer {
            to: key.public(),
            amount: Amount(amount),
        },
    }
    .sign(key)
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
