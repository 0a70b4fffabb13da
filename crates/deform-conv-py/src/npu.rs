//! `torch_npu.npu_deformable_conv2d` and `npu_deformable_conv2dbk` on numpy arrays, NCHW or NHWC.

use crate::common::*;
use crate::mindspore::Packed;
use deform_conv::conventions::npu;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// torch_npu's forward tensors: `(input, weight, offset, bias)`, bias optional.
#[derive(FromPyObject)]
pub(crate) struct NpuTensors<'py>(Obj<'py>, Obj<'py>, Obj<'py>, Option<Obj<'py>>);

/// torch_npu's backward tensors: `(input, grad_output, offset_out, weight, offset)`.
#[derive(FromPyObject)]
pub(crate) struct NpuGradTensors<'py>(Obj<'py>, Obj<'py>, Obj<'py>, Obj<'py>, Obj<'py>);

fn npu_fwd<'py, T: PyElement>(
    py: Python<'py>,
    NpuTensors(input, weight, offset, bias): &NpuTensors<'py>,
    a: &npu::NpuAttributes,
) -> PyResult<Obj<'py>> {
    let (xa, wa, oa) = (
        arr4::<T>("input", input)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offset", offset)?,
    );
    let ba = bias.as_ref().map(|b| arr1::<T>("bias", b)).transpose()?;
    let (xv, wv, ov, bv) = (
        xa.as_array(),
        wa.as_array(),
        oa.as_array(),
        ba.as_ref().map(|b| b.as_array()),
    );
    let (y, d) = compute(py, || npu::npu_deformable_conv2d(xv, wv, ov, bv, a)).map_err(err)?;
    Ok(PyTuple::new(py, [out4(py, y), out4(py, d)])?.into_any())
}

fn npu_bwd<'py, T: PyElement>(
    py: Python<'py>,
    NpuGradTensors(input, grad_output, offset_out, weight, offset): &NpuGradTensors<'py>,
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

/// torch_npu npu_deformable_conv2d on `(input, weight, offset, bias)`: (output, deformed image).
#[pyfunction]
#[pyo3(signature = (tensors, attrs, layout="NCHW", backend="engine"))]
pub(crate) fn npu_forward<'py>(
    py: Python<'py>,
    tensors: NpuTensors<'py>,
    attrs: Packed,
    layout: &str,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = npu::NpuAttributes {
        attrs: attrs.attributes(backend)?,
        layout: layout_of(layout)?,
    };
    by_dtype!(dtype_of("input", &tensors.0)?, npu_fwd(py, &tensors, &a))
}

/// torch_npu npu_deformable_conv2dbk on `(input, grad_output, offset_out, weight, offset)`:
/// (grad_input, grad_weight, grad_offset, grad_bias).
#[pyfunction]
#[pyo3(signature = (tensors, attrs, layout="NCHW", backend="engine"))]
pub(crate) fn npu_backward<'py>(
    py: Python<'py>,
    tensors: NpuGradTensors<'py>,
    attrs: Packed,
    layout: &str,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = npu::NpuAttributes {
        attrs: attrs.attributes(backend)?,
        layout: layout_of(layout)?,
    };
    by_dtype!(dtype_of("input", &tensors.0)?, npu_bwd(py, &tensors, &a))
}
