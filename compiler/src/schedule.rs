//! Lowering the graph to a schedule of fused kernels with a static memory plan.
//!
//! Activations live in one arena as NHWC tensors; a tensor read by a 3x3 conv carries a zero
//! border of one pixel so the conv never tests bounds. Lowering first maps every graph node to
//! plain kernels; fusion passes then merge them, each reporting where it applied and why not
//! elsewhere. `stop_after` runs only the first passes, which makes a miscompile bisectable.
//! Finally the memory plan gives every buffer a fixed arena offset by liveness.

use crate::graph::{Graph, Op as GOp, ValueId};
use serde_json::{Value as Json, json};

pub type BufId = usize;

/// Pixels per work item of a conv, about: the unit split across threads and of the
/// fixed-order channel sums (ECA, global pool). Every ISA's tile height divides it.
pub const M_BLOCK: usize = 48;

/// How a conv's output pixels are tiled: rows of pixels that a tile never crosses (so the
/// micro-kernel steps through its pixels with one constant stride), grouped into bands of
/// rows, the unit of work and of channel sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// The pixels are contiguous in the input (1x1, stride 1, no border): rows are runs of
    /// [`M_BLOCK`] pixels of the flattened image; else rows are image rows.
    pub flat: bool,
    pub rows: usize,
    pub row_len: usize,
    pub last_row_len: usize,
    /// Rows per band.
    pub band: usize,
}

impl ConvGeom {
    pub fn new(out_h: usize, out_w: usize, flat: bool) -> ConvGeom {
        if flat {
            let m = out_h * out_w;
            let rows = m.div_ceil(M_BLOCK);
            // Below four blocks the rows are evened out in multiples of 12 (a multiple of
            // every tile height used there) so that the work items are about equal: L2's
            // 10x10 stage as 36 + 36 + 28 pixels instead of 48 + 48 + 4, the same tiles.
            let row_len = if m < 4 * M_BLOCK { m.div_ceil(rows).next_multiple_of(12).min(M_BLOCK) } else { M_BLOCK };
            let rows = m.div_ceil(row_len);
            ConvGeom { flat, rows, row_len, last_row_len: m - row_len * (rows - 1), band: 1 }
        } else {
            ConvGeom { flat, rows: out_h, row_len: out_w, last_row_len: out_w, band: (M_BLOCK / out_w).max(1) }
        }
    }

    pub fn bands(&self) -> usize {
        self.rows.div_ceil(self.band)
    }
}
/// Cost of one product of a direct 3x3 conv, relative to an ideal one, and of the Winograd
/// algorithms by output tile `m` (transforms, scratch traffic, short sums of 64 channels).
/// Measured on L2's grouped convs (2 threads, AVX-512, per-kernel minimums): F(2x2) : F(4x4)
/// 1.36 : 1 at 80x80, 1.06 : 1 at 20x20; F(2x2) : F(4x4) : direct 1 : 1.54 : 1.23 at 10x10
/// (F(2x2) in items of 5 tiles).
pub const DIRECT_OVERHEAD: f64 = 1.25;
pub const WINOGRAD_OVERHEAD: [(usize, f64); 2] = [(2, 1.7), (4, 2.2)];

/// The cost of one stored weight in products: a conv with `e` weights per input/output
/// channel pair (9 direct, `(m + 2)^2` Winograd) over `n` pixels or tiles costs
/// `e (n x overhead + WEIGHT_COST)`. The weights outgrow the caches and stream from DRAM on
/// every inference, and F(4x4) stores 4x the direct conv's (F(2x2): 1.8x). At 40, F(4x4) stays
/// off L2's 20x20 stage, where it measured 3-4% faster than F(2x2) on those convs (0.4 ms of
/// 108 at 2 threads, within the noise of the whole model) for 66 MiB more weights (262 ->
/// 328 MiB); the fit above needs 28 or more.
pub const WEIGHT_COST: f64 = 40.0;

/// Output tiles per Winograd work item at most (the micro-tile height of the 64-channel
/// groups on AVX-512 (6 x 64), AVX2 and NEON (6 x 16)); the tiles are split evenly over the
/// items (25 tiles: 5 items of 5), a last partial item still computes all of its tiles.
pub const WINOGRAD_ITEM_TILES: usize = 6;

/// Largest stack scratch of a Winograd work item, per array (input and products): groups of
/// up to 341 channels for F(2x2), 151 for F(4x4); wider convs take the smaller tile or stay
/// direct.
pub const WINOGRAD_SCRATCH_BYTES: usize = 256 * 1024;

/// Output channels per weight panel (the micro-kernel's width, on every ISA).
pub const NR: usize = 16;
/// Arena alignment of every buffer, in floats (64 bytes).
pub const ALIGN: usize = 16;

/// An NHWC tensor with `pad` zero pixels around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pad: usize,
}

impl Layout {
    pub fn len(&self) -> usize {
        (self.h + 2 * self.pad) * (self.w + 2 * self.pad) * self.c
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn interior(&self) -> usize {
        self.h * self.w * self.c
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// What it holds: the producing timm module, or a role such as `...attn_last.sums`.
    pub name: String,
    pub layout: Layout,
    /// Arena offset in floats, set by the memory plan.
    pub offset: usize,
}

/// A result the caller can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    Feature(usize),
    ForwardFeatures,
    PreLogits,
    Logits,
}

impl Tap {
    pub fn name(&self) -> String {
        match self {
            Tap::Feature(i) => format!("feature{i}"),
            Tap::ForwardFeatures => "forward_features".into(),
            Tap::PreLogits => "pre_logits".into(),
            Tap::Logits => "logits".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The caller's NCHW image into an NHWC buffer.
    PackInput { out: BufId },
    /// Conv + bias, then optionally SiLU; `preact` also stores the value before SiLU; `sums`
    /// accumulates per-block channel sums of the stored output.
    Conv { node: usize, input: BufId, out: BufId, act: bool, preact: Option<BufId>, sums: Option<BufId> },
    /// Per-channel sums over all pixels (one block).
    ChannelSums { input: BufId, sums: BufId },
    /// ECA gate: `scale * sigmoid(conv1d(mean))` from block sums.
    EcaGate { node: usize, sums: BufId, gate: BufId },
    /// `v = r * gate[c] + shortcut`; store `v` to `y` and/or `silu(v)` to `act`.
    ScaleAddAct { r: BufId, gate: Option<BufId>, shortcut: Option<BufId>, y: Option<BufId>, act: Option<BufId> },
    /// AvgPool2d(2, 2, ceil_mode, count_include_pad=False).
    AvgPool { input: BufId, out: BufId },
    /// Global average pool from block sums.
    MeanPool { sums: BufId, pixels: usize, out: BufId },
    /// The classifier: `out = W x + b`.
    Fc { node: usize, input: BufId, out: BufId },
    /// Copies a result to the caller (NCHW), when the caller asked for it.
    CopyOut { tap: Tap, input: BufId },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::PackInput { .. } => "pack_input",
            Op::Conv { .. } => "conv",
            Op::ChannelSums { .. } => "channel_sums",
            Op::EcaGate { .. } => "eca_gate",
            Op::ScaleAddAct { .. } => "scale_add_act",
            Op::AvgPool { .. } => "avg_pool",
            Op::MeanPool { .. } => "mean_pool",
            Op::Fc { .. } => "fc",
            Op::CopyOut { .. } => "copy_out",
        }
    }

    pub fn inputs(&self) -> Vec<BufId> {
        match *self {
            Op::PackInput { .. } => vec![],
            Op::Conv { input, .. } => vec![input],
            Op::ChannelSums { input, .. } => vec![input],
            Op::EcaGate { sums, .. } => vec![sums],
            Op::ScaleAddAct { r, gate, shortcut, .. } => [Some(r), gate, shortcut].into_iter().flatten().collect(),
            Op::AvgPool { input, .. } => vec![input],
            Op::MeanPool { sums, .. } => vec![sums],
            Op::Fc { input, .. } => vec![input],
            Op::CopyOut { input, .. } => vec![input],
        }
    }

    pub fn outputs(&self) -> Vec<BufId> {
        match *self {
            Op::PackInput { out } => vec![out],
            Op::Conv { out, preact, sums, .. } => [Some(out), preact, sums].into_iter().flatten().collect(),
            Op::ChannelSums { sums, .. } => vec![sums],
            Op::EcaGate { gate, .. } => vec![gate],
            Op::ScaleAddAct { y, act, .. } => [y, act].into_iter().flatten().collect(),
            Op::AvgPool { out, .. } => vec![out],
            Op::MeanPool { out, .. } => vec![out],
            Op::Fc { out, .. } => vec![out],
            Op::CopyOut { .. } => vec![],
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// The timm modules it implements, in order (`stages.2.5.conv2`, `stages.2.5.act2b`, ...).
    pub modules: Vec<String>,
    pub op: Op,
}

/// What a fusion pass did.
#[derive(Clone, Debug, PartialEq)]
pub struct PassReport {
    pub name: &'static str,
    pub applied: Vec<String>,
    /// Where the pattern began but the pass declined, with the reason.
    pub declined: Vec<(String, String)>,
}

pub struct Schedule<'g> {
    pub graph: &'g Graph,
    /// Which Winograd algorithms the 3x3 stride-1 convs may take (default: [`WinogradPolicy::F2`]).
    pub winograd_policy: WinogradPolicy,
    pub buffers: Vec<Buffer>,
    pub kernels: Vec<Kernel>,
    pub passes: Vec<PassReport>,
    /// Arena floats needed (the peak of the memory plan).
    pub arena_len: usize,
}

/// Which Winograd algorithms the 3x3 stride-1 convs may take (`NFNET_WINOGRAD`): a trade of
/// speed for exactness. The default, `F2`, keeps every output as close to timm's float64 as
/// timm's own float32 is: F(2x2, 3x3) rounds about as a direct conv does, F(4x4, 3x3) about
/// five times more per conv, and one F(4x4) conv ahead of a feature tap already spends more
/// error than that tap's budget (1.25x timm float32's) leaves (see docs/design.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WinogradPolicy {
    /// The cheapest of direct, F(2x2, 3x3) and F(4x4, 3x3) by the cost model: the fastest,
    /// with outputs up to about twice as far from float64 as timm float32's.
    Auto,
    /// Direct or F(2x2, 3x3), by the cost model.
    #[default]
    F2,
    /// Direct convs only.
    Off,
    /// F(4x4, 3x3) wherever its scratch fits, whatever the cost model says (exercises every
    /// F(4x4) path on small test models).
    F4,
}

impl WinogradPolicy {
    /// As `NFNET_WINOGRAD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            WinogradPolicy::Auto => "auto",
            WinogradPolicy::F2 => "f2",
            WinogradPolicy::Off => "off",
            WinogradPolicy::F4 => "f4",
        }
    }

    pub fn parse(s: &str) -> Option<WinogradPolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(WinogradPolicy::Auto),
            "f2" => Some(WinogradPolicy::F2),
            "off" => Some(WinogradPolicy::Off),
            "f4" => Some(WinogradPolicy::F4),
            _ => None,
        }
    }
}

/// The fusion passes in order.
pub const PASSES: [&str; 5] =
    ["conv_act", "conv_channel_sums", "scale_add_act_chain", "downsample_pool", "scale_add_act_in_place"];

impl<'g> Schedule<'g> {
    /// Lowers `graph`, runs the first `stop_after` fusion passes (all with `None`), and plans memory.
    pub fn new(graph: &'g Graph, stop_after: Option<usize>) -> Schedule<'g> {
        let mut s = lower(graph);
        let n = stop_after.unwrap_or(PASSES.len()).min(PASSES.len());
        for name in &PASSES[..n] {
            let report = match *name {
                "conv_act" => pass_conv_act(&mut s),
                "conv_channel_sums" => pass_conv_channel_sums(&mut s),
                "scale_add_act_chain" => pass_scale_add_act_chain(&mut s),
                "downsample_pool" => pass_downsample_pool(&s),
                _ => pass_scale_add_act_in_place(&mut s),
            };
            s.passes.push(report);
        }
        s.gc_buffers();
        s.plan_memory();
        s
    }

    /// Indices of the kernels reading buffer `b`.
    fn readers(&self, b: BufId) -> Vec<usize> {
        (0..self.kernels.len()).filter(|&k| self.kernels[k].op.inputs().contains(&b)).collect()
    }

    /// Drops buffers no kernel touches and renumbers.
    fn gc_buffers(&mut self) {
        let mut used = vec![false; self.buffers.len()];
        for k in &self.kernels {
            for b in k.op.inputs().into_iter().chain(k.op.outputs()) {
                used[b] = true;
            }
        }
        let mut map = vec![usize::MAX; self.buffers.len()];
        let mut kept = Vec::new();
        for (i, b) in self.buffers.drain(..).enumerate() {
            if used[i] {
                map[i] = kept.len();
                kept.push(b);
            }
        }
        self.buffers = kept;
        self.remap(|b| map[b]);
    }

    /// Replaces every buffer reference `b` of every kernel by `f(b)`.
    fn remap(&mut self, f: impl Fn(BufId) -> BufId) {
        let m = |b: &mut BufId| *b = f(*b);
        let mo = |b: &mut Option<BufId>| {
            if let Some(x) = b {
                *x = f(*x);
            }
        };
        for k in &mut self.kernels {
            match &mut k.op {
                Op::PackInput { out } => m(out),
                Op::Conv { input, out, preact, sums, .. } => {
                    m(input);
                    m(out);
                    mo(preact);
                    mo(sums);
                }
                Op::ChannelSums { input, sums } => {
                    m(input);
                    m(sums);
                }
                Op::EcaGate { sums, gate, .. } => {
                    m(sums);
                    m(gate);
                }
                Op::ScaleAddAct { r, gate, shortcut, y, act } => {
                    m(r);
                    mo(gate);
                    mo(shortcut);
                    mo(y);
                    mo(act);
                }
                Op::AvgPool { input, out } => {
                    m(input);
                    m(out);
                }
                Op::MeanPool { sums, out, .. } => {
                    m(sums);
                    m(out);
                }
                Op::Fc { input, out, .. } => {
                    m(input);
                    m(out);
                }
                Op::CopyOut { input, .. } => m(input),
            }
        }
    }

    /// Live range of every buffer: (first kernel writing it, last kernel touching it).
    pub fn live_ranges(&self) -> Vec<(usize, usize)> {
        let mut r = vec![(usize::MAX, 0usize); self.buffers.len()];
        for (k, kern) in self.kernels.iter().enumerate() {
            for b in kern.op.inputs().into_iter().chain(kern.op.outputs()) {
                r[b].0 = r[b].0.min(k);
                r[b].1 = r[b].1.max(k);
            }
        }
        r
    }

    /// First-fit placement, largest buffers first, of buffers whose live ranges overlap.
    fn plan_memory(&mut self) {
        let ranges = self.live_ranges();
        let mut order: Vec<BufId> = (0..self.buffers.len()).collect();
        order.sort_by_key(|&b| (std::cmp::Reverse(self.buffers[b].layout.len()), b));
        let mut placed: Vec<(usize, usize, BufId)> = Vec::new();
        let mut peak = 0;
        for b in order {
            let len = self.buffers[b].layout.len().next_multiple_of(ALIGN);
            let (lo, hi) = ranges[b];
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&(_, _, o)| ranges[o].0 <= hi && lo <= ranges[o].1)
                .map(|&(s, e, _)| (s, e))
                .collect();
            busy.sort();
            let mut at = 0;
            for (s, e) in busy {
                if at + len <= s {
                    break;
                }
                at = at.max(e);
            }
            self.buffers[b].offset = at;
            placed.push((at, at + len, b));
            peak = peak.max(at + len);
        }
        self.arena_len = peak;
    }

    /// The tiling of a conv kernel's output.
    pub fn conv_geom(&self, op: &Op) -> ConvGeom {
        let Op::Conv { node, input, out, .. } = op else { unreachable!("conv_geom of a conv") };
        let GOp::Conv(c) = &self.graph.nodes[*node].op else { unreachable!("conv node") };
        let (li, lo) = (self.buffers[*input].layout, self.buffers[*out].layout);
        let flat = c.spec.k == 1 && c.spec.stride == 1 && li.pad == 0;
        ConvGeom::new(lo.h, lo.w, flat)
    }

    /// The output tile `m` of the Winograd F(m x m, 3x3) a conv kernel runs as, or `None` for
    /// the direct conv. Eligible: 3x3, stride 1, padding 1, and no channel sums asked of it.
    /// Products number `(m + 2)^2` per `m x m` output tile instead of `9 m^2` (F(2x2): 4/9 of
    /// the multiply-adds, F(4x4): 1/4); the input and output transforms add and scale only, and
    /// the weights are transformed at build time in f64, so the result differs from the
    /// direct conv by rounding only (measured per conv, 64 input channels: direct 1.6e-7,
    /// F(2x2) 2.7e-7, F(4x4) 8.3e-7 relative L2). Of the algorithms whose work item's stack
    /// scratch fits ([`WINOGRAD_SCRATCH_BYTES`]) the cheapest by the cost model wins: products
    /// of the tiles computed in items of up to [`WINOGRAD_ITEM_TILES`] times the measured
    /// overhead ([`WINOGRAD_OVERHEAD`]) plus the weights' traffic ([`WEIGHT_COST`]), against
    /// the direct conv's 9 products per pixel ([`DIRECT_OVERHEAD`]).
    pub fn winograd_tile(&self, op: &Op) -> Option<usize> {
        let Op::Conv { node, out, sums: None, .. } = op else { return None };
        let GOp::Conv(c) = &self.graph.nodes[*node].op else { return None };
        if !(c.spec.k == 3 && c.spec.stride == 1 && c.spec.pad() == 1) {
            return None;
        }
        let lo = self.buffers[*out].layout;
        // Each work item keeps its transformed tiles on the stack: (m + 2)^2 x 12 tiles x channels.
        let widest = (c.spec.cin / c.spec.groups).max((c.spec.cout / c.spec.groups).next_multiple_of(NR));
        let fits = |m: usize| (m + 2) * (m + 2) * 12 * widest * 4 <= WINOGRAD_SCRATCH_BYTES;
        let allowed: &[usize] = match self.winograd_policy {
            WinogradPolicy::Off => return None,
            WinogradPolicy::F4 if fits(4) => return Some(4),
            WinogradPolicy::Auto => &[2, 4],
            _ => &[2],
        };
        let mut best = (None, 9.0 * ((lo.h * lo.w) as f64 * DIRECT_OVERHEAD + WEIGHT_COST));
        for (m, overhead) in WINOGRAD_OVERHEAD {
            let a2 = (m + 2) * (m + 2);
            let tiles = lo.h.div_ceil(m) * lo.w.div_ceil(m);
            let items = tiles.div_ceil(WINOGRAD_ITEM_TILES);
            let computed = items * tiles.div_ceil(items);
            let cost = a2 as f64 * (computed as f64 * overhead + WEIGHT_COST);
            if allowed.contains(&m) && fits(m) && cost < best.1 {
                best = (Some(m), cost);
            }
        }
        best.0
    }

    /// Whether a conv kernel runs as Winograd (see [`Schedule::winograd_tile`]).
    pub fn winograd(&self, op: &Op) -> bool {
        self.winograd_tile(op).is_some()
    }

    /// The conv algorithm's name in the schedule (`None` for other kernels).
    pub fn algorithm(&self, op: &Op) -> Option<&'static str> {
        match (op, self.winograd_tile(op)) {
            (Op::Conv { .. }, Some(2)) => Some("winograd_f2x2_3x3"),
            (Op::Conv { .. }, Some(_)) => Some("winograd_f4x4_3x3"),
            (Op::Conv { .. }, None) => Some("direct"),
            _ => None,
        }
    }

    /// Bytes of all buffers side by side, without reuse.
    pub fn naive_arena_len(&self) -> usize {
        self.buffers.iter().map(|b| b.layout.len().next_multiple_of(ALIGN)).sum()
    }

    /// FLOPs of a kernel (multiply-adds count two; elementwise ops one per output element).
    pub fn flops(&self, k: &Kernel) -> u64 {
        let g = self.graph;
        match &k.op {
            Op::Conv { node, out, .. } => {
                let GOp::Conv(c) = &g.nodes[*node].op else { unreachable!("conv kernels come from conv nodes") };
                2 * self.buffers[*out].layout.interior() as u64 * c.spec.fan_in() as u64
            }
            Op::Fc { node, .. } => {
                let GOp::Linear { weight, .. } = &g.nodes[*node].op else { unreachable!("fc from linear") };
                2 * weight.len() as u64
            }
            op => op.outputs().iter().map(|&b| self.buffers[b].layout.interior() as u64).sum(),
        }
    }

    /// (bytes read, bytes written) per image, weights included.
    pub fn traffic(&self, k: &Kernel) -> (u64, u64) {
        let len = |b: &BufId| 4 * self.buffers[*b].layout.interior() as u64;
        let weights = match &k.op {
            Op::Conv { node, .. } | Op::Fc { node, .. } | Op::EcaGate { node, .. } => {
                let op = &self.graph.nodes[*node].op;
                let len = match (op, self.winograd_tile(&k.op)) {
                    // Winograd weights are stored transformed: (m + 2)^2 per 3x3 kernel.
                    (GOp::Conv(c), Some(m)) => c.weight.len() / 9 * (m + 2) * (m + 2) + c.bias.len(),
                    _ => node_weight_len(op),
                };
                4 * len as u64
            }
            _ => 0,
        };
        let input = if let Op::PackInput { out } = &k.op { len(out) } else { 0 };
        (k.op.inputs().iter().map(len).sum::<u64>() + weights + input, k.op.outputs().iter().map(len).sum())
    }

    /// The schedule as stable JSON (see README, "Kernel schedule").
    pub fn to_json(&self) -> Json {
        let g = self.graph;
        let buf = |b: &BufId| {
            let x = &self.buffers[*b];
            json!({"buffer": x.name, "shape": [x.layout.h, x.layout.w, x.layout.c], "pad": x.layout.pad,
                   "offset_bytes": 4 * x.offset, "bytes": 4 * x.layout.len()})
        };
        let kernels: Vec<Json> = self
            .kernels
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let (r, w) = self.traffic(k);
                json!({
                    "index": i,
                    "kind": k.op.kind(),
                    "modules": k.modules,
                    "algorithm": self.algorithm(&k.op),
                    "inputs": k.op.inputs().iter().map(buf).collect::<Vec<_>>(),
                    "outputs": k.op.outputs().iter().map(buf).collect::<Vec<_>>(),
                    "flops": self.flops(k),
                    "bytes_read": r,
                    "bytes_written": w,
                })
            })
            .collect();
        let passes: Vec<Json> = self
            .passes
            .iter()
            .map(|p| {
                json!({"name": p.name, "applied": p.applied,
                       "declined": p.declined.iter().map(|(m, why)| json!({"at": m, "reason": why})).collect::<Vec<_>>()})
            })
            .collect();
        json!({
            "format": "nfnet-schedule/1",
            "architecture": g.arch.config.architecture,
            "input": [g.batch, 3, g.input_hw.0, g.input_hw.1],
            "batch": g.batch,
            "layout": "NHWC per image; the batch runs image by image through one arena",
            "total_flops_per_image": self.kernels.iter().map(|k| self.flops(k)).sum::<u64>(),
            "arena": {"peak_bytes": 4 * self.arena_len, "naive_bytes": 4 * self.naive_arena_len()},
            "winograd": self.winograd_policy.name(),
            "passes": passes,
            "kernels": kernels,
        })
    }

    /// A human-readable table of the schedule.
    pub fn to_text(&self) -> String {
        json_to_text(&self.to_json())
    }
}

/// Renders the schedule JSON (see [`Schedule::to_json`]) as a table.
pub fn json_to_text(v: &Json) -> String {
    let num = |x: &Json| x.as_f64().unwrap_or(0.0);
    let mut s = String::new();
    let input: Vec<String> =
        v["input"].as_array().map(|a| a.iter().map(|x| x.to_string()).collect()).unwrap_or_default();
    let kernels = v["kernels"].as_array().cloned().unwrap_or_default();
    s += &format!(
        "{} input {}: {} kernels, {:.2} GFLOP per image\n",
        v["architecture"].as_str().unwrap_or("?"),
        input.join("x"),
        kernels.len(),
        num(&v["total_flops_per_image"]) / 1e9
    );
    s += &format!(
        "arena: {:.1} MiB peak (static offsets by liveness) vs {:.1} MiB without reuse\n",
        num(&v["arena"]["peak_bytes"]) / (1 << 20) as f64,
        num(&v["arena"]["naive_bytes"]) / (1 << 20) as f64
    );
    for p in v["passes"].as_array().into_iter().flatten() {
        let applied = p["applied"].as_array().map_or(0, Vec::len);
        let declined = p["declined"].as_array().cloned().unwrap_or_default();
        s += &format!("pass {:<24} applied {applied:>3}", p["name"].as_str().unwrap_or("?"));
        if let Some(d) = declined.first() {
            s += &format!(
                ", declined {} (e.g. {}: {})",
                declined.len(),
                d["at"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("?")
            );
        }
        s += "\n";
    }
    s += &format!(
        "{:>4}  {:<14} {:<48} {:>9} {:>8} {:>8}  {}\n",
        "#", "kind", "modules", "MFLOP", "MB read", "MB writ", "outputs (HxWxC@arena byte offset)"
    );
    for k in &kernels {
        let mods: Vec<&str> = k["modules"].as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
        let mods = mods.join("+");
        let mods = if mods.len() > 48 { format!("{}...", &mods[..45]) } else { mods };
        let outs: Vec<String> = k["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let sh: Vec<String> = o["shape"].as_array().into_iter().flatten().map(|x| x.to_string()).collect();
                format!("{}@{}", sh.join("x"), o["offset_bytes"])
            })
            .collect();
        s += &format!(
            "{:>4}  {:<14} {mods:<48} {:>9.1} {:>8.2} {:>8.2}  {}\n",
            k["index"].as_u64().unwrap_or(0),
            if k["algorithm"].as_str().is_some_and(|a| a.starts_with("winograd")) {
                "conv winograd"
            } else {
                k["kind"].as_str().unwrap_or("?")
            },
            num(&k["flops"]) / 1e6,
            num(&k["bytes_read"]) / 1e6,
            num(&k["bytes_written"]) / 1e6,
            outs.join(" ")
        );
    }
    s
}

pub fn node_weight_len(op: &GOp) -> usize {
    match op {
        GOp::Conv(c) => c.weight.len() + c.bias.len(),
        GOp::Linear { weight, bias } => weight.len() + bias.len(),
        GOp::Eca { weight, .. } => weight.len(),
        _ => 0,
    }
}

/// Graph -> one plain kernel (or a few) per node.
fn lower(g: &Graph) -> Schedule<'_> {
    // A value read by a 3x3 conv gets a zero border as wide as that conv's padding.
    let mut pad = vec![0usize; g.values.len()];
    for n in &g.nodes {
        if let GOp::Conv(c) = &n.op {
            pad[n.inputs[0]] = pad[n.inputs[0]].max(c.spec.pad());
        }
    }
    let mut buffers: Vec<Buffer> = g
        .values
        .iter()
        .zip(&pad)
        .map(|(v, &p)| Buffer {
            name: v.name.clone(),
            layout: Layout { h: v.shape[2], w: v.shape[3], c: v.shape[1], pad: p },
            offset: 0,
        })
        .collect();
    let mut kernels = vec![Kernel { modules: vec!["input".into()], op: Op::PackInput { out: g.input } }];
    let add = |buffers: &mut Vec<Buffer>, name: String, layout: Layout| {
        buffers.push(Buffer { name, layout, offset: 0 });
        buffers.len() - 1
    };
    let taps: Vec<(ValueId, Tap)> = g
        .features
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, Tap::Feature(i)))
        .chain([(g.forward_features, Tap::ForwardFeatures), (g.pre_logits, Tap::PreLogits), (g.logits, Tap::Logits)])
        .collect();
    for (i, n) in g.nodes.iter().enumerate() {
        let m = vec![n.module.clone()];
        let (x, y) = (n.inputs[0], n.output);
        match &n.op {
            GOp::Conv(_) => kernels.push(Kernel {
                modules: m,
                op: Op::Conv { node: i, input: x, out: y, act: false, preact: None, sums: None },
            }),
            GOp::Silu => kernels.push(Kernel {
                modules: m,
                op: Op::ScaleAddAct { r: x, gate: None, shortcut: None, y: None, act: Some(y) },
            }),
            GOp::AvgPool2x2Ceil => kernels.push(Kernel { modules: m, op: Op::AvgPool { input: x, out: y } }),
            GOp::Eca { .. } => {
                let c = buffers[x].layout.c;
                let sums = add(&mut buffers, format!("{}.sums", n.module), Layout { h: 1, w: 1, c, pad: 0 });
                let gate = add(&mut buffers, format!("{}.gate", n.module), Layout { h: 1, w: 1, c, pad: 0 });
                kernels.push(Kernel { modules: m.clone(), op: Op::ChannelSums { input: x, sums } });
                kernels.push(Kernel { modules: m.clone(), op: Op::EcaGate { node: i, sums, gate } });
                kernels.push(Kernel {
                    modules: m,
                    op: Op::ScaleAddAct { r: x, gate: Some(gate), shortcut: None, y: Some(y), act: None },
                });
            }
            GOp::Add => kernels.push(Kernel {
                modules: m,
                op: Op::ScaleAddAct { r: x, gate: None, shortcut: Some(n.inputs[1]), y: Some(y), act: None },
            }),
            GOp::GlobalAvgPool => {
                let l = buffers[x].layout;
                let sums = add(&mut buffers, format!("{}.sums", n.module), Layout { h: 1, w: 1, c: l.c, pad: 0 });
                kernels.push(Kernel { modules: m.clone(), op: Op::ChannelSums { input: x, sums } });
                kernels.push(Kernel { modules: m, op: Op::MeanPool { sums, pixels: l.h * l.w, out: y } });
            }
            GOp::Linear { .. } => kernels.push(Kernel { modules: m, op: Op::Fc { node: i, input: x, out: y } }),
        }
        for &(v, tap) in &taps {
            if v == y {
                kernels.push(Kernel { modules: vec![tap.name()], op: Op::CopyOut { tap, input: v } });
            }
        }
    }
    Schedule {
        graph: g,
        winograd_policy: WinogradPolicy::default(),
        buffers,
        kernels,
        passes: Vec::new(),
        arena_len: 0,
    }
}

/// Conv followed by a SiLU of its output: SiLU in the conv's epilogue. The raw output is still
/// stored (`preact`) when something else reads it (a feature tap).
fn pass_conv_act(s: &mut Schedule) -> PassReport {
    let mut r = PassReport { name: "conv_act", applied: vec![], declined: vec![] };
    let mut k = 0;
    while k < s.kernels.len() {
        let Op::Conv { out, act: false, .. } = s.kernels[k].op else {
            k += 1;
            continue;
        };
        let readers = s.readers(out);
        let silu = readers.iter().copied().find(|&j| {
            matches!(s.kernels[j].op, Op::ScaleAddAct { r, gate: None, shortcut: None, y: None, act: Some(_) } if r == out)
        });
        let Some(j) = silu else {
            r.declined.push((s.kernels[k].modules.join("+"), "no SiLU reads its output".into()));
            k += 1;
            continue;
        };
        let Op::ScaleAddAct { act: Some(a), .. } = s.kernels[j].op else { unreachable!("matched above") };
        let keep_raw = readers.len() > 1;
        let module = s.kernels[j].modules.clone();
        if let Op::Conv { out, act, preact, .. } = &mut s.kernels[k].op {
            *preact = keep_raw.then_some(*out);
            *out = a;
            *act = true;
        }
        s.kernels[k].modules.extend(module);
        r.applied.push(s.kernels[k].modules.join("+"));
        s.kernels.remove(j);
        k += 1;
    }
    r
}

/// Conv whose output is summed per channel (ECA, global pool): the sums accumulate in the
/// conv's epilogue, per block of output rows, in a fixed order.
fn pass_conv_channel_sums(s: &mut Schedule) -> PassReport {
    let mut r = PassReport { name: "conv_channel_sums", applied: vec![], declined: vec![] };
    let mut j = 0;
    while j < s.kernels.len() {
        let Op::ChannelSums { input, sums } = s.kernels[j].op else {
            j += 1;
            continue;
        };
        let producer = (0..j).rev().find(|&k| s.kernels[k].op.outputs().contains(&input));
        let Some(k) = producer.filter(|&k| matches!(s.kernels[k].op, Op::Conv { out, sums: None, .. } if out == input))
        else {
            r.declined.push((s.kernels[j].modules.join("+"), "its input is not the main output of a conv".into()));
            j += 1;
            continue;
        };
        let bands = s.conv_geom(&s.kernels[k].op).bands();
        s.buffers[sums].layout = Layout { h: bands, w: 1, c: s.buffers[input].layout.c, pad: 0 };
        if let Op::Conv { sums: slot, .. } = &mut s.kernels[k].op {
            *slot = Some(sums);
        }
        let m = s.kernels[j].modules.clone();
        for x in m {
            if !s.kernels[k].modules.contains(&x) {
                s.kernels[k].modules.push(x);
            }
        }
        r.applied.push(s.kernels[k].modules.join("+"));
        s.kernels.remove(j);
    }
    r
}

/// Chains of elementwise kernels (ECA gate apply -> residual add -> next block's SiLU) become
/// one pass over the tensor that stores only what is read later.
fn pass_scale_add_act_chain(s: &mut Schedule) -> PassReport {
    let mut r = PassReport { name: "scale_add_act_chain", applied: vec![], declined: vec![] };
    let mut k = 0;
    while k < s.kernels.len() {
        let Op::ScaleAddAct { r: kr, gate: kg, shortcut: ks, y: Some(y), act: None } = s.kernels[k].op else {
            k += 1;
            continue;
        };
        let readers = s.readers(y);
        let mut merged = None;
        for &j in &readers {
            merged = match s.kernels[j].op {
                // A residual add of y (either operand) when y has no shortcut yet and no other reader.
                Op::ScaleAddAct { r: jr, gate: None, shortcut: Some(js), y: jy, act: None }
                    if ks.is_none() && readers.len() == 1 && (jr == y) != (js == y) =>
                {
                    let other = if jr == y { js } else { jr };
                    Some((j, Op::ScaleAddAct { r: kr, gate: kg, shortcut: Some(other), y: jy, act: None }))
                }
                // A SiLU of y: keep storing y only if something else reads it.
                Op::ScaleAddAct { r: jr, gate: None, shortcut: None, y: None, act: Some(a) } if jr == y => {
                    let y_out = (readers.len() > 1).then_some(y);
                    Some((j, Op::ScaleAddAct { r: kr, gate: kg, shortcut: ks, y: y_out, act: Some(a) }))
                }
                _ => None,
            };
            if merged.is_some() {
                break;
            }
        }
        // The merged kernel runs at k: everything it reads must be ready there.
        let ready =
            |op: &Op| op.inputs().iter().all(|b| (0..k).any(|p| s.kernels[p].op.outputs().contains(b)) || *b == kr);
        let why = match &merged {
            None if readers.is_empty() => Some(None),
            None => Some(Some("no elementwise reader it can absorb")),
            Some((_, op)) if !ready(op) => Some(Some("an operand is produced later")),
            Some(_) => None,
        };
        let (Some((j, op)), None) = (merged, why) else {
            if let Some(Some(why)) = why {
                r.declined.push((s.kernels[k].modules.join("+"), why.into()));
            }
            k += 1;
            continue;
        };
        let mods = s.kernels[j].modules.clone();
        s.kernels[k].op = op;
        s.kernels[k].modules.extend(mods);
        s.kernels.remove(j);
        r.applied.push(s.kernels[k].modules.join("+"));
        // k stays: the merged kernel may absorb the next one too.
    }
    r
}

/// Lets an elementwise `v = r * gate + shortcut` write `v` over `r` and `silu(v)` over the
/// shortcut when this kernel is their last reader and the layouts agree: each element is read
/// before it is written at the same place, so the kernel is unchanged, and its stores hit
/// lines it has just read (no read-for-ownership of fresh lines): 4 streams of memory traffic
/// instead of 6, and two fewer buffers in the arena.
fn pass_scale_add_act_in_place(s: &mut Schedule) -> PassReport {
    let mut rep = PassReport { name: "scale_add_act_in_place", applied: vec![], declined: vec![] };
    for k in 0..s.kernels.len() {
        let Op::ScaleAddAct { r, shortcut, y, act, .. } = s.kernels[k].op else { continue };
        let last_reader = |s: &Schedule, b: BufId| s.readers(b).iter().all(|&j| j <= k);
        let same = |s: &Schedule, a: BufId, b: BufId| s.buffers[a].layout == s.buffers[b].layout;
        // (output, input it may overwrite)
        let pairs = match (y, act) {
            (Some(y), Some(a)) => [Some((y, r)), shortcut.map(|sc| (a, sc))],
            (Some(y), None) => [Some((y, r)), None],
            (None, Some(a)) => [Some((a, r)), None],
            (None, None) => [None, None],
        };
        let mut done = Vec::new();
        for (out, inp) in pairs.into_iter().flatten() {
            let why = if !last_reader(s, inp) {
                Some("a later kernel reads the input")
            } else if !same(s, out, inp) {
                Some("the layouts differ")
            } else {
                None
            };
            match why {
                Some(w) => {
                    rep.declined.push((format!("{} over {}", s.buffers[out].name, s.buffers[inp].name), w.into()))
                }
                None => {
                    let name = format!("{} (over {})", s.buffers[out].name, s.buffers[inp].name);
                    s.buffers[inp].name = name.clone();
                    s.remap(|b| if b == out { inp } else { b });
                    done.push(name);
                }
            }
        }
        if !done.is_empty() {
            rep.applied.push(format!("{}: {}", s.kernels[k].modules.join("+"), done.join(", ")));
        }
    }
    rep
}

/// Downsample pooling stays its own kernel: it reads the block's activation once more (a
/// quarter of it is written), under 1% of the bytes of the block; folding it into the GEMM's
/// packing would give the 1x1 conv a second input path for little gain.
fn pass_downsample_pool(s: &Schedule) -> PassReport {
    let mut r = PassReport { name: "downsample_pool", applied: vec![], declined: vec![] };
    for k in &s.kernels {
        if let Op::AvgPool { .. } = k.op {
            r.declined.push((
                k.modules.join("+"),
                "kept as a separate pass: it moves well under 1% of the block's bytes".into(),
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;
    use crate::synth::{self, StorageDtype, SynthSpec};

    #[test]
    fn flat_rows_cover_the_pixels_with_even_rows_on_small_maps() {
        // L2's 10x10 stage: three rows as before, evened out; 20x20 and up: rows of 48.
        let g = ConvGeom::new(10, 10, true);
        assert_eq!((g.rows, g.row_len, g.last_row_len), (3, 36, 28));
        let g = ConvGeom::new(20, 20, true);
        assert_eq!((g.rows, g.row_len, g.last_row_len), (9, 48, 16));
        for (h, w) in [(1, 1), (2, 3), (5, 5), (7, 9), (6, 8), (12, 12), (13, 14), (40, 40)] {
            let g = ConvGeom::new(h, w, true);
            let m = h * w;
            assert_eq!(g.row_len * (g.rows - 1) + g.last_row_len, m, "{h}x{w}");
            assert!(g.last_row_len >= 1 && g.last_row_len <= g.row_len && g.row_len <= M_BLOCK, "{h}x{w}");
            assert_eq!(g.rows, m.div_ceil(M_BLOCK), "{h}x{w}: as many rows as blocks of {M_BLOCK}");
        }
    }

    const TINY_ARGS: &str = r#"{"depths": [1, 2, 1, 1], "channels": [32, 64, 96, 128], "stem_chs": 16,
        "group_size": 8, "num_features": 192}"#;

    fn tiny_graph() -> crate::graph::Graph {
        graph_with(TINY_ARGS, (41, 35))
    }

    fn graph_with(args: &str, size: (usize, usize)) -> crate::graph::Graph {
        let dir = tempfile::tempdir().unwrap();
        let spec = SynthSpec {
            architecture: "eca_nfnet_l0".into(),
            seed: 9,
            num_classes: Some(7),
            model_args: serde_json::from_str(args).unwrap(),
            input_size: None,
            dtype: StorageDtype::F32,
        };
        synth::write(&spec, dir.path()).unwrap();
        Model::load(dir.path()).unwrap().graph(size, 1).unwrap()
    }

    #[test]
    fn winograd_takes_the_stride_1_3x3_convs_that_win_and_fit() {
        let g = tiny_graph();
        let s = Schedule::new(&g, None);
        let wino: Vec<String> = s.kernels.iter().filter(|k| s.winograd(&k.op)).map(|k| k.modules[0].clone()).collect();
        // 41x35: the stem's stride-1 convs at 21x18 and stage 0's at 11x9 (30 tiles, five
        // items of 6) win as F(2x2) (F(4x4) would compute 30 and 10 tiles of 36 products);
        // stage 1's at 6x5 (9 tiles, computed as 10) and later ones are too small.
        assert_eq!(wino, ["stem.conv2", "stem.conv3", "stages.0.0.conv2", "stages.0.0.conv2b"]);
        assert!(s.kernels.iter().all(|k| s.winograd_tile(&k.op) != Some(4)));
        // Twice the size, `auto`: the stem's at 41x35 take F(4x4) (110 tiles of 36 products
        // against 441 of 16), stage 0's at 21x18 stay F(2x2). The default never takes F(4x4).
        let g2 = graph_with(TINY_ARGS, (81, 69));
        let mut s2 = Schedule::new(&g2, None);
        let tile = |s: &Schedule, m: &str| s.winograd_tile(&s.kernels.iter().find(|k| k.modules[0] == m).unwrap().op);
        assert_eq!(tile(&s2, "stem.conv3"), Some(2));
        s2.winograd_policy = WinogradPolicy::Auto;
        assert_eq!(tile(&s2, "stem.conv3"), Some(4));
        assert_eq!(tile(&s2, "stages.0.0.conv2"), Some(2));
        // The policies: direct only; F(2x2) at most; F(4x4) wherever eligible.
        for (policy, stem, stage1) in [
            (WinogradPolicy::Off, None, None),
            (WinogradPolicy::F2, Some(2), Some(2)),
            (WinogradPolicy::F4, Some(4), Some(4)),
        ] {
            let mut s = Schedule::new(&g2, None);
            s.winograd_policy = policy;
            assert_eq!((tile(&s, "stem.conv3"), tile(&s, "stages.1.1.conv2")), (stem, stage1), "{policy:?}");
            // Stride 2 is never Winograd.
            assert_eq!(tile(&s, "stages.1.0.conv2"), None);
        }
        for k in &s.kernels {
            if s.winograd(&k.op) {
                let Op::Conv { node, .. } = k.op else { unreachable!("only convs") };
                let GOp::Conv(c) = &g.nodes[node].op else { unreachable!("conv node") };
                assert!(c.spec.k == 3 && c.spec.stride == 1, "{:?}", k.modules);
            }
        }
        // At 160x160 stage 0's grouped convs are 40x40: groups of 256 channels (mid = 1024 / 4)
        // run as Winograd; groups of 512 would need 384 KiB of stack scratch per array and stay
        // direct.
        for (chs, group, want) in [(1024, 256, true), (2048, 512, false)] {
            let args = format!(
                r#"{{"depths": [1, 1, 1, 1], "channels": [{chs}, {chs}, {chs}, {chs}], "stem_chs": 16,
                    "group_size": {group}, "num_features": 64}}"#
            );
            let g = graph_with(&args, (160, 160));
            let s = Schedule::new(&g, None);
            let k = s.kernels.iter().find(|k| k.modules[0] == "stages.0.0.conv2").unwrap();
            assert_eq!(s.winograd(&k.op), want, "groups of {group}");
        }
    }

    #[test]
    fn passes_apply_where_timm_allows_and_say_why_not_elsewhere() {
        let g = tiny_graph();
        let s = Schedule::new(&g, None);
        let by_name = |n: &str| s.passes.iter().find(|p| p.name == n).unwrap();
        // Every conv a SiLU follows: the 4 stem convs (conv4 by the first block's act1), 3 per
        // block (conv1, conv2, conv2b), final_conv.
        assert_eq!(by_name("conv_act").applied.len(), 4 + 3 * 5 + 1);
        // ECA sums in each conv3 (5 blocks) and the global pool in final_conv.
        assert_eq!(by_name("conv_channel_sums").applied.len(), 5 + 1);
        assert!(by_name("conv_act").declined.iter().all(|(_, why)| why.contains("SiLU")));
        assert!(by_name("downsample_pool").declined.len() == 3);
        // No SiLU or residual add is left on its own.
        for k in &s.kernels {
            if let Op::ScaleAddAct { gate, shortcut, .. } = k.op {
                assert!(gate.is_some() || shortcut.is_some(), "lone elementwise kernel {:?}", k.modules);
            }
        }
        let unfused = Schedule::new(&g, Some(0));
        assert!(unfused.passes.is_empty() && unfused.kernels.len() > s.kernels.len());
        // Every block's gated residual add (5) writes its sum over its conv3 output (and its
        // SiLU over the shortcut where the shortcut dies there).
        let in_place = &by_name("scale_add_act_in_place").applied;
        assert_eq!(in_place.len(), 5, "{in_place:?}");
        let before = Schedule::new(&g, Some(PASSES.len() - 1));
        assert!(s.arena_len < before.arena_len, "{} vs {}", s.arena_len, before.arena_len);
        for k in &s.kernels {
            if let Op::ScaleAddAct { r, y: Some(y), .. } = k.op {
                assert_eq!(r, y, "{:?}", k.modules);
            }
        }
    }

    #[test]
    fn buffers_live_at_the_same_time_never_overlap() {
        let g = tiny_graph();
        for stop in [Some(0), Some(2), None] {
            let s = Schedule::new(&g, stop);
            let r = s.live_ranges();
            for a in 0..s.buffers.len() {
                for b in a + 1..s.buffers.len() {
                    let live = r[a].0 <= r[b].1 && r[b].0 <= r[a].1;
                    let (x, y) = (&s.buffers[a], &s.buffers[b]);
                    let apart = x.offset + x.layout.len() <= y.offset || y.offset + y.layout.len() <= x.offset;
                    assert!(!live || apart, "{} and {} overlap while both live", x.name, y.name);
                }
                assert!(s.buffers[a].offset.is_multiple_of(ALIGN));
                assert!(s.buffers[a].offset + s.buffers[a].layout.len() <= s.arena_len);
            }
            assert!(s.arena_len < s.naive_arena_len());
        }
    }
}
