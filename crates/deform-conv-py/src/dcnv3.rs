//! DCNv3 and DCNv4 (`deform_conv.dcnv3`, `deform_conv.dcnv4`) on numpy arrays.

use crate::common::*;
use deform_conv::conventions::dcnv3::{self as core, Dcnv3Params};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The attributes as Python passes them: `(kernel [h, w], stride [h, w], pad [h, w],
/// dilation [h, w], group, group_channels, offset_scale, remove_center)`.
type Attrs = ([i64; 2], [i64; 2], [i64; 2], [i64; 2], i64, i64, f64, bool);

fn params(a: Attrs, backend_name: &str) -> PyResult<Dcnv3Params> {
    let (kernel, stride, padding, dilation, group, group_channels, offset_scale, remove_center) = a;
    Ok(Dcnv3Params {
        kernel,
        stride,
        padding,
        dilation,
        group,
        group_channels,
        offset_scale,
        remove_center,
        backend: backend(backend_name)?,
    })
}

fn forward<'py, T: PyElement>(
    py: Python<'py>,
    input: &Obj<'py>,
    offset: &Obj<'py>,
    mask: Option<&Obj<'py>>,
    p: &Dcnv3Params,
) -> PyResult<Obj<'py>> {
    let x = arr4::<T>("input", input)?;
    let m = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
    let (xv, mv) = (x.as_array(), m.as_ref().map(|m| m.as_array()));
    let y = match mv {
        Some(mv) => {
            let o = arr4::<T>("offset", offset)?;
            let ov = o.as_array();
            compute(py, || core::dcnv3(xv, ov, mv, p))
        }
        None => {
            let o = arr4::<T>("offset_mask", offset)?;
            let ov = o.as_array();
            compute(py, || core::dcnv4(xv, ov, p))
        }
    }
    .map_err(err)?;
    Ok(out4(py, y))
}

fn backward<'py, T: PyElement>(
    py: Python<'py>,
    grad_output: &Obj<'py>,
    input: &Obj<'py>,
    offset: &Obj<'py>,
    mask: Option<&Obj<'py>>,
    p: &Dcnv3Params,
) -> PyResult<Obj<'py>> {
    let gy = arr4::<T>("grad_output", grad_output)?;
    let x = arr4::<T>("input", input)?;
    let m = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
    let (gv, xv, mv) = (
        gy.as_array(),
        x.as_array(),
        m.as_ref().map(|m| m.as_array()),
    );
    let outs = match mv {
        Some(mv) => {
            let o = arr4::<T>("offset", offset)?;
            let ov = o.as_array();
            let g = compute(py, || core::dcnv3_backward(gv, xv, ov, mv, p)).map_err(err)?;
            vec![out4(py, g.input), out4(py, g.offset), out4(py, g.mask)]
        }
        None => {
            let o = arr4::<T>("offset_mask", offset)?;
            let ov = o.as_array();
            let g = compute(py, || core::dcnv4_backward(gv, xv, ov, p)).map_err(err)?;
            vec![out4(py, g.input), out4(py, g.offset_mask)]
        }
    };
    Ok(PyTuple::new(py, outs)?.into_any())
}

/// DCNv3 (`mask` given) or DCNv4 (`mask` None: `offset` is the packed offset_mask); returns the
/// output `[N, Ho, Wo, G*D]`.
#[pyfunction]
#[pyo3(signature = (input, offset, mask, attrs, backend="engine"))]
pub(crate) fn dcnv3_forward<'py>(
    py: Python<'py>,
    input: Obj<'py>,
    offset: Obj<'py>,
    mask: Option<Obj<'py>>,
    attrs: Attrs,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = params(attrs, backend)?;
    by_dtype!(
        dtype_of("input", &input)?,
        forward(py, &input, &offset, mask.as_ref(), &p)
    )
}

/// The backward: `(grad_input, grad_offset, grad_mask)` for DCNv3, `(grad_input,
/// grad_offset_mask)` for DCNv4.
#[pyfunction]
#[pyo3(signature = (grad_output, input, offset, mask, attrs, backend="engine"))]
pub(crate) fn dcnv3_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    input: Obj<'py>,
    offset: Obj<'py>,
    mask: Option<Obj<'py>>,
    attrs: Attrs,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = params(attrs, backend)?;
    by_dtype!(
        dtype_of("input", &input)?,
        backward(py, &grad_output, &input, &offset, mask.as_ref(), &p)
    )
}
