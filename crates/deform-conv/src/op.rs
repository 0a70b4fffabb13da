//! The canonical operator over ndarray views, with the backend behind it.
//!
//! Every convention reduces to this: split offsets `dy`, `dx` and a mask, each `[N, G*K, Ho, Wo]`
//! with any strides (an interleaved or packed tensor, NCHW or NHWC, is just a strided view), and
//! output views with any strides (so channels-last results are written in place). SPEC §1:
//!
//! ```text
//! py = oh*stride_h - pad_top  + i*dil_h + dy[n, g*K + k, oh, ow]
//! px = ow*stride_w - pad_left + j*dil_w + dx[n, g*K + k, oh, ow]
//! col[n, c, k, oh, ow] = mask[n, g*K + k, oh, ow] * bilinear(X[n, c], py, px)
//! Y[n, o, oh, ow] = b[o] + sum_{c in group(o), k} Wt[o, c', i, j] * col[n, c, k, oh, ow]
//! D[n, c, oh*kh + i, ow*kw + j] = col[n, c, i*kw + j, oh, ow]
//! ```

use crate::element::Element;
use crate::error::{DeformError, Result};
use crate::operands::same_shape;
pub use crate::operands::{ForwardOutputs, GradOutputs, Operands};
use crate::params::{Geometry, GradGate};
use ndarray::ArrayView4;

/// Which implementation computes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The fast engine (`crate::engine`): channels-last sampling feeding a GEMM.
    #[default]
    Engine,
    /// The fast engine with a forced instruction set (an error if this CPU lacks it).
    EngineIsa(crate::engine::Isa),
    /// The plain reference (`crate::reference`): loops shaped like the formulas; the test oracle.
    Reference,
}

/// Forward: writes `Y` (and `D` if asked) for operands already validated into `g`.
///
/// The shapes of the operands and outputs are checked again here, so a caller that builds its
/// own views gets an error, not a panic, when they disagree with `g`.
pub fn forward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    out: ForwardOutputs<'_, T>,
    backend: Backend,
) -> Result<()> {
    ops.check(g)?;
    same_shape("output", out.output.shape(), &g.output_shape())?;
    if let Some(d) = &out.deformed {
        same_shape("deformed image", d.shape(), &g.deformed_shape())?;
    }
    match backend {
        Backend::Engine | Backend::EngineIsa(_) if !crate::engine::supports(g) => {
            crate::reference::forward(g, ops, out);
            Ok(())
        }
        Backend::Engine => crate::engine::forward(g, ops, out, crate::engine::active_isa()),
        Backend::EngineIsa(isa) => crate::engine::forward(g, ops, out, isa),
        Backend::Reference => {
            crate::reference::forward(g, ops, out);
            Ok(())
        }
    }
}

/// Backward: from `grad_output[N, Cout, Ho, Wo]`, writes the gradients asked for in `grads`,
/// with the offset/mask gradient rule `gate` (SPEC §2).
pub fn backward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    grads: GradOutputs<'_, T>,
    gate: GradGate,
    backend: Backend,
) -> Result<()> {
    ops.check(g)?;
    same_shape("grad_output", grad_output.shape(), &g.output_shape())?;
    let tap = g.tap_shape();
    if let Some(v) = &grads.input {
        same_shape("grad_input", v.shape(), &[g.n, g.c, g.h, g.w])?;
    }
    if let Some(v) = &grads.offset_y {
        same_shape("grad_offset_y", v.shape(), &tap)?;
    }
    if let Some(v) = &grads.offset_x {
        same_shape("grad_offset_x", v.shape(), &tap)?;
    }
    if let Some(v) = &grads.mask {
        if ops.mask.is_none() {
            return Err(DeformError::parameter(
                "grad_mask",
                "no mask gradient for a call without a mask",
                "a mask gradient buffer",
            ));
        }
        same_shape("grad_mask", v.shape(), &tap)?;
    }
    if let Some(v) = &grads.weight {
        same_shape(
            "grad_weight",
            v.shape(),
            &[g.cout, g.c_per_group(), g.kh, g.kw],
        )?;
    }
    if let Some(v) = &grads.bias {
        same_shape("grad_bias", v.shape(), &[g.cout])?;
    }
    match backend {
        Backend::Engine | Backend::EngineIsa(_) if !crate::engine::supports(g) => {
            crate::reference::backward(g, ops, grad_output, grads, gate);
            Ok(())
        }
        Backend::Engine => crate::engine::backward(
            g,
            ops,
            grad_output,
            grads,
            gate,
            crate::engine::active_isa(),
        ),
        Backend::EngineIsa(isa) => crate::engine::backward(g, ops, grad_output, grads, gate, isa),
        Backend::Reference => {
            crate::reference::backward(g, ops, grad_output, grads, gate);
            Ok(())
        }
    }
}
