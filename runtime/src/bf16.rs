//! Convolutions in bf16: inputs and weights rounded to bf16 (round to nearest even),
//! products accumulated in f32, the epilogue (bias, pre-activation, SiLU, channel sums) in
//! f32 over the accumulators; the output stored as f32, or as bf16 when only bf16 convs
//! read it.
//!
//! Every conv is an implicit GEMM per group. B (K x columns) is packed at build time as AMX
//! reads it ([`b_index`]): per 16 output channels and 32 K, one 1 KiB tile of 16 rows of K
//! pairs. A (pixels x K) is read straight from a bf16 input, tap by tap, where the conv
//! allows ([`loads_direct`]), else gathered (and rounded) into a scratch block. A block of 32
//! pixels x 32 channels is four 16 x 16 f32 tiles: on AMX (`tdpbf16ps`), with `vdpbf16ps`,
//! or in plain code ([`block_portable`], the twin the others are tested against).
//!
//! Work items are (group, range of column tiles, range of bands): columns are split only to
//! keep an item's weights in L2 (a gathering conv gathers each pixel once per split); ranges
//! of bands give the threads work. An item runs its pixels in chunks, each block of 32 pixels
//! over its column pairs in groups, K in ranges. Each item writes its own channels' sums of
//! its own bands, in pixel order, so results do not depend on the threads.

use crate::Isa;
use crate::kernels::{Buf, ConvDesc, ConvIo, Ctx, NONE, NR};

/// Rows (pixels) and columns (channels) of one f32 result tile.
pub const TILE: usize = 16;
/// K per tile step: 32 bf16 (16 pairs) per A row.
pub const KSTEP: usize = 32;
/// Pixels per block: two row tiles.
pub const MBLOCK: usize = 2 * TILE;

/// The bf16 shape of a conv, next to its [`ConvDesc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bf16Desc {
    /// K = taps x input channels per group, rounded up to [`KSTEP`].
    pub kpad: usize,
    /// Column tiles per group (output channels per group rounded up to 16, over 16).
    pub ntiles: usize,
    /// Ranges the column tiles of a group are split into.
    pub splits: usize,
    /// Ranges of bands the pixels are split into (work items: groups x splits x parts).
    pub parts: usize,
    /// Pixels gathered at a time (a multiple of [`MBLOCK`], at most [`MAX_CHUNK`]): the
    /// scratch holds `chunk x kpad`.
    pub chunk: usize,
    /// The input holds bf16 values (else f32, rounded when gathered).
    pub input16: bool,
    /// The output is stored as bf16 (else f32); the pre-activation is always f32.
    pub output16: bool,
    /// A's tiles load straight from the bf16 input, tap by tap, without a gather (see
    /// [`loads_direct`]); the scratch is empty.
    pub direct: bool,
}

/// Pixels of slack the memory plan leaves after a bf16 buffer: a direct conv's last block
/// reads up to a block of pixels past the buffer's end (into rows it drops).
pub const SLACK_PIXELS: usize = MBLOCK;

/// Whether a conv can load A's tiles straight from its bf16 input: stride 1 (one pixel
/// between rows) and whole K steps per tap (`kc` a multiple of 32, so each step is 64
/// aligned bytes of one tap's channels).
pub const fn loads_direct(input16: bool, stride: usize, kc: usize) -> bool {
    input16 && stride == 1 && kc.is_multiple_of(KSTEP)
}

/// Most pixels gathered at a time.
pub const MAX_CHUNK: usize = 1024;

/// Most K steps of a conv (K <= 8192).
pub const MAX_KSTEPS: usize = 256;

/// Most K steps a block runs before the next column pair: A's range (32 rows of 256 K,
/// 16 KiB) stays in L1 while the pairs' weights stream from L2.
pub const KRANGE: usize = 8;

/// Column pairs whose results a block accumulates over its K ranges (8 KiB).
pub const GROUP_PAIRS: usize = 2;

impl Bf16Desc {
    /// Work items of a conv of `groups` groups.
    pub const fn items(&self, groups: usize) -> usize {
        groups * self.splits * self.parts
    }

    /// bf16 values of the gather scratch.
    pub const fn scratch_len(&self) -> usize {
        if self.direct { 0 } else { self.chunk * self.kpad }
    }

    /// u16 values of the packed weights of all groups.
    pub const fn weights_len(&self, groups: usize) -> usize {
        groups * self.ntiles * TILE * self.kpad
    }
}

/// `x` rounded to bf16, to nearest even (NaN stays NaN, quiet).
#[inline(always)]
pub fn round(x: f32) -> u16 {
    let b = x.to_bits();
    let r = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { ((b >> 16) as u16) | 0x40 } else { r }
}

/// A bf16 value as f32 (exact).
#[inline(always)]
pub fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Index, in the packed weights, of element (`k`, `n`) of group `g`'s K x columns matrix:
/// group-major, then column tile, then K step; inside a tile 16 rows of K pairs, each row
/// the 16 columns' pairs (`[k even, k odd]`).
#[inline(always)]
pub fn b_index(kpad: usize, ntiles: usize, g: usize, k: usize, n: usize) -> usize {
    let (j, c) = (n / TILE, n % TILE);
    let (s, kk) = (k / KSTEP, k % KSTEP);
    (((g * ntiles + j) * (kpad / KSTEP) + s) * TILE + kk / 2) * (2 * TILE) + c * 2 + kk % 2
}

/// `exp(-x)` without a library call or a float-to-int conversion (it vectorizes): `2^n p(r)`,
/// `n` rounded by adding 1.5 x 2^23 (its low mantissa bits are then `n`, which become the
/// exponent bits of `2^n`), `p` a polynomial on `[-ln2/2, ln2/2]`; `x` clamped to
/// `[-88, 87]` (the result stays a normal float); about 2 ulp.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let t = (-x).clamp(-87.0, 88.0);
    let z = t * std::f32::consts::LOG2_E + ROUND;
    let n = z - ROUND;
    let r = t - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_4 + r * (0.008_333_8 + r * 0.001_394_3)))));
    p * f32::from_bits(z.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23)
}

/// `x * sigmoid(x)` by [`exp_neg`] (it vectorizes); about 2 ulp.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_neg(x))
}

/// `scale * sigmoid(x)` by [`exp_neg`] (it vectorizes); about 2 ulp.
#[inline(always)]
pub fn scaled_sigmoid(scale: f32, x: f32) -> f32 {
    scale / (1.0 + exp_neg(x))
}

/// Whether this process may run AMX bf16 tiles: the CPU has them, the OS saves their state,
/// and the kernel granted this process the tile data (asked once).
pub fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *GRANTED.get_or_init(amx::request)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Whether CPUID lists AMX-TILE and AMX-BF16 (whether or not the OS lets this process use
/// them): a machine where this holds and [`amx_available`] does not is misconfigured, and
/// tests that need AMX fail there instead of skipping.
pub fn cpu_reports_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The block product a bf16 conv runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// [`block_portable`], and the plain gather and epilogue: any CPU.
    Portable,
    /// The same code compiled for AVX2 + FMA ([`Isa::Avx2`]).
    PortableAvx2,
    /// The same code compiled for AVX-512 ([`Isa::Avx512`]).
    PortableAvx512,
    /// `vdpbf16ps` on AVX-512 registers ([`Isa::Avx512Bf16`]).
    Avx512Bf16,
    /// `tdpbf16ps` on AMX tiles ([`Isa::Amx`]).
    Amx,
}

impl Engine {
    /// The engine a model running `isa` uses.
    pub fn of(isa: Isa) -> Engine {
        match isa {
            Isa::Amx => Engine::Amx,
            Isa::Avx512Bf16 => Engine::Avx512Bf16,
            Isa::Avx512 => Engine::PortableAvx512,
            Isa::Avx2 => Engine::PortableAvx2,
            _ => Engine::Portable,
        }
    }
}

/// [`item`]'s engine parameter.
const PORTABLE: u8 = 0;
#[cfg(target_arch = "x86_64")]
const DPBF16: u8 = 1;
#[cfg(target_arch = "x86_64")]
const AMX: u8 = 2;

/// Work item `it` of a bf16 conv.
///
/// # Safety
/// `d`, `b` and `io` describe a conv of the model whose weights and arena `ctx` holds (the
/// compiler's memory plan and packing); `SCRATCH >= b.scratch_len()`; `ctx.bf16` is an
/// engine of an available ISA (with AMX, [`amx_available`] granted it). Items write
/// disjoint parts of the outputs.
pub unsafe fn conv_item<const SCRATCH: usize>(ctx: &Ctx, d: &ConvDesc, b: &Bf16Desc, io: &ConvIo, it: usize) {
    let mut a = std::mem::MaybeUninit::<Aligned<[u16; SCRATCH]>>::uninit();
    let a = a.as_mut_ptr() as *mut u16;
    match ctx.bf16 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as this function's; AMX is granted (caller), and AMX CPUs have AVX-512.
        Engine::Amx => unsafe { amx::item(ctx, d, b, io, it, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as this function's; the CPU has AVX512-BF16 (caller).
        Engine::Avx512Bf16 => unsafe { dp::item(ctx, d, b, io, it, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as this function's; the CPU has AVX-512 (caller).
        Engine::PortableAvx512 => unsafe { portable::item_avx512(ctx, d, b, io, it, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as this function's; the CPU has AVX2 and FMA (caller).
        Engine::PortableAvx2 => unsafe { portable::item_avx2(ctx, d, b, io, it, a) },
        // SAFETY: as this function's.
        _ => unsafe { item::<PORTABLE>(ctx, d, b, io, it, a) },
    }
}

#[repr(C, align(64))]
struct Aligned<T>(T);

/// Runs the `items` of a bf16 conv on the pool and zeroes its outputs' borders apart.
///
/// # Safety
/// As [`crate::kernels::conv_run`]; a bf16 output has an even number of channels.
pub unsafe fn conv_run(
    ctx: &Ctx,
    d: &ConvDesc,
    b: &Bf16Desc,
    io: &ConvIo,
    items: usize,
    item: &(dyn Fn(usize) + Sync),
) {
    let out = Buf { offset: io.out, ..d.out };
    // A bf16 buffer of c channels lies in the arena as an f32 one of c / 2.
    let out = if b.output16 { Buf { c: out.c / 2, ..out } } else { out };
    // SAFETY: as this function's.
    unsafe { crate::kernels::run_zeroing_borders(ctx, &[out, Buf { offset: io.pre, ..d.pre }], items, item) }
}

/// `v = r * gate + shortcut` (gate and shortcut optional), stored to `y` (f32, optional)
/// and `silu(v)` rounded to bf16 to `act`, row by row: [`crate::kernels::scale_add_act`] for
/// the activation of a block that only bf16 convs read. `r16`: `r` holds bf16 values (a
/// block's branch output that only this kernel reads), else f32.
///
/// # Safety
/// Buffers from the schedule: same h, w, c; in the arena; `act` holds bf16 values and is
/// disjoint from the others; `y` may be `r` (an f32 one) or `sc`, else is disjoint from
/// both.
pub unsafe fn scale_add_act(ctx: &Ctx, r: &Buf, r16: bool, gate: usize, sc: &Buf, y: &Buf, act: &Buf) {
    let piece = |yy: usize, x0: usize, x1: usize| {
        let arena16 = ctx.arena.0 as *mut u16;
        let p = |b: &Buf| if b.is_some() { ctx.ptr(b.at(yy, x0)) } else { std::ptr::null_mut() };
        // A bf16 buffer's values, two per arena float, from its offset on.
        let p16 = |b: &Buf| arena16.wrapping_add(2 * b.offset + (b.at(yy, x0) - b.offset));
        let ptrs = SaaPtrs {
            r: if r16 { std::ptr::null() } else { p(r) },
            r16: if r16 { p16(r) } else { std::ptr::null() },
            gate: if gate == NONE { std::ptr::null() } else { ctx.ptr(gate) as *const f32 },
            sc: p(sc),
            y: p(y),
            act: p16(act),
        };
        // SAFETY: pixels x0..x1 of row yy of each buffer are (x1 - x0) * c contiguous values
        // inside the arena; each item writes its own pixels.
        unsafe { scale_add_act_piece(ctx.bf16, (x1 - x0) * r.c, r.c, ptrs) };
    };
    // A bf16 buffer of c channels lies in the arena as an f32 one of c / 2.
    let act_floats = Buf { c: act.c / 2, ..*act };
    // SAFETY: buffers are in the arena (caller contract); the pieces write interior pixels.
    unsafe { crate::kernels::run_row_pieces(ctx, r, &[*y, act_floats], &piece) }
}

/// Where [`scale_add_act_piece`] reads and writes: `r` in f32 or (`r16`) bf16, one of them
/// null; `gate`, `sc` and `y` null when absent.
#[derive(Clone, Copy)]
struct SaaPtrs {
    r: *const f32,
    r16: *const u16,
    gate: *const f32,
    sc: *const f32,
    y: *mut f32,
    act: *mut u16,
}

/// [`scale_add_act`] over `n` contiguous values (`c` channels per pixel).
///
/// # Safety
/// `p`'s non-null pointers valid for `n` values (`gate` for `c`); the engine's ISA is
/// available.
unsafe fn scale_add_act_piece(engine: Engine, n: usize, c: usize, p: SaaPtrs) {
    #[inline(always)]
    unsafe fn body(n: usize, c: usize, p: SaaPtrs) {
        for i in 0..n {
            // SAFETY: as the caller's.
            unsafe {
                let mut v = if p.r16.is_null() { *p.r.add(i) } else { widen(*p.r16.add(i)) };
                if !p.gate.is_null() {
                    v *= *p.gate.add(i % c);
                }
                if !p.sc.is_null() {
                    v += *p.sc.add(i);
                }
                if !p.y.is_null() {
                    *p.y.add(i) = v;
                }
                *p.act.add(i) = round(silu(v));
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512(n: usize, c: usize, p: SaaPtrs) {
        // SAFETY: as the caller's.
        unsafe { body(n, c, p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(n: usize, c: usize, p: SaaPtrs) {
        // SAFETY: as the caller's.
        unsafe { body(n, c, p) }
    }
    // SAFETY: as this function's; each engine's ISA brings the features named.
    unsafe {
        match engine {
            #[cfg(target_arch = "x86_64")]
            Engine::Amx | Engine::Avx512Bf16 => amx::scale_add_act(n, c, p),
            #[cfg(target_arch = "x86_64")]
            Engine::PortableAvx512 => avx512(n, c, p),
            #[cfg(target_arch = "x86_64")]
            Engine::PortableAvx2 => avx2(n, c, p),
            _ => body(n, c, p),
        }
    }
}

/// Marks a row of A whose pixel is not an output (a direct conv's pixels past a row's end).
const SKIP: u32 = u32::MAX;

/// The body of a work item; `E` chooses the block product ([`PORTABLE`], [`DPBF16`] or
/// [`AMX`]); the last two round and run the epilogue in AVX-512.
///
/// # Safety
/// As [`conv_item`], `a` the scratch (64-byte aligned, `b.scratch_len()` values); with `E`
/// not portable, the body runs inside a function enabling AVX512-BF16.
#[inline(always)]
unsafe fn item<const E: u8>(ctx: &Ctx, d: &ConvDesc, b: &Bf16Desc, io: &ConvIo, it: usize, a: *mut u16) {
    let (g, sp, part) = (it / (b.splits * b.parts), it / b.parts % b.splits, it % b.parts);
    let (j0, j1) = (sp * b.ntiles / b.splits, (sp + 1) * b.ntiles / b.splits);
    let inp = &d.input;
    let shift = inp.pad - d.conv_pad;
    let wp = inp.w + 2 * inp.pad;
    // Pixel q is (q / vw, q % vw): a direct conv's A rows are input pixels one apart, so its
    // rows are as wide as the input's padded rows (their last pixels are computed, then
    // dropped); else image rows.
    let (ow, vw) = (d.out.w, if b.direct { wp } else { d.out.w });
    let bands = d.bands();
    let (band0, band1) = (part * bands / b.parts, (part + 1) * bands / b.parts);
    let row_start = |r: usize| if d.flat { r * d.row_len } else { r * vw };
    let end = if d.flat { d.out.h * ow } else { (d.out.h - 1) * vw + ow };
    let (p0, p1) = (row_start(band0 * d.band), if band1 == bands { end } else { row_start(band1 * d.band) });
    let band_of = |p: usize| if d.flat { p / d.row_len } else { p / vw } / d.band;
    let k_real = d.taps.len() * d.kc;
    let ksteps = b.kpad / KSTEP;
    let col_end = |j: usize| ((j + 1) * TILE).min(d.cout_g);
    let sums = if d.sums { ctx.ptr(io.sums + g * d.cout_g) } else { std::ptr::null_mut() };
    if !sums.is_null() {
        for bi in band0..band1 {
            for c in j0 * TILE..col_end(j1 - 1) {
                // SAFETY: band bi's row of sums, this item's bands and columns (disjoint
                // from the other items').
                unsafe { *sums.add(bi * d.out.c + c) = 0.0 };
            }
        }
    }
    let arena16 = ctx.arena.0 as *mut u16;
    let (out, pre) = (Buf { offset: 0, ..d.out }, Buf { offset: 0, ..d.pre });
    // Two sets of result slots, groups of pairs taking turns, when epilogues run beside the
    // next group's products (see `amx::Queue`); else the first set. Not cleared (16 KiB per
    // item): a block's first K range writes all of its slot (its products, or zeros, then
    // theirs) before anything reads it, and any bits are a float.
    let mut acc_space = std::mem::MaybeUninit::<Aligned<[[f32; 4 * TILE * TILE]; 2 * GROUP_PAIRS]>>::uninit();
    // SAFETY: see above; the space outlives every use of `acc`.
    let acc = unsafe { &mut *acc_space.as_mut_ptr() };
    // Step s's 32 K of a pixel start at value offs[s] from its row of A: in the gathered
    // rows one after the other, in the input tap by tap.
    let mut offs_space = [std::mem::MaybeUninit::<usize>::uninit(); MAX_KSTEPS];
    for (s, o) in offs_space[..ksteps].iter_mut().enumerate() {
        o.write(if b.direct { d.taps[s * KSTEP / d.kc].cast_unsigned() + s * KSTEP % d.kc } else { s * KSTEP });
    }
    // SAFETY: the first `ksteps` were written just above.
    let offs = unsafe { offs_space[..ksteps].assume_init_ref() };
    let ranges = ksteps.div_ceil(KRANGE);
    // Per pixel of the chunk: its offsets in the output and pre-activation (channel 0 of
    // the group) and its band.
    // Written for each chunk's pixels before their blocks read them (not cleared: the
    // table is 12 KiB per item).
    let mut at = [std::mem::MaybeUninit::<(u32, u32, u32)>::uninit(); MAX_CHUNK];
    // The epilogue of the pair of column tiles from `jj` whose results are `accs`, for the
    // block's pixel rows `rows`.
    // The pair from `jj`: its first channel, its valid columns and their bias (the group's
    // row is padded to whole tiles).
    let pair_cols = |jj: usize| {
        let n0 = jj * TILE;
        let ncols = col_end((jj + 1).min(j1 - 1)) - n0;
        let mut bias = [0.0f32; PAIR];
        for (k, v) in bias[..ncols].iter_mut().enumerate() {
            // SAFETY: the group's bias row (ntiles x 16 floats).
            *v = unsafe { *ctx.w(io.bias + g * b.ntiles * TILE + n0 + k) };
        }
        (n0, ncols, bias)
    };
    let epilogue = |jj: usize, accs: &[f32; 4 * TILE * TILE], rows: &[(u32, u32, u32)]| {
        let (n0, ncols, bias) = pair_cols(jj);
        let ep = Epilogue {
            bias,
            acc: accs,
            at: rows,
            out: if b.output16 { std::ptr::null_mut() } else { ctx.ptr(io.out + n0) },
            out16: if b.output16 { arena16.wrapping_add(2 * io.out + n0) } else { std::ptr::null_mut() },
            pre: if io.pre != NONE { ctx.ptr(io.pre + n0) } else { std::ptr::null_mut() },
            sums: if sums.is_null() { sums } else { sums.wrapping_add(n0) },
            sums_stride: d.out.c,
            ncols,
        };
        // SAFETY: the pixels' outputs and bands' sums, this item's channels.
        unsafe { ep.dispatch(E != PORTABLE, io.pre != NONE, d.act, !sums.is_null()) };
    };
    // A pair's epilogue waits until the next pair's last tile products are under way, so
    // that the vector units work beside the tile unit: its column tile, its slot in `acc`
    // and its rows of the pixel table.
    let mut pending: Option<(usize, usize, std::ops::Range<usize>)> = None;
    macro_rules! flush {
        () => {
            if let Some((jj, slot, rows)) = pending.take() {
                // SAFETY: rows of the current chunk's table, written before its blocks.
                epilogue(jj, &acc.0[slot], unsafe { at[rows].assume_init_ref() });
            }
        };
    }
    // Epilogues run beside the next products (`amx::Queue`) in AMX convs with a SiLU (the
    // vector work that overlaps the tile products), a bf16 output and no pre-activation;
    // the others after the next pair's last products.
    #[cfg(target_arch = "x86_64")]
    let mut queue = (E == AMX && b.output16 && io.pre == NONE && d.act).then(amx::Queue::new);
    #[cfg(target_arch = "x86_64")]
    let rps = MBLOCK.div_ceil(ksteps);
    // Where the queued epilogues store the rows that are no outputs.
    #[cfg(target_arch = "x86_64")]
    let mut junk_line = Aligned([0u16; PAIR]);
    #[cfg(target_arch = "x86_64")]
    let junk = junk_line.0.as_mut_ptr();
    // Fills the queued epilogue `p` of the pair from `jj` in `slot`, for the rows `rows` of
    // the table.
    #[cfg(target_arch = "x86_64")]
    let fill = |p: &mut amx::Pending, jj: usize, slot: usize, c: &[f32; 4 * TILE * TILE], rows: &[(u32, u32, u32)]| {
        let (n0, ncols, bias) = pair_cols(jj);
        p.e.bias = bias;
        p.e.rps = rps;
        p.e.mask = if ncols >= PAIR { u32::MAX } else { (1u32 << ncols) - 1 };
        p.e.act = d.act as u32;
        p.slot = slot;
        p.at = rows.as_ptr();
        p.rows = rows.len();
        p.sums = if sums.is_null() { sums } else { sums.wrapping_add(n0) };
        p.sums_stride = d.out.c;
        p.band = rows.first().map_or(0, |a| a.2);
        for (r, &(o, _, _)) in rows.iter().enumerate() {
            p.e.srcs[r] = c[(r / TILE) * 2 * TILE * TILE + (r % TILE) * TILE..].as_ptr();
            p.e.dsts[r] = if o == SKIP { junk } else { arena16.wrapping_add(2 * io.out + n0 + o as usize) };
        }
    };
    #[cfg(target_arch = "x86_64")]
    let mut groups_run = 0usize;
    let mut m0 = p0;
    while m0 < p1 {
        // The last chunk's pending epilogue reads its rows of the table.
        flush!();
        #[cfg(target_arch = "x86_64")]
        if let Some(q) = queue.as_mut() {
            // SAFETY: the queued epilogues' pointers are this item's (the CPU has AVX512-BF16
            // with AMX).
            unsafe { q.finish_all() };
        }
        let m1 = (m0 + b.chunk).min(p1);
        // Pixel m0's image row and column and its place in its row of the tiling, then one
        // pixel at a time (no division per pixel); the band changes only where a row starts.
        let row_w = if d.flat { d.row_len } else { vw };
        let (mut y, mut x, mut rx) = (m0 / vw, m0 % vw, m0 % row_w);
        let mut band = band_of(m0) as u32;
        for q in m0..m1 {
            if x == vw {
                (y, x) = (y + 1, 0);
            }
            if rx == row_w {
                rx = 0;
                band = band_of(q) as u32;
            }
            at[q - m0].write(if x < ow {
                let pre_at = if io.pre != NONE { pre.at(y, x) } else { 0 };
                ((out.at(y, x) + g * d.cout_g) as u32, (pre_at + g * d.cout_g) as u32, band)
            } else {
                (SKIP, 0, band)
            });
            x += 1;
            rx += 1;
        }
        if !b.direct {
            // Gather (and round): row i of A is pixel m0 + i's taps, K padded with zeros,
            // and the rows up to a whole block zero.
            let rows = (m1 - m0).next_multiple_of(MBLOCK);
            for i in 0..rows {
                // SAFETY: row i of the scratch (rows <= chunk).
                let dst = unsafe { std::slice::from_raw_parts_mut(a.add(i * b.kpad), b.kpad) };
                if m0 + i >= m1 {
                    dst.fill(0);
                    continue;
                }
                let (y, x) = ((m0 + i) / vw, (m0 + i) % vw);
                let rel = ((y * d.stride + shift) * wp + x * d.stride + shift) * inp.c + g * d.kc;
                for (t, &off) in d.taps.iter().enumerate() {
                    let (at_in, dst) = (rel.wrapping_add_signed(off), &mut dst[t * d.kc..(t + 1) * d.kc]);
                    if b.input16 {
                        // SAFETY: the tap's input pixel lies in the padded input buffer (the
                        // conv's border is inside the buffer's), kc channels of group g.
                        unsafe {
                            std::ptr::copy_nonoverlapping(arena16.add(2 * io.input + at_in), dst.as_mut_ptr(), d.kc)
                        };
                        continue;
                    }
                    // SAFETY: as above, in floats.
                    let src = unsafe { std::slice::from_raw_parts(ctx.ptr(io.input + at_in), d.kc) };
                    #[cfg(target_arch = "x86_64")]
                    if E != PORTABLE {
                        // SAFETY: the CPU has AVX512-BF16 (this function's contract).
                        unsafe { amx::round_into(src, dst) };
                        continue;
                    }
                    for (o, &v) in dst.iter_mut().zip(src) {
                        *o = round(v);
                    }
                }
                dst[k_real..].fill(0);
            }
        }
        // Each block of pixels over groups of the item's column pairs, K in ranges: the
        // block's A range stays in L1 while the group's weights pass by from L2, the
        // group's results accumulate in `acc`; then the epilogue of each pair writes them.
        let mut mb = m0;
        while mb < m1 {
            // The block's row 0 of A and the distance of its rows: the direct conv's rows
            // read past the buffer's last pixel by at most a block (the memory plan's
            // slack, see `SLACK_PIXELS`); those rows' results are dropped.
            let (ab, a_stride) = if b.direct {
                (arena16.wrapping_add(2 * io.input + (mb + shift * (wp + 1)) * inp.c + g * d.kc), inp.c)
            } else {
                (a.wrapping_add((mb - m0) * b.kpad), b.kpad)
            };
            let mut jg = j0;
            while jg < j1 {
                let jg1 = (jg + 2 * GROUP_PAIRS).min(j1);
                #[cfg(target_arch = "x86_64")]
                let set = groups_run % 2;
                #[cfg(target_arch = "x86_64")]
                {
                    groups_run += 1;
                }
                for r in 0..ranges {
                    let (s0, s1) = (r * ksteps / ranges, (r + 1) * ksteps / ranges);
                    let mut j = jg;
                    while j < jg1 {
                        let pair = j + 1 < jg1;
                        let w = |jj: usize| ctx.w16(io.weights + b_index(b.kpad, b.ntiles, g, s0 * KSTEP, jj * TILE));
                        let (b0, b1) = (w(j), if pair { w(j + 1) } else { w(j) });
                        #[cfg(target_arch = "x86_64")]
                        if let Some(q) = queue.as_mut() {
                            let slot = (j - jg) / 2 + set * GROUP_PAIRS;
                            // SAFETY: as below; the queue's epilogues are this item's, the
                            // slot's own finished first.
                            unsafe {
                                q.finish_slot(slot);
                                q.call(ab, a_stride * 2, &offs[s0..s1], b0, b1, &mut acc.0[slot], r > 0);
                            }
                            if r == ranges - 1 {
                                let rows = mb - m0..(m1 - m0).min(mb - m0 + MBLOCK);
                                // SAFETY: as above; rows of the current chunk's table, written
                                // before its blocks.
                                unsafe { fill(q.push(), j, slot, &acc.0[slot], at[rows].assume_init_ref()) };
                            }
                            j += 2;
                            continue;
                        }
                        let slot = (j - jg) / 2;
                        // A pending epilogue reads its slot before these products overwrite it.
                        if pending.as_ref().is_some_and(|p| p.1 == slot) {
                            flush!();
                        }
                        let c = &mut acc.0[slot];
                        // SAFETY: the block's 32 rows at the steps' offsets (scratch, or the
                        // input and its slack), the group's tiles j and j + 1 (or j twice)
                        // from step s0 to s1.
                        unsafe {
                            match E {
                                #[cfg(target_arch = "x86_64")]
                                AMX => amx::block(ab, a_stride * 2, &offs[s0..s1], b0, b1, c, r > 0),
                                #[cfg(target_arch = "x86_64")]
                                DPBF16 => dp::block(ab, a_stride, &offs[s0..s1], b0, b1, c, r > 0),
                                _ => block_portable(ab, a_stride, &offs[s0..s1], b0, b1, c, r > 0),
                            }
                        }
                        if r == ranges - 1 {
                            // The pair's results are final: the previous pair's epilogue runs
                            // while these products do, this pair's after the next pair's.
                            flush!();
                            pending = Some((j, slot, mb - m0..(m1 - m0).min(mb - m0 + MBLOCK)));
                        }
                        j += 2;
                    }
                }
                jg = jg1;
            }
            mb += MBLOCK;
        }
        m0 = m1;
    }
    flush!();
    #[cfg(target_arch = "x86_64")]
    if let Some(q) = queue.as_mut() {
        // SAFETY: as at the chunks' start.
        unsafe { q.finish_all() };
    }
}

/// Columns an epilogue covers: a pair of result tiles, a 64-byte line of bf16 per pixel.
const PAIR: usize = 2 * TILE;

/// The f32 epilogue of one pair of result tile columns of a block: bias, pre-activation,
/// SiLU, output and channel sums, for each pixel row.
struct Epilogue<'a> {
    bias: [f32; PAIR],
    /// The pair's four result tiles: rows 0-15 in tiles 0 and 1, rows 16-31 in 2 and 3.
    acc: &'a [f32; 4 * TILE * TILE],
    /// Per pixel row: output and pre-activation offsets (from `out` and `pre`; output
    /// [`SKIP`]: not stored) and band.
    at: &'a [(u32, u32, u32)],
    /// The output in f32 or (`out16`) bf16: one of them null.
    out: *mut f32,
    out16: *mut u16,
    /// Null when not stored.
    pre: *mut f32,
    /// This pair's sums of band 0 (null: none); band `i` at `sums_stride * i`.
    sums: *mut f32,
    sums_stride: usize,
    /// Valid columns (32 unless the group's last tiles are partial or one).
    ncols: usize,
}

impl Epilogue<'_> {
    /// Row `r`'s two tile rows of results.
    #[inline(always)]
    fn acc_row(&self, r: usize) -> [&[f32; TILE]; 2] {
        let at = |t: usize| (((r / TILE) * 2 + t) * TILE + r % TILE) * TILE;
        [0, 1].map(|t| self.acc[at(t)..at(t) + TILE].try_into().unwrap())
    }

    /// # Safety
    /// `out` (and `pre`, `sums` when not null) valid at every offset of `at` for `ncols`.
    #[inline(always)]
    unsafe fn run<const PRE: bool, const ACT: bool, const SUMS: bool>(&self) {
        let n = self.ncols;
        let mut colsum = [0.0f32; PAIR];
        let mut band = self.at.first().map_or(0, |a| a.2);
        for (r, &(o, po, bi)) in self.at.iter().enumerate() {
            if o == SKIP {
                continue;
            }
            let acc = self.acc_row(r);
            let mut v = [0.0f32; PAIR];
            for k in 0..PAIR {
                v[k] = acc[k / TILE][k % TILE] + self.bias[k];
            }
            // SAFETY: as this function's.
            unsafe {
                if PRE {
                    store(self.pre.add(po as usize), &v, n);
                }
                if ACT {
                    for e in &mut v {
                        *e = silu(*e);
                    }
                }
                // What was stored: a bf16 output's sums add the rounded values (those its
                // readers see).
                let stored = if self.out16.is_null() {
                    store(self.out.add(o as usize), &v, n);
                    v
                } else {
                    store16(self.out16.add(o as usize), &v, n)
                };
                if SUMS {
                    if bi != band {
                        add_sums(self.sums.add(band as usize * self.sums_stride), &colsum, n);
                        colsum = [0.0; PAIR];
                        band = bi;
                    }
                    for k in 0..PAIR {
                        colsum[k] += stored[k];
                    }
                }
            }
        }
        if SUMS {
            // SAFETY: as this function's.
            unsafe { add_sums(self.sums.add(band as usize * self.sums_stride), &colsum, n) };
        }
    }

    /// [`Epilogue::run`] specialized for what the conv stores; `vector`: in AVX-512.
    ///
    /// # Safety
    /// As [`Epilogue::run`]; with `vector`, called from a function enabling AVX512-BF16.
    #[inline(always)]
    unsafe fn dispatch(&self, vector: bool, pre: bool, act: bool, sums: bool) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = vector;
        macro_rules! run {
            ($p:literal, $a:literal, $s:literal) => {{
                #[cfg(target_arch = "x86_64")]
                if vector {
                    // SAFETY: as this function's; `vector` runs inside a function enabling
                    // AVX512-BF16 (see `item`).
                    return unsafe { self.run_avx512::<$p, $a, $s>() };
                }
                // SAFETY: as this function's.
                unsafe { self.run::<$p, $a, $s>() }
            }};
        }
        match (pre, act, sums) {
            (true, true, true) => run!(true, true, true),
            (true, false, true) => run!(true, false, true),
            (true, false, false) => run!(true, false, false),
            (true, true, false) => run!(true, true, false),
            (false, true, true) => run!(false, true, true),
            (false, true, false) => run!(false, true, false),
            (false, false, true) => run!(false, false, true),
            (false, false, false) => run!(false, false, false),
        }
    }

    /// [`Epilogue::run`] in AVX-512: masked stores for partial tiles, SiLU's division as a
    /// refined reciprocal, bf16 rounding by `vcvtne2ps2bf16` (a pair's row in one store).
    ///
    /// # Safety
    /// As [`Epilogue::run`]; the CPU has AVX512-BF16.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn run_avx512<const PRE: bool, const ACT: bool, const SUMS: bool>(&self) {
        use std::arch::x86_64::*;
        let m32 = if self.ncols >= PAIR { u32::MAX } else { (1u32 << self.ncols) - 1 };
        let m = [m32 as u16, (m32 >> 16) as u16];
        // SAFETY: as this function's; `acc` rows are 64-byte aligned (the tiles' store).
        unsafe {
            let ld = |p: *const f32, k: usize| _mm512_maskz_loadu_ps(m[k], p.add(k * TILE));
            let st = |p: *mut f32, v: [__m512; 2]| {
                for k in 0..2 {
                    _mm512_mask_storeu_ps(p.add(k * TILE), m[k], v[k]);
                }
            };
            let bias = [0, 1].map(|k| _mm512_loadu_ps(self.bias.as_ptr().add(k * TILE)));
            let mut colsum = [_mm512_setzero_ps(); 2];
            let mut band = self.at.first().map_or(0, |a| a.2);
            let flush = |band: u32, colsum: [__m512; 2]| {
                let s = self.sums.add(band as usize * self.sums_stride);
                st(s, [0, 1].map(|k| _mm512_add_ps(ld(s, k), colsum[k])));
            };
            for (r, &(o, po, bi)) in self.at.iter().enumerate() {
                if o == SKIP {
                    continue;
                }
                let acc = self.acc_row(r);
                let mut v = [0, 1].map(|k| _mm512_add_ps(_mm512_load_ps(acc[k].as_ptr()), bias[k]));
                if PRE {
                    st(self.pre.add(po as usize), v);
                }
                if ACT {
                    // A bf16 output is rounded next: the fast SiLU's error vanishes in it.
                    v = if self.out16.is_null() { v.map(|x| amx::silu16(x)) } else { v.map(|x| amx::silu16_bf16(x)) };
                }
                // What was stored: a bf16 output's sums add the rounded values.
                let stored = if self.out16.is_null() {
                    st(self.out.add(o as usize), v);
                    v
                } else {
                    let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(v[1], v[0]));
                    _mm512_mask_storeu_epi16(self.out16.add(o as usize) as *mut i16, m32, h);
                    amx::widen32(h)
                };
                if SUMS {
                    if bi != band {
                        flush(band, colsum);
                        colsum = [_mm512_setzero_ps(); 2];
                        band = bi;
                    }
                    colsum = [0, 1].map(|k| _mm512_add_ps(colsum[k], stored[k]));
                }
            }
            if SUMS {
                flush(band, colsum);
            }
        }
    }
}

/// Stores the first `n` of a pair's 32 values.
///
/// # Safety
/// `p` is valid for `n` floats.
#[inline(always)]
unsafe fn store(p: *mut f32, v: &[f32; PAIR], n: usize) {
    // SAFETY: as this function's.
    unsafe {
        if n == PAIR {
            (p as *mut [f32; PAIR]).write_unaligned(*v);
        } else {
            std::ptr::copy_nonoverlapping(v.as_ptr(), p, n);
        }
    }
}

/// Stores the first `n` of a pair's 32 values rounded to bf16; returns the rounded values.
///
/// # Safety
/// `p` is valid for `n` values.
#[inline(always)]
unsafe fn store16(p: *mut u16, v: &[f32; PAIR], n: usize) -> [f32; PAIR] {
    let h: [u16; PAIR] = std::array::from_fn(|k| round(v[k]));
    // SAFETY: as this function's.
    unsafe {
        if n == PAIR {
            (p as *mut [u16; PAIR]).write_unaligned(h);
        } else {
            std::ptr::copy_nonoverlapping(h.as_ptr(), p, n);
        }
    }
    h.map(widen)
}

/// Adds the first `n` column sums to the band's row at `s`.
///
/// # Safety
/// `s` is valid for `n` floats.
#[inline(always)]
unsafe fn add_sums(s: *mut f32, colsum: &[f32; PAIR], n: usize) {
    for k in 0..n {
        // SAFETY: as this function's.
        unsafe { *s.add(k) += colsum[k] };
    }
}

/// The block product without AMX, and the twin the AMX kernel is tested against: the four
/// 16 x 16 tiles of `C (+)= A B` over the K steps `offs`, A two row tiles of `a_stride`
/// values apart rows, step s's 32 values of row 0 at `a + offs[s]`; B tiles `b0` and `b1`
/// as packed ([`b_index`]) from the first step on; per K pair the two products are added,
/// then accumulated in f32, as `tdpbf16ps` does. `accumulate`: add to `c`, else overwrite.
///
/// # Safety
/// `a` holds 32 rows of the steps' values, `a_stride` apart; `b0` and `b1` hold
/// `offs.len()` tiles of 512 values each.
#[inline(always)]
pub unsafe fn block_portable(
    a: *const u16,
    a_stride: usize,
    offs: &[usize],
    b0: *const u16,
    b1: *const u16,
    c: &mut [f32; 4 * TILE * TILE],
    accumulate: bool,
) {
    if !accumulate {
        c.fill(0.0);
    }
    for (s, &off) in offs.iter().enumerate() {
        for (t, c) in c.chunks_exact_mut(TILE * TILE).enumerate() {
            let (mi, bt) = (t / 2, if t % 2 == 0 { b0 } else { b1 });
            // SAFETY: tile s of B (caller).
            let bs = unsafe { std::slice::from_raw_parts(bt.add(s * 2 * TILE * TILE), 2 * TILE * TILE) };
            // Each K pair's 16 column weights, widened once for all rows.
            let (mut lo, mut hi) = ([[0.0f32; TILE]; TILE], [[0.0f32; TILE]; TILE]);
            for kp in 0..TILE {
                for n in 0..TILE {
                    // The pair as one 32-bit word: each half widens by a shift or a mask.
                    let w = bs[kp * 2 * TILE + 2 * n] as u32 | (bs[kp * 2 * TILE + 2 * n + 1] as u32) << 16;
                    lo[kp][n] = f32::from_bits(w << 16);
                    hi[kp][n] = f32::from_bits(w & 0xffff_0000);
                }
            }
            // Four rows at a time: four independent chains of additions.
            for r0 in (0..TILE).step_by(4) {
                // SAFETY: rows mi * 16 + r0.. of A, step s (caller).
                let ar: [&[u16]; 4] = std::array::from_fn(|i| unsafe {
                    std::slice::from_raw_parts(a.add((mi * TILE + r0 + i) * a_stride + off), KSTEP)
                });
                let mut acc = [[0.0f32; TILE]; 4];
                for i in 0..4 {
                    acc[i].copy_from_slice(&c[(r0 + i) * TILE..][..TILE]);
                }
                for kp in 0..TILE {
                    for i in 0..4 {
                        let (x0, x1) = (widen(ar[i][2 * kp]), widen(ar[i][2 * kp + 1]));
                        for n in 0..TILE {
                            acc[i][n] += x0 * lo[kp][n] + x1 * hi[kp][n];
                        }
                    }
                }
                for i in 0..4 {
                    c[(r0 + i) * TILE..][..TILE].copy_from_slice(&acc[i]);
                }
            }
        }
    }
}

/// The output channels per group padded to whole tiles equal the f32 panels' (`NR`).
const _: () = assert!(TILE == NR);

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx {
    use super::*;
    use std::arch::asm;

    /// Palette 1; tiles 0-7 all 16 rows of 64 bytes: 0-3 the f32 results, 4-5 A, 6-7 B.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    static CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        TileConfig(c)
    };

    /// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`) once the CPU reports AMX-TILE and AMX-BF16 and the OS enables
    /// the tile state in XCR0.
    pub(super) fn request() -> bool {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        // Bit 27 of leaf 1 ECX: XGETBV may run.
        let osxsave = std::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
        if !(amx_bf16 && amx_tile && osxsave && std::is_x86_feature_detected!("avx512bf16")) {
            return false;
        }
        let xcr0: u64;
        // SAFETY: XGETBV(0) with OSXSAVE set reads XCR0 only.
        unsafe {
            let (lo, hi): (u32, u32);
            asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
            xcr0 = (hi as u64) << 32 | lo as u64;
        }
        if xcr0 & (3 << 17) != 3 << 17 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a syscall that only changes this process's permitted state components.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// Runs `iters` x 4 independent `tdpbf16ps` (16 x 16 x 32 products each) on tiles of
    /// varied bf16 values in [-1, 1), like the data a conv multiplies (zero tiles can run
    /// faster): the peak of [`crate::peak`].
    ///
    /// # Safety
    /// AMX granted to this process.
    pub(crate) unsafe fn peak_loop(iters: usize) {
        let mut data = Aligned([0u16; 512]);
        let mut st = 0x2545_f491_4f6c_dd1du64;
        for v in data.0.iter_mut() {
            st = st.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            *v = round(((st >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0);
        }

        // SAFETY: loads from a 1 KiB buffer (16 rows of 64 bytes); tiles clobbered and
        // released before the block ends.
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tileloadd tmm4, [{z} + {s}]",
                "tileloadd tmm5, [{z} + {s}]",
                "tileloadd tmm6, [{z} + {s}]",
                "tileloadd tmm7, [{z} + {s}]",
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {k}",
                "jnz 2b",
                "tilerelease",
                cfg = in(reg) &CONFIG,
                z = in(reg) data.0.as_ptr(),
                s = in(reg) 64usize,
                k = inout(reg) iters.max(1) => _,
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack),
            );
        }
    }

    /// [`super::silu`] of 16 values for a result rounded to bf16 next: within 7e-5 of the
    /// value (relative), a thirtieth of bf16's half unit, in 13 operations: `exp(-x)` as
    /// `2^n 2^f` with `2^f` a polynomial on `[-1/2, 1/2]` and `vscalefps` (no clamping: it
    /// saturates to 0 and infinity), `1 / (1 + e)` as the 14-bit reciprocal estimate, zero
    /// where it would be denormal (`1 + e` above 2^126, x below -87.3, where the exact value
    /// is below 1e-36): no operation sees or makes a denormal, each of which costs a
    /// microcode assist.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu16_bf16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let c = |i: usize| _mm512_set1_ps(SILU_BF16.0[i]);
        let t = _mm512_mul_ps(x, c(0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let f = _mm512_sub_ps(t, n);
        let mut p = c(1);
        for k in 2..7 {
            p = _mm512_fmadd_ps(p, f, c(k));
        }
        let d = _mm512_add_ps(_mm512_scalef_ps(p, n), c(6));
        let normal = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(d, c(7));
        _mm512_mul_ps(x, _mm512_maskz_rcp14_ps(normal, d))
    }

    /// The constants of [`silu16_bf16`], which [`block_ep`] repeats instruction for
    /// instruction: `-log2(e)`; 2^f as the Taylor series of e^(f ln 2) to the fifth power,
    /// highest power first; 1; the least `1 + e^-x` whose reciprocal is denormal (2^126).
    #[repr(C, align(32))]
    pub(super) struct SiluConsts(pub [f32; 8]);

    pub(super) static SILU_BF16: SiluConsts = SiluConsts([
        -std::f32::consts::LOG2_E,
        1.333_355_8e-3,
        9.618_129e-3,
        5.550_411e-2,
        0.240_226_5,
        std::f32::consts::LN_2,
        1.0,
        f32::from_bits(253 << 23),
    ]);

    /// [`super::silu`] of 16 values, the division as a reciprocal estimate refined by one
    /// Newton step (within 2 ulp of the division). `-x` is clamped to [-87, 86], so that
    /// `1 / (1 + e^-x)` stays a normal number (a denormal costs a microcode assist in every
    /// operation it enters); below x = -86 the result is x / (1 + e^86), at most 5e-38 |x| (the
    /// exact value is smaller still).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        const ROUND: f32 = 12_582_912.0;
        let c = _mm512_set1_ps;
        let t = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), c(-87.0)), c(86.0));
        let z = _mm512_fmadd_ps(t, c(std::f32::consts::LOG2_E), c(ROUND));
        let n = _mm512_sub_ps(z, c(ROUND));
        let r = _mm512_fnmadd_ps(n, c(1.428_606_8e-6), _mm512_fnmadd_ps(n, c(0.693_145_75), t));
        let mut p = c(0.001_394_3);
        for k in [0.008_333_8, 0.041_666_4, 0.166_666_67, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, c(k));
        }
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_sub_epi32(
            _mm512_castps_si512(z),
            _mm512_set1_epi32((ROUND.to_bits() - 127) as i32),
        )));
        let d = _mm512_fmadd_ps(p, two_n, c(1.0));
        let y = _mm512_rcp14_ps(d);
        let y = _mm512_fmadd_ps(y, _mm512_fnmadd_ps(d, y, c(1.0)), y);
        _mm512_mul_ps(x, y)
    }

    /// The 32 bf16 values of `h` as f32 (exact): the first 16 and the last 16.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen32(h: std::arch::x86_64::__m512i) -> [std::arch::x86_64::__m512; 2] {
        use std::arch::x86_64::*;
        let widen = |q: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(q)));
        [widen(_mm512_castsi512_si256(h)), widen(_mm512_extracti64x4_epi64::<1>(h))]
    }

    /// `dst[i] = round(src[i])`, 32 at a time with `vcvtne2ps2bf16` (which also rounds to
    /// nearest even; it flushes denormal inputs to zero).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `dst` as long as `src`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_into(src: &[f32], dst: &mut [u16]) {
        use std::arch::x86_64::*;
        let n = src.len() / 32 * 32;
        for i in (0..n).step_by(32) {
            // SAFETY: 32 values at i of both slices (i + 32 <= n <= len).
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(i));
                let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
                let r: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut __m512i, r);
            }
        }
        for i in n..src.len() {
            dst[i] = super::round(src[i]);
        }
    }

    /// [`super::scale_add_act_piece`] in AVX-512, 32 channels at a time (masked at a
    /// pixel's end), the SiLU by [`silu16_bf16`] (its error vanishes in the rounding that
    /// follows), the activation rounded by `vcvtne2ps2bf16`. Asks for its inputs' lines
    /// 2 KiB ahead: its SiLU keeps the core too busy for the hardware's streams to run far
    /// enough ahead.
    ///
    /// # Safety
    /// As [`super::scale_add_act_piece`]; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn scale_add_act(n: usize, c: usize, ptrs: super::SaaPtrs) {
        use std::arch::x86_64::*;
        const AHEAD: usize = 512;
        let super::SaaPtrs { r, r16, gate, sc, y, act } = ptrs;
        let hint = |p: *const f32| _mm_prefetch::<{ _MM_HINT_T0 }>(p as *const i8);
        let mut p = 0;
        // SAFETY: as this function's: pixel p's c values of each buffer (masked past c).
        unsafe {
            while p < n {
                let mut ch = 0;
                while ch < c {
                    let left = c - ch;
                    let m32 = if left >= 32 { u32::MAX } else { (1u32 << left) - 1 };
                    let m = [m32 as u16, (m32 >> 16) as u16];
                    let i = p + ch;
                    let mut v = if r16.is_null() {
                        hint(r.wrapping_add(i + AHEAD));
                        hint(r.wrapping_add(i + AHEAD + 16));
                        [0, 1].map(|k| _mm512_maskz_loadu_ps(m[k], r.add(i + 16 * k)))
                    } else {
                        hint(r16.wrapping_add(i + 2 * AHEAD) as *const f32);
                        let h = _mm512_maskz_loadu_epi16(m32, r16.add(i) as *const i16);
                        widen32(h)
                    };
                    if !sc.is_null() {
                        hint(sc.wrapping_add(i + AHEAD));
                        hint(sc.wrapping_add(i + AHEAD + 16));
                    }
                    if !gate.is_null() {
                        v = [0, 1].map(|k| _mm512_mul_ps(v[k], _mm512_maskz_loadu_ps(m[k], gate.add(ch + 16 * k))));
                    }
                    if !sc.is_null() {
                        v = [0, 1].map(|k| _mm512_add_ps(v[k], _mm512_maskz_loadu_ps(m[k], sc.add(i + 16 * k))));
                    }
                    if !y.is_null() {
                        for k in 0..2 {
                            _mm512_mask_storeu_ps(y.add(i + 16 * k), m[k], v[k]);
                        }
                    }
                    let a = v.map(|x| silu16_bf16(x));
                    let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(a[1], a[0]));
                    _mm512_mask_storeu_epi16(act.add(i) as *mut i16, m32, h);
                    ch += 32;
                }
                p += c;
            }
        }
    }

    /// [`item`] with AVX-512 for the gather, rounding and epilogue.
    ///
    /// # Safety
    /// As [`super::conv_item`], AMX granted.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")]
    pub(super) unsafe fn item(ctx: &Ctx, d: &ConvDesc, b: &Bf16Desc, io: &ConvIo, it: usize, a: *mut u16) {
        // SAFETY: as this function's; the tiles are configured for the item's blocks and
        // released when it ends (no other code in between uses them).
        unsafe {
            configure();
            super::item::<AMX>(ctx, d, b, io, it, a);
            release();
        }
    }

    /// The asm of the four result tiles loaded from, or stored to, the slot at register
    /// `$c` (rows of 64 bytes, tile after tile).
    #[rustfmt::skip]
    macro_rules! results {
        (tileloadd, $c:literal) => {
            concat!(
                "tileloadd tmm0, [", $c, " + {sb}]\n",
                "tileloadd tmm1, [", $c, " + {sb} + 1024]\n",
                "tileloadd tmm2, [", $c, " + {sb} + 2048]\n",
                "tileloadd tmm3, [", $c, " + {sb} + 3072]",
            )
        };
        (tilestored, $c:literal) => {
            concat!(
                "tilestored [", $c, " + {sb}], tmm0\n",
                "tilestored [", $c, " + {sb} + 1024], tmm1\n",
                "tilestored [", $c, " + {sb} + 2048], tmm2\n",
                "tilestored [", $c, " + {sb} + 3072], tmm3",
            )
        };
    }

    /// The asm of one K step: A's two row tiles at the step's offset from `{a0}` and `{a1}`,
    /// the pair's B tiles at `{b0}` and `{b1}`, and the four products.
    macro_rules! k_step {
        () => {
            concat!(
                "mov {t}, [{offs}]\n",
                "lea {t}, [{a0} + 2 * {t}]\n",
                "tileloadd tmm4, [{t} + {sa}]\n",
                "tileloadd tmm6, [{b0} + {sb}]\n",
                "mov {t}, [{offs}]\n",
                "lea {t}, [{a1} + 2 * {t}]\n",
                "tileloadd tmm5, [{t} + {sa}]\n",
                "tileloadd tmm7, [{b1} + {sb}]\n",
                "tdpbf16ps tmm0, tmm4, tmm6\n",
                "tdpbf16ps tmm1, tmm4, tmm7\n",
                "tdpbf16ps tmm2, tmm5, tmm6\n",
                "tdpbf16ps tmm3, tmm5, tmm7",
            )
        };
    }

    /// Loads the tile configuration of [`block`] on this thread.
    ///
    /// # Safety
    /// AMX granted to this process; [`release`] before the thread does anything else.
    #[inline(always)]
    pub(super) unsafe fn configure() {
        // SAFETY: reads the 64-byte configuration; the tiles it zeroes are clobbered.
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                cfg = in(reg) &CONFIG,
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack, readonly),
            );
        }
    }

    /// Returns the tile state to its initial state, so that context switches and signal
    /// frames stay small.
    ///
    /// # Safety
    /// AMX granted to this process.
    #[inline(always)]
    pub(super) unsafe fn release() {
        // SAFETY: only the tile state changes.
        unsafe {
            asm!(
                "tilerelease",
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack, nomem),
            );
        }
    }

    /// [`block_portable`] on AMX, `a_stride` in bytes. A's rows and B should be 64-byte
    /// aligned: a tile row split over two cache lines loads at a third of the rate.
    ///
    /// # Safety
    /// As [`block_portable`]; `offs` not empty; the tiles configured ([`configure`]) on this
    /// thread.
    #[inline(always)]
    pub(super) unsafe fn block(
        a: *const u16,
        a_stride: usize,
        offs: &[usize],
        b0: *const u16,
        b1: *const u16,
        c: &mut [f32; 4 * TILE * TILE],
        accumulate: bool,
    ) {
        // SAFETY: loads stay inside A's 32 rows at the steps' offsets, B's tiles and c's
        // 4 KiB, stores inside c (caller); the tile registers are clobbered.
        unsafe {
            asm!(
                "test {acc}, {acc}",
                "jz 3f",
                results!(tileloadd, "{c}"),
                "jmp 2f",
                "3:",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                k_step!(),
                "add {offs}, 8",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {k}",
                "jnz 2b",
                results!(tilestored, "{c}"),
                a0 = in(reg) a,
                a1 = in(reg) (a as *const u8).add(TILE * a_stride),
                sa = in(reg) a_stride,
                offs = inout(reg) offs.as_ptr() => _,
                t = out(reg) _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b1 => _,
                sb = in(reg) 64usize,
                k = inout(reg) offs.len() => _,
                c = in(reg) c.as_mut_ptr(),
                acc = in(reg) accumulate as usize,
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack),
            );
        }
    }

    /// What [`block_ep`] reads besides its products' operands: the result slot, and the
    /// epilogue rows it runs between the tile products (bias, SiLU when `act`, rounding to
    /// bf16, one masked store of 32 values per row), up to `rps` rows per K step from `row`
    /// until `end`.
    #[repr(C, align(64))]
    pub(super) struct EpRows {
        /// Per row of the pending block: its first 16 results (the other 16 a tile on).
        pub srcs: [*const f32; MBLOCK],
        /// Per row: where its 32 bf16 values go (a scratch line for a row that is no output).
        pub dsts: [*mut u16; MBLOCK],
        pub bias: [f32; PAIR],
        pub row: usize,
        pub end: usize,
        pub rps: usize,
        /// The valid columns as a mask of the 32.
        pub mask: u32,
        pub act: u32,
        /// This call's result slot, and whether the products add to it.
        pub c: *mut f32,
        pub accumulate: usize,
    }

    /// An epilogue waiting for (or in the middle of) its rows: a pair's results in `slot`,
    /// the block's rows of the chunk's pixel table, its channel sums so far.
    pub(super) struct Pending {
        pub e: EpRows,
        pub slot: usize,
        pub at: *const (u32, u32, u32),
        pub rows: usize,
        /// The pair's sums of band 0 (null: none), band `i` at `sums_stride * i`.
        pub sums: *mut f32,
        pub sums_stride: usize,
        pub band: u32,
        pub colsum: [f32; PAIR],
    }

    impl Pending {
        const EMPTY: Pending = Pending {
            e: EpRows {
                srcs: [std::ptr::null(); MBLOCK],
                dsts: [std::ptr::null_mut(); MBLOCK],
                bias: [0.0; PAIR],
                row: 0,
                end: 0,
                rps: 0,
                mask: 0,
                act: 0,
                c: std::ptr::null_mut(),
                accumulate: 0,
            },
            slot: 0,
            at: std::ptr::null(),
            rows: 0,
            sums: std::ptr::null_mut(),
            sums_stride: 0,
            band: 0,
            colsum: [0.0; PAIR],
        };
    }

    /// Most epilogues waiting at once: a group's, and the next group's first one.
    const QUEUE: usize = GROUP_PAIRS + 1;

    /// The epilogues of an item's blocks in the order their products finished; each product
    /// call runs rows of the oldest ([`block_ep`]), and an epilogue whose slot the products
    /// are about to overwrite, or whose rows of the pixel table are about to change,
    /// finishes first, in order.
    pub(super) struct Queue {
        q: [Pending; QUEUE],
        head: usize,
        len: usize,
    }

    impl Queue {
        pub(super) fn new() -> Queue {
            Queue { q: [const { Pending::EMPTY }; QUEUE], head: 0, len: 0 }
        }

        /// Queues an epilogue (finishing the oldest first when full): the entry to fill in
        /// place (its rows from 0, its sums from zero; the rest as the last one left it).
        ///
        /// # Safety
        /// The entry's pointers, once filled, valid until it finishes; the CPU has
        /// AVX512-BF16.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(super) unsafe fn push(&mut self) -> &mut Pending {
            if self.len == QUEUE {
                // SAFETY: as this function's.
                unsafe { self.finish_head() };
            }
            self.len += 1;
            let p = &mut self.q[(self.head + self.len - 1) % QUEUE];
            p.e.row = 0;
            p.colsum = [0.0; PAIR];
            p
        }

        /// Finishes the queued epilogues up to the last one reading `slot`.
        ///
        /// # Safety
        /// As [`Queue::push`].
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(super) unsafe fn finish_slot(&mut self, slot: usize) {
            let last = (0..self.len).rev().find(|&i| self.q[(self.head + i) % QUEUE].slot == slot);
            if let Some(i) = last {
                for _ in 0..=i {
                    // SAFETY: as this function's.
                    unsafe { self.finish_head() };
                }
            }
        }

        /// Finishes every queued epilogue.
        ///
        /// # Safety
        /// As [`Queue::push`].
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(super) unsafe fn finish_all(&mut self) {
            while self.len > 0 {
                // SAFETY: as this function's.
                unsafe { self.finish_head() };
            }
        }

        /// The oldest epilogue's remaining rows, then its last sums; dequeued.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        unsafe fn finish_head(&mut self) {
            // SAFETY: len > 0 (callers): the head's pointers are valid.
            unsafe {
                let p = &mut self.q[self.head];
                let r0 = p.e.row;
                for r in r0..p.rows {
                    ep_row(&p.e, r);
                }
                p.e.row = p.rows;
                sums_rows(p, r0, p.rows);
            }
            self.head = (self.head + 1) % QUEUE;
            self.len -= 1;
        }

        /// One product call of [`block`] into slot `c`, running rows of the oldest epilogue
        /// beside it ([`block_ep`]) when one waits.
        ///
        /// # Safety
        /// As [`block`] and [`Queue::push`]; no queued epilogue reads `c`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        #[allow(clippy::too_many_arguments, reason = "block's arguments")]
        pub(super) unsafe fn call(
            &mut self,
            a: *const u16,
            a_stride: usize,
            offs: &[usize],
            b0: *const u16,
            b1: *const u16,
            c: &mut [f32; 4 * TILE * TILE],
            accumulate: bool,
        ) {
            if self.len == 0 {
                // SAFETY: as this function's.
                return unsafe { block(a, a_stride, offs, b0, b1, c, accumulate) };
            }
            let p = &mut self.q[self.head];
            let r0 = p.e.row;
            p.e.end = p.rows.min(r0 + p.e.rps * offs.len());
            p.e.c = c.as_mut_ptr();
            p.e.accumulate = accumulate as usize;
            // SAFETY: as this function's; the epilogue's rows are the head's.
            unsafe {
                block_ep(a, a_stride, offs, b0, b1, &mut p.e);
                sums_rows(p, r0, p.e.row);
            }
            if p.e.row == p.rows {
                self.head = (self.head + 1) % QUEUE;
                self.len -= 1;
            }
        }
    }

    /// Adds rows `r0..r1` of `p`'s stored outputs (as rounded) to its column sums, band by
    /// band in row order as [`Epilogue::run_avx512`] does; after the last row, the last
    /// band's sums.
    ///
    /// # Safety
    /// `p`'s rows up to `r1` stored; its pointers valid; the CPU has AVX-512.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn sums_rows(p: &mut Pending, r0: usize, r1: usize) {
        use std::arch::x86_64::*;
        if p.sums.is_null() {
            return;
        }
        // SAFETY: as this function's.
        unsafe {
            let m = [p.e.mask as u16, (p.e.mask >> 16) as u16];
            let flush = |band: u32, colsum: [__m512; 2]| {
                let s = p.sums.add(band as usize * p.sums_stride);
                for k in 0..2 {
                    let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m[k], s.add(k * TILE)), colsum[k]);
                    _mm512_mask_storeu_ps(s.add(k * TILE), m[k], v);
                }
            };
            let mut colsum = [0, 1].map(|k| _mm512_loadu_ps(p.colsum.as_ptr().add(k * TILE)));
            let mut band = p.band;
            for r in r0..r1 {
                let (o, _, bi) = *p.at.add(r);
                if o == SKIP {
                    continue;
                }
                let h = _mm512_maskz_loadu_epi16(p.e.mask, p.e.dsts[r] as *const i16);
                let stored = widen32(h);
                if bi != band {
                    flush(band, colsum);
                    colsum = [_mm512_setzero_ps(); 2];
                    band = bi;
                }
                colsum = [0, 1].map(|k| _mm512_add_ps(colsum[k], stored[k]));
            }
            if r1 == p.rows {
                flush(band, colsum);
            }
            for k in 0..2 {
                _mm512_storeu_ps(p.colsum.as_mut_ptr().add(k * TILE), colsum[k]);
            }
            p.band = band;
        }
    }

    /// Row `r` of the epilogue of `e` as [`block_ep`] runs it, in intrinsics: bias, SiLU
    /// when `act` ([`silu16_bf16`]), rounded to bf16, stored under `mask`.
    ///
    /// # Safety
    /// `e`'s row `r` pointers valid (a source of two tiles' rows, a destination of 32
    /// values under the mask); the CPU has AVX512-BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn ep_row(e: &EpRows, r: usize) {
        use std::arch::x86_64::*;
        // SAFETY: as this function's.
        unsafe {
            let src = e.srcs[r];
            let mut v = [0, 1].map(|k| {
                _mm512_add_ps(_mm512_loadu_ps(e.bias.as_ptr().add(k * TILE)), _mm512_load_ps(src.add(k * TILE * TILE)))
            });
            if e.act != 0 {
                v = v.map(|x| silu16_bf16(x));
            }
            let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(v[1], v[0]));
            _mm512_mask_storeu_epi16(e.dsts[r] as *mut i16, e.mask, h);
        }
    }

    /// [`block`] with the rows `e.row..e.end` of a pending epilogue run between its tile
    /// products (`e.rps` rows after each K step's), so that the vector units work while the
    /// tile unit multiplies; each row as [`ep_row`] computes it. `e.row` ends past the
    /// last row run; the result slot is `e.c`.
    ///
    /// # Safety
    /// As [`block`], with `c` and `accumulate` in `e`; `e`'s rows as [`ep_row`]'s.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn block_ep(
        a: *const u16,
        a_stride: usize,
        offs: &[usize],
        b0: *const u16,
        b1: *const u16,
        e: &mut EpRows,
    ) {
        use std::mem::offset_of;
        // SAFETY: as `block`'s for the products; the epilogue reads rows of `e.srcs` and
        // writes 64 bytes under the mask at each of `e.dsts` (caller); zmm0-7, zmm16-25 and
        // k1-k3 are clobbered.
        unsafe {
            asm!(
                "lea {t}, [rip + {cst}]",
                "vbroadcastss zmm18, dword ptr [{t}]",
                "vbroadcastss zmm19, dword ptr [{t} + 4]",
                "vbroadcastss zmm20, dword ptr [{t} + 8]",
                "vbroadcastss zmm21, dword ptr [{t} + 12]",
                "vbroadcastss zmm22, dword ptr [{t} + 16]",
                "vbroadcastss zmm23, dword ptr [{t} + 20]",
                "vbroadcastss zmm24, dword ptr [{t} + 24]",
                "vbroadcastss zmm25, dword ptr [{t} + 28]",
                "vmovups zmm16, zmmword ptr [{e} + {bias}]",
                "vmovups zmm17, zmmword ptr [{e} + {bias} + 64]",
                "kmovd k2, dword ptr [{e} + {mask}]",
                "mov {er}, qword ptr [{e} + {row}]",
                "mov {t}, qword ptr [{e} + {c}]",
                "cmp qword ptr [{e} + {accf}], 0",
                "je 3f",
                results!(tileloadd, "{t}"),
                "jmp 2f",
                "3:",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                k_step!(),
                "mov {cnt}, qword ptr [{e} + {rps}]",
                "4:",
                "cmp {er}, qword ptr [{e} + {end}]",
                "jae 6f",
                "mov {t}, qword ptr [{e} + {er} * 8]",
                "vaddps zmm0, zmm16, zmmword ptr [{t}]",
                "vaddps zmm1, zmm17, zmmword ptr [{t} + 1024]",
                "cmp dword ptr [{e} + {act}], 0",
                "je 5f",
                "vmulps zmm2, zmm0, zmm18",
                "vmulps zmm5, zmm1, zmm18",
                "vrndscaleps zmm3, zmm2, 8",
                "vrndscaleps zmm6, zmm5, 8",
                "vsubps zmm2, zmm2, zmm3",
                "vsubps zmm5, zmm5, zmm6",
                "vmovaps zmm4, zmm19",
                "vmovaps zmm7, zmm19",
                "vfmadd213ps zmm4, zmm2, zmm20",
                "vfmadd213ps zmm7, zmm5, zmm20",
                "vfmadd213ps zmm4, zmm2, zmm21",
                "vfmadd213ps zmm7, zmm5, zmm21",
                "vfmadd213ps zmm4, zmm2, zmm22",
                "vfmadd213ps zmm7, zmm5, zmm22",
                "vfmadd213ps zmm4, zmm2, zmm23",
                "vfmadd213ps zmm7, zmm5, zmm23",
                "vfmadd213ps zmm4, zmm2, zmm24",
                "vfmadd213ps zmm7, zmm5, zmm24",
                "vscalefps zmm4, zmm4, zmm3",
                "vscalefps zmm7, zmm7, zmm6",
                "vaddps zmm4, zmm4, zmm24",
                "vaddps zmm7, zmm7, zmm24",
                "vcmpps k1, zmm4, zmm25, 17",
                "vcmpps k3, zmm7, zmm25, 17",
                "vrcp14ps zmm4 {{k1}} {{z}}, zmm4",
                "vrcp14ps zmm7 {{k3}} {{z}}, zmm7",
                "vmulps zmm0, zmm0, zmm4",
                "vmulps zmm1, zmm1, zmm7",
                "5:",
                "vcvtne2ps2bf16 zmm0, zmm1, zmm0",
                "mov {t}, qword ptr [{e} + {er} * 8 + {dsts}]",
                "vmovdqu16 zmmword ptr [{t}] {{k2}}, zmm0",
                "inc {er}",
                "dec {cnt}",
                "jnz 4b",
                "6:",
                "add {offs}, 8",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {k}",
                "jnz 2b",
                "mov {t}, qword ptr [{e} + {c}]",
                results!(tilestored, "{t}"),
                "mov qword ptr [{e} + {row}], {er}",
                a0 = in(reg) a,
                a1 = in(reg) (a as *const u8).add(TILE * a_stride),
                sa = in(reg) a_stride,
                offs = inout(reg) offs.as_ptr() => _,
                t = out(reg) _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b1 => _,
                sb = in(reg) 64usize,
                k = inout(reg) offs.len() => _,
                e = in(reg) e as *mut EpRows,
                er = out(reg) _,
                cnt = out(reg) _,
                cst = sym SILU_BF16,
                bias = const offset_of!(EpRows, bias),
                mask = const offset_of!(EpRows, mask),
                row = const offset_of!(EpRows, row),
                end = const offset_of!(EpRows, end),
                rps = const offset_of!(EpRows, rps),
                act = const offset_of!(EpRows, act),
                c = const offset_of!(EpRows, c),
                accf = const offset_of!(EpRows, accumulate),
                dsts = const offset_of!(EpRows, dsts),
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                out("zmm24") _, out("zmm25") _,
                out("k1") _, out("k2") _, out("k3") _,
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack),
            );
        }
    }
}

/// The portable item compiled for wider vectors (the compiler vectorizes its loops).
#[cfg(target_arch = "x86_64")]
mod portable {
    use super::*;

    /// # Safety
    /// As [`super::conv_item`]; the CPU has what [`Isa::Avx512`] detects.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn item_avx512(ctx: &Ctx, d: &ConvDesc, b: &Bf16Desc, io: &ConvIo, it: usize, a: *mut u16) {
        // SAFETY: as this function's.
        unsafe { super::item::<PORTABLE>(ctx, d, b, io, it, a) }
    }

    /// # Safety
    /// As [`super::conv_item`]; the CPU has what [`Isa::Avx2`] detects.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn item_avx2(ctx: &Ctx, d: &ConvDesc, b: &Bf16Desc, io: &ConvIo, it: usize, a: *mut u16) {
        // SAFETY: as this function's.
        unsafe { super::item::<PORTABLE>(ctx, d, b, io, it, a) }
    }
}

/// The block product on AVX-512 registers with `vdpbf16ps`, for CPUs with AVX512-BF16 and
/// no AMX.
#[cfg(target_arch = "x86_64")]
pub(crate) mod dp {
    use super::*;
    use std::arch::x86_64::*;

    /// [`item`] with `vdpbf16ps` blocks and AVX-512 for the gather, rounding and epilogue.
    ///
    /// # Safety
    /// As [`super::conv_item`]; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")]
    pub(super) unsafe fn item(ctx: &Ctx, d: &ConvDesc, b: &Bf16Desc, io: &ConvIo, it: usize, a: *mut u16) {
        // SAFETY: as this function's.
        unsafe { super::item::<DPBF16>(ctx, d, b, io, it, a) }
    }

    /// Pixel rows per pass: 8 rows x 2 column tiles of accumulators (16 registers).
    const ROWS: usize = 8;

    /// [`block_portable`] with `vdpbf16ps`: per K pair, 16 columns' two products added to
    /// each f32 accumulator (the instruction adds them one after the other).
    ///
    /// # Safety
    /// As [`block_portable`]; the CPU has AVX512-BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block(
        a: *const u16,
        a_stride: usize,
        offs: &[usize],
        b0: *const u16,
        b1: *const u16,
        c: &mut [f32; 4 * TILE * TILE],
        accumulate: bool,
    ) {
        for r0 in (0..MBLOCK).step_by(ROWS) {
            let (mi, ri) = (r0 / TILE, r0 % TILE);
            let at = |i: usize, ni: usize| ((mi * 2 + ni) * TILE + ri + i) * TILE;
            // SAFETY: rows r0.. of A at the steps' offsets, the steps' tiles of B, c's rows
            // (caller).
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                if accumulate {
                    for (i, row) in acc.iter_mut().enumerate() {
                        for (ni, v) in row.iter_mut().enumerate() {
                            *v = _mm512_loadu_ps(c.as_ptr().add(at(i, ni)));
                        }
                    }
                }
                for (s, &off) in offs.iter().enumerate() {
                    let (t0, t1) = (b0.add(s * 2 * TILE * TILE), b1.add(s * 2 * TILE * TILE));
                    for kp in 0..TILE {
                        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(t0.add(kp * 2 * TILE) as *const _));
                        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(t1.add(kp * 2 * TILE) as *const _));
                        for (i, row) in acc.iter_mut().enumerate() {
                            let pair = (a.add((r0 + i) * a_stride + off + 2 * kp) as *const i32).read_unaligned();
                            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                            row[0] = _mm512_dpbf16_ps(row[0], x, w0);
                            row[1] = _mm512_dpbf16_ps(row[1], x, w1);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    for (ni, v) in row.iter().enumerate() {
                        _mm512_storeu_ps(c.as_mut_ptr().add(at(i, ni)), *v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        for (x, want) in [
            (1.0f32, 0x3f80u16),
            (f32::from_bits(0x3f80_8000), 0x3f80), // tie, even stays
            (f32::from_bits(0x3f81_8000), 0x3f82), // tie, odd rounds up
            (f32::from_bits(0x3f80_8001), 0x3f81),
            (f32::MAX, 0x7f80),
            (f32::INFINITY, 0x7f80),
            (-0.0, 0x8000),
        ] {
            assert_eq!(round(x), want, "{x:e}");
        }
        assert!(widen(round(f32::NAN)).is_nan());
        for i in 0..10_000u32 {
            let x = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if x.is_normal() && x.abs() < 1e38 {
                let r = widen(round(x));
                assert!((r - x).abs() <= x.abs() * (1.0 / 256.0), "{x:e} -> {r:e}");
            }
        }
    }

    #[test]
    fn silu_is_accurate() {
        for i in -20_000..20_000 {
            let x = i as f32 * 0.005;
            let want = x as f64 / (1.0 + (-x as f64).exp());
            let got = silu(x) as f64;
            assert!((got - want).abs() <= 3e-7 * want.abs().max(1e-3), "{x}: {got} vs {want}");
        }
        assert!(silu(-200.0) <= 0.0 && silu(-200.0) > -1e-30);
        assert_eq!(silu(200.0), 200.0);
    }

    #[test]
    fn scaled_sigmoid_is_accurate() {
        for i in -20_000..20_000 {
            let x = i as f32 * 0.005;
            for scale in [1.0f32, 2.0, 0.37] {
                let want = scale as f64 / (1.0 + (-x as f64).exp());
                let got = scaled_sigmoid(scale, x) as f64;
                // Below -87 the exponential is clamped (the result stays a normal float).
                let tol = if x >= -87.0 { 3e-7 * want.abs() } else { 1e-37 };
                assert!((got - want).abs() <= tol, "{scale} {x}: {got} vs {want}");
            }
        }
        assert!(scaled_sigmoid(2.0, -200.0) >= 0.0 && scaled_sigmoid(2.0, -200.0) < 1e-37);
        assert_eq!(scaled_sigmoid(2.0, 200.0), 2.0);
        assert!(scaled_sigmoid(2.0, f32::NAN).is_nan());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn silu16_matches_silu() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        for i in (-20_000..20_000).step_by(16) {
            let x: [f32; 16] = std::array::from_fn(|k| (i + k as i32) as f32 * 0.005);
            // SAFETY: AVX-512F checked above.
            let got: [f32; 16] = unsafe {
                std::mem::transmute(amx::silu16(std::mem::transmute::<[f32; 16], std::arch::x86_64::__m512>(x)))
            };
            for (g, &x) in got.iter().zip(&x) {
                let want = x as f64 / (1.0 + (-x as f64).exp());
                assert!((*g as f64 - want).abs() <= 4e-7 * want.abs().max(1e-3), "{x}: {g} vs {want}");
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vector_silus_make_no_denormals_far_below_zero() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        type F = unsafe fn(std::arch::x86_64::__m512) -> std::arch::x86_64::__m512;
        let fns: [(&str, F); 2] = [("silu16", amx::silu16), ("silu16_bf16", amx::silu16_bf16)];
        // MXCSR's sticky flags: denormal operand (bit 1) and underflow (bit 4).
        let csr = || {
            let mut v = 0u32;
            // SAFETY: stores MXCSR to a local.
            unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
            v
        };
        let set_csr = |v: u32| {
            // SAFETY: loads MXCSR from a local (flags cleared, the rest as it was).
            unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack)) };
        };
        for (name, f) in fns {
            for i in (-40_000..-16_000).step_by(16) {
                let x: [f32; 16] = std::array::from_fn(|k| (i + k as i32) as f32 * 0.0025);
                let saved = csr();
                set_csr(saved & !0x3f);
                // SAFETY: AVX-512F checked above.
                let got: [f32; 16] =
                    unsafe { std::mem::transmute(f(std::mem::transmute::<[f32; 16], std::arch::x86_64::__m512>(x))) };
                let flags = csr() & 0x12;
                set_csr(saved);
                assert_eq!(flags, 0, "{name} on {x:?}: a denormal operand or result (MXCSR flags {flags:#x})");
                for (g, &x) in got.iter().zip(&x) {
                    let want = x as f64 / (1.0 + (-x as f64).exp());
                    assert!(*g == 0.0 || g.is_normal(), "{name}({x}) = {g:e} is denormal");
                    assert!((*g as f64 - want).abs() <= 1e-35 + 7e-5 * want.abs(), "{name}({x}) = {g:e}, not {want:e}");
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_fast_silu16_is_within_a_thirtieth_of_bf16s_half_unit() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let run = |x: [f32; 16]| -> [f32; 16] {
            // SAFETY: AVX-512F checked above.
            unsafe {
                std::mem::transmute(amx::silu16_bf16(std::mem::transmute::<[f32; 16], std::arch::x86_64::__m512>(x)))
            }
        };
        let mut worst = 0.0f64;
        for i in (-40_000..40_000).step_by(16) {
            let x: [f32; 16] = std::array::from_fn(|k| (i + k as i32) as f32 * 0.0031);
            for (g, &x) in run(x).iter().zip(&x) {
                let want = x as f64 / (1.0 + (-x as f64).exp());
                worst = worst.max((*g as f64 - want).abs() / want.abs().max(1e-30));
            }
        }
        assert!(worst <= 7e-5, "worst relative error {worst:e}");
        // Far negative to zero, far positive to x, zero to zero.
        let x = [-200.0f32, -90.0, 90.0, 200.0, 0.0, -1e-3, 1e-3, 5.0, -5.0, 20.0, -20.0, 1.0, -1.0, 2.0, -2.0, 3.0];
        let got = run(x);
        assert!(got[0] == 0.0 && got[1] == 0.0 && got[2] == 90.0 && got[3] == 200.0 && got[4] == 0.0, "{got:?}");
    }

    /// The engines this machine runs (a CPU reporting AMX must grant it).
    fn engines() -> Vec<Engine> {
        if !amx_available() {
            assert!(!cpu_reports_amx(), "the CPU reports AMX but this process was not granted it");
        }
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx]
            .into_iter()
            .filter(|i| i.is_available())
            .map(Engine::of)
            .collect()
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn dpbf16_blocks_equal_the_portable_twin() {
        if !Isa::Avx512Bf16.is_available() {
            eprintln!("skipped: no AVX512-BF16");
            return;
        }
        let mut st = 11;
        for ksteps in [1, 3, 18] {
            let kpad = (ksteps + 2) * KSTEP;
            let offs: Vec<usize> = (0..ksteps).map(|s| (ksteps + 1 - s) * KSTEP + (s % 2) * 2).collect();
            let a: Vec<u16> = (0..MBLOCK * kpad).map(|_| round(rnd(&mut st))).collect();
            let b: Vec<u16> = (0..2 * TILE * kpad).map(|_| round(rnd(&mut st))).collect();
            let (b0, b1) = (b.as_ptr(), b[TILE * kpad..].as_ptr());
            let mut want = [0.0f32; 4 * TILE * TILE];
            let mut got = [f32::NAN; 4 * TILE * TILE];
            for (i, v) in got.iter_mut().enumerate() {
                *v = (i % 7) as f32;
            }
            let start = got;
            // SAFETY: sizes as the functions require; AVX512-BF16 checked above.
            unsafe {
                block_portable(a.as_ptr(), kpad, &offs, b0, b1, &mut want, false);
                dp::block(a.as_ptr(), kpad, &offs, b0, b1, &mut got, true);
            }
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let w = w + start[i];
                assert!((g - w).abs() <= 1e-6 * (kpad as f32), "ksteps {ksteps}, element {i}: {g} vs {w}");
            }
        }
    }

    /// A deterministic pseudo-random bf16-representable f32 in [-1, 1).
    fn rnd(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        widen(round(((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0))
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn amx_blocks_equal_the_portable_twin() {
        if !amx_available() {
            assert!(!cpu_reports_amx(), "the CPU reports AMX but this process was not granted it");
            eprintln!("skipped: no AMX");
            return;
        }
        let mut st = 7;
        for ksteps in [1, 2, 18, 48] {
            // Steps read A out of order and with gaps (as taps do); the second call adds
            // to the first's results.
            let kpad = (2 * ksteps + 1) * KSTEP;
            let offs: Vec<usize> = (0..ksteps).map(|s| (2 * (ksteps - 1 - s) + s % 2) * KSTEP).collect();
            let a: Vec<u16> = (0..MBLOCK * kpad).map(|_| round(rnd(&mut st))).collect();
            let b: Vec<u16> = (0..2 * TILE * kpad).map(|_| round(rnd(&mut st))).collect();
            let (b0, b1) = (b.as_ptr(), b[TILE * kpad..].as_ptr());
            let mut want = [0.0f32; 4 * TILE * TILE];
            let mut got = Aligned([f32::NAN; 4 * TILE * TILE]);
            let half = ksteps / 2;
            // SAFETY: sizes as the functions require; AMX granted above.
            unsafe {
                block_portable(a.as_ptr(), kpad, &offs, b0, b1, &mut want, false);
                amx::configure();
                amx::block(a.as_ptr(), 2 * kpad, &offs[..half.max(1)], b0, b1, &mut got.0, false);
                if half > 0 {
                    let (c0, c1) = (b0.add(half * 2 * TILE * TILE), b1.add(half * 2 * TILE * TILE));
                    amx::block(a.as_ptr(), 2 * kpad, &offs[half..], c0, c1, &mut got.0, true);
                }
                amx::release();
            }
            for (i, (g, w)) in got.0.iter().zip(&want).enumerate() {
                // Same products (exact in f32), sums in another order: a few ulp of the
                // sum of magnitudes.
                assert!((g - w).abs() <= 1e-6 * (kpad as f32), "ksteps {ksteps}, element {i}: {g} vs {w}");
            }
        }
    }

    /// One conv case: input h x w x cin (border `pad`), k x k taps, stride, groups, cout.
    #[derive(Debug)]
    struct Case {
        h: usize,
        w: usize,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        /// The input's border beyond the conv's padding.
        extra_pad: usize,
        flat: bool,
        band: usize,
        splits: usize,
        parts: usize,
        chunk: usize,
    }

    /// Where a case's input and output live: f32, or bf16 (its input then loaded directly
    /// where the conv allows).
    #[derive(Clone, Copy, Debug)]
    struct Dtypes {
        input16: bool,
        output16: bool,
    }

    /// Runs a conv (with SiLU when `act`) through `conv_item` (every item, one thread) and
    /// compares each output, pre-activation and channel sum with the same conv in f64 over
    /// the same bf16 values.
    fn check(case: &Case, engine: Engine, dt: Dtypes, act: bool, store_pre: bool) -> Vec<u32> {
        let Case { h, w, cin, cout, k, stride, groups, extra_pad, flat, band, splits, parts, chunk } = *case;
        let Dtypes { input16, output16 } = dt;
        let (cpad, pad) = (k / 2, k / 2 + extra_pad);
        let (oh, ow) = ((h + 2 * cpad - k) / stride + 1, (w + 2 * cpad - k) / stride + 1);
        let (kc, cout_g) = (cin / groups, cout / groups);
        let ntiles = cout_g.div_ceil(TILE);
        let kpad = (k * k * kc).next_multiple_of(KSTEP);
        let mut st = (h * 31 + w * 7 + cin + cout * 3 + k + stride + groups) as u64;
        let input = Buf { offset: 0, h, w, c: cin, pad };
        let in_values = (h + 2 * pad) * (w + 2 * pad) * cin;
        // A bf16 input's slack past its end holds values that must not matter.
        let in_len = if input16 { (in_values + SLACK_PIXELS * cin).div_ceil(2) } else { in_values };
        let out = Buf { offset: 0, h: oh, w: ow, c: cout, pad: 1 };
        let out_len = (oh + 2) * (ow + 2) * cout;
        // The pre-activation without a border (as a feature tap's).
        let pre = Buf { pad: 0, ..out };
        let (rows, row_len, last_row_len) = if flat {
            let m = oh * ow;
            let rl = 20;
            (m.div_ceil(rl), rl, m - rl * (m.div_ceil(rl) - 1))
        } else {
            (oh, ow, ow)
        };
        let bands = rows.div_ceil(band);
        let mut arena = vec![0.0f32; in_len + 2 * out_len + bands * cout];
        let mut in_f32 = vec![0.0f32; in_values];
        for y in 0..h {
            for x in 0..w {
                for c in 0..cin {
                    in_f32[input.at(y, x) + c] = rnd(&mut st) * 4.0;
                }
            }
        }
        if input16 {
            let a16 = arena.as_mut_ptr() as *mut u16;
            for i in 0..2 * in_len {
                let v = if i < in_values { round(in_f32[i]) } else { round(f32::NAN) };
                // SAFETY: 2 x in_len u16 values lie in the input's floats.
                unsafe { *a16.add(i) = v };
            }
        } else {
            arena[..in_values].copy_from_slice(&in_f32);
        }
        let wts: Vec<f32> = (0..cout * kc * k * k).map(|_| rnd(&mut st)).collect();
        let bias: Vec<f32> = (0..groups * ntiles * TILE).map(|_| rnd(&mut st)).collect();
        let direct = loads_direct(input16, stride, kc);
        let b = Bf16Desc { kpad, ntiles, splits, parts, chunk, input16, output16, direct };
        let mut packed = vec![0u16; b.weights_len(groups)];
        for g in 0..groups {
            for n in 0..cout_g {
                for t in 0..k * k {
                    for c in 0..kc {
                        let v = wts[(((g * cout_g + n) * kc + c) * k * k) + t];
                        packed[b_index(kpad, ntiles, g, t * kc + c, n)] = round(v);
                    }
                }
            }
        }
        let wp = (w + 2 * pad) as isize;
        let taps: Vec<isize> =
            (0..k).flat_map(|ky| (0..k).map(move |kx| (ky as isize * wp + kx as isize) * cin as isize)).collect();
        let d = ConvDesc {
            input,
            out,
            pre,
            stride,
            conv_pad: cpad,
            taps: Box::leak(taps.into_boxed_slice()),
            kc,
            groups,
            cout_g,
            act,
            sums: true,
            panel_outer: false,
            flat,
            rows,
            row_len,
            last_row_len,
            band,
        };
        let io = ConvIo {
            input: 0,
            out: in_len,
            pre: if store_pre { in_len + out_len } else { NONE },
            sums: in_len + 2 * out_len,
            weights: 0,
            bias: 0,
            ahead: NONE,
            ahead_bytes: 0,
        };
        let pool = crate::Pool::new(2).unwrap();
        let ctx = Ctx {
            arena: crate::SyncPtr(arena.as_mut_ptr()),
            weights: crate::SyncPtr(bias.as_ptr() as *mut f32),
            weights16: crate::SyncPtr(packed.as_ptr() as *mut u16),
            pool: &pool,
            bf16: engine,
        };
        // SAFETY: the buffers above hold every offset the descriptors name.
        unsafe {
            conv_run(&ctx, &d, &b, &io, b.items(d.groups), &|it| conv_item::<{ 1 << 16 }>(&ctx, &d, &b, &io, it));
        }
        let what = format!(
            "{h}x{w}x{cin} -> {cout}, {k}x{k}/{stride}, {groups} groups, flat {flat}, {engine:?}, {dt:?}, act {act}"
        );
        let mut sums = vec![0.0f64; bands * cout];
        for y in 0..oh {
            for x in 0..ow {
                let p = y * ow + x;
                let bi = if flat { p / row_len } else { y } / band;
                for n in 0..cout {
                    let (g, nn) = (n / cout_g, n % cout_g);
                    let mut v = bias[g * ntiles * TILE + nn] as f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (y * stride + ky + extra_pad, x * stride + kx + extra_pad);
                            for c in 0..kc {
                                let xv = widen(round(
                                    in_f32[input.at(0, 0) + ((iy * (w + 2 * pad) + ix) * cin)
                                        - (pad * (w + 2 * pad) + pad) * cin
                                        + g * kc
                                        + c],
                                ));
                                let wv = widen(round(wts[((n * kc + c) * k + ky) * k + kx]));
                                v += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let pre = arena[in_len + out_len + pre.at(y, x) + n] as f64;
                    let got = if output16 {
                        // SAFETY: the output's u16 values lie in its floats.
                        widen(unsafe { *(arena.as_ptr() as *const u16).add(2 * in_len + out.at(y, x) + n) }) as f64
                    } else {
                        arena[in_len + out.at(y, x) + n] as f64
                    };
                    let act = if act { v / (1.0 + (-v).exp()) } else { v };
                    let tol = 1e-5 * (1.0 + v.abs());
                    // A bf16 output also carries its rounding: half a unit in the 8th bit,
                    // and the fast SiLU's error (a thirtieth of that) before it.
                    let tol_out = tol + if output16 { act.abs() / 256.0 * (1.0 + 1.0 / 30.0) } else { 0.0 };
                    if store_pre {
                        assert!((pre - v).abs() <= tol, "{what}: pre ({y}, {x}, {n}) {pre} vs {v}");
                    }
                    assert!((got - act).abs() <= tol_out, "{what}: out ({y}, {x}, {n}) {got} vs {act}");
                    // The sums add the values as stored (a bf16 output's rounded ones).
                    sums[bi * cout + n] += got;
                }
            }
        }
        for (i, want) in sums.iter().enumerate() {
            let got = arena[in_len + 2 * out_len + i] as f64;
            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{what}: sum {i}: {got} vs {want}");
        }
        // Borders of the outputs are zero, and a bf16 output writes nothing past its half.
        for x in 0..ow + 2 {
            let first = if output16 { arena[in_len + x * cout / 2] } else { arena[in_len + x * cout] };
            assert_eq!(first, 0.0, "{what}: border");
        }
        if output16 {
            assert!(
                arena[in_len + out_len.div_ceil(2)..in_len + out_len].iter().all(|&v| v == 0.0),
                "{what}: past the end"
            );
        }
        // The output and the sums, bit for bit.
        arena[in_len..in_len + out_len].iter().chain(&arena[in_len + 2 * out_len..]).map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_bf16_activation_of_a_block_equals_the_f64_one() {
        // Every engine, channels a multiple of 32 and not (masked tails; bf16 buffers hold an
        // even number), each of gate, shortcut and output present or absent, r in f32 (the
        // output over it) or bf16 (the output over the shortcut).
        let mut st = 3;
        for c in [64usize, 40, 6] {
            let (h, w) = (3usize, 5usize);
            for (has_gate, has_sc, has_y) in
                [(true, true, true), (true, true, false), (false, true, true), (true, false, false)]
            {
                for (engine, r16) in engines().into_iter().flat_map(|e| [(e, false), (e, true)]) {
                    let len = h * w * c;
                    // r (and y over it), gate, shortcut, then the activation (bf16, with a
                    // border of one pixel).
                    let act = Buf { offset: 2 * len + c, h, w, c, pad: 1 };
                    let act_len = (h + 2) * (w + 2) * c / 2 + 1;
                    let mut arena = vec![f32::NAN; act.offset + act_len];
                    for v in &mut arena[..2 * len + c] {
                        *v = rnd(&mut st) * 6.0;
                    }
                    // A bf16 r holds the rounded values, from its offset on.
                    let r_in: Vec<f32> = arena[..len].iter().map(|&v| if r16 { widen(round(v)) } else { v }).collect();
                    if r16 {
                        let a16 = arena.as_mut_ptr() as *mut u16;
                        for (i, &v) in r_in.iter().enumerate() {
                            // SAFETY: r's len / 2 floats hold its len bf16 values.
                            unsafe { *a16.add(i) = round(v) };
                        }
                    }
                    let want: Vec<f64> = (0..len)
                        .map(|i| {
                            let mut v = r_in[i] as f64;
                            if has_gate {
                                v *= arena[len + i % c] as f64;
                            }
                            if has_sc {
                                v += arena[len + c + i] as f64;
                            }
                            v
                        })
                        .collect();
                    let r = Buf { offset: 0, h, w, c, pad: 0 };
                    let sc = if has_sc { Buf { offset: len + c, ..r } } else { Buf::none() };
                    let y = match (has_y, r16) {
                        (false, _) => Buf::none(),
                        (true, false) => r,
                        (true, true) => sc,
                    };
                    let gate = if has_gate { len } else { NONE };
                    let pool = crate::Pool::new(2).unwrap();
                    let ctx = Ctx {
                        arena: crate::SyncPtr(arena.as_mut_ptr()),
                        weights: crate::SyncPtr(std::ptr::null_mut()),
                        weights16: crate::SyncPtr(std::ptr::null_mut()),
                        pool: &pool,
                        bf16: engine,
                    };
                    // SAFETY: the buffers lie in the arena as laid out above.
                    unsafe { scale_add_act(&ctx, &r, r16, gate, &sc, &y, &act) };
                    let a16 = arena.as_ptr() as *const u16;
                    for yy in 0..h + 2 {
                        for xx in 0..w + 2 {
                            for ch in 0..c {
                                // SAFETY: inside the activation's floats.
                                let got =
                                    widen(unsafe { *a16.add(2 * act.offset + (yy * (w + 2) + xx) * c + ch) }) as f64;
                                let what =
                                    format!("c {c}, {engine:?}, r16 {r16}, gate {has_gate}, sc {has_sc}, y {has_y}");
                                if yy == 0 || xx == 0 || yy == h + 1 || xx == w + 1 {
                                    assert_eq!(got, 0.0, "{what}: border");
                                    continue;
                                }
                                let i = ((yy - 1) * w + xx - 1) * c + ch;
                                let v = want[i];
                                let a = v / (1.0 + (-v).exp());
                                // Half a unit in the 8th bit, and the fast SiLU's error (a
                                // thirtieth of that) before the rounding.
                                let tol = a.abs() / 256.0 * (1.0 + 1.0 / 30.0) + 1e-6;
                                assert!((got - a).abs() <= tol, "{what}: act {i}: {got} vs {a}");
                                if has_y {
                                    let got = arena[y.offset + i] as f64;
                                    assert!((got - v).abs() <= 1e-5 * (1.0 + v.abs()), "{what}: y {i}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_convs_equal_the_f64_conv_of_the_same_bf16_values() {
        let cases = [
            // 1x1 flat, K not a multiple of 32, one column tile of 16 (odd), rows of 20
            // pixels with a short last row, chunks smaller than a band.
            Case {
                h: 7,
                w: 9,
                cin: 40,
                cout: 16,
                k: 1,
                stride: 1,
                groups: 1,
                extra_pad: 0,
                flat: true,
                band: 2,
                splits: 1,
                parts: 2,
                chunk: 32,
            },
            // 1x1 with channels not a multiple of 16 (tile edge), split columns.
            Case {
                h: 5,
                w: 13,
                cin: 96,
                cout: 72,
                k: 1,
                stride: 1,
                groups: 1,
                extra_pad: 0,
                flat: true,
                band: 1,
                splits: 2,
                parts: 1,
                chunk: 64,
            },
            // 1x1 with K in uneven ranges (19 steps) and more column pairs than a block
            // group holds, the last tile alone.
            Case {
                h: 6,
                w: 8,
                cin: 608,
                cout: 176,
                k: 1,
                stride: 1,
                groups: 1,
                extra_pad: 0,
                flat: true,
                band: 1,
                splits: 1,
                parts: 2,
                chunk: 32,
            },
            // 1x1 from an input with a border (its pixels' rows run over the border).
            Case {
                h: 5,
                w: 13,
                cin: 64,
                cout: 48,
                k: 1,
                stride: 1,
                groups: 1,
                extra_pad: 1,
                flat: false,
                band: 2,
                splits: 1,
                parts: 2,
                chunk: 64,
            },
            // Grouped 3x3 (64 channels per group as L2), pixels not a multiple of 32.
            Case {
                h: 6,
                w: 7,
                cin: 128,
                cout: 128,
                k: 3,
                stride: 1,
                groups: 2,
                extra_pad: 0,
                flat: false,
                band: 3,
                splits: 1,
                parts: 3,
                chunk: 64,
            },
            // Strided grouped 3x3, groups of 8 channels (half a tile).
            Case {
                h: 9,
                w: 11,
                cin: 16,
                cout: 16,
                k: 3,
                stride: 2,
                groups: 2,
                extra_pad: 0,
                flat: false,
                band: 2,
                splits: 1,
                parts: 2,
                chunk: 32,
            },
            // The stem: 3 input channels, stride 2, 3 column tiles split three ways.
            Case {
                h: 12,
                w: 10,
                cin: 3,
                cout: 48,
                k: 3,
                stride: 2,
                groups: 1,
                extra_pad: 0,
                flat: false,
                band: 1,
                splits: 3,
                parts: 4,
                chunk: 32,
            },
        ];
        for case in &cases {
            for (input16, output16) in [(false, false), (true, true), (true, false), (false, true)] {
                let dt = Dtypes { input16, output16 };
                for engine in engines() {
                    for act in [true, false] {
                        // Without a pre-activation to store, AMX runs each epilogue beside
                        // the next products: the same values, bit for bit.
                        let with_pre = check(case, engine, dt, act, true);
                        let without = check(case, engine, dt, act, false);
                        assert!(with_pre == without, "{case:?} {engine:?} {dt:?} act {act}: epilogues differ");
                    }
                }
            }
        }
        if !amx_available() {
            eprintln!("skipped on AMX: no AMX");
        }
    }
}
