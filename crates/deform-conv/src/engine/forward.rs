//! The forward: `Y[tile] = cols(tile) * Wp + b`, tile by tile; see the engine's documentation.
//!
//! Two schedules, chosen from the shape alone (so the bits never depend on the thread count):
//!
//! * **By tile** (most layers): one task per (image, tile) builds its columns and runs its GEMM
//!   over every output channel, with one columns tile per worker in cache.
//! * **Split** (a wave with fewer than [`MIN_TASKS`] tiles, e.g. ResNet's c5 at batch 1: one
//!   16x16 tile): one task per (tile, conv group, row) first builds the wave's columns, then one
//!   task per (conv group, block of output channels) runs one GEMM over every pixel of the wave
//!   on its slice of the weight, so that such a layer does not run on one thread, and the
//!   weight is packed once per wave rather than once per tile.

use super::blocking::{LANES, MIN_TASKS};
use super::columns::RowScratch;
use super::gemm::{gemm, Mat};
use super::kernels::panel_gemm::NR;
use super::kernels::{Isa, PanelGemm};
use super::pack::pack_panel;
use super::plan::{split_axis, split_rows, Pass, Plan};
use super::scratch::{take, Buf};
use super::threads::{self, for_each_item, PerWorker};
use crate::element::{Element, Real};
use crate::error::Result;
use crate::operands::{ForwardOutputs, Operands};
use crate::params::Geometry;
use ndarray::{ArrayViewMut2, ArrayViewMut3, Axis};
use num_traits::Zero;

/// Engine forward; see the module documentation.
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    out: ForwardOutputs<'_, T>,
    isa: Isa,
) -> Result<()> {
    threads::serial_if_small(work(g), || {
        let plan = Plan::new(g, ops, isa, Pass::Forward)?;
        forward_impl(&plan, out);
        Ok(())
    })
}

/// A call's work for [`threads::serial_if_small`]: the GEMM's multiply-adds and four per sampled
/// channel value.
pub(super) fn work(g: &Geometry) -> f64 {
    g.macs() + 4.0 * (g.n * g.ho * g.wo * g.taps()) as f64 * g.c as f64
}

pub(super) struct Scratch<A: Real> {
    cols: Buf<A>,
    out: Buf<A>,
    rows: RowScratch<A>,
}

/// One tile of the output: image `n`, tile `t`, its output rows `y` (`[Cout, rows, Wo]`) and
/// deformed-image rows `d`.
type Tile<'a, T> = (
    usize,
    usize,
    ArrayViewMut3<'a, T>,
    Option<ArrayViewMut3<'a, T>>,
);

pub(super) fn forward_impl<T: Element>(plan: &Plan<'_, '_, T>, mut out: ForwardOutputs<'_, T>) {
    let g = plan.g;
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
        plan.images_nhwc(n0, &mut xts[..nw]);
        let mut tiles: Vec<Tile<'_, T>> = Vec::with_capacity(nw * tiles_per_image);
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
        let blocks = output_blocks(g, tiles.len());
        if blocks == 1 && plan.k.panel_gemm.is_some() {
            plan.panels(); // packed here, panels in parallel, not inside the first tile's task
        }
        if blocks > 1 {
            split_wave(plan, &xts[..nw], n0, tiles, blocks, &bias);
        } else {
            by_tile(plan, &xts[..nw], n0, tiles, &bias);
        }
    }
}

/// Blocks of output channels per conv group for a wave of `tiles` tiles: 1 when the tiles
/// alone give [`MIN_TASKS`] tasks, else enough blocks for the conv groups to make that many
/// (the split schedule's GEMMs span the wave's tiles), each of at least 64 channels (a narrower
/// GEMM wastes more in packing than a second thread gains).
fn output_blocks(g: &Geometry, tiles: usize) -> usize {
    if tiles * g.groups >= MIN_TASKS {
        return 1;
    }
    MIN_TASKS
        .div_ceil(g.groups)
        .min(g.cout_per_group() / 64)
        .max(1)
}

/// One task per tile: columns, then one GEMM over every output channel of each conv group.
fn by_tile<T: Element>(
    plan: &Plan<'_, '_, T>,
    xts: &[Buf<T::Acc>],
    n0: usize,
    tiles: Vec<Tile<'_, T>>,
    bias: &[T::Acc],
) {
    let g = plan.g;
    let (cg, coutg) = (g.c_per_group(), g.cout_per_group());
    let tile_px = plan.rows * g.wo;
    let scratch = PerWorker::new();
    for_each_item(tiles, |(n, t, mut y, mut d), w| {
        let init = || Scratch {
            cols: take(tile_px * plan.row_len, T::Acc::zero()),
            out: take(tile_px * coutg.next_multiple_of(NR), T::Acc::zero()),
            rows: RowScratch::new(g.wo),
        };
        scratch.with(w, init, |scr| {
            let xt = &xts[n - n0];
            let (oh0, nrows) = (t * plan.rows, y.shape()[1]);
            let px = nrows * g.wo;
            for q in 0..g.groups {
                let cols = &mut scr.cols[..px * plan.row_len];
                plan.columns(n, q, oh0..oh0 + nrows, xt, cols, &mut scr.rows);
                if let Some(d) = d.as_mut() {
                    let mut d_q = d.slice_mut(ndarray::s![q * cg..(q + 1) * cg, .., ..]);
                    write_deformed(plan, nrows, cols, &mut d_q);
                }
                let y_q = y.slice_mut(ndarray::s![q * coutg..(q + 1) * coutg, .., ..]);
                output_block(plan, [q, 0], cols, vec![y_q], &mut scr.out, bias, None);
            }
        })
    });
}

/// The split schedule: the wave's columns first (one task per tile row and conv group), then
/// one GEMM task per (conv group, block of output channels) over all the wave's pixels.
fn split_wave<T: Element>(
    plan: &Plan<'_, '_, T>,
    xts: &[Buf<T::Acc>],
    n0: usize,
    tiles: Vec<Tile<'_, T>>,
    blocks: usize,
    bias: &[T::Acc],
) {
    let g = plan.g;
    let (cg, coutg) = (g.c_per_group(), g.cout_per_group());
    let row_px = g.wo * plan.row_len;
    // cols[q]: [P x K*Cg] for the P pixels of the whole wave, tile after tile.
    let wave_rows: usize = tiles.iter().map(|(_, _, y, _)| y.shape()[1]).sum();
    let mut cols: Vec<Buf<T::Acc>> = (0..g.groups)
        .map(|_| take(wave_rows * row_px, T::Acc::zero())) // every element is written
        .collect();
    // GEMM tasks: one per (q, block of cb channels), each with that block of every tile; blocks
    // start on whole weight panels.
    let cb = coutg.div_ceil(blocks).next_multiple_of(NR);
    let block_lens: Vec<usize> = (0..coutg.div_ceil(cb))
        .map(|b| cb.min(coutg - b * cb))
        .collect();
    let mut work: Vec<(usize, usize, Vec<ArrayViewMut3<'_, T>>)> = (0..g.groups)
        .flat_map(|q| (0..block_lens.len()).map(move |b| (q, b * cb, Vec::new())))
        .collect();
    {
        let mut col_rows: Vec<_> = cols.iter_mut().map(|c| c.chunks_mut(row_px)).collect();
        let mut rows = Vec::new();
        for (n, t, y, d) in tiles {
            let nrows = y.shape()[1];
            // The deformed image's rows of this tile, split by conv group: d_rows[r][q].
            let mut d_rows: Vec<Vec<Option<ArrayViewMut3<'_, T>>>> =
                split_rows(d, &vec![g.kh; nrows])
                    .into_iter()
                    .map(|d_r| split_axis(d_r, Axis(0), &vec![cg; g.groups]))
                    .collect();
            for (q, c_q) in col_rows.iter_mut().enumerate() {
                for (r, d_r) in d_rows.iter_mut().enumerate() {
                    let c_r = c_q.next().expect("one columns row per output row");
                    rows.push((n, t * plan.rows + r, q, c_r, d_r[q].take()));
                }
            }
            let y_qs = split_axis(Some(y), Axis(0), &vec![coutg; g.groups]);
            for (q, y_q) in y_qs.into_iter().enumerate() {
                let blks = split_axis(y_q, Axis(0), &block_lens);
                for (b, blk) in blks.into_iter().flatten().enumerate() {
                    work[q * block_lens.len() + b].2.push(blk);
                }
            }
        }
        let scratch = PerWorker::new();
        for_each_item(rows, |(n, oh, q, c_r, d_r), w| {
            scratch.with(
                w,
                || RowScratch::new(g.wo),
                |rs| {
                    plan.columns(n, q, oh..oh + 1, &xts[n - n0], c_r, rs);
                    if let Some(mut d_r) = d_r {
                        write_deformed(plan, 1, c_r, &mut d_r);
                    }
                },
            )
        });
    }
    let cols = &cols;
    let px = wave_rows * g.wo;
    // With the panel GEMM, each task packs the panels of its own block of the weight (a call
    // that only splits, e.g. ResNet's c5 at batch 1, never packs the whole weight: the block
    // stays in this core's caches for its GEMM instead of a 9.4 MB pass through memory).
    let own_panels = plan.k.panel_gemm.is_some();
    let scratch = PerWorker::new();
    for_each_item(work, |(q, o0, ys), w| {
        let init = || {
            let panels = if own_panels { cb * plan.row_len } else { 0 };
            (take(px * cb, T::Acc::zero()), take(panels, T::Acc::zero()))
        };
        scratch.with(w, init, |(out, panels)| {
            let nc = ys.first().map_or(0, |y| y.shape()[0]);
            let block = own_panels.then(|| {
                let panels = &mut panels[..nc.div_ceil(NR) * NR * plan.row_len];
                for (p, panel) in panels.chunks_mut(NR * plan.row_len).enumerate() {
                    let o = o0 + p * NR;
                    pack_panel(
                        g,
                        &plan.ops.weight,
                        q * coutg + o,
                        NR.min(o0 + nc - o),
                        panel,
                    );
                }
                &*panels
            });
            output_block(plan, [q, o0], &cols[q], ys, out, bias, block)
        })
    });
}

/// `Y[q*Coutg + o0 + o, ..] = cols * Wp_q[o0 + o] + b` for the channels of the views `ys`
/// (`[channels, rows, Wo]` each, covering consecutive pixels of `cols`): one GEMM into the
/// scratch `out[P x channels]`, then each view's share written out. The panel GEMM reads
/// `block` (these channels' panels) when given, else the call's [`Plan::panels`]. `at`: the
/// conv group `q` and the first output channel `o0` within it.
fn output_block<T: Element>(
    plan: &Plan<'_, '_, T>,
    [q, o0]: [usize; 2],
    cols: &[T::Acc],
    ys: Vec<ArrayViewMut3<'_, T>>,
    out: &mut [T::Acc],
    bias: &[T::Acc],
    block: Option<&[T::Acc]>,
) {
    let g = plan.g;
    let Some(nc) = ys.first().map(|y| y.shape()[0]) else {
        return;
    };
    let px: usize = ys.iter().map(|y| y.shape()[1] * g.wo).sum();
    // The panel GEMM writes whole panels: rows of `nc` rounded up to NR.
    let ld = nc.next_multiple_of(NR);
    let o = &mut out[..px * ld];
    let cols = &cols[..px * plan.row_len];
    match plan.k.panel_gemm {
        Some(panel_gemm) => panel_gemm(PanelGemm {
            a: cols,
            lda: plan.row_len,
            m: px,
            k: plan.row_len,
            b: block.unwrap_or_else(|| &plan.panels()[q][o0 * plan.row_len..]),
            n: nc,
            c: o,
            ldc: ld,
        }),
        None => gemm(
            o,
            ld,
            false,
            Mat {
                data: cols,
                rows: px,
                cols: plan.row_len,
                rs: plan.row_len,
                cs: 1,
            },
            Mat {
                data: &plan.wp[q][o0 * plan.row_len..],
                rows: plan.row_len,
                cols: nc,
                rs: 1,
                cs: plan.row_len,
            },
        ),
    }
    let bias = &bias[q * g.cout_per_group() + o0..][..nc];
    let mut p0 = 0;
    for y in ys {
        let px_y = y.shape()[1] * g.wo;
        write_output(&o[p0 * ld..(p0 + px_y) * ld], nc, ld, y, bias);
        p0 += px_y;
    }
}

/// `Y[c, p] = o[p * ld + c] + b[c]` for the `[nc, rows, Wo]` view `y`.
fn write_output<T: Element>(
    o: &[T::Acc],
    nc: usize,
    ld: usize,
    mut y: ArrayViewMut3<'_, T>,
    bias: &[T::Acc],
) {
    debug_assert!(nc <= ld);
    let px = o.len() / ld;
    // Y[c, p] = out[p, c] + b[c] is a transpose: in blocks of 8 channels, each pixel's 8 sums
    // are one read and the 8 channel planes are written in order.
    const OB: usize = 8;
    let mut planes: Vec<ArrayViewMut2<'_, T>> = y.outer_iter_mut().collect();
    for (bi, blk) in planes.chunks_mut(OB).enumerate() {
        let c0 = bi * OB;
        let b = &bias[c0..c0 + blk.len()];
        let slices: Option<Vec<&mut [T]>> = blk.iter_mut().map(|p| p.as_slice_mut()).collect();
        match slices {
            Some(mut sl) if sl.len() == OB => {
                // 8x8 blocks: eight pixels' sums in, each channel's eight pixels out as one run.
                let whole = px - px % OB;
                for p0 in (0..whole).step_by(OB) {
                    let rows: [&[T::Acc; OB]; OB] = std::array::from_fn(|j| {
                        (&o[(p0 + j) * ld + c0..][..OB]).try_into().expect("8 sums")
                    });
                    for (k, plane) in sl.iter_mut().enumerate() {
                        let dst: &mut [T; OB] =
                            (&mut plane[p0..p0 + OB]).try_into().expect("8 pixels");
                        // Channel k's eight pixels built in registers and stored as one run
                        // (through a stack tile, the scalar writes stalled the vector reads).
                        *dst = std::array::from_fn(|j| T::from_acc(rows[j][k] + b[k]));
                    }
                }
                for p in whole..px {
                    let sums = &o[p * ld + c0..][..OB];
                    for ((plane, v), b) in sl.iter_mut().zip(sums).zip(b) {
                        plane[p] = T::from_acc(*v + *b);
                    }
                }
            }
            Some(mut sl) => {
                for p in 0..px {
                    let sums = &o[p * ld + c0..][..sl.len()];
                    for ((plane, v), b) in sl.iter_mut().zip(sums).zip(b) {
                        plane[p] = T::from_acc(*v + *b);
                    }
                }
            }
            None => {
                for (k, plane) in blk.iter_mut().enumerate() {
                    // Logical order of a [rows, Wo] plane: p = r * Wo + ow.
                    for (p, v) in plane.iter_mut().enumerate() {
                        *v = T::from_acc(o[p * ld + c0 + k] + b[k]);
                    }
                }
            }
        }
    }
}

/// The deformed image of one conv group (`d`: its `Cg` channels) for `nrows` output rows from
/// their columns: `D[c, r*kh + i, ow*kw + j] = cols[pixel (r, ow), tap (i, j), c]`. A transpose:
/// in blocks of 8 channels, each (pixel, tap)'s 8 values are one read of the columns and the 8
/// D rows are written in order.
fn write_deformed<T: Element>(
    plan: &Plan<'_, '_, T>,
    nrows: usize,
    cols: &[T::Acc],
    d: &mut ArrayViewMut3<'_, T>,
) {
    const CB: usize = 8;
    let g = plan.g;
    let (cg, row_len) = (g.c_per_group(), plan.row_len);
    for c0 in (0..cg).step_by(CB) {
        let cn = CB.min(cg - c0);
        for r in 0..nrows {
            for i in 0..g.kh {
                let mut blk = d.slice_mut(ndarray::s![c0..c0 + cn, r * g.kh + i, ..]);
                let mut drows: Vec<_> = blk.outer_iter_mut().collect();
                // Pixel ow, tap j: cols[(r*Wo + ow)*row_len + (i*kw + j)*Cg + c0 ..][..cn].
                let at = |x: usize| {
                    let (ow, j) = (x / g.kw, x % g.kw);
                    (r * g.wo + ow) * row_len + (i * g.kw + j) * cg + c0
                };
                let slices: Option<Vec<&mut [T]>> =
                    drows.iter_mut().map(|v| v.as_slice_mut()).collect();
                match slices {
                    Some(mut sl) => {
                        for x in 0..g.wo * g.kw {
                            let src = &cols[at(x)..][..cn];
                            for (row, v) in sl.iter_mut().zip(src) {
                                row[x] = T::from_acc(*v);
                            }
                        }
                    }
                    None => {
                        for (k, row) in drows.iter_mut().enumerate() {
                            for (x, v) in row.iter_mut().enumerate() {
                                *v = T::from_acc(cols[at(x) + k]);
                            }
                        }
                    }
                }
            }
        }
    }
}
