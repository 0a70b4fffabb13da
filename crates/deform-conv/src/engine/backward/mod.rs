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
use super::kernels::{prefetch, Isa};
use super::plan::{split_rows, Pass, Plan};
use crate::element::Element;
use crate::error::Result;
use crate::operands::{GradOutputs, Operands};
use crate::params::{Geometry, GradGate};
use ndarray::{ArrayView2, ArrayView4, ArrayViewMut1, ArrayViewMut3, ArrayViewMut4, Axis};

/// Tasks of each weight-sized GEMM of the whole-image schedule (`dW^T` by blocks of output
/// channels, `dcol` by blocks of `K*C` columns): each packs the wave's operand that it shares
/// with the others again, so few and large.
pub(super) const WEIGHT_BLOCKS: usize = 4;

/// `dst[o * len ..][..len] = src(o)` in the accumulation type, in logical order, for each run `o`
/// of `dst` (a tile's rows of one channel of `dY`, or one channel of each image of a wave): a
/// block copy where `src(o)` is contiguous, with the run two ahead asked for meanwhile (each is
/// a short run of its own, too short for the hardware prefetchers to follow).
pub(super) fn channels_to_acc<'a, T: Element>(
    src: impl Fn(usize) -> ArrayView2<'a, T>,
    len: usize,
    dst: &mut [T::Acc],
) {
    let channels = dst.len() / len.max(1);
    for (o, d) in dst.chunks_exact_mut(len.max(1)).enumerate() {
        if o + 2 < channels {
            if let Some(ahead) = src(o + 2).to_slice() {
                prefetch(ahead);
            }
        }
        let s = src(o);
        match s.as_slice().and_then(T::as_acc) {
            Some(s) => d.copy_from_slice(s),
            None => d
                .iter_mut()
                .zip(s.iter())
                .for_each(|(d, v)| *d = v.to_acc()),
        }
    }
}

/// This lane's rows of the offset and mask gradients of one image (`[G*K, rows, Wo]` each).
pub(super) struct LaneGrads<'a, T> {
    oy: Option<ArrayViewMut3<'a, T>>,
    ox: Option<ArrayViewMut3<'a, T>>,
    m: Option<ArrayViewMut3<'a, T>>,
}

type PerImage<'a, T> = Option<ndarray::iter::AxisIterMut<'a, T, ndarray::Ix3>>;

/// The per-image gradients, handed out image after image: the input's (`[C, H, W]`) and the
/// offset and mask ones (`[G*K, Ho, Wo]`), and which gradients the call wants.
pub(super) struct Images<'a, T> {
    input: PerImage<'a, T>,
    oy: PerImage<'a, T>,
    ox: PerImage<'a, T>,
    m: PerImage<'a, T>,
    pub(super) want_dx: bool,
    pub(super) want_dw: bool,
    pub(super) want_tap: bool,
}

impl<'a, T> Images<'a, T> {
    /// The next image's input gradient.
    pub(super) fn input(&mut self) -> Option<ArrayViewMut3<'a, T>> {
        next(&mut self.input)
    }

    /// The next image's offset and mask gradients, whole.
    pub(super) fn taps(&mut self) -> LaneGrads<'a, T> {
        LaneGrads {
            oy: next(&mut self.oy),
            ox: next(&mut self.ox),
            m: next(&mut self.m),
        }
    }

    /// The next image's offset and mask gradients, cut into consecutive ranges of rows.
    pub(super) fn taps_by_rows(&mut self, lens: &[usize]) -> Vec<LaneGrads<'a, T>> {
        let oy = split_rows(next(&mut self.oy), lens);
        let ox = split_rows(next(&mut self.ox), lens);
        let m = split_rows(next(&mut self.m), lens);
        oy.into_iter()
            .zip(ox)
            .zip(m)
            .map(|((oy, ox), m)| LaneGrads { oy, ox, m })
            .collect()
    }
}

fn next<'a, T>(it: &mut PerImage<'a, T>) -> Option<ArrayViewMut3<'a, T>> {
    it.as_mut().map(|i| i.next().expect("one view per image"))
}

/// The weight and bias gradients, summed once at the end of a call.
pub(super) struct Sums<'a, T> {
    pub(super) weight: Option<ArrayViewMut4<'a, T>>,
    pub(super) bias: Option<ArrayViewMut1<'a, T>>,
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
        let GradOutputs {
            mut input,
            mut offset_y,
            mut offset_x,
            mut mask,
            weight,
            bias,
        } = grads;
        let images = Images {
            want_dx: input.is_some(),
            want_dw: weight.is_some(),
            want_tap: offset_y.is_some() || offset_x.is_some() || mask.is_some(),
            input: input.as_mut().map(|v| v.axis_iter_mut(Axis(0))),
            oy: offset_y.as_mut().map(|v| v.axis_iter_mut(Axis(0))),
            ox: offset_x.as_mut().map(|v| v.axis_iter_mut(Axis(0))),
            m: mask.as_mut().map(|v| v.axis_iter_mut(Axis(0))),
        };
        let sums = Sums { weight, bias };
        schedule(g, ops, dy, (images, sums), gate, isa)
    })
}

/// Plans the call and runs the schedule its shape calls for.
fn schedule<T: Element>(
    g: &Geometry,
    ops: &Operands<'_, T>,
    dy: ArrayView4<'_, T>,
    (images, sums): (Images<'_, T>, Sums<'_, T>),
    gate: GradGate,
    isa: Isa,
) -> Result<()> {
    let mut plan = Plan::new(g, ops, isa, Pass::Backward)?;
    if g.ho.div_ceil(plan.rows) == 1 && g.groups == 1 {
        whole_images::whole_images(&plan, dy, images, sums, gate);
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
    tiles::by_tiles(&plan, dy, images, sums, gate);
    Ok(())
}
