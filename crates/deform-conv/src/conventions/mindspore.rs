//! `mindspore.ops.deformable_conv2d` (and the packing torch_npu shares).
//!
//! ```text
//! x [N, C, H, W]    weight [Cout, C/groups, kh, kw]    bias [Cout] (optional)
//! offsets [N, 3*G*K, Ho, Wo]: channel t*G*K + g*K + k, t = 0 dx, 1 dy, 2 mask
//! kernel_size (kh, kw)   strides, dilations (1, 1, h, w)   padding (top, bottom, left, right)
//! output [N, Cout, Ho, Wo],  Ho = floor((H + top + bottom - dil_h*(kh-1) - 1) / stride_h) + 1
//! ```
//!
//! `modulated` must be true (the mask block is always read). Offset and mask gradients follow the
//! per-tap rule of MindSpore's CPU kernel (no gate at -1).

//!
//! ```
//! use deform_conv::conventions::mindspore::{deformable_conv2d, deformable_conv2d_backward, Attributes};
//! use ndarray::Array4;
//! let x = Array4::<f32>::from_shape_fn((2, 3, 5, 7), |(n, c, y, x)| (n + c + y * x) as f32 * 0.1);
//! let w = Array4::<f32>::from_elem((4, 3, 3, 3), 0.1);
//! // Packed offsets [N, 3*G*K, Ho, Wo]: all dx, then all dy, then the mask (here 0.5 everywhere).
//! let mut offsets = Array4::<f32>::zeros((2, 27, 5, 7));
//! offsets.slice_mut(ndarray::s![.., 18.., .., ..]).fill(0.5);
//! let mut attrs = Attributes::new([3, 3]);
//! attrs.padding = vec![1, 1, 1, 1]; // (top, bottom, left, right)
//! let y = deformable_conv2d(x.view(), w.view(), offsets.view(), None, &attrs)?;
//! assert_eq!(y.shape(), &[2, 4, 5, 7]);
//! let g = deformable_conv2d_backward(Array4::ones(y.raw_dim()).view(), x.view(), w.view(), offsets.view(), None, &attrs)?;
//! assert_eq!(g.offset.shape(), offsets.shape()); // [d dx | d dy | d mask]
//! # Ok::<(), deform_conv::DeformError>(())
//! ```

use super::{
    backward as run_backward, canonical, canonical_weight, dims, forward as run_forward, list,
    nchw_list, BackwardSpec, Gradients, Layout, OffsetLayout,
};
use crate::element::Element;
use crate::error::{check_rank, DeformError, Result};
use crate::layout::split_packed;
use crate::op::{Backend, Operands};
use crate::params::{DeformParams, Geometry, GradGate, OutputRounding, ShapeSet};
use ndarray::{Array4, ArrayView1, ArrayView4};

/// Attributes of the packed conventions (MindSpore and torch_npu).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `kernel_size (kh, kw)`; must match the weight.
    pub kernel_size: Vec<i64>,
    /// `strides (1, 1, h, w)`.
    pub strides: Vec<i64>,
    /// `padding (top, bottom, left, right)`.
    pub padding: Vec<i64>,
    /// `dilations (1, 1, h, w)`.
    pub dilations: Vec<i64>,
    /// Convolution groups.
    pub groups: i64,
    /// Deformable groups.
    pub deformable_groups: i64,
    /// Must be true: both peers implement only DCN v2.
    pub modulated: bool,
    /// Which implementation computes.
    pub backend: Backend,
}

impl Attributes {
    /// Attributes with the given kernel, unit strides and dilations, zero padding, one group.
    pub fn new(kernel_size: [i64; 2]) -> Self {
        Attributes {
            kernel_size: kernel_size.to_vec(),
            strides: vec![1, 1, 1, 1],
            padding: vec![0, 0, 0, 0],
            dilations: vec![1, 1, 1, 1],
            groups: 1,
            deformable_groups: 1,
            modulated: true,
            backend: Backend::Engine,
        }
    }

    /// The canonical parameters these attributes stand for.
    pub fn params(&self) -> Result<DeformParams> {
        if !self.modulated {
            return Err(DeformError::parameter(
                "modulated",
                "true (only modulated deformable convolution, DCN v2, is defined)",
                false,
            ));
        }
        Ok(DeformParams {
            kernel: Some(list::<2>("kernel_size", &self.kernel_size)?),
            stride: nchw_list("strides", &self.strides)?,
            padding: list::<4>("padding", &self.padding)?,
            dilation: nchw_list("dilations", &self.dilations)?,
            groups: self.groups,
            deformable_groups: self.deformable_groups,
            rounding: OutputRounding::Floor,
        })
    }
}

/// Validates a packed call (tensors in `layout`) and returns its geometry and canonical operands.
pub(crate) fn packed_operands<'a, T: Element>(
    input: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    bias: Option<ArrayView1<'a, T>>,
    attrs: &Attributes,
    layout: Layout,
) -> Result<(Geometry, Operands<'a, T>)> {
    let (input, weight, offset) = (
        canonical(input, layout),
        canonical_weight(weight, layout),
        canonical(offset, layout),
    );
    let g = attrs.params()?.validate(&ShapeSet {
        input: dims(&input),
        weight: dims(&weight),
        offset: dims(&offset),
        offset_per_tap: 3,
        mask: None,
        bias: bias.as_ref().map(|b| b.len()),
    })?;
    let (offset_x, offset_y, mask) = split_packed(&offset)?;
    Ok((
        g,
        Operands {
            input,
            offset_y,
            offset_x,
            mask: Some(mask),
            weight,
            bias,
        },
    ))
}

/// The output shape `[N, Cout, Ho, Wo]` of a call with tensors of these shapes (NCHW), or the
/// error the call would raise: the same validation, without any data. Frameworks that infer
/// shapes before running (MindSpore's `Custom`, tract) use it.
pub fn output_shape(
    input: &[usize],
    weight: &[usize],
    offset: &[usize],
    bias: Option<&[usize]>,
    attrs: &Attributes,
) -> Result<[usize; 4]> {
    let bias = match bias {
        Some(b) => Some(check_rank::<1>("bias", b)?[0]),
        None => None,
    };
    let g = attrs.params()?.validate(&ShapeSet {
        input: check_rank("x", input)?,
        weight: check_rank("weight", weight)?,
        offset: check_rank("offsets", offset)?,
        offset_per_tap: 3,
        mask: None,
        bias,
    })?;
    Ok(g.output_shape())
}

/// Backward of a packed convention; `grad_output` in `layout`.
pub(crate) fn packed_backward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    gate: GradGate,
    layout: Layout,
    backend: Backend,
) -> Result<Gradients<T>> {
    run_backward(
        g,
        ops,
        canonical(grad_output, layout),
        BackwardSpec {
            gate,
            layout,
            offsets: OffsetLayout::Packed,
            bias: true,
            backend,
        },
    )
}

/// `mindspore.ops.deformable_conv2d(x, weight, offsets, kernel_size, strides, padding, bias,
/// dilations, groups, deformable_groups, modulated)`.
pub fn deformable_conv2d<'a, T: Element>(
    x: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    offsets: ArrayView4<'a, T>,
    bias: Option<ArrayView1<'a, T>>,
    attrs: &Attributes,
) -> Result<Array4<T>> {
    let (g, ops) = packed_operands(x, weight, offsets, bias, attrs, Layout::Nchw)?;
    Ok(run_forward(&g, &ops, false, Layout::Nchw, attrs.backend)?.0)
}

/// Gradients of [`deformable_conv2d`]: input, packed offsets `[d dx | d dy | d mask]`, weight,
/// bias (always), with MindSpore CPU's per-tap rule.
pub fn deformable_conv2d_backward<'a, T: Element>(
    grad_output: ArrayView4<'a, T>,
    x: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    offsets: ArrayView4<'a, T>,
    bias: Option<ArrayView1<'a, T>>,
    attrs: &Attributes,
) -> Result<Gradients<T>> {
    let (g, ops) = packed_operands(x, weight, offsets, bias, attrs, Layout::Nchw)?;
    packed_backward(
        &g,
        &ops,
        grad_output,
        GradGate::PerTap,
        Layout::Nchw,
        attrs.backend,
    )
}
