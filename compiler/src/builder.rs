//! The build-script front door: compile a model directory into Rust source and a weight blob
//! in `OUT_DIR`, as prost-build does for protobuf.
//!
//! In a `build.rs`:
//!
//! ```no_run
//! fn main() {
//!     let result = nfnet_compiler::builder::Builder::from_env().and_then(|b| b.compile());
//!     if let Err(e) = result {
//!         for p in &e.problems {
//!             eprintln!("error: {p}");
//!         }
//!         std::process::exit(1);
//!     }
//! }
//! ```
//!
//! and in the crate (with `nfnet-runtime` as a dependency):
//!
//! ```ignore
//! include!(concat!(env!("OUT_DIR"), "/nfnet_model.rs"));
//! ```
//!
//! Environment read by [`Builder::from_env`]: `NFNET_MODEL` (a directory with `config.json`
//! and `model.safetensors`; unset: the built-in synthetic eca_nfnet_l2; a relative path is
//! resolved against the root of the workspace being built, see [`workspace_root`]), `NFNET_INPUT_SIZE`
//! (`S` or `HxW`, height first; default the config's input size), `NFNET_BATCH` (default 1),
//! `NFNET_WEIGHT_DTYPE` (`f32`, `bf16`, `f16`; default f32) and `NFNET_WINOGRAD` (`auto`, `f2`,
//! `off`, `f4`; default auto: see [`WinogradPolicy`]).

use crate::Model;
use crate::arch::parse_input_size;
use crate::emit::pack::WeightDtype;
use crate::emit::{self, EmitInfo};
use crate::error::{Error, Result};
use crate::schedule::{Policies, Precision, Schedule, WinogradPolicy};
use crate::synth::{self, SynthSpec};
use std::path::{Path, PathBuf};

/// Largest batch accepted.
pub const MAX_BATCH: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct Builder {
    /// The model directory, absolute once set.
    model: Option<PathBuf>,
    /// What the model directory was resolved from, for error messages
    /// (`NFNET_MODEL=mymodel`, `model_dir("mymodel")`).
    model_origin: Option<String>,
    input_size: Option<(usize, usize)>,
    batch: usize,
    out_dir: Option<PathBuf>,
    stop_after: Option<usize>,
    /// As given (`None`: the default, or what the precision implies).
    weight_dtype: Option<WeightDtype>,
    winograd: Option<WinogradPolicy>,
    precision: Precision,
    /// Print cargo directives (set by `from_env`).
    cargo: bool,
}

fn env(name: &str, cargo: bool) -> Result<Option<String>> {
    if cargo {
        println!("cargo:rerun-if-env-changed={name}");
    }
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::new(format!("{name} is not valid UTF-8"))),
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder { batch: 1, ..Builder::default() }
    }

    /// Reads `NFNET_MODEL`, `NFNET_INPUT_SIZE`, `NFNET_BATCH`, `NFNET_STOP_AFTER_PASS`,
    /// `NFNET_WEIGHT_DTYPE`, `NFNET_WINOGRAD` and `OUT_DIR`, and tells cargo to rerun when any
    /// of them (or the model files) change.
    ///
    /// A relative `NFNET_MODEL` is resolved against the root of the workspace being built (the
    /// directory of the top `Cargo.toml`, see [`workspace_root`]), not against the directory
    /// cargo runs the build script in: `NFNET_MODEL=l2 cargo build` in a workspace finds `./l2`.
    pub fn from_env() -> Result<Builder> {
        let mut b = Builder::new();
        b.cargo = true;
        if let Some(m) = env("NFNET_MODEL", true)? {
            let base = match env("CARGO_MANIFEST_DIR", false)? {
                Some(d) => workspace_root(Path::new(&d)),
                None => current_dir()?,
            };
            b.model = Some(absolute(&base, Path::new(&m)));
            b.model_origin = Some(format!("NFNET_MODEL={m}"));
        }
        if let Some(s) = env("NFNET_INPUT_SIZE", true)? {
            b.input_size = Some(parse_input_size(&s).map_err(|e| Error::new(format!("NFNET_INPUT_SIZE: {e}")))?);
        }
        if let Some(s) = env("NFNET_BATCH", true)? {
            b.batch = match s.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_BATCH).contains(&n) => n,
                _ => return Err(Error::new(format!("NFNET_BATCH='{s}' is not a batch size from 1 to {MAX_BATCH}"))),
            };
        }
        if let Some(s) = env("NFNET_STOP_AFTER_PASS", true)? {
            b.stop_after = Some(
                s.trim().parse().map_err(|_| Error::new(format!("NFNET_STOP_AFTER_PASS='{s}' is not a pass count")))?,
            );
        }
        if let Some(s) = env("NFNET_WEIGHT_DTYPE", true)? {
            b.weight_dtype = Some(
                WeightDtype::parse(&s)
                    .ok_or_else(|| Error::new(format!("NFNET_WEIGHT_DTYPE='{s}' is not one of f32, bf16, f16")))?,
            );
        }
        if let Some(s) = env("NFNET_WINOGRAD", true)? {
            b.winograd = Some(
                WinogradPolicy::parse(&s)
                    .ok_or_else(|| Error::new(format!("NFNET_WINOGRAD='{s}' is not one of auto, f2, off, f4")))?,
            );
        }
        if let Some(s) = env("NFNET_PRECISION", true)? {
            b.precision = Precision::parse(&s)
                .ok_or_else(|| Error::new(format!("NFNET_PRECISION='{s}' is not one of f32, bf16")))?;
        }
        b.out_dir = env("OUT_DIR", false)?.map(PathBuf::from);
        Ok(b)
    }

    /// The model directory (`config.json` + `model.safetensors`); none: the built-in model.
    /// A relative path is resolved against the calling crate's manifest directory
    /// (`CARGO_MANIFEST_DIR`, as `include_bytes!` paths are), or the current directory
    /// outside cargo.
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let base = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        self.model_origin = Some(format!("model_dir({})", dir.display()));
        self.model = Some(absolute(&base, &dir));
        self
    }

    pub fn input_size(mut self, h: usize, w: usize) -> Self {
        self.input_size = Some((h, w));
        self
    }

    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Stores the conv weights as f32 (default), bf16 or f16: half the binary for 16 bits.
    pub fn weight_dtype(mut self, wd: WeightDtype) -> Self {
        self.weight_dtype = Some(wd);
        self
    }

    /// The convs' arithmetic: f32 (default, as exact as timm's float32) or bf16 (inputs and
    /// weights rounded to bf16, f32 accumulation; on AMX where the CPU has it). bf16 convs
    /// store bf16 weights and run direct: a weight dtype or Winograd policy other than those
    /// is refused.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Which Winograd algorithms the 3x3 convs may take: `Auto` (default) is the fastest,
    /// `F2` and `Off` trade speed for exactness (see [`WinogradPolicy`]). With 16-bit
    /// weights `Auto` means `F2`.
    pub fn winograd(mut self, policy: WinogradPolicy) -> Self {
        self.winograd = Some(policy);
        self
    }

    /// Runs only the first `n` fusion passes (for bisecting a miscompile).
    pub fn stop_after_pass(mut self, n: usize) -> Self {
        self.stop_after = Some(n);
        self
    }

    /// Compiles: writes `nfnet_model.rs`, the weight blob `nfnet_weights.bin` and the schedule
    /// (`nfnet_schedule.json`, `nfnet_schedule.txt`), which the source includes, into the
    /// output directory (each only when its content changed) and returns the source's path.
    pub fn compile(&self) -> Result<PathBuf> {
        let out = self
            .out_dir
            .clone()
            .ok_or_else(|| Error::new("OUT_DIR is not set (run from a build script or set an output directory)"))?;
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(Error::new(format!("batch {} is not from 1 to {MAX_BATCH}", self.batch)));
        }
        let (dir, config_name) = match &self.model {
            Some(d) => {
                self.check_model_dir(d)?;
                (d.clone(), d.join("config.json").display().to_string())
            }
            None => (
                builtin_model(&out)?,
                "built-in synthetic eca_nfnet_l2 (nfc synth --arch eca_nfnet_l2 --seed 0)".into(),
            ),
        };
        if self.cargo && self.model.is_some() {
            for f in ["config.json", "model.safetensors"] {
                println!("cargo:rerun-if-changed={}", dir.join(f).display());
            }
        }
        let model = Model::load(&dir)?;
        let hw = self.input_size.unwrap_or(model.arch.config.pretrained.input_size);
        let graph = model.graph(hw, self.batch)?;
        let policies = self.policies()?;
        let schedule = Schedule::new(&graph, policies, self.stop_after);
        if policies.weights == WeightDtype::F16 {
            check_f16_range(&graph)?;
        }
        let info = EmitInfo {
            config: config_name,
            weights_sha256: model.checkpoint.sha256(),
            synthetic: synth::synthetic_tag(&model.checkpoint.metadata).map(str::to_string),
        };
        let emitted = emit::emit(&schedule, &info);
        let src = out.join(emit::SOURCE_FILE);
        write_if_changed(&src, emitted.source.as_bytes())?;
        write_if_changed(&out.join(emit::WEIGHTS_FILE), &emitted.weights)?;
        write_if_changed(&out.join(emit::SCHEDULE_JSON_FILE), emitted.schedule_json.as_bytes())?;
        write_if_changed(&out.join(emit::SCHEDULE_TEXT_FILE), emitted.schedule_text.as_bytes())?;
        Ok(src)
    }
}

impl Builder {
    /// The policies asked for (see [`Policies::checked`]).
    fn policies(&self) -> Result<Policies> {
        Policies::checked(self.winograd, self.weight_dtype, self.precision).map_err(Error::new)
    }

    /// A missing directory or file is named with the absolute path tried and what it was
    /// resolved from, in one line.
    fn check_model_dir(&self, dir: &Path) -> Result<()> {
        let origin = self.model_origin.as_deref().unwrap_or("model directory");
        if !dir.is_dir() {
            let what = if dir.exists() { "not a directory" } else { "no such directory" };
            return Err(Error::new(format!("{origin} -> {}: {what}", dir.display())));
        }
        for f in ["config.json", "model.safetensors"] {
            if !dir.join(f).is_file() {
                return Err(Error::new(format!("{origin} -> {}: {f} not found", dir.display())));
            }
        }
        Ok(())
    }
}

/// The root of the workspace a crate belongs to: the nearest directory at or above
/// `manifest_dir` whose `Cargo.toml` declares `[workspace]`; `manifest_dir` itself when none
/// does (a crate that is its own workspace).
pub fn workspace_root(manifest_dir: &Path) -> PathBuf {
    for dir in manifest_dir.ancestors() {
        let Ok(toml) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        if toml.lines().any(|l| l.trim_start().starts_with("[workspace]")) {
            return dir.to_path_buf();
        }
    }
    manifest_dir.to_path_buf()
}

fn current_dir() -> Result<PathBuf> {
    std::env::current_dir().map_err(|e| Error::new(format!("cannot read the current directory: {e}")))
}

/// `path` made absolute against `base`, without `.` components (`..` is kept: folding it
/// would be wrong across a symlink).
fn absolute(base: &Path, path: &Path) -> PathBuf {
    base.join(path).components().filter(|c| *c != std::path::Component::CurDir).collect()
}

/// f16 holds magnitudes up to 65504: refuse folded weights beyond it rather than store infinity.
fn check_f16_range(g: &crate::graph::Graph) -> Result<()> {
    for n in &g.nodes {
        if let crate::graph::Op::Conv(c) = &n.op
            && let Some(w) = c.weight.iter().find(|w| w.abs() > 65504.0)
        {
            return Err(Error::new(format!(
                "NFNET_WEIGHT_DTYPE=f16: {} has a folded weight {w:e} beyond f16's range; use bf16",
                c.spec.name
            )));
        }
    }
    Ok(())
}

/// The built-in model: the synthetic eca_nfnet_l2, seed 0, made in `out` (deterministic).
fn builtin_model(out: &Path) -> Result<PathBuf> {
    let dir = out.join("builtin_eca_nfnet_l2");
    let spec = SynthSpec::builtin();
    if !dir.join("model.safetensors").exists() || !dir.join("config.json").exists() {
        synth::write(&spec, &dir)?;
    }
    Ok(dir)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    nfnet_runtime::npy::write_atomic(path, bytes)
        .map_err(|e| Error::new(format!("{}: cannot write: {e}", path.display())))
}
