//! The reference executor: the model evaluated as timm writes it, unfolded, in f64 throughout.
//!
//! Weights are upcast from the checkpoint and standardized on every call exactly as timm's
//! `ScaledStdConv2d.forward` does; activations and sums are f64. It is the oracle every other
//! path of nfnet is tested against, and it is checked itself against timm's own outputs.

use crate::arch::{Arch, ConvSpec, SILU_GAMMA};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::ops::{self, Conv2d, Tensor};

/// Everything a user can ask of the model, for a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    /// `[b, num_classes, 1, 1]` (with `num_classes = 0`, the pooled features, as timm returns).
    pub logits: Tensor,
    /// `[b, num_features, 1, 1]`: `forward_head(pre_logits=True)`.
    pub pre_logits: Tensor,
    /// `[b, num_features, h/32, w/32]`: `forward_features`, after the final SiLU.
    pub forward_features: Tensor,
    /// timm's `features_only` maps: stem.conv3 (before its SiLU), stages.0, stages.1,
    /// stages.2, final_conv (before final_act; stages.3 when there is no final_conv).
    pub features: Vec<Tensor>,
}

/// Scaled weight standardization (timm `ScaledStdConv2d`): for each output channel o,
/// `w'[o] = gain[o] * gamma * fan_in^-1/2 * (w[o] - mean_o) / sqrt(var_o + eps)` with the biased
/// variance over the channel's `fan_in` weights.
pub fn scaled_std_weight(w: &[f64], gain: &[f64], gamma: f64, eps: f64) -> Vec<f64> {
    let fan_in = w.len() / gain.len();
    let scale = gamma * (fan_in as f64).powf(-0.5);
    let mut out = Vec::with_capacity(w.len());
    for (row, &g) in w.chunks(fan_in).zip(gain) {
        let n = fan_in as f64;
        let mean = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        out.extend(row.iter().map(|v| (v - mean) * inv * (g * scale)));
    }
    out
}

/// Runs timm's forward on a checkpoint already validated against `arch`.
pub struct Reference<'a> {
    pub arch: &'a Arch,
    pub checkpoint: &'a Checkpoint,
}

impl Reference<'_> {
    /// A `ScaledStdConv2d` with timm's padding.
    fn conv(&self, c: &ConvSpec, x: &Tensor) -> Result<Tensor> {
        let t = |p: &str| self.checkpoint.f64(&format!("{}.{p}", c.name));
        let weight = scaled_std_weight(&t("weight")?, &t("gain")?, SILU_GAMMA, self.arch.eps);
        let bias = t("bias")?;
        let conv = Conv2d {
            weight: &weight,
            bias: &bias,
            cout: c.cout,
            k: c.k,
            stride: c.stride,
            pad: c.pad(),
            groups: c.groups,
        };
        Ok(conv.apply(x))
    }

    /// The full forward pass on `x` (`[b, 3, h, w]`, normalized pixels).
    pub fn forward(&self, x: &Tensor) -> Result<Outputs> {
        let a = self.arch;
        if x.shape[1] != 3 {
            return Err(Error::new(format!("input has {} channels, expected 3", x.shape[1])));
        }
        let silu = |t: &Tensor| t.map(ops::silu);
        let mut features = Vec::new();
        let mut x = silu(&self.conv(&a.stem[0], x)?);
        x = silu(&self.conv(&a.stem[1], &x)?);
        x = self.conv(&a.stem[2], &x)?;
        features.push(x.clone());
        x = self.conv(&a.stem[3], &silu(&x))?;
        let stage_ends = a.stage_ends();
        for (i, b) in a.blocks.iter().enumerate() {
            let out = x.map(|v| ops::silu(v) * b.beta);
            let shortcut = match &b.downsample {
                Some((ds, pool)) => {
                    let pooled = if *pool { ops::avg_pool_2x2_ceil(&out) } else { out.clone() };
                    self.conv(ds, &pooled)?
                }
                None => x.clone(),
            };
            let mut r = self.conv(&b.conv1, &out)?;
            r = self.conv(&b.conv2, &silu(&r))?;
            if let Some(c2b) = &b.conv2b {
                r = self.conv(c2b, &silu(&r))?;
            }
            r = self.conv(&b.conv3, &silu(&r))?;
            let eca_w = self.checkpoint.f64(&format!("{}.attn_last.conv.weight", b.name))?;
            r = ops::eca(&r, &eca_w, a.attn_gain);
            x = ops::axpy(&r, a.alpha, &shortcut);
            if stage_ends[..3].contains(&i) {
                features.push(x.clone());
            }
        }
        if let Some(fc) = &a.final_conv {
            x = self.conv(fc, &x)?;
        }
        features.push(x.clone());
        let forward_features = silu(&x);
        let pre_logits = ops::global_avg_pool(&forward_features);
        let logits = if a.num_classes > 0 {
            ops::linear(&pre_logits, &self.checkpoint.f64("head.fc.weight")?, &self.checkpoint.f64("head.fc.bias")?)
        } else {
            pre_logits.clone()
        };
        Ok(Outputs { logits, pre_logits, forward_features, features })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardized_rows_have_zero_mean_and_the_gain_as_scale() {
        let w: Vec<f64> = (0..12).map(|i| (i * i) as f64 * 0.1 - 1.0).collect();
        let gain = [2.0, 0.5, 1.0];
        let s = scaled_std_weight(&w, &gain, 1.5, 0.0);
        for (o, row) in s.chunks(4).enumerate() {
            let mean = row.iter().sum::<f64>() / 4.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
            let want = (gain[o] * 1.5 / 2.0f64).powi(2);
            assert!(mean.abs() < 1e-14 && (var - want).abs() < 1e-12, "row {o}: {mean} {var} {want}");
        }
    }
}
