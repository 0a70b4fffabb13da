//! What every binding shares: dtype dispatch, array views with named errors, error mapping.

use deform_conv::conventions::Layout;
use deform_conv::engine::Isa;
use deform_conv::error::check_rank;
use deform_conv::{Backend, DeformError, Element};
use half::f16;
use numpy::{
    PyArray1, PyArray4, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray4,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

pub(crate) fn err(e: DeformError) -> PyErr {
    if e.is_type_error() {
        PyTypeError::new_err(e.to_string())
    } else {
        PyValueError::new_err(e.to_string())
    }
}

/// The element types the package accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DType {
    F16,
    F32,
    F64,
}

impl DType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }
}

/// A numpy array's dtype, or a TypeError naming the tensor.
pub(crate) fn dtype_of(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<DType> {
    let a = obj.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name}: expected a numpy array, got {}",
            type_name(obj)
        ))
    })?;
    let dt = a.dtype();
    let py = obj.py();
    if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(DType::F32)
    } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(DType::F64)
    } else if dt.is_equiv_to(&numpy::dtype::<f16>(py)) {
        Ok(DType::F16)
    } else {
        Err(err(DeformError::DType {
            name: name.into(),
            expected: "float16, float32 or float64".into(),
            got: dt.to_string(),
        }))
    }
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The 4-D array `obj` as `T` (the call's dtype), or a clear error.
pub(crate) fn arr4<'py, T: Element + numpy::Element>(
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArray4<'py, T>> {
    let dt = dtype_of(name, obj)?;
    let a = obj.cast::<PyUntypedArray>()?;
    check_rank::<4>(name, a.shape()).map_err(err)?;
    let typed = obj.cast::<PyArray4<T>>().map_err(|_| {
        err(DeformError::DType {
            name: name.into(),
            expected: format!("{} (the input's dtype)", T::NAME),
            got: dt.name().into(),
        })
    })?;
    Ok(typed.readonly())
}

pub(crate) fn arr1<'py, T: Element + numpy::Element>(
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    let dt = dtype_of(name, obj)?;
    let a = obj.cast::<PyUntypedArray>()?;
    check_rank::<1>(name, a.shape()).map_err(err)?;
    let typed = obj.cast::<PyArray1<T>>().map_err(|_| {
        err(DeformError::DType {
            name: name.into(),
            expected: format!("{} (the input's dtype)", T::NAME),
            got: dt.name().into(),
        })
    })?;
    Ok(typed.readonly())
}

pub(crate) fn backend(name: &str) -> PyResult<Backend> {
    match name {
        "engine" => Ok(Backend::Engine),
        "reference" => Ok(Backend::Reference),
        other => match other.strip_prefix("engine:").and_then(Isa::parse) {
            Some(isa) => Ok(Backend::EngineIsa(isa)),
            None => Err(PyValueError::new_err(format!(
                "backend: expected 'engine', 'reference' or 'engine:<scalar|avx2|avx512>', got {other:?}"
            ))),
        },
    }
}

pub(crate) fn layout_of(name: &str) -> PyResult<Layout> {
    match name.to_ascii_uppercase().as_str() {
        "NCHW" => Ok(Layout::Nchw),
        "NHWC" => Ok(Layout::Nhwc),
        _ => Err(PyValueError::new_err(format!(
            "layout: expected 'NCHW' or 'NHWC', got {name:?}"
        ))),
    }
}

pub(crate) type Obj<'py> = Bound<'py, PyAny>;

pub(crate) fn out4<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    a: ndarray::Array4<T>,
) -> Obj<'py> {
    PyArray4::from_owned_array(py, a).into_any()
}

pub(crate) fn opt_out4<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    a: Option<ndarray::Array4<T>>,
) -> Obj<'py> {
    a.map_or_else(|| py.None().into_bound(py), |a| out4(py, a))
}
