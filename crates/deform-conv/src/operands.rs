//! The operands and outputs of one call, as strided ndarray views in canonical (NCHW-indexed)
//! order, with their checks against a [`Geometry`]. The engine and the reference both read these
//! types; [`crate::op`] sits on top and dispatches to one of them.

use crate::element::Element;
use crate::error::{DeformError, Result};
use crate::params::{DeformParams, Geometry, ShapeSet};
use ndarray::{ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4, Dimension};

/// The operands of one call, in canonical (NCHW-indexed) order; views may have any strides.
#[derive(Debug, Clone)]
pub struct Operands<'a, T> {
    /// Input `X[N, C, H, W]`.
    pub input: ArrayView4<'a, T>,
    /// Row offsets `dy[N, G*K, Ho, Wo]`.
    pub offset_y: ArrayView4<'a, T>,
    /// Column offsets `dx[N, G*K, Ho, Wo]`.
    pub offset_x: ArrayView4<'a, T>,
    /// Modulation mask `[N, G*K, Ho, Wo]`; `None` = DCN v1 (mask 1).
    pub mask: Option<ArrayView4<'a, T>>,
    /// Weight `Wt[Cout, C/Gc, kh, kw]`.
    pub weight: ArrayView4<'a, T>,
    /// Bias `b[Cout]`.
    pub bias: Option<ArrayView1<'a, T>>,
}

/// Where the forward writes: the output and, if wanted, the deformed image.
#[derive(Debug)]
pub struct ForwardOutputs<'a, T> {
    /// `Y[N, Cout, Ho, Wo]`; every element is written.
    pub output: ArrayViewMut4<'a, T>,
    /// `D[N, C, Ho*kh, Wo*kw]`; every element is written.
    pub deformed: Option<ArrayViewMut4<'a, T>>,
}

/// Where the backward writes; `None` skips that gradient. Every element of a given view is written
/// (overwritten, not accumulated).
#[derive(Debug, Default)]
pub struct GradOutputs<'a, T> {
    /// `dL/dX[N, C, H, W]`.
    pub input: Option<ArrayViewMut4<'a, T>>,
    /// `dL/d dy[N, G*K, Ho, Wo]`.
    pub offset_y: Option<ArrayViewMut4<'a, T>>,
    /// `dL/d dx[N, G*K, Ho, Wo]`.
    pub offset_x: Option<ArrayViewMut4<'a, T>>,
    /// `dL/d mask[N, G*K, Ho, Wo]` (only with a mask).
    pub mask: Option<ArrayViewMut4<'a, T>>,
    /// `dL/dWt[Cout, C/Gc, kh, kw]`.
    pub weight: Option<ArrayViewMut4<'a, T>>,
    /// `dL/db[Cout]`.
    pub bias: Option<ArrayViewMut1<'a, T>>,
}

/// `got == want`, or a shape error naming `name`.
pub(crate) fn same_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(DeformError::shape(name, format!("{want:?}"), got))
    }
}

impl<T: Element> Operands<'_, T> {
    /// Validates the operands against `params` and returns the geometry.
    pub fn geometry(&self, params: &DeformParams) -> Result<Geometry> {
        let dim = |a: &ArrayView4<'_, T>| -> [usize; 4] { a.raw_dim().into_pattern().into() };
        let g = params.validate(&ShapeSet {
            input: dim(&self.input),
            weight: dim(&self.weight),
            offset: dim(&self.offset_y),
            offset_per_tap: 1,
            mask: self.mask.as_ref().map(dim),
            bias: self.bias.as_ref().map(|b| b.len()),
        })?;
        same_shape("offset_x", self.offset_x.shape(), self.offset_y.shape())?;
        Ok(g)
    }

    /// The shapes of the operands against `g`: an error naming the tensor when one differs.
    pub(crate) fn check(&self, g: &Geometry) -> Result<()> {
        let tap = g.tap_shape();
        same_shape("input", self.input.shape(), &[g.n, g.c, g.h, g.w])?;
        same_shape("offset_y", self.offset_y.shape(), &tap)?;
        same_shape("offset_x", self.offset_x.shape(), &tap)?;
        if let Some(m) = &self.mask {
            same_shape("mask", m.shape(), &tap)?;
        }
        same_shape(
            "weight",
            self.weight.shape(),
            &[g.cout, g.c_per_group(), g.kh, g.kw],
        )?;
        if let Some(b) = &self.bias {
            same_shape("bias", b.shape(), &[g.cout])?;
        }
        Ok(())
    }
}
