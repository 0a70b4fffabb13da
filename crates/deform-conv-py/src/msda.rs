//! Multi-scale deformable attention (`deform_conv.ms_deform_attn`) on numpy arrays.

use crate::common::*;
use deform_conv::conventions::msda::{self as core, MsdaParams};
use ndarray::{Array1, Array2, Ix3, Ix4, Ix5, Ix6};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The levels as the core takes them: spatial shapes `[L, 2]` and start indices `[L]`.
fn levels(shapes: Vec<[i64; 2]>, start: Vec<i64>) -> (Array2<i64>, Array1<i64>) {
    let l = shapes.len();
    let flat: Vec<i64> = shapes.into_iter().flatten().collect();
    (
        Array2::from_shape_vec((l, 2), flat).expect("L pairs"),
        Array1::from(start),
    )
}

fn forward<'py, T: PyElement>(
    py: Python<'py>,
    value: &Obj<'py>,
    (shapes, start): &(Array2<i64>, Array1<i64>),
    loc: &Obj<'py>,
    attn: &Obj<'py>,
    p: &MsdaParams,
) -> PyResult<Obj<'py>> {
    let v = arr::<T, Ix4, 4>("value", value)?;
    let l = arr::<T, Ix6, 6>("sampling_locations", loc)?;
    let a = arr::<T, Ix5, 5>("attention_weights", attn)?;
    let (vv, lv, av) = (v.as_array(), l.as_array(), a.as_array());
    let y = compute(py, || {
        core::ms_deform_attn(vv, shapes.view(), start.view(), lv, av, p)
    })
    .map_err(err)?;
    Ok(out_any(py, y))
}

fn backward<'py, T: PyElement>(
    py: Python<'py>,
    grad_output: &Obj<'py>,
    value: &Obj<'py>,
    (shapes, start): &(Array2<i64>, Array1<i64>),
    loc: &Obj<'py>,
    attn: &Obj<'py>,
    p: &MsdaParams,
) -> PyResult<Obj<'py>> {
    let gy = arr::<T, Ix3, 3>("grad_output", grad_output)?;
    let v = arr::<T, Ix4, 4>("value", value)?;
    let l = arr::<T, Ix6, 6>("sampling_locations", loc)?;
    let a = arr::<T, Ix5, 5>("attention_weights", attn)?;
    let (gv, vv, lv, av) = (gy.as_array(), v.as_array(), l.as_array(), a.as_array());
    let g = compute(py, || {
        core::ms_deform_attn_backward(gv, vv, shapes.view(), start.view(), lv, av, p)
    })
    .map_err(err)?;
    Ok(PyTuple::new(
        py,
        [
            out_any(py, g.value),
            out_any(py, g.sampling_locations),
            out_any(py, g.attention_weights),
        ],
    )?
    .into_any())
}

/// The forward: output `[N, Lq, M*D]`.
#[pyfunction]
#[pyo3(signature = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend="engine"))]
pub(crate) fn msda_forward<'py>(
    py: Python<'py>,
    value: Obj<'py>,
    spatial_shapes: Vec<[i64; 2]>,
    level_start_index: Vec<i64>,
    sampling_locations: Obj<'py>,
    attention_weights: Obj<'py>,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = MsdaParams {
        backend: crate::common::backend(backend)?,
    };
    let lv = levels(spatial_shapes, level_start_index);
    by_dtype!(
        dtype_of("value", &value)?,
        forward(py, &value, &lv, &sampling_locations, &attention_weights, &p)
    )
}

/// The backward on `(value, sampling_locations, attention_weights)`: `(grad_value,
/// grad_sampling_locations, grad_attention_weights)`.
#[pyfunction]
#[pyo3(signature = (grad_output, tensors, spatial_shapes, level_start_index, backend="engine"))]
pub(crate) fn msda_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    tensors: (Obj<'py>, Obj<'py>, Obj<'py>),
    spatial_shapes: Vec<[i64; 2]>,
    level_start_index: Vec<i64>,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = MsdaParams {
        backend: crate::common::backend(backend)?,
    };
    let lv = levels(spatial_shapes, level_start_index);
    let (value, loc, attn) = &tensors;
    by_dtype!(
        dtype_of("value", value)?,
        backward(py, &grad_output, value, &lv, loc, attn, &p)
    )
}
