//! The fast engine: channels-last sampling feeding a GEMM, tile by tile.
//!
//! **Forward.** Images go in waves of `blocking::LANES`; each is copied once to channels-last
//! (`T` → accumulation type, plus one zero pixel, see `sample`). The output is walked in tiles of
//! whole output rows (`blocking`); per tile and convolution group the sampler builds the columns
//! tile `cols[P x K*C/Gc]` (row = pixel, column = tap-major, channel-minor) from one bilinear
//! descriptor per (pixel, tap, deformable group), reused for every channel of the group, and one
//! GEMM `out[P x Cout/Gc] = cols * Wp` reads the weight, packed once per call as `[Cout/Gc, K*C/Gc]`
//! rows, through strides. All tiles of a wave run in parallel; each output element is produced by
//! one tile, so the result does not depend on the thread count.
//!
//! **Backward.** Per tile: the same columns (for `dW += cols^T dY`), `dcols = dY Wp^T` by GEMM,
//! then per descriptor four channel dot products `a_j = sum_c dcol[c] X[idx_j, c]` give the
//! offset and mask gradients (SPEC §2) and a scatter `dX[idx_j, c] += w_j dcol[c]` the input
//! gradient. Tiles are dealt to `blocking::LANES` fixed lanes (contiguous row ranges of one image,
//! or whole images when an image has fewer tiles than lanes), each owning its `dX`, `dW` and `db`
//! buffers, reduced in lane order: bitwise identical results for any thread count, no atomics.
//!
//! Kernels ([`kernels`]) are chosen once per call from the run-time instruction set; the hot f32
//! ones have explicit AVX-512 (and AVX2 descriptor) bodies that perform the portable bodies'
//! operations in the same order, so every instruction set returns the same bits.

mod blocking;
mod gemm;
pub mod kernels;
mod sample;
mod scratch;
mod threads;

pub use kernels::{active_isa, Isa};
pub use threads::{num_threads, set_num_threads};

use crate::element::{Element, Real};
use crate::error::{DeformError, Result};
use crate::op::{ForwardOutputs, GradOutputs, Operands};
use crate::params::{Geometry, GradGate};
use blocking::{rows_per_tile, LANES};
use gemm::{gemm, Mat};
use kernels::Kernels;
use kernels::RowJob;
use ndarray::{ArrayView3, ArrayView4, ArrayViewMut3, Axis};
use num_traits::{One, Zero};
use rayon::prelude::*;
use sample::{RowArgs, RowSamples};
use scratch::{take, take_zeroed, Buf};

/// Can the engine run this geometry? Its descriptors index image pixels in `u32` arithmetic
/// bounded by `i32`: images of fewer than 2^31 pixels. Larger ones go to the reference path.
pub(crate) fn supports(g: &Geometry) -> bool {
    g.h.checked_mul(g.w)
        .is_some_and(|hw| hw < i32::MAX as usize)
        && g.w < i32::MAX as usize
        && g.h < i32::MAX as usize
}

fn kernels_for<A: Real>(isa: Isa) -> Result<Kernels<A>> {
    kernels::table::<A>(isa).ok_or_else(|| {
        DeformError::parameter(
            "isa",
            format!(
                "an instruction set this CPU supports (best: {})",
                Isa::best().name()
            ),
            isa.name(),
        )
    })
}

/// Everything a tile needs that does not change within a call.
struct Plan<'p, 'a, T: Element> {
    g: &'p Geometry,
    ops: &'p Operands<'a, T>,
    k: Kernels<T::Acc>,
    /// The packed weight of each conv group. Forward: `wp[q][o*K*Cg + tap*Cg + c] =
    /// Wt[q*Coutg + o, c, i, j]`, read by the GEMM through strides. Backward: its transpose
    /// `wp[q][(tap*Cg + c)*Coutg + o]`, the layout the `dY * Wp^T` GEMM runs fastest on (measured:
    /// stride2_c5 backward 59 ms against 75 ms with the forward layout).
    wp: Vec<Buf<T::Acc>>,
    /// Columns per pixel of one conv group: `K * C/Gc`.
    row_len: usize,
    /// Output rows per tile.
    rows: usize,
}

impl<'p, 'a, T: Element> Plan<'p, 'a, T> {
    fn new(g: &'p Geometry, ops: &'p Operands<'a, T>, isa: Isa, transposed: bool) -> Result<Self> {
        let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
        let row_len = kk * cg;
        let wp = (0..g.groups)
            .map(|q| {
                let rows = pack_weight(g, &ops.weight, q);
                if transposed {
                    transpose(&rows, coutg, row_len)
                } else {
                    rows
                }
            })
            .collect();
        let rows = rows_per_tile(g.wo, row_len.max(coutg), std::mem::size_of::<T::Acc>());
        Ok(Plan {
            g,
            ops,
            k: kernels_for(isa)?,
            wp,
            row_len,
            rows,
        })
    }

    /// Image `n` as channels-last `[H*W + 1, C]` in `buf`; the last pixel is zero.
    fn image_nhwc(&self, n: usize, buf: &mut [T::Acc]) {
        let g = self.g;
        let (hw, c) = (g.h * g.w, g.c);
        buf[hw * c..].iter_mut().for_each(|v| *v = T::Acc::zero());
        let image = self.ops.input.index_axis(Axis(0), n); // [C, H, W]
                                                           // One image row at a time (in parallel): read each channel's row (contiguous in NCHW),
                                                           // write it strided into the row's [W, C] block, which stays in cache.
        buf[..hw * c]
            .par_chunks_mut(g.w * c)
            .enumerate()
            .for_each(|(y, dst)| {
                for ch in 0..c {
                    let row = image.slice(ndarray::s![ch, y, ..]);
                    match row.as_slice() {
                        Some(src) => {
                            for (x, v) in src.iter().enumerate() {
                                dst[x * c + ch] = v.to_acc();
                            }
                        }
                        None => {
                            for (x, v) in row.iter().enumerate() {
                                dst[x * c + ch] = v.to_acc();
                            }
                        }
                    }
                }
            });
    }

    /// The deformable-group segments of conv group `q`: `(dg, channel offset in the conv group,
    /// channel range)`. Channels of one conv group may span several deformable groups and the
    /// reverse.
    fn segments(&self, q: usize) -> impl Iterator<Item = (usize, usize, std::ops::Range<usize>)> {
        let g = self.g;
        let (cg, cdg) = (g.c_per_group(), g.c_per_deformable_group());
        let (c_start, c_end) = (q * cg, (q + 1) * cg);
        (c_start / cdg..c_end.div_ceil(cdg)).map(move |dg| {
            let lo = (dg * cdg).max(c_start);
            let hi = ((dg + 1) * cdg).min(c_end);
            (dg, lo - c_start, lo..hi)
        })
    }

    /// Descriptors of image `n`, output row `oh`, deformable group `dg`, `tap`, into `rs.s`.
    fn row_samples(
        &self,
        n: usize,
        dg: usize,
        tap: usize,
        oh: usize,
        gate: GradGate,
        rs: &mut RowScratch<T::Acc>,
    ) {
        let g = self.g;
        let ch = dg * g.taps() + tap;
        let copy = |src: ndarray::ArrayView1<'_, T>, dst: &mut Vec<T::Acc>| {
            dst.clear();
            match src.as_slice() {
                Some(row) => dst.extend(row.iter().map(|v| v.to_acc())),
                None => dst.extend(src.iter().map(|v| v.to_acc())),
            }
        };
        copy(
            self.ops.offset_y.slice(ndarray::s![n, ch, oh, ..]),
            &mut rs.dy,
        );
        copy(
            self.ops.offset_x.slice(ndarray::s![n, ch, oh, ..]),
            &mut rs.dx,
        );
        match &self.ops.mask {
            Some(m) => copy(m.slice(ndarray::s![n, ch, oh, ..]), &mut rs.m),
            None => rs.m.clear(),
        }
        let args = RowArgs {
            y0: g.grid_y(oh, tap / g.kw),
            x0: g.grid_x(0, tap % g.kw),
            sx: g.stride[1] as i64,
            dy: &rs.dy,
            dx: &rs.dx,
            m: &rs.m,
            h: g.h,
            w: g.w,
            gate,
        };
        (self.k.sample_row)(&args, &mut rs.s);
    }

    /// Builds the columns tile of conv group `q`, rows `[oh0, oh0 + nrows)` of image `n`:
    /// `cols[p, tap*Cg + c] = m * bilinear(X[c], py, px)`.
    #[allow(clippy::too_many_arguments)]
    fn columns(
        &self,
        n: usize,
        q: usize,
        oh0: usize,
        nrows: usize,
        xt: &[T::Acc],
        cols: &mut [T::Acc],
        rs: &mut RowScratch<T::Acc>,
    ) {
        let (g, row_len, cg) = (self.g, self.row_len, self.g.c_per_group());
        for r in 0..nrows {
            for (dg, off, chans) in self.segments(q) {
                for tap in 0..g.taps() {
                    self.row_samples(n, dg, tap, oh0 + r, GradGate::Open, rs);
                    let job = RowJob {
                        s: &rs.s,
                        n: g.wo,
                        c: g.c,
                        lo: chans.start,
                        len: chans.len(),
                        stride: row_len,
                    };
                    (self.k.gather_row)(&job, xt, &mut cols[r * g.wo * row_len + tap * cg + off..]);
                }
            }
        }
    }
}

/// One thread's row buffers: a row of offsets and mask in the accumulation type, and its
/// descriptors.
struct RowScratch<A> {
    dy: Vec<A>,
    dx: Vec<A>,
    m: Vec<A>,
    s: RowSamples<A>,
    /// `[d dy, d dx, d mask]` of one row (backward).
    grads: Vec<[A; 3]>,
}

impl<A: Real> RowScratch<A> {
    fn new(wo: usize) -> Self {
        RowScratch {
            dy: Vec::with_capacity(wo),
            dx: Vec::with_capacity(wo),
            m: Vec::with_capacity(wo),
            s: RowSamples::new(wo),
            grads: Vec::with_capacity(wo),
        }
    }
}

/// `Wp_q[o*K*Cg + tap*Cg + c] = Wt[q*Coutg + o, c, i, j]`: each output channel's `[Cg, K]` block
/// reordered to `[K, Cg]` (small, in cache), output channels in parallel. No transpose: the GEMMs
/// take this `[Coutg, K*Cg]` matrix through strides.
fn pack_weight<T: Element>(g: &Geometry, weight: &ArrayView4<'_, T>, q: usize) -> Buf<T::Acc> {
    let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
    let row_len = kk * cg;
    let mut rows = take(coutg * row_len, T::Acc::zero()); // every element is written below
    rows.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(o, row)| {
            let w_o = weight.index_axis(Axis(0), q * coutg + o); // [Cg, kh, kw]
            match w_o.as_slice() {
                Some(src) => {
                    for c in 0..cg {
                        for tap in 0..kk {
                            row[tap * cg + c] = src[c * kk + tap].to_acc();
                        }
                    }
                }
                None => {
                    for ((c, i, j), v) in w_o.indexed_iter() {
                        row[(i * g.kw + j) * cg + c] = v.to_acc();
                    }
                }
            }
        });
    rows
}

/// `[rows x cols]` → `[cols x rows]` in 32x32 blocks, blocks of output rows in parallel.
fn transpose<A: Real>(src: &[A], rows: usize, cols: usize) -> Buf<A> {
    const B: usize = 32;
    let mut out = take(rows * cols, A::zero()); // every element is written below
    out.par_chunks_mut(B * rows)
        .enumerate()
        .for_each(|(blk, dst)| {
            let c0 = blk * B;
            for r0 in (0..rows).step_by(B) {
                for (dc, drow) in dst.chunks_exact_mut(rows).enumerate() {
                    for r in r0..(r0 + B).min(rows) {
                        drow[r] = src[r * cols + c0 + dc];
                    }
                }
            }
        });
    out
}

/// Engine forward; see the module documentation.
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    out: ForwardOutputs<'_, T>,
    isa: Isa,
) -> Result<()> {
    threads::pool().install(|| {
        let plan = Plan::new(g, ops, isa, false)?;
        forward_impl(&plan, out);
        Ok(())
    })
}

struct Scratch<A: Real> {
    cols: Buf<A>,
    out: Buf<A>,
    rows: RowScratch<A>,
}

fn forward_impl<T: Element>(plan: &Plan<'_, '_, T>, mut out: ForwardOutputs<'_, T>) {
    let g = plan.g;
    let (coutg, cg) = (g.cout_per_group(), g.c_per_group());
    let tile_px = plan.rows * g.wo;
    let bias: Vec<T::Acc> = (0..g.cout)
        .map(|o| {
            plan.ops
                .bias
                .as_ref()
                .map_or(T::Acc::zero(), |b| b[o].to_acc())
        })
        .collect();
    // Images go in waves of LANES: each gets its own channels-last copy and all tiles of a wave
    // run together, so small images still fill every thread. Memory: LANES images, whatever N.
    let wave = LANES.min(g.n.max(1));
    let mut xts: Vec<Buf<T::Acc>> = (0..wave)
        .map(|_| take((g.h * g.w + 1) * g.c, T::Acc::zero())) // image_nhwc writes every element
        .collect();
    let tiles_per_image = g.ho.div_ceil(plan.rows);
    let lens: Vec<usize> = (0..tiles_per_image)
        .map(|t| plan.rows.min(g.ho - t * plan.rows))
        .collect();
    let d_lens: Vec<usize> = lens.iter().map(|l| l * g.kh).collect();
    let mut y_imgs = out.output.axis_iter_mut(Axis(0));
    let mut d_imgs = out.deformed.as_mut().map(|d| d.axis_iter_mut(Axis(0)));
    for n0 in (0..g.n).step_by(wave) {
        let nw = wave.min(g.n - n0);
        xts[..nw]
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, xt)| plan.image_nhwc(n0 + i, xt));
        let mut tiles = Vec::with_capacity(nw * tiles_per_image);
        for i in 0..nw {
            let y_n = y_imgs.next().expect("one output view per image");
            let d_n = d_imgs
                .as_mut()
                .map(|it| it.next().expect("one deformed view per image"));
            let ys = split_rows(Some(y_n), &lens);
            let ds = split_rows(d_n, &d_lens);
            for (t, (y, d)) in ys.into_iter().zip(ds).enumerate() {
                tiles.push((n0 + i, t, y.expect("split of Some"), d));
            }
        }
        let xts = &xts;
        tiles.into_par_iter().for_each_init(
            || Scratch {
                cols: take(tile_px * plan.row_len, T::Acc::zero()),
                out: take(tile_px * coutg, T::Acc::zero()),
                rows: RowScratch::new(g.wo),
            },
            |scr, (n, t, mut y, mut d)| {
                let xt = &xts[n - n0];
                let (oh0, nrows) = (t * plan.rows, y.shape()[1]);
                let px = nrows * g.wo;
                for q in 0..g.groups {
                    let cols = &mut scr.cols[..px * plan.row_len];
                    plan.columns(n, q, oh0, nrows, xt, cols, &mut scr.rows);
                    if let Some(d) = d.as_mut() {
                        // D[c, oh*kh + i, ow*kw + j] = col[pixel (oh, ow), tap (i, j), c], one
                        // D row (fixed c, oh, i) at a time.
                        let row_len = plan.row_len;
                        for c in 0..cg {
                            for r in 0..nrows {
                                for i in 0..g.kh {
                                    let mut drow =
                                        d.slice_mut(ndarray::s![q * cg + c, r * g.kh + i, ..]);
                                    for (x, v) in drow.iter_mut().enumerate() {
                                        let (ow, j) = (x / g.kw, x % g.kw);
                                        *v = T::from_acc(
                                            cols[(r * g.wo + ow) * row_len
                                                + (i * g.kw + j) * cg
                                                + c],
                                        );
                                    }
                                }
                            }
                        }
                    }
                    let o = &mut scr.out[..px * coutg];
                    gemm(
                        o,
                        coutg,
                        false,
                        Mat {
                            data: cols,
                            rows: px,
                            cols: plan.row_len,
                            rs: plan.row_len,
                            cs: 1,
                        },
                        Mat {
                            data: &plan.wp[q],
                            rows: plan.row_len,
                            cols: coutg,
                            rs: 1,
                            cs: plan.row_len,
                        },
                    );
                    for oc in 0..coutg {
                        let b = bias[q * coutg + oc];
                        for r in 0..nrows {
                            let mut yrow = y.slice_mut(ndarray::s![q * coutg + oc, r, ..]);
                            let src = o[r * g.wo * coutg + oc..].iter().step_by(coutg);
                            for (v, out) in yrow.iter_mut().zip(src) {
                                *v = T::from_acc(*out + b);
                            }
                        }
                    }
                }
            },
        );
    }
}

/// One backward lane: its own gradient accumulators and scratch.
struct Lane<A: Real> {
    /// `dX` of the current image, channels-last plus a garbage row for the zero pixel; zeroed per
    /// image.
    dx: Buf<A>,
    /// `dW` partial sums per conv group; start at zero, accumulate over the whole call.
    dw: Vec<Buf<A>>,
    db: Vec<A>,
    cols: Buf<A>,
    dcol: Buf<A>,
    dyt: Buf<A>,
    /// `a_j` sums, laid out `[row, deformable group * tap, ow, corner]`; zeroed per tile.
    acc: Buf<A>,
    rows: RowScratch<A>,
}

/// This lane's rows of the offset and mask gradients of one image (`[G*K, rows, Wo]` each).
struct LaneGrads<'a, T> {
    oy: Option<ArrayViewMut3<'a, T>>,
    ox: Option<ArrayViewMut3<'a, T>>,
    m: Option<ArrayViewMut3<'a, T>>,
}

/// The next image's view of an optional per-image iterator.
fn next_view<'a, T>(
    it: &mut Option<ndarray::iter::AxisIterMut<'a, T, ndarray::Ix3>>,
) -> Option<ArrayViewMut3<'a, T>> {
    it.as_mut().map(|i| i.next().expect("one view per image"))
}

/// Splits `v` along axis 1 into consecutive pieces of the given lengths.
fn split_rows<'a, T>(
    v: Option<ArrayViewMut3<'a, T>>,
    lens: &[usize],
) -> Vec<Option<ArrayViewMut3<'a, T>>> {
    let Some(mut rest) = v else {
        return lens.iter().map(|_| None).collect();
    };
    let mut out = Vec::with_capacity(lens.len());
    for &len in lens {
        let (a, b) = rest.split_at(Axis(1), len);
        out.push(Some(a));
        rest = b;
    }
    out
}

/// Engine backward; see the module documentation.
pub(crate) fn backward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    dy: ArrayView4<'_, T>,
    grads: GradOutputs<'_, T>,
    gate: GradGate,
    isa: Isa,
) -> Result<()> {
    threads::pool().install(|| {
        let plan = Plan::new(g, ops, isa, true)?;
        backward_impl(&plan, dy, grads, gate);
        Ok(())
    })
}

fn backward_impl<T: Element>(
    plan: &Plan<'_, '_, T>,
    dy: ArrayView4<'_, T>,
    mut grads: GradOutputs<'_, T>,
    gate: GradGate,
) {
    let g = plan.g;
    let zero = T::Acc::zero();
    let (coutg, gk) = (g.cout_per_group(), g.deformable_groups * g.taps());
    let tile_px = plan.rows * g.wo;
    let want_dx = grads.input.is_some();
    let want_dw = grads.weight.is_some();
    let want_tap = grads.offset_y.is_some() || grads.offset_x.is_some() || grads.mask.is_some();
    // Buffers come from the scratch pool; `take` leaves stale contents where every element is
    // written before it is read, `take_zeroed` where the code accumulates.
    let some = |want: bool, len: usize| take(if want { len } else { 0 }, zero);
    let mut lanes: Vec<Lane<T::Acc>> = (0..LANES)
        .map(|_| Lane {
            dx: some(want_dx, (g.h * g.w + 1) * g.c),
            dw: if want_dw {
                (0..g.groups)
                    .map(|_| take_zeroed(plan.row_len * coutg, zero))
                    .collect()
            } else {
                vec![]
            },
            db: vec![zero; g.cout],
            cols: some(want_dw, tile_px * plan.row_len),
            dcol: take(tile_px * plan.row_len, zero),
            dyt: take(tile_px * g.cout, zero),
            acc: some(want_tap, tile_px * gk * 4),
            rows: RowScratch::new(g.wo),
        })
        .collect();
    let tiles = g.ho.div_ceil(plan.rows);
    if tiles < LANES && g.n > 1 {
        // Few tiles per image: lane l takes whole images n0 + l of each wave of LANES images,
        // and writes their input gradient directly (an image belongs to one lane: no reduction).
        let mut xts: Vec<Buf<T::Acc>> = (0..LANES)
            .map(|_| take((g.h * g.w + 1) * g.c, zero))
            .collect();
        let mut gi_imgs = grads.input.as_mut().map(|v| v.axis_iter_mut(Axis(0)));
        let mut oy_imgs = grads.offset_y.as_mut().map(|v| v.axis_iter_mut(Axis(0)));
        let mut ox_imgs = grads.offset_x.as_mut().map(|v| v.axis_iter_mut(Axis(0)));
        let mut om_imgs = grads.mask.as_mut().map(|v| v.axis_iter_mut(Axis(0)));
        for n0 in (0..g.n).step_by(LANES) {
            let nw = LANES.min(g.n - n0);
            let mut work = Vec::with_capacity(nw);
            for ((l, lane), xt) in lanes.iter_mut().enumerate().take(nw).zip(xts.iter_mut()) {
                let lg = LaneGrads {
                    oy: next_view(&mut oy_imgs),
                    ox: next_view(&mut ox_imgs),
                    m: next_view(&mut om_imgs),
                };
                work.push((n0 + l, lane, xt, lg, next_view(&mut gi_imgs)));
            }
            work.into_par_iter().for_each(|(n, lane, xt, mut lg, gi)| {
                plan.image_nhwc(n, xt);
                if want_dx {
                    lane.dx.iter_mut().for_each(|v| *v = zero);
                }
                let dy_n = dy.index_axis(Axis(0), n);
                for t in 0..tiles {
                    let oh0 = t * plan.rows;
                    let nrows = plan.rows.min(g.ho - oh0);
                    backward_tile(plan, n, oh0, nrows, oh0, xt, &dy_n, lane, &mut lg, gate);
                }
                if let Some(mut gi) = gi {
                    for (c, mut plane) in gi.outer_iter_mut().enumerate() {
                        for (y, mut row) in plane.outer_iter_mut().enumerate() {
                            for (x, v) in row.iter_mut().enumerate() {
                                *v = T::from_acc(lane.dx[(y * g.w + x) * g.c + c]);
                            }
                        }
                    }
                }
            });
        }
        reduce_weight_bias(plan, &lanes, &mut grads);
        return;
    }
    // Lane l owns tiles [l*T/L, (l+1)*T/L): a fixed, contiguous range of output rows.
    let bounds: Vec<usize> = (0..=LANES)
        .map(|l| (l * tiles / LANES * plan.rows).min(g.ho))
        .collect();
    let lens: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
    let mut xt = take((g.h * g.w + 1) * g.c, zero);
    for n in 0..g.n {
        plan.image_nhwc(n, &mut xt);
        let oy = split_rows(
            grads
                .offset_y
                .as_mut()
                .map(|v| v.index_axis_mut(Axis(0), n)),
            &lens,
        );
        let ox = split_rows(
            grads
                .offset_x
                .as_mut()
                .map(|v| v.index_axis_mut(Axis(0), n)),
            &lens,
        );
        let om = split_rows(
            grads.mask.as_mut().map(|v| v.index_axis_mut(Axis(0), n)),
            &lens,
        );
        let work: Vec<_> = lanes
            .iter_mut()
            .zip(oy.into_iter().zip(ox).zip(om))
            .enumerate()
            .map(|(l, (lane, ((oy, ox), m)))| (bounds[l], lens[l], lane, LaneGrads { oy, ox, m }))
            .collect();
        let (xt, dy_n) = (&xt, dy.index_axis(Axis(0), n));
        work.into_par_iter().for_each(|(row0, len, lane, mut lg)| {
            if want_dx {
                lane.dx.iter_mut().for_each(|v| *v = zero);
            }
            let mut r = 0;
            while r < len {
                let nrows = plan.rows.min(len - r);
                backward_tile(plan, n, row0 + r, nrows, r, xt, &dy_n, lane, &mut lg, gate);
                r += nrows;
            }
        });
        if let Some(gi) = grads.input.as_mut() {
            // dX[c, y, x] = sum over lanes, in lane order, of lane.dx[(y*W + x)*C + c]
            let lanes = &lanes;
            gi.index_axis_mut(Axis(0), n)
                .axis_iter_mut(Axis(1))
                .into_par_iter()
                .enumerate()
                .for_each(|(y, mut rows)| {
                    // rows: [C, W] of image row y; lane buffers hold [W, C] blocks.
                    for (c, mut row) in rows.outer_iter_mut().enumerate() {
                        for (x, v) in row.iter_mut().enumerate() {
                            let at = (y * g.w + x) * g.c + c;
                            let mut s = zero;
                            for lane in lanes {
                                s += lane.dx[at];
                            }
                            *v = T::from_acc(s);
                        }
                    }
                });
        }
    }
    reduce_weight_bias(plan, &lanes, &mut grads);
}

/// `dW` and `db`: the lanes' partial sums added in lane order.
fn reduce_weight_bias<T: Element>(
    plan: &Plan<'_, '_, T>,
    lanes: &[Lane<T::Acc>],
    grads: &mut GradOutputs<'_, T>,
) {
    let g = plan.g;
    let zero = T::Acc::zero();
    let (cg, coutg) = (g.c_per_group(), g.cout_per_group());
    let row_len = plan.row_len;
    if let Some(gw) = grads.weight.as_mut() {
        for q in 0..g.groups {
            // sum[(tap*Cg + c)*Coutg + o] = lane 0 + lane 1 + ... (in lane order), contiguous.
            let mut sum = vec![zero; row_len * coutg];
            for lane in lanes {
                sum.par_chunks_mut(4096)
                    .zip(lane.dw[q].par_chunks(4096))
                    .for_each(|(s, d)| {
                        s.iter_mut().zip(d).for_each(|(s, d)| *s += *d);
                    });
            }
            // dWt[q*Coutg + o, c, i, j] = sum[(tap*Cg + c)*Coutg + o], output channels in parallel.
            let mut block = gw.slice_mut(ndarray::s![q * coutg..(q + 1) * coutg, .., .., ..]);
            block
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each(|(o, mut w_o)| {
                    for ((c, i, j), v) in w_o.indexed_iter_mut() {
                        *v = T::from_acc(sum[((i * g.kw + j) * cg + c) * coutg + o]);
                    }
                });
        }
    }
    if let Some(gb) = grads.bias.as_mut() {
        for (o, v) in gb.iter_mut().enumerate() {
            let mut s = zero;
            for lane in lanes {
                s += lane.db[o];
            }
            *v = T::from_acc(s);
        }
    }
}

/// Backward of output rows `[oh0, oh0 + nrows)` of image `n` into `lane`; `lr0` is the first
/// row's index inside the lane's gradient views.
#[allow(clippy::too_many_arguments)]
fn backward_tile<T: Element>(
    plan: &Plan<'_, '_, T>,
    n: usize,
    oh0: usize,
    nrows: usize,
    lr0: usize,
    xt: &[T::Acc],
    dy_n: &ArrayView3<'_, T>,
    lane: &mut Lane<T::Acc>,
    lg: &mut LaneGrads<'_, T>,
    gate: GradGate,
) {
    let g = plan.g;
    let zero = T::Acc::zero();
    let one = T::Acc::one();
    let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
    let gk = g.deformable_groups * kk;
    let px = nrows * g.wo;
    let row_len = plan.row_len;
    // dyt[p, o] = dY[n, o, oh0 + p / Wo, p % Wo]
    let dyt = &mut lane.dyt[..px * g.cout];
    for o in 0..g.cout {
        for r in 0..nrows {
            for ow in 0..g.wo {
                dyt[(r * g.wo + ow) * g.cout + o] = dy_n[[o, oh0 + r, ow]].to_acc();
            }
        }
    }
    for p in 0..px {
        for o in 0..g.cout {
            lane.db[o] += dyt[p * g.cout + o];
        }
    }
    let want_tap = !lane.acc.is_empty();
    let acc = if want_tap {
        &mut lane.acc[..px * gk * 4]
    } else {
        &mut lane.acc[..]
    };
    acc.iter_mut().for_each(|v| *v = zero);
    for q in 0..g.groups {
        let dyq = Mat {
            data: &dyt[q * coutg..],
            rows: px,
            cols: coutg,
            rs: g.cout,
            cs: 1,
        };
        if !lane.dw.is_empty() {
            let cols = &mut lane.cols[..px * row_len];
            plan.columns(n, q, oh0, nrows, xt, cols, &mut lane.rows);
            // dW_q[K*Cg x Coutg] += cols^T * dY_q
            gemm(
                &mut lane.dw[q],
                coutg,
                true,
                Mat {
                    data: cols,
                    rows: row_len,
                    cols: px,
                    rs: 1,
                    cs: row_len,
                },
                dyq,
            );
        }
        if lane.dx.is_empty() && !want_tap {
            continue;
        }
        // dcol[P x K*Cg] = dY_q * Wp_q^T
        let dcol = &mut lane.dcol[..px * row_len];
        gemm(
            dcol,
            row_len,
            false,
            dyq,
            Mat {
                data: &plan.wp[q],
                rows: coutg,
                cols: row_len,
                rs: 1,
                cs: coutg,
            },
        );
        let dcol = &*dcol;
        for r in 0..nrows {
            for (dg, off, chans) in plan.segments(q) {
                for tap in 0..kk {
                    plan.row_samples(n, dg, tap, oh0 + r, gate, &mut lane.rows);
                    let job = RowJob {
                        s: &lane.rows.s,
                        n: g.wo,
                        c: g.c,
                        lo: chans.start,
                        len: chans.len(),
                        stride: row_len,
                    };
                    let d = &dcol[r * g.wo * row_len + tap * cg + off..];
                    if want_tap {
                        let at = (r * gk + dg * kk + tap) * g.wo * 4;
                        (plan.k.dot4_row)(&job, d, xt, &mut acc[at..at + 4 * g.wo]);
                    }
                    if !lane.dx.is_empty() {
                        (plan.k.scatter_row)(&job, d, &mut lane.dx);
                    }
                }
            }
        }
    }
    if !want_tap {
        return;
    }
    // d dy = m (hx (a10 - a00) + lx (a11 - a01)),  d dx = m (hy (a01 - a00) + ly (a11 - a10)),
    // d mask = hy hx a00 + hy lx a01 + ly hx a10 + ly lx a11 (inside the open box only).
    for r in 0..nrows {
        for dg in 0..g.deformable_groups {
            for tap in 0..kk {
                let ch = dg * kk + tap;
                plan.row_samples(n, dg, tap, oh0 + r, gate, &mut lane.rows);
                let s = &lane.rows.s;
                let a_row = &acc[(r * gk + ch) * g.wo * 4..][..g.wo * 4];
                let tmp = &mut lane.rows.grads;
                tmp.clear();
                tmp.extend((0..g.wo).map(|ow| {
                    if !s.grad[ow] {
                        return [zero; 3];
                    }
                    let a = &a_row[4 * ow..4 * ow + 4];
                    let (ly, lx, m) = (s.ly[ow], s.lx[ow], s.m[ow]);
                    let (hy, hx) = (one - ly, one - lx);
                    let gy = m * (hx * (a[2] - a[0]) + lx * (a[3] - a[1]));
                    let gx = m * (hy * (a[1] - a[0]) + ly * (a[3] - a[2]));
                    let gm = if s.open[ow] {
                        hy * hx * a[0] + hy * lx * a[1] + ly * hx * a[2] + ly * lx * a[3]
                    } else {
                        zero
                    };
                    [gy, gx, gm]
                }));
                for (which, view) in [&mut lg.oy, &mut lg.ox, &mut lg.m].into_iter().enumerate() {
                    if let Some(v) = view.as_mut() {
                        for (o, g3) in v
                            .slice_mut(ndarray::s![ch, lr0 + r, ..])
                            .iter_mut()
                            .zip(tmp.iter())
                        {
                            *o = T::from_acc(g3[which]);
                        }
                    }
                }
            }
        }
    }
}
