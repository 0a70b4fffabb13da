//! The portable kernel bodies, written once over plain slices and generic over the accumulation
//! type, and their compilations: for the build's baseline (`scalar`) and, through
//! `#[target_feature]` wrappers, for AVX2+FMA. Every instruction set's table starts from these.

use super::super::sample::{sample_row_body, RowArgs, RowSamples};
use super::{panel_gemm, Isa, Kernels, PanelGemm, PanelGemmFn, RowJob};
use crate::element::Real;

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
#[inline(always)]
fn gather_fixed<A: Real, const N: usize, const ADD: bool>(dst: &mut [A], s: [&[A]; 4], w: [A; 4]) {
    let s0: &[A; N] = (&s[0][..N]).try_into().expect("N elements");
    let mut acc = [A::zero(); N];
    for c in 0..N {
        acc[c] = w[0] * s0[c];
    }
    for j in 1..4 {
        let sj: &[A; N] = (&s[j][..N]).try_into().expect("N elements");
        for c in 0..N {
            acc[c] += w[j] * sj[c];
        }
    }
    if ADD {
        dst[..N].iter_mut().zip(&acc).for_each(|(d, a)| *d += *a);
    } else {
        dst[..N].copy_from_slice(&acc);
    }
}

#[inline(always)]
fn gather_run<A: Real, const ADD: bool>(dst: &mut [A], s: [&[A]; 4], w: [A; 4]) {
    let n = dst.len();
    match n {
        4 => gather_fixed::<A, 4, ADD>(dst, s, w),
        8 => gather_fixed::<A, 8, ADD>(dst, s, w),
        16 => gather_fixed::<A, 16, ADD>(dst, s, w),
        _ => {
            let mut c = 0;
            while c + LANE <= n {
                gather_fixed::<A, LANE, ADD>(&mut dst[c..], s.map(|x| &x[c..]), w);
                c += LANE;
            }
            for k in c..n {
                let v = w[0] * s[0][k] + w[1] * s[1][k] + w[2] * s[2][k] + w[3] * s[3][k];
                if ADD {
                    dst[k] += v;
                } else {
                    dst[k] = v;
                }
            }
        }
    }
}

/// The gather of `points` points per element, point `k`'s descriptors at `k*job.n ..` (the
/// columns' gather is one point).
#[inline(always)]
fn gather_points_body<A: Real>(job: &RowJob<'_, A>, points: usize, xt: &[A], cols: &mut [A]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    for t in 0..n {
        let dst = &mut cols[t * job.stride..t * job.stride + len];
        for k in 0..points {
            let i = k * n + t;
            let b: [usize; 4] = std::array::from_fn(|j| s.idx[j][i] as usize * c + lo);
            let src = b.map(|b| &xt[b..b + len]);
            let w = std::array::from_fn(|j| s.w[j][i]);
            if k == 0 {
                gather_run::<A, false>(dst, src, w);
            } else {
                gather_run::<A, true>(dst, src, w);
            }
        }
    }
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

fn scalar_sample_row<A: Real>(a: &RowArgs<'_, A>, out: &mut RowSamples<A>) {
    sample_row_body(a, out)
}
fn scalar_gather_row<A: Real>(job: &RowJob<'_, A>, xt: &[A], cols: &mut [A]) {
    gather_points_body(job, 1, xt, cols)
}
fn scalar_gather_points<A: Real>(job: &RowJob<'_, A>, points: usize, xt: &[A], cols: &mut [A]) {
    gather_points_body(job, points, xt, cols)
}
fn scalar_dot4_row<A: Real>(job: &RowJob<'_, A>, dcol: &[A], xt: &[A], acc: &mut [A]) {
    dot4_row_body(job, dcol, xt, acc)
}
fn scalar_scatter_row<A: Real>(job: &RowJob<'_, A>, dcol: &[A], dx: &mut [A]) {
    scatter_row_body(job, dcol, dx)
}
fn scalar_panel_gemm<A: Real>(job: PanelGemm<'_, A>) {
    panel_gemm::body::<A, 6>(job)
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::avx2_gather_points;

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
        gather_points_body(job, 1, xt, cols)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_gather_points_impl<A: Real>(
        job: &RowJob<'_, A>,
        points: usize,
        xt: &[A],
        cols: &mut [A],
    ) {
        gather_points_body(job, points, xt, cols)
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
            backward_row: None,
            panel_gemm: panel_gemm_for::<A>(Isa::Scalar),
            describe_points: None,
            points: None,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels {
            name: "avx2 (portable bodies)",
            sample_row: x86::avx2_sample_row,
            gather_row: x86::avx2_gather_row,
            gather_points: x86::avx2_gather_points,
            dot4_row: x86::avx2_dot4_row,
            scatter_row: x86::avx2_scatter_row,
            backward_row: None,
            panel_gemm: panel_gemm_for::<A>(Isa::Avx2),
            describe_points: None,
            points: None,
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
