//! The multiply-add peak of one core, measured: the yardstick of `nfnet profile`'s share of
//! peak. A loop of independent fused multiply-adds (enough chains to cover the FMA latency on
//! two ports), or on AMX of independent `tdpbf16ps` tile products, runs for a few
//! milliseconds; the best of several rounds is kept, since on a shared machine anything else
//! running only slows a round down.

use crate::Isa;
use std::hint::black_box;
use std::time::Instant;

/// Multiply-add steps per round and chain.
const STEPS: usize = 1_000_000;
/// Independent accumulator chains (latency 4 x 2 ports = 8 needed; more hides scheduling, and
/// with the two operands they fit in the 16 registers of AVX2).
const CHAINS: usize = 12;

/// Peak GFLOP/s of one core running `isa`'s vector FMAs (a multiply-add counts two), or for
/// `Isa::Avx512Bf16` its `vdpbf16ps` or `Isa::Amx` its bf16 tile products, best of `rounds` rounds; `None` where no vector FMA is
/// measured (scalar, the NEON emulation) or when `isa` is not available on this CPU.
pub fn fma_peak_gflops(isa: Isa, rounds: usize) -> Option<f64> {
    if !isa.is_available() {
        return None;
    }
    let round = || -> Option<f64> {
        let start = Instant::now();
        let flops = run(isa)?;
        let s = start.elapsed().as_secs_f64();
        Some(flops / s / 1e9)
    };
    (0..rounds.max(1)).filter_map(|_| round()).reduce(f64::max)
}

/// Tile-product steps of an AMX round (4 products of 16 x 16 x 32 each).
#[cfg(target_arch = "x86_64")]
const AMX_STEPS: usize = 100_000;

/// One round; returns the FLOPs it ran.
fn run(isa: Isa) -> Option<f64> {
    let fma = |lanes: Option<usize>| lanes.map(|l| (2 * STEPS * CHAINS * l) as f64);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => {
            // SAFETY: AMX is available (checked by the caller), so granted.
            unsafe { crate::bf16::amx::peak_loop(AMX_STEPS) };
            Some((AMX_STEPS * 4 * 2 * 16 * 16 * 32) as f64)
        }
        _ => fma(run_fma(isa)),
    }
}

/// One FMA round; returns the lanes per vector.
fn run_fma(isa: Isa) -> Option<usize> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is available (checked by the caller).
        Isa::Avx512 => unsafe { x86::avx512() },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512Bf16 => unsafe { x86::dpbf16() },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::avx2() },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of aarch64.
        Isa::Neon => unsafe { arm::neon() },
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512() -> Option<usize> {
        let mut acc = [_mm512_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm512_set1_ps(black_box(0.999_999)), _mm512_set1_ps(black_box(1e-7)));
        for _ in 0..STEPS {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, a, b);
            }
        }
        black_box(acc);
        Some(16)
    }

    /// `vdpbf16ps`: two products per lane, so as many FLOPs as an FMA of 32 lanes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16() -> Option<usize> {
        let mut acc = [_mm512_set1_ps(0.0); CHAINS];
        let a: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(black_box(1e-3)), _mm512_set1_ps(black_box(1e-3)));
        for _ in 0..STEPS {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, a);
            }
        }
        black_box(acc);
        Some(32)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2() -> Option<usize> {
        let mut acc = [_mm256_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-7)));
        for _ in 0..STEPS {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, a, b);
            }
        }
        black_box(acc);
        Some(8)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use std::arch::aarch64::*;

    pub unsafe fn neon() -> Option<usize> {
        // SAFETY: NEON is part of aarch64.
        unsafe {
            let mut acc = [vdupq_n_f32(0.0); CHAINS];
            let (a, b) = (vdupq_n_f32(black_box(0.999_999)), vdupq_n_f32(black_box(1e-7)));
            for _ in 0..STEPS {
                for c in acc.iter_mut() {
                    *c = vfmaq_f32(b, *c, a);
                }
            }
            black_box(acc);
        }
        Some(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_measured_for_vector_isas_only() {
        assert_eq!(fma_peak_gflops(Isa::Scalar, 1), None);
        assert_eq!(fma_peak_gflops(Isa::NeonEmu, 1), None);
        for isa in [Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16] {
            if isa.is_available() {
                let p = fma_peak_gflops(isa, 2).expect("measured");
                // Any CPU with these ISAs does between 1 and 1000 GFLOP/s per core.
                assert!((1.0..1000.0).contains(&p), "{isa}: {p} GFLOP/s");
            }
        }
        if Isa::Amx.is_available() {
            let (amx, avx512) = (fma_peak_gflops(Isa::Amx, 2).unwrap(), fma_peak_gflops(Isa::Avx512, 2).unwrap());
            // Tiles do several times the vector FMAs' products per cycle.
            assert!(amx > 3.0 * avx512, "AMX {amx} GFLOP/s vs AVX-512 {avx512}");
        }
    }
}
