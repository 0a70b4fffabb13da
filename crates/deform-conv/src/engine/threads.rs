//! The engine's thread pool: rayon, sized once (or by [`set_num_threads`]).

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, RwLock};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

fn build(n: usize) -> Arc<ThreadPool> {
    Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("deform-conv-{i}"))
            .build()
            .expect("rayon builds a thread pool"),
    )
}

fn default_threads() -> usize {
    std::env::var("DEFORM_CONV_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The pool the engine runs on.
pub(crate) fn pool() -> Arc<ThreadPool> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut guard = POOL.write().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(|| build(default_threads()))
        .clone()
}

/// Sets the number of engine threads (0 = one per core). Results do not depend on it.
pub fn set_num_threads(n: usize) {
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    };
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(build(n));
}

/// The number of engine threads.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}
