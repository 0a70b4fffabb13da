//! ONNX `DeformConv` (opset 19).
//!
//! ```text
//! X [N, C, H, W]   W [Cout, C/group, kh, kw]   offset [N, 2*offset_group*K, Ho, Wo] (interleaved dy, dx)
//! B [Cout] (optional)   mask [N, offset_group*K, Ho, Wo] (optional, default ones)
//! pads [top, left, bottom, right]   strides, dilations [h, w]   kernel_shape [kh, kw] (optional)
//! Y [N, Cout, Ho, Wo],  Ho = floor((H + top + bottom - dil_h*(kh-1) - 1) / stride_h) + 1
//! ```
//!
//! ONNX defines no gradient for this operator.

//!
//! ```
//! use deform_conv::conventions::onnx::{deform_conv, Attributes};
//! use ndarray::{Array1, Array4};
//! // X [1, 4, 6, 6], W [2, 2, 3, 3] with group = 2, offset_group = 2, pads [top, left, bottom, right].
//! let x = Array4::<f32>::from_shape_fn((1, 4, 6, 6), |(_, c, y, x)| (c * 36 + y * 6 + x) as f32);
//! let w = Array4::<f32>::from_elem((2, 2, 3, 3), 0.5);
//! let offset = Array4::<f32>::from_elem((1, 2 * 2 * 9, 6, 6), 0.25); // interleaved (dy, dx)
//! let b = Array1::from(vec![1.0f32, -1.0]);
//! let attrs = Attributes { group: 2, offset_group: 2, pads: Some(vec![1, 1, 1, 1]), ..Attributes::default() };
//! let y = deform_conv(x.view(), w.view(), offset.view(), Some(b.view()), None, &attrs)?;
//! assert_eq!(y.shape(), &[1, 2, 6, 6]);
//! # Ok::<(), deform_conv::DeformError>(())
//! ```

use super::{dims, forward as run_forward, list, Layout};
use crate::element::Element;
use crate::error::Result;
use crate::layout::split_interleaved;
use crate::op::{Backend, Operands};
use crate::params::{DeformParams, OutputRounding, ShapeSet};
use ndarray::{Array4, ArrayView1, ArrayView4};

/// The operator's attributes; `None` takes the ONNX default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `dilations [h, w]`, default `[1, 1]`.
    pub dilations: Option<Vec<i64>>,
    /// `group`, default 1.
    pub group: i64,
    /// `kernel_shape [kh, kw]`, default from `W`.
    pub kernel_shape: Option<Vec<i64>>,
    /// `offset_group`, default 1.
    pub offset_group: i64,
    /// `pads [top, left, bottom, right]`, default zeros.
    pub pads: Option<Vec<i64>>,
    /// `strides [h, w]`, default `[1, 1]`.
    pub strides: Option<Vec<i64>>,
    /// Which implementation computes.
    pub backend: Backend,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes {
            dilations: None,
            group: 1,
            kernel_shape: None,
            offset_group: 1,
            pads: None,
            strides: None,
            backend: Backend::Engine,
        }
    }
}

impl Attributes {
    /// The canonical parameters these attributes stand for.
    pub fn params(&self) -> Result<DeformParams> {
        let pads = match &self.pads {
            Some(p) => list::<4>("pads", p)?,
            None => [0; 4],
        };
        Ok(DeformParams {
            kernel: self
                .kernel_shape
                .as_deref()
                .map(|k| list::<2>("kernel_shape", k))
                .transpose()?,
            stride: self
                .strides
                .as_deref()
                .map(|v| list::<2>("strides", v))
                .transpose()?
                .unwrap_or([1, 1]),
            // ONNX orders pads [top, left, bottom, right]; ours is [top, bottom, left, right].
            padding: [pads[0], pads[2], pads[1], pads[3]],
            dilation: self
                .dilations
                .as_deref()
                .map(|v| list::<2>("dilations", v))
                .transpose()?
                .unwrap_or([1, 1]),
            groups: self.group,
            deformable_groups: self.offset_group,
            rounding: OutputRounding::Floor,
        })
    }
}

/// `DeformConv(X, W, offset, B, mask)`.
pub fn deform_conv<'a, T: Element>(
    x: ArrayView4<'a, T>,
    w: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    b: Option<ArrayView1<'a, T>>,
    mask: Option<ArrayView4<'a, T>>,
    attrs: &Attributes,
) -> Result<Array4<T>> {
    let g = attrs.params()?.validate(&ShapeSet {
        input: dims(&x),
        weight: dims(&w),
        offset: dims(&offset),
        offset_per_tap: 2,
        mask: mask.as_ref().map(dims),
        bias: b.as_ref().map(|b| b.len()),
    })?;
    let (offset_y, offset_x) = split_interleaved(&offset)?;
    let ops = Operands {
        input: x,
        offset_y,
        offset_x,
        mask,
        weight: w,
        bias: b,
    };
    Ok(run_forward(&g, &ops, false, Layout::Nchw, attrs.backend)?.0)
}
