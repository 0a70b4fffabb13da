//! The AVX-512F kernels that measured faster than their AVX2 siblings: the panel GEMM's register
//! tiles and the point core's rows of 16 and 32 channels, the backward's row and its one-pass
//! row (the other f32 kernels of the AVX-512 table are the AVX2 ones or `avx512_sample`'s, see
//! `avx512_f32_table`).

use super::avx512_sample::{corners16, Corners16, Plane16};
use std::arch::x86_64::*;

/// The panel GEMM's register tile for 32 zmm registers: `MR` rows of 16 output channels, one
/// zmm accumulator per row, one panel load and `MR` broadcasts per `kk` (two panels at once in
/// `tile2`: `MR` <= 14 keeps its 28 accumulators in registers). Written with intrinsics because
/// the portable tile compiled for AVX-512 did not keep this shape (ymm FMAs, gathers across the
/// rows, spilled accumulators: BENCHMARKS.md). `_mm512_fmadd_ps` is the portable tile's
/// `f32::mul_add`, one rounding, in the same `kk` order: the same bits.
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

    /// Two panels side by side: `MR` rows of 32 output channels, two zmm accumulators per row,
    /// each broadcast of `a[i, kk]` feeding both (half the loads per fma of `tile`). Each
    /// element the same `_mm512_fmadd_ps` chain in `kk` order: the same bits.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile2<const MR: usize>(
        kc: usize,
        a: [*const f32; MR],
        b: [*const f32; 2],
        c: [*mut f32; 2],
        ldc: usize,
        resume: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if resume {
            for (i, v) in acc.iter_mut().enumerate() {
                for h in 0..2 {
                    // SAFETY: 16 values at c[h] + i*ldc, i < MR (the contract).
                    v[h] = unsafe { _mm512_loadu_ps(c[h].add(i * ldc)) };
                }
            }
        }
        for kk in 0..kc {
            // SAFETY: 16 values at b[h] + kk*16, kk < kc (the contract).
            let bv = b.map(|b| unsafe { _mm512_loadu_ps(b.add(kk * super::panel_gemm::NR)) });
            for (v, row) in acc.iter_mut().zip(a) {
                // SAFETY: row + kk is readable, kk < kc (the contract).
                let x = _mm512_set1_ps(unsafe { *row.add(kk) });
                v[0] = _mm512_fmadd_ps(x, bv[0], v[0]);
                v[1] = _mm512_fmadd_ps(x, bv[1], v[1]);
            }
        }
        for (i, v) in acc.into_iter().enumerate() {
            for h in 0..2 {
                // SAFETY: 16 values at c[h] + i*ldc, i < MR (the contract).
                unsafe { _mm512_storeu_ps(c[h].add(i * ldc), v[h]) };
            }
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

/// AVX2's `backward_row` sixteen channels a step for runs of a multiple of 16 channels: `NZ`
/// steps (the point core's 16 and 32 channels, unrolled), or with `NZ == 0` `len / 16` steps
/// (DCNv2's groups of 32 to 512 channels). For gradient samples `acc[4t + j] += sum_c dcol[c] *
/// X[idx_j[t], lo + c]`, element `c` into partial sum `c % 16` (lane `c % 16`), reduced as AVX2
/// reduces its two halves; for open ones the scatter `dX[idx_j[t], lo + c] += w_j[t] * dcol[c]`
/// and, with `cols`, the columns' value `((w0*v0 + w1*v1) + w2*v2) + w3*v3` (+0 for samples
/// not open). The same operations per element in the same order: the same bits.
///
/// # Safety
/// The CPU must support AVX-512F and AVX2; `job.len` is `16 * NZ`, or a multiple of 16 with
/// `NZ == 0`.
#[target_feature(enable = "avx512f,avx2")]
pub(super) unsafe fn backward_row<const NZ: usize>(
    job: &super::RowJob<'_, f32>,
    dcol: &[f32],
    xt: &[f32],
    cols: &mut [f32],
    acc: &mut [f32],
    dx: &mut [f32],
) {
    let (n, len, c, lo, s) = (job.n, job.len, job.c, job.lo, job.s);
    let steps = if NZ == 0 { len / 16 } else { NZ };
    if n == 0 || steps == 0 {
        return;
    }
    let (scatter, columns) = (!dx.is_empty(), !cols.is_empty());
    let super::super::sample::Corners { idx, w: wts, top } = s.corners(n);
    let (open, grad, acc) = (&s.open[..n], &s.grad[..n], &mut acc[..4 * n]);
    assert_eq!(len, 16 * steps, "backward_row: runs of 16 * NZ channels");
    let (xp, dp, cp, gp) = job.backward_ptrs(top, xt, dcol, cols, dx);
    for t in 0..n {
        // Inside `cols` when `columns` (`t < n`, checked above); without, never dereferenced.
        let dst = cp.wrapping_add(t * job.stride);
        if columns && !open[t] {
            for z in 0..steps {
                // SAFETY: elements 16z..16z+16 of the length-`len` run at `dst`.
                unsafe { _mm512_storeu_ps(dst.add(16 * z), _mm512_setzero_ps()) };
            }
        }
        if !grad[t] {
            continue;
        }
        // SAFETY: every corner index is at most `top` and `t < n`: the runs lie inside `xt` and
        // `dcol` (checked above).
        let (src, d) = unsafe {
            (
                idx.map(|v| xp.add(v[t] as usize * c + lo)),
                dp.add(t * job.stride),
            )
        };
        // The same runs of `dx`, inside it with `scatter` (checked above); never dereferenced
        // without.
        let grads = idx.map(|v| gp.wrapping_add(v[t] as usize * c + lo));
        let w = wts.map(|v| _mm512_set1_ps(v[t]));
        let mut sums = [_mm512_setzero_ps(); 4];
        for z in 0..steps {
            // SAFETY: elements 16z..16z+16 of the length-`len` runs `d` and `src[j]`.
            let (dv, v) = unsafe {
                (
                    _mm512_loadu_ps(d.add(16 * z)),
                    src.map(|p| _mm512_loadu_ps(p.add(16 * z))),
                )
            };
            if open[t] {
                if columns {
                    // SAFETY: the CPU supports AVX-512F (this kernel's contract).
                    let col = unsafe { corners::<false>(w, v) };
                    // SAFETY: elements 16z..16z+16 of the run at `dst`, inside `cols`.
                    unsafe { _mm512_storeu_ps(dst.add(16 * z), col) };
                }
                if scatter {
                    for (g, wj) in grads.iter().zip(w) {
                        // SAFETY: elements 16z..16z+16 of a length-`len` run of `dx` (checked).
                        unsafe {
                            let o = _mm512_add_ps(
                                _mm512_loadu_ps(g.add(16 * z)),
                                _mm512_mul_ps(wj, dv),
                            );
                            _mm512_storeu_ps(g.add(16 * z), o);
                        }
                    }
                }
            }
            for (sum, vj) in sums.iter_mut().zip(v) {
                *sum = _mm512_add_ps(*sum, _mm512_mul_ps(dv, vj));
            }
        }
        // Partial sums 0-7 and 8-15 of each corner, reduced as the AVX2 kernel does.
        let lo8 = sums.map(|v| _mm512_castps512_ps256(v));
        let hi8 = sums.map(|v| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
        let four = super::avx2_f32::reduce16x4(lo8, hi8);
        let a4 = &mut acc[4 * t..4 * t + 4];
        // SAFETY: `a4` holds 4 f32; each lane gets one addition, as in the AVX2 kernel.
        unsafe { _mm_storeu_ps(a4.as_mut_ptr(), _mm_add_ps(_mm_loadu_ps(a4.as_ptr()), four)) };
    }
}

/// One sample's four corners `v` weighted by `w`: `FUSED`, the point core's forward,
/// `fma(w3, v3, fma(w2, v2, fma(w1, v1, w0*v0)))`; else DCNv2's columns, `((w0*v0 + w1*v1) +
/// w2*v2) + w3*v3`. Every AVX-512 kernel that forms samples combines its corners here, inlined
/// into it; callers pass registers already loaded (an `array::map` of the loads does not inline).
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline(always)]
pub(super) unsafe fn corners<const FUSED: bool>(w: [__m512; 4], v: [__m512; 4]) -> __m512 {
    // SAFETY: the CPU supports AVX-512F (the contract).
    unsafe {
        let mut acc = _mm512_mul_ps(w[0], v[0]);
        for j in 1..4 {
            acc = if FUSED {
                _mm512_fmadd_ps(w[j], v[j], acc)
            } else {
                _mm512_add_ps(acc, _mm512_mul_ps(w[j], v[j]))
            };
        }
        acc
    }
}

/// The gather for channel runs of exactly `16 * NZ` channels, each element's sum over `points`
/// points in `NZ` zmm registers, stored once (the point core's forward row, `FUSED`; with one
/// point and not `FUSED`, the columns' gather). Per point the portable body's operations: not
/// `FUSED`, AVX2's `gather_row` (`((w0*s0 + w1*s1) + w2*s2) + w3*s3`); `FUSED`, `fma(w3, s3,
/// fma(w2, s2, fma(w1, s1, w0*s0)))`; the first point's sample the start of the sum and each
/// next one added to it.
///
/// # Safety
/// The CPU must support AVX-512F; `job.len == 16 * NZ`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gather_points<const NZ: usize, const FUSED: bool>(
    job: &super::RowJob<'_, f32>,
    points: usize,
    xt: &[f32],
    cols: &mut [f32],
) {
    let (n, c, lo, s) = (job.n, job.c, job.lo, job.s);
    let len = 16 * NZ;
    if n == 0 || points == 0 {
        return;
    }
    let total = n
        .checked_mul(points)
        .expect("descriptors of a row fit in memory");
    let super::super::sample::Corners { idx, w: wts, top } = s.corners(total);
    assert!(
        job.len == len
            && top * c + lo + len <= xt.len()
            && (n - 1) * job.stride + len <= cols.len(),
        "descriptor runs lie inside the image and the columns tile"
    );
    let (xp, cp) = (xt.as_ptr(), cols.as_mut_ptr());
    // The sample of descriptor `i`, channels 16z..16z+16.
    let sample = |i: usize| -> [__m512; NZ] {
        // SAFETY: `i < total`, the length of every descriptor slice; every corner index is at
        // most `top`, so each run of `len` lies inside `xt` (checked above).
        unsafe {
            let src = idx.map(|v| xp.add(*v.get_unchecked(i) as usize * c + lo));
            let w = wts.map(|v| _mm512_set1_ps(*v.get_unchecked(i)));
            std::array::from_fn(|z| {
                let l = |j: usize| _mm512_loadu_ps(src[j].add(16 * z));
                corners::<FUSED>(w, [l(0), l(1), l(2), l(3)])
            })
        }
    };
    for t in 0..n {
        let mut acc = sample(t);
        for k in 1..points {
            let v = sample(k * n + t);
            for z in 0..NZ {
                acc[z] = _mm512_add_ps(acc[z], v[z]);
            }
        }
        for (z, v) in acc.into_iter().enumerate() {
            // SAFETY: `t < n`: elements 16z..16z+16 of the run at t*stride lie inside `cols`.
            unsafe { _mm512_storeu_ps(cp.add(t * job.stride + 16 * z), v) };
        }
    }
}

/// [`super::PointsBack`] for groups of `16 * NZ` channels: block by block of sixteen elements
/// (`super::BACK_BLOCK`), per point, their descriptors in zmm registers (`sample_row`'s
/// operations with gradient fields, the corners as element offsets of the image, -1 outside),
/// then element by element `point_row`'s scatter and dot products (zeros read for corners
/// outside, whose scatter goes nowhere), then the sixteen elements' position and weight
/// gradients in zmm registers (the point core's formulas, the same operations in the same
/// order). The same bits.
///
/// # Safety
/// The CPU must support AVX-512F and AVX2.
#[target_feature(enable = "avx512f,avx2")]
pub(super) unsafe fn points_back<const NZ: usize>(
    r: &super::PointsBack<'_, f32>,
    dx: &mut [f32],
    grads: [&mut [f32]; 3],
) {
    let (len, c, lo) = (r.len, r.c, r.lo);
    let d = 16 * NZ;
    if len == 0 {
        return;
    }
    assert!(
        r.inside(d, dx, &grads),
        "points_back: rows inside their buffers, planes inside the image"
    );
    let [gy, gx, gm] = grads;
    let (one, zero) = (_mm512_set1_ps(1.0), _mm512_setzero_ps());
    let cv = _mm512_set1_epi32(c as i32);
    // Entry `4t + j` of the dot-product tile, for the gathers that read it back by corner.
    let by_corner = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(4),
    );
    let (xp, dp, gp) = (r.image.as_ptr(), r.dout.as_ptr(), dx.as_mut_ptr());
    // What a corner outside its plane reads.
    let zeros = [0f32; 32];
    let mut offs = [[0i32; 16]; 4];
    let mut wts = [[0f32; 16]; 4];
    let mut dots = [[0f32; 4]; 16];
    let small = super::indices_exact_in_f32(r.image.len());
    const { assert!(super::BACK_BLOCK == 16) };
    // Blocks of 16 elements, in each every point (`super::BACK_BLOCK`).
    for t0 in (0..len).step_by(super::BACK_BLOCK) {
        for (k, &[h, w, s]) in r.planes.iter().enumerate() {
            let plane = Plane16 {
                hf: _mm512_set1_ps(h as i64 as f32),
                wf: _mm512_set1_ps(w as i64 as f32),
                h: _mm512_set1_epi32(h as i32),
                w: _mm512_set1_epi32(w as i32),
                start: _mm512_set1_epi32((s * c + lo) as i32),
                step: cv,
                row: _mm512_set1_epi32((w * c) as i32),
                outside: _mm512_set1_epi32(-1),
            };
            let n = (len - t0).min(16);
            let kt: __mmask16 = (u32::MAX >> (32 - n)) as u16;
            let at = k * len + t0;
            // SAFETY: the lanes enabled in `kt` address entries at..at+n of rows of `all`.
            let load = |v: &[f32]| unsafe { _mm512_maskz_loadu_ps(kt, v.as_ptr().add(at)) };
            // `sample_row`'s positions without its adds of zero: a -0 position gives the same
            // floors, checks, indices and `ly`.
            let (py, px, vm) = (load(r.y), load(r.x), load(r.m));
            let Corners16 {
                idx: iv,
                w: wv,
                ly,
                lx,
                open,
                ..
            } = if small {
                corners16::<true, true>((py, px, vm), kt, false, &plane)
            } else {
                corners16::<true, false>((py, px, vm), kt, false, &plane)
            };
            let (hy, hx) = (_mm512_sub_ps(one, ly), _mm512_sub_ps(one, lx));
            for j in 0..4 {
                // SAFETY: 16 values each.
                unsafe {
                    _mm512_storeu_si512(offs[j].as_mut_ptr().cast(), iv[j]);
                    _mm512_storeu_ps(wts[j].as_mut_ptr(), wv[j]);
                }
            }
            for (i, four) in dots.iter_mut().enumerate().take(n) {
                if open & (1 << i) == 0 {
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
                let mut sums = [_mm512_setzero_ps(); 4];
                for z in 0..NZ {
                    // SAFETY: element t's run of `dout` (checked above) and the corners' runs.
                    let (dv, v) = unsafe {
                        (
                            _mm512_loadu_ps(dp.add(t * c + lo + 16 * z)),
                            src.map(|q| _mm512_loadu_ps(q.add(16 * z))),
                        )
                    };
                    for j in 0..4 {
                        let o = offs[j][i];
                        if o >= 0 {
                            let wj = _mm512_set1_ps(wts[j][i]);
                            // SAFETY: `dx` is laid out as the image (checked above): the
                            // corner's run lies inside it.
                            unsafe {
                                let g = gp.add(o as usize + 16 * z);
                                _mm512_storeu_ps(
                                    g,
                                    _mm512_add_ps(_mm512_loadu_ps(g), _mm512_mul_ps(wj, dv)),
                                );
                            }
                        }
                    }
                    for (sum, vj) in sums.iter_mut().zip(v) {
                        *sum = _mm512_add_ps(*sum, _mm512_mul_ps(dv, vj));
                    }
                }
                let lo8 = sums.map(|v| _mm512_castps512_ps256(v));
                let hi8 = sums
                    .map(|v| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
                // SAFETY: `four` holds 4 f32.
                unsafe { _mm_storeu_ps(four.as_mut_ptr(), super::avx2_f32::reduce16x4(lo8, hi8)) };
            }
            // SAFETY: the gathers read entries 4i + j, i < 16, of the 64-entry tile.
            let a: [__m512; 4] = std::array::from_fn(|j| unsafe {
                _mm512_mask_i32gather_ps::<4>(
                    zero,
                    open,
                    _mm512_add_epi32(by_corner, _mm512_set1_epi32(j as i32)),
                    dots.as_ptr().cast(),
                )
            });
            let gyv = _mm512_mul_ps(
                vm,
                _mm512_add_ps(
                    _mm512_mul_ps(hx, _mm512_sub_ps(a[2], a[0])),
                    _mm512_mul_ps(lx, _mm512_sub_ps(a[3], a[1])),
                ),
            );
            let gxv = _mm512_mul_ps(
                vm,
                _mm512_add_ps(
                    _mm512_mul_ps(hy, _mm512_sub_ps(a[1], a[0])),
                    _mm512_mul_ps(ly, _mm512_sub_ps(a[3], a[2])),
                ),
            );
            let mut gmv = _mm512_mul_ps(_mm512_mul_ps(hy, hx), a[0]);
            gmv = _mm512_add_ps(gmv, _mm512_mul_ps(_mm512_mul_ps(hy, lx), a[1]));
            gmv = _mm512_add_ps(gmv, _mm512_mul_ps(_mm512_mul_ps(ly, hx), a[2]));
            gmv = _mm512_add_ps(gmv, _mm512_mul_ps(_mm512_mul_ps(ly, lx), a[3]));
            for (out, v) in [(&mut *gy, gyv), (&mut *gx, gxv), (&mut *gm, gmv)] {
                // SAFETY: entries at..at+n of a row of `len` per point (`inside`, checked above);
                // samples without gradients get +0.
                unsafe {
                    _mm512_mask_storeu_ps(
                        out.as_mut_ptr().add(at),
                        kt,
                        _mm512_maskz_mov_ps(open, v),
                    )
                };
            }
        }
    }
}

/// `r` (sixteen rows of sixteen values) transposed in registers: four rounds of sixteen
/// shuffles (pairs, quads, then 128-bit lanes twice), only moves.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs: t[2k] = [r2k[0] r2k+1[0] r2k[1] r2k+1[1] | the same for columns 4-5, 8-9, 12-13],
    // t[2k+1] the columns 2-3, 6-7, 10-11, 14-15.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // Quads: u[4g + m] holds rows 4g..4g+4 of column m + 4l in 128-bit lane l.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, m) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + m / 2], t[4 * g + 2 + m / 2]);
        if m % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xee>(a, b)
        }
    });
    // Lanes: w[4m + h] = lanes (2h, 2h + 1) of u[m] then of u[4 + m] (h = 0, 1); likewise of
    // u[8 + m], u[12 + m] (h = 2, 3).
    let w: [__m512; 16] = std::array::from_fn(|i| {
        let (m, h) = (i / 4, i % 4);
        let (a, b) = if h < 2 {
            (u[m], u[4 + m])
        } else {
            (u[8 + m], u[12 + m])
        };
        if h % 2 == 0 {
            _mm512_shuffle_f32x4::<0x44>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xee>(a, b)
        }
    });
    // Column m + 4l: lane l of u[m], u[4 + m], u[8 + m], u[12 + m].
    std::array::from_fn(|c| {
        let (m, l) = (c % 4, c / 4);
        let (a, b) = (w[4 * m + l / 2], w[4 * m + 2 + l / 2]);
        if l % 2 == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    })
}

/// Sixteen f32 lanes of a zmm register for [`super::interleave::blocks`] (masked loads and
/// stores: the lanes past `n` are not accessed).
struct Zmm16;

impl super::interleave::Lanes<16> for Zmm16 {
    type V = __m512;
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32, n: usize) -> __m512 {
        // SAFETY: the lanes below `n` are readable (the contract); the others are masked off.
        unsafe { _mm512_maskz_loadu_ps(lanes16(n), p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mul(v: __m512, f: f32) -> __m512 {
        _mm512_mul_ps(v, _mm512_set1_ps(f))
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose(rows: [__m512; 16]) -> [__m512; 16] {
        transpose16(rows)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut f32, v: __m512, n: usize) {
        // SAFETY: the lanes below `n` are writable (the contract); the others are masked off.
        unsafe { _mm512_mask_storeu_ps(p, lanes16(n), v) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn stream(p: *mut f32, v: __m512) {
        // SAFETY: sixteen values writable at `p`, 64-byte aligned (the contract).
        unsafe { _mm512_stream_ps(p, v) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fence() {
        _mm_sfence()
    }
}

/// The mask of lanes `0..min(n, 16)`.
#[inline]
fn lanes16(n: usize) -> __mmask16 {
    (((1u32 << n.min(16)) - 1) & 0xffff) as __mmask16
}

/// [`super::Interleave`] sixteen elements at a time through [`transpose16`].
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn interleave(
    job: &super::Interleave<'_, f32>,
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    // SAFETY: the CPU supports AVX-512F (the contract), all `Zmm16` needs.
    unsafe { super::interleave::blocks::<16, Zmm16>(job, dst) }
}

/// [`super::StreamFn`] sixteen values a zmm register ([`super::stream::rows`]).
///
/// # Safety
/// The CPU must support AVX-512F; every element of `src` is initialised.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stream(
    src: &[std::mem::MaybeUninit<f32>],
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    // SAFETY: the CPU supports AVX-512F, all `Zmm16` needs; `src` is initialised (the contract).
    unsafe { super::stream::rows::<16, Zmm16>(src, dst) }
}
