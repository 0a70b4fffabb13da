//! DCNv3 / DCNv4 on the sampling core ([`super::points`]): one plane (the image), `G` groups of
//! `D` channels, `P` points per group (SPEC §6). A core row is a run of at most [`CHUNK`] output
//! pixels in row-major order (short image rows would make each kernel call a few pixels long).

use super::kernels::{Isa, Kernels};
use super::points::{self, describe_runs, pieces, Interleave, PointOp, PointRuns, Shape};
use crate::alloc::Written;
use crate::conventions::dcnv3::{
    grad_buffers, Dcnv3Geometry, Dcnv3GradViews, Dcnv3Operands, GradArrays,
};
use crate::element::Element;
use crate::error::Result;
use ndarray::{Array4, ArrayView4, ArrayViewMut2, ArrayViewMut4, Axis, Ix4};
use num_traits::FromPrimitive;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Output pixels per core row, at most.
const CHUNK: usize = 128;
/// Core rows an image is cut into, at least, where its pixels allow: a small image (InternImage's
/// 7x7 and 14x14 stages) is still work for every thread and every backward lane.
const MIN_ROWS: usize = 8;
/// Output pixels per core row, at least.
const MIN_CHUNK: usize = 16;
/// Rows below the kernel's last whose pixels the forward prefetches ahead: offsets of a few
/// pixels reach them before the output rows they belong to.
const LEAD_ROWS: i32 = 4;

struct Op<'o, 'a, T: Element> {
    g: &'o Dcnv3Geometry,
    ops: &'o Dcnv3Operands<'a, T>,
    shape: Shape,
    /// `base_y` and `base_x` of each output pixel in row-major order, in the accumulation type
    /// (rounded once from f64): a core row's bases are a slice of each.
    base: [Vec<T::Acc>; 2],
    /// `tap_y * dil_y` and `tap_x * dil_x` of each point, and the offset scale (also as one per
    /// point).
    taps: [Vec<T::Acc>; 2],
    scale: T::Acc,
    scales: Vec<T::Acc>,
    /// `[x offset, y offset, mask]` columns of point `p` of group `gi` at `gi*P + p`.
    cols: Vec<[usize; 3]>,
    /// Output pixels per core row (the last one may be shorter).
    chunk: usize,
}

impl<'o, 'a, T: Element> Op<'o, 'a, T> {
    fn new(g: &'o Dcnv3Geometry, ops: &'o Dcnv3Operands<'a, T>) -> Self {
        let chunk = chunk_for(g);
        let shape = Shape {
            n: g.n,
            planes: vec![(g.h, g.w)],
            c: g.c(),
            d: g.d,
            points: g.points,
            rows: (g.ho * g.wo).div_ceil(chunk),
            row_len: chunk,
            // 256 bytes of each pixel's channels: the corners around neighbouring pixels stay
            // in L1 (a 512-channel pixel's groups at once did not).
            block: (256 / (g.d * std::mem::size_of::<T::Acc>()).max(1)).max(1),
            lead: Some(lead(g)),
        };
        let by: Vec<_> = (0..g.ho).map(|oh| Self::acc(g.base(oh, 0).0)).collect();
        let bx: Vec<_> = (0..g.wo).map(|ow| Self::acc(g.base(0, ow).1)).collect();
        let base = [
            by.iter()
                .flat_map(|&b| std::iter::repeat_n(b, g.wo))
                .collect(),
            (0..g.ho).flat_map(|_| bx.iter().copied()).collect(),
        ];
        let tap = |f: fn((usize, usize), [usize; 2]) -> usize| {
            (0..g.points)
                .map(|p| Self::acc(f(g.tap(p), [g.dil[0], g.dil[1]]) as f64))
                .collect()
        };
        let taps = [tap(|(_, j), d| j * d[0]), tap(|(i, _), d| i * d[1])];
        let l = &ops.layout;
        let cols = (0..g.c() / g.d.max(1))
            .flat_map(|gi| {
                (0..g.points).map(move |p| [l.offset(gi, p, 0), l.offset(gi, p, 1), l.mask(gi, p)])
            })
            .collect();
        Op {
            g,
            ops,
            shape,
            base,
            taps,
            cols,
            scale: Self::acc(g.scale),
            scales: vec![Self::acc(g.scale); g.points],
            chunk,
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

    fn row(&self, r: usize) -> Range<usize> {
        r * self.chunk..((r + 1) * self.chunk).min(self.g.ho * self.g.wo)
    }

    fn image(&self, n: usize) -> Option<&[T]> {
        self.ops.input.index_axis_move(Axis(0), n).to_slice()
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

    fn with_runs<R>(
        &self,
        [n, r, gi]: [usize; 3],
        len: usize,
        f: impl FnOnce(&PointRuns<'_, T, T::Acc>) -> R,
    ) -> Option<R> {
        let (g, ops) = (self.g, self.ops);
        let pixels = self.row(r);
        let len = len.min(pixels.len());
        // Contiguous tensors (the usual channels-last ones): a pixel's offsets and masks of a
        // group are runs (`PointLayout`).
        let offs = ops.offset.index_axis(Axis(0), n);
        let masks = ops.mask.index_axis(Axis(0), n);
        let (o, mk) = (offs.as_slice()?, masks.as_slice()?);
        let (os, ms) = (offs.shape()[2], masks.shape()[2]);
        let base = self
            .base
            .each_ref()
            .map(|b| &b[pixels.start..pixels.start + len]);
        Some(f(&PointRuns {
            pairs: o,
            pair0: pixels.start * os + ops.layout.offset(gi, 0, 0),
            pair_step: os,
            weights: mk,
            weight0: pixels.start * ms + ops.layout.mask(gi, 0),
            weight_step: ms,
            points: g.points,
            len,
            tap: [&self.taps[0], &self.taps[1]],
            scale: [&self.scales, &self.scales],
            base,
        }))
    }

    fn describe(
        &self,
        k: &Kernels<T::Acc>,
        [n, r, gi]: [usize; 3],
        len: usize,
        y: &mut [T::Acc],
        x: &mut [T::Acc],
        m: &mut [T::Acc],
    ) {
        let (g, ops) = (self.g, self.ops);
        let scale = self.scale;
        let pixels = self.row(r);
        let len = len.min(pixels.len());
        if let Some(()) = self.with_runs([n, r, gi], len, |runs| describe_runs(k, runs, y, x, m)) {
            return;
        }
        let (offs, masks) = (
            ops.offset.index_axis(Axis(0), n),
            ops.mask.index_axis(Axis(0), n),
        );
        let cols = &self.cols[gi * g.points..(gi + 1) * g.points];
        for (t, pix) in pixels.take(len).enumerate() {
            let (oh, ow) = (pix / g.wo, pix % g.wo);
            for (p, &[ox, oy, om]) in cols.iter().enumerate() {
                let (tj, ti) = (self.taps[0][p], self.taps[1][p]);
                y[p * len + t] = self.base[0][pix] + (tj + offs[[oh, ow, oy]].to_acc()) * scale;
                x[p * len + t] = self.base[1][pix] + (ti + offs[[oh, ow, ox]].to_acc()) * scale;
                m[p * len + t] = masks[[oh, ow, om]].to_acc();
            }
        }
    }
}

/// The forward: `[N, Ho, Wo, G*D]`.
pub(crate) fn forward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    isa: Isa,
) -> Result<Array4<T>> {
    let mut out = Written::new("output", Ix4(g.n, g.ho, g.wo, g.c()))?;
    let op = Op::new(g, ops);
    points::forward(&op, isa, rows_of(out.view_mut(), op.chunk))?;
    // SAFETY: the rows cover the output, and `points::forward` wrote every element of every row.
    Ok(unsafe { out.done() })
}

/// The input pixel, from an output pixel's base, whose row the output rows after it reach
/// first: [`LEAD_ROWS`] below the kernel's last row, at its middle column.
fn lead(g: &Dcnv3Geometry) -> [i32; 2] {
    let span = |k: usize, dil: usize| ((k.saturating_sub(1) * dil) as f64 * g.scale) as i32;
    [
        span(g.kh, g.dil[0]).saturating_add(LEAD_ROWS),
        span(g.kw, g.dil[1]) / 2,
    ]
}

/// Output pixels per core row: runs of [`MIN_CHUNK`] to [`CHUNK`] pixels, [`MIN_ROWS`] of them
/// where the image allows (decided by the shape alone).
fn chunk_for(g: &Dcnv3Geometry) -> usize {
    (g.ho * g.wo).div_ceil(MIN_ROWS).clamp(MIN_CHUNK, CHUNK)
}

/// `[N, Ho, Wo, ..]` (one of the engine's own outputs, in standard layout) as image by image,
/// core row by core row `[len, ..]` views: runs of `chunk` pixels.
fn rows_of<T>(v: ArrayViewMut4<'_, T>, chunk: usize) -> Vec<Vec<ArrayViewMut2<'_, T>>> {
    let (ho, wo, c) = (v.shape()[1], v.shape()[2], v.shape()[3]);
    pieces(v, Axis(0), 1)
        .into_iter()
        .map(|img| {
            let flat = img
                .index_axis_move(Axis(0), 0)
                .into_shape_with_order((ho * wo, c))
                .expect("the engine's outputs are allocated in standard layout");
            pieces(flat, Axis(0), chunk)
        })
        .collect()
}

/// A row's gradient views: the offsets' row `[Wo, ..]` and, for DCNv3, the masks'.
type GradRow<'a, T> = (
    ArrayViewMut2<'a, MaybeUninit<T>>,
    Option<ArrayViewMut2<'a, MaybeUninit<T>>>,
);

/// The gradients of the input, the offsets (`offset_shape`; DCNv4: offsets and masks, zero on
/// the padding) and, with `mask`, of the masks.
pub(crate) fn backward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    (offset_shape, mask): ([usize; 4], bool),
    isa: Isa,
) -> Result<GradArrays<T>> {
    let (mut gi, mut go, mut gm) = grad_buffers(g, (offset_shape, mask), Written::<T, _>::new)?;
    let reused = go.reused() && gm.as_ref().is_none_or(|m| m.reused());
    let views = Dcnv3GradViews {
        input: gi.view_mut(),
        offset: go.view_mut(),
        mask: gm.as_mut().map(|m| m.view_mut()),
    };
    write_backward(g, ops, grad_output, (views, reused), isa)?;
    // SAFETY: `write_backward` wrote every element: each pixel of the input gradient, and of
    // every output pixel the offset and mask gradient of every point and the zero padding.
    Ok(unsafe { (gi.done(), go.done(), gm.map(|m| m.done())) })
}

fn write_backward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    (grads, reused): (Dcnv3GradViews<'_, MaybeUninit<T>>, bool),
    isa: Isa,
) -> Result<()> {
    let Dcnv3GradViews {
        input: gin,
        offset,
        mask,
    } = grads;
    let op = Op::new(g, ops);
    let chunk = op.chunk;
    let (off_width, separate_mask) = (offset.shape()[3], mask.is_some());
    let big = points::streamed::<T>(offset.len() + mask.as_ref().map_or(0, |m| m.len()), reused);
    let off_rows = rows_of(offset, chunk);
    let grad_rows: Vec<Vec<GradRow<'_, T>>> = match mask {
        Some(m) => off_rows
            .into_iter()
            .zip(rows_of(m, chunk))
            .map(|(o, m)| o.into_iter().zip(m.into_iter().map(Some)).collect())
            .collect(),
        None => off_rows
            .into_iter()
            .map(|o| o.into_iter().map(|r| (r, None)).collect())
            .collect(),
    };
    let layout = ops.layout;
    // Columns of the offset gradient no point names (DCNv4's padding): written zero.
    let mut named = vec![false; off_width];
    for &[cx, cy, cm] in &op.cols {
        named[cx] = true;
        named[cy] = true;
        if !separate_mask {
            named[cm] = true;
        }
    }
    let padding: Vec<usize> = (0..off_width).filter(|&i| !named[i]).collect();
    let (c, w) = (g.c(), g.w);
    let table = super::plan::kernels_for::<T::Acc>(isa)?;
    let scales = vec![op.scale; 2 * g.points];
    points::backward(
        &op,
        isa,
        grad_rows,
        points::Dout {
            held: |n, r| {
                let image = grad_output.index_axis_move(Axis(0), n).to_slice()?;
                let pixels = op.row(r);
                T::as_acc(image).map(|v| &v[pixels.start * c..pixels.end * c])
            },
            copy: |n, r, dst: &mut [T::Acc]| {
                let image = grad_output.index_axis(Axis(0), n);
                let pixels = op.row(r);
                if let Some(src) = image.as_slice() {
                    for (d, v) in dst.iter_mut().zip(&src[pixels.start * c..pixels.end * c]) {
                        *d = v.to_acc();
                    }
                    return;
                }
                for (pix, px) in pixels.zip(dst.chunks_exact_mut(c)) {
                    let src = image.slice(ndarray::s![pix / g.wo, pix % g.wo, ..]);
                    for (d, v) in px.iter_mut().zip(src.iter()) {
                        *d = v.to_acc();
                    }
                }
            },
        },
        |(off, mask), pg, stage| {
            let (len, gi) = (pg.len, pg.g);
            // The engine's own gradients: standard layout, a row's elements one after another.
            let off = off
                .as_slice_mut()
                .expect("the engine's gradients are allocated in standard layout");
            // Each element's points' pairs are one run of its row, and its masks another
            // (`PointLayout`); a point's values of the row are `len` apart in `pg`.
            let (o0, m0) = (layout.offset(gi, 0, 0), layout.mask(gi, 0));
            let [xy, m] = [&[pg.x, pg.y][..], &[pg.m]];
            let rows = |src, factors, stride| Interleave {
                src,
                points: g.points,
                len,
                factors,
                stride,
            };
            let (at, pad) = (((gi, g.g), len), Some((0, &padding[..])));
            match mask.as_mut() {
                Some(mv) => {
                    let width = mv.shape()[1];
                    let mv = mv
                        .as_slice_mut()
                        .expect("the engine's gradients are allocated in standard layout");
                    let jobs = [
                        (0, o0, rows(xy, Some(&scales), off_width)),
                        (1, m0, rows(m, None, width)),
                    ];
                    points::write_group::<T, 2>((table, big), stage, [off, mv], at, pad, &jobs);
                }
                None => {
                    let jobs = [
                        (0, o0, rows(xy, Some(&scales), off_width)),
                        (0, m0, rows(m, None, off_width)),
                    ];
                    points::write_group::<T, 1>((table, big), stage, [off], at, pad, &jobs);
                }
            }
        },
        points::image_rows("grad_input", gin, g.h * w, c)?,
    )
}
