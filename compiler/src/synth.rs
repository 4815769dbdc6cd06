//! Deterministic synthetic checkpoints in the hub layout (`config.json` + `model.safetensors`).
//!
//! Same arguments, byte-identical files. Statistics are chosen so every path of the network is
//! exercised: unlike timm's init (conv3 gains 0, biases 0), gains, biases and ECA weights are
//! random, so residual branches and gates all contribute.

use crate::arch::Arch;
use crate::config::{ModelConfig, family};
use crate::error::{Error, Result};
use serde_json::{Value, json};
use std::path::Path;

/// Storage dtype of the synthesized tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
}

impl StorageDtype {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => Err(format!("dtype '{s}' is not one of f32, f16, bf16")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
        }
    }

    fn encode(self, v: f64, out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Self::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            Self::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
        }
    }
}

/// What to synthesize.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub architecture: String,
    pub seed: u64,
    pub num_classes: Option<usize>,
    /// `model_args` written into config.json and overlaid on the family config.
    pub model_args: Option<serde_json::Map<String, Value>>,
    /// `pretrained_cfg.input_size` (height, width); the family's when `None`.
    pub input_size: Option<(usize, usize)>,
    pub dtype: StorageDtype,
}

impl SynthSpec {
    /// The product's built-in model: eca_nfnet_l2, seed 0, 1000 classes, f32.
    pub fn builtin() -> SynthSpec {
        SynthSpec {
            architecture: "eca_nfnet_l2".into(),
            seed: 0,
            num_classes: None,
            model_args: None,
            input_size: None,
            dtype: StorageDtype::F32,
        }
    }
}

impl SynthSpec {
    /// The `nfc synth` arguments recorded in a fixture's `synth.json` (written by
    /// tools/reference/make_fixtures.py: arch, seed, num_classes, dtype, model_args).
    pub fn from_fixture_json(text: &str) -> std::result::Result<SynthSpec, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("synth.json: {e}"))?;
        let field = |k: &str| format!("synth.json: bad or missing '{k}'");
        Ok(SynthSpec {
            architecture: v["arch"].as_str().ok_or_else(|| field("arch"))?.to_string(),
            seed: v["seed"].as_u64().ok_or_else(|| field("seed"))?,
            num_classes: v["num_classes"].as_u64().map(|n| n as usize),
            model_args: v["model_args"].as_object().cloned(),
            input_size: None,
            dtype: StorageDtype::parse(v["dtype"].as_str().ok_or_else(|| field("dtype"))?)?,
        })
    }
}

/// SplitMix64: tiny, fast, and fully specified, so files never change with a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A generator per tensor, from the seed and the tensor's name, so tensors do not depend on
/// each other's order or size.
fn rng_for(seed: u64, name: &str) -> Rng {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut r = Rng(h);
    r.next_u64();
    r
}

/// The value generator for one tensor of the state dict.
fn sample(name: &str, shape: &[usize], rng: &mut Rng) -> f64 {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if name.starts_with("head.fc.") {
        return match leaf {
            "weight" => rng.normal() / (shape[1] as f64).sqrt(),
            _ => 0.1 * rng.normal(),
        };
    }
    if name.contains("attn_last") {
        return 0.5 * rng.normal();
    }
    match leaf {
        // Conv weights: kaiming-normal (fan in); standardization removes their scale anyway.
        "weight" => rng.normal() / ((shape[1] * shape[2] * shape[3]) as f64).sqrt(),
        "bias" => 0.1 * rng.normal(),
        // Gains spread around 1 (log-normal), conv3 included.
        _ => (0.2 * rng.normal()).exp(),
    }
}

/// Writes `config.json` and `model.safetensors` into `dir` (created if needed).
pub fn write(spec: &SynthSpec, dir: &Path) -> Result<()> {
    let config = config_json(spec)?;
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialize") + "\n";
    let parsed = ModelConfig::parse(&text, "--model-args")?;
    let arch = Arch::new(&parsed)
        .map_err(|e| Error { problems: e.problems.into_iter().map(|p| format!("--model-args: {p}")).collect() })?;
    let io = |what: &Path, e: std::io::Error| Error::new(format!("{}: cannot write: {e}", what.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let st = safetensors_bytes(&arch, spec);
    let (cfg_path, st_path) = (dir.join("config.json"), dir.join("model.safetensors"));
    nfnet_runtime::npy::write_atomic(&st_path, &st).map_err(|e| io(&st_path, e))?;
    nfnet_runtime::npy::write_atomic(&cfg_path, text.as_bytes()).map_err(|e| io(&cfg_path, e))?;
    Ok(())
}

fn config_json(spec: &SynthSpec) -> Result<Value> {
    let Some((cfg, pre)) = family(&spec.architecture) else {
        return Err(Error::new(format!(
            "--arch '{}' is not supported (supported: {})",
            spec.architecture,
            crate::config::ARCHITECTURES.join(", ")
        )));
    };
    let num_classes = spec.num_classes.unwrap_or(1000);
    let (h, w) = spec.input_size.unwrap_or(pre.input_size);
    let test = pre.test_input_size.unwrap_or(pre.input_size);
    let mut root = json!({
        "architecture": spec.architecture,
        "num_classes": num_classes,
        "num_features": cfg.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": format!("nfnet_synthetic_seed{}", spec.seed),
            "custom_load": false,
            "input_size": [3, h, w],
            "test_input_size": [3, test.0, test.1],
            "fixed_input_size": false,
            "interpolation": pre.interpolation,
            "crop_pct": pre.crop_pct,
            "test_crop_pct": pre.test_crop_pct,
            "crop_mode": pre.crop_mode,
            "mean": pre.mean,
            "std": pre.std,
            "num_classes": num_classes,
            "pool_size": [h.div_ceil(32), w.div_ceil(32)],
            "first_conv": "stem.conv1",
            "classifier": "head.fc",
        },
    });
    if let Some(args) = &spec.model_args {
        root["model_args"] = Value::Object(args.clone());
    }
    Ok(root)
}

/// The safetensors file: header with tensors sorted by name, then their data in that order.
fn safetensors_bytes(arch: &Arch, spec: &SynthSpec) -> Vec<u8> {
    let mut tensors = arch.expected_tensors();
    tensors.sort();
    let elem = match spec.dtype {
        StorageDtype::F32 => 4,
        _ => 2,
    };
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), json!("pt"));
    meta.insert("nfnet_synthetic".into(), json!(format!("{} seed {}", spec.architecture, spec.seed)));
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let n = shape.iter().product::<usize>() * elem;
        header.insert(
            name.clone(),
            json!({"dtype": spec.dtype.name(), "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut head = serde_json::to_string(&Value::Object(header)).expect("JSON values serialize").into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (name, shape) in &tensors {
        let mut rng = rng_for(spec.seed, name);
        for _ in 0..shape.iter().product::<usize>() {
            spec.dtype.encode(sample(name, shape, &mut rng), &mut out);
        }
    }
    out
}

/// Whether a checkpoint was made by this synthesizer (its header metadata says so).
pub fn synthetic_tag(metadata: &std::collections::HashMap<String, String>) -> Option<&str> {
    metadata.get("nfnet_synthetic").map(String::as_str)
}
