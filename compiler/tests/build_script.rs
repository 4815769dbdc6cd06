//! The builder inside a real cargo build, as a user's crate runs it: a relative `NFNET_MODEL`
//! is found from the workspace root, a change to the model's config reruns the build script,
//! and a relative path that does not exist is named absolutely in one line.

use nfnet_compiler::synth::{self, SynthSpec};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BUILD_RS: &str = r#"fn main() {
    let result = nfnet_compiler::builder::Builder::from_env().and_then(|b| b.compile());
    if let Err(e) = result {
        for p in &e.problems {
            eprintln!("error: {p}");
        }
        std::process::exit(1);
    }
}
"#;

/// A workspace `root` with one member crate `app/` whose build script compiles `NFNET_MODEL`
/// and whose library holds the emitted source as a string (compiling it is not under test).
fn user_workspace(root: &Path) {
    let compiler = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"app\"]\nresolver = \"3\"\n").unwrap();
    std::fs::copy(compiler.join("../Cargo.lock"), root.join("Cargo.lock")).unwrap();
    std::fs::create_dir_all(root.join("app/src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"app\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
         [build-dependencies]\nnfnet-compiler = {{ path = {:?} }}\n",
        compiler.display().to_string()
    );
    std::fs::write(root.join("app/Cargo.toml"), manifest).unwrap();
    std::fs::write(root.join("app/build.rs"), BUILD_RS).unwrap();
    std::fs::write(
        root.join("app/src/lib.rs"),
        "pub const SOURCE: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/nfnet_model.rs\"));\n",
    )
    .unwrap();
}

fn cargo_build(root: &Path, target: &Path, model: &str) -> Output {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (k, _) in std::env::vars() {
        if k.starts_with("NFNET_") || k == "RUSTFLAGS" || k == "CARGO_ENCODED_RUSTFLAGS" {
            cmd.env_remove(k);
        }
    }
    cmd.args(["build", "--offline", "--quiet", "-p", "app"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target)
        .env("NFNET_MODEL", model)
        .env("NFNET_INPUT_SIZE", "48")
        .output()
        .unwrap()
}

/// The emitted sources of every build of `app` under `target`.
fn emitted(target: &Path) -> Vec<(PathBuf, String)> {
    let mut out = vec![];
    for e in std::fs::read_dir(target.join("debug/build")).unwrap().flatten() {
        let src = e.path().join("out/nfnet_model.rs");
        if e.file_name().to_string_lossy().starts_with("app-") && src.exists() {
            out.push((src.clone(), std::fs::read_to_string(src).unwrap()));
        }
    }
    out
}

#[test]
fn relative_nfnet_model_is_found_from_the_workspace_root_and_reruns_on_change() {
    let root = tempfile::tempdir().unwrap();
    user_workspace(root.path());
    let spec_json = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny/synth.json"));
    let spec = SynthSpec::from_fixture_json(&spec_json.unwrap()).unwrap();
    let model = root.path().join("models/tiny");
    synth::write(&spec, &model).unwrap();
    // Kept between runs so the compiler crate builds once.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("build_script_target");
    if target.join("debug/build").exists() {
        for e in std::fs::read_dir(target.join("debug/build")).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("app-") {
                std::fs::remove_dir_all(e.path()).unwrap();
            }
        }
    }

    let out = cargo_build(root.path(), &target, "models/tiny");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = emitted(&target);
    assert_eq!(first.len(), 1);
    assert!(first[0].1.contains("CROP_PCT: f32 = 0.9"), "the emitted source holds the config's crop_pct");
    let config = model.join("config.json").display().to_string();
    assert!(first[0].1.contains(&format!("MODEL_CONFIG: &str = {config:?}")), "MODEL_CONFIG names {config}");

    // A changed config reruns the build script.
    let cfg_path = model.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(cfg.contains("\"crop_pct\": 0.9"), "{cfg}");
    std::fs::write(&cfg_path, cfg.replace("\"crop_pct\": 0.9", "\"crop_pct\": 0.75")).unwrap();
    let out = cargo_build(root.path(), &target, "models/tiny");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = emitted(&target);
    assert_eq!(second.len(), 1);
    assert!(second[0].1.contains("CROP_PCT: f32 = 0.75"), "the config change reached the emitted source");

    // A relative path that does not exist: one line naming the absolute path tried.
    let out = cargo_build(root.path(), &target, "models/missing");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let tried = root.path().join("models/missing");
    let line = format!("error: NFNET_MODEL=models/missing -> {}: no such directory", tried.display());
    assert!(err.lines().any(|l| l.trim() == line), "expected `{line}` in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}
