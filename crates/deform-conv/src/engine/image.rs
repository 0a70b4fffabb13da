//! The engine's channels-last image layout: each input image copied once per call, blocked by
//! deformable group, with one zero pixel per group for samples outside the image.

use super::blocking::{NHWC_BAND_PIXELS, NHWC_TASKS};
use super::pack::transpose_rows;
use super::plan::Plan;
use super::scratch::Buf;
use super::threads::for_each_item;
use crate::element::Element;
use ndarray::Axis;
use num_traits::Zero;

impl<T: Element> Plan<'_, '_, T> {
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
    /// [`NHWC_TASKS`] tasks: a band of one short row would read pieces of each channel plane too
    /// short for the hardware prefetcher.
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
                    let px = dst.len() / cdg.max(1);
                    match (self.k.transpose_rows, T::as_acc(&image[first..])) {
                        (Some(kernel), Some(src)) => kernel(src, hw, px, cdg, dst),
                        _ => transpose_rows(&image[first..], hw, px, cdg, dst),
                    }
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
}
