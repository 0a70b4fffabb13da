//! The sampler: bilinear descriptors for one output row of one (deformable group, tap), shared
//! by every channel of the group, by the forward and by the backward.
//!
//! The image is stored channels-last with one extra all-zero pixel at index `H*W`. A corner
//! outside the image points at that zero pixel, so the channel loops that use a descriptor have
//! no branches: `S(c) = sum_j w_j * X[idx_j, c]` is exactly SPEC §1's zero-extended bilinear
//! formula. A sample outside the region (`(-1, H) x (-1, W)`, or for [`GradGate::PerTap`]'s
//! gradient also exactly -1), NaN or infinite, gets four zero-pixel corners and zero weights:
//! no index is ever formed from its coordinates.
//!
//! Descriptors are computed a row at a time into a structure of arrays, inside the
//! instruction-set-specific kernels (so `floor` is one instruction and the loop vectorises).

use crate::element::Real;
use crate::params::GradGate;

/// The descriptors of one output row for one (deformable group, tap), indexed by `ow`.
#[derive(Debug, Default)]
pub(crate) struct RowSamples<A> {
    /// Pixel indices `y*W + x` of the corners (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1); `H*W`
    /// (the zero pixel) for a corner outside the image or a sample outside the region. `u32`:
    /// the engine runs images of fewer than 2^31 pixels ([`super::supports`]).
    pub idx: [Vec<u32>; 4],
    /// `m*hy*hx, m*hy*lx, m*ly*hx, m*ly*lx` for samples strictly inside `(-1, H) x (-1, W)`, else 0.
    pub w: [Vec<A>; 4],
    /// Fractional parts `ly`, `lx` (0 outside the region).
    pub ly: Vec<A>,
    pub lx: Vec<A>,
    /// The mask value.
    pub m: Vec<A>,
    /// Strictly inside `(-1, H) x (-1, W)`: the sample has a value, a mask and an input gradient.
    pub open: Vec<bool>,
    /// Receives offset gradients: `open`, or for [`GradGate::PerTap`] also exactly on -1.
    pub grad: Vec<bool>,
}

/// The first `n` samples' four corner indices and weights, and the largest index (the explicit
/// kernels check the furthest corner run against the image once per row).
pub(crate) struct Corners<'a, A> {
    pub idx: [&'a [u32]; 4],
    pub w: [&'a [A]; 4],
    pub top: usize,
}

impl<A: Real> RowSamples<A> {
    /// [`Corners`] of the first `n` samples (inlined: the maximum vectorises for the caller's
    /// instruction set).
    #[inline(always)]
    pub(crate) fn corners(&self, n: usize) -> Corners<'_, A> {
        let idx: [&[u32]; 4] = std::array::from_fn(|j| &self.idx[j][..n]);
        let top = idx
            .iter()
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .max()
            .unwrap_or(0) as usize;
        Corners {
            idx,
            w: std::array::from_fn(|j| &self.w[j][..n]),
            top,
        }
    }

    pub fn new(len: usize) -> Self {
        let z = || vec![A::zero(); len];
        RowSamples {
            idx: std::array::from_fn(|_| vec![0u32; len]),
            w: std::array::from_fn(|_| z()),
            ly: z(),
            lx: z(),
            m: z(),
            open: vec![false; len],
            grad: vec![false; len],
        }
    }
}

/// The inputs of one row: `py = y0 + dy[t]`, `px = x0 + t*sx + dx[t]`, mask `m[t]`.
pub(crate) struct RowArgs<'a, A> {
    /// Integer grid row `oh*stride_h - pad_top + i*dil_h`.
    pub y0: i64,
    /// Integer grid column of `ow = 0`: `-pad_left + j*dil_w`.
    pub x0: i64,
    /// `stride_w`.
    pub sx: i64,
    pub dy: &'a [A],
    pub dx: &'a [A],
    /// Mask values; empty for DCN v1 (mask 1).
    pub m: &'a [A],
    pub h: usize,
    pub w: usize,
    /// Which samples get descriptors: [`GradGate::Open`] for the forward.
    pub gate: GradGate,
    /// Sample `t`'s descriptors go to entry `at + t` of the output (the point core keeps a
    /// group's points one after the other in one [`RowSamples`]).
    pub at: usize,
    /// Also fill `ly`, `lx`, `m`, `open` and `grad` (the backward's offset, mask and input
    /// gradients). The columns need only `idx` and `w`: skipping the rest is a fifth of the
    /// descriptor work.
    pub gradients: bool,
}

impl<A> RowArgs<'_, A> {
    /// Can the row's integer grid columns `x0 + t*sx` and pixel indices be formed in i32 lanes?
    /// The SIMD bodies need it; when not, they run the portable body.
    pub fn fits_i32_lanes(&self) -> bool {
        let n = self.dy.len() as i64;
        let last = self.x0.checked_add((n - 1).max(0).saturating_mul(self.sx));
        let fits = |v: i64| v >= i32::MIN as i64 && v <= i32::MAX as i64;
        let image = (self.h as u64).saturating_mul(self.w as u64) < i32::MAX as u64;
        fits(self.x0) && last.is_some_and(fits) && fits(self.sx) && image
    }
}

/// Fills `out` for the row `a` (`a.dy.len()` samples). Written once; compiled per instruction set
/// by the kernels module.
#[inline(always)]
pub(crate) fn sample_row_body<A: Real>(a: &RowArgs<'_, A>, out: &mut RowSamples<A>) {
    let one = A::one();
    let zero = A::zero();
    let (hf, wf) = (A::of_i64(a.h as i64), A::of_i64(a.w as i64));
    let outside = a.h * a.w;
    let n = a.dy.len();
    let (dy, dx) = (&a.dy[..n], &a.dx[..n]);
    let r = a.at..a.at + n;
    let [i0, i1, i2, i3] = &mut out.idx;
    let (i0, i1, i2, i3) = (
        &mut i0[r.clone()],
        &mut i1[r.clone()],
        &mut i2[r.clone()],
        &mut i3[r.clone()],
    );
    let [w0, w1, w2, w3] = &mut out.w;
    let (w0, w1, w2, w3) = (
        &mut w0[r.clone()],
        &mut w1[r.clone()],
        &mut w2[r.clone()],
        &mut w3[r.clone()],
    );
    let (oly, olx, om) = (
        &mut out.ly[r.clone()],
        &mut out.lx[r.clone()],
        &mut out.m[r.clone()],
    );
    let (oopen, ograd) = (&mut out.open[r.clone()], &mut out.grad[r]);
    let y0 = A::of_i64(a.y0);
    let per_tap = a.gate == GradGate::PerTap;
    let (h, w) = (a.h as i32, a.w as i32);
    let outside = outside as i32;
    for t in 0..n {
        let py = y0 + dy[t];
        let px = A::of_i64(a.x0 + t as i64 * a.sx) + dx[t];
        let m = if a.m.is_empty() { one } else { a.m[t] };
        let open = (py > -one) & (px > -one) & (py < hf) & (px < wf);
        let closed = (py >= -one) & (px >= -one) & (py < hf) & (px < wf);
        let grad = if per_tap { closed } else { open };
        // Outside the region every coordinate is replaced by 0 before any index is formed.
        let (py, px) = if grad { (py, px) } else { (zero, zero) };
        let (fy, fx) = (py.floor(), px.floor());
        let (ly, lx) = (py - fy, px - fx);
        let (hy, hx) = (one - ly, one - lx);
        // In the region -1 <= floor <= size - 1 < 2^31: the casts are exact.
        let (yi, xi) = (fy.to_i32_sat(), fx.to_i32_sat());
        let (y_lo, y_hi) = (grad & (yi >= 0), grad & (yi + 1 < h));
        let (x_lo, x_hi) = (grad & (xi >= 0), grad & (xi + 1 < w));
        let base = yi * w + xi;
        i0[t] = (if y_lo & x_lo { base } else { outside }) as u32;
        i1[t] = (if y_lo & x_hi { base + 1 } else { outside }) as u32;
        i2[t] = (if y_hi & x_lo { base + w } else { outside }) as u32;
        i3[t] = (if y_hi & x_hi { base + w + 1 } else { outside }) as u32;
        let mo = if open { m } else { zero };
        w0[t] = mo * (hy * hx);
        w1[t] = mo * (hy * lx);
        w2[t] = mo * (ly * hx);
        w3[t] = mo * (ly * lx);
        if a.gradients {
            oly[t] = ly;
            olx[t] = lx;
            om[t] = m;
            oopen[t] = open;
            ograd[t] = grad;
        }
    }
}
