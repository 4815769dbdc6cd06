//! Per kernel class: the compiled model's fused kernels run alone (`Model::run_kernel`),
//! one representative of each class, throughput in FLOP/s (criterion's elements/s), on every
//! ISA here, one thread. Divide by the FMA peak (../shared/tools/peak.c: about 104 GFLOP/s
//! AVX2 and 204 AVX-512 per core here) for the share of peak; `nfnet profile` shows all.
//!
//!     cargo bench --bench kernels

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nfnet_model as m;
use std::time::Duration;

/// The classes and the module a representative kernel implements.
const CLASSES: [(&str, &str); 7] = [
    ("stem_3x3_s1", "stem.conv3+"),
    ("conv1x1_stage2", "stages.2.5.conv1+"),
    ("conv3x3_grouped_stage2", "stages.2.5.conv2+"),
    ("conv1x1_eca_sums_stage2", "stages.2.5.conv3+"),
    ("conv1x1_stage3", "stages.3.4.conv1+"),
    ("final_conv_gap", "final_conv+"),
    ("eca_residual_silu_stage0", "stages.0.1.attn_last+"),
];

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for &isa in m::ISAS.iter().filter(|i| i.is_available()) {
        let model = m::Model::with_isa(isa).unwrap();
        let mut ws = m::Workspace::new(1).unwrap();
        for (class, module) in CLASSES {
            let Some(i) =
                m::KERNEL_NAMES.iter().position(|n| n.split(' ').nth(1).is_some_and(|x| x.starts_with(module)))
            else {
                continue;
            };
            g.throughput(Throughput::Elements(m::KERNEL_FLOPS[i].max(1)));
            g.bench_function(format!("{class}/{isa}"), |b| b.iter(|| model.run_kernel(&mut ws, i)));
        }
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
