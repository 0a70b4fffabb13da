//! `mindspore.ops.deformable_conv2d` (and its backward) on numpy arrays.

use crate::common::*;
use deform_conv::conventions::mindspore;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// MindSpore's (and torch_npu's) attributes as the Python layer passes them: `(kernel_size,
/// strides, padding, dilations, groups, deformable_groups, modulated)`.
#[derive(FromPyObject)]
pub(crate) struct Packed(Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>, i64, i64, bool);

impl Packed {
    /// The core's attributes, with the backend named `backend_name`.
    pub(crate) fn attributes(self, backend_name: &str) -> PyResult<mindspore::Attributes> {
        let Packed(kernel_size, strides, padding, dilations, groups, deformable_groups, modulated) =
            self;
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
}

/// MindSpore's tensors: `(x, weight, offsets, bias)`, bias optional.
#[derive(FromPyObject)]
pub(crate) struct MsTensors<'py>(Obj<'py>, Obj<'py>, Obj<'py>, Option<Obj<'py>>);

fn ms_fwd<'py, T: PyElement>(
    py: Python<'py>,
    MsTensors(x, weight, offsets, bias): &MsTensors<'py>,
    a: &mindspore::Attributes,
) -> PyResult<Obj<'py>> {
    let (xa, wa, oa) = (
        arr4::<T>("x", x)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offsets", offsets)?,
    );
    let ba = bias.as_ref().map(|b| arr1::<T>("bias", b)).transpose()?;
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
    MsTensors(x, weight, offsets, bias): &MsTensors<'py>,
    a: &mindspore::Attributes,
) -> PyResult<Obj<'py>> {
    let gy = arr4::<T>("grad_output", grad_output)?;
    let (xa, wa, oa) = (
        arr4::<T>("x", x)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offsets", offsets)?,
    );
    let ba = bias.as_ref().map(|b| arr1::<T>("bias", b)).transpose()?;
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

/// MindSpore deformable_conv2d forward on `(x, weight, offsets, bias)`.
#[pyfunction]
#[pyo3(signature = (tensors, attrs, backend="engine"))]
pub(crate) fn mindspore_forward<'py>(
    py: Python<'py>,
    tensors: MsTensors<'py>,
    attrs: Packed,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = attrs.attributes(backend)?;
    by_dtype!(dtype_of("x", &tensors.0)?, ms_fwd(py, &tensors, &a))
}

/// MindSpore deformable_conv2d backward: (grad_x, grad_weight, grad_offsets packed, grad_bias).
#[pyfunction]
#[pyo3(signature = (grad_output, tensors, attrs, backend="engine"))]
pub(crate) fn mindspore_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    tensors: MsTensors<'py>,
    attrs: Packed,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = attrs.attributes(backend)?;
    by_dtype!(
        dtype_of("x", &tensors.0)?,
        ms_bwd(py, &grad_output, &tensors, &a)
    )
}

/// The output shape of `mindspore_forward` for tensors of these shapes `(x, weight, offsets,
/// bias)`, or its error; no data.
#[pyfunction]
pub(crate) fn mindspore_output_shape(
    shapes: (Vec<usize>, Vec<usize>, Vec<usize>, Option<Vec<usize>>),
    attrs: Packed,
) -> PyResult<[usize; 4]> {
    let (x, weight, offsets, bias) = shapes;
    let a = attrs.attributes("engine")?;
    mindspore::output_shape(&x, &weight, &offsets, bias.as_deref(), &a).map_err(err)
}
