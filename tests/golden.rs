//! Golden test of the emitted source for the tiny fixture model. Any change to the emitted
//! code shows up here as a unified diff; after reviewing it, bless the new output with
//! `NFNET_BLESS=1 cargo test --release --test golden`.

mod common;

use common::*;
use nfnet_compiler::Model;
use nfnet_compiler::emit::{self, EmitInfo};
use nfnet_compiler::schedule::Schedule;
use std::path::Path;

#[test]
fn emitted_source_of_the_tiny_model_is_unchanged() {
    let dir = synth_fixture_model("tiny");
    let model = Model::load(dir.path()).unwrap();
    let graph = model.graph((45, 37), 2).unwrap();
    let schedule = Schedule::new(&graph, None);
    let info = EmitInfo {
        weight_dtype: Default::default(),
        config: "fixtures/tiny (nfc synth from fixtures/tiny/synth.json)".into(),
        weights_sha256: model.checkpoint.sha256(),
        synthetic: Some("eca_nfnet_l0 seed 3".into()),
    };
    let got = emit::emit(&schedule, &info).source;
    // Identical inputs give byte-identical output.
    assert_eq!(got, emit::emit(&schedule, &info).source);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny_model.rs");
    if std::env::var_os("NFNET_BLESS").is_some() {
        std::fs::write(&golden, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    if got != want {
        let diff = similar::TextDiff::from_lines(&want, &got);
        panic!(
            "emitted source differs from {} (bless with NFNET_BLESS=1):\n{}",
            golden.display(),
            diff.unified_diff().context_radius(3).header("golden", "emitted")
        );
    }
}
