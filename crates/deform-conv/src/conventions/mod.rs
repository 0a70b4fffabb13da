//! The four conventions of SPEC §3 as thin layers over [`crate::op`].
//!
//! Each convention turns its own parameters into one [`DeformParams`](crate::DeformParams), validates it with the
//! shapes as the caller gave them (so errors name the caller's tensors), then hands strided views
//! to the canonical op. Outputs are allocated in the convention's layout and written in place
//! through permuted views, so channels-last results cost no extra copy.

pub mod dcnv3;
pub mod mindspore;
pub mod msda;
pub mod npu;
pub mod onnx;
pub mod torchvision;

use crate::alloc::try_alloc;
use crate::element::Element;
use crate::error::{DeformError, Result};
use crate::op::{self, Backend, ForwardOutputs, GradOutputs, Operands};
use crate::params::{Geometry, GradGate};
use ndarray::{s, Array1, Array4, ArrayView4, ArrayViewMut4, Ix1, Ix4};

/// Memory layout of image-like tensors (input, offset, outputs) and of the weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// NCHW images and offsets, OIHW weight: every peer's default.
    #[default]
    Nchw,
    /// NHWC images and offsets, HWCN weight: the channels-last reading of the torch_npu document.
    Nhwc,
}

/// How offsets (and their gradient) are laid out along the channel axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetLayout {
    /// `(dy, dx)` pairs per (group, tap), mask separate: torchvision, ONNX.
    Interleaved,
    /// `[dx block | dy block | mask block]`: MindSpore, torch_npu.
    Packed,
}

/// All gradients of one backward call, in the convention's layouts.
#[derive(Debug, Clone)]
pub struct Gradients<T> {
    /// `dL/dinput`, shaped like the input.
    pub input: Array4<T>,
    /// `dL/doffset`, shaped like the offset (packed: includes the mask block).
    pub offset: Array4<T>,
    /// `dL/dmask` for interleaved conventions with a mask; `None` otherwise.
    pub mask: Option<Array4<T>>,
    /// `dL/dweight`, shaped like the weight.
    pub weight: Array4<T>,
    /// `dL/dbias` when asked for.
    pub bias: Option<Array1<T>>,
}

/// Allocates a tensor whose canonical (NCHW-indexed) shape is `shape`, stored in `layout`; an
/// error, not an abort, when the machine cannot hold it.
fn alloc<T: Element>(name: &str, shape: [usize; 4], layout: Layout) -> Result<Array4<T>> {
    let [a, b, c, d] = shape;
    match layout {
        Layout::Nchw => try_alloc(name, Ix4(a, b, c, d)),
        Layout::Nhwc => try_alloc(name, Ix4(a, c, d, b)),
    }
}

/// The canonical NCHW-indexed view of an image tensor stored in `layout`.
fn canonical_mut<T>(a: &mut Array4<T>, layout: Layout) -> ArrayViewMut4<'_, T> {
    match layout {
        Layout::Nchw => a.view_mut(),
        Layout::Nhwc => a.view_mut().permuted_axes([0, 3, 1, 2]),
    }
}

/// The canonical NCHW-indexed view of an image tensor stored in `layout` (read-only).
pub(crate) fn canonical<'a, T>(a: ArrayView4<'a, T>, layout: Layout) -> ArrayView4<'a, T> {
    match layout {
        Layout::Nchw => a,
        Layout::Nhwc => a.permuted_axes([0, 3, 1, 2]),
    }
}

/// The canonical OIHW view of a weight stored in `layout` (HWCN for channels-last).
pub(crate) fn canonical_weight<'a, T>(w: ArrayView4<'a, T>, layout: Layout) -> ArrayView4<'a, T> {
    match layout {
        Layout::Nchw => w,
        Layout::Nhwc => w.permuted_axes([3, 2, 0, 1]),
    }
}

/// Runs the forward and returns `Y` (and `D` when `deformed`), both in `layout`.
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    deformed: bool,
    layout: Layout,
    backend: Backend,
) -> Result<(Array4<T>, Option<Array4<T>>)> {
    let mut y = alloc::<T>("output", g.output_shape(), layout)?;
    let mut d = deformed
        .then(|| alloc::<T>("deformed image", g.deformed_shape(), layout))
        .transpose()?;
    op::forward(
        g,
        ops,
        ForwardOutputs {
            output: canonical_mut(&mut y, layout),
            deformed: d.as_mut().map(|d| canonical_mut(d, layout)),
        },
        backend,
    )?;
    Ok((y, d))
}

/// Options of a backward call in a convention.
pub(crate) struct BackwardSpec {
    pub gate: GradGate,
    pub layout: Layout,
    pub offsets: OffsetLayout,
    pub bias: bool,
    pub backend: Backend,
}

/// Runs the backward and returns every gradient in the convention's layouts.
pub(crate) fn backward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    spec: BackwardSpec,
) -> Result<Gradients<T>> {
    let [n, gk, ho, wo] = g.tap_shape();
    let mut gx = alloc::<T>("grad_input", [g.n, g.c, g.h, g.w], spec.layout)?;
    let mut gw = match spec.layout {
        Layout::Nchw => try_alloc("grad_weight", Ix4(g.cout, g.c_per_group(), g.kh, g.kw))?,
        Layout::Nhwc => try_alloc("grad_weight", Ix4(g.kh, g.kw, g.c_per_group(), g.cout))?,
    };
    let mut gb = spec
        .bias
        .then(|| try_alloc("grad_bias", Ix1(g.cout)))
        .transpose()?;
    let per_tap = match spec.offsets {
        OffsetLayout::Interleaved => 2,
        OffsetLayout::Packed => 3,
    };
    let mut goff = alloc::<T>("grad_offset", [n, per_tap * gk, ho, wo], spec.layout)?;
    let mut gmask = (spec.offsets == OffsetLayout::Interleaved && ops.mask.is_some())
        .then(|| try_alloc("grad_mask", Ix4(n, gk, ho, wo)))
        .transpose()?;
    {
        let off = canonical_mut(&mut goff, spec.layout);
        let (oy, ox, om) = match spec.offsets {
            OffsetLayout::Interleaved => {
                let (oy, ox) = off.multi_slice_move((s![.., 0..;2, .., ..], s![.., 1..;2, .., ..]));
                (oy, ox, gmask.as_mut().map(|m| m.view_mut()))
            }
            OffsetLayout::Packed => {
                let (ox, oy, om) = off.multi_slice_move((
                    s![.., 0..gk, .., ..],
                    s![.., gk..2 * gk, .., ..],
                    s![.., 2 * gk..3 * gk, .., ..],
                ));
                if ops.mask.is_none() {
                    // v1 through a packed convention cannot happen (modulated is required), but
                    // keep the block defined: the mask gradient of a constant-one mask is unused.
                    return Err(DeformError::parameter("modulated", "true", false));
                }
                (oy, ox, Some(om))
            }
        };
        let weight_view = match spec.layout {
            Layout::Nchw => gw.view_mut(),
            Layout::Nhwc => gw.view_mut().permuted_axes([3, 2, 0, 1]),
        };
        op::backward(
            g,
            ops,
            grad_output,
            GradOutputs {
                input: Some(canonical_mut(&mut gx, spec.layout)),
                offset_y: Some(oy),
                offset_x: Some(ox),
                mask: om,
                weight: Some(weight_view),
                bias: gb.as_mut().map(|b| b.view_mut()),
            },
            spec.gate,
            spec.backend,
        )?;
    }
    Ok(Gradients {
        input: gx,
        offset: goff,
        mask: gmask,
        weight: gw,
        bias: gb,
    })
}

/// Reads a list parameter of exactly `len` entries.
pub(crate) fn list<const L: usize>(name: &str, v: &[i64]) -> Result<[i64; L]> {
    v.try_into()
        .map_err(|_| DeformError::parameter(name, format!("a list of {L} integers"), v))
}

/// Reads an `int or (h, w)` parameter (torchvision style).
pub fn int_or_pair(name: &str, v: &[i64]) -> Result<[i64; 2]> {
    match v {
        [a] => Ok([*a, *a]),
        [a, b] => Ok([*a, *b]),
        _ => Err(DeformError::parameter(name, "an int or a pair of ints", v)),
    }
}

/// Reads a `(1, 1, h, w)` list (MindSpore, torch_npu strides and dilations).
pub(crate) fn nchw_list(name: &str, v: &[i64]) -> Result<[i64; 2]> {
    let [a, b, h, w] = list::<4>(name, v)?;
    if a != 1 || b != 1 {
        return Err(DeformError::parameter(
            name,
            "(1, 1, h, w): the N and C entries must be 1",
            v,
        ));
    }
    Ok([h, w])
}

/// The dimensions of a 4-D view as an array.
pub(crate) fn dims<T>(a: &ArrayView4<'_, T>) -> [usize; 4] {
    let s = a.shape();
    [s[0], s[1], s[2], s[3]]
}
