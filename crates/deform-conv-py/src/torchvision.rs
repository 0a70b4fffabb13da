//! torchvision's `deform_conv2d` (and its backward) on numpy arrays.

use crate::common::*;
use deform_conv::conventions::torchvision;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

#[allow(clippy::too_many_arguments)]
fn tv_forward<'py, T: PyElement>(
    py: Python<'py>,
    input: &Obj<'py>,
    offset: &Obj<'py>,
    weight: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    mask: Option<&Obj<'py>>,
    p: &torchvision::Params,
) -> PyResult<Obj<'py>> {
    let (x, off, w) = (
        arr4::<T>("input", input)?,
        arr4::<T>("offset", offset)?,
        arr4::<T>("weight", weight)?,
    );
    let b = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let m = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
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

#[allow(clippy::too_many_arguments)]
fn tv_backward<'py, T: PyElement>(
    py: Python<'py>,
    grad_output: &Obj<'py>,
    input: &Obj<'py>,
    offset: &Obj<'py>,
    weight: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    mask: Option<&Obj<'py>>,
    p: &torchvision::Params,
) -> PyResult<Obj<'py>> {
    let gy = arr4::<T>("grad_output", grad_output)?;
    let (x, off, w) = (
        arr4::<T>("input", input)?,
        arr4::<T>("offset", offset)?,
        arr4::<T>("weight", weight)?,
    );
    let b = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let m = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
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
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
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

/// torchvision's forward; returns the output array.
#[pyfunction]
#[pyo3(signature = (input, offset, weight, bias, mask, stride, padding, dilation, backend="engine"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn torchvision_forward<'py>(
    py: Python<'py>,
    input: Obj<'py>,
    offset: Obj<'py>,
    weight: Obj<'py>,
    bias: Option<Obj<'py>>,
    mask: Option<Obj<'py>>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = tv_params(stride, padding, dilation, backend, "per_tap")?;
    by_dtype!(
        dtype_of("input", &input)?,
        tv_forward(
            py,
            &input,
            &offset,
            &weight,
            bias.as_ref(),
            mask.as_ref(),
            &p
        )
    )
}

/// torchvision's backward; returns (grad_input, grad_offset, grad_mask|None, grad_weight, grad_bias|None).
#[pyfunction]
#[pyo3(signature = (grad_output, input, offset, weight, bias, mask, stride, padding, dilation, backend="engine", gate="per_tap"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn torchvision_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    input: Obj<'py>,
    offset: Obj<'py>,
    weight: Obj<'py>,
    bias: Option<Obj<'py>>,
    mask: Option<Obj<'py>>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    backend: &str,
    gate: &str,
) -> PyResult<Obj<'py>> {
    let p = tv_params(stride, padding, dilation, backend, gate)?;
    by_dtype!(
        dtype_of("input", &input)?,
        tv_backward(
            py,
            &grad_output,
            &input,
            &offset,
            &weight,
            bias.as_ref(),
            mask.as_ref(),
            &p
        )
    )
}
