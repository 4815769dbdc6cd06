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

/// A zeroed arena of floats, the activations of one image. It starts on a 2 MiB boundary
/// (64 bytes when it is smaller than that): every buffer the memory plan places at a multiple
/// of 16 floats starts a cache line, so a vector or tile row of 64 bytes never straddles two
/// lines (an AMX tile row split over two lines loads at a third of the rate). On Linux the
/// kernel is asked to back it with transparent huge pages (before its first touch): the
/// kernels stride through activations a few KiB per pixel, touching many pages at once. Only
/// a hint; without it the arena is the same.
pub struct Arena {
    ptr: std::ptr::NonNull<f32>,
    layout: std::alloc::Layout,
}

// SAFETY: the arena owns its memory; shared access goes through raw pointers whose users
// prove disjointness (see SyncPtr).
unsafe impl Send for Arena {}
// SAFETY: as above; `&Arena` gives no access to the floats.
unsafe impl Sync for Arena {}

impl Arena {
    /// Bytes of a huge page, the alignment of an arena at least that large.
    const HUGE: usize = 2 << 20;

    /// `len` zeroed floats. Aborts (as `Vec` does) if the memory cannot be had.
    pub fn new(len: usize) -> Arena {
        let bytes = len.checked_mul(4).expect("an arena's size fits in usize").max(64);
        let align = if bytes >= Self::HUGE { Self::HUGE } else { 64 };
        let layout = std::alloc::Layout::from_size_align(bytes, align).expect("an arena's size fits in isize");
        // SAFETY: the layout's size is not zero.
        let raw = unsafe { std::alloc::alloc(layout) } as *mut f32;
        let Some(ptr) = std::ptr::NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        // The hint comes before the first touch (the zeroing below), which then takes huge
        // pages where the kernel has them.
        #[cfg(target_os = "linux")]
        {
            let start = raw as usize;
            let (lo, hi) = (start.next_multiple_of(Self::HUGE), (start + bytes) / Self::HUGE * Self::HUGE);
            if hi > lo {
                // SAFETY: madvise on whole pages inside our own allocation changes only how the
                // kernel backs them.
                unsafe {
                    libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
                }
            }
        }
        // SAFETY: `bytes` bytes from `raw` are ours.
        unsafe { std::ptr::write_bytes(raw as *mut u8, 0, bytes) };
        Arena { ptr, layout }
    }

    /// The first float; the arena's floats never move.
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr.as_ptr()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, self.layout) }
    }
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

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn arenas_start_cache_lines_and_large_ones_huge_pages() {
        for (len, align) in [
            (0, 64),
            (1, 64),
            (1000, 64),
            (Arena::HUGE / 4 - 1, 64),
            (Arena::HUGE / 4, Arena::HUGE),
            (3 << 20, Arena::HUGE),
        ] {
            let mut a = Arena::new(len);
            let p = a.as_mut_ptr();
            assert_eq!(p as usize % align, 0, "{len} floats");
            // SAFETY: the arena holds `len` floats.
            let floats = unsafe { std::slice::from_raw_parts_mut(p, len) };
            assert!(floats.iter().all(|&v| v == 0.0), "{len} floats zeroed");
            floats.fill(1.0);
        }
    }
}
