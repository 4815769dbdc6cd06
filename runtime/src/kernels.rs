//! The layout-aware drivers the generated model calls, and the contract of the per-ISA
//! micro-kernels the compiler emits.
//!
//! Activations are NHWC buffers in one arena, some with a zero border (`pad`) so 3x3 convs never
//! test bounds. Every driver splits its work across the [`Pool`] so that each item writes
//! disjoint memory and computes in a fixed order: results do not depend on the thread count.

use crate::{Pool, SyncPtr};

/// Output channels per weight panel, on every ISA.
pub const NR: usize = 16;
/// How a conv's weights are stored, as the micro-kernels' `WD` parameter: f32, or 16-bit
/// values widened to f32 on load.
pub const WEIGHTS_F32: usize = 0;
pub const WEIGHTS_BF16: usize = 1;
pub const WEIGHTS_F16: usize = 2;
/// "No buffer" for optional arena offsets.
pub const NONE: usize = usize::MAX;

/// The elementwise kernel one instruction set provides (emitted by the compiler per ISA; the
/// conv kernels are emitted per shape inside each ISA module).
///
/// # Safety
/// Implementations may only be called when the CPU supports the ISA: a value of the
/// implementing type is the proof (constructed only after detection).
pub unsafe trait Kernels: Copy + Send + Sync {
    /// For `n` contiguous floats `r`: `v = r * gate[i % c] + sc` (gate, sc optional), then
    /// stores `v` to `y` and/or `silu(v)` to `act` (each optional, null when absent).
    ///
    /// # Safety
    /// Non-null pointers must be valid for `n` floats (`gate` for `c`), `n` a multiple of `c`;
    /// the outputs are disjoint from the inputs except that `y` may be `r` and `act` may be
    /// `sc` (each element is read before it is written at the same place).
    unsafe fn scale_add_act(
        self,
        n: usize,
        c: usize,
        r: *const f32,
        gate: *const f32,
        sc: *const f32,
        y: *mut f32,
        act: *mut f32,
    );
}

/// What every driver needs: the arena, the packed weights and the pool.
pub struct Ctx<'a> {
    pub arena: SyncPtr<f32>,
    /// The packed weights (read only): f32 values, then (when the model stores its conv
    /// weights in 16 bits) the u16 region.
    pub weights: SyncPtr<f32>,
    pub weights16: SyncPtr<u16>,
    pub pool: &'a Pool,
    /// What the bf16 convs run on: the engine of the ISA the model runs (detected, and for
    /// AMX granted).
    pub bf16: crate::bf16::Engine,
}

/// An NHWC buffer in the arena: `offset` floats in, `h x w x c` inside a `pad` border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub offset: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pad: usize,
}

impl Buf {
    /// Offset of interior pixel (y, x), channel 0.
    #[inline(always)]
    pub fn at(&self, y: usize, x: usize) -> usize {
        self.offset + ((y + self.pad) * (self.w + 2 * self.pad) + x + self.pad) * self.c
    }

    pub fn is_some(&self) -> bool {
        self.offset != NONE
    }

    pub const fn none() -> Buf {
        Buf { offset: NONE, h: 0, w: 0, c: 0, pad: 0 }
    }
}

impl Ctx<'_> {
    #[inline(always)]
    pub fn ptr(&self, off: usize) -> *mut f32 {
        // The arena is one allocation; offsets come from the compiler's memory plan.
        self.arena.0.wrapping_add(off)
    }

    #[inline(always)]
    pub fn w(&self, off: usize) -> *const f32 {
        self.weights.0.wrapping_add(off)
    }

    #[inline(always)]
    pub fn w16(&self, off: usize) -> *const u16 {
        self.weights16.0.wrapping_add(off)
    }

    /// Zeroes the border ring of a padded buffer.
    ///
    /// # Safety
    /// `b` must lie inside the arena.
    pub unsafe fn zero_border(&self, b: &Buf) {
        if !b.is_some() || b.pad == 0 {
            return;
        }
        let wp = b.w + 2 * b.pad;
        let hp = b.h + 2 * b.pad;
        // SAFETY: the whole padded buffer lies in the arena (caller), written by this thread only.
        unsafe {
            let base = self.ptr(b.offset);
            for y in 0..hp {
                let row = base.add(y * wp * b.c);
                if y < b.pad || y >= hp - b.pad {
                    std::ptr::write_bytes(row, 0, wp * b.c);
                } else {
                    std::ptr::write_bytes(row, 0, b.pad * b.c);
                    std::ptr::write_bytes(row.add((wp - b.pad) * b.c), 0, b.pad * b.c);
                }
            }
        }
    }
}

/// A convolution's fixed shape (emitted as a constant per unique shape).
#[derive(Clone, Copy, Debug)]
pub struct ConvDesc {
    pub input: Buf,
    /// Layouts of the outputs (offsets are replaced per call).
    pub out: Buf,
    pub pre: Buf,
    pub stride: usize,
    /// Border the conv needs (its padding); the input buffer's own border may be wider.
    pub conv_pad: usize,
    /// Offsets of each tap relative to the tap (0, 0), in floats.
    pub taps: &'static [isize],
    /// Input channels per group.
    pub kc: usize,
    pub groups: usize,
    pub cout_g: usize,
    pub act: bool,
    pub sums: bool,
    /// Work order: all bands of one panel before the next (weights stay in cache), else all
    /// panels of one band (activations stay in cache).
    pub panel_outer: bool,
    /// Tiling (see the compiler's `ConvGeom`): tiles never cross a row; `flat` rows are runs
    /// of the flattened image, else image rows; `band` rows make one work item.
    pub flat: bool,
    pub rows: usize,
    pub row_len: usize,
    pub last_row_len: usize,
    pub band: usize,
}

impl ConvDesc {
    pub const fn bands(&self) -> usize {
        self.rows.div_ceil(self.band)
    }

    pub const fn panels_per_group(&self) -> usize {
        self.cout_g.div_ceil(NR)
    }
}

/// Where one conv call reads and writes (arena and weight offsets).
#[derive(Clone, Copy, Debug)]
pub struct ConvIo {
    pub input: usize,
    pub out: usize,
    pub pre: usize,
    pub sums: usize,
    pub weights: usize,
    pub bias: usize,
    /// The next weight-bearing kernel's weights as a byte range of the blob (`ahead` is
    /// `NONE` when none follows, and for bf16 convs): every work item of an f32 conv asks
    /// for its share of them into L2 while it computes, so that kernel finds them in cache
    /// instead of DRAM (the model's weights outgrow the caches and are read once per
    /// inference).
    pub ahead: usize,
    pub ahead_bytes: usize,
}

impl ConvIo {
    /// Work item `it` of `items`: its share of the `ahead` weights, as the first 64-byte
    /// line and a count of lines (see [`ahead_range`]). The pool hands each thread a
    /// contiguous range of items, and each thread fetches the start of its own contiguous
    /// share of the next weights, so when the next conv also runs its units in order each
    /// thread mostly fetches the weights it will use itself, first.
    #[inline]
    pub fn ahead_share(&self, ctx: &Ctx, it: usize, items: usize) -> (*const u8, usize) {
        if self.ahead == NONE || items == 0 {
            return (std::ptr::null(), 0);
        }
        let r = ahead_range(self.ahead_bytes.div_ceil(64), it, items, ctx.pool.threads(), AHEAD_CAP_BYTES / 64);
        // A prefetch hint never faults; the range lies in the weight blob anyway.
        ((ctx.weights.0 as *const u8).wrapping_add(self.ahead + r.start * 64), r.len())
    }
}

/// Most bytes of the next kernel's weights each thread fetches ahead: about an L2. The
/// last stage-3 conv asked for all 18.9 MB of L2's final_conv (and final_conv for the
/// classifier's 12.3 MB), more than its cache holds and more than DRAM delivers while it
/// runs; capped, that conv is 5-9% faster on 2 threads (the rest unchanged).
pub const AHEAD_CAP_BYTES: usize = 2 << 20;

/// The lines of the next kernel's `lines` that item `it` of `items` fetches ahead: the items
/// run on `threads` threads, each a contiguous range of them (about the pool's split, which
/// also counts the border item after them), and each thread fetches the start of its own
/// share of the next weights, at most `cap` lines, spread over its items.
pub fn ahead_range(lines: usize, it: usize, items: usize, threads: usize, cap: usize) -> std::ops::Range<usize> {
    let threads = threads.clamp(1, items.max(1));
    let t = thread_of(it, items, threads);
    let its = share(items, t, threads);
    let mine = share(lines, t, threads);
    let r = share(mine.len().min(cap), it - its.start, its.len());
    (mine.start + r.start)..(mine.start + r.end)
}

/// The thread that runs item `it` of `items` when `threads` threads each take a contiguous
/// share of them, as the pool splits a job before any stealing (about, for a conv: its job
/// also counts the border item after them). Kernels fetch ahead only the weights the same
/// thread will use: another thread runs its own items meanwhile, and fetching them into this
/// core's L2 only spends bandwidth (L2's stage-3 grouped convs 8-11% faster).
pub fn thread_of(it: usize, items: usize, threads: usize) -> usize {
    let threads = threads.clamp(1, items.max(1));
    (0..threads).rev().find(|&t| crate::pool::range(items, threads, t).start <= it).unwrap_or(0)
}

/// Whether items `a` and `b` of `items` fall to the same thread (see [`thread_of`]).
#[inline]
pub fn same_thread(a: usize, b: usize, items: usize, threads: usize) -> bool {
    thread_of(a, items, threads) == thread_of(b, items, threads)
}

/// Item `it`'s part of `0..n` split evenly over `items` items, in order.
#[inline]
fn share(n: usize, it: usize, items: usize) -> std::ops::Range<usize> {
    (it * n / items)..((it + 1) * n / items)
}

/// The `s` for which asking for one line every `2^s` steps spreads `lines` lines over more
/// than half and at most all of `steps` steps (0 when there are more lines than steps).
/// Spread out, the requests leave the miss buffers to the kernel's own loads: issued in a
/// burst at the start of each item they made the kernels 2-4% slower and gained nothing.
#[inline]
pub const fn spread_shift(lines: usize, steps: usize) -> u32 {
    let mut s = 0;
    while lines > 0 && (steps >> (s + 1)) >= lines {
        s += 1;
    }
    s
}

/// Runs a convolution: zeroes the borders of its padded outputs, then runs `item` (the ISA's
/// kernel for this shape) for each of the `items` work items on the pool.
///
/// # Safety
/// The descriptor and offsets must come from the compiler's schedule for this arena, and
/// `item` must be the kernel emitted for this descriptor.
pub unsafe fn conv_run(ctx: &Ctx, d: &ConvDesc, io: &ConvIo, items: usize, item: &(dyn Fn(usize) + Sync)) {
    let borders = [Buf { offset: io.out, ..d.out }, Buf { offset: io.pre, ..d.pre }];
    // SAFETY: buffers are in the arena (caller contract); items write interiors only.
    unsafe { run_zeroing_borders(ctx, &borders, items, item) }
}

/// Runs `items` work items on the pool plus one more that zeroes the borders of `bufs` (the
/// items write interiors only, so it is disjoint from them): no thread waits while one
/// thread clears them.
///
/// # Safety
/// `bufs` lie in the arena and no item touches their borders.
pub(crate) unsafe fn run_zeroing_borders(ctx: &Ctx, bufs: &[Buf], items: usize, item: &(dyn Fn(usize) + Sync)) {
    ctx.pool.run(items + 1, &|it| {
        if it < items {
            item(it)
        } else {
            for b in bufs {
                // SAFETY: in the arena, and no item writes there (caller contract).
                unsafe { ctx.zero_border(b) }
            }
        }
    });
}

/// `v = r * gate + shortcut`, stored to `y` and/or `silu(v)` to `act`, row by row.
///
/// # Safety
/// Buffers from the schedule: same h, w, c; in the arena; outputs disjoint from inputs, or
/// `y` the same buffer as `r` and `act` as `sc` (see the `Kernels` contract).
pub unsafe fn scale_add_act<K: Kernels>(k: K, ctx: &Ctx, r: &Buf, gate: usize, sc: &Buf, y: &Buf, act: &Buf) {
    let piece = |yy: usize, x0: usize, x1: usize| {
        let p = |b: &Buf| if b.is_some() { ctx.ptr(b.at(yy, x0)) } else { std::ptr::null_mut() };
        let g = if gate == NONE { std::ptr::null() } else { ctx.ptr(gate) as *const f32 };
        // SAFETY: pixels x0..x1 of row yy of each buffer are (x1 - x0) * c contiguous floats
        // inside the arena; each item writes its own pixels.
        unsafe { k.scale_add_act((x1 - x0) * r.c, r.c, p(r), g, p(sc), p(y), p(act)) };
    };
    // SAFETY: buffers are in the arena (caller contract); the pieces write interior pixels.
    unsafe { run_row_pieces(ctx, r, &[*y, *act], &piece) }
}

/// Runs `piece(row, x0, x1)` on the pool over the interior pixels of `r`'s shape, rows cut
/// into items of whole pixels of about [`SCALE_ADD_ACT_ITEM`] floats each (a thread that
/// finishes first waits for at most one such piece; a row of L2's stage 2 is 30720 floats),
/// and zeroes the `borders` of the buffers it writes.
///
/// # Safety
/// As [`run_zeroing_borders`]; `piece` writes only its own pixels.
pub(crate) unsafe fn run_row_pieces(ctx: &Ctx, r: &Buf, borders: &[Buf], piece: &(dyn Fn(usize, usize, usize) + Sync)) {
    let pieces = (r.w * r.c).div_ceil(SCALE_ADD_ACT_ITEM).clamp(1, r.w);
    let item = |it: usize| {
        let (yy, part) = (it / pieces, it % pieces);
        piece(yy, part * r.w / pieces, (part + 1) * r.w / pieces);
    };
    // SAFETY: as this function's.
    unsafe { run_zeroing_borders(ctx, borders, r.h * pieces, &item) }
}

/// Floats per work item of `scale_add_act`, about.
const SCALE_ADD_ACT_ITEM: usize = 8192;

/// AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) from `x` into `out`.
///
/// # Safety
/// Buffers from the schedule, disjoint, in the arena.
pub unsafe fn avg_pool(ctx: &Ctx, x: &Buf, out: &Buf) {
    let c = x.c;
    let row = |oy: usize| {
        for ox in 0..out.w {
            let ys = 2 * oy..(2 * oy + 2).min(x.h);
            let xs = 2 * ox..(2 * ox + 2).min(x.w);
            let inv = 1.0 / (ys.len() * xs.len()) as f32;
            // SAFETY: an interior pixel of out (this row's item only) and interior pixels of
            // x, each `c` floats, in the arena and disjoint.
            let dst = unsafe { std::slice::from_raw_parts_mut(ctx.ptr(out.at(oy, ox)), c) };
            dst.fill(0.0);
            for iy in ys.clone() {
                for ix in xs.clone() {
                    // SAFETY: as above.
                    let src = unsafe { std::slice::from_raw_parts(ctx.ptr(x.at(iy, ix)), c) };
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
            for d in dst.iter_mut() {
                *d *= inv;
            }
        }
    };
    // SAFETY: out is in the arena (caller contract); the rows write interior pixels.
    unsafe { run_zeroing_borders(ctx, &[*out], out.h, &row) }
}

/// Per-channel sums of all pixels of `x` in pixel order, into `sums[0..c]` (one block).
///
/// # Safety
/// Buffers from the schedule, in the arena.
pub unsafe fn channel_sums(ctx: &Ctx, x: &Buf, sums: usize) {
    let s = ctx.ptr(sums);
    // SAFETY: c floats at sums and interior pixels of x, all in the arena.
    unsafe {
        std::ptr::write_bytes(s, 0, x.c);
        for y in 0..x.h {
            for xx in 0..x.w {
                let p = ctx.ptr(x.at(y, xx));
                for c in 0..x.c {
                    *s.add(c) += *p.add(c);
                }
            }
        }
    }
}

/// Sums of `parts` blocks of `c` channel sums, in block order, in f64.
///
/// # Safety
/// `parts * c` floats at `sums` in the arena.
unsafe fn reduce_blocks(ctx: &Ctx, sums: usize, parts: usize, c: usize, ch: usize) -> f64 {
    let mut t = 0.0f64;
    for b in 0..parts {
        // SAFETY: inside the sums buffer.
        t += unsafe { *ctx.ptr(sums + b * c + ch) } as f64;
    }
    t
}

/// Adds the sums of `totals.len()` channels of each of `parts` blocks (block `b`'s from
/// `sums + b * c`) to `totals`, block after block as [`reduce_blocks`] does: the same values
/// whatever vector width the loop runs at, which is the widest the model's ISA has.
///
/// # Safety
/// The blocks' sums lie in the arena.
unsafe fn add_block_sums(ctx: &Ctx, sums: usize, parts: usize, c: usize, totals: &mut [f64]) {
    #[inline(always)]
    unsafe fn body(ctx: &Ctx, sums: usize, parts: usize, c: usize, totals: &mut [f64]) {
        for b in 0..parts {
            // SAFETY: block b's sums (caller).
            let block = unsafe { std::slice::from_raw_parts(ctx.ptr(sums + b * c), totals.len()) };
            for (t, &v) in totals.iter_mut().zip(block) {
                *t += v as f64;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(ctx: &Ctx, sums: usize, parts: usize, c: usize, totals: &mut [f64]) {
        // SAFETY: as the caller's.
        unsafe { body(ctx, sums, parts, c, totals) }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(ctx: &Ctx, sums: usize, parts: usize, c: usize, totals: &mut [f64]) {
        // SAFETY: as the caller's.
        unsafe { body(ctx, sums, parts, c, totals) }
    }
    // SAFETY: as this function's; the engine's ISA (the model's) has the features named.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::bf16::Engine;
            match ctx.bf16 {
                Engine::Amx | Engine::Avx512Bf16 | Engine::PortableAvx512 => {
                    return avx512(ctx, sums, parts, c, totals);
                }
                Engine::PortableAvx2 => return avx2(ctx, sums, parts, c, totals),
                Engine::Portable => {}
            }
        }
        body(ctx, sums, parts, c, totals)
    }
}

/// Channels per work item of the ECA gate.
const ECA_CHUNK: usize = 64;
/// Widest ECA kernel supported (timm's adaptive size stays far below).
const ECA_MAX_K: usize = 64;

/// ECA gate: `gate[c] = scale * sigmoid(sum_j w[j] * mean[c + j - (k - 1) / 2])`, zero padded,
/// with the channel means rounded to f32 from the block sums reduced in f64, the sum over the
/// taps in f64, the sigmoid in f32 ([`crate::bf16::scaled_sigmoid`]). Split across the
/// pool in chunks of channels; each chunk reduces the means it needs itself (its own channels
/// and the kernel's reach beyond them), so the result does not depend on the split.
///
/// # Safety
/// Offsets from the schedule: `parts * c` sums, `c` gate floats, `k` weights; the gate
/// buffer must not overlap the sums.
pub unsafe fn eca_gate(
    ctx: &Ctx,
    sums: usize,
    parts: usize,
    pixels: usize,
    c: usize,
    w: usize,
    k: usize,
    scale: f32,
    gate: usize,
) {
    assert!(k <= ECA_MAX_K, "ECA kernel wider than {ECA_MAX_K}");
    let half = (k - 1) / 2;
    let chunk = |it: usize| {
        let (lo, hi) = (it * ECA_CHUNK, ((it + 1) * ECA_CHUNK).min(c));
        // means[i] is the mean of channel lo - half + i (zero outside 0..c): the channels
        // lo - half .. hi - half + k - 1 clipped to 0..c, whose sums are contiguous in each
        // block; summed block after block as `reduce_blocks` does, so the same values.
        let (first, last) = (lo.saturating_sub(half), (hi + k - 1 - half).min(c));
        let skip = first + half - lo;
        let mut totals = [0.0f64; ECA_CHUNK + ECA_MAX_K];
        // SAFETY: every block's sums of channels first..last lie in the sums buffer, which
        // holds parts * c floats (caller contract).
        unsafe { add_block_sums(ctx, sums + first, parts, c, &mut totals[skip..skip + last - first]) };
        let mut means = [0.0f32; ECA_CHUNK + ECA_MAX_K];
        for (m, t) in means[skip..skip + last - first].iter_mut().zip(&totals[skip..]) {
            *m = (t / pixels as f64) as f32;
        }
        let mut wk = [0.0f64; ECA_MAX_K];
        for (j, v) in wk[..k].iter_mut().enumerate() {
            // SAFETY: k weights at w in the blob (caller contract).
            *v = unsafe { *ctx.w(w + j) } as f64;
        }
        // The taps whose channel lies in 0..c, in f64; then the sigmoids, which vectorize.
        let mut z = [0.0f32; ECA_CHUNK];
        for ch in lo..hi {
            let (j0, j1) = (half.saturating_sub(ch), k.min(c + half - ch));
            let mut acc = 0.0f64;
            for j in j0..j1 {
                acc += wk[j] * means[ch - lo + j] as f64;
            }
            z[ch - lo] = acc as f32;
        }
        // SAFETY: channels lo..hi < c of the gate buffer; each item writes its own channels.
        let out = unsafe { std::slice::from_raw_parts_mut(ctx.ptr(gate + lo), hi - lo) };
        for (g, &x) in out.iter_mut().zip(&z) {
            *g = crate::bf16::scaled_sigmoid(scale, x);
        }
    };
    ctx.pool.run(c.div_ceil(ECA_CHUNK), &chunk);
}

/// Global average pool from block sums.
///
/// # Safety
/// Offsets from the schedule.
pub unsafe fn mean_pool(ctx: &Ctx, sums: usize, parts: usize, pixels: usize, c: usize, out: usize) {
    for ch in 0..c {
        // SAFETY: inside the sums and output buffers.
        unsafe { *ctx.ptr(out + ch) = (reduce_blocks(ctx, sums, parts, c, ch) / pixels as f64) as f32 };
    }
}

/// The caller's NCHW image into an NHWC buffer (border zeroed).
///
/// # Safety
/// `out` from the schedule; `image` holds `out.c * out.h * out.w` floats.
pub unsafe fn pack_input(ctx: &Ctx, image: &[f32], out: &Buf) {
    assert_eq!(image.len(), out.c * out.h * out.w, "image size");
    let plane = out.h * out.w;
    let row = |y: usize| {
        for x in 0..out.w {
            let dst = ctx.ptr(out.at(y, x));
            for c in 0..out.c {
                // SAFETY: interior pixel of out, in row y (this item's only).
                unsafe { *dst.add(c) = image[c * plane + y * out.w + x] };
            }
        }
    };
    // SAFETY: out is in the arena (caller contract); the rows write interior pixels.
    unsafe { run_zeroing_borders(ctx, &[*out], out.h, &row) }
}

/// An NHWC buffer out to the caller's NCHW slice (`c * h * w` floats): image rows on the
/// pool, each in tiles of 16 pixels x 16 channels, read a pixel's channels at a time and
/// written a channel's pixels at a time (whole lines both ways, where a pixel-by-pixel copy
/// writes one value to each of `c` planes in turn).
///
/// # Safety
/// `x` from the schedule, in the arena.
pub unsafe fn copy_out(ctx: &Ctx, x: &Buf, dst: &mut [f32]) {
    const T: usize = 16;
    assert_eq!(dst.len(), x.c * x.h * x.w, "output size");
    let (plane, out) = (x.h * x.w, SyncPtr(dst.as_mut_ptr()));
    let row = |y: usize| {
        let out = &out;
        // Each tile reads back only what it wrote.
        let mut t = [[0.0f32; T]; T];
        for x0 in (0..x.w).step_by(T) {
            let nx = T.min(x.w - x0);
            for c0 in (0..x.c).step_by(T) {
                let nc = T.min(x.c - c0);
                for i in 0..nx {
                    let col = ctx.ptr(x.at(y, x0 + i) + c0);
                    for (j, tj) in t[..nc].iter_mut().enumerate() {
                        // SAFETY: channel c0 + j < c of interior pixel (y, x0 + i) of x.
                        tj[i] = unsafe { *col.add(j) };
                    }
                }
                for (j, tj) in t[..nc].iter().enumerate() {
                    // SAFETY: pixels x0..x0 + nx of row y of plane c0 + j, inside `dst`
                    // (c * h * w floats); each item writes its own row of every plane.
                    unsafe {
                        let d = out.0.add((c0 + j) * plane + y * x.w + x0);
                        std::ptr::copy_nonoverlapping(tj.as_ptr(), d, nx);
                    }
                }
            }
        }
    };
    ctx.pool.run(x.h, &row);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_out_transposes_every_value_at_any_shape() {
        let pool = crate::Pool::new(3).unwrap();
        for (h, w, c, pad) in [(1, 1, 1, 0), (3, 17, 5, 1), (4, 16, 16, 0), (5, 33, 40, 2), (2, 7, 3072, 0)] {
            let x = Buf { offset: 16, h, w, c, pad };
            let len = x.offset + (h + 2 * pad) * (w + 2 * pad) * c;
            let mut arena: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let ctx = Ctx {
                arena: SyncPtr(arena.as_mut_ptr()),
                weights: SyncPtr(std::ptr::null_mut()),
                weights16: SyncPtr(std::ptr::null_mut()),
                pool: &pool,
                bf16: crate::bf16::Engine::Portable,
            };
            let mut dst = vec![f32::NAN; c * h * w];
            // SAFETY: x lies in the arena.
            unsafe { copy_out(&ctx, &x, &mut dst) };
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        assert_eq!(dst[(ch * h + y) * w + xx], arena[x.at(y, xx) + ch], "{h}x{w}x{c} pad {pad}");
                    }
                }
            }
        }
    }

    #[test]
    fn shares_of_the_next_weights_cover_every_line_once() {
        for (n, items) in [(0, 3), (1, 7), (36864, 108), (100, 100), (5, 64)] {
            let mut next = 0;
            for it in 0..items {
                let r = share(n, it, items);
                assert_eq!(r.start, next, "{n} lines over {items} items");
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn each_thread_fetches_the_start_of_its_share_once() {
        for (lines, items, threads, cap) in [
            (0, 5, 2, 10),
            (100, 7, 1, 1000),
            (100, 7, 1, 30),
            (36864, 108, 2, 16384),
            (5, 64, 2, 4),
            (999, 10, 3, 50),
            (10, 2, 4, 100),
        ] {
            let mut got = vec![0u32; lines];
            for it in 0..items {
                for l in ahead_range(lines, it, items, threads, cap) {
                    got[l] += 1;
                }
            }
            // Thread t's items (the pool's split) cover the first `cap` lines of share t.
            let busy = threads.clamp(1, items.max(1));
            let mut want = vec![0u32; lines];
            for t in 0..busy {
                let mine = share(lines, t, busy);
                for l in mine.start..mine.start + mine.len().min(cap) {
                    want[l] = 1;
                }
            }
            assert_eq!(got, want, "{lines} lines, {items} items, {threads} threads, cap {cap}");
        }
        // One thread, no cap reached: the plain split in item order.
        for it in 0..9 {
            assert_eq!(ahead_range(50, it, 9, 1, 50), share(50, it, 9));
        }
    }

    #[test]
    fn thread_of_follows_the_pools_split() {
        for (items, threads) in [(1, 1), (1, 2), (7, 1), (30, 2), (31, 2), (134, 2), (72, 3), (5, 8), (288, 5)] {
            for it in 0..items {
                let t = thread_of(it, items, threads);
                let busy = threads.min(items);
                assert!(t < busy, "{it} of {items} on {threads} threads: thread {t}");
                assert!(crate::pool::range(items, busy, t).contains(&it), "{it} of {items} on {threads} threads");
            }
        }
    }

    #[test]
    fn spread_prefetches_fit_the_steps_and_use_over_half_of_them() {
        for steps in [1, 64, 384, 1536, 4608] {
            for lines in [0, 1, 2, 3, 85, 341, 1535, 1536, 5000] {
                let s = spread_shift(lines, steps);
                if lines == 0 || lines >= steps {
                    assert_eq!(s, 0, "{lines} lines, {steps} steps: one per step from the first");
                    continue;
                }
                assert!(lines << s <= steps, "{lines} lines every 2^{s} of {steps} steps");
                assert!(lines << (s + 1) > steps, "{lines} lines could spread wider than 2^{s}");
            }
        }
    }
}
