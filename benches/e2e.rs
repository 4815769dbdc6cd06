//! End-to-end latency of the compiled model (the `nfnet-model` crate: by default the built-in
//! synthetic eca_nfnet_l2 at 320x320, batch 1) on every ISA this machine runs, with 1 and 2
//! threads. Compare with the peers in one run: `python3 tools/bench/side_by_side.py`.
//!
//!     cargo bench --bench e2e

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nfnet_model as m;
use std::time::Duration;

fn e2e(c: &mut Criterion) {
    let input: Vec<f32> = (0..m::INPUT_LEN).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let input: &[f32; m::INPUT_LEN] = input.as_slice().try_into().unwrap();
    let mut logits = vec![0.0f32; m::LOGITS_LEN];
    let mut g = c.benchmark_group(format!("e2e_{}_{}x{}_b{}", m::ARCHITECTURE, m::INPUT_H, m::INPUT_W, m::BATCH));
    g.sample_size(10).measurement_time(Duration::from_secs(15)).throughput(Throughput::Elements(m::BATCH as u64));
    for &isa in m::ISAS.iter().filter(|i| i.is_available()) {
        let model = m::Model::with_isa(isa).unwrap();
        for threads in [1, 2] {
            let mut ws = m::Workspace::new(threads).unwrap();
            g.bench_function(format!("{isa}_t{threads}"), |b| {
                b.iter(|| {
                    let l: &mut [f32; m::LOGITS_LEN] = logits.as_mut_slice().try_into().unwrap();
                    let out = m::Outputs { logits: l, pre_logits: None, forward_features: None, features: None };
                    model.infer(&mut ws, input, out)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, e2e);
criterion_main!(benches);
