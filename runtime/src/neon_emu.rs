//! A lane-by-lane emulation of exactly the aarch64 NEON intrinsics the emitted NEON kernels
//! use, with the same names and signatures as `core::arch::aarch64`. On other architectures
//! the emitted NEON module imports these instead, so the NEON code path is compiled and tested
//! here (`NFNET_ISA=neon-emu`) although no aarch64 toolchain can be installed.
//!
//! Semantics follow the Arm architecture reference: `vfmaq_f32(a, b, c)` is the fused
//! `a + b * c` (one rounding), `vcvtq_s32_f32` truncates toward zero and saturates,
//! `vrndmq_f32` rounds toward minus infinity.

#![allow(non_camel_case_types, reason = "the names are Arm's")]

/// Four f32 lanes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(16))]
pub struct float32x4_t(pub [f32; 4]);

/// Four u16 lanes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(8))]
pub struct uint16x4_t(pub [u16; 4]);

/// Four u32 lanes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(16))]
pub struct uint32x4_t(pub [u32; 4]);

/// Loads four u16.
///
/// # Safety
/// `p` must be valid for reading 8 bytes (no alignment needed).
#[inline(always)]
pub unsafe fn vld1_u16(p: *const u16) -> uint16x4_t {
    // SAFETY: the caller guarantees 4 readable u16 at p; read_unaligned needs no alignment.
    uint16x4_t(unsafe { p.cast::<[u16; 4]>().read_unaligned() })
}

/// USHLL #0: widens four u16 to u32.
#[inline(always)]
pub fn vmovl_u16(a: uint16x4_t) -> uint32x4_t {
    uint32x4_t(a.0.map(u32::from))
}

/// SHL by an immediate (0..=31).
#[inline(always)]
pub fn vshlq_n_u32<const N: i32>(a: uint32x4_t) -> uint32x4_t {
    const { assert!(N >= 0 && N < 32) };
    uint32x4_t(a.0.map(|x| x.wrapping_shl(N as u32)))
}

#[inline(always)]
pub fn vandq_u32(a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
    uint32x4_t(std::array::from_fn(|i| a.0[i] & b.0[i]))
}

#[inline(always)]
pub fn vorrq_u32(a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
    uint32x4_t(std::array::from_fn(|i| a.0[i] | b.0[i]))
}

#[inline(always)]
pub fn vdupq_n_u32(x: u32) -> uint32x4_t {
    uint32x4_t([x; 4])
}

#[inline(always)]
pub fn vreinterpretq_f32_u32(a: uint32x4_t) -> float32x4_t {
    float32x4_t(a.0.map(f32::from_bits))
}

#[inline(always)]
pub fn vreinterpretq_u32_f32(a: float32x4_t) -> uint32x4_t {
    uint32x4_t(a.0.map(f32::to_bits))
}

/// Four i32 lanes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(16))]
pub struct int32x4_t(pub [i32; 4]);

#[inline(always)]
fn map2(a: float32x4_t, b: float32x4_t, f: impl Fn(f32, f32) -> f32) -> float32x4_t {
    float32x4_t([f(a.0[0], b.0[0]), f(a.0[1], b.0[1]), f(a.0[2], b.0[2]), f(a.0[3], b.0[3])])
}

/// Loads four f32.
///
/// # Safety
/// `p` must be valid for reading 16 bytes (no alignment needed).
#[inline(always)]
pub unsafe fn vld1q_f32(p: *const f32) -> float32x4_t {
    // SAFETY: the caller guarantees 4 readable f32 at p; read_unaligned needs no alignment.
    float32x4_t(unsafe { p.cast::<[f32; 4]>().read_unaligned() })
}

/// Stores four f32.
///
/// # Safety
/// `p` must be valid for writing 16 bytes (no alignment needed).
#[inline(always)]
pub unsafe fn vst1q_f32(p: *mut f32, v: float32x4_t) {
    // SAFETY: the caller guarantees 4 writable f32 at p; write_unaligned needs no alignment.
    unsafe { p.cast::<[f32; 4]>().write_unaligned(v.0) }
}

#[inline(always)]
pub fn vdupq_n_f32(x: f32) -> float32x4_t {
    float32x4_t([x; 4])
}

#[inline(always)]
pub fn vdupq_n_s32(x: i32) -> int32x4_t {
    int32x4_t([x; 4])
}

/// `a + b * c` with a single rounding (FMLA).
#[inline(always)]
pub fn vfmaq_f32(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
    float32x4_t(std::array::from_fn(|i| b.0[i].mul_add(c.0[i], a.0[i])))
}

#[inline(always)]
pub fn vaddq_f32(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    map2(a, b, |x, y| x + y)
}

#[inline(always)]
pub fn vsubq_f32(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    map2(a, b, |x, y| x - y)
}

#[inline(always)]
pub fn vmulq_f32(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    map2(a, b, |x, y| x * y)
}

#[inline(always)]
pub fn vdivq_f32(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    map2(a, b, |x, y| x / y)
}

/// FMAX: NaN if either lane is NaN.
#[inline(always)]
pub fn vmaxq_f32(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    map2(a, b, |x, y| if x.is_nan() || y.is_nan() { f32::NAN } else { x.max(y) })
}

/// FMIN: NaN if either lane is NaN.
#[inline(always)]
pub fn vminq_f32(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    map2(a, b, |x, y| if x.is_nan() || y.is_nan() { f32::NAN } else { x.min(y) })
}

/// FRINTM: round toward minus infinity.
#[inline(always)]
pub fn vrndmq_f32(a: float32x4_t) -> float32x4_t {
    float32x4_t(a.0.map(f32::floor))
}

/// FCVTZS: toward zero, saturating, NaN to 0 (Rust's `as` has exactly these semantics).
#[inline(always)]
pub fn vcvtq_s32_f32(a: float32x4_t) -> int32x4_t {
    int32x4_t(a.0.map(|x| x as i32))
}

#[inline(always)]
pub fn vcvtq_f32_s32(a: int32x4_t) -> float32x4_t {
    float32x4_t(a.0.map(|x| x as f32))
}

#[inline(always)]
pub fn vaddq_s32(a: int32x4_t, b: int32x4_t) -> int32x4_t {
    int32x4_t(std::array::from_fn(|i| a.0[i].wrapping_add(b.0[i])))
}

/// SHL by an immediate (0..=31).
#[inline(always)]
pub fn vshlq_n_s32<const N: i32>(a: int32x4_t) -> int32x4_t {
    const { assert!(N >= 0 && N < 32) };
    int32x4_t(a.0.map(|x| x.wrapping_shl(N as u32)))
}

#[inline(always)]
pub fn vreinterpretq_f32_s32(a: int32x4_t) -> float32x4_t {
    float32x4_t(a.0.map(|x| f32::from_bits(x as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_follow_the_arm_semantics() {
        let a = float32x4_t([1.5, -2.5, 3.0, -0.0]);
        let b = vdupq_n_f32(2.0);
        assert_eq!(vfmaq_f32(a, b, a).0, [4.5, -7.5, 9.0, -0.0]);
        assert_eq!(vcvtq_s32_f32(float32x4_t([1.9, -1.9, 3e10, f32::NAN])).0, [1, -1, i32::MAX, 0]);
        assert_eq!(vrndmq_f32(a).0, [1.0, -3.0, 3.0, -0.0]);
        let e = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(vdupq_n_s32(3), vdupq_n_s32(127))));
        assert_eq!(e.0, [8.0; 4]);
        let mut buf = [0.0f32; 5];
        // SAFETY: buf has 5 floats; 4 are written from offset 1 and read back.
        unsafe {
            vst1q_f32(buf.as_mut_ptr().add(1), a);
            assert_eq!(vld1q_f32(buf.as_ptr().add(1)), a);
        }
        assert!(vmaxq_f32(a, vdupq_n_f32(f32::NAN)).0[0].is_nan());
        let h = [0x3c00u16, 0xc000, 0x0001, 0x7bff];
        // SAFETY: h has 4 u16.
        let w = vmovl_u16(unsafe { vld1_u16(h.as_ptr()) });
        assert_eq!(vshlq_n_u32::<16>(w).0[0], 0x3c00_0000);
        assert_eq!(vandq_u32(w, vdupq_n_u32(0x7fff)).0[1], 0x4000);
        assert_eq!(vreinterpretq_u32_f32(vreinterpretq_f32_u32(w)), w);
    }
}
