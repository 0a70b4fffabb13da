//! The whole-image schedule: images that are one tile each, with one conv group, in waves of
//! `LANES`; each weight-sized GEMM runs once per wave, split by blocks of the weight.

use super::lazy_dx::{write_input_grad, LazyDx};
use super::passes::{reduce_weight_bias, tap_pass, weight_grad, PassOut, Rows};
use super::{channels_to_acc, Images, Sums, WEIGHT_BLOCKS};
use crate::element::Element;
use crate::engine::blocking::LANES;
use crate::engine::columns::RowScratch;
use crate::engine::gemm::{gemm_view, Mat};
use crate::engine::plan::Plan;
use crate::engine::scratch::{take, Buf};
use crate::engine::threads::{for_each_chunk, for_each_item, PerWorker};
use crate::params::GradGate;
use ndarray::{ArrayView4, ArrayViewMut2, Axis};
use num_traits::Zero;

/// Images whose whole output is one tile, with one conv group (ResNet's c5 at 8x8 and 16x16,
/// stride2_c5). Images go in waves of `LANES`, and each weight-sized product is one GEMM over
/// the whole wave, split across the threads by blocks of the weight, so no per-lane copies of
/// `dW` and no per-image packing of the weight:
///
/// 1. `dY` channel-major (`dyo[o, p]`, the wave's pixels image after image), by channels; the
///    columns `cols[p, K*C]` per (image, output row);
/// 2. `dW^T[Cout x K*C] += dyo cols`, in [`WEIGHT_BLOCKS`] tasks by output channels;
/// 3. `dcol[P x K*C] = dyo^T Wp^T`, in [`WEIGHT_BLOCKS`] tasks by columns;
/// 4. the descriptor pass (offset/mask gradients and the `dX` scatter) per image, or for a
///    single image per range of output rows (`LANES` of them), each with its own `dX` summed
///    in range order.
///
/// Every split is decided by the shape alone: the same bits for any thread count.
pub(super) fn whole_images<T: Element>(
    plan: &Plan<'_, '_, T>,
    dy: ArrayView4<'_, T>,
    mut images: Images<'_, T>,
    mut sums: Sums<'_, T>,
    gate: GradGate,
) {
    let g = plan.g;
    let zero = T::Acc::zero();
    let (row_len, cout, gk) = (plan.row_len, g.cout, g.deformable_groups * g.taps());
    let px = g.ho * g.wo;
    let (want_dx, want_dw, want_tap) = (images.want_dx, images.want_dw, images.want_tap);
    let want_dcol = want_dx || want_tap;
    let wave = LANES.min(g.n).max(1);
    // One image: its rows in LANES ranges; several: one range (the whole image) per image.
    let ranges: Vec<(usize, usize)> = if g.n == 1 {
        let b: Vec<usize> = (0..=LANES).map(|l| l * g.ho / LANES).collect();
        b.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
    } else {
        vec![(0, g.ho)]
    };
    let slots = if g.n == 1 { LANES } else { wave };
    let mut xts: Vec<Buf<T::Acc>> = (0..wave).map(|_| take(plan.image_len(), zero)).collect();
    let mut dyo = take(wave * px * cout, zero); // written per wave
    let mut cols = take(if want_dw { wave * px * row_len } else { 0 }, zero);
    let mut dcol = take(if want_dcol { wave * px * row_len } else { 0 }, zero);
    let mut dw = take(if want_dw { cout * row_len } else { 0 }, zero); // the first wave writes
    if g.n == 0 {
        dw.iter_mut().for_each(|v| *v = zero);
    }
    let mut db = vec![zero; cout];
    // Columns of dcol per task: a quarter, in whole cache lines.
    let block = row_len.div_ceil(WEIGHT_BLOCKS).next_multiple_of(16);
    // Per slot: its dX (channels-last), a-sums and row scratch.
    let mut slot_dx: Vec<LazyDx<T::Acc>> = (0..slots)
        .map(|_| LazyDx::new(plan, want_dx, g.n == 1))
        .collect();
    let mut slot_acc: Vec<Buf<T::Acc>> = (0..slots)
        .map(|_| take(if want_tap { px * gk * 4 } else { 0 }, zero))
        .collect();
    let mut slot_rows: Vec<RowScratch<T::Acc>> =
        (0..slots).map(|_| RowScratch::new(g.wo)).collect();
    for n0 in (0..g.n).step_by(wave) {
        let nw = wave.min(g.n - n0);
        let pw = nw * px;
        // 1. Channels-last images; dY channel-major, by channels; the columns, per (image,
        // output row).
        plan.images_nhwc(n0, &mut xts[..nw]);
        for_each_chunk(&mut dyo[..cout * pw], pw, |o, d, _| {
            channels_to_acc(|i| dy.slice(ndarray::s![n0 + i, o, .., ..]), px, d);
        });
        if want_dw {
            let rows: Vec<_> = cols[..pw * row_len]
                .chunks_mut(g.wo * row_len)
                .enumerate()
                .map(|(i, c)| (n0 + i / g.ho, i % g.ho, c))
                .collect();
            let xts = &xts;
            let scratch = PerWorker::new();
            for_each_item(rows, |(n, oh, c), w| {
                scratch.with(
                    w,
                    || RowScratch::new(g.wo),
                    |rs| plan.columns(n, 0, oh..oh + 1, &xts[n - n0], c, rs),
                );
            });
        }
        for (o, d) in dyo[..cout * pw].chunks_exact(pw).enumerate() {
            d.iter().for_each(|v| db[o] += *v);
        }
        let dyo_w = Mat {
            data: &dyo[..cout * pw],
            rows: pw,
            cols: cout,
            rs: 1,
            cs: pw,
        };
        // 2. dW^T[block, :] += dyo[block, :] cols, all the wave's pixels in one GEMM.
        if want_dw {
            let (dyo, cols) = (&dyo, &cols);
            let ob = cout.div_ceil(WEIGHT_BLOCKS);
            for_each_chunk(&mut dw, ob * row_len, |b, blk, _| {
                let (o0, m) = (b * ob, blk.len() / row_len);
                weight_grad(plan, &dyo[o0 * pw..(o0 + m) * pw], pw, cols, blk, n0 > 0);
            });
        }
        if !want_dcol {
            continue;
        }
        // 3. dcol[:, block] = dyo^T Wp^T[:, block]: the weight read where `plan.wp` holds it.
        {
            let mut view = ArrayViewMut2::from_shape((pw, row_len), &mut dcol[..pw * row_len])
                .expect("pw * row_len elements");
            let blocks: Vec<_> = view
                .axis_chunks_iter_mut(Axis(1), block)
                .enumerate()
                .collect();
            for_each_item(blocks, |(b, blk), _| {
                let j0 = b * block;
                let ncols = blk.shape()[1];
                gemm_view(blk, dyo_w, plan.weight_t(0, j0, ncols));
            });
        }
        // 4. The descriptor pass, per (image, range of rows).
        let mut work = Vec::with_capacity(slots);
        let slot_bufs = slot_dx
            .iter_mut()
            .zip(slot_acc.iter_mut())
            .zip(slot_rows.iter_mut());
        let mut slot_bufs = slot_bufs.take(if g.n == 1 { LANES } else { nw });
        for i in 0..nw {
            let n = n0 + i;
            let lens: Vec<usize> = ranges.iter().map(|r| r.1).collect();
            let taps = images.taps_by_rows(&lens);
            // Several images: each slot writes its image's dX. One image: its ranges' dX are
            // summed after the pass.
            let mut gi = if g.n == 1 { None } else { images.input() };
            for (&(row0, nrows), lg) in ranges.iter().zip(taps) {
                let ((dx, acc), rs) = slot_bufs.next().expect("one slot per range");
                work.push((n, i, row0, nrows, dx, acc, rs, lg, gi.take()));
            }
        }
        let (xts, dcol) = (&xts, &dcol);
        for_each_item(work, |(n, i, row0, nrows, dx, acc, rs, mut lg, gi), _| {
            dx.reset();
            let acc = &mut acc[..if want_tap { nrows * g.wo * gk * 4 } else { 0 }];
            acc.iter_mut().for_each(|v| *v = zero);
            let d = &dcol[(i * px + row0 * g.wo) * row_len..];
            let at = Rows {
                n,
                oh0: row0,
                nrows,
                lr0: 0,
            };
            let out = PassOut {
                dx: &mut *dx,
                acc,
                cols: &mut [],
                rows: rs,
                lg: &mut lg,
            };
            tap_pass(plan, 0, at, &xts[i], d, out, gate);
            if let Some(gi) = gi {
                write_input_grad(plan, &[&*dx], gi, false);
            }
        });
    }
    if g.n == 1 {
        if let Some(gi) = images.input() {
            let parts: Vec<&LazyDx<T::Acc>> = slot_dx.iter().collect();
            write_input_grad(plan, &parts, gi, true);
        }
    }
    reduce_weight_bias(plan, &[], Some((&dw, &db)), &mut sums);
}
