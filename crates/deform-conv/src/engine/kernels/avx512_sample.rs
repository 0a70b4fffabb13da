//! The explicit AVX-512 f32 row descriptors (`sample_row`): the AVX2 kernel's IEEE operations in
//! the same order, sixteen samples per step, the row's tail through masked loads and stores:
//! bitwise the same results. The AVX-512 table runs it for the forwards' descriptors only (with
//! the backward's gradient fields the AVX2 kernel measured faster).

use super::super::sample::{sample_row_body, RowArgs, RowSamples};
use crate::params::GradGate;
use std::arch::x86_64::*;

/// Descriptors of one row, 16 samples per step (see `sample_row_body` for the formula).
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn sample_row(a: &RowArgs<'_, f32>, out: &mut RowSamples<f32>) {
    let n = a.dy.len();
    // The grid columns and pixel indices are formed in i32 lanes.
    if !a.fits_i32_lanes() {
        return sample_row_body(a, out);
    }
    let r = a.at..a.at + n;
    let (dy, dx, m) = (&a.dy[..n], &a.dx[..n], a.m);
    assert!(m.is_empty() || m.len() >= n, "a mask value per sample");
    let idx: [&mut [u32]; 4] = out.idx.each_mut().map(|v| &mut v[r.clone()]);
    let w: [&mut [f32]; 4] = out.w.each_mut().map(|v| &mut v[r.clone()]);
    let mut grads: [&mut [f32]; 3] = if a.gradients {
        [
            &mut out.ly[r.clone()],
            &mut out.lx[r.clone()],
            &mut out.m[r.clone()],
        ]
    } else {
        [&mut [], &mut [], &mut []]
    };
    let one = _mm512_set1_ps(1.0);
    let minus_one = _mm512_set1_ps(-1.0);
    let hf = _mm512_set1_ps(a.h as i64 as f32);
    let wf = _mm512_set1_ps(a.w as i64 as f32);
    let y0 = _mm512_set1_ps(a.y0 as f32);
    let (hi, wi) = (_mm512_set1_epi32(a.h as i32), _mm512_set1_epi32(a.w as i32));
    let outside = _mm512_set1_epi32((a.h * a.w) as i32);
    let ione = _mm512_set1_epi32(1);
    let iminus_one = _mm512_set1_epi32(-1);
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let (x0, sx) = (
        _mm512_set1_epi32(a.x0 as i32),
        _mm512_set1_epi32(a.sx as i32),
    );
    let per_tap = a.gate == GradGate::PerTap;
    let mut t = 0;
    while t < n {
        let len = (n - t).min(16);
        // Lanes past the row's end are neither read nor written.
        let k: __mmask16 = (u32::MAX >> (32 - len)) as u16;
        // SAFETY: the lanes enabled in `k` address elements t..t+len of slices of n elements.
        let load = |src: &[f32]| unsafe { _mm512_maskz_loadu_ps(k, src.as_ptr().add(t)) };
        let (vdy, vdx) = (load(dy), load(dx));
        let vm = if m.is_empty() { one } else { load(m) };
        let py = _mm512_add_ps(y0, vdy);
        let grid_x = _mm512_add_epi32(
            x0,
            _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(t as i32), iota), sx),
        );
        let px = _mm512_add_ps(_mm512_cvtepi32_ps(grid_x), vdx);
        let inside =
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(py, hf) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(px, wf);
        let open = inside
            & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(py, minus_one)
            & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(px, minus_one);
        let closed = inside
            & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(py, minus_one)
            & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(px, minus_one);
        let grad = if per_tap { closed } else { open };
        let (py, px) = (_mm512_maskz_mov_ps(grad, py), _mm512_maskz_mov_ps(grad, px));
        const FLOOR: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
        let (fy, fx) = (
            _mm512_roundscale_ps::<FLOOR>(py),
            _mm512_roundscale_ps::<FLOOR>(px),
        );
        let (ly, lx) = (_mm512_sub_ps(py, fy), _mm512_sub_ps(px, fx));
        let (hy, hx) = (_mm512_sub_ps(one, ly), _mm512_sub_ps(one, lx));
        let (yi, xi) = (_mm512_cvttps_epi32(fy), _mm512_cvttps_epi32(fx));
        let y_lo = grad & _mm512_cmpgt_epi32_mask(yi, iminus_one);
        let y_hi = grad & _mm512_cmpgt_epi32_mask(hi, _mm512_add_epi32(yi, ione));
        let x_lo = _mm512_cmpgt_epi32_mask(xi, iminus_one);
        let x_hi = _mm512_cmpgt_epi32_mask(wi, _mm512_add_epi32(xi, ione));
        let base = _mm512_add_epi32(_mm512_mullo_epi32(yi, wi), xi);
        let below = _mm512_add_epi32(base, wi);
        let pick = |k: __mmask16, v: __m512i| _mm512_mask_blend_epi32(k, outside, v);
        let iv = [
            pick(y_lo & x_lo, base),
            pick(y_lo & x_hi, _mm512_add_epi32(base, ione)),
            pick(y_hi & x_lo, below),
            pick(y_hi & x_hi, _mm512_add_epi32(below, ione)),
        ];
        let mo = _mm512_maskz_mov_ps(open, vm);
        let wv = [
            _mm512_mul_ps(mo, _mm512_mul_ps(hy, hx)),
            _mm512_mul_ps(mo, _mm512_mul_ps(hy, lx)),
            _mm512_mul_ps(mo, _mm512_mul_ps(ly, hx)),
            _mm512_mul_ps(mo, _mm512_mul_ps(ly, lx)),
        ];
        for j in 0..4 {
            // SAFETY: the lanes enabled in `k` address elements t..t+len of the n-element
            // descriptor slices.
            unsafe {
                _mm512_mask_storeu_epi32(idx[j].as_mut_ptr().add(t).cast(), k, iv[j]);
                _mm512_mask_storeu_ps(w[j].as_mut_ptr().add(t), k, wv[j]);
            }
        }
        if a.gradients {
            for (dst, v) in grads.iter_mut().zip([ly, lx, vm]) {
                // SAFETY: as above (with `gradients` these slices hold n elements).
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(t), k, v) };
            }
            for l in 0..len {
                out.open[a.at + t + l] = (open >> l) & 1 == 1;
                out.grad[a.at + t + l] = (grad >> l) & 1 == 1;
            }
        }
        t += 16;
    }
}
