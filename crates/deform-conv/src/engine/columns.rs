//! The sampler's glue: one row of bilinear descriptors per (image, output row, deformable group,
//! tap), and the columns tile `cols[P x K*C/Gc]` (row = pixel, column = tap-major,
//! channel-minor) gathered from the channels-last image.

use super::kernels::{prefetch, RowJob};
use super::plan::Plan;
use super::sample::{RowArgs, RowSamples};
use crate::element::{Element, Real};
use crate::params::GradGate;
use ndarray::Axis;
use std::ops::Range;

impl<T: Element> Plan<'_, '_, T> {
    /// The row job of deformable group `dg`'s channel range `chans` (descriptors `s`, `stride`
    /// columns-tile elements between pixels), and the offset of the group's block in the
    /// channels-last layout: the kernels address `block[idx * C/G + lo ..]`.
    pub(super) fn job<'s>(
        &self,
        s: &'s RowSamples<T::Acc>,
        dg: usize,
        chans: &Range<usize>,
        stride: usize,
    ) -> (RowJob<'s, T::Acc>, usize) {
        let g = self.g;
        let cdg = g.c_per_deformable_group();
        let job = RowJob {
            s,
            n: g.wo,
            c: cdg,
            lo: chans.start - dg * cdg,
            len: chans.len(),
            stride,
        };
        (job, dg * (g.h * g.w + 1) * cdg)
    }

    /// The deformable-group segments of conv group `q`: `(dg, channel offset in the conv group,
    /// channel range)`. Channels of one conv group may span several deformable groups and the
    /// reverse.
    pub(super) fn segments(&self, q: usize) -> impl Iterator<Item = (usize, usize, Range<usize>)> {
        let g = self.g;
        let (cg, cdg) = (g.c_per_group(), g.c_per_deformable_group());
        let (c_start, c_end) = (q * cg, (q + 1) * cg);
        (c_start / cdg..c_end.div_ceil(cdg)).map(move |dg| {
            let lo = (dg * cdg).max(c_start);
            let hi = ((dg + 1) * cdg).min(c_end);
            (dg, lo - c_start, lo..hi)
        })
    }

    /// Descriptors of image `n`, output row `oh`, deformable group `dg`, `tap`, into `rs.s`:
    /// with `Some(gate)` for the gradients (every field), with `None` for the values (`idx`
    /// and `w` of the open samples).
    pub(super) fn row_samples(
        &self,
        n: usize,
        dg: usize,
        tap: usize,
        oh: usize,
        gate: Option<GradGate>,
        rs: &mut RowScratch<T::Acc>,
    ) {
        let g = self.g;
        let ch = dg * g.taps() + tap;
        // A row in place when it is contiguous and already in the accumulation type (f32, f64
        // storage), else widened into the scratch vector.
        fn row<'r, T: Element>(
            src: ndarray::ArrayView1<'r, T>,
            dst: &'r mut Vec<T::Acc>,
        ) -> &'r [T::Acc] {
            if let Some(s) = src.to_slice().and_then(T::as_acc) {
                return s;
            }
            dst.clear();
            dst.extend(src.iter().map(|v| v.to_acc()));
            dst
        }
        // Row `[n, ch, oh, ..]` by three index steps (cheaper than an `s![]` slice on short
        // rows).
        fn row_of<'r, T>(
            a: &ndarray::ArrayView4<'r, T>,
            n: usize,
            ch: usize,
            oh: usize,
        ) -> ndarray::ArrayView1<'r, T> {
            (*a).index_axis_move(Axis(0), n)
                .index_axis_move(Axis(0), ch)
                .index_axis_move(Axis(0), oh)
        }
        // The offsets and mask two output rows ahead, asked for now: each (group, tap) plane is
        // its own stream, too many for the hardware prefetchers.
        if oh + 2 < g.ho {
            let planes = [
                Some(&self.ops.offset_y),
                Some(&self.ops.offset_x),
                self.ops.mask.as_ref(),
            ];
            for a in planes.into_iter().flatten() {
                if let Some(next) = row_of(a, n, ch, oh + 2).to_slice() {
                    prefetch(next);
                }
            }
        }
        let RowScratch { dy, dx, m, s, .. } = rs;
        let m: &[T::Acc] = match &self.ops.mask {
            Some(mask) => row(row_of(mask, n, ch, oh), m),
            None => &[],
        };
        let args = RowArgs {
            y0: g.grid_y(oh, tap / g.kw),
            x0: g.grid_x(0, tap % g.kw),
            sx: g.stride[1] as i64,
            dy: row(row_of(&self.ops.offset_y, n, ch, oh), dy),
            dx: row(row_of(&self.ops.offset_x, n, ch, oh), dx),
            m,
            h: g.h,
            w: g.w,
            gate: gate.unwrap_or(GradGate::Open),
            at: 0,
            gradients: gate.is_some(),
        };
        (self.k.sample_row)(&args, s);
    }

    /// Builds the columns tile of conv group `q`, output rows `rows` of image `n`:
    /// `cols[p, tap*Cg + c] = m * bilinear(X[c], py, px)`. Deformable group outermost: each
    /// group's window of its image block is read for every row of the tile in turn, not
    /// reloaded once per row.
    pub(super) fn columns(
        &self,
        n: usize,
        q: usize,
        rows: Range<usize>,
        xt: &[T::Acc],
        cols: &mut [T::Acc],
        rs: &mut RowScratch<T::Acc>,
    ) {
        let (g, row_len, cg) = (self.g, self.row_len, self.g.c_per_group());
        let oh0 = rows.start;
        for (dg, off, chans) in self.segments(q) {
            for r in 0..rows.len() {
                for tap in 0..g.taps() {
                    self.row_samples(n, dg, tap, oh0 + r, None, rs);
                    let (job, block) = self.job(&rs.s, dg, &chans, row_len);
                    (self.k.gather_row)(
                        &job,
                        &xt[block..],
                        &mut cols[r * g.wo * row_len + tap * cg + off..],
                    );
                }
            }
        }
    }
}

/// One thread's row buffers: a row of offsets and mask in the accumulation type, and its
/// descriptors.
pub(super) struct RowScratch<A> {
    pub(super) dy: Vec<A>,
    pub(super) dx: Vec<A>,
    pub(super) m: Vec<A>,
    pub(super) s: RowSamples<A>,
    /// `[d dy, d dx, d mask]` of one row (backward).
    pub(super) grads: [Vec<A>; 3],
}

impl<A: Real> RowScratch<A> {
    pub(super) fn new(wo: usize) -> Self {
        RowScratch {
            dy: Vec::with_capacity(wo),
            dx: Vec::with_capacity(wo),
            m: Vec::with_capacity(wo),
            s: RowSamples::new(wo),
            grads: std::array::from_fn(|_| vec![A::zero(); wo]),
        }
    }
}
