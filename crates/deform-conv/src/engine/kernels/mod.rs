//! Row kernels (descriptors, gather, dot products, scatter) and their run-time dispatch.
//!
//! Each kernel body is written once, `#[inline(always)]` and generic over the accumulation type,
//! over plain slices (one bounds check per channel run, none per element): the portable table.
//! Thin `#[target_feature]` wrappers compile it for AVX2+FMA. On top, for f32, each instruction
//! set overrides only what it implements explicitly: AVX2 every row kernel (`avx2_f32`), AVX-512
//! the panel GEMM's zmm tile (`avx512_f32`) over the AVX2 table. One table per (element type,
//! instruction set), built once per process ([`table`]). The instruction set is chosen once, on
//! first use, from CPU feature detection, overridable with `DEFORM_CONV_ISA=scalar|avx2|avx512`,
//! and each call can also force one ([`Isa`] in [`crate::op::Backend::EngineIsa`]).
//!
//! Reductions accumulate in `LANE` independent partial sums combined in a fixed order, and no
//! row kernel relies on fused multiply-add, so every instruction set gives bitwise the same
//! result. The forward's GEMM ([`panel_gemm`]) is the other way round: it fuses every
//! multiply-add on every instruction set (`f32::mul_add`), one chain per element in a fixed order,
//! and so it too returns the same bits on each.

use super::sample::{sample_row_body, RowArgs, RowSamples};
use crate::element::Real;
use std::sync::OnceLock;

pub(crate) mod panel_gemm;
pub(crate) use panel_gemm::{PanelGemm, PanelGemmFn};

/// Partial sums per dot product: one 512-bit register of f32.
const LANE: usize = 16;

/// An instruction set the engine can run its kernels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable code, no target features beyond the build's baseline.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F (with AVX2 + FMA, whose kernels it keeps where they measured faster).
    Avx512,
}

impl Isa {
    /// Every instruction set, from the most portable.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// Lower-case name (`"avx512"`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a name as printed by [`Isa::name`].
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim().to_ascii_lowercase())
    }

    /// Does this CPU run it?
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && Isa::Avx2.supported(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best supported instruction set.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.supported())
            .unwrap_or(Isa::Scalar)
    }
}

/// The instruction set `Backend::Engine` uses: `DEFORM_CONV_ISA` when set and supported, else
/// the best one; decided once.
pub fn active_isa() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        match std::env::var("DEFORM_CONV_ISA")
            .ok()
            .as_deref()
            .map(Isa::parse)
        {
            Some(Some(isa)) if isa.supported() => isa,
            Some(_) => {
                eprintln!(
                    "deform-conv: DEFORM_CONV_ISA names no supported instruction set; using {}",
                    Isa::best().name()
                );
                Isa::best()
            }
            None => Isa::best(),
        }
    })
}

/// One row's channel work: pixel `t` of the row reads the channel run `[lo, lo + len)` of the
/// corner pixels `s.idx[j][t]` (row length `c` in the channels-last image) and meets row
/// `t * stride` of the columns tile.
pub(crate) struct RowJob<'a, A> {
    pub s: &'a RowSamples<A>,
    /// Pixels in the row.
    pub n: usize,
    /// Channels per image pixel (`C`).
    pub c: usize,
    /// First channel of the run.
    pub lo: usize,
    /// Channels in the run.
    pub len: usize,
    /// Columns-tile elements between consecutive pixels.
    pub stride: usize,
}

/// Descriptors of one row.
pub(crate) type SampleRowFn<A> = fn(&RowArgs<'_, A>, &mut RowSamples<A>);
/// `cols[t*stride + c'] = sum_j w_j[t] * X[idx_j[t], lo + c']`.
pub(crate) type GatherRowFn<A> = fn(&RowJob<'_, A>, &[A], &mut [A]);
/// `acc[4t + j] += sum_c' dcol[t*stride + c'] * X[idx_j[t], lo + c']` for gradient samples.
pub(crate) type Dot4RowFn<A> = fn(&RowJob<'_, A>, &[A], &[A], &mut [A]);
/// `dX[idx_j[t], lo + c'] += w_j[t] * dcol[t*stride + c']` for open samples.
pub(crate) type ScatterRowFn<A> = fn(&RowJob<'_, A>, &[A], &mut [A]);
/// The backward's row in one pass, `(job, dcol, xt, cols, acc, dx)`: the gather for open
/// samples (+0 for the others), the `Dot4RowFn` sums and, when `dx` is not empty, the
/// `ScatterRowFn` scatter; bitwise as the three kernels.
pub(crate) type BackwardRowFn<A> = fn(&RowJob<'_, A>, &[A], &[A], &mut [A], &mut [A], &mut [A]);

/// The kernels of one instruction set for accumulation type `A`.
pub(crate) struct Kernels<A> {
    /// What runs: `"avx512 (avx2 f32 kernels, zmm panel GEMM)"`, `"avx2 (generic bodies)"`, ...
    pub name: &'static str,
    pub sample_row: SampleRowFn<A>,
    pub gather_row: GatherRowFn<A>,
    pub dot4_row: Dot4RowFn<A>,
    pub scatter_row: ScatterRowFn<A>,
    /// The backward's gather, dot products and scatter fused, where written (AVX2 f32); `None`:
    /// the engine calls `gather_row`, `dot4_row` and `scatter_row` in turn.
    pub backward_row: Option<BackwardRowFn<A>>,
    /// The forward's GEMM on the columns tile in place and the weight in panels (f32, where the
    /// CPU has fused multiply-add); `None`: the `gemm` crate on the packed rows.
    pub panel_gemm: Option<PanelGemmFn<A>>,
}

/// The panel GEMM of `isa` for accumulation type `A`: f32 only, and only where the CPU has
/// fused multiply-add, so that every instruction set of this CPU runs the same fma chain (the
/// portable body calls `f32::mul_add`, one instruction there). Elsewhere every instruction set
/// uses the `gemm` crate, again the same bits on each.
fn panel_gemm_for<A: Real>(isa: Isa) -> Option<PanelGemmFn<A>> {
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
fn gather_fixed<A: Real, const N: usize>(dst: &mut [A], s: [&[A]; 4], w: [A; 4]) {
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
    dst[..N].copy_from_slice(&acc);
}

#[inline(always)]
fn gather_run<A: Real>(dst: &mut [A], s: [&[A]; 4], w: [A; 4]) {
    let n = dst.len();
    match n {
        4 => gather_fixed::<A, 4>(dst, s, w),
        8 => gather_fixed::<A, 8>(dst, s, w),
        16 => gather_fixed::<A, 16>(dst, s, w),
        _ => {
            let mut c = 0;
            while c + LANE <= n {
                gather_fixed::<A, LANE>(&mut dst[c..], s.map(|x| &x[c..]), w);
                c += LANE;
            }
            for k in c..n {
                dst[k] = w[0] * s[0][k] + w[1] * s[1][k] + w[2] * s[2][k] + w[3] * s[3][k];
            }
        }
    }
}

#[inline(always)]
fn gather_row_body<A: Real>(job: &RowJob<'_, A>, xt: &[A], cols: &mut [A]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    let (i0, i1, i2, i3) = (
        &s.idx[0][..n],
        &s.idx[1][..n],
        &s.idx[2][..n],
        &s.idx[3][..n],
    );
    let (w0, w1, w2, w3) = (&s.w[0][..n], &s.w[1][..n], &s.w[2][..n], &s.w[3][..n]);
    for t in 0..n {
        let b = [
            i0[t] as usize * c + lo,
            i1[t] as usize * c + lo,
            i2[t] as usize * c + lo,
            i3[t] as usize * c + lo,
        ];
        let src = [
            &xt[b[0]..b[0] + len],
            &xt[b[1]..b[1] + len],
            &xt[b[2]..b[2] + len],
            &xt[b[3]..b[3] + len],
        ];
        gather_run(
            &mut cols[t * job.stride..t * job.stride + len],
            src,
            [w0[t], w1[t], w2[t], w3[t]],
        );
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
    gather_row_body(job, xt, cols)
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
        gather_row_body(job, xt, cols)
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

#[cfg(target_arch = "x86_64")]
mod avx2_f32;
#[cfg(target_arch = "x86_64")]
mod avx512_f32;

/// The portable bodies compiled for `isa` (`None`: not compiled for this architecture).
fn portable<A: Real>(isa: Isa) -> Option<Kernels<A>> {
    Some(match isa {
        Isa::Scalar => Kernels {
            name: "scalar (portable bodies)",
            sample_row: scalar_sample_row,
            gather_row: scalar_gather_row,
            dot4_row: scalar_dot4_row,
            scatter_row: scalar_scatter_row,
            backward_row: None,
            panel_gemm: panel_gemm_for::<A>(Isa::Scalar),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels {
            name: "avx2 (portable bodies)",
            sample_row: x86::avx2_sample_row,
            gather_row: x86::avx2_gather_row,
            dot4_row: x86::avx2_dot4_row,
            scatter_row: x86::avx2_scatter_row,
            backward_row: None,
            panel_gemm: panel_gemm_for::<A>(Isa::Avx2),
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

/// The f32 table of `isa`: the portable one, with what each instruction set implements
/// explicitly (and measured faster) in its place.
fn f32_table(isa: Isa) -> Option<Kernels<f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2_f32_table()),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(avx512_f32_table()),
        _ => portable::<f32>(isa),
    }
}

/// The explicit AVX2 f32 kernels over the portable AVX2 table: descriptors, gather, dot
/// products, scatter and the fused backward row.
#[cfg(target_arch = "x86_64")]
fn avx2_f32_table() -> Kernels<f32> {
    fn sample_row(a: &RowArgs<'_, f32>, out: &mut RowSamples<f32>) {
        // SAFETY: this table is only built after `Isa::Avx2.supported()` returned true.
        unsafe { avx2_f32::sample_row(a, out) }
    }
    fn gather_row(job: &RowJob<'_, f32>, xt: &[f32], cols: &mut [f32]) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::gather_row(job, xt, cols) }
    }
    fn dot4_row(job: &RowJob<'_, f32>, dcol: &[f32], xt: &[f32], acc: &mut [f32]) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::dot4_row(job, dcol, xt, acc) }
    }
    fn scatter_row(job: &RowJob<'_, f32>, dcol: &[f32], dx: &mut [f32]) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::scatter_row(job, dcol, dx) }
    }
    fn backward_row(
        job: &RowJob<'_, f32>,
        dcol: &[f32],
        xt: &[f32],
        cols: &mut [f32],
        acc: &mut [f32],
        dx: &mut [f32],
    ) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::backward_row(job, dcol, xt, cols, acc, dx) }
    }
    Kernels {
        name: "avx2 (explicit f32 kernels)",
        sample_row,
        gather_row,
        dot4_row,
        scatter_row,
        backward_row: Some(backward_row),
        panel_gemm: panel_gemm_for(Isa::Avx2),
    }
}

/// The AVX-512 f32 table: the AVX2 table with the one kernel measured faster on AVX-512, the
/// forward's panel GEMM on a zmm register tile (BENCHMARKS.md).
#[cfg(target_arch = "x86_64")]
fn avx512_f32_table() -> Kernels<f32> {
    fn panel_gemm(job: PanelGemm<'_, f32>) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true.
        unsafe { avx512_f32::panel_gemm::<16>(job) }
    }
    Kernels {
        name: "avx512 (avx2 f32 kernels, zmm panel GEMM)",
        panel_gemm: Some(panel_gemm),
        ..avx2_f32_table()
    }
}

/// The tables of one accumulation type, one per [`Isa::ALL`] entry (`None`: not supported).
type Tables<A> = [Option<Kernels<A>>; 3];

fn tables<A: Real>(build: impl Fn(Isa) -> Option<Kernels<A>>) -> Tables<A> {
    Isa::ALL.map(|isa| if isa.supported() { build(isa) } else { None })
}

/// What the engine runs for accumulation type `A` on `isa` (`None`: not supported here).
pub fn kernels_name<A: Real>(isa: Isa) -> Option<&'static str> {
    table::<A>(isa).map(|k| k.name)
}

/// The kernel table of `isa` for accumulation type `A` (f32 or f64), built once per process;
/// `None` when this CPU does not support `isa`.
pub(crate) fn table<A: Real>(isa: Isa) -> Option<&'static Kernels<A>> {
    static F32: OnceLock<Tables<f32>> = OnceLock::new();
    static F64: OnceLock<Tables<f64>> = OnceLock::new();
    let at = Isa::ALL.iter().position(|&i| i == isa)?;
    let any: &'static dyn std::any::Any =
        if std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>() {
            &F32.get_or_init(|| tables(f32_table))[at]
        } else {
            &F64.get_or_init(|| tables(portable::<f64>))[at]
        };
    any.downcast_ref::<Option<Kernels<A>>>()?.as_ref()
}
