//! Compiles the timm fixtures' tiny checkpoints (recreated by the synthesizer from their
//! synth.json) with the builder API, as a user's own build.rs would.

use nfnet_compiler::builder::Builder;
use nfnet_compiler::emit::pack::WeightDtype;
use nfnet_compiler::schedule::{Precision, WinogradPolicy};
use nfnet_compiler::synth::{self, SynthSpec};
use std::path::{Path, PathBuf};

/// Compiles a fixture's model into `out/<name>`, running only the first `stop_after` fusion
/// passes when given.
fn compile(
    fixture: &str,
    name: &str,
    stop_after: Option<usize>,
    wd: WeightDtype,
    winograd: WinogradPolicy,
    precision: Precision,
    out: &Path,
) -> nfnet_compiler::Result<()> {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(fixture);
    println!("cargo:rerun-if-changed={}", fx.join("synth.json").display());
    println!("cargo:rerun-if-changed={}", fx.join("input.npy").display());
    let spec = SynthSpec::from_fixture_json(&std::fs::read_to_string(fx.join("synth.json")).unwrap())
        .map_err(nfnet_compiler::Error::new)?;
    let x = nfnet_runtime_npy_shape(&fx.join("input.npy"));
    let model = out.join(name).join("model");
    synth::write(&spec, &model)?;
    let mut b = Builder::new().model_dir(&model).input_size(x[2], x[3]).batch(x[0]).out_dir(out.join(name));
    b = match precision {
        Precision::F32 => b.weight_dtype(wd).winograd(winograd),
        Precision::Bf16 => b.precision(precision),
    };
    if let Some(n) = stop_after {
        b = b.stop_after_pass(n);
    }
    b.compile()?;
    Ok(())
}

/// The shape in a .npy header (the fixtures' inputs are float32 NCHW).
fn nfnet_runtime_npy_shape(p: &Path) -> Vec<usize> {
    let bytes = std::fs::read(p).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..]);
    let s = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    s.split(',').filter(|t| !t.trim().is_empty()).map(|t| t.trim().parse().unwrap()).collect()
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // The fixtures with every fusion pass, and the tiny one after each prefix of the passes
    // (so the unfused kernels every pass replaces are compiled and tested too).
    // And the tiny one with its conv weights stored in bf16 and f16; both with every eligible
    // conv as Winograd F(4x4, 3x3) (odd edges, few channels), and the tiny one with direct
    // convs only.
    // And both, and a wider one (groups of 32 channels, which bf16 precision runs in bf16), in
    // bf16 precision.
    let (f32, auto, f32p) = (WeightDtype::F32, WinogradPolicy::default(), Precision::F32);
    let builds = [
        ("tiny", "tiny_bf16", None, f32, auto, Precision::Bf16),
        ("tiny_variant_bf16", "variant_bf16", None, f32, auto, Precision::Bf16),
        ("tiny_wide", "wide_bf16", None, f32, auto, Precision::Bf16),
        ("tiny_wide", "wide", None, f32, auto, f32p),
        ("tiny", "tiny", None, f32, auto, f32p),
        ("tiny_variant_bf16", "tiny_variant_bf16", None, f32, auto, f32p),
        ("tiny", "tiny_passes_0", Some(0), f32, auto, f32p),
        ("tiny", "tiny_passes_1", Some(1), f32, auto, f32p),
        ("tiny", "tiny_passes_2", Some(2), f32, auto, f32p),
        ("tiny", "tiny_weights_bf16", None, WeightDtype::Bf16, auto, f32p),
        ("tiny", "tiny_weights_f16", None, WeightDtype::F16, auto, f32p),
        ("tiny", "tiny_winograd_f4", None, f32, WinogradPolicy::F4, f32p),
        ("tiny_variant_bf16", "variant_winograd_f4", None, f32, WinogradPolicy::F4, f32p),
        ("tiny", "tiny_winograd_off", None, f32, WinogradPolicy::Off, f32p),
    ];
    for (f, name, stop, wd, winograd, precision) in builds {
        if let Err(e) = compile(f, name, stop, wd, winograd, precision, &out) {
            for p in &e.problems {
                eprintln!("error: {p}");
            }
            std::process::exit(1);
        }
    }
}
