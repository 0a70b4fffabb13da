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

/// A row's run length: `RUN` where a kernel is compiled for one (the job must have it), else
/// the job's.
#[inline(always)]
fn run_length<const RUN: usize>(job: &RowJob<'_, f32>) -> usize {
    if RUN == 0 {
        job.len
    } else {
        assert_eq!(job.len, RUN, "a kernel compiled for runs of {RUN} channels");
        RUN
    }
}

/// `cols[t*stride + c'] = ((w0*s0 + w1*s1) + w2*s2) + w3*s3` 8
/// channels per step, the tail through masked loads and stores (masked-off lanes are not
/// accessed). `RUN > 0`: compiled for runs of exactly `RUN` channels (no loop left over the
/// run, no tail: fewer instructions a sample, more samples' corner loads in flight).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gather_row<const RUN: usize>(
    job: &RowJob<'_, f32>,
    xt: &[f32],
    cols: &mut [f32],
) {
    let (n, len, c, lo, s) = (job.n, run_length::<RUN>(job), job.c, job.lo, job.s);
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
/// `RUN > 0`: compiled for runs of exactly `RUN` channels, as [`gather_row`].
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn backward_row<const RUN: usize>(
    job: &RowJob<'_, f32>,
    dcol: &[f32],
    xt: &[f32],
    cols: &mut [f32],
    acc: &mut [f32],
    dx: &mut [f32],
) {
    let (n, len, c, lo, s) = (job.n, run_length::<RUN>(job), job.c, job.lo, job.s);
    if n == 0 || len == 0 {
        return;
    }
    let (scatter, columns) = (!dx.is_empty(), !cols.is_empty());
    let super::super::sample::Corners { idx, w: wts, top } = s.corners(n);
    let (open, grad, acc) = (&s.open[..n], &s.grad[..n], &mut acc[..4 * n]);
    // One bounds check per row: the run of the largest index ends inside `xt`, the last pixel's
    // runs inside `dcol` and `cols`.
    let (xp, dp, cp, gp) = job.backward_ptrs(top, xt, dcol, cols, dx);
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

/// [`super::PointsBack`] for groups of `8 * V` channels (8, 16, 32), as AVX-512's `points_back`
/// in eight lanes: block by block of `BACK_BLOCK` elements, per point, eight elements'
/// descriptors at a time in ymm registers
/// (`corners8`, the corners as element offsets of the image, -1 outside), then element by
/// element the scatter and the dot products (zeros read for corners outside, whose scatter goes
/// nowhere), element `c` into partial sum `c % 16` (two registers, as `backward_row`) reduced by
/// [`reduce16x4`], then the eight elements' position and weight gradients in ymm registers (the
/// point core's formulas, the same operations in the same order). The same bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn points_back<const V: usize>(
    r: &super::PointsBack<'_, f32>,
    dx: &mut [f32],
    grads: [&mut [f32]; 3],
) {
    use super::avx2_sample::{corners8, Corners8, Plane8};
    let (len, c, lo) = (r.len, r.c, r.lo);
    let d = 8 * V;
    if len == 0 {
        return;
    }
    assert!(
        r.inside(d, dx, &grads),
        "points_back: rows inside their buffers, planes inside the image"
    );
    let [gy, gx, gm] = grads;
    let one = _mm256_set1_ps(1.0);
    let cv = _mm256_set1_epi32(c as i32);
    let (xp, dp, gp) = (r.image.as_ptr(), r.dout.as_ptr(), dx.as_mut_ptr());
    // What a corner outside its plane reads.
    let zeros = [0f32; 32];
    let small = super::indices_exact_in_f32(r.image.len());
    let mut offs = [[0i32; 8]; 4];
    let mut wts = [[0f32; 8]; 4];
    // Element i's four dot products.
    let mut dots = [_mm_setzero_ps(); 8];
    // Blocks of `BACK_BLOCK` elements, in each every point, eight elements at a time.
    for tb in (0..len).step_by(super::BACK_BLOCK) {
        for (k, &[h, w, s]) in r.planes.iter().enumerate() {
            let plane = Plane8 {
                hf: _mm256_set1_ps(h as i64 as f32),
                wf: _mm256_set1_ps(w as i64 as f32),
                h: _mm256_set1_epi32(h as i32),
                w: _mm256_set1_epi32(w as i32),
                start: _mm256_set1_epi32((s * c + lo) as i32),
                step: cv,
                row: _mm256_set1_epi32((w * c) as i32),
                outside: _mm256_set1_epi32(-1),
            };
            for t0 in (tb..(tb + super::BACK_BLOCK).min(len)).step_by(8) {
                let n = (len - t0).min(8);
                let kt = tail_mask(n);
                let at = k * len + t0;
                // SAFETY: the lanes enabled in `kt` address entries at..at+n of rows of `all`;
                // masked-off lanes are not accessed.
                let load = |v: &[f32]| unsafe { _mm256_maskload_ps(v.as_ptr().add(at), kt) };
                // `sample_row`'s positions without its adds of zero: a -0 position gives the
                // same floors, checks, indices and `ly`.
                let (py, px, vm) = (load(r.y), load(r.x), load(r.m));
                let Corners8 {
                    idx: iv,
                    w: wv,
                    ly,
                    lx,
                    open,
                    ..
                } = if small {
                    corners8::<true, true>((py, px, vm), _mm256_castsi256_ps(kt), false, &plane)
                } else {
                    corners8::<true, false>((py, px, vm), _mm256_castsi256_ps(kt), false, &plane)
                };
                let (hy, hx) = (_mm256_sub_ps(one, ly), _mm256_sub_ps(one, lx));
                for j in 0..4 {
                    // SAFETY: 8 values each.
                    unsafe {
                        _mm256_storeu_si256(offs[j].as_mut_ptr().cast(), iv[j]);
                        _mm256_storeu_ps(wts[j].as_mut_ptr(), wv[j]);
                    }
                }
                let open_bits = _mm256_movemask_ps(open);
                for (i, four) in dots.iter_mut().enumerate().take(n) {
                    if open_bits & (1 << i) == 0 {
                        continue;
                    }
                    let t = t0 + i;
                    let src: [*const f32; 4] = std::array::from_fn(|j| {
                        let o = offs[j][i];
                        if o < 0 {
                            zeros.as_ptr()
                        } else {
                            // SAFETY: a corner inside its plane has an offset `>= 0` whose run of
                            // `d` lies inside the image (the planes and `lo + d <= c` checked).
                            unsafe { xp.add(o as usize) }
                        }
                    });
                    // Partial sums of channels c % 16 < 8 and >= 8.
                    let mut sums = [[_mm256_setzero_ps(); 4]; 2];
                    for z in 0..V {
                        // SAFETY: element t's run of `dout` (checked above) and the corners' runs.
                        let (dv, v) = unsafe {
                            (
                                _mm256_loadu_ps(dp.add(t * c + lo + 8 * z)),
                                src.map(|q| _mm256_loadu_ps(q.add(8 * z))),
                            )
                        };
                        for j in 0..4 {
                            let o = offs[j][i];
                            if o >= 0 {
                                let wj = _mm256_set1_ps(wts[j][i]);
                                // SAFETY: `dx` is laid out as the image (checked above): the
                                // corner's run lies inside it.
                                unsafe {
                                    let g = gp.add(o as usize + 8 * z);
                                    _mm256_storeu_ps(
                                        g,
                                        _mm256_add_ps(_mm256_loadu_ps(g), _mm256_mul_ps(wj, dv)),
                                    );
                                }
                            }
                        }
                        for (sum, vj) in sums[z % 2].iter_mut().zip(v) {
                            *sum = _mm256_add_ps(*sum, _mm256_mul_ps(dv, vj));
                        }
                    }
                    *four = reduce16x4(sums[0], sums[1]);
                }
                // Element i's dots in lane i, by corner: the 8x4 tile transposed.
                let pair = |i: usize| _mm256_set_m128(dots[i + 4], dots[i]);
                let (r0, r1, r2, r3) = (pair(0), pair(1), pair(2), pair(3));
                let (t0v, t1v) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                let (t2v, t3v) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                let a = [
                    _mm256_shuffle_ps::<0b01_00_01_00>(t0v, t2v),
                    _mm256_shuffle_ps::<0b11_10_11_10>(t0v, t2v),
                    _mm256_shuffle_ps::<0b01_00_01_00>(t1v, t3v),
                    _mm256_shuffle_ps::<0b11_10_11_10>(t1v, t3v),
                ];
                let gyv = _mm256_mul_ps(
                    vm,
                    _mm256_add_ps(
                        _mm256_mul_ps(hx, _mm256_sub_ps(a[2], a[0])),
                        _mm256_mul_ps(lx, _mm256_sub_ps(a[3], a[1])),
                    ),
                );
                let gxv = _mm256_mul_ps(
                    vm,
                    _mm256_add_ps(
                        _mm256_mul_ps(hy, _mm256_sub_ps(a[1], a[0])),
                        _mm256_mul_ps(ly, _mm256_sub_ps(a[3], a[2])),
                    ),
                );
                let mut gmv = _mm256_mul_ps(_mm256_mul_ps(hy, hx), a[0]);
                gmv = _mm256_add_ps(gmv, _mm256_mul_ps(_mm256_mul_ps(hy, lx), a[1]));
                gmv = _mm256_add_ps(gmv, _mm256_mul_ps(_mm256_mul_ps(ly, hx), a[2]));
                gmv = _mm256_add_ps(gmv, _mm256_mul_ps(_mm256_mul_ps(ly, lx), a[3]));
                for (out, v) in [(&mut *gy, gyv), (&mut *gx, gxv), (&mut *gm, gmv)] {
                    // SAFETY: entries at..at+n of a row of `len` per point (`inside`, checked
                    // above); samples without gradients get +0.
                    unsafe {
                        _mm256_maskstore_ps(out.as_mut_ptr().add(at), kt, _mm256_and_ps(open, v))
                    };
                }
            }
        }
    }
}

/// `r` (eight rows of eight values) transposed in registers: unpacks, shuffles, then 128-bit
/// halves; only moves.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // Columns j and j + 4 of rows 0-3 (tt[j]) and of rows 4-7 (tt[4 + j]).
    let tt: [__m256; 8] = std::array::from_fn(|i| {
        let (g, m) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + m / 2], t[4 * g + 2 + m / 2]);
        if m % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xee>(a, b)
        }
    });
    std::array::from_fn(|c| {
        let j = c % 4;
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(tt[j], tt[4 + j])
        } else {
            _mm256_permute2f128_ps::<0x31>(tt[j], tt[4 + j])
        }
    })
}

/// Eight f32 lanes of a ymm register for [`super::interleave::blocks`] (masked loads and
/// stores: the lanes past `n` are not accessed).
struct Ymm8;

impl super::interleave::Lanes<8> for Ymm8 {
    type V = __m256;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const f32, n: usize) -> __m256 {
        // SAFETY: the lanes below `n` are readable (the contract); the others are masked off (a
        // full register is one plain load: `vmaskmovps` costs more).
        unsafe {
            if n >= 8 {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, tail_mask(n))
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn mul(v: __m256, f: f32) -> __m256 {
        _mm256_mul_ps(v, _mm256_set1_ps(f))
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn transpose(rows: [__m256; 8]) -> [__m256; 8] {
        transpose8(rows)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(p: *mut f32, v: __m256, n: usize) {
        // SAFETY: the lanes below `n` are writable (the contract); the others are masked off.
        unsafe { _mm256_maskstore_ps(p, tail_mask(n), v) }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn stream(p: *mut f32, v: __m256) {
        // SAFETY: eight values writable at `p`, 32-byte aligned (the contract).
        unsafe { _mm256_stream_ps(p, v) }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn fence() {
        _mm_sfence()
    }
}

/// [`super::Interleave`] eight elements at a time through [`transpose8`].
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn interleave(
    job: &super::Interleave<'_, f32>,
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    // SAFETY: the CPU supports AVX2 (the contract), all `Ymm8` needs.
    unsafe { super::interleave::blocks::<8, Ymm8>(job, dst) }
}

/// `dst[x*k + r] = src[r*row_stride + x]` for `r < k`, `x < w` (the engine's NCHW to
/// channels-last copy, `pack::transpose_rows`): blocks of 8 rows by 8 pixels transposed in
/// registers, one 8-channel store per pixel; the rest element by element. Copies only: the same
/// bits.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose_rows(
    src: &[f32],
    row_stride: usize,
    w: usize,
    k: usize,
    dst: &mut [f32],
) {
    if w == 0 || k == 0 {
        return;
    }
    assert!(
        (k - 1)
            .checked_mul(row_stride)
            .and_then(|v| v.checked_add(w))
            .is_some_and(|end| end <= src.len())
            && w.checked_mul(k).is_some_and(|n| n <= dst.len()),
        "transpose_rows: k rows of w inside src, w pixels of k inside dst"
    );
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let mut r0 = 0;
    while r0 + 8 <= k {
        let mut x = 0;
        while x + 8 <= w {
            // SAFETY: rows r0..r0+8 < k, elements x..x+8 <= w of each (checked above); pixels
            // x..x+8 < w, channels r0..r0+8 <= k of each.
            unsafe {
                let r: [__m256; 8] =
                    std::array::from_fn(|i| _mm256_loadu_ps(sp.add((r0 + i) * row_stride + x)));
                for (j, v) in transpose8(r).into_iter().enumerate() {
                    _mm256_storeu_ps(dp.add((x + j) * k + r0), v);
                }
            }
            x += 8;
        }
        for x in x..w {
            for r in r0..r0 + 8 {
                dst[x * k + r] = src[r * row_stride + x];
            }
        }
        r0 += 8;
    }
    for r in r0..k {
        for x in 0..w {
            dst[x * k + r] = src[r * row_stride + x];
        }
    }
}

/// [`super::StreamFn`] eight values a ymm register ([`super::stream::rows`]).
///
/// # Safety
/// The CPU must support AVX2; every element of `src` is initialised.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn stream(
    src: &[std::mem::MaybeUninit<f32>],
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    // SAFETY: the CPU supports AVX2, all `Ymm8` needs; `src` is initialised (the contract).
    unsafe { super::stream::rows::<8, Ymm8>(src, dst) }
}
