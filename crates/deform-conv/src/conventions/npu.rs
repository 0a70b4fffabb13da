//! `torch_npu.npu_deformable_conv2d` and its backward `npu_deformable_conv2dbk`.
//!
//! MindSpore's packing (`[dx | dy | mask]`), `[1, 1, h, w]` strides and dilations,
//! `[top, bottom, left, right]` padding. The forward returns `(Y, D)`, `D` the deformed image
//! `[N, C, Ho*kh, Wo*kw]` (SPEC §1). Gradients are gated: zero for every sample outside
//! `(-1, H) x (-1, W)` (SPEC §2).
//!
//! With [`Layout::Nhwc`] (the channels-last reading of the torch_npu document): input
//! `[N, H, W, C]`, weight `[kh, kw, C/groups, Cout]`, offset `[N, Ho, Wo, 3*G*K]`, output
//! `[N, Ho, Wo, Cout]`, deformed image `[N, Ho*kh, Wo*kw, C]`, and gradients in the same layouts.

//!
//! ```
//! use deform_conv::conventions::npu::{npu_deformable_conv2d, npu_deformable_conv2dbk, NpuAttributes};
//! use deform_conv::{layout, Layout};
//! use ndarray::Array4;
//! // The torch_npu documentation's shapes, smaller: input [N, C, H, W], kernel 5x5, padding 2.
//! let x = Array4::<f32>::from_shape_fn((2, 4, 8, 8), |(n, c, y, x)| ((n * 7 + c * 3 + y * x) % 5) as f32);
//! let w = Array4::<f32>::from_elem((4, 4, 5, 5), 0.01);
//! let mut offset = Array4::<f32>::from_elem((2, 75, 8, 8), 0.3);
//! offset.slice_mut(ndarray::s![.., 50.., .., ..]).fill(1.0); // the mask block
//! let mut a = NpuAttributes::new([5, 5]);
//! a.attrs.padding = vec![2, 2, 2, 2];
//! let (y, d) = npu_deformable_conv2d(x.view(), w.view(), offset.view(), None, &a)?;
//! assert_eq!((y.shape(), d.shape()), (&[2, 4, 8, 8][..], &[2, 4, 40, 40][..]));
//! let g = npu_deformable_conv2dbk(x.view(), Array4::ones(y.raw_dim()).view(), d.view(), w.view(), offset.view(), &a)?;
//! assert_eq!(g.bias.len(), 4);
//! // The channels-last reading: NHWC input and offset, HWCN weight; the same numbers.
//! a.layout = Layout::Nhwc;
//! let (y2, _) = npu_deformable_conv2d(
//!     layout::nchw_to_nhwc(x.view())?.view(),
//!     layout::oihw_to_hwcn(w.view())?.view(),
//!     layout::nchw_to_nhwc(offset.view())?.view(),
//!     None,
//!     &a,
//! )?;
//! assert_eq!(layout::nhwc_to_nchw(y2.view())?, y);
//! # Ok::<(), deform_conv::DeformError>(())
//! ```

use super::mindspore::{packed_backward, packed_operands, Attributes};
use super::{canonical, dims, forward as run_forward, Layout};
use crate::element::Element;
use crate::error::{DeformError, Result};
use crate::op::Operands;
use crate::params::GradGate;
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};

/// torch_npu's attributes plus the tensor layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpuAttributes {
    /// The packed convention's attributes.
    pub attrs: Attributes,
    /// NCHW (default, what torch_npu really takes) or NHWC (its document's reading).
    pub layout: Layout,
}

/// The four gradients `npu_deformable_conv2dbk` returns.
#[derive(Debug, Clone)]
pub struct NpuGradients<T> {
    /// `grad_input`, shaped like the input.
    pub input: Array4<T>,
    /// `grad_weight`, shaped like the weight.
    pub weight: Array4<T>,
    /// `grad_offset`, packed `[d dx | d dy | d mask]`, shaped like the offset.
    pub offset: Array4<T>,
    /// `grad_bias [Cout]`, always present.
    pub bias: Array1<T>,
}

/// `npu_deformable_conv2d(input, weight, offset, bias, kernel_size, stride, padding, dilation,
/// groups, deformable_groups, modulated)` → `(output, deformed image)`.
pub fn npu_deformable_conv2d<'a, T: Element>(
    input: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    bias: Option<ArrayView1<'a, T>>,
    a: &NpuAttributes,
) -> Result<(Array4<T>, Array4<T>)> {
    let (g, ops) = packed_operands(input, weight, offset, bias, &a.attrs, a.layout)?;
    let (y, d) = run_forward(&g, &ops, true, a.layout, a.attrs.backend)?;
    Ok((y, d.expect("the deformed image was requested")))
}

/// `npu_deformable_conv2dbk(input, grad_output, offset_out, weight, offset, ...)` →
/// `(grad_input, grad_weight, grad_offset, grad_bias)`.
///
/// `offset_out` is the forward's deformed image; its shape is checked, and the columns are
/// recomputed from `input` and `offset` (equal to `offset_out` for a consistent call).
pub fn npu_deformable_conv2dbk<'a, T: Element>(
    input: ArrayView4<'a, T>,
    grad_output: ArrayView4<'a, T>,
    offset_out: ArrayView4<'a, T>,
    weight: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    a: &NpuAttributes,
) -> Result<NpuGradients<T>> {
    let (g, ops): (_, Operands<'_, T>) = packed_operands(
        input,
        weight,
        offset,
        None::<ArrayView1<'_, T>>,
        &a.attrs,
        a.layout,
    )?;
    let got = offset_out.shape().to_vec();
    if dims(&canonical(offset_out, a.layout)) != g.deformed_shape() {
        let [n, c, hd, wd] = g.deformed_shape();
        let want = match a.layout {
            Layout::Nchw => [n, c, hd, wd],
            Layout::Nhwc => [n, hd, wd, c],
        };
        return Err(DeformError::shape(
            "offset_out",
            format!("{want:?} (the forward's deformed image)"),
            &got,
        ));
    }
    let gr = packed_backward(
        &g,
        &ops,
        grad_output,
        GradGate::Open,
        a.layout,
        a.attrs.backend,
    )?;
    Ok(NpuGradients {
        input: gr.input,
        weight: gr.weight,
        offset: gr.offset,
        bias: gr
            .bias
            .expect("packed backward always computes the bias gradient"),
    })
}

impl NpuAttributes {
    /// NCHW attributes with the given kernel and defaults elsewhere.
    pub fn new(kernel_size: [i64; 2]) -> Self {
        NpuAttributes {
            attrs: Attributes::new(kernel_size),
            layout: Layout::Nchw,
        }
    }
}
