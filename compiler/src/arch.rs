//! The validated architecture: every module of the network with its channels, kernel, stride
//! and groups, derived from [`ModelConfig`] exactly as timm's `NormFreeNet.__init__` does.

use crate::config::{MAX_CHANNELS, MAX_PARAMS, ModelConfig};
use crate::error::{Error, Result};

/// timm's `_nonlin_gamma['silu']`: the variance-preserving gain of SiLU, folded into every conv.
pub const SILU_GAMMA: f64 = 1.7881293296813965;

/// One `ScaledStdConv2d` (weight, bias and gain in the checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSpec {
    /// The timm module path, e.g. `stages.2.5.conv2`.
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub groups: usize,
}

impl ConvSpec {
    fn new(name: impl Into<String>, cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> Self {
        ConvSpec { name: name.into(), cin, cout, k, stride, groups }
    }

    /// timm's `get_padding(k, stride, dilation=1)`, applied symmetrically.
    pub fn pad(&self) -> usize {
        ((self.stride - 1) + (self.k - 1)) / 2
    }

    /// Weights per output channel (the standardization's fan-in).
    pub fn fan_in(&self) -> usize {
        self.cin / self.groups * self.k * self.k
    }

    pub fn weight_shape(&self) -> Vec<usize> {
        vec![self.cout, self.cin / self.groups, self.k, self.k]
    }

    /// Output height or width for an input extent `x`.
    pub fn out_extent(&self, x: usize) -> usize {
        (x + 2 * self.pad() - self.k) / self.stride + 1
    }
}

/// One `NormFreeBlock` (reg = false).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    /// `stages.S.B`
    pub name: String,
    pub stage: usize,
    pub in_chs: usize,
    pub out_chs: usize,
    pub mid_chs: usize,
    pub groups: usize,
    pub stride: usize,
    /// 1 / sqrt(expected variance of the input).
    pub beta: f64,
    /// `downsample.conv`, and whether the 2x2 ceil-mode average pool runs before it.
    pub downsample: Option<(ConvSpec, bool)>,
    pub conv1: ConvSpec,
    pub conv2: ConvSpec,
    pub conv2b: Option<ConvSpec>,
    pub conv3: ConvSpec,
    /// Kernel size of the ECA 1-D conv (`attn_last.conv`).
    pub eca_k: usize,
}

/// The whole network.
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    pub config: ModelConfig,
    /// stem.conv1 .. stem.conv4
    pub stem: [ConvSpec; 4],
    pub blocks: Vec<BlockSpec>,
    pub final_conv: Option<ConvSpec>,
    pub num_features: usize,
    pub num_classes: usize,
    pub alpha: f64,
    pub attn_gain: f64,
    pub eps: f64,
}

/// timm's `make_divisible(v, divisor)` with `min_value = divisor`, `round_limit = 0.9`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (((v + d / 2.0) as i64) / divisor as i64 * divisor as i64).max(divisor as i64);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor as i64;
    }
    new_v as usize
}

/// `EcaModule`'s kernel size for `channels`: t = int(|log2(C) + beta| / gamma), made odd, >= 3.
pub fn eca_kernel_size(channels: usize, gamma: f64, beta: f64) -> usize {
    // Python's math.log(c, 2) is log(c) / log(2).
    let t = (((channels as f64).ln() / 2f64.ln() + beta).abs() / gamma) as usize;
    let t = if t % 2 == 1 { t } else { t + 1 };
    t.max(3)
}

impl Arch {
    /// Derives every module's shape; impossible configurations are errors naming the field.
    pub fn new(config: &ModelConfig) -> Result<Self> {
        let c = &config.cfg;
        let mut problems = Vec::new();
        let too_big = |v: usize| v == 0 || v > MAX_CHANNELS;
        let stem_chs = make_divisible(c.stem_chs.unwrap_or(c.channels[0]) as f64 * c.width_factor, c.ch_div);
        if too_big(stem_chs) || stem_chs < 8 {
            problems.push(format!(
                "model_args.stem_chs gives {stem_chs} stem channels; the deep_quad stem needs 8 to {MAX_CHANNELS}"
            ));
        }
        let stem_out = [stem_chs / 8, stem_chs / 4, stem_chs / 2, stem_chs];
        let stem = [
            ConvSpec::new("stem.conv1", 3, stem_out[0], 3, 2, 1),
            ConvSpec::new("stem.conv2", stem_out[0], stem_out[1], 3, 1, 1),
            ConvSpec::new("stem.conv3", stem_out[1], stem_out[2], 3, 1, 1),
            ConvSpec::new("stem.conv4", stem_out[2], stem_out[3], 3, 2, 1),
        ];
        let mut blocks = Vec::new();
        let mut prev = stem_chs;
        let mut expected_var = 1.0f64;
        for (s, &depth) in c.depths.iter().enumerate() {
            // The deep_quad stem has stride 4, so stage 0 keeps the resolution.
            let stage_stride = if s == 0 { 1 } else { 2 };
            let out = make_divisible(c.channels[s] as f64 * c.width_factor, c.ch_div);
            let mut mid = make_divisible(out as f64 * c.bottle_ratio, c.ch_div);
            let groups = match c.group_size {
                Some(g) => mid / g,
                None => 1,
            };
            if let Some(g) = c.group_size
                && g % c.ch_div == 0
            {
                mid = g * groups;
            }
            if too_big(out) {
                problems.push(format!("model_args.channels[{s}] gives {out} channels; at most {MAX_CHANNELS}"));
            }
            if groups == 0 || mid == 0 || !mid.is_multiple_of(groups) || too_big(mid) {
                let size = c.group_size.map_or("null".to_string(), |g| g.to_string());
                problems.push(format!(
                    "model_args.group_size {size} does not fit stage {s}: {mid} mid channels into {groups} groups"
                ));
                continue;
            }
            for b in 0..depth {
                let stride = if b == 0 { stage_stride } else { 1 };
                let name = format!("stages.{s}.{b}");
                let downsample = (prev != out || stride != 1)
                    .then(|| (ConvSpec::new(format!("{name}.downsample.conv"), prev, out, 1, 1, 1), stride > 1));
                blocks.push(BlockSpec {
                    stage: s,
                    in_chs: prev,
                    out_chs: out,
                    mid_chs: mid,
                    groups,
                    stride,
                    beta: 1.0 / expected_var.sqrt(),
                    downsample,
                    conv1: ConvSpec::new(format!("{name}.conv1"), prev, mid, 1, 1, 1),
                    conv2: ConvSpec::new(format!("{name}.conv2"), mid, mid, 3, stride, groups),
                    conv2b: c.extra_conv.then(|| ConvSpec::new(format!("{name}.conv2b"), mid, mid, 3, 1, groups)),
                    conv3: ConvSpec::new(format!("{name}.conv3"), mid, out, 1, 1, 1),
                    eca_k: eca_kernel_size(out, c.eca_gamma, c.eca_beta),
                    name,
                });
                if b == 0 {
                    expected_var = 1.0;
                }
                expected_var += c.alpha * c.alpha;
                prev = out;
            }
        }
        let (final_conv, num_features) = if c.num_features > 0 {
            let nf = make_divisible(c.width_factor * c.num_features as f64, c.ch_div);
            if too_big(nf) {
                problems.push(format!("model_args.num_features gives {nf} features; at most {MAX_CHANNELS}"));
            }
            (Some(ConvSpec::new("final_conv", prev, nf, 1, 1, 1)), nf)
        } else {
            (None, prev)
        };
        if blocks.iter().any(|b| b.eca_k > 2 * b.out_chs + 1) {
            problems.push("model_args.attn_kwargs gives an ECA kernel wider than its channels".to_string());
        }
        Error::check(problems)?;
        let arch = Arch {
            config: config.clone(),
            stem,
            blocks,
            final_conv,
            num_features,
            num_classes: config.num_classes,
            alpha: c.alpha,
            attn_gain: c.attn_gain,
            eps: c.std_conv_eps,
        };
        let params = arch.params();
        if params > MAX_PARAMS {
            return Err(Error::new(format!(
                "model_args give {params} parameters; at most {MAX_PARAMS} are accepted (eca_nfnet_l3 has 72 million)"
            )));
        }
        Ok(arch)
    }

    /// Every `ScaledStdConv2d`, in timm's module order.
    pub fn convs(&self) -> Vec<&ConvSpec> {
        let mut v: Vec<&ConvSpec> = self.stem.iter().collect();
        for b in &self.blocks {
            if let Some((ds, _)) = &b.downsample {
                v.push(ds);
            }
            v.extend([&b.conv1, &b.conv2]);
            v.extend(b.conv2b.as_ref());
            v.push(&b.conv3);
        }
        v.extend(self.final_conv.as_ref());
        v
    }

    /// Every tensor of timm's state dict with its shape, in timm's order.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let conv = |v: &mut Vec<(String, Vec<usize>)>, c: &ConvSpec| {
            v.push((format!("{}.weight", c.name), c.weight_shape()));
            v.push((format!("{}.bias", c.name), vec![c.cout]));
            v.push((format!("{}.gain", c.name), vec![c.cout, 1, 1, 1]));
        };
        for c in &self.stem {
            conv(&mut v, c);
        }
        for b in &self.blocks {
            if let Some((ds, _)) = &b.downsample {
                conv(&mut v, ds);
            }
            for c in [Some(&b.conv1), Some(&b.conv2), b.conv2b.as_ref(), Some(&b.conv3)].into_iter().flatten() {
                conv(&mut v, c);
            }
            v.push((format!("{}.attn_last.conv.weight", b.name), vec![1, 1, b.eca_k]));
        }
        if let Some(f) = &self.final_conv {
            conv(&mut v, f);
        }
        if self.num_classes > 0 {
            v.push(("head.fc.weight".into(), vec![self.num_classes, self.num_features]));
            v.push(("head.fc.bias".into(), vec![self.num_classes]));
        }
        v
    }

    /// Number of parameters (every tensor of the state dict).
    pub fn params(&self) -> usize {
        self.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Index of the last block of each stage.
    pub fn stage_ends(&self) -> Vec<usize> {
        let n = self.config.cfg.depths.len();
        (0..n).filter_map(|s| self.blocks.iter().rposition(|b| b.stage == s)).collect()
    }
}

/// Smallest and largest input height or width accepted.
pub const MIN_INPUT: usize = 32;
pub const MAX_INPUT: usize = 4096;

/// Parses `S` or `HxW` (height first).
pub fn parse_input_size(text: &str) -> std::result::Result<(usize, usize), String> {
    let parse = |s: &str| s.trim().parse::<usize>().ok();
    let (h, w) = match text.split_once(['x', 'X']) {
        Some((h, w)) => (parse(h), parse(w)),
        None => (parse(text), parse(text)),
    };
    let (Some(h), Some(w)) = (h, w) else {
        return Err(format!("input size '{text}' is not S or HxW (for example 320 or 320x288)"));
    };
    check_input_size(h, w)?;
    Ok((h, w))
}

/// Refuses inputs too small for the network's stride-32 path or absurdly large.
pub fn check_input_size(h: usize, w: usize) -> std::result::Result<(), String> {
    if !(MIN_INPUT..=MAX_INPUT).contains(&h) || !(MIN_INPUT..=MAX_INPUT).contains(&w) {
        return Err(format!("input size {h}x{w} is out of range: height and width must be {MIN_INPUT} to {MAX_INPUT}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn arch(text: &str) -> Result<Arch> {
        Arch::new(&ModelConfig::parse(text, "config.json")?)
    }

    #[test]
    fn l2_matches_timm() {
        let a = arch(r#"{"architecture": "eca_nfnet_l2"}"#).unwrap();
        assert_eq!(a.params(), 56_722_348);
        assert_eq!(a.expected_tensors().len(), 497);
        assert_eq!(a.blocks.len(), 36);
        let first: Vec<f64> = a.stage_ends().iter().map(|&e| e + 1).take(3).map(|i| a.blocks[i].beta).collect();
        assert!((a.blocks[0].beta - 1.0).abs() < 1e-15);
        assert!((first[0] - 0.9449111825230679).abs() < 1e-12, "{first:?}");
        assert!((first[1] - 0.8980265101338746).abs() < 1e-12, "{first:?}");
        assert!((first[2] - 0.7624928516630233).abs() < 1e-12, "{first:?}");
        assert!((a.blocks[1].beta - 0.9805806756909202).abs() < 1e-12);
        let groups: Vec<usize> = a.stage_ends().iter().map(|&e| a.blocks[e].groups).collect();
        assert_eq!(groups, vec![1, 2, 6, 6]);
        assert!(a.blocks.iter().all(|b| b.eca_k == 5));
        assert_eq!(a.num_features, 3072);
        let l0 = arch(r#"{"architecture": "eca_nfnet_l0"}"#).unwrap();
        assert_eq!(l0.num_features, 2304);
        assert_eq!(l0.params(), 24_143_924);
        assert_eq!(arch(r#"{"architecture": "eca_nfnet_l3"}"#).unwrap().params(), 72_036_968);
    }

    #[test]
    fn helpers_match_python() {
        assert_eq!(make_divisible(64.0, 8), 64);
        assert_eq!(make_divisible(12.0, 8), 16);
        assert_eq!(make_divisible(3.0, 8), 8);
        assert_eq!(make_divisible(100.0, 32), 96);
        assert_eq!(make_divisible(83.0, 32), 96);
        assert_eq!(eca_kernel_size(64, 2.0, 1.0), 3);
        assert_eq!(eca_kernel_size(128, 2.0, 1.0), 5);
        assert_eq!(eca_kernel_size(1536, 2.0, 1.0), 5);
        assert_eq!(eca_kernel_size(3072, 1.0, 1.0), 13);
        assert_eq!(parse_input_size("320").unwrap(), (320, 320));
        assert_eq!(parse_input_size("45x37").unwrap(), (45, 37));
        assert!(parse_input_size("0").is_err());
        assert!(parse_input_size("12x").is_err());
        assert!(parse_input_size("100000").is_err());
    }

    #[test]
    fn impossible_groups_are_errors() {
        let e = arch(r#"{"architecture": "eca_nfnet_l0", "model_args": {"group_size": 12}}"#).unwrap_err();
        assert!(e.to_string().contains("model_args.group_size"), "{e}");
        let e = arch(r#"{"architecture": "eca_nfnet_l0", "model_args": {"group_size": 1024}}"#).unwrap_err();
        assert!(e.to_string().contains("model_args.group_size"), "{e}");
    }
}
