//! The layout converters: interleaved ⇄ packed offsets, NCHW ⇄ NHWC, OIHW ⇄ HWCN.

use crate::common::*;
use deform_conv::layout;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

fn i2p<'py, T: PyElement + num_traits::One>(
    py: Python<'py>,
    offset: &Obj<'py>,
    mask: Option<&Obj<'py>>,
) -> PyResult<Obj<'py>> {
    let o = arr4::<T>("offset", offset)?;
    let m = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
    Ok(out4(
        py,
        layout::interleaved_to_packed(o.as_array(), m.as_ref().map(|m| m.as_array()))
            .map_err(err)?,
    ))
}

fn p2i<'py, T: PyElement>(py: Python<'py>, packed: &Obj<'py>) -> PyResult<Obj<'py>> {
    let p = arr4::<T>("offset", packed)?;
    let (o, m) = layout::packed_to_interleaved(p.as_array()).map_err(err)?;
    Ok(PyTuple::new(py, [out4(py, o), out4(py, m)])?.into_any())
}

fn permute<'py, T: PyElement>(py: Python<'py>, a: &Obj<'py>, which: &str) -> PyResult<Obj<'py>> {
    let v = arr4::<T>("array", a)?;
    let v = v.as_array();
    let out = match which {
        "nchw_to_nhwc" => layout::nchw_to_nhwc(v).map_err(err)?,
        "nhwc_to_nchw" => layout::nhwc_to_nchw(v).map_err(err)?,
        "oihw_to_hwcn" => layout::oihw_to_hwcn(v).map_err(err)?,
        "hwcn_to_oihw" => layout::hwcn_to_oihw(v).map_err(err)?,
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown conversion {which:?}"
            )))
        }
    };
    Ok(out4(py, out))
}

/// Interleaved offset (+ mask, default ones) → packed [x | y | mask].
#[pyfunction]
#[pyo3(signature = (offset, mask=None))]
pub(crate) fn interleaved_to_packed<'py>(
    py: Python<'py>,
    offset: Obj<'py>,
    mask: Option<Obj<'py>>,
) -> PyResult<Obj<'py>> {
    by_dtype!(
        dtype_of("offset", &offset)?,
        i2p(py, &offset, mask.as_ref())
    )
}

/// Packed [x | y | mask] → (interleaved offset, mask).
#[pyfunction]
pub(crate) fn packed_to_interleaved<'py>(py: Python<'py>, packed: Obj<'py>) -> PyResult<Obj<'py>> {
    by_dtype!(dtype_of("offset", &packed)?, p2i(py, &packed))
}

/// Axis permutations: nchw_to_nhwc, nhwc_to_nchw, oihw_to_hwcn, hwcn_to_oihw.
#[pyfunction]
pub(crate) fn convert_layout<'py>(
    py: Python<'py>,
    array: Obj<'py>,
    which: &str,
) -> PyResult<Obj<'py>> {
    by_dtype!(dtype_of("array", &array)?, permute(py, &array, which))
}
