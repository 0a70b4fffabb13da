//! What every binding shares: dtype dispatch, array views with named errors, error mapping.

use deform_conv::conventions::Layout;
use deform_conv::engine::Isa;
use deform_conv::error::check_rank;
use deform_conv::{Backend, DeformError, Element};
use half::{bf16, f16};
use ndarray::{Array, ArrayView, Ix1, Ix4, RawArrayView};
use numpy::{PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
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
    BF16,
    F32,
    F64,
}

impl DType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }
}

/// bfloat16 storage handed over as its bits: a `uint16` numpy array marked as bfloat16, since
/// numpy has no bfloat16. `deform_conv.torch` wraps torch's bfloat16 tensors this way, without a
/// copy; an unmarked `uint16` array is an error everywhere.
#[pyclass(frozen, name = "Bf16")]
pub(crate) struct Bf16 {
    bits: Py<PyAny>,
}

#[pymethods]
impl Bf16 {
    #[new]
    fn new(bits: Bound<'_, PyAny>) -> PyResult<Self> {
        let ok = bits
            .cast::<PyUntypedArray>()
            .is_ok_and(|a| a.dtype().is_equiv_to(&numpy::dtype::<u16>(bits.py())));
        if !ok {
            return Err(PyTypeError::new_err(format!(
                "Bf16: expected a uint16 numpy array (bfloat16 bits), got {}",
                type_name(&bits)
            )));
        }
        Ok(Bf16 {
            bits: bits.unbind(),
        })
    }
}

/// The array behind `obj` (a [`Bf16`]'s bits, or `obj` itself) and whether it is bfloat16.
fn storage<'py>(obj: &Bound<'py, PyAny>) -> (Bound<'py, PyAny>, bool) {
    match obj.cast::<Bf16>() {
        Ok(b) => (b.get().bits.bind(obj.py()).clone(), true),
        Err(_) => (obj.clone(), false),
    }
}

/// A numpy array's dtype (a [`Bf16`] is bfloat16), or a TypeError naming the tensor.
pub(crate) fn dtype_of(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<DType> {
    let (obj, bf16) = storage(obj);
    if bf16 {
        return Ok(DType::BF16);
    }
    let a = obj.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name}: expected a numpy array, got {}",
            type_name(&obj)
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

/// An element type as numpy stores it: itself, or its bits (`u16`) for bfloat16.
pub(crate) trait PyElement: Element {
    /// The numpy element type holding `Self`.
    type Np: numpy::Element;
    /// `a` read as `Self`, same memory, same strides.
    fn view<D: ndarray::Dimension>(a: ArrayView<'_, Self::Np, D>) -> ArrayView<'_, Self, D>;
    /// `a` as numpy elements, without a copy.
    fn to_np<D: ndarray::Dimension>(a: Array<Self, D>) -> Array<Self::Np, D>;
    /// `a`'s elements as numpy's, same memory (no lifetime: the caller keeps `a` alive).
    fn np_raw<D: ndarray::Dimension>(a: &Array<Self, D>) -> RawArrayView<Self::Np, D>;
}

macro_rules! native {
    ($($t:ty),*) => {$(
        impl PyElement for $t {
            type Np = $t;
            fn view<D: ndarray::Dimension>(a: ArrayView<'_, $t, D>) -> ArrayView<'_, $t, D> {
                a
            }
            fn to_np<D: ndarray::Dimension>(a: Array<$t, D>) -> Array<$t, D> {
                a
            }
            fn np_raw<D: ndarray::Dimension>(a: &Array<$t, D>) -> RawArrayView<$t, D> {
                a.raw_view()
            }
        }
    )*};
}
native!(f16, f32, f64);

impl PyElement for bf16 {
    type Np = u16;
    fn view<D: ndarray::Dimension>(a: ArrayView<'_, u16, D>) -> ArrayView<'_, bf16, D> {
        let raw = a.raw_view().cast::<bf16>();
        // SAFETY: `bf16` is `repr(transparent)` over `u16`: same size and alignment, and every bit
        // pattern is a valid `bf16`. The view keeps `a`'s shape, strides and lifetime, and is
        // read-only like `a`.
        unsafe { raw.deref_into_view() }
    }
    fn to_np<D: ndarray::Dimension>(a: Array<bf16, D>) -> Array<u16, D> {
        use half::vec::HalfFloatVecExt;
        let dim = a.raw_dim();
        let standard = a.as_standard_layout().into_owned(); // no copy: outputs are standard
        let (v, offset) = standard.into_raw_vec_and_offset();
        debug_assert!(offset.unwrap_or(0) == 0);
        Array::from_shape_vec(dim, v.reinterpret_into()).expect("same length")
    }
    fn np_raw<D: ndarray::Dimension>(a: &Array<bf16, D>) -> RawArrayView<u16, D> {
        // `bf16` is `repr(transparent)` over `u16`: same size and alignment.
        a.raw_view().cast::<u16>()
    }
}

/// A read-only numpy array argument, viewed as `T`.
pub(crate) struct In<'py, T: PyElement, D: ndarray::Dimension> {
    a: numpy::PyReadonlyArray<'py, T::Np, D>,
}

impl<T: PyElement, D: ndarray::Dimension> In<'_, T, D> {
    /// The array as `T`, any strides.
    pub(crate) fn as_array(&self) -> ArrayView<'_, T, D> {
        T::view(self.a.as_array())
    }
}

/// The `R`-D array `obj` as `T` (the call's dtype), or a clear error.
pub(crate) fn arr<'py, T: PyElement, D: ndarray::Dimension, const R: usize>(
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<In<'py, T, D>> {
    let dt = dtype_of(name, obj)?;
    let (obj, _) = storage(obj);
    let a = obj.cast::<PyUntypedArray>()?;
    check_rank::<R>(name, a.shape()).map_err(err)?;
    let typed = obj.cast::<numpy::PyArray<T::Np, D>>().map_err(|_| {
        err(DeformError::DType {
            name: name.into(),
            expected: format!("{} (the input's dtype)", T::NAME),
            got: dt.name().into(),
        })
    })?;
    Ok(In {
        a: typed.readonly(),
    })
}

/// The 4-D array `obj` as `T` (the call's dtype), or a clear error.
pub(crate) fn arr4<'py, T: PyElement>(
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<In<'py, T, Ix4>> {
    arr::<T, Ix4, 4>(name, obj)
}

/// The 1-D array `obj` as `T` (the call's dtype), or a clear error.
pub(crate) fn arr1<'py, T: PyElement>(
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<In<'py, T, Ix1>> {
    arr::<T, Ix1, 1>(name, obj)
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The 4-D array `obj` as `T` (the call's dtype), or a clear error.
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

/// An owned result as a numpy array (no copy).
pub(crate) fn out4<'py, T: PyElement>(py: Python<'py>, a: ndarray::Array4<T>) -> Obj<'py> {
    out_any(py, a)
}

/// An output array owned by [`Output`], the base object of the numpy array it backs.
struct Held<T: Element, D: ndarray::Dimension>(Option<Array<T, D>>);

impl<T: Element, D: ndarray::Dimension> Drop for Held<T, D> {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            deform_conv::alloc::recycle(a);
        }
    }
}

/// The owner of an output's memory while numpy uses it: when numpy releases the array, the
/// memory goes back to the engine (`deform_conv::alloc::recycle`), so that the next call's
/// outputs reuse it instead of fresh pages the kernel must zero.
#[pyclass(frozen, module = "deform_conv._core")]
struct Output {
    held: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// An output array of any rank, handed to numpy without a copy (its memory recycled after).
pub(crate) fn out_any<'py, T: PyElement, D: ndarray::Dimension + 'static>(
    py: Python<'py>,
    a: Array<T, D>,
) -> Obj<'py> {
    let empty = Output {
        held: std::sync::Mutex::new(None),
    };
    let Ok(owner) = Bound::new(py, empty) else {
        // No memory for the owner object: numpy owns the array, without recycling.
        return numpy::PyArray::from_owned_array(py, T::to_np(a)).into_any();
    };
    let raw = T::np_raw(&a);
    *owner.get().held.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(Held(Some(a))));
    // SAFETY: `raw` views the array's heap memory, which did not move when the array moved into
    // `owner` and stays valid, unchanged in size, until `owner` drops (nothing takes it out);
    // `owner` becomes the numpy array's base object, which numpy keeps alive as long as the
    // array and any view of it.
    unsafe {
        let view = raw.deref_into_view();
        numpy::PyArray::borrow_from_array(&view, owner.into_any()).into_any()
    }
}

pub(crate) fn out1<'py, T: PyElement>(py: Python<'py>, a: ndarray::Array1<T>) -> Obj<'py> {
    out_any(py, a)
}

/// An optional result: the array, or None.
pub(crate) fn opt_out4<'py, T: PyElement>(
    py: Python<'py>,
    a: Option<ndarray::Array4<T>>,
) -> Obj<'py> {
    a.map_or_else(|| py.None().into_bound(py), |a| out4(py, a))
}

/// Runs `f` without the GIL, on the host's threads when called from a torch op.
pub(crate) fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> R {
    match crate::threads::call_executor() {
        Some(ex) => py.detach(|| deform_conv::engine::with_executor(ex, f)),
        None => py.detach(f),
    }
}
