//! Property-based fuzzing (proptest; cargo-fuzz needs a nightly toolchain) of everything that
//! parses user input: config.json, safetensors checkpoints, .npy tensors and images. Inputs are
//! random mutations (byte flips, truncations, splices) of the seed corpus in fixtures/fuzz and
//! fixtures/preprocess, plus random bytes. The property: an error or a value, never a panic.
//! Cases per property: 64 by default (a bounded smoke test in CI); `PROPTEST_CASES=N` for more.

mod common;

use nfnet_compiler::arch::Arch;
use nfnet_compiler::checkpoint::Checkpoint;
use nfnet_compiler::config::ModelConfig;
use nfnet_runtime::npy;
use nfnet_runtime::preprocess::load_rgb;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    }
}

/// A mutation: flip bytes, overwrite with random bytes, truncate, or splice in a slice.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let m = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Splice(i, b)),
    ];
    proptest::collection::vec(m, 1..6)
}

fn mutate(seed: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in ms {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, x) => {
                let at = i % b.len();
                b[at] ^= x;
            }
            Mutation::Truncate(i) => b.truncate(i % b.len()),
            Mutation::Splice(i, s) => {
                let at = i % b.len();
                let end = (at + s.len()).min(b.len());
                b.splice(at..end, s.iter().copied());
            }
        }
    }
    b
}

fn tiny_checkpoint() -> &'static (Vec<u8>, Arch) {
    static C: OnceLock<(Vec<u8>, Arch)> = OnceLock::new();
    C.get_or_init(|| {
        let dir = common::synth_fixture_model("tiny");
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let arch = Arch::new(&ModelConfig::load(&dir.path().join("config.json")).unwrap()).unwrap();
        (bytes, arch)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_parsing_never_panics(ms in mutations(), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
        let seed = std::fs::read(fixtures().join("fuzz/seed_config.json")).unwrap();
        for bytes in [mutate(&seed, &ms), junk] {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(c) = ModelConfig::parse(&text, "config.json") {
                let _ = Arch::new(&c);
            }
        }
    }

    #[test]
    fn config_values_never_panic(key in "[a-z_]{1,14}", value in prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| if v.is_finite() { format!("{v:e}") } else { "1e999".into() }),
        Just("null".to_string()), Just("true".to_string()), Just("[1, 2, 3, 4]".to_string()),
        Just("[0, 0, 0, 0]".to_string()), Just("{\"gamma\": 0.0001}".to_string()), Just("\"x\"".to_string()),
    ]) {
        let fields = ["depths", "channels", "stem_chs", "group_size", "num_features", "ch_div", "width_factor",
                      "bottle_ratio", "alpha", "attn_gain", "attn_kwargs", "std_conv_eps", key.as_str()];
        for f in fields {
            let text = format!("{{\"architecture\": \"eca_nfnet_l0\", \"model_args\": {{\"{f}\": {value}}}}}");
            if let Ok(c) = ModelConfig::parse(&text, "config.json") {
                let _ = Arch::new(&c);
            }
        }
    }

    #[test]
    fn checkpoint_validation_never_panics(ms in mutations()) {
        let (seed, arch) = tiny_checkpoint();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, mutate(seed, &ms)).unwrap();
        if let Ok(c) = Checkpoint::open(&path)
            && c.validate(arch).is_ok()
        {
            for name in c.tensors.keys() {
                let _ = c.f64(name);
            }
        }
    }

    #[test]
    fn npy_parsing_never_panics(ms in mutations(), junk in proptest::collection::vec(any::<u8>(), 0..128)) {
        let seed = std::fs::read(fixtures().join("fuzz/seed.npy")).unwrap();
        let _ = npy::parse(&mutate(&seed, &ms));
        let _ = npy::parse(&junk);
        let mut header = b"\x93NUMPY\x01\x00".to_vec();
        header.extend_from_slice(&junk);
        let _ = npy::parse(&header);
    }

    #[test]
    fn image_loading_never_panics(which in 0usize..9, ms in mutations()) {
        let seeds = [
            "rgb_61x83.png",
            "palette_40x70.png",
            "gray16_29x51.png",
            "rgb_52x38.bmp",
            "animated_24x31.gif",
            "q85_420_61x47.jpg",
            "q90_420_progressive_61x47.jpg",
            "q90_cmyk_61x47.jpg",
            "q70_gray_progressive_33x71.jpg",
        ];
        let seed = std::fs::read(fixtures().join("preprocess").join(seeds[which])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(seeds[which]);
        std::fs::write(&path, mutate(&seed, &ms)).unwrap();
        let _ = load_rgb(&path);
    }
}
