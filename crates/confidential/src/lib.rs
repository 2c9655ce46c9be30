//! Confidential compute for Sortition (design flow 7: "Confidential request").
//!
//! Owns:
//! - the node's confidential X25519 key ([`ConfidentialKey`]), its per-epoch rotation and the
//!   64-byte report-data binding that ties the key to TEE evidence ([`report_data`]);
//! - sealed requests: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//!   ChaCha20-Poly1305 ([`seal_request`], [`open_request`]);
//! - sealed response streams: each chunk sealed with ChaCha20-Poly1305 under a key exported from
//!   the HPKE context, with its own nonce, refusing reordered, replayed, dropped, truncated and
//!   tampered chunks ([`ResponseSealer`], [`ResponseOpener`]);
//! - attestation evidence ([`Evidence`]) and its verifiers ([`Verifier`]): Intel TDX/SGX DCAP
//!   quotes (offline, collateral carried in the evidence, via `dcap-qvl`), AMD SEV-SNP reports
//!   (ARK→ASK→VCEK chain and report signature, via `sev`), and an explicitly INSECURE dev attester.
//!
//! - the node-side [`Attester`]: the INSECURE dev one, and TDX / SEV-SNP through configfs-tsm
//!   (not run on hardware by this project; see [`attester`]);
//! - the wire shapes of a confidential chat request and its answer ([`wire`]);
//! - custody of served requests for their audits: sealed at rest, re-sealed to attested
//!   auditors ([`custody`]);
//! - with feature `client`, the client SDK ([`client`]): selects nodes from the ledger,
//!   verifies their evidence itself, seals, sends through a gateway, opens and checks.
//!
//! Does not own: publishing keys or evidence on the ledger, fetching collateral from Intel/AMD,
//! networking, HTTP/SSE framing, or deciding which nodes to trust beyond a [`Policy`].
//!
//! Everything fails closed: unknown evidence kinds, parse errors, expired collateral, unknown
//! measurements, mismatched bindings and any cryptographic failure are typed errors.

pub mod attest;
pub mod attester;
#[cfg(feature = "client")]
pub mod client;
pub mod custody;
mod encoding;
pub mod keys;
pub mod seal;
pub mod stream;
pub mod wire;

pub use attest::{
    AttestationError, DcapVerifier, DevEvidence, DevVerifier, Evidence, INSECURE_DEV_LABEL,
    Measurement, Policy, PolicyVerifier, SnpProduct, SnpVerifier, TeeKind, VerifiedReport,
    Verifier,
};
pub use attester::{Attester, AttesterConfig, AttesterError, AttesterKind, DevAttester};
pub use keys::{ConfidentialKey, KeyError, REPORT_DATA_DOMAIN, RecipientKey, report_data};
pub use seal::{SealError, SealedRequest, open_request, seal_request};
pub use stream::{ResponseOpener, ResponseSealer, SealedChunk, StreamError};

/// Re-exported so callers can build [`Evidence::Tdx`] / [`Evidence::Sgx`] collateral.
pub use dcap_qvl::QuoteCollateralV3;
