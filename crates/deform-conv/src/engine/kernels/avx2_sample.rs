//! The explicit AVX2 f32 row descriptors (`sample_row`), used by the AVX2 and AVX-512 tables:
//! the portable body's IEEE operations in the same order, eight samples per step: bitwise the
//! same results.

use super::super::sample::{sample_row_body, RowArgs, RowSamples};
use crate::params::GradGate;
use std::arch::x86_64::*;

/// Descriptors of one row, 8 samples per step (see `sample_row_body` for the formula).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sample_row(a: &RowArgs<'_, f32>, out: &mut RowSamples<f32>) {
    let n = a.dy.len();
    // The grid columns and pixel indices are formed in i32 lanes.
    if !a.fits_i32_lanes() {
        return sample_row_body(a, out);
    }
    let one = _mm256_set1_ps(1.0);
    let minus_one = _mm256_set1_ps(-1.0);
    let hf = _mm256_set1_ps(a.h as i64 as f32);
    let wf = _mm256_set1_ps(a.w as i64 as f32);
    let y0 = _mm256_set1_ps(a.y0 as f32);
    let (hi, wi) = (_mm256_set1_epi32(a.h as i32), _mm256_set1_epi32(a.w as i32));
    let outside = _mm256_set1_epi32((a.h * a.w) as i32);
    let ione = _mm256_set1_epi32(1);
    let iminus_one = _mm256_set1_epi32(-1);
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let (x0, sx) = (
        _mm256_set1_epi32(a.x0 as i32),
        _mm256_set1_epi32(a.sx as i32),
    );
    let per_tap = a.gate == GradGate::PerTap;
    let at = a.at;
    let mut t = 0;
    while t < n {
        let len = (n - t).min(8);
        // Inputs of this step in 8-lane buffers (zeros past the row's end).
        let load = |src: &[f32]| -> __m256 {
            if len == 8 {
                let s = &src[t..t + 8];
                // SAFETY: `s` holds 8 f32.
                unsafe { _mm256_loadu_ps(s.as_ptr()) }
            } else {
                let mut b = [0f32; 8];
                b[..len].copy_from_slice(&src[t..t + len]);
                // SAFETY: `b` holds 8 f32.
                unsafe { _mm256_loadu_ps(b.as_ptr()) }
            }
        };
        let (vdy, vdx) = (load(a.dy), load(a.dx));
        let vm = if a.m.is_empty() {
            _mm256_set1_ps(1.0)
        } else {
            load(a.m)
        };
        let py = _mm256_add_ps(y0, vdy);
        let grid_x = _mm256_add_epi32(
            x0,
            _mm256_mullo_epi32(_mm256_add_epi32(_mm256_set1_epi32(t as i32), iota), sx),
        );
        let px = _mm256_add_ps(_mm256_cvtepi32_ps(grid_x), vdx);
        let inside = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_LT_OQ>(py, hf),
            _mm256_cmp_ps::<_CMP_LT_OQ>(px, wf),
        );
        let open = _mm256_and_ps(
            inside,
            _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(py, minus_one),
                _mm256_cmp_ps::<_CMP_GT_OQ>(px, minus_one),
            ),
        );
        let closed = _mm256_and_ps(
            inside,
            _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GE_OQ>(py, minus_one),
                _mm256_cmp_ps::<_CMP_GE_OQ>(px, minus_one),
            ),
        );
        let grad = if per_tap { closed } else { open };
        let (py, px) = (_mm256_and_ps(py, grad), _mm256_and_ps(px, grad));
        let (fy, fx) = (_mm256_floor_ps(py), _mm256_floor_ps(px));
        let (ly, lx) = (_mm256_sub_ps(py, fy), _mm256_sub_ps(px, fx));
        let (hy, hx) = (_mm256_sub_ps(one, ly), _mm256_sub_ps(one, lx));
        let (yi, xi) = (_mm256_cvttps_epi32(fy), _mm256_cvttps_epi32(fx));
        let gi = _mm256_castps_si256(grad);
        let y_lo = _mm256_and_si256(gi, _mm256_cmpgt_epi32(yi, iminus_one));
        let y_hi = _mm256_and_si256(gi, _mm256_cmpgt_epi32(hi, _mm256_add_epi32(yi, ione)));
        let x_lo = _mm256_cmpgt_epi32(xi, iminus_one);
        let x_hi = _mm256_cmpgt_epi32(wi, _mm256_add_epi32(xi, ione));
        let base = _mm256_add_epi32(_mm256_mullo_epi32(yi, wi), xi);
        let below = _mm256_add_epi32(base, wi);
        let pick = |k: __m256i, v: __m256i| _mm256_blendv_epi8(outside, v, k);
        let idx = [
            pick(_mm256_and_si256(y_lo, x_lo), base),
            pick(_mm256_and_si256(y_lo, x_hi), _mm256_add_epi32(base, ione)),
            pick(_mm256_and_si256(y_hi, x_lo), below),
            pick(_mm256_and_si256(y_hi, x_hi), _mm256_add_epi32(below, ione)),
        ];
        let mo = _mm256_and_ps(vm, open);
        let w = [
            _mm256_mul_ps(mo, _mm256_mul_ps(hy, hx)),
            _mm256_mul_ps(mo, _mm256_mul_ps(hy, lx)),
            _mm256_mul_ps(mo, _mm256_mul_ps(ly, hx)),
            _mm256_mul_ps(mo, _mm256_mul_ps(ly, lx)),
        ];
        let (open_bits, grad_bits) = (_mm256_movemask_ps(open), _mm256_movemask_ps(grad));
        if len == 8 {
            // A full step stores straight into the rows (a stack-buffer copy would be a
            // `memmove` call per array).
            for j in 0..4 {
                let di = &mut out.idx[j][at + t..at + t + 8];
                // SAFETY: `di` holds 8 u32.
                unsafe { _mm256_storeu_si256(di.as_mut_ptr().cast(), idx[j]) };
                let dw = &mut out.w[j][at + t..at + t + 8];
                // SAFETY: `dw` holds 8 f32.
                unsafe { _mm256_storeu_ps(dw.as_mut_ptr(), w[j]) };
            }
            if a.gradients {
                for (dst, v) in [(&mut out.ly, ly), (&mut out.lx, lx), (&mut out.m, vm)] {
                    let d = &mut dst[at + t..at + t + 8];
                    // SAFETY: `d` holds 8 f32.
                    unsafe { _mm256_storeu_ps(d.as_mut_ptr(), v) };
                }
            }
        } else {
            let mut ib = [0u32; 8];
            let mut fb = [0f32; 8];
            for j in 0..4 {
                // SAFETY: 8-element stack buffers.
                unsafe { _mm256_storeu_si256(ib.as_mut_ptr().cast(), idx[j]) };
                out.idx[j][at + t..at + t + len].copy_from_slice(&ib[..len]);
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(fb.as_mut_ptr(), w[j]) };
                out.w[j][at + t..at + t + len].copy_from_slice(&fb[..len]);
            }
            if a.gradients {
                for (dst, v) in [(&mut out.ly, ly), (&mut out.lx, lx), (&mut out.m, vm)] {
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(fb.as_mut_ptr(), v) };
                    dst[at + t..at + t + len].copy_from_slice(&fb[..len]);
                }
            }
        }
        if a.gradients {
            for l in 0..len {
                out.open[at + t + l] = (open_bits >> l) & 1 == 1;
                out.grad[at + t + l] = (grad_bits >> l) & 1 == 1;
            }
        }
        t += 8;
    }
}
