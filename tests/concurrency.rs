//! Results do not depend on threads: any pool size gives bit-identical outputs (each output is
//! one fixed-order sum), and many threads inferring at once with their own workspaces get what
//! one thread gets.

use nfnet_model as l2;
use nfnet_test_models::{tiny, tiny_bf16, wide_bf16};

macro_rules! logits_with {
    ($m:ident, $ws:expr, $input:expr) => {{
        let model = $m::Model::new().unwrap();
        let mut logits = vec![0.0f32; $m::LOGITS_LEN];
        let mut pre = vec![0.0f32; $m::PRE_LOGITS_LEN];
        model.infer(
            $ws,
            $input,
            $m::Outputs {
                logits: logits.as_mut_slice().try_into().unwrap(),
                pre_logits: Some(pre.as_mut_slice().try_into().unwrap()),
                forward_features: None,
                features: None,
            },
        );
        logits.extend(pre);
        logits
    }};
}

fn input(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

#[test]
fn any_thread_count_gives_bit_identical_results() {
    let x = input(tiny::INPUT_LEN, 7);
    let x: &[f32; tiny::INPUT_LEN] = x.as_slice().try_into().unwrap();
    let one = logits_with!(tiny, &mut tiny::Workspace::new(1).unwrap(), x);
    for threads in [2, 3, 5, 8] {
        let many = logits_with!(tiny, &mut tiny::Workspace::new(threads).unwrap(), x);
        assert!(one.iter().zip(&many).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads differ");
    }
    // bf16 (AMX where granted): each item writes its own channels and band sums in order.
    let one = logits_with!(tiny_bf16, &mut tiny_bf16::Workspace::new(1).unwrap(), x);
    for threads in [2, 3, 5] {
        let many = logits_with!(tiny_bf16, &mut tiny_bf16::Workspace::new(threads).unwrap(), x);
        assert!(one.iter().zip(&many).all(|(a, b)| a.to_bits() == b.to_bits()), "bf16: {threads} threads differ");
    }
    let w = input(wide_bf16::INPUT_LEN, 2);
    let w: &[f32; wide_bf16::INPUT_LEN] = w.as_slice().try_into().unwrap();
    let one = logits_with!(wide_bf16, &mut wide_bf16::Workspace::new(1).unwrap(), w);
    for threads in [2, 3, 5] {
        let many = logits_with!(wide_bf16, &mut wide_bf16::Workspace::new(threads).unwrap(), w);
        assert!(one.iter().zip(&many).all(|(a, b)| a.to_bits() == b.to_bits()), "wide bf16: {threads} threads");
    }
    let y = input(l2::INPUT_LEN, 3);
    let y: &[f32; l2::INPUT_LEN] = y.as_slice().try_into().unwrap();
    let one = logits_with!(l2, &mut l2::Workspace::new(1).unwrap(), y);
    let three = logits_with!(l2, &mut l2::Workspace::new(3).unwrap(), y);
    assert!(one.iter().zip(&three).all(|(a, b)| a.to_bits() == b.to_bits()), "L2: 1 vs 3 threads differ");
}

#[test]
fn threads_inferring_at_once_get_what_one_thread_gets() {
    let inputs: Vec<Vec<f32>> = (0..6).map(|s| input(tiny::INPUT_LEN, s)).collect();
    let alone: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| logits_with!(tiny, &mut tiny::Workspace::new(1).unwrap(), x.as_slice().try_into().unwrap()))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| {
                s.spawn(move || {
                    let mut ws = tiny::Workspace::new(2).unwrap();
                    (0..5).map(|_| logits_with!(tiny, &mut ws, x.as_slice().try_into().unwrap())).collect::<Vec<_>>()
                })
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&alone) {
            for got in h.join().unwrap() {
                assert!(got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    });
}

#[test]
fn a_caller_that_panics_mid_job_leaves_the_pool_usable() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let pool = nfnet_runtime::Pool::new(3).unwrap();
    // Item 0 runs on the caller's thread: the panic unwinds from there after the workers end.
    let r = catch_unwind(AssertUnwindSafe(|| pool.run(9, &|i| assert!(i != 0, "caller-side panic"))));
    assert!(r.is_err());
    let x = input(tiny::INPUT_LEN, 1);
    let x: &[f32; tiny::INPUT_LEN] = x.as_slice().try_into().unwrap();
    let mut ws = tiny::Workspace::new(3).unwrap();
    let a = logits_with!(tiny, &mut ws, x);
    let b = logits_with!(tiny, &mut tiny::Workspace::new(1).unwrap(), x);
    assert_eq!(a, b);
    // A thread that panics while holding a workspace does not disturb the others.
    let h = std::thread::spawn(move || {
        let _ws = tiny::Workspace::new(2).unwrap();
        panic!("caller thread dies");
    });
    assert!(h.join().is_err());
    assert_eq!(logits_with!(tiny, &mut ws, x), b);
}
