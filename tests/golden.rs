//! Golden test of the emitted source for the tiny fixture model. Any change to the emitted
//! code shows up here as a unified diff; after reviewing it, bless the new output with
//! `NFNET_BLESS=1 cargo test --release --test golden`.

mod common;

use common::*;
use nfnet_compiler::Model;
use nfnet_compiler::emit::{self, EmitInfo};
use nfnet_compiler::schedule::{Policies, Schedule, WinogradPolicy};
use std::path::Path;

#[test]
fn emitted_source_of_the_tiny_model_is_unchanged() {
    let dir = synth_fixture_model("tiny");
    let model = Model::load(dir.path()).unwrap();
    let graph = model.graph((45, 37), 2).unwrap();
    let schedule = Schedule::new(&graph, Policies::default(), None);
    let info = EmitInfo {
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

/// The plan `nfc schedule --json` shows for each conv kernel is the one its emitted code
/// runs: every ISA module's entry point carries the plan's tile, panels and item count.
#[test]
fn the_emitted_kernels_run_the_schedules_plans() {
    let dir = synth_fixture_model("tiny");
    let model = Model::load(dir.path()).unwrap();
    let graph = model.graph((45, 37), 1).unwrap();
    for winograd in [WinogradPolicy::Off, WinogradPolicy::F2, WinogradPolicy::F4] {
        let schedule = Schedule::new(&graph, Policies { winograd, ..Policies::default() }, None);
        let info = EmitInfo { config: "tiny".into(), weights_sha256: String::new(), synthetic: None };
        let source = emit::emit(&schedule, &info).source;
        let json = schedule.to_json();
        let mut checked = 0;
        for k in json["kernels"].as_array().unwrap() {
            if k["kind"] != "conv" {
                assert!(k["plan"].is_null(), "{k}");
                continue;
            }
            let plan = &k["plan"];
            assert_eq!(plan["algorithm"], k["algorithm"]);
            let modules: Vec<&str> = k["modules"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
            for (isa, mk) in plan["micro_kernels"].as_object().unwrap() {
                let module = section(&source, &format!("pub mod isa_{isa} {{"), "\n}\n");
                // The forward pass (generic over the ISA) names the kernel after the step's comment.
                let step = section(&source, &format!("// conv: {}\n", modules.join("+")), "rt::ConvIo");
                let call = step.lines().map(str::trim).find(|l| l.starts_with("k.conv") && l.ends_with('('));
                let call = call.unwrap_or_else(|| panic!("{isa} {modules:?}: no conv call in\n{step}"));
                let name = call.trim_start_matches("k.").trim_end_matches('(');
                let item = section(module, &format!("unsafe fn {name}_item("), "\n    }\n");
                let entry = section(module, &format!("unsafe fn {name}("), "\n    }\n");
                let tile = if plan["algorithm"] == "direct" { "TILE" } else { "TILES" };
                let want = |c: &str, v: &serde_json::Value| format!("const {c}: usize = {v};");
                assert!(item.contains(&want(tile, &mk["tile"])), "{isa} {modules:?}: {mk} vs\n{item}");
                assert!(item.contains(&want("PANELS", &mk["panels"])), "{isa} {modules:?}: {mk} vs\n{item}");
                assert!(entry.contains(&want("ITEMS", &mk["items"])), "{isa} {modules:?}: {mk} vs\n{entry}");
                checked += 1;
            }
        }
        assert!(checked >= 4 * 20, "{winograd:?}: {checked} entry points checked");
    }
}

/// The text from the first `start` (included) to the next `end` after it.
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let at = text.find(start).unwrap_or_else(|| panic!("no {start:?}"));
    let len = text[at + start.len()..].find(end).unwrap_or_else(|| panic!("no {end:?} after {start:?}"));
    &text[at..at + start.len() + len]
}
