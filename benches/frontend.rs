//! Front-end benchmarks: what build.rs pays on every model build (read, validate and fold the
//! L2 checkpoint) and the reference executor (the f64 oracle) end to end.
//!
//!     cargo bench --bench frontend

use criterion::{Criterion, criterion_group, criterion_main};
use nfnet_compiler::Model;
use nfnet_compiler::ops::Tensor;
use nfnet_compiler::synth::{self, SynthSpec};
use std::time::Duration;

fn l2_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    synth::write(&SynthSpec::builtin(), dir.path()).unwrap();
    dir
}

fn frontend(c: &mut Criterion) {
    let dir = l2_dir();
    let mut g = c.benchmark_group("frontend");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("l2_validate_and_fold", |b| {
        b.iter(|| {
            let model = Model::load(dir.path()).unwrap();
            model.graph((320, 320), 1).unwrap()
        })
    });
    let model = Model::load(dir.path()).unwrap();
    let x =
        Tensor { shape: [1, 3, 320, 320], data: (0..3 * 320 * 320).map(|i| ((i % 17) as f64 - 8.0) / 4.0).collect() };
    g.measurement_time(Duration::from_secs(60));
    g.bench_function("l2_reference_f64_320", |b| b.iter(|| model.reference().forward(&x).unwrap()));
    g.finish();
}

criterion_group!(benches, frontend);
criterion_main!(benches);
