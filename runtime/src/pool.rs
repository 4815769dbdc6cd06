//! A persistent thread pool that runs one data-parallel job at a time, without allocating.
//!
//! `run(n, f)` calls `f(i)` for every `i < n`, splitting `0..n` into one contiguous range per
//! thread (the caller's thread takes the first); each thread runs its range from the front,
//! and a thread that runs out takes items from the back of another's range, so a core slowed
//! down by other work on a shared machine does not hold the whole job up. Which thread runs
//! an item never changes what it computes: kernels write disjoint outputs per item, so
//! results are bit-identical for any thread count and any stealing. A panic inside `f` is
//! caught on the worker, the job still completes, and `run` re-raises it on the caller; the
//! pool stays usable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

/// A borrowed job, valid only while `run` waits for it.
#[derive(Clone, Copy)]
struct JobRef {
    f: *const Job,
}

// SAFETY: the pointee is `Sync`, and `run` does not return (nor unwind) before every worker
// has finished with the pointer, so sending it to the workers is sound.
unsafe impl Send for JobRef {}

struct State {
    job: Option<JobRef>,
    generation: u64,
    pending: usize,
    panicked: bool,
    shutdown: bool,
    /// Workers asleep on `start`, and whether `run` sleeps on `done`: a notify costs a
    /// system call even when nobody waits, so it is skipped then (a model runs hundreds of
    /// jobs per inference, their threads spinning between them).
    sleepers: usize,
    caller_waits: bool,
}

/// The items a thread has left, `lo..hi`, packed as `lo << 32 | hi` (one cache line each).
#[repr(align(64))]
struct Range(AtomicU64);

impl Range {
    /// Takes the first item (the owner) or the last (a thief).
    fn take(&self, front: bool) -> Option<usize> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (lo, hi) = (cur >> 32, cur & 0xffff_ffff);
            if lo >= hi {
                return None;
            }
            let (next, item) = if front { ((lo + 1) << 32 | hi, lo) } else { (lo << 32 | (hi - 1), hi - 1) };
            match self.0.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(item as usize),
                Err(now) => cur = now,
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    ranges: Vec<Range>,
    start: Condvar,
    done: Condvar,
    /// Mirrors of `generation` and `pending` that threads spin on briefly before sleeping:
    /// a model runs hundreds of short jobs per inference, and waking a sleeping thread
    /// costs tens of microseconds each time.
    generation: AtomicU64,
    pending: AtomicUsize,
}

/// How long a thread spins for the next job or for the workers to finish before sleeping.
const SPIN: Duration = Duration::from_micros(200);

fn spin_until(cond: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > SPIN {
            return false;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
    true
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a poisoned lock holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Thread `t`'s part of a job: its own range front to back, then the backs of the others'.
    fn work(&self, t: usize, f: &(dyn Fn(usize) + Sync)) {
        while let Some(i) = self.ranges[t].take(true) {
            f(i);
        }
        let k = self.ranges.len();
        for u in (1..k).map(|d| (t + d) % k) {
            while let Some(i) = self.ranges[u].take(false) {
                f(i);
            }
        }
    }
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

fn range(n: usize, threads: usize, t: usize) -> std::ops::Range<usize> {
    (n * t / threads)..(n * (t + 1) / threads)
}

impl Pool {
    /// A pool of `threads` threads in all (the caller's counts as one; 0 means 1).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                job: None,
                generation: 0,
                pending: 0,
                panicked: false,
                shutdown: false,
                sleepers: 0,
                caller_waits: false,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            ranges: (0..threads).map(|_| Range(AtomicU64::new(0))).collect(),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for t in 1..threads {
            let shared = Arc::clone(&shared);
            let handle =
                std::thread::Builder::new().name(format!("nfnet-worker-{t}")).spawn(move || worker(&shared, t))?;
            workers.push(handle);
        }
        Ok(Pool { shared, workers })
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i < n` across the pool and returns when all are done.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let threads = self.threads();
        if threads == 1 || n <= 1 {
            (0..n).for_each(f);
            return;
        }
        // SAFETY (lifetime erasure): the job is cleared and every worker has finished with it
        // before this function returns or unwinds (the guard below waits in its drop).
        let f_static: *const Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        assert!(n < 1 << 32, "{n} items in one job");
        for (t, r) in self.shared.ranges.iter().enumerate() {
            let range = range(n, threads, t);
            r.0.store((range.start as u64) << 32 | range.end as u64, Ordering::Release);
        }
        let sleepers = {
            let mut s = self.shared.lock();
            s.job = Some(JobRef { f: f_static });
            s.generation = s.generation.wrapping_add(1);
            s.pending = threads - 1;
            s.panicked = false;
            self.shared.pending.store(threads - 1, Ordering::Release);
            self.shared.generation.store(s.generation, Ordering::Release);
            s.sleepers
        };
        if sleepers > 0 {
            self.shared.start.notify_all();
        }
        struct Wait<'a>(&'a Shared);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                spin_until(|| self.0.pending.load(Ordering::Acquire) == 0);
                let mut s = self.0.lock();
                while s.pending > 0 {
                    s.caller_waits = true;
                    s = self.0.done.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.caller_waits = false;
                s.job = None;
            }
        }
        let wait = Wait(&self.shared);
        self.shared.work(0, f);
        drop(wait);
        if self.shared.lock().panicked {
            panic!("a worker thread panicked while running an nfnet kernel");
        }
    }
}

fn worker(shared: &Shared, t: usize) {
    let mut seen = 0u64;
    loop {
        spin_until(|| shared.generation.load(Ordering::Acquire) != seen);
        let job = {
            let mut s = shared.lock();
            while !s.shutdown && (s.job.is_none() || s.generation == seen) {
                s.sleepers += 1;
                s = shared.start.wait(s).unwrap_or_else(|p| p.into_inner());
                s.sleepers -= 1;
            }
            if s.shutdown {
                return;
            }
            seen = s.generation;
            s.job.expect("checked above")
        };
        // SAFETY: `run` keeps the job alive until `pending` reaches zero (see JobRef).
        let f = unsafe { &*job.f };
        let ok = catch_unwind(AssertUnwindSafe(|| shared.work(t, f))).is_ok();
        let mut s = shared.lock();
        s.panicked |= !ok;
        s.pending -= 1;
        shared.pending.store(s.pending, Ordering::Release);
        if s.pending == 0 && s.caller_waits {
            shared.done.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.generation.fetch_add(1, Ordering::Release);
        self.shared.start.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_item_runs_once_for_any_thread_count() {
        for threads in [1, 2, 3, 7] {
            let pool = Pool::new(threads).unwrap();
            for n in [0, 1, 2, 5, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{threads} threads, {n} items");
            }
        }
    }

    #[test]
    fn a_slow_thread_has_its_items_taken_by_the_others() {
        let pool = Pool::new(2).unwrap();
        let caller = std::thread::current().id();
        let ran_on: Vec<Mutex<Option<std::thread::ThreadId>>> = (0..10).map(|_| Mutex::new(None)).collect();
        let done = AtomicUsize::new(0);
        pool.run(10, &|i| {
            *ran_on[i].lock().unwrap() = Some(std::thread::current().id());
            if i == 0 {
                // The caller's first item stalls until every other item is done, which only
                // the worker can do (its own range 5..10, then the caller's 1..5 from the back).
                let start = Instant::now();
                while done.load(Ordering::Acquire) < 9 && start.elapsed() < Duration::from_secs(20) {
                    std::thread::yield_now();
                }
            } else {
                done.fetch_add(1, Ordering::Release);
            }
        });
        assert_eq!(done.load(Ordering::Acquire), 9);
        let on = |i: usize| ran_on[i].lock().unwrap().expect("ran");
        assert_eq!(on(0), caller);
        assert!((1..10).all(|i| on(i) != caller), "the worker took the stalled thread's items");
    }

    #[test]
    fn sleeping_threads_are_woken_for_the_next_job_and_wake_the_caller() {
        // Past the spin the workers sleep between jobs, and the caller sleeps while a worker
        // finishes a long item: the notifications skipped when nobody sleeps must reach them.
        let pool = Pool::new(3).unwrap();
        let caller = std::thread::current().id();
        for round in 0..6 {
            std::thread::sleep(SPIN * 5);
            let sum = AtomicUsize::new(0);
            let slept = std::sync::atomic::AtomicBool::new(round % 2 == 0);
            pool.run(9, &|i| {
                // On odd rounds the first item a worker runs outlasts the caller's spin.
                if std::thread::current().id() != caller && !slept.swap(true, Ordering::Relaxed) {
                    std::thread::sleep(SPIN * 5);
                }
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 36, "round {round}");
        }
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let pool = Pool::new(3).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(30, &|i| assert!(i != 25, "boom"))));
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        pool.run(30, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 435);
    }
}
