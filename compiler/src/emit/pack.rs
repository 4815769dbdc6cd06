//! Packing the folded weights into one blob, in the order each kernel reads them.

use crate::graph::{FoldedConv, Op as GOp};
use crate::schedule::{NR, Op, Schedule};
use nfnet_runtime::bf16::{self, Bf16Desc};

/// Where a kernel's weights start in the blob (floats).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Slot {
    pub weights: usize,
    pub bias: usize,
    /// How many weights (elements) start at `weights`, and whether they are the 16-bit
    /// region's (`weights` then counts u16 from its start).
    pub len: usize,
    pub half: bool,
}

impl Slot {
    /// The weights as a byte range of the blob as written (`data`, then `data16`).
    pub fn byte_range(&self, packed: &Packed) -> std::ops::Range<usize> {
        let at = if self.half { packed.data.len() * 4 + self.weights * 2 } else { self.weights * 4 };
        at..at + self.len * if self.half { 2 } else { 4 }
    }
}

pub use crate::plan::WeightDtype;

/// The blob: f32 values (`data`), then the 16-bit conv weights (`data16`) when the weights
/// are stored in 16 bits; one slot per kernel (default when none). Conv weight slots index
/// `data16` in that case.
pub struct Packed {
    pub data: Vec<f32>,
    pub data16: Vec<u16>,
    pub slots: Vec<Slot>,
}

impl Packed {
    /// The blob as written (little endian): `data`, then `data16`.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = self.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        b.extend(self.data16.iter().flat_map(|v| v.to_le_bytes()));
        b
    }
}

/// Conv weights as panels: `[group][panel][tap][ci][16]`, columns beyond the group's output
/// channels zero (in `data`, or in 16 bits in `data16`, by [`round_channel`]); then the bias
/// as `[group][panel][16]` in `data`.
///
/// For a conv run as Winograd F(m x m, 3x3) (`winograd` = `Some(m)`), the weights are first
/// transformed in f64 to `U = G g G^T` (`(m + 2)^2` per input/output channel pair) and stored
/// as `[group][xi][panel][ci][16]`, one 1x1 conv's panels per element `xi` of the input tile.
pub fn pack_conv(
    c: &FoldedConv,
    winograd: Option<usize>,
    wd: WeightDtype,
    data: &mut Vec<f32>,
    data16: &mut Vec<u16>,
) -> Slot {
    let s = &c.spec;
    let (cin_g, cout_g, kk) = (s.cin / s.groups, s.cout / s.groups, s.k * s.k);
    let panels = cout_g.div_ceil(NR);
    let mut panel_values = Vec::with_capacity(s.groups * panels * kk * cin_g * NR);
    let w = |g: usize, n: usize, ci: usize, t: usize| c.weight[((g * cout_g + n) * cin_g + ci) * kk + t];
    if let Some(m) = winograd {
        assert_eq!(s.k, 3, "Winograd F(m x m, 3x3) takes 3x3 convs");
        for g in 0..s.groups {
            for xi in 0..(m + 2) * (m + 2) {
                for p in 0..panels {
                    for ci in 0..cin_g {
                        for j in 0..NR {
                            let n = p * NR + j;
                            let v = if n < cout_g { winograd_weight(m, |t| w(g, n, ci, t), xi) } else { 0.0 };
                            panel_values.push(v);
                        }
                    }
                }
            }
        }
    }
    // A direct conv's panels: where each value comes from in `c.weight`.
    let order = winograd.is_none().then(|| direct_panel_order(c));
    if let Some(order) = &order {
        panel_values.extend(order.iter().map(|&i| i.map_or(0.0, |i| c.weight[i])));
    }
    let weights = match wd {
        WeightDtype::F32 => {
            align(data);
            let at = data.len();
            data.extend(panel_values.iter().map(|&v| v as f32));
            at
        }
        WeightDtype::Bf16 | WeightDtype::F16 => {
            data16.resize(data16.len().next_multiple_of(32), 0);
            let at = data16.len();
            let half = Half::of(wd);
            match &order {
                None => data16.extend(panel_values.iter().map(|&v| (half.to_bits)(v))),
                Some(order) => {
                    // The same layout as `panel_values`, each output channel rounded keeping sums.
                    let rounded: Vec<u16> =
                        c.weight.chunks(cin_g * kk).flat_map(|ch| round_channel(ch, kk, half)).collect();
                    data16.extend(order.iter().map(|&i| i.map_or(0, |i| rounded[i])));
                }
            }
            at
        }
    };
    align(data);
    let bias = data.len();
    for g in 0..s.groups {
        for p in 0..panels {
            for j in 0..NR {
                let n = p * NR + j;
                data.push(if n < cout_g { c.bias[g * cout_g + n] as f32 } else { 0.0 });
            }
        }
    }
    Slot { weights, bias, len: panel_values.len(), half: wd != WeightDtype::F32 }
}

/// Where each value of a direct conv's panels comes from in `c.weight`, in the panels' order
/// (`[group][panel][tap][ci][16]`); `None` for the columns beyond the group's output channels.
fn direct_panel_order(c: &FoldedConv) -> Vec<Option<usize>> {
    let s = &c.spec;
    let (cin_g, cout_g, kk) = (s.cin / s.groups, s.cout / s.groups, s.k * s.k);
    let mut order = Vec::with_capacity(s.groups * cout_g.div_ceil(NR) * NR * kk * cin_g);
    for g in 0..s.groups {
        for p in 0..cout_g.div_ceil(NR) {
            for t in 0..kk {
                for ci in 0..cin_g {
                    for j in 0..NR {
                        let n = p * NR + j;
                        order.push((n < cout_g).then_some(((g * cout_g + n) * cin_g + ci) * kk + t));
                    }
                }
            }
        }
    }
    order
}

/// A bf16 conv's weights in the tiles' layout (`nfnet_runtime::bf16::b_index`: K = tap x
/// input channel, zero where K or the columns are padded), rounded from f64 by
/// [`round_channel`]; the bias in f32, per group padded to whole column tiles.
fn pack_conv_bf16(c: &FoldedConv, b: &Bf16Desc, data: &mut Vec<f32>, data16: &mut Vec<u16>) -> Slot {
    let s = &c.spec;
    let (cin_g, cout_g, kk) = (s.cin / s.groups, s.cout / s.groups, s.k * s.k);
    data16.resize(data16.len().next_multiple_of(32), 0);
    let weights = data16.len();
    let len = b.weights_len(s.groups);
    data16.resize(weights + len, 0);
    for g in 0..s.groups {
        for n in 0..cout_g {
            let at = ((g * cout_g + n) * cin_g) * kk;
            let rounded = round_channel(&c.weight[at..at + cin_g * kk], kk, Half::BF16);
            for ci in 0..cin_g {
                for t in 0..kk {
                    data16[weights + bf16::b_index(b.kpad, b.ntiles, g, t * cin_g + ci, n)] = rounded[ci * kk + t];
                }
            }
        }
    }
    align(data);
    let bias = data.len();
    for g in 0..s.groups {
        for n in 0..b.ntiles * bf16::TILE {
            data.push(if n < cout_g { c.bias[g * cout_g + n] as f32 } else { 0.0 });
        }
    }
    Slot { weights, bias, len, half: true }
}

/// A 16-bit float format: rounding to nearest even from f64, and back.
#[derive(Clone, Copy)]
pub struct Half {
    to_bits: fn(f64) -> u16,
    to_f64: fn(u16) -> f64,
}

impl Half {
    pub const BF16: Half =
        Half { to_bits: |v| half::bf16::from_f64(v).to_bits(), to_f64: |b| half::bf16::from_bits(b).to_f64() };
    pub const F16: Half =
        Half { to_bits: |v| half::f16::from_f64(v).to_bits(), to_f64: |b| half::f16::from_bits(b).to_f64() };

    fn of(wd: WeightDtype) -> Half {
        match wd {
            WeightDtype::F16 => Half::F16,
            _ => Half::BF16,
        }
    }
}

/// One output channel's weights (`[input channel][tap]`, `taps` per input channel) rounded
/// to 16 bits keeping sums (see [`round_keeping_sum`]): over each input channel's taps when
/// the kernel has several, else over all of them. Rounding errors that add up shift a conv's
/// output by their sum times the input, alike at every pixel where the input is even, and
/// global pooling keeps such a shift while it averages the pixel-to-pixel errors away. Over
/// all inputs, the sum is zero (weight standardization) and stays near it; over one input
/// channel's taps, the error vanishes wherever that channel is locally even, whatever its
/// level (a finer condition than one sum over all inputs, which only holds where all channels
/// share one level).
pub fn round_channel(v: &[f64], taps: usize, half: Half) -> Vec<u16> {
    if taps > 1 {
        v.chunks(taps).flat_map(|t| round_keeping_sum(t, half)).collect()
    } else {
        round_keeping_sum(v, half)
    }
}

/// Values rounded to 16 bits, to nearest even except where rounding the other way keeps
/// their sum: the values nearest the midpoint between their two neighbors go the other way
/// first, one by one while that brings the sum of the rounded values closer to the exact one.
pub fn round_keeping_sum(v: &[f64], half: Half) -> Vec<u16> {
    let mut r: Vec<u16> = v.iter().map(|&x| (half.to_bits)(x)).collect();
    let mut excess: f64 = v.iter().zip(&r).map(|(&x, &b)| (half.to_f64)(b) - x).sum();
    // Each value's other neighbor and the error that rounding to it adds.
    let mut other: Vec<(f64, usize, u16)> = Vec::new();
    for (i, (&x, &b)) in v.iter().zip(&r).enumerate() {
        let near = (half.to_f64)(b);
        if x == near || !x.is_finite() {
            continue;
        }
        let away = if x > near { next_up(b) } else { next_down(b) };
        let far = (half.to_f64)(away);
        if far.is_finite() {
            other.push(((far - x).abs() - (near - x).abs(), i, away));
        }
    }
    other.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, i, away) in other {
        let step = (half.to_f64)(away) - (half.to_f64)(r[i]);
        if (excess + step).abs() < excess.abs() {
            excess += step;
            r[i] = away;
        }
    }
    r
}

/// The least 16-bit float above `b` (bf16 or f16 bit patterns, sign and magnitude; zero of
/// either sign goes to the least subnormal).
fn next_up(b: u16) -> u16 {
    match b {
        0x0000 | 0x8000 => 0x0001,
        _ if b & 0x8000 == 0 => b + 1,
        _ => b - 1,
    }
}

/// The greatest 16-bit float below `b`.
fn next_down(b: u16) -> u16 {
    match b {
        0x0000 | 0x8000 => 0x8001,
        _ if b & 0x8000 == 0 => b - 1,
        _ => b + 1,
    }
}

/// Lavin and Gray's `G` of F(2x2, 3x3), points 0, 1, -1 and infinity.
const G2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// `G` of F(4x4, 3x3) over the points 0, 3/2, -3/2, 2/3, -2/3 and infinity: rows
/// `c_i [1, p_i, p_i^2]` scaled to match the kernels' `B^T` (see `wino_in`). Of all sets of
/// 0 and four points from +-{1, 2, 1/2, 3, 1/3, 3/2, 2/3, 4, 1/4}, these give the smallest
/// f32 error (8.3e-7 relative L2 per conv over 64 channels, against 1.8e-6 for the usual
/// 0, +-1, +-2 and 1.2e-6 for 0, 1, -1, 2, -1/2; numpy simulation of the kernels' rounding).
const G4: [[f64; 3]; 6] = [
    [1.0, 0.0, 0.0],
    [32.0 / 585.0, 16.0 / 195.0, 8.0 / 65.0],
    [32.0 / 585.0, -16.0 / 195.0, 8.0 / 65.0],
    [27.0 / 65.0, 18.0 / 65.0, 12.0 / 65.0],
    [27.0 / 65.0, -18.0 / 65.0, 12.0 / 65.0],
    [0.0, 0.0, 1.0],
];

/// Element `xi` (row-major in the `(m + 2)^2` tile) of `G g G^T` for the 3x3 kernel `g(tap)`
/// of Winograd F(m x m, 3x3), `m` 2 or 4.
pub fn winograd_weight(m: usize, g: impl Fn(usize) -> f64, xi: usize) -> f64 {
    let rows: &[[f64; 3]] = if m == 2 { &G2 } else { &G4 };
    let a = m + 2;
    let (i, j) = (xi / a, xi % a);
    let mut u = 0.0;
    for p in 0..3 {
        for q in 0..3 {
            u += rows[i][p] * g(p * 3 + q) * rows[j][q];
        }
    }
    u
}

fn align(data: &mut Vec<f32>) {
    data.resize(data.len().next_multiple_of(16), 0.0);
}

/// Packs the weights of every kernel of `s` as its plan stores them.
pub fn pack(s: &Schedule) -> Packed {
    let mut data = Vec::new();
    let mut data16 = Vec::new();
    let mut slots = Vec::with_capacity(s.kernels.len());
    for k in &s.kernels {
        let slot = match &k.op {
            Op::Conv { node, .. } => match &s.graph.nodes[*node].op {
                GOp::Conv(c) => {
                    let plan = s.plan(&k.op).expect("every conv kernel is planned");
                    let m = Some(plan.algorithm.winograd_m()).filter(|&m| m > 0);
                    match &plan.bf16 {
                        Some(b) => pack_conv_bf16(c, b, &mut data, &mut data16),
                        None => pack_conv(c, m, plan.weights, &mut data, &mut data16),
                    }
                }
                _ => unreachable!("conv kernels come from conv nodes"),
            },
            Op::EcaGate { node, .. } => match &s.graph.nodes[*node].op {
                GOp::Eca { weight, .. } => {
                    align(&mut data);
                    let at = data.len();
                    data.extend(weight.iter().map(|&w| w as f32));
                    Slot { weights: at, bias: 0, len: weight.len(), half: false }
                }
                _ => unreachable!("eca gates come from eca nodes"),
            },
            Op::Fc { node, .. } => match &s.graph.nodes[*node].op {
                GOp::Linear { weight, bias } => {
                    align(&mut data);
                    let w = data.len();
                    data.extend(weight.iter().map(|&v| v as f32));
                    align(&mut data);
                    let b = data.len();
                    data.extend(bias.iter().map(|&v| v as f32));
                    Slot { weights: w, bias: b, len: weight.len(), half: false }
                }
                _ => unreachable!("fc comes from linear nodes"),
            },
            _ => Slot::default(),
        };
        slots.push(slot);
    }
    align(&mut data);
    data16.resize(data16.len().next_multiple_of(32), 0);
    Packed { data, data16, slots }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ConvSpec;

    /// Standardized weights of one output channel: pseudo-random, centered to sum to zero.
    fn zero_sum_weights(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed;
        let mut v: Vec<f64> = (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2
            })
            .collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        v.iter_mut().for_each(|w| *w -= mean);
        v
    }

    #[test]
    fn rounding_keeps_the_sum_and_only_picks_neighbors() {
        for half in [Half::BF16, Half::F16] {
            for (n, seed) in [(1, 1), (2, 2), (16, 3), (64, 4), (576, 5), (1536, 6), (1536, 7)] {
                let v = zero_sum_weights(n, seed);
                let r = round_keeping_sum(&v, half);
                let mut sum = 0.0;
                let mut sum_nearest = 0.0;
                for (&x, &b) in v.iter().zip(&r) {
                    let (got, nearest) = ((half.to_f64)(b), (half.to_f64)((half.to_bits)(x)));
                    // The nearest value or the neighbor on x's other side, nothing further.
                    let other = if x > nearest { next_up((half.to_bits)(x)) } else { next_down((half.to_bits)(x)) };
                    assert!(got == nearest || b == other, "{x} rounded to {got} (nearest {nearest})");
                    sum += got;
                    sum_nearest += nearest;
                }
                // The widest gap between a value's two neighbors in the format.
                let largest_step = v
                    .iter()
                    .map(|&x| {
                        let b = (half.to_bits)(x);
                        (half.to_f64)(next_up(b)) - (half.to_f64)(next_down(b))
                    })
                    .fold(0.0, f64::max)
                    / 2.0;
                assert!(sum.abs() <= sum_nearest.abs(), "n {n}: sum {sum} against {sum_nearest} to nearest");
                if n >= 16 {
                    // Candidates in both directions remain: the sum is off by half a step at most.
                    assert!(sum.abs() <= largest_step / 2.0, "n {n}: sum {sum}");
                }
                if n >= 576 {
                    assert!(sum.abs() * 16.0 < sum_nearest.abs(), "n {n}: sum {sum} against {sum_nearest}");
                }
            }
        }
    }

    #[test]
    fn a_kernels_channels_keep_the_sum_of_their_taps() {
        let v = zero_sum_weights(64 * 9, 8);
        let r = round_channel(&v, 9, Half::BF16);
        assert_eq!(r.len(), v.len());
        for (ci, (v, r)) in v.chunks(9).zip(r.chunks(9)).enumerate() {
            assert_eq!(r, round_keeping_sum(v, Half::BF16), "input channel {ci}");
            let sum = |b: &[u16]| b.iter().zip(v).map(|(&b, &x)| half::bf16::from_bits(b).to_f64() - x).sum::<f64>();
            let nearest: Vec<u16> = v.iter().map(|&x| half::bf16::from_f64(x).to_bits()).collect();
            assert!(sum(r).abs() <= sum(&nearest).abs(), "input channel {ci}");
        }
        // A 1x1 kernel keeps the sum over all of its inputs.
        assert_eq!(round_channel(&v, 1, Half::F16), round_keeping_sum(&v, Half::F16));
    }

    #[test]
    fn rounding_leaves_exact_values_and_signs() {
        let v = [0.0, -0.0, 1.0, -2.5, 0.375, -0.0078125];
        let r = round_keeping_sum(&v, Half::BF16);
        assert_eq!(r, v.iter().map(|&x| half::bf16::from_f64(x).to_bits()).collect::<Vec<_>>());
        // A sum short by 0.85 of a step moves one value up: the one nearer its midpoint.
        let step = 2.0f64.powi(-7);
        let r = round_keeping_sum(&[1.0 + 0.4 * step, 1.0 + 0.45 * step, -3.0], Half::BF16);
        let got: Vec<f64> = r.iter().map(|&x| half::bf16::from_bits(x).to_f64()).collect();
        assert_eq!(got, [1.0, 1.0 + step, -3.0]);
    }

    #[test]
    fn panels_hold_each_groups_columns_zero_padded() {
        // 2 groups, 3 in and 20 out channels per group (one full panel, one of 4), 1x1.
        let spec = ConvSpec { name: "c".into(), cin: 6, cout: 40, k: 1, stride: 1, groups: 2 };
        let weight: Vec<f64> = (0..40 * 3).map(|i| i as f64).collect();
        let bias: Vec<f64> = (0..40).map(|i| 1000.0 + i as f64).collect();
        let mut data = Vec::new();
        let slot = pack_conv(&FoldedConv { spec, weight, bias }, None, WeightDtype::F32, &mut data, &mut Vec::new());
        // group 1, panel 1, ci 2, column 3 is output channel 20 + 16 + 3 = 39.
        let at = slot.weights + ((2 + 1) * 3 + 2) * 16 + 3;
        assert_eq!(data[at], (39 * 3 + 2) as f32);
        // column 4 of that panel is beyond the group: zero.
        assert_eq!(data[at + 1], 0.0);
        assert_eq!(data[slot.bias + 3 * 16 + 3], 1039.0);
        assert_eq!(data[slot.bias + 3 * 16 + 4], 0.0);
        assert_eq!(slot.weights % 16, 0);
        assert_eq!(slot.bias % 16, 0);
    }

    /// Deterministic values in [-0.5, 0.5) (a 64-bit LCG).
    fn uniform(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
    }

    /// `A^T [(G g G^T) . (B^T d B)] A` is the 3x3 correlation of a 4x4 input tile: checks the
    /// packed weight transform together with the transforms the kernels apply (written out
    /// here in f64 exactly as emitted).
    #[test]
    fn winograd_weights_with_the_kernels_transforms_compute_the_correlation() {
        let mut rnd = uniform(7);
        for _ in 0..20 {
            let g: Vec<f64> = (0..9).map(|_| rnd()).collect();
            let d: Vec<f64> = (0..16).map(|_| rnd()).collect();
            let u: Vec<f64> = (0..16).map(|xi| winograd_weight(2, |t| g[t], xi)).collect();
            // B^T d B, as `wino_in`.
            let mut t = [0.0; 16];
            for j in 0..4 {
                t[j] = d[j] - d[8 + j];
                t[4 + j] = d[4 + j] + d[8 + j];
                t[8 + j] = d[8 + j] - d[4 + j];
                t[12 + j] = d[4 + j] - d[12 + j];
            }
            let mut v = [0.0; 16];
            for i in 0..4 {
                let r = 4 * i;
                v[r] = t[r] - t[r + 2];
                v[r + 1] = t[r + 1] + t[r + 2];
                v[r + 2] = t[r + 2] - t[r + 1];
                v[r + 3] = t[r + 1] - t[r + 3];
            }
            let m: Vec<f64> = (0..16).map(|xi| u[xi] * v[xi]).collect();
            // A^T m A, as `wino_out`.
            let mut s = [0.0; 8];
            for j in 0..4 {
                s[j] = m[j] + m[4 + j] + m[8 + j];
                s[4 + j] = m[4 + j] - m[8 + j] - m[12 + j];
            }
            for a in 0..2 {
                let r = 4 * a;
                let y = [s[r] + s[r + 1] + s[r + 2], s[r + 1] - s[r + 2] - s[r + 3]];
                for (b, yb) in y.iter().enumerate() {
                    let direct: f64 = (0..9).map(|k| g[k] * d[(a + k / 3) * 4 + b + k % 3]).sum();
                    assert!((yb - direct).abs() < 1e-12, "output ({a}, {b}): {yb} vs {direct}");
                }
            }
        }
    }

    /// The same for F(4x4, 3x3): `B^T` and `A^T` as `wino_in` / `wino_out` compute them, one
    /// dimension at a time (columns, then rows).
    #[test]
    fn winograd_f4_weights_with_the_kernels_transforms_compute_the_correlation() {
        let mut rnd = uniform(11);
        let bt = |x: [f64; 6]| {
            let (e, o) = (x[4] * 2.25 - x[2], x[1] * 1.5 - x[3] * 3.375);
            let (e2, o2) = (x[2] * 3.375 - x[4] * 1.5, x[1] * 2.25 - x[3]);
            [x[0] + x[4] - x[2] * (97.0 / 36.0), e - o, e + o, e2 + o2, e2 - o2, x[1] + x[5] - x[3] * (97.0 / 36.0)]
        };
        let at = |x: [f64; 6]| {
            let (s, d, t, u) = (x[1] + x[2], x[1] - x[2], x[3] + x[4], x[3] - x[4]);
            [x[0] + s + t, d * 1.5 + u * (2.0 / 3.0), s * 2.25 + t * (4.0 / 9.0), d * 3.375 + u * (8.0 / 27.0) + x[5]]
        };
        for _ in 0..20 {
            let g: Vec<f64> = (0..9).map(|_| rnd()).collect();
            let d: Vec<f64> = (0..36).map(|_| rnd()).collect();
            let u: Vec<f64> = (0..36).map(|xi| winograd_weight(4, |t| g[t], xi)).collect();
            let mut t = [0.0; 36];
            for j in 0..6 {
                let c = bt(std::array::from_fn(|i| d[6 * i + j]));
                (0..6).for_each(|i| t[6 * i + j] = c[i]);
            }
            let mut m = [0.0; 36];
            for i in 0..6 {
                let r = bt(std::array::from_fn(|j| t[6 * i + j]));
                (0..6).for_each(|j| m[6 * i + j] = r[j] * u[6 * i + j]);
            }
            let mut s = [0.0; 24];
            for j in 0..6 {
                let c = at(std::array::from_fn(|i| m[6 * i + j]));
                (0..4).for_each(|i| s[6 * i + j] = c[i]);
            }
            for a in 0..4 {
                let y = at(std::array::from_fn(|j| s[6 * a + j]));
                for (b, yb) in y.iter().enumerate() {
                    let direct: f64 = (0..9).map(|k| g[k] * d[(a + k / 3) * 6 + b + k % 3]).sum();
                    assert!((yb - direct).abs() < 1e-12, "output ({a}, {b}): {yb} vs {direct}");
                }
            }
        }
    }
}
