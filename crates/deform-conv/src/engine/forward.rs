//! The forward: `Y[tile] = cols(tile) * Wp + b`, tile by tile; see the engine's documentation.

use super::blocking::LANES;
use super::gemm::{gemm, Mat};
use super::kernels::Isa;
use super::plan::{split_rows, Plan, RowScratch};
use super::scratch::{take, Buf};
use super::threads::{for_each_item, PerWorker};
use crate::element::{Element, Real};
use crate::error::Result;
use crate::operands::{ForwardOutputs, Operands};
use crate::params::Geometry;
use ndarray::Axis;
use num_traits::Zero;

/// Engine forward; see the module documentation.
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    out: ForwardOutputs<'_, T>,
    isa: Isa,
) -> Result<()> {
    let plan = Plan::new(g, ops, isa, false)?;
    forward_impl(&plan, out);
    Ok(())
}

pub(super) struct Scratch<A: Real> {
    cols: Buf<A>,
    out: Buf<A>,
    rows: RowScratch<A>,
}

pub(super) fn forward_impl<T: Element>(plan: &Plan<'_, '_, T>, mut out: ForwardOutputs<'_, T>) {
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
        .map(|_| take(plan.image_len(), T::Acc::zero())) // images_nhwc writes every element
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
        plan.images_nhwc(
            n0,
            &mut xts[..nw].iter_mut().map(|b| &mut b[..]).collect::<Vec<_>>(),
        );
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
        let scratch = PerWorker::new();
        for_each_item(tiles, |(n, t, mut y, mut d), w| {
            let init = || Scratch {
                cols: take(tile_px * plan.row_len, T::Acc::zero()),
                out: take(tile_px * coutg, T::Acc::zero()),
                rows: RowScratch::new(g.wo),
            };
            scratch.with(w, init, |scr| {
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
            })
        });
    }
}
