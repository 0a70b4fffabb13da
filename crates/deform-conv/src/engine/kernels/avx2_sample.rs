//! The explicit AVX2 f32 descriptors, formed in one place ([`corners8`]): the row descriptors
//! (`sample_row`, used by the AVX2 and AVX-512 tables) and the point core's one-pass forward row
//! (`points_row`, the AVX2 table's): the portable body's IEEE operations in the same order, eight
//! samples per step: bitwise the same results.

use super::super::sample::{sample_row_body, RowArgs, RowSamples};
use crate::params::GradGate;
use std::arch::x86_64::*;

/// How [`corners8`] forms a plane's corner indices, per lane: `start + (y*w + x) * step` (no
/// multiply when `SCALED` is false: `step` 1), `row = w * step` apart vertically, `outside` for
/// a corner outside the plane; and the plane's size (also as floats).
#[derive(Clone, Copy)]
pub(super) struct Plane8 {
    pub hf: __m256,
    pub wf: __m256,
    pub h: __m256i,
    pub w: __m256i,
    pub start: __m256i,
    pub step: __m256i,
    pub row: __m256i,
    pub outside: __m256i,
}

/// Eight samples' descriptors ([`corners8`]); `open` and `grad` as lane masks.
pub(super) struct Corners8 {
    pub idx: [__m256i; 4],
    pub w: [__m256; 4],
    pub ly: __m256,
    pub lx: __m256,
    pub open: __m256,
    pub grad: __m256,
}

/// The descriptors of eight samples at absolute positions `(py, px)` with mask values `vm`
/// (lanes outside the mask `lanes` closed): `sample_row_body`'s operations in its order
/// (`per_tap`: its `GradGate::PerTap` region for the indices), one ymm register per quantity.
/// Every AVX2 descriptor kernel forms its descriptors here.
///
/// With `SMALL` (the caller's promise: every index the plane can form for a corner inside is
/// below 2^24) the corner checks compare the floors and the index is formed with FMAs in f32,
/// exact for such integers, as `corners16` does. The same masks, indices and weights either way.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn corners8<const SCALED: bool, const SMALL: bool>(
    (py, px, vm): (__m256, __m256, __m256),
    lanes: __m256,
    per_tap: bool,
    p: &Plane8,
) -> Corners8 {
    let (one, minus_one) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-1.0));
    let (ione, iminus_one) = (_mm256_set1_epi32(1), _mm256_set1_epi32(-1));
    let (hf, wf) = (p.hf, p.wf);
    let inside = _mm256_and_ps(
        lanes,
        _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_LT_OQ>(py, hf),
            _mm256_cmp_ps::<_CMP_LT_OQ>(px, wf),
        ),
    );
    let open = _mm256_and_ps(
        inside,
        _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(py, minus_one),
            _mm256_cmp_ps::<_CMP_GT_OQ>(px, minus_one),
        ),
    );
    let grad = if per_tap {
        _mm256_and_ps(
            inside,
            _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GE_OQ>(py, minus_one),
                _mm256_cmp_ps::<_CMP_GE_OQ>(px, minus_one),
            ),
        )
    } else {
        open
    };
    // Floors of the positions as they come, in parallel with the checks; a closed lane's `ly`
    // and `lx` masked to +0 after (as the zeroed position gave).
    let (fy, fx) = (_mm256_floor_ps(py), _mm256_floor_ps(px));
    let (ly, lx) = (
        _mm256_and_ps(_mm256_sub_ps(py, fy), grad),
        _mm256_and_ps(_mm256_sub_ps(px, fx), grad),
    );
    let (hy, hx) = (_mm256_sub_ps(one, ly), _mm256_sub_ps(one, lx));
    let gi = _mm256_castps_si256(grad);
    // Per corner row and column: inside the plane? (A lane in `grad` has integer floors in
    // [-1, h - 1] and [-1, w - 1].) And the first corner's index.
    let (y_lo, y_hi, x_lo, x_hi, base) = if SMALL {
        let zero = _mm256_setzero_ps();
        let cmp = |k: __m256i, v: __m256| _mm256_and_si256(k, _mm256_castps_si256(v));
        let at = _mm256_fmadd_ps(fy, p.wf, fx);
        let startf = _mm256_cvtepi32_ps(p.start);
        let at = if SCALED {
            _mm256_fmadd_ps(at, _mm256_cvtepi32_ps(p.step), startf)
        } else {
            _mm256_add_ps(at, startf)
        };
        (
            cmp(gi, _mm256_cmp_ps::<_CMP_GE_OQ>(fy, zero)),
            cmp(gi, _mm256_cmp_ps::<_CMP_LT_OQ>(fy, _mm256_sub_ps(hf, one))),
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(fx, zero)),
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(fx, _mm256_sub_ps(wf, one))),
            _mm256_cvttps_epi32(at),
        )
    } else {
        let (yi, xi) = (_mm256_cvttps_epi32(fy), _mm256_cvttps_epi32(fx));
        // Exact for corners inside: their indices lie inside the image (below 2^31).
        let pixel = _mm256_add_epi32(_mm256_mullo_epi32(yi, p.w), xi);
        let scaled = if SCALED {
            _mm256_mullo_epi32(pixel, p.step)
        } else {
            pixel
        };
        (
            _mm256_and_si256(gi, _mm256_cmpgt_epi32(yi, iminus_one)),
            _mm256_and_si256(gi, _mm256_cmpgt_epi32(p.h, _mm256_add_epi32(yi, ione))),
            _mm256_cmpgt_epi32(xi, iminus_one),
            _mm256_cmpgt_epi32(p.w, _mm256_add_epi32(xi, ione)),
            _mm256_add_epi32(p.start, scaled),
        )
    };
    let below = _mm256_add_epi32(base, p.row);
    let pick = |k: __m256i, v: __m256i| _mm256_blendv_epi8(p.outside, v, k);
    let idx = [
        pick(_mm256_and_si256(y_lo, x_lo), base),
        pick(_mm256_and_si256(y_lo, x_hi), _mm256_add_epi32(base, p.step)),
        pick(_mm256_and_si256(y_hi, x_lo), below),
        pick(
            _mm256_and_si256(y_hi, x_hi),
            _mm256_add_epi32(below, p.step),
        ),
    ];
    let mo = _mm256_and_ps(vm, open);
    let w = [
        _mm256_mul_ps(mo, _mm256_mul_ps(hy, hx)),
        _mm256_mul_ps(mo, _mm256_mul_ps(hy, lx)),
        _mm256_mul_ps(mo, _mm256_mul_ps(ly, hx)),
        _mm256_mul_ps(mo, _mm256_mul_ps(ly, lx)),
    ];
    Corners8 {
        idx,
        w,
        ly,
        lx,
        open,
        grad,
    }
}

/// Descriptors of one row, 8 samples per step (see `sample_row_body` for the formula).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sample_row(a: &RowArgs<'_, f32>, out: &mut RowSamples<f32>) {
    let n = a.dy.len();
    // The grid columns and pixel indices are formed in i32 lanes.
    if !a.fits_i32_lanes() {
        return sample_row_body(a, out);
    }
    let y0 = _mm256_set1_ps(a.y0 as f32);
    let plane = Plane8 {
        hf: _mm256_set1_ps(a.h as i64 as f32),
        wf: _mm256_set1_ps(a.w as i64 as f32),
        h: _mm256_set1_epi32(a.h as i32),
        w: _mm256_set1_epi32(a.w as i32),
        start: _mm256_setzero_si256(),
        step: _mm256_set1_epi32(1),
        row: _mm256_set1_epi32(a.w as i32),
        outside: _mm256_set1_epi32((a.h * a.w) as i32),
    };
    let all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let (x0, sx) = (
        _mm256_set1_epi32(a.x0 as i32),
        _mm256_set1_epi32(a.sx as i32),
    );
    let per_tap = a.gate == GradGate::PerTap;
    let small = super::indices_exact_in_f32(a.h * a.w);
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
        let Corners8 {
            idx,
            w,
            ly,
            lx,
            open,
            grad,
        } = if small {
            corners8::<false, true>((py, px, vm), all, per_tap, &plane)
        } else {
            corners8::<false, false>((py, px, vm), all, per_tap, &plane)
        };
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

/// [`super::PointKernels`]' forward for groups of `8 * V` channels and up to 16 points, the
/// AVX-512 kernel's plan in 8-lane registers: per element, its points' positions as
/// `describe_points` forms them (eight at a time), their descriptors as `sample_row` forms them
/// (the adds of zero included), the corners' element offsets and weights through a small stack
/// tile, each point's sample summed in registers as `gather_points` sums it: bitwise the three
/// passes, the image read in place (zeros for corners outside).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn points_row<const V: usize>(
    r: &super::PointsRow<'_, f32>,
    out: &mut [std::mem::MaybeUninit<f32>],
) {
    let runs = &r.runs;
    let (p, len, c, groups) = (runs.points, runs.len, r.c, r.groups);
    let d = 8 * V;
    if len == 0 {
        return;
    }
    assert!(
        r.inside(d, out.len()),
        "points_row: runs inside their tensors, planes inside the image, at most 16 points"
    );
    // Lane masks of the first `n` of eight.
    let lanes = |n: usize| {
        let n = n.min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    };
    let halves = p.div_ceil(8);
    // Per half of the points (0-7, 8-15): the loads' lane masks and the per-point constants.
    let kp: [__m256i; 2] = std::array::from_fn(|h| lanes(p.saturating_sub(8 * h)));
    let kpair: [[__m256i; 2]; 2] = std::array::from_fn(|h| {
        let n = (2 * p).saturating_sub(16 * h);
        [lanes(n), lanes(n.saturating_sub(8))]
    });
    let mut consts = [[0f32; 16]; 4];
    for (dst, src) in
        consts
            .iter_mut()
            .zip([runs.tap[0], runs.tap[1], runs.scale[0], runs.scale[1]])
    {
        dst[..p].copy_from_slice(&src[..p]);
    }
    let (mut ph, mut pw, mut ps) = ([0i32; 16], [0i32; 16], [0i32; 16]);
    for (k, &[h, w, s]) in r.planes[..p].iter().enumerate() {
        (ph[k], pw[k], ps[k]) = (h as i32, w as i32, (s * c) as i32);
    }
    // SAFETY: 8 values at 8h of 16-value arrays, h < 2.
    let v8 = |a: &[f32; 16], h: usize| unsafe { _mm256_loadu_ps(a.as_ptr().add(8 * h)) };
    // SAFETY: as above.
    let i8 = |a: &[i32; 16], h: usize| unsafe { _mm256_loadu_si256(a.as_ptr().add(8 * h).cast()) };
    let tap_y: [__m256; 2] = std::array::from_fn(|h| v8(&consts[0], h));
    let tap_x: [__m256; 2] = std::array::from_fn(|h| v8(&consts[1], h));
    let scale_y: [__m256; 2] = std::array::from_fn(|h| v8(&consts[2], h));
    let scale_x: [__m256; 2] = std::array::from_fn(|h| v8(&consts[3], h));
    let hi: [__m256i; 2] = std::array::from_fn(|h| i8(&ph, h));
    let wi: [__m256i; 2] = std::array::from_fn(|h| i8(&pw, h));
    let first: [__m256i; 2] = std::array::from_fn(|h| i8(&ps, h));
    let hf = hi.map(|v| _mm256_cvtepi32_ps(v));
    let wf = wi.map(|v| _mm256_cvtepi32_ps(v));
    let cv = _mm256_set1_epi32(c as i32);
    let row = wi.map(|v| _mm256_mullo_epi32(v, cv));
    let (pp, wp) = (runs.pairs.as_ptr(), runs.weights.as_ptr());
    let (xp, op) = (r.image.as_ptr(), out.as_mut_ptr().cast::<f32>());
    // What a corner outside its plane reads.
    let zeros = [0f32; 32];
    let small = super::indices_exact_in_f32(r.image.len());
    let describe = |t: usize, [pair0, weight0, lo]: [usize; 3], tile: &mut Tile| {
        let lov = _mm256_set1_epi32(lo as i32);
        let by = _mm256_set1_ps(runs.base[0][t]);
        let bx = _mm256_set1_ps(runs.base[1][t]);
        for h in 0..halves {
            // SAFETY: element t's pairs and weights lie inside their slices (checked above);
            // masked-off lanes are not accessed.
            let (a, b, vm) = unsafe {
                let at = pp.add(pair0 + t * runs.pair_step + 16 * h);
                (
                    _mm256_maskload_ps(at, kpair[h][0]),
                    // Past the run when the mask is empty: formed without `add`'s promise.
                    _mm256_maskload_ps(at.wrapping_add(8), kpair[h][1]),
                    _mm256_maskload_ps(wp.add(weight0 + t * runs.weight_step + 8 * h), kp[h]),
                )
            };
            // [x0 x1 x4 x5 | x2 x3 x6 x7] in point order.
            let vx = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                _mm256_shuffle_ps::<0b10_00_10_00>(a, b),
            )));
            let vy = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                _mm256_shuffle_ps::<0b11_01_11_01>(a, b),
            )));
            // `describe_points`' positions (no add of zero: a -0 position gives the same floors,
            // checks, indices and `ly`).
            let py = _mm256_add_ps(by, _mm256_mul_ps(_mm256_add_ps(tap_y[h], vy), scale_y[h]));
            let px = _mm256_add_ps(bx, _mm256_mul_ps(_mm256_add_ps(tap_x[h], vx), scale_x[h]));
            let plane = Plane8 {
                hf: hf[h],
                wf: wf[h],
                h: hi[h],
                w: wi[h],
                start: _mm256_add_epi32(first[h], lov),
                step: cv,
                row: row[h],
                outside: _mm256_set1_epi32(-1),
            };
            let lanes = _mm256_castsi256_ps(kp[h]);
            let Corners8 { idx: iv, w: wv, .. } = if small {
                corners8::<true, true>((py, px, vm), lanes, false, &plane)
            } else {
                corners8::<true, false>((py, px, vm), lanes, false, &plane)
            };
            for j in 0..4 {
                // SAFETY: 8 values at 8h of 16-value rows, h < 2.
                unsafe {
                    _mm256_storeu_si256(tile.0[j].as_mut_ptr().add(8 * h).cast(), iv[j]);
                    _mm256_storeu_ps(tile.1[j].as_mut_ptr().add(8 * h), wv[j]);
                }
            }
        }
    };
    // Element `t`'s sum for the group at channel `lo` from its `tile`, stored.
    let gather = |t: usize, lo: usize, tile: &Tile| {
        // Point k's sample, channels 8v..8v+8.
        let sample = |k: usize| -> [__m256; V] {
            let src: [*const f32; 4] = std::array::from_fn(|j| {
                let o = tile.0[j][k];
                if o < 0 {
                    zeros.as_ptr()
                } else {
                    // SAFETY: a corner inside its plane has an offset `>= 0` whose run of `d`
                    // lies inside the image (the planes and `lo + d <= c` checked above).
                    unsafe { xp.add(o as usize) }
                }
            });
            let w: [__m256; 4] = std::array::from_fn(|j| _mm256_set1_ps(tile.1[j][k]));
            std::array::from_fn(|v| {
                // SAFETY: `src[j]` addresses `d` values (a run of the image or `zeros`).
                let l = |j: usize| unsafe { _mm256_loadu_ps(src[j].add(8 * v)) };
                let mut acc = _mm256_mul_ps(w[0], l(0));
                acc = _mm256_fmadd_ps(w[1], l(1), acc);
                acc = _mm256_fmadd_ps(w[2], l(2), acc);
                _mm256_fmadd_ps(w[3], l(3), acc)
            })
        };
        let mut acc = sample(0);
        let mut add = |k: usize| {
            let s = sample(k);
            for v in 0..V {
                acc[v] = _mm256_add_ps(acc[v], s[v]);
            }
        };
        // DCNv3's nine points as straight-line code.
        if p == 9 {
            (1..9).for_each(&mut add);
        } else {
            (1..p).for_each(&mut add);
        }
        for (v, a) in acc.into_iter().enumerate() {
            // SAFETY: `t < len`: elements lo + 8v .. + 8 of the row's element t lie inside
            // `out` (checked above).
            unsafe { _mm256_storeu_ps(op.add(t * c + lo + 8 * v), a) };
        }
    };
    super::unit_pipeline(
        (len, groups, r.block),
        |t, gs| r.prefetch_ahead(t, gs),
        describe,
        gather,
    );
}

/// One (element, group)'s descriptors: per corner, its points' element offsets and weights.
type Tile = super::PointTile;
