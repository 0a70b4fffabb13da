//! The backward: per tile, `dcols = dY * Wp^T`, then one pass that rebuilds the columns, makes
//! the offset/mask dot products and scatters the input gradient, then `dW^T += dY^T cols`, in fixed
//! lanes reduced in order; see the engine's documentation.
//!
//! Two schedules, chosen by the shape alone: [`tiles`] (tiles of output rows dealt to fixed
//! lanes) and [`whole_images`] (images that are one tile each: one weight-sized GEMM per wave).
//! Both end in [`passes`] (the descriptor pass, the weight GEMM, the lane reductions) and write
//! the input gradient through [`lazy_dx`].

mod lazy_dx;
mod passes;
mod tiles;
mod whole_images;

use super::blocking::{backward_rows_per_tile, LANES};
use super::kernels::Isa;
use super::plan::{Pass, Plan};
use crate::element::Element;
use crate::error::Result;
use crate::operands::{GradOutputs, Operands};
use crate::params::{Geometry, GradGate};
use ndarray::{ArrayView4, ArrayViewMut3};

/// Tasks of each weight-sized GEMM of the whole-image schedule (`dW^T` by blocks of output
/// channels, `dcol` by blocks of `K*C` columns): each packs the wave's operand that it shares
/// with the others again, so few and large.
pub(super) const WEIGHT_BLOCKS: usize = 4;

/// This lane's rows of the offset and mask gradients of one image (`[G*K, rows, Wo]` each).
pub(super) struct LaneGrads<'a, T> {
    oy: Option<ArrayViewMut3<'a, T>>,
    ox: Option<ArrayViewMut3<'a, T>>,
    m: Option<ArrayViewMut3<'a, T>>,
}

/// The next image's view of an optional per-image iterator.
pub(super) fn next_view<'a, T>(
    it: &mut Option<ndarray::iter::AxisIterMut<'a, T, ndarray::Ix3>>,
) -> Option<ArrayViewMut3<'a, T>> {
    it.as_mut().map(|i| i.next().expect("one view per image"))
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
    super::threads::serial_if_small(super::forward::work(g), || {
        backward_planned(g, ops, dy, grads, gate, isa)
    })
}

fn backward_planned<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    dy: ArrayView4<'_, T>,
    grads: GradOutputs<'_, T>,
    gate: GradGate,
    isa: Isa,
) -> Result<()> {
    let mut plan = Plan::new(g, ops, isa, Pass::Backward)?;
    if g.ho.div_ceil(plan.rows) == 1 && g.groups == 1 {
        whole_images::whole_images(&plan, dy, grads, gate);
        return Ok(());
    }
    plan.rows = backward_rows_per_tile(
        g.wo,
        plan.row_len.max(g.cout_per_group()),
        std::mem::size_of::<T::Acc>(),
    );
    let tiles = g.ho.div_ceil(plan.rows);
    if g.n == 1 && tiles < LANES {
        // One image of fewer tiles than lanes: some lanes would sit idle. Shorter tiles give
        // every lane rows. Decided by the shape alone.
        plan.rows = g.ho.div_ceil(LANES).max(1);
    }
    tiles::by_tiles(&plan, dy, grads, gate);
    Ok(())
}
