//! The tiled schedule: tiles of output rows dealt to `LANES` fixed lanes, each with its own
//! gradient sums, reduced in lane order.

use super::lazy_dx::{write_input_grad, LazyDx};
use super::passes::{reduce_weight_bias, tap_pass, weight_grad, PassOut, Rows};
use super::{channels_to_acc, Images, LaneGrads, Sums};
use crate::element::{Element, Real};
use crate::engine::blocking::LANES;
use crate::engine::columns::RowScratch;
use crate::engine::gemm::{gemm, Mat};
use crate::engine::plan::Plan;
use crate::engine::scratch::{take, Buf};
use crate::engine::threads::for_each_item;
use crate::params::GradGate;
use ndarray::{ArrayView3, ArrayView4, Axis};
use num_traits::Zero;

/// One backward lane: its own gradient accumulators and scratch.
pub(super) struct Lane<A: Real> {
    /// `dX` of the current image, its rows zeroed on first touch.
    pub(super) dx: LazyDx<A>,
    /// `dW^T` partial sums per conv group (`[Coutg x K*Cg]`), accumulated over the whole call;
    /// stale until the lane's first tile writes them (`dw_live`), so an idle lane costs no
    /// zeroing and no reduction.
    pub(super) dw: Vec<Buf<A>>,
    pub(super) dw_live: bool,
    pub(super) db: Vec<A>,
    pub(super) cols: Buf<A>,
    pub(super) dcol: Buf<A>,
    /// The tile's `dY`, channel-major: `dyo[o * P + p]`.
    pub(super) dyo: Buf<A>,
    /// `a_j` sums, laid out `[row, deformable group * tap, ow, corner]`; zeroed per tile.
    pub(super) acc: Buf<A>,
    pub(super) rows: RowScratch<A>,
}

pub(super) fn by_tiles<T: Element>(
    plan: &Plan<'_, '_, T>,
    dy: ArrayView4<'_, T>,
    mut images: Images<'_, T>,
    mut sums: Sums<'_, T>,
    gate: GradGate,
) {
    let g = plan.g;
    let zero = T::Acc::zero();
    let (coutg, gk) = (g.cout_per_group(), g.deformable_groups * g.taps());
    let tile_px = plan.rows * g.wo;
    let (want_dx, want_dw, want_tap) = (images.want_dx, images.want_dw, images.want_tap);
    // Buffers come from the scratch pool; `take` leaves stale contents where every element is
    // written before it is read; accumulators are zeroed (or first written) by their users.
    let some = |want: bool, len: usize| take(if want { len } else { 0 }, zero);
    let tiles = g.ho.div_ceil(plan.rows);
    // Enough images for every lane, or images too small to split: each lane takes whole images,
    // so an image's `dX` has one writer (no per-lane copies to zero and sum). Else the images of a wave (fewer than LANES) share
    // the lanes, `per` lanes each, each lane a contiguous range of its image's rows: one image
    // on 4 lanes, two on 2 each, so no lane, and on more than 2 cores no thread, sits idle.
    let by_image = g.n > 1 && (g.n >= LANES || tiles < LANES);
    let wave = g.n.clamp(1, LANES);
    let per = if by_image { 1 } else { LANES / wave };
    // By image, only as many lanes as images get work; a lane that never runs would only add
    // +0 to the reductions (an exact identity there), so leaving it out keeps the bits.
    let used = wave * per;
    let mut lanes: Vec<Lane<T::Acc>> = (0..used)
        .map(|_| Lane {
            dx: LazyDx::new(plan, want_dx, per > 1),
            dw: if want_dw {
                (0..g.groups)
                    .map(|_| take(coutg * plan.row_len, zero)) // written by the first tile
                    .collect()
            } else {
                vec![]
            },
            dw_live: false,
            db: vec![zero; g.cout],
            cols: some(want_dw, tile_px * plan.row_len),
            dcol: take(tile_px * plan.row_len, zero),
            dyo: take(tile_px * g.cout, zero),
            acc: some(want_tap, tile_px * gk * 4),
            rows: RowScratch::new(g.wo),
        })
        .collect();
    // One channels-last image per image of a wave, and each gradient's views image by image.
    let mut xts: Vec<Buf<T::Acc>> = (0..wave).map(|_| take(plan.image_len(), zero)).collect();
    if by_image {
        // Lane l takes whole images n0 + l of each wave of LANES images,
        // and writes their input gradient directly (an image belongs to one lane: no reduction).
        for n0 in (0..g.n).step_by(used) {
            let nw = used.min(g.n - n0);
            let mut work = Vec::with_capacity(nw);
            for ((l, lane), xt) in lanes.iter_mut().enumerate().take(nw).zip(xts.iter_mut()) {
                let lg = images.taps();
                work.push((n0 + l, lane, xt, lg, images.input()));
            }
            for_each_item(work, |(n, lane, xt, mut lg, gi), _| {
                plan.image_nhwc(n, xt);
                lane.dx.reset();
                let dy_n = dy.index_axis(Axis(0), n);
                for t in 0..tiles {
                    let oh0 = t * plan.rows;
                    let nrows = plan.rows.min(g.ho - oh0);
                    let at = Rows {
                        n,
                        oh0,
                        nrows,
                        lr0: oh0,
                    };
                    backward_tile(plan, at, xt, &dy_n, lane, &mut lg, gate);
                }
                if let Some(gi) = gi {
                    write_input_grad(plan, &[&lane.dx], gi, false);
                }
            });
        }
        reduce_weight_bias(plan, &lanes, None, &mut sums);
        return;
    }
    // Lane i*per + r owns tiles [r*T/per, (r+1)*T/per) of image i of the wave: a fixed,
    // contiguous range of output rows.
    let bounds: Vec<usize> = (0..=per)
        .map(|r| (r * tiles / per * plan.rows).min(g.ho))
        .collect();
    let lens: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
    for n0 in (0..g.n).step_by(wave) {
        let nw = wave.min(g.n - n0);
        plan.images_nhwc(n0, &mut xts[..nw]);
        let mut work = Vec::with_capacity(nw * per);
        let mut free = lanes.iter_mut();
        for (i, xt) in xts[..nw].iter().enumerate() {
            for (r, lg) in images.taps_by_rows(&lens).into_iter().enumerate() {
                let lane = free.next().expect("per lanes per image");
                work.push((n0 + i, &xt[..], bounds[r], lens[r], lane, lg));
            }
        }
        for_each_item(work, |(n, xt, row0, len, lane, mut lg), _| {
            lane.dx.reset();
            let dy_n = dy.index_axis(Axis(0), n);
            let mut r = 0;
            while r < len {
                let nrows = plan.rows.min(len - r);
                let at = Rows {
                    n,
                    oh0: row0 + r,
                    nrows,
                    lr0: r,
                };
                backward_tile(plan, at, xt, &dy_n, lane, &mut lg, gate);
                r += nrows;
            }
        });
        for lanes in lanes.chunks(per).take(nw) {
            if let Some(gi) = images.input() {
                let parts: Vec<&LazyDx<T::Acc>> = lanes.iter().map(|l| &l.dx).collect();
                write_input_grad(plan, &parts, gi, true);
            }
        }
    }
    reduce_weight_bias(plan, &lanes, None, &mut sums);
}

/// Backward of `at`'s output rows into `lane` and the lane's offset/mask views `lg`.
pub(super) fn backward_tile<T: Element>(
    plan: &Plan<'_, '_, T>,
    at: Rows,
    xt: &[T::Acc],
    dy_n: &ArrayView3<'_, T>,
    lane: &mut Lane<T::Acc>,
    lg: &mut LaneGrads<'_, T>,
    gate: GradGate,
) {
    let Rows { n, oh0, nrows, .. } = at;
    let g = plan.g;
    let zero = T::Acc::zero();
    let (coutg, kk) = (g.cout_per_group(), g.taps());
    let gk = g.deformable_groups * kk;
    let px = nrows * g.wo;
    let row_len = plan.row_len;
    // dyo[o * P + p] = dY[n, o, oh0 + p / Wo, p % Wo]: the tile's rows of each channel.
    let dyo = &mut lane.dyo[..g.cout * px];
    channels_to_acc(
        |o| dy_n.slice(ndarray::s![o, oh0..oh0 + nrows, ..]),
        px,
        dyo,
    );
    for (o, d) in dyo.chunks_exact(px.max(1)).enumerate() {
        d.iter().for_each(|v| lane.db[o] += *v);
    }
    let want_tap = !lane.acc.is_empty();
    let acc = if want_tap {
        &mut lane.acc[..px * gk * 4]
    } else {
        &mut lane.acc[..]
    };
    acc.iter_mut().for_each(|v| *v = zero);
    for q in 0..g.groups {
        let dy_q = &lane.dyo[q * coutg * px..(q + 1) * coutg * px];
        let dyq = Mat {
            data: dy_q,
            rows: px,
            cols: coutg,
            rs: 1,
            cs: px,
        };
        let want_dw = !lane.dw.is_empty();
        let cols = &mut lane.cols[..if want_dw { px * row_len } else { 0 }];
        if !lane.dx.is_empty() || want_tap {
            // dcol[P x K*Cg] = dY_q * Wp_q^T, then one descriptor pass per (row, tap) for the
            // columns, the sums `a_j` and the scatter (the columns had a pass of their own).
            let dcol = &mut lane.dcol[..px * row_len];
            gemm(dcol, row_len, false, dyq, plan.weight_t(q, 0, row_len));
            let out = PassOut {
                dx: &mut lane.dx,
                acc,
                cols,
                rows: &mut lane.rows,
                lg,
            };
            tap_pass(plan, q, at, xt, dcol, out, gate);
        } else if want_dw {
            plan.columns(n, q, oh0..oh0 + nrows, xt, cols, &mut lane.rows);
        }
        if want_dw {
            // dW_q^T += dY_q^T * cols (= on the lane's first tile)
            weight_grad(plan, dy_q, px, &lane.cols, &mut lane.dw[q], lane.dw_live);
        }
    }
    if !lane.dw.is_empty() {
        lane.dw_live = true;
    }
}
