//! An [`Executor`] over the OpenMP runtime already loaded in the process (libgomp's
//! `GOMP_parallel`): under torch the engine's tasks run on torch's own intra-op threads, the
//! calling thread taking part, so nothing of ours spins against torch's threads or theirs against
//! ours.

use deform_conv::engine::{Executor, Task, MAX_THREADS};
use std::ffi::{c_int, c_uint, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// libgomp's `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
pub(crate) type GompParallel =
    unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
/// OpenMP's `int omp_get_thread_num(void)`.
pub(crate) type OmpThreadNum = unsafe extern "C" fn() -> c_int;

/// The host's OpenMP threads (libgomp), the calling thread taking part.
pub(crate) struct OpenMpExecutor {
    parallel: GompParallel,
    thread_num: OmpThreadNum,
    threads: usize,
}

impl OpenMpExecutor {
    /// An executor over the OpenMP runtime whose entry points are given, with `threads` workers.
    ///
    /// # Safety
    ///
    /// `parallel` must be libgomp's `GOMP_parallel` and `thread_num` the `omp_get_thread_num` of
    /// the same runtime, both loaded for as long as the executor is used.
    pub(crate) unsafe fn new(
        parallel: GompParallel,
        thread_num: OmpThreadNum,
        threads: usize,
    ) -> Self {
        OpenMpExecutor {
            parallel,
            thread_num,
            threads: threads.clamp(1, MAX_THREADS),
        }
    }
}

/// What every thread of one OpenMP team reads: the task counter and the body.
struct Team<'a> {
    n: usize,
    next: AtomicUsize,
    f: Task<'a>,
    thread_num: OmpThreadNum,
    threads: usize,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// The function every thread of the team runs: take tasks until none is left.
extern "C" fn team_member(data: *mut c_void) {
    // SAFETY: `data` is the `&Team` that `OpenMpExecutor::run` passed to GOMP_parallel; it lives
    // on that caller's stack until GOMP_parallel returns, which is after every member returned.
    let team = unsafe { &*(data as *const Team<'_>) };
    // SAFETY: `thread_num` is the runtime's omp_get_thread_num (OpenMpExecutor::new's contract).
    let w = (unsafe { (team.thread_num)() }).max(0) as usize;
    let w = w.min(team.threads - 1);
    // No unwinding across the C frames of the runtime: a panic is kept and re-raised by `run`.
    let r = catch_unwind(AssertUnwindSafe(|| loop {
        let i = team.next.fetch_add(1, Ordering::Relaxed);
        if i >= team.n {
            break;
        }
        (team.f)(i, w);
    }));
    if let Err(p) = r {
        team.next.store(team.n, Ordering::Relaxed);
        team.panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(p);
    }
}

impl Executor for OpenMpExecutor {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, n: usize, f: Task<'_>) {
        let team = Team {
            n,
            next: AtomicUsize::new(0),
            f,
            thread_num: self.thread_num,
            threads: self.threads,
            panic: Mutex::new(None),
        };
        let teams = self.threads.min(n) as c_uint;
        // SAFETY: `parallel` is GOMP_parallel (contract of `new`); `team` outlives the call, which
        // returns only when every member has returned; `team_member` never unwinds.
        unsafe {
            (self.parallel)(
                team_member,
                &team as *const Team<'_> as *mut c_void,
                teams,
                0,
            )
        };
        if let Some(p) = team.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            resume_unwind(p);
        }
    }
}
