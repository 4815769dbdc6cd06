//! A persistent thread pool that runs one data-parallel job at a time, without allocating.
//!
//! `run(n, f)` calls `f(i)` for every `i < n`, splitting `0..n` into one contiguous range per
//! thread (the caller's thread takes the first); each thread runs its range from the front,
//! and a thread that runs out takes items from the back of another's range, so a core slowed
//! down by other work on a shared machine does not hold the whole job up. `run` returns when
//! every item is done, not when every thread has checked in: a worker that a busy machine
//! keeps off its core for a while (its range taken over by the others) does not stall each
//! job in turn, it just finds nothing left to do when it comes back. Which thread runs an item
//! never changes what it computes: kernels write disjoint outputs per item, so results are
//! bit-identical for any thread count and any stealing. A panic inside `f` is caught, the job
//! still completes, and `run` re-raises it on the caller; the pool stays usable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

/// A borrowed job with its generation. The pointer is valid only while `run` waits for its
/// items; a thread calls it only for an item it took from a range tagged with the same
/// generation, which `run` cannot have returned from yet.
#[derive(Clone, Copy)]
struct JobRef {
    f: *const Job,
    generation: u64,
}

// SAFETY: the pointee is `Sync`, and it is only called for an item of its own job, whose `run`
// does not return (nor unwind) before that item is done (see JobRef).
unsafe impl Send for JobRef {}

struct State {
    job: Option<JobRef>,
    shutdown: bool,
    /// Workers asleep on `start`, and whether `run` sleeps on `done`: a notify costs a
    /// system call even when nobody waits, so it is skipped then (a model runs hundreds of
    /// jobs per inference, their threads spinning between them).
    sleepers: usize,
    caller_waits: bool,
}

/// Bits of an item index in a range (jobs have fewer items).
const ITEM_BITS: u32 = 20;
const ITEM_MASK: u64 = (1 << ITEM_BITS) - 1;

/// Jobs between two uses of one range tag.
const TAG_PERIOD: u64 = 1 << 24;

/// The items a thread has left, `lo..hi`, tagged with the job's generation modulo
/// [`TAG_PERIOD`] (`tag << 40 | lo << 20 | hi`, one cache line each): a thread still in an
/// older job can take nothing from a newer one. Before a tag comes round again, `run` waits
/// until no worker is still inside a job (see [`Active`]).
#[repr(align(64))]
struct Range(AtomicU64);

/// Whether a worker holds a job (from reading it to leaving its items), one cache line each.
#[repr(align(64))]
struct Active(AtomicBool);

impl Range {
    fn pack(generation: u64, r: std::ops::Range<usize>) -> u64 {
        (generation % TAG_PERIOD) << (2 * ITEM_BITS) | (r.start as u64) << ITEM_BITS | r.end as u64
    }

    /// Takes the first item (the owner) or the last (a thief) of job `generation`.
    fn take(&self, generation: u64, front: bool) -> Option<usize> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (tag, lo, hi) = (cur >> (2 * ITEM_BITS), cur >> ITEM_BITS & ITEM_MASK, cur & ITEM_MASK);
            if tag != generation % TAG_PERIOD || lo >= hi {
                return None;
            }
            let (next, item) = if front { (cur + (1 << ITEM_BITS), lo) } else { (cur - 1, hi - 1) };
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
    active: Vec<Active>,
    start: Condvar,
    done: Condvar,
    /// The current job's generation, which threads spin on briefly before sleeping: waking
    /// a sleeping thread costs tens of microseconds.
    generation: AtomicU64,
    /// Items of the current job not yet done, and whether one of them panicked.
    remaining: AtomicUsize,
    panicked: AtomicBool,
    /// A job is running: a `run` meanwhile (from another thread, or from inside an item)
    /// runs its items on its own thread instead.
    busy: AtomicBool,
}

/// How long a thread spins for the next job or for the items to finish before sleeping.
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

    /// Thread `t`'s part of job `job`: its own range front to back, then the backs of the
    /// others'. When none is left it counts its items off `remaining` at once: one shared
    /// write per thread and job instead of one per item, whose cache line crossed cores each
    /// time (`benches/pool.rs`, 64 items of 5 us: 6 us of overhead per job before, 2 after).
    /// The thread that brings it to zero wakes the caller if it sleeps.
    fn work(&self, t: usize, job: JobRef) {
        let k = self.ranges.len();
        let mut done = 0;
        for u in (0..k).map(|d| (t + d) % k) {
            while let Some(i) = self.ranges[u].take(job.generation, u == t) {
                // SAFETY: item i belongs to this job (its range carries the job's tag), so
                // `run` is still waiting for it and the job is alive.
                let f = unsafe { &*job.f };
                if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
                done += 1;
            }
        }
        if done > 0 && self.remaining.fetch_sub(done, Ordering::AcqRel) == done && t != 0 && self.lock().caller_waits {
            self.done.notify_all();
        }
    }
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Thread `t`'s range of `n` items: contiguous, in thread order.
pub(crate) fn range(n: usize, threads: usize, t: usize) -> std::ops::Range<usize> {
    (n * t / threads)..(n * (t + 1) / threads)
}

impl Pool {
    /// A pool of `threads` threads in all (the caller's counts as one; 0 means 1).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { job: None, shutdown: false, sleepers: 0, caller_waits: false }),
            start: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            ranges: (0..threads).map(|_| Range(AtomicU64::new(0))).collect(),
            active: (0..threads).map(|_| Active(AtomicBool::new(false))).collect(),
        });
        // Every worker has finished its thread start-up (which allocates) before `new`
        // returns, so none of it can land inside a later job.
        let started = Arc::new((Mutex::new(0usize), Condvar::new()));
        let mut workers = Vec::with_capacity(threads - 1);
        for t in 1..threads {
            let mine = Arc::clone(&shared);
            let started = Arc::clone(&started);
            let spawned = std::thread::Builder::new().name(format!("nfnet-worker-{t}")).spawn(move || {
                *started.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                started.1.notify_one();
                drop(started);
                worker(&mine, t)
            });
            match spawned {
                Ok(handle) => workers.push(handle),
                // Dropping the pool shuts down and joins the workers already spawned.
                Err(e) => {
                    drop(Pool { shared, workers });
                    return Err(e);
                }
            }
        }
        let mut count = started.0.lock().unwrap_or_else(|p| p.into_inner());
        while *count < threads - 1 {
            count = started.1.wait(count).unwrap_or_else(|p| p.into_inner());
        }
        drop(count);
        Ok(Pool { shared, workers })
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i < n` across the pool and returns when all are done.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let threads = self.threads();
        let sh = &*self.shared;
        let limit = ITEM_MASK as usize;
        if n > limit {
            // More items than a range holds: as several jobs, in order.
            for base in (0..n).step_by(limit) {
                self.run((n - base).min(limit), &|i| f(base + i));
            }
            return;
        }
        if threads == 1 || n <= 1 || sh.busy.swap(true, Ordering::Acquire) {
            (0..n).for_each(f);
            return;
        }
        struct Idle<'a>(&'a AtomicBool);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _idle = Idle(&sh.busy);
        // SAFETY (lifetime erasure): `f` is called only for items of this job, and this
        // function returns only once every one of them is done (see JobRef).
        let f_static: *const Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        let generation = sh.generation.load(Ordering::Relaxed) + 1;
        if generation.is_multiple_of(TAG_PERIOD) {
            // The tags come round: a worker still inside a job that old must leave it first.
            while sh.active.iter().any(|a| a.0.load(Ordering::Acquire)) {
                std::thread::yield_now();
            }
        }
        let job = JobRef { f: f_static, generation };
        sh.remaining.store(n, Ordering::Relaxed);
        sh.panicked.store(false, Ordering::Relaxed);
        for (t, r) in sh.ranges.iter().enumerate() {
            r.0.store(Range::pack(generation, range(n, threads, t)), Ordering::Release);
        }
        let sleepers = {
            let mut s = sh.lock();
            s.job = Some(job);
            sh.generation.store(generation, Ordering::Release);
            s.sleepers
        };
        if sleepers > 0 {
            sh.start.notify_all();
        }
        sh.work(0, job);
        if !spin_until(|| sh.remaining.load(Ordering::Acquire) == 0) {
            let mut s = sh.lock();
            while sh.remaining.load(Ordering::Acquire) > 0 {
                s.caller_waits = true;
                s = sh.done.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.caller_waits = false;
        }
        if sh.panicked.load(Ordering::Relaxed) {
            panic!("an nfnet kernel panicked on the thread pool");
        }
    }
}

fn worker(shared: &Shared, t: usize) {
    let mut seen = 0u64;
    loop {
        spin_until(|| shared.generation.load(Ordering::Acquire) != seen);
        let job = {
            let mut s = shared.lock();
            while !s.shutdown && s.job.is_none_or(|j| j.generation == seen) {
                s.sleepers += 1;
                s = shared.start.wait(s).unwrap_or_else(|p| p.into_inner());
                s.sleepers -= 1;
            }
            if s.shutdown {
                return;
            }
            shared.active[t].0.store(true, Ordering::Release);
            s.job.expect("checked above")
        };
        seen = job.generation;
        shared.work(t, job);
        shared.active[t].0.store(false, Ordering::Release);
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
        let (done, stalled) = (AtomicUsize::new(0), AtomicBool::new(false));
        pool.run(10, &|i| {
            *ran_on[i].lock().unwrap() = Some(std::thread::current().id());
            if std::thread::current().id() == caller && !stalled.swap(true, Ordering::AcqRel) {
                // The caller's first item stalls until every other item is done, which only
                // the worker can do (its own range, then the caller's from the back). (Where
                // the worker is through all ten before the caller starts, as on a slow
                // emulator, the caller runs nothing.)
                let start = Instant::now();
                while done.load(Ordering::Acquire) < 9 && start.elapsed() < Duration::from_secs(20) {
                    std::thread::yield_now();
                }
            } else {
                done.fetch_add(1, Ordering::Release);
            }
        });
        let on = |i: usize| ran_on[i].lock().unwrap().expect("ran");
        let by_caller = (0..10).filter(|&i| on(i) == caller).count();
        assert!(by_caller <= 1, "the worker took the stalled thread's items ({by_caller} ran on the caller)");
        assert_eq!(done.load(Ordering::Acquire), 10 - by_caller);
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
    fn many_short_jobs_run_each_item_once() {
        // Threads catch jobs at different points (spinning, waking, or still in the last
        // one): a thread behind must never take an item of a newer job.
        let pool = Pool::new(4).unwrap();
        let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        for job in 0..20_000 {
            let n = 2 + job % 7;
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(h.swap(0, Ordering::Relaxed), usize::from(i < n), "job {job}, item {i}");
            }
        }
    }

    #[test]
    fn a_job_larger_than_a_range_runs_every_item_once() {
        let pool = Pool::new(2).unwrap();
        let n = ITEM_MASK as usize * 2 + 3;
        let hits: Vec<std::sync::atomic::AtomicU8> = (0..n).map(|_| std::sync::atomic::AtomicU8::new(0)).collect();
        pool.run(n, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_thread_behind_takes_nothing_from_a_newer_job() {
        let r = Range(AtomicU64::new(Range::pack(7, 0..3)));
        assert_eq!(r.take(6, true), None);
        assert_eq!(r.take(7 + TAG_PERIOD, false), Some(2), "tags are the generation modulo TAG_PERIOD");
        assert_eq!((r.take(7, true), r.take(7, true), r.take(7, false)), (Some(0), Some(1), None));
    }

    #[test]
    fn jobs_run_right_across_the_tags_coming_round() {
        let pool = Pool::new(3).unwrap();
        pool.shared.generation.store(TAG_PERIOD - 5, Ordering::Relaxed);
        let hits: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
        for job in 0..10 {
            pool.run(9, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.swap(0, Ordering::Relaxed) == 1), "job {job}");
        }
        assert!(pool.shared.generation.load(Ordering::Relaxed) > TAG_PERIOD);
    }

    #[test]
    fn a_run_inside_a_run_or_beside_it_runs_on_its_own_thread() {
        let pool = Pool::new(2).unwrap();
        let sum = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(5, &|j| {
                sum.fetch_add(j, Ordering::Relaxed);
            });
        });
        assert_eq!(sum.load(Ordering::Relaxed), 40);
        let pool = Arc::new(pool);
        let total = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        pool.run(6, &|i| {
                            total.fetch_add(i, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 3 * 500 * 15);
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
