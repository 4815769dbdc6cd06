//! Reading timm's hub `config.json` into the family configuration (`NfCfg`) timm builds the
//! model from, with `model_args` overlaid as timm does (`dataclasses.replace`).
//!
//! Only what nfnet compiles is accepted: the four `eca_nfnet_l*` architectures with SiLU, ECA,
//! the `deep_quad` stem and `reg = false`. Every other value is an error naming its field.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// timm's `NfCfg` fields that matter for inference (see `timm/models/nfnet.py`).
#[derive(Clone, Debug, PartialEq)]
pub struct NfCfg {
    pub depths: Vec<usize>,
    pub channels: Vec<usize>,
    pub alpha: f64,
    pub stem_type: String,
    pub stem_chs: Option<usize>,
    pub group_size: Option<usize>,
    pub attn_layer: Option<String>,
    /// `attn_kwargs` of the ECA module: `gamma` and `beta` of its kernel-size rule.
    pub eca_gamma: f64,
    pub eca_beta: f64,
    pub attn_gain: f64,
    pub width_factor: f64,
    pub bottle_ratio: f64,
    pub num_features: usize,
    pub ch_div: usize,
    pub reg: bool,
    pub extra_conv: bool,
    pub gamma_in_act: bool,
    pub same_padding: bool,
    pub std_conv_eps: f64,
    pub skipinit: bool,
    pub act_layer: String,
}

/// The eval-time data config of the checkpoint (`pretrained_cfg`).
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainedCfg {
    /// (height, width) of `input_size`.
    pub input_size: (usize, usize),
    pub test_input_size: Option<(usize, usize)>,
    pub crop_pct: f64,
    pub test_crop_pct: Option<f64>,
    pub crop_mode: String,
    pub interpolation: String,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// A parsed and validated `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub num_classes: usize,
    pub cfg: NfCfg,
    pub pretrained: PretrainedCfg,
}

/// The architectures nfnet compiles.
pub const ARCHITECTURES: [&str; 4] = ["eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3"];

/// Largest channel count, depth and class count accepted: far beyond any real model, small
/// enough that shapes and byte counts cannot overflow.
pub const MAX_CHANNELS: usize = 1 << 15;
pub const MAX_DEPTH: usize = 256;
pub const MAX_CLASSES: usize = 1 << 20;
/// Largest `width_factor` and `bottle_ratio`.
pub const MAX_RATIO: f64 = 16.0;
/// Largest model accepted, in parameters (4 GB of f32; eca_nfnet_l3 has 72 million).
pub const MAX_PARAMS: usize = 1 << 30;

/// timm's family table (`model_cfgs` + `_nfnet_cfg` + `default_cfgs`) for the ECA-NFNet-L models.
pub fn family(architecture: &str) -> Option<(NfCfg, PretrainedCfg)> {
    let (depths, feat_mult, size, test_size) = match architecture {
        "eca_nfnet_l0" => ([1, 2, 6, 3], 1.5, 224, 288),
        "eca_nfnet_l1" => ([2, 4, 12, 6], 2.0, 256, 320),
        "eca_nfnet_l2" => ([3, 6, 18, 9], 2.0, 320, 384),
        "eca_nfnet_l3" => ([4, 8, 24, 12], 2.0, 352, 448),
        _ => return None,
    };
    let channels = vec![256, 512, 1536, 1536];
    // _nfnet_cfg: num_features = int(channels[-1] * feat_mult), fixed when the family is made.
    let num_features = (channels[3] as f64 * feat_mult) as usize;
    let cfg = NfCfg {
        depths: depths.to_vec(),
        channels,
        alpha: 0.2,
        stem_type: "deep_quad".into(),
        stem_chs: Some(128),
        group_size: Some(64),
        attn_layer: Some("eca".into()),
        eca_gamma: 2.0,
        eca_beta: 1.0,
        attn_gain: 2.0,
        width_factor: 1.0,
        bottle_ratio: 0.25,
        num_features,
        ch_div: 8,
        reg: false,
        extra_conv: true,
        gamma_in_act: false,
        same_padding: false,
        std_conv_eps: 1e-5,
        skipinit: false,
        act_layer: "silu".into(),
    };
    let pretrained = PretrainedCfg {
        input_size: (size, size),
        test_input_size: Some((test_size, test_size)),
        crop_pct: 0.9,
        test_crop_pct: Some(1.0),
        crop_mode: "center".into(),
        interpolation: "bicubic".into(),
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    Some((cfg, pretrained))
}

impl ModelConfig {
    /// Reads and validates `path` (a hub `config.json`).
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::new(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json`; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| Error::new(format!("{origin}: not valid JSON: {e}")))?;
        let Value::Object(root) = root else {
            return Err(Error::new(format!("{origin}: expected a JSON object at the top level")));
        };
        let mut p = Problems { origin, list: Vec::new() };
        // The old hub form has no `pretrained_cfg`: its fields sit at the top level.
        let pcfg: &Map<String, Value> = match root.get("pretrained_cfg") {
            Some(Value::Object(m)) => m,
            Some(_) => {
                p.push("pretrained_cfg", "must be an object");
                &root
            }
            None => &root,
        };
        let architecture = match root.get("architecture") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(p.fatal("architecture", "must be a string")),
            None => return Err(p.fatal("architecture", "is missing")),
        };
        let Some((mut cfg, mut pretrained)) = family(&architecture) else {
            return Err(p.fatal(
                "architecture",
                &format!("'{architecture}' is not supported (supported: {})", ARCHITECTURES.join(", ")),
            ));
        };
        // timm creates the model with the top-level num_classes, else pretrained_cfg's.
        let mut num_classes = 1000;
        for (field, map) in [("pretrained_cfg.num_classes", pcfg), ("num_classes", &root)] {
            if let Some(v) = map.get(field.rsplit('.').next().unwrap_or(field))
                && let Some(n) = p.count(field, v, 0, MAX_CLASSES)
            {
                num_classes = n;
            }
        }
        read_pretrained(&mut p, pcfg, &mut pretrained);
        match root.get("model_args") {
            None | Some(Value::Null) => {}
            Some(Value::Object(args)) => {
                for (key, v) in args {
                    overlay(&mut p, &mut cfg, &mut num_classes, key, v);
                }
            }
            Some(_) => p.push("model_args", "must be an object"),
        }
        check_supported(&mut p, &cfg);
        Error::check(p.list)?;
        Ok(ModelConfig { architecture, num_classes, cfg, pretrained })
    }
}

/// Collects one-line problems about fields of one file.
struct Problems<'a> {
    origin: &'a str,
    list: Vec<String>,
}

impl Problems<'_> {
    fn push(&mut self, field: &str, what: &str) {
        self.list.push(format!("{}: {field} {what}", self.origin));
    }

    fn fatal(&mut self, field: &str, what: &str) -> Error {
        self.push(field, what);
        Error { problems: std::mem::take(&mut self.list) }
    }

    fn count(&mut self, field: &str, v: &Value, min: usize, max: usize) -> Option<usize> {
        match v.as_u64() {
            Some(n) if (min as u64..=max as u64).contains(&n) => Some(n as usize),
            _ => {
                self.push(field, &format!("must be an integer from {min} to {max}, got {v}"));
                None
            }
        }
    }

    fn number(&mut self, field: &str, v: &Value, positive: bool) -> Option<f64> {
        match v.as_f64() {
            Some(x) if x.is_finite() && (!positive || x > 0.0) => Some(x),
            _ => {
                let what = if positive { "a positive number" } else { "a finite number" };
                self.push(field, &format!("must be {what}, got {v}"));
                None
            }
        }
    }

    /// A channel multiplier: positive and at most [`MAX_RATIO`].
    fn ratio(&mut self, field: &str, v: &Value) -> Option<f64> {
        match v.as_f64() {
            Some(x) if x > 0.0 && x <= MAX_RATIO => Some(x),
            _ => {
                self.push(field, &format!("must be a number above 0 and at most {MAX_RATIO}, got {v}"));
                None
            }
        }
    }

    fn boolean(&mut self, field: &str, v: &Value) -> Option<bool> {
        let b = v.as_bool();
        if b.is_none() {
            self.push(field, &format!("must be true or false, got {v}"));
        }
        b
    }

    fn string(&mut self, field: &str, v: &Value) -> Option<String> {
        let s = v.as_str().map(str::to_string);
        if s.is_none() {
            self.push(field, &format!("must be a string, got {v}"));
        }
        s
    }

    fn list(&mut self, field: &str, v: &Value, len: usize, min: usize, max: usize) -> Option<Vec<usize>> {
        let items = v.as_array().filter(|a| a.len() == len);
        let parsed: Option<Vec<usize>> = items
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().filter(|n| (min as u64..=max as u64).contains(n)))
                    .collect::<Option<Vec<_>>>()
            })
            .map(|a| a.into_iter().map(|n| n as usize).collect());
        if parsed.is_none() {
            self.push(field, &format!("must be a list of {len} integers from {min} to {max}, got {v}"));
        }
        parsed
    }
}

fn read_size(p: &mut Problems, field: &str, v: &Value) -> Option<(usize, usize)> {
    let s = p.list(field, v, 3, 1, 1 << 16)?;
    if s[0] != 3 {
        p.push(field, &format!("must have 3 channels, got {}", s[0]));
        return None;
    }
    Some((s[1], s[2]))
}

fn read_pretrained(p: &mut Problems, m: &Map<String, Value>, out: &mut PretrainedCfg) {
    if let Some(v) = m.get("input_size")
        && let Some(s) = read_size(p, "pretrained_cfg.input_size", v)
    {
        out.input_size = s;
    }
    match m.get("test_input_size") {
        None => {}
        Some(Value::Null) => out.test_input_size = None,
        Some(v) => out.test_input_size = read_size(p, "pretrained_cfg.test_input_size", v),
    }
    if let Some(v) = m.get("crop_pct")
        && let Some(x) = p.number("pretrained_cfg.crop_pct", v, true)
    {
        out.crop_pct = x;
    }
    match m.get("test_crop_pct") {
        None => {}
        Some(Value::Null) => out.test_crop_pct = None,
        Some(v) => out.test_crop_pct = p.number("pretrained_cfg.test_crop_pct", v, true),
    }
    if let Some(v) = m.get("crop_mode")
        && let Some(s) = p.string("pretrained_cfg.crop_mode", v)
    {
        out.crop_mode = s;
    }
    if let Some(v) = m.get("interpolation")
        && let Some(s) = p.string("pretrained_cfg.interpolation", v)
    {
        out.interpolation = s;
    }
    for (key, slot) in [("mean", &mut out.mean), ("std", &mut out.std)] {
        let Some(v) = m.get(key) else { continue };
        let field = format!("pretrained_cfg.{key}");
        let vals: Option<Vec<f64>> = v
            .as_array()
            .filter(|a| a.len() == 3)
            .and_then(|a| a.iter().map(|x| x.as_f64().filter(|f| f.is_finite())).collect());
        match vals {
            Some(vals) if key == "mean" || vals.iter().all(|&s| s > 0.0) => slot.copy_from_slice(&vals),
            _ => p.push(&field, &format!("must be a list of 3 finite numbers (std positive), got {v}")),
        }
    }
}

/// Applies one `model_args` entry as timm does: NormFreeNet's own arguments first, then the
/// NfCfg fields via `dataclasses.replace`.
fn overlay(p: &mut Problems, cfg: &mut NfCfg, num_classes: &mut usize, key: &str, v: &Value) {
    let field = format!("model_args.{key}");
    let f = field.as_str();
    match key {
        "num_classes" => {
            if let Some(n) = p.count(f, v, 0, MAX_CLASSES) {
                *num_classes = n;
            }
        }
        "in_chans" => {
            if v.as_u64() != Some(3) {
                p.push(f, &format!("= {v} is not supported (only 3 input channels)"));
            }
        }
        "global_pool" => {
            if v.as_str() != Some("avg") {
                p.push(f, &format!("= {v} is not supported (only \"avg\")"));
            }
        }
        "output_stride" => {
            if v.as_u64() != Some(32) {
                p.push(f, &format!("= {v} is not supported (only 32: dilated stages are not compiled)"));
            }
        }
        // Dropout and stochastic depth do nothing at inference; zero_init_fc only affects init.
        "drop_rate" | "drop_path_rate" => {
            p.number(f, v, false);
        }
        "zero_init_fc" => {
            p.boolean(f, v);
        }
        "depths" => {
            if let Some(d) = p.list(f, v, 4, 1, MAX_DEPTH) {
                cfg.depths = d;
            }
        }
        "channels" => {
            if let Some(c) = p.list(f, v, 4, 1, MAX_CHANNELS) {
                cfg.channels = c;
            }
        }
        "alpha" => set(&mut cfg.alpha, p.number(f, v, false)),
        "attn_gain" => set(&mut cfg.attn_gain, p.number(f, v, false)),
        "width_factor" => set(&mut cfg.width_factor, p.ratio(f, v)),
        "bottle_ratio" => set(&mut cfg.bottle_ratio, p.ratio(f, v)),
        "std_conv_eps" => set(&mut cfg.std_conv_eps, p.number(f, v, true)),
        "stem_type" => set(&mut cfg.stem_type, p.string(f, v)),
        "act_layer" => set(&mut cfg.act_layer, p.string(f, v)),
        "stem_chs" => match v {
            Value::Null => cfg.stem_chs = None,
            _ => set(&mut cfg.stem_chs, p.count(f, v, 1, MAX_CHANNELS).map(Some)),
        },
        "group_size" => match v {
            // timm: `groups = 1 if not group_size`, so null and 0 both mean one group.
            Value::Null => cfg.group_size = None,
            _ => set(&mut cfg.group_size, p.count(f, v, 0, MAX_CHANNELS).map(|g| (g > 0).then_some(g))),
        },
        "num_features" => set(&mut cfg.num_features, p.count(f, v, 0, MAX_CHANNELS)),
        "ch_div" => set(&mut cfg.ch_div, p.count(f, v, 1, MAX_CHANNELS)),
        "reg" => set(&mut cfg.reg, p.boolean(f, v)),
        "extra_conv" => set(&mut cfg.extra_conv, p.boolean(f, v)),
        "gamma_in_act" => set(&mut cfg.gamma_in_act, p.boolean(f, v)),
        "same_padding" => set(&mut cfg.same_padding, p.boolean(f, v)),
        "skipinit" => set(&mut cfg.skipinit, p.boolean(f, v)),
        "attn_layer" => match v {
            Value::Null => cfg.attn_layer = None,
            _ => set(&mut cfg.attn_layer, p.string(f, v).map(Some)),
        },
        "attn_kwargs" => match v {
            Value::Null => {}
            Value::Object(kw) => {
                for (k, x) in kw {
                    let kf = format!("{f}.{k}");
                    match k.as_str() {
                        "gamma" => set(&mut cfg.eca_gamma, p.number(&kf, x, true)),
                        "beta" => set(&mut cfg.eca_beta, p.number(&kf, x, false)),
                        // EcaModule recomputes kernel_size from the channel count, ignoring this.
                        "kernel_size" => {
                            p.count(&kf, x, 1, 1 << 10);
                        }
                        _ => p.push(&kf, "is not supported (ECA accepts gamma, beta, kernel_size)"),
                    }
                }
            }
            _ => p.push(f, "must be an object"),
        },
        _ => p.push(f, "is not an argument of timm's NormFreeNet or a field of its NfCfg"),
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// Refuses configurations timm can build but nfnet does not compile.
fn check_supported(p: &mut Problems, c: &NfCfg) {
    let flags =
        [("reg", c.reg), ("gamma_in_act", c.gamma_in_act), ("same_padding", c.same_padding), ("skipinit", c.skipinit)];
    for (name, on) in flags {
        if on {
            p.push(&format!("model_args.{name}"), "= true is not supported (only false)");
        }
    }
    if c.act_layer != "silu" {
        p.push("model_args.act_layer", &format!("= '{}' is not supported (only 'silu')", c.act_layer));
    }
    if c.attn_layer.as_deref() != Some("eca") {
        let got = c.attn_layer.as_deref().unwrap_or("null");
        p.push("model_args.attn_layer", &format!("= '{got}' is not supported (only 'eca')"));
    }
    if c.stem_type != "deep_quad" {
        p.push("model_args.stem_type", &format!("= '{}' is not supported (only 'deep_quad')", c.stem_type));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB_L2: &str = r#"{
        "architecture": "eca_nfnet_l2", "num_classes": 1000, "num_features": 3072,
        "global_pool": "avg",
        "pretrained_cfg": {"tag": "ra3_in1k", "custom_load": false, "input_size": [3, 320, 320],
          "test_input_size": [3, 384, 384], "fixed_input_size": false, "interpolation": "bicubic",
          "crop_pct": 0.9, "test_crop_pct": 1.0, "crop_mode": "center",
          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000,
          "pool_size": [10, 10], "first_conv": "stem.conv1", "classifier": "head.fc"}}"#;

    #[test]
    fn reads_the_hub_config_of_l2() {
        let c = ModelConfig::parse(HUB_L2, "config.json").unwrap();
        assert_eq!(c.architecture, "eca_nfnet_l2");
        assert_eq!(c.num_classes, 1000);
        assert_eq!(c.cfg.depths, vec![3, 6, 18, 9]);
        assert_eq!(c.cfg.num_features, 3072);
        assert_eq!(c.pretrained.input_size, (320, 320));
        assert_eq!(c.pretrained.test_input_size, Some((384, 384)));
        assert_eq!(family("eca_nfnet_l0").unwrap().0.num_features, 2304);
    }

    #[test]
    fn reads_the_old_hub_form_without_pretrained_cfg() {
        let text = r#"{"architecture": "eca_nfnet_l1", "num_classes": 12, "input_size": [3, 288, 256],
                       "crop_pct": 1.0, "interpolation": "bilinear"}"#;
        let c = ModelConfig::parse(text, "config.json").unwrap();
        assert_eq!((c.num_classes, c.pretrained.input_size, c.pretrained.crop_pct), (12, (288, 256), 1.0));
        assert_eq!(c.pretrained.interpolation, "bilinear");
    }

    #[test]
    fn model_args_overlay_and_num_classes_priority() {
        let text = r#"{"architecture": "eca_nfnet_l0", "num_classes": 10,
            "model_args": {"depths": [1, 1, 2, 1], "channels": [32, 64, 96, 128], "stem_chs": 16,
                           "group_size": 8, "num_features": 192, "attn_kwargs": {"gamma": 3}},
            "pretrained_cfg": {"num_classes": 7, "input_size": [3, 45, 37]}}"#;
        let c = ModelConfig::parse(text, "c.json").unwrap();
        assert_eq!(c.num_classes, 10);
        assert_eq!(c.cfg.channels, vec![32, 64, 96, 128]);
        assert_eq!(c.cfg.eca_gamma, 3.0);
        assert_eq!(c.pretrained.input_size, (45, 37));
        let text = r#"{"architecture": "eca_nfnet_l0", "model_args": {"num_classes": 3}}"#;
        assert_eq!(ModelConfig::parse(text, "c").unwrap().num_classes, 3);
    }

    #[test]
    fn every_problem_is_one_line_naming_its_field() {
        let text = r#"{"architecture": "eca_nfnet_l1",
            "model_args": {"reg": true, "act_layer": "gelu", "depths": [1, 0, 1, 1], "bogus": 1,
                           "attn_layer": "se", "alpha": "x"}}"#;
        let e = ModelConfig::parse(text, "cfg.json").unwrap_err();
        let all = e.to_string();
        for field in [
            "model_args.reg",
            "model_args.act_layer",
            "model_args.depths",
            "model_args.bogus",
            "model_args.attn_layer",
            "model_args.alpha",
        ] {
            assert!(all.contains(field), "{field} missing from:\n{all}");
        }
        assert_eq!(e.problems.len(), 6, "{all}");
        assert!(e.problems.iter().all(|l| l.starts_with("cfg.json: ") && !l.contains('\n')));
        let e = ModelConfig::parse(r#"{"architecture": "resnet50"}"#, "c").unwrap_err();
        assert!(e.to_string().contains("architecture 'resnet50' is not supported"));
        assert!(ModelConfig::parse("{", "c").unwrap_err().to_string().starts_with("c: not valid JSON"));
        assert!(ModelConfig::parse("[]", "c").is_err());
    }
}
