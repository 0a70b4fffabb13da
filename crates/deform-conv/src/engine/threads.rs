//! Where the engine's parallel loops run: one small executor interface.
//!
//! Every parallel loop of the engine is "run tasks `0..n`, each independent, and return when all
//! are done" ([`run`]). Which threads run them is the [`Executor`]'s business:
//!
//! * [`RayonExecutor`] (the default for Rust, the CLI and the numpy API): a rayon pool of its own,
//!   sized by [`set_num_threads`] or `DEFORM_CONV_NUM_THREADS`.
//! * [`SerialExecutor`]: the calling thread alone.
//! * Any other: a host implements [`Executor`] and runs a call under [`with_executor`] (the
//!   Python binding does so over torch's OpenMP threads).
//!
//! **Same bits on every executor.** The engine splits work into tasks whose number and contents
//! depend only on the problem, never on the thread count; every result element is written by one
//! task, and every reduction adds fixed partial sums in a fixed order. Tasks are handed out
//! dynamically; the `worker` index a task receives selects only scratch memory.
//!
//! A loop inside a task runs serially on that task's thread (no nested parallel regions).

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, RwLock};

/// A task body: `f(task, worker)`, with `task < n` and `worker < threads()`.
pub type Task<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// Runs independent tasks on some threads.
pub trait Executor: Send + Sync {
    /// How many workers [`Executor::run`] may use (the bound on the `worker` index).
    fn threads(&self) -> usize;
    /// Runs `f(i, worker)` for every `i < n`, each exactly once, and returns when all are done.
    /// A panic in a task is propagated to the caller after every task has stopped.
    fn run(&self, n: usize, f: Task<'_>);
}

thread_local! {
    /// True on a thread that is running a task: loops inside it run serially.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// The executor chosen for calls made on this thread ([`with_executor`]).
    static CURRENT: RefCell<Option<Arc<dyn Executor>>> = const { RefCell::new(None) };
}

/// Marks the current thread as inside a task for the duration of `f`.
fn as_task<R>(f: impl FnOnce() -> R) -> R {
    let prev = IN_TASK.replace(true);
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_TASK.set(prev);
    r.unwrap_or_else(|p| resume_unwind(p))
}

/// Runs `f(i, worker)` for `i < n` on the current executor (serially inside a task).
pub(crate) fn run(n: usize, f: impl Fn(usize, usize) + Sync) {
    if n == 0 {
        return;
    }
    let ex = current();
    if n == 1 || IN_TASK.get() || ex.threads() <= 1 {
        as_task(|| (0..n).for_each(|i| f(i, 0)));
        return;
    }
    // Every task is marked as one, whichever executor runs it (a host's own too), so loops
    // inside it stay on its thread.
    ex.run(n, &|i, w| as_task(|| f(i, w)));
}

/// Runs `f` on the calling thread alone (every loop inside it serial) when `work` is below
/// [`super::blocking::SERIAL_WORK`]; the split of work is the same either way, so are the bits.
pub(crate) fn serial_if_small<R>(work: f64, f: impl FnOnce() -> R) -> R {
    if work < super::blocking::SERIAL_WORK {
        as_task(f)
    } else {
        f()
    }
}

/// The number of workers of the current executor: the bound on a task's `worker` index.
pub(crate) fn workers() -> usize {
    if IN_TASK.get() {
        1
    } else {
        current().threads().max(1)
    }
}

/// Runs `f(item, worker)` once for each item, in parallel; items are moved into their task.
pub(crate) fn for_each_item<T: Send>(items: Vec<T>, f: impl Fn(T, usize) + Sync) {
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|x| Mutex::new(Some(x))).collect();
    run(slots.len(), |i, w| {
        let item = slots[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each task takes its own item once");
        f(item, w)
    });
}

/// Runs `f(index, chunk, worker)` on each `chunk`-sized piece of `data`, in parallel.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T], usize) + Sync,
) {
    for_each_item(
        data.chunks_mut(chunk.max(1)).enumerate().collect(),
        |(i, c), w| f(i, c, w),
    );
}

/// Per-worker scratch for one parallel loop, made on first use by each worker.
pub(crate) struct PerWorker<S> {
    slots: Vec<Mutex<Option<S>>>,
}

impl<S> PerWorker<S> {
    /// One slot per worker of the current executor.
    pub(crate) fn new() -> Self {
        PerWorker {
            slots: (0..workers()).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Runs `f` with worker `w`'s scratch, made by `init` the first time.
    pub(crate) fn with<R>(
        &self,
        w: usize,
        init: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> R {
        let mut slot = self.slots[w.min(self.slots.len() - 1)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(slot.get_or_insert_with(init))
    }
}

// ------------------------------------------------------------------------------------ rayon

/// The default executor: a rayon pool of its own.
pub struct RayonExecutor {
    pool: rayon::ThreadPool,
    /// The pool's threads and the caller.
    workers: usize,
}

/// The most threads an executor may be asked for: far beyond any core count, small enough that
/// asking never exhausts the machine's thread or memory limits by itself.
pub const MAX_THREADS: usize = 1024;

impl RayonExecutor {
    /// A pool of `n` threads (0 = one per core); an error naming `threads` when `n` is above
    /// [`MAX_THREADS`] or the system cannot start the threads.
    pub fn new(n: usize) -> crate::Result<Self> {
        let n = if n == 0 { cores() } else { n };
        if n > MAX_THREADS {
            return Err(crate::DeformError::parameter(
                "threads",
                format!("a thread count of at most {MAX_THREADS} (0 = one per core)"),
                n,
            ));
        }
        // The caller is one of the `n` workers ([`Executor::run`]): `n - 1` pool threads, so no
        // idle one spins for work beside them on the cores.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads((n - 1).max(1))
            .thread_name(|i| format!("deform-conv-{}", i + 1))
            .build()
            .map_err(|e| {
                crate::DeformError::parameter(
                    "threads",
                    format!("a thread count this system can start ({e})"),
                    n,
                )
            })?;
        Ok(RayonExecutor { pool, workers: n })
    }
}

impl Executor for RayonExecutor {
    fn threads(&self) -> usize {
        self.workers
    }

    /// The calling thread takes tasks too, from the first moment: a pool thread asleep since
    /// another op's work starts late (0.1-1 ms after another op's 256 MB of writes on a 2-core
    /// VM, `examples/profile_dcnv3`), and a caller that only waited for it lost that time.
    /// Worker `w` (the caller is 0) takes the tasks of its own contiguous block in order, as a
    /// split range would give it (neighbouring tasks share input rows), then what is left of
    /// the others' blocks.
    fn run(&self, n: usize, f: Task<'_>) {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let parts = self.threads().clamp(1, n);
        let end = |b: usize| (b + 1) * n / parts;
        let next: Vec<AtomicUsize> = (0..parts)
            .map(|b| AtomicUsize::new(b * n / parts))
            .collect();
        let stop = AtomicBool::new(false);
        let take = |w: usize| {
            for b in (w..parts).chain(0..w) {
                while !stop.load(Ordering::Relaxed) {
                    let i = next[b].fetch_add(1, Ordering::Relaxed);
                    if i >= end(b) {
                        break;
                    }
                    // A panic ends the hand-out; the scope re-raises it once every task stopped.
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i, w))) {
                        stop.store(true, Ordering::Relaxed);
                        resume_unwind(p);
                    }
                }
            }
        };
        self.pool.in_place_scope(|s| {
            for w in 1..parts {
                let take = &take;
                s.spawn(move |_| take(w));
            }
            take(0);
        });
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn default_threads() -> usize {
    std::env::var("DEFORM_CONV_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(cores)
        .min(MAX_THREADS)
}

static DEFAULT: RwLock<Option<Arc<dyn Executor>>> = RwLock::new(None);

fn default_executor() -> Arc<dyn Executor> {
    if let Some(e) = DEFAULT.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return e.clone();
    }
    DEFAULT
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(|| match RayonExecutor::new(default_threads()) {
            Ok(pool) => Arc::new(pool),
            // No threads to be had: the calls still run, on the calling thread.
            Err(_) => Arc::new(SerialExecutor),
        })
        .clone()
}

fn current() -> Arc<dyn Executor> {
    CURRENT
        .with(|c| c.borrow().clone())
        .unwrap_or_else(default_executor)
}

/// Sets the number of threads of the default (rayon) executor (0 = one per core). Results do not
/// depend on it. An error (and the executor unchanged) when the threads cannot be had.
pub fn set_num_threads(n: usize) -> crate::Result<()> {
    let pool = Arc::new(RayonExecutor::new(n)?);
    *DEFAULT.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

/// The number of threads the engine uses for calls made on this thread.
pub fn num_threads() -> usize {
    current().threads()
}

/// Runs `f` with the engine's work on `executor` (for calls made on this thread, inside `f`).
pub fn with_executor<R>(executor: Arc<dyn Executor>, f: impl FnOnce() -> R) -> R {
    let prev = CURRENT.with(|c| c.replace(Some(executor)));
    let r = catch_unwind(AssertUnwindSafe(f));
    CURRENT.with(|c| *c.borrow_mut() = prev);
    r.unwrap_or_else(|p| resume_unwind(p))
}

/// Runs every task on the calling thread, in order: for hosts whose own threads are busy while
/// they call us (a framework's runtime that keeps spinning during a custom op).
pub struct SerialExecutor;

impl Executor for SerialExecutor {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, n: usize, f: Task<'_>) {
        (0..n).for_each(|i| f(i, 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_rayon_executor_runs_every_task_once_on_a_worker_below_its_count() {
        for (threads, n) in [(1, 5), (2, 1), (2, 9), (3, 2), (4, 4), (5, 101)] {
            let ex = RayonExecutor::new(threads).unwrap();
            assert_eq!(ex.threads(), threads);
            let runs: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let worst = AtomicUsize::new(0);
            ex.run(n, &|i, w| {
                runs[i].fetch_add(1, Ordering::Relaxed);
                worst.fetch_max(w, Ordering::Relaxed);
            });
            assert!(
                runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                "{threads} threads, {n} tasks: each task once"
            );
            assert!(worst.load(Ordering::Relaxed) < threads);
        }
    }

    #[test]
    fn a_task_panic_reaches_the_caller_and_the_pool_still_works() {
        let ex = RayonExecutor::new(3).unwrap();
        let hit = catch_unwind(AssertUnwindSafe(|| {
            ex.run(40, &|i, _| assert!(i != 17, "task 17 fails"));
        }));
        assert!(hit.is_err(), "the panic of task 17 propagates");
        let done = AtomicUsize::new(0);
        ex.run(40, &|_, _| {
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(done.load(Ordering::Relaxed), 40);
    }
}
