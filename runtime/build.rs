//! Tells the code whether libjpeg-turbo's SIMD kernels are built in: `mozjpeg-sys` assembles
//! them with nasm on x86 when nasm is installed (and always on aarch64), and else builds its
//! portable C. Both decode valid JPEGs to the same pixels; on damaged data only the SIMD build
//! matches Pillow's (which uses SIMD) pixel for pixel.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(nfnet_jpeg_simd)");
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("CARGO_FEATURE_IMAGES").is_none() {
        return;
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let simd = match arch.as_str() {
        "x86_64" | "x86" => std::process::Command::new("nasm")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("NASM version 0.")),
        "aarch64" | "arm" => true,
        _ => false,
    };
    if simd {
        println!("cargo:rustc-cfg=nfnet_jpeg_simd");
    }
}
