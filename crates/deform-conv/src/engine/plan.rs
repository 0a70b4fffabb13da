//! The plan of one call: the kernels of the chosen instruction set, the packed weight, the tile
//! height, and the per-tile sampler that builds the columns `cols[P x K*C/Gc]` (row = pixel,
//! column = tap-major, channel-minor) from the channels-last image. Shared by [`super::forward`]
//! and [`super::backward`].

use super::blocking::{rows_per_tile, NHWC_BAND_PIXELS, NHWC_TASKS, REORDER_IN, REORDER_OUT};
use super::kernels::RowJob;
use super::kernels::{self, Isa, Kernels};
use super::sample::{RowArgs, RowSamples};
use super::scratch::{take, Buf};
use super::threads::{for_each_chunk, for_each_item};
use crate::element::{Element, Real};
use crate::error::{DeformError, Result};
use crate::operands::Operands;
use crate::params::{Geometry, GradGate};
use ndarray::{ArrayView4, ArrayViewMut3, Axis};
use num_traits::Zero;
use std::sync::OnceLock;

/// Can the engine run this geometry? Its descriptors index image pixels in `u32` arithmetic
/// bounded by `i32`: images of fewer than 2^31 pixels. Larger ones go to the reference path, and
/// so do empty problems (no image, input or output channel), whose loops there run zero times.
pub(crate) fn supports(g: &Geometry) -> bool {
    g.n > 0
        && g.c > 0
        && g.cout > 0
        && g.h
            .checked_mul(g.w)
            .is_some_and(|hw| hw < i32::MAX as usize)
        && g.w < i32::MAX as usize
        && g.h < i32::MAX as usize
}

pub(super) fn kernels_for<A: Real>(isa: Isa) -> Result<Kernels<A>> {
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
pub(super) struct Plan<'p, 'a, T: Element> {
    pub(super) g: &'p Geometry,
    pub(super) ops: &'p Operands<'a, T>,
    pub(super) k: Kernels<T::Acc>,
    /// The packed weight of each conv group. Forward: `wp[q][o*K*Cg + tap*Cg + c] =
    /// Wt[q*Coutg + o, c, i, j]`, read by the `gemm` crate through strides; empty when the
    /// kernels have a panel GEMM (the forward then reads [`Plan::panels`]). Backward: its transpose
    /// `wp[q][(tap*Cg + c)*Coutg + o]`, the layout the `dY * Wp^T` GEMM runs fastest on (measured:
    /// stride2_c5 backward 59 ms against 75 ms with the forward layout).
    pub(super) wp: Vec<Buf<T::Acc>>,
    /// The forward's weight in panels for the panel GEMM (`pack_panel`), every conv group,
    /// packed on first use ([`Plan::panels`]): the split schedule packs each task's block
    /// itself instead, so a call that only splits never packs the whole weight.
    panels: OnceLock<Vec<Buf<T::Acc>>>,
    /// Columns per pixel of one conv group: `K * C/Gc`.
    pub(super) row_len: usize,
    /// Output rows per tile.
    pub(super) rows: usize,
}

impl<'p, 'a, T: Element> Plan<'p, 'a, T> {
    pub(super) fn new(
        g: &'p Geometry,
        ops: &'p Operands<'a, T>,
        isa: Isa,
        transposed: bool,
    ) -> Result<Self> {
        let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
        let row_len = kk * cg;
        let k: Kernels<T::Acc> = kernels_for(isa)?;
        let wp = if !transposed && k.panel_gemm.is_some() {
            Vec::new() // the forward reads panels instead, packed when asked for
        } else {
            (0..g.groups)
                .map(|q| {
                    if transposed {
                        pack_weight_transposed(g, &ops.weight, q)
                    } else {
                        pack_weight(g, &ops.weight, q)
                    }
                })
                .collect()
        };
        let rows = rows_per_tile(g.wo, row_len.max(coutg), std::mem::size_of::<T::Acc>());
        Ok(Plan {
            g,
            ops,
            k,
            wp,
            panels: OnceLock::new(),
            row_len,
            rows,
        })
    }

    /// The weight of every conv group in panels (see [`pack_panel`]), packed once per call on
    /// first use, panels in parallel.
    pub(super) fn panels(&self) -> &[Buf<T::Acc>] {
        use kernels::panel_gemm::NR;
        self.panels.get_or_init(|| {
            let (g, coutg) = (self.g, self.g.cout_per_group());
            (0..g.groups)
                .map(|q| {
                    let mut panels = take(coutg.div_ceil(NR) * NR * self.row_len, T::Acc::zero()); // all written
                    for_each_chunk(&mut panels, NR * self.row_len, |p, panel, _| {
                        let o = p * NR;
                        pack_panel(g, &self.ops.weight, q * coutg + o, NR.min(coutg - o), panel)
                    });
                    panels
                })
                .collect()
        })
    }

    /// Image `n` in the engine's channels-last layout in `buf` (see [`Plan::images_nhwc`]).
    pub(super) fn image_nhwc(&self, n: usize, buf: &mut Buf<T::Acc>) {
        self.images_nhwc(n, std::slice::from_mut(buf));
    }

    /// Images `n0, n0 + 1, ...`, one per buffer of `bufs`, in the engine's channels-last layout,
    /// blocked by deformable group: `[G, H*W + 1, C/G]`, where block `dg` holds the channels of
    /// deformable group `dg` for every pixel plus one zero pixel at `H*W`. A descriptor reads
    /// only its group's channels, so neighbouring pixels' runs sit next to each other (edvr, 8
    /// channels per group: 32 bytes apart instead of 256) and an image row of one group fits a
    /// few cache lines. With one deformable group this is plain `[H*W + 1, C]`.
    ///
    /// One task per (group, band of image rows) of every image: read each channel's band
    /// (contiguous in NCHW) and write it strided into the band's `[rows*W, C/G]` block. A band
    /// holds at least [`NHWC_BAND_PIXELS`] pixels unless that would leave fewer than
    /// [`NHWC_TASKS`] tasks: one row of a small image (ResNet c5: 16 or 32
    /// pixels) made each task read 128-byte pieces of C pages, too short for the prefetcher
    /// (stride2_c5's 2 MB input took 1.7 ms).
    pub(super) fn images_nhwc(&self, n0: usize, bufs: &mut [Buf<T::Acc>]) {
        let g = self.g;
        let (hw, cdg) = (g.h * g.w, g.c_per_deformable_group());
        // Bands of at least NHWC_BAND_PIXELS, but enough of them to keep NHWC_TASKS tasks.
        let bands_per_image = NHWC_TASKS.div_ceil((bufs.len() * g.deformable_groups).max(1));
        let band = NHWC_BAND_PIXELS
            .div_ceil(g.w.max(1))
            .min(g.h.div_ceil(bands_per_image))
            .max(1);
        let mut rows = Vec::with_capacity(bufs.len() * g.h.div_ceil(band) * g.deformable_groups);
        for (i, buf) in bufs.iter_mut().enumerate() {
            for (dg, block) in buf[..self.image_len()]
                .chunks_mut((hw + 1) * cdg)
                .enumerate()
            {
                let (pixels, zero_pixel) = block.split_at_mut(hw * cdg);
                zero_pixel.iter_mut().for_each(|v| *v = T::Acc::zero());
                rows.extend(
                    pixels
                        .chunks_mut(band * g.w * cdg)
                        .enumerate()
                        .map(|(b, dst)| (n0 + i, dg, b * band, dst)),
                );
            }
        }
        for_each_item(rows, |(n, dg, y, dst), _| {
            let image = self.ops.input.index_axis(Axis(0), n); // [C, H, W]
            match image.to_slice() {
                Some(image) => {
                    let first = (dg * cdg * g.h + y) * g.w;
                    transpose_rows(&image[first..], hw, dst.len() / cdg.max(1), cdg, dst);
                }
                None => {
                    // Any other strides (a channels-last tensor, a view): element by element.
                    let ys = y..y + dst.len() / (cdg * g.w).max(1);
                    let block =
                        self.ops
                            .input
                            .slice(ndarray::s![n, dg * cdg..(dg + 1) * cdg, ys, ..]);
                    for ((k, yy, x), v) in block.indexed_iter() {
                        dst[(yy * g.w + x) * cdg + k] = v.to_acc();
                    }
                }
            }
        });
    }

    /// Elements of one image in the channels-last layout: `(H*W + 1) * C`.
    pub(super) fn image_len(&self) -> usize {
        (self.g.h * self.g.w + 1) * self.g.c
    }

    /// Where channel `ch` of pixel `(y, x)` lives in the channels-last layout.
    pub(super) fn nhwc_index(&self, y: usize, x: usize, ch: usize) -> usize {
        let g = self.g;
        let cdg = g.c_per_deformable_group();
        let dg = ch / cdg;
        (dg * (g.h * g.w + 1) + y * g.w + x) * cdg + ch - dg * cdg
    }

    /// The row job of deformable group `dg`'s channel range `chans` (descriptors `s`, `stride`
    /// columns-tile elements between pixels), and the offset of the group's block in the
    /// channels-last layout: the kernels address `block[idx * C/G + lo ..]`.
    pub(super) fn job<'s>(
        &self,
        s: &'s RowSamples<T::Acc>,
        dg: usize,
        chans: &std::ops::Range<usize>,
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
    pub(super) fn segments(
        &self,
        q: usize,
    ) -> impl Iterator<Item = (usize, usize, std::ops::Range<usize>)> {
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
        // Row `[n, ch, oh, ..]` by three index steps (a `slice` with `s![]` cost 4% of npu_doc's
        // forward: its rows are 32 pixels).
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
            gradients: gate.is_some(),
        };
        (self.k.sample_row)(&args, s);
    }

    /// Builds the columns tile of conv group `q`, rows `[oh0, oh0 + nrows)` of image `n`:
    /// `cols[p, tap*Cg + c] = m * bilinear(X[c], py, px)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn columns(
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

/// `Wp_q[o*K*Cg + tap*Cg + c] = Wt[q*Coutg + o, c, i, j]`: each output channel's `[Cg, K]` block
/// reordered to `[K, Cg]` (small, in cache), output channels in parallel. No transpose: the GEMMs
/// take this `[Coutg, K*Cg]` matrix through strides.
pub(super) fn pack_weight<T: Element>(
    g: &Geometry,
    weight: &ArrayView4<'_, T>,
    q: usize,
) -> Buf<T::Acc> {
    let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
    let row_len = kk * cg;
    let mut rows = take(coutg * row_len, T::Acc::zero()); // every element is written below
    for_each_chunk(&mut rows, row_len, |o, row, _| {
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

/// One panel of the forward's layout for the panel GEMM (`kernels::panel_gemm`): output channels
/// `o0 .. o0 + lanes` (`lanes <= NR`, one conv group), `panel[(tap*Cg + c) * NR + l] = Wt[o0 + l,
/// c, i, j]`, zero for `l >= lanes`. It reads its `NR` weight rows side by side and writes each
/// `NR`-run (one cache line of f32) once.
pub(super) fn pack_panel<T: Element>(
    g: &Geometry,
    weight: &ArrayView4<'_, T>,
    o0: usize,
    lanes: usize,
    panel: &mut [T::Acc],
) {
    use kernels::panel_gemm::NR;
    let (cg, kk) = (g.c_per_group(), g.taps());
    let ws: Vec<_> = (0..lanes)
        .map(|l| weight.index_axis(Axis(0), o0 + l)) // [Cg, kh, kw]
        .collect();
    let srcs: Option<Vec<&[T]>> = ws.iter().map(|w| w.to_slice()).collect();
    match srcs {
        Some(srcs) => {
            for c in 0..cg {
                for tap in 0..kk {
                    let run = &mut panel[(tap * cg + c) * NR..][..NR];
                    for (v, src) in run.iter_mut().zip(&srcs) {
                        *v = src[c * kk + tap].to_acc();
                    }
                    run[lanes..].fill(T::Acc::zero());
                }
            }
        }
        None => {
            panel[..NR * kk * cg].fill(T::Acc::zero());
            for (l, w) in ws.iter().enumerate() {
                for ((c, i, j), v) in w.indexed_iter() {
                    panel[((i * g.kw + j) * cg + c) * NR + l] = v.to_acc();
                }
            }
        }
    }
}

/// The backward's layout, `Wp_q^T[(tap*Cg + c)*Coutg + o] = Wt[q*Coutg + o, c, i, j]`, in one
/// pass (before: the forward's packing, then a transpose). Tasks take blocks of
/// [`REORDER_IN`] input channels: each writes its `K x REORDER_IN` rows front to back and reads
/// one short run per weight row, through an L1 tile of [`REORDER_OUT`] output channels. (Tasks by
/// output channels instead wrote one cache line per 2 KB row, a new page every other line: ResNet
/// c5's reorders ran at 1 GB/s on TLB misses.)
pub(super) fn pack_weight_transposed<T: Element>(
    g: &Geometry,
    weight: &ArrayView4<'_, T>,
    q: usize,
) -> Buf<T::Acc> {
    let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
    let zero = T::Acc::zero();
    let mut out = take(kk * cg * coutg, zero); // every element is written below
    let mut wpt =
        ArrayViewMut3::from_shape((kk, cg, coutg), &mut out[..]).expect("K * Cg * Coutg elements");
    let w_q = weight.slice(ndarray::s![q * coutg..(q + 1) * coutg, .., .., ..]);
    let w_q = w_q
        .to_shape((coutg, cg, kk))
        .expect("a [Coutg, Cg, kh, kw] view");
    let blocks: Vec<_> = wpt
        .axis_chunks_iter_mut(Axis(1), REORDER_IN)
        .enumerate()
        .collect();
    for_each_item(blocks, |(bi, mut dst), _| {
        let (c0, ncb) = (bi * REORDER_IN, dst.shape()[1]);
        // rows[tap*ncb + cc] = Wp^T row (tap*Cg + c0 + cc), Coutg contiguous values.
        let mut rows: Vec<&mut [T::Acc]> = dst
            .lanes_mut(Axis(2))
            .into_iter()
            .map(|r| r.into_slice().expect("rows of a standard-layout buffer"))
            .collect();
        // tile[cc*K + tap][k] = Wt[o0 + k, c0 + cc, tap]
        let mut tile = vec![[zero; REORDER_OUT]; ncb * kk];
        for o0 in (0..coutg).step_by(REORDER_OUT) {
            let nb = REORDER_OUT.min(coutg - o0);
            for k in 0..nb {
                let run = w_q.slice(ndarray::s![o0 + k, c0..c0 + ncb, ..]);
                match run.as_slice() {
                    Some(run) => tile
                        .iter_mut()
                        .zip(run)
                        .for_each(|(t, v)| t[k] = v.to_acc()),
                    None => tile
                        .iter_mut()
                        .zip(run.iter())
                        .for_each(|(t, v)| t[k] = v.to_acc()),
                }
            }
            for cc in 0..ncb {
                for tap in 0..kk {
                    let t = &tile[cc * kk + tap][..nb];
                    copy_run(&mut rows[tap * ncb + cc][o0..o0 + nb], t);
                }
            }
        }
    });
    out
}

/// `dst[x*k + r] = src[r*row_stride + x]` for `r < k`, `x < w`: `k` rows of `w` elements,
/// `row_stride` apart, to `w` pixels of `k` channels. In blocks of 8 rows, read in order and
/// written 8 at a time per pixel, the slices taken once per block (each channel row of a small
/// image is short: ResNet c5 has 32 or 16 pixels per row, where per-block views and vectors
/// cost more than the copy).
fn transpose_rows<T: Element>(
    src: &[T],
    row_stride: usize,
    w: usize,
    k: usize,
    dst: &mut [T::Acc],
) {
    const CB: usize = 8;
    let dst = &mut dst[..w * k];
    let mut r0 = 0;
    while r0 + CB <= k {
        let rows: [&[T]; CB] = std::array::from_fn(|r| &src[(r0 + r) * row_stride..][..w]);
        for (x, px) in dst.chunks_exact_mut(k).enumerate() {
            let px = &mut px[r0..r0 + CB];
            for (v, row) in px.iter_mut().zip(&rows) {
                *v = row[x].to_acc();
            }
        }
        r0 += CB;
    }
    for r in r0..k {
        let row = &src[r * row_stride..][..w];
        for (x, v) in row.iter().enumerate() {
            dst[x * k + r] = v.to_acc();
        }
    }
}

/// `dst.copy_from_slice(src)` for the weight reorders' runs of at most [`REORDER_OUT`]: a full
/// run is one fixed-size copy (two vector moves) instead of a `memmove` call per 64 bytes.
fn copy_run<A: Copy>(dst: &mut [A], src: &[A]) {
    match (
        <&mut [A; REORDER_OUT]>::try_from(&mut *dst),
        <&[A; REORDER_OUT]>::try_from(src),
    ) {
        (Ok(d), Ok(s)) => *d = *s,
        _ => dst.copy_from_slice(src),
    }
}

/// Splits `v` along axis 1 into consecutive pieces of the given lengths.
pub(super) fn split_rows<'a, T>(
    v: Option<ArrayViewMut3<'a, T>>,
    lens: &[usize],
) -> Vec<Option<ArrayViewMut3<'a, T>>> {
    split_axis(v, Axis(1), lens)
}

/// Splits `v` along `axis` into consecutive pieces of the given lengths (all `None` for `None`).
pub(super) fn split_axis<'a, T>(
    v: Option<ArrayViewMut3<'a, T>>,
    axis: Axis,
    lens: &[usize],
) -> Vec<Option<ArrayViewMut3<'a, T>>> {
    let Some(mut rest) = v else {
        return lens.iter().map(|_| None).collect();
    };
    let mut out = Vec::with_capacity(lens.len());
    for &len in lens {
        let (a, b) = rest.split_at(axis, len);
        out.push(Some(a));
        rest = b;
    }
    out
}
