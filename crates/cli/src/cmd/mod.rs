pub mod devnet;
pub mod keys;
pub mod ledger;
pub mod model;
pub mod receipt;
pub mod status;
