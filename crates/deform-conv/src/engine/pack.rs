//! The weight, packed once per call into the layouts the GEMMs read.

use super::kernels;
use super::scratch::{take, Buf};
use super::threads::for_each_chunk;
use crate::element::Element;
use crate::params::Geometry;
use ndarray::{ArrayView4, Axis};
use num_traits::Zero;

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

/// `dst[x*k + r] = src[r*row_stride + x]` for `r < k`, `x < w`: `k` rows of `w` elements,
/// `row_stride` apart, to `w` pixels of `k` channels. In blocks of 8 rows, read in order and
/// written 8 at a time per pixel, the slices taken once per block (each channel row of a small
/// image is short: ResNet c5 has 32 or 16 pixels per row, where per-block views and vectors
/// cost more than the copy).
pub(super) fn transpose_rows<T: Element>(
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
