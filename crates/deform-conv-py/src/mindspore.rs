//! `mindspore.ops.deformable_conv2d` (and its backward) on numpy arrays.

use crate::common::*;
use deform_conv::conventions::mindspore;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

#[allow(clippy::too_many_arguments)]
pub(crate) fn packed_attrs(
    kernel_size: Vec<i64>,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    backend_name: &str,
) -> PyResult<mindspore::Attributes> {
    Ok(mindspore::Attributes {
        kernel_size,
        strides,
        padding,
        dilations,
        groups,
        deformable_groups,
        modulated,
        backend: backend(backend_name)?,
    })
}

fn ms_fwd<'py, T: PyElement>(
    py: Python<'py>,
    x: &Obj<'py>,
    weight: &Obj<'py>,
    offsets: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    a: &mindspore::Attributes,
) -> PyResult<Obj<'py>> {
    let (xa, wa, oa) = (
        arr4::<T>("x", x)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offsets", offsets)?,
    );
    let ba = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let (xv, wv, ov, bv) = (
        xa.as_array(),
        wa.as_array(),
        oa.as_array(),
        ba.as_ref().map(|b| b.as_array()),
    );
    let y = compute(py, || mindspore::deformable_conv2d(xv, wv, ov, bv, a)).map_err(err)?;
    Ok(out4(py, y))
}

fn ms_bwd<'py, T: PyElement>(
    py: Python<'py>,
    grad_output: &Obj<'py>,
    x: &Obj<'py>,
    weight: &Obj<'py>,
    offsets: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    a: &mindspore::Attributes,
) -> PyResult<Obj<'py>> {
    let gy = arr4::<T>("grad_output", grad_output)?;
    let (xa, wa, oa) = (
        arr4::<T>("x", x)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offsets", offsets)?,
    );
    let ba = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let (gv, xv, wv, ov, bv) = (
        gy.as_array(),
        xa.as_array(),
        wa.as_array(),
        oa.as_array(),
        ba.as_ref().map(|b| b.as_array()),
    );
    let g = compute(py, || {
        mindspore::deformable_conv2d_backward(gv, xv, wv, ov, bv, a)
    })
    .map_err(err)?;
    let gb = out1(
        py,
        g.bias.expect("packed backward returns the bias gradient"),
    );
    Ok(PyTuple::new(
        py,
        [
            out4(py, g.input),
            out4(py, g.weight),
            out4(py, g.offset),
            gb,
        ],
    )?
    .into_any())
}

/// MindSpore deformable_conv2d forward.
#[pyfunction]
#[pyo3(signature = (x, weight, offsets, bias, kernel_size, strides, padding, dilations, groups, deformable_groups, modulated, backend="engine"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mindspore_forward<'py>(
    py: Python<'py>,
    x: Obj<'py>,
    weight: Obj<'py>,
    offsets: Obj<'py>,
    bias: Option<Obj<'py>>,
    kernel_size: Vec<i64>,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = packed_attrs(
        kernel_size,
        strides,
        padding,
        dilations,
        groups,
        deformable_groups,
        modulated,
        backend,
    )?;
    by_dtype!(
        dtype_of("x", &x)?,
        ms_fwd(py, &x, &weight, &offsets, bias.as_ref(), &a)
    )
}

/// MindSpore deformable_conv2d backward: (grad_x, grad_weight, grad_offsets packed, grad_bias).
#[pyfunction]
#[pyo3(signature = (grad_output, x, weight, offsets, bias, kernel_size, strides, padding, dilations, groups, deformable_groups, modulated, backend="engine"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mindspore_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    x: Obj<'py>,
    weight: Obj<'py>,
    offsets: Obj<'py>,
    bias: Option<Obj<'py>>,
    kernel_size: Vec<i64>,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = packed_attrs(
        kernel_size,
        strides,
        padding,
        dilations,
        groups,
        deformable_groups,
        modulated,
        backend,
    )?;
    by_dtype!(
        dtype_of("x", &x)?,
        ms_bwd(py, &grad_output, &x, &weight, &offsets, bias.as_ref(), &a)
    )
}

/// The output shape of `mindspore_forward` for tensors of these shapes, or its error; no data.
#[pyfunction]
#[pyo3(signature = (x, weight, offsets, bias, kernel_size, strides, padding, dilations, groups, deformable_groups, modulated))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mindspore_output_shape(
    x: Vec<usize>,
    weight: Vec<usize>,
    offsets: Vec<usize>,
    bias: Option<Vec<usize>>,
    kernel_size: Vec<i64>,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
) -> PyResult<[usize; 4]> {
    let a = packed_attrs(
        kernel_size,
        strides,
        padding,
        dilations,
        groups,
        deformable_groups,
        modulated,
        "engine",
    )?;
    mindspore::output_shape(&x, &weight, &offsets, bias.as_deref(), &a).map_err(err)
}
