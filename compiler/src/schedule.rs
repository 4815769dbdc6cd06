//! Lowering the graph to a schedule of fused kernels with a static memory plan.
//!
//! Activations live in one arena as NHWC tensors; a tensor read by a 3x3 conv carries a zero
//! border of one pixel so the conv never tests bounds. Lowering first maps every graph node to
//! plain kernels; fusion passes then merge them, each reporting where it applied and why not
//! elsewhere. `stop_after` runs only the first passes, which makes a miscompile bisectable.
//! Finally the memory plan gives every buffer a fixed arena offset by liveness.

use crate::graph::{Graph, Op as GOp, ValueId};
use crate::passes::PASSES;
pub use crate::plan::Policies;
use crate::plan::{self, Algorithm, ConvPlan};
pub use crate::plan::{Precision, WeightDtype, WinogradPolicy};
use nfnet_runtime::bf16;
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
    /// [`M_BLOCK`] pixels of the flattened image (a bf16 conv's: of one block, see
    /// [`ConvGeom::bf16`]); else rows are image rows.
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

    /// The tiling of a bf16 conv, whose blocks are [`nfnet_runtime::bf16::MBLOCK`] pixels:
    /// flat rows of one block each, image rows one per band. A range of bands then ends in a
    /// partial block only where the image does (L2's 10x10 maps: 4 blocks for 100 pixels, not
    /// 5 for rows of 36, 36 and 28; its 20x20 3x3 convs: items end at any row, not every
    /// other).
    pub fn bf16(out_h: usize, out_w: usize, flat: bool) -> ConvGeom {
        if flat {
            let (m, row_len) = (out_h * out_w, nfnet_runtime::bf16::MBLOCK);
            let rows = m.div_ceil(row_len);
            ConvGeom { flat, rows, row_len, last_row_len: m - row_len * (rows - 1), band: 1 }
        } else {
            ConvGeom { flat, rows: out_h, row_len: out_w, last_row_len: out_w, band: 1 }
        }
    }

    pub fn bands(&self) -> usize {
        self.rows.div_ceil(self.band)
    }
}
/// Output channels per weight panel (the micro-kernel's width, on every ISA).
pub use nfnet_runtime::kernels::NR;
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
    /// Holds bf16 values (two per arena float), else f32: see
    /// [`Schedule::store_bf16_activations`].
    pub bf16: bool,
}

impl Buffer {
    /// Arena floats the buffer occupies: a bf16 buffer's values two per float, then the
    /// slack a direct conv's last block reads into.
    pub fn floats(&self) -> usize {
        if self.bf16 { (self.layout.len() + bf16::SLACK_PIXELS * self.layout.c).div_ceil(2) } else { self.layout.len() }
    }

    /// Bytes per value.
    pub fn value_bytes(&self) -> usize {
        if self.bf16 { 2 } else { 4 }
    }
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

impl PassReport {
    pub fn new(name: &'static str) -> PassReport {
        PassReport { name, applied: Vec::new(), declined: Vec::new() }
    }
}

pub struct Schedule<'g> {
    pub graph: &'g Graph,
    /// The policies the plans follow (resolved, see [`Policies::resolved`]).
    pub policies: Policies,
    pub buffers: Vec<Buffer>,
    pub kernels: Vec<Kernel>,
    pub passes: Vec<PassReport>,
    /// Arena floats needed (the peak of the memory plan).
    pub arena_len: usize,
    /// How each conv kernel runs, indexed like `kernels` (`None` for other kernels).
    pub plans: Vec<Option<ConvPlan>>,
}

impl<'g> Schedule<'g> {
    /// Lowers `graph`, runs the first `stop_after` fusion passes (all with `None`), plans
    /// memory, and plans every conv by `policies`.
    pub fn new(graph: &'g Graph, policies: Policies, stop_after: Option<usize>) -> Schedule<'g> {
        let mut s = lower(graph);
        s.policies = policies.resolved();
        let n = stop_after.unwrap_or(PASSES.len()).min(PASSES.len());
        for pass in &PASSES[..n] {
            let report = pass.run(&mut s);
            s.passes.push(report);
        }
        s.gc_buffers();
        if s.policies.precision == Precision::Bf16 {
            s.store_bf16_activations();
        }
        s.plan_memory();
        s.plans = plan::plan_convs(&s, s.policies);
        s
    }

    /// The plan of a conv kernel (`None` for other kernels).
    pub fn plan(&self, op: &Op) -> Option<&ConvPlan> {
        let Op::Conv { node, .. } = op else { return None };
        self.kernels
            .iter()
            .zip(&self.plans)
            .find(|(k, _)| matches!(k.op, Op::Conv { node: n, .. } if n == *node))
            .and_then(|(_, p)| p.as_ref())
    }

    /// Indices of the kernels reading buffer `b`.
    pub(crate) fn readers(&self, b: BufId) -> Vec<usize> {
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
    pub(crate) fn remap(&mut self, f: impl Fn(BufId) -> BufId) {
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

    /// In bf16 precision, the output of a bf16 conv (see [`plan::runs_bf16`]) that only bf16
    /// convs read is stored as bf16: its producer rounds it once, as every reader would. The
    /// rest stays f32: what other kernels read (the residual stream, ECA, pooling), what the
    /// caller may ask for, pre-activations, and what f32 convs read or write.
    /// The activation the elementwise kernel ending a block stores for the next block's
    /// convs follows the same rule.
    fn store_bf16_activations(&mut self) {
        for k in 0..self.kernels.len() {
            let stored = match self.kernels[k].op {
                Op::Conv { out, .. } if plan::runs_bf16(self, &self.kernels[k].op) => out,
                Op::ScaleAddAct { r, act: Some(act), .. } => {
                    if self.branch_bf16(k) {
                        self.buffers[r].bf16 = true;
                    }
                    act
                }
                _ => continue,
            };
            if self.bf16_convs_only_read(stored) {
                self.buffers[stored].bf16 = true;
            }
        }
    }

    /// Whether elementwise kernel `k` reads its `r` as bf16 under bf16 precision: a bf16
    /// conv's output (a block's residual branch before its gate) that only `k` reads, when
    /// `k` stores its activation as bf16 too. The residual stream itself (`shortcut`, `y`)
    /// stays f32.
    pub(crate) fn branch_bf16(&self, k: usize) -> bool {
        let Op::ScaleAddAct { r, act: Some(act), .. } = self.kernels[k].op else { return false };
        let from_bf16_conv = self
            .kernels
            .iter()
            .any(|w| matches!(w.op, Op::Conv { out, .. } if out == r) && plan::runs_bf16(self, &w.op));
        from_bf16_conv
            && self.readers(r) == [k]
            && self.buffers[r].layout.c.is_multiple_of(2)
            && self.bf16_convs_only_read(act)
    }

    /// Whether buffer `b` holds what only bf16 convs read (as their input), in an even number
    /// of channels: under bf16 precision its producer stores it as bf16.
    pub(crate) fn bf16_convs_only_read(&self, b: BufId) -> bool {
        let readers = self.readers(b);
        self.buffers[b].layout.c.is_multiple_of(2)
            && !readers.is_empty()
            && readers.iter().all(|&r| {
                let op = &self.kernels[r].op;
                matches!(op, Op::Conv { input, .. } if *input == b) && plan::runs_bf16(self, op)
            })
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
        order.sort_by_key(|&b| (std::cmp::Reverse(self.buffers[b].floats()), b));
        let mut placed: Vec<(usize, usize, BufId)> = Vec::new();
        let mut peak = 0;
        for b in order {
            let len = self.buffers[b].floats().next_multiple_of(ALIGN);
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
        if plan::runs_bf16(self, op) { ConvGeom::bf16(lo.h, lo.w, flat) } else { ConvGeom::new(lo.h, lo.w, flat) }
    }

    /// The output tile `m` of the Winograd F(m x m, 3x3) a conv kernel runs as, or `None`
    /// (see [`ConvPlan::algorithm`]).
    pub fn winograd_tile(&self, op: &Op) -> Option<usize> {
        match self.plan(op)?.algorithm {
            Algorithm::Winograd { m } => Some(m),
            Algorithm::Direct => None,
        }
    }

    /// Whether a conv kernel runs as Winograd.
    pub fn winograd(&self, op: &Op) -> bool {
        self.winograd_tile(op).is_some()
    }

    /// The conv algorithm's name in the schedule (`None` for other kernels).
    pub fn algorithm(&self, op: &Op) -> Option<&'static str> {
        self.plan(op).map(|p| p.algorithm.name())
    }

    /// Bytes of all buffers side by side, without reuse.
    pub fn naive_arena_len(&self) -> usize {
        self.buffers.iter().map(|b| b.floats().next_multiple_of(ALIGN)).sum()
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
        let len = |b: &BufId| (self.buffers[*b].value_bytes() * self.buffers[*b].layout.interior()) as u64;
        let weights = match &k.op {
            Op::Conv { node, .. } | Op::Fc { node, .. } | Op::EcaGate { node, .. } => {
                let op = &self.graph.nodes[*node].op;
                let len = match (op, self.winograd_tile(&k.op)) {
                    // Winograd weights are stored transformed: (m + 2)^2 per 3x3 kernel.
                    (GOp::Conv(c), Some(m)) => c.weight.len() / 9 * (m + 2) * (m + 2) + c.bias.len(),
                    _ => node_weight_len(op),
                };
                // Conv weights in 16 bits (bf16 convs, or a 16-bit weight dtype) take two bytes.
                let bytes = match self.plan(&k.op) {
                    Some(p) if p.bf16.is_some() || p.weights != WeightDtype::F32 => 2,
                    _ => 4,
                };
                (bytes * len) as u64
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
                   "dtype": if x.bf16 { "bf16" } else { "f32" },
                   "offset_bytes": 4 * x.offset, "bytes": x.value_bytes() * x.layout.len()})
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
                    "plan": self.plans[i].as_ref().map(ConvPlan::to_json),
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
            "winograd": self.policies.winograd.name(),
            "weights": self.policies.weights.name(),
            "precision": self.policies.precision.name(),
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
            bf16: false,
        })
        .collect();
    let mut kernels = vec![Kernel { modules: vec!["input".into()], op: Op::PackInput { out: g.input } }];
    let add = |buffers: &mut Vec<Buffer>, name: String, layout: Layout| {
        buffers.push(Buffer { name, layout, offset: 0, bf16: false });
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
        policies: Policies::default(),
        plans: Vec::new(),
        buffers,
        kernels,
        passes: Vec::new(),
        arena_len: 0,
    }
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
        let s = Schedule::new(&g, Policies::default(), None);
        let wino: Vec<String> = s.kernels.iter().filter(|k| s.winograd(&k.op)).map(|k| k.modules[0].clone()).collect();
        // 41x35: the stem's stride-1 convs at 21x18 and stage 0's at 11x9 (30 tiles, five
        // items of 6) win as F(2x2) (F(4x4) would compute 30 and 10 tiles of 36 products);
        // stage 1's at 6x5 (9 tiles, computed as 10) and later ones are too small.
        assert_eq!(wino, ["stem.conv2", "stem.conv3", "stages.0.0.conv2", "stages.0.0.conv2b"]);
        assert!(s.kernels.iter().all(|k| s.winograd_tile(&k.op) != Some(4)));
        // Twice the size, `auto`: the stem's at 41x35 take F(4x4) (110 tiles of 36 products
        // against 441 of 16), stage 0's at 21x18 stay F(2x2). The default never takes F(4x4).
        let g2 = graph_with(TINY_ARGS, (81, 69));
        let with = |winograd| Schedule::new(&g2, Policies { winograd, ..Policies::default() }, None);
        let tile = |s: &Schedule, m: &str| s.winograd_tile(&s.kernels.iter().find(|k| k.modules[0] == m).unwrap().op);
        assert_eq!(tile(&with(WinogradPolicy::default()), "stem.conv3"), Some(2));
        let s2 = with(WinogradPolicy::Auto);
        assert_eq!(tile(&s2, "stem.conv3"), Some(4));
        assert_eq!(tile(&s2, "stages.0.0.conv2"), Some(2));
        // The policies: direct only; F(2x2) at most; F(4x4) wherever eligible.
        for (policy, stem, stage1) in [
            (WinogradPolicy::Off, None, None),
            (WinogradPolicy::F2, Some(2), Some(2)),
            (WinogradPolicy::F4, Some(4), Some(4)),
        ] {
            let s = with(policy);
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
            let s = Schedule::new(&g, Policies::default(), None);
            let k = s.kernels.iter().find(|k| k.modules[0] == "stages.0.0.conv2").unwrap();
            assert_eq!(s.winograd(&k.op), want, "groups of {group}");
        }
    }

    #[test]
    fn passes_apply_where_timm_allows_and_say_why_not_elsewhere() {
        let g = tiny_graph();
        let s = Schedule::new(&g, Policies::default(), None);
        let by_name = |n: &str| s.passes.iter().find(|p| p.name == n).unwrap();
        // Every conv a SiLU follows: the 4 stem convs (conv4 by the first block's act1), 3 per
        // block (conv1, conv2, conv2b), final_conv.
        assert_eq!(by_name("conv_act").applied.len(), 4 + 3 * 5 + 1);
        // ECA sums in each conv3 (5 blocks) and the global pool in final_conv.
        assert_eq!(by_name("conv_channel_sums").applied.len(), 5 + 1);
        assert!(by_name("conv_act").declined.iter().all(|(_, why)| why.contains("SiLU")));
        // No SiLU or residual add is left on its own.
        for k in &s.kernels {
            if let Op::ScaleAddAct { gate, shortcut, .. } = k.op {
                assert!(gate.is_some() || shortcut.is_some(), "lone elementwise kernel {:?}", k.modules);
            }
        }
        let unfused = Schedule::new(&g, Policies::default(), Some(0));
        assert!(unfused.passes.is_empty() && unfused.kernels.len() > s.kernels.len());
        // Every block's gated residual add (5) writes its sum over its conv3 output (and its
        // SiLU over the shortcut where the shortcut dies there).
        let in_place = &by_name("scale_add_act_in_place").applied;
        assert_eq!(in_place.len(), 5, "{in_place:?}");
        let before = Schedule::new(&g, Policies::default(), Some(PASSES.len() - 1));
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
            let s = Schedule::new(&g, Policies::default(), stop);
            let r = s.live_ranges();
            for a in 0..s.buffers.len() {
                for b in a + 1..s.buffers.len() {
                    let live = r[a].0 <= r[b].1 && r[b].0 <= r[a].1;
                    let (x, y) = (&s.buffers[a], &s.buffers[b]);
                    let apart = x.offset + x.floats() <= y.offset || y.offset + y.floats() <= x.offset;
                    assert!(!live || apart, "{} and {} overlap while both live", x.name, y.name);
                }
                assert!(s.buffers[a].offset.is_multiple_of(ALIGN));
                assert!(s.buffers[a].offset + s.buffers[a].floats() <= s.arena_len);
            }
            assert!(s.arena_len < s.naive_arena_len());
        }
    }
}
