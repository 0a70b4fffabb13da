//! What both schedules share: the descriptor pass of a range of output rows (columns, the four
//! corner sums and the offset/mask gradients, the input-gradient scatter), the weight-gradient
//! GEMM, and the reduction of `dW` and `db`.

use super::lazy_dx::LazyDx;
use super::tiles::Lane;
use super::{LaneGrads, Sums};
use crate::element::Element;
use crate::engine::columns::RowScratch;
use crate::engine::gemm::{gemm, Mat};
use crate::engine::kernels::TapGradsFn;
use crate::engine::plan::Plan;
use crate::engine::sample::RowSamples;
use crate::engine::scratch::{take, Buf};
use crate::engine::threads::{for_each_chunk, for_each_item};
use crate::params::GradGate;
use ndarray::Axis;
use num_traits::Zero;

/// Output rows `[oh0, oh0 + nrows)` of image `n`; `lr0` is the first one's row in the lane's
/// offset and mask gradient views.
#[derive(Clone, Copy)]
pub(super) struct Rows {
    pub(super) n: usize,
    pub(super) oh0: usize,
    pub(super) nrows: usize,
    pub(super) lr0: usize,
}

/// What a descriptor pass writes into; each part is skipped when empty (not wanted).
pub(super) struct PassOut<'a, 'v, T: Element> {
    /// The input gradient, channels-last.
    pub(super) dx: &'a mut LazyDx<T::Acc>,
    /// The four corner sums `a_j` per (row, deformable group * tap, pixel).
    pub(super) acc: &'a mut [T::Acc],
    /// The columns tile, rebuilt for the weight gradient.
    pub(super) cols: &'a mut [T::Acc],
    pub(super) rows: &'a mut RowScratch<T::Acc>,
    pub(super) lg: &'a mut LaneGrads<'v, T>,
}

/// A `dW^T` (`[Cout x K*C]`) and `db` already summed.
type Summed<'a, A> = (&'a Buf<A>, &'a [A]);

/// `dW` and `db`: the lanes' partial sums added in lane order, or the sums `summed` already made
/// (`dW^T` as `[Cout x K*C]`, one conv group).
pub(super) fn reduce_weight_bias<T: Element>(
    plan: &Plan<'_, '_, T>,
    lanes: &[Lane<T::Acc>],
    summed: Option<Summed<'_, T::Acc>>,
    grads: &mut Sums<'_, T>,
) {
    let g = plan.g;
    let zero = T::Acc::zero();
    let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
    let row_len = plan.row_len;
    if let Some(gw) = grads.weight.as_mut() {
        for q in 0..g.groups {
            // sum[o * K*Cg + tap*Cg + c] = lane 0 + lane 1 + ... (in lane order), contiguous.
            // One pass, each element summed over the lanes in order from +0.
            let mut lane_sum = take(if summed.is_some() { 0 } else { coutg * row_len }, zero);
            for_each_chunk(&mut lane_sum, 4096, |k, s, _| {
                s.iter_mut().for_each(|v| *v = zero);
                // A lane that ran no tile holds no sums: it would add +0, an identity here.
                for lane in lanes.iter().filter(|l| l.dw_live) {
                    let d = &lane.dw[q][k * 4096..];
                    s.iter_mut().zip(d).for_each(|(s, d)| *s += *d);
                }
            });
            let sum: &[T::Acc] = summed.map_or(&lane_sum, |(d, _)| d);
            // dWt[q*Coutg + o, c, i, j] = sum[o * K*Cg + (i*kw + j)*Cg + c]: within each weight
            // row, a `[K x Cg]` to `[Cg x K]` transpose (the row's sums, 18 KB at most for
            // ResNet's c5, stay in L1), one task per weight row.
            let mut block = gw.slice_mut(ndarray::s![q * coutg..(q + 1) * coutg, .., .., ..]);
            let rows: Vec<_> = block.outer_iter_mut().enumerate().collect();
            for_each_item(rows, |(o, mut w_o), _| {
                let src = &sum[o * row_len..][..row_len];
                match w_o.as_slice_mut() {
                    Some(dst) => {
                        for (c, run) in dst.chunks_exact_mut(kk).enumerate() {
                            for (tap, v) in run.iter_mut().enumerate() {
                                *v = T::from_acc(src[tap * cg + c]);
                            }
                        }
                    }
                    None => {
                        for ((c, i, j), v) in w_o.indexed_iter_mut() {
                            *v = T::from_acc(src[(i * g.kw + j) * cg + c]);
                        }
                    }
                }
            });
        }
    }
    if let Some(gb) = grads.bias.as_mut() {
        for (o, v) in gb.iter_mut().enumerate() {
            *v = T::from_acc(match summed {
                Some((_, db)) => db[o],
                None => lanes.iter().fold(zero, |s, l| s + l.db[o]),
            });
        }
    }
}

/// `dW^T[o, kk] (+)= sum_p dY[o, p] * cols[p, kk]` for the `m = dy.len() / px` output channels
/// of `dy` (`[m x px]`, channel-major) and the columns tile `cols` (`[px x K*Cg]`), into `dw`
/// (`[m x K*Cg]`): each weight row's sums contiguous, so that the final reorder to torch's
/// `[Cout, Cg, kh, kw]` is a transpose within each row (see [`reduce_weight_bias`]).
pub(super) fn weight_grad<T: Element>(
    plan: &Plan<'_, '_, T>,
    dy: &[T::Acc],
    px: usize,
    cols: &[T::Acc],
    dw: &mut [T::Acc],
    accumulate: bool,
) {
    let row_len = plan.row_len;
    let m = dy.len() / px.max(1);
    gemm(
        dw,
        row_len,
        accumulate,
        Mat {
            data: dy,
            rows: m,
            cols: px,
            rs: px,
            cs: 1,
        },
        Mat {
            data: &cols[..px * row_len],
            rows: px,
            cols: row_len,
            rs: row_len,
            cs: 1,
        },
    );
}

/// The descriptor pass of conv group `q` over `at`'s output rows, from their `dcol` rows
/// (`dcol[r * Wo * K*Cg ..]` for row `at.oh0 + r`): per (deformable group, row, tap), the four
/// sums `a_j` into `out.acc` and the offset/mask gradients into `out.lg`; the scatter into
/// `out.dx`; the columns tile `out.cols` (as [`Plan::columns`] builds it).
pub(super) fn tap_pass<T: Element>(
    plan: &Plan<'_, '_, T>,
    q: usize,
    at: Rows,
    xt: &[T::Acc],
    dcol: &[T::Acc],
    out: PassOut<'_, '_, T>,
    gate: GradGate,
) {
    let Rows { n, oh0, nrows, lr0 } = at;
    let PassOut {
        dx,
        acc,
        cols,
        rows,
        lg,
    } = out;
    let g = plan.g;
    let (cg, kk, row_len) = (g.c_per_group(), g.taps(), plan.row_len);
    let gk = g.deformable_groups * kk;
    let want_tap = !acc.is_empty();
    for (dg, off, chans) in plan.segments(q) {
        for r in 0..nrows {
            for tap in 0..kk {
                plan.row_samples(n, dg, tap, oh0 + r, Some(gate), rows);
                let (job, block) = plan.job(&rows.s, dg, &chans, row_len);
                let at_col = r * g.wo * row_len + tap * cg + off;
                let d = &dcol[at_col..];
                let at = (r * gk + dg * kk + tap) * g.wo * 4;
                dx.cover(&rows.s, g.wo);
                let fused = plan.k.backward_row.filter(|_| !cols.is_empty() && want_tap);
                if let Some(fused) = fused {
                    let dx = if dx.is_empty() {
                        &mut []
                    } else {
                        &mut dx.buf[block..]
                    };
                    let acc = &mut acc[at..at + 4 * g.wo];
                    fused(&job, d, &xt[block..], &mut cols[at_col..], acc, dx);
                } else {
                    if !cols.is_empty() {
                        let c = &mut cols[at_col..];
                        (plan.k.gather_row)(&job, &xt[block..], c);
                        // The forward's descriptors give a sample outside the open box four
                        // zero corners; the per-tap gate's keep real corners at weight 0, and
                        // 0 * inf is NaN: such a sample's columns get the forward's +0.
                        for t in (0..g.wo).filter(|&t| !rows.s.open[t]) {
                            c[t * row_len..t * row_len + job.len].fill(T::Acc::zero());
                        }
                    }
                    if want_tap {
                        (plan.k.dot4_row)(&job, d, &xt[block..], &mut acc[at..at + 4 * g.wo]);
                    }
                }
                if !dx.is_empty() && fused.is_none() {
                    (plan.k.scatter_row)(&job, d, &mut dx.buf[block..]);
                }
                // The offset and mask gradients, made right here from the descriptors at
                // hand. A deformable group that spans several conv groups has its row
                // rewritten by each of them; `acc` keeps summing across them, so the last
                // write holds the complete sums.
                if want_tap {
                    let ch = dg * kk + tap;
                    tap_grads(
                        plan.k.tap_grads,
                        &rows.s,
                        &acc[at..],
                        &mut rows.grads,
                        lg,
                        ch,
                        lr0 + r,
                    );
                }
            }
        }
    }
}

/// The offset and mask gradients of row `lr` (in the lane's views) of offset channel `ch`,
/// from its descriptors `s` and its sums `a[4*ow + j]` (SPEC §2):
///
/// `d dy = m (hx (a10 - a00) + lx (a11 - a01))`, `d dx = m (hy (a01 - a00) + ly (a11 - a10))`,
/// `d mask = hy hx a00 + hy lx a01 + ly hx a10 + ly lx a11` (inside the open box only), and
/// zero for samples that receive no gradient.
fn tap_grads<T: Element>(
    k: TapGradsFn<T::Acc>,
    s: &RowSamples<T::Acc>,
    a: &[T::Acc],
    tmp: &mut [Vec<T::Acc>; 3],
    lg: &mut LaneGrads<'_, T>,
    ch: usize,
    lr: usize,
) {
    let wo = s.grad.len().min(a.len() / 4).min(tmp[0].len());
    // One pass into three contiguous rows, each then written out in one run.
    let [ty, tx, tm] = tmp;
    let (ty, tx, tm) = (&mut ty[..wo], &mut tx[..wo], &mut tm[..wo]);
    k(s, a, [&mut *ty, &mut *tx, &mut *tm]);
    // Row `[ch, lr, ..]` by two index steps (cheaper than an `s![]` slice on short rows).
    for (src, view) in [&*ty, &*tx, &*tm]
        .into_iter()
        .zip([&mut lg.oy, &mut lg.ox, &mut lg.m])
    {
        if let Some(v) = view.as_mut() {
            let mut row = v
                .view_mut()
                .index_axis_move(Axis(0), ch)
                .index_axis_move(Axis(0), lr);
            match row.as_slice_mut() {
                Some(row) => row
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, g)| *o = T::from_acc(*g)),
                None => row
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, g)| *o = T::from_acc(*g)),
            }
        }
    }
}
