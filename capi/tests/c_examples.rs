//! The C and C++ examples, built with the system's compilers against the static library and
//! run: they print what `nfnet classify` prints for the same images, and a bad image is named
//! on stderr while the others are still classified.

use nfnet::*;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library cargo built for this test run (beside the test executable), as
/// `cargo build -p nfnet-capi` puts it in target/<profile>/.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps.join("libnfnet.a"), deps.parent().unwrap().join("libnfnet.a")]
        .into_iter()
        .find(|p| p.exists())
        .expect("libnfnet.a is built with the test")
}

/// What `rustc --print native-static-libs` lists for this target.
const NATIVE_LIBS: [&str; 7] = ["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build(compiler: &str, std: &str, source: &str, out: &Path) {
    let status = Command::new(compiler)
        .args([std, "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("capi/include"))
        .arg(root().join(source))
        .arg(static_lib())
        .args(NATIVE_LIBS)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("{compiler}: {e}"));
    assert!(status.success(), "{compiler} {source} failed");
}

/// `nfnet classify`'s output for `images`, computed through the library.
fn expected(images: &[&str]) -> String {
    let (mut out, n, classes) = (String::new(), nfnet_image_len(), nfnet_num_classes());
    let mut ws = std::ptr::null_mut();
    // SAFETY: valid pointers and lengths throughout; one thread on the workspace.
    unsafe {
        assert_eq!(nfnet_workspace_new(1, &mut ws), NFNET_OK);
        for img in images {
            let mut input = vec![0.0f32; nfnet_input_len()];
            let c = CString::new(root().join(img).to_str().unwrap()).unwrap();
            if nfnet_preprocess_file(c.as_ptr(), input.as_mut_ptr(), n) != NFNET_OK {
                continue;
            }
            let mut logits = vec![0.0f32; nfnet_batch() * classes];
            assert_eq!(
                nfnet_infer(
                    ws,
                    input.as_ptr(),
                    input.len(),
                    logits.as_mut_ptr(),
                    logits.len(),
                    std::ptr::null_mut(),
                    0
                ),
                NFNET_OK
            );
            let top = nfnet_runtime::labels::top_k(&logits[..classes], 5.min(classes));
            out += &nfnet_runtime::labels::format_top(img, &top, classes);
        }
        nfnet_workspace_free(ws);
    }
    out
}

#[test]
fn c_and_cpp_examples_print_what_nfnet_classify_prints() {
    if nfnet_num_classes() == 0 {
        println!("skipped: the compiled model has no classifier");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (c, cpp) = (dir.path().join("classify"), dir.path().join("classify_cpp"));
    build("cc", "-std=c99", "examples/c/classify.c", &c);
    build("c++", "-std=c++17", "examples/cpp/classify.cpp", &cpp);
    let images =
        ["fixtures/preprocess/rgb_61x83.png", "fixtures/preprocess/missing.png", "fixtures/preprocess/gray_33x33.png"];
    let run = |exe: &Path, args: &[&str]| Command::new(exe).args(args).current_dir(root()).output().unwrap();

    let out = run(&c, &images);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing.png") && stderr.lines().count() == 1, "{stderr}");
    assert_eq!(stdout, expected(&images));

    let out = run(&cpp, &images[..1]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected(&images[..1]));
    let out = run(&cpp, &images[1..2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.png"));
}
