//! Inference allocates nothing: a counting global allocator sees zero allocations during
//! `infer` after the first call, with one thread and with a pool, all outputs requested.

#[macro_use]
mod common;

use nfnet_model as l2;
use nfnet_test_models::{tiny, tiny_bf16, wide_bf16};
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
        let mut o = all_outputs!($m);
        let mut counts = Vec::new();
        for _ in 0..3 {
            let out = borrow_outputs!($m, &mut o);
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
        let bf16_counts = allocations_per_inference!(tiny_bf16, threads);
        assert_eq!(&bf16_counts[1..], &[0, 0], "tiny bf16, {threads} threads: {bf16_counts:?}");
        let wide_counts = allocations_per_inference!(wide_bf16, threads);
        assert_eq!(&wide_counts[1..], &[0, 0], "wide bf16, {threads} threads: {wide_counts:?}");
        let l2_counts = allocations_per_inference!(l2, threads);
        assert_eq!(&l2_counts[1..], &[0, 0], "l2, {threads} threads: {l2_counts:?}");
    }
}
