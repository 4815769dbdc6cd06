//! The compiled model behind a C ABI (`include/nfnet.h` is its contract): one static library,
//! one header, no runtime to initialize.
//!
//! Every entry point returns `NFNET_OK` (0) or a negative code and leaves a one-line message
//! for `nfnet_last_error`; none panics across the boundary, exits or prints. Lengths are
//! counted in floats and checked against the compiled shapes; pointers are checked for NULL,
//! alignment and overlap before any is turned into a slice.

#![deny(unsafe_op_in_unsafe_fn)]

use nfnet_model as m;
use nfnet_runtime::preprocess::{self, EvalConfig, Rgb};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

pub const NFNET_OK: c_int = 0;
/// A required pointer is NULL, misaligned or overlaps another, or an index is out of range.
pub const NFNET_ERR_ARGUMENT: c_int = -1;
/// A buffer's length is not the compiled shape's.
pub const NFNET_ERR_LENGTH: c_int = -2;
/// An image cannot be read or decoded, or its preprocessing is not supported.
pub const NFNET_ERR_IMAGE: c_int = -3;
/// The CPU lacks the instructions of every compiled backend, or `NFNET_ISA` names one it lacks.
pub const NFNET_ERR_CPU: c_int = -4;
/// Threads or memory for a workspace cannot be had, or `NFNET_THREADS` is not a thread count.
pub const NFNET_ERR_RESOURCE: c_int = -5;
/// A bug inside the library (a caught panic); the workspace it happened in must be freed.
pub const NFNET_ERR_INTERNAL: c_int = -6;

/// An arena, a thread pool and the model's ISA: one per calling thread.
pub struct NfnetWorkspace {
    model: m::Model,
    ws: m::Workspace,
    /// Logits when the caller asks for none (the model always writes them).
    logits: Box<[f32; m::LOGITS_LEN]>,
    /// Set when a panic interrupted an inference: the arena's state is unknown.
    poisoned: bool,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

struct Failure(c_int, String);

type Outcome = Result<(), Failure>;

fn fail(code: c_int, msg: impl Into<String>) -> Outcome {
    Err(Failure(code, msg.into()))
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning its failure or panic into a code and this thread's last error.
fn guard(f: impl FnOnce() -> Outcome) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NFNET_OK,
        Ok(Err(Failure(code, msg))) => {
            set_error(&msg);
            code
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(&format!("internal error: {what}"));
            NFNET_ERR_INTERNAL
        }
    }
}

/// The byte range of `len` floats at `p`.
fn span(p: *const f32, len: usize) -> (usize, usize) {
    (p as usize, p as usize + len * 4)
}

/// Checks a caller buffer of `len` floats where `want` are required: not NULL, aligned, the
/// right length.
fn check_buf(name: &str, p: *const f32, len: usize, want: usize) -> Outcome {
    if p.is_null() {
        return fail(NFNET_ERR_ARGUMENT, format!("{name} is NULL"));
    }
    if !(p as usize).is_multiple_of(align_of::<f32>()) {
        return fail(NFNET_ERR_ARGUMENT, format!("{name} is not aligned to 4 bytes"));
    }
    if len != want {
        return fail(NFNET_ERR_LENGTH, format!("{name}_len is {len}, the compiled model needs {want} floats"));
    }
    Ok(())
}

/// The named buffers (`None`: not given) must not overlap: the input is read while outputs
/// are written.
fn check_disjoint(bufs: &[(&str, Option<(usize, usize)>)]) -> Outcome {
    for (i, (a, ra)) in bufs.iter().enumerate() {
        for (b, rb) in &bufs[i + 1..] {
            if let (Some(ra), Some(rb)) = (ra, rb)
                && ra.0 < rb.1
                && rb.0 < ra.1
            {
                return fail(NFNET_ERR_ARGUMENT, format!("{a} and {b} overlap"));
            }
        }
    }
    Ok(())
}

fn workspace<'a>(ws: *mut NfnetWorkspace) -> Result<&'a mut NfnetWorkspace, Failure> {
    if ws.is_null() {
        return Err(Failure(NFNET_ERR_ARGUMENT, "workspace is NULL".into()));
    }
    // SAFETY: a non-NULL workspace pointer comes from nfnet_workspace_new and is used by one
    // thread at a time (the header's contract).
    let ws = unsafe { &mut *ws };
    if ws.poisoned {
        return Err(Failure(NFNET_ERR_INTERNAL, "workspace was interrupted by an internal error; free it".into()));
    }
    Ok(ws)
}

fn threads(requested: c_uint) -> Result<usize, Failure> {
    match requested {
        0 => nfnet_runtime::threads_from_env().map_err(|e| Failure(NFNET_ERR_RESOURCE, e)),
        n if n as usize <= 1024 => Ok(n as usize),
        n => Err(Failure(NFNET_ERR_ARGUMENT, format!("threads is {n}, above 1024"))),
    }
}

/// Creates a workspace running on `threads` threads (0: `NFNET_THREADS` if set, else every
/// available core) and stores it in `*out`.
///
/// # Safety
/// `out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_workspace_new(threads_: c_uint, out: *mut *mut NfnetWorkspace) -> c_int {
    guard(|| {
        if out.is_null() {
            return fail(NFNET_ERR_ARGUMENT, "out is NULL");
        }
        let model = m::Model::new().map_err(|e| Failure(NFNET_ERR_CPU, e.to_string()))?;
        let n = threads(threads_)?;
        let ws = m::Workspace::new(n).map_err(|e| Failure(NFNET_ERR_RESOURCE, format!("cannot start threads: {e}")))?;
        let boxed = Box::new(NfnetWorkspace { model, ws, logits: Box::new([0.0; m::LOGITS_LEN]), poisoned: false });
        // SAFETY: `out` is not NULL and the caller made it valid for one pointer.
        unsafe { out.write(Box::into_raw(boxed)) };
        Ok(())
    })
}

/// Frees a workspace (NULL is fine) and joins its threads.
///
/// # Safety
/// `ws` is NULL or from `nfnet_workspace_new`, not freed before, and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_workspace_free(ws: *mut NfnetWorkspace) {
    if !ws.is_null() {
        // SAFETY: the caller passes a pointer from Box::into_raw, once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(ws) })));
    }
}

/// Threads the workspace runs on (0 for NULL).
///
/// # Safety
/// `ws` is NULL or a live workspace.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_workspace_threads(ws: *const NfnetWorkspace) -> usize {
    // SAFETY: the caller passes NULL or a live workspace.
    unsafe { ws.as_ref() }.map_or(0, |w| w.ws.threads())
}

#[unsafe(no_mangle)]
pub extern "C" fn nfnet_batch() -> usize {
    m::BATCH
}

#[unsafe(no_mangle)]
pub extern "C" fn nfnet_height() -> usize {
    m::INPUT_H
}

#[unsafe(no_mangle)]
pub extern "C" fn nfnet_width() -> usize {
    m::INPUT_W
}

/// Floats of one preprocessed image: 3 x height x width.
#[unsafe(no_mangle)]
pub extern "C" fn nfnet_image_len() -> usize {
    m::IMAGE_LEN
}

/// Floats of a whole input: batch x 3 x height x width.
#[unsafe(no_mangle)]
pub extern "C" fn nfnet_input_len() -> usize {
    m::INPUT_LEN
}

#[unsafe(no_mangle)]
pub extern "C" fn nfnet_num_classes() -> usize {
    m::CLASSES
}

#[unsafe(no_mangle)]
pub extern "C" fn nfnet_num_features() -> usize {
    m::NUM_FEATURES
}

/// Floats of forward_features for the whole batch: batch x num_features x h/32 x w/32.
#[unsafe(no_mangle)]
pub extern "C" fn nfnet_forward_features_len() -> usize {
    m::FORWARD_FEATURES_LEN
}

const FEATURE_LENS: [usize; 5] = [m::FEATURE0_LEN, m::FEATURE1_LEN, m::FEATURE2_LEN, m::FEATURE3_LEN, m::FEATURE4_LEN];

/// Floats of feature map `i` (0..5) for the whole batch; 0 when `i` is out of range.
#[unsafe(no_mangle)]
pub extern "C" fn nfnet_feature_len(i: usize) -> usize {
    FEATURE_LENS.get(i).copied().unwrap_or(0)
}

/// The NCHW shape of feature map `i` (batch, channels, height, width) into `dims`.
///
/// # Safety
/// `dims` is NULL or valid for writing 4 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_feature_shape(i: usize, dims: *mut usize) -> c_int {
    guard(|| {
        if dims.is_null() {
            return fail(NFNET_ERR_ARGUMENT, "dims is NULL");
        }
        let Some(s) = m::FEATURE_SHAPES.get(i) else {
            return fail(NFNET_ERR_ARGUMENT, format!("feature index {i} is not 0 to 4"));
        };
        // SAFETY: `dims` is not NULL and the caller made it valid for 4 values.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), dims, 4) };
        Ok(())
    })
}

/// As [`check_buf`] for an optional buffer: NULL passes.
fn check_opt(name: &str, p: *const f32, len: usize, want: usize) -> Outcome {
    if p.is_null() { Ok(()) } else { check_buf(name, p, len, want) }
}

/// `p` as the model's array of `N` floats.
///
/// # Safety
/// `p` passed [`check_buf`] for `N` floats and [`check_disjoint`] against every buffer it is
/// used with, and the caller keeps it valid and unmodified during the call.
unsafe fn array<'a, const N: usize>(p: *const f32) -> &'a [f32; N] {
    // SAFETY: the function's contract.
    unsafe { &*(p as *const [f32; N]) }
}

/// As [`array`], writable.
///
/// # Safety
/// As [`array`]; nothing else reads or writes it during the call.
unsafe fn array_mut<'a, const N: usize>(p: *mut f32) -> &'a mut [f32; N] {
    // SAFETY: the function's contract.
    unsafe { &mut *(p as *mut [f32; N]) }
}

/// Runs the batch `input` (normalized pixels, NCHW) and writes the logits
/// (batch x num_classes) and the pooled pre-logits (batch x num_features) where not NULL.
///
/// # Safety
/// Each pointer is NULL or valid for its stated length in floats; `ws` is used by this
/// thread only during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_infer(
    ws: *mut NfnetWorkspace,
    input: *const f32,
    input_len: usize,
    logits: *mut f32,
    logits_len: usize,
    pre_logits: *mut f32,
    pre_logits_len: usize,
) -> c_int {
    guard(|| {
        let w = workspace(ws)?;
        check_buf("input", input, input_len, m::INPUT_LEN)?;
        check_opt("logits", logits, logits_len, m::LOGITS_LEN)?;
        check_opt("pre_logits", pre_logits, pre_logits_len, m::PRE_LOGITS_LEN)?;
        check_disjoint(&[
            ("input", Some(span(input, input_len))),
            ("logits", (!logits.is_null()).then(|| span(logits, logits_len))),
            ("pre_logits", (!pre_logits.is_null()).then(|| span(pre_logits, pre_logits_len))),
        ])?;
        // SAFETY: every buffer checked above (the NULL ones are not used).
        let (x, lg, pre) = unsafe {
            (
                array(input),
                (!logits.is_null()).then(|| array_mut(logits)),
                (!pre_logits.is_null()).then(|| array_mut(pre_logits)),
            )
        };
        run(w, x, |scratch| m::Outputs {
            logits: lg.unwrap_or(scratch),
            pre_logits: pre,
            forward_features: None,
            features: None,
        })
    })
}

/// Runs the batch `input` and writes forward_features (batch x num_features x h/32 x w/32,
/// after the final activation, before pooling).
///
/// # Safety
/// As `nfnet_infer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_forward_features(
    ws: *mut NfnetWorkspace,
    input: *const f32,
    input_len: usize,
    out: *mut f32,
    out_len: usize,
) -> c_int {
    guard(|| {
        let w = workspace(ws)?;
        check_buf("input", input, input_len, m::INPUT_LEN)?;
        check_buf("out", out, out_len, m::FORWARD_FEATURES_LEN)?;
        check_disjoint(&[("input", Some(span(input, input_len))), ("out", Some(span(out, out_len)))])?;
        // SAFETY: both buffers checked above.
        let (x, ff) = unsafe { (array(input), array_mut(out)) };
        run(w, x, |scratch| m::Outputs {
            logits: scratch,
            pre_logits: None,
            forward_features: Some(ff),
            features: None,
        })
    })
}

/// Runs the batch `input` and writes the five feature maps (timm's `features_only` taps):
/// `features[i]` holds `lens[i]` floats, which must be `nfnet_feature_len(i)`; none may be NULL.
///
/// # Safety
/// `features` and `lens` are valid for 5 entries each; each `features[i]` is valid for
/// `lens[i]` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_features(
    ws: *mut NfnetWorkspace,
    input: *const f32,
    input_len: usize,
    features: *const *mut f32,
    lens: *const usize,
) -> c_int {
    guard(|| {
        let w = workspace(ws)?;
        check_buf("input", input, input_len, m::INPUT_LEN)?;
        if features.is_null() || lens.is_null() {
            return fail(NFNET_ERR_ARGUMENT, if features.is_null() { "features is NULL" } else { "lens is NULL" });
        }
        // SAFETY: both arrays are not NULL and hold 5 entries (the caller's contract).
        let (ptrs, lens) = unsafe { (std::ptr::read(features as *const [*mut f32; 5]), *(lens as *const [usize; 5])) };
        const NAMES: [&str; 5] = ["features[0]", "features[1]", "features[2]", "features[3]", "features[4]"];
        for i in 0..5 {
            check_buf(NAMES[i], ptrs[i], lens[i], FEATURE_LENS[i])?;
        }
        let span_of = |i: usize| (NAMES[i], Some(span(ptrs[i], lens[i])));
        check_disjoint(&[
            ("input", Some(span(input, input_len))),
            span_of(0),
            span_of(1),
            span_of(2),
            span_of(3),
            span_of(4),
        ])?;
        // SAFETY: every buffer checked above.
        let (x, features) = unsafe {
            let [f0, f1, f2, f3, f4] = ptrs;
            let features = m::Features {
                f0: array_mut(f0),
                f1: array_mut(f1),
                f2: array_mut(f2),
                f3: array_mut(f3),
                f4: array_mut(f4),
            };
            (array(input), features)
        };
        run(w, x, |scratch| m::Outputs {
            logits: scratch,
            pre_logits: None,
            forward_features: None,
            features: Some(features),
        })
    })
}

/// One inference on `w`: `outputs` gets the workspace's logits scratch for callers that ask
/// for no logits. A panic inside leaves the workspace marked as interrupted.
fn run(
    w: &mut NfnetWorkspace,
    x: &[f32; m::INPUT_LEN],
    outputs: impl for<'s> FnOnce(&'s mut [f32; m::LOGITS_LEN]) -> m::Outputs<'s>,
) -> Outcome {
    let NfnetWorkspace { model, ws, logits, poisoned } = w;
    *poisoned = true;
    model.infer(ws, x, outputs(logits));
    *poisoned = false;
    Ok(())
}

fn eval_config() -> EvalConfig {
    EvalConfig {
        size: (m::INPUT_H, m::INPUT_W),
        crop_pct: m::CROP_PCT as f64,
        crop_mode: m::CROP_MODE.to_string(),
        interpolation: m::INTERPOLATION.to_string(),
        mean: m::MEAN,
        std: m::STD,
    }
}

fn preprocess_into(img: Result<Rgb, String>, what: &str, out: *mut f32, out_len: usize) -> Outcome {
    check_buf("out", out, out_len, m::IMAGE_LEN)?;
    let img = img.map_err(|e| Failure(NFNET_ERR_IMAGE, format!("{what}: {e}")))?;
    let t = eval_config().tensor(&img).map_err(|e| Failure(NFNET_ERR_IMAGE, format!("{what}: {e}")))?;
    // SAFETY: `out` is checked not NULL, aligned and of IMAGE_LEN floats (= t.len()).
    unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), out, t.len()) };
    Ok(())
}

/// timm's eval preprocessing of the image file `path` (UTF-8 or the platform's bytes) into
/// `out` (3 x height x width floats, CHW).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is valid for `out_len` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_preprocess_file(path: *const c_char, out: *mut f32, out_len: usize) -> c_int {
    guard(|| {
        if path.is_null() {
            return fail(NFNET_ERR_ARGUMENT, "path is NULL");
        }
        // SAFETY: not NULL, and NUL-terminated by the caller's contract.
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        #[cfg(unix)]
        let p = std::path::PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes));
        #[cfg(not(unix))]
        let p = std::path::PathBuf::from(String::from_utf8_lossy(bytes).into_owned());
        preprocess_into(preprocess::load_rgb(&p), &p.display().to_string(), out, out_len)
    })
}

/// As `nfnet_preprocess_file`, from `len` bytes of an encoded image in memory.
///
/// # Safety
/// `data` is valid for `len` bytes; `out` is valid for `out_len` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nfnet_preprocess_bytes(data: *const u8, len: usize, out: *mut f32, out_len: usize) -> c_int {
    guard(|| {
        if data.is_null() {
            return fail(NFNET_ERR_ARGUMENT, "data is NULL");
        }
        // SAFETY: not NULL and valid for `len` bytes by the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        preprocess_into(preprocess::decode_rgb(bytes), "image data", out, out_len)
    })
}

/// The label of class `i`: ImageNet-1k's description for a 1000-class model, else `class i`;
/// NULL beyond the classes. Static storage.
#[unsafe(no_mangle)]
pub extern "C" fn nfnet_label(i: usize) -> *const c_char {
    static LABELS: OnceLock<Vec<CString>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        (0..m::CLASSES)
            .map(|c| CString::new(nfnet_runtime::labels::label(c, m::CLASSES).replace('\0', " ")).unwrap_or_default())
            .collect()
    });
    labels.get(i).map_or(std::ptr::null(), |c| c.as_ptr())
}

/// This thread's last error message (UTF-8, empty when none); valid until this thread's next
/// call into the library.
#[unsafe(no_mangle)]
pub extern "C" fn nfnet_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The compiled model in one line: architecture, input, batch, classes, weight storage, the ISA
/// this CPU runs, weights hash.
#[unsafe(no_mangle)]
pub extern "C" fn nfnet_info() -> *const c_char {
    static INFO: OnceLock<CString> = OnceLock::new();
    INFO.get_or_init(|| {
        let isa = m::Model::new().map_or_else(|e| format!("none ({e})"), |model| model.isa().to_string());
        let s = format!(
            "{} {}x{} batch {} | {} classes | weights {} | isa {} | sha256 {}{}",
            m::ARCHITECTURE,
            m::INPUT_H,
            m::INPUT_W,
            m::BATCH,
            m::CLASSES,
            m::WEIGHT_DTYPE,
            isa,
            m::WEIGHTS_SHA256,
            m::SYNTHETIC.map_or(String::new(), |t| format!(" | synthetic {t}")),
        );
        CString::new(s.replace('\0', " ")).unwrap_or_default()
    })
    .as_ptr()
}
