//! DCNv3 / DCNv4 on the sampler (SPEC §6): per (output row, group, point) one row of bilinear
//! descriptors (`sample`), run across the group's channel run of the channels-last image by the
//! same row kernels as DCNv2 (`gather_row` forward; `dot4_row` and `scatter_row` backward).
//!
//! The input is already channels-last; each image is copied once into the accumulation type with
//! the zero pixel the descriptors point at for corners outside the image. The sampler takes
//! absolute positions (`y0 = x0 = 0`, no stride): `dy[t]`, `dx[t]` hold DCNv3's `y`, `x`.
//!
//! Forward: output rows in parallel, each row's sums formed point by point in a fixed order.
//! Backward: the rows of an image are dealt to `blocking::LANES` fixed lanes, each with its own
//! input-gradient image, reduced in lane order; offsets and masks get their gradients row by
//! row. Same bits for any thread count.

use super::blocking::LANES;
use super::kernels::{Isa, Kernels, RowJob};
use super::plan::kernels_for;
use super::sample::{RowArgs, RowSamples};
use super::threads::{self, for_each_item, PerWorker};
use crate::conventions::dcnv3::{Dcnv3Geometry, Dcnv3GradViews, Dcnv3Operands};
use crate::element::{Element, Real};
use crate::error::{DeformError, Result};
use crate::params::GradGate;
use ndarray::{ArrayView4, ArrayViewMut2, ArrayViewMut4, Axis};
use num_traits::{Float, FromPrimitive, One, Zero};

/// A zeroed vector of `len` accumulators, or an allocation error naming `what`.
fn zeros<A: Real>(what: &str, len: usize) -> Result<Vec<A>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| DeformError::Allocation {
            name: what.into(),
            bytes: len.saturating_mul(std::mem::size_of::<A>()),
            shape: vec![len],
        })?;
    v.resize(len, A::zero());
    Ok(v)
}

/// Image `n` channels-last in `xt` (`[H*W + 1, C]`, the last pixel zero), rows in parallel.
fn copy_image<T: Element>(input: &ArrayView4<'_, T>, n: usize, c: usize, xt: &mut [T::Acc]) {
    let img = input.index_axis(Axis(0), n);
    let row = img.shape()[1] * c;
    threads::for_each_chunk(xt, row.max(1), |y, dst, _| {
        if y < img.shape()[0] {
            for (d, v) in dst.iter_mut().zip(img.index_axis(Axis(0), y).iter()) {
                *d = v.to_acc();
            }
        } else {
            dst.fill(T::Acc::zero());
        }
    });
}

/// One row's scratch: positions, masks, descriptors, the sums and a point's samples.
struct RowScratch<A> {
    py: Vec<A>,
    px: Vec<A>,
    m: Vec<A>,
    s: RowSamples<A>,
    acc: Vec<A>,
    tmp: Vec<A>,
    dots: Vec<A>,
}

impl<A: Real> RowScratch<A> {
    fn new(wo: usize, c: usize) -> Self {
        RowScratch {
            py: vec![A::zero(); wo],
            px: vec![A::zero(); wo],
            m: vec![A::zero(); wo],
            s: RowSamples::new(wo),
            acc: vec![A::zero(); wo * c],
            tmp: vec![A::zero(); wo * c],
            dots: vec![A::zero(); 4 * wo],
        }
    }
}

/// The descriptors of point `p` of group `gi` on output row `oh` of image `n`.
#[allow(clippy::too_many_arguments)]
fn describe<T: Element>(
    g: &Dcnv3Geometry,
    k: &Kernels<T::Acc>,
    ops: &Dcnv3Operands<'_, T>,
    [n, oh, gi, p]: [usize; 4],
    gradients: bool,
    r: &mut RowScratch<T::Acc>,
) {
    let acc = |v: f64| T::Acc::from_f64(v).unwrap_or_else(T::Acc::nan);
    let scale = acc(g.scale);
    let (i, j) = g.tap(p);
    let (ti, tj) = (acc((i * g.dil[1]) as f64), acc((j * g.dil[0]) as f64));
    for ow in 0..g.wo {
        let (by, bx) = g.base(oh, ow);
        let off_x = ops.offset[[n, oh, ow, ops.layout.offset(gi, p, 0)]].to_acc();
        let off_y = ops.offset[[n, oh, ow, ops.layout.offset(gi, p, 1)]].to_acc();
        r.py[ow] = acc(by) + (tj + off_y) * scale;
        r.px[ow] = acc(bx) + (ti + off_x) * scale;
        r.m[ow] = ops.mask[[n, oh, ow, ops.layout.mask(gi, p)]].to_acc();
    }
    let args = RowArgs {
        y0: 0,
        x0: 0,
        sx: 0,
        dy: &r.py,
        dx: &r.px,
        m: &r.m,
        h: g.h,
        w: g.w,
        gate: GradGate::Open,
        gradients,
    };
    (k.sample_row)(&args, &mut r.s);
}

/// The forward into `out` (`[N, Ho, Wo, G*D]`, every element written).
pub(crate) fn forward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    mut out: ArrayViewMut4<'_, T>,
    isa: Isa,
) -> Result<()> {
    let k = kernels_for::<T::Acc>(isa)?;
    let c = g.c();
    if g.n == 0 || c == 0 || g.ho == 0 || g.wo == 0 {
        return Ok(());
    }
    let work = (g.n * g.ho * g.wo * g.points) as f64 * c as f64 * 4.0;
    threads::serial_if_small(work, || {
        let mut xt = zeros::<T::Acc>("input (channels-last copy)", (g.h * g.w + 1) * c)?;
        let scratch = PerWorker::new();
        for n in 0..g.n {
            copy_image(&ops.input, n, c, &mut xt);
            let mut image_out = out.index_axis_mut(Axis(0), n);
            let rows: Vec<(usize, ArrayViewMut2<'_, T>)> =
                image_out.axis_iter_mut(Axis(0)).enumerate().collect();
            for_each_item(rows, |(oh, mut row), w| {
                scratch.with(
                    w,
                    || RowScratch::new(g.wo, c),
                    |r| {
                        for gi in 0..g.g {
                            let lo = gi * g.d;
                            for p in 0..g.points {
                                describe(g, &k, ops, [n, oh, gi, p], false, r);
                                let job = RowJob {
                                    s: &r.s,
                                    n: g.wo,
                                    c,
                                    lo,
                                    len: g.d,
                                    stride: c,
                                };
                                if p == 0 {
                                    (k.gather_row)(&job, &xt, &mut r.acc[lo..]);
                                } else {
                                    (k.gather_row)(&job, &xt, &mut r.tmp[lo..]);
                                    for t in 0..g.wo {
                                        let at = t * c + lo;
                                        for (a, v) in
                                            r.acc[at..at + g.d].iter_mut().zip(&r.tmp[at..at + g.d])
                                        {
                                            *a += *v;
                                        }
                                    }
                                }
                            }
                        }
                        for (o, v) in row.iter_mut().zip(&r.acc) {
                            *o = T::from_acc(*v);
                        }
                    },
                )
            });
        }
        Ok(())
    })
}

/// One lane of an image's backward: its rows, its input-gradient image, its rows of the offset
/// and mask gradients.
struct Lane<'a, T, A> {
    rows: std::ops::Range<usize>,
    dx: &'a mut [A],
    offset: ndarray::ArrayViewMut3<'a, T>,
    /// `None`: the mask gradients go into `offset` (DCNv4's one tensor).
    mask: Option<ndarray::ArrayViewMut3<'a, T>>,
}

/// The backward into `grads` (every element written).
pub(crate) fn backward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    grads: Dcnv3GradViews<'_, T>,
    isa: Isa,
) -> Result<()> {
    let k = kernels_for::<T::Acc>(isa)?;
    let c = g.c();
    let Dcnv3GradViews {
        input: mut gin,
        offset: mut goff,
        mask: mut gmask,
    } = grads;
    if g.n == 0 || c == 0 {
        return Ok(());
    }
    let work = (g.n * g.ho * g.wo * g.points) as f64 * c as f64 * 12.0;
    let image = (g.h * g.w + 1) * c;
    threads::serial_if_small(work, || {
        let mut xt = zeros::<T::Acc>("input (channels-last copy)", image)?;
        let mut dx = zeros::<T::Acc>("input gradient lanes", image * LANES)?;
        let scratch = PerWorker::new();
        let one = T::Acc::one();
        let zero = T::Acc::zero();
        let scale = T::Acc::from_f64(g.scale).unwrap_or_else(T::Acc::nan);
        for n in 0..g.n {
            copy_image(&ops.input, n, c, &mut xt);
            dx.fill(zero);
            // Lane l: rows [l*Ho/L, (l+1)*Ho/L), contiguous, fixed by the shape alone.
            let mut lanes = Vec::with_capacity(LANES);
            let (mut off_rest, mut mask_rest) = (
                goff.index_axis_mut(Axis(0), n),
                gmask.as_mut().map(|m| m.index_axis_mut(Axis(0), n)),
            );
            let mut dx_rest: &mut [T::Acc] = &mut dx;
            let mut start = 0;
            for l in 0..LANES {
                let end = (l + 1) * g.ho / LANES;
                let (o, orest) = off_rest.split_at(Axis(0), end - start);
                let (m, mrest) = match mask_rest {
                    Some(v) => {
                        let (a, b) = v.split_at(Axis(0), end - start);
                        (Some(a), Some(b))
                    }
                    None => (None, None),
                };
                let (d, drest) = dx_rest.split_at_mut(image);
                lanes.push(Lane {
                    rows: start..end,
                    dx: d,
                    offset: o,
                    mask: m,
                });
                (off_rest, mask_rest, dx_rest, start) = (orest, mrest, drest, end);
            }
            for_each_item(lanes, |mut lane, w| {
                scratch.with(
                    w,
                    || RowScratch::new(g.wo, c),
                    |r| {
                        for oh in lane.rows.clone() {
                            let lr = oh - lane.rows.start;
                            for (d, v) in r.tmp.iter_mut().zip(
                                grad_output
                                    .index_axis(Axis(0), n)
                                    .index_axis(Axis(0), oh)
                                    .iter(),
                            ) {
                                *d = v.to_acc();
                            }
                            for gi in 0..g.g {
                                let lo = gi * g.d;
                                for p in 0..g.points {
                                    describe(g, &k, ops, [n, oh, gi, p], true, r);
                                    let job = RowJob {
                                        s: &r.s,
                                        n: g.wo,
                                        c,
                                        lo,
                                        len: g.d,
                                        stride: c,
                                    };
                                    r.dots.fill(zero);
                                    (k.dot4_row)(&job, &r.tmp[lo..], &xt, &mut r.dots);
                                    (k.scatter_row)(&job, &r.tmp[lo..], lane.dx);
                                    for (ow, a) in r.dots.chunks_exact(4).enumerate() {
                                        let s = &r.s;
                                        let (ly, lx, m) = (s.ly[ow], s.lx[ow], s.m[ow]);
                                        let (hy, hx) = (one - ly, one - lx);
                                        let (gy, gx, gm) = if s.grad[ow] {
                                            (
                                                m * (hx * (a[2] - a[0]) + lx * (a[3] - a[1])),
                                                m * (hy * (a[1] - a[0]) + ly * (a[3] - a[2])),
                                                hy * hx * a[0]
                                                    + hy * lx * a[1]
                                                    + ly * hx * a[2]
                                                    + ly * lx * a[3],
                                            )
                                        } else {
                                            (zero, zero, zero)
                                        };
                                        let l = ops.layout;
                                        lane.offset[[lr, ow, l.offset(gi, p, 0)]] =
                                            T::from_acc(gx * scale);
                                        lane.offset[[lr, ow, l.offset(gi, p, 1)]] =
                                            T::from_acc(gy * scale);
                                        let gmv = lane.mask.as_mut().unwrap_or(&mut lane.offset);
                                        gmv[[lr, ow, l.mask(gi, p)]] = T::from_acc(gm);
                                    }
                                }
                            }
                        }
                    },
                )
            });
            // dX = the lanes' sums in lane order, rows in parallel.
            let mut image_grad = gin.index_axis_mut(Axis(0), n);
            let rows: Vec<(usize, ArrayViewMut2<'_, T>)> =
                image_grad.axis_iter_mut(Axis(0)).enumerate().collect();
            let dx = &dx;
            for_each_item(rows, |(y, mut row), _| {
                let at = y * g.w * c;
                for (i, o) in row.iter_mut().enumerate() {
                    let mut s = dx[at + i];
                    for l in 1..LANES {
                        s += dx[l * image + at + i];
                    }
                    *o = T::from_acc(s);
                }
            });
        }
        Ok(())
    })
}
