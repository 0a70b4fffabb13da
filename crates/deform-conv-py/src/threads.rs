//! Threads and instruction sets of the engine, and the torch calling mode.
//!
//! Under `deform_conv.torch` every call runs in *torch mode* ([`torch_call`]): the engine's work
//! goes to the OpenMP runtime torch loaded (registered once by [`use_openmp`]), on torch's
//! intra-op threads with the calling thread taking part. The mode says where work runs, never
//! what an array means. The numpy API keeps the engine's own rayon pool.

use crate::openmp::{GompParallel, OmpThreadNum, OpenMpExecutor};
use deform_conv::engine::{self, Executor, Isa};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

thread_local! {
    static TORCH_MODE: Cell<bool> = const { Cell::new(false) };
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// The host's OpenMP entry points and the executor over them at the current thread count.
struct Host {
    parallel: GompParallel,
    thread_num: OmpThreadNum,
    executor: Arc<OpenMpExecutor>,
}

static HOST: RwLock<Option<Host>> = RwLock::new(None);

/// Whether torch calls use the registered host runtime (true) or the engine's own pool.
static HOST_ENABLED: AtomicBool = AtomicBool::new(true);

/// True inside a torch call on this thread.
fn torch_mode() -> bool {
    TORCH_MODE.get()
}

/// The executor of a call made now on this thread: serial when asked ([`serial_call`]), the
/// host's in torch mode, if registered.
pub(crate) fn call_executor() -> Option<Arc<dyn Executor>> {
    if SERIAL.get() {
        return Some(Arc::new(engine::SerialExecutor));
    }
    if !torch_mode() || !HOST_ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let host = HOST.read().unwrap_or_else(|e| e.into_inner());
    host.as_ref()
        .map(|h| h.executor.clone() as Arc<dyn Executor>)
}

/// Runs the calls made on this thread on this thread alone (`true`), or on the engine's threads;
/// returns the previous state. MindSpore's custom ops use it: its runtime threads spin while a
/// Python custom op runs, and ours would only fight them (measured: docs/optimisation-history.md).
#[pyfunction]
pub(crate) fn serial_call(on: bool) -> bool {
    SERIAL.replace(on)
}

/// Enters (`true`) or leaves torch mode on this thread; returns the previous state.
#[pyfunction]
pub(crate) fn torch_call(on: bool) -> bool {
    TORCH_MODE.replace(on)
}

/// Registers the OpenMP runtime this process already loaded (torch's libgomp or libiomp) for
/// torch calls, with `threads` workers (torch.get_num_threads()); false when none is loaded.
///
/// The runtime is found here, never from addresses a caller passes: the libraries mapped into
/// the process (`/proc/self/maps`) whose name starts with `libgomp` or `libiomp`, opened with
/// `RTLD_NOLOAD` (only an already-loaded library, never a new one) and asked for
/// `GOMP_parallel` and `omp_get_thread_num` by name.
#[pyfunction]
pub(crate) fn use_openmp(threads: usize) -> bool {
    let Some((parallel, thread_num)) = loaded_openmp() else {
        return false;
    };
    // SAFETY: the two entry points of one loaded OpenMP runtime (`loaded_openmp`).
    let executor = Arc::new(unsafe { OpenMpExecutor::new(parallel, thread_num, threads) });
    *HOST.write().unwrap_or_else(|e| e.into_inner()) = Some(Host {
        parallel,
        thread_num,
        executor,
    });
    true
}

/// `GOMP_parallel` and `omp_get_thread_num` of an OpenMP runtime already loaded in this process.
#[cfg(target_os = "linux")]
fn loaded_openmp() -> Option<(GompParallel, OmpThreadNum)> {
    use std::ffi::CString;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut paths: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            let base = p.rsplit('/').next().unwrap_or("");
            base.starts_with("libgomp") || base.starts_with("libiomp")
        })
        .collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        let Ok(c_path) = CString::new(path) else {
            continue;
        };
        // SAFETY: `c_path` is a NUL-terminated string; RTLD_NOLOAD returns a handle only for a
        // library already loaded (no initialiser runs), or null.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            continue;
        }
        // SAFETY: a valid handle and NUL-terminated names; null when a symbol is missing.
        let (p, t) = unsafe {
            (
                libc::dlsym(handle, c"GOMP_parallel".as_ptr()),
                libc::dlsym(handle, c"omp_get_thread_num".as_ptr()),
            )
        };
        // The library stays loaded while torch is (the handle's reference is kept on purpose).
        if p.is_null() || t.is_null() {
            continue;
        }
        // SAFETY: non-null addresses of the functions of those names in an OpenMP runtime,
        // whose C signatures are the two function pointer types.
        return Some(unsafe {
            (
                std::mem::transmute::<*mut libc::c_void, GompParallel>(p),
                std::mem::transmute::<*mut libc::c_void, OmpThreadNum>(t),
            )
        });
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn loaded_openmp() -> Option<(GompParallel, OmpThreadNum)> {
    None
}

/// Follows the host's thread count (torch.get_num_threads()); a no-op when unchanged.
#[pyfunction]
pub(crate) fn set_host_threads(threads: usize) {
    let mut host = HOST.write().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = host.as_mut() {
        if h.executor.threads() != threads.max(1) {
            // SAFETY: the same entry points `use_openmp` registered.
            h.executor =
                Arc::new(unsafe { OpenMpExecutor::new(h.parallel, h.thread_num, threads) });
        }
    }
}

/// Which executor torch calls use: "openmp" or "rayon".
#[pyfunction]
pub(crate) fn host_executor() -> &'static str {
    if HOST_ENABLED.load(Ordering::Relaxed)
        && HOST.read().unwrap_or_else(|e| e.into_inner()).is_some()
    {
        "openmp"
    } else {
        "rayon"
    }
}

/// Chooses the executor of torch calls: "openmp" (the registered host runtime) or "rayon".
#[pyfunction]
pub(crate) fn set_host_executor(name: &str) -> PyResult<()> {
    match name {
        "openmp" if HOST.read().unwrap_or_else(|e| e.into_inner()).is_none() => {
            Err(PyValueError::new_err(
                "executor: 'openmp' needs torch's OpenMP runtime, which was not found",
            ))
        }
        "openmp" | "rayon" => {
            HOST_ENABLED.store(name == "openmp", Ordering::Relaxed);
            Ok(())
        }
        other => Err(PyValueError::new_err(format!(
            "executor: expected 'openmp' or 'rayon', got {other:?}"
        ))),
    }
}

/// Sets the engine's thread count (0 = one per core).
#[pyfunction]
pub(crate) fn set_num_threads(n: usize) -> PyResult<()> {
    engine::set_num_threads(n).map_err(crate::common::err)
}

/// The engine's thread count.
#[pyfunction]
pub(crate) fn num_threads() -> usize {
    engine::num_threads()
}

/// The instruction set the engine runs (scalar, avx2, avx512).
#[pyfunction]
pub(crate) fn active_isa() -> &'static str {
    engine::active_isa().name()
}

/// Instruction sets this CPU supports.
#[pyfunction]
pub(crate) fn supported_isas() -> Vec<&'static str> {
    Isa::ALL
        .into_iter()
        .filter(|i| i.supported())
        .map(|i| i.name())
        .collect()
}
