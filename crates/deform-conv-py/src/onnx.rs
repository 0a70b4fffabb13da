//! ONNX `DeformConv` on numpy arrays.

use crate::common::*;
use deform_conv::conventions::onnx;
use pyo3::prelude::*;

fn onnx_fwd<'py, T: PyElement>(
    py: Python<'py>,
    x: &Obj<'py>,
    w: &Obj<'py>,
    offset: &Obj<'py>,
    b: Option<&Obj<'py>>,
    mask: Option<&Obj<'py>>,
    a: &onnx::Attributes,
) -> PyResult<Obj<'py>> {
    let (xa, wa, oa) = (
        arr4::<T>("X", x)?,
        arr4::<T>("W", w)?,
        arr4::<T>("offset", offset)?,
    );
    let ba = b.map(|b| arr1::<T>("B", b)).transpose()?;
    let ma = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
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
#[pyo3(signature = (x, w, offset, b, mask, dilations, group, kernel_shape, offset_group, pads, strides, backend="engine"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn onnx_forward<'py>(
    py: Python<'py>,
    x: Obj<'py>,
    w: Obj<'py>,
    offset: Obj<'py>,
    b: Option<Obj<'py>>,
    mask: Option<Obj<'py>>,
    dilations: Option<Vec<i64>>,
    group: i64,
    kernel_shape: Option<Vec<i64>>,
    offset_group: i64,
    pads: Option<Vec<i64>>,
    strides: Option<Vec<i64>>,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = onnx::Attributes {
        dilations,
        group,
        kernel_shape,
        offset_group,
        pads,
        strides,
        backend: self::backend(backend)?,
    };
    by_dtype!(
        dtype_of("X", &x)?,
        onnx_fwd(py, &x, &w, &offset, b.as_ref(), mask.as_ref(), &a)
    )
}
