//! The AVX-512F kernels that measured faster than their AVX2 siblings: the panel GEMM's register
//! tile (the other f32 kernels of the AVX-512 table are the AVX2 ones, see `avx512_f32_table`).

use std::arch::x86_64::*;

/// The panel GEMM's register tile for 32 zmm registers: `MR` rows of 16 output channels, one
/// zmm accumulator per row, one panel load and `MR` broadcasts per `kk`. Written with intrinsics
/// because the portable tile compiled for AVX-512 did not keep this shape (ymm FMAs, gathers
/// across the rows, spilled accumulators: BENCHMARKS.md). `_mm512_fmadd_ps` is the portable
/// tile's `f32::mul_add`, one rounding, in the same `kk` order: the same bits.
pub(super) struct Zmm;

impl super::panel_gemm::Tile<f32> for Zmm {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const MR: usize>(
        kc: usize,
        a: [*const f32; MR],
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        resume: bool,
    ) {
        let mut acc = [_mm512_setzero_ps(); MR];
        if resume {
            for (i, v) in acc.iter_mut().enumerate() {
                // SAFETY: 16 values at c + i*ldc, i < MR (the contract).
                *v = unsafe { _mm512_loadu_ps(c.add(i * ldc)) };
            }
        }
        for kk in 0..kc {
            // SAFETY: 16 values at b + kk*16, kk < kc (the contract).
            let bv = unsafe { _mm512_loadu_ps(b.add(kk * super::panel_gemm::NR)) };
            for (v, row) in acc.iter_mut().zip(a) {
                // SAFETY: row + kk is readable, kk < kc (the contract).
                let x = _mm512_set1_ps(unsafe { *row.add(kk) });
                *v = _mm512_fmadd_ps(x, bv, *v);
            }
        }
        for (i, v) in acc.into_iter().enumerate() {
            // SAFETY: 16 values at c + i*ldc, i < MR (the contract).
            unsafe { _mm512_storeu_ps(c.add(i * ldc), v) };
        }
    }
}

/// The forward's panel GEMM with the zmm tile, `MR` rows per tile.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_gemm<const MR: usize>(job: super::PanelGemm<'_, f32>) {
    // SAFETY: the CPU supports AVX-512F (the contract), all the zmm tile needs.
    unsafe { super::panel_gemm::body_with::<f32, MR, Zmm>(job) }
}
