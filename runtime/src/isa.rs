//! Instruction sets the generated code is emitted for, detected once at run time.
//!
//! `NFNET_ISA` forces one (`scalar`, `avx2`, `avx512`, `avx512bf16`, `amx`, `neon`, `neon-emu`);
//! forcing one the
//! CPU lacks is an error, never a silent fallback.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, no intrinsics.
    Scalar,
    /// x86_64 AVX2 + FMA (+ F16C, which every AVX2 CPU has).
    Avx2,
    /// x86_64 AVX-512F (with AVX2 + FMA).
    Avx512,
    /// x86_64 AVX-512 (F, BW, DQ, VL) with AVX512-BF16: the AVX-512 kernels, the bf16 convs
    /// on `vdpbf16ps`.
    Avx512Bf16,
    /// x86_64 AVX-512 with AMX tiles: the AVX-512 kernels, the bf16 convs on AMX
    /// (`tdpbf16ps`). Detected with the kernel's grant of the tile state.
    Amx,
    /// aarch64 NEON.
    Neon,
    /// The NEON kernels compiled on another architecture against the runtime's emulation of
    /// the intrinsics they use: for testing the NEON path where no aarch64 machine exists.
    NeonEmu,
}

impl Isa {
    pub const ALL: [Isa; 7] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx, Isa::Neon, Isa::NeonEmu];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
            Isa::NeonEmu => "neon-emu",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU (and this build) can run the ISA.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => {
                Isa::Avx512.is_available()
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Isa::Avx512Bf16.is_available() && crate::bf16::amx_available(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[cfg(not(target_arch = "aarch64"))]
            Isa::NeonEmu => true,
            #[allow(unreachable_patterns, reason = "which arms exist depends on the target")]
            _ => false,
        }
    }

    /// The fastest ISA this CPU runs, among `supported` (those the model was emitted for).
    pub fn best(supported: &[Isa]) -> Isa {
        let order = [Isa::Amx, Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar];
        order.into_iter().find(|i| supported.contains(i) && i.is_available()).unwrap_or(Isa::Scalar)
    }

    /// The ISA to use: `NFNET_ISA` if set (checked), else [`Isa::best`].
    pub fn select(supported: &[Isa]) -> Result<Isa, IsaError> {
        match std::env::var("NFNET_ISA") {
            Ok(v) if !v.trim().is_empty() => Isa::require(&v, supported),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Isa::best(supported)),
            Err(std::env::VarError::NotUnicode(_)) => Err(IsaError("NFNET_ISA is not valid UTF-8".into())),
        }
    }

    /// Parses a forced ISA name and checks that it runs here.
    pub fn require(name: &str, supported: &[Isa]) -> Result<Isa, IsaError> {
        let names: Vec<&str> = supported.iter().map(|i| i.name()).collect();
        let Some(isa) = Isa::parse(name) else {
            return Err(IsaError(format!("NFNET_ISA='{name}' is not one of {}", names.join(", "))));
        };
        if !supported.contains(&isa) {
            return Err(IsaError(format!(
                "NFNET_ISA='{name}': this model was not emitted for it (it has {})",
                names.join(", ")
            )));
        }
        if !isa.is_available() {
            return Err(IsaError(format!("NFNET_ISA='{name}': this CPU or build cannot run {}", isa.name())));
        }
        Ok(isa)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A forced ISA that cannot be used.
#[derive(Clone, Debug, PartialEq)]
pub struct IsaError(pub String);

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IsaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_isas_are_checked() {
        let all = Isa::ALL;
        assert_eq!(Isa::require("scalar", &all), Ok(Isa::Scalar));
        assert!(Isa::require("sse9", &all).unwrap_err().0.contains("not one of"));
        assert!(Isa::require("avx2", &[Isa::Scalar]).unwrap_err().0.contains("not emitted"));
        #[cfg(target_arch = "x86_64")]
        {
            assert!(Isa::require("neon", &all).unwrap_err().0.contains("cannot run"));
            assert_eq!(Isa::require("neon-emu", &all), Ok(Isa::NeonEmu));
        }
        assert!(Isa::best(&all).is_available());
    }
}
