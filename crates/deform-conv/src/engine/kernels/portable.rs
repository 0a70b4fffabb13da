//! The portable kernel bodies, written once over plain slices and generic over the accumulation
//! type, and their compilations: for the build's baseline (`scalar`) and, through
//! `#[target_feature]` wrappers, for AVX2+FMA. Every instruction set's table starts from these.

use super::super::sample::{sample_row_body, RowArgs, RowSamples};
use super::{
    panel_gemm, Isa, Kernels, PanelGemm, PanelGemmFn, PointKernels, PointsBack, PointsRow, RowJob,
};
use crate::element::Real;
use std::mem::MaybeUninit;

/// Partial sums per dot product: one 512-bit register of f32.
const LANE: usize = 16;

/// The panel GEMM of `isa` for accumulation type `A`: f32 only, and only where the CPU has
/// fused multiply-add, so that every instruction set of this CPU runs the same fma chain (the
/// portable body calls `f32::mul_add`, one instruction there). Elsewhere every instruction set
/// uses the `gemm` crate, again the same bits on each.
pub(super) fn panel_gemm_for<A: Real>(isa: Isa) -> Option<PanelGemmFn<A>> {
    if std::any::TypeId::of::<A>() != std::any::TypeId::of::<f32>() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if !is_x86_feature_detected!("fma") {
            return None;
        }
        Some(match isa {
            Isa::Scalar => scalar_panel_gemm::<A>,
            Isa::Avx2 | Isa::Avx512 => x86::avx2_panel_gemm::<A>,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        Some(scalar_panel_gemm::<A>)
    }
}

/// `dst[c] = w0*s0[c] + w1*s1[c] + w2*s2[c] + w3*s3[c]` over a fixed `N`: one pass per corner
/// over a register-sized accumulator, a shape the vectoriser turns into full-width vectors.
/// `FUSED` (the point core's samples): each next corner one multiply-add, `fma(w3, s3, fma(w2,
/// s2, fma(w1, s1, w0*s0)))`; otherwise (the columns' gather) a product and a sum each.
#[inline(always)]
fn gather_fixed<A: Real, const N: usize, const ADD: bool, const FUSED: bool>(
    dst: &mut [A],
    s: [&[A]; 4],
    w: [A; 4],
) {
    let s0: &[A; N] = (&s[0][..N]).try_into().expect("N elements");
    let mut acc = [A::zero(); N];
    for c in 0..N {
        acc[c] = w[0] * s0[c];
    }
    for j in 1..4 {
        let sj: &[A; N] = (&s[j][..N]).try_into().expect("N elements");
        for c in 0..N {
            acc[c] = corner::<A, FUSED>(acc[c], w[j], sj[c]);
        }
    }
    if ADD {
        dst[..N].iter_mut().zip(&acc).for_each(|(d, a)| *d += *a);
    } else {
        dst[..N].copy_from_slice(&acc);
    }
}

/// `acc + w * v`: one rounding when `FUSED`, two otherwise.
#[inline(always)]
fn corner<A: Real, const FUSED: bool>(acc: A, w: A, v: A) -> A {
    if FUSED {
        w.mul_add(v, acc)
    } else {
        acc + w * v
    }
}

#[inline(always)]
fn gather_run<A: Real, const ADD: bool, const FUSED: bool>(dst: &mut [A], s: [&[A]; 4], w: [A; 4]) {
    let n = dst.len();
    match n {
        4 => gather_fixed::<A, 4, ADD, FUSED>(dst, s, w),
        8 => gather_fixed::<A, 8, ADD, FUSED>(dst, s, w),
        16 => gather_fixed::<A, 16, ADD, FUSED>(dst, s, w),
        _ => {
            let mut c = 0;
            while c + LANE <= n {
                gather_fixed::<A, LANE, ADD, FUSED>(&mut dst[c..], s.map(|x| &x[c..]), w);
                c += LANE;
            }
            // The tail element by element, through the same body (the same operations).
            for k in c..n {
                gather_fixed::<A, 1, ADD, FUSED>(&mut dst[k..], s.map(|x| &x[k..]), w);
            }
        }
    }
}

/// The gather of `points` points per element, point `k`'s descriptors at `k*job.n ..` (the
/// columns' gather is one point, not `FUSED`; the point core's samples are `FUSED`).
#[inline(always)]
fn gather_points_body<A: Real, const FUSED: bool>(
    job: &RowJob<'_, A>,
    points: usize,
    xt: &[A],
    cols: &mut [A],
) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    for t in 0..n {
        let dst = &mut cols[t * job.stride..t * job.stride + len];
        for k in 0..points {
            let i = k * n + t;
            let b: [usize; 4] = std::array::from_fn(|j| s.idx[j][i] as usize * c + lo);
            let src = b.map(|b| &xt[b..b + len]);
            let w = std::array::from_fn(|j| s.w[j][i]);
            if k == 0 {
                gather_run::<A, false, FUSED>(dst, src, w);
            } else {
                gather_run::<A, true, FUSED>(dst, src, w);
            }
        }
    }
}

/// Points per group and channels per group the portable one-pass rows take (stack tiles).
const POINTS_MAX: usize = 16;
const RUN_MAX: usize = 64;

/// Which shapes the portable one-pass rows take (see [`super::PointKernels`]).
fn points_fits(d: usize, points: usize, _image: usize) -> bool {
    d <= RUN_MAX && (1..=POINTS_MAX).contains(&points)
}

/// One point's descriptors as `sample_row_body` forms them for the absolute position `(py,
/// px)`: the element offsets of its corners' runs inside the image (`None` outside its plane)
/// and their weights.
#[inline(always)]
fn point_corners<A: Real>(
    (py, px, m): (A, A, A),
    [h, w, first]: [usize; 3],
    (c, lo): (usize, usize),
) -> ([Option<usize>; 4], [A; 4], [A; 3], bool) {
    let (one, zero) = (A::one(), A::zero());
    let (hf, wf) = (A::of_i64(h as i64), A::of_i64(w as i64));
    let open = (py > -one) & (px > -one) & (py < hf) & (px < wf);
    let (py, px) = if open { (py, px) } else { (zero, zero) };
    let (fy, fx) = (py.floor(), px.floor());
    let (ly, lx) = (py - fy, px - fx);
    let (hy, hx) = (one - ly, one - lx);
    // Inside the region -1 <= floor <= size - 1: exact.
    let (yi, xi) = (fy.to_i32_sat() as i64, fx.to_i32_sat() as i64);
    let (y_lo, y_hi) = (open & (yi >= 0), open & (yi + 1 < h as i64));
    let (x_lo, x_hi) = (xi >= 0, xi + 1 < w as i64);
    let at = |y: i64, x: i64| (first + (y * w as i64 + x) as usize) * c + lo;
    let corners = [
        (y_lo & x_lo).then(|| at(yi, xi)),
        (y_lo & x_hi).then(|| at(yi, xi + 1)),
        (y_hi & x_lo).then(|| at(yi + 1, xi)),
        (y_hi & x_hi).then(|| at(yi + 1, xi + 1)),
    ];
    let mo = if open { m } else { zero };
    let weights = [
        mo * (hy * hx),
        mo * (hy * lx),
        mo * (ly * hx),
        mo * (ly * lx),
    ];
    (corners, weights, [ly, lx, m], open)
}

/// The point core's forward row in one pass ([`super::PointsRow`]): per element and group, each
/// point's position as `describe_runs` forms it, its descriptors as `sample_row_body`, its
/// sample as `gather_points_body` forms the point core's (fused; the first point's sample the
/// start of the sum): the same operations, the same bits; the image read in place (zeros for
/// corners outside).
#[inline(always)]
fn points_row_body<A: Real>(r: &PointsRow<'_, A>, out: &mut [MaybeUninit<A>]) {
    let runs = &r.runs;
    let (p, len, c, d) = (runs.points, runs.len, r.c, r.d);
    assert!(
        points_fits(d, p, r.image.len()) && r.planes.len() >= p,
        "points_row_body: at most {POINTS_MAX} points and {RUN_MAX} channels a group"
    );
    let zero = A::zero();
    let zeros = [zero; RUN_MAX];
    let mut corners = [[None; 4]; POINTS_MAX];
    let mut weights = [[zero; 4]; POINTS_MAX];
    let mut acc = [zero; RUN_MAX];
    let [tap_y, tap_x] = runs.tap;
    let [scale_y, scale_x] = runs.scale;
    for gs in r.groups.chunks(r.block.max(1)) {
        for t in 0..len {
            for &[pair0, weight0, lo] in gs {
                let pairs = &runs.pairs[pair0 + t * runs.pair_step..][..2 * p];
                let ms = &runs.weights[weight0 + t * runs.weight_step..][..p];
                let (by, bx) = (runs.base[0][t], runs.base[1][t]);
                for k in 0..p {
                    let py = zero + (by + (tap_y[k] + pairs[2 * k + 1]) * scale_y[k]);
                    let px = zero + (bx + (tap_x[k] + pairs[2 * k]) * scale_x[k]);
                    (corners[k], weights[k], ..) =
                        point_corners((py, px, ms[k]), r.planes[k], (c, lo));
                }
                for k in 0..p {
                    let src = corners[k].map(|o| o.map_or(&zeros[..d], |o| &r.image[o..o + d]));
                    if k == 0 {
                        gather_run::<A, false, true>(&mut acc[..d], src, weights[k]);
                    } else {
                        gather_run::<A, true, true>(&mut acc[..d], src, weights[k]);
                    }
                }
                for (o, v) in out[t * c + lo..][..d].iter_mut().zip(&acc[..d]) {
                    o.write(*v);
                }
            }
        }
    }
}

/// The point core's backward row in one pass ([`super::PointsBack`]): block by block of
/// [`super::BACK_BLOCK`] elements, per point, per element,
/// the descriptors as `sample_row_body` forms them, the dot products as `dot4_row_body` (onto
/// zero) and the scatter as `scatter_row_body` (corners outside receive nothing), the position
/// and weight gradients as the point core forms them: the same bits; the image read in place.
#[inline(always)]
fn points_back_body<A: Real>(r: &PointsBack<'_, A>, dx: &mut [A], grads: [&mut [A]; 3]) {
    let (len, c, lo, d) = (r.len, r.c, r.lo, r.d);
    let p = r.planes.len();
    let all = p * len;
    assert!(
        points_fits(d, p, r.image.len())
            && dx.len() == r.image.len()
            && [r.y, r.x, r.m].iter().all(|v| v.len() >= all)
            && grads.iter().all(|v| v.len() >= all),
        "points_back_body: rows inside their buffers, at most {POINTS_MAX} points and {RUN_MAX} \
         channels a group"
    );
    let zero = A::zero();
    let zeros = [zero; RUN_MAX];
    let [gy, gx, gm] = grads;
    // Blocks of `BACK_BLOCK` elements, in each every point (`super::BACK_BLOCK`).
    for tb in (0..len).step_by(super::BACK_BLOCK) {
        for (k, &plane) in r.planes.iter().enumerate() {
            for t in tb..(tb + super::BACK_BLOCK).min(len) {
                let i = k * len + t;
                let position = (zero + r.y[i], zero + r.x[i], r.m[i]);
                let (corners, w, [ly, lx, m], open) = point_corners(position, plane, (c, lo));
                if !open {
                    (gy[i], gx[i], gm[i]) = (zero, zero, zero);
                    continue;
                }
                let dv = &r.dout[t * c + lo..][..d];
                let a: [A; 4] = std::array::from_fn(|j| {
                    let src = corners[j].map_or(&zeros[..d], |o| &r.image[o..o + d]);
                    zero + dot_body(dv, src)
                });
                for (corner, wj) in corners.iter().zip(w) {
                    if let Some(o) = *corner {
                        for (g, v) in dx[o..o + d].iter_mut().zip(dv) {
                            *g += wj * *v;
                        }
                    }
                }
                [gy[i], gx[i], gm[i]] = point_grads(a, [ly, lx, m]);
            }
        }
    }
}

/// A sample's position and weight gradients `[d y, d x, d m]` from its four corner dot
/// products `a` (`dout . corner`), its fractions `ly`, `lx` and its weight `m`: the point
/// core's formulas in their order, which every backward route and table computes.
#[inline(always)]
pub(crate) fn point_grads<A: Real>(a: [A; 4], [ly, lx, m]: [A; 3]) -> [A; 3] {
    let (hy, hx) = (A::one() - ly, A::one() - lx);
    [
        m * (hx * (a[2] - a[0]) + lx * (a[3] - a[1])),
        m * (hy * (a[1] - a[0]) + ly * (a[3] - a[2])),
        hy * hx * a[0] + hy * lx * a[1] + ly * hx * a[2] + ly * lx * a[3],
    ]
}

#[inline(always)]
fn dot_body<A: Real>(d: &[A], s: &[A]) -> A {
    let mut acc = [A::zero(); LANE];
    let mut dc = d.chunks_exact(LANE);
    let mut sc = s.chunks_exact(LANE);
    for (dv, sv) in (&mut dc).zip(&mut sc) {
        for l in 0..LANE {
            acc[l] += dv[l] * sv[l];
        }
    }
    for (l, (dv, sv)) in dc.remainder().iter().zip(sc.remainder()).enumerate() {
        acc[l] += *dv * *sv;
    }
    // Fixed pairwise combination.
    let mut width = LANE;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

#[inline(always)]
fn dot4_row_body<A: Real>(job: &RowJob<'_, A>, dcol: &[A], xt: &[A], acc: &mut [A]) {
    let (len, s) = (job.len, job.s);
    for t in 0..job.n {
        if !s.grad[t] {
            continue;
        }
        let d = &dcol[t * job.stride..t * job.stride + len];
        for j in 0..4 {
            let b = s.idx[j][t] as usize * job.c + job.lo;
            acc[4 * t + j] += dot_body(d, &xt[b..b + len]);
        }
    }
}

#[inline(always)]
fn scatter_row_body<A: Real>(job: &RowJob<'_, A>, dcol: &[A], dx: &mut [A]) {
    let (len, s) = (job.len, job.s);
    for t in 0..job.n {
        if !s.open[t] {
            continue;
        }
        let d = &dcol[t * job.stride..t * job.stride + len];
        for j in 0..4 {
            let b = s.idx[j][t] as usize * job.c + job.lo;
            let w = s.w[j][t];
            for (o, v) in dx[b..b + len].iter_mut().zip(d) {
                *o += w * *v;
            }
        }
    }
}

/// [`super::TapGradsFn`]: element by element, each a fixed expression of its own values (so a
/// compilation that runs it several elements per register gives the same bits).
#[inline(always)]
fn tap_grads_body<A: Real>(s: &RowSamples<A>, a: &[A], [ty, tx, tm]: [&mut [A]; 3]) {
    let (zero, one) = (A::zero(), A::one());
    let wo = ty.len().min(tx.len()).min(tm.len());
    let (ty, tx, tm) = (&mut ty[..wo], &mut tx[..wo], &mut tm[..wo]);
    let (grad, open) = (&s.grad[..wo], &s.open[..wo]);
    let (ly, lx, m) = (&s.ly[..wo], &s.lx[..wo], &s.m[..wo]);
    let outs = ty.iter_mut().zip(tx.iter_mut()).zip(tm.iter_mut());
    let ins = a[..4 * wo].chunks_exact(4).zip(ly).zip(lx).zip(m);
    for (((y, x), mm), ((((a, &ly), &lx), &m), (&g, &o))) in
        outs.zip(ins.zip(grad.iter().zip(open)))
    {
        let [a0, a1, a2, a3] = [a[0], a[1], a[2], a[3]];
        let (hy, hx) = (one - ly, one - lx);
        let gy = m * (hx * (a2 - a0) + lx * (a3 - a1));
        let gx = m * (hy * (a1 - a0) + ly * (a3 - a2));
        let gm = hy * hx * a0 + hy * lx * a1 + ly * hx * a2 + ly * lx * a3;
        *y = if g { gy } else { zero };
        *x = if g { gx } else { zero };
        *mm = if g & o { gm } else { zero };
    }
}

fn scalar_sample_row<A: Real>(a: &RowArgs<'_, A>, out: &mut RowSamples<A>) {
    sample_row_body(a, out)
}
fn scalar_gather_row<A: Real>(job: &RowJob<'_, A>, xt: &[A], cols: &mut [A]) {
    gather_points_body::<A, false>(job, 1, xt, cols)
}
fn scalar_gather_points<A: Real>(job: &RowJob<'_, A>, points: usize, xt: &[A], cols: &mut [A]) {
    gather_points_body::<A, true>(job, points, xt, cols)
}
fn scalar_dot4_row<A: Real>(job: &RowJob<'_, A>, dcol: &[A], xt: &[A], acc: &mut [A]) {
    dot4_row_body(job, dcol, xt, acc)
}
fn scalar_scatter_row<A: Real>(job: &RowJob<'_, A>, dcol: &[A], dx: &mut [A]) {
    scatter_row_body(job, dcol, dx)
}
fn scalar_tap_grads<A: Real>(s: &RowSamples<A>, a: &[A], out: [&mut [A]; 3]) {
    tap_grads_body(s, a, out)
}
fn scalar_points_forward<A: Real>(r: &PointsRow<'_, A>, out: &mut [MaybeUninit<A>]) {
    points_row_body(r, out)
}
fn scalar_points_backward<A: Real>(r: &PointsBack<'_, A>, dx: &mut [A], grads: [&mut [A]; 3]) {
    points_back_body(r, dx, grads)
}

/// The portable one-pass point rows, as the scalar table runs them.
fn points_scalar<A: Real>() -> Option<PointKernels<A>> {
    Some(PointKernels {
        fits: points_fits,
        forward: scalar_points_forward,
        backward: Some(scalar_points_backward),
    })
}

fn scalar_panel_gemm<A: Real>(job: PanelGemm<'_, A>) {
    panel_gemm::body::<A, 6>(job)
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{avx2_gather_points, avx2_tap_grads};

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 compilations of the kernel bodies: a `#[target_feature]` function per kernel, and a
    //! safe entry point that the dispatch table stores. The table is only built after
    //! `Isa::supported()` (see `table`).
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    fn avx2_sample_row_impl<A: Real>(a: &RowArgs<'_, A>, out: &mut RowSamples<A>) {
        sample_row_body(a, out)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_gather_row_impl<A: Real>(job: &RowJob<'_, A>, xt: &[A], cols: &mut [A]) {
        gather_points_body::<A, false>(job, 1, xt, cols)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_gather_points_impl<A: Real>(
        job: &RowJob<'_, A>,
        points: usize,
        xt: &[A],
        cols: &mut [A],
    ) {
        gather_points_body::<A, true>(job, points, xt, cols)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_dot4_row_impl<A: Real>(job: &RowJob<'_, A>, dcol: &[A], xt: &[A], acc: &mut [A]) {
        dot4_row_body(job, dcol, xt, acc)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_scatter_row_impl<A: Real>(job: &RowJob<'_, A>, dcol: &[A], dx: &mut [A]) {
        scatter_row_body(job, dcol, dx)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_tap_grads_impl<A: Real>(s: &RowSamples<A>, a: &[A], out: [&mut [A]; 3]) {
        tap_grads_body(s, a, out)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_panel_gemm_impl<A: Real>(job: PanelGemm<'_, A>) {
        // 6 x 16: twelve accumulators, two panel registers and one broadcast of 16.
        panel_gemm::body::<A, 6>(job)
    }

    pub(super) fn avx2_sample_row<A: Real>(a: &RowArgs<'_, A>, out: &mut RowSamples<A>) {
        // SAFETY: stored only in the table built after `Isa::Avx2.supported()` returned true.
        unsafe { avx2_sample_row_impl(a, out) }
    }
    pub(super) fn avx2_gather_row<A: Real>(job: &RowJob<'_, A>, xt: &[A], cols: &mut [A]) {
        // SAFETY: as for `avx2_sample_row`.
        unsafe { avx2_gather_row_impl(job, xt, cols) }
    }
    pub(in super::super) fn avx2_gather_points<A: Real>(
        job: &RowJob<'_, A>,
        points: usize,
        xt: &[A],
        cols: &mut [A],
    ) {
        // SAFETY: as for `avx2_sample_row`.
        unsafe { avx2_gather_points_impl(job, points, xt, cols) }
    }
    pub(super) fn avx2_dot4_row<A: Real>(job: &RowJob<'_, A>, dcol: &[A], xt: &[A], acc: &mut [A]) {
        // SAFETY: as for `avx2_sample_row`.
        unsafe { avx2_dot4_row_impl(job, dcol, xt, acc) }
    }
    pub(super) fn avx2_scatter_row<A: Real>(job: &RowJob<'_, A>, dcol: &[A], dx: &mut [A]) {
        // SAFETY: as for `avx2_sample_row`.
        unsafe { avx2_scatter_row_impl(job, dcol, dx) }
    }
    pub(in super::super) fn avx2_tap_grads<A: Real>(
        s: &RowSamples<A>,
        a: &[A],
        out: [&mut [A]; 3],
    ) {
        // SAFETY: as for `avx2_sample_row`.
        unsafe { avx2_tap_grads_impl(s, a, out) }
    }
    pub(super) fn avx2_panel_gemm<A: Real>(job: PanelGemm<'_, A>) {
        // SAFETY: stored only in tables built after `Isa::Avx2.supported()` returned true.
        unsafe { avx2_panel_gemm_impl(job) }
    }
}

/// The portable bodies compiled for `isa` (`None`: not compiled for this architecture).
pub(super) fn portable<A: Real>(isa: Isa) -> Option<Kernels<A>> {
    Some(match isa {
        Isa::Scalar => Kernels {
            name: "scalar (portable bodies)",
            sample_row: scalar_sample_row,
            gather_row: scalar_gather_row,
            gather_points: scalar_gather_points,
            dot4_row: scalar_dot4_row,
            scatter_row: scalar_scatter_row,
            tap_grads: scalar_tap_grads,
            backward_row: None,
            panel_gemm: panel_gemm_for::<A>(Isa::Scalar),
            describe_points: None,
            transpose_rows: None,
            points: points_scalar::<A>(),
            interleave: None,
            stream: None,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels {
            name: "avx2 (portable bodies)",
            sample_row: x86::avx2_sample_row,
            gather_row: x86::avx2_gather_row,
            gather_points: x86::avx2_gather_points,
            dot4_row: x86::avx2_dot4_row,
            scatter_row: x86::avx2_scatter_row,
            tap_grads: x86::avx2_tap_grads,
            backward_row: None,
            panel_gemm: panel_gemm_for::<A>(Isa::Avx2),
            describe_points: None,
            transpose_rows: None,
            // Measured slower compiled for AVX2 than the copy and the row kernels (forward
            // 1.04x, backward 1.3x; the scalar compilation 0.87x, 0.86x).
            points: None,
            interleave: None,
            stream: None,
        },
        // No portable body measured faster compiled for AVX-512: AVX2's.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Kernels {
            name: "avx512 (avx2 portable bodies)",
            ..portable::<A>(Isa::Avx2)?
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => return None,
    })
}
