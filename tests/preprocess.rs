//! timm's eval transform (PIL decode and resize, torchvision crop) reproduced exactly: RGB, RGBA,
//! grayscale, 16-bit grayscale, palette, 1x1, BMP, an animated GIF and JPEGs (baseline and
//! progressive, 4:4:4 / 4:2:2 / 4:2:0, grayscale, CMYK, restart markers, odd sizes), at square and
//! non-square sizes and three crop_pct values. Expected crops made by timm's `create_transform`
//! on Pillow (fixtures/preprocess/cases.json, tools/reference/make_jpeg_fixtures.py); damaged
//! JPEGs are refused or decoded exactly as Pillow refuses or decodes them.

use nfnet_runtime::npy;
use nfnet_runtime::preprocess::{EvalConfig, decode_rgb, load_rgb};
use std::path::Path;

#[test]
fn eval_transform_matches_timm_bit_for_bit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/preprocess");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    for c in cases.as_array().unwrap() {
        let size = (c["size"][0].as_u64().unwrap() as usize, c["size"][1].as_u64().unwrap() as usize);
        let cfg = EvalConfig {
            size,
            crop_pct: c["crop_pct"].as_f64().unwrap(),
            crop_mode: "center".into(),
            interpolation: "bicubic".into(),
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let img = load_rgb(&dir.join(c["image"].as_str().unwrap())).unwrap();
        let got = cfg.tensor(&img).unwrap();
        let want = npy::read(&dir.join(c["expected"].as_str().unwrap())).unwrap();
        assert_eq!(want.shape, vec![3, size.0, size.1]);
        let diff = got.iter().zip(&want.data).map(|(g, w)| (g * 255.0 - w).abs()).fold(0.0f32, f32::max);
        if diff > 1e-3 {
            failures.push(format!("{}: max diff {diff}/255", c["expected"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn unreadable_images_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = bomb_png();
    let cases: [(&str, &[u8], &str); 5] = [
        ("empty.png", b"", "not an image"),
        ("text.jpg", b"hello, not an image", "not an image"),
        ("notes.txt", b"hello, not an image", "not an image"),
        ("truncated.png", &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H'], "cannot decode"),
        ("bomb.png", &bomb, "limit"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = load_rgb(&p).unwrap_err();
        assert!(err.contains(want), "{name}: {err}");
    }
    assert!(load_rgb(&dir.path().join("missing.png")).unwrap_err().contains("cannot open"));
}

fn fnv1a(data: &[u8]) -> String {
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

/// Every prefix of a baseline and a progressive JPEG and single overwritten bytes: where Pillow
/// refuses the data we refuse it (truncation named as Pillow names it), where it decodes we give
/// the same pixels; never a panic.
#[test]
fn damaged_jpegs_are_refused_or_decoded_as_pillow_does() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/preprocess");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("jpeg_damaged.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let same_kernels = nfnet_runtime::jpeg::SIMD && cfg!(target_arch = "x86_64");
    for c in cases.as_array().unwrap() {
        let src = std::fs::read(dir.join(c["source"].as_str().unwrap())).unwrap();
        let at = c["at"].as_u64().unwrap() as usize;
        let data = match c["damage"].as_str().unwrap() {
            "prefix" => src[..at].to_vec(),
            _ => {
                let mut d = src.clone();
                d[at] = c["value"].as_u64().unwrap() as u8;
                d
            }
        };
        let got = decode_rgb(&data);
        if !same_kernels && got.is_ok() && c["pixels"].is_string() {
            // Out-of-range coefficients of damaged data round differently in the portable C
            // kernels and in each architecture's SIMD ones; the fixture is Pillow's on x86-64.
            continue;
        }
        let what = format!("{} {} {}", c["source"], c["damage"], at);
        match (&got, c["pixels"].as_str(), c["error"].as_str()) {
            (Ok(img), Some(want), _) if fnv1a(&img.data) != want => {
                failures.push(format!("{what}: other pixels than Pillow's"))
            }
            (Ok(_), None, Some(e)) => failures.push(format!("{what}: decoded, Pillow refuses it ({e})")),
            (Err(e), Some(_), _) => failures.push(format!("{what}: refused ({e}), Pillow decodes it")),
            (Err(e), None, Some(pe))
                if pe.contains("image file is truncated") && !e.contains("image file is truncated") =>
            {
                failures.push(format!("{what}: refused as `{e}`, Pillow says truncated"))
            }
            _ => {}
        }
    }
    if !same_kernels {
        println!("pixels of damaged JPEGs not compared: Pillow's are from x86-64 SIMD kernels, these are not");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.as_array().unwrap().len(),
        failures.join("\n")
    );
}

/// A PNG that declares 100000 x 100000 pixels (a decompression bomb) and holds almost nothing.
fn bomb_png() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}
