//! The per-ISA micro-kernels, written once over a tiny vocabulary (`splat`, `load`, `store`,
//! `madd`, `add`, `sub`, `mul`, `div`, `max`, `min`, `floor`, `scale2`, ...) that each ISA module
//! defines with its own intrinsics. The kernel bodies are the same tokens in every module.

use crate::plan::{ISA_KERNELS, IsaKernels};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// One instruction set the model is emitted for.
pub struct IsaSpec {
    /// Module name (`isa_avx2`) and kernel token type (`Avx2`).
    pub module: &'static str,
    pub token: &'static str,
    /// `cfg` predicate under which the module exists.
    pub cfg: TokenStream,
    /// The `nfnet_runtime::Isa` variants this module serves (`Neon` natively, `NeonEmu` elsewhere).
    pub variants: TokenStream,
    /// Attributes of every vocabulary function and kernel (target features, inlining).
    pub attrs: TokenStream,
    /// The target-feature attribute alone (for the per-shape entry points).
    pub feature: TokenStream,
    pub prelude: TokenStream,
    /// Its micro-kernels (lanes, tile shapes), as the plans choose from.
    pub kernels: &'static IsaKernels,
    pub vocab: TokenStream,
}

pub fn isas() -> Vec<IsaSpec> {
    vec![scalar(), avx2(), avx512(), neon()]
}

fn scalar() -> IsaSpec {
    IsaSpec {
        module: "isa_scalar",
        token: "Scalar",
        cfg: quote!(all()),
        variants: quote!(nfnet_runtime::Isa::Scalar),
        attrs: quote!(#[inline(always)]),
        feature: quote!(),
        prelude: quote!(
            pub type V = f32;
        ),
        kernels: &ISA_KERNELS[0],
        vocab: quote! {
            #[inline(always)] unsafe fn splat(x: f32) -> V { x }
            #[inline(always)] unsafe fn load(p: *const f32) -> V { unsafe { *p } }
            #[inline(always)] unsafe fn store(p: *mut f32, v: V) { unsafe { *p = v } }
            /// a * b + c, two roundings (a portable fused multiply-add is a slow library call).
            #[inline(always)] unsafe fn madd(a: V, b: V, c: V) -> V { a * b + c }
            #[inline(always)] unsafe fn add(a: V, b: V) -> V { a + b }
            #[inline(always)] unsafe fn sub(a: V, b: V) -> V { a - b }
            #[inline(always)] unsafe fn mul(a: V, b: V) -> V { a * b }
            #[inline(always)] unsafe fn div(a: V, b: V) -> V { a / b }
            #[inline(always)] unsafe fn max(a: V, b: V) -> V { a.max(b) }
            #[inline(always)] unsafe fn min(a: V, b: V) -> V { a.min(b) }
            #[inline(always)] unsafe fn floor(a: V) -> V { a.floor() }
            /// 2^n for integral n in [-126, 127].
            #[inline(always)] unsafe fn pow2i(n: V) -> V { f32::from_bits((((n as i32) + 127) << 23) as u32) }
            /// p 2^n for integral n in [-126, 127].
            #[inline(always)] unsafe fn scale2(p: V, n: V) -> V { unsafe { mul(p, pow2i(n)) } }
            /// exp's argument range (2^n must stay a normal float) and whether SiLU clamps x.
            const EXP_RANGE: (f32, f32) = (-87.0, 88.0);
            const SILU_CLAMPS: bool = true;
            /// The conv micro-kernel's L2 requests go out per 16 steps (per-step tests cost the
            /// short steps of AVX2's 6 x 16 tile 5-13%).
            const PF_PER_STEP: bool = false;
            const WINO_BPF: bool = true;
            /// A hint only; nothing on this ISA.
            #[inline(always)] unsafe fn prefetch(_p: *const f32) {}
            #[inline(always)] unsafe fn prefetch_l2(_p: *const u8) {}
            /// bf16 to f32: the high half of the f32's bits.
            #[inline(always)] unsafe fn load_bf16(p: *const u16) -> V { unsafe { f32::from_bits((*p as u32) << 16) } }
            /// f16 to f32 (finite values): exponent and mantissa moved into place, rescaled by
            /// 2^112, sign restored; exact for normals and subnormals.
            #[inline(always)] unsafe fn load_f16(p: *const u16) -> V {
                unsafe {
                    let h = *p as u32;
                    let f = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
                    f32::from_bits(f.to_bits() | ((h & 0x8000) << 16))
                }
            }
        },
    }
}

fn avx2() -> IsaSpec {
    IsaSpec {
        module: "isa_avx2",
        token: "Avx2",
        cfg: quote!(target_arch = "x86_64"),
        variants: quote!(nfnet_runtime::Isa::Avx2),
        attrs: quote!(#[inline] #[target_feature(enable = "avx2,fma,f16c")]),
        feature: quote!(#[target_feature(enable = "avx2,fma,f16c")]),
        prelude: quote!(
            use core::arch::x86_64::*;
            pub type V = __m256;
        ),
        kernels: &ISA_KERNELS[1],
        vocab: quote! {
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn splat(x: f32) -> V { unsafe { _mm256_set1_ps(x) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn load(p: *const f32) -> V { unsafe { _mm256_loadu_ps(p) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn store(p: *mut f32, v: V) { unsafe { _mm256_storeu_ps(p, v) } }
            /// a * b + c, fused (one rounding).
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn madd(a: V, b: V, c: V) -> V { unsafe { _mm256_fmadd_ps(a, b, c) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn add(a: V, b: V) -> V { unsafe { _mm256_add_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn sub(a: V, b: V) -> V { unsafe { _mm256_sub_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn mul(a: V, b: V) -> V { unsafe { _mm256_mul_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn div(a: V, b: V) -> V { unsafe { _mm256_div_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn max(a: V, b: V) -> V { unsafe { _mm256_max_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn min(a: V, b: V) -> V { unsafe { _mm256_min_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn floor(a: V) -> V { unsafe { _mm256_floor_ps(a) } }
            /// 2^n for integral n in [-126, 127].
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn pow2i(n: V) -> V {
                unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)))) }
            }
            /// p 2^n for integral n in [-126, 127].
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn scale2(p: V, n: V) -> V { unsafe { mul(p, pow2i(n)) } }
            /// exp's argument range (2^n must stay a normal float) and whether SiLU clamps x.
            const EXP_RANGE: (f32, f32) = (-87.0, 88.0);
            const SILU_CLAMPS: bool = true;
            /// The conv micro-kernel's L2 requests go out per 16 steps (per-step tests cost the
            /// short steps of AVX2's 6 x 16 tile 5-13%).
            const PF_PER_STEP: bool = false;
            const WINO_BPF: bool = true;
            /// Brings the line at `p` into L1 (a hint).
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn prefetch(p: *const f32) { unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) } }
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn prefetch_l2(p: *const u8) { unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) } }
            /// Eight bf16 to f32.
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn load_bf16(p: *const u16) -> V {
                unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)))) }
            }
            /// Eight f16 to f32 (F16C's exact conversion).
            #[inline] #[target_feature(enable = "avx2,fma,f16c")] unsafe fn load_f16(p: *const u16) -> V {
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
            }
        },
    }
}

fn avx512() -> IsaSpec {
    IsaSpec {
        module: "isa_avx512",
        token: "Avx512",
        cfg: quote!(target_arch = "x86_64"),
        variants: quote!(nfnet_runtime::Isa::Avx512 | nfnet_runtime::Isa::Avx512Bf16 | nfnet_runtime::Isa::Amx),
        attrs: quote!(#[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")]),
        feature: quote!(#[target_feature(enable = "avx512f,avx2,fma,f16c")]),
        prelude: quote!(
            use core::arch::x86_64::*;
            pub type V = __m512;
        ),
        kernels: &ISA_KERNELS[2],
        vocab: quote! {
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn splat(x: f32) -> V { unsafe { _mm512_set1_ps(x) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn load(p: *const f32) -> V { unsafe { _mm512_loadu_ps(p) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn store(p: *mut f32, v: V) { unsafe { _mm512_storeu_ps(p, v) } }
            /// a * b + c, fused (one rounding).
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn madd(a: V, b: V, c: V) -> V { unsafe { _mm512_fmadd_ps(a, b, c) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn add(a: V, b: V) -> V { unsafe { _mm512_add_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn sub(a: V, b: V) -> V { unsafe { _mm512_sub_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn mul(a: V, b: V) -> V { unsafe { _mm512_mul_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn div(a: V, b: V) -> V { unsafe { _mm512_div_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn max(a: V, b: V) -> V { unsafe { _mm512_max_ps(a, b) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn min(a: V, b: V) -> V { unsafe { _mm512_min_ps(a, b) } }
            /// Round toward minus infinity, exceptions suppressed.
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn floor(a: V) -> V { unsafe { _mm512_roundscale_ps::<0x09>(a) } }
            /// p 2^n for any integral n (VSCALEFPS: one instruction, rounds to zero or
            /// infinity like the exact product).
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn scale2(p: V, n: V) -> V { unsafe { _mm512_scalef_ps(p, n) } }
            /// exp's argument range: up to where e^x reaches infinity (so SiLU needs no clamp
            /// of its own: x / (1 + inf) = -0 below x = -88.7), down to where e^x is still a
            /// normal float (below, SiLU's 1 + e^-x is 1 either way; a denormal would cost a
            /// microcode assist in every operation it enters), narrow enough that the range
            /// reduction stays exact. 21% faster SiLU than the clamped shift-and-multiply
            /// form (4 of 25 instructions fewer).
            const EXP_RANGE: (f32, f32) = (-87.0, 104.0);
            const SILU_CLAMPS: bool = false;
            /// The conv micro-kernel's L2 requests go out step by step (its 24-FMA steps hide the
            /// tests; bursts per 16 steps made L2's 20x20 convs 2-3% slower).
            const PF_PER_STEP: bool = true;
            /// Whether the Winograd products fetch their weights ahead into L1: AVX-512's
            /// 64-step sums run 1-2% faster without (their weights come from L2 at the
            /// hardware's pace), AVX2's 2-3% slower.
            const WINO_BPF: bool = false;
            /// Brings the line at `p` into L1 (a hint): 2-4% on the 1x1 convs over 1536
            /// channels, neutral elsewhere (per-kernel minimums, A/B on L2).
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn prefetch(p: *const f32) { unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) } }
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn prefetch_l2(p: *const u8) { unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) } }
            /// Sixteen bf16 to f32.
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn load_bf16(p: *const u16) -> V {
                unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)))) }
            }
            /// Sixteen f16 to f32 (AVX-512F's exact conversion).
            #[inline] #[target_feature(enable = "avx512f,avx2,fma,f16c")] unsafe fn load_f16(p: *const u16) -> V {
                unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
            }
        },
    }
}

fn neon() -> IsaSpec {
    IsaSpec {
        module: "isa_neon",
        token: "Neon",
        cfg: quote!(all()),
        variants: quote!(nfnet_runtime::Isa::Neon | nfnet_runtime::Isa::NeonEmu),
        attrs: quote!(#[inline(always)]),
        feature: quote!(),
        prelude: quote!(
            #[cfg(target_arch = "aarch64")]
            use core::arch::aarch64::*;
            #[cfg(not(target_arch = "aarch64"))]
            use nfnet_runtime::neon_emu::*;
            pub type V = float32x4_t;
        ),
        kernels: &ISA_KERNELS[3],
        vocab: quote! {
            #[inline(always)] unsafe fn splat(x: f32) -> V { unsafe { vdupq_n_f32(x) } }
            #[inline(always)] unsafe fn load(p: *const f32) -> V { unsafe { vld1q_f32(p) } }
            #[inline(always)] unsafe fn store(p: *mut f32, v: V) { unsafe { vst1q_f32(p, v) } }
            /// a * b + c, fused (one rounding): FMLA computes c + a * b.
            #[inline(always)] unsafe fn madd(a: V, b: V, c: V) -> V { unsafe { vfmaq_f32(c, a, b) } }
            #[inline(always)] unsafe fn add(a: V, b: V) -> V { unsafe { vaddq_f32(a, b) } }
            #[inline(always)] unsafe fn sub(a: V, b: V) -> V { unsafe { vsubq_f32(a, b) } }
            #[inline(always)] unsafe fn mul(a: V, b: V) -> V { unsafe { vmulq_f32(a, b) } }
            #[inline(always)] unsafe fn div(a: V, b: V) -> V { unsafe { vdivq_f32(a, b) } }
            #[inline(always)] unsafe fn max(a: V, b: V) -> V { unsafe { vmaxq_f32(a, b) } }
            #[inline(always)] unsafe fn min(a: V, b: V) -> V { unsafe { vminq_f32(a, b) } }
            #[inline(always)] unsafe fn floor(a: V) -> V { unsafe { vrndmq_f32(a) } }
            /// 2^n for integral n in [-126, 127].
            #[inline(always)] unsafe fn pow2i(n: V) -> V {
                unsafe { vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)))) }
            }
            /// p 2^n for integral n in [-126, 127].
            #[inline(always)] unsafe fn scale2(p: V, n: V) -> V { unsafe { mul(p, pow2i(n)) } }
            /// exp's argument range (2^n must stay a normal float) and whether SiLU clamps x.
            const EXP_RANGE: (f32, f32) = (-87.0, 88.0);
            const SILU_CLAMPS: bool = true;
            /// The conv micro-kernel's L2 requests go out per 16 steps (per-step tests cost the
            /// short steps of AVX2's 6 x 16 tile 5-13%).
            const PF_PER_STEP: bool = false;
            const WINO_BPF: bool = true;
            /// A hint only; left to the hardware prefetcher here.
            #[inline(always)] unsafe fn prefetch(_p: *const f32) {}
            #[inline(always)] unsafe fn prefetch_l2(_p: *const u8) {}
            /// Four bf16 to f32.
            #[inline(always)] unsafe fn load_bf16(p: *const u16) -> V {
                unsafe { vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(vld1_u16(p)))) }
            }
            /// Four f16 (finite) to f32, as the scalar `load_f16`.
            #[inline(always)] unsafe fn load_f16(p: *const u16) -> V {
                unsafe {
                    let w = vmovl_u16(vld1_u16(p));
                    let mag = vreinterpretq_f32_u32(vshlq_n_u32::<13>(vandq_u32(w, vdupq_n_u32(0x7fff))));
                    let f = vmulq_f32(mag, vreinterpretq_f32_u32(vdupq_n_u32(0x7780_0000)));
                    let sign = vshlq_n_u32::<16>(vandq_u32(w, vdupq_n_u32(0x8000)));
                    vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(f), sign))
                }
            }
        },
    }
}

/// The shared kernel bodies (the same tokens in every ISA module).
fn kernels(attrs: &TokenStream, feature: &TokenStream) -> TokenStream {
    // Constants go through Literal so they print in their shortest round-trip form.
    let c = |x: f32| proc_macro2::Literal::f32_suffixed(x);
    let (ln2_hi, ln2_lo) = (c(-0.693_359_4), c(2.121_944_4e-4));
    let poly = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5].map(c);
    let [p0, p1, p2, p3, p4, p5] = &poly;
    quote! {
        /// e^x for x clamped to the ISA's `EXP_RANGE`: Cody-Waite range reduction and Cephes'
        /// degree-5 polynomial; a few ulp over that range (the SiLU bound below is what is
        /// tested).
        #attrs
        unsafe fn exp(x: V) -> V {
            unsafe {
                let x = min(max(x, splat(EXP_RANGE.0)), splat(EXP_RANGE.1));
                let n = floor(madd(x, splat(core::f32::consts::LOG2_E), splat(0.5f32)));
                let r = madd(n, splat(#ln2_hi), x);
                let r = madd(n, splat(#ln2_lo), r);
                let mut p = splat(#p0);
                p = madd(p, r, splat(#p1));
                p = madd(p, r, splat(#p2));
                p = madd(p, r, splat(#p3));
                p = madd(p, r, splat(#p4));
                p = madd(p, r, splat(#p5));
                p = madd(p, mul(r, r), add(r, splat(1.0f32)));
                scale2(p, n)
            }
        }

        /// SiLU, x / (1 + e^-x): within 4 ulp of the exact value (exp's error plus one
        /// division), tested against f64; below x = -88, where the exact value underflows,
        /// within 6e-37 of it (where e^-x cannot reach infinity, x is clamped at -88 so it
        /// stays finite).
        #attrs
        pub unsafe fn silu(x: V) -> V {
            unsafe {
                let x = if SILU_CLAMPS { max(x, splat(-88.0f32)) } else { x };
                div(x, add(splat(1.0f32), exp(sub(splat(0.0f32), x))))
            }
        }

        /// Stores the first `n` lanes of a 16-wide row.
        #attrs
        unsafe fn store_row(p: *mut f32, row: &[V; NV], n: usize) {
            unsafe {
                if n == 16 {
                    for v in 0..NV {
                        store(p.add(v * L), row[v]);
                    }
                } else {
                    let mut t = [0.0f32; 16];
                    for v in 0..NV {
                        store(t.as_mut_ptr().add(v * L), row[v]);
                    }
                    core::ptr::copy_nonoverlapping(t.as_ptr(), p, n);
                }
            }
        }

        /// Loads the first `n` of 16 floats (the rest zero).
        #attrs
        unsafe fn load_row(p: *const f32, n: usize) -> [V; NV] {
            unsafe {
                let mut t = [0.0f32; 16];
                core::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n);
                let mut row = [splat(0.0f32); NV];
                for v in 0..NV {
                    row[v] = load(t.as_ptr().add(v * L));
                }
                row
            }
        }

        /// The tile's products: for each tap, `KC` steps of `P` panel rows (16 channels each,
        /// `panel_len` elements apart, stored as `WD`) times `T` broadcast inputs `STEP` floats apart, written to
        /// `out` at the end. Kept out of line so the accumulators stay in registers. Every
        /// `2^pf_shift`-th step also asks for one of `pf_lines` cache lines from `pf` on into
        /// L2 (the next unit's weights, spread over the unit's tiles at about the rate DRAM
        /// delivers them: a burst in two tiles left stage 3 and final_conv 5-11% slower), every
        /// `2^ahead_shift`-th step one of the `ahead_lines` lines from `ahead` (the next
        /// kernel's weights, spread thin: see `rt::spread_shift`). With `a_next` (the next
        /// tile's first input, for 1x1 convs over contiguous pixels) every 16 steps ask for
        /// the next 16 channels of each of its `T` pixels into L2, one pixel per step: the
        /// input then streams from L2, not L3 (stage 0/1/3 1x1 convs 2-7% faster).
        #feature
        #[inline(never)]
        unsafe fn gemm<const T: usize, const KC: usize, const STEP: usize, const P: usize, const WD: usize, const BPF: bool>(
            a0: *const f32,
            taps: &[isize],
            b: *const u8,
            panel_len: usize,
            pf: *const u8,
            pf_lines: usize,
            pf_shift: u32,
            ahead: *const u8,
            ahead_lines: usize,
            ahead_shift: u32,
            a_next: *const f32,
            out: *mut [[[V; NV]; P]; T],
        ) {
            unsafe {
                let mut acc = [[[splat(0.0f32); NV]; P]; T];
                let mut bi = 0usize;
                let mut step = 0usize;
                for &t in taps {
                    let ap = a0.offset(t);
                    // Blocks of 16 steps (one step with `PF_PER_STEP`): the L2 requests of a
                    // block go out at its start.
                    let block = if PF_PER_STEP { 1 } else { 16 };
                    let mut k0 = 0;
                    while k0 < KC {
                        let n = if KC - k0 < block { KC - k0 } else { block };
                        if PF_PER_STEP {
                            if step & ((1 << pf_shift) - 1) == 0 && step >> pf_shift < pf_lines {
                                prefetch_l2(pf.add((step >> pf_shift) * 64));
                            }
                            if step & ((1 << ahead_shift) - 1) == 0 && step >> ahead_shift < ahead_lines {
                                prefetch_l2(ahead.add((step >> ahead_shift) * 64));
                            }
                            // The next tile's input: 16 channels of one pixel per step.
                            if !a_next.is_null() && (k0 & 15) < T {
                                prefetch_l2(a_next.add((k0 & 15) * STEP + (k0 & !15)) as *const u8);
                            }
                        } else {
                            prefetch_lines(pf, pf_lines, pf_shift, step, n);
                            prefetch_lines(ahead, ahead_lines, ahead_shift, step, n);
                            if !a_next.is_null() {
                                for i in 0..T {
                                    prefetch_l2(a_next.add(i * STEP + k0) as *const u8);
                                }
                            }
                        }
                        step += n;
                        for k in k0..k0 + n {
                            // The weight panels stream through L1 once per tile: fetch ahead
                            // (with `BPF`: see each ISA's `WINO_BPF`).
                            for p in 0..if BPF { P } else { 0 } {
                                prefetch(b.add((bi + p * panel_len + B_AHEAD) * if WD == rt::WEIGHTS_F32 { 4 } else { 2 }) as *const f32);
                            }
                            let mut bv = [[splat(0.0f32); NV]; P];
                            for p in 0..P {
                                for v in 0..NV {
                                    bv[p][v] = load_weights::<WD>(b, bi + p * panel_len + v * L);
                                }
                            }
                            for i in 0..T {
                                let x = splat(*ap.add(i * STEP + k));
                                for p in 0..P {
                                    for v in 0..NV {
                                        acc[i][p][v] = madd(x, bv[p][v], acc[i][p][v]);
                                    }
                                }
                            }
                            bi += 16;
                        }
                        k0 += n;
                    }
                }
                // Element by element through a raw pointer: returning `acc` by value lets the
                // compiler place it in the caller's memory and store it on every step.
                for i in 0..T {
                    for p in 0..P {
                        for v in 0..NV {
                            core::ptr::write(core::ptr::addr_of_mut!((*out)[i][p][v]), acc[i][p][v]);
                        }
                    }
                }
            }
        }

        /// The lines of a spread prefetch stream (one every `2^shift` steps, `lines` in all,
        /// from `base`) that fall due in steps `step .. step + n`, asked for into L2.
        #attrs
        unsafe fn prefetch_lines(base: *const u8, lines: usize, shift: u32, step: usize, n: usize) {
            unsafe {
                let first = (step + (1 << shift) - 1) >> shift;
                let end = (step + n + (1 << shift) - 1) >> shift;
                let end = if end < lines { end } else { lines };
                let mut j = first;
                while j < end {
                    prefetch_l2(base.add(j * 64));
                    j += 1;
                }
            }
        }

        /// Element `at` of the conv weights stored as `WD` (f32 region, or the 16-bit one).
        #[inline(always)]
        fn weights_at<const WD: usize>(ctx: &rt::Ctx, at: usize) -> *const u8 {
            if WD == rt::WEIGHTS_F32 { ctx.w(at) as *const u8 } else { ctx.w16(at) as *const u8 }
        }

        /// One vector of weights at element `i` of a panel stored as `WD` (`rt::WEIGHTS_*`).
        #attrs
        unsafe fn load_weights<const WD: usize>(b: *const u8, i: usize) -> V {
            unsafe {
                match WD {
                    rt::WEIGHTS_F32 => load((b as *const f32).add(i)),
                    rt::WEIGHTS_BF16 => load_bf16((b as *const u16).add(i)),
                    _ => load_f16((b as *const u16).add(i)),
                }
            }
        }

        /// One conv tile: `T` output pixels of one row x `P` panels of 16 output channels,
        /// over the taps and `KC` input channels. The tile's pixels are `STEP` floats apart in
        /// the input, so the inner loop needs one pointer. Rows before `skip` overlap the
        /// previous tile and are computed but not stored (tiles end at row ends without
        /// smaller kernels).
        #attrs
        unsafe fn tile<const T: usize, const KC: usize, const STEP: usize, const P: usize, const WD: usize>(
            ctx: &rt::Ctx,
            d: &rt::ConvDesc,
            io: &rt::ConvIo,
            px: usize,
            skip: usize,
            g: usize,
            n0: usize,
            ncols: usize,
            b: *const u8,
            bias: *const f32,
            sums: *mut f32,
            pf: (*const u8, usize, u32),
            ahead: (*const u8, usize, u32),
        ) {
            unsafe {
                let inp = &d.input;
                let a0 = if d.flat {
                    io.input + px * inp.c + g * KC
                } else {
                    let (y, x) = (px / d.out.w, px % d.out.w);
                    let shift = inp.pad - d.conv_pad;
                    io.input + ((y * d.stride + shift) * (inp.w + 2 * inp.pad) + x * d.stride + shift) * inp.c + g * KC
                };
                let panel_len = d.taps.len() * KC * 16;
                let mut acc = core::mem::MaybeUninit::<[[[V; NV]; P]; T]>::uninit();
                let (ah, ah_lines, ah_shift) = ahead;
                gemm::<T, KC, STEP, P, WD, true>(
                    ctx.ptr(a0) as *const f32,
                    d.taps,
                    b,
                    panel_len,
                    pf.0,
                    pf.1,
                    pf.2,
                    ah,
                    ah_lines,
                    ah_shift,
                    if d.flat { (ctx.ptr(a0) as *const f32).wrapping_add(T * STEP) } else { core::ptr::null() },
                    acc.as_mut_ptr(),
                );
                let acc = acc.assume_init();
                let out = rt::Buf { offset: io.out, ..d.out };
                let pre = rt::Buf { offset: io.pre, ..d.pre };
                for p in 0..P {
                    let mut bias_v = [splat(0.0f32); NV];
                    for v in 0..NV {
                        bias_v[v] = load(bias.add(p * 16 + v * L));
                    }
                    let n = n0 + p * 16;
                    let mut colsum = [splat(0.0f32); NV];
                    // Constant trip count: a loop from `skip` would index `acc` dynamically.
                    for i in 0..T {
                        if i < skip {
                            continue;
                        }
                        let (y, x) = ((px + i) / d.out.w, (px + i) % d.out.w);
                        let mut row = [splat(0.0f32); NV];
                        for v in 0..NV {
                            row[v] = add(acc[i][p][v], bias_v[v]);
                        }
                        if io.pre != rt::NONE {
                            store_row(ctx.ptr(pre.at(y, x) + n), &row, ncols);
                        }
                        if d.act {
                            for v in 0..NV {
                                row[v] = silu(row[v]);
                            }
                        }
                        store_row(ctx.ptr(out.at(y, x) + n), &row, ncols);
                        for v in 0..NV {
                            colsum[v] = add(colsum[v], row[v]);
                        }
                    }
                    if !sums.is_null() {
                        let sp = sums.add(p * 16);
                        let mut s = load_row(sp, ncols);
                        for v in 0..NV {
                            s[v] = add(s[v], colsum[v]);
                        }
                        store_row(sp, &s, ncols);
                    }
                }
            }
        }

        /// The classifier: `out[o] = bias[o] + sum_i w[o][i] x[i]`, each dot product in 16
        /// f32 lanes (multiply-adds in a fixed order), the lanes summed in f64; items of 16
        /// outputs, four rows at a time (independent chains, four streams of weights).
        #attrs
        unsafe fn fc(ctx: &rt::Ctx, x: usize, n_in: usize, w: usize, bias: usize, n_out: usize, out: usize) {
            unsafe {
                ctx.pool.run(n_out.div_ceil(16), &|it| unsafe { fc_item(ctx, x, n_in, w, bias, n_out, out, it) });
            }
        }

        /// Outputs `16 it ..` of `fc`.
        #attrs
        unsafe fn fc_item(ctx: &rt::Ctx, x: usize, n_in: usize, w: usize, bias: usize, n_out: usize, out: usize, it: usize) {
            unsafe {
                let xs = ctx.ptr(x) as *const f32;
                let end = if (it + 1) * 16 < n_out { (it + 1) * 16 } else { n_out };
                let whole = n_in - n_in % 16;
                let mut o = it * 16;
                while o < end {
                    let rows = if end - o < 4 { end - o } else { 4 };
                    let mut acc = [[splat(0.0f32); NV]; 4];
                    let mut i = 0;
                    while i < whole {
                        let xv = load_row(xs.add(i), 16);
                        for r in 0..4 {
                            if r < rows {
                                let wv = load_row(ctx.w(w + (o + r) * n_in + i), 16);
                                for v in 0..NV {
                                    acc[r][v] = madd(wv[v], xv[v], acc[r][v]);
                                }
                            }
                        }
                        i += 16;
                    }
                    for r in 0..rows {
                        let mut lanes = [0.0f32; 16];
                        store_row(lanes.as_mut_ptr(), &acc[r], 16);
                        let mut sum: f64 = lanes.iter().map(|&v| v as f64).sum();
                        for j in whole..n_in {
                            sum += *ctx.w(w + (o + r) * n_in + j) as f64 * *xs.add(j) as f64;
                        }
                        *ctx.ptr(out + o + r) = (sum + *ctx.w(bias + o + r) as f64) as f32;
                    }
                    o += rows;
                }
            }
        }

        /// One work item of a conv: a band of rows times `P` adjacent weight panels of one
        /// group (`P` > 1 only when the group's panels are all full), tiles in order.
        #attrs
        unsafe fn conv_item<const T: usize, const KC: usize, const STEP: usize, const P: usize, const WD: usize>(
            ctx: &rt::Ctx,
            d: &rt::ConvDesc,
            io: &rt::ConvIo,
            it: usize,
        ) {
            unsafe {
                let bands = d.bands();
                let units_g = d.panels_per_group() / P;
                let units = d.groups * units_g;
                let (bi, unit) = if d.panel_outer { (it % bands, it / bands) } else { (it / units, it % units) };
                let (g, pj) = (unit / units_g, (unit % units_g) * P);
                let panel = g * d.panels_per_group() + pj;
                let n0 = g * d.cout_g + pj * 16;
                let ncols = if d.cout_g - pj * 16 < 16 { d.cout_g - pj * 16 } else { 16 };
                let w_at = io.weights + panel * d.taps.len() * KC * 16;
                let b = weights_at::<WD>(ctx, w_at);
                let bias = ctx.w(io.bias + panel * 16);
                let sums = if d.sums {
                    let s = ctx.ptr(io.sums + bi * d.out.c + n0);
                    core::ptr::write_bytes(s, 0, if P == 1 { ncols } else { 16 * P });
                    s
                } else {
                    core::ptr::null_mut()
                };
                // A unit's weights come from DRAM or L3 on its first tile (panel-outer convs:
                // the model's weights outgrow the caches; band-outer ones: all units' weights
                // outgrow L2) and from L2 on the rest: those fetch the next unit's into L2
                // meanwhile, spread over them.
                let unit_bytes = P * d.taps.len() * KC * 16 * if WD == rt::WEIGHTS_F32 { 4 } else { 2 };
                // The unit the thread likely runs next: the next panels, or after a band's last
                // unit (band-outer) the first unit again, for the next band; none when the
                // items of that unit fall to another thread (it runs them meanwhile).
                let next_item = if d.panel_outer { (unit + 1) * bands } else { it + 1 };
                let (next, next_at) = if !rt::same_thread(it, next_item, bands * units, ctx.pool.threads()) {
                    (false, b)
                } else if panel + 2 * P <= d.groups * d.panels_per_group() {
                    (true, b.wrapping_add(unit_bytes))
                } else if !d.panel_outer && bi + 1 < bands {
                    (true, weights_at::<WD>(ctx, io.weights))
                } else {
                    (false, b)
                };
                let (tile_lines, unit_lines) = (d.taps.len() * KC, unit_bytes / 64);
                let mut t_u = if d.panel_outer { bi * d.band * d.row_len.div_ceil(T) } else { 0 };
                let r_end = if (bi + 1) * d.band < d.rows { (bi + 1) * d.band } else { d.rows };
                // The unit's tiles (all bands' when panel-outer, else this band's): the next
                // unit's lines are spread over all but the first, about DRAM's pace.
                let row_tiles = |r0: usize, r1: usize| {
                    (r0..r1).map(|r| if r + 1 == d.rows { d.last_row_len } else { d.row_len }.div_ceil(T)).sum::<usize>()
                };
                let unit_tiles = if d.panel_outer { row_tiles(0, d.rows) } else { row_tiles(bi * d.band, r_end) };
                let pf_per_tile = unit_lines.div_ceil(unit_tiles.saturating_sub(1).max(1)).min(tile_lines);
                let pf_shift = rt::spread_shift(pf_per_tile, tile_lines);
                // This item's share of the next kernel's weights, spread over its tiles.
                let (ahead, ahead_lines) = io.ahead_share(ctx, it, bands * units);
                let per_tile = ahead_lines.div_ceil(row_tiles(bi * d.band, r_end)).min(tile_lines);
                let ahead_shift = rt::spread_shift(per_tile, tile_lines);
                let mut ahead_done = 0;
                for r in bi * d.band..r_end {
                    let len = if r + 1 == d.rows { d.last_row_len } else { d.row_len };
                    let start = if d.flat { r * d.row_len } else { r * d.out.w };
                    let end = start + len;
                    let mut px = start;
                    while px < end {
                        let (at, skip) = if px + T <= end { (px, 0) } else { (end - T, px + T - end) };
                        let from = if t_u == 0 { unit_lines } else { (t_u - 1) * pf_per_tile };
                        let pf_lines = if next && from < unit_lines { (unit_lines - from).min(pf_per_tile) } else { 0 };
                        let pf = (next_at.wrapping_add(from * 64), pf_lines, pf_shift);
                        let n = per_tile.min(ahead_lines - ahead_done);
                        let ah = (ahead.wrapping_add(ahead_done * 64), n, ahead_shift);
                        ahead_done += n;
                        tile::<T, KC, STEP, P, WD>(ctx, d, io, at, skip, g, n0, ncols, b, bias, sums, pf, ah);
                        px = at + T;
                        t_u += 1;
                    }
                }
            }
        }

        /// The first `n` of `L` floats as a vector (the rest zero).
        #attrs
        unsafe fn load_part(p: *const f32, n: usize) -> V {
            unsafe {
                if n == L {
                    return load(p);
                }
                let mut t = [0.0f32; 16];
                core::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n);
                load(t.as_ptr())
            }
        }

        /// Stores the first `n` lanes of `v`.
        #attrs
        unsafe fn store_part(p: *mut f32, v: V, n: usize) {
            unsafe {
                if n == L {
                    return store(p, v);
                }
                let mut t = [0.0f32; 16];
                store(t.as_mut_ptr(), v);
                core::ptr::copy_nonoverlapping(t.as_ptr(), p, n);
            }
        }

        /// One column or row (`a` = 4 values for F(2x2, 3x3), 6 for F(4x4, 3x3)) times the
        /// input transform `B^T`: for F(2x2) Lavin and Gray's
        /// `[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`; for F(4x4) over the
        /// points 0, +-3/2, +-2/3 (see the compiler's `pack::G4`)
        /// `[[1, 0, -97/36, 0, 1, 0], [0, -3/2, -1, 27/8, 9/4, 0], [0, 3/2, -1, -27/8, 9/4, 0],
        /// [0, 9/4, 27/8, -1, -3/2, 0], [0, -9/4, 27/8, 1, -3/2, 0], [0, 1, 0, -97/36, 0, 1]]`
        /// in 14 operations (shared even and odd parts).
        #attrs
        unsafe fn wino_bt(x: &[V; 6], a: usize) -> [V; 6] {
            unsafe {
                if a == 4 {
                    return [sub(x[0], x[2]), add(x[1], x[2]), sub(x[2], x[1]), sub(x[1], x[3]), x[4], x[5]];
                }
                let (e, o) = (sub(mul(x[4], splat(2.25)), x[2]), madd(x[1], splat(1.5), mul(x[3], splat(-3.375))));
                let (e2, o2) = (madd(x[2], splat(3.375), mul(x[4], splat(-1.5))), sub(mul(x[1], splat(2.25)), x[3]));
                let c = splat(-97.0 / 36.0);
                [madd(x[2], c, add(x[0], x[4])), sub(e, o), add(e, o), add(e2, o2), sub(e2, o2), madd(x[3], c, add(x[1], x[5]))]
            }
        }

        /// One column or row of `a` products times the output transform `A^T`: for F(2x2)
        /// `[[1, 1, 1, 0], [0, 1, -1, -1]]`, for F(4x4) `[[1, 1, 1, 1, 1, 0],
        /// [0, 3/2, -3/2, 2/3, -2/3, 0], [0, 9/4, 9/4, 4/9, 4/9, 0], [0, 27/8, -27/8, 8/27, -8/27, 1]]`.
        #attrs
        unsafe fn wino_at(x: &[V; 6], a: usize) -> [V; 4] {
            unsafe {
                if a == 4 {
                    return [add(add(x[0], x[1]), x[2]), sub(sub(x[1], x[2]), x[3]), x[4], x[5]];
                }
                let (s, d, t, u) = (add(x[1], x[2]), sub(x[1], x[2]), add(x[3], x[4]), sub(x[3], x[4]));
                [
                    add(add(x[0], s), t),
                    madd(d, splat(1.5), mul(u, splat(2.0 / 3.0))),
                    madd(s, splat(2.25), mul(t, splat(4.0 / 9.0))),
                    add(madd(d, splat(3.375), mul(u, splat(8.0 / 27.0))), x[5]),
                ]
            }
        }

        /// The Winograd input transform `B^T d B` of an `a x a` tile (row-major, `A2` = a^2):
        /// columns, then rows.
        #attrs
        unsafe fn wino_in<const A2: usize>(d: &[V; A2]) -> [V; A2] {
            unsafe {
                let a = if A2 == 16 { 4 } else { 6 };
                let mut t = [splat(0.0f32); A2];
                for j in 0..a {
                    let mut c = [splat(0.0f32); 6];
                    for i in 0..a {
                        c[i] = d[i * a + j];
                    }
                    let y = wino_bt(&c, a);
                    for i in 0..a {
                        t[i * a + j] = y[i];
                    }
                }
                let mut v = [splat(0.0f32); A2];
                for i in 0..a {
                    let mut r = [splat(0.0f32); 6];
                    for j in 0..a {
                        r[j] = t[i * a + j];
                    }
                    let y = wino_bt(&r, a);
                    for j in 0..a {
                        v[i * a + j] = y[j];
                    }
                }
                v
            }
        }

        /// The Winograd output transform `A^T m A` of an `a x a` tile of products: the
        /// `(a - 2)^2` outputs, row-major, in the first lanes.
        #attrs
        unsafe fn wino_out<const A2: usize>(m: &[V; A2]) -> [V; 16] {
            unsafe {
                let a = if A2 == 16 { 4 } else { 6 };
                let mo = a - 2;
                let mut s = [splat(0.0f32); 24];
                for j in 0..a {
                    let mut c = [splat(0.0f32); 6];
                    for i in 0..a {
                        c[i] = m[i * a + j];
                    }
                    let y = wino_at(&c, a);
                    for i in 0..mo {
                        s[i * a + j] = y[i];
                    }
                }
                let mut out = [splat(0.0f32); 16];
                for i in 0..mo {
                    let mut r = [splat(0.0f32); 6];
                    for j in 0..a {
                        r[j] = s[i * a + j];
                    }
                    let y = wino_at(&r, a);
                    for j in 0..mo {
                        out[i * mo + j] = y[j];
                    }
                }
                out
            }
        }

        /// One work item of a 3x3 stride-1 conv as Winograd F(M x M, 3x3) (`M` 2 or 4, input
        /// tiles of `a x a` = `A2`, `a = M + 2`): one micro-tile, up to `T` of the `M x M`
        /// output tiles (row-major over the image) of one group. The input tiles are
        /// transformed into `v` (`[xi][T][KC]`), multiplied per `xi` by the transformed weights
        /// with the conv micro-kernel (`T` tiles x `P` panels) into `m`
        /// (`[xi][unit of P panels][T][16 P]`), then transformed back, the bias added (and
        /// stored to `pre` when asked) and SiLU applied. Tile rows beyond the item's tiles
        /// repeat its last tile (computed, never stored); pixels beyond an odd edge read as
        /// zero and are not stored. `v` and `m` hold `A2 T KC` and `A2 T 16 panels` floats,
        /// aligned for `V`.
        #attrs
        unsafe fn wino_item<const T: usize, const KC: usize, const P: usize, const WD: usize, const M: usize, const A2: usize>(
            ctx: &rt::Ctx,
            d: &rt::ConvDesc,
            io: &rt::ConvIo,
            it: usize,
            v: *mut f32,
            m: *mut f32,
        ) {
            unsafe {
                let out = rt::Buf { offset: io.out, ..d.out };
                let inp = &d.input;
                let a = M + 2;
                let (tw, th) = (out.w.div_ceil(M), out.h.div_ceil(M));
                let chunks = (tw * th).div_ceil(T);
                let (g, t0) = (it / chunks, (it % chunks) * T);
                let n = if tw * th - t0 < T { tw * th - t0 } else { T };
                let (wp, hp) = (inp.w + 2 * inp.pad, inp.h + 2 * inp.pad);
                let shift = inp.pad - d.conv_pad;
                for r in 0..T {
                    let t = t0 + if r < n { r } else { n - 1 };
                    let (y0, x0) = ((t / tw) * M + shift, (t % tw) * M + shift);
                    let mut src = [core::ptr::null::<f32>(); A2];
                    for i in 0..a {
                        for j in 0..a {
                            if y0 + i < hp && x0 + j < wp {
                                src[a * i + j] = ctx.ptr(io.input + ((y0 + i) * wp + x0 + j) * inp.c + g * KC);
                            }
                        }
                    }
                    let inside = y0 + a - 1 < hp && x0 + a - 1 < wp;
                    let mut ch = 0;
                    // Whole vectors of a tile inside the buffer: no tests per load.
                    if inside {
                        while ch + L <= KC {
                            let mut x = [splat(0.0f32); A2];
                            for q in 0..A2 {
                                x[q] = load(src[q].add(ch));
                            }
                            let y = wino_in(&x);
                            for q in 0..A2 {
                                store(v.add((q * T + r) * KC + ch), y[q]);
                            }
                            ch += L;
                        }
                    }
                    while ch < KC {
                        let nl = if KC - ch < L { KC - ch } else { L };
                        let mut x = [splat(0.0f32); A2];
                        for q in 0..A2 {
                            if !src[q].is_null() {
                                x[q] = load_part(src[q].add(ch), nl);
                            }
                        }
                        let y = wino_in(&x);
                        for q in 0..A2 {
                            store_part(v.add((q * T + r) * KC + ch), y[q], nl);
                        }
                        ch += L;
                    }
                }
                let cout_g = d.cout_g;
                let panels = d.panels_per_group();
                let units = panels / P;
                let w_g = io.weights + g * A2 * panels * KC * 16;
                // This item's share of the next kernel's weights, spread over its products.
                let (ahead, ahead_lines) = io.ahead_share(ctx, it, d.groups * chunks);
                let per_call = ahead_lines.div_ceil(A2 * units).min(KC);
                let ahead_shift = rt::spread_shift(per_call, KC);
                let mut ahead_done = 0;
                // And its share of the next group's weights when this thread likely runs that
                // group next, likewise (not when another thread does: it runs it meanwhile).
                let group_bytes = A2 * panels * KC * 16 * if WD == rt::WEIGHTS_F32 { 4 } else { 2 };
                let (next_g, next_lines) = if g + 1 < d.groups
                    && rt::same_thread(it, (g + 1) * chunks, d.groups * chunks, ctx.pool.threads())
                {
                    let lines = group_bytes / 64;
                    let c = it % chunks;
                    let (lo, hi) = (c * lines / chunks, (c + 1) * lines / chunks);
                    let at = io.weights + (g + 1) * A2 * panels * KC * 16;
                    let base = weights_at::<WD>(ctx, at);
                    (base.wrapping_add(lo * 64), hi - lo)
                } else {
                    (core::ptr::null(), 0)
                };
                let per_call_g = next_lines.div_ceil(A2 * units).min(KC);
                let g_shift = rt::spread_shift(per_call_g, KC);
                let mut g_done = 0;
                // The products land in `m` as the micro-kernel holds them: per `xi` and unit
                // of `P` panels, `T` rows of `16 P` floats.
                for q in 0..A2 {
                    for u in 0..units {
                        let at = w_g + (q * panels + u * P) * KC * 16;
                        let b = weights_at::<WD>(ctx, at);
                        let acc = m.add((q * units + u) * T * P * 16) as *mut [[[V; NV]; P]; T];
                        let n = per_call.min(ahead_lines - ahead_done);
                        let ah = ahead.wrapping_add(ahead_done * 64);
                        ahead_done += n;
                        let ng = per_call_g.min(next_lines - g_done);
                        let pf = next_g.wrapping_add(g_done * 64);
                        g_done += ng;
                        gemm::<T, KC, KC, P, WD, WINO_BPF>(
                            v.add(q * T * KC),
                            &[0],
                            b,
                            KC * 16,
                            pf,
                            ng,
                            g_shift,
                            ah,
                            n,
                            ahead_shift,
                            core::ptr::null(),
                            acc,
                        );
                    }
                }
                let bias = ctx.w(io.bias + g * panels * 16);
                let pre = rt::Buf { offset: io.pre, ..d.pre };
                for r in 0..n {
                    let t = t0 + r;
                    let (ty, tx) = ((t / tw) * M, (t % tw) * M);
                    // The tile's output pixels (null beyond an odd edge).
                    let mut dst = [core::ptr::null_mut::<f32>(); 16];
                    let mut dst_pre = [core::ptr::null_mut::<f32>(); 16];
                    for k in 0..M * M {
                        let (yy, xx) = (ty + k / M, tx + k % M);
                        if yy < out.h && xx < out.w {
                            dst[k] = ctx.ptr(out.at(yy, xx) + g * cout_g);
                            if io.pre != rt::NONE {
                                dst_pre[k] = ctx.ptr(pre.at(yy, xx) + g * cout_g);
                            }
                        }
                    }
                    let mut ch = 0;
                    while ch < cout_g {
                        let nl = if cout_g - ch < L { cout_g - ch } else { L };
                        let (u, c) = (ch / (16 * P), ch % (16 * P));
                        let mut x = [splat(0.0f32); A2];
                        for q in 0..A2 {
                            x[q] = load(m.add(((q * units + u) * T + r) * P * 16 + c));
                        }
                        let y = wino_out(&x);
                        let b = load(bias.add(ch));
                        for k in 0..M * M {
                            if !dst[k].is_null() {
                                let mut val = add(y[k], b);
                                if !dst_pre[k].is_null() {
                                    store_part(dst_pre[k].add(ch), val, nl);
                                }
                                if d.act {
                                    val = silu(val);
                                }
                                store_part(dst[k].add(ch), val, nl);
                            }
                        }
                        ch += L;
                    }
                }
            }
        }

        /// See `nfnet_runtime::kernels::Kernels::scale_add_act`. The usual case (gate,
        /// shortcut and both outputs) runs without a test per vector for the absent ones
        /// (7% faster on AVX-512, 16% on AVX2: the branches share a port with the SiLU).
        #attrs
        pub unsafe fn scale_add_act(n: usize, c: usize, r: *const f32, gate: *const f32, sc: *const f32, y: *mut f32, act: *mut f32) {
            unsafe {
                if !gate.is_null() && !sc.is_null() && !y.is_null() && !act.is_null() {
                    scale_add_act_as::<true>(n, c, r, gate, sc, y, act)
                } else {
                    scale_add_act_as::<false>(n, c, r, gate, sc, y, act)
                }
            }
        }

        /// `scale_add_act` with every pointer present (`ALL`), or each tested. Asks for its
        /// inputs' lines `AHEAD` floats ahead, one request per line and input: the pass
        /// streams four arrays through L2 (two read, written back in place) and its SiLU
        /// keeps the core too busy for the hardware's streams to run far enough ahead (they
        /// also stop at 4 KB pages); AVX-512, L2 at 320 on 2 threads: 13% faster with 1 to
        /// 4 KB ahead, 8% with 8 KB.
        #attrs
        unsafe fn scale_add_act_as<const ALL: bool>(n: usize, c: usize, r: *const f32, gate: *const f32, sc: *const f32, y: *mut f32, act: *mut f32) {
            const AHEAD: usize = 512;
            let (has_gate, has_sc) = (ALL || !gate.is_null(), ALL || !sc.is_null());
            let (has_y, has_act) = (ALL || !y.is_null(), ALL || !act.is_null());
            unsafe {
                let mut p = 0;
                while p < n {
                    let mut ch = 0;
                    while ch + L <= c {
                        let i = p + ch;
                        // One request per line (per vector on AVX-512, without a test).
                        if L >= 16 || i % 16 == 0 {
                            // Near the item's end these run past it, into the next item's
                            // lines (a hint; it never faults).
                            prefetch(r.wrapping_add(i + AHEAD));
                            if has_sc {
                                prefetch(sc.wrapping_add(i + AHEAD));
                            }
                        }
                        let mut v = load(r.add(i));
                        if has_gate {
                            let g = load(gate.add(ch));
                            v = if has_sc { madd(v, g, load(sc.add(i))) } else { mul(v, g) };
                        } else if has_sc {
                            v = add(v, load(sc.add(i)));
                        }
                        if has_y {
                            store(y.add(i), v);
                        }
                        if has_act {
                            store(act.add(i), silu(v));
                        }
                        ch += L;
                    }
                    while ch < c {
                        let i = p + ch;
                        let mut v = *r.add(i);
                        if has_gate {
                            v *= *gate.add(ch);
                        }
                        if has_sc {
                            v += *sc.add(i);
                        }
                        if has_y {
                            *y.add(i) = v;
                        }
                        if has_act {
                            *act.add(i) = v / (1.0 + (-v).exp());
                        }
                        ch += 1;
                    }
                    p += c;
                }
            }
        }
    }
}

/// One ISA module plus its `Kernels` implementation; `items` are the per-shape conv entry
/// points and `model_kernels` the body of its `ModelKernels` implementation.
pub fn module(isa: &IsaSpec, items: &TokenStream, model_kernels: &TokenStream) -> TokenStream {
    let module = format_ident!("{}", isa.module);
    let token = format_ident!("{}", isa.token);
    let IsaSpec { cfg, attrs, prelude, vocab, kernels: micro, variants, .. } = isa;
    let token_module = format_ident!("token_{}", isa.token.to_lowercase());
    let token_doc = format!("Proof that the CPU runs this ISA: only [`{}::detect`] makes one.", isa.token);
    let IsaKernels { lanes, shapes, .. } = micro;
    let lit = proc_macro2::Literal::usize_unsuffixed;
    let (lanes_l, nv) = (lit(*lanes), lit(16 / lanes));
    let body = kernels(attrs, &isa.feature);
    let tiles: Vec<String> = shapes.iter().map(|(p, t)| format!("{t} x {}", 16 * p)).collect();
    let doc = format!(
        "The {} micro-kernels ({} lanes, tiles of up to pixels x channels: {}).",
        isa.token,
        lanes,
        tiles.join(", ")
    );
    quote! {
        #[doc = #doc]
        #[cfg(#cfg)]
        #[allow(unused_unsafe, reason = "the kernel bodies are shared: a call unsafe under one ISA's intrinsics is safe under another's")]
        #[allow(dead_code, reason = "the vocabulary is emitted whole; a model uses the part its convs need (no Winograd, no f32 convs in bf16)")]
        #[allow(clippy::missing_safety_doc, reason = "the vocabulary's contract is the module's: pointers inside the arena and weight blob, the ISA proven by its token")]
        #[allow(clippy::too_many_arguments, clippy::needless_range_loop, reason = "kernels take their shape as arguments and index fixed-size register arrays")]
        pub mod #module {
            #prelude
            use nfnet_runtime::kernels as rt;
            pub const L: usize = #lanes_l;
            pub const NV: usize = #nv;
            /// How far ahead (floats) the conv kernel prefetches its weight panel.
            const B_AHEAD: usize = 16 * 16;
            #vocab
            #body
            #items

            impl super::ModelKernels for super::#token {
                #model_kernels
            }
        }

        #[cfg(#cfg)]
        mod #token_module {
            #[doc = #token_doc]
            #[derive(Clone, Copy)]
            pub struct #token(());

            impl #token {
                /// The token, when `isa` is one this module serves and this CPU runs it.
                pub fn detect(isa: nfnet_runtime::Isa) -> Option<#token> {
                    (matches!(isa, #variants) && isa.is_available()).then_some(#token(()))
                }
            }
        }
        #[cfg(#cfg)]
        pub use #token_module::#token;

        #[cfg(#cfg)]
        // SAFETY: a token exists only after `Isa::is_available` said the CPU runs this ISA.
        unsafe impl nfnet_runtime::kernels::Kernels for #token {
            unsafe fn scale_add_act(self, n: usize, c: usize, r: *const f32, gate: *const f32, sc: *const f32, y: *mut f32, act: *mut f32) {
                #[doc = "nfnet-safety: the token proves the ISA; the caller upholds the pointer contract."]
                unsafe { #module::scale_add_act(n, c, r, gate, sc, y, act) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_module_holds_the_same_kernels_over_its_own_intrinsics() {
        let none = TokenStream::new();
        for isa in isas() {
            let text = module(&isa, &none, &none).to_string();
            for f in ["fn tile", "fn conv_item", "fn scale_add_act", "fn silu", "fn exp", "fn madd", "ModelKernels"] {
                assert!(text.contains(f), "{} lacks {f}", isa.module);
            }
        }
        let avx2 = module(&avx2(), &none, &none).to_string();
        assert!(avx2.contains("_mm256_fmadd_ps") && avx2.contains("target_feature"));
        let neon = module(&neon(), &none, &none).to_string();
        assert!(neon.contains("vfmaq_f32") && neon.contains("neon_emu"));
    }
}
