//! The reference executor and the folded graph against timm's own float64 outputs.
//!
//! Tolerance: relative L2 1e-6. Both sides compute in f64 (their difference is ~1e-12, from
//! summation order); the fixtures are stored as float32, which alone contributes up to ~6e-8.
//! The acceptance bound is 1e-5; we hold the oracle to a tighter one.

mod common;

use common::*;
use nfnet_compiler::Model;

const TOL: f64 = 1e-6;

fn check_fixture(name: &str) {
    let dir = synth_fixture_model(name);
    let model = Model::load(dir.path()).unwrap();
    let x = load_input(name);
    let reference = model.reference().forward(&x).unwrap();
    for line in compare_to_fixture(name, &named_outputs(&reference), TOL) {
        println!("reference {line}");
    }
    let graph = model.graph((x.shape[2], x.shape[3]), x.shape[0]).unwrap();
    let folded = graph.eval(&x);
    for line in compare_to_fixture(name, &named_outputs(&folded), TOL) {
        println!("folded    {line}");
    }
    // Folding only reorders f64 arithmetic: the two executors agree far below the tolerance.
    assert!(rel_l2(&folded.logits.data, &reference.logits.data) < 1e-10);
}

#[test]
fn tiny_config_batch2_odd_nonsquare_matches_timm() {
    check_fixture("tiny");
}

#[test]
fn variant_without_conv2b_or_head_in_bf16_matches_timm() {
    check_fixture("tiny_variant_bf16");
}

#[test]
fn synthetic_l2_at_320_matches_timm() {
    check_fixture("l2_320");
}
