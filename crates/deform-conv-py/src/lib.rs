//! `deform_conv._core`: the thin PyO3 layer over the `deform-conv` crate.
//!
//! Arrays come in as numpy arrays of any strides (viewed, not copied), are checked for rank and a
//! common dtype (float16, float32, float64), and go to the crate's conventions with the GIL
//! released. Errors keep the crate's message: dtype problems raise `TypeError`, the rest
//! `ValueError`. Parameters stay as the Python caller wrote them; the crate validates them.
//!
//! One module per convention, mirroring the crate's `conventions/`: [`torchvision`], [`onnx`],
//! [`mindspore`], [`npu`]; [`layout`] for the converters, [`threads`] for the engine's settings,
//! [`common`] for what they share.

use pyo3::prelude::*;

/// Runs `$f::<T>(...)` for the dtype `$dt`.
macro_rules! by_dtype {
    ($dt:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dt {
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
        }
    };
}

mod common;
mod dcnv3;
mod layout;
mod mindspore;
mod msda;
mod npu;
mod onnx;
mod openmp;
mod threads;
mod torchvision;

/// The extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<common::Bf16>()?;
    m.add_function(wrap_pyfunction!(torchvision::torchvision_forward, m)?)?;
    m.add_function(wrap_pyfunction!(torchvision::torchvision_backward, m)?)?;
    m.add_function(wrap_pyfunction!(onnx::onnx_forward, m)?)?;
    m.add_function(wrap_pyfunction!(dcnv3::dcnv3_forward, m)?)?;
    m.add_function(wrap_pyfunction!(dcnv3::dcnv3_backward, m)?)?;
    m.add_function(wrap_pyfunction!(msda::msda_forward, m)?)?;
    m.add_function(wrap_pyfunction!(msda::msda_backward, m)?)?;
    m.add_function(wrap_pyfunction!(mindspore::mindspore_forward, m)?)?;
    m.add_function(wrap_pyfunction!(mindspore::mindspore_backward, m)?)?;
    m.add_function(wrap_pyfunction!(mindspore::mindspore_output_shape, m)?)?;
    m.add_function(wrap_pyfunction!(npu::npu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(npu::npu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(layout::interleaved_to_packed, m)?)?;
    m.add_function(wrap_pyfunction!(layout::packed_to_interleaved, m)?)?;
    m.add_function(wrap_pyfunction!(layout::convert_layout, m)?)?;
    m.add_function(wrap_pyfunction!(threads::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads::num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads::active_isa, m)?)?;
    m.add_function(wrap_pyfunction!(threads::supported_isas, m)?)?;
    m.add_function(wrap_pyfunction!(threads::torch_call, m)?)?;
    m.add_function(wrap_pyfunction!(threads::serial_call, m)?)?;
    m.add_function(wrap_pyfunction!(threads::use_openmp, m)?)?;
    m.add_function(wrap_pyfunction!(threads::set_host_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads::host_executor, m)?)?;
    m.add_function(wrap_pyfunction!(threads::set_host_executor, m)?)?;
    Ok(())
}
