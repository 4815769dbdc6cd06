//! Runtime support shared by the nfnet compiler, the generated model crate and the `nfnet` app:
//! instruction-set selection, the thread pool, the NEON emulation the emitted NEON kernels are
//! tested against on x86, and `.npy` tensor files.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bf16;
pub mod isa;
#[cfg(feature = "images")]
pub mod jpeg;
pub mod kernels;
pub mod labels;
pub mod neon_emu;
pub mod npy;
pub mod peak;
pub mod pool;
#[cfg(feature = "images")]
pub mod preprocess;

pub use isa::{Isa, IsaError};
pub use pool::Pool;

/// A raw pointer that may cross threads: the generated kernels hand disjoint parts of one
/// arena to the pool's threads. Whoever dereferences it proves disjointness (memory plan).
#[derive(Clone, Copy, Debug)]
pub struct SyncPtr<T>(pub *mut T);

// SAFETY: SyncPtr is only a carrier; every dereference is an unsafe operation whose caller
// proves that concurrent accesses through copies of it touch disjoint memory.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

/// A zeroed arena of `len` floats. On Linux the kernel is asked to back it with transparent
/// huge pages (before its first touch): the kernels stride through activations a few KiB per
/// pixel, touching many pages at once. Only a hint; without it the arena is the same.
pub fn arena(len: usize) -> Box<[f32]> {
    let arena = vec![0.0f32; len].into_boxed_slice();
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = arena.as_ptr() as usize;
        let (lo, hi) = (start.next_multiple_of(HUGE), (start + 4 * len) / HUGE * HUGE);
        if hi > lo {
            // SAFETY: madvise on whole pages inside our own allocation changes only how the
            // kernel backs them; the contents (zero) are unchanged.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
            }
        }
    }
    arena
}

/// The number of threads to use: `NFNET_THREADS` if set, else the available cores.
pub fn threads_from_env() -> Result<usize, String> {
    match std::env::var("NFNET_THREADS") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!("NFNET_THREADS='{v}' is not a thread count from 1 to 1024")),
        },
        _ => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Makes a command-line tool end quietly when its output pipe closes (`nfnet ... | head`), as
/// Unix tools do, instead of failing on the next print.
pub fn quiet_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at program start, before any
    // thread exists, has no other effect on Rust's runtime.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
