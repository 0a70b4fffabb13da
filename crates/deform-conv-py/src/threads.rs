//! Threads and instruction sets of the engine.

use deform_conv::engine::{self, Isa};
use pyo3::prelude::*;

/// Sets the engine's thread count (0 = one per core).
#[pyfunction]
pub(crate) fn set_num_threads(n: usize) {
    engine::set_num_threads(n)
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
