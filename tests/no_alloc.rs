//! Inference allocates nothing: a counting global allocator sees zero allocations during
//! `infer` after the first call, with one thread and with a pool, all outputs requested.

use nfnet_model as l2;
use nfnet_test_models::tiny;
use std::alloc::{GlobalAlloc, Layout, System};
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

macro_rules! allocations_per_inference {
    ($m:ident, $threads:expr) => {{
        let model = $m::Model::new().unwrap();
        let mut ws = $m::Workspace::new($threads).unwrap();
        let input = vec![0.5f32; $m::INPUT_LEN];
        let input: &[f32; $m::INPUT_LEN] = input.as_slice().try_into().unwrap();
        let mut logits = vec![0.0f32; $m::LOGITS_LEN];
        let mut pre = vec![0.0f32; $m::PRE_LOGITS_LEN];
        let mut ff = vec![0.0f32; $m::FORWARD_FEATURES_LEN];
        let mut f: Vec<Vec<f32>> =
            [$m::FEATURE0_LEN, $m::FEATURE1_LEN, $m::FEATURE2_LEN, $m::FEATURE3_LEN, $m::FEATURE4_LEN]
                .iter()
                .map(|&n| vec![0.0f32; n])
                .collect();
        let mut counts = Vec::new();
        for _ in 0..3 {
            let [f0, f1, f2, f3, f4] = &mut f[..] else { unreachable!() };
            let out = $m::Outputs {
                logits: logits.as_mut_slice().try_into().unwrap(),
                pre_logits: Some(pre.as_mut_slice().try_into().unwrap()),
                forward_features: Some(ff.as_mut_slice().try_into().unwrap()),
                features: Some($m::Features {
                    f0: f0.as_mut_slice().try_into().unwrap(),
                    f1: f1.as_mut_slice().try_into().unwrap(),
                    f2: f2.as_mut_slice().try_into().unwrap(),
                    f3: f3.as_mut_slice().try_into().unwrap(),
                    f4: f4.as_mut_slice().try_into().unwrap(),
                }),
            };
            let before = ALLOCS.load(Ordering::SeqCst);
            model.infer(&mut ws, input, out);
            counts.push(ALLOCS.load(Ordering::SeqCst) - before);
        }
        counts
    }};
}

#[test]
fn inference_allocates_nothing() {
    for threads in [1, 2] {
        let tiny_counts = allocations_per_inference!(tiny, threads);
        assert_eq!(&tiny_counts[1..], &[0, 0], "tiny, {threads} threads: {tiny_counts:?}");
        let l2_counts = allocations_per_inference!(l2, threads);
        assert_eq!(&l2_counts[1..], &[0, 0], "l2, {threads} threads: {l2_counts:?}");
    }
}
