//! torchvision's `deform_conv2d` (and its backward) on numpy arrays.

use crate::common::*;
use deform_conv::conventions::torchvision;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// torchvision's tensors: `(input, offset, weight, bias, mask)`, bias and mask optional.
#[derive(FromPyObject)]
pub(crate) struct TvTensors<'py>(
    Obj<'py>,
    Obj<'py>,
    Obj<'py>,
    Option<Obj<'py>>,
    Option<Obj<'py>>,
);

/// The convolution's `(stride, padding, dilation)`, each an int or a pair.
#[derive(FromPyObject)]
pub(crate) struct Conv(Vec<i64>, Vec<i64>, Vec<i64>);

fn tv_forward<'py, T: PyElement>(
    py: Python<'py>,
    TvTensors(input, offset, weight, bias, mask): &TvTensors<'py>,
    p: &torchvision::Params,
) -> PyResult<Obj<'py>> {
    let (x, off, w) = (
        arr4::<T>("input", input)?,
        arr4::<T>("offset", offset)?,
        arr4::<T>("weight", weight)?,
    );
    let b = bias.as_ref().map(|b| arr1::<T>("bias", b)).transpose()?;
    let m = mask.as_ref().map(|m| arr4::<T>("mask", m)).transpose()?;
    let (xv, ov, wv, bv, mv) = (
        x.as_array(),
        off.as_array(),
        w.as_array(),
        b.as_ref().map(|b| b.as_array()),
        m.as_ref().map(|m| m.as_array()),
    );
    let y = compute(py, || torchvision::deform_conv2d(xv, ov, wv, bv, mv, p)).map_err(err)?;
    Ok(out4(py, y))
}

fn tv_backward<'py, T: PyElement>(
    py: Python<'py>,
    grad_output: &Obj<'py>,
    TvTensors(input, offset, weight, bias, mask): &TvTensors<'py>,
    p: &torchvision::Params,
) -> PyResult<Obj<'py>> {
    let gy = arr4::<T>("grad_output", grad_output)?;
    let (x, off, w) = (
        arr4::<T>("input", input)?,
        arr4::<T>("offset", offset)?,
        arr4::<T>("weight", weight)?,
    );
    let b = bias.as_ref().map(|b| arr1::<T>("bias", b)).transpose()?;
    let m = mask.as_ref().map(|m| arr4::<T>("mask", m)).transpose()?;
    let (gv, xv, ov, wv, bv, mv) = (
        gy.as_array(),
        x.as_array(),
        off.as_array(),
        w.as_array(),
        b.as_ref().map(|b| b.as_array()),
        m.as_ref().map(|m| m.as_array()),
    );
    let g = compute(py, || {
        torchvision::deform_conv2d_backward(gv, xv, ov, wv, bv, mv, p)
    })
    .map_err(err)?;
    let gb = g
        .bias
        .map_or_else(|| py.None().into_bound(py), |b| out1(py, b));
    Ok(PyTuple::new(
        py,
        [
            out4(py, g.input),
            out4(py, g.offset),
            opt_out4(py, g.mask),
            out4(py, g.weight),
            gb,
        ],
    )?
    .into_any())
}

fn tv_params(
    Conv(stride, padding, dilation): Conv,
    backend_name: &str,
    gate: &str,
) -> PyResult<torchvision::Params> {
    use deform_conv::conventions::int_or_pair;
    Ok(torchvision::Params {
        stride: int_or_pair("stride", &stride).map_err(err)?,
        padding: int_or_pair("padding", &padding).map_err(err)?,
        dilation: int_or_pair("dilation", &dilation).map_err(err)?,
        backend: backend(backend_name)?,
        gate: match gate {
            "per_tap" => deform_conv::GradGate::PerTap,
            "open" => deform_conv::GradGate::Open,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "gate: expected 'per_tap' (torchvision) or 'open' (mmcv), got {other:?}"
                )))
            }
        },
    })
}

/// torchvision's forward on `(input, offset, weight, bias, mask)`; returns the output array.
#[pyfunction]
#[pyo3(signature = (tensors, conv, backend="engine"))]
pub(crate) fn torchvision_forward<'py>(
    py: Python<'py>,
    tensors: TvTensors<'py>,
    conv: Conv,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = tv_params(conv, backend, "per_tap")?;
    by_dtype!(dtype_of("input", &tensors.0)?, tv_forward(py, &tensors, &p))
}

/// torchvision's backward; returns (grad_input, grad_offset, grad_mask|None, grad_weight, grad_bias|None).
#[pyfunction]
#[pyo3(signature = (grad_output, tensors, conv, backend="engine", gate="per_tap"))]
pub(crate) fn torchvision_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    tensors: TvTensors<'py>,
    conv: Conv,
    backend: &str,
    gate: &str,
) -> PyResult<Obj<'py>> {
    let p = tv_params(conv, backend, gate)?;
    by_dtype!(
        dtype_of("input", &tensors.0)?,
        tv_backward(py, &grad_output, &tensors, &p)
    )
}
