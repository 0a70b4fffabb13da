//! The explicit AVX-512 f32 descriptors, formed in one place ([`corners16`]): the row
//! descriptors (`sample_row`), the point core's positions (`describe_points`) and its one-pass
//! forward row (`points_row`): the AVX2 kernels' IEEE operations in the same order, sixteen
//! samples per step, tails through masked loads and stores: bitwise the same results.

use super::super::sample::{sample_row_body, RowArgs, RowSamples};
use super::avx512_f32::corners;
use super::PointRuns;
use crate::params::GradGate;
use std::arch::x86_64::*;

/// How [`corners16`] forms a plane's corner indices, per lane: `start + (y*w + x) * step` (no
/// multiply when `SCALED` is false: `step` 1), `row = w * step` apart vertically, `outside` for
/// a corner outside the plane; and the plane's size (also as floats).
#[derive(Clone, Copy)]
pub(super) struct Plane16 {
    pub hf: __m512,
    pub wf: __m512,
    pub h: __m512i,
    pub w: __m512i,
    pub start: __m512i,
    pub step: __m512i,
    pub row: __m512i,
    pub outside: __m512i,
}

/// Sixteen samples' descriptors ([`corners16`]).
pub(super) struct Corners16 {
    pub idx: [__m512i; 4],
    pub w: [__m512; 4],
    pub ly: __m512,
    pub lx: __m512,
    pub open: __mmask16,
    pub grad: __mmask16,
}

/// The descriptors of sixteen samples at absolute positions `(py, px)` with mask values `vm`
/// (lanes outside `lanes` closed): `sample_row_body`'s operations in its order (`per_tap`: its
/// `GradGate::PerTap` region for the indices), one zmm register per quantity. Every AVX-512
/// descriptor kernel forms its descriptors here.
///
/// The floors are taken from the positions as they come, in parallel with the bound checks
/// (a closed lane's `ly` and `lx` are masked to `+0` after, as the zeroed position gave). With
/// `SMALL` (the caller's promise: every index the plane can form, `start + (y*w + x) * step`
/// for a corner inside, is below 2^24) the corner checks compare the floors and the index is
/// formed with FMAs in f32, exact for such integers: two 10-cycle `vpmulld` off the chain. The
/// same masks, indices and weights either way.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn corners16<const SCALED: bool, const SMALL: bool>(
    (py, px, vm): (__m512, __m512, __m512),
    lanes: __mmask16,
    per_tap: bool,
    p: &Plane16,
) -> Corners16 {
    let (one, minus_one, zero) = (
        _mm512_set1_ps(1.0),
        _mm512_set1_ps(-1.0),
        _mm512_setzero_ps(),
    );
    let (ione, iminus_one) = (_mm512_set1_epi32(1), _mm512_set1_epi32(-1));
    let (hf, wf) = (p.hf, p.wf);
    // Each condition a compare under the mask of the ones before it: one operation each, no
    // `kand` (nor the moves through general registers LLVM makes for those).
    let inside = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(
        _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(lanes, py, hf),
        px,
        wf,
    );
    let open = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
        _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(inside, py, minus_one),
        px,
        minus_one,
    );
    let grad = if per_tap {
        _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(
            _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(inside, py, minus_one),
            px,
            minus_one,
        )
    } else {
        open
    };
    const FLOOR: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    let (fy, fx) = (
        _mm512_roundscale_ps::<FLOOR>(py),
        _mm512_roundscale_ps::<FLOOR>(px),
    );
    let (ly, lx) = (
        _mm512_maskz_sub_ps(grad, py, fy),
        _mm512_maskz_sub_ps(grad, px, fx),
    );
    let (hy, hx) = (_mm512_sub_ps(one, ly), _mm512_sub_ps(one, lx));
    // Per corner row and column: is it inside the plane (a lane in `grad` has integer floors
    // in [-1, h - 1] and [-1, w - 1])? And the first corner's index.
    let (y_lo, y_hi, base) = if SMALL {
        let scaled = _mm512_fmadd_ps(fy, wf, fx);
        let startf = _mm512_cvtepi32_ps(p.start);
        let at = if SCALED {
            _mm512_fmadd_ps(scaled, _mm512_cvtepi32_ps(p.step), startf)
        } else {
            _mm512_add_ps(scaled, startf)
        };
        (
            _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(grad, fy, zero),
            _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(grad, fy, _mm512_sub_ps(hf, one)),
            _mm512_cvttps_epi32(at),
        )
    } else {
        let (yi, xi) = (_mm512_cvttps_epi32(fy), _mm512_cvttps_epi32(fx));
        // Exact for corners inside: their indices lie inside the image (below 2^31).
        let pixel = _mm512_add_epi32(_mm512_mullo_epi32(yi, p.w), xi);
        let scaled = if SCALED {
            _mm512_mullo_epi32(pixel, p.step)
        } else {
            pixel
        };
        (
            _mm512_mask_cmpgt_epi32_mask(grad, yi, iminus_one),
            _mm512_mask_cmpgt_epi32_mask(grad, p.h, _mm512_add_epi32(yi, ione)),
            _mm512_add_epi32(p.start, scaled),
        )
    };
    // Corner (y, x)'s mask: row `y`'s under the column's compare.
    let x_lo = |k: __mmask16| col_lo::<SMALL>(k, fx);
    let x_hi = |k: __mmask16| col_hi::<SMALL>(k, fx, p);
    let below = _mm512_add_epi32(base, p.row);
    let pick = |k: __mmask16, v: __m512i| _mm512_mask_blend_epi32(k, p.outside, v);
    let idx = [
        pick(x_lo(y_lo), base),
        pick(x_hi(y_lo), _mm512_add_epi32(base, p.step)),
        pick(x_lo(y_hi), below),
        pick(x_hi(y_hi), _mm512_add_epi32(below, p.step)),
    ];
    let mo = _mm512_maskz_mov_ps(open, vm);
    let w = [
        _mm512_mul_ps(mo, _mm512_mul_ps(hy, hx)),
        _mm512_mul_ps(mo, _mm512_mul_ps(hy, lx)),
        _mm512_mul_ps(mo, _mm512_mul_ps(ly, hx)),
        _mm512_mul_ps(mo, _mm512_mul_ps(ly, lx)),
    ];
    Corners16 {
        idx,
        w,
        ly,
        lx,
        open,
        grad,
    }
}

/// Under `k`: is the corner column `fx` (a floor) at or right of column 0?
#[inline]
#[target_feature(enable = "avx512f")]
fn col_lo<const SMALL: bool>(k: __mmask16, fx: __m512) -> __mmask16 {
    if SMALL {
        _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(k, fx, _mm512_setzero_ps())
    } else {
        _mm512_mask_cmpgt_epi32_mask(k, _mm512_cvttps_epi32(fx), _mm512_set1_epi32(-1))
    }
}

/// Under `k`: is the column right of `fx` (a floor) left of the plane's last column + 1?
#[inline]
#[target_feature(enable = "avx512f")]
fn col_hi<const SMALL: bool>(k: __mmask16, fx: __m512, p: &Plane16) -> __mmask16 {
    if SMALL {
        _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(k, fx, _mm512_sub_ps(p.wf, _mm512_set1_ps(1.0)))
    } else {
        let x1 = _mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(1));
        _mm512_mask_cmpgt_epi32_mask(k, p.w, x1)
    }
}

/// Descriptors of one row, 16 samples per step (see `sample_row_body` for the formula).
///
/// # Safety
/// The CPU must support AVX-512F and AVX2.
#[target_feature(enable = "avx512f,avx2")]
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
    // The gradients' fields (empty when not wanted).
    let fields = if a.gradients { r.clone() } else { 0..0 };
    let (ly, lx, om) = (
        &mut out.ly[fields.clone()],
        &mut out.lx[fields.clone()],
        &mut out.m[fields.clone()],
    );
    let (open, grad) = (&mut out.open[fields.clone()], &mut out.grad[fields]);
    let one = _mm512_set1_ps(1.0);
    let y0 = _mm512_set1_ps(a.y0 as f32);
    let plane = Plane16 {
        hf: _mm512_set1_ps(a.h as i64 as f32),
        wf: _mm512_set1_ps(a.w as i64 as f32),
        h: _mm512_set1_epi32(a.h as i32),
        w: _mm512_set1_epi32(a.w as i32),
        start: _mm512_setzero_si512(),
        step: _mm512_set1_epi32(1),
        row: _mm512_set1_epi32(a.w as i32),
        outside: _mm512_set1_epi32((a.h * a.w) as i32),
    };
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let (x0, sx) = (
        _mm512_set1_epi32(a.x0 as i32),
        _mm512_set1_epi32(a.sx as i32),
    );
    let per_tap = a.gate == GradGate::PerTap;
    let small = super::indices_exact_in_f32(a.h * a.w);
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
        let c = if small {
            corners16::<false, true>((py, px, vm), k, per_tap, &plane)
        } else {
            corners16::<false, false>((py, px, vm), k, per_tap, &plane)
        };
        for j in 0..4 {
            // SAFETY: the lanes enabled in `k` address elements t..t+len of the n-element
            // descriptor slices.
            unsafe {
                _mm512_mask_storeu_epi32(idx[j].as_mut_ptr().add(t).cast(), k, c.idx[j]);
                _mm512_mask_storeu_ps(w[j].as_mut_ptr().add(t), k, c.w[j]);
            }
        }
        if a.gradients {
            for (dst, v) in [(&mut *ly, c.ly), (&mut *lx, c.lx), (&mut *om, vm)] {
                // SAFETY: the lanes enabled in `k` address elements t..t+len of the n-element
                // gradient slices.
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(t), k, v) };
            }
            let lanes = open[t..t + len].iter_mut().zip(&mut grad[t..t + len]);
            for (l, (o, g)) in lanes.enumerate() {
                (*o, *g) = ((c.open >> l) & 1 == 1, (c.grad >> l) & 1 == 1);
            }
        }
        t += 16;
    }
}

/// Each element's points' positions `base + (tap + pair) * scale` and weights from an
/// operator's runs, one zmm register per quantity (a pair's `x` and `y` split by two permutes):
/// the per-point constants loaded once. `describe_points` and `points_row` read positions here.
struct Positions16<'a> {
    runs: &'a PointRuns<'a, f32, f32>,
    pairs: [__mmask16; 2],
    points: __mmask16,
    split: [__m512i; 2],
    tap: [__m512; 2],
    scale: [__m512; 2],
}

impl<'a> Positions16<'a> {
    /// # Safety
    /// `runs.points <= 16`, and `runs.tap` and `runs.scale` hold at least that many values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn new(runs: &'a PointRuns<'a, f32, f32>) -> Self {
        let p = runs.points;
        let lanes = |n: usize| (((1u32 << n.min(16)) - 1) & 0xffff) as __mmask16;
        let kp = lanes(p);
        // SAFETY: the lanes enabled in `kp` address the first `p` values (the contract).
        let per_point = |v: &[f32]| unsafe { _mm512_maskz_loadu_ps(kp, v.as_ptr()) };
        Positions16 {
            runs,
            pairs: [lanes(2 * p), lanes((2 * p).saturating_sub(16))],
            points: kp,
            split: [
                _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
            ],
            tap: runs.tap.map(per_point),
            scale: runs.scale.map(per_point),
        }
    }

    /// `(y, x, weight)` of element `t`'s points, its pairs from `pair0` and weights from
    /// `weight0` (instead of the runs' own).
    ///
    /// # Safety
    /// `t < runs.len`, and element `t`'s `2 * points` pairs and `points` weights from there lie
    /// inside `runs.pairs` and `runs.weights`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn at(&self, t: usize, pair0: usize, weight0: usize) -> (__m512, __m512, __m512) {
        let r = self.runs;
        // SAFETY: element t's pairs and weights lie inside their slices (the contract);
        // masked-off lanes are not accessed.
        let (lo, hi, w) = unsafe {
            let at = r.pairs.as_ptr().add(pair0 + t * r.pair_step);
            (
                _mm512_maskz_loadu_ps(self.pairs[0], at),
                // Past the run when the mask is empty: formed without `add`'s in-bounds promise.
                _mm512_maskz_loadu_ps(self.pairs[1], at.wrapping_add(16)),
                _mm512_maskz_loadu_ps(
                    self.points,
                    r.weights.as_ptr().add(weight0 + t * r.weight_step),
                ),
            )
        };
        let [y, x] = self.split.map(|s| _mm512_permutex2var_ps(lo, s, hi));
        let [by, bx] = r.base.map(|b| _mm512_set1_ps(b[t]));
        (
            _mm512_add_ps(
                by,
                _mm512_mul_ps(_mm512_add_ps(self.tap[0], y), self.scale[0]),
            ),
            _mm512_add_ps(
                bx,
                _mm512_mul_ps(_mm512_add_ps(self.tap[1], x), self.scale[1]),
            ),
            w,
        )
    }
}

/// [`super::DescribePointsFn`] for up to 16 points: each element's points in one zmm register
/// (its pairs split into `x` and `y` by two permutes), the same adds and multiplies as the
/// portable loop, sixteen elements' rows through a stack tile read back a point at a time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn describe_points(
    r: &PointRuns<'_, f32, f32>,
    y: &mut [f32],
    x: &mut [f32],
    m: &mut [f32],
) {
    let (p, len) = (r.points, r.len);
    if len == 0 || p == 0 {
        return;
    }
    let last = len - 1;
    assert!(
        p <= 16
            && r.pair0 + last * r.pair_step + 2 * p <= r.pairs.len()
            && r.weight0 + last * r.weight_step + p <= r.weights.len()
            && [y.len(), x.len(), m.len()].iter().all(|&l| l >= p * len)
            && r.tap.iter().chain(&r.scale).all(|v| v.len() >= p)
            && r.base.iter().all(|v| v.len() >= len),
        "describe_points: runs inside their tensors, at most 16 points"
    );
    // SAFETY: at most 16 points, taps and scales for each (checked above).
    let positions = unsafe { Positions16::new(r) };
    let lanes = |n: usize| (((1u32 << n.min(16)) - 1) & 0xffff) as __mmask16;
    let rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(16),
    );
    let mut tile = [[[0f32; 16]; 16]; 3];
    for t0 in (0..len).step_by(16) {
        let nb = (len - t0).min(16);
        for (i, t) in (t0..t0 + nb).enumerate() {
            if t + super::PREFETCH_AHEAD < len {
                let a = t + super::PREFETCH_AHEAD;
                super::prefetch(&r.pairs[r.pair0 + a * r.pair_step..][..2 * p]);
                super::prefetch(&r.weights[r.weight0 + a * r.weight_step..][..p]);
            }
            // SAFETY: t < len, element t's runs inside their slices (checked above).
            let (py, px, w) = unsafe { positions.at(t, r.pair0, r.weight0) };
            // SAFETY: row i < 16 of each [16; 16] tile.
            unsafe {
                _mm512_storeu_ps(tile[0][i].as_mut_ptr(), py);
                _mm512_storeu_ps(tile[1][i].as_mut_ptr(), px);
                _mm512_storeu_ps(tile[2][i].as_mut_ptr(), w);
            }
        }
        let kb = lanes(nb);
        for k in 0..p {
            let idx = _mm512_add_epi32(rows, _mm512_set1_epi32(k as i32));
            for (q, out) in [&mut *y, &mut *x, &mut *m].into_iter().enumerate() {
                // SAFETY: the gather reads entries k, 16 + k, ... of the 256-entry tile; the
                // store writes entries k*len + t0 .. + nb of an output of at least p*len.
                unsafe {
                    let col = _mm512_i32gather_ps::<4>(idx, tile[q].as_ptr().cast());
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(k * len + t0), kb, col);
                }
            }
        }
    }
}

/// [`super::PointKernels`]' forward for groups of `16 * NZ` channels and up to 16 points: per
/// element, its points' positions in one zmm register as `describe_points` forms them, their
/// descriptors as `sample_row` forms them (`y0 = x0 = 0`: the same adds of zero), the corners'
/// element offsets and weights through a small stack tile, then each point's sample summed in
/// registers as `gather_points` sums it: bitwise the three passes, without the image copy (a
/// corner outside its plane reads a zero run instead of the copy's zero pixel: the same products).
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn points_row<const NZ: usize>(
    r: &super::PointsRow<'_, f32>,
    out: &mut [std::mem::MaybeUninit<f32>],
) {
    let runs = &r.runs;
    let (p, len, c, groups) = (runs.points, runs.len, r.c, r.groups);
    let d = 16 * NZ;
    if len == 0 {
        return;
    }
    assert!(
        r.inside(d, out.len()),
        "points_row: runs inside their tensors, planes inside the image, at most 16 points"
    );
    // SAFETY: at most 16 points, taps and scales for each (`inside`, checked above).
    let positions = unsafe { Positions16::new(runs) };
    // Per point: its plane's size and the element offset of its first pixel (all below 2^31:
    // the image is, checked above).
    let (mut ph, mut pw, mut ps) = ([0i32; 16], [0i32; 16], [0i32; 16]);
    for (k, &[h, w, s]) in r.planes[..p].iter().enumerate() {
        (ph[k], pw[k], ps[k]) = (h as i32, w as i32, (s * c) as i32);
    }
    // SAFETY: 16 values each.
    let (hi, wi, first) = unsafe {
        (
            _mm512_loadu_si512(ph.as_ptr().cast()),
            _mm512_loadu_si512(pw.as_ptr().cast()),
            _mm512_loadu_si512(ps.as_ptr().cast()),
        )
    };
    let (hf, wf) = (_mm512_cvtepi32_ps(hi), _mm512_cvtepi32_ps(wi));
    let cv = _mm512_set1_epi32(c as i32);
    let row = _mm512_mullo_epi32(wi, cv);
    let (xp, op) = (r.image.as_ptr(), out.as_mut_ptr().cast::<f32>());
    // What a corner outside its plane reads.
    let zeros = [0f32; 32];
    let small = super::indices_exact_in_f32(r.image.len());
    // The descriptors of element `t`, group `[pair0, weight0, lo]` into `tile`: its points'
    // corners' element offsets (-1: outside) and weights, a row of 16 per corner.
    let describe = |t: usize, [pair0, weight0, lo]: [usize; 3], tile: &mut Tile| {
        let start = _mm512_add_epi32(first, _mm512_set1_epi32(lo as i32));
        // SAFETY: t < len, each group's runs inside their slices (`inside`, checked above).
        let (py, px, vm) = unsafe { positions.at(t, pair0, weight0) };
        let plane = Plane16 {
            hf,
            wf,
            h: hi,
            w: wi,
            start,
            step: cv,
            row,
            outside: _mm512_set1_epi32(-1),
        };
        // No add of zero: a -0 position gives the same floors, checks, index and `ly`.
        let c = if small {
            corners16::<true, true>((py, px, vm), positions.points, false, &plane)
        } else {
            corners16::<true, false>((py, px, vm), positions.points, false, &plane)
        };
        let (iv, wv) = (c.idx, c.w);
        for j in 0..4 {
            // SAFETY: 16 values each.
            unsafe {
                _mm512_storeu_si512(tile.0[j].as_mut_ptr().cast(), iv[j]);
                _mm512_storeu_ps(tile.1[j].as_mut_ptr(), wv[j]);
            }
        }
    };
    // Element `t`'s sum for the group at channel `lo` from its `tile`, stored.
    let gather = |t: usize, lo: usize, tile: &Tile| {
        // Point k's sample, channels 16z..16z+16.
        let sample = |k: usize| -> [__m512; NZ] {
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
            let w: [__m512; 4] = std::array::from_fn(|j| _mm512_set1_ps(tile.1[j][k]));
            std::array::from_fn(|z| {
                // SAFETY: `src[j]` addresses `d` values (a run of the image or `zeros`).
                let l = |j: usize| unsafe { _mm512_loadu_ps(src[j].add(16 * z)) };
                // SAFETY: the CPU supports AVX-512F (this kernel's contract).
                unsafe { corners::<true>(w, [l(0), l(1), l(2), l(3)]) }
            })
        };
        let mut acc = sample(0);
        let mut add = |k: usize| {
            let v = sample(k);
            for z in 0..NZ {
                acc[z] = _mm512_add_ps(acc[z], v[z]);
            }
        };
        // DCNv3's nine points as straight-line code.
        if p == 9 {
            (1..9).for_each(&mut add);
        } else {
            (1..p).for_each(&mut add);
        }
        for (z, v) in acc.into_iter().enumerate() {
            // SAFETY: `t < len`: elements lo + 16z .. + 16 of the row's element t lie inside
            // `out` (checked above).
            unsafe { _mm512_storeu_ps(op.add(t * c + lo + 16 * z), v) };
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
