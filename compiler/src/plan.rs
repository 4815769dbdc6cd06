//! How each conv runs, decided once, when the schedule is built: its algorithm, the
//! precision of its weights and products, the tiling of its output into work items, the
//! loop order, the micro-kernel of every ISA, and whose weights it fetches ahead. Packing,
//! emission and the JSON schedule only read a [`ConvPlan`]; the policies that steer it
//! ([`Policies`]) are inputs of [`crate::schedule::Schedule::new`].

use crate::graph::Op as GOp;
use crate::schedule::{ConvGeom, M_BLOCK, NR, Op, Schedule};
use nfnet_runtime::bf16::{self, Bf16Desc};
use serde_json::{Value as Json, json};

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

/// How the conv weights are stored (`NFNET_WEIGHT_DTYPE`); products and everything else
/// are f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl WeightDtype {
    pub fn parse(s: &str) -> Option<WeightDtype> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(WeightDtype::F32),
            "bf16" | "bfloat16" => Some(WeightDtype::Bf16),
            "f16" | "float16" => Some(WeightDtype::F16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F16 => "f16",
        }
    }
}

/// The arithmetic of the convs (`NFNET_PRECISION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout, as exact as timm's own float32.
    #[default]
    F32,
    /// Conv inputs and weights rounded to bf16, products accumulated in f32, every epilogue
    /// and everything between the convs in f32: on AMX tiles where the CPU has them.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Precision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(Precision::F32),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            _ => None,
        }
    }
}

/// What the schedule is asked to optimize for: inputs of the plan, never changed after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    pub winograd: WinogradPolicy,
    pub weights: WeightDtype,
    pub precision: Precision,
}

impl Policies {
    /// The policies as planned: 16-bit weights are asked for to halve the binary, and F(4x4)
    /// would store 2.25x F(2x2)'s weights and, rounded to 16 bits, double their error, so
    /// `Auto` plans as `F2` with them.
    /// The policies for what was asked (`None`: not given): a weight dtype or Winograd policy
    /// that bf16 convs cannot follow is an error, never silently changed.
    pub fn checked(
        winograd: Option<WinogradPolicy>,
        weights: Option<WeightDtype>,
        precision: Precision,
    ) -> Result<Policies, String> {
        if precision == Precision::Bf16 {
            if let Some(w) = weights.filter(|&w| w != WeightDtype::Bf16) {
                return Err(format!(
                    "weight dtype {} does not apply with precision bf16 (its weights are bf16)",
                    w.name()
                ));
            }
            if let Some(w) = winograd.filter(|&w| w != WinogradPolicy::Off) {
                return Err(format!(
                    "Winograd policy {} does not apply with precision bf16 (its convs run direct)",
                    w.name()
                ));
            }
        }
        Ok(Policies { winograd: winograd.unwrap_or_default(), weights: weights.unwrap_or_default(), precision })
    }

    /// bf16 convs store bf16 weights (in the tiles' layout) and run direct: their products
    /// are cheap, and Winograd's transforms would round their inputs twice. The convs a bf16
    /// model keeps in f32 (see [`runs_bf16`]) take Winograd wherever the cost model prefers
    /// it (`auto`): their error stays far below the bf16 convs'.
    pub fn resolved(self) -> Policies {
        if self.precision == Precision::Bf16 {
            return Policies { winograd: WinogradPolicy::Auto, weights: WeightDtype::Bf16, ..self };
        }
        let winograd = match (self.winograd, self.weights) {
            (WinogradPolicy::Auto, WeightDtype::Bf16 | WeightDtype::F16) => WinogradPolicy::F2,
            (w, _) => w,
        };
        Policies { winograd, ..self }
    }
}

/// The micro-kernels one ISA's module provides.
#[derive(Debug)]
pub struct IsaKernels {
    /// As `nfnet_runtime::Isa` names it (`avx512`).
    pub isa: &'static str,
    /// f32 lanes per vector.
    pub lanes: usize,
    /// Micro-kernel shapes, most preferred first: (weight panels of [`NR`] channels, pixels
    /// per tile at most). A conv takes the first its plan allows (see [`micro_kernel`]) whose
    /// panel count divides its group's (all panels full). AVX-512 computes 8 x 48 for the 1x1
    /// convs over up to 1536 input channels on 192+ pixels, else 6 x 64 (24 accumulators:
    /// each broadcast input feeds four FMAs), else 12 x 32, else 12 x 16.
    pub shapes: &'static [(usize, usize)],
}

/// Every ISA module's micro-kernels, in the order the modules are emitted.
pub const ISA_KERNELS: [IsaKernels; 4] = [
    IsaKernels { isa: "scalar", lanes: 1, shapes: &[(1, 4)] },
    IsaKernels { isa: "avx2", lanes: 8, shapes: &[(1, 6)] },
    IsaKernels { isa: "avx512", lanes: 16, shapes: &[(3, 8), (4, 6), (2, 12), (1, 12)] },
    IsaKernels { isa: "neon", lanes: 4, shapes: &[(1, 6)] },
];

/// A conv's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Direct,
    /// Winograd F(m x m, 3x3): the output in m x m tiles.
    Winograd {
        m: usize,
    },
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Direct => "direct",
            Algorithm::Winograd { m: 2 } => "winograd_f2x2_3x3",
            Algorithm::Winograd { .. } => "winograd_f4x4_3x3",
        }
    }

    /// The Winograd output tile, 0 for the direct conv.
    pub fn winograd_m(self) -> usize {
        match self {
            Algorithm::Direct => 0,
            Algorithm::Winograd { m } => m,
        }
    }
}

/// How one ISA runs a conv: a micro-kernel of `panels` weight panels by up to `mr` pixels,
/// in tiles of `tile` pixels (direct) or output tiles (Winograd), over `items` work items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MicroKernel {
    pub isa: &'static str,
    pub panels: usize,
    pub mr: usize,
    pub tile: usize,
    pub items: usize,
    /// Winograd only: the stack scratch of an item in vectors (transformed input, products).
    pub scratch_vectors: (usize, usize),
}

/// Everything that decides how one conv kernel runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPlan {
    pub algorithm: Algorithm,
    pub weights: WeightDtype,
    /// Input channels per group, taps, output channels per group, groups.
    pub kc: usize,
    pub taps: usize,
    pub cout_g: usize,
    pub groups: usize,
    /// Output pixels, and the Winograd output tiles (0 for direct).
    pub pixels: usize,
    pub tiles: usize,
    /// Floats between consecutive pixels of a tile in the input.
    pub step: usize,
    pub geom: ConvGeom,
    /// Loop order: all bands per weight panel (the weights stay in cache), else all panels
    /// per band (the band's pixels stay in cache, and each thread keeps its own pixels from
    /// one kernel to the next).
    pub panel_outer: bool,
    /// One per entry of [`ISA_KERNELS`], in that order.
    pub micro: Vec<MicroKernel>,
    /// The kernel whose weights this conv's work items fetch ahead into the cache (f32
    /// convs only).
    pub ahead: Option<usize>,
    /// bf16 convs: the implicit GEMM's shape (`None`: f32).
    pub bf16: Option<Bf16Desc>,
}

impl ConvPlan {
    /// The micro-kernel of one ISA (as [`IsaKernels::isa`] names it).
    pub fn micro(&self, isa: &str) -> &MicroKernel {
        self.micro.iter().find(|m| m.isa == isa).expect("a micro-kernel for every ISA")
    }

    /// Pixels of the longest row a tile may cover (the tile height is at most this).
    pub fn max_tile(&self) -> usize {
        self.geom.row_len.max(self.geom.last_row_len).min(self.pixels)
    }

    pub fn to_json(&self) -> Json {
        let g = &self.geom;
        let micro: serde_json::Map<String, Json> = self
            .micro
            .iter()
            .map(|m| {
                let mut v = json!({"panels": m.panels, "channels": m.panels * NR, "max_pixels": m.mr,
                                   "tile": m.tile, "items": m.items});
                if m.scratch_vectors != (0, 0) {
                    v["scratch_vectors"] = json!([m.scratch_vectors.0, m.scratch_vectors.1]);
                }
                (m.isa.to_string(), v)
            })
            .collect();
        let (products, layout) = match self.bf16 {
            Some(_) => ("bf16", "tile_pairs"),
            None => ("f32", "panels"),
        };
        let mut v = json!({
            "algorithm": self.algorithm.name(),
            "precision": if self.bf16.is_some() { "bf16" } else { "f32" },
            "input_channels_per_group": self.kc,
            "groups": self.groups,
            "weights": self.weights.name(),
            "weights_layout": layout,
            "products": products,
            "accumulation": "f32",
            "tiling": {"flat": g.flat, "rows": g.rows, "row_len": g.row_len, "last_row_len": g.last_row_len,
                       "rows_per_band": g.band, "bands": g.bands(), "winograd_tiles": self.tiles},
            "loop_order": if self.panel_outer { "panel_outer" } else { "band_outer" },
            "micro_kernels": micro,
            "split": "each thread a contiguous range of the items, idle threads take the rest",
            "fetch_ahead": self.ahead.map(|k| json!({"kernel": k})),
        });
        if let Some(b) = &self.bf16 {
            v["bf16"] = json!({
                "amx_block": "32 pixels x 32 channels: 2 x 2 tiles of 16 x 16 f32",
                "k_padded": b.kpad, "column_tiles_per_group": b.ntiles, "splits": b.splits, "parts": b.parts,
                "pixels_per_gather": b.chunk, "scratch_bytes": 2 * b.scratch_len(),
                "input": if b.input16 { "bf16" } else { "f32" },
                "output": if b.output16 { "bf16" } else { "f32" },
                "a_tiles": if b.direct { "loaded from the input, tap by tap" } else { "gathered (and rounded) per pixel" },
            });
        }
        v
    }
}

/// Plans every conv kernel of `s` (indexed like `s.kernels`, `None` for other kernels).
pub fn plan_convs(s: &Schedule, p: Policies) -> Vec<Option<ConvPlan>> {
    let mut plans: Vec<Option<ConvPlan>> = s.kernels.iter().map(|k| plan_conv(s, &k.op, p)).collect();
    let mut next = None;
    for (i, k) in s.kernels.iter().enumerate().rev() {
        // bf16 convs leave the weights to the hardware's prefetchers: asking for them made
        // every bf16 conv slower, the next one no faster.
        if let Some(plan) = plans[i].as_mut().filter(|p| p.bf16.is_none()) {
            plan.ahead = next;
        }
        if matches!(k.op, Op::Conv { .. } | Op::Fc { .. }) {
            next = Some(i);
        }
    }
    plans
}

fn plan_conv(s: &Schedule, op: &Op, p: Policies) -> Option<ConvPlan> {
    let Op::Conv { node, input, out, .. } = op else { return None };
    let GOp::Conv(c) = &s.graph.nodes[*node].op else { unreachable!("conv kernels come from conv nodes") };
    let sp = &c.spec;
    let (li, lo) = (s.buffers[*input].layout, s.buffers[*out].layout);
    let (input16, output16) = (s.buffers[*input].bf16, s.buffers[*out].bf16);
    let geom = s.conv_geom(op);
    let (kc, cout_g, taps) = (sp.cin / sp.groups, sp.cout / sp.groups, sp.k * sp.k);
    let algorithm = match winograd_tile(s, op, p.winograd).filter(|_| !runs_bf16(s, op)) {
        Some(m) => Algorithm::Winograd { m },
        None => Algorithm::Direct,
    };
    let m = algorithm.winograd_m();
    let pixels = lo.h * lo.w;
    // Keep the weights in cache when they outweigh the activations on a small image: with
    // few bands each band's pass over the weights (from L3 or DRAM) costs more than the
    // panel-outer order's re-reads of the activations. From 4 blocks of pixels on, the
    // weights' stream per band hides behind the band's work, fetched ahead a unit at a
    // time, and band-outer keeps each thread's pixels its own from one kernel to the next.
    let panel_outer = taps * kc * sp.cout > li.h * li.w * li.c && pixels < 4 * M_BLOCK;
    let bf16 = runs_bf16(s, op).then(|| {
        let direct = bf16::loads_direct(input16, sp.stride, kc);
        let b = bf16_desc(&geom, kc * taps, cout_g, sp.groups, lo.w, direct);
        Bf16Desc { input16, output16, ..b }
    });
    let mut plan = ConvPlan {
        bf16,
        algorithm,
        // A conv left in f32 by a bf16 policy keeps f32 weights.
        weights: if p.precision == Precision::Bf16 && bf16.is_none() { WeightDtype::F32 } else { p.weights },
        kc,
        taps,
        cout_g,
        groups: sp.groups,
        pixels,
        tiles: if m > 0 { lo.h.div_ceil(m) * lo.w.div_ceil(m) } else { 0 },
        step: if geom.flat { li.c } else { sp.stride * li.c },
        geom,
        panel_outer,
        micro: Vec::new(),
        ahead: None,
    };
    plan.micro = ISA_KERNELS.iter().map(|k| micro_kernel(&plan, k)).collect();
    Some(plan)
}

/// Whether a conv kernel runs in bf16: the policy asks for it and it reads at least
/// [`BF16_MIN_INPUT_CHANNELS`] channels.
pub fn runs_bf16(s: &Schedule, op: &Op) -> bool {
    let Op::Conv { node, .. } = op else { return false };
    let GOp::Conv(c) = &s.graph.nodes[*node].op else { unreachable!("conv kernels come from conv nodes") };
    s.policies.precision == Precision::Bf16 && c.spec.cin >= BF16_MIN_INPUT_CHANNELS
}

/// Input channels below which a conv stays f32 (with f32 weights) under bf16 precision: the
/// first convs, on the image and its first maps, have little to multiply per output and
/// much to gather, and the rounding of their inputs reaches every later layer.
pub const BF16_MIN_INPUT_CHANNELS: usize = 64;

/// Largest gather scratch of a bf16 work item (a band's pixels are gathered in chunks).
pub const BF16_SCRATCH_BYTES: usize = 256 * 1024;

/// Work items a bf16 conv is split into at least (when its bands allow), so that two to
/// four threads share it evenly (a multiple of 2, 3 and 4; a 1x1 conv in 3 column splits
/// gets 12 items, not 9): ranges of bands, which each read the weights again (from cache
/// when they are small) but gather each pixel once.
pub const BF16_MIN_ITEMS: usize = 12;

/// Most bytes of weights one bf16 work item runs: they stay in a core's L2 while its
/// pixels pass by in chunks.
pub const BF16_ITEM_WEIGHT_BYTES: usize = 512 * 1024;

/// The implicit GEMM of a bf16 conv: `k` = taps x input channels per group.
/// A `direct` conv loads A from its input (no scratch, so its chunks are as long as the
/// pixel table allows).
fn bf16_desc(geom: &ConvGeom, k: usize, cout_g: usize, groups: usize, out_w: usize, direct: bool) -> Bf16Desc {
    let kpad = k.next_multiple_of(bf16::KSTEP);
    assert!(kpad <= bf16::MAX_KSTEPS * bf16::KSTEP, "a bf16 conv's K is at most {}", bf16::MAX_KSTEPS * bf16::KSTEP);
    let ntiles = cout_g.div_ceil(bf16::TILE);
    let pixels = geom_pixels(geom, out_w);
    let fit = if direct { bf16::MAX_CHUNK } else { (BF16_SCRATCH_BYTES / (2 * kpad)) / bf16::MBLOCK * bf16::MBLOCK };
    let chunk = pixels.next_multiple_of(bf16::MBLOCK).min(fit.max(bf16::MBLOCK)).min(bf16::MAX_CHUNK);
    let pairs = ntiles.div_ceil(2);
    let weight_bytes = kpad * ntiles * bf16::TILE * 2;
    // Columns are split only to keep an item's weights in L2: each split gathers the pixels again.
    let splits = weight_bytes.div_ceil(BF16_ITEM_WEIGHT_BYTES).clamp(1, pairs);
    // Bands are whole blocks of pixels (see `ConvGeom::bf16`): any range of them computes
    // no block a tighter split would not.
    let parts = BF16_MIN_ITEMS.div_ceil(groups * splits).clamp(1, geom.bands());
    Bf16Desc { kpad, ntiles, splits, parts, chunk, input16: false, output16: false, direct }
}

/// Output pixels of a conv's tiling.
fn geom_pixels(g: &ConvGeom, out_w: usize) -> usize {
    if g.flat { g.row_len * (g.rows - 1) + g.last_row_len } else { g.rows * out_w }
}

/// The micro-kernel and tiling one ISA runs a planned conv with.
pub fn micro_kernel(c: &ConvPlan, isa: &IsaKernels) -> MicroKernel {
    if let Some(b) = &c.bf16 {
        // One kernel on every ISA (AMX tiles or its portable twin): 2 x 2 tiles of 16 x 16.
        let items = b.items(c.groups);
        return MicroKernel {
            isa: isa.isa,
            panels: 2,
            mr: bf16::MBLOCK,
            tile: bf16::MBLOCK,
            items,
            scratch_vectors: (0, 0),
        };
    }
    let narrow = c.weights != WeightDtype::F32;
    let wino_m = c.algorithm.winograd_m();
    let panels_g = c.cout_g.div_ceil(NR);
    let (p, mr) = isa
        .shapes
        .iter()
        .copied()
        // Products per output decide how far the weights stream from per tile: over 1024
        // the weights of four panels stream from L2 per tile, and two panels over twice the
        // pixels halve that. 16-bit weights always take two panels (each weight vector is
        // widened on the FMA ports; the taller tile widens half as many per FMA). Three
        // panels over 8 pixels suit the 1x1 convs over up to 1536 channels on 4 blocks of
        // pixels or more, whose weights stream from L2 once per tile.
        .filter(|&(p, _)| {
            let k = c.kc * if wino_m > 0 { 1 } else { c.taps };
            match p {
                3 => !narrow && wino_m == 0 && c.taps == 1 && k <= 1536 && c.pixels >= 4 * M_BLOCK,
                4 => !narrow && (k < 1024 || c.pixels < 4 * M_BLOCK),
                _ => true,
            }
        })
        .find(|&(p, _)| p == 1 || (c.cout_g.is_multiple_of(NR) && panels_g.is_multiple_of(p)))
        .unwrap_or((1, 1));
    if wino_m > 0 {
        // One micro-tile of output tiles per item (the scratch stays in L1), the tiles split
        // evenly (25 tiles: 5 items of 5, not 5 of 6); scratch on the stack in vectors: the
        // transformed input and the products.
        let t = c.tiles.div_ceil(c.tiles.div_ceil(mr)).min(mr);
        let a2 = (wino_m + 2) * (wino_m + 2);
        let scratch =
            ((a2 * t * c.kc).div_ceil(isa.lanes), (a2 * t * c.cout_g.next_multiple_of(NR)).div_ceil(isa.lanes));
        let items = c.groups * c.tiles.div_ceil(t);
        return MicroKernel { isa: isa.isa, panels: p, mr, tile: t, items, scratch_vectors: scratch };
    }
    // Tiles of equal height that cover a row exactly where possible (a row of 20 pixels is
    // two tiles of 10, not 12 + an overlapping 12); or, of the heights above 2/3 of the
    // widest, the tallest that wastes no pixel (an 80-pixel row: 16 tiles of 5, not 14 of 6
    // computing 84).
    let row = c.max_tile();
    let even = row.div_ceil(row.div_ceil(mr)).min(mr);
    let tile = if row.is_multiple_of(even) {
        even
    } else {
        (mr * 2 / 3 + 1..=mr).rev().find(|&t| row.is_multiple_of(t)).unwrap_or(even)
    };
    let items = c.geom.bands() * c.groups * panels_g / p;
    MicroKernel { isa: isa.isa, panels: p, mr, tile, items, scratch_vectors: (0, 0) }
}

/// Cost of one product of a direct 3x3 conv, relative to an ideal one, and of the Winograd
/// algorithms by output tile `m` (transforms, scratch traffic, short sums of 64 channels),
/// fitted to per-kernel timings (docs/benchmarks.md).
pub const DIRECT_OVERHEAD: f64 = 1.25;
pub const WINOGRAD_OVERHEAD: [(usize, f64); 2] = [(2, 1.7), (4, 2.2)];

/// The cost of one stored weight in products: a conv with `e` weights per input/output
/// channel pair (9 direct, `(m + 2)^2` Winograd) over `n` pixels or tiles costs
/// `e (n x overhead + WEIGHT_COST)`. The weights outgrow the caches and stream from DRAM on
/// every inference, and F(4x4) stores 4x the direct conv's (F(2x2): 1.8x).
pub const WEIGHT_COST: f64 = 40.0;

/// Output tiles per Winograd work item at most (the micro-tile height of the 64-channel
/// groups on AVX-512 (6 x 64), AVX2 and NEON (6 x 16)); the tiles are split evenly over the
/// items (25 tiles: 5 items of 5), a last partial item still computes all of its tiles.
pub const WINOGRAD_ITEM_TILES: usize = 6;

/// Largest stack scratch of a Winograd work item, per array (input and products): groups of
/// up to 341 channels for F(2x2), 151 for F(4x4); wider convs take the smaller tile or stay
/// direct.
pub const WINOGRAD_SCRATCH_BYTES: usize = 256 * 1024;

/// The output tile `m` of the Winograd F(m x m, 3x3) a conv kernel runs as under `policy`,
/// or `None` for the direct conv. Eligible: 3x3, stride 1, padding 1, and no channel sums
/// asked of it. Products number `(m + 2)^2` per `m x m` output tile instead of `9 m^2`
/// (F(2x2): 4/9 of the multiply-adds, F(4x4): 1/4); the input and output transforms add and
/// scale only, and the weights are transformed at build time in f64, so the result differs
/// from the direct conv by rounding only. Of the algorithms whose work item's stack scratch
/// fits ([`WINOGRAD_SCRATCH_BYTES`]) the cheapest by the cost model wins: products of the
/// tiles computed in items of up to [`WINOGRAD_ITEM_TILES`] times the overhead
/// ([`WINOGRAD_OVERHEAD`]) plus the weights' traffic ([`WEIGHT_COST`]), against the direct
/// conv's 9 products per pixel ([`DIRECT_OVERHEAD`]).
fn winograd_tile(s: &Schedule, op: &Op, policy: WinogradPolicy) -> Option<usize> {
    let Op::Conv { node, out, sums: None, .. } = op else { return None };
    let GOp::Conv(c) = &s.graph.nodes[*node].op else { return None };
    if !(c.spec.k == 3 && c.spec.stride == 1 && c.spec.pad() == 1) {
        return None;
    }
    let lo = s.buffers[*out].layout;
    // Each work item keeps its transformed tiles on the stack: (m + 2)^2 x 12 tiles x channels.
    let widest = (c.spec.cin / c.spec.groups).max((c.spec.cout / c.spec.groups).next_multiple_of(NR));
    let fits = |m: usize| (m + 2) * (m + 2) * 12 * widest * 4 <= WINOGRAD_SCRATCH_BYTES;
    let allowed: &[usize] = match policy {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_convs_compute_the_fewest_blocks_their_parts_allow() {
        // Blocks an item's pixels take (a direct 3x3 conv's rows as wide as its padded input).
        let blocks = |g: &ConvGeom, b: &Bf16Desc, vw: usize| -> usize {
            let (bands, end) = (g.bands(), if g.flat { g.row_len } else { vw } * (g.rows - 1) + g.last_row_len);
            let start = |i: usize| if g.flat { (i * g.band * g.row_len).min(end) } else { (i * g.band * vw).min(end) };
            (0..b.parts).map(|p| (start((p + 1) * bands / b.parts) - start(p * bands / b.parts)).div_ceil(MBLOCK)).sum()
        };
        use bf16::MBLOCK;
        // L2's 1x1 convs (1536 -> 384: 3 column splits, 4 parts): every split computes the
        // image's blocks and no more, at 320 (400 pixels: 13) and 384 (576: 18), and on the
        // 10x10 and 12x12 maps (4 and 5; rows of 36, 36 and 28 took 5 and 6).
        for (side, want) in [(20, 13), (24, 18), (10, 4), (12, 5)] {
            let g = ConvGeom::bf16(side, side, true);
            let b = bf16_desc(&g, 1536, 384, 1, side, true);
            assert_eq!((b.splits, b.parts), (3, 4), "{side}x{side}");
            assert_eq!(blocks(&g, &b, side), want, "{side}x{side}");
            assert_eq!(want, (side * side).div_ceil(MBLOCK));
        }
        // Grouped 3x3 convs (6 groups, 2 parts) end their parts at any image row: 10x10 (rows
        // 12 wide with the border) in 2 + 2 blocks, not the 2 + 3 of bands of 4 rows.
        let g = ConvGeom::bf16(10, 10, false);
        let b = bf16_desc(&g, 9 * 64, 64, 6, 10, true);
        assert_eq!((g.band, b.parts, blocks(&g, &b, 12)), (1, 2, 4));
        assert_eq!(blocks(&ConvGeom::new(10, 10, false), &b, 12), 5);
    }
}
