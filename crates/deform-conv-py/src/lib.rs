//! `deform_conv._core`: the thin PyO3 layer over the `deform-conv` crate.
//!
//! Arrays come in as numpy arrays of any strides (viewed, not copied), are checked for rank and a
//! common dtype (float16, float32, float64), and go to the crate's conventions with the GIL
//! released. Errors keep the crate's message: dtype problems raise `TypeError`, the rest
//! `ValueError`. Parameters stay as the Python caller wrote them; the crate validates them.

use deform_conv::conventions::{mindspore, npu, onnx, torchvision, Layout};
use deform_conv::engine::{self, Isa};
use deform_conv::error::check_rank;
use deform_conv::{layout, Backend, DeformError, Element};
use half::f16;
use numpy::{
    PyArray1, PyArray4, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray4,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

fn err(e: DeformError) -> PyErr {
    if e.is_type_error() {
        PyTypeError::new_err(e.to_string())
    } else {
        PyValueError::new_err(e.to_string())
    }
}

/// The element types the package accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DType {
    F16,
    F32,
    F64,
}

impl DType {
    fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }
}

/// A numpy array's dtype, or a TypeError naming the tensor.
fn dtype_of(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<DType> {
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

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The 4-D array `obj` as `T` (the call's dtype), or a clear error.
fn arr4<'py, T: Element + numpy::Element>(
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

fn arr1<'py, T: Element + numpy::Element>(
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

fn backend(name: &str) -> PyResult<Backend> {
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

fn layout_of(name: &str) -> PyResult<Layout> {
    match name.to_ascii_uppercase().as_str() {
        "NCHW" => Ok(Layout::Nchw),
        "NHWC" => Ok(Layout::Nhwc),
        _ => Err(PyValueError::new_err(format!(
            "layout: expected 'NCHW' or 'NHWC', got {name:?}"
        ))),
    }
}

/// Runs `$f::<T>(...)` for the dtype `$dt`.
macro_rules! by_dtype {
    ($dt:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dt {
            DType::F16 => $f::<f16>($($arg),*),
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
        }
    };
}

type Obj<'py> = Bound<'py, PyAny>;

fn out4<'py, T: Element + numpy::Element>(py: Python<'py>, a: ndarray::Array4<T>) -> Obj<'py> {
    PyArray4::from_owned_array(py, a).into_any()
}

fn opt_out4<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    a: Option<ndarray::Array4<T>>,
) -> Obj<'py> {
    a.map_or_else(|| py.None().into_bound(py), |a| out4(py, a))
}

// ---------------------------------------------------------------- torchvision

#[allow(clippy::too_many_arguments)]
fn tv_forward<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    input: &Obj<'py>,
    offset: &Obj<'py>,
    weight: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    mask: Option<&Obj<'py>>,
    p: &torchvision::Params,
) -> PyResult<Obj<'py>> {
    let (x, off, w) = (
        arr4::<T>("input", input)?,
        arr4::<T>("offset", offset)?,
        arr4::<T>("weight", weight)?,
    );
    let b = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let m = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
    let (xv, ov, wv, bv, mv) = (
        x.as_array(),
        off.as_array(),
        w.as_array(),
        b.as_ref().map(|b| b.as_array()),
        m.as_ref().map(|m| m.as_array()),
    );
    let y = py
        .detach(|| torchvision::deform_conv2d(xv, ov, wv, bv, mv, p))
        .map_err(err)?;
    Ok(out4(py, y))
}

#[allow(clippy::too_many_arguments)]
fn tv_backward<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    grad_output: &Obj<'py>,
    input: &Obj<'py>,
    offset: &Obj<'py>,
    weight: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    mask: Option<&Obj<'py>>,
    p: &torchvision::Params,
) -> PyResult<Obj<'py>> {
    let gy = arr4::<T>("grad_output", grad_output)?;
    let (x, off, w) = (
        arr4::<T>("input", input)?,
        arr4::<T>("offset", offset)?,
        arr4::<T>("weight", weight)?,
    );
    let b = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let m = mask.map(|m| arr4::<T>("mask", m)).transpose()?;
    let (gv, xv, ov, wv, bv, mv) = (
        gy.as_array(),
        x.as_array(),
        off.as_array(),
        w.as_array(),
        b.as_ref().map(|b| b.as_array()),
        m.as_ref().map(|m| m.as_array()),
    );
    let g = py
        .detach(|| torchvision::deform_conv2d_backward(gv, xv, ov, wv, bv, mv, p))
        .map_err(err)?;
    let gb = g.bias.map_or_else(
        || py.None().into_bound(py),
        |b| PyArray1::from_owned_array(py, b).into_any(),
    );
    Ok(PyTuple::new(
        py,
        [
            out4(py, g.input),
            out4(py, g.offset),
            opt_out4(py, g.mask),
            out4(py, g.weight),
            gb,
        ],
    )?
    .into_any())
}

fn tv_params(
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    backend_name: &str,
) -> PyResult<torchvision::Params> {
    use deform_conv::conventions::int_or_pair;
    Ok(torchvision::Params {
        stride: int_or_pair("stride", &stride).map_err(err)?,
        padding: int_or_pair("padding", &padding).map_err(err)?,
        dilation: int_or_pair("dilation", &dilation).map_err(err)?,
        backend: backend(backend_name)?,
    })
}

/// torchvision's forward; returns the output array.
#[pyfunction]
#[pyo3(signature = (input, offset, weight, bias, mask, stride, padding, dilation, backend="engine"))]
#[allow(clippy::too_many_arguments)]
fn torchvision_forward<'py>(
    py: Python<'py>,
    input: Obj<'py>,
    offset: Obj<'py>,
    weight: Obj<'py>,
    bias: Option<Obj<'py>>,
    mask: Option<Obj<'py>>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = tv_params(stride, padding, dilation, backend)?;
    by_dtype!(
        dtype_of("input", &input)?,
        tv_forward(
            py,
            &input,
            &offset,
            &weight,
            bias.as_ref(),
            mask.as_ref(),
            &p
        )
    )
}

/// torchvision's backward; returns (grad_input, grad_offset, grad_mask|None, grad_weight, grad_bias|None).
#[pyfunction]
#[pyo3(signature = (grad_output, input, offset, weight, bias, mask, stride, padding, dilation, backend="engine"))]
#[allow(clippy::too_many_arguments)]
fn torchvision_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    input: Obj<'py>,
    offset: Obj<'py>,
    weight: Obj<'py>,
    bias: Option<Obj<'py>>,
    mask: Option<Obj<'py>>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let p = tv_params(stride, padding, dilation, backend)?;
    by_dtype!(
        dtype_of("input", &input)?,
        tv_backward(
            py,
            &grad_output,
            &input,
            &offset,
            &weight,
            bias.as_ref(),
            mask.as_ref(),
            &p
        )
    )
}

// ---------------------------------------------------------------- ONNX

fn onnx_fwd<'py, T: Element + numpy::Element>(
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
    let y = py
        .detach(|| onnx::deform_conv(xv, wv, ov, bv, mv, a))
        .map_err(err)?;
    Ok(out4(py, y))
}

/// ONNX DeformConv.
#[pyfunction]
#[pyo3(signature = (x, w, offset, b, mask, dilations, group, kernel_shape, offset_group, pads, strides, backend="engine"))]
#[allow(clippy::too_many_arguments)]
fn onnx_forward<'py>(
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

// ---------------------------------------------------------------- packed: MindSpore and torch_npu

#[allow(clippy::too_many_arguments)]
fn packed_attrs(
    kernel_size: Vec<i64>,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    backend_name: &str,
) -> PyResult<mindspore::Attributes> {
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

fn ms_fwd<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    x: &Obj<'py>,
    weight: &Obj<'py>,
    offsets: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    a: &mindspore::Attributes,
) -> PyResult<Obj<'py>> {
    let (xa, wa, oa) = (
        arr4::<T>("x", x)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offsets", offsets)?,
    );
    let ba = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let (xv, wv, ov, bv) = (
        xa.as_array(),
        wa.as_array(),
        oa.as_array(),
        ba.as_ref().map(|b| b.as_array()),
    );
    let y = py
        .detach(|| mindspore::deformable_conv2d(xv, wv, ov, bv, a))
        .map_err(err)?;
    Ok(out4(py, y))
}

fn ms_bwd<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    grad_output: &Obj<'py>,
    x: &Obj<'py>,
    weight: &Obj<'py>,
    offsets: &Obj<'py>,
    bias: Option<&Obj<'py>>,
    a: &mindspore::Attributes,
) -> PyResult<Obj<'py>> {
    let gy = arr4::<T>("grad_output", grad_output)?;
    let (xa, wa, oa) = (
        arr4::<T>("x", x)?,
        arr4::<T>("weight", weight)?,
        arr4::<T>("offsets", offsets)?,
    );
    let ba = bias.map(|b| arr1::<T>("bias", b)).transpose()?;
    let (gv, xv, wv, ov, bv) = (
        gy.as_array(),
        xa.as_array(),
        wa.as_array(),
        oa.as_array(),
        ba.as_ref().map(|b| b.as_array()),
    );
    let g = py
        .detach(|| mindspore::deformable_conv2d_backward(gv, xv, wv, ov, bv, a))
        .map_err(err)?;
    let gb = PyArray1::from_owned_array(
        py,
        g.bias.expect("packed backward returns the bias gradient"),
    )
    .into_any();
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

/// MindSpore deformable_conv2d forward.
#[pyfunction]
#[pyo3(signature = (x, weight, offsets, bias, kernel_size, strides, padding, dilations, groups, deformable_groups, modulated, backend="engine"))]
#[allow(clippy::too_many_arguments)]
fn mindspore_forward<'py>(
    py: Python<'py>,
    x: Obj<'py>,
    weight: Obj<'py>,
    offsets: Obj<'py>,
    bias: Option<Obj<'py>>,
    kernel_size: Vec<i64>,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = packed_attrs(
        kernel_size,
        strides,
        padding,
        dilations,
        groups,
        deformable_groups,
        modulated,
        backend,
    )?;
    by_dtype!(
        dtype_of("x", &x)?,
        ms_fwd(py, &x, &weight, &offsets, bias.as_ref(), &a)
    )
}

/// MindSpore deformable_conv2d backward: (grad_x, grad_weight, grad_offsets packed, grad_bias).
#[pyfunction]
#[pyo3(signature = (grad_output, x, weight, offsets, bias, kernel_size, strides, padding, dilations, groups, deformable_groups, modulated, backend="engine"))]
#[allow(clippy::too_many_arguments)]
fn mindspore_backward<'py>(
    py: Python<'py>,
    grad_output: Obj<'py>,
    x: Obj<'py>,
    weight: Obj<'py>,
    offsets: Obj<'py>,
    bias: Option<Obj<'py>>,
    kernel_size: Vec<i64>,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
    deformable_groups: i64,
    modulated: bool,
    backend: &str,
) -> PyResult<Obj<'py>> {
    let a = packed_attrs(
        kernel_size,
        strides,
        padding,
        dilations,
        groups,
        deformable_groups,
        modulated,
        backend,
    )?;
    by_dtype!(
        dtype_of("x", &x)?,
        ms_bwd(py, &grad_output, &x, &weight, &offsets, bias.as_ref(), &a)
    )
}

fn npu_fwd<'py, T: Element + numpy::Element>(
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
    let (y, d) = py
        .detach(|| npu::npu_deformable_conv2d(xv, wv, ov, bv, a))
        .map_err(err)?;
    Ok(PyTuple::new(py, [out4(py, y), out4(py, d)])?.into_any())
}

#[allow(clippy::too_many_arguments)]
fn npu_bwd<'py, T: Element + numpy::Element>(
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
    let g = py
        .detach(|| npu::npu_deformable_conv2dbk(xv, gv, dv, wv, ov, a))
        .map_err(err)?;
    Ok(PyTuple::new(
        py,
        [
            out4(py, g.input),
            out4(py, g.weight),
            out4(py, g.offset),
            PyArray1::from_owned_array(py, g.bias).into_any(),
        ],
    )?
    .into_any())
}

/// torch_npu npu_deformable_conv2d: (output, deformed image).
#[pyfunction]
#[pyo3(signature = (input, weight, offset, bias, kernel_size, stride, padding, dilation, groups, deformable_groups, modulated, layout="NCHW", backend="engine"))]
#[allow(clippy::too_many_arguments)]
fn npu_forward<'py>(
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
fn npu_backward<'py>(
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

// ---------------------------------------------------------------- layout converters

fn i2p<'py, T: Element + numpy::Element + num_traits::One>(
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

fn p2i<'py, T: Element + numpy::Element>(py: Python<'py>, packed: &Obj<'py>) -> PyResult<Obj<'py>> {
    let p = arr4::<T>("offset", packed)?;
    let (o, m) = layout::packed_to_interleaved(p.as_array()).map_err(err)?;
    Ok(PyTuple::new(py, [out4(py, o), out4(py, m)])?.into_any())
}

fn permute<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    a: &Obj<'py>,
    which: &str,
) -> PyResult<Obj<'py>> {
    let v = arr4::<T>("array", a)?;
    let v = v.as_array();
    let out = match which {
        "nchw_to_nhwc" => layout::nchw_to_nhwc(v),
        "nhwc_to_nchw" => layout::nhwc_to_nchw(v),
        "oihw_to_hwcn" => layout::oihw_to_hwcn(v),
        "hwcn_to_oihw" => layout::hwcn_to_oihw(v),
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
fn interleaved_to_packed<'py>(
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
fn packed_to_interleaved<'py>(py: Python<'py>, packed: Obj<'py>) -> PyResult<Obj<'py>> {
    by_dtype!(dtype_of("offset", &packed)?, p2i(py, &packed))
}

/// Axis permutations: nchw_to_nhwc, nhwc_to_nchw, oihw_to_hwcn, hwcn_to_oihw.
#[pyfunction]
fn convert_layout<'py>(py: Python<'py>, array: Obj<'py>, which: &str) -> PyResult<Obj<'py>> {
    by_dtype!(dtype_of("array", &array)?, permute(py, &array, which))
}

/// Sets the engine's thread count (0 = one per core).
#[pyfunction]
fn set_num_threads(n: usize) {
    engine::set_num_threads(n)
}

/// The engine's thread count.
#[pyfunction]
fn num_threads() -> usize {
    engine::num_threads()
}

/// The instruction set the engine runs (scalar, avx2, avx512).
#[pyfunction]
fn active_isa() -> &'static str {
    engine::active_isa().name()
}

/// Instruction sets this CPU supports.
#[pyfunction]
fn supported_isas() -> Vec<&'static str> {
    Isa::ALL
        .into_iter()
        .filter(|i| i.supported())
        .map(|i| i.name())
        .collect()
}

/// The extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(torchvision_forward, m)?)?;
    m.add_function(wrap_pyfunction!(torchvision_backward, m)?)?;
    m.add_function(wrap_pyfunction!(onnx_forward, m)?)?;
    m.add_function(wrap_pyfunction!(mindspore_forward, m)?)?;
    m.add_function(wrap_pyfunction!(mindspore_backward, m)?)?;
    m.add_function(wrap_pyfunction!(npu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(npu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(interleaved_to_packed, m)?)?;
    m.add_function(wrap_pyfunction!(packed_to_interleaved, m)?)?;
    m.add_function(wrap_pyfunction!(convert_layout, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(active_isa, m)?)?;
    m.add_function(wrap_pyfunction!(supported_isas, m)?)?;
    Ok(())
}
