//! `torch_npu.npu_deformable_conv2d` and `npu_deformable_conv2dbk` on numpy arrays, NCHW or NHWC.

use crate::common::*;
use crate::mindspore::packed_attrs;
use deform_conv::conventions::npu;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

fn npu_fwd<'py, T: PyElement>(
    py: Python<'py>,
    input: &Obj<'py>,
    weight: &Obj<'py>,
    offset: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    a: &npu::NpuAttributes,
) -> PyResult<Obj<'py>> {
    let (xa, wa, oa) = (
        arr4::<T>("input", input)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offset", offset)?,
    );
    let ba = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let (xv, wv, ov, bv) = (
        xa.as_array(),
        wa.as_array(),
        oa.as_array(),
        ba.as_ref().map(|b| b.as_array()),
    );
    let (y, d) = compute(py, || npu::npu_deformable_conv2d(xv, wv, ov, bv, a)).map_err(err)?;
    Ok(PyTuple::new(py, [out4(py, y), out4(py, d)])?.into_any())
}

#[allow(clippy::too_many_arguments)]
fn npu_bwd<'py, T: PyElement>(
    py: Python<'py>,
    input: &Obj<'py>,
    grad_output: &Obj<'py>,
    offset_out: &Obj<'py>,
    weight: &Obj<'py>,
    offset: &Obj<'py>,
    a: &npu::NpuAttributes,
) -> PyResult<Obj<'py>> {
    let (xa, ga, da) = (
        arr4::<T>("input", input)?,
        arr4::<T>("grad_output", grad_output)?,
        arr4::<T>("offset_out", offset_out)?,
    );
    let (wa, oa) = (arr4::<T>("weight", weight)?, arr4::<T>("offset", offset)?);
    let (xv, gv, dv, wv, ov) = (
        xa.as_array(),
        ga.as_array(),
        da.as_array(),
        wa.as_array(),
        oa.as_array(),
    );
    let g = compute(py, || npu::npu_deformable_conv2dbk(xv, gv, dv, wv, ov, a)).map_err(err)?;
    Ok(PyTuple::new(
        py,
        [
            out4(py, g.input),
            out4(py, g.weight),
            out4(py, g.offset),
            out1(py, g.bias),
        ],
    )?
    .into_any())
}

/// torch_npu npu_deformable_conv2d: (output, deformed image).
#[pyfunction]
#[pyo3(signature = (input, weight, offset, bias, kernel_size, stride, padding, dilation, groups, deformable_groups, modulated, layout="NCHW", backend="engine"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn npu_forward<'py>(
    py: Python<'py>,
    input: Obj<'py>,
    weight: Obj<'py>,
    offset: Obj<'py>,
    bias: Option<Obj<'py>>,
    kernel_size: Vec<i64>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    layout: &str,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = npu::NpuAttributes {
        attrs: packed_attrs(
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deformable_groups,
            modulated,
            backend,
        )?,
        layout: layout_of(layout)?,
    };
    by_dtype!(
        dtype_of("input", &input)?,
        npu_fwd(py, &input, &weight, &offset, bias.as_ref(), &a)
    )
}

/// torch_npu npu_deformable_conv2dbk: (grad_input, grad_weight, grad_offset, grad_bias).
#[pyfunction]
#[pyo3(signature = (input, grad_output, offset_out, weight, offset, kernel_size, stride, padding, dilation, groups, deformable_groups, modulated, layout="NCHW", backend="engine"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn npu_backward<'py>(
    py: Python<'py>,
    input: Obj<'py>,
    grad_output: Obj<'py>,
    offset_out: Obj<'py>,
    weight: Obj<'py>,
    offset: Obj<'py>,
    kernel_size: Vec<i64>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    layout: &str,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = npu::NpuAttributes {
        attrs: packed_attrs(
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deformable_groups,
            modulated,
            backend,
        )?,
        layout: layout_of(layout)?,
    };
    by_dtype!(
        dtype_of("input", &input)?,
        npu_bwd(py, &input, &grad_output, &offset_out, &weight, &offset, &a)
    )
}
