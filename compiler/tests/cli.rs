//! `nfc` as a user meets it: determinism of `synth`, and a clear one-line error (non-zero exit,
//! no panic) for every kind of bad checkpoint, config and input.

use nfnet_compiler::synth::{self, StorageDtype, SynthSpec};
use nfnet_runtime::npy;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use std::process::{Command, Output};

fn nfc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nfc")).args(args).output().unwrap()
}

fn tiny_spec(seed: u64) -> SynthSpec {
    let args = r#"{"depths": [1, 1, 1, 1], "channels": [32, 64, 96, 128], "stem_chs": 16, "group_size": 8,
                   "num_features": 192}"#;
    SynthSpec {
        architecture: "eca_nfnet_l0".into(),
        seed,
        num_classes: Some(10),
        model_args: serde_json::from_str(args).unwrap(),
        input_size: Some((45, 37)),
        dtype: StorageDtype::F32,
    }
}

fn tiny_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    synth::write(&tiny_spec(1), dir.path()).unwrap();
    dir
}

/// Runs `nfc check` and asserts a clean failure; returns stderr.
fn check_fails(dir: &Path) -> String {
    let out = nfc(&["check", "--model", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    assert!(err.lines().all(|l| l.starts_with("error: ")), "{err}");
    err
}

/// A tensor to write back: name, dtype, shape, bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

fn read_raw(dir: &Path) -> Vec<Raw> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<Raw> =
        st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write_raw(dir: &Path, tensors: &[Raw]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

#[test]
fn synth_is_byte_identical_for_the_same_seed() {
    let (a, b) = (tiny_model(), tiny_model());
    for f in ["config.json", "model.safetensors"] {
        assert_eq!(std::fs::read(a.path().join(f)).unwrap(), std::fs::read(b.path().join(f)).unwrap(), "{f}");
    }
    let c = tempfile::tempdir().unwrap();
    synth::write(&tiny_spec(2), c.path()).unwrap();
    let other = std::fs::read(c.path().join("model.safetensors")).unwrap();
    assert_ne!(std::fs::read(a.path().join("model.safetensors")).unwrap(), other);
    // The CLI writes the same files as the library.
    let d = tempfile::tempdir().unwrap();
    let args = serde_json::to_string(&tiny_spec(1).model_args).unwrap();
    let out = nfc(&[
        "synth",
        "--arch",
        "eca_nfnet_l0",
        "--seed",
        "1",
        "--num-classes",
        "10",
        "--input-size",
        "45x37",
        "--model-args",
        &args,
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["config.json", "model.safetensors"] {
        assert_eq!(std::fs::read(a.path().join(f)).unwrap(), std::fs::read(d.path().join(f)).unwrap(), "{f}");
    }
}

#[test]
fn check_accepts_a_sound_model_and_summarizes_it() {
    let dir = tiny_model();
    let out = nfc(&["check", "--model", dir.path().to_str().unwrap(), "--input-size", "64x48"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for want in ["eca_nfnet_l0", "parameters", "3x64x48", "GFLOP", "stage 3", "groups 4"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
}

#[test]
fn checkpoint_problems_are_reported_together_one_line_each() {
    let dir = tiny_model();
    let mut t = read_raw(dir.path());
    // Missing key, unexpected key, wrong shape, wrong dtype, NaN, infinity.
    t.retain(|r| r.0 != "stages.1.0.conv2.gain");
    t.push(("stages.9.0.conv1.weight".into(), Dtype::F32, vec![1], vec![0; 4]));
    let r = t.iter_mut().find(|r| r.0 == "stem.conv1.weight").unwrap();
    r.2 = vec![1, 3, 3, 3];
    r.3.truncate(27 * 4);
    let r = t.iter_mut().find(|r| r.0 == "head.fc.bias").unwrap();
    r.1 = Dtype::I32;
    let r = t.iter_mut().find(|r| r.0 == "stages.0.0.conv3.bias").unwrap();
    r.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let r = t.iter_mut().find(|r| r.0 == "final_conv.gain").unwrap();
    r.3[0..4].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    write_raw(dir.path(), &t);
    let err = check_fails(dir.path());
    let expect = [
        "stages.1.0.conv2.gain: missing, expected shape [16, 1, 1, 1]",
        "stages.9.0.conv1.weight: unexpected tensor",
        "stem.conv1.weight: expected shape [2, 3, 3, 3], found [1, 3, 3, 3]",
        "head.fc.bias: expected dtype F32, F16 or BF16, found I32",
        "stages.0.0.conv3.bias: value 1 is not finite",
        "final_conv.gain: value 0 is not finite",
    ];
    for e in expect {
        assert!(err.contains(e), "'{e}' missing from:\n{err}");
    }
    assert_eq!(err.lines().count(), expect.len(), "{err}");
}

#[test]
fn a_head_that_disagrees_with_num_classes_is_named() {
    let dir = tiny_model();
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.replace("\"num_classes\": 10", "\"num_classes\": 5")).unwrap();
    let err = check_fails(dir.path());
    assert!(err.contains("head.fc.weight: expected shape [5, 192], found [10, 192]"), "{err}");
    assert!(err.contains("head.fc.bias: expected shape [5], found [10]"), "{err}");
}

#[test]
fn broken_files_are_refused_without_panic() {
    let dir = tiny_model();
    let path = dir.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    let with_header = |h: String| {
        assert_eq!(h.len(), header_len);
        let mut b = good.clone();
        b[8..8 + header_len].copy_from_slice(h.as_bytes());
        b
    };
    // The second tensor in the file starts where the first ends; make it start 4 bytes earlier.
    let first_end = header.split("\"data_offsets\":[0,").nth(1).unwrap().split(']').next().unwrap().to_string();
    let overlap_from = format!("\"data_offsets\":[{first_end},");
    let shifted = (first_end.parse::<usize>().unwrap() - 4).to_string();
    let overlap_to = format!("\"data_offsets\":[{shifted:<width$},", width = first_end.len());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 3].to_vec()),
        ("empty", Vec::new()),
        ("header length beyond the file", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
            b
        }),
        ("invalid header", {
            let mut b = good.clone();
            b[8] = b'[';
            b
        }),
        ("overlapping offsets", with_header(header.replacen(&overlap_from, &overlap_to, 1))),
        ("unsupported dtype", with_header(header.replacen("\"dtype\":\"F32\"", "\"dtype\":\"F64\"", 1))),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = check_fails(dir.path());
        assert!(err.contains("model.safetensors"), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
    }
    std::fs::remove_file(&path).unwrap();
    assert!(check_fails(dir.path()).contains("model.safetensors: cannot open"));
}

#[test]
fn bad_configs_name_the_field() {
    let dir = tiny_model();
    let cfg_path = dir.path().join("config.json");
    let l0 = |args: &str| format!(r#"{{"architecture": "eca_nfnet_l0", "model_args": {args}}}"#);
    let cases = [
        (r#"{"architecture": "resnet50"}"#.to_string(), "architecture 'resnet50' is not supported"),
        (l0(r#"{"depths": [1, 0, 1, 1]}"#), "model_args.depths"),
        (l0(r#"{"depths": [-1, 1, 1, 1]}"#), "model_args.depths"),
        (l0(r#"{"depths": [1, 1, 1]}"#), "model_args.depths"),
        (l0(r#"{"group_size": 12}"#), "model_args.group_size"),
        (l0(r#"{"channels": [1e9, 1, 1, 1]}"#), "model_args.channels"),
        (l0(r#"{"width_factor": 1e300}"#), "model_args.width_factor"),
        (l0(r#"{"gamma_in_act": true}"#), "model_args.gamma_in_act"),
        (l0(r#"{"same_padding": true}"#), "model_args.same_padding"),
        (l0(r#"{"skipinit": true}"#), "model_args.skipinit"),
        (l0(r#"{"reg": true}"#), "model_args.reg"),
        (l0(r#"{"act_layer": "relu"}"#), "model_args.act_layer"),
        (l0(r#"{"attn_layer": "se"}"#), "model_args.attn_layer"),
        (l0(r#"{"stem_type": "3x3"}"#), "model_args.stem_type"),
        (l0(r#"{"output_stride": 16}"#), "model_args.output_stride"),
        (l0(r#"{"no_such_field": 1}"#), "model_args.no_such_field"),
        (l0(r#"{"channels": [32768, 32768, 32768, 32768], "depths": [256, 256, 256, 256]}"#), "parameters"),
        (r#"{"architecture": "eca_nfnet_l0", "num_classes": -3}"#.to_string(), "num_classes"),
        (r#"{"num_classes": 3}"#.to_string(), "architecture is missing"),
        ("not json".to_string(), "not valid JSON"),
    ];
    for (text, want) in cases {
        std::fs::write(&cfg_path, &text).unwrap();
        let err = check_fails(dir.path());
        assert!(err.contains("config.json") && err.contains(want), "{text}: '{want}' missing from {err}");
    }
}

#[test]
fn input_sizes_out_of_range_are_refused() {
    let dir = tiny_model();
    for size in ["16", "31x64", "100000", "64x", "axb"] {
        let out = nfc(&["check", "--model", dir.path().to_str().unwrap(), "--input-size", size]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("input size") && !err.contains("panicked"), "{size}: {err}");
    }
}

#[test]
fn schedule_follows_the_winograd_policy_and_refuses_unknown_ones() {
    let dir = tiny_model();
    let m = dir.path().to_str().unwrap();
    let algorithms = |policy: &str| {
        let out = nfc(&["schedule", "--model", m, "--input-size", "90x74", "--json", "--winograd", policy]);
        assert!(out.status.success(), "{policy}: {}", String::from_utf8_lossy(&out.stderr));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for k in s["kernels"].as_array().unwrap().iter().filter(|k| k["kind"] == "conv") {
            let plan = &k["plan"];
            assert_eq!(plan["algorithm"], k["algorithm"], "{policy}: {k}");
            for isa in ["scalar", "avx2", "avx512", "neon"] {
                assert!(plan["micro_kernels"][isa]["items"].as_u64().unwrap() > 0, "{policy} {isa}: {plan}");
            }
        }
        let mut a: Vec<String> =
            s["kernels"].as_array().unwrap().iter().filter_map(|k| k["algorithm"].as_str().map(String::from)).collect();
        a.sort();
        a.dedup();
        a
    };
    // At 90x74 the stem's stride-1 convs (45x37) take F(4x4), stage 0's (23x19) F(2x2).
    assert_eq!(algorithms("auto"), ["direct", "winograd_f2x2_3x3", "winograd_f4x4_3x3"]);
    assert_eq!(algorithms("f2"), ["direct", "winograd_f2x2_3x3"]);
    assert_eq!(algorithms("OFF"), ["direct"]);
    assert_eq!(algorithms("f4"), ["direct", "winograd_f4x4_3x3"]);
    // bf16: convs on at least 64 input channels planned as a bf16 implicit GEMM (direct),
    // the others as an f32 model's (f32 weights, Winograd where it pays); a Winograd policy
    // is refused.
    let out = nfc(&["schedule", "--model", m, "--json", "--precision", "bf16"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["precision"], "bf16");
    let mut seen = [false; 2];
    for k in s["kernels"].as_array().unwrap().iter().filter(|k| k["kind"] == "conv") {
        let plan = &k["plan"];
        let cin = plan["input_channels_per_group"].as_u64().unwrap() * plan["groups"].as_u64().unwrap();
        let bf16 = cin >= 64;
        seen[bf16 as usize] = true;
        if bf16 {
            assert_eq!((&plan["precision"], &plan["algorithm"]), (&"bf16".into(), &"direct".into()), "{k}");
            assert!(plan["bf16"]["k_padded"].as_u64().unwrap() % 32 == 0, "{k}");
        } else {
            assert_eq!((&plan["precision"], &plan["weights"]), (&"f32".into(), &"f32".into()), "{k}");
        }
    }
    assert_eq!(seen, [true, true]);
    let out = nfc(&["schedule", "--model", m, "--precision", "bf16", "--winograd", "f4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not apply with precision bf16"), "{err}");
    let out = nfc(&["schedule", "--model", m, "--precision", "fp8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'fp8' is not one of f32, bf16"), "{err}");
    let out = nfc(&["schedule", "--model", m, "--winograd", "f3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'f3' is not one of auto, f2, off, f4"), "{err}");
}

#[test]
fn reference_refuses_bad_tensor_files_and_writes_all_outputs() {
    let dir = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let model = dir.path().to_str().unwrap();
    let x = npy::Array::new(vec![2, 3, 45, 37], (0..2 * 3 * 45 * 37).map(|i| (i % 7) as f32 - 3.0).collect()).unwrap();
    let good = npy::to_bytes(&x);
    let out_dir = work.path().join("out");
    let run = |bytes: &[u8]| {
        let p = work.path().join("x.npy");
        std::fs::write(&p, bytes).unwrap();
        nfc(&["reference", "--model", model, "--input", p.to_str().unwrap(), "--out-dir", out_dir.to_str().unwrap()])
    };
    let replace = |from: &str, to: &str| {
        let mut b = good.clone();
        let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
        b[at..at + to.len()].copy_from_slice(to.as_bytes());
        b
    };
    let zeros = |shape: Vec<usize>| {
        let n = shape.iter().product();
        npy::to_bytes(&npy::Array::new(shape, vec![0.0; n]).unwrap())
    };
    let mut nan = x.clone();
    nan.data[5] = f32::NAN;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("'<f8'", replace("<f4", "<f8")),
        ("Fortran", replace("False", "True ")),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("(B, 3, H, W)", zeros(vec![3, 45, 37])),
        ("(B, 3, H, W)", zeros(vec![1, 4, 45, 37])),
        ("input size 8x8", zeros(vec![1, 3, 8, 8])),
        ("value 5 is not finite", npy::to_bytes(&nan)),
    ];
    for (want, bytes) in cases {
        let out = run(&bytes);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {err}");
        assert!(err.contains("x.npy") && err.contains(want) && !err.contains("panicked"), "{want}: {err}");
        assert!(!out_dir.exists(), "{want}: no output may be written on failure");
    }
    let out = run(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut shapes: Vec<(String, Vec<usize>)> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().to_string(), npy::read(&p).unwrap().shape)
        })
        .collect();
    shapes.sort();
    let want = [
        ("feature0.npy", vec![2, 8, 23, 19]),
        ("feature1.npy", vec![2, 32, 12, 10]),
        ("feature2.npy", vec![2, 64, 6, 5]),
        ("feature3.npy", vec![2, 96, 3, 3]),
        ("feature4.npy", vec![2, 192, 2, 2]),
        ("forward_features.npy", vec![2, 192, 2, 2]),
        ("logits.npy", vec![2, 10]),
        ("pre_logits.npy", vec![2, 192]),
    ];
    let want: Vec<(String, Vec<usize>)> = want.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
    assert_eq!(shapes, want);
}
