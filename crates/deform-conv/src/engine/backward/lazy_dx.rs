//! The input gradient's channels-last partial sums, zeroed on first touch, and their sum into
//! the caller's `[C, H, W]` view.

use crate::element::{Element, Real};
use crate::engine::blocking::LAZY_DX_CHANNELS;
use crate::engine::plan::Plan;
use crate::engine::sample::RowSamples;
use crate::engine::scratch::{take, Buf};
use crate::engine::threads::for_each_item;
use ndarray::{ArrayViewMut2, ArrayViewMut3, Axis};
use num_traits::Zero;

/// A channels-last `dX` (the engine's image layout: a block of `H*W + 1` pixels per deformable
/// group, the last one the zero pixel, which takes the scatters of corners outside the image and
/// is never read) whose image rows are zeroed on first touch. `rows` is the band of image rows
/// zeroed so far: a lane that owns a band of output rows zeroes, and hands on to the sum, about
/// its band of the image rather than all of it. Lazy or not, the sums are the same bits.
pub(super) struct LazyDx<A: Real> {
    pub(super) buf: Buf<A>,
    rows: std::ops::Range<usize>,
    /// Zero on first touch ([`LAZY_DX_CHANNELS`]); else the whole image at once.
    lazy: bool,
    /// Image height and width, channels per deformable group.
    h: usize,
    w: usize,
    cdg: usize,
}

impl<A: Real> LazyDx<A> {
    /// An empty buffer (no input gradient wanted) when `want` is false. `shared`: the image's
    /// `dX` is summed from several such parts (else one part holds it all, and laziness would
    /// only add the scans).
    pub(super) fn new<T: Element<Acc = A>>(
        plan: &Plan<'_, '_, T>,
        want: bool,
        shared: bool,
    ) -> Self {
        let g = plan.g;
        LazyDx {
            buf: take(if want { plan.image_len() } else { 0 }, A::zero()),
            rows: 0..0,
            lazy: shared && g.c_per_deformable_group() >= LAZY_DX_CHANNELS,
            h: g.h,
            w: g.w,
            cdg: g.c_per_deformable_group(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Elements of one deformable group's block: `H*W` pixels and the zero pixel.
    fn block(&self) -> usize {
        ((self.h * self.w + 1) * self.cdg).max(1)
    }

    /// A new image: no image row zeroed yet, only the zero pixels (scatters only add to them);
    /// or, not lazy, the whole buffer.
    pub(super) fn reset(&mut self) {
        if !self.lazy {
            self.buf.fill(A::zero());
            self.rows = 0..self.h;
            return;
        }
        self.rows = 0..0;
        let (at, block) = (self.h * self.w * self.cdg, self.block());
        for b in self.buf.chunks_mut(block) {
            b[at..].fill(A::zero());
        }
    }

    /// Does image row `y` hold sums (else it is all zero)?
    pub(super) fn holds(&self, y: usize) -> bool {
        self.rows.contains(&y)
    }

    /// Zeroes, if not yet, the image rows that the corners of `s`'s first `n` samples land on:
    /// those between the lowest and the highest corner index below `H*W` (the zero pixel's index).
    pub(super) fn cover(&mut self, s: &RowSamples<A>, n: usize) {
        if self.buf.is_empty() || self.rows == (0..self.h) {
            return;
        }
        let zero_pixel = (self.h * self.w) as u32;
        let (mut lo, mut hi) = (u32::MAX, 0u32);
        for idx in &s.idx {
            for &v in &idx[..n] {
                lo = lo.min(v);
                hi = hi.max(if v == zero_pixel { 0 } else { v });
            }
        }
        if lo >= zero_pixel {
            return; // every corner is outside the image
        }
        let (lo, hi) = (lo as usize / self.w, hi as usize / self.w + 1);
        let have = self.rows.clone();
        let want = if have.is_empty() {
            lo..hi
        } else {
            lo.min(have.start)..hi.max(have.end)
        };
        if want == have {
            return;
        }
        // The new rows: below the band and above it (all of `want` when nothing was zeroed).
        let below = want.start..have.start.max(want.start);
        let above = have.end.max(want.start)..want.end;
        let (row, block) = (self.w * self.cdg, self.block());
        for b in self.buf.chunks_mut(block) {
            for r in [below.clone(), above.clone()] {
                b[r.start * row..r.end * row].fill(A::zero());
            }
        }
        self.rows = want;
    }
}

/// `dX[c, y, x]` of one image from channels-last partial sums: `parts[0]` alone, or with
/// `parallel`, the parts added in order from +0, image rows in parallel. A part skips the rows
/// it never touched: they hold +0, and adding +0 to a sum that starts from +0 changes no bit.
pub(super) fn write_input_grad<T: Element>(
    plan: &Plan<'_, '_, T>,
    parts: &[&LazyDx<T::Acc>],
    mut gi: ArrayViewMut3<'_, T>,
    parallel: bool,
) {
    let zero = T::Acc::zero();
    // Channel `ch` of pixel (y, x) of a part: base[ch] + y * W*C/G + x * C/G.
    let g = plan.g;
    let cdg = g.c_per_deformable_group();
    let base: Vec<usize> = (0..g.c).map(|ch| plan.nhwc_index(0, 0, ch)).collect();
    let write_row = |y: usize, mut rows: ArrayViewMut2<'_, T>| {
        let live: Vec<&[T::Acc]> = parts
            .iter()
            .filter(|p| p.holds(y))
            .map(|p| &p.buf[..])
            .collect();
        if live.is_empty() {
            rows.fill(T::from_acc(zero));
            return;
        }
        let single = parts.len() == 1;
        if let Some(transpose) = plan.k.transpose_rows {
            // Each deformable group's [W, C/G] block of the row (one part's, or the live parts
            // added in order from +0) transposed in registers, then each channel's run written.
            let n = cdg * g.w;
            let mut runs = vec![zero; n];
            let mut sums = vec![zero; if single { 0 } else { n }];
            for (dg, first) in base.iter().step_by(cdg.max(1)).enumerate() {
                let at = first + y * g.w * cdg;
                let block = if single {
                    &live[0][at..]
                } else {
                    sums.fill(zero);
                    for part in &live {
                        sums.iter_mut()
                            .zip(&part[at..at + n])
                            .for_each(|(s, v)| *s += *v);
                    }
                    &sums[..]
                };
                transpose(block, cdg, cdg, g.w, &mut runs);
                for (c, run) in runs.chunks_exact(g.w.max(1)).enumerate() {
                    let mut plane = rows.row_mut(dg * cdg + c);
                    let put = |(d, v): (&mut T, &T::Acc)| *d = T::from_acc(*v);
                    match plane.as_slice_mut() {
                        Some(d) => d.iter_mut().zip(run).for_each(put),
                        None => plane.iter_mut().zip(run).for_each(put),
                    }
                }
            }
            return;
        }
        let sum = |at: usize| {
            T::from_acc(if single {
                live[0][at]
            } else {
                live.iter().fold(zero, |s, p| s + p[at])
            })
        };
        // rows: [C, W] of image row y; the parts hold [W, C/G] blocks. In blocks of 8
        // channels, pixel by pixel: the 8 values of a pixel are adjacent in the parts (within
        // a deformable group) and the 8 planes are written in order.
        const CB: usize = 8;
        let mut planes: Vec<_> = rows.outer_iter_mut().collect();
        for (blk, base) in planes.chunks_mut(CB).zip(base.chunks(CB)) {
            let slices: Option<Vec<&mut [T]>> = blk.iter_mut().map(|p| p.as_slice_mut()).collect();
            match slices {
                Some(mut sl) => {
                    for x in 0..g.w {
                        let at = y * g.w * cdg + x * cdg;
                        for (plane, b) in sl.iter_mut().zip(base) {
                            plane[x] = sum(b + at);
                        }
                    }
                }
                None => {
                    for (plane, b) in blk.iter_mut().zip(base) {
                        for (x, v) in plane.iter_mut().enumerate() {
                            *v = sum(b + y * g.w * cdg + x * cdg);
                        }
                    }
                }
            }
        }
    };
    let rows: Vec<_> = gi.axis_iter_mut(Axis(1)).enumerate().collect();
    if parallel {
        for_each_item(rows, |(y, r), _| write_row(y, r));
    } else {
        rows.into_iter().for_each(|(y, r)| write_row(y, r));
    }
}
