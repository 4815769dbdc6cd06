//! The model graph for one input size and batch: every tensor with its fixed shape, every
//! operator in execution order, and the weights folded at build time in f64.
//!
//! Folding (DESIGN.md section 2): the scaled weight standardization (gain, gamma, fan-in scale)
//! becomes plain conv weights; each block's `beta` moves into the weights of its two linear
//! consumers (conv1 and the downsample conv, whose average pool is linear too); `attn_gain` and
//! `alpha` become one scale on the ECA gate. What remains are plain ops the code generator fuses.

use crate::arch::{Arch, ConvSpec, SILU_GAMMA};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::ops::{self, Conv2d, Tensor};
use crate::reference::{Outputs, scaled_std_weight};
use std::sync::Mutex;

pub type ValueId = usize;

/// A tensor of the graph: `[b, c, h, w]` (`[b, c, 1, 1]` after pooling).
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub shape: [usize; 4],
    /// The timm module that produces it (`input` for the image).
    pub name: String,
}

/// A convolution with its folded weights (`[cout, cin / groups, k, k]`) and bias.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedConv {
    pub spec: ConvSpec,
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv(FoldedConv),
    Silu,
    /// AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False).
    AvgPool2x2Ceil,
    /// `x * scale * sigmoid(conv1d(mean_hw(x)))`, zero-padded along channels.
    Eca {
        weight: Vec<f64>,
        scale: f64,
    },
    Add,
    GlobalAvgPool,
    /// `weight` is `[out, in]`.
    Linear {
        weight: Vec<f64>,
        bias: Vec<f64>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The timm modules this node implements, e.g. `stages.2.5.conv2` or `stages.2.5.act2`.
    pub module: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// The whole network at fixed shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub arch: Arch,
    pub batch: usize,
    /// (height, width) of the input.
    pub input_hw: (usize, usize),
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub input: ValueId,
    pub logits: ValueId,
    pub pre_logits: ValueId,
    pub forward_features: ValueId,
    /// The five `features_only` taps.
    pub features: Vec<ValueId>,
}

/// Maps `f` over `items` on every core, keeping the order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let work = Mutex::new(items.iter().enumerate());
    let results = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let next = work.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((i, item)) = next else { break };
                    let r = f(item);
                    results.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Folds one conv: standardized weights times `beta` (the scale of its input activation).
fn fold_conv(ckpt: &Checkpoint, spec: &ConvSpec, beta: f64, eps: f64) -> Result<FoldedConv> {
    let t = |p: &str| ckpt.f64(&format!("{}.{p}", spec.name));
    let mut weight = scaled_std_weight(&t("weight")?, &t("gain")?, SILU_GAMMA, eps);
    if beta != 1.0 {
        weight.iter_mut().for_each(|w| *w *= beta);
    }
    Ok(FoldedConv { spec: spec.clone(), weight, bias: t("bias")? })
}

struct Builder {
    values: Vec<Value>,
    nodes: Vec<Node>,
}

impl Builder {
    fn push(&mut self, module: String, op: Op, inputs: Vec<ValueId>, shape: [usize; 4]) -> ValueId {
        self.values.push(Value { shape, name: module.clone() });
        let output = self.values.len() - 1;
        self.nodes.push(Node { module, op, inputs, output });
        output
    }

    fn conv(&mut self, c: FoldedConv, x: ValueId) -> ValueId {
        let [b, _, h, w] = self.values[x].shape;
        let shape = [b, c.spec.cout, c.spec.out_extent(h), c.spec.out_extent(w)];
        self.push(c.spec.name.clone(), Op::Conv(c), vec![x], shape)
    }

    fn unary(&mut self, module: String, op: Op, x: ValueId) -> ValueId {
        let [b, c, h, w] = self.values[x].shape;
        let shape = match op {
            Op::AvgPool2x2Ceil => [b, c, h.div_ceil(2), w.div_ceil(2)],
            Op::GlobalAvgPool => [b, c, 1, 1],
            _ => [b, c, h, w],
        };
        self.push(module, op, vec![x], shape)
    }
}

impl Graph {
    /// Builds the graph of `arch` for `batch` images of `input_hw`, folding the weights of a
    /// checkpoint already validated against `arch`.
    pub fn build(arch: &Arch, ckpt: &Checkpoint, input_hw: (usize, usize), batch: usize) -> Result<Graph> {
        // Fold every conv up front, in parallel: (spec, beta of its input).
        let mut jobs: Vec<(&ConvSpec, f64)> = arch.stem.iter().map(|c| (c, 1.0)).collect();
        for b in &arch.blocks {
            if let Some((ds, _)) = &b.downsample {
                jobs.push((ds, b.beta));
            }
            jobs.push((&b.conv1, b.beta));
            jobs.push((&b.conv2, 1.0));
            jobs.extend(b.conv2b.as_ref().map(|c| (c, 1.0)));
            jobs.push((&b.conv3, 1.0));
        }
        jobs.extend(arch.final_conv.as_ref().map(|c| (c, 1.0)));
        let folded = par_map(&jobs, |(spec, beta)| fold_conv(ckpt, spec, *beta, arch.eps));
        let mut folded = folded.into_iter().collect::<Result<Vec<_>>>()?.into_iter();
        let mut next = || folded.next().expect("one folded conv per job");

        let mut g = Builder { values: Vec::new(), nodes: Vec::new() };
        g.values.push(Value { shape: [batch, 3, input_hw.0, input_hw.1], name: "input".into() });
        let input = 0;
        let mut features = Vec::new();
        let mut x = g.conv(next(), input);
        x = g.unary("stem.act2".into(), Op::Silu, x);
        x = g.conv(next(), x);
        x = g.unary("stem.act3".into(), Op::Silu, x);
        x = g.conv(next(), x);
        features.push(x);
        x = g.unary("stem.act4".into(), Op::Silu, x);
        x = g.conv(next(), x);
        let stage_ends = arch.stage_ends();
        for (i, b) in arch.blocks.iter().enumerate() {
            let n = &b.name;
            let out = g.unary(format!("{n}.act1"), Op::Silu, x);
            let shortcut = match &b.downsample {
                Some((_, pool)) => {
                    let pooled =
                        if *pool { g.unary(format!("{n}.downsample.pool"), Op::AvgPool2x2Ceil, out) } else { out };
                    g.conv(next(), pooled)
                }
                None => x,
            };
            let mut r = g.conv(next(), out);
            r = g.unary(format!("{n}.act2"), Op::Silu, r);
            r = g.conv(next(), r);
            if b.conv2b.is_some() {
                r = g.unary(format!("{n}.act2b"), Op::Silu, r);
                r = g.conv(next(), r);
            }
            r = g.unary(format!("{n}.act3"), Op::Silu, r);
            r = g.conv(next(), r);
            let weight = ckpt.f64(&format!("{n}.attn_last.conv.weight"))?;
            r = g.unary(format!("{n}.attn_last"), Op::Eca { weight, scale: arch.attn_gain * arch.alpha }, r);
            let shape = g.values[r].shape;
            x = g.push(n.clone(), Op::Add, vec![r, shortcut], shape);
            if stage_ends[..3].contains(&i) {
                features.push(x);
            }
        }
        if arch.final_conv.is_some() {
            x = g.conv(next(), x);
        }
        features.push(x);
        let forward_features = g.unary("final_act".into(), Op::Silu, x);
        let pre_logits = g.unary("head.global_pool".into(), Op::GlobalAvgPool, forward_features);
        let logits = if arch.num_classes > 0 {
            let op = Op::Linear { weight: ckpt.f64("head.fc.weight")?, bias: ckpt.f64("head.fc.bias")? };
            let shape = [batch, arch.num_classes, 1, 1];
            g.push("head.fc".into(), op, vec![pre_logits], shape)
        } else {
            pre_logits
        };
        Ok(Graph {
            arch: arch.clone(),
            batch,
            input_hw,
            values: g.values,
            nodes: g.nodes,
            input,
            logits,
            pre_logits,
            forward_features,
            features,
        })
    }

    /// Multiply-adds times two of a node (convolutions and the classifier; elementwise ops
    /// are not counted, as is customary for GFLOP figures).
    pub fn flops(&self, node: &Node) -> u64 {
        let out = self.values[node.output].shape;
        match &node.op {
            Op::Conv(c) => 2 * out.iter().product::<usize>() as u64 * c.spec.fan_in() as u64,
            Op::Linear { weight, .. } => 2 * (self.batch * weight.len()) as u64,
            _ => 0,
        }
    }

    pub fn total_flops(&self) -> u64 {
        self.nodes.iter().map(|n| self.flops(n)).sum()
    }

    /// Evaluates the folded graph in f64 with the same plain operators as the reference.
    pub fn eval(&self, input: &Tensor) -> Outputs {
        assert_eq!(input.shape, self.values[self.input].shape, "graph input shape");
        // Drop every value after its last reader (outputs are kept).
        let mut last_use = vec![usize::MAX; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last_use[v] = i;
            }
        }
        for &v in [self.logits, self.pre_logits, self.forward_features].iter().chain(&self.features) {
            last_use[v] = usize::MAX;
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; self.values.len()];
        vals[self.input] = Some(input.clone());
        for (i, n) in self.nodes.iter().enumerate() {
            let arg = |j: usize| vals[n.inputs[j]].as_ref().expect("graph values are produced before use");
            let y = match &n.op {
                Op::Conv(c) => {
                    let s = &c.spec;
                    let conv = Conv2d {
                        weight: &c.weight,
                        bias: &c.bias,
                        cout: s.cout,
                        k: s.k,
                        stride: s.stride,
                        pad: s.pad(),
                        groups: s.groups,
                    };
                    conv.apply(arg(0))
                }
                Op::Silu => arg(0).map(ops::silu),
                Op::AvgPool2x2Ceil => ops::avg_pool_2x2_ceil(arg(0)),
                Op::Eca { weight, scale } => ops::eca(arg(0), weight, *scale),
                Op::Add => ops::axpy(arg(0), 1.0, arg(1)),
                Op::GlobalAvgPool => ops::global_avg_pool(arg(0)),
                Op::Linear { weight, bias } => ops::linear(arg(0), weight, bias),
            };
            debug_assert_eq!(y.shape, self.values[n.output].shape, "{}", n.module);
            vals[n.output] = Some(y);
            for &v in &n.inputs {
                if last_use[v] == i {
                    vals[v] = None;
                }
            }
        }
        let take = |v: ValueId| vals[v].clone().expect("graph outputs are kept");
        Outputs {
            logits: take(self.logits),
            pre_logits: take(self.pre_logits),
            forward_features: take(self.forward_features),
            features: self.features.iter().map(|&v| take(v)).collect(),
        }
    }
}
