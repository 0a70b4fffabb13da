//! The explicit AVX2 f32 channel-run kernels, used by the AVX2 and AVX-512 tables: gather,
//! corner dot products, scatter, and the backward's fused row (the descriptors are in
//! `avx2_sample`). Each does the portable body's IEEE operations in the same order (eight
//! lanes, masked tails): bitwise the same results.

use super::RowJob;
use std::arch::x86_64::*;

/// Lane masks for a run's tail: `tail_mask(r)` enables lanes `0..min(r, 8)`.
#[target_feature(enable = "avx2")]
fn tail_mask(rem: usize) -> __m256i {
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(rem.min(8) as i32), iota)
}

/// `cols[t*stride + c'] = ((w0*s0 + w1*s1) + w2*s2) + w3*s3` 8
/// channels per step, the tail through masked loads and stores (masked-off lanes are not
/// accessed).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gather_row(job: &RowJob<'_, f32>, xt: &[f32], cols: &mut [f32]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    if n == 0 || len == 0 {
        return;
    }
    let super::super::sample::Corners { idx, w, top } = s.corners(n);
    let ([i0, i1, i2, i3], [w0, w1, w2, w3]) = (idx, w);
    // One bounds check per row instead of five per pixel: the run of the largest index ends
    // inside `xt`, and the last pixel's run inside `cols`.
    assert!(
        top * c + lo + len <= xt.len() && (n - 1) * job.stride + len <= cols.len(),
        "descriptor runs lie inside the image and the columns tile"
    );
    let (xp, cp) = (xt.as_ptr(), cols.as_mut_ptr());
    let tail = tail_mask(len % 8);
    for t in 0..n {
        // SAFETY: each index is at most `top`, so each run `at .. at + len` lies inside `xt`;
        // `t < n`, so `t*stride .. t*stride + len` lies inside `cols` (both checked above).
        let (src, dst) = unsafe {
            let at = |i: u32| xp.add(i as usize * c + lo);
            (
                [at(i0[t]), at(i1[t]), at(i2[t]), at(i3[t])],
                cp.add(t * job.stride),
            )
        };
        let w = [
            _mm256_set1_ps(w0[t]),
            _mm256_set1_ps(w1[t]),
            _mm256_set1_ps(w2[t]),
            _mm256_set1_ps(w3[t]),
        ];
        let mut i = 0;
        while i + 8 <= len {
            // SAFETY: elements i..i+8 lie inside the length-`len` runs `src[j]` and `dst`.
            unsafe {
                let l = |j: usize| _mm256_loadu_ps(src[j].add(i));
                let mut acc = _mm256_mul_ps(w[0], l(0));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(w[1], l(1)));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(w[2], l(2)));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(w[3], l(3)));
                _mm256_storeu_ps(dst.add(i), acc);
            }
            i += 8;
        }
        if i < len {
            // SAFETY: the lanes enabled in `tail` address elements i..len of the runs; masked-off
            // lanes are neither read nor written.
            unsafe {
                let l = |j: usize| _mm256_maskload_ps(src[j].add(i), tail);
                let mut acc = _mm256_mul_ps(w[0], l(0));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(w[1], l(1)));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(w[2], l(2)));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(w[3], l(3)));
                _mm256_maskstore_ps(dst.add(i), tail, acc);
            }
        }
    }
}

/// The generic `dot_body`'s reduction of its 16 partial sums, for the four corners at once:
/// corner `j`'s sums are lanes 0-7 in `a[j]` and 8-15 in `b[j]`, reduced in the generic order
/// (`acc[l] += acc[l + 8]`, then `+ 4`, `+ 2`, `+ 1`), every addition the generic body's own;
/// the result holds corner `j` in lane `j`. (One corner at a time took 4 horizontal reductions
/// of 7 instructions each per pixel, as much as the products at 8 channels per run.)
#[target_feature(enable = "avx2")]
pub(super) fn reduce16x4(a: [__m256; 4], b: [__m256; 4]) -> __m128 {
    // + 8: v[j] = a[j] + b[j].
    let v: [__m256; 4] = std::array::from_fn(|j| _mm256_add_ps(a[j], b[j]));
    // + 4: [lo(v0) | lo(v1)] + [hi(v0) | hi(v1)] = [u0 | u1], likewise [u2 | u3].
    let p = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(v[0], v[1]),
        _mm256_permute2f128_ps::<0x31>(v[0], v[1]),
    );
    let q = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(v[2], v[3]),
        _mm256_permute2f128_ps::<0x31>(v[2], v[3]),
    );
    // + 2: [u0[0]+u0[2], u0[1]+u0[3], u2[0]+u2[2], u2[1]+u2[3] | the same for u1, u3].
    let r = _mm256_add_ps(
        _mm256_shuffle_ps::<0b01_00_01_00>(p, q),
        _mm256_shuffle_ps::<0b11_10_11_10>(p, q),
    );
    // + 1: [w0, w2, w0, w2 | w1, w3, w1, w3].
    let w = _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(r, r),
        _mm256_shuffle_ps::<0b11_01_11_01>(r, r),
    );
    // [w0, w1, w2, w3].
    _mm_unpacklo_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps::<1>(w))
}

/// `acc[4t + j] += sum_c dcol[t*stride + c] * X[idx_j[t], lo + c]` for gradient samples, with the
/// generic body's 16 partial sums (element `c` into sum `c % 16`) as two 8-lane registers. Tail
/// lanes add `0 * 0 = +0`, which leaves a partial sum unchanged: a sum that starts at +0 and adds
/// products is never -0, so `+0` is an exact identity for it (NaN and infinities included).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot4_row(job: &RowJob<'_, f32>, dcol: &[f32], xt: &[f32], acc: &mut [f32]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    let acc = &mut acc[..4 * n];
    for t in 0..n {
        if !s.grad[t] {
            continue;
        }
        let d = &dcol[t * job.stride..t * job.stride + len];
        let at = |j: usize| s.idx[j][t] as usize * c + lo;
        let src = [
            &xt[at(0)..][..len],
            &xt[at(1)..][..len],
            &xt[at(2)..][..len],
            &xt[at(3)..][..len],
        ];
        // halves[h][j]: partial sums 8h..8h+8 of corner j.
        let mut halves = [[_mm256_setzero_ps(); 4]; 2];
        let mut i = 0;
        while i < len {
            // Half h of this 16-element chunk: elements i + 8h .. i + 8h + 8.
            for (h, sums) in halves.iter_mut().enumerate() {
                let at = i + 8 * h;
                if at >= len {
                    break;
                }
                let full = at + 8 <= len;
                let k = tail_mask(len - at);
                // SAFETY: a full step reads elements at..at+8 of the length-`len` runs; a tail
                // step reads only the lanes enabled in `k` (at..len), the others load as 0.
                // (Masked loads only for the tail: `vmaskmovps` is slow on some CPUs.)
                let load = |p: &[f32]| unsafe {
                    if full {
                        _mm256_loadu_ps(p.as_ptr().add(at))
                    } else {
                        _mm256_maskload_ps(p.as_ptr().add(at), k)
                    }
                };
                let dv = load(d);
                for (sum, run) in sums.iter_mut().zip(&src) {
                    *sum = _mm256_add_ps(*sum, _mm256_mul_ps(dv, load(run)));
                }
            }
            i += 16;
        }
        let sums = reduce16x4(halves[0], halves[1]);
        let a4 = &mut acc[4 * t..4 * t + 4];
        // SAFETY: `a4` holds 4 f32; each lane gets the generic body's one addition.
        unsafe { _mm_storeu_ps(a4.as_mut_ptr(), _mm_add_ps(_mm_loadu_ps(a4.as_ptr()), sums)) };
    }
}

/// The backward's work on one row in one pass, each corner run loaded once per pixel:
/// - when `cols` is not empty, `cols[t*stride + c] = ((w0*s0 + w1*s1) + w2*s2) + w3*s3` for open
///   samples, +0 for the others (as `gather_row` with the forward's descriptors);
/// - `acc[4t + j] += sum_c dcol[t*stride + c] * X[idx_j[t], lo + c]` for gradient samples (as
///   `dot4_row`);
/// - when `dx` is not empty, `dX[idx_j[t], lo + c] += w_j[t] * dcol[t*stride + c]` for open
///   samples (as `scatter_row`; a pixel's four corners are four different pixels, or the
///   zero pixel's garbage row, so the order within a pixel changes no bit).
///
/// The same operations in the same order as the three kernels: the same bits, with each corner
/// run loaded once and each `dcol` run once (the three kernels in turn load them 2 and 3 times).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn backward_row(
    job: &RowJob<'_, f32>,
    dcol: &[f32],
    xt: &[f32],
    cols: &mut [f32],
    acc: &mut [f32],
    dx: &mut [f32],
) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    if n == 0 || len == 0 {
        return;
    }
    let (scatter, columns) = (!dx.is_empty(), !cols.is_empty());
    let super::super::sample::Corners { idx, w: wts, top } = s.corners(n);
    let (open, grad, acc) = (&s.open[..n], &s.grad[..n], &mut acc[..4 * n]);
    // One bounds check per row: the run of the largest index ends inside `xt`, the last pixel's
    // runs inside `dcol` and `cols`.
    let last = (n - 1) * job.stride + len;
    assert!(
        top * c + lo + len <= xt.len()
            && (!scatter || top * c + lo + len <= dx.len())
            && last <= dcol.len()
            && (!columns || last <= cols.len()),
        "descriptor runs lie inside the image, dX, dcol and the columns tile"
    );
    let (xp, dp, cp, gp) = (
        xt.as_ptr(),
        dcol.as_ptr(),
        cols.as_mut_ptr(),
        dx.as_mut_ptr(),
    );
    let zero = _mm256_setzero_ps();
    for t in 0..n {
        // Inside `cols` when `columns` (`t < n`, checked above); without, never dereferenced.
        let dst = cp.wrapping_add(t * job.stride);
        if columns && !open[t] {
            let mut i = 0;
            while i + 8 <= len {
                // SAFETY: elements i..i+8 of the length-`len` run at `dst`.
                unsafe { _mm256_storeu_ps(dst.add(i), zero) };
                i += 8;
            }
            if i < len {
                // SAFETY: only the lanes enabled in the mask (elements i..len of the run).
                unsafe { _mm256_maskstore_ps(dst.add(i), tail_mask(len - i), zero) };
            }
        }
        if !grad[t] {
            continue;
        }
        // SAFETY: each corner index is at most `top`, so each corner run `at .. at + len` lies
        // inside `xt`; `t < n`, so `t*stride .. t*stride + len` lies inside `dcol` (both checked
        // above).
        let (src, d) = unsafe {
            (
                idx.map(|v| xp.add(v[t] as usize * c + lo)),
                dp.add(t * job.stride),
            )
        };
        // The same runs in `dx`, inside it with `scatter` (checked above); without, `dx` is empty
        // and these are never dereferenced (so no in-bounds `add` on its dangling pointer).
        let grads = idx.map(|v| gp.wrapping_add(v[t] as usize * c + lo));
        let w = wts.map(|v| _mm256_set1_ps(v[t]));
        let value = open[t];
        // halves[h][j]: partial sums 8h..8h+8 of corner j, as in `dot4_row`.
        let mut halves = [[_mm256_setzero_ps(); 4]; 2];
        let mut i = 0;
        while i < len {
            for (h, sums) in halves.iter_mut().enumerate() {
                let at = i + 8 * h;
                if at >= len {
                    break;
                }
                let full = at + 8 <= len;
                let k = tail_mask(len - at);
                // SAFETY: `p` is one of the length-`len` runs above; a full step reads its
                // elements at..at+8, a tail step only the lanes enabled in `k` (at..len), the
                // others load as 0 (and are never stored).
                let load = |p: *const f32| unsafe {
                    if full {
                        _mm256_loadu_ps(p.add(at))
                    } else {
                        _mm256_maskload_ps(p.add(at), k)
                    }
                };
                let v = src.map(load);
                let dv = load(d);
                if value {
                    let mut col = _mm256_mul_ps(w[0], v[0]);
                    col = _mm256_add_ps(col, _mm256_mul_ps(w[1], v[1]));
                    col = _mm256_add_ps(col, _mm256_mul_ps(w[2], v[2]));
                    col = _mm256_add_ps(col, _mm256_mul_ps(w[3], v[3]));
                    if columns {
                        // SAFETY: elements at..at+8 of the length-`len` run at `dst` (inside
                        // `cols` with `columns`), or for a tail step only the lanes enabled in `k`.
                        unsafe {
                            if full {
                                _mm256_storeu_ps(dst.add(at), col);
                            } else {
                                _mm256_maskstore_ps(dst.add(at), k, col);
                            }
                        }
                    }
                    if scatter {
                        for (g, wj) in grads.iter().zip(w) {
                            // SAFETY: as for `load` and the store above, on the corner runs of
                            // `dx` (the same indices as in `xt`, checked against `dx.len()`).
                            unsafe {
                                let o = _mm256_add_ps(load(*g), _mm256_mul_ps(wj, dv));
                                if full {
                                    _mm256_storeu_ps(g.add(at), o);
                                } else {
                                    _mm256_maskstore_ps(g.add(at), k, o);
                                }
                            }
                        }
                    }
                }
                for (sum, vj) in sums.iter_mut().zip(v) {
                    *sum = _mm256_add_ps(*sum, _mm256_mul_ps(dv, vj));
                }
            }
            i += 16;
        }
        let sums = reduce16x4(halves[0], halves[1]);
        let a4 = &mut acc[4 * t..4 * t + 4];
        // SAFETY: `a4` holds 4 f32; each lane gets the generic body's one addition.
        unsafe { _mm_storeu_ps(a4.as_mut_ptr(), _mm_add_ps(_mm_loadu_ps(a4.as_ptr()), sums)) };
    }
}

/// `dX[idx_j[t], lo + c] += w_j[t] * dcol[t*stride + c]` for open samples, corner by corner.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn scatter_row(job: &RowJob<'_, f32>, dcol: &[f32], dx: &mut [f32]) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    for t in 0..n {
        if !s.open[t] {
            continue;
        }
        let d = &dcol[t * job.stride..t * job.stride + len];
        for j in 0..4 {
            let w = _mm256_set1_ps(s.w[j][t]);
            let out = &mut dx[s.idx[j][t] as usize * c + lo..][..len];
            let mut i = 0;
            while i + 8 <= len {
                // SAFETY: elements i..i+8 lie inside the length-`len` runs `d` and `out`.
                unsafe {
                    let o = _mm256_loadu_ps(out.as_ptr().add(i));
                    let v = _mm256_add_ps(o, _mm256_mul_ps(w, _mm256_loadu_ps(d.as_ptr().add(i))));
                    _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
                }
                i += 8;
            }
            if i < len {
                let k = tail_mask(len - i);
                // SAFETY: the lanes enabled in `k` address elements i..len of the runs `d` and
                // `out`; masked-off lanes are neither read nor written.
                unsafe {
                    let o = _mm256_maskload_ps(out.as_ptr().add(i), k);
                    let v = _mm256_add_ps(
                        o,
                        _mm256_mul_ps(w, _mm256_maskload_ps(d.as_ptr().add(i), k)),
                    );
                    _mm256_maskstore_ps(out.as_mut_ptr().add(i), k, v);
                }
            }
        }
    }
}
