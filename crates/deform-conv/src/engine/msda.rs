//! Multi-scale deformable attention on the sampling core ([`super::points`]): the levels are
//! the planes, rows are blocks of queries, heads are the groups, `L*P` points per head (SPEC §7).

use super::kernels::{Isa, Kernels};
use super::points::{self, describe_runs, pieces, Interleave, PointOp, PointRuns, Shape};
use crate::alloc::Written;
use crate::conventions::msda::{MsdaGeometry, MsdaGradViews, MsdaGradients, MsdaOperands};
use crate::element::{Element, Real};
use crate::error::Result;
use ndarray::{Array3, ArrayView3, ArrayViewMut4, ArrayViewMut5, Axis, Ix3, Ix4, Ix5, Ix6};
use num_traits::{One, Zero};
use std::mem::MaybeUninit;
use std::ops::Range;

/// Queries per row of the core: a constant, so the split (and every bit) is the shape's alone.
const QUERIES: usize = 64;

struct Op<'o, 'a, T: Element> {
    g: &'o MsdaGeometry,
    ops: &'o MsdaOperands<'a, T>,
    shape: Shape,
    /// Per point of a head: `H` and `W` of its level (in the accumulation type), and 0 (no
    /// tap); per query: -1/2.
    scales: [Vec<T::Acc>; 2],
    zeros: Vec<T::Acc>,
    halves: Vec<T::Acc>,
}

impl<'o, 'a, T: Element> Op<'o, 'a, T> {
    fn new(g: &'o MsdaGeometry, ops: &'o MsdaOperands<'a, T>) -> Self {
        let shape = Shape {
            n: g.n,
            planes: g.levels.iter().map(|&(h, w, _)| (h, w)).collect(),
            c: g.c(),
            d: g.d,
            points: g.levels.len() * g.p,
            rows: g.q.div_ceil(QUERIES),
            row_len: g.q.min(QUERIES),
            // Every head of a query at once (two at a time measured 1.05x slower).
            block: g.m,
            // Queries sample anywhere in several levels: no row leads.
            lead: None,
        };
        // `H` (then `W`) of each point's level, the points of a head in order.
        let per_point = |hw: usize| {
            g.levels
                .iter()
                .flat_map(|&(h, w, _)| std::iter::repeat_n(T::Acc::of_i64([h, w][hw] as i64), g.p))
                .collect()
        };
        let scales = [per_point(0), per_point(1)];
        let half = T::Acc::one() / (T::Acc::one() + T::Acc::one());
        Op {
            g,
            ops,
            shape,
            scales,
            zeros: vec![T::Acc::zero(); g.levels.len() * g.p],
            halves: vec![-half; QUERIES],
        }
    }
}

impl<T: Element> PointOp<T> for Op<'_, '_, T> {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn plane_of(&self, k: usize) -> usize {
        k / self.g.p
    }

    fn row(&self, r: usize) -> Range<usize> {
        r * QUERIES..((r + 1) * QUERIES).min(self.g.q)
    }

    fn image(&self, n: usize) -> Option<&[T]> {
        self.ops.value.index_axis_move(Axis(0), n).to_slice()
    }

    fn copy_pixels(&self, n: usize, s0: usize, dst: &mut [T::Acc]) {
        let c = self.g.c();
        let image = self.ops.value.index_axis(Axis(0), n);
        if let Some(src) = image.as_slice() {
            // A contiguous image: one run.
            for (d, x) in dst.iter_mut().zip(&src[s0 * c..]) {
                *d = x.to_acc();
            }
            return;
        }
        for (i, px) in dst.chunks_exact_mut(c).enumerate() {
            let v = image.slice(ndarray::s![s0 + i, .., ..]);
            for (d, x) in px.iter_mut().zip(v.iter()) {
                *d = x.to_acc();
            }
        }
    }

    fn with_runs<R>(
        &self,
        [n, r, m]: [usize; 3],
        len: usize,
        f: impl FnOnce(&PointRuns<'_, T, T::Acc>) -> R,
    ) -> Option<R> {
        let points = self.g.levels.len() * self.g.p;
        let q = self.row(r);
        let len = len.min(q.len());
        // Contiguous tensors: a query's points of head `m` are one run, queries a fixed step
        // apart; `x = (0 + loc_x) * W - 1/2` is `loc_x * W - 1/2`, bit for bit.
        let loc_n = self.ops.loc.index_axis(Axis(0), n);
        let attn_n = self.ops.attn.index_axis(Axis(0), n);
        let (lv, av) = (loc_n.as_slice()?, attn_n.as_slice()?);
        let step = self.g.m * points;
        let first = (q.start * self.g.m + m) * points;
        Some(f(&PointRuns {
            pairs: lv,
            pair0: 2 * first,
            pair_step: 2 * step,
            weights: av,
            weight0: first,
            weight_step: step,
            points,
            len,
            tap: [&self.zeros, &self.zeros],
            scale: [&self.scales[0], &self.scales[1]],
            base: [&self.halves[..len], &self.halves[..len]],
        }))
    }

    fn describe(
        &self,
        k: &Kernels<T::Acc>,
        [n, r, m]: [usize; 3],
        len: usize,
        y: &mut [T::Acc],
        x: &mut [T::Acc],
        a: &mut [T::Acc],
    ) {
        let (levels, p) = (self.g.levels.len(), self.g.p);
        let points = levels * p;
        let half = T::Acc::one() / (T::Acc::one() + T::Acc::one());
        let q = self.row(r);
        let len = len.min(q.len());
        if let Some(()) = self.with_runs([n, r, m], len, |runs| describe_runs(k, runs, y, x, a)) {
            return;
        }
        let (loc_n, attn_n) = (
            self.ops.loc.index_axis(Axis(0), n),
            self.ops.attn.index_axis(Axis(0), n),
        );
        // Any other strides: each point's locations and weights as strided views.
        for j in 0..points {
            let (l, pi) = (j / p, j % p);
            let (hf, wf) = (self.scales[0][j], self.scales[1][j]);
            let loc = loc_n.slice(ndarray::s![q.clone(), m, l, pi, ..]);
            let attn = attn_n.slice(ndarray::s![q.clone(), m, l, pi]);
            let cols = loc.column(0).into_iter().zip(loc.column(1)).zip(attn);
            for (t, ((lx, ly), av)) in cols.enumerate().take(len) {
                x[j * len + t] = lx.to_acc() * wf - half;
                y[j * len + t] = ly.to_acc() * hf - half;
                a[j * len + t] = av.to_acc();
            }
        }
    }
}

/// `[N, Lq, ..]` as rows of `QUERIES` queries per image.
fn query_rows<'a, T, D: ndarray::RemoveAxis>(
    v: ndarray::ArrayViewMut<'a, T, D>,
) -> Vec<Vec<ndarray::ArrayViewMut<'a, T, D::Smaller>>> {
    pieces(v, Axis(0), 1)
        .into_iter()
        .map(|img| pieces(img.index_axis_move(Axis(0), 0), Axis(0), QUERIES))
        .collect()
}

/// The forward: `[N, Lq, M*D]`.
pub(crate) fn forward<T: Element>(
    g: &MsdaGeometry,
    ops: &MsdaOperands<'_, T>,
    isa: Isa,
) -> Result<Array3<T>> {
    let mut out = Written::new("output", Ix3(g.n, g.q, g.c()))?;
    points::forward(&Op::new(g, ops), isa, query_rows(out.view_mut()))?;
    // SAFETY: the rows cover the output, and `points::forward` wrote every element of every row.
    Ok(unsafe { out.done() })
}

/// The backward: the gradients of value, sampling locations and attention weights.
pub(crate) fn backward<T: Element>(
    g: &MsdaGeometry,
    ops: &MsdaOperands<'_, T>,
    grad_output: ArrayView3<'_, T>,
    isa: Isa,
) -> Result<MsdaGradients<T>> {
    let l = g.levels.len();
    let mut gv = Written::new("grad_value", Ix4(g.n, g.s, g.m, g.d))?;
    let mut gl = Written::new("grad_sampling_locations", Ix6(g.n, g.q, g.m, l, g.p, 2))?;
    let mut ga = Written::new("grad_attention_weights", Ix5(g.n, g.q, g.m, l, g.p))?;
    let reused = gl.reused() && ga.reused();
    let views = MsdaGradViews {
        value: gv.view_mut(),
        loc: gl.view_mut(),
        attn: ga.view_mut(),
    };
    write_backward(g, ops, grad_output, (views, reused), isa)?;
    // SAFETY: `write_backward` wrote every element of the three views: the input gradient's
    // every pixel of every level, and every point's location and weight gradients of every query.
    Ok(unsafe {
        MsdaGradients {
            value: gv.done(),
            sampling_locations: gl.done(),
            attention_weights: ga.done(),
        }
    })
}

/// Rows of `[len, M, L, P, 2]` locations and `[len, M, L, P]` weights gradients.
type GradRow<'a, T> = (
    ArrayViewMut5<'a, MaybeUninit<T>>,
    ArrayViewMut4<'a, MaybeUninit<T>>,
);

fn write_backward<T: Element>(
    g: &MsdaGeometry,
    ops: &MsdaOperands<'_, T>,
    grad_output: ArrayView3<'_, T>,
    (grads, reused): (MsdaGradViews<'_, MaybeUninit<T>>, bool),
    isa: Isa,
) -> Result<()> {
    let MsdaGradViews {
        value: gv,
        loc,
        attn,
    } = grads;
    let big = points::streamed::<T>(loc.len() + attn.len(), reused);
    let grad_rows: Vec<Vec<GradRow<'_, T>>> = query_rows(loc)
        .into_iter()
        .zip(query_rows(attn))
        .map(|(l, a)| l.into_iter().zip(a).collect())
        .collect();
    let op = Op::new(g, ops);
    let c = g.c();
    let table = super::plan::kernels_for::<T::Acc>(isa)?;
    // Each location's (x, y) factors, in the gradient's order.
    let sizes: Vec<T::Acc> = op.scales[1]
        .iter()
        .zip(&op.scales[0])
        .flat_map(|(&w, &h)| [w, h])
        .collect();
    points::backward(
        &op,
        isa,
        grad_rows,
        points::Dout {
            held: |n, r: usize| {
                let q0: usize = r * QUERIES;
                let rows = grad_output.slice_move(ndarray::s![n, q0..(q0 + QUERIES).min(g.q), ..]);
                T::as_acc(rows.to_slice()?)
            },
            copy: |n, r: usize, dst: &mut [T::Acc]| {
                let q0: usize = r * QUERIES;
                let rows = grad_output.slice(ndarray::s![n, q0..(q0 + QUERIES).min(g.q), ..]);
                match rows.as_slice() {
                    Some(src) => dst.iter_mut().zip(src).for_each(|(d, v)| *d = v.to_acc()),
                    None => dst.iter_mut().zip(&rows).for_each(|(d, v)| *d = v.to_acc()),
                }
            },
        },
        |(loc, attn), pg, stage| {
            let (lp, len) = (g.levels.len() * g.p, pg.len);
            let [hs, ws] = &op.scales;
            // Contiguous rows (the usual case): a query's points of head `g` are one run.
            if let (Some(lv), Some(av)) = (loc.as_slice_mut(), attn.as_slice_mut()) {
                let rows = |src, factors, stride| Interleave {
                    src,
                    points: lp,
                    len,
                    factors,
                    stride,
                };
                let (xy, m) = ([pg.x, pg.y], [pg.m]);
                let at = pg.g * lp;
                let jobs = [
                    (0, 2 * at, rows(&xy, Some(&sizes), 2 * g.m * lp)),
                    (1, at, rows(&m, None, g.m * lp)),
                ];
                let group = ((pg.g, g.m), len);
                points::write_group::<T, 2>((table, big), stage, [lv, av], group, None, &jobs);
                return;
            }
            for k in 0..lp {
                let (l, p) = (k / g.p, k % g.p);
                let (hf, wf) = (hs[k], ws[k]);
                let at = k * len..(k + 1) * len;
                for (xy, src, size) in [(0, &pg.x[at.clone()], wf), (1, &pg.y[at.clone()], hf)] {
                    let col = loc.slice_mut(ndarray::s![.., pg.g, l, p, xy]);
                    for (o, v) in col.into_iter().zip(src) {
                        o.write(T::from_acc(*v * size));
                    }
                }
                let col = attn.slice_mut(ndarray::s![.., pg.g, l, p]);
                for (o, v) in col.into_iter().zip(&pg.m[at]) {
                    o.write(T::from_acc(*v));
                }
            }
        },
        points::image_rows("grad_value", gv, g.s, c)?,
    )
}
