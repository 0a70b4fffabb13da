//! The sampling core of the weightless operators (DCNv3, DCNv4, multi-scale deformable
//! attention): outputs that are weighted sums of bilinear samples of a channels-last image.
//!
//! An operator ([`PointOp`]) describes an image of one or more planes (DCNv3: one; attention: its
//! levels) of `C` channels in groups of `D`, and output rows (DCNv3: a row of `Wo` pixels;
//! attention: a block of queries) whose every element `t` of group `g` is
//! `out[t, g*D + c] = sum_k m_k[t] * bilinear(plane(k), y_k[t], x_k[t], g*D + c)`.
//! Per (row, group, point) one row of descriptors is computed by the same kernels as DCNv2's
//! (`sample_row`, with absolute positions: `y0 = x0 = 0`, no stride) and run across the group's
//! channel run (`gather_row` forward; `dot4_row` and `scatter_row` backward).
//!
//! Each image is copied once into the accumulation type, its planes one after the other, each
//! followed by the zero pixel the descriptors point at for corners outside it. Forward: rows in
//! parallel, the sums formed point by point in a fixed order. Backward: rows dealt to
//! `blocking::LANES` fixed lanes (one where the samples are few for the image), each with its
//! own input-gradient image, reduced in lane order.
//! Same bits for any thread count; memory bounded by `LANES + 1` images.

use super::blocking::LANES;
use super::kernels::{Isa, Kernels, RowJob};
use super::plan::kernels_for;
use super::sample::{RowArgs, RowSamples};
use super::scratch::{try_take, Buf};
use super::threads::{self, for_each_item, PerWorker};
use crate::element::{Element, Real};
use crate::error::Result;
use crate::params::GradGate;
use ndarray::ArrayViewMut2;
use num_traits::{One, Zero};
use std::ops::Range;

/// The sizes of a point operator.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// Images.
    pub n: usize,
    /// `(h, w)` of each plane of an image, in memory order.
    pub planes: Vec<(usize, usize)>,
    /// Channels of a pixel.
    pub c: usize,
    /// Channels per group.
    pub d: usize,
    /// Points per group and output element (over all planes).
    pub points: usize,
    /// Output rows per image.
    pub rows: usize,
    /// The longest output row.
    pub row_len: usize,
}

impl Shape {
    fn groups(&self) -> usize {
        self.c / self.d.max(1)
    }

    /// Where each plane starts in the copied image (in pixels), and the copy's length.
    fn bases(&self) -> (Vec<usize>, usize) {
        let mut at = 0;
        let bases = self
            .planes
            .iter()
            .map(|&(h, w)| {
                let b = at;
                at += h * w + 1;
                b
            })
            .collect();
        (bases, at)
    }
}

/// Elements of `A` in a 64-byte cache line.
fn per_line<A>() -> usize {
    (64 / std::mem::size_of::<A>()).max(1)
}

/// `parts` buffers of `len` elements each (stale contents), every one starting on a cache line (a group's
/// channel run of 64 bytes is then one line, not two), as one allocation; `len` is rounded up to
/// whole lines.
struct Lines<A: Real> {
    data: Buf<A>,
    start: usize,
    stride: usize,
}

impl<A: Real> Lines<A> {
    fn new(name: &str, len: usize, parts: usize) -> Result<Self> {
        let line = per_line::<A>();
        let stride = len.next_multiple_of(line);
        let total = stride
            .checked_mul(parts)
            .and_then(|t| t.checked_add(line))
            .ok_or_else(|| {
                crate::error::DeformError::parameter(name, "a size that fits in memory", "overflow")
            })?;
        // From the scratch pool: reused across calls (no fresh pages to fault in); its contents
        // are stale, every user writes (or zeroes) what it reads.
        let data = try_take(name, total, A::zero())?;
        let misaligned = (data.as_ptr() as usize % 64) / std::mem::size_of::<A>();
        let start = (line - misaligned) % line;
        Ok(Lines {
            data,
            start,
            stride,
        })
    }

    /// All parts, each `stride` long (its first `len` elements are the buffer).
    fn all(&mut self) -> &mut [A] {
        let (start, end) = (self.start, self.start + self.data.len() - per_line::<A>());
        &mut self.data[start..end]
    }
}

/// An operator on the sampling core.
pub(crate) trait PointOp<T: Element>: Sync {
    fn shape(&self) -> &Shape;
    /// The plane point `k` samples.
    fn plane_of(&self, k: usize) -> usize;
    /// The elements `t` of output row `r` (as indices of the operator's own layout).
    fn row(&self, r: usize) -> Range<usize>;
    /// Pixels `s0 ..` of image `n`, all planes concatenated, into `dst` (`C` values a pixel).
    fn copy_pixels(&self, n: usize, s0: usize, dst: &mut [T::Acc]);
    /// Positions (in pixels of the point's plane) and weights of point `k` of group `g` for the
    /// elements of row `r` of image `n` (`at = [n, r, g, k]`).
    fn describe(&self, at: [usize; 4], y: &mut [T::Acc], x: &mut [T::Acc], m: &mut [T::Acc]);
}

/// `v` cut along `axis` into pieces of `size` (the last may be shorter), each keeping `v`'s
/// lifetime (what the operators hand the core as output rows).
pub(crate) fn pieces<'a, T, D: ndarray::Dimension>(
    mut v: ndarray::ArrayViewMut<'a, T, D>,
    axis: ndarray::Axis,
    size: usize,
) -> Vec<ndarray::ArrayViewMut<'a, T, D>> {
    let mut out = Vec::new();
    while v.len_of(axis) > 0 {
        let k = size.max(1).min(v.len_of(axis));
        let (head, rest) = v.split_at(axis, k);
        out.push(head);
        v = rest;
    }
    out
}

/// Output elements per image (the rows' lengths summed).
fn elements<T: Element, O: PointOp<T>>(op: &O) -> usize {
    (0..op.shape().rows).map(|r| op.row(r).len()).sum()
}

/// Image `n` in `xt`: plane by plane, each followed by a zero pixel; pixels in parallel chunks.
fn copy_image<T: Element, O: PointOp<T>>(op: &O, n: usize, xt: &mut [T::Acc]) {
    let sh = op.shape();
    let c = sh.c;
    let (bases, _) = sh.bases();
    let mut parts: Vec<(usize, &mut [T::Acc])> = Vec::new();
    let mut rest: &mut [T::Acc] = xt;
    let mut s0 = 0;
    for (&(h, w), _) in sh.planes.iter().zip(&bases) {
        let (plane, r) = rest.split_at_mut((h * w + 1) * c);
        let (pixels, zero) = plane.split_at_mut(h * w * c);
        zero.fill(T::Acc::zero());
        // Chunks of about 256 KiB of f32 accumulators: a smaller image is one task, not a
        // hand-off to other threads for a few microseconds of copying.
        let chunk_px = ((64 << 10) / c.max(1)).max(1);
        for (i, part) in pixels.chunks_mut(chunk_px * c).enumerate() {
            parts.push((s0 + i * chunk_px, part));
        }
        s0 += h * w;
        rest = r;
    }
    for_each_item(parts, |(s, part), _| op.copy_pixels(n, s, part));
}

/// One row's scratch: positions, weights, descriptors, the sums and a point's samples.
struct RowScratch<A> {
    y: Vec<A>,
    x: Vec<A>,
    m: Vec<A>,
    s: RowSamples<A>,
    acc: Vec<A>,
    tmp: Vec<A>,
    dots: Vec<A>,
}

impl<A: Real> RowScratch<A> {
    fn new(len: usize, c: usize) -> Self {
        RowScratch {
            y: vec![A::zero(); len],
            x: vec![A::zero(); len],
            m: vec![A::zero(); len],
            s: RowSamples::new(len),
            acc: vec![A::zero(); len * c],
            tmp: vec![A::zero(); len * c],
            dots: vec![A::zero(); 4 * len],
        }
    }
}

/// The descriptors of point `k` of group `g` on row `r` of image `n` (`len` elements).
fn describe<T: Element, O: PointOp<T>>(
    op: &O,
    k: &Kernels<T::Acc>,
    [n, r, g, point]: [usize; 4],
    len: usize,
    gradients: bool,
    s: &mut RowScratch<T::Acc>,
) {
    let (h, w) = op.shape().planes[op.plane_of(point)];
    op.describe(
        [n, r, g, point],
        &mut s.y[..len],
        &mut s.x[..len],
        &mut s.m[..len],
    );
    let args = RowArgs {
        y0: 0,
        x0: 0,
        sx: 0,
        dy: &s.y[..len],
        dx: &s.x[..len],
        m: &s.m[..len],
        h,
        w,
        gate: GradGate::Open,
        gradients,
    };
    (k.sample_row)(&args, &mut s.s);
}

/// The forward: `rows[n][r]` (`[len of row r, C]`) receives row `r` of image `n`.
pub(crate) fn forward<T: Element, O: PointOp<T>>(
    op: &O,
    isa: Isa,
    rows: Vec<Vec<ArrayViewMut2<'_, T>>>,
) -> Result<()> {
    let k = kernels_for::<T::Acc>(isa)?;
    let sh = op.shape();
    let (c, d) = (sh.c, sh.d);
    let (bases, image) = sh.bases();
    if sh.n == 0 || c == 0 {
        return Ok(());
    }
    let work = (sh.n * elements(op) * sh.points) as f64 * c as f64 * 4.0;
    threads::serial_if_small(work, || {
        let mut lines = Lines::new("input (channels-last copy)", image * c, 1)?;
        let xt = &mut lines.all()[..image * c];
        let scratch = PerWorker::new();
        for (n, image_rows) in rows.into_iter().enumerate() {
            copy_image(op, n, xt);
            let xt = &*xt;
            for_each_item(
                image_rows.into_iter().enumerate().collect(),
                |(r, mut out), w| {
                    scratch.with(
                        w,
                        || RowScratch::new(sh.row_len, c),
                        |s| {
                            let len = op.row(r).len();
                            for g in 0..sh.groups() {
                                let lo = g * d;
                                for point in 0..sh.points {
                                    describe(op, k, [n, r, g, point], len, false, s);
                                    let base = bases[op.plane_of(point)] * c;
                                    // Point 0 stores its samples, the others add theirs.
                                    let job = RowJob {
                                        s: &s.s,
                                        n: len,
                                        c,
                                        lo,
                                        len: d,
                                        stride: c,
                                        add: point > 0,
                                    };
                                    (k.gather_row)(&job, &xt[base..], &mut s.acc[lo..]);
                                }
                            }
                            for (o, v) in out.iter_mut().zip(&s.acc) {
                                *o = T::from_acc(*v);
                            }
                        },
                    )
                },
            );
        }
        Ok(())
    })
}

/// What the backward hands an operator for one (row, group, point): the gradients of the
/// positions (`y`, `x`, in pixels of the point's plane) and of the weight, per element.
pub(crate) struct PointGrads<'a, A> {
    pub g: usize,
    pub point: usize,
    pub y: &'a [A],
    pub x: &'a [A],
    pub m: &'a [A],
}

/// The backward. `grad_rows[n][r]` is what the operator writes row `r`'s position and weight
/// gradients into (through `put`); `dout(n, r, dst)` fills `dst` (`[len, C]`) with the output
/// gradient of row `r`; `store_dx(n, dx)` receives image `n`'s input gradient in the copy's
/// layout (planes one after the other, each followed by one pixel to ignore).
pub(crate) fn backward<T, O, G>(
    op: &O,
    isa: Isa,
    grad_rows: Vec<Vec<G>>,
    dout: impl Fn(usize, usize, &mut [T::Acc]) + Sync,
    put: impl Fn(&mut G, &PointGrads<'_, T::Acc>) + Sync,
    mut store_dx: impl FnMut(usize, &[T::Acc]),
) -> Result<()>
where
    T: Element,
    O: PointOp<T>,
    G: Send,
{
    let k = kernels_for::<T::Acc>(isa)?;
    let sh = op.shape();
    let (c, d) = (sh.c, sh.d);
    let (bases, image) = sh.bases();
    if sh.n == 0 || c == 0 {
        return Ok(());
    }
    let elems = elements(op);
    let work = (sh.n * elems * sh.points) as f64 * c as f64 * 12.0;
    // Lanes cost an input-gradient image each (zeroed, then reduced): where the scatter's work
    // is below that (a decoder's few queries over a large image), one lane; never more lanes
    // than rows. Decided by the shape alone, so the bits are the same on any machine.
    let scatter_work = elems * sh.points * sh.groups() * d * 4;
    let lanes = if scatter_work < image * c * LANES {
        1
    } else {
        LANES.min(sh.rows)
    };
    threads::serial_if_small(work, || {
        let len_img = image * c;
        let mut xt_lines = Lines::new("input (channels-last copy)", len_img, 1)?;
        let xt = &mut xt_lines.all()[..len_img];
        let mut dx_lines = Lines::new("input gradient lanes", len_img, lanes)?;
        let stride = dx_lines.stride;
        let dx = dx_lines.all();
        let scratch = PerWorker::new();
        let (zero, one) = (T::Acc::zero(), T::Acc::one());
        for (n, rows) in grad_rows.into_iter().enumerate() {
            copy_image(op, n, xt);
            threads::for_each_chunk(dx, 1 << 16, |_, part, _| part.fill(zero));
            // Lane l: rows [l*R/L, (l+1)*R/L), fixed by the shape alone.
            let mut work_lanes = Vec::with_capacity(lanes);
            let mut rows = rows.into_iter().enumerate();
            for (l, lane_dx) in dx.chunks_mut(stride).enumerate() {
                let end = (l + 1) * sh.rows / lanes;
                let mine: Vec<(usize, G)> = rows.by_ref().take(end - l * sh.rows / lanes).collect();
                work_lanes.push((mine, lane_dx));
            }
            let xt = &*xt;
            for_each_item(work_lanes, |(mine, lane_dx), w| {
                scratch.with(
                    w,
                    || RowScratch::new(sh.row_len, c),
                    |s| {
                        for (r, mut sink) in mine {
                            let len = op.row(r).len();
                            dout(n, r, &mut s.tmp[..len * c]);
                            for g in 0..sh.groups() {
                                let lo = g * d;
                                for point in 0..sh.points {
                                    describe(op, k, [n, r, g, point], len, true, s);
                                    let base = bases[op.plane_of(point)] * c;
                                    let job = RowJob {
                                        s: &s.s,
                                        n: len,
                                        c,
                                        lo,
                                        len: d,
                                        stride: c,
                                        add: false,
                                    };
                                    s.dots[..4 * len].fill(zero);
                                    let (dcol, x, gx) =
                                        (&s.tmp[lo..], &xt[base..], &mut lane_dx[base..]);
                                    match k.backward_row {
                                        Some(fused) => {
                                            fused(&job, dcol, x, &mut [], &mut s.dots, gx)
                                        }
                                        None => {
                                            (k.dot4_row)(&job, dcol, x, &mut s.dots);
                                            (k.scatter_row)(&job, dcol, gx);
                                        }
                                    }
                                    // Reuse the position buffers for the gradients.
                                    let RowScratch {
                                        y,
                                        x,
                                        m,
                                        s: rs,
                                        dots,
                                        ..
                                    } = &mut *s;
                                    for (t, a) in dots[..4 * len].chunks_exact(4).enumerate() {
                                        let (ly, lx, mt) = (rs.ly[t], rs.lx[t], rs.m[t]);
                                        let (hy, hx) = (one - ly, one - lx);
                                        (y[t], x[t], m[t]) = if rs.grad[t] {
                                            (
                                                mt * (hx * (a[2] - a[0]) + lx * (a[3] - a[1])),
                                                mt * (hy * (a[1] - a[0]) + ly * (a[3] - a[2])),
                                                hy * hx * a[0]
                                                    + hy * lx * a[1]
                                                    + ly * hx * a[2]
                                                    + ly * lx * a[3],
                                            )
                                        } else {
                                            (zero, zero, zero)
                                        };
                                    }
                                    put(
                                        &mut sink,
                                        &PointGrads {
                                            g,
                                            point,
                                            y: &y[..len],
                                            x: &x[..len],
                                            m: &m[..len],
                                        },
                                    );
                                }
                            }
                        }
                    },
                )
            });
            // The lanes' sums in lane order, into lane 0.
            let (first, others) = dx.split_at_mut(stride);
            let first = &mut first[..len_img];
            let others = &*others;
            threads::for_each_chunk(first, 4096, |i, part, _| {
                let at = i * 4096;
                for (j, v) in part.iter_mut().enumerate() {
                    for l in 0..lanes - 1 {
                        *v += others[l * stride + at + j];
                    }
                }
            });
            store_dx(n, &dx[..len_img]);
        }
        Ok(())
    })
}
