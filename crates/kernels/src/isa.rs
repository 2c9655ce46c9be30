//! The instruction-set choice: which implementation of every product and row routine runs
//! ([`Kernel`], part of the node class), and what this CPU supports.

use crate::error::{KernelError, Result};

/// Which implementation of the products and row routines runs (part of the node class). Every one
/// performs the same operations per output element, so all give the same bits (tested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F (with AVX2, FMA, F16C) for the f32-activation products of [`crate::qf`]
    /// and attention ([`crate::attn`]), and with BW and VNNI for the integer panel products
    /// of [`crate::q8p`] (their AVX2 form without them: the same bits); the Q4_1 products of
    /// [`crate::q8`] and the row routines run their AVX2 forms.
    Avx512,
    /// AVX2 + FMA + F16C intrinsics, chosen at run time.
    Avx2,
    /// Portable Rust performing the same operations.
    Scalar,
}

impl Kernel {
    /// The environment variable that names the kernel to run instead of the fastest.
    pub const ENV: &'static str = "SORTITION_KERNEL";

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if avx512_available() {
            return Kernel::Avx512;
        }
        #[cfg(target_arch = "x86_64")]
        if avx2_available() {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    /// Every kernel this CPU supports, slowest first.
    pub fn supported() -> Vec<Kernel> {
        [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|&k| k.runs_here())
            .collect()
    }

    fn runs_here(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2_available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512_available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernel to run: the one [`Kernel::ENV`] names (`avx512`, `avx2`, `scalar`), e.g.
    /// to join a node class of CPUs without AVX-512, else the fastest this CPU supports.
    pub fn select() -> Result<Kernel> {
        Kernel::named(std::env::var(Self::ENV).ok().as_deref())
    }

    /// The kernel [`Kernel::ENV`] names, if it is set (an invalid name is an error); for
    /// binaries, tests and benchmarks that honour it.
    pub fn from_env() -> Result<Option<Kernel>> {
        match std::env::var(Self::ENV) {
            Ok(name) => Kernel::named(Some(&name)).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// [`Kernel::select`] for the value `name` of [`Kernel::ENV`] (`None`: unset).
    pub fn named(name: Option<&str>) -> Result<Kernel> {
        let Some(name) = name else {
            return Ok(Kernel::detect());
        };
        let known = [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar];
        let Some(k) = known.into_iter().find(|k| k.name() == name.trim()) else {
            return Err(KernelError::InvalidParams(format!(
                "{}={name:?}: not a kernel (avx512, avx2 or scalar)",
                Self::ENV
            )));
        };
        if !k.runs_here() {
            return Err(KernelError::InvalidParams(format!(
                "{}={name}: this CPU does not support that kernel",
                Self::ENV
            )));
        }
        Ok(k)
    }

    /// The implementation [`crate::q8`]'s integer products run for this choice.
    pub fn integer(self) -> Kernel {
        match self {
            Kernel::Avx512 => Kernel::Avx2,
            k => k,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }
}

/// AVX2 with FMA and F16C: the vector forms of the integer products and row routines.
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// AVX-512F (with AVX2, FMA, F16C): the f32-activation products and attention.
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && avx2_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
