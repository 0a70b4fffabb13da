//! The plan of one call, as plain data: the kernels of the chosen instruction set, the weight
//! packed for the pass, the tile height. The channels-last image (`image`), the columns
//! (`columns`) and the packers (`pack`) are its methods and helpers, one file each. Shared by
//! [`super::forward`] and [`super::backward`].

use super::blocking::rows_per_tile;
use super::gemm::Mat;
use super::kernels::{self, Isa, Kernels};
use super::pack::{pack_panel, pack_weight};
use super::scratch::{take, Buf};
use super::threads::for_each_chunk;
use crate::element::{Element, Real};
use crate::error::{DeformError, Result};
use crate::operands::Operands;
use crate::params::Geometry;
use ndarray::{ArrayViewMut3, Axis};
use num_traits::Zero;
use std::sync::OnceLock;

/// Which pass a plan serves: the forward with a panel GEMM packs no [`Plan::wp`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Pass {
    Forward,
    Backward,
}

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

pub(super) fn kernels_for<A: Real>(isa: Isa) -> Result<&'static Kernels<A>> {
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
    pub(super) k: &'static Kernels<T::Acc>,
    /// The packed weight of each conv group, `wp[q][o*K*Cg + tap*Cg + c] = Wt[q*Coutg + o, c, i,
    /// j]`, read by the `gemm` crate through strides: the forward's `Wp * cols` (empty when the
    /// kernels have a panel GEMM: the forward then reads [`Plan::panels`]) and the backward's
    /// `dY * Wp^T` ([`Plan::weight_t`]), whose `Wp^T` the crate reads in columns without packing
    /// it (our transpose of it, `[K*Cg, Coutg]`, the crate packed again: BENCHMARKS.md).
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
        pass: Pass,
    ) -> Result<Self> {
        let (cg, coutg, kk) = (g.c_per_group(), g.cout_per_group(), g.taps());
        let row_len = kk * cg;
        let k = kernels_for::<T::Acc>(isa)?;
        let wp = if pass == Pass::Forward && k.panel_gemm.is_some() {
            Vec::new() // the forward reads panels instead, packed when asked for
        } else {
            (0..g.groups)
                .map(|q| pack_weight(g, &ops.weight, q))
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

    /// Columns `j0 .. j0 + cols` of conv group `q`'s `Wp^T` (`[Coutg, K*Cg]` as a matrix).
    pub(super) fn weight_t(&self, q: usize, j0: usize, cols: usize) -> Mat<'_, T::Acc> {
        Mat {
            data: &self.wp[q][j0..],
            rows: self.g.cout_per_group(),
            cols,
            rs: self.row_len,
            cs: 1,
        }
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
