//! The sampler: one bilinear descriptor per (pixel, tap, deformable group), shared by every
//! channel of the group, by the forward and by the backward.
//!
//! The image is stored channels-last with one extra all-zero pixel at index `H*W`. A corner
//! outside the image points at that zero pixel, so the channel loops that use a descriptor have
//! no branches: `S(c) = sum_j w_j * X[idx_j, c]` is exactly SPEC §1's zero-extended bilinear
//! formula. A sample outside `(-1, H) x (-1, W)`, NaN or infinite, gets four zero-pixel corners
//! and zero weights: no index is ever formed from its coordinates.

use crate::element::Real;
use crate::params::GradGate;

/// Where and how to sample one (pixel, tap, group).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample<A> {
    /// Pixel indices `y*W + x` of the corners (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1); `H*W`
    /// (the zero pixel) for a corner outside the image.
    pub idx: [usize; 4],
    /// `m*hy*hx, m*hy*lx, m*ly*hx, m*ly*lx` inside the open box, else 0.
    pub w: [A; 4],
    /// Fractional parts `ly`, `lx` (0 outside the gradient region).
    pub ly: A,
    pub lx: A,
    /// The mask value (1 for v1).
    pub m: A,
    /// Strictly inside `(-1, H) x (-1, W)`: the sample has a value, a mask and an input gradient.
    pub open: bool,
    /// Receives offset gradients: `open`, or for [`GradGate::PerTap`] also exactly on -1.
    pub grad: bool,
}

/// Builds the descriptor of the sample at `(py, px)` with mask `m` in an `h x w` image.
#[inline(always)]
pub(crate) fn sample<A: Real>(py: A, px: A, m: A, h: usize, w: usize, gate: GradGate) -> Sample<A> {
    let one = A::one();
    let zero = A::zero();
    let (hf, wf) = (A::of_i64(h as i64), A::of_i64(w as i64));
    let open = py > -one && px > -one && py < hf && px < wf;
    let grad = match gate {
        GradGate::Open => open,
        GradGate::PerTap => py >= -one && px >= -one && py < hf && px < wf,
    };
    let outside = h * w;
    if !grad {
        return Sample {
            idx: [outside; 4],
            w: [zero; 4],
            ly: zero,
            lx: zero,
            m,
            open: false,
            grad: false,
        };
    }
    let (y0, x0) = (py.floor(), px.floor());
    let (ly, lx) = (py - y0, px - x0);
    let (hy, hx) = (one - ly, one - lx);
    // In the gradient region -1 <= y0 <= h-1 and -1 <= x0 <= w-1: these casts are exact.
    let yi = y0.to_i64().unwrap_or(-1);
    let xi = x0.to_i64().unwrap_or(-1);
    let at = |y: i64, x: i64| {
        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
            y as usize * w + x as usize
        } else {
            outside
        }
    };
    let idx = [
        at(yi, xi),
        at(yi, xi + 1),
        at(yi + 1, xi),
        at(yi + 1, xi + 1),
    ];
    let w = if open {
        [m * (hy * hx), m * (hy * lx), m * (ly * hx), m * (ly * lx)]
    } else {
        [zero; 4]
    };
    Sample {
        idx,
        w,
        ly,
        lx,
        m,
        open,
        grad,
    }
}
