//! ONNX `DeformConv` on numpy arrays.

use crate::common::*;
use deform_conv::conventions::onnx;
use pyo3::prelude::*;

/// The node's inputs: `(X, W, offset, B, mask)`, B and mask optional.
#[derive(FromPyObject)]
pub(crate) struct OnnxInputs<'py>(
    Obj<'py>,
    Obj<'py>,
    Obj<'py>,
    Option<Obj<'py>>,
    Option<Obj<'py>>,
);

/// The node's attributes: `(dilations, group, kernel_shape, offset_group, pads, strides)`.
#[derive(FromPyObject)]
pub(crate) struct OnnxAttrs(
    Option<Vec<i64>>,
    i64,
    Option<Vec<i64>>,
    i64,
    Option<Vec<i64>>,
    Option<Vec<i64>>,
);

fn onnx_fwd<'py, T: PyElement>(
    py: Python<'py>,
    OnnxInputs(x, w, offset, b, mask): &OnnxInputs<'py>,
    a: &onnx::Attributes,
) -> PyResult<Obj<'py>> {
    let (xa, wa, oa) = (
        arr4::<T>("X", x)?,
        arr4::<T>("W", w)?,
        arr4::<T>("offset", offset)?,
    );
    let ba = b.as_ref().map(|b| arr1::<T>("B", b)).transpose()?;
    let ma = mask.as_ref().map(|m| arr4::<T>("mask", m)).transpose()?;
    let (xv, wv, ov, bv, mv) = (
        xa.as_array(),
        wa.as_array(),
        oa.as_array(),
        ba.as_ref().map(|b| b.as_array()),
        ma.as_ref().map(|m| m.as_array()),
    );
    let y = compute(py, || onnx::deform_conv(xv, wv, ov, bv, mv, a)).map_err(err)?;
    Ok(out4(py, y))
}

/// ONNX DeformConv.
#[pyfunction]
#[pyo3(signature = (inputs, attrs, backend="engine"))]
pub(crate) fn onnx_forward<'py>(
    py: Python<'py>,
    inputs: OnnxInputs<'py>,
    attrs: OnnxAttrs,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let OnnxAttrs(dilations, group, kernel_shape, offset_group, pads, strides) = attrs;
    let a = onnx::Attributes {
        dilations,
        group,
        kernel_shape,
        offset_group,
        pads,
        strides,
        backend: self::backend(backend)?,
    };
    by_dtype!(dtype_of("X", &inputs.0)?, onnx_fwd(py, &inputs, &a))
}
