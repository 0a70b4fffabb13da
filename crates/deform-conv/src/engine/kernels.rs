//! Channel-vector kernels and their run-time dispatch.
//!
//! Each kernel body is written once, `#[inline(always)]` and generic over the accumulation type,
//! over plain slices (one bounds check per channel run, none per element). Thin
//! `#[target_feature]` wrappers compile that body for AVX-512 and AVX2+FMA; the scalar path is
//! the body compiled for baseline x86-64 (or any other architecture). The instruction set is
//! chosen once, on first use, from CPU feature detection, overridable with
//! `DEFORM_CONV_ISA=scalar|avx2|avx512`, and each call can also force one ([`Isa`] in
//! [`crate::op::Backend::EngineIsa`]).
//!
//! Reductions accumulate in [`LANE`] independent partial sums combined in a fixed order, and no
//! body relies on fused multiply-add, so every instruction set gives bitwise the same result.

use crate::element::Real;
use std::sync::OnceLock;

/// Partial sums per dot product: one 512-bit register of f32.
const LANE: usize = 16;

/// An instruction set the engine can run its kernels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable code, no target features beyond the build's baseline.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F.
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
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
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

/// `dst[c] = sum_j w_j * s[b_j + c]`.
pub(crate) type GatherFn<A> = fn(&mut [A], &[A], [usize; 4], [A; 4]);
/// `[sum_c d[c] * s[b_j + c] for j in 0..4]`.
pub(crate) type Dot4Fn<A> = fn(&[A], &[A], [usize; 4]) -> [A; 4];
/// `dst[b_j + c] += w_j * d[c]`.
pub(crate) type ScatterFn<A> = fn(&mut [A], &[A], [usize; 4], [A; 4]);

/// The kernels of one instruction set for accumulation type `A`.
pub(crate) struct Kernels<A> {
    /// `dst[c] = w0*s[b0+c] + w1*s[b1+c] + w2*s[b2+c] + w3*s[b3+c]` for `c < dst.len()`.
    pub gather: GatherFn<A>,
    /// `[sum_c d[c]*s[bj+c] for j in 0..4]`.
    pub dot4: Dot4Fn<A>,
    /// `dst[bj+c] += wj*d[c]` for each corner `j`, in corner order.
    pub scatter: ScatterFn<A>,
}

#[inline(always)]
fn gather_body<A: Real>(dst: &mut [A], s: &[A], b: [usize; 4], w: [A; 4]) {
    let n = dst.len();
    let (s0, s1, s2, s3) = (
        &s[b[0]..b[0] + n],
        &s[b[1]..b[1] + n],
        &s[b[2]..b[2] + n],
        &s[b[3]..b[3] + n],
    );
    for c in 0..n {
        dst[c] = w[0] * s0[c] + w[1] * s1[c] + w[2] * s2[c] + w[3] * s3[c];
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
fn dot4_body<A: Real>(d: &[A], s: &[A], b: [usize; 4]) -> [A; 4] {
    let n = d.len();
    b.map(|bj| dot_body(d, &s[bj..bj + n]))
}

#[inline(always)]
fn scatter_body<A: Real>(dst: &mut [A], d: &[A], b: [usize; 4], w: [A; 4]) {
    let n = d.len();
    for j in 0..4 {
        let out = &mut dst[b[j]..b[j] + n];
        for c in 0..n {
            out[c] += w[j] * d[c];
        }
    }
}

fn scalar_gather<A: Real>(dst: &mut [A], s: &[A], b: [usize; 4], w: [A; 4]) {
    gather_body(dst, s, b, w)
}
fn scalar_dot4<A: Real>(d: &[A], s: &[A], b: [usize; 4]) -> [A; 4] {
    dot4_body(d, s, b)
}
fn scalar_scatter<A: Real>(dst: &mut [A], d: &[A], b: [usize; 4], w: [A; 4]) {
    scatter_body(dst, d, b, w)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX-512 compilations of the kernel bodies.
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    fn avx2_gather_impl<A: Real>(dst: &mut [A], s: &[A], b: [usize; 4], w: [A; 4]) {
        gather_body(dst, s, b, w)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_dot4_impl<A: Real>(d: &[A], s: &[A], b: [usize; 4]) -> [A; 4] {
        dot4_body(d, s, b)
    }
    #[target_feature(enable = "avx2,fma")]
    fn avx2_scatter_impl<A: Real>(dst: &mut [A], d: &[A], b: [usize; 4], w: [A; 4]) {
        scatter_body(dst, d, b, w)
    }
    #[target_feature(enable = "avx512f")]
    fn avx512_gather_impl<A: Real>(dst: &mut [A], s: &[A], b: [usize; 4], w: [A; 4]) {
        gather_body(dst, s, b, w)
    }
    #[target_feature(enable = "avx512f")]
    fn avx512_dot4_impl<A: Real>(d: &[A], s: &[A], b: [usize; 4]) -> [A; 4] {
        dot4_body(d, s, b)
    }
    #[target_feature(enable = "avx512f")]
    fn avx512_scatter_impl<A: Real>(dst: &mut [A], d: &[A], b: [usize; 4], w: [A; 4]) {
        scatter_body(dst, d, b, w)
    }

    // The plain-`fn` entry points stored in the dispatch table. They are only put in a table
    // whose `Isa` was checked as supported by this CPU (`table` below).
    pub(super) fn avx2_gather<A: Real>(dst: &mut [A], s: &[A], b: [usize; 4], w: [A; 4]) {
        // SAFETY: reached only through a table built after `Isa::Avx2.supported()` returned true.
        unsafe { avx2_gather_impl(dst, s, b, w) }
    }
    pub(super) fn avx2_dot4<A: Real>(d: &[A], s: &[A], b: [usize; 4]) -> [A; 4] {
        // SAFETY: as for `avx2_gather`.
        unsafe { avx2_dot4_impl(d, s, b) }
    }
    pub(super) fn avx2_scatter<A: Real>(dst: &mut [A], d: &[A], b: [usize; 4], w: [A; 4]) {
        // SAFETY: as for `avx2_gather`.
        unsafe { avx2_scatter_impl(dst, d, b, w) }
    }
    pub(super) fn avx512_gather<A: Real>(dst: &mut [A], s: &[A], b: [usize; 4], w: [A; 4]) {
        // SAFETY: reached only through a table built after `Isa::Avx512.supported()` returned true.
        unsafe { avx512_gather_impl(dst, s, b, w) }
    }
    pub(super) fn avx512_dot4<A: Real>(d: &[A], s: &[A], b: [usize; 4]) -> [A; 4] {
        // SAFETY: as for `avx512_gather`.
        unsafe { avx512_dot4_impl(d, s, b) }
    }
    pub(super) fn avx512_scatter<A: Real>(dst: &mut [A], d: &[A], b: [usize; 4], w: [A; 4]) {
        // SAFETY: as for `avx512_gather`.
        unsafe { avx512_scatter_impl(dst, d, b, w) }
    }
}

/// The kernel table of `isa`, or `None` when this CPU does not support it.
pub(crate) fn table<A: Real>(isa: Isa) -> Option<Kernels<A>> {
    if !isa.supported() {
        return None;
    }
    Some(match isa {
        Isa::Scalar => Kernels {
            gather: scalar_gather,
            dot4: scalar_dot4,
            scatter: scalar_scatter,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels {
            gather: x86::avx2_gather,
            dot4: x86::avx2_dot4,
            scatter: x86::avx2_scatter,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Kernels {
            gather: x86::avx512_gather,
            dot4: x86::avx512_dot4,
            scatter: x86::avx512_scatter,
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => return None,
    })
}
