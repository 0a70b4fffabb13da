//! Multi-scale deformable attention (SPEC §7) as plain loops, every sum in `T::Acc`.

use super::points::corners;
use crate::conventions::msda::{MsdaGeometry, MsdaGradViews, MsdaOperands};
use crate::element::{Element, Real};
use ndarray::{ArrayView3, ArrayViewMut3};
use num_traits::{One, Zero};

/// Pixel coordinates of sample `(n, q, m, l, p)`: `loc * size - 0.5`.
fn pixel<T: Element>(
    ops: &MsdaOperands<'_, T>,
    at: [usize; 5],
    h: usize,
    w: usize,
) -> (T::Acc, T::Acc) {
    let [n, q, m, l, p] = at;
    let half = T::Acc::one() / (T::Acc::one() + T::Acc::one());
    let x = ops.loc[[n, q, m, l, p, 0]].to_acc() * T::Acc::of_i64(w as i64) - half;
    let y = ops.loc[[n, q, m, l, p, 1]].to_acc() * T::Acc::of_i64(h as i64) - half;
    (y, x)
}

/// `out[n, q, m*D + d] = sum_{l, p} A * bilinear(V_l, y, x)`.
pub fn forward<T: Element>(
    g: &MsdaGeometry,
    ops: &MsdaOperands<'_, T>,
    mut out: ArrayViewMut3<'_, T>,
) {
    for n in 0..g.n {
        for q in 0..g.q {
            for m in 0..g.m {
                for d in 0..g.d {
                    let mut sum = T::Acc::zero();
                    for (l, &(h, w, start)) in g.levels.iter().enumerate() {
                        for p in 0..g.p {
                            let (y, x) = pixel(ops, [n, q, m, l, p], h, w);
                            let a = ops.attn[[n, q, m, l, p]].to_acc();
                            if let Some((_, _, cs)) = corners(h, w, y, x) {
                                let mut v = T::Acc::zero();
                                for ((r, col), _, wgt) in cs {
                                    let px = r * w + col;
                                    v += wgt * ops.value[[n, start + px, m, d]].to_acc();
                                }
                                sum += a * v;
                            }
                        }
                    }
                    out[[n, q, m * g.d + d]] = T::from_acc(sum);
                }
            }
        }
    }
}

/// Value, location and attention gradients of [`forward`] for `grad_output`.
pub fn backward<T: Element>(
    g: &MsdaGeometry,
    ops: &MsdaOperands<'_, T>,
    grad_output: ArrayView3<'_, T>,
    grads: MsdaGradViews<'_, T>,
) {
    let MsdaGradViews {
        value: mut gv,
        loc: mut gl,
        attn: mut ga,
    } = grads;
    let (zero, one) = (T::Acc::zero(), T::Acc::one());
    let mut dv = ndarray::Array4::<T::Acc>::zeros((g.n, g.s, g.m, g.d));
    for n in 0..g.n {
        for q in 0..g.q {
            for m in 0..g.m {
                for (l, &(h, w, start)) in g.levels.iter().enumerate() {
                    for p in 0..g.p {
                        let (y, x) = pixel(ops, [n, q, m, l, p], h, w);
                        let a = ops.attn[[n, q, m, l, p]].to_acc();
                        let (mut d_y, mut d_x, mut d_a) = (zero, zero, zero);
                        if let Some((ly, lx, cs)) = corners(h, w, y, x) {
                            for ((r, col), [hi_y, hi_x], wgt) in cs {
                                let px = r * w + col;
                                let wy = if hi_x { lx } else { one - lx };
                                let wx = if hi_y { ly } else { one - ly };
                                let sy = if hi_y { one } else { -one };
                                let sx = if hi_x { one } else { -one };
                                for d in 0..g.d {
                                    let dout = grad_output[[n, q, m * g.d + d]].to_acc();
                                    let v = ops.value[[n, start + px, m, d]].to_acc();
                                    d_a += dout * wgt * v;
                                    d_y += dout * a * sy * wy * v;
                                    d_x += dout * a * sx * wx * v;
                                    dv[[n, start + px, m, d]] += a * wgt * dout;
                                }
                            }
                        }
                        gl[[n, q, m, l, p, 0]] = T::from_acc(d_x * T::Acc::of_i64(w as i64));
                        gl[[n, q, m, l, p, 1]] = T::from_acc(d_y * T::Acc::of_i64(h as i64));
                        ga[[n, q, m, l, p]] = T::from_acc(d_a);
                    }
                }
            }
        }
    }
    gv.zip_mut_with(&dv, |o, v| *o = T::from_acc(*v));
}
