//! The reference: SPEC §1 and §2 written as plain loops. It is the oracle the engine is tested
//! against, so it shares no code with the engine: no SIMD, no threads, no `unsafe`, no tiling.
//! Every sum is formed in `T::Acc` (f64 for f64 inputs).

pub mod dcnv3;
pub mod msda;
mod points;

use crate::element::{Element, Real};
use crate::operands::{ForwardOutputs, GradOutputs, Operands};
use crate::params::{Geometry, GradGate};
use ndarray::{Array1, Array4, ArrayView2, ArrayView4};
use num_traits::{One, Zero};

/// `V(y, x)`: the zero-extended image plane.
fn pixel<T: Element>(plane: &ArrayView2<'_, T>, y: i64, x: i64) -> T::Acc {
    let (h, w) = plane.dim();
    if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
        plane[[y as usize, x as usize]].to_acc()
    } else {
        T::Acc::zero()
    }
}

/// The bilinear corner setup at `(py, px)`: `(y0, x0, ly, lx)` with `y0 = floor(py)`.
fn corners<A: Real>(py: A, px: A) -> (i64, i64, A, A) {
    let (y0, x0) = (py.floor(), px.floor());
    // Callers pass finite coordinates in [-1, size): the floors fit i64.
    let yi = y0.to_i64().unwrap_or(i64::MIN);
    let xi = x0.to_i64().unwrap_or(i64::MIN);
    (yi, xi, py - y0, px - x0)
}

/// Is `(py, px)` strictly inside `(-1, H) x (-1, W)`? False for NaN.
fn open_region<A: Real>(py: A, px: A, h: usize, w: usize) -> bool {
    let one = A::one();
    py > -one && px > -one && py < A::of_i64(h as i64) && px < A::of_i64(w as i64)
}

/// `S = hy*hx*V(y0,x0) + hy*lx*V(y0,x0+1) + ly*hx*V(y0+1,x0) + ly*lx*V(y0+1,x0+1)`, and 0 when
/// `py <= -1 or py >= H or px <= -1 or px >= W` (or NaN).
fn bilinear<T: Element>(plane: &ArrayView2<'_, T>, py: T::Acc, px: T::Acc) -> T::Acc {
    let (h, w) = plane.dim();
    if !open_region(py, px, h, w) {
        return T::Acc::zero();
    }
    let (y0, x0, ly, lx) = corners(py, px);
    let (hy, hx) = (T::Acc::one() - ly, T::Acc::one() - lx);
    hy * hx * pixel(plane, y0, x0)
        + hy * lx * pixel(plane, y0, x0 + 1)
        + ly * hx * pixel(plane, y0 + 1, x0)
        + ly * lx * pixel(plane, y0 + 1, x0 + 1)
}

/// Sampling position and mask of `(n, g, k, oh, ow)`.
fn position<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    [n, dg, i, j, oh, ow]: [usize; 6],
) -> (T::Acc, T::Acc, T::Acc) {
    let ch = dg * g.taps() + i * g.kw + j;
    let py = T::Acc::of_i64(g.grid_y(oh, i)) + ops.offset_y[[n, ch, oh, ow]].to_acc();
    let px = T::Acc::of_i64(g.grid_x(ow, j)) + ops.offset_x[[n, ch, oh, ow]].to_acc();
    let m = ops
        .mask
        .as_ref()
        .map_or(T::Acc::one(), |m| m[[n, ch, oh, ow]].to_acc());
    (py, px, m)
}

/// `col[c, i, j, oh, ow] = m * S(c)` for image `n`.
fn columns<T: Element>(g: &Geometry, ops: &Operands<'_, T>, n: usize) -> Array4<T::Acc> {
    let (kh, kw, ho, wo) = (g.kh, g.kw, g.ho, g.wo);
    let cdg = g.c_per_deformable_group();
    let mut col = Array4::<T::Acc>::zeros((g.c, kh * kw, ho, wo));
    for c in 0..g.c {
        let plane = ops.input.slice(ndarray::s![n, c, .., ..]);
        for i in 0..kh {
            for j in 0..kw {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let (py, px, m) = position(g, ops, [n, c / cdg, i, j, oh, ow]);
                        col[[c, i * kw + j, oh, ow]] = m * bilinear(&plane, py, px);
                    }
                }
            }
        }
    }
    col
}

/// Reference forward (SPEC §1).
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    mut out: ForwardOutputs<'_, T>,
) {
    let (cg, coutg, kw) = (g.c_per_group(), g.cout_per_group(), g.kw);
    for n in 0..g.n {
        let col = columns(g, ops, n);
        if let Some(d) = out.deformed.as_mut() {
            for c in 0..g.c {
                for i in 0..g.kh {
                    for j in 0..kw {
                        for oh in 0..g.ho {
                            for ow in 0..g.wo {
                                d[[n, c, oh * g.kh + i, ow * kw + j]] =
                                    T::from_acc(col[[c, i * kw + j, oh, ow]]);
                            }
                        }
                    }
                }
            }
        }
        for o in 0..g.cout {
            let q = o / coutg;
            for oh in 0..g.ho {
                for ow in 0..g.wo {
                    let mut acc = ops.bias.as_ref().map_or(T::Acc::zero(), |b| b[o].to_acc());
                    for cc in 0..cg {
                        for i in 0..g.kh {
                            for j in 0..kw {
                                acc += ops.weight[[o, cc, i, j]].to_acc()
                                    * col[[q * cg + cc, i * kw + j, oh, ow]];
                            }
                        }
                    }
                    out.output[[n, o, oh, ow]] = T::from_acc(acc);
                }
            }
        }
    }
}

/// Reference backward (SPEC §2), with the offset/mask gradient rule `gate`.
pub(crate) fn backward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    dy: ArrayView4<'_, T>,
    mut grads: GradOutputs<'_, T>,
    gate: GradGate,
) {
    let zero = T::Acc::zero();
    let one = T::Acc::one();
    let (cg, coutg, kw, k) = (g.c_per_group(), g.cout_per_group(), g.kw, g.taps());
    let cdg = g.c_per_deformable_group();
    let tap = g.tap_shape();
    let mut g_x = Array4::<T::Acc>::zeros((g.n, g.c, g.h, g.w));
    let mut g_oy = Array4::<T::Acc>::zeros(tap);
    let mut g_ox = Array4::<T::Acc>::zeros(tap);
    let mut g_m = Array4::<T::Acc>::zeros(tap);
    let mut g_w = Array4::<T::Acc>::zeros((g.cout, cg, g.kh, kw));
    let mut g_b = Array1::<T::Acc>::zeros(g.cout);
    let (hf, wf) = (T::Acc::of_i64(g.h as i64), T::Acc::of_i64(g.w as i64));

    for n in 0..g.n {
        let col = columns(g, ops, n);
        for o in 0..g.cout {
            let q = o / coutg;
            for oh in 0..g.ho {
                for ow in 0..g.wo {
                    let d = dy[[n, o, oh, ow]].to_acc();
                    g_b[o] += d;
                    for cc in 0..cg {
                        for i in 0..g.kh {
                            for j in 0..kw {
                                g_w[[o, cc, i, j]] += d * col[[q * cg + cc, i * kw + j, oh, ow]];
                            }
                        }
                    }
                }
            }
        }
        for c in 0..g.c {
            let q = c / cg;
            let dg = c / cdg;
            let plane = ops.input.slice(ndarray::s![n, c, .., ..]);
            for i in 0..g.kh {
                for j in 0..kw {
                    for oh in 0..g.ho {
                        for ow in 0..g.wo {
                            // dcol = sum over o in group q of Wt[o, c', i, j] * dY[n, o, oh, ow]
                            let mut dcol = zero;
                            for o in q * coutg..(q + 1) * coutg {
                                dcol += ops.weight[[o, c - q * cg, i, j]].to_acc()
                                    * dy[[n, o, oh, ow]].to_acc();
                            }
                            let (py, px, m) = position(g, ops, [n, dg, i, j, oh, ow]);
                            let ch = dg * k + i * kw + j;
                            let open = open_region(py, px, g.h, g.w);
                            let grad_region = match gate {
                                GradGate::Open => open,
                                GradGate::PerTap => py >= -one && px >= -one && py < hf && px < wf,
                            };
                            if !grad_region {
                                continue;
                            }
                            let (y0, x0, ly, lx) = corners(py, px);
                            let (hy, hx) = (one - ly, one - lx);
                            let v00 = pixel(&plane, y0, x0);
                            let v01 = pixel(&plane, y0, x0 + 1);
                            let v10 = pixel(&plane, y0 + 1, x0);
                            let v11 = pixel(&plane, y0 + 1, x0 + 1);
                            g_oy[[n, ch, oh, ow]] +=
                                m * dcol * (hx * (v10 - v00) + lx * (v11 - v01));
                            g_ox[[n, ch, oh, ow]] +=
                                m * dcol * (hy * (v01 - v00) + ly * (v11 - v10));
                            if !open {
                                continue;
                            }
                            g_m[[n, ch, oh, ow]] += dcol * bilinear(&plane, py, px);
                            for (yy, xx, wt) in [
                                (y0, x0, hy * hx),
                                (y0, x0 + 1, hy * lx),
                                (y0 + 1, x0, ly * hx),
                                (y0 + 1, x0 + 1, ly * lx),
                            ] {
                                if yy >= 0 && xx >= 0 && (yy as usize) < g.h && (xx as usize) < g.w
                                {
                                    g_x[[n, c, yy as usize, xx as usize]] += m * wt * dcol;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let store = |dst: Option<&mut ndarray::ArrayViewMut4<'_, T>>, src: &Array4<T::Acc>| {
        if let Some(dst) = dst {
            dst.zip_mut_with(src, |d, s| *d = T::from_acc(*s));
        }
    };
    store(grads.input.as_mut(), &g_x);
    store(grads.offset_y.as_mut(), &g_oy);
    store(grads.offset_x.as_mut(), &g_ox);
    store(grads.mask.as_mut(), &g_m);
    store(grads.weight.as_mut(), &g_w);
    if let Some(b) = grads.bias.as_mut() {
        b.zip_mut_with(&g_b, |d, s| *d = T::from_acc(*s));
    }
}
