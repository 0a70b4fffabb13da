//! AVX-512F bodies of the two hottest f32 kernels: row descriptors and the gather.
//!
//! The generic bodies in `mod.rs` stay scalar on this path: LLVM does not vectorise the
//! saturating float-to-int casts and the per-pixel corner loops (perf annotate: `vroundss`,
//! `vucomiss`, `vaddss`). These bodies do the same IEEE operations in the same order (a multiply,
//! then an add; no fused multiply-add), 16 lanes at a time with masked tails, so they return
//! bitwise the same results as the portable path.

use super::super::sample::{sample_row_body, RowArgs, RowSamples};
use super::RowJob;
use crate::params::GradGate;
use std::arch::x86_64::*;

/// Descriptors of one row (see `sample_row_body` for the formula), 16 samples per step.
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
    let (dy, dx) = (&a.dy[..n], &a.dx[..n]);
    let m = if a.m.is_empty() {
        None
    } else {
        Some(&a.m[..n])
    };
    let [i0, i1, i2, i3] = &mut out.idx;
    let (i0, i1, i2, i3) = (&mut i0[..n], &mut i1[..n], &mut i2[..n], &mut i3[..n]);
    let [w0, w1, w2, w3] = &mut out.w;
    let (w0, w1, w2, w3) = (&mut w0[..n], &mut w1[..n], &mut w2[..n], &mut w3[..n]);
    let (oly, olx, om) = (&mut out.ly[..n], &mut out.lx[..n], &mut out.m[..n]);
    let (oopen, ograd) = (&mut out.open[..n], &mut out.grad[..n]);

    let one = _mm512_set1_ps(1.0);
    let minus_one = _mm512_set1_ps(-1.0);
    let hf = _mm512_set1_ps(a.h as i64 as f32);
    let wf = _mm512_set1_ps(a.w as i64 as f32);
    let y0 = _mm512_set1_ps(a.y0 as f32);
    let (hi, wi) = (_mm512_set1_epi32(a.h as i32), _mm512_set1_epi32(a.w as i32));
    let outside = _mm512_set1_epi32((a.h * a.w) as i32);
    let ione = _mm512_set1_epi32(1);
    let izero = _mm512_setzero_si512();
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let (x0, sx) = (
        _mm512_set1_epi32(a.x0 as i32),
        _mm512_set1_epi32(a.sx as i32),
    );
    let per_tap = a.gate == GradGate::PerTap;
    let mut t = 0;
    while t < n {
        let rem = n - t;
        let k: __mmask16 = if rem >= 16 { 0xFFFF } else { (1u16 << rem) - 1 };
        // SAFETY: lanes set in `k` address elements t..t+rem of slices of length n; masked-off
        // lanes are not accessed. Same for every masked load and store below.
        let (vdy, vdx, vm) = unsafe {
            (
                _mm512_maskz_loadu_ps(k, dy.as_ptr().add(t)),
                _mm512_maskz_loadu_ps(k, dx.as_ptr().add(t)),
                match m {
                    Some(m) => _mm512_maskz_loadu_ps(k, m.as_ptr().add(t)),
                    None => one,
                },
            )
        };
        let py = _mm512_add_ps(y0, vdy);
        let grid_x = _mm512_add_epi32(
            x0,
            _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(t as i32), iota), sx),
        );
        let px = _mm512_add_ps(_mm512_cvtepi32_ps(grid_x), vdx);
        let open = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(py, minus_one)
            & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(px, minus_one)
            & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(py, hf)
            & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(px, wf);
        let closed = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(py, minus_one)
            & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(px, minus_one)
            & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(py, hf)
            & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(px, wf);
        let grad = if per_tap { closed } else { open };
        let (py, px) = (_mm512_maskz_mov_ps(grad, py), _mm512_maskz_mov_ps(grad, px));
        let fy = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(py);
        let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(px);
        let (ly, lx) = (_mm512_sub_ps(py, fy), _mm512_sub_ps(px, fx));
        let (hy, hx) = (_mm512_sub_ps(one, ly), _mm512_sub_ps(one, lx));
        let (yi, xi) = (_mm512_cvttps_epi32(fy), _mm512_cvttps_epi32(fx));
        let y_lo = grad & _mm512_cmpge_epi32_mask(yi, izero);
        let y_hi = grad & _mm512_cmplt_epi32_mask(_mm512_add_epi32(yi, ione), hi);
        let x_lo = grad & _mm512_cmpge_epi32_mask(xi, izero);
        let x_hi = grad & _mm512_cmplt_epi32_mask(_mm512_add_epi32(xi, ione), wi);
        let base = _mm512_add_epi32(_mm512_mullo_epi32(yi, wi), xi);
        let v0 = _mm512_mask_blend_epi32(y_lo & x_lo, outside, base);
        let v1 = _mm512_mask_blend_epi32(y_lo & x_hi, outside, _mm512_add_epi32(base, ione));
        let below = _mm512_add_epi32(base, wi);
        let v2 = _mm512_mask_blend_epi32(y_hi & x_lo, outside, below);
        let v3 = _mm512_mask_blend_epi32(y_hi & x_hi, outside, _mm512_add_epi32(below, ione));
        let mo = _mm512_maskz_mov_ps(open, vm);
        let q0 = _mm512_mul_ps(mo, _mm512_mul_ps(hy, hx));
        let q1 = _mm512_mul_ps(mo, _mm512_mul_ps(hy, lx));
        let q2 = _mm512_mul_ps(mo, _mm512_mul_ps(ly, hx));
        let q3 = _mm512_mul_ps(mo, _mm512_mul_ps(ly, lx));
        // SAFETY: as for the loads: masked stores to elements t..t+rem of length-n slices.
        unsafe {
            _mm512_mask_storeu_epi32(i0.as_mut_ptr().add(t).cast(), k, v0);
            _mm512_mask_storeu_epi32(i1.as_mut_ptr().add(t).cast(), k, v1);
            _mm512_mask_storeu_epi32(i2.as_mut_ptr().add(t).cast(), k, v2);
            _mm512_mask_storeu_epi32(i3.as_mut_ptr().add(t).cast(), k, v3);
            _mm512_mask_storeu_ps(w0.as_mut_ptr().add(t), k, q0);
            _mm512_mask_storeu_ps(w1.as_mut_ptr().add(t), k, q1);
            _mm512_mask_storeu_ps(w2.as_mut_ptr().add(t), k, q2);
            _mm512_mask_storeu_ps(w3.as_mut_ptr().add(t), k, q3);
        }
        if a.gradients {
            // SAFETY: as above.
            unsafe {
                _mm512_mask_storeu_ps(oly.as_mut_ptr().add(t), k, ly);
                _mm512_mask_storeu_ps(olx.as_mut_ptr().add(t), k, lx);
                _mm512_mask_storeu_ps(om.as_mut_ptr().add(t), k, vm);
            }
            for l in 0..rem.min(16) {
                oopen[t + l] = (open >> l) & 1 == 1;
                ograd[t + l] = (grad >> l) & 1 == 1;
            }
        }
        t += 16;
    }
}

/// `cols[t*stride + c'] = ((w0*s0 + w1*s1) + w2*s2) + w3*s3`, 16 channels per step.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gather_row(job: &RowJob<'_, f32>, xt: &[f32], cols: &mut [f32]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    let (i0, i1, i2, i3) = (
        &s.idx[0][..n],
        &s.idx[1][..n],
        &s.idx[2][..n],
        &s.idx[3][..n],
    );
    let (w0, w1, w2, w3) = (&s.w[0][..n], &s.w[1][..n], &s.w[2][..n], &s.w[3][..n]);
    for t in 0..n {
        let at = |i: u32| i as usize * c + lo;
        // Bounds-checked runs; the vector code below stays inside them.
        let src = [
            &xt[at(i0[t])..][..len],
            &xt[at(i1[t])..][..len],
            &xt[at(i2[t])..][..len],
            &xt[at(i3[t])..][..len],
        ];
        let dst = &mut cols[t * job.stride..t * job.stride + len];
        let w = [
            _mm512_set1_ps(w0[t]),
            _mm512_set1_ps(w1[t]),
            _mm512_set1_ps(w2[t]),
            _mm512_set1_ps(w3[t]),
        ];
        let mut i = 0;
        while i < len {
            let rem = len - i;
            let k: __mmask16 = if rem >= 16 { 0xFFFF } else { (1u16 << rem) - 1 };
            // SAFETY: lanes set in `k` address elements i..i+min(rem,16) of the length-`len`
            // runs `src[j]` and `dst`; masked-off lanes are not accessed.
            unsafe {
                let l = |j: usize| _mm512_maskz_loadu_ps(k, src[j].as_ptr().add(i));
                let mut acc = _mm512_mul_ps(w[0], l(0));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(w[1], l(1)));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(w[2], l(2)));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(w[3], l(3)));
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), k, acc);
            }
            i += 16;
        }
    }
}

/// The generic `dot_body`'s reduction of 16 partial sums, in its order: `acc[l] += acc[l + 8]`,
/// then `+ 4`, `+ 2`, `+ 1`.
#[target_feature(enable = "avx512f")]
fn reduce16(acc: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(acc);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    let v8 = _mm256_add_ps(lo, hi);
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps::<0b01>(v2, v2)))
}

/// `acc[4t + j] += sum_c dcol[t*stride + c] * X[idx_j[t], lo + c]` for gradient samples: 16
/// partial sums per dot product (masked tail adds leave the other lanes untouched), reduced as
/// the generic body reduces them.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot4_row(job: &RowJob<'_, f32>, dcol: &[f32], xt: &[f32], acc: &mut [f32]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    let acc = &mut acc[..4 * n];
    for t in 0..n {
        if !s.grad[t] {
            continue;
        }
        let d = &dcol[t * job.stride..t * job.stride + len];
        let src = [0, 1, 2, 3].map(|j| &xt[s.idx[j][t] as usize * c + lo..][..len]);
        let mut sums = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < len {
            let rem = len - i;
            let k: __mmask16 = if rem >= 16 { 0xFFFF } else { (1u16 << rem) - 1 };
            // SAFETY: lanes in `k` address elements i..i+min(rem,16) of the length-`len` runs.
            let dv = unsafe { _mm512_maskz_loadu_ps(k, d.as_ptr().add(i)) };
            for j in 0..4 {
                // SAFETY: as above.
                let sv = unsafe { _mm512_maskz_loadu_ps(k, src[j].as_ptr().add(i)) };
                sums[j] = _mm512_mask_add_ps(sums[j], k, sums[j], _mm512_mul_ps(dv, sv));
            }
            i += 16;
        }
        for j in 0..4 {
            acc[4 * t + j] += reduce16(sums[j]);
        }
    }
}

/// `dX[idx_j[t], lo + c] += w_j[t] * dcol[t*stride + c]` for open samples, corner by corner.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scatter_row(job: &RowJob<'_, f32>, dcol: &[f32], dx: &mut [f32]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    for t in 0..n {
        if !s.open[t] {
            continue;
        }
        let d = &dcol[t * job.stride..t * job.stride + len];
        for j in 0..4 {
            let w = _mm512_set1_ps(s.w[j][t]);
            let out = &mut dx[s.idx[j][t] as usize * c + lo..][..len];
            let mut i = 0;
            while i < len {
                let rem = len - i;
                let k: __mmask16 = if rem >= 16 { 0xFFFF } else { (1u16 << rem) - 1 };
                // SAFETY: lanes in `k` address elements i..i+min(rem,16) of the length-`len`
                // runs `d` and `out`; masked-off lanes are neither read nor written.
                unsafe {
                    let o = _mm512_maskz_loadu_ps(k, out.as_ptr().add(i));
                    let v = _mm512_add_ps(
                        o,
                        _mm512_mul_ps(w, _mm512_maskz_loadu_ps(k, d.as_ptr().add(i))),
                    );
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, v);
                }
                i += 16;
            }
        }
    }
}
