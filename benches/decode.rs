//! JPEG decoding of a 12-megapixel photo-like image (4000x3000, quality 90, 4:2:0): the decoder
//! preprocessing uses (libjpeg-turbo's, as Pillow decodes) beside the `image` crate's pure-Rust
//! decoder, which differs from Pillow's pixels by up to a few levels.
//!
//!     cargo bench --bench decode

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::codecs::jpeg::JpegEncoder;
use std::hint::black_box;
use std::time::Duration;

/// Smooth fields with edges and noise, encoded by the `image` crate.
fn photo(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    let mut seed = 1u32;
    for y in 0..h {
        for x in 0..w {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = (seed >> 27) as f32;
            let (fx, fy) = (x as f32, y as f32);
            px.push((128.0 + 100.0 * (fx / 90.0).sin() * (fy / 70.0).cos() + n) as u8);
            px.push((128.0 + 90.0 * ((fx + 2.0 * fy) / 150.0).cos() + n) as u8);
            px.push(if (fx - 2000.0).powi(2) + (fy - 1000.0).powi(2) < 800.0f32.powi(2) { 220 } else { 40 });
        }
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90).encode(&px, w, h, image::ExtendedColorType::Rgb8).expect("encodes");
    out
}

fn decode(c: &mut Criterion) {
    let jpeg = photo(4000, 3000);
    let mut g = c.benchmark_group("decode_12mp_jpeg");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).throughput(Throughput::Elements(12_000_000));
    g.bench_function("libjpeg-turbo (preprocessing)", |b| {
        b.iter(|| nfnet_runtime::preprocess::decode_rgb(black_box(&jpeg)).expect("decodes"))
    });
    g.bench_function("image crate", |b| {
        b.iter(|| image::load_from_memory(black_box(&jpeg)).expect("decodes").to_rgb8())
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
