//! DCNv3 / DCNv4 (SPEC §6) as plain loops: one sample at a time, every sum in `T::Acc`.

use super::points::corners;
use crate::conventions::dcnv3::{Dcnv3Geometry, Dcnv3GradViews, Dcnv3Operands};
use crate::element::Element;
use ndarray::{ArrayView4, ArrayViewMut4};
use num_traits::{Float, FromPrimitive, One, Zero};

/// The sample position `(y, x)` of point `p` at output `(n, oh, ow)`, group `gi`.
fn position<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    [n, oh, ow, gi, p]: [usize; 5],
) -> (T::Acc, T::Acc) {
    let acc = |v: f64| T::Acc::from_f64(v).unwrap_or_else(T::Acc::nan);
    let scale = acc(g.scale);
    let (i, j) = g.tap(p);
    let (by, bx) = g.base(oh, ow);
    let off_x = ops.offset[[n, oh, ow, ops.layout.offset(gi, p, 0)]].to_acc();
    let off_y = ops.offset[[n, oh, ow, ops.layout.offset(gi, p, 1)]].to_acc();
    let y = acc(by) + (acc((j * g.dil[0]) as f64) + off_y) * scale;
    let x = acc(bx) + (acc((i * g.dil[1]) as f64) + off_x) * scale;
    (y, x)
}

/// `out[n, oh, ow, g*D + c] = sum_p mask * bilinear(X, y, x)`.
pub fn forward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    mut out: ArrayViewMut4<'_, T>,
) {
    for n in 0..g.n {
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                for gi in 0..g.g {
                    for c in 0..g.d {
                        let ch = gi * g.d + c;
                        let mut sum = T::Acc::zero();
                        for p in 0..g.points {
                            let (y, x) = position(g, ops, [n, oh, ow, gi, p]);
                            let m = ops.mask[[n, oh, ow, ops.layout.mask(gi, p)]].to_acc();
                            if let Some((_, _, cs)) = corners(g.h, g.w, y, x) {
                                let mut v = T::Acc::zero();
                                for ((r, col), _, wgt) in cs {
                                    v += wgt * ops.input[[n, r, col, ch]].to_acc();
                                }
                                sum += m * v;
                            }
                        }
                        out[[n, oh, ow, ch]] = T::from_acc(sum);
                    }
                }
            }
        }
    }
}

/// Input, offset and mask gradients of [`forward`] for `grad_output`.
pub fn backward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    grads: Dcnv3GradViews<'_, T>,
) {
    let Dcnv3GradViews {
        input: mut gi_view,
        offset: mut go,
        mask: mut gm,
    } = grads;
    let zero = T::Acc::zero();
    let scale = T::Acc::from_f64(g.scale).unwrap_or_else(T::Acc::nan);
    let mut dx = ndarray::Array4::<T::Acc>::zeros((g.n, g.h, g.w, g.c()));
    for n in 0..g.n {
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                for gi in 0..g.g {
                    for p in 0..g.points {
                        let (y, x) = position(g, ops, [n, oh, ow, gi, p]);
                        let m = ops.mask[[n, oh, ow, ops.layout.mask(gi, p)]].to_acc();
                        let (mut d_y, mut d_x, mut d_m) = (zero, zero, zero);
                        if let Some((ly, lx, cs)) = corners(g.h, g.w, y, x) {
                            let one = T::Acc::one();
                            for ((r, col), [hi_y, hi_x], wgt) in cs {
                                // d weight / d y and d x for this corner.
                                let wy = if hi_x { lx } else { one - lx };
                                let wx = if hi_y { ly } else { one - ly };
                                let (sy, sx) =
                                    (if hi_y { one } else { -one }, if hi_x { one } else { -one });
                                for c in 0..g.d {
                                    let ch = gi * g.d + c;
                                    let dout = grad_output[[n, oh, ow, ch]].to_acc();
                                    let v = ops.input[[n, r, col, ch]].to_acc();
                                    d_m += dout * wgt * v;
                                    d_y += dout * m * sy * wy * v;
                                    d_x += dout * m * sx * wx * v;
                                    dx[[n, r, col, ch]] += m * wgt * dout;
                                }
                            }
                        }
                        let l = ops.layout;
                        go[[n, oh, ow, l.offset(gi, p, 0)]] = T::from_acc(d_x * scale);
                        go[[n, oh, ow, l.offset(gi, p, 1)]] = T::from_acc(d_y * scale);
                        let gm = gm.as_mut().unwrap_or(&mut go);
                        gm[[n, oh, ow, l.mask(gi, p)]] = T::from_acc(d_m);
                    }
                }
            }
        }
    }
    gi_view.zip_mut_with(&dx, |o, v| *o = T::from_acc(*v));
}
