//! The `nfnet` binary as a user meets it, on the built-in model.

use nfnet_runtime::npy;
use std::path::Path;
use std::process::{Command, Output};

fn nfnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nfnet")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/preprocess").join(name).display().to_string()
}

#[test]
fn classify_prints_top_k_and_goes_on_past_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let o = nfnet(&[
        "classify",
        &fixture("rgb_61x83.png"),
        bad.to_str().unwrap(),
        &fixture("gray_33x33.png"),
        "--top",
        "3",
    ]);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("broken.png") && err.contains("1 of 3 images failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.lines().filter(|l| l.trim_end().ends_with(".png")).count(), 2, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains('%')).count(), 6, "{out}");
    let o = nfnet(&["classify", &fixture("rgb_61x83.png"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let top = v["results"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    let probs: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs[0] <= 100.0 && probs[4] > 0.0, "{probs:?}");
    assert!(top[0]["label"].as_str().unwrap().len() > 2);
}

/// A directory gives its image files as timm's dataset finds them: by extension,
/// case-insensitively, in subdirectories too, in natural order; other files are not images.
/// A truncated JPEG is refused as Pillow refuses it, named, and the rest still classified.
#[test]
fn classify_a_directory_takes_its_image_files_and_refuses_truncated_jpegs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let jpeg = std::fs::read(fixture("q85_420_61x47.jpg")).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("img10.JPG"), &jpeg).unwrap();
    std::fs::write(d.join("img2.jpeg"), &jpeg).unwrap();
    std::fs::write(d.join("sub/a.png"), std::fs::read(fixture("rgb_61x83.png")).unwrap()).unwrap();
    std::fs::write(d.join("x.npy"), b"not an image").unwrap();
    std::fs::write(d.join("notes.txt"), b"not an image").unwrap();
    let o = nfnet(&["classify", d.to_str().unwrap(), "--top", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = stdout(&o).lines().filter(|l| !l.starts_with(' ')).map(str::to_string).collect();
    let want: Vec<String> =
        ["img2.jpeg", "img10.JPG", "sub/a.png"].iter().map(|f| d.join(f).display().to_string()).collect();
    assert_eq!(names, want);

    std::fs::write(d.join("img3.jpg"), &jpeg[..jpeg.len() - 2]).unwrap();
    let o = nfnet(&["classify", d.to_str().unwrap(), "--top", "1"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("img3.jpg: image file is truncated") && err.contains("1 of 4 images failed"), "{err}");
    assert_eq!(stdout(&o).lines().filter(|l| !l.starts_with(' ')).count(), 3);
}

#[test]
fn features_embed_and_preprocess_write_the_model_card_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = d.join("x.npy");
    let o = nfnet(&["preprocess", &fixture("rgba_90x47.png"), "--output", x.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(npy::read(&x).unwrap().shape, vec![1, 3, 320, 320]);
    let o = nfnet(&["features", "--input", x.to_str().unwrap(), "--out-dir", d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = [[1, 64, 160, 160], [1, 256, 80, 80], [1, 512, 40, 40], [1, 1536, 20, 20], [1, 3072, 10, 10]];
    for (i, s) in want.iter().enumerate() {
        assert_eq!(npy::read(&d.join(format!("feature{i}.npy"))).unwrap().shape, s.to_vec());
        assert!(stdout(&o).contains(&format!("{:?}", s.to_vec())), "{}", stdout(&o));
    }
    let e = d.join("e.npy");
    let o = nfnet(&["embed", &fixture("rgba_90x47.png"), "--output", e.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pooled = npy::read(&e).unwrap();
    assert_eq!(pooled.shape, vec![1, 3072]);
    let o = nfnet(&["embed", "--input", x.to_str().unwrap(), "--unpooled", "--output", e.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let unpooled = npy::read(&e).unwrap();
    assert_eq!(unpooled.shape, vec![1, 3072, 10, 10]);
    // The pooled embedding is the mean of the unpooled map (same image, same preprocessing).
    for c in [0, 1000, 3071] {
        let mean: f32 = unpooled.data[c * 100..(c + 1) * 100].iter().sum::<f32>() / 100.0;
        assert!((mean - pooled.data[c]).abs() <= 1e-4 * (1.0 + mean.abs()), "{c}: {mean} {}", pooled.data[c]);
    }
}

#[test]
fn info_schedule_and_bench_report_the_compiled_model() {
    let o = nfnet(&["info"]);
    assert!(o.status.success() && stdout(&o).contains("eca_nfnet_l2") && stdout(&o).contains("synthetic"));
    assert!(stdout(&o).contains("as Winograd F(4x4, 3x3)") && stdout(&o).contains("f32 weights"), "{}", stdout(&o));
    assert!(stdout(&o).lines().any(|l| l.starts_with("model ") && l.contains("eca_nfnet_l2")), "{}", stdout(&o));
    let o = nfnet(&["schedule", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["format"], "nfnet-schedule/1");
    assert!(["auto", "f2", "off", "f4"].contains(&v["winograd"].as_str().unwrap()));
    assert!(v["kernels"].as_array().unwrap().len() > 100);
    let o = nfnet(&["bench", "--iters", "2", "--threads", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for k in ["median_ms", "min_ms", "p90_ms", "threads", "isa", "input_size", "batch"] {
        assert!(!v[k].is_null(), "{k} missing: {v}");
    }
    assert_eq!(v["threads"], 1);
}

#[test]
fn bad_arguments_and_environment_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let f64_npy = dir.path().join("f64.npy");
    let mut bytes = npy::to_bytes(&npy::Array::new(vec![1, 3, 320, 320], vec![0.0; 3 * 320 * 320]).unwrap());
    let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
    bytes[at..at + 3].copy_from_slice(b"<f8");
    std::fs::write(&f64_npy, bytes).unwrap();
    // (arguments, environment, what the message must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["run", "--input", f64_npy.to_str().unwrap(), "--output", "/dev/null"], vec![], "f64.npy"),
        (vec!["embed", "--input", "/nonexistent.npy"], vec![], "nonexistent.npy"),
        (vec!["bench", "--iters", "1"], vec![("NFNET_ISA", "sse9")], "NFNET_ISA"),
        (vec!["bench", "--iters", "1"], vec![("NFNET_ISA", "neon")], "NFNET_ISA"),
        (vec!["bench", "--iters", "1"], vec![("NFNET_THREADS", "lots")], "NFNET_THREADS"),
        (vec!["classify", "/nonexistent-dir-xyz/a.png"], vec![], "a.png"),
    ];
    for (args, env, want) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_nfnet")).args(&args).envs(env.clone()).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?} {env:?}: {err}");
        assert!(err.contains(want) && !err.contains("panicked"), "{args:?} {env:?}: {err}");
    }
}

#[test]
fn bench_serve_answers_each_line_with_its_times_and_names_a_bad_line() {
    use std::io::Write;
    use std::process::Stdio;
    let serve = |input: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nfnet"))
            .args(["bench", "--serve", "--threads", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let o = serve("1\n\n2\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ready", "{out}");
    let counts: Vec<usize> = lines[1..].iter().map(|l| l.split_whitespace().count()).collect();
    assert_eq!(counts, [1, 1, 2], "{out}");
    assert!(lines[1..].iter().flat_map(|l| l.split_whitespace()).all(|t| t.parse::<f64>().unwrap() > 0.0));
    let o = serve("1\nfast\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("stdin line 2") && stderr(&o).contains("fast"), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    let o = nfnet(&["bench", "--serve", "--iters", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// The app links the runtime and the compiled model, not the compiler: no code generator,
/// formatter or checkpoint reader ships inside an inference binary.
#[test]
fn the_app_does_not_link_the_compiler() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args(["tree", "-p", "nfnet", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let tree = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tree.contains("nfnet-model") && tree.contains("nfnet-runtime"), "{tree}");
    for dep in ["nfnet-compiler", "prettyplease", "safetensors"] {
        assert!(!tree.lines().any(|l| l.starts_with(dep)), "the app depends on {dep}:\n{tree}");
    }
}
