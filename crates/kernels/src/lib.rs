//! Sortition's numeric kernels, the layer under the engine.
//!
//! - [`isa`]: the [`Kernel`] choice (part of the node class) and what this CPU supports.
//! - [`pool`]: the thread [`Pool`] the products split their work over.
//! - [`quant`]: what every product shares: the weight block formats, a quantized matrix's
//!   storage, f16 decoding and the quantization of activations to Q8 blocks.
//! - [`q8`]: Q4_1 weights × Q8 activations.
//! - [`q8p`]: Q8_0 weights × Q8 activations in panels (the default product).
//! - [`qf`]: Q8_0 weights × f32 activations.
//! - [`attn`]: attention over f16 key/value caches.
//! - [`ops`]: row operations (dot, RMS norm, SwiGLU, scale and max); their vector forms are
//!   in `rows`.
//! - [`math`]: the engine's own `exp`, and `pow`/`sin`/`cos` from the `libm` crate, so every
//!   build gives the same bits; [`portable`] holds the scalar forms the vector ones finish
//!   slice tails with.
//!
//! Determinism: each routine performs the same operations per output element whatever the
//! kernel, the thread count or the batch, so all give the same bits (tested here).
//!
//! This is the only crate of the workspace allowed `unsafe` code: the AVX2 and AVX-512
//! intrinsics, each module of them behind one `#[allow(unsafe_code)]`.

pub mod attn;
pub mod error;
pub mod isa;
pub mod math;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod matmul_tests;
pub mod ops;
pub mod pool;
mod portable;
pub mod q8;
pub mod q8p;
pub mod qf;
pub mod quant;
mod rows;

pub use error::{KernelError, Result};
pub use isa::Kernel;
pub use pool::Pool;

/// The workspace's dev profile builds this crate as a release build would (opt-level 3,
/// no debug assertions or overflow checks: `[profile.dev.package.sortition-kernels]` in
/// `Cargo.toml`), so tests, CI, conformance runs and `cargo run` devnets run the kernels that
/// production runs. When the kernels moved here from the engine the override did not follow
/// them, and every dev build ran them 2-3x slower for a day before a benchmark noticed.
#[cfg(test)]
#[test]
#[allow(clippy::assertions_on_constants)] // the constant is the build's setting under test
fn dev_and_test_builds_run_the_kernels_optimized() {
    assert!(
        !cfg!(debug_assertions),
        "sortition-kernels is built with debug assertions: its profile override is missing"
    );
}
