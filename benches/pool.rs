//! The thread pool's cost per job and per item: jobs of `n` items of fixed arithmetic
//! (about 5 or 20 us each) on 2 threads, beside the same items run serially on one. With
//! perfect scaling a job takes half the serial time; the difference over `n` items is the
//! pool's overhead (the model runs about 240 jobs per inference, many of 60-500 items).
//!
//!     cargo bench --bench pool

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nfnet_runtime::Pool;
use std::hint::black_box;
use std::time::Duration;

/// A dependent chain of `steps` multiply-adds (about 4 cycles each).
fn item(steps: usize, i: usize) -> f64 {
    let mut x = i as f64;
    for _ in 0..steps {
        x = x * 1.000_000_1 + 0.1;
    }
    x
}

fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    g.sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    let pool = Pool::new(2).expect("spawn the pool's worker");
    for (n, steps) in [(64, 2_500), (16, 10_000), (2, 10_000)] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_items_of_{steps}_steps/serial"), |b| {
            b.iter(|| (0..n).for_each(|i| _ = black_box(item(steps, i))))
        });
        g.bench_function(format!("{n}_items_of_{steps}_steps/2_threads"), |b| {
            b.iter(|| pool.run(n, &|i| _ = black_box(item(steps, i))))
        });
    }
    g.finish();
}

criterion_group!(benches, pool);
criterion_main!(benches);
