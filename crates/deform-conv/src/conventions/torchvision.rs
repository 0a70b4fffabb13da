//! `torchvision.ops.deform_conv2d` (also mmcv's layout).
//!
//! ```text
//! input  [N, C, H, W]          weight [Cout, C/Gc, kh, kw]        bias [Cout] (optional)
//! offset [N, 2*G*K, Ho, Wo]    channel 2*(g*K + k) = dy, 2*(g*K + k) + 1 = dx
//! mask   [N, G*K, Ho, Wo]      optional (None = DCN v1)
//! output [N, Cout, Ho, Wo]     Ho = trunc((H + 2*pad_h - dil_h*(kh-1) - 1) / stride_h) + 1
//! ```
//!
//! Groups are inferred: `Gc = C / weight.shape[1]`, `G = offset.shape[1] / (2*kh*kw)`. Padding is
//! symmetric. Offset and mask gradients follow the per-tap rule (no gate at -1, SPEC §2).
//!
//! ```
//! use deform_conv::conventions::torchvision::{deform_conv2d, Params};
//! use ndarray::{Array1, Array4};
//! let x = Array4::<f64>::ones((1, 2, 5, 5));
//! let w = Array4::<f64>::ones((3, 2, 3, 3));
//! let offset = Array4::<f64>::zeros((1, 18, 3, 3));
//! let y = deform_conv2d(x.view(), offset.view(), w.view(), None, None, &Params::default()).unwrap();
//! assert_eq!(y.shape(), &[1, 3, 3, 3]);
//! assert_eq!(y[[0, 0, 1, 1]], 18.0); // zero offsets: a plain convolution
//! ```

use super::{
    backward as run_backward, dims, forward as run_forward, BackwardSpec, Gradients, Layout,
    OffsetLayout,
};
use crate::element::Element;
use crate::error::{DeformError, Result};
use crate::layout::split_interleaved;
use crate::op::{Backend, Operands};
use crate::params::{DeformParams, Geometry, GradGate, OutputRounding, ShapeSet};
use ndarray::{Array4, ArrayView1, ArrayView4};

/// torchvision's scalar parameters: `(h, w)` pairs; an int `p` is `[p, p]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `stride` `(h, w)`.
    pub stride: [i64; 2],
    /// Symmetric `padding` `(h, w)`.
    pub padding: [i64; 2],
    /// `dilation` `(h, w)`.
    pub dilation: [i64; 2],
    /// Which implementation computes.
    pub backend: Backend,
    /// The offset/mask gradient rule at the border: [`GradGate::PerTap`] is torchvision's;
    /// [`GradGate::Open`] is mmcv's (same layouts, gradients zero outside `(-1, H) x (-1, W)`).
    pub gate: GradGate,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            backend: Backend::Engine,
            gate: GradGate::PerTap,
        }
    }
}

/// Infers `(groups, deformable_groups)` from the shapes as torchvision does, with clear errors.
pub fn infer_groups(
    input: [usize; 4],
    offset: [usize; 4],
    weight: [usize; 4],
) -> Result<(i64, i64)> {
    let c = input[1];
    let [_, cg, kh, kw] = weight;
    if cg == 0 || !c.is_multiple_of(cg) {
        return Err(DeformError::shape(
            "weight",
            format!("[Cout, C/groups, kh, kw] with C/groups a divisor of C = {c}"),
            &weight,
        ));
    }
    let taps2 = kh
        .checked_mul(kw)
        .and_then(|k| k.checked_mul(2))
        .unwrap_or(0);
    if taps2 == 0 || offset[1] == 0 || !offset[1].is_multiple_of(taps2) {
        return Err(DeformError::shape(
            "offset",
            format!("[N, 2*deformable_groups*kh*kw, Ho, Wo]: channels a positive multiple of 2*kh*kw = {taps2}"),
            &offset,
        ));
    }
    let gc = i64::try_from(c / cg).unwrap_or(i64::MAX);
    let g = i64::try_from(offset[1] / taps2).unwrap_or(i64::MAX);
    Ok((gc, g))
}

fn geometry<T: Element>(
    input: &ArrayView4<'_, T>,
    offset: &ArrayView4<'_, T>,
    weight: &ArrayView4<'_, T>,
    bias: Option<&ArrayView1<'_, T>>,
    mask: Option<&ArrayView4<'_, T>>,
    p: &Params,
) -> Result<Geometry> {
    let (groups, deformable_groups) = infer_groups(dims(input), dims(offset), dims(weight))?;
    DeformParams {
        kernel: None,
        stride: p.stride,
        padding: [p.padding[0], p.padding[0], p.padding[1], p.padding[1]],
        dilation: p.dilation,
        groups,
        deformable_groups,
        rounding: OutputRounding::TruncateTowardZero,
    }
    .validate(&ShapeSet {
        input: dims(input),
        weight: dims(weight),
        offset: dims(offset),
        offset_per_tap: 2,
        mask: mask.map(dims),
        bias: bias.map(|b| b.len()),
    })
}

fn operands<'a, T: Element>(
    input: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    bias: Option<ArrayView1<'a, T>>,
    mask: Option<ArrayView4<'a, T>>,
) -> Result<Operands<'a, T>> {
    let (offset_y, offset_x) = split_interleaved(&offset)?;
    Ok(Operands {
        input,
        offset_y,
        offset_x,
        mask,
        weight,
        bias,
    })
}

/// `torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)`.
pub fn deform_conv2d<'a, T: Element>(
    input: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    bias: Option<ArrayView1<'a, T>>,
    mask: Option<ArrayView4<'a, T>>,
    p: &Params,
) -> Result<Array4<T>> {
    let g = geometry(&input, &offset, &weight, bias.as_ref(), mask.as_ref(), p)?;
    let ops = operands(input, offset, weight, bias, mask)?;
    Ok(run_forward(&g, &ops, false, Layout::Nchw, p.backend)?.0)
}

/// Gradients of [`deform_conv2d`] for `grad_output [N, Cout, Ho, Wo]`: input, offset
/// (interleaved), mask (when given), weight, bias (when given).
pub fn deform_conv2d_backward<'a, T: Element>(
    grad_output: ArrayView4<'a, T>,
    input: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    bias: Option<ArrayView1<'a, T>>,
    mask: Option<ArrayView4<'a, T>>,
    p: &Params,
) -> Result<Gradients<T>> {
    let g = geometry(&input, &offset, &weight, bias.as_ref(), mask.as_ref(), p)?;
    let has_bias = bias.is_some();
    let ops = operands(input, offset, weight, bias, mask)?;
    run_backward(
        &g,
        &ops,
        grad_output,
        BackwardSpec {
            gate: p.gate,
            layout: Layout::Nchw,
            offsets: OffsetLayout::Interleaved,
            bias: has_bias,
            backend: p.backend,
        },
    )
}
