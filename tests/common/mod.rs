//! Shared helpers of the end-to-end tests: fixtures written by
//! `tools/reference/make_fixtures.py` from timm, and checkpoints recreated from their
//! `synth.json` with the deterministic synthesizer.

#![allow(dead_code, unused_macros, reason = "each test binary uses a different subset")]

use nfnet_compiler::ops::Tensor;
use nfnet_compiler::synth::{self, SynthSpec};
use nfnet_runtime::npy;
use std::path::{Path, PathBuf};

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// The `nfc synth` arguments recorded with a fixture.
pub fn synth_spec(name: &str) -> SynthSpec {
    let text = std::fs::read_to_string(fixture_dir(name).join("synth.json")).unwrap();
    SynthSpec::from_fixture_json(&text).unwrap()
}

/// Recreates a fixture's checkpoint in a fresh temporary directory.
pub fn synth_fixture_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    synth::write(&synth_spec(name), dir.path()).unwrap();
    dir
}

pub fn load_input(name: &str) -> Tensor {
    let a = npy::read(&fixture_dir(name).join("input.npy")).unwrap();
    let s: [usize; 4] = a.shape.clone().try_into().unwrap();
    Tensor::from_f32(s, &a.data)
}

/// Relative L2 error of `got` against `want`.
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Channels 0, step, 2*step, ... of an NCHW tensor.
pub fn every_channel(t: &Tensor, step: usize) -> (Vec<usize>, Vec<f64>) {
    let [b, c, h, w] = t.shape;
    let plane = h * w;
    let mut data = Vec::new();
    for n in 0..b {
        for ch in (0..c).step_by(step) {
            data.extend_from_slice(&t.data[(n * c + ch) * plane..][..plane]);
        }
    }
    (vec![b, c.div_ceil(step), h, w], data)
}

/// How far outputs may be from timm's float64: relative L2 at most `tol` and, when `vs_f32`
/// is given, at most that multiple of timm float32's own relative L2 error (the fixture's
/// `timm_f32/`); the largest absolute error at most [`MAX_ABS_FACTOR`] times timm float32's
/// largest one, or `tol` x 10 times the output's largest magnitude without a float32 bound
/// (a wrong edge tile shows there even when diluted over a large tensor).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub tol: f64,
    pub vs_f32: Option<f64>,
    /// Outputs held to another relative L2 bound than `tol` (by output name).
    pub overrides: &'static [(&'static str, f64)],
}

impl Bound {
    /// Relative L2 at most `tol` on every output (largest absolute error at most 10 `tol` x
    /// the output's largest magnitude).
    pub const fn rel(tol: f64) -> Bound {
        Bound { tol, vs_f32: None, overrides: &[] }
    }
}

/// The default build's bound: as exact as timm's own float32 (every output within 1.25x its
/// error against float64).
pub const AS_TIMM_F32: Bound = Bound { tol: 1e-4, vs_f32: Some(1.25), overrides: &[] };

/// The largest absolute error may be this many times timm float32's.
pub const MAX_ABS_FACTOR: f64 = 4.0;

fn max_abs(got: &[f64], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// Compares named outputs against every fixture file of timm's (full tensors or channel
/// slices `NAME.everyK.npy`); returns one line per output, failing lines marked.
pub fn compare_to_fixture(name: &str, outputs: &[(String, Tensor, bool)], tol: f64) -> Vec<String> {
    compare_within(name, outputs, Bound::rel(tol))
}

/// As [`compare_to_fixture`], with a [`Bound`].
pub fn compare_within(name: &str, outputs: &[(String, Tensor, bool)], bound: Bound) -> Vec<String> {
    let mut report = Vec::new();
    let mut failed = false;
    let mut files: Vec<String> =
        std::fs::read_dir(fixture_dir(name)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    for file in files {
        let Some(stem) = file.strip_suffix(".npy") else { continue };
        if stem == "input" {
            continue;
        }
        let (out_name, step) = match stem.split_once(".every") {
            Some((n, k)) => (n, k.parse::<usize>().unwrap()),
            None => (stem, 1),
        };
        let (_, t, flat) =
            outputs.iter().find(|(n, ..)| n == out_name).unwrap_or_else(|| panic!("no output {out_name}"));
        let want = npy::read(&fixture_dir(name).join(&file)).unwrap();
        let (mut shape, got) = every_channel(t, step);
        if *flat {
            shape.truncate(2);
        }
        assert_eq!(shape, want.shape, "{name}/{file}: shape");
        let want: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
        let err = rel_l2(&got, &want);
        let abs = max_abs(&got, &want);
        let tol = bound.overrides.iter().find(|(n, _)| *n == out_name).map_or(bound.tol, |o| o.1);
        let mut bad = err.is_nan() || err > tol;
        let mut line = format!("{name}/{file}: relative L2 {err:.2e}, max abs {abs:.2e}");
        if let Some(ratio) = bound.vs_f32 {
            let f32_file = fixture_dir(name).join("timm_f32").join(&file);
            let timm = npy::read(&f32_file).unwrap_or_else(|e| panic!("{}: {e}", f32_file.display()));
            let timm: Vec<f64> = timm.data.iter().map(|&v| v as f64).collect();
            let (terr, tabs) = (rel_l2(&timm, &want), max_abs(&timm, &want));
            bad |= err > ratio * terr || abs > MAX_ABS_FACTOR * tabs;
            line += &format!(" (timm float32 {terr:.2e}, max abs {tabs:.2e}: x{:.2}, x{:.2})", err / terr, abs / tabs);
        } else {
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            bad |= abs > 10.0 * tol * scale;
        }
        failed |= bad;
        report.push(format!("{}{line}", if bad { "FAIL " } else { "" }));
    }
    assert!(!failed, "outputs differ from timm beyond {bound:?}:\n{}", report.join("\n"));
    report
}

pub fn named_outputs(o: &nfnet_compiler::reference::Outputs) -> Vec<(String, Tensor, bool)> {
    let mut v = vec![
        ("logits".to_string(), o.logits.clone(), true),
        ("pre_logits".to_string(), o.pre_logits.clone(), true),
        ("forward_features".to_string(), o.forward_features.clone(), false),
    ];
    for (i, f) in o.features.iter().enumerate() {
        v.push((format!("feature{i}"), f.clone(), false));
    }
    v
}

/// Buffers for every output of a generated model: logits, pre-logits, forward_features and
/// the five feature maps (see `all_outputs!` and `borrow_outputs!`).
pub struct AllOutputs {
    pub logits: Vec<f32>,
    pub pre: Vec<f32>,
    pub ff: Vec<f32>,
    pub f: [Vec<f32>; 5],
}

impl AllOutputs {
    pub fn new(logits: usize, pre: usize, ff: usize, f: [usize; 5]) -> AllOutputs {
        AllOutputs { logits: vec![0.0; logits], pre: vec![0.0; pre], ff: vec![0.0; ff], f: f.map(|n| vec![0.0; n]) }
    }
}

/// `AllOutputs` sized for the generated module `$m`.
macro_rules! all_outputs {
    ($m:ident) => {
        common::AllOutputs::new(
            $m::LOGITS_LEN,
            $m::PRE_LOGITS_LEN,
            $m::FORWARD_FEATURES_LEN,
            [$m::FEATURE0_LEN, $m::FEATURE1_LEN, $m::FEATURE2_LEN, $m::FEATURE3_LEN, $m::FEATURE4_LEN],
        )
    };
}

/// `$m::Outputs` asking for everything, borrowing an `AllOutputs`.
macro_rules! borrow_outputs {
    ($m:ident, $o:expr) => {{
        let o: &mut common::AllOutputs = $o;
        let [f0, f1, f2, f3, f4] = &mut o.f;
        $m::Outputs {
            logits: o.logits.as_mut_slice().try_into().unwrap(),
            pre_logits: Some(o.pre.as_mut_slice().try_into().unwrap()),
            forward_features: Some(o.ff.as_mut_slice().try_into().unwrap()),
            features: Some($m::Features {
                f0: f0.as_mut_slice().try_into().unwrap(),
                f1: f1.as_mut_slice().try_into().unwrap(),
                f2: f2.as_mut_slice().try_into().unwrap(),
                f3: f3.as_mut_slice().try_into().unwrap(),
                f4: f4.as_mut_slice().try_into().unwrap(),
            }),
        }
    }};
}
