//! DCNv3 / DCNv4 on the sampling core ([`super::points`]): one plane (the image), rows of `Wo`
//! output pixels, `G` groups of `D` channels, `P` points per group (SPEC §6).

use super::kernels::Isa;
use super::points::{self, pieces, PointOp, Shape};
use crate::conventions::dcnv3::{Dcnv3Geometry, Dcnv3GradViews, Dcnv3Operands};
use crate::element::Element;
use crate::error::Result;
use ndarray::{ArrayView4, ArrayViewMut2, ArrayViewMut4, Axis};
use num_traits::FromPrimitive;
use std::ops::Range;

struct Op<'o, 'a, T: Element> {
    g: &'o Dcnv3Geometry,
    ops: &'o Dcnv3Operands<'a, T>,
    shape: Shape,
    /// `base_y` of each output row and `base_x` of each output column, in the accumulation type
    /// (rounded once from f64, as per element before).
    by: Vec<T::Acc>,
    bx: Vec<T::Acc>,
    /// `(tap_y * dil_y, tap_x * dil_x)` of each point, and the offset scale.
    taps: Vec<(T::Acc, T::Acc)>,
    scale: T::Acc,
}

impl<'o, 'a, T: Element> Op<'o, 'a, T> {
    fn new(g: &'o Dcnv3Geometry, ops: &'o Dcnv3Operands<'a, T>) -> Self {
        let shape = Shape {
            n: g.n,
            planes: vec![(g.h, g.w)],
            c: g.c(),
            d: g.d,
            points: g.points,
            rows: g.ho,
            row_len: g.wo,
        };
        let by = (0..g.ho).map(|oh| Self::acc(g.base(oh, 0).0)).collect();
        let bx = (0..g.wo).map(|ow| Self::acc(g.base(0, ow).1)).collect();
        let taps = (0..g.points)
            .map(|p| {
                let (i, j) = g.tap(p);
                (
                    Self::acc((j * g.dil[0]) as f64),
                    Self::acc((i * g.dil[1]) as f64),
                )
            })
            .collect();
        Op {
            g,
            ops,
            shape,
            by,
            bx,
            taps,
            scale: Self::acc(g.scale),
        }
    }

    fn acc(v: f64) -> T::Acc {
        T::Acc::from_f64(v).unwrap_or_else(num_traits::Float::nan)
    }
}

impl<T: Element> PointOp<T> for Op<'_, '_, T> {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn plane_of(&self, _: usize) -> usize {
        0
    }

    fn row(&self, _: usize) -> Range<usize> {
        0..self.g.wo
    }

    fn copy_pixels(&self, n: usize, s0: usize, dst: &mut [T::Acc]) {
        let c = self.g.c();
        let image = self.ops.input.index_axis(Axis(0), n);
        if let Some(src) = image.as_slice() {
            // A contiguous image: one run.
            for (d, x) in dst.iter_mut().zip(&src[s0 * c..]) {
                *d = x.to_acc();
            }
            return;
        }
        for (i, px) in dst.chunks_exact_mut(c).enumerate() {
            let s = s0 + i;
            let v = image.slice(ndarray::s![s / self.g.w, s % self.g.w, ..]);
            for (d, x) in px.iter_mut().zip(v.iter()) {
                *d = x.to_acc();
            }
        }
    }

    fn describe(&self, at: [usize; 4], y: &mut [T::Acc], x: &mut [T::Acc], m: &mut [T::Acc]) {
        let [n, oh, gi, p] = at;
        let (g, ops) = (self.g, self.ops);
        let (scale, by) = (self.scale, self.by[oh]);
        let (tj, ti) = self.taps[p];
        let (ox, oy, om) = (
            ops.layout.offset(gi, p, 0),
            ops.layout.offset(gi, p, 1),
            ops.layout.mask(gi, p),
        );
        let (orow, mrow) = (
            ops.offset.slice(ndarray::s![n, oh, .., ..]),
            ops.mask.slice(ndarray::s![n, oh, .., ..]),
        );
        let len = y.len().min(g.wo);
        let (y, x, m, bx) = (&mut y[..len], &mut x[..len], &mut m[..len], &self.bx[..len]);
        // Contiguous rows (the usual channels-last tensors): plain strided slice reads.
        if let (Some(o), Some(mk)) = (orow.as_slice(), mrow.as_slice()) {
            let (os, ms) = (orow.shape()[1], mrow.shape()[1]);
            for ow in 0..len {
                let at = ow * os;
                y[ow] = by + (tj + o[at + oy].to_acc()) * scale;
                x[ow] = bx[ow] + (ti + o[at + ox].to_acc()) * scale;
                m[ow] = mk[ow * ms + om].to_acc();
            }
            return;
        }
        // Any other strides: the row's columns as strided views.
        let cols = orow
            .column(ox)
            .into_iter()
            .zip(orow.column(oy))
            .zip(mrow.column(om));
        for (ow, ((off_x, off_y), mv)) in cols.enumerate().take(len) {
            y[ow] = by + (tj + off_y.to_acc()) * scale;
            x[ow] = bx[ow] + (ti + off_x.to_acc()) * scale;
            m[ow] = mv.to_acc();
        }
    }
}

/// The forward into `out` (`[N, Ho, Wo, G*D]`, every element written).
pub(crate) fn forward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    out: ArrayViewMut4<'_, T>,
    isa: Isa,
) -> Result<()> {
    points::forward(&Op::new(g, ops), isa, rows_of(out))
}

/// `[N, Ho, Wo, ..]` as image by image, row by row `[Wo, ..]` views.
fn rows_of<T>(v: ArrayViewMut4<'_, T>) -> Vec<Vec<ArrayViewMut2<'_, T>>> {
    pieces(v, Axis(0), 1)
        .into_iter()
        .map(|img| {
            pieces(img.index_axis_move(Axis(0), 0), Axis(0), 1)
                .into_iter()
                .map(|r| r.index_axis_move(Axis(0), 0))
                .collect()
        })
        .collect()
}

/// A row's gradient views: the offsets' row `[Wo, ..]` and, for DCNv3, the masks'.
type GradRow<'a, T> = (ArrayViewMut2<'a, T>, Option<ArrayViewMut2<'a, T>>);

/// The backward into `grads` (every element the layout names written).
pub(crate) fn backward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    grads: Dcnv3GradViews<'_, T>,
    isa: Isa,
) -> Result<()> {
    let Dcnv3GradViews {
        input: mut gin,
        offset,
        mask,
    } = grads;
    let off_rows = rows_of(offset);
    let grad_rows: Vec<Vec<GradRow<'_, T>>> = match mask {
        Some(m) => off_rows
            .into_iter()
            .zip(rows_of(m))
            .map(|(o, m)| o.into_iter().zip(m.into_iter().map(Some)).collect())
            .collect(),
        None => off_rows
            .into_iter()
            .map(|o| o.into_iter().map(|r| (r, None)).collect())
            .collect(),
    };
    let op = Op::new(g, ops);
    let scale = Op::<T>::acc(g.scale);
    let layout = ops.layout;
    let (c, w) = (g.c(), g.w);
    points::backward(
        &op,
        isa,
        grad_rows,
        |n, oh, dst| {
            let row = grad_output.index_axis(Axis(0), n);
            for (d, v) in dst.iter_mut().zip(row.index_axis(Axis(0), oh).iter()) {
                *d = v.to_acc();
            }
        },
        |(off, mask), pg| {
            // Column by column: strided writes, no per-element 2-D index.
            for (xy, src) in [(0, pg.x), (1, pg.y)] {
                let col = off.column_mut(layout.offset(pg.g, pg.point, xy));
                for (o, v) in col.into_iter().zip(src) {
                    *o = T::from_acc(*v * scale);
                }
            }
            let mv = mask.as_mut().unwrap_or(off);
            for (o, v) in mv
                .column_mut(layout.mask(pg.g, pg.point))
                .into_iter()
                .zip(pg.m)
            {
                *o = T::from_acc(*v);
            }
        },
        |n, dx| {
            let mut img = gin.index_axis_mut(Axis(0), n);
            for (s, px) in dx[..g.h * w * c].chunks_exact(c).enumerate() {
                let mut dst = img.slice_mut(ndarray::s![s / w, s % w, ..]);
                for (o, v) in dst.iter_mut().zip(px) {
                    *o = T::from_acc(*v);
                }
            }
        },
    )
}
