//! The C entry points as a C caller meets them: shapes, errors with a message and the process
//! going on, zero allocation per inference, and the built-in model's outputs against timm.

use nfnet::*;
use nfnet_model as m;
use nfnet_runtime::npy;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Serializes the tests of this binary: the allocation count is process-wide.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn last_error() -> String {
    // SAFETY: the library returns a NUL-terminated string valid until this thread's next call.
    unsafe { CStr::from_ptr(nfnet_last_error()) }.to_string_lossy().into_owned()
}

fn new_ws(threads: u32) -> *mut NfnetWorkspace {
    let mut ws = null_mut();
    // SAFETY: `ws` is a valid place for one pointer.
    let rc = unsafe { nfnet_workspace_new(threads, &mut ws) };
    assert_eq!(rc, NFNET_OK, "{}", last_error());
    ws
}

/// Asserts a failure with `code` and a one-line message containing `needle`.
fn assert_fails(rc: i32, code: i32, needle: &str) {
    let msg = last_error();
    assert_eq!(rc, code, "{msg}");
    assert!(msg.contains(needle) && !msg.contains('\n'), "message {msg:?} lacks {needle:?}");
}

#[test]
fn shapes_are_the_compiled_models() {
    assert_eq!(nfnet_input_len(), nfnet_batch() * 3 * nfnet_height() * nfnet_width());
    assert_eq!(nfnet_image_len(), m::IMAGE_LEN);
    assert_eq!(nfnet_num_classes(), m::CLASSES);
    let mut dims = [0usize; 4];
    for i in 0..5 {
        // SAFETY: dims holds 4 values.
        assert_eq!(unsafe { nfnet_feature_shape(i, dims.as_mut_ptr()) }, NFNET_OK);
        assert_eq!(dims.iter().product::<usize>(), nfnet_feature_len(i));
        assert_eq!(dims[0], nfnet_batch());
    }
    assert_eq!(nfnet_feature_len(5), 0);
    // SAFETY: as above.
    assert_fails(unsafe { nfnet_feature_shape(5, dims.as_mut_ptr()) }, NFNET_ERR_ARGUMENT, "feature index 5");
    // SAFETY: NULL is refused before use.
    assert_fails(unsafe { nfnet_feature_shape(0, null_mut()) }, NFNET_ERR_ARGUMENT, "dims is NULL");
    // SAFETY: static NUL-terminated strings.
    let info = unsafe { CStr::from_ptr(nfnet_info()) }.to_string_lossy().into_owned();
    assert!(info.starts_with(m::ARCHITECTURE) && info.contains(m::WEIGHTS_SHA256) && info.contains("isa "), "{info}");
    assert!(nfnet_label(nfnet_num_classes()).is_null());
    if nfnet_num_classes() > 0 {
        // SAFETY: as above.
        assert!(!unsafe { CStr::from_ptr(nfnet_label(0)) }.to_bytes().is_empty());
    }
}

#[test]
fn bad_arguments_fail_with_a_message_and_the_process_goes_on() {
    let _g = LOCK.lock().unwrap();
    let ws = new_ws(1);
    let input = vec![0.1f32; nfnet_input_len()];
    let mut logits = vec![0.0f32; m::LOGITS_LEN];
    let (n, l) = (input.len(), logits.len());
    // SAFETY (every call below): pointers are NULL or valid for the lengths passed, or the
    // library refuses them before use.
    unsafe {
        assert_fails(
            nfnet_infer(null_mut(), input.as_ptr(), n, logits.as_mut_ptr(), l, null_mut(), 0),
            NFNET_ERR_ARGUMENT,
            "workspace is NULL",
        );
        assert_fails(
            nfnet_infer(ws, null(), n, logits.as_mut_ptr(), l, null_mut(), 0),
            NFNET_ERR_ARGUMENT,
            "input is NULL",
        );
        assert_fails(
            nfnet_infer(ws, input.as_ptr(), n - 1, logits.as_mut_ptr(), l, null_mut(), 0),
            NFNET_ERR_LENGTH,
            "input_len",
        );
        assert_fails(
            nfnet_infer(ws, input.as_ptr(), n, logits.as_mut_ptr(), l + 1, null_mut(), 0),
            NFNET_ERR_LENGTH,
            "logits_len",
        );
        let mut pre = vec![0.0f32; m::PRE_LOGITS_LEN];
        assert_fails(
            nfnet_infer(ws, input.as_ptr(), n, null_mut(), 0, pre.as_mut_ptr(), 3),
            NFNET_ERR_LENGTH,
            "pre_logits_len",
        );
        let misaligned = (input.as_ptr() as *const u8).wrapping_add(1) as *const f32;
        assert_fails(
            nfnet_infer(ws, misaligned, n, logits.as_mut_ptr(), l, null_mut(), 0),
            NFNET_ERR_ARGUMENT,
            "aligned",
        );
        // Outputs over the input.
        let mut buf = vec![0.0f32; n + l];
        let p = buf.as_mut_ptr();
        assert_fails(nfnet_infer(ws, p, n, p.add(n - 1), l, null_mut(), 0), NFNET_ERR_ARGUMENT, "overlap");
        let mut ff = vec![0.0f32; m::FORWARD_FEATURES_LEN];
        assert_fails(
            nfnet_forward_features(ws, input.as_ptr(), n, ff.as_mut_ptr(), ff.len() - 1),
            NFNET_ERR_LENGTH,
            "out_len",
        );
        assert_fails(
            nfnet_forward_features(ws, input.as_ptr(), n, null_mut(), ff.len()),
            NFNET_ERR_ARGUMENT,
            "out is NULL",
        );
        let mut maps: Vec<Vec<f32>> = (0..5).map(|i| vec![0.0f32; nfnet_feature_len(i)]).collect();
        let mut ptrs: [*mut f32; 5] = std::array::from_fn(|i| maps[i].as_mut_ptr());
        let mut lens: [usize; 5] = std::array::from_fn(|i| nfnet_feature_len(i));
        lens[3] += 1;
        assert_fails(
            nfnet_features(ws, input.as_ptr(), n, ptrs.as_ptr(), lens.as_ptr()),
            NFNET_ERR_LENGTH,
            "features[3]_len",
        );
        lens[3] -= 1;
        ptrs[2] = null_mut();
        assert_fails(
            nfnet_features(ws, input.as_ptr(), n, ptrs.as_ptr(), lens.as_ptr()),
            NFNET_ERR_ARGUMENT,
            "features[2] is NULL",
        );
        assert_fails(
            nfnet_features(ws, input.as_ptr(), n, null(), lens.as_ptr()),
            NFNET_ERR_ARGUMENT,
            "features is NULL",
        );
        ptrs[2] = maps[2].as_mut_ptr();
        ptrs[4] = ptrs[3];
        lens[4] = lens[3].min(nfnet_feature_len(4));
        let rc = nfnet_features(ws, input.as_ptr(), n, ptrs.as_ptr(), lens.as_ptr());
        assert!(rc == NFNET_ERR_ARGUMENT || rc == NFNET_ERR_LENGTH, "{}", last_error());
        let mut out = vec![0.0f32; nfnet_image_len()];
        let missing = CString::new("/nonexistent/cat.jpg").unwrap();
        assert_fails(
            nfnet_preprocess_file(missing.as_ptr(), out.as_mut_ptr(), out.len()),
            NFNET_ERR_IMAGE,
            "/nonexistent/cat.jpg",
        );
        assert_fails(nfnet_preprocess_file(null(), out.as_mut_ptr(), out.len()), NFNET_ERR_ARGUMENT, "path is NULL");
        let junk = b"not an image at all";
        assert_fails(
            nfnet_preprocess_bytes(junk.as_ptr(), junk.len(), out.as_mut_ptr(), out.len()),
            NFNET_ERR_IMAGE,
            "image data",
        );
        let png =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/preprocess/rgb_61x83.png")).unwrap();
        assert_fails(
            nfnet_preprocess_bytes(png.as_ptr(), png.len(), out.as_mut_ptr(), out.len() + 1),
            NFNET_ERR_LENGTH,
            "out_len",
        );
        assert_fails(
            nfnet_preprocess_bytes(png.as_ptr(), png.len() / 2, out.as_mut_ptr(), out.len()),
            NFNET_ERR_IMAGE,
            "",
        );
        assert_eq!(nfnet_preprocess_bytes(png.as_ptr(), png.len(), out.as_mut_ptr(), out.len()), NFNET_OK);
        // After all that, the workspace still infers.
        assert_eq!(
            nfnet_infer(ws, input.as_ptr(), n, logits.as_mut_ptr(), l, null_mut(), 0),
            NFNET_OK,
            "{}",
            last_error()
        );
        assert!(logits.iter().all(|v| v.is_finite()));
        assert_fails(nfnet_workspace_new(1, null_mut()), NFNET_ERR_ARGUMENT, "out is NULL");
        assert_fails(nfnet_workspace_new(5000, &mut null_mut()), NFNET_ERR_ARGUMENT, "threads");
        nfnet_workspace_free(ws);
        nfnet_workspace_free(null_mut());
    }
}

#[test]
fn preprocessing_from_bytes_and_from_a_file_agree() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/preprocess/rgb_61x83.png");
    let bytes = std::fs::read(&path).unwrap();
    let c = CString::new(path.to_str().unwrap()).unwrap();
    let (mut a, mut b) = (vec![0.0f32; nfnet_image_len()], vec![1.0f32; nfnet_image_len()]);
    // SAFETY: valid buffers of the stated lengths.
    unsafe {
        assert_eq!(nfnet_preprocess_file(c.as_ptr(), a.as_mut_ptr(), a.len()), NFNET_OK);
        assert_eq!(nfnet_preprocess_bytes(bytes.as_ptr(), bytes.len(), b.as_mut_ptr(), b.len()), NFNET_OK);
    }
    assert_eq!(a, b);
}

/// Buffers for every output of the compiled model.
struct Outs {
    logits: Vec<f32>,
    pre: Vec<f32>,
    ff: Vec<f32>,
    maps: Vec<Vec<f32>>,
}

impl Outs {
    fn new() -> Outs {
        Outs {
            logits: vec![0.0; m::LOGITS_LEN],
            pre: vec![0.0; m::PRE_LOGITS_LEN],
            ff: vec![0.0; m::FORWARD_FEATURES_LEN],
            maps: (0..5).map(|i| vec![0.0; nfnet_feature_len(i)]).collect(),
        }
    }
}

/// `nfnet_features`' pointer and length arrays over `maps`.
fn feature_args(maps: &mut [Vec<f32>]) -> ([*mut f32; 5], [usize; 5]) {
    (std::array::from_fn(|i| maps[i].as_mut_ptr()), std::array::from_fn(|i| maps[i].len()))
}

#[test]
fn inference_through_the_c_entry_points_allocates_nothing() {
    let _g = LOCK.lock().unwrap();
    for threads in [1, 2] {
        let ws = new_ws(threads);
        let input = vec![0.5f32; nfnet_input_len()];
        let Outs { mut logits, mut pre, mut ff, mut maps } = Outs::new();
        let (ptrs, lens) = feature_args(&mut maps);
        let mut counts = vec![];
        for _ in 0..3 {
            let before = ALLOCS.load(Ordering::SeqCst);
            // SAFETY: valid buffers of the stated lengths, one thread on the workspace.
            unsafe {
                let (x, n) = (input.as_ptr(), input.len());
                assert_eq!(
                    nfnet_infer(ws, x, n, logits.as_mut_ptr(), logits.len(), pre.as_mut_ptr(), pre.len()),
                    NFNET_OK
                );
                assert_eq!(nfnet_infer(ws, x, n, null_mut(), 0, null_mut(), 0), NFNET_OK);
                assert_eq!(nfnet_forward_features(ws, x, n, ff.as_mut_ptr(), ff.len()), NFNET_OK);
                assert_eq!(nfnet_features(ws, x, n, ptrs.as_ptr(), lens.as_ptr()), NFNET_OK);
            }
            counts.push(ALLOCS.load(Ordering::SeqCst) - before);
        }
        assert_eq!(&counts[1..], &[0, 0], "{threads} threads: {counts:?}");
        // SAFETY: from nfnet_workspace_new, freed once.
        unsafe { nfnet_workspace_free(ws) };
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Channels 0, step, 2 step, ... of each image of an NCHW tensor.
fn every(data: &[f32], [b, c, h, w]: [usize; 4], step: usize) -> Vec<f32> {
    let plane = h * w;
    (0..b)
        .flat_map(|n| (0..c).step_by(step).flat_map(move |ch| data[(n * c + ch) * plane..][..plane].to_vec()))
        .collect()
}

#[test]
fn builtin_model_matches_timm_through_the_c_api() {
    if m::SYNTHETIC != Some("eca_nfnet_l2 seed 0") || (m::INPUT_H, m::INPUT_W, m::BATCH) != (320, 320, 1) {
        println!("skipped: nfnet-model was built from NFNET_MODEL, not the built-in model of fixtures/l2_320");
        return;
    }
    let _g = LOCK.lock().unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/l2_320");
    let load = |f: &str| npy::read(&fx.join(f)).unwrap().data;
    let input = load("input.npy");
    let ws = new_ws(2);
    let Outs { mut logits, mut pre, mut ff, mut maps } = Outs::new();
    let (ptrs, lens) = feature_args(&mut maps);
    // SAFETY: valid buffers of the stated lengths, one thread on the workspace.
    unsafe {
        let (x, n) = (input.as_ptr(), input.len());
        assert_eq!(nfnet_infer(ws, x, n, logits.as_mut_ptr(), logits.len(), pre.as_mut_ptr(), pre.len()), NFNET_OK);
        assert_eq!(nfnet_forward_features(ws, x, n, ff.as_mut_ptr(), ff.len()), NFNET_OK);
        assert_eq!(nfnet_features(ws, x, n, ptrs.as_ptr(), lens.as_ptr()), NFNET_OK);
        nfnet_workspace_free(ws);
    }
    let ffs = m::FORWARD_FEATURES_SHAPE;
    let mut checks = vec![
        ("logits", rel_l2(&logits, &load("logits.npy"))),
        ("pre_logits", rel_l2(&pre, &load("pre_logits.npy"))),
        ("forward_features", rel_l2(&every(&ff, [1, ffs[0], ffs[1], ffs[2]], 3), &load("forward_features.every3.npy"))),
    ];
    for (i, step) in [8, 16, 32, 48, 96].into_iter().enumerate() {
        let want = load(&format!("feature{i}.every{step}.npy"));
        checks.push((
            ["feature0", "feature1", "feature2", "feature3", "feature4"][i],
            rel_l2(&every(&maps[i], m::FEATURE_SHAPES[i], step), &want),
        ));
    }
    for (name, err) in checks {
        println!("{name}: relative L2 {err:.2e}");
        assert!(err < 1e-4, "{name}: {err:e}");
    }
}
