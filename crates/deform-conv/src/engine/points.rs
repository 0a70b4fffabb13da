//! The sampling core of the weightless operators (DCNv3, DCNv4, multi-scale deformable
//! attention): outputs that are weighted sums of bilinear samples of a channels-last image.
//!
//! An operator ([`PointOp`]) describes an image of one or more planes (DCNv3: one; attention: its
//! levels) of `C` channels in groups of `D`, and output rows (DCNv3: a run of output pixels;
//! attention: a block of queries) whose every element `t` of group `g` is
//! `out[t, g*D + c] = sum_k m_k[t] * bilinear(plane(k), y_k[t], x_k[t], g*D + c)`.
//! Per (row, group) the operator describes every point's positions at once (from its tensors'
//! runs through [`describe_runs`]); the descriptors are
//! computed by the same kernels as DCNv2's (`sample_row`, with absolute positions: `y0 = x0 = 0`,
//! no stride), one call per plane's run of points, and run across the group's channel run:
//! forward `gather_points` (each element's sum over the points in registers, stored once);
//! backward block by block of `BACK_BLOCK` elements, per point, `dot4_row` and `scatter_row`
//! (fused where a table has `backward_row`).
//!
//! Where the table has one-pass rows for the shape ([`PointKernels`]: AVX-512's and AVX2's
//! forward and backward, the portable bodies on the scalar table) and the image is the
//! accumulation type, the image is read in place and each (row, group) is one kernel call doing
//! the same operations as the passes below (the same bits): forward [`forward_in_place`] (each
//! element's positions, descriptors and samples, from the operator's runs straight into the
//! output), backward [`backward_in_place`]. Otherwise each image is copied once into the
//! accumulation type, group-major as DCNv2's (`image`): group by group, its planes one after the
//! other, each followed by the zero pixel the descriptors point at for corners outside it, so a
//! group's neighbouring corners are neighbours in memory.
//! Forward: rows in parallel, the sums formed point by point in a fixed order. Backward: rows
//! dealt to `blocking::LANES` fixed lanes (one where the samples are few for the image), each
//! with its own input-gradient image, zeroed only where its rows' corners can reach (a hull of
//! rows per group and plane, grown as the rows come: [`cover`]) and summed in lane order over
//! the lanes that hold a pixel as it is stored. The position and weight gradients go to the
//! operator group by group (`put`); big ones are staged per row and streamed into their tensor
//! once the row's last group is in ([`write_group`]). Outputs
//! and gradients are written in full (their buffers start unwritten, `alloc::Written`).
//! Same bits for any thread count and either route; memory bounded by `LANES + 1` images (and a
//! row's records per worker).

use super::blocking::{LANES, STREAM_BYTES};
pub(crate) use super::kernels::Interleave;
pub(crate) use super::kernels::PointRuns;
use super::kernels::{
    interleave, interleave_as, point_grads, prefetch, Isa, Kernels, PointKernels, PointsBack,
    PointsBackFn, PointsRow, RowJob, BACK_BLOCK, PREFETCH_AHEAD,
};
use super::plan::kernels_for;
use super::sample::{RowArgs, RowSamples};
use super::scratch::{try_take, Buf};
use super::threads::{self, for_each_item, PerWorker};
use crate::element::{Element, Real};
use crate::error::Result;
use crate::params::GradGate;
use ndarray::{ArrayViewMut2, Axis};
use num_traits::Zero;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Groups the one-pass forward ([`super::kernels::PointsRow`]) takes at a time for each
    /// element (chosen per operator by measurement: BENCHMARKS.md).
    pub block: usize,
    /// `[rows, columns]` from an element's base to the input pixel the one-pass forward
    /// prefetches ([`super::kernels::PointsRow::lead`]).
    pub lead: Option<[i32; 2]>,
}

impl Shape {
    fn groups(&self) -> usize {
        self.c / self.d.max(1)
    }

    /// Pixels of an image, every plane's together.
    fn pixels(&self) -> usize {
        self.planes.iter().map(|&(h, w)| h * w).sum()
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
    /// Image `n` as one slice (all planes concatenated, `C` values a pixel), when contiguous.
    fn image(&self, n: usize) -> Option<&[T]>;
    /// `f` on the runs of the operator's tensors that hold every point of group `g` for the `len`
    /// elements of row `r` of image `n` (`at = [n, r, g]`); `None` where they are not runs
    /// (tensors with other strides).
    fn with_runs<R>(
        &self,
        at: [usize; 3],
        len: usize,
        f: impl FnOnce(&PointRuns<'_, T, T::Acc>) -> R,
    ) -> Option<R>;
    /// Positions (in pixels of each point's plane) and weights of every point of group `g` for
    /// the `len` elements of row `r` of image `n` (`at = [n, r, g]`): point `k`'s at `k*len ..
    /// (k+1)*len` of `y`, `x` and `m` (through [`describe_runs`] where the inputs are runs).
    fn describe(
        &self,
        k: &Kernels<T::Acc>,
        at: [usize; 3],
        len: usize,
        y: &mut [T::Acc],
        x: &mut [T::Acc],
        m: &mut [T::Acc],
    );
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

/// [`Interleave`] into rows of the storage type `T` (`dst[t * stride + r]`): the table's kernel
/// where `T` is its own accumulation type, else value by value, each value converted once.
pub(crate) fn interleave_into<T: Element>(
    k: &Kernels<T::Acc>,
    job: &Interleave<'_, T::Acc>,
    dst: &mut [MaybeUninit<T>],
) {
    if let Some(dst) = T::as_acc_out(dst) {
        return k.interleave.unwrap_or(interleave::<T::Acc>)(job, dst);
    }
    interleave_as(job, dst, T::from_acc)
}

/// Group `g` (of `groups`) of a row's gradient records: `R` tensor rows `dst[i]` of `len`
/// elements each, `pad` (a row and its columns) written zero with the first group, then each job
/// `(row, first value, interleave)`. Where the call's records are `big` (at least
/// [`STREAM_BYTES`]), `T` is the accumulation type and the table streams, every group goes into
/// the worker's `stage` (kept between calls) and the last one streams the records into `dst`
/// whole: the tensor's lines written once, never read for ownership once per group. Otherwise,
/// or if the staging rows cannot be allocated, straight into `dst`. The same values either way.
pub(crate) fn write_group<T: Element, const R: usize>(
    (k, big): (&Kernels<T::Acc>, bool),
    stage: &mut Vec<MaybeUninit<T::Acc>>,
    mut dst: [&mut [MaybeUninit<T>]; R],
    ((g, groups), len): ((usize, usize), usize),
    pad: Option<(usize, &[usize])>,
    jobs: &[(usize, usize, Interleave<'_, T::Acc>)],
) {
    if len == 0 {
        return;
    }
    let lens = dst.each_ref().map(|d| d.len());
    let total: usize = lens.iter().sum();
    let stream = k
        .stream
        .filter(|_| big && dst.iter_mut().all(|d| T::as_acc_out(d).is_some()));
    if g == 0 && stream.is_some() {
        // The same worker runs every group of the row: its later groups find `total` here.
        stage.clear();
        if stage.try_reserve_exact(total).is_ok() {
            stage.resize(total, MaybeUninit::uninit());
        }
    }
    let Some(stream) = stream.filter(|_| stage.len() == total) else {
        if let (0, Some((i, cols))) = (g, pad) {
            zero_columns(dst[i], len, cols, T::from_acc(T::Acc::zero()));
        }
        for (i, at, job) in jobs {
            interleave_into(k, job, &mut dst[*i][*at..]);
        }
        return;
    };
    let mut rest = &mut stage[..];
    let parts: [&mut [MaybeUninit<T::Acc>]; R] = std::array::from_fn(|i| {
        let (part, more) = std::mem::take(&mut rest).split_at_mut(lens[i]);
        rest = more;
        part
    });
    if let (0, Some((i, cols))) = (g, pad) {
        zero_columns(parts[i], len, cols, T::Acc::zero());
    }
    let body = k.interleave.unwrap_or(interleave::<T::Acc>);
    for (i, at, job) in jobs {
        body(job, &mut parts[*i][*at..]);
    }
    if g + 1 == groups {
        for (part, d) in parts.iter().zip(dst.iter_mut()) {
            let Some(d) = T::as_acc_out(d) else {
                unreachable!("`stream` checked every row")
            };
            // SAFETY: the row's groups, one after another on this worker, wrote every value of
            // the staging rows (the operator's records: each point's values and the padding);
            // the table is this CPU's.
            unsafe { stream(part, d) };
        }
    }
}

/// Columns `cols` of each of the `len` element rows of `rows` set to `zero`.
fn zero_columns<E: Copy>(rows: &mut [MaybeUninit<E>], len: usize, cols: &[usize], zero: E) {
    for row in rows.chunks_exact_mut(rows.len() / len) {
        for &c in cols {
            row[c].write(zero);
        }
    }
}

static STREAM_ALL: AtomicBool = AtomicBool::new(false);

/// A test aid: from now on (`true`) every call's position and weight gradients go through the
/// staged rows of [`write_group`] (streamed where the table can), whatever their size and
/// memory, so that small problems run that path. The same bits either way; off by default.
#[doc(hidden)]
pub fn stream_all(on: bool) {
    STREAM_ALL.store(on, Ordering::Relaxed);
}

/// Whether a call's position and weight gradients, `values` values of `T`, are streamed
/// ([`write_group`]): big ones into given-back memory (`reused`; fresh pages come zeroed into
/// the caches, where plain stores find them).
pub(crate) fn streamed<T>(values: usize, reused: bool) -> bool {
    STREAM_ALL.load(Ordering::Relaxed)
        || reused && values.saturating_mul(std::mem::size_of::<T>()) >= STREAM_BYTES
}

/// `[N, pixels.., C]` as each image's `[pixels, C]` view (an input gradient for the backward);
/// an error naming `name` for strides that do not allow it.
pub(crate) fn image_rows<'a, T, D: ndarray::RemoveAxis>(
    name: &str,
    v: ndarray::ArrayViewMut<'a, T, D>,
    pixels: usize,
    c: usize,
) -> Result<Vec<ArrayViewMut2<'a, T>>> {
    pieces(v, Axis(0), 1)
        .into_iter()
        .map(|img| {
            img.into_shape_with_order((pixels, c)).map_err(|_| {
                crate::error::DeformError::parameter(
                    name,
                    "a standard-layout array",
                    "other strides",
                )
            })
        })
        .collect()
}

/// Output elements per image (the rows' lengths summed).
fn elements<T: Element, O: PointOp<T>>(op: &O) -> usize {
    (0..op.shape().rows).map(|r| op.row(r).len()).sum()
}

/// Pixels per task of the passes between an operator's image and the copy (the copy itself, the
/// input gradient's store): about 64 KiB of f32 accumulators, so a smaller image is one task,
/// not a hand-off to other threads for a few microseconds of copying.
fn copy_chunk(sh: &Shape) -> usize {
    ((16 << 10) / sh.c.max(1)).max(1)
}

/// A chunk of the copy: its first source pixel, its pixels, its run in each group.
type CopyTask<'a, A> = (usize, usize, Vec<&'a mut [A]>);

/// Image `n` in `xt`, group-major: group by group (`image * D` values each), plane by plane,
/// each followed by a zero pixel, `D` values a pixel: a group's corners of neighbouring pixels
/// are neighbours in memory. Pixels in parallel chunks.
fn copy_image<T: Element, O: PointOp<T>>(op: &O, n: usize, xt: &mut [T::Acc]) {
    let sh = op.shape();
    let (c, d, groups) = (sh.c, sh.d, sh.groups());
    let (_, image) = sh.bases();
    let chunk_px = copy_chunk(sh);
    let mut tasks: Vec<CopyTask<'_, T::Acc>> = Vec::new();
    for (g, mut rest) in xt.chunks_mut(image * d).take(groups).enumerate() {
        let mut s0 = 0;
        let mut at = 0;
        for &(h, w) in &sh.planes {
            let (plane, r) = rest.split_at_mut((h * w + 1) * d);
            let (pixels, zero) = plane.split_at_mut(h * w * d);
            zero.fill(T::Acc::zero());
            for (i, part) in pixels.chunks_mut(chunk_px * d).enumerate() {
                if g == 0 {
                    tasks.push((s0 + i * chunk_px, part.len() / d.max(1), Vec::new()));
                }
                tasks[at + i].2.push(part);
            }
            at += (h * w).div_ceil(chunk_px);
            s0 += h * w;
            rest = r;
        }
    }
    let whole = op.image(n);
    for_each_item(tasks, |(s0, count, mut parts), _| {
        if let Some(src) = whole {
            // Straight from the image into each group's run.
            let src = &src[s0 * c..(s0 + count) * c];
            for (g, part) in parts.iter_mut().enumerate() {
                for (dst, px) in part.chunks_exact_mut(d).zip(src.chunks_exact(c)) {
                    run_to_acc::<T>(dst, &px[g * d..(g + 1) * d]);
                }
            }
            return;
        }
        if let [only] = &mut parts[..] {
            return op.copy_pixels(n, s0, only);
        }
        let mut pixels = vec![T::Acc::zero(); count * c];
        op.copy_pixels(n, s0, &mut pixels);
        for (g, part) in parts.iter_mut().enumerate() {
            for (dst, src) in part.chunks_exact_mut(d).zip(pixels.chunks_exact(c)) {
                dst.copy_from_slice(&src[g * d..(g + 1) * d]);
            }
        }
    });
}

/// `dst = src` in the accumulation type, for a group's short run: f32 and f64 runs of the
/// usual lengths as fixed-size array copies (vector moves; a `memmove` call per run, or an
/// element loop, was most of a transpose's time).
#[inline(always)]
fn run_to_acc<T: Element>(dst: &mut [T::Acc], src: &[T]) {
    #[inline(always)]
    fn fixed<A: Copy, const N: usize>(dst: &mut [A], src: &[A]) {
        let s: &[A; N] = src.try_into().expect("runs of N");
        let d: &mut [A; N] = dst.try_into().expect("runs of N");
        *d = *s;
    }
    match T::as_acc(src) {
        Some(s) => match s.len() {
            8 => fixed::<T::Acc, 8>(dst, s),
            16 => fixed::<T::Acc, 16>(dst, s),
            32 => fixed::<T::Acc, 32>(dst, s),
            64 => fixed::<T::Acc, 64>(dst, s),
            _ => dst.copy_from_slice(s),
        },
        None => dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_acc()),
    }
}

/// One row's scratch: a group's positions and weights, descriptors, the sums, the output
/// gradient and every point's gradients.
struct RowScratch<A> {
    y: Vec<A>,
    x: Vec<A>,
    m: Vec<A>,
    s: RowSamples<A>,
    acc: Vec<A>,
    tmp: Vec<A>,
    dots: Vec<A>,
    grads: [Vec<A>; 3],
    /// The operator's staging rows for a row's gradient records ([`write_group`]).
    stage: Vec<MaybeUninit<A>>,
}

impl<A: Real> RowScratch<A> {
    /// For rows of up to `len` elements of `c` channels, `points` points per group, descriptors
    /// for `described` of them at once.
    fn new(len: usize, c: usize, points: usize, described: usize) -> Self {
        RowScratch {
            y: vec![A::zero(); len * points],
            x: vec![A::zero(); len * points],
            m: vec![A::zero(); len * points],
            s: RowSamples::new(len * described),
            acc: vec![A::zero(); len * c],
            tmp: vec![A::zero(); len * c],
            dots: vec![A::zero(); 4 * len],
            grads: std::array::from_fn(|_| vec![A::zero(); len * points]),
            stage: Vec::new(),
        }
    }

    /// Group `g`'s position and weight gradients of a row of `len` elements, `points` points,
    /// handed to the operator's `put` with the staging rows.
    fn put<G>(
        &mut self,
        put: &impl Fn(&mut G, &PointGrads<'_, A>, &mut Vec<MaybeUninit<A>>),
        sink: &mut G,
        (g, len, points): (usize, usize, usize),
    ) {
        let [y, x, m] = self.grads.each_ref().map(|v| &v[..len * points]);
        put(sink, &PointGrads { g, len, y, x, m }, &mut self.stage);
    }
}

/// The descriptors of the positions `r` of `s.y`, `s.x`, `s.m` (of `point`'s plane: a run of
/// points of one plane, or a block of one point's elements) into entries `at ..` of `s.s`, with
/// the gradient fields when `gradients`.
fn sample<T: Element, O: PointOp<T>>(
    op: &O,
    k: &Kernels<T::Acc>,
    (point, r, at): (usize, Range<usize>, usize),
    gradients: bool,
    s: &mut RowScratch<T::Acc>,
) {
    let (h, w) = op.shape().planes[op.plane_of(point)];
    let args = RowArgs {
        y0: 0,
        x0: 0,
        sx: 0,
        dy: &s.y[r.clone()],
        dx: &s.x[r.clone()],
        m: &s.m[r],
        h,
        w,
        gate: GradGate::Open,
        at,
        gradients,
    };
    (k.sample_row)(&args, &mut s.s);
}

/// A group's row of `len` elements on its group-major image (`d` channels a pixel) against rows
/// of `c` channels (the output, the output gradient).
fn group_row<A>(s: &RowSamples<A>, len: usize, d: usize, c: usize) -> RowJob<'_, A> {
    RowJob {
        s,
        n: len,
        c: d,
        lo: 0,
        len: d,
        stride: c,
    }
}

/// The points in runs that sample the same plane.
fn plane_runs<T: Element, O: PointOp<T>>(op: &O) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for k in 0..op.shape().points {
        match runs.last_mut() {
            Some(r) if op.plane_of(r.start) == op.plane_of(k) => r.end = k + 1,
            _ => runs.push(k..k + 1),
        }
    }
    runs
}

/// `y`, `x`, `m` from `r` (see [`super::kernels::DescribePointsFn`]): the table's kernel where
/// it has one and the runs are in the accumulation type, else this loop (the same operations).
pub(crate) fn describe_runs<T: Element>(
    k: &Kernels<T::Acc>,
    r: &PointRuns<'_, T, T::Acc>,
    y: &mut [T::Acc],
    x: &mut [T::Acc],
    m: &mut [T::Acc],
) {
    let (p, len) = (r.points, r.len);
    if let (Some(f), Some(runs)) = (k.describe_points, acc_runs(r)) {
        if p <= 16 {
            return f(&runs, y, x, m);
        }
    }
    let ([tap_y, tap_x], [scale_y, scale_x]) = (r.tap, r.scale);
    for t in 0..len {
        let ahead = t + PREFETCH_AHEAD;
        if ahead < len {
            prefetch(&r.pairs[r.pair0 + ahead * r.pair_step..][..2 * p]);
            prefetch(&r.weights[r.weight0 + ahead * r.weight_step..][..p]);
        }
        let pairs = &r.pairs[r.pair0 + t * r.pair_step..][..2 * p];
        let weights = &r.weights[r.weight0 + t * r.weight_step..][..p];
        let (by, bx) = (r.base[0][t], r.base[1][t]);
        for (j, (xy, w)) in pairs.chunks_exact(2).zip(weights).enumerate() {
            y[j * len + t] = by + (tap_y[j] + xy[1].to_acc()) * scale_y[j];
            x[j * len + t] = bx + (tap_x[j] + xy[0].to_acc()) * scale_x[j];
            m[j * len + t] = w.to_acc();
        }
    }
}

/// `r` itself when its runs are in the accumulation type (f32, f64).
fn acc_runs<'a, T: Element>(r: &PointRuns<'a, T, T::Acc>) -> Option<PointRuns<'a, T::Acc, T::Acc>> {
    Some(PointRuns {
        pairs: T::as_acc(r.pairs)?,
        pair0: r.pair0,
        pair_step: r.pair_step,
        weights: T::as_acc(r.weights)?,
        weight0: r.weight0,
        weight_step: r.weight_step,
        points: r.points,
        len: r.len,
        tap: r.tap,
        scale: r.scale,
        base: r.base,
    })
}

/// Every point's positions and weights of group `g` on row `r` of image `n` into `s`.
fn describe<T: Element, O: PointOp<T>>(
    op: &O,
    k: &Kernels<T::Acc>,
    [n, r, g]: [usize; 3],
    len: usize,
    s: &mut RowScratch<T::Acc>,
) {
    let all = len * op.shape().points;
    op.describe(
        k,
        [n, r, g],
        len,
        &mut s.y[..all],
        &mut s.x[..all],
        &mut s.m[..all],
    );
}

/// The forward: `rows[n][r]` (`[len of row r, C]`) receives row `r` of image `n`, every
/// element written when it returns `Ok`.
pub(crate) fn forward<T: Element, O: PointOp<T>>(
    op: &O,
    isa: Isa,
    mut rows: Vec<Vec<ArrayViewMut2<'_, MaybeUninit<T>>>>,
) -> Result<()> {
    let k = kernels_for::<T::Acc>(isa)?;
    let sh = op.shape();
    let (c, d) = (sh.c, sh.d);
    let (bases, image) = sh.bases();
    if sh.n == 0 || c == 0 {
        return Ok(());
    }
    // Descriptors index the whole copy (each plane's start added to its points' indices), so
    // every pixel index of the copy must fit in u32; then so does every plane's start.
    if u32::try_from(image).is_err() {
        return Err(crate::error::DeformError::parameter(
            "input",
            "fewer than 2^32 pixels in an image (all levels together)",
            image,
        ));
    }
    let bases: Vec<u32> = bases.iter().map(|&b| b as u32).collect();
    let runs = plane_runs(op);
    let work = (sh.n * elements(op) * sh.points) as f64 * c as f64 * 4.0;
    if let Some(f) = in_place(op, k, &mut rows) {
        return threads::serial_if_small(work, || forward_in_place(op, f, rows));
    }
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
                        || RowScratch::new(sh.row_len, c, sh.points, sh.points),
                        |s| {
                            let len = op.row(r).len();
                            for g in 0..sh.groups() {
                                describe(op, k, [n, r, g], len, s);
                                for pts in &runs {
                                    let at = pts.start * len;
                                    sample(op, k, (pts.start, at..pts.end * len, at), false, s);
                                    let base = bases[op.plane_of(pts.start)];
                                    if base > 0 {
                                        for idx in &mut s.s.idx {
                                            idx[at..pts.end * len]
                                                .iter_mut()
                                                .for_each(|i| *i += base);
                                        }
                                    }
                                }
                                let job = group_row(&s.s, len, d, c);
                                let xt = &xt[g * image * d..(g + 1) * image * d];
                                (k.gather_points)(&job, sh.points, xt, &mut s.acc[g * d..]);
                            }
                            let store = |(o, v): (&mut MaybeUninit<T>, &T::Acc)| {
                                o.write(T::from_acc(*v));
                            };
                            match out.as_slice_mut() {
                                Some(o) => o.iter_mut().zip(&s.acc).for_each(store),
                                None => out.iter_mut().zip(&s.acc).for_each(store),
                            }
                        },
                    )
                },
            );
        }
        Ok(())
    })
}

/// The table's one-pass rows ([`PointKernels`]) where they take the shape and every image is a
/// slice of the accumulation type.
fn one_pass<'k, T: Element, O: PointOp<T>>(
    op: &O,
    k: &'k Kernels<T::Acc>,
) -> Option<&'k PointKernels<T::Acc>> {
    let sh = op.shape();
    let f = k
        .points
        .as_ref()
        .filter(|f| (f.fits)(sh.d, sh.points, sh.pixels().saturating_mul(sh.c)))?;
    (0..sh.n)
        .all(|n| op.image(n).and_then(T::as_acc).is_some())
        .then_some(f)
}

/// [`one_pass`]'s rows for the forward, where also every row's runs are slices of the
/// accumulation type and so is every output row.
fn in_place<'k, T: Element, O: PointOp<T>>(
    op: &O,
    k: &'k Kernels<T::Acc>,
    rows: &mut [Vec<ArrayViewMut2<'_, MaybeUninit<T>>>],
) -> Option<&'k PointKernels<T::Acc>> {
    let sh = op.shape();
    let f = one_pass(op, k)?;
    // Contiguity is a tensor's: row 0 tells for every row of an image.
    let runs = (0..sh.n).all(|n| {
        sh.rows == 0 || op.with_runs([n, 0, 0], 0, |r| acc_runs(r).is_some()) == Some(true)
    });
    let outs = rows
        .iter_mut()
        .flatten()
        .all(|o| o.as_slice_mut().and_then(T::as_acc_out).is_some());
    (runs && outs).then_some(f)
}

/// Per point: its plane's `[h, w, first pixel]`, plane `q` starting at pixel `starts[q]`; no
/// `starts`: the operator's image (no zero pixels between the planes).
fn point_planes<T, O>(op: &O, starts: Option<&[usize]>) -> Vec<[usize; 3]>
where
    T: Element,
    O: PointOp<T>,
{
    let sh = op.shape();
    let (mut first, mut at) = (Vec::with_capacity(sh.planes.len()), 0);
    for (q, &(h, w)) in sh.planes.iter().enumerate() {
        first.push([h, w, starts.map_or(at, |s| s[q])]);
        at += h * w;
    }
    (0..sh.points).map(|k| first[op.plane_of(k)]).collect()
}

/// The forward through [`in_place`]'s kernel: rows in parallel, each group's points in one pass
/// straight from the operator's tensors into the output (no image copy).
fn forward_in_place<T: Element, O: PointOp<T>>(
    op: &O,
    f: &PointKernels<T::Acc>,
    rows: Vec<Vec<ArrayViewMut2<'_, MaybeUninit<T>>>>,
) -> Result<()> {
    let sh = op.shape();
    let (c, d) = (sh.c, sh.d);
    let planes = point_planes(op, None);
    for (n, image_rows) in rows.into_iter().enumerate() {
        let Some(image) = op.image(n).and_then(T::as_acc) else {
            unreachable!("`in_place` checked every image")
        };
        for_each_item(
            image_rows.into_iter().enumerate().collect(),
            |(r, mut out), _| {
                let len = op.row(r).len();
                let Some(out) = out.as_slice_mut().and_then(T::as_acc_out) else {
                    unreachable!("`in_place` checked every output row")
                };
                // Each group's first pair and weight; the runs otherwise the same for all.
                let groups: Option<Vec<[usize; 3]>> = (0..sh.groups())
                    .map(|g| op.with_runs([n, r, g], len, |runs| [runs.pair0, runs.weight0, g * d]))
                    .collect();
                let wrote = op.with_runs([n, r, 0], len, |runs| {
                    let (Some(runs), Some(groups)) = (acc_runs(runs), groups.as_deref()) else {
                        unreachable!("`in_place` checked the runs and their type")
                    };
                    let row = PointsRow {
                        runs,
                        groups,
                        planes: &planes,
                        image,
                        c,
                        d,
                        block: sh.block,
                        lead: sh.lead,
                    };
                    (f.forward)(&row, out)
                });
                if wrote.is_none() {
                    unreachable!("`in_place` checked that the operator's tensors are runs")
                }
            },
        );
    }
    Ok(())
}

/// What the backward hands an operator for one (row, group): the gradients of every point's
/// position (`y`, `x`, in pixels of the point's plane) and weight, point `k`'s for the row's
/// `len` elements at `k*len .. (k+1)*len`.
pub(crate) struct PointGrads<'a, A> {
    pub g: usize,
    pub len: usize,
    pub y: &'a [A],
    pub x: &'a [A],
    pub m: &'a [A],
}

/// The output gradient of image `n`'s row `r` (`[len, C]`): `held(n, r)` where the tensor holds
/// it so in the accumulation type (read in place), else `copy(n, r, dst)` fills `dst` with it.
pub(crate) struct Dout<H, C> {
    pub held: H,
    pub copy: C,
}

/// The backward. `grad_rows[n][r]` is what the operator writes row `r`'s position and weight
/// gradients into (through `put`, group by group in order on one worker, with that worker's
/// staging rows for [`write_group`]); `dout` gives row `r`'s output gradient; `dx_images[n]`
/// (`[pixels of every plane, C]`, the planes in order) receives image `n`'s input gradient,
/// every element written.
pub(crate) fn backward<'g, T, O, G>(
    op: &O,
    isa: Isa,
    grad_rows: Vec<Vec<G>>,
    dout: Dout<
        impl Fn(usize, usize) -> Option<&'g [T::Acc]> + Sync,
        impl Fn(usize, usize, &mut [T::Acc]) + Sync,
    >,
    put: impl Fn(&mut G, &PointGrads<'_, T::Acc>, &mut Vec<MaybeUninit<T::Acc>>) + Sync,
    dx_images: Vec<ArrayViewMut2<'_, MaybeUninit<T>>>,
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
    if let Some(f) = one_pass(op, k).and_then(|f| f.backward) {
        return threads::serial_if_small(work, || {
            backward_in_place(op, (k, f), lanes, grad_rows, (dout, put), dx_images)
        });
    }
    threads::serial_if_small(work, || {
        let len_img = image * c;
        let mut xt_lines = Lines::new("input (channels-last copy)", len_img, 1)?;
        let xt = &mut xt_lines.all()[..len_img];
        let mut dx_lines = Lines::new("input gradient lanes", len_img, lanes)?;
        let stride = dx_lines.stride;
        let dx = dx_lines.all();
        let scratch = PerWorker::new();
        let zero = T::Acc::zero();
        // Per lane, a hull for each (group, plane), in pixels of the copy.
        let planes = sh.planes.len();
        let mut hulls: Vec<Hulls> = vec![vec![0..0; sh.groups() * planes]; lanes];
        let copy_planes = point_planes(op, Some(&bases));
        for (n, (rows, dx_image)) in grad_rows.into_iter().zip(dx_images).enumerate() {
            copy_image(op, n, xt);
            hulls.iter_mut().flatten().for_each(|h| *h = 0..0);
            let work_lanes = deal(rows, dx.chunks_mut(stride).zip(hulls.iter_mut()), sh.rows);
            let xt = &*xt;
            for_each_item(work_lanes, |(mine, (lane_dx, hull)), w| {
                scratch.with(
                    w,
                    || RowScratch::new(sh.row_len, c, sh.points, 1),
                    |s| {
                        for (r, mut sink) in mine {
                            let len = op.row(r).len();
                            (dout.copy)(n, r, &mut s.tmp[..len * c]);
                            for g in 0..sh.groups() {
                                let lo = g * d;
                                let group = g * image * d..(g + 1) * image * d;
                                let (xg, dxg) = (&xt[group.clone()], &mut lane_dx[group]);
                                describe(op, k, [n, r, g], len, s);
                                let hull = &mut hull[g * planes..(g + 1) * planes];
                                cover(op, hull, (&s.y, len), &copy_planes, d, dxg);
                                // Blocks of `BACK_BLOCK` elements, in each every point.
                                for tb in (0..len).step_by(BACK_BLOCK) {
                                    let nb = BACK_BLOCK.min(len - tb);
                                    for point in 0..sh.points {
                                        let at = point * len + tb;
                                        sample(op, k, (point, at..at + nb, 0), true, s);
                                        let base = bases[op.plane_of(point)] * d;
                                        let job = group_row(&s.s, nb, d, c);
                                        s.dots[..4 * nb].fill(zero);
                                        let (dcol, x, gx) =
                                            (&s.tmp[tb * c + lo..], &xg[base..], &mut dxg[base..]);
                                        match k.backward_row {
                                            Some(fused) => {
                                                fused(&job, dcol, x, &mut [], &mut s.dots, gx)
                                            }
                                            None => {
                                                (k.dot4_row)(&job, dcol, x, &mut s.dots);
                                                (k.scatter_row)(&job, dcol, gx);
                                            }
                                        }
                                        let RowScratch {
                                            s: rs,
                                            dots,
                                            grads: [gy, gx, gm],
                                            ..
                                        } = &mut *s;
                                        let (gy, gx, gm) = (
                                            &mut gy[at..at + nb],
                                            &mut gx[at..at + nb],
                                            &mut gm[at..at + nb],
                                        );
                                        for (t, a) in dots[..4 * nb].chunks_exact(4).enumerate() {
                                            [gy[t], gx[t], gm[t]] = if rs.grad[t] {
                                                let a = [a[0], a[1], a[2], a[3]];
                                                point_grads(a, [rs.ly[t], rs.lx[t], rs.m[t]])
                                            } else {
                                                [zero; 3]
                                            };
                                        }
                                    }
                                }
                                s.put(&put, &mut sink, (g, len, sh.points));
                            }
                        }
                    },
                )
            });
            store_dx(sh, (&dx[..], stride, &hulls), dx_image);
        }
        Ok(())
    })
}

/// A lane's rows (with their indices) and what it accumulates into (`L`).
type Lane<G, L> = (Vec<(usize, G)>, L);

/// The rows (`total` of them) dealt to the lanes: lane `l` gets rows `[l*R/L, (l+1)*R/L)` with
/// their indices, fixed by the shape alone.
fn deal<G, L>(
    rows: Vec<G>,
    lanes: impl ExactSizeIterator<Item = L>,
    total: usize,
) -> Vec<Lane<G, L>> {
    let n = lanes.len();
    let mut rows = rows.into_iter().enumerate();
    lanes
        .enumerate()
        .map(|(l, lane)| {
            let mine = rows
                .by_ref()
                .take((l + 1) * total / n - l * total / n)
                .collect();
            (mine, lane)
        })
        .collect()
}

/// Per plane (per group and plane in the copy route), the pixels a lane's input gradient holds:
/// zeroed as the lane's rows reach them ([`cover`]), so only what its corners can touch is
/// zeroed, scattered into and summed, while the lines are still in cache.
type Hulls = Vec<Range<usize>>;

/// Grows the hulls of a row's points (`hulls[q]`: plane `q`'s, in the pixels `planes` count)
/// to cover the pixels the points can touch, zeroing what they add in `dx` (`c` values a
/// pixel). Point `k`'s positions are `ys[k*len ..][..len]`, in rows of its plane `planes[k]` =
/// `[h, w, first pixel]`; a corner lies in row `floor(y)` or the next; NaN positions touch
/// nothing. One row of margin either side.
fn cover<T: Element, O: PointOp<T>>(
    op: &O,
    hulls: &mut [Range<usize>],
    (ys, len): (&[T::Acc], usize),
    planes: &[[usize; 3]],
    c: usize,
    dx: &mut [T::Acc],
) {
    let zero =
        |px: Range<usize>, dx: &mut [T::Acc]| dx[px.start * c..px.end * c].fill(T::Acc::zero());
    for (k, &plane) in planes.iter().enumerate() {
        let Some(want) = rows_reached(&ys[k * len..(k + 1) * len], plane) else {
            continue;
        };
        let hull = &mut hulls[op.plane_of(k)];
        if hull.end <= hull.start {
            zero(want.clone(), dx);
            *hull = want;
            continue;
        }
        if want.start < hull.start {
            zero(want.start..hull.start, dx);
            hull.start = want.start;
        }
        if want.end > hull.end {
            zero(hull.end..want.end, dx);
            hull.end = want.end;
        }
    }
}

/// The pixels of the rows the positions `ys` (in rows of `plane` = `[h, w, first pixel]`) can
/// reach, one row of margin either side; `None` for none (no positions, all NaN, no rows).
fn rows_reached<A: Real>(ys: &[A], [h, w, first]: [usize; 3]) -> Option<Range<usize>> {
    // Sixteen independent minima and maxima (the loop vectorises), then folded.
    let (mut lo, mut hi) = ([A::infinity(); 16], [A::neg_infinity(); 16]);
    let mut chunks = ys.chunks_exact(16);
    for ch in chunks.by_ref() {
        for i in 0..16 {
            (lo[i], hi[i]) = (lo[i].min(ch[i]), hi[i].max(ch[i]));
        }
    }
    for (i, &y) in chunks.remainder().iter().enumerate() {
        (lo[i], hi[i]) = (lo[i].min(y), hi[i].max(y));
    }
    let lo = lo.into_iter().fold(A::infinity(), A::min);
    let hi = hi.into_iter().fold(A::neg_infinity(), A::max);
    if lo > hi || h == 0 {
        return None;
    }
    let row = |v: A, shift: f64| {
        (v.floor().to_f64().unwrap_or(0.0) + shift).clamp(0.0, (h - 1) as f64) as usize
    };
    let (r0, r1) = (row(lo, -1.0), row(hi, 2.0));
    Some(first + r0 * w..first + (r1 + 1) * w)
}

/// [`backward`] through [`one_pass`]'s kernel: the image read in place, the lanes laid out as
/// the image (no zero pixels: a corner outside receives nothing), the rows of a lane and their
/// groups in the same order, each (row, group) one kernel call.
fn backward_in_place<'g, T, O, G>(
    op: &O,
    (k, f): (&Kernels<T::Acc>, PointsBackFn<T::Acc>),
    lanes: usize,
    grad_rows: Vec<Vec<G>>,
    (dout, put): (
        Dout<
            impl Fn(usize, usize) -> Option<&'g [T::Acc]> + Sync,
            impl Fn(usize, usize, &mut [T::Acc]) + Sync,
        >,
        impl Fn(&mut G, &PointGrads<'_, T::Acc>, &mut Vec<MaybeUninit<T::Acc>>) + Sync,
    ),
    dx_images: Vec<ArrayViewMut2<'_, MaybeUninit<T>>>,
) -> Result<()>
where
    T: Element,
    O: PointOp<T>,
    G: Send,
{
    let sh = op.shape();
    let (c, d) = (sh.c, sh.d);
    let planes = point_planes(op, None);
    let len_img = sh.pixels() * c;
    // One lane and outputs of the accumulation type: the lane is the output itself, zeroed
    // whole (no hulls, no lane to sum): the same bits.
    let direct = lanes == 1
        && T::as_acc_out(&mut []).is_some()
        && dx_images.iter().all(|v| v.is_standard_layout());
    let mut dx_lines = Lines::new(
        "input gradient lanes",
        if direct { 0 } else { len_img },
        lanes,
    )?;
    let stride = dx_lines.stride;
    let dx = dx_lines.all();
    let mut hulls: Vec<Hulls> = vec![vec![0..0; sh.planes.len()]; lanes];
    let scratch = PerWorker::new();
    for (n, (rows, mut dx_image)) in grad_rows.into_iter().zip(dx_images).enumerate() {
        let Some(image) = op.image(n).and_then(T::as_acc) else {
            unreachable!("`one_pass` checked every image")
        };
        hulls.iter_mut().flatten().for_each(|h| *h = 0..0);
        let lane_dx: Vec<&mut [T::Acc]> = if direct {
            let Some(out) = dx_image.as_slice_mut().and_then(T::as_acc_out) else {
                unreachable!("`direct` checked every output")
            };
            vec![crate::alloc::filled(out, T::Acc::zero())]
        } else {
            dx.chunks_mut(stride).map(|l| &mut l[..len_img]).collect()
        };
        let work_lanes = deal(rows, lane_dx.into_iter().zip(hulls.iter_mut()), sh.rows);
        for_each_item(work_lanes, |(mine, (lane_dx, hull)), w| {
            scratch.with(
                w,
                || RowScratch::new(sh.row_len, c, sh.points, 1),
                |s| {
                    for (r, mut sink) in mine {
                        let len = op.row(r).len();
                        let all = len * sh.points;
                        let held = (dout.held)(n, r).filter(|v| v.len() == len * c);
                        if held.is_none() {
                            (dout.copy)(n, r, &mut s.tmp[..len * c]);
                        }
                        for g in 0..sh.groups() {
                            describe(op, k, [n, r, g], len, s);
                            if !direct {
                                cover(op, hull, (&s.y, len), &planes, c, lane_dx);
                            }
                            let RowScratch {
                                y,
                                x,
                                m,
                                tmp,
                                grads: [gy, gx, gm],
                                ..
                            } = &mut *s;
                            let row = PointsBack {
                                y: &y[..all],
                                x: &x[..all],
                                m: &m[..all],
                                len,
                                planes: &planes,
                                image,
                                dout: held.unwrap_or(&tmp[..len * c]),
                                c,
                                lo: g * d,
                                d,
                            };
                            let out = [&mut gy[..all], &mut gx[..all], &mut gm[..all]];
                            f(&row, lane_dx, out);
                            s.put(&put, &mut sink, (g, len, sh.points));
                        }
                    }
                },
            )
        });
        if !direct {
            store_lanes::<T>(sh, (&dx[..], stride, &hulls), dx_image);
        }
    }
    Ok(())
}

/// [`backward_in_place`]'s input gradient: each element the sum (in lane order) of the lanes
/// (laid out as `out`, `stride` apart) whose hulls hold its pixel, `+0` where none does. The
/// same bits as summing every lane: the lanes outside their hulls would add `+0`, an exact
/// identity for a lane's sums (which start at `+0` and add products, so are never `-0`).
/// Pixels in parallel chunks.
fn store_lanes<T: Element>(
    sh: &Shape,
    (dx, stride, hulls): (&[T::Acc], usize, &[Hulls]),
    out: ArrayViewMut2<'_, MaybeUninit<T>>,
) {
    let c = sh.c;
    let chunk_px = copy_chunk(sh);
    let tasks: Vec<_> = pieces(out, Axis(0), chunk_px)
        .into_iter()
        .enumerate()
        .collect();
    for_each_item(tasks, |(i, mut part), _| {
        let mut sum = vec![T::Acc::zero(); c];
        for (p, px) in part.outer_iter_mut().enumerate() {
            let at = i * chunk_px + p;
            let holding = (0..hulls.len()).filter(|&l| hulls[l].iter().any(|h| h.contains(&at)));
            store_run::<T>((dx, stride, holding), at * c, &mut sum, px);
        }
    });
}

/// `run` = the values at `from .. from + sum.len()` of the lanes `lanes` (of `dx`, `stride`
/// apart) summed in lane order (in `sum`); `+0` for no lane.
fn store_run<T: Element>(
    (dx, stride, lanes): (&[T::Acc], usize, impl Iterator<Item = usize>),
    from: usize,
    sum: &mut [T::Acc],
    mut run: ndarray::ArrayViewMut1<'_, MaybeUninit<T>>,
) {
    let n = sum.len();
    let mut lanes = lanes.map(|l| &dx[l * stride + from..l * stride + from + n]);
    match lanes.next() {
        Some(first) => sum.copy_from_slice(first),
        None => sum.fill(T::Acc::zero()),
    }
    for lane in lanes {
        sum.iter_mut().zip(lane).for_each(|(v, x)| *v += *x);
    }
    let store = |(o, v): (&mut MaybeUninit<T>, &T::Acc)| {
        o.write(T::from_acc(*v));
    };
    match run.as_slice_mut() {
        Some(o) => o.iter_mut().zip(&*sum).for_each(store),
        None => run.iter_mut().zip(&*sum).for_each(store),
    }
}

/// Image `n`'s input gradient, `[pixels of every plane, C]`: per pixel and group, the sum (in
/// lane order) of the group-major lanes `dx` (`stride` apart) whose hull for that (group,
/// plane) holds the pixel (as [`store_lanes`]). Pixels in parallel chunks.
fn store_dx<T: Element>(
    sh: &Shape,
    (dx, stride, hulls): (&[T::Acc], usize, &[Hulls]),
    out: ArrayViewMut2<'_, MaybeUninit<T>>,
) {
    let (d, (_, image)) = (sh.d, sh.bases());
    let planes = sh.planes.len();
    let chunk_px = copy_chunk(sh);
    // (plane, pixel of the copy, the output's pixels from there)
    let mut tasks = Vec::new();
    let (mut rest, mut at) = (out, 0);
    for (q, &(h, w)) in sh.planes.iter().enumerate() {
        let (plane, r) = rest.split_at(Axis(0), h * w);
        for (i, part) in pieces(plane, Axis(0), chunk_px).into_iter().enumerate() {
            tasks.push((q, at + i * chunk_px, part));
        }
        (rest, at) = (r, at + h * w + 1);
    }
    for_each_item(tasks, |(q, at, mut part), _| {
        let mut sum = vec![T::Acc::zero(); d];
        for (i, mut px) in part.outer_iter_mut().enumerate() {
            let s = at + i;
            for (g, run) in px.exact_chunks_mut(d).into_iter().enumerate() {
                let run = run.into_shape_with_order(d).expect("a run of d channels");
                let hull = g * planes + q;
                let holding = (0..hulls.len()).filter(|&l| hulls[l][hull].contains(&s));
                store_run::<T>((dx, stride, holding), g * image * d + s * d, &mut sum, run);
            }
        }
    });
}
